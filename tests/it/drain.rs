//! Draining under load: SIGTERM ends every kept-alive connection between requests, with a
//! response that says `Connection: close`, and accounts for the requests the grace period cuts.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;

use crate::support::*;

/// What one keep-alive client saw: requests answered, answers after SIGTERM without
/// `Connection: close`, and requests sent that never got an answer.
#[derive(Default, Debug)]
struct Seen {
    answered: usize,
    kept_alive_while_draining: usize,
    lost: usize,
    /// Of those, the first request on a fresh connection.
    lost_first: usize,
}

/// Sends requests back to back on one connection until the proxy closes it; a fresh
/// connection after each close until the drain starts (a connection that races the
/// listener's close is refused or reset by the kernel before strangle sees it: the
/// connection-level failure every server has, not a request lost by the drain).
fn keep_alive_client(port: u16, draining: Arc<AtomicBool>, confirmed: Arc<AtomicBool>) -> Seen {
    let mut seen = Seen::default();
    'connections: loop {
        if draining.load(Ordering::SeqCst) {
            return seen;
        }
        let Ok(stream) = TcpStream::connect(("127.0.0.1", port)) else {
            return seen;
        };
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        let mut reader = BufReader::new(stream);
        let mut first = true;
        loop {
            // Sent once the proxy said it is draining (`/ready` 503).
            let after_term = confirmed.load(Ordering::SeqCst);
            if reader
                .get_mut()
                .write_all(b"GET /bookings HTTP/1.1\r\nHost: a\r\n\r\n")
                .is_err()
            {
                // The close came before this request was written: not a lost request.
                continue 'connections;
            }
            let mut status = String::new();
            if reader.read_line(&mut status).unwrap_or(0) == 0 {
                seen.lost += 1;
                seen.lost_first += usize::from(first);
                continue 'connections;
            }
            let mut close = false;
            let mut length = 0usize;
            loop {
                let mut line = String::new();
                if reader.read_line(&mut line).unwrap_or(0) == 0 {
                    seen.lost += 1;
                    continue 'connections;
                }
                let l = line.trim_end().to_ascii_lowercase();
                if l.is_empty() {
                    break;
                }
                if l == "connection: close" {
                    close = true;
                }
                if let Some(v) = l.strip_prefix("content-length: ") {
                    length = v.parse().unwrap();
                }
            }
            let mut body = vec![0u8; length];
            if reader.read_exact(&mut body).is_err() {
                seen.lost += 1;
                seen.lost_first += usize::from(first);
                continue 'connections;
            }
            seen.answered += 1;
            first = false;
            if after_term && !close {
                seen.kept_alive_while_draining += 1;
            }
            if close {
                continue 'connections;
            }
        }
    }
}

#[test]
fn sigterm_under_keep_alive_load_answers_every_request_it_read() {
    let (legacy, new) = (Backend::start("legacy"), Backend::start("new"));
    let mut proxy = Proxy::start(&split_config(&legacy, &new, "0%", "none"));
    let port = proxy.port;
    let draining = Arc::new(AtomicBool::new(false));
    let confirmed = Arc::new(AtomicBool::new(false));
    let clients: Vec<_> = (0..8)
        .map(|_| {
            let (d, c) = (Arc::clone(&draining), Arc::clone(&confirmed));
            std::thread::spawn(move || keep_alive_client(port, d, c))
        })
        .collect();
    eventually(Duration::from_secs(30), "500 requests upstream", || {
        legacy.count() >= 500
    });
    draining.store(true, Ordering::SeqCst);
    proxy.signal(nix::sys::signal::Signal::SIGTERM);
    let admin = proxy.admin_port;
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(5) {
        match Client::try_connect(admin).and_then(|mut c| c.get("/ready", &[])) {
            Ok(r) if r.status == 503 => {
                confirmed.store(true, Ordering::SeqCst);
                break;
            }
            Ok(_) => std::thread::sleep(Duration::from_millis(5)),
            Err(_) => break,
        }
    }
    let seen: Vec<Seen> = clients.into_iter().map(|c| c.join().unwrap()).collect();
    let status = proxy.child.wait().unwrap();
    assert_eq!(status.code(), Some(0));
    let answered: usize = seen.iter().map(|s| s.answered).sum();
    assert!(answered >= 500, "{seen:?}");
    for s in &seen {
        assert_eq!(s.lost, 0, "requests sent and never answered: {seen:?}");
        assert_eq!(s.kept_alive_while_draining, 0, "{seen:?}");
    }
}

