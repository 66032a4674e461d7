//! Which engine serves what: origin-form HTTP/1 requests without an upgrade (bodies
//! included) take the fast path, everything else Pingora's proxy, and an upstream cannot tell
//! them apart.

use std::io::Write;
use std::time::Duration;

use crate::support::*;

const FAST: &str = "strangle_http1_requests_total{engine=\"fast\"}";
const PINGORA: &str = "strangle_http1_requests_total{engine=\"pingora\"}";

/// Starts the proxy with the fast path, or with every request sent to Pingora's proxy.
fn start(config: &str, fast_path_off: bool) -> Proxy {
    Proxy::start_with_env(config, engine_env(fast_path_off))
}

fn engines(proxy: &Proxy) -> (f64, f64) {
    (proxy.metric(FAST), proxy.metric(PINGORA))
}

#[test]
fn plain_requests_take_the_fast_path_and_the_rest_go_to_pingora() {
    let backend = Backend::start("monolith");
    let proxy = Proxy::start(&monolith_config(&backend, ""));
    let mut c = proxy.client();
    for _ in 0..3 {
        assert_eq!(c.get("/plain", &[]).unwrap().text(), "monolith");
    }
    assert_eq!(engines(&proxy), (3.0, 0.0), "three plain GETs");

    // A body, and a client waiting for the go-ahead before sending it: the fast path too.
    let r = c.request("POST", "/upload", &[], b"hello").unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(backend.seen().last().unwrap().body, b"hello");
    let mut e = proxy.client();
    e.stream()
        .write_all(
            b"PUT /x HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\nContent-Length: 2\r\n\r\n",
        )
        .unwrap();
    assert_eq!(e.read_interim().unwrap(), 100);
    e.stream().write_all(b"ok").unwrap();
    assert_eq!(e.read_response().unwrap().status, 200);
    assert_eq!(backend.seen().last().unwrap().body, b"ok");
    assert_eq!(engines(&proxy), (5.0, 0.0), "a body and an Expect");

    // A head that arrives in two pieces: the fast path only takes heads that are all here.
    c.stream().write_all(b"GET /split HTTP/1.1\r\nHo").unwrap();
    std::thread::sleep(Duration::from_millis(100));
    c.stream().write_all(b"st: a\r\n\r\n").unwrap();
    assert_eq!(c.read_response().unwrap().status, 200);
    assert_eq!(backend.seen().last().unwrap().target, "/split");
    assert_eq!(engines(&proxy), (5.0, 1.0), "a head in two pieces");

    // Two pipelined requests in one write: the first is plain and whole (fast path), the
    // second is already read past it (Pingora's); answered in order.
    c.stream()
        .write_all(b"GET /one HTTP/1.1\r\nHost: a\r\n\r\nGET /two HTTP/1.1\r\nHost: a\r\n\r\n")
        .unwrap();
    assert_eq!(c.read_response().unwrap().status, 200);
    assert_eq!(c.read_response().unwrap().status, 200);
    let targets: Vec<String> = backend.seen().iter().map(|s| s.target.clone()).collect();
    assert_eq!(targets[targets.len() - 2..], ["/one", "/two"]);
    assert_eq!(engines(&proxy), (6.0, 2.0), "pipelined");

    // And back to the fast path on the same connection.
    assert_eq!(c.get("/again", &[]).unwrap().status, 200);
    assert_eq!(engines(&proxy), (7.0, 2.0));
}

/// The request a client's hostile GET becomes upstream: method, target, and the headers but
/// the request id (random per request); and which engines served it.
struct Forwarded {
    method: String,
    target: String,
    headers: Vec<(String, String)>,
    engines: (f64, f64),
}

