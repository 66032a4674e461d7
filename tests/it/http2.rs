//! HTTP/2's limits are the HTTP/1 caps: concurrent streams (`max-concurrent-streams`), the
//! header list (`max-header-bytes`, and `max-headers` per request), and the idle timeout
//! (`keepalive-timeout`). Over h2c here; TLS takes the same path once ALPN chose h2.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::Command;
use std::time::{Duration, Instant};

use crate::support::*;

fn h2c_proxy(legacy: &Backend) -> Proxy {
    Proxy::start(
        &Config::new()
            .server("h2c = true\nmax-concurrent-streams = 3\nmax-header-bytes = 4096\nmax-headers = 20\nkeepalive-timeout = \"1s\"\nheader-timeout = \"1s\"")
            .upstream("legacy", &legacy.addr())
            .route("bookings", "/bookings", |r| r.legacy("legacy"))
            .build(),
    )
}

/// `h2c_get` of /bookings/1 with these headers: "STATUS VERSION".
fn curl_h2c(port: u16, headers: &[String]) -> String {
    let headers: Vec<&str> = headers.iter().map(String::as_str).collect();
    h2c_get(port, "/bookings/1", &headers).0
}

#[test]
fn http2_settings_and_header_caps_are_the_http1_ones() {
    let legacy = Backend::start("legacy");
    let proxy = h2c_proxy(&legacy);
    let out = Command::new("nghttp")
        .args(["-v"])
        .arg(format!("http://127.0.0.1:{}/bookings/1", proxy.port))
        .output()
        .unwrap();
    let text = stdout_of(&out);
    assert!(
        text.contains("SETTINGS_MAX_CONCURRENT_STREAMS(0x03):3"),
        "{text}"
    );
    assert!(
        text.contains("SETTINGS_MAX_HEADER_LIST_SIZE(0x06):4096"),
        "{text}"
    );
    assert!(text.contains(":status: 200"), "{text}");

    // As many streams at once as allowed: every request is answered. (A client that opens
    // more before it read the server's SETTINGS gets REFUSED_STREAM for the extra ones, which
    // RFC 9113 section 8.7 lets it retry: h2load counts those as errors.)
    let out = Command::new("h2load")
        .args(["-n", "60", "-c", "1", "-m", "3"])
        .arg(format!("http://127.0.0.1:{}/bookings/1", proxy.port))
        .output()
        .unwrap();
    assert!(
        stdout_of(&out).contains("60 succeeded, 0 failed"),
        "{}",
        stdout_of(&out)
    );
    let before = legacy.count();
    // A header list over `max-header-bytes`, and more headers than `max-headers`: refused,
    // nothing forwarded.
    let out = curl_h2c(proxy.port, &[format!("x-big: {}", "a".repeat(5000))]);
    assert!(!out.starts_with("200"), "{out}");
    let many: Vec<String> = (0..25).map(|i| format!("x-h{i}: v")).collect();
    let out = curl_h2c(proxy.port, &many);
    assert_eq!(out, "431 2");
    assert_eq!(legacy.count(), before, "a refused request was forwarded");
    // Within the caps: served.
    let out = curl_h2c(proxy.port, &[format!("x-ok: {}", "a".repeat(1000))]);
    assert_eq!(out, "200 2");
}

/// Reads HTTP/2 frames until the connection ends; the frame types seen.
fn frame_types(stream: &mut TcpStream) -> Vec<u8> {
    let mut types = Vec::new();
    let mut head = [0u8; 9];
    while stream.read_exact(&mut head).is_ok() {
        let len = (usize::from(head[0]) << 16) | (usize::from(head[1]) << 8) | usize::from(head[2]);
        types.push(head[3]);
        let mut payload = vec![0u8; len];
        if stream.read_exact(&mut payload).is_err() {
            break;
        }
    }
    types
}

