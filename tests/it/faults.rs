//! Faulty upstreams, written as raw sockets that misbehave exactly as a broken monolith or a
//! young service does: every fault becomes a clear answer for the client, and the next request
//! stays safe.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::support::*;

/// Reads one request head (to its blank line): `None` if the peer closed or sent nothing
/// within 5 s.
fn read_head(s: &mut TcpStream) -> Option<Vec<u8>> {
    let mut got = Vec::new();
    let mut byte = [0u8; 1];
    s.set_read_timeout(Some(Duration::from_secs(5))).ok();
    // One byte at a time, so nothing after the head (a next request) is consumed.
    while !got.ends_with(b"\r\n\r\n") {
        match s.read(&mut byte) {
            Ok(1) => got.push(byte[0]),
            _ => return None,
        }
    }
    Some(got)
}

/// A raw upstream: for every request head on every connection, `answer(stream, head)` runs;
/// it returns whether to keep reading requests on the connection. `heads` counts the heads
/// read (health checks that only connect are not counted).
struct Raw {
    port: u16,
    heads: Arc<AtomicUsize>,
}

impl Raw {
    fn start(answer: fn(&mut TcpStream, &[u8]) -> bool) -> Raw {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let heads = Arc::new(AtomicUsize::new(0));
        let counter = Arc::clone(&heads);
        std::thread::spawn(move || {
            for s in listener.incoming() {
                let Ok(mut s) = s else { continue };
                let counter = Arc::clone(&counter);
                std::thread::spawn(move || {
                    while let Some(head) = read_head(&mut s) {
                        counter.fetch_add(1, Ordering::SeqCst);
                        if !answer(&mut s, &head) {
                            break;
                        }
                    }
                });
            }
        });
        Raw { port, heads }
    }

    fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    fn heads(&self) -> usize {
        self.heads.load(Ordering::SeqCst)
    }
}

/// Closes with a reset (SO_LINGER 0): what a crashed or overloaded upstream does.
fn reset(s: &mut TcpStream) {
    let _ = socket2::SockRef::from(&*s).set_linger(Some(Duration::ZERO));
    let _ = s.shutdown(std::net::Shutdown::Read);
}

fn proxy_for(addresses: &[String], keys: &str) -> Proxy {
    let list = addresses
        .iter()
        .map(|a| format!("\"{a}\""))
        .collect::<Vec<_>>()
        .join(", ");
    Proxy::start(
        &Config::new()
            .default("up")
            .upstream_keys("up", &format!("addresses = [{list}]\n{keys}"))
            .build(),
    )
}

/// The one address of upstream `up` has no failure counted against it and is in rotation.
fn assert_in_rotation(proxy: &Proxy, what: &str) {
    let status = proxy.status();
    let address = &status["upstreams"]["up"]["addresses"][0];
    assert_eq!(address["consecutive_failures"], 0, "{what}: {status}");
    assert_eq!(address["up"], true, "{what}: {status}");
}

/// Sends `request` on a fresh connection and reads until the proxy closes it (or 15 s).
fn exchange(port: u16, request: &[u8]) -> (Vec<u8>, Duration) {
    let start = Instant::now();
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
    s.write_all(request).unwrap();
    let mut out = Vec::new();
    let mut buf = [0u8; 65536];
    loop {
        match s.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => out.extend_from_slice(&buf[..n]),
        }
    }
    (out, start.elapsed())
}

fn status_of(answer: &[u8]) -> u16 {
    String::from_utf8_lossy(answer)
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}

fn head_of(answer: &[u8]) -> String {
    let text = String::from_utf8_lossy(answer);
    text.split("\r\n\r\n")
        .next()
        .unwrap_or("")
        .to_ascii_lowercase()
}

fn body_of(answer: &[u8]) -> Vec<u8> {
    let at = answer
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map_or(answer.len(), |i| i + 4);
    answer[at..].to_vec()
}

/// The access log's last line, once it has been written (the log is written in batches).
fn last_logged(proxy: &Proxy) -> serde_json::Value {
    wait_for(Duration::from_secs(10), "an access-log line", || {
        proxy.access_log().pop()
    })
}

const GET: &[u8] = b"GET /x HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n";

