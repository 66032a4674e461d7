//! TLS and HTTP/2 from clients: `[[server.tls]]` listeners with certificates by SNI, HTTP/1.1
//! and HTTP/2 (curl, h2load, nghttp), h2c with prior knowledge, certificate reloads (a
//! Kubernetes Secret volume's `..data` swap), and what bad certificates and slow clients get.
//! The CA and certificates are made here with rcgen; every connection is on loopback.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::invoke::{lambda_env, InvokeEndpoint};
use crate::support::*;

/// A CA, and a directory for the certificates it signs.
struct Pki {
    ca: rcgen::CertifiedIssuer<'static, rcgen::KeyPair>,
    dir: tempfile::TempDir,
}

/// A certificate (PEM) and its key (PEM).
type Pair = (String, String);

impl Pki {
    fn new() -> Pki {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        // Names of their own: a leaf whose issuer reads as its subject looks self-signed.
        params.distinguished_name = rcgen::DistinguishedName::new();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "strangle test CA");
        let ca = rcgen::CertifiedIssuer::self_signed(params, key).unwrap();
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("ca.pem"), ca.pem()).unwrap();
        Pki { ca, dir }
    }

    fn ca_file(&self) -> PathBuf {
        self.dir.path().join("ca.pem")
    }

    /// A certificate for `names`, valid from `from` to `to` days around now.
    fn leaf_for(&self, names: &[&str], from: i64, to: i64) -> Pair {
        let key = rcgen::KeyPair::generate().unwrap();
        let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
        let mut params = rcgen::CertificateParams::new(names.clone()).unwrap();
        params.distinguished_name = rcgen::DistinguishedName::new();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, names[0].as_str());
        let now = time::OffsetDateTime::now_utc();
        params.not_before = now + time::Duration::days(from);
        params.not_after = now + time::Duration::days(to);
        let cert = params.signed_by(&key, &self.ca).unwrap();
        (cert.pem(), key.serialize_pem())
    }

    fn leaf(&self, names: &[&str]) -> Pair {
        self.leaf_for(names, -1, 30)
    }

    /// Writes `pair` as `NAME.crt` and `NAME.key`; returns their paths.
    fn write(&self, name: &str, (cert, key): &Pair) -> (PathBuf, PathBuf) {
        let (c, k) = (
            self.dir.path().join(format!("{name}.crt")),
            self.dir.path().join(format!("{name}.key")),
        );
        std::fs::write(&c, cert).unwrap();
        std::fs::write(&k, key).unwrap();
        (c, k)
    }

    /// A Kubernetes Secret volume in `DIR/NAME/`: `tls.crt` and `tls.key` are symlinks through
    /// `..data`, which points at a timestamped directory; an update writes a new directory and
    /// renames a new `..data` link over the old one (the kubelet's atomic writer).
    fn secret(&self, name: &str, generation: u32, (cert, key): &Pair) -> (PathBuf, PathBuf) {
        let vol = self.dir.path().join(name);
        let gen = vol.join(format!("..2026_12_02_{generation}"));
        std::fs::create_dir_all(&gen).unwrap();
        std::fs::write(gen.join("tls.crt"), cert).unwrap();
        std::fs::write(gen.join("tls.key"), key).unwrap();
        let tmp = vol.join("..data_tmp");
        std::os::unix::fs::symlink(gen.file_name().unwrap(), &tmp).unwrap();
        std::fs::rename(&tmp, vol.join("..data")).unwrap();
        for f in ["tls.crt", "tls.key"] {
            let _ = std::os::unix::fs::symlink(format!("..data/{f}"), vol.join(f));
        }
        (vol.join("tls.crt"), vol.join("tls.key"))
    }
}

fn der(pem: &str) -> Vec<u8> {
    use rustls::pki_types::pem::PemObject;
    rustls::pki_types::CertificateDer::from_pem_slice(pem.as_bytes())
        .unwrap()
        .to_vec()
}

/// `[[server.tls]]` on `port` with the pairs given (the first is the default) and more keys.
fn tls_section(port: u16, pairs: &[(PathBuf, PathBuf)], keys: &str) -> String {
    let certs: Vec<String> = pairs
        .iter()
        .map(|(c, k)| {
            format!(
                "{{ cert = \"{}\", key = \"{}\" }}",
                c.display(),
                k.display()
            )
        })
        .collect();
    format!(
        "[[server.tls]]\nlisten = [\"127.0.0.1:{port}\"]\ncerts = [{}]\n{keys}\n",
        certs.join(", ")
    )
}

