//! What bad input gets: 400 and close for ambiguous framing, 400 for hostile paths, 431 for
//! oversized heads, a deadline for slow heads, 502/504 for broken upstreams, and no retry of a
//! request that was sent unless its method is idempotent.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use crate::support::*;

fn proxy_with_backend() -> (Proxy, Backend) {
    let (legacy, new) = (Backend::start("legacy"), Backend::start("new"));
    let text = split_config(&legacy, &new, "0%", "none").replace(
        "grace-period = \"5s\"",
        "grace-period = \"5s\"\nheader-timeout = \"1s\"\nmax-headers = 50\nmax-header-bytes = 8192",
    );
    drop(new);
    (Proxy::start(&text), legacy)
}

#[test]
fn ambiguous_framing_gets_400_and_close_and_nothing_is_forwarded() {
    let (proxy, backend) = proxy_with_backend();
    let cases: &[(&str, &[u8])] = &[
        ("CL and TE", b"POST /bookings HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"),
        ("TE and CL", b"POST /bookings HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n0\r\n\r\n"),
        ("same CL twice", b"POST /bookings HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\nContent-Length: 4\r\n\r\nabcd"),
        ("different CLs", b"POST /bookings HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\nContent-Length: 5\r\n\r\nabcd"),
        ("CL list", b"POST /bookings HTTP/1.1\r\nHost: x\r\nContent-Length: 4, 4\r\n\r\nabcd"),
        ("malformed CL", b"POST /bookings HTTP/1.1\r\nHost: x\r\nContent-Length: 4x\r\n\r\nabcd"),
        ("negative CL", b"POST /bookings HTTP/1.1\r\nHost: x\r\nContent-Length: -4\r\n\r\nabcd"),
        ("control byte in a value", b"GET /bookings HTTP/1.1\r\nHost: x\r\nX-A: a\x01b\r\n\r\n"),
        ("space in a name", b"GET /bookings HTTP/1.1\r\nHost: x\r\nX A: b\r\n\r\n"),
        ("NUL in a value", b"GET /bookings HTTP/1.1\r\nHost: x\r\nX-A: a\x00b\r\n\r\n"),
    ];
    for (what, bytes) in cases {
        let (resp, closed) = raw(proxy.port, bytes);
        let resp = resp.unwrap_or_else(|| panic!("{what}: no response"));
        assert_eq!(resp.status, 400, "{what}");
        assert!(closed, "{what}: connection left open");
    }
    assert_eq!(
        backend.count(),
        0,
        "a malformed request was forwarded: {:?}",
        backend.seen()
    );
}

/// A head the parser refuses is answered 400 before any filter runs (by Pingora's session):
/// it still gets its access-log line (a scanner's probe, a TLS client on the plain port), on
/// either engine, whether the head came whole or in pieces.
#[test]
fn heads_the_parser_refuses_are_in_the_access_log() {
    let heads: &[&[u8]] = &[
        b"GARBAGE\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: a\r\nno colon here\r\n\r\n",
        b"GET / HTTP/9.9\r\nHost: a\r\n\r\n",
        b"\x16\x03\x01\x00\x05hello\r\n\r\n",
    ];
    let legacy = Backend::start("legacy");
    let text = Config::new()
        .default("legacy")
        .upstream("legacy", &legacy.addr())
        .build();
    for fast_path_off in [false, true] {
        let proxy = Proxy::start_with_env(&text, engine_env(fast_path_off));
        let mut sent = 0;
        for head in heads {
            let (resp, closed) = raw(proxy.port, head);
            assert_eq!(resp.map(|r| r.status), Some(400), "{head:?}");
            assert!(closed);
            // In pieces: the transport hands it to Pingora's proxy, not the fast engine.
            let mut s = TcpStream::connect(("127.0.0.1", proxy.port)).unwrap();
            s.write_all(&head[..3]).unwrap();
            std::thread::sleep(Duration::from_millis(20));
            s.write_all(&head[3..]).unwrap();
            let mut answer = String::new();
            s.set_read_timeout(Some(std::time::Duration::from_secs(5)))
                .unwrap();
            let _ = s.read_to_string(&mut answer);
            assert!(answer.starts_with("HTTP/1.1 400"), "{answer:?}");
            sent += 2;
        }
        // CONNECT parses, but the session answers 405 before any filter: logged as that.
        let (resp, _) = raw(proxy.port, b"CONNECT y:443 HTTP/1.1\r\nHost: y:443\r\n\r\n");
        assert_eq!(resp.map(|r| r.status), Some(405));
        // A good request after them: its line comes after theirs.
        assert_eq!(get(proxy.port, "/ok", &[]).status, 200);
        let log = proxy.log_when(sent + 2);
        assert_eq!(log.len(), sent + 2, "off: {fast_path_off}: {log:#?}");
        for line in &log[..sent] {
            assert_eq!(line["status"], 400, "{line}");
            assert_eq!(line["method"], "-");
            assert_eq!(line["client"], "127.0.0.1");
            assert_eq!(line["error"], "malformed request head");
        }
        assert_eq!(log[sent]["status"], 405, "{}", log[sent]);
        assert_eq!(log[sent]["error"], "CONNECT is not served");
        assert_eq!(log[sent + 1]["path"], "/ok");
    }
    assert_eq!(legacy.count(), 2, "only the good requests were forwarded");
}

