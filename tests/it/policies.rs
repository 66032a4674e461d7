//! A route's own policies: `max-body`, `allow-ips` / `deny-ips`, `timeout`, and the answers a
//! route gives itself (`redirect`, `respond`), on every engine.

use std::io::Write;

use crate::support::*;

#[test]
fn a_body_over_max_body_gets_413_and_the_upstream_never_a_whole_request() {
    let (mono, new) = (Backend::start("monolith"), Backend::start("new"));
    let text = Config::new()
        .default("monolith")
        .server("h2c = true")
        .upstream("monolith", &mono.addr())
        .upstream("new", &new.addr())
        .route("uploads", "/uploads", |r| {
            r.new("new").toml("max-body", "\"1KB\"")
        })
        .build();
    let big = vec![b'x'; 4096];
    for fast_path_off in [false, true] {
        let proxy = Proxy::start_with_env(&text, engine_env(fast_path_off));
        // Declared too large: refused before anything is read or forwarded, `Expect` or not.
        let r = proxy
            .client()
            .request("POST", "/uploads/1", &[], &big)
            .unwrap();
        assert_eq!(r.status, 413, "fast path off: {fast_path_off}");
        let r = proxy
            .client()
            .request("POST", "/uploads/1", &[("Expect", "100-continue")], &big)
            .unwrap();
        assert_eq!(r.status, 413);
        // Chunked: counted as it passes; past the limit, 413 and the upstream's request ends
        // unfinished (never a whole request to act on).
        let mut c = Client::connect(proxy.port);
        let mut req =
            b"POST /uploads/2 HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
        for _ in 0..4 {
            req.extend_from_slice(b"400\r\n");
            req.extend_from_slice(&[b'y'; 1024]);
            req.extend_from_slice(b"\r\n");
        }
        req.extend_from_slice(b"0\r\n\r\n");
        let r = c.send_early_answered(&req).unwrap();
        assert_eq!(r.status, 413);
        // At the limit, it passes whole.
        let r = proxy
            .client()
            .request("POST", "/uploads/3", &[], &big[..1024])
            .unwrap();
        assert_eq!(r.status, 200);
        // HTTP/2, declared and not.
        let file = std::env::temp_dir().join(format!("strangle-big-{}", proxy.port));
        std::fs::write(&file, &big).unwrap();
        let data = format!("@{}", file.display());
        let (status, _) = crate::http2::curl(
            proxy.port,
            "/uploads/4",
            &["--http2-prior-knowledge", "--data-binary", &data],
        );
        assert!(status.starts_with("413"), "{status}");
        // Without a length (HTTP/2 has no chunked coding: nghttp sends no content-length).
        let out = std::process::Command::new("nghttp")
            .args(["-v", "--no-content-length", "-d"])
            .arg(&file)
            .arg(format!("http://127.0.0.1:{}/uploads/5", proxy.port))
            .output()
            .unwrap();
        let out = String::from_utf8_lossy(&out.stdout);
        assert!(out.contains(":status: 413"), "{out}");
        let _ = std::fs::remove_file(&file);
    }
    // What reached the upstream past the limit was never a whole request: its body never
    // ended (the backend's read of it failed, and it kept nothing of it).
    for seen in new.seen() {
        if seen.target == "/uploads/3" {
            assert_eq!(seen.body.len(), 1024);
        } else {
            assert!(
                seen.body.is_empty(),
                "{} got {} bytes",
                seen.target,
                seen.body.len()
            );
        }
    }
    assert!(!new
        .seen()
        .iter()
        .any(|s| s.target == "/uploads/1" || s.target == "/uploads/4"));
    assert!(mono.seen().is_empty());
}