/// The config with the TLS section inside `[server]` (it must come before other sections).
fn config_with(tls: &str, server: &str, rest: Config) -> String {
    let text = rest.server(server).build();
    // `[server]`'s keys end at the first blank line; the TLS tables follow them.
    let (head, tail) = text.split_once("\n\n[").unwrap_or((&text, ""));
    format!("{head}\n\n{tls}\n[{tail}")
}

/// curl to `https://NAME:PORT/PATH` resolved to loopback and verified with the test CA.
/// Returns (exit code, "STATUS VERSION", stderr).
fn curl(pki: &Pki, name: &str, port: u16, path: &str, args: &[&str]) -> (i32, String, String) {
    let out = Command::new("curl")
        .args(["-sS", "--max-time", "10", "-o", "/dev/null"])
        .args(["-w", "%{http_code} %{http_version}"])
        .arg("--cacert")
        .arg(pki.ca_file())
        .arg("--resolve")
        .arg(format!("{name}:{port}:127.0.0.1"))
        .args(args)
        .arg(format!("https://{name}:{port}{path}"))
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        stdout_of(&out),
        stderr_of(&out),
    )
}

/// A TLS client trusting only the test CA, with or without SNI, offering `alpn`.
fn client_config(pki: &Pki, sni: bool, alpn: &[&[u8]]) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(der(&pki.ca.pem()).into()).unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.enable_sni = sni;
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Arc::new(config)
}

type TlsConn = rustls::StreamOwned<rustls::ClientConnection, TcpStream>;

/// A handshake with `name` (verified for `name`, sent as SNI when `sni`); the connection and
/// the leaf certificate it got.
fn connect(pki: &Pki, port: u16, name: &str, sni: bool) -> (TlsConn, Vec<u8>) {
    let config = client_config(pki, sni, &[b"http/1.1"]);
    let server_name = rustls::pki_types::ServerName::try_from(name.to_string()).unwrap();
    let conn = rustls::ClientConnection::new(config, server_name).unwrap();
    let tcp = TcpStream::connect(("127.0.0.1", port)).unwrap();
    tcp.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut tls = rustls::StreamOwned::new(conn, tcp);
    while tls.conn.is_handshaking() {
        tls.conn.complete_io(&mut tls.sock).unwrap();
    }
    let leaf = tls.conn.peer_certificates().unwrap()[0].to_vec();
    (tls, leaf)
}

/// One keep-alive HTTP/1.1 request on `tls`; the status.
fn request(tls: &mut TlsConn, path: &str) -> u16 {
    write!(tls, "GET {path} HTTP/1.1\r\nHost: a.test\r\n\r\n").unwrap();
    tls.flush().unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        assert_eq!(tls.read(&mut byte).unwrap(), 1, "closed mid-response");
        head.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&head).into_owned();
    let len: usize = head
        .lines()
        .find_map(|l| {
            l.to_ascii_lowercase()
                .strip_prefix("content-length:")
                .map(|v| v.trim().parse().unwrap())
        })
        .unwrap_or(0);
    let mut body = vec![0u8; len];
    tls.read_exact(&mut body).unwrap();
    head[9..12].parse().unwrap()
}

struct Edge {
    pki: Pki,
    proxy: Proxy,
    tls_port: u16,
    legacy: Backend,
    a: Pair,
}

/// A proxy with a plain listener (h2c on), a TLS listener serving `a.test` (default) and
/// `b.test`, and `/bookings` on a legacy backend.
fn edge(tls_keys: &str) -> Edge {
    let pki = Pki::new();
    let a = pki.leaf(&["a.test"]);
    let b = pki.leaf(&["b.test", "*.b.test"]);
    let pairs = [pki.write("a", &a), pki.write("b", &b)];
    let legacy = Backend::start("legacy");
    let tls_port = free_port();
    let text = config_with(
        &tls_section(tls_port, &pairs, tls_keys),
        "h2c = true",
        Config::new()
            .upstream("legacy", &legacy.addr())
            .route("bookings", "/bookings", |r| r.legacy("legacy")),
    );
    let proxy = Proxy::start(&text);
    Edge {
        pki,
        proxy,
        tls_port,
        legacy,
        a,
    }
}