#[test]
fn transfer_codings_strangle_cannot_undo_get_501_and_close_and_nothing_is_forwarded() {
    // strangle decodes chunked framing and frames the body again upstream; any other coding
    // would reach the upstream as if the body were plain.
    let (proxy, backend) = proxy_with_backend();
    let cases: &[(&str, &[u8])] = &[
        ("gzip, chunked", b"POST /bookings HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip, chunked\r\n\r\n4\r\n\x1f\x8b\x08\x00\r\n0\r\n\r\n"),
        ("chunked twice", b"POST /bookings HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked, chunked\r\n\r\n0\r\n\r\n"),
        ("two lines", b"POST /bookings HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: identity\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"),
    ];
    for (what, bytes) in cases {
        let (resp, closed) = raw(proxy.port, bytes);
        let resp = resp.unwrap_or_else(|| panic!("{what}: no response"));
        assert_eq!(resp.status, 501, "{what}");
        assert!(closed, "{what}: connection left open");
    }
    assert_eq!(backend.count(), 0, "forwarded: {:?}", backend.seen());
    // Plain chunked, in any case, passes.
    let r = proxy
        .client()
        .send_raw(b"POST /bookings HTTP/1.1\r\nHost: x\r\nTransfer-Encoding:  Chunked \r\n\r\n2\r\nok\r\n0\r\n\r\n")
        .unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(backend.seen().pop().unwrap().body, b"ok");
}