fn forwarded(engine_off: bool) -> Forwarded {
    let backend = Backend::start("monolith");
    let config = Config::new()
        .default("monolith")
        .upstream("monolith", &backend.addr())
        .route("bookings", "/bookings", |r| r.legacy("monolith"))
        .build();
    let proxy = start(&config, engine_off);
    let r = proxy
        .client()
        .send_raw(
            b"GET /bookings/./7/../8?x=1 HTTP/1.1\r\n\
              Host: shop.example\r\n\
              X-Strangle-Side: new\r\n\
              X-Forwarded-For: 6.6.6.6\r\n\
              Forwarded: for=6.6.6.6\r\n\
              X-Real-IP: 6.6.6.6\r\n\
              X-Forwarded-Proto: https\r\n\
              Connection: x-secret, keep-alive\r\n\
              X-Secret: 1\r\n\
              Keep-Alive: timeout=5\r\n\
              Proxy-Connection: keep-alive\r\n\
              TE: trailers\r\n\
              HTTP2-Settings: AAMAAABkAAQAAP__\r\n\
              X-HTTP-Method-Override: DELETE\r\n\
              X-Original-URL: /admin\r\n\
              Proxy-Authorization: Basic Zm9v\r\n\
              Accept: */*\r\n\
              Content-Length: 0\r\n\r\n",
        )
        .unwrap();
    assert_eq!(r.status, 200, "{}", proxy.stderr());
    let seen = backend.seen().pop().unwrap();
    let mut headers: Vec<(String, String)> = seen
        .headers
        .into_iter()
        .filter(|(k, _)| k != "x-request-id")
        .collect();
    headers.sort();
    Forwarded {
        method: seen.method,
        target: seen.target,
        headers,
        engines: engines(&proxy),
    }
}

#[test]
fn both_engines_send_the_upstream_the_same_request_and_no_spoofed_header() {
    let Forwarded {
        method,
        target,
        headers,
        engines: fast_engines,
    } = forwarded(false);
    assert_eq!(fast_engines, (1.0, 0.0), "served by the fast path");
    assert_eq!(method, "GET");
    // The canonical path the route was chosen on, with the query.
    assert_eq!(target, "/bookings/8?x=1");
    for spoofed in [
        "x-strangle-side",
        "forwarded",
        "connection",
        "x-secret",
        "keep-alive",
        "proxy-connection",
        "te",
        "http2-settings",
        "x-http-method-override",
        "x-original-url",
        "proxy-authorization",
    ] {
        assert!(
            headers.iter().all(|(k, _)| k != spoofed),
            "{spoofed} passed: {headers:?}"
        );
    }
    let value = |name: &str| {
        headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    };
    assert_eq!(value("x-forwarded-for"), Some("127.0.0.1"));
    assert_eq!(value("x-real-ip"), Some("127.0.0.1"));
    assert_eq!(value("x-forwarded-proto"), Some("http"));
    assert_eq!(value("host"), Some("shop.example"));

    let p = forwarded(true);
    assert_eq!(p.engines, (0.0, 1.0), "served by Pingora's proxy");
    assert_eq!((p.method, p.target), (method, target));
    assert_eq!(
        p.headers, headers,
        "the two engines forward different requests"
    );
}

#[test]
fn a_reload_under_fast_path_load_moves_requests_without_a_failure() {
    let (a, b) = (Backend::start("a"), Backend::start("b"));
    let proxy = Proxy::start(&monolith_config(&a, ""));
    let port = proxy.port;
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let stop_ = std::sync::Arc::clone(&stop);
    let load = std::thread::spawn(move || {
        let mut c = Client::connect(port);
        let mut answers = Vec::new();
        while !stop_.load(std::sync::atomic::Ordering::SeqCst) {
            let r = c.get("/x", &[]).unwrap();
            answers.push((r.status, r.text()));
        }
        answers
    });
    std::thread::sleep(Duration::from_millis(300));
    proxy.rewrite(&monolith_config(&b, ""));
    eventually(
        Duration::from_secs(10),
        "requests reach the new upstream",
        || b.count() > 20,
    );
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let answers = load.join().unwrap();
    assert!(answers.iter().all(|(s, _)| *s == 200), "a request failed");
    // Every request went to one upstream or the other, the old ones before the new ones.
    let first_b = answers.iter().position(|(_, t)| t == "b").unwrap();
    assert!(answers[..first_b].iter().all(|(_, t)| t == "a"));
    assert!(answers[first_b..].iter().all(|(_, t)| t == "b"));
    let (fast, pingora) = engines(&proxy);
    assert_eq!(pingora, 0.0);
    assert!(fast >= answers.len() as f64, "{fast} < {}", answers.len());
}