#[test]
fn an_idle_http2_connection_is_closed_at_the_keepalive_timeout() {
    let legacy = Backend::start("legacy");
    let proxy = h2c_proxy(&legacy);
    let mut s = TcpStream::connect(("127.0.0.1", proxy.port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    // The preface and an empty SETTINGS frame, then nothing.
    s.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00")
        .unwrap();
    let start = Instant::now();
    let types = frame_types(&mut s);
    let took = start.elapsed();
    // The server's SETTINGS (4) and its ack of ours, then the close at the idle timeout.
    // Pingora closes an idle connection without GOAWAY, so that a dead peer cannot hold it
    // (a drain does send GOAWAY: tls.rs).
    assert_eq!(types.first(), Some(&4), "{types:?}");
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_secs(5),
        "{took:?}"
    );
}

/// curl over h2c (prior knowledge) to `path` with headers: ("STATUS VERSION", body).
pub fn h2c_get(port: u16, path: &str, headers: &[&str]) -> (String, String) {
    let mut args = vec!["--http2-prior-knowledge"];
    for h in headers {
        args.extend(["-H", h]);
    }
    curl(port, path, &args)
}

/// curl to `path` with more `args`: ("STATUS VERSION", body).
pub fn curl(port: u16, path: &str, args: &[&str]) -> (String, String) {
    let out = Command::new("curl")
        .args([
            "-sS",
            "--max-time",
            "10",
            "-w",
            "\n%{http_code} %{http_version}",
        ])
        .args(args)
        .arg(format!("http://127.0.0.1:{port}{path}"))
        .output()
        .unwrap();
    let text = stdout_of(&out);
    let (body, status) = text.rsplit_once('\n').unwrap_or(("", &text));
    (status.to_string(), body.to_string())
}

#[test]
fn every_http2_stream_is_authorized_split_and_stripped_like_an_http1_request() {
    let issuer = crate::auth::Issuer::start();
    let (legacy, new) = (Backend::start("legacy"), Backend::start("new"));
    let text = crate::auth::config(&issuer, &legacy, &new, "").replacen(
        "[server]\n",
        "[server]\nh2c = true\n",
        1,
    );
    let proxy = Proxy::start(&text);
    // No token: refused, nothing forwarded.
    let (status, _) = h2c_get(proxy.port, "/bookings/1", &[]);
    assert_eq!(status, "401 2");
    assert_eq!(legacy.count() + new.count(), 0);
    // A token: the claim is forwarded by strangle, whatever the client sent in its header,
    // and the user stays on one side.
    let token = issuer.mint(serde_json::json!({"claims": crate::auth::good("alice")}));
    let bearer = format!("Authorization: Bearer {token}");
    let mut sides = std::collections::BTreeSet::new();
    for i in 0..10 {
        let (status, body) = h2c_get(
            proxy.port,
            &format!("/bookings/{i}"),
            &[
                &bearer,
                "x-user-id: mallory",
                "x-strangle-side: new",
                "x-forwarded-for: 6.6.6.6",
            ],
        );
        assert_eq!(status, "200 2");
        sides.insert(body);
    }
    assert_eq!(sides.len(), 1, "one user, two sides: {sides:?}");
    let seen: Vec<Seen> = legacy.seen().into_iter().chain(new.seen()).collect();
    assert_eq!(seen.len(), 10);
    for s in &seen {
        assert_eq!(s.header("x-user-id"), Some("alice"));
        assert_ne!(s.header("x-forwarded-for"), Some("6.6.6.6"));
        assert!(!s.headers.iter().any(|(k, _)| k == "x-strangle-side"));
    }
    // Browsers send cookies as separate HTTP/2 fields: the upstream gets one `Cookie`; and the
    // host the client asked for (`:authority`) is forwarded.
    let (status, _) = h2c_get(
        proxy.port,
        "/bookings/cookies",
        &[&bearer, "cookie: a=1", "cookie: b=2"],
    );
    assert_eq!(status, "200 2");
    let seen: Vec<Seen> = legacy.seen().into_iter().chain(new.seen()).collect();
    let s = seen
        .iter()
        .find(|s| s.target == "/bookings/cookies")
        .unwrap();
    let cookies: Vec<&str> = s
        .headers
        .iter()
        .filter(|(k, _)| k == "cookie")
        .map(|(_, v)| v.as_str())
        .collect();
    assert_eq!(cookies, ["a=1; b=2"]);
    assert_eq!(
        s.header("x-forwarded-host"),
        Some(format!("127.0.0.1:{}", proxy.port).as_str())
    );
    // Each stream is in the access log.
    let log = proxy.log_when(12);
    assert_eq!(log.iter().filter(|l| l["status"] == 200).count(), 11);
}

#[test]
fn h2c_detection_keeps_the_head_deadline_and_the_request_line_checks() {
    let legacy = Backend::start("legacy");
    let proxy = h2c_proxy(&legacy);
    // The preface's first line and a blank line look like a whole HTTP/1 head: the rest of
    // the preface must still come within the head deadline.
    for sent in [&b"PRI * HTTP/2.0\r\n\r\n"[..], b"PRI * HTTP/2.0\r\n", b"PR"] {
        let mut s = TcpStream::connect(("127.0.0.1", proxy.port)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let start = Instant::now();
        s.write_all(sent).unwrap();
        let mut answer = Vec::new();
        let _ = s.read_to_end(&mut answer);
        let took = start.elapsed();
        assert!(
            took < Duration::from_secs(4),
            "{:?}: {took:?}",
            String::from_utf8_lossy(sent)
        );
    }
    // A request line whose first byte came alone (while h2c looked for the preface) is checked
    // as one that came whole.
    for line in [
        &b"UT /bookings/a\"b HTTP/1.1\r\nHost: x\r\n\r\n"[..],
        b"UT /bookings/a b HTTP/1.1\r\nHost: x\r\n\r\n",
    ] {
        let mut s = TcpStream::connect(("127.0.0.1", proxy.port)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        s.write_all(b"P").unwrap();
        std::thread::sleep(Duration::from_millis(200));
        s.write_all(line).unwrap();
        let mut answer = Vec::new();
        let _ = s.read_to_end(&mut answer);
        let answer = String::from_utf8_lossy(&answer);
        assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
    }
    assert_eq!(legacy.count(), 0);
    // What HTTP/1 refuses in a request line, HTTP/2 refuses in `:path`: raw non-ASCII in the
    // query (curl sends the URL's bytes as they are).
    let (status, _) = h2c_get(proxy.port, "/bookings/1?name=\u{e9}", &[]);
    assert_eq!(status, "400 2");
    assert_eq!(legacy.count(), 0);
}

/// An HTTP/2 HEADERS frame on stream `id` for `method` and `path` (HPACK literals, no Huffman),
/// `end_stream` when no body follows; `extra` are more literal headers.
fn headers_frame(
    id: u32,
    method: &str,
    path: &str,
    extra: &[(&str, &str)],
    end_stream: bool,
) -> Vec<u8> {
    let mut block = Vec::new();
    let mut literal_indexed_name = |index: u8, value: &str| {
        block.push(index); // literal without indexing, name from the static table
        block.push(u8::try_from(value.len()).unwrap());
        block.extend_from_slice(value.as_bytes());
    };
    literal_indexed_name(2, method); // :method
    literal_indexed_name(4, path); // :path
    literal_indexed_name(6, "http"); // :scheme
    literal_indexed_name(1, "x"); // :authority
    for (name, value) in extra {
        block.push(0); // literal without indexing, new name
        block.push(u8::try_from(name.len()).unwrap());
        block.extend_from_slice(name.as_bytes());
        block.push(u8::try_from(value.len()).unwrap());
        block.extend_from_slice(value.as_bytes());
    }
    let mut frame = Vec::new();
    let len = block.len();
    frame.extend_from_slice(&[(len >> 16) as u8, (len >> 8) as u8, len as u8, 0x1]);
    frame.push(0x4 | if end_stream { 0x1 } else { 0 }); // END_HEADERS (and END_STREAM)
    frame.extend_from_slice(&id.to_be_bytes());
    frame.extend_from_slice(&block);
    frame
}

#[test]
fn an_http2_request_body_that_stops_coming_is_reset_at_the_body_timeout() {
    let legacy = Backend::start("legacy");
    // An upstream that takes a second before it reads a body, as a busy one does: HTTP/2 flow
    // control then holds the client back, which is not the client's stall.
    let slow_reader = serve_http(|req: http::Request<hyper::body::Incoming>| async move {
        use http_body_util::BodyExt;
        tokio::time::sleep(Duration::from_millis(2500)).await;
        let n = req
            .into_body()
            .collect()
            .await
            .map_or(0, |b| b.to_bytes().len());
        http::Response::new(http_body_util::Full::new(bytes::Bytes::from(n.to_string())))
    });
    // One that answers at once, without reading a body.
    let eager = serve_http(|_req: http::Request<hyper::body::Incoming>| async move {
        http::Response::new(http_body_util::Full::new(bytes::Bytes::from_static(
            b"eager",
        )))
    });
    let proxy = Proxy::start(
        &Config::new()
            .server("h2c = true\nbody-timeout = \"1s\"\nkeepalive-timeout = \"1s\"")
            // Before the response, the upstream's own timeout bounds a pause.
            .upstream_keys(
                "legacy",
                &format!("addresses = [\"{}\"]\ntimeout = \"2s\"", legacy.addr()),
            )
            .upstream_keys(
                "slow",
                &format!("addresses = [\"127.0.0.1:{slow_reader}\"]\ntimeout = \"20s\""),
            )
            .route("bookings", "/bookings", |r| r.legacy("legacy"))
            .upstream("eager", &format!("127.0.0.1:{eager}"))
            .route("uploads", "/uploads", |r| r.legacy("slow"))
            .route("eager", "/eager", |r| r.legacy("eager"))
            .build(),
    );
    let cases: [(&str, Vec<u8>); 3] = [
        // A GET whose stream never ends, answered at once: reset at body-timeout after the
        // response.
        ("GET", headers_frame(1, "GET", "/eager/forever", &[], false)),
        // The same to an upstream that waits for the body: its timeout ends it (504).
        (
            "GET waiting",
            headers_frame(1, "GET", "/bookings/forever", &[], false),
        ),
        // A POST that announces 100 bytes and sends 10.
        ("POST", {
            let mut f = headers_frame(
                1,
                "POST",
                "/bookings/upload",
                &[("content-length", "100")],
                false,
            );
            f.extend_from_slice(&[0, 0, 10, 0x0, 0x0, 0, 0, 0, 1]);
            f.extend_from_slice(b"0123456789");
            f
        }),
    ];
    for (what, frames) in cases {
        let mut s = TcpStream::connect(("127.0.0.1", proxy.port)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
        s.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00")
            .unwrap();
        s.write_all(&frames).unwrap();
        let start = Instant::now();
        let types = frame_types(&mut s);
        let took = start.elapsed();
        // RST_STREAM (3) for the stalled stream, then the idle connection closes.
        assert!(types.contains(&3), "{what}: no RST_STREAM: {types:?}");
        assert!(took < Duration::from_secs(6), "{what}: {took:?} {types:?}");
    }
    // Empty DATA frames are no progress: a POST that sends one every 300 ms is reset too.
    let mut s = TcpStream::connect(("127.0.0.1", proxy.port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
    s.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00")
        .unwrap();
    s.write_all(&headers_frame(1, "POST", "/bookings/empty", &[], false))
        .unwrap();
    let mut w = s.try_clone().unwrap();
    let trickle = std::thread::spawn(move || {
        for _ in 0..20 {
            std::thread::sleep(Duration::from_millis(300));
            if w.write_all(&[0, 0, 0, 0x0, 0x0, 0, 0, 0, 1]).is_err() {
                break;
            }
        }
    });
    let start = Instant::now();
    let types = frame_types(&mut s);
    let took = start.elapsed();
    assert!(types.contains(&3), "empty DATA: no RST_STREAM: {types:?}");
    assert!(
        took < Duration::from_secs(5),
        "empty DATA kept the stream: {took:?}"
    );
    trickle.join().unwrap();
    // A large upload to an upstream that reads it late: no reset, every byte arrives.
    let dir = tempfile::tempdir().unwrap();
    let big = dir.path().join("big.bin");
    std::fs::write(&big, vec![b'x'; 5 << 20]).unwrap();
    let out = Command::new("curl")
        .args([
            "-sS",
            "--max-time",
            "30",
            "--http2-prior-knowledge",
            "--data-binary",
        ])
        .arg(format!("@{}", big.display()))
        .arg(format!("http://127.0.0.1:{}/uploads/big", proxy.port))
        .output()
        .unwrap();
    assert_eq!(
        stdout_of(&out),
        (5 << 20).to_string(),
        "{}",
        stderr_of(&out)
    );
    // The stream reset after its response is in the access log.
    assert!(
        proxy
            .access_log()
            .iter()
            .any(|l| l["path"] == "/eager/forever"
                && l["error"]
                    .as_str()
                    .is_some_and(|e| e.contains("body-timeout"))),
        "{:?}",
        proxy.access_log()
    );
    // A body that is complete is no stall, however long the upstream takes to answer.
    let (status, _) = h2c_get(proxy.port, "/uploads/slow", &[]);
    assert_eq!(status, "200 2");
    let out = Command::new("curl")
        .args([
            "-sS",
            "--max-time",
            "10",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code} %{http_version}",
        ])
        .args(["--http2-prior-knowledge", "--data-binary", "0123456789"])
        .arg(format!("http://127.0.0.1:{}/uploads/slow-post", proxy.port))
        .output()
        .unwrap();
    assert_eq!(stdout_of(&out), "200 2", "{}", stderr_of(&out));
}

#[test]
fn a_connection_sending_many_malformed_streams_is_closed() {
    let legacy = Backend::start("legacy");
    let proxy = h2c_proxy(&legacy);
    let mut s = TcpStream::connect(("127.0.0.1", proxy.port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut frames =
        b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00".to_vec();
    // A control byte in `:path`: each stream is refused; past 32 the connection goes.
    for i in 0..40u32 {
        frames.extend(headers_frame(
            2 * i + 1,
            "GET",
            "/bookings/a\u{1}b",
            &[],
            true,
        ));
    }
    s.write_all(&frames).unwrap();
    let types = frame_types(&mut s);
    assert!(types.contains(&7), "no GOAWAY: {types:?}");
    assert_eq!(legacy.count(), 0);
}