#[test]
fn http1_and_http2_over_tls_and_h2c_go_through_the_same_pipeline() {
    let e = edge("");
    let (code, out, err) = curl(&e.pki, "a.test", e.tls_port, "/bookings/1", &["--http1.1"]);
    assert_eq!(
        (code, out.as_str()),
        (0, "200 1.1"),
        "{err}\n{}",
        e.proxy.stderr()
    );
    let (code, out, err) = curl(&e.pki, "a.test", e.tls_port, "/bookings/2", &["--http2"]);
    assert_eq!(
        (code, out.as_str()),
        (0, "200 2"),
        "{err}\n{}",
        e.proxy.stderr()
    );
    // The real scheme reaches the upstream, and the path the route was chosen on.
    let seen = e.legacy.seen();
    assert_eq!(seen.len(), 2);
    for (s, path) in seen.iter().zip(["/bookings/1", "/bookings/2"]) {
        assert_eq!(s.target, path);
        assert_eq!(s.header("x-forwarded-proto"), Some("https"));
    }
    // A path that is not canonical is canonicalised (or refused) the same over HTTP/2.
    let (_, out, _) = curl(
        &e.pki,
        "a.test",
        e.tls_port,
        "/bookings/%2e%2e/admin",
        &["--http2", "--path-as-is"],
    );
    assert_ne!(
        out, "200 2",
        "a dot-segment stepped out of its route over HTTP/2"
    );
    // Unrouted paths get 404 over HTTP/2 as over HTTP/1.
    let (_, out, _) = curl(&e.pki, "a.test", e.tls_port, "/nowhere", &["--http2"]);
    assert_eq!(out, "404 2");

    // h2c with prior knowledge on the plain listener; HTTP/1 there still works, including a
    // request shorter than HTTP/2's preface.
    let (status, _) = crate::http2::h2c_get(e.proxy.port, "/bookings/3", &[]);
    assert_eq!(status, "200 2");
    assert_eq!(
        e.legacy.seen().last().unwrap().header("x-forwarded-proto"),
        Some("http")
    );
    assert_eq!(get(e.proxy.port, "/bookings/4", &[]).status, 200);
    let (r, _) = raw(e.proxy.port, b"GET /bookings/5 HTTP/1.0\r\n\r\n");
    assert_eq!(
        r.expect("an answer to a short HTTP/1.0 request").status,
        200
    );
    let (r, _) = raw(e.proxy.port, b"PRI * HTTP/1.1\r\nHost: x\r\n\r\n");
    assert!(
        r.is_none_or(|r| r.status >= 400),
        "a PRI request that is not the preface"
    );

    // Load over both: every request answered.
    for url in [
        format!("https://127.0.0.1:{}/bookings/load", e.tls_port),
        format!("http://127.0.0.1:{}/bookings/load", e.proxy.port),
    ] {
        let out = Command::new("h2load")
            .args(["-n", "400", "-c", "4", "-m", "10"])
            .arg(&url)
            .output()
            .expect("h2load (nghttp2-client; make test-deps installs it)");
        let text = stdout_of(&out);
        assert!(
            text.contains("400 total, 400 started, 400 done, 400 succeeded, 0 failed"),
            "{url}:\n{text}\n{}",
            e.proxy.stderr()
        );
        assert!(text.contains("h2"), "{text}");
    }
    // Each stream was logged as a request.
    let log = e.proxy.log_when(807);
    let h2 = log.iter().filter(|l| l["path"] == "/bookings/load").count();
    assert_eq!(h2, 800);
}

#[test]
fn sni_picks_the_certificate_and_clients_without_a_known_name_get_the_default() {
    let e = edge("");
    assert_eq!(
        curl(&e.pki, "b.test", e.tls_port, "/bookings/1", &[]).1,
        "200 2"
    );
    assert_eq!(
        curl(&e.pki, "x.b.test", e.tls_port, "/bookings/1", &[]).1,
        "200 2"
    );
    // A name no certificate covers gets the default (a.test's), which curl refuses for it.
    let (code, _, err) = curl(&e.pki, "c.test", e.tls_port, "/bookings/1", &[]);
    assert_eq!(code, 60, "{err}");
    assert!(
        err.contains("a.test") || err.contains("no alternative certificate subject name"),
        "{err}"
    );
    // Without SNI: the default.
    let (_, leaf) = connect(&e.pki, e.tls_port, "a.test", false);
    assert_eq!(leaf, der(&e.a.0));
    let (_, leaf) = connect(&e.pki, e.tls_port, "a.test", true);
    assert_eq!(leaf, der(&e.a.0));
}

