//! Shadow traffic against real upstreams: a deliberately wrong new side, noise configured and
//! calibrated, writes never copied by default, the copy's path and headers as the pipeline
//! makes them, a Lambda function as the other side.

use std::time::Duration;

use serde_json::{json, Value};

use crate::support::*;

/// A flight as the monolith answers it: `served_at` and `requestId` differ on every answer.
fn flight(seen: &Seen, n: usize, price: u32) -> (u16, &'static str, String) {
    let id: u32 = seen
        .target
        .trim_start_matches("/flights/")
        .split(['?', '/'])
        .next()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = json!({
        "flight": id,
        "seats": [{"no": "1A", "free": true}, {"no": "1B", "free": id % 2 == 0}],
        "price": price,
        "served_at": format!("10:00:{n:02}"),
        "requestId": format!("req-{n}-{}", seen.target.len()),
    });
    (200, "application/json", body.to_string())
}

fn config(legacy: &Backend, new: &Backend, shift: &str, shadow: &str) -> String {
    Config::new()
        .default("legacy")
        .upstream("legacy", &legacy.addr())
        .upstream("new", &new.addr())
        .route("flights", "/flights", |r| {
            r.legacy("legacy")
                .new("new")
                .shift(shift)
                .toml("shadow", shadow)
        })
        .build()
}

fn shadow_status(proxy: &Proxy) -> Value {
    proxy.status()["routes"][0]["shadow"].clone()
}

/// Waits until `n` copies of the route were compared or failed.
fn settled(proxy: &Proxy, n: u64) -> Value {
    wait_for(Duration::from_secs(15), "the copies compared", || {
        let s = shadow_status(proxy);
        let done = s["matched"].as_u64()? + s["mismatched"].as_u64()? + s["errors"].as_u64()?;
        (done >= n).then_some(s)
    })
}

