use std::time::{Duration, SystemTime};

use super::*;

/// A self-signed certificate for `names` valid from `from` days to `to` days around now, and
/// its key, both in PEM.
pub(crate) fn pair(
    names: &[&str],
    from: i64,
    to: i64,
    alg: &'static rcgen::SignatureAlgorithm,
) -> (String, String) {
    let key = rcgen::KeyPair::generate_for(alg).unwrap();
    let mut params =
        rcgen::CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
            .unwrap();
    let now = time::OffsetDateTime::now_utc();
    params.not_before = now + time::Duration::days(from);
    params.not_after = now + time::Duration::days(to);
    let cert = params.self_signed(&key).unwrap();
    (cert.pem(), key.serialize_pem())
}

pub(crate) fn ecdsa(names: &[&str]) -> (String, String) {
    pair(names, -1, 30, &rcgen::PKCS_ECDSA_P256_SHA256)
}

#[test]
fn a_good_pair_loads_with_its_names_and_end() {
    for alg in [
        &rcgen::PKCS_ECDSA_P256_SHA256,
        &rcgen::PKCS_ECDSA_P384_SHA384,
        &rcgen::PKCS_ED25519,
    ] {
        let (cert, key) = pair(
            &["Example.COM.", "*.api.example.com", "example.com"],
            -1,
            30,
            alg,
        );
        let p = parse(cert.as_bytes(), key.as_bytes(), SystemTime::now()).unwrap();
        assert_eq!(p.names, ["example.com", "*.api.example.com"]);
        let in_30_days = SystemTime::now() + Duration::from_secs(30 * 86400);
        let secs = in_30_days.duration_since(UNIX_EPOCH).unwrap().as_secs() as i64;
        assert!(
            (p.not_after - secs).abs() < 120,
            "{} vs {secs}",
            p.not_after
        );
    }
}

#[test]
fn a_chain_keeps_every_certificate_leaf_first() {
    let (leaf, key) = ecdsa(&["a.test"]);
    let (other, _) = ecdsa(&["b.test"]);
    let p = parse(
        format!("{leaf}{other}").as_bytes(),
        key.as_bytes(),
        SystemTime::now(),
    )
    .unwrap();
    assert_eq!(p.key.cert.len(), 2);
    assert_eq!(p.names, ["a.test"]);
}

#[test]
fn wrong_pairs_are_refused_with_what_is_wrong() {
    let (cert, key) = ecdsa(&["a.test"]);
    let (_, other_key) = ecdsa(&["a.test"]);
    let now = SystemTime::now();
    let err = |c: &str, k: &str| parse(c.as_bytes(), k.as_bytes(), now).unwrap_err();
    assert!(
        err(&cert, &other_key).contains("not the certificate's"),
        "{}",
        err(&cert, &other_key)
    );
    assert!(err("", &key).contains("no CERTIFICATE"));
    assert!(err(&key, &key).contains("no CERTIFICATE"));
    assert!(err(&cert, "").contains("no private key"));
    assert!(err(&cert, &cert).contains("no private key"));
    // Swapped files: the key where the certificate belongs.
    assert!(err(&key, &cert).contains("no CERTIFICATE"));
    let broken = cert.replace("MII", "!!!");
    assert!(!err(&broken, &key).is_empty());
    // A CERTIFICATE block that is not DER.
    let junk = "-----BEGIN CERTIFICATE-----\naGVsbG8=\n-----END CERTIFICATE-----\n";
    assert!(
        err(junk, &key).contains("cannot be parsed"),
        "{}",
        err(junk, &key)
    );
}

#[test]
fn expired_and_future_certificates_are_refused() {
    let alg = &rcgen::PKCS_ECDSA_P256_SHA256;
    let (old, key) = pair(&["a.test"], -30, -1, alg);
    let e = parse(old.as_bytes(), key.as_bytes(), SystemTime::now()).unwrap_err();
    assert!(e.starts_with("the certificate expired at 20"), "{e}");
    assert!(e.ends_with('Z'), "{e}");
    let (future, key) = pair(&["a.test"], 2, 30, alg);
    let e = parse(future.as_bytes(), key.as_bytes(), SystemTime::now()).unwrap_err();
    assert!(e.contains("not valid before"), "{e}");
}

#[test]
fn wildcards_cover_one_label() {
    assert!(covers("a.test", "a.test"));
    assert!(!covers("a.test", "b.a.test"));
    assert!(covers("*.a.test", "b.a.test"));
    assert!(!covers("*.a.test", "a.test"));
    assert!(!covers("*.a.test", "c.b.a.test"));
    assert!(!covers("*.a.test", ".a.test"));
    assert!(covers("*.a.test", "B.A.Test"));
    assert!(covers("a.test", "A.TEST"));
}