#[test]
fn a_request_cut_off_by_the_grace_period_is_logged_and_counted() {
    let (legacy, new) = (Backend::start("legacy"), Backend::start("new"));
    let text = split_config(&legacy, &new, "0%", "none")
        .replace("grace-period = \"5s\"", "grace-period = \"1s\"");
    let mut proxy = Proxy::start(&text);
    let port = proxy.port;
    let answered = Arc::new(AtomicUsize::new(0));
    let a = Arc::clone(&answered);
    std::thread::spawn(move || {
        if Client::connect(port)
            .get(
                "/bookings",
                &[("x-delay-ms", "10000"), ("x-request-id", "slow-one")],
            )
            .is_ok()
        {
            a.fetch_add(1, Ordering::SeqCst);
        }
    });
    eventually(Duration::from_secs(5), "the slow request upstream", || {
        legacy.count() > 0
    });
    let start = Instant::now();
    proxy.signal(nix::sys::signal::Signal::SIGTERM);
    let status = proxy.child.wait().unwrap();
    assert_eq!(status.code(), Some(0));
    // Not held by the request: out at the grace period (1 s), plus Pingora's second to end
    // what is left.
    assert!(
        start.elapsed() < Duration::from_secs(5),
        "{:?}",
        start.elapsed()
    );
    assert!(
        proxy
            .stderr()
            .contains("1 requests still in flight are cut off"),
        "{}",
        proxy.stderr()
    );
    let log = proxy.access_log();
    let line = log
        .iter()
        .find(|l| l["request_id"] == "slow-one")
        .unwrap_or_else(|| panic!("the cut-off request is not in the access log: {log:?}"));
    assert_eq!(line["route"], "bookings");
    assert_eq!(line["path"], "/bookings");
    assert_eq!(line["method"], "GET");
    assert!(
        line["error"].as_str().unwrap().contains("cut off"),
        "{line}"
    );
    assert_eq!(answered.load(Ordering::SeqCst), 0);
}

#[test]
fn sigint_stops_at_once_and_says_so() {
    let (legacy, new) = (Backend::start("legacy"), Backend::start("new"));
    let mut proxy = Proxy::start(&split_config(&legacy, &new, "0%", "none"));
    let port = proxy.port;
    std::thread::spawn(move || Client::connect(port).get("/bookings", &[("x-delay-ms", "10000")]));
    eventually(Duration::from_secs(5), "the slow request upstream", || {
        legacy.count() > 0
    });
    let start = Instant::now();
    proxy.signal(nix::sys::signal::Signal::SIGINT);
    let _ = proxy.child.wait().unwrap();
    assert!(
        start.elapsed() < Duration::from_secs(4),
        "{:?}",
        start.elapsed()
    );
    assert!(
        proxy.stderr().contains("SIGINT: stopping at once"),
        "{}",
        proxy.stderr()
    );
}

#[test]
fn sigquit_without_a_new_process_goes_on_serving() {
    let (legacy, new) = (Backend::start("legacy"), Backend::start("new"));
    let proxy = Proxy::start(&split_config(&legacy, &new, "0%", "none"));
    // Kept-alive requests keep their connection (the transport gets its own stream back).
    let mut c = proxy.client();
    for _ in 0..5 {
        assert_eq!(c.get("/bookings", &[]).unwrap().status, 200);
    }
    assert_eq!(proxy.metric("strangle_transport_lost_streams_total"), 0.0);
    // SIGQUIT asks to hand the sockets to a new process; none was started, so after waiting
    // for one the proxy says so and serves on (a failed upgrade must not stop it).
    proxy.signal(nix::sys::signal::Signal::SIGQUIT);
    let port = proxy.port;
    let during = std::thread::spawn(move || get(port, "/bookings", &[]));
    assert!(
        proxy.wait_for_log("going on serving", Duration::from_secs(15)),
        "{}",
        proxy.stderr()
    );
    assert_eq!(during.join().unwrap().status, 200);
    assert_eq!(c.get("/bookings", &[]).unwrap().status, 200);
    assert_eq!(get(proxy.port, "/bookings", &[]).status, 200);
    assert_eq!(proxy.admin("GET", "/ready", b"").status, 200);
}

/// A SIGTERM or SIGQUIT that comes the moment strangle says it serves, before its server loop
/// listens for signals, is acted on (a drain, or the hand-over attempt) when the loop starts,
/// never the default action that would end the process on the spot.
#[test]
fn a_signal_right_after_start_is_acted_on_not_fatal() {
    let legacy = Backend::start("legacy");
    let text = Config::new()
        .default("legacy")
        .upstream("legacy", &legacy.addr())
        .server("grace-period = \"2s\"")
        .build();
    for (signal, round) in [
        (Signal::SIGTERM, 0),
        (Signal::SIGTERM, 1),
        (Signal::SIGQUIT, 2),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("strangle.toml");
        std::fs::write(&config, Proxy::render(&text, free_port(), free_port())).unwrap();
        let stderr = dir.path().join("stderr.log");
        let mut child = std::process::Command::new(bin())
            .args(["serve", "-c"])
            .arg(&config)
            .env("AWS_EC2_METADATA_DISABLED", "true")
            .stdout(std::process::Stdio::null())
            .stderr(std::fs::File::create(&stderr).unwrap())
            .spawn()
            .unwrap();
        let pid = nix::unistd::Pid::from_raw(child.id() as i32);
        // Read without pause: the window is the few milliseconds the server takes to start
        // its loop.
        let started = Instant::now();
        while !std::fs::read_to_string(&stderr).is_ok_and(|t| t.contains("strangle serving")) {
            assert!(started.elapsed() < Duration::from_secs(15), "no start");
        }
        nix::sys::signal::kill(pid, signal).unwrap();
        if signal == Signal::SIGQUIT {
            // No new process to take the sockets: it goes on serving, then drains on SIGTERM.
            std::thread::sleep(Duration::from_millis(300));
            assert!(child.try_wait().unwrap().is_none(), "SIGQUIT ended it");
            nix::sys::signal::kill(pid, Signal::SIGTERM).unwrap();
        }
        let status = child.wait().unwrap();
        let log = std::fs::read_to_string(&stderr).unwrap();
        assert_eq!(status.code(), Some(0), "round {round}: {status}\n{log}");
    }
}