#[test]
fn a_sent_idempotent_request_that_meets_a_reset_is_retried_and_the_address_leaves_rotation() {
    // One address reads each request and resets; the other answers. Under the default TCP
    // health check the resetting one stays "healthy" (its connect succeeds).
    let broken = Raw::start(|s, _| {
        reset(s);
        false
    });
    let good = Backend::start("good");
    let proxy = proxy_for(&[broken.addr(), good.addr()], "fail-timeout = \"30s\"");
    let mut failed = 0;
    for _ in 0..60 {
        let (answer, _) = exchange(proxy.port, GET);
        if status_of(&answer) != 200 {
            failed += 1;
        }
    }
    assert_eq!(
        failed, 0,
        "idempotent requests with a healthy second address"
    );
    // Passive health: three consecutive failures took the address out of rotation, so it
    // saw only those three of the 60 requests.
    assert_eq!(
        broken.heads(),
        3,
        "requests that reached the resetting address"
    );
    let metrics = get(proxy.admin_port, "/metrics", &[]).text();
    let line = metrics
        .lines()
        .find(|l| {
            l.starts_with("strangle_upstream_address_up{")
                && l.contains(&format!("address=\"{}\"", broken.addr()))
        })
        .unwrap_or_else(|| panic!("no health series for the address:\n{metrics}"));
    assert!(line.ends_with(" 0"), "{line}");
    let status = proxy.status();
    let addresses = status["upstreams"]["up"]["addresses"].as_array().unwrap();
    let entry = addresses
        .iter()
        .find(|a| a["address"] == broken.addr())
        .unwrap();
    assert_eq!(entry["up"], false, "{status}");
    assert_eq!(entry["ejected"], true, "{status}");
    assert!(entry["since"].as_u64().unwrap() > 0, "{status}");
}

#[test]
fn a_non_idempotent_request_that_was_sent_is_never_retried() {
    let broken = Raw::start(|s, _| {
        reset(s);
        false
    });
    let proxy = proxy_for(&[broken.addr()], "retries = 3\nmax-fails = 0");
    let post =
        b"POST /orders HTTP/1.1\r\nHost: a\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{}";
    let (answer, _) = exchange(proxy.port, post);
    assert_eq!(status_of(&answer), 502, "{}", head_of(&answer));
    assert_eq!(broken.heads(), 1, "a POST was sent again");
    // An idempotent one to the same (only) address is tried `retries` more times on fresh
    // connections before the 502.
    let (answer, _) = exchange(proxy.port, GET);
    assert_eq!(status_of(&answer), 502);
    assert_eq!(broken.heads(), 1 + 4);
}

#[test]
fn a_response_head_trickled_past_response_timeout_is_a_504_not_a_20s_wait() {
    // One byte every 300 ms (the scenario): each read is well within `timeout`, the head
    // never is.
    let slow = Raw::start(|s, _| {
        for b in b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nhi" {
            if s.write_all(&[*b]).is_err() {
                return false;
            }
            std::thread::sleep(Duration::from_millis(300));
        }
        true
    });
    let proxy = proxy_for(
        &[slow.addr()],
        "timeout = \"2s\"\nresponse-timeout = \"1500ms\"\nretries = 0",
    );
    let (answer, took) = exchange(proxy.port, GET);
    assert_eq!(status_of(&answer), 504, "{}", head_of(&answer));
    assert!(head_of(&answer).contains("connection: close"));
    assert!(took < Duration::from_secs(6), "took {took:?}");
    let line = last_logged(&proxy);
    assert_eq!(line["status"], 504);
    assert!(
        line["error"].as_str().unwrap().contains("response-timeout"),
        "{line}"
    );
    // A length spelled `00` is no body either: the head's clock still starts at once.
    let (answer, took) = exchange(
        proxy.port,
        b"GET /x HTTP/1.1\r\nHost: a\r\nContent-Length: 00\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(status_of(&answer), 504, "{}", head_of(&answer));
    assert!(took < Duration::from_secs(6), "took {took:?}");
}