#[test]
fn allow_and_deny_ips_judge_the_trusted_client_address() {
    let mono = Backend::start("monolith");
    let config = |trusted: &str| {
        Config::new()
            .default("monolith")
            .server(trusted)
            .upstream("monolith", &mono.addr())
            .route("internal", "/internal", |r| {
                r.legacy("monolith").toml("allow-ips", r#"["10.0.0.0/8"]"#)
            })
            .route("loopback", "/loopback", |r| {
                r.legacy("monolith")
                    .toml("allow-ips", r#"["127.0.0.0/8"]"#)
                    .toml("deny-ips", r#"["127.0.0.2"]"#)
            })
            .route("blocked", "/blocked", |r| {
                r.legacy("monolith").toml("deny-ips", r#"["127.0.0.1/32"]"#)
            })
            .build()
    };
    let proxy = Proxy::start(&config(""));
    let xff = [("x-forwarded-for", "10.1.2.3")];
    assert_eq!(get(proxy.port, "/internal/a", &[]).status, 403);
    // A client's own X-Forwarded-For is not believed from a peer that is not trusted.
    assert_eq!(get(proxy.port, "/internal/a", &xff).status, 403);
    assert_eq!(get(proxy.port, "/loopback/a", &[]).status, 200);
    assert_eq!(get(proxy.port, "/blocked/a", &[]).status, 403);
    assert_eq!(get(proxy.port, "/other", &[]).status, 200);
    drop(proxy);
    // Behind a trusted proxy, the address it vouches for is the one judged.
    let proxy = Proxy::start(&config("trusted-proxies = [\"127.0.0.0/8\"]"));
    assert_eq!(get(proxy.port, "/internal/a", &xff).status, 200);
    assert_eq!(get(proxy.port, "/loopback/a", &xff).status, 403);
    let spoofed = [("x-forwarded-for", "127.0.0.2")];
    assert_eq!(get(proxy.port, "/loopback/a", &spoofed).status, 403);
    assert_eq!(
        mono.seen()
            .iter()
            .filter(|s| s.target.starts_with("/internal"))
            .count(),
        1
    );
}

#[test]
fn a_route_redirects_or_answers_itself_and_a_write_freeze_lets_reads_pass() {
    let mono = Backend::start("monolith");
    let text = Config::new()
        .default("monolith")
        .server("h2c = true")
        .upstream("monolith", &mono.addr())
        .route("old", "/old-bookings", |r| {
            r.toml(
                "redirect",
                r#"{ to = "https://new.example.com/v2$path$query", status = 301 }"#,
            )
        })
        .route("freeze", "/bookings", |r| {
            r.toml("methods", r#"["POST", "PUT", "PATCH", "DELETE"]"#)
                .toml(
                    "respond",
                    r#"{ status = 503, body = "{\"error\":\"read-only while data moves\"}", content-type = "application/json", headers = { "retry-after" = "120" } }"#,
                )
        })
        .route("bookings", "/bookings", |r| r.legacy("monolith"))
        .build();
    for fast_path_off in [false, true] {
        let proxy = Proxy::start_with_env(&text, engine_env(fast_path_off));
        let mut c = proxy.client();
        let r = c.get("/old-bookings/42/./seats?a=1&b=%20", &[]).unwrap();
        assert_eq!(r.status, 301);
        assert_eq!(
            r.header("location"),
            Some("https://new.example.com/v2/old-bookings/42/seats?a=1&b=%20")
        );
        // The path as routed (canonical): nothing a client spells reaches the Location raw.
        let r = c.get("/old-bookings/%0d%0aSet-Cookie:x", &[]).unwrap();
        assert_eq!(r.status, 400);
        let mut c = proxy.client();
        let r = c.request("POST", "/bookings/1", &[], b"{}").unwrap();
        assert_eq!(r.status, 503);
        assert_eq!(r.header("retry-after"), Some("120"));
        assert_eq!(r.header("content-type"), Some("application/json"));
        assert_eq!(r.text(), r#"{"error":"read-only while data moves"}"#);
        // Reads pass to the monolith.
        let mut c = proxy.client();
        let r = c.get("/bookings/1", &[]).unwrap();
        assert_eq!((r.status, r.text().as_str()), (200, "monolith"));
        let (status, body) = crate::http2::curl(
            proxy.port,
            "/bookings/2",
            &["--http2-prior-knowledge", "-X", "DELETE"],
        );
        assert!(status.starts_with("503 2"), "{status}");
        assert!(body.contains("read-only"));
    }
    assert!(mono
        .seen()
        .iter()
        .all(|s| s.method == "GET" || s.method == "HEAD"));
}

/// strangle's own answers before the body was read (a write freeze's fixed answer, a 401)
/// read and drop a small body, so a keep-alive client's next request goes on the same
/// connection; a large, slow or `Expect`ed body ends the connection as before, and the answer
/// never waits for it.
#[test]
fn own_answers_discard_a_small_unread_body_and_keep_the_connection() {
    let mono = Backend::start("monolith");
    let text = Config::new()
        .default("monolith")
        .upstream("monolith", &mono.addr())
        .route("freeze", "/bookings", |r| {
            r.toml("methods", r#"["POST"]"#)
                .toml("respond", r#"{ status = 503, body = "frozen" }"#)
        })
        .build();
    for fast_path_off in [false, true] {
        let proxy = Proxy::start_with_env(&text, engine_env(fast_path_off));
        let mut c = proxy.client();
        let body = vec![b'x'; 2000];
        for _ in 0..3 {
            let r = c.request("POST", "/bookings/1", &[], &body).unwrap();
            assert_eq!((r.status, r.text().as_str()), (503, "frozen"));
            assert_eq!(
                r.header("connection"),
                Some("keep-alive"),
                "off: {fast_path_off}"
            );
        }
        // Chunked, and a next request pipelined right behind the body: the body is dropped,
        // the next request is read as one (and routed as one).
        let r = c
            .send_raw(
                b"POST /bookings/2 HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n\
                  5\r\nhello\r\n0\r\n\r\nGET /after HTTP/1.1\r\nHost: a\r\n\r\n",
            )
            .unwrap();
        assert_eq!(r.status, 503);
        let r = c.read_response().unwrap();
        assert_eq!((r.status, r.text().as_str()), (200, "monolith"));
        assert_eq!(mono.seen().last().unwrap().target, "/after");
        let r = c.get("/bookings/3", &[]).unwrap();
        assert_eq!(r.status, 200, "the same connection still serves");

        // Declared over 64 KiB and never sent: answered at once, then the connection ends.
        let mut c = proxy.client();
        c.stream()
            .write_all(b"POST /bookings/4 HTTP/1.1\r\nHost: a\r\nContent-Length: 1000000\r\n\r\n")
            .unwrap();
        let r = c.read_response().unwrap();
        assert_eq!((r.status, r.header("connection")), (503, Some("close")));
        assert!(c.closed_by_peer());
        // Small but slow: answered at once; the connection ends when the rest does not come.
        let mut c = proxy.client();
        c.stream()
            .write_all(b"POST /bookings/5 HTTP/1.1\r\nHost: a\r\nContent-Length: 100\r\n\r\nabc")
            .unwrap();
        let r = c.read_response().unwrap();
        assert_eq!(r.status, 503);
        assert!(
            c.closed_by_peer(),
            "a body that stalls is not waited for past a second"
        );
        // A client that waits for `100 Continue` never sends its body: no next request can be
        // taken for it.
        let mut c = proxy.client();
        c.stream()
            .write_all(b"POST /bookings/6 HTTP/1.1\r\nHost: a\r\nContent-Length: 10\r\nExpect: 100-continue\r\n\r\n")
            .unwrap();
        let r = c.read_response().unwrap();
        assert_eq!((r.status, r.header("connection")), (503, Some("close")));
        assert!(c.closed_by_peer());
    }
    assert!(mono.seen().iter().all(|s| s.method == "GET"));
}

#[test]
fn a_routes_timeout_overrides_its_upstreams() {
    let mono = Backend::start("monolith");
    let text = Config::new()
        .default("monolith")
        .upstream_keys(
            "monolith",
            &format!("addresses = [\"{}\"]\ntimeout = \"10s\"", mono.addr()),
        )
        .route("quick", "/quick", |r| {
            r.legacy("monolith").toml("timeout", "\"300ms\"")
        })
        .route("slow", "/slow", |r| r.legacy("monolith"))
        .build();
    let proxy = Proxy::start(&text);
    // Answered after 2 s: past the route's 300 ms (504), well within the upstream's 10 s.
    let r = get(proxy.port, "/quick/1", &[("x-delay-ms", "2000")]);
    assert_eq!(r.status, 504);
    let r = get(proxy.port, "/slow/1", &[("x-delay-ms", "600")]);
    assert_eq!(r.status, 200);
}