#[test]
fn a_wrong_new_side_is_found_at_the_exact_json_path_and_noise_is_left_out() {
    let legacy = Backend::answering("legacy", |seen, n| flight(seen, n, 100));
    // The new side prices flight 7 wrong.
    let new = Backend::answering("new", |seen, n| {
        let wrong = seen.target.starts_with("/flights/7");
        flight(seen, n, if wrong { 125 } else { 100 })
    });
    let shadow = r#"{ percent = "100%", ignore = ["$.requestId"], calibrate = true }"#;
    let proxy = Proxy::start(&config(&legacy, &new, "0%", shadow));
    let mut c = proxy.client();
    let spoof = [("x-strangle-shadow", "0"), ("x-strangle-side", "new")];
    for i in 1..=12 {
        let r = c.get(&format!("/flights/{i}"), &spoof).unwrap();
        // The client is answered by the side the split chose, at once.
        assert_eq!(r.header("x-backend"), Some("legacy"));
    }
    // A spelling the pipeline canonicalises: the copy gets the canonical path too.
    let r = c.get("/flights//7/../7", &[]).unwrap();
    assert_eq!(r.status, 200);
    let s = settled(&proxy, 13);
    assert_eq!(s["shadowed"], 13, "{s}");
    assert_eq!(s["mismatched"], 2, "flight 7, twice: {s}");
    assert_eq!(s["matched"], 11, "{s}");
    assert_eq!(
        (s["dropped"].as_u64(), s["errors"].as_u64()),
        (Some(0), Some(0))
    );
    // Calibration asked the monolith twice and learned what differs between its own answers.
    let learned: Vec<&str> = s["learned"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert!(learned.contains(&"$.served_at"), "{s}");
    assert!(s["calibrated"].as_u64().unwrap() >= 1);

    // The samples name the path, the values, and nothing of the noise.
    let diffs = proxy.admin("GET", "/routes/flights/diffs", b"");
    assert_eq!(diffs.status, 200, "{}", diffs.text());
    let diffs: Value = serde_json::from_str(&diffs.text()).unwrap();
    let samples = diffs["samples"].as_array().unwrap();
    assert_eq!(samples.len(), 2);
    for sample in samples {
        assert_eq!(sample["path"], "/flights/7");
        assert_eq!(sample["answered_by"], "legacy");
        assert_eq!(sample["body"], "json");
        assert_eq!(
            sample["differences"],
            json!([{"path": "$.price", "legacy": "100", "new": "125"}]),
            "{sample}"
        );
    }
    // The copies went through the same pipeline: the canonical path, strangle's own shadow
    // mark (the client's `x-strangle-*` removed), the forwarding headers built by strangle.
    let copies: Vec<Seen> = new.seen();
    assert_eq!(copies.len(), 13);
    assert!(copies
        .iter()
        .all(|s| s.header("x-strangle-shadow") == Some("1")));
    assert!(copies.iter().all(|s| s.header("x-strangle-side").is_none()));
    assert!(copies
        .iter()
        .all(|s| s.header("x-forwarded-for") == Some("127.0.0.1")));
    assert_eq!(
        copies.iter().filter(|s| s.target == "/flights/7").count(),
        2
    );
    assert!(legacy
        .seen()
        .iter()
        .all(|s| s.header("x-strangle-shadow").is_none()
            || s.header("x-strangle-shadow") == Some("1")));

    // Each copy has its access-log line, marked with how it compared, beside the client's.
    let copy_lines = || -> Vec<Value> {
        proxy
            .access_log()
            .into_iter()
            .filter(|l| l.get("shadow").is_some())
            .collect()
    };
    eventually(Duration::from_secs(5), "13 shadow lines", || {
        copy_lines().len() == 13
    });
    let lines = copy_lines();
    assert!(lines
        .iter()
        .all(|l| l["side"] == "new" && l["upstream"] == "new" && l["route"] == "flights"));
    assert_eq!(
        lines.iter().filter(|l| l["shadow"] == "mismatched").count(),
        2
    );
    assert!(lines
        .iter()
        .filter(|l| l["shadow"] == "mismatched")
        .all(|l| l["path"] == "/flights/7"));
    let client_lines = proxy.access_log().len() - 13;
    assert_eq!(client_lines, 13, "the clients' own lines are unchanged");

    // A write is never copied by default.
    let r = c.request("POST", "/flights/3", &[], b"{}").unwrap();
    assert_eq!(r.status, 200);
    std::thread::sleep(Duration::from_millis(300));
    assert!(new.seen().iter().all(|s| s.method == "GET"));
    assert_eq!(shadow_status(&proxy)["shadowed"], 13);

    // Metrics and the CLI say the same.
    let metrics = proxy.admin("GET", "/metrics", b"").text();
    assert!(
        metrics
            .contains("strangle_shadow_requests_total{route=\"flights\",outcome=\"mismatched\"} 2"),
        "{metrics}"
    );
    assert!(metrics
        .contains("strangle_shadow_requests_total{route=\"flights\",outcome=\"matched\"} 11"));
    let out = proxy.cli(&["diffs", "/flights"]);
    let text = stdout_of(&out);
    assert!(out.status.success(), "{}", stderr_of(&out));
    assert!(text.contains("2 mismatched"), "{text}");
    assert!(text.contains("$.price: legacy 100  new 125"), "{text}");
}

#[test]
fn without_calibration_the_noise_mismatches_and_ignore_paths_take_it_out() {
    let legacy = Backend::answering("legacy", |seen, n| flight(seen, n, 100));
    let new = Backend::answering("new", |seen, n| flight(seen, n + 1000, 100));
    let proxy = Proxy::start(&config(&legacy, &new, "0%", "{}"));
    let mut c = proxy.client();
    for i in 1..=3 {
        c.get(&format!("/flights/{i}"), &[]).unwrap();
    }
    let s = settled(&proxy, 3);
    assert_eq!(s["mismatched"], 3, "{s}");
    let diffs: Value =
        serde_json::from_str(&proxy.admin("GET", "/routes/flights/diffs", b"").text()).unwrap();
    let mut paths: Vec<&str> = diffs["samples"][0]["differences"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["path"].as_str().unwrap())
        .collect();
    paths.sort();
    assert_eq!(paths, ["$.requestId", "$.served_at"]);
    // Configured away: a reload keeps the counts (by route id) and the next copies match.
    let ignoring = r#"{ ignore = ["$.served_at", "$.requestId"] }"#;
    proxy.rewrite(&config(&legacy, &new, "0%", ignoring));
    assert_eq!(proxy.admin("POST", "/reload", b"").status, 200);
    for i in 1..=3 {
        c.get(&format!("/flights/{i}"), &[]).unwrap();
    }
    let s = settled(&proxy, 6);
    assert_eq!(
        (s["matched"].as_u64(), s["mismatched"].as_u64()),
        (Some(3), Some(3))
    );
    // Unknown routes and routes that do not shadow say so.
    let r = proxy.admin("GET", "/routes/nope/diffs", b"");
    assert_eq!(r.status, 404);
    assert!(r.text().contains("known routes: flights"));
}

/// Linux's `SCHED_IDLE` policy, as `/proc/PID/task/TID/stat` shows it.
const SCHED_IDLE: u32 = 5;

/// The process's `strangle-shadow` threads and their scheduling policies.
fn shadow_workers(pid: u32) -> Vec<(String, u32)> {
    let mut found = Vec::new();
    for task in std::fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap()
        .flatten()
    {
        let stat = std::fs::read_to_string(task.path().join("stat")).unwrap_or_default();
        // `TID (COMM) STATE ...`: COMM may hold spaces; the fields after it are numbered from
        // 3 (state), and the policy is field 41.
        let (Some(open), Some(close)) = (stat.find('('), stat.rfind(')')) else {
            continue;
        };
        if &stat[open + 1..close] != "strangle-shadow" {
            continue;
        }
        let policy = stat[close + 2..]
            .split(' ')
            .nth(41 - 3)
            .and_then(|p| p.parse().ok())
            .unwrap();
        found.push((task.file_name().to_string_lossy().into_owned(), policy));
    }
    found
}

#[test]
fn when_the_new_side_answers_the_copy_goes_to_the_monolith() {
    let legacy = Backend::answering("legacy", |seen, _| flight(seen, 0, 100));
    let new = Backend::answering("new", |seen, _| flight(seen, 0, 100));
    let proxy = Proxy::start(&config(&legacy, &new, "100%", "{}"));
    let mut c = proxy.client();
    for i in 1..=4 {
        let r = c.get(&format!("/flights/{i}"), &[]).unwrap();
        assert_eq!(r.header("x-backend"), Some("new"));
    }
    let s = settled(&proxy, 4);
    assert_eq!(s["matched"], 4, "{s}");
    // The copies were sent from the worker's own thread, which gets the CPU only when the
    // requests leave it idle.
    let workers = shadow_workers(proxy.child.id());
    assert!(!workers.is_empty(), "no strangle-shadow thread");
    assert!(
        workers.iter().all(|&(_, policy)| policy == SCHED_IDLE),
        "{workers:?}"
    );
    let copies = legacy.seen();
    assert_eq!(copies.len(), 4);
    assert!(copies
        .iter()
        .all(|s| s.header("x-strangle-shadow") == Some("1")));
    // A copy that cannot be sent (the monolith is gone) is an error, never the client's.
    legacy.stop();
    let r = c.get("/flights/9", &[]).unwrap();
    assert_eq!(r.header("x-backend"), Some("new"));
    let s = settled(&proxy, 5);
    assert_eq!(s["errors"], 1, "{s}");
}

#[test]
fn a_lambda_function_is_shadowed_through_the_same_event_and_signing() {
    let watch = crate::lambda::LambdaWatch::start();
    let legacy = Backend::answering("monolith", |seen, _| {
        let booking = seen.target.trim_start_matches("/bookings/").to_string();
        let body = if booking == "echo" {
            // The function's echo as it would read if the client's headers reached it.
            json!({"method": "GET", "path": "/bookings/echo", "query": {}, "body": "",
                   "headers": {"x-strangle-shadow": "spoof", "x-forwarded-for": "6.6.6.6"}})
        } else {
            json!({"served_by": "monolith", "method": seen.method, "booking": booking})
        };
        (200, "application/json", body.to_string())
    });
    let text = Config::new()
        .default("monolith")
        .upstream("monolith", &legacy.addr())
        .lambda("bookings-fn", watch.port)
        .route("bookings", "/bookings", |r| {
            r.legacy("monolith")
                .new("bookings-fn")
                .shift("0%")
                .toml("shadow", r#"{ ignore = ["$.served_by"] }"#)
        })
        .build();
    let proxy = Proxy::start_with_env(&text, &crate::invoke::lambda_env());
    let mut c = proxy.client();
    for i in 1..=3 {
        let r = c.get(&format!("/bookings/{i}"), &[]).unwrap();
        assert_eq!(r.header("x-backend"), Some("monolith"));
    }
    let s = wait_for(Duration::from_secs(30), "the copies compared", || {
        let s = proxy.status()["routes"][0]["shadow"].clone();
        (s["matched"].as_u64()? + s["mismatched"].as_u64()? + s["errors"].as_u64()? >= 3)
            .then_some(s)
    });
    assert_eq!(
        s["matched"], 3,
        "the function answers as the monolith, less served_by: {s}"
    );
    // The copy's Lambda event carries the headers strangle vouches for, never the client's:
    // the function's echo names them, against what the client tried to send.
    let spoof = [
        ("x-strangle-shadow", "spoof"),
        ("x-forwarded-for", "6.6.6.6"),
    ];
    c.get("/bookings/echo", &spoof).unwrap();
    let sample = wait_for(Duration::from_secs(30), "the echo's sample", || {
        let d: Value =
            serde_json::from_str(&proxy.admin("GET", "/routes/bookings/diffs", b"").text()).ok()?;
        d["samples"].as_array()?.first().cloned()
    });
    let new_value = |path: &str| {
        sample["differences"]
            .as_array()
            .unwrap()
            .iter()
            .find(|d| d["path"] == path)
            .map(|d| d["new"].as_str().unwrap().to_string())
    };
    let shadow_mark = new_value("$.headers.x-strangle-shadow");
    assert_eq!(shadow_mark.as_deref(), Some("\"1\""), "{sample}");
    let forwarded = new_value("$.headers.x-forwarded-for");
    assert_eq!(forwarded.as_deref(), Some("\"127.0.0.1\""), "{sample}");
}

/// A route `orders` on `legacy` (at `legacy`) with the new side's upstream keys, shift 0%, and
/// `shadow` keys.
fn orders(legacy: &str, new_keys: &str, shadow: impl FnOnce(Route) -> Route) -> String {
    Config::new()
        .default("legacy")
        .upstream("legacy", legacy)
        .upstream_keys("new", new_keys)
        .route("orders", "/orders", |r| {
            shadow(r.legacy("legacy").new("new").shift("0%"))
        })
        .build()
}

/// A monolith that answers a request from its head alone, without reading its body, and
/// closes the connection.
fn early_answering_monolith() -> u16 {
    use std::io::{Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for mut stream in listener.incoming().flatten() {
            let mut head = Vec::new();
            let mut byte = [0u8; 1];
            while !head.ends_with(b"\r\n\r\n") && stream.read(&mut byte).unwrap_or(0) == 1 {
                head.push(byte[0]);
            }
            let answer = "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 2\r\nconnection: close\r\n\r\n{}";
            let _ = stream.write_all(answer.as_bytes());
        }
    });
    port
}

#[test]
fn a_write_is_copied_only_whole() {
    let monolith = early_answering_monolith();
    let new = Backend::answering("new", |_, _| (200, "application/json", "{}".into()));
    let text = orders(
        &format!("127.0.0.1:{monolith}"),
        &format!("addresses = [\"{}\"]", new.addr()),
        |r| {
            r.toml("shadow", r#"{ methods = ["GET", "POST"] }"#)
                .toml("shadow-writes", "true")
        },
    );
    let proxy = Proxy::start(&text);
    // The monolith answers before the 2 MB upload is through: the client gets that answer,
    // and no copy is made of the part of the body that had passed.
    let body = vec![b'x'; 2 << 20];
    let mut c = proxy.client();
    let head = format!(
        "POST /orders/1 HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    let mut bytes = head.into_bytes();
    bytes.extend_from_slice(&body);
    let r = c.send_early_answered(&bytes).unwrap();
    assert_eq!(r.status, 200);
    let s = wait_for(Duration::from_secs(10), "the copy counted", || {
        let s = proxy.status()["routes"][0]["shadow"].clone();
        (s["dropped"].as_u64()? >= 1).then_some(s)
    });
    assert_eq!(s["shadowed"], 0, "{s}");
    assert!(new.seen().iter().all(|s| s.method != "POST"));
    // A whole small write is copied, body and all.
    let r = proxy
        .client()
        .request("POST", "/orders/2", &[], br#"{"n": 2}"#)
        .unwrap();
    assert_eq!(r.status, 200);
    eventually(Duration::from_secs(10), "the write copied", || {
        new.seen()
            .iter()
            .any(|s| s.method == "POST" && s.body == br#"{"n": 2}"#)
    });
}

#[test]
fn copies_take_at_most_half_of_the_upstreams_max_in_flight_slots_and_never_wait_for_one() {
    let legacy = Backend::start("legacy");
    let new = Backend::start("new");
    let text = orders(
        &legacy.addr(),
        &format!("addresses = [\"{}\"]\nmax-in-flight = 4", new.addr()),
        |r| r.toml("shadow", "{}"),
    );
    let proxy = Proxy::start(&text);
    // Six requests at once, each answered by the monolith after 300 ms; their copies reach the
    // new side together, and it is slow too.
    let port = proxy.port;
    let clients: Vec<_> = (0..6)
        .map(|i| {
            std::thread::spawn(move || {
                let r = get(port, &format!("/orders/{i}"), &[("x-delay-ms", "300")]);
                assert_eq!(r.status, 200);
            })
        })
        .collect();
    for c in clients {
        c.join().unwrap();
    }
    // Copies refused a slot are not sent, and counted as dropped (not as failed).
    let s = wait_for(
        Duration::from_secs(15),
        "every copy sent or dropped",
        || {
            let s = shadow_status(&proxy);
            let compared = s["matched"].as_u64()? + s["mismatched"].as_u64()?;
            (compared + s["errors"].as_u64()? + s["dropped"].as_u64()? >= 6).then_some(s)
        },
    );
    assert!(s["dropped"].as_u64().unwrap() >= 1, "{s}");
    assert_eq!(s["errors"], 0, "{s}");
    assert_eq!(
        s["shadowed"].as_u64().unwrap(),
        s["matched"].as_u64().unwrap() + s["mismatched"].as_u64().unwrap(),
        "shadowed counts the copies sent: {s}"
    );
    // The worker runs on the CPU the requests leave idle and may hold its slots while the
    // requests keep it off the CPU: half of them stay the requests'.
    assert_eq!(
        new.max_concurrent.load(std::sync::atomic::Ordering::SeqCst),
        2,
        "never more copies at once than half of max-in-flight"
    );

    // With one slot, copies never take it: a request would wait for a copy's.
    let lone = Backend::start("lone");
    let text = orders(
        &legacy.addr(),
        &format!("addresses = [\"{}\"]\nmax-in-flight = 1", lone.addr()),
        |r| r.toml("shadow", "{}"),
    );
    let proxy = Proxy::start(&text);
    for i in 0..2 {
        assert_eq!(get(proxy.port, &format!("/orders/{i}"), &[]).status, 200);
    }
    let s = wait_for(Duration::from_secs(15), "both copies dropped", || {
        let s = shadow_status(&proxy);
        (s["dropped"].as_u64()? >= 2).then_some(s)
    });
    assert_eq!(s["shadowed"], 0, "{s}");
    assert!(lone.seen().is_empty());
}