#[test]
fn a_trickling_body_is_ended_by_request_timeout() {
    // A Content-Length body a byte every 200 ms (the scenario): nothing of it has left strangle's small
    // write buffer when the deadline passes, so the client gets the 504 instead.
    let slow_length = Raw::start(|s, _| {
        let _ = s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n");
        for _ in 0..100 {
            if s.write_all(b"x").is_err() {
                return false;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        true
    });
    let proxy = proxy_for(
        &[slow_length.addr()],
        "timeout = \"5s\"\nrequest-timeout = \"2s\"",
    );
    let (answer, took) = exchange(proxy.port, GET);
    assert_eq!(
        status_of(&answer),
        504,
        "{}",
        String::from_utf8_lossy(&answer)
    );
    assert!(took < Duration::from_secs(7), "took {took:?}");

    // A chunked body, a chunk every 200 ms, streams (each chunk is flushed): the head went out, so the deadline
    // ends the connection without the last chunk, and the body cannot look complete.
    let slow_chunks = Raw::start(|s, _| {
        let _ = s.write_all(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n");
        for _ in 0..100 {
            if s.write_all(b"1\r\nx\r\n").is_err() {
                return false;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        let _ = s.write_all(b"0\r\n\r\n");
        true
    });
    let proxy = proxy_for(
        &[slow_chunks.addr()],
        "timeout = \"5s\"\nrequest-timeout = \"2s\"",
    );
    let (answer, took) = exchange(proxy.port, GET);
    assert_eq!(status_of(&answer), 200);
    assert!(took < Duration::from_secs(7), "took {took:?}");
    assert!(
        !answer.ends_with(b"0\r\n\r\n"),
        "{}",
        String::from_utf8_lossy(&answer)
    );
    let line = last_logged(&proxy);
    assert!(
        line["error"].as_str().unwrap().contains("request-timeout"),
        "{line}"
    );
}

#[test]
fn an_upstream_failure_before_anything_reached_the_client_is_a_502_and_after_it_a_cut() {
    // Head and five bytes of a 100-byte body, then a reset: all of it was still in strangle's
    // buffer, so the client gets a 502 (not a bare close it might retry on its own).
    let resets = Raw::start(|s, _| {
        let _ = s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nHELLO");
        // The scripted failure: a pause, then the reset.
        std::thread::sleep(Duration::from_millis(100));
        reset(s);
        false
    });
    let proxy = proxy_for(&[resets.addr()], "");
    let (answer, _) = exchange(proxy.port, GET);
    assert_eq!(
        status_of(&answer),
        502,
        "{}",
        String::from_utf8_lossy(&answer)
    );
    assert!(head_of(&answer).contains("connection: close"));
    assert!(!String::from_utf8_lossy(&answer).contains("HELLO"));
    assert_eq!(last_logged(&proxy)["status"], 502);

    // 8 KB of a 100 KB body went out before the upstream closed: the client's connection
    // closes with the body visibly short of its length.
    let cuts = Raw::start(|s, _| {
        let _ = s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\n");
        let _ = s.write_all(&[b'x'; 8192]);
        false
    });
    let proxy = proxy_for(&[cuts.addr()], "");
    let (answer, took) = exchange(proxy.port, GET);
    assert_eq!(status_of(&answer), 200);
    assert!(head_of(&answer).contains("content-length: 100000"));
    let body = body_of(&answer);
    assert!(!body.is_empty() && body.len() < 100_000, "{}", body.len());
    assert!(took < Duration::from_secs(10));
}

#[test]
fn http_1_0_clients_never_get_chunked_or_interim_responses() {
    // Close-delimited, chunked, and with an interim 103 first: an HTTP/1.0 client gets a
    // plain body delimited by the close every time.
    let close_delimited = Raw::start(|s, _| {
        let _ = s.write_all(b"HTTP/1.1 200 OK\r\n\r\nclose-delimited body");
        false
    });
    let chunked = Raw::start(|s, _| {
        let _ = s.write_all(
            b"HTTP/1.1 103 Early Hints\r\nLink: </a.css>; rel=preload\r\n\r\nHTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n",
        );
        true
    });
    for (raw, want) in [
        (&close_delimited, &b"close-delimited body"[..]),
        (&chunked, &b"hello world"[..]),
    ] {
        let proxy = proxy_for(&[raw.addr()], "");
        let (answer, _) = exchange(proxy.port, b"GET /x HTTP/1.0\r\n\r\n");
        let head = head_of(&answer);
        assert_eq!(status_of(&answer), 200, "{head}");
        assert!(!head.contains("transfer-encoding"), "{head}");
        assert!(!head.contains("early hints"), "{head}");
        assert_eq!(body_of(&answer), want, "{head}");
        // HTTP/1.1 clients still get the body (after the hints, when there are some).
        let (answer, _) = exchange(proxy.port, GET);
        assert!(
            String::from_utf8_lossy(&answer).contains("HTTP/1.1 200 OK"),
            "{}",
            String::from_utf8_lossy(&answer)
        );
    }
}

#[test]
fn broken_response_framing_is_repaired_or_refused() {
    // 204 with a length (and stray body bytes): passed on without Content-Length, and the
    // stray bytes never reach the client as a next response.
    let no_content = Raw::start(|s, _| {
        let _ = s.write_all(b"HTTP/1.1 204 No Content\r\nContent-Length: 5\r\n\r\nHELLO");
        false
    });
    let proxy = proxy_for(&[no_content.addr()], "");
    let (answer, _) = exchange(proxy.port, GET);
    assert_eq!(status_of(&answer), 204);
    assert!(
        !head_of(&answer).contains("content-length"),
        "{}",
        head_of(&answer)
    );
    assert!(body_of(&answer).is_empty());

    // Two identical lengths: one.
    let twice = Raw::start(|s, _| {
        let _ =
            s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\nHELLO");
        true
    });
    let proxy = proxy_for(&[twice.addr()], "");
    let (answer, _) = exchange(proxy.port, GET);
    assert_eq!(status_of(&answer), 200);
    assert_eq!(head_of(&answer).matches("content-length").count(), 1);
    assert_eq!(body_of(&answer), b"HELLO");

    // Content-Length next to chunked: the chunking frames the body and the length is
    // dropped (RFC 9112 section 6.3), so the client sees one framing only.
    let both = Raw::start(|s, _| {
        let _ = s.write_all(
            b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nHELLO\r\n0\r\n\r\n",
        );
        false
    });
    let proxy = proxy_for(&[both.addr()], "");
    let (answer, _) = exchange(proxy.port, GET);
    assert_eq!(status_of(&answer), 200);
    assert!(
        !head_of(&answer).contains("content-length"),
        "{}",
        head_of(&answer)
    );
    assert!(String::from_utf8_lossy(&answer).contains("HELLO"));

    // Ambiguous framing and oversized heads: 502, never passed on.
    let bad: [fn(&mut TcpStream, &[u8]) -> bool; 4] = [
        |s, _| {
            let _ = s.write_all(
                b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 7\r\n\r\nHELLO!!",
            );
            false
        },
        |s, _| {
            let _ = s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 5, 6\r\n\r\nHELLO!");
            false
        },
        |s, _| {
            let mut r = b"HTTP/1.1 200 ".to_vec();
            r.extend(std::iter::repeat_n(b'O', 100_000));
            r.extend_from_slice(b"\r\nContent-Length: 2\r\n\r\nhi");
            let _ = s.write_all(&r);
            false
        },
        |s, _| {
            let mut r = b"HTTP/1.1 200 OK\r\n".to_vec();
            for i in 0..90 {
                r.extend_from_slice(format!("X-Filler-{i}: ").as_bytes());
                r.extend(std::iter::repeat_n(b'a', 10_000));
                r.extend_from_slice(b"\r\n");
            }
            r.extend_from_slice(b"Content-Length: 2\r\n\r\nhi");
            let _ = s.write_all(&r);
            false
        },
    ];
    for (i, answer_with) in bad.into_iter().enumerate() {
        let raw = Raw::start(answer_with);
        let proxy = proxy_for(&[raw.addr()], "retries = 0");
        let (answer, _) = exchange(proxy.port, GET);
        assert_eq!(status_of(&answer), 502, "case {i}: {}", head_of(&answer));
        assert!(head_of(&answer).len() < 1024, "case {i}");
        assert!(
            !String::from_utf8_lossy(&answer).contains("HELLO"),
            "case {i}"
        );
    }
}

#[test]
fn a_stray_response_on_an_idle_pooled_connection_never_answers_the_next_request() {
    // The upstream answers, then 300 ms later sends a second, unsolicited response on the
    // same connection. The next request (after it arrived) must get its own answer.
    let stray = Raw::start(|s, _| {
        let _ = s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nHELLO");
        std::thread::sleep(Duration::from_millis(300));
        let _ = s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nSTRAY");
        true
    });
    let proxy = proxy_for(&[stray.addr()], "");
    let mut c = proxy.client();
    assert_eq!(c.get("/x", &[]).unwrap().text(), "HELLO");
    // Until the stray (sent 300 ms after the answer) has surely reached the pooled connection:
    // the proxy shows nothing to poll for while the connection sits idle.
    std::thread::sleep(Duration::from_millis(700));
    let mut other = proxy.client();
    assert_eq!(other.get("/x", &[]).unwrap().text(), "HELLO");
}

#[test]
fn deadlines_bound_lambda_and_signed_upstreams_too() {
    // An endpoint that takes the request and never answers.
    let silent = Raw::start(|_, _| {
        // Silent for longer than any deadline under test.
        std::thread::sleep(Duration::from_secs(30));
        false
    });
    let env = [
        ("AWS_ACCESS_KEY_ID", "AKIDEXAMPLE"),
        (
            "AWS_SECRET_ACCESS_KEY",
            "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY",
        ),
        ("AWS_REGION", "eu-west-1"),
    ];
    let upstreams = [
        Config::new()
            .default("up")
            .lambda("up", silent.port)
            .with("timeout = \"30s\"\nresponse-timeout = \"1s\""),
        Config::new()
            .default("up")
            .signed_api("up", silent.port)
            .with("timeout = \"30s\"\nrequest-timeout = \"1s\""),
    ];
    for config in upstreams {
        let text = config.build();
        let proxy = Proxy::start_with_env(&text, &env);
        let (answer, took) = exchange(proxy.port, GET);
        assert_eq!(status_of(&answer), 504, "{text}: {}", head_of(&answer));
        assert!(took < Duration::from_secs(6), "{text}: took {took:?}");
    }
}

#[test]
fn a_late_body_delimited_by_the_close_never_looks_complete() {
    // No length and no chunking: the body ends when the upstream closes. The deadline's
    // shutdown must not read as that end: no final chunk, the connection closes, 504 logged.
    let endless = Raw::start(|s, _| {
        let _ = s.write_all(b"HTTP/1.1 200 OK\r\n\r\n");
        for i in 0..100 {
            if s.write_all(format!("line {i}\n").as_bytes()).is_err() {
                return false;
            }
            // A line every 200 ms: the late body under test.
            std::thread::sleep(Duration::from_millis(200));
        }
        false
    });
    let proxy = proxy_for(&[endless.addr()], "request-timeout = \"2s\"");
    let (answer, took) = exchange(
        proxy.port,
        b"GET /x HTTP/1.1\r\nHost: a\r\n\r\n", // keep-alive: only a close ends it
    );
    let text = String::from_utf8_lossy(&answer);
    assert_eq!(status_of(&answer), 200, "{text}");
    assert!(
        head_of(&answer).contains("transfer-encoding: chunked"),
        "{text}"
    );
    assert!(
        !text.ends_with("0\r\n\r\n"),
        "a complete-looking body: {text}"
    );
    assert!(took < Duration::from_secs(8), "{took:?}");
    let line = last_logged(&proxy);
    assert_eq!(line["status"], 504, "{line}");
}

#[test]
fn interim_responses_never_stand_in_for_the_final_one() {
    // strangle answers `Expect: 100-continue` itself; the upstream then resets. The client
    // must still get a final answer (502), not a 100 followed by a close.
    let resets = Raw::start(|s, _| {
        reset(s);
        false
    });
    let proxy = proxy_for(&[resets.addr()], "retries = 0");
    let mut s = TcpStream::connect(("127.0.0.1", proxy.port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(
        b"POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n",
    )
    .unwrap();
    let mut first = [0u8; 25];
    s.read_exact(&mut first).unwrap();
    assert!(first.starts_with(b"HTTP/1.1 100 Continue\r\n"));
    s.write_all(b"hello").unwrap();
    let mut rest = Vec::new();
    let _ = s.read_to_end(&mut rest);
    let text = String::from_utf8_lossy(&rest);
    assert!(text.contains("HTTP/1.1 502"), "{text}");
    assert_eq!(last_logged(&proxy)["status"], 502);

    // An idempotent PUT with `Expect` is retried on the healthy address like any other.
    let good = Backend::start("good");
    let proxy = proxy_for(&[resets.addr(), good.addr()], "retries = 1");
    for _ in 0..4 {
        let mut s = TcpStream::connect(("127.0.0.1", proxy.port)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        s.write_all(b"PUT /x HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nExpect: 100-continue\r\nConnection: close\r\n\r\n")
            .unwrap();
        let mut first = [0u8; 25];
        s.read_exact(&mut first).unwrap();
        s.write_all(b"hello").unwrap();
        let mut rest = Vec::new();
        let _ = s.read_to_end(&mut rest);
        assert!(String::from_utf8_lossy(&rest).contains("HTTP/1.1 200"));
    }

    // The upstream's own 103 and then a reset: a final 502 still follows the 103.
    let hints_then_reset = Raw::start(|s, _| {
        let _ = s.write_all(b"HTTP/1.1 103 Early Hints\r\nLink: </a.css>; rel=preload\r\n\r\n");
        // The scripted failure: the hints reach the client before the reset.
        std::thread::sleep(Duration::from_millis(200));
        reset(s);
        false
    });
    let proxy = proxy_for(&[hints_then_reset.addr()], "retries = 0");
    let (answer, _) = exchange(proxy.port, GET);
    let text = String::from_utf8_lossy(&answer);
    assert!(text.starts_with("HTTP/1.1 103"), "{text}");
    assert!(text.contains("HTTP/1.1 502"), "{text}");
}

#[test]
fn a_slow_upload_is_not_the_upstreams_fault() {
    // The head's clock starts when the request is sent: a client uploading slowly (within
    // body-timeout) gets its answer, and the address stays in rotation.
    let echo = Raw::start(|s, head| {
        let text = String::from_utf8_lossy(head).to_ascii_lowercase();
        let length: usize = text
            .lines()
            .find_map(|l| l.strip_prefix("content-length: "))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0);
        let mut body = vec![0u8; length];
        if s.read_exact(&mut body).is_err() {
            return false;
        }
        let _ = s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok");
        true
    });
    let proxy = proxy_for(&[echo.addr()], "response-timeout = \"1s\"\nmax-fails = 2");
    for _ in 0..3 {
        let mut s = TcpStream::connect(("127.0.0.1", proxy.port)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        s.write_all(
            b"PUT /x HTTP/1.1\r\nHost: a\r\nContent-Length: 600\r\nConnection: close\r\n\r\n",
        )
        .unwrap();
        for _ in 0..6 {
            s.write_all(&[b'a'; 100]).unwrap();
            // The slow upload under test: 2.4 s in all, past the 1 s response-timeout.
            std::thread::sleep(Duration::from_millis(400));
        }
        let mut answer = Vec::new();
        let _ = s.read_to_end(&mut answer);
        assert_eq!(
            status_of(&answer),
            200,
            "{}",
            String::from_utf8_lossy(&answer)
        );
    }
    assert_in_rotation(&proxy, "");
}

#[test]
fn transfer_codings_that_cannot_be_framed_safely_are_refused() {
    let bad: [fn(&mut TcpStream, &[u8]) -> bool; 4] = [
        |s, _| {
            let _ = s.write_all(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked, identity\r\n\r\n5\r\nHELLO\r\n0\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nEVIL");
            false
        },
        |s, _| {
            let _ = s.write_all(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\nEVIL");
            false
        },
        |s, _| {
            let _ = s.write_all(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: xchunked\r\n\r\nEVIL");
            false
        },
        |s, _| {
            let _ = s.write_all(
                b"HTTP/1.0 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n4\r\nEVIL\r\n0\r\n\r\n",
            );
            false
        },
    ];
    for (i, answer_with) in bad.into_iter().enumerate() {
        let raw = Raw::start(answer_with);
        let proxy = proxy_for(&[raw.addr()], "retries = 0");
        for request in [GET, &b"GET /x HTTP/1.0\r\n\r\n"[..]] {
            let (answer, _) = exchange(proxy.port, request);
            let text = String::from_utf8_lossy(&answer);
            assert_eq!(status_of(&answer), 502, "case {i}: {text}");
            assert!(!text.contains("EVIL"), "case {i}: {text}");
        }
    }
}

#[test]
fn an_upstream_that_closes_its_idle_connections_costs_no_request() {
    // Answers as if keeping the connection alive, then closes it: a pooled connection that is
    // dead by the time the next request comes. With no retries allowed, a request sent on it
    // would fail; the pool must find it closed before using it.
    let closing = Raw::start(|s, _| {
        let _ = s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nHELLO");
        false
    });
    let proxy = proxy_for(&[closing.addr()], "retries = 0");
    let mut c = proxy.client();
    for i in 0..5 {
        let r = c.get("/x", &[]).unwrap();
        assert_eq!((r.status, r.text().as_str()), (200, "HELLO"), "request {i}");
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(closing.heads(), 5);
}

#[test]
fn a_response_delimited_by_the_close_goes_on_chunked_and_head_answers_carry_no_body() {
    let old = Raw::start(|s, head| {
        if head.starts_with(b"HEAD") {
            let _ = s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n");
            return true;
        }
        // HTTP/1.0 style: no length, the body ends with the connection.
        let _ = s.write_all(b"HTTP/1.0 200 OK\r\nX-A: 1\r\n\r\nBODY");
        false
    });
    let proxy = proxy_for(&[old.addr()], "");
    let mut c = proxy.client();
    let r = c.get("/x", &[]).unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(r.header("transfer-encoding"), Some("chunked"));
    assert_eq!(r.text(), "BODY");
    // The client's connection stays open: a HEAD answer has its length and no body, and the
    // next request on the connection reads a clean response.
    c.stream()
        .write_all(b"HEAD /x HTTP/1.1\r\nHost: a\r\n\r\n")
        .unwrap();
    assert_eq!(c.read_interim().unwrap(), 200);
    let r = c.get("/x", &[]).unwrap();
    assert_eq!((r.status, r.text().as_str()), (200, "BODY"));
    assert_eq!(old.heads(), 3);
}

/// The `Content-Length` of a request head (0 when it has none).
fn content_length(head: &[u8]) -> usize {
    String::from_utf8_lossy(head)
        .to_ascii_lowercase()
        .lines()
        .find_map(|l| l.strip_prefix("content-length: ").map(str::to_owned))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}

#[test]
fn an_upload_answered_early_reaches_the_client_at_once_and_its_connection_is_never_reused() {
    // An upstream that refuses an upload from its head (413) without reading the body, and
    // keeps the connection open. The client must get the 413 while it is still uploading, and
    // no later request may go out on that connection (the upstream would read it as the rest
    // of the body, or worse, the rest of the body as a request).
    let refusing = Raw::start(|s, head| {
        if head.starts_with(b"PUT") {
            let _ = s.write_all(b"HTTP/1.1 413 Payload Too Large\r\nContent-Length: 4\r\n\r\nBIG!");
        } else if head.starts_with(b"GET") {
            let _ = s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nfresh");
        } else {
            // Body bytes read as a head: the connection was reused mid-upload.
            let _ = s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nSTALE");
        }
        true
    });
    for off in [false, true] {
        let proxy = Proxy::start_with_env(
            &Config::new()
                .default("up")
                .upstream_keys("up", &format!("addresses = [\"{}\"]", refusing.addr()))
                .build(),
            engine_env(off),
        );
        let mut uploader = proxy.client();
        uploader
            .stream()
            .write_all(b"PUT /x HTTP/1.1\r\nHost: a\r\nContent-Length: 10000000\r\n\r\n")
            .unwrap();
        uploader.stream().write_all(&[b'a'; 1000]).unwrap();
        // 999,000 bytes of the body are never sent: the answer cannot wait for them.
        let r = uploader.read_response().unwrap();
        assert_eq!((r.status, r.text().as_str()), (413, "BIG!"), "off: {off}");
        for _ in 0..3 {
            let r = proxy.client().get("/next", &[]).unwrap();
            assert_eq!(r.text(), "fresh", "fast path off: {off}");
        }
        drop(uploader);
    }
}

/// Requests the `recording` upstream read in full (head and body), and ones it was left
/// waiting for.
static COMPLETE: AtomicUsize = AtomicUsize::new(0);
static CUT: AtomicUsize = AtomicUsize::new(0);

#[test]
fn a_client_that_stops_mid_body_never_completes_a_request_upstream() {
    let recording = Raw::start(|s, head| {
        let mut body = vec![0u8; content_length(head)];
        if s.read_exact(&mut body).is_err() {
            CUT.fetch_add(1, Ordering::SeqCst);
            return false;
        }
        COMPLETE.fetch_add(1, Ordering::SeqCst);
        let _ = s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok");
        true
    });
    let proxy = proxy_for(&[recording.addr()], "retries = 0");
    for (i, body) in [&b"0123456789"[..], b"", b"01234567890123456789012345678"]
        .into_iter()
        .enumerate()
    {
        let mut s = TcpStream::connect(("127.0.0.1", proxy.port)).unwrap();
        s.write_all(b"POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: 30\r\n\r\n")
            .unwrap();
        s.write_all(body).unwrap();
        std::thread::sleep(Duration::from_millis(100));
        // The client goes away with its body short.
        drop(s);
        eventually(Duration::from_secs(5), "the upstream sees the cut", || {
            CUT.load(Ordering::SeqCst) == i + 1
        });
    }
    assert_eq!(COMPLETE.load(Ordering::SeqCst), 0);
    // The proxy is unharmed: a whole upload passes.
    let r = proxy
        .client()
        .request("POST", "/x", &[], &[b'z'; 30])
        .unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(COMPLETE.load(Ordering::SeqCst), 1);
}

/// Bodies the `flaky` upstream received whole, in order; its first connection fails.
static BODIES: std::sync::Mutex<Vec<Vec<u8>>> = std::sync::Mutex::new(Vec::new());
static FLAKY_CONNECTIONS: AtomicUsize = AtomicUsize::new(0);

#[test]
fn a_failed_upload_is_retried_with_its_body_only_when_safe() {
    // Every odd request's connection resets after reading the whole request; the next one
    // answers. An idempotent upload is sent again, body and all; a POST is not (502), nor is
    // a body too large to have been kept for a retry.
    let flaky = Raw::start(|s, head| {
        let mut body = vec![0u8; content_length(head)];
        if s.read_exact(&mut body).is_err() {
            return false;
        }
        BODIES.lock().unwrap().push(body);
        if FLAKY_CONNECTIONS.fetch_add(1, Ordering::SeqCst) % 2 == 0 {
            reset(s);
            return false;
        }
        // Closed after it: the proxy must not keep the connection for the next request.
        let _ = s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok");
        false
    });
    let proxy = proxy_for(&[flaky.addr()], "retries = 1");
    let small = vec![b'p'; 1000];
    let r = proxy.client().request("PUT", "/x", &[], &small).unwrap();
    assert_eq!((r.status, r.text().as_str()), (200, "ok"));
    assert_eq!(*BODIES.lock().unwrap(), [small.clone(), small.clone()]);

    BODIES.lock().unwrap().clear();
    let r = proxy.client().request("POST", "/x", &[], &small).unwrap();
    assert_eq!(r.status, 502, "a POST is never sent twice");
    assert_eq!(BODIES.lock().unwrap().len(), 1);

    // Even count again: the next request's connection resets.
    let r = proxy.client().get("/even", &[]).unwrap();
    assert_eq!(r.status, 200);
    BODIES.lock().unwrap().clear();
    let large = vec![b'l'; 200_000];
    let r = proxy.client().request("PUT", "/x", &[], &large).unwrap();
    assert_eq!(
        r.status, 502,
        "a body past the retry buffer cannot be sent again"
    );
    assert_eq!(BODIES.lock().unwrap().len(), 1);
}

#[test]
fn an_upstream_that_refuses_an_upload_midway_is_heard_and_not_blamed() {
    // Found by an adversarial review: an upstream that answers an upload from its head and
    // closes with the body unread (a reset: Python's http.server, Go's net/http past 256 KB)
    // made the fast path's next write fail, and the answer waiting on the socket was thrown
    // away: 502 for the client, and a failure counted against a healthy address.
    // And one that answers and then stops reading with the connection open: the write that
    // fills the socket buffers waits for the upstream's `timeout`, then the answer is read.
    const ANSWER: &[u8] =
        b"HTTP/1.1 413 Payload Too Large\r\nContent-Length: 4\r\nConnection: close\r\n\r\nBIG!";
    let closing = Raw::start(|s, _| {
        let _ = s.write_all(ANSWER);
        false
    });
    let holding = Raw::start(|s, _| {
        let _ = s.write_all(ANSWER);
        std::thread::sleep(Duration::from_secs(5));
        false
    });
    for (refusing, off) in [
        (&closing, false),
        (&closing, true),
        (&holding, false),
        (&holding, true),
    ] {
        let keys = format!(
            "addresses = [\"{}\"]\nmax-fails = 2\ntimeout = \"1s\"",
            refusing.addr()
        );
        let proxy = Proxy::start_with_env(
            &Config::new()
                .default("up")
                .upstream_keys("up", &keys)
                .build(),
            engine_env(off),
        );
        for i in 0..3 {
            let mut s = TcpStream::connect(("127.0.0.1", proxy.port)).unwrap();
            s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
            let mut w = s.try_clone().unwrap();
            // 8 MB, far more than the socket buffers hold: the upload is still going when the
            // upstream answers.
            let writer = std::thread::spawn(move || {
                let head = b"PUT /x HTTP/1.1\r\nHost: a\r\nContent-Length: 8388608\r\n\r\n";
                if w.write_all(head).is_err() {
                    return;
                }
                let piece = [b'a'; 65536];
                for _ in 0..128 {
                    if w.write_all(&piece).is_err() {
                        return;
                    }
                }
            });
            let mut answer = Vec::new();
            let mut buf = [0u8; 4096];
            while !answer.ends_with(b"BIG!") {
                match s.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => answer.extend_from_slice(&buf[..n]),
                }
            }
            let _ = s.shutdown(std::net::Shutdown::Both);
            writer.join().unwrap();
            assert_eq!(
                status_of(&answer),
                413,
                "fast path off: {off}, upload {i}: {}",
                String::from_utf8_lossy(&answer)
            );
        }
        assert_in_rotation(&proxy, &format!("fast path off: {off}"));
    }
}
