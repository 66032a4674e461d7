use std::path::PathBuf;

use super::*;
use crate::certs::tests::{ecdsa, pair};

struct Files {
    dir: tempfile::TempDir,
}

impl Files {
    fn new() -> Files {
        Files {
            dir: tempfile::tempdir().unwrap(),
        }
    }

    fn write(&self, name: &str, (cert, key): &(String, String)) -> CertFiles {
        let files = CertFiles {
            cert: self.dir.path().join(format!("{name}.crt")),
            key: self.dir.path().join(format!("{name}.key")),
        };
        std::fs::write(&files.cert, cert).unwrap();
        std::fs::write(&files.key, key).unwrap();
        files
    }
}

fn tls(pairs: Vec<CertFiles>) -> Tls {
    Tls {
        listen: vec!["127.0.0.1:8443".parse().unwrap()],
        pairs,
        h2: true,
        http11: true,
        tls13_only: false,
        handshake_timeout: Duration::from_secs(10),
    }
}

/// The leaf certificate the endpoint serves to a client asking for `name`.
fn served(e: &Endpoint, name: Option<&str>) -> Vec<u8> {
    e.pick(name).unwrap().cert[0].to_vec()
}

fn der(pem: &str) -> Vec<u8> {
    use rustls::pki_types::pem::PemObject;
    rustls::pki_types::CertificateDer::from_pem_slice(pem.as_bytes())
        .unwrap()
        .to_vec()
}

#[test]
fn sni_picks_exact_names_then_wildcards_then_the_default() {
    let f = Files::new();
    let default = ecdsa(&["www.example.com"]);
    let api = ecdsa(&["api.example.com"]);
    let wild = ecdsa(&["*.example.com"]);
    let e = Endpoint::load(&tls(vec![
        f.write("default", &default),
        f.write("wild", &wild),
        f.write("api", &api),
    ]))
    .unwrap();
    assert_eq!(served(&e, None), der(&default.0));
    assert_eq!(served(&e, Some("www.example.com")), der(&default.0));
    // An exact name wins over a wildcard listed before it; case and a final dot do not matter.
    assert_eq!(served(&e, Some("API.Example.com.")), der(&api.0));
    assert_eq!(served(&e, Some("shop.example.com")), der(&wild.0));
    // A wildcard covers one label only; an unknown name gets the default.
    assert_eq!(served(&e, Some("a.b.example.com")), der(&default.0));
    assert_eq!(served(&e, Some("example.org")), der(&default.0));
}

#[test]
fn a_listener_does_not_start_with_a_bad_pair() {
    let f = Files::new();
    let (cert, _) = ecdsa(&["a.test"]);
    let (_, key) = ecdsa(&["a.test"]);
    let e = Endpoint::load(&tls(vec![f.write("a", &(cert, key))])).unwrap_err();
    assert!(
        e.contains("a.crt") && e.contains("not the certificate's"),
        "{e}"
    );
    let missing = CertFiles {
        cert: PathBuf::from("/nonexistent/x.crt"),
        key: PathBuf::from("/nonexistent/x.key"),
    };
    let e = Endpoint::load(&tls(vec![missing])).unwrap_err();
    assert!(e.contains("/nonexistent/x.crt"), "{e}");
}

/// Replaces `files` as a Kubernetes Secret volume does: the new pair in a new directory, then
/// the `..data` symlink swapped over in one rename.
fn swap_secret(dir: &Path, generation: u32, (cert, key): &(String, String)) {
    let new = dir.join(format!("..gen{generation}"));
    std::fs::create_dir(&new).unwrap();
    std::fs::write(new.join("tls.crt"), cert).unwrap();
    std::fs::write(new.join("tls.key"), key).unwrap();
    let tmp = dir.join("..data_tmp");
    std::os::unix::fs::symlink(new.file_name().unwrap(), &tmp).unwrap();
    std::fs::rename(&tmp, dir.join("..data")).unwrap();
}

#[test]
fn changed_files_are_loaded_once_they_settle_and_bad_ones_keep_the_old_pair() {
    let f = Files::new();
    let first = ecdsa(&["a.test"]);
    let files = f.write("a", &first);
    let e = Endpoint::load(&tls(vec![files.clone()])).unwrap();
    e.poll();
    assert_eq!(served(&e, None), der(&first.0));

    // A new pair: seen changed at one poll, loaded at the next.
    let second = ecdsa(&["a.test"]);
    f.write("a", &second);
    e.poll();
    assert_eq!(served(&e, None), der(&first.0), "loaded before it settled");
    e.poll();
    assert_eq!(served(&e, None), der(&second.0));
    assert_eq!(e.reloads.load(Ordering::Relaxed), 1);

    // Half a swap (the certificate without its key): refused, the pair in force stays, and it
    // is not tried again until a file changes.
    let third = ecdsa(&["a.test"]);
    std::fs::write(&files.cert, &third.0).unwrap();
    e.poll();
    e.poll();
    e.poll();
    assert_eq!(served(&e, None), der(&second.0));
    assert_eq!(e.reload_failures.load(Ordering::Relaxed), 1);
    std::fs::write(&files.key, &third.1).unwrap();
    e.poll();
    e.poll();
    assert_eq!(served(&e, None), der(&third.0));

    // Expired: refused.
    let expired = pair(&["a.test"], -30, -1, &rcgen::PKCS_ECDSA_P256_SHA256);
    f.write("a", &expired);
    e.poll();
    e.poll();
    assert_eq!(served(&e, None), der(&third.0));
    assert_eq!(e.reload_failures.load(Ordering::Relaxed), 2);

    // Gone: the pair in force stays.
    std::fs::remove_file(&files.cert).unwrap();
    e.poll();
    e.poll();
    assert_eq!(served(&e, None), der(&third.0));
    assert_eq!(
        e.reload_failures.load(Ordering::Relaxed),
        3,
        "a file gone is a failed reload"
    );
    assert_eq!(e.in_force()[0].1, "a.test");
}

#[test]
fn a_secret_volume_swap_is_seen_through_its_symlinks() {
    let dir = tempfile::tempdir().unwrap();
    let first = ecdsa(&["a.test"]);
    swap_secret(dir.path(), 1, &first);
    for name in ["tls.crt", "tls.key"] {
        std::os::unix::fs::symlink(format!("..data/{name}"), dir.path().join(name)).unwrap();
    }
    let files = CertFiles {
        cert: dir.path().join("tls.crt"),
        key: dir.path().join("tls.key"),
    };
    let e = Endpoint::load(&tls(vec![files])).unwrap();
    let second = ecdsa(&["a.test"]);
    swap_secret(dir.path(), 2, &second);
    e.poll();
    e.poll();
    assert_eq!(served(&e, None), der(&second.0));
}

#[test]
fn one_pair_of_several_reloads_alone() {
    let f = Files::new();
    let a = ecdsa(&["a.test"]);
    let b = ecdsa(&["b.test"]);
    let e = Endpoint::load(&tls(vec![f.write("a", &a), f.write("b", &b)])).unwrap();
    let b2 = ecdsa(&["b.test"]);
    f.write("b", &b2);
    e.poll();
    e.poll();
    assert_eq!(served(&e, Some("a.test")), der(&a.0));
    assert_eq!(served(&e, Some("b.test")), der(&b2.0));
}