#[test]
fn alpn_and_the_lowest_version_are_the_listeners() {
    let e = edge("alpn = [\"http/1.1\"]\nmin-version = \"1.3\"");
    // No h2 offered: a client that wants HTTP/2 gets HTTP/1.1.
    assert_eq!(
        curl(&e.pki, "a.test", e.tls_port, "/bookings/1", &["--http2"]).1,
        "200 1.1"
    );
    // TLS 1.2 is refused; 1.3 passes.
    let (code, _, err) = curl(
        &e.pki,
        "a.test",
        e.tls_port,
        "/bookings/1",
        &["--tls-max", "1.2"],
    );
    assert_ne!(code, 0, "TLS 1.2 was accepted: {err}");
    assert_eq!(
        curl(&e.pki, "a.test", e.tls_port, "/bookings/1", &["--tlsv1.3"]).1,
        "200 1.1"
    );
    // An h2-only listener refuses a client that would be served HTTP/1.1 (none offered, or
    // only http/1.1).
    let h2 = edge("alpn = [\"h2\"]");
    let (code, _, _) = curl(
        &h2.pki,
        "a.test",
        h2.tls_port,
        "/bookings/1",
        &["--http1.1"],
    );
    assert_ne!(code, 0);
    let (code, _, _) = curl(
        &h2.pki,
        "a.test",
        h2.tls_port,
        "/bookings/1",
        &["--http1.1", "--no-alpn"],
    );
    assert_ne!(code, 0);
    assert_eq!(
        curl(&h2.pki, "a.test", h2.tls_port, "/bookings/1", &["--http2"]).1,
        "200 2"
    );
    assert!(h2.legacy.seen().len() == 1);
    // By default 1.2 is accepted.
    let d = edge("");
    assert_eq!(
        curl(
            &d.pki,
            "a.test",
            d.tls_port,
            "/bookings/1",
            &["--tls-max", "1.2"]
        )
        .1,
        "200 2"
    );
}

#[test]
fn a_secret_swap_reaches_new_connections_and_spares_open_ones_and_bad_pairs_are_refused() {
    let pki = Pki::new();
    let first = pki.leaf(&["a.test"]);
    let files = pki.secret("tls", 1, &first);
    let legacy = Backend::start("legacy");
    let tls_port = free_port();
    let text = config_with(
        &tls_section(tls_port, &[files], ""),
        "",
        Config::new()
            .upstream("legacy", &legacy.addr())
            .route("bookings", "/bookings", |r| r.legacy("legacy")),
    );
    let proxy = Proxy::start(&text);
    let (mut open, leaf) = connect(&pki, tls_port, "a.test", true);
    assert_eq!(leaf, der(&first.0));
    assert_eq!(request(&mut open, "/bookings/1"), 200);

    let second = pki.leaf(&["a.test"]);
    pki.secret("tls", 2, &second);
    assert!(
        proxy.wait_for_log("certificate reloaded", Duration::from_secs(10)),
        "{}",
        proxy.stderr()
    );
    let (_, leaf) = connect(&pki, tls_port, "a.test", true);
    assert_eq!(
        leaf,
        der(&second.0),
        "a new connection got the old certificate"
    );
    // The connection opened before the swap goes on.
    assert_eq!(request(&mut open, "/bookings/2"), 200);

    // A mismatched pair (the new certificate with another key): refused, logged, counted;
    // the pair in force stays.
    let third = pki.leaf(&["a.test"]);
    pki.secret("tls", 3, &(third.0.clone(), second.1.clone()));
    assert!(
        proxy.wait_for_log("not the certificate's", Duration::from_secs(10)),
        "{}",
        proxy.stderr()
    );
    assert!(proxy.stderr().contains("certificate not reloaded"));
    let (_, leaf) = connect(&pki, tls_port, "a.test", true);
    assert_eq!(leaf, der(&second.0));
    // An expired one too.
    pki.secret("tls", 4, &pki.leaf_for(&["a.test"], -30, -1));
    assert!(
        proxy.wait_for_log("the certificate expired at", Duration::from_secs(10)),
        "{}",
        proxy.stderr()
    );
    let (_, leaf) = connect(&pki, tls_port, "a.test", true);
    assert_eq!(leaf, der(&second.0));
    let metrics = proxy.admin("GET", "/metrics", b"").text();
    let line = |result: &str| {
        format!("strangle_tls_certificate_reloads_total{{listener=\"127.0.0.1:{tls_port}\",result=\"{result}\"}} ")
    };
    assert!(metrics.contains(&format!("{}1\n", line("ok"))), "{metrics}");
    assert!(
        metrics.contains(&format!("{}2\n", line("failed"))),
        "{metrics}"
    );
    assert!(
        metrics.contains("strangle_tls_certificate_expiry_timestamp_seconds{listener="),
        "{metrics}"
    );
    assert_eq!(request(&mut open, "/bookings/3"), 200);
    // A bad pair on disk blocks no reload (nor, so, a shift or a rollback): listeners change
    // only at a restart, and the pair in force stays; the reload warns.
    let r = proxy.admin("POST", "/reload", b"");
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(
        proxy.wait_for_log("the certificate expired at", Duration::from_secs(5)),
        "{}",
        proxy.stderr()
    );
}