#[test]
fn connection_options_that_name_nothing_or_a_protected_header_are_refused_by_both_engines() {
    // Found by an adversarial review of the fast path: a `Connection` option that is not a
    // token (quoted, non-ASCII) named nothing the outbound policy could match, so the header
    // it named passed; `Connection: host` sent an HTTP/1.1 request upstream without a Host.
    let requests: [&[u8]; 5] = [
        b"GET /a HTTP/1.1\r\nHost: a\r\nConnection: host\r\n\r\n",
        b"GET /a HTTP/1.1\r\nHost: a\r\nConnection: x-secret, \xff\r\nX-Secret: 1\r\n\r\n",
        b"GET /a HTTP/1.1\r\nHost: a\r\nConnection: \"x-secret\"\r\nX-Secret: 1\r\n\r\n",
        b"GET /a HTTP/1.1\r\nHost: a\r\nConnection: close, x-forwarded-for\r\n\r\n",
        b"GET /a HTTP/1.1\r\nHost: a\r\nConnection: a,b,c,d,e,f,g,h,i,j,k\r\n\r\n",
    ];
    for off in [false, true] {
        let backend = Backend::start("monolith");
        let proxy = start(&monolith_config(&backend, ""), off);
        for request in requests {
            let r = proxy.client().send_raw(request).unwrap();
            assert_eq!(
                r.status,
                400,
                "fast path off: {off}: {}",
                String::from_utf8_lossy(request)
            );
        }
        assert_eq!(backend.count(), 0, "fast path off: {off}");
        // A plain option list still passes, its headers removed.
        let r = proxy
            .client()
            .send_raw(b"GET /a HTTP/1.1\r\nHost: a\r\nConnection: keep-alive, X-Secret\r\nX-Secret: 1\r\n\r\n")
            .unwrap();
        assert_eq!(r.status, 200);
        assert_eq!(backend.seen().pop().unwrap().header("x-secret"), None);
        let (fast, pingora) = engines(&proxy);
        if off {
            assert_eq!(fast, 0.0);
        } else {
            assert_eq!((fast, pingora), (6.0, 0.0), "all served by the fast path");
        }
    }
}

#[test]
fn a_body_hidden_from_the_fast_paths_look_is_refused_never_forwarded_without_it() {
    // Framing headers spelled so the fast path's quick look (`plain_head`) does not see them
    // take the fast path; Pingora's parser must then refuse them, so no upstream gets a
    // request whose body is left on the connection as a smuggled next request.
    let requests: [&[u8]; 4] = [
        b"POST /a HTTP/1.1\r\nHost: a\r\nTransfer-Encoding : chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
        b"POST /a HTTP/1.1\r\nHost: a\r\nContent-Length : 5\r\n\r\nhello",
        b"GET /a HTTP/1.1\r\nHost: a\r\nContent-Length\x00: 5\r\n\r\nhello",
        b"GET /a HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\nContent-Length: 5\r\n\r\nhello",
    ];
    for off in [false, true] {
        let backend = Backend::start("monolith");
        let proxy = start(&monolith_config(&backend, ""), off);
        for request in requests {
            let (answer, closed) = raw(proxy.port, request);
            let status = answer.map(|r| r.status);
            assert_eq!(
                status,
                Some(400),
                "fast path off: {off}: {}",
                String::from_utf8_lossy(request)
            );
            assert!(closed, "the connection ends after a malformed request");
        }
        assert_eq!(backend.count(), 0, "fast path off: {off}");
        let (fast, _) = engines(&proxy);
        if off {
            assert_eq!(fast, 0.0);
        } else {
            assert!(
                fast >= 3.0,
                "the spoofed spellings took the fast path: {fast}"
            );
        }
    }
}