#[test]
fn paths_are_normalised_before_routing_and_hostile_ones_refused() {
    let (proxy, backend) = proxy_with_backend();
    for (sent, received) in [
        ("//bookings///42", "/bookings/42"),
        ("/flights/../bookings/1", "/bookings/1"),
        ("/bookings/./1?a=b", "/bookings/1?a=b"),
        ("/bookings/%2e%2e/admin", "/admin"),
        ("/bookings/1", "/bookings/1"),
    ] {
        let r = get(proxy.port, sent, &[]);
        assert_eq!(r.status, 200, "{sent}");
        assert_eq!(backend.seen().pop().unwrap().target, received, "{sent}");
    }
    // `/bookings/%2e%2e/admin` routed as `/admin`: the default, not the bookings route. (Lines
    // of requests on different connections may be written in either order.)
    let log = proxy.log_when(5);
    let admin = log.iter().find(|l| l["path"] == "/admin").unwrap();
    assert_eq!(admin["side"], "default", "{log:#?}");

    let before = backend.count();
    for bad in [
        "/bookings%2F..%2Fadmin",
        "/bookings%2fx",
        "/a%5Cb",
        "/a%5cb",
        "/a\\b",
        "/bookings#frag",
        "/a%zz",
    ] {
        let resp = send_once(
            proxy.port,
            format!("GET {bad} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes(),
        );
        assert_eq!(resp.map(|r| r.status), Some(400), "{bad}");
    }
    assert_eq!(backend.count(), before);
}

#[test]
fn oversized_heads_get_431() {
    let (proxy, backend) = proxy_with_backend();
    let many: String = (0..60).map(|i| format!("X-H{i}: v\r\n")).collect();
    let (r, closed) = raw(
        proxy.port,
        format!("GET / HTTP/1.1\r\nHost: x\r\n{many}\r\n").as_bytes(),
    );
    assert_eq!(r.unwrap().status, 431);
    assert!(closed);
    let big = "a".repeat(9000);
    let r = send_once(
        proxy.port,
        format!("GET / HTTP/1.1\r\nHost: x\r\nX-Big: {big}\r\n\r\n").as_bytes(),
    );
    assert_eq!(r.unwrap().status, 431);
    // Just under both caps is fine.
    let some: String = (0..40).map(|i| format!("X-H{i}: v\r\n")).collect();
    let r = send_once(
        proxy.port,
        format!("GET / HTTP/1.1\r\nHost: x\r\n{some}\r\n").as_bytes(),
    );
    assert_eq!(r.unwrap().status, 200);
    assert_eq!(backend.count(), 1);
}

#[test]
fn a_client_dribbling_its_head_is_cut_off_at_the_deadline() {
    let (proxy, backend) = proxy_with_backend();
    let mut s = TcpStream::connect(("127.0.0.1", proxy.port)).unwrap();
    let start = Instant::now();
    let head = b"GET /bookings HTTP/1.1\r\nHost: x\r\nX-Slow: 1234567890123456789012345678901234567890\r\n\r\n";
    let mut cut = false;
    for b in head.iter() {
        // One byte every 100 ms (the test's subject): each read is quick, but the head as a
        // whole takes ~9 s.
        if s.write_all(&[*b]).is_err() {
            cut = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
        s.set_read_timeout(Some(Duration::from_millis(1))).unwrap();
        let mut buf = [0u8; 64];
        if let Ok(0) = s.read(&mut buf) {
            cut = true;
            break;
        }
    }
    let took = start.elapsed();
    assert!(cut, "the slow head was accepted");
    assert!(took < Duration::from_secs(4), "cut off only after {took:?}");
    assert_eq!(backend.count(), 0);
    // A keep-alive connection idling between requests is not cut by the head deadline.
    let mut c = proxy.client();
    assert_eq!(c.get("/bookings", &[]).unwrap().status, 200);
    // Idle on purpose past the 1 s head deadline.
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(c.get("/bookings", &[]).unwrap().status, 200);
}

#[test]
fn heads_arriving_in_pieces_are_served_on_new_and_kept_alive_connections() {
    let (proxy, backend) = proxy_with_backend();
    let mut c = proxy.client();
    // The first request's head in three pieces, the pauses well inside the 1 s deadline.
    let s = c.stream();
    for piece in [&b"GET /booki"[..], b"ngs HTTP/1.1\r\nHo", b"st: x\r\n\r\n"] {
        s.write_all(piece).unwrap();
        std::thread::sleep(Duration::from_millis(150));
    }
    assert_eq!(c.read_response().unwrap().status, 200);
    // The next request on the same connection, after an idle pause, also in pieces.
    std::thread::sleep(Duration::from_millis(300));
    let s = c.stream();
    for piece in [
        &b"G"[..],
        b"ET /bookings/2 HTTP/1.1\r\nHost: x\r",
        b"\n\r\n",
    ] {
        s.write_all(piece).unwrap();
        std::thread::sleep(Duration::from_millis(150));
    }
    assert_eq!(c.read_response().unwrap().status, 200);
    // The request line split between its CR and its LF (this got 400 "malformed request
    // line" before the scanner carried a trailing CR over to the next read).
    let s = c.stream();
    for piece in [&b"GET /bookings/3 HTTP/1.1\r"[..], b"\nHost: x\r\n\r\n"] {
        s.write_all(piece).unwrap();
        std::thread::sleep(Duration::from_millis(150));
    }
    assert_eq!(c.read_response().unwrap().status, 200);
    // A CR inside the line, with the LF only in the next read, is still refused.
    let s = c.stream();
    for piece in [&b"GET /bookings/4\r"[..], b"x HTTP/1.1\r\nHost: x\r\n\r\n"] {
        s.write_all(piece).unwrap();
        std::thread::sleep(Duration::from_millis(150));
    }
    assert_eq!(c.read_response().unwrap().status, 400);
    let paths: Vec<String> = backend.seen().into_iter().map(|s| s.target).collect();
    assert_eq!(paths, ["/bookings", "/bookings/2", "/bookings/3"]);
}

#[test]
fn a_reloaded_keepalive_timeout_applies_to_the_next_idle_wait_of_every_connection() {
    let (legacy, new) = (Backend::start("legacy"), Backend::start("new"));
    let config = |timeout: &str| {
        split_config(&legacy, &new, "0%", "none").replace(
            "grace-period = \"5s\"",
            &format!("grace-period = \"5s\"\nkeepalive-timeout = \"{timeout}\""),
        )
    };
    let proxy = Proxy::start(&config("1s"));
    let mut before = proxy.client();
    assert_eq!(before.get("/bookings", &[]).unwrap().status, 200);
    assert!(before.closed_by_peer(), "1 s keep-alive not applied");
    // A connection opened before the reload, busy while it happens.
    let mut open = proxy.client();
    assert_eq!(open.get("/bookings", &[]).unwrap().status, 200);
    proxy.rewrite(&config("6s"));
    assert!(
        proxy.wait_for_log("config reloaded", Duration::from_secs(5)),
        "{}",
        proxy.stderr()
    );
    // Its next idle wait and a new connection's both get the new timeout: neither is closed
    // within `closed_by_peer`'s 2 s (the old timeout would have closed them after 1 s).
    assert_eq!(open.get("/bookings", &[]).unwrap().status, 200);
    assert!(
        !open.closed_by_peer(),
        "the old 1 s timeout outlived the reload"
    );
    assert_eq!(open.get("/bookings", &[]).unwrap().status, 200);
    let mut after = proxy.client();
    assert_eq!(after.get("/bookings", &[]).unwrap().status, 200);
    assert!(
        !after.closed_by_peer(),
        "a new connection kept the old timeout"
    );
    assert_eq!(after.get("/bookings", &[]).unwrap().status, 200);
}

#[test]
fn idle_connections_close_at_the_keepalive_timeout_and_at_shutdown() {
    let (legacy, new) = (Backend::start("legacy"), Backend::start("new"));
    let text = split_config(&legacy, &new, "0%", "none").replace(
        "grace-period = \"5s\"",
        "grace-period = \"5s\"\nkeepalive-timeout = \"1s\"",
    );
    let proxy = Proxy::start(&text);
    // Idle past the keep-alive timeout: closed by the proxy.
    let mut idle = proxy.client();
    assert_eq!(idle.get("/bookings", &[]).unwrap().status, 200);
    let start = Instant::now();
    assert!(
        idle.closed_by_peer(),
        "an idle connection outlived the keep-alive timeout"
    );
    let took = start.elapsed();
    assert!(
        took > Duration::from_millis(700),
        "closed after only {took:?}"
    );
    // Shorter idle pauses (on purpose, under the 1 s timeout) keep the connection.
    let mut busy = proxy.client();
    for _ in 0..3 {
        assert_eq!(busy.get("/bookings", &[]).unwrap().status, 200);
        std::thread::sleep(Duration::from_millis(500));
    }
    // At SIGTERM an idle connection is closed soon (after the 1 s drain linger, not the
    // keep-alive timeout), while a request in flight finishes; a request that arrives on an
    // idle connection within the linger is answered, with `Connection: close`.
    let port = proxy.port;
    let slow = std::thread::spawn(move || get(port, "/bookings", &[("x-delay-ms", "1500")]));
    let mut idle = proxy.client();
    assert_eq!(idle.get("/bookings", &[]).unwrap().status, 200);
    let mut late = proxy.client();
    assert_eq!(late.get("/bookings", &[]).unwrap().status, 200);
    eventually(Duration::from_secs(5), "the slow request upstream", || {
        legacy.count() >= 7
    });
    let start = Instant::now();
    proxy.signal(nix::sys::signal::Signal::SIGTERM);
    eventually(Duration::from_secs(1), "/ready to say it drains", || {
        proxy.admin("GET", "/ready", b"").status == 503
    });
    let answer = late.get("/bookings", &[]).unwrap();
    assert_eq!(answer.status, 200);
    assert_eq!(answer.header("connection"), Some("close"));
    assert!(idle.closed_by_peer());
    let took = start.elapsed();
    assert!(
        took < Duration::from_millis(2500),
        "idle connection closed after {took:?}"
    );
    assert_eq!(slow.join().unwrap().status, 200);
}

#[test]
fn refused_upstream_is_502_and_slow_upstream_is_504() {
    let legacy = Backend::start("legacy");
    let dead = free_port();
    let proxy = Proxy::start(
        &Config::new()
            .default("legacy")
            .upstream("legacy", &legacy.addr())
            .with(r#"timeout = "500ms""#)
            .upstream("dead", &format!("127.0.0.1:{dead}"))
            .route("dead", "/dead", |r| r.new("dead"))
            .build(),
    );
    let r = get(proxy.port, "/dead", &[]);
    assert_eq!(r.status, 502);
    assert!(r.header("x-request-id").is_some());
    let start = Instant::now();
    let r = get(proxy.port, "/slow", &[("x-delay-ms", "3000")]);
    assert_eq!(r.status, 504);
    assert!(start.elapsed() < Duration::from_secs(2));
    let log = proxy.log_when(2);
    assert_eq!(log[0]["status"], 502);
    assert_eq!(log[1]["status"], 504);
}

/// Reads a request head (up to its blank line, within 2 s): `None` if the peer sent nothing.
fn read_head(s: &mut TcpStream) -> Option<Vec<u8>> {
    let mut buf = [0u8; 4096];
    let mut got = Vec::new();
    s.set_read_timeout(Some(Duration::from_secs(2))).ok();
    while !got.windows(4).any(|w| w == b"\r\n\r\n") {
        match s.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => got.extend_from_slice(&buf[..n]),
        }
    }
    (!got.is_empty()).then_some(got)
}

/// A backend that reads one request per connection and hangs up without answering.
fn hang_up_backend() -> (u16, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let count = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let c = std::sync::Arc::clone(&count);
    std::thread::spawn(move || {
        for s in listener.incoming() {
            let Ok(mut s) = s else { continue };
            if read_head(&mut s).is_some() {
                c.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            }
            drop(s);
        }
    });
    (port, count)
}

#[test]
fn a_sent_request_is_retried_only_if_idempotent_and_unopened_connections_are_retried() {
    let (port, count) = hang_up_backend();
    let legacy = Backend::start("legacy");
    let dead = free_port();
    let proxy = Proxy::start(
        &Config::new()
            .upstream("hangup", &format!("127.0.0.1:{port}"))
            .with("retries = 3")
            .upstream_keys(
                "pair",
                &format!(
                    "addresses = [\"127.0.0.1:{dead}\", \"{}\"]\nhealth-check-interval = \"1h\"",
                    legacy.addr()
                ),
            )
            .route("hangup", "/hangup", |r| r.legacy("hangup"))
            .route("pair", "/pair", |r| r.legacy("pair"))
            .build(),
    );
    let r = Client::connect(proxy.port)
        .request("POST", "/hangup", &[], b"{\"seat\":\"1A\"}")
        .unwrap();
    assert_eq!(r.status, 502);
    // Time for a second attempt that must not come: an absence has nothing to poll for.
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(
        count.load(std::sync::atomic::Ordering::SeqCst),
        1,
        "the POST was sent more than once"
    );

    // One address refuses connections: nothing was sent there, so even a POST moves on to the
    // live address and succeeds. (Health checks are off here, so only the retry saves it.)
    for _ in 0..6 {
        let r = Client::connect(proxy.port)
            .request("POST", "/pair", &[], b"x")
            .unwrap();
        assert_eq!(r.status, 200);
    }
    assert_eq!(legacy.count(), 6);
}

#[test]
fn health_checks_take_a_dead_address_out_of_rotation() {
    let (a, b) = (Backend::start("a"), Backend::start("b"));
    let proxy = Proxy::start(
        &Config::new()
            .default("pool")
            .upstream_keys(
                "pool",
                &format!(
                    "addresses = [\"{}\", \"{}\"]\nhealth-check-interval = \"200ms\"\nretries = 0",
                    a.addr(),
                    b.addr()
                ),
            )
            .build(),
    );
    let mut served = std::collections::HashSet::new();
    for _ in 0..10 {
        served.insert(
            get(proxy.port, "/", &[])
                .header("x-backend")
                .unwrap()
                .to_string(),
        );
    }
    assert_eq!(served.len(), 2, "round-robin should use both: {served:?}");
    let dead = b.addr();
    b.stop();
    eventually(
        Duration::from_secs(5),
        "the health check to see b down",
        || {
            proxy.status()["upstreams"]["pool"]["addresses"]
                .as_array()
                .unwrap()
                .iter()
                .any(|a| a["address"] == dead.as_str() && a["up"] == false)
        },
    );
    // With no retries, any request sent to the dead address would fail: none does.
    for _ in 0..20 {
        let r = get(proxy.port, "/", &[]);
        assert_eq!(r.status, 200);
        assert_eq!(r.header("x-backend"), Some("a"));
    }
}

/// A backend that reads one request head per connection and answers with `reply`, then keeps
/// the connection open for a while (as a tunnel would), then closes.
fn scripted_backend(reply: &'static [u8]) -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for s in listener.incoming() {
            let Ok(mut s) = s else { continue };
            std::thread::spawn(move || {
                if read_head(&mut s).is_none() {
                    return;
                }
                let _ = s.write_all(reply);
                // Held open as a tunnel would be (the scenario, not a wait).
                std::thread::sleep(Duration::from_millis(500));
            });
        }
    });
    port
}