#[test]
fn bad_certificates_stop_the_config_with_where_and_why() {
    let pki = Pki::new();
    let dir = tempfile::tempdir().unwrap();
    let good = pki.leaf(&["a.test"]);
    let cases: [(&str, Pair, &str); 3] = [
        (
            "expired",
            pki.leaf_for(&["a.test"], -30, -1),
            "the certificate expired at",
        ),
        (
            "mismatched",
            (good.0.clone(), pki.leaf(&["a.test"]).1),
            "not the certificate's",
        ),
        (
            "swapped",
            (good.1.clone(), good.0.clone()),
            "no CERTIFICATE",
        ),
    ];
    for (name, pair, expect) in cases {
        let files = pki.write(name, &pair);
        let path = dir.path().join(format!("{name}.toml"));
        let text = format!(
            "[server]\nlisten = [\"127.0.0.1:{}\"]\n\n{}",
            free_port(),
            tls_section(free_port(), &[files], "")
        );
        std::fs::write(&path, text).unwrap();
        let (ok, out) = check(&path);
        assert!(!ok, "{name}: {out}");
        assert!(out.contains(expect), "{name}: {out}");
        // `FILE:LINE:COL` pointing at the `certs` entry.
        assert!(out.contains(&format!("{name}.toml:6:")), "{name}: {out}");
        // And serve refuses to start.
        let said = serve_refused(&path);
        assert!(said.contains(expect), "{said}");
    }
    // Keys that are wrong in themselves.
    let files = pki.write("good", &good);
    for (keys, expect) in [
        ("alpn = [\"spdy/3\"]", "unknown ALPN protocol"),
        ("min-version = \"1.1\"", "unknown TLS `min-version`"),
        ("handshake-timeout = \"0s\"", "must be more than 0"),
    ] {
        let path = dir.path().join("keys.toml");
        let text = format!(
            "[server]\nlisten = [\"127.0.0.1:{}\"]\n\n{}",
            free_port(),
            tls_section(free_port(), std::slice::from_ref(&files), keys)
        );
        std::fs::write(&path, text).unwrap();
        let (ok, out) = check(&path);
        assert!(!ok && out.contains(expect), "{keys}: {out}");
    }
    // The admin API on a TLS listener's address.
    let port = free_port();
    let path = dir.path().join("admin.toml");
    let text = format!(
        "[server]\nlisten = [\"127.0.0.1:{}\"]\n\n{}\n[admin]\nlisten = \"127.0.0.1:{port}\"\n",
        free_port(),
        tls_section(port, std::slice::from_ref(&files), "")
    );
    std::fs::write(&path, text).unwrap();
    let (ok, out) = check(&path);
    assert!(
        !ok && out.contains("already in use by a proxy listener"),
        "{out}"
    );
    // Listeners that cannot all be bound: the same address twice, and every address and
    // one of them on one port.
    for (listen, admin) in [
        ("\"127.0.0.1:{p}\", \"127.0.0.1:{p}\"", "127.0.0.1:{q}"),
        ("\"0.0.0.0:{p}\"", "127.0.0.1:{p}"),
        (
            "\"[::ffff:127.0.0.1]:{p}\", \"127.0.0.1:{p}\"",
            "127.0.0.1:{q}",
        ),
    ] {
        let (p, q) = (free_port().to_string(), free_port().to_string());
        let path = dir.path().join("clash.toml");
        let text = format!(
            "[server]\nlisten = [{}]\n[admin]\nlisten = \"{}\"\n",
            listen.replace("{p}", &p),
            admin.replace("{p}", &p).replace("{q}", &q)
        );
        std::fs::write(&path, text).unwrap();
        let (ok, out) = check(&path);
        assert!(!ok && out.contains("already in use by"), "{listen}: {out}");
    }
    // The same address as a plain listener.
    let port = free_port();
    let path = dir.path().join("same.toml");
    let text = format!(
        "[server]\nlisten = [\"127.0.0.1:{port}\"]\n\n{}",
        tls_section(port, std::slice::from_ref(&files), "")
    );
    std::fs::write(&path, text).unwrap();
    let (ok, out) = check(&path);
    assert!(!ok && out.contains("already in use by a listener"), "{out}");
}