#[test]
fn both_engines_forward_a_body_the_same_way_in_every_framing() {
    // The request each framing becomes upstream (method, target, headers but the request id,
    // body) and the client's answer, with the fast path and with Pingora's proxy.
    let requests: [&[u8]; 6] = [
        b"POST /a HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nhello",
        // Chunked, with an extension and a trailer: re-chunked, the trailer not forwarded.
        b"POST /a HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n\
          3;ext=1\r\nhel\r\n2\r\nlo\r\n0\r\nX-Trailer: 1\r\n\r\n",
        // A coding this hop cannot undo: refused by both.
        b"PUT /a HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip, chunked\r\n\r\n4\r\n\x1f\x8b\x08\x00\r\n0\r\n\r\n",
        // Both framings: refused (a smuggling attempt), forwarded by neither engine.
        b"POST /a HTTP/1.1\r\nHost: a\r\nContent-Length: 99\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
        b"POST /a HTTP/1.0\r\nHost: a\r\nContent-Length: 3\r\n\r\nabc",
        b"DELETE /a HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\n\r\n",
    ];
    type Upstream = (String, String, Vec<(String, String)>, Vec<u8>);
    let mut seen: [Vec<(u16, Option<Upstream>)>; 2] = Default::default();
    for (i, off) in [false, true].into_iter().enumerate() {
        let backend = Backend::start("monolith");
        let proxy = start(&monolith_config(&backend, ""), off);
        for request in requests {
            let before = backend.count();
            let r = proxy.client().send_raw(request).unwrap();
            let up = (backend.count() > before).then(|| {
                let mut up = backend.seen().pop().unwrap();
                up.headers.retain(|(k, _)| k != "x-request-id");
                up.headers.sort();
                (up.method, up.target, up.headers, up.body)
            });
            seen[i].push((r.status, up));
        }
        let expected = if off { (0.0, 6.0) } else { (6.0, 0.0) };
        assert_eq!(engines(&proxy), expected, "fast path off: {off}");
    }
    let [fast, pingora] = seen;
    assert_eq!(fast, pingora, "the two engines forward different requests");
    let statuses: Vec<u16> = fast.iter().map(|(s, _)| *s).collect();
    assert_eq!(statuses, [200, 200, 501, 400, 200, 200]);
    let bodies: Vec<Option<&[u8]>> = fast
        .iter()
        .map(|(_, up)| up.as_ref().map(|up| &up.3[..]))
        .collect();
    assert_eq!(
        bodies,
        [
            Some(&b"hello"[..]),
            Some(b"hello"),
            None,
            None,
            Some(b"abc"),
            Some(b"")
        ]
    );
    for (_, headers, _) in fast
        .iter()
        .filter_map(|(_, up)| up.as_ref().map(|u| (&u.1, &u.2, &u.3)))
    {
        assert!(headers.iter().all(|(k, _)| k != "x-trailer"), "{headers:?}");
        // Framed by this hop: a length, or chunked, never the client's codings.
        let te: Vec<&str> = headers
            .iter()
            .filter(|(k, _)| k == "transfer-encoding")
            .map(|(_, v)| v.as_str())
            .collect();
        assert!(te.is_empty() || te == ["chunked"], "{te:?}");
    }
}

#[test]
fn a_large_upload_streams_through_the_fast_path_whole() {
    let backend = Backend::start("monolith");
    let proxy = Proxy::start(&monolith_config(&backend, ""));
    // 16 MB, every byte position distinguishable, in a length-delimited and a chunked upload.
    let body: Vec<u8> = (0..16u32 << 20).map(|i| (i % 251) as u8).collect();
    let mut c = proxy.client();
    let r = c.request("PUT", "/big", &[], &body).unwrap();
    assert_eq!(r.status, 200);
    assert!(
        backend.seen().pop().unwrap().body == body,
        "the body arrived changed"
    );
    let mut head = b"PUT /big HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
    for piece in body.chunks(1 << 20) {
        head.extend_from_slice(format!("{:x}\r\n", piece.len()).as_bytes());
        head.extend_from_slice(piece);
        head.extend_from_slice(b"\r\n");
    }
    head.extend_from_slice(b"0\r\n\r\n");
    assert_eq!(c.send_raw(&head).unwrap().status, 200);
    assert!(
        backend.seen().pop().unwrap().body == body,
        "the chunked body arrived changed"
    );
    assert_eq!(engines(&proxy), (2.0, 0.0));
}
