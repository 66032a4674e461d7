//! Answers compressed for clients that accept it (`[server] compression`): gzip, brotli and
//! zstd by the client's `Accept-Encoding`, decoding to the upstream's bytes on every engine;
//! never a body already encoded, a small one, another type, a range, or a route that says no.

use crate::support::*;

/// A JSON document of about 6 KB, the same every time.
fn document() -> String {
    let items: Vec<String> = (0..200)
        .map(|i| format!(r#"{{"id":{i},"name":"booking {i}","seat":"{}A"}}"#, i % 30))
        .collect();
    format!("[{}]", items.join(","))
}

/// curl for `path` with `accept` as Accept-Encoding, decoding what comes (`--compressed`):
/// (head, decoded body). `http2`: over h2c.
fn fetch(port: u16, path: &str, accept: &str, http2: bool) -> (String, String) {
    let dir = tempfile::tempdir().unwrap();
    let head = dir.path().join("head");
    let mut cmd = std::process::Command::new("curl");
    cmd.args(["-sS", "--max-time", "10", "--compressed", "-D"])
        .arg(&head)
        .args(["-H", &format!("accept-encoding: {accept}")]);
    if http2 {
        cmd.arg("--http2-prior-knowledge");
    }
    let out = cmd
        .arg(format!("http://127.0.0.1:{port}{path}"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let head = std::fs::read_to_string(head).unwrap().to_ascii_lowercase();
    (head, String::from_utf8(out.stdout).unwrap())
}

#[test]
fn answers_are_compressed_for_clients_that_accept_it_and_decode_to_the_upstreams_bytes() {
    let doc = document();
    // Large enough that the backend sends it in many chunks (no length).
    let big: String = (0..60_000).map(|i| format!("line {i}\n")).collect();
    let (body, big_body) = (doc.clone(), big.clone());
    let mono = Backend::answering("monolith", move |seen, _| match seen.target.as_str() {
        "/small" => (200, "application/json", "{}".into()),
        "/image" => (200, "image/png", body.clone()),
        "/chunked" => (200, "text/plain", big_body.clone()),
        _ => (200, "application/json", body.clone()),
    });
    let text = Config::new()
        .default("monolith")
        .server("h2c = true\ncompression = { level = 5, min-size = \"1KB\", types = [\"text/*\", \"application/json\"] }")
        .upstream("monolith", &mono.addr())
        .route("raw", "/raw", |r| r.legacy("monolith").toml("compress", "false"))
        .build();
    for fast_path_off in [false, true] {
        let proxy = Proxy::start_with_env(&text, engine_env(fast_path_off));
        for (accept, coding) in [
            ("gzip", "gzip"),
            ("br", "br"),
            ("zstd", "zstd"),
            ("br;q=1, gzip;q=0.5", "br"),
        ] {
            for http2 in [false, true] {
                let (head, got) = fetch(proxy.port, "/bookings", accept, http2);
                assert!(
                    head.contains(&format!("content-encoding: {coding}")),
                    "{accept} http2 {http2} fast path off {fast_path_off}: {head}"
                );
                assert!(head.contains("vary: accept-encoding"), "{head}");
                assert!(
                    !head.contains(&format!("content-length: {}", doc.len())),
                    "{head}"
                );
                assert_eq!(got, doc, "{accept} http2 {http2}");
            }
        }
        // A body of many pieces (chunked from the upstream), every coding whole to its end.
        for accept in ["gzip", "br", "zstd"] {
            let (head, got) = fetch(proxy.port, "/chunked", accept, false);
            assert!(
                head.contains(&format!("content-encoding: {accept}")),
                "{head}"
            );
            assert_eq!(got.len(), big.len(), "{accept}");
            assert!(got == big, "{accept}: the decoded body differs");
        }
        // Weights: q=0 is never used, the highest wins.
        for (accept, coding) in [
            ("br;q=0, gzip", Some("gzip")),
            ("gzip;q=0", None),
            ("zstd;q=0.1, gzip", Some("gzip")),
        ] {
            let (head, got) = fetch(proxy.port, "/bookings", accept, false);
            match coding {
                Some(c) => assert!(
                    head.contains(&format!("content-encoding: {c}")),
                    "{accept}: {head}"
                ),
                None => assert!(!head.contains("content-encoding"), "{accept}: {head}"),
            }
            assert_eq!(got, doc);
        }
        // HEAD: the head GET would have, its Vary, no coding.
        let out = std::process::Command::new("curl")
            .args(["-sS", "-I", "-H", "accept-encoding: gzip"])
            .arg(format!("http://127.0.0.1:{}/bookings", proxy.port))
            .output()
            .unwrap();
        let head = String::from_utf8_lossy(&out.stdout).to_ascii_lowercase();
        assert!(
            head.contains("vary: accept-encoding") && !head.contains("content-encoding"),
            "{head}"
        );
        // A client that accepts none, a small body, another type, a route that says no: as
        // the upstream sent them.
        for (path, accept) in [
            ("/bookings", "identity"),
            ("/small", "gzip"),
            ("/image", "gzip"),
            ("/raw/1", "gzip"),
        ] {
            let (head, got) = fetch(proxy.port, path, accept, false);
            assert!(!head.contains("content-encoding"), "{path}: {head}");
            assert!(head.contains("content-length"), "{path}: {head}");
            assert!(got == doc || got == "{}", "{path}");
        }
        // Two on one connection after a compressed answer: the framing held.
        let mut c = proxy.client();
        for _ in 0..2 {
            let r = c.get("/bookings", &[("accept-encoding", "gzip")]).unwrap();
            assert_eq!(r.header("content-encoding"), Some("gzip"));
            assert!(r.body.len() < doc.len() / 3, "{}", r.body.len());
        }
    }
}

#[test]
fn an_answer_the_upstream_encoded_itself_passes_byte_for_byte() {
    // The upstream's own gzip (made by the gzip tool), with its length.
    let doc = document();
    let mut gzip = std::process::Command::new("gzip")
        .args(["-c", "-9"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    gzip.stdin
        .take()
        .unwrap()
        .write_all(doc.as_bytes())
        .unwrap();
    let gzipped = bytes::Bytes::from(gzip.wait_with_output().unwrap().stdout);
    let sent = gzipped.clone();
    let port = serve_http(move |_req| {
        let body = sent.clone();
        async move {
            let mut r = http::Response::new(http_body_util::Full::new(body));
            let h = r.headers_mut();
            h.insert("content-type", "application/json".parse().unwrap());
            h.insert("content-encoding", "gzip".parse().unwrap());
            r
        }
    });
    let text = Config::new()
        .default("monolith")
        .server("compression = { min-size = 10 }")
        .upstream("monolith", &format!("127.0.0.1:{port}"))
        .build();
    let proxy = Proxy::start(&text);
    // A client that takes gzip, and one that asks for brotli only: never encoded again, never
    // decoded (strangle passes a coding it did not make as it came).
    for accept in ["gzip", "br"] {
        let r = proxy
            .client()
            .get("/a", &[("accept-encoding", accept)])
            .unwrap();
        assert_eq!(r.header("content-encoding"), Some("gzip"), "{accept}");
        assert_eq!(r.body, gzipped, "{accept}");
    }
    let (_, got) = fetch(proxy.port, "/a", "gzip", false);
    assert_eq!(got, doc);
}

#[test]
fn a_lambda_answer_compressed_has_its_length_and_no_other_framing() {
    let watch = crate::lambda::LambdaWatch::start();
    let text = Config::new()
        .default("fn")
        .server("compression = { min-size = 100 }")
        .lambda("fn", watch.port)
        .build();
    let proxy = Proxy::start_with_env(&text, &crate::invoke::lambda_env());
    for version in ["HTTP/1.1", "HTTP/1.0"] {
        let req = format!(
            "GET /bookings/big?bytes=20000 {version}\r\nHost: a\r\nAccept-Encoding: gzip\r\n\r\n"
        );
        let r = send_once(proxy.port, req.as_bytes()).unwrap();
        assert_eq!(r.status, 200, "{version}");
        assert_eq!(r.header("content-encoding"), Some("gzip"));
        assert_eq!(r.header("transfer-encoding"), None, "{version}");
        assert_eq!(
            r.header("content-length").map(str::to_string),
            Some(r.body.len().to_string())
        );
        let mut gunzip = std::process::Command::new("gzip")
            .arg("-dc")
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        use std::io::Write;
        gunzip.stdin.take().unwrap().write_all(&r.body).unwrap();
        let plain = gunzip.wait_with_output().unwrap().stdout;
        assert_eq!(plain, "x".repeat(20_000).as_bytes(), "{version}");
    }
}