#[test]
fn slow_and_plaintext_clients_of_a_tls_listener_are_closed_and_counted() {
    let e = edge("handshake-timeout = \"1s\"");
    let tls_port = e.tls_port;
    // Connects and says nothing: closed at the handshake deadline.
    let mut idle = TcpStream::connect(("127.0.0.1", tls_port)).unwrap();
    idle.set_read_timeout(Some(Duration::from_secs(8))).unwrap();
    let start = Instant::now();
    let mut buf = [0u8; 64];
    let n = idle.read(&mut buf).unwrap_or(0);
    assert_eq!(n, 0);
    assert!(
        start.elapsed() < Duration::from_secs(5),
        "{:?}",
        start.elapsed()
    );
    // Plain HTTP to the TLS port: refused by the handshake.
    let mut plain = TcpStream::connect(("127.0.0.1", tls_port)).unwrap();
    plain
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    plain
        .write_all(b"GET /bookings/1 HTTP/1.1\r\nHost: a\r\n\r\n")
        .unwrap();
    let mut answer = Vec::new();
    let _ = plain.read_to_end(&mut answer);
    assert!(
        !String::from_utf8_lossy(&answer).contains("200"),
        "plain HTTP was served on the TLS port"
    );
    let failures = |reason: &str| {
        format!("strangle_tls_handshake_failures_total{{listener=\"127.0.0.1:{tls_port}\",reason=\"{reason}\"}} 1\n")
    };
    // Counted once the handshake's task sees it fail, which may be just after the client saw
    // the connection close.
    eventually(Duration::from_secs(5), "both failures counted", || {
        let metrics = e.proxy.admin("GET", "/metrics", b"").text();
        metrics.contains(&failures("timeout")) && metrics.contains(&failures("error"))
    });
    assert!(e.legacy.seen().is_empty());

    // HTTP/1.1 over TLS keeps the plain listener's head deadline (10s by default; the
    // handshake's is 1s, which a head trickling in would outlive).
    // So does HTTP/2 for its preface: a client that negotiated h2 and sends nothing, or half
    // the preface, is closed at the same deadline (Pingora's HTTP/2 handshake has none).
    let h2 = [&b""[..], &b"PRI * HTTP/2.0\r\n\r\n"[..]].map(|sent| {
        let config = client_config(&e.pki, true, &[b"h2"]);
        let name = rustls::pki_types::ServerName::try_from("a.test").unwrap();
        let conn = rustls::ClientConnection::new(config, name).unwrap();
        let tcp = TcpStream::connect(("127.0.0.1", tls_port)).unwrap();
        tcp.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        std::thread::spawn(move || {
            let mut tls = rustls::StreamOwned::new(conn, tcp);
            while tls.conn.is_handshaking() {
                tls.conn.complete_io(&mut tls.sock).unwrap();
            }
            assert_eq!(tls.conn.alpn_protocol(), Some(&b"h2"[..]));
            let start = Instant::now();
            tls.write_all(sent).unwrap();
            tls.flush().unwrap();
            let mut answer = Vec::new();
            let _ = tls.read_to_end(&mut answer);
            start.elapsed()
        })
    });
    let (mut tls, _) = connect(&e.pki, tls_port, "a.test", true);
    tls.sock
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let start = Instant::now();
    tls.write_all(b"GET /bookings/1 HTTP/1.1\r\nHost: a.test\r\n")
        .unwrap();
    tls.flush().unwrap();
    let mut answer = Vec::new();
    let _ = tls.read_to_end(&mut answer);
    let took = start.elapsed();
    assert!(
        took >= Duration::from_secs(9) && took < Duration::from_secs(15),
        "{took:?}"
    );
    for h in h2 {
        let took = h.join().unwrap();
        assert!(
            took >= Duration::from_secs(9) && took < Duration::from_secs(15),
            "HTTP/2 preface: {took:?}"
        );
    }
    assert!(e.legacy.seen().is_empty());
}