#[test]
fn an_unsolicited_protocol_switch_is_a_502_not_a_tunnel() {
    let port = scripted_backend(
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\nRAW-TUNNEL-BYTES",
    );
    let proxy = Proxy::start(
        &Config::new()
            .default("odd")
            .upstream("odd", &format!("127.0.0.1:{port}"))
            .build(),
    );
    let mut c = proxy.client();
    c.stream()
        .write_all(b"GET /x HTTP/1.1\r\nHost: a\r\n\r\n")
        .unwrap();
    let mut answer = Vec::new();
    let _ = c.stream().read_to_end(&mut answer);
    let text = String::from_utf8_lossy(&answer);
    assert!(text.starts_with("HTTP/1.1 502"), "{text}");
    assert!(!text.contains("RAW-TUNNEL-BYTES"), "{text}");
    // It closes the connection, and says so.
    assert!(
        text.to_ascii_lowercase().contains("connection: close"),
        "{text}"
    );
    assert!(
        !text.to_ascii_lowercase().contains("upgrade: websocket"),
        "{text}"
    );
    // A request that asks for the switch gets it, and the tunnel.
    let mut c = proxy.client();
    c.stream()
        .write_all(
            b"GET /ws HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n",
        )
        .unwrap();
    let mut answer = Vec::new();
    let _ = c.stream().read_to_end(&mut answer);
    let text = String::from_utf8_lossy(&answer);
    assert!(text.starts_with("HTTP/1.1 101"), "{text}");
    assert!(text.ends_with("RAW-TUNNEL-BYTES"), "{text}");
}