#[test]
fn a_lambda_event_carries_the_real_scheme() {
    let pki = Pki::new();
    let pair = pki.write("a", &pki.leaf(&["a.test"]));
    let invoke = InvokeEndpoint::start();
    let tls_port = free_port();
    let text = config_with(
        &tls_section(tls_port, &[pair], ""),
        "",
        Config::new()
            .lambda("fn", invoke.port)
            .route("fn", "/fn", |r| r.new("fn")),
    );
    let proxy = Proxy::start_with_env(&text, &lambda_env());
    for version in ["--http1.1", "--http2"] {
        let (_, out, err) = curl(
            &pki,
            "a.test",
            tls_port,
            "/fn/1",
            &[version, "-H", "X-Forwarded-Proto: http"],
        );
        assert!(out.starts_with("200"), "{out} {err}\n{}", proxy.stderr());
    }
    let seen = invoke.seen();
    assert_eq!(seen.len(), 2);
    for inv in seen {
        let headers = &inv.event["headers"];
        assert_eq!(headers["x-forwarded-proto"], "https", "{}", inv.event);
        assert_eq!(inv.event["rawPath"], "/fn/1");
    }
}

#[test]
fn http2_connections_get_goaway_on_sigterm_and_their_streams_finish() {
    let e = edge("");
    let nghttp = std::process::Command::new("nghttp")
        .args(["-v", "-H", "x-delay-ms: 1500"])
        .arg(format!("https://127.0.0.1:{}/bookings/slow", e.tls_port))
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    eventually(
        Duration::from_secs(5),
        "the slow request reaches the backend",
        || {
            e.legacy
                .max_concurrent
                .load(std::sync::atomic::Ordering::Relaxed)
                > 0
        },
    );
    e.proxy.signal(nix::sys::signal::Signal::SIGTERM);
    let out = nghttp.wait_with_output().unwrap();
    let text = stdout_of(&out);
    assert!(text.contains("recv GOAWAY"), "{text}");
    assert!(text.contains(":status: 200"), "{text}");
}

#[test]
fn a_request_for_another_host_than_the_connections_server_name_gets_421() {
    let e = edge("");
    // The same name (any case, a port, a final dot): served; another name, though the
    // certificate covers it too (`*.b.test`): 421, HTTP/1.1 and HTTP/2 alike.
    for (host, want) in [
        ("b.test", "200"),
        ("B.Test:443", "200"),
        ("b.test.", "200"),
        ("x.b.test", "421"),
        ("a.test", "421"),
    ] {
        for http in ["--http1.1", "--http2"] {
            let (_, status, err) = curl(
                &e.pki,
                "b.test",
                e.tls_port,
                "/bookings/1",
                &[http, "-H", &format!("host: {host}")],
            );
            assert!(status.starts_with(want), "{host} {http}: {status} {err}");
        }
    }
    // Without SNI there is no name to hold the request to.
    let (mut tls, _) = connect(&e.pki, e.tls_port, "a.test", false);
    assert_eq!(request(&mut tls, "/bookings/1"), 200);
    let (mut tls, _) = connect(&e.pki, e.tls_port, "a.test", true);
    assert_eq!(request(&mut tls, "/bookings/1"), 200);
}
