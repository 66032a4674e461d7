//! `GET /status?series=RANGE`: per route and side, the points of recent intervals.

use std::collections::HashMap;

use serde_json::Value;

use crate::support::*;

/// Sums a side's points: (requests, 4xx, 5xx).
fn sums(points: &Value) -> (u64, u64, u64) {
    points
        .as_array()
        .unwrap()
        .iter()
        .fold((0, 0, 0), |(n, c4, c5), p| {
            (
                n + p["requests"].as_u64().unwrap(),
                c4 + p["4xx"].as_u64().unwrap(),
                c5 + p["5xx"].as_u64().unwrap(),
            )
        })
}

#[test]
fn the_series_count_every_request_by_side_at_the_resolution_the_range_needs() {
    let (legacy, new) = (Backend::start("legacy"), Backend::start("new"));
    let proxy = Proxy::start(&split_config(&legacy, &new, "50%", "none"));
    let mut c = proxy.client();
    let mut sent: HashMap<String, (u64, u64, u64)> = HashMap::new();
    for i in 0..40 {
        let status = if i % 8 == 0 {
            "503"
        } else if i % 5 == 0 {
            "404"
        } else {
            "200"
        };
        let r = c.get("/bookings/1", &[("x-status", status)]).unwrap();
        let side = r.header("x-backend").unwrap().to_string();
        let e = sent.entry(side).or_default();
        e.0 += 1;
        e.1 += u64::from(r.status / 100 == 4);
        e.2 += u64::from(r.status / 100 == 5);
    }
    assert_eq!(get(proxy.port, "/elsewhere", &[]).status, 200);
    let mut status = Value::Null;
    eventually(
        std::time::Duration::from_secs(5),
        "every request counted",
        || {
            status =
                serde_json::from_slice(&proxy.admin("GET", "/status?series=1h", b"").body).unwrap();
            let s = &status["series"]["routes"];
            let n = |side: &str| sums(&s["bookings"][side]).0;
            // The unmatched request too: it is counted just after its response is written.
            s["bookings"].is_object() && n("legacy") + n("new") == 40 && s["_default"].is_object()
        },
    );
    let series = &status["series"];
    assert_eq!(series["resolution_s"], 10);
    assert_eq!(
        series["to"].as_u64().unwrap() - series["from"].as_u64().unwrap(),
        3600
    );
    for side in ["legacy", "new"] {
        let got = sums(&series["routes"]["bookings"][side]);
        assert_eq!(Some(&got), sent.get(side).or(Some(&(0, 0, 0))), "{side}");
    }
    assert_eq!(sums(&series["routes"]["_default"]["legacy"]).0, 1);
    let p = &series["routes"]["bookings"]["legacy"][0];
    assert!(p["t"].as_u64().unwrap() >= series["from"].as_u64().unwrap());
    assert!(p["p99_ms"].as_f64().unwrap() >= p["p50_ms"].as_f64().unwrap());

    // A week's range comes at the five-minute resolution; none asked, none sent.
    let week: Value =
        serde_json::from_slice(&proxy.admin("GET", "/status?series=7d", b"").body).unwrap();
    assert_eq!(week["series"]["resolution_s"], 300);
    assert!(proxy.status().get("series").is_none());
}

#[test]
fn a_bad_series_range_is_a_400_that_says_what_is_accepted() {
    let backend = Backend::start("monolith");
    let proxy = Proxy::start(&monolith_config(&backend, ""));
    for (query, why) in [
        ("series=banana", "bad `series` range"),
        ("series=8d", "not between 1s and 7days"),
        ("series=0s", "not between"),
        ("series=500ms", "not between"),
        ("series=", "bad `series` range"),
        ("series=1h&series=2h", "given twice"),
        ("window=1h", "unknown parameter `window`"),
    ] {
        let r = proxy.admin("GET", &format!("/status?{query}"), b"");
        assert_eq!(r.status, 400, "{query}");
        assert!(r.text().contains(why), "{query}: {}", r.text());
    }
    let long = format!("/status?series={}", "9".repeat(5000));
    let r = proxy.admin("GET", &long, b"");
    assert_eq!(r.status, 400);
    assert!(
        r.text().len() < 1000,
        "the error does not echo the whole value"
    );
}

#[test]
fn the_burn_down_counts_todays_share_says_it_in_one_line_and_survives_a_restart() {
    let (legacy, new) = (Backend::start("legacy"), Backend::start("new"));
    let mut proxy = Proxy::start(&split_config(&legacy, &new, "50%", "none"));
    let mut on_new = 0;
    for _ in 0..40 {
        let r = get(proxy.port, "/bookings/1", &[]);
        on_new += u64::from(r.header("x-backend") == Some("new"));
    }
    get(proxy.port, "/other", &[]);
    let today = |status: &Value| -> (u64, f64) {
        let days = status["burn_down"]["days"].as_array().unwrap();
        let d = days.last().unwrap();
        (
            d["requests"].as_u64().unwrap(),
            d["new_share"].as_f64().unwrap(),
        )
    };
    let mut status = Value::Null;
    eventually(
        std::time::Duration::from_secs(5),
        "41 requests today",
        || {
            status = proxy.status();
            status["burn_down"]["days"].is_array() && today(&status).0 == 41
        },
    );
    let (n, share) = today(&status);
    assert!((share - on_new as f64 / n as f64).abs() < 1e-9, "{share}");
    assert_eq!(
        status["burn_down"]["before"],
        Value::Null,
        "no earlier day yet"
    );
    let out = proxy.cli(&["status"]);
    let printed = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        printed.contains("of requests no longer reach the monolith (")
            && printed.contains("no earlier day on record"),
        "{printed}"
    );

    // Saved at exit, read back at start, and added to.
    let restarted = proxy.restart();
    assert!(restarted.dir.path().join("strangle.burndown.json").exists());
    assert_eq!(today(&restarted.status()).0, 41);
    get(restarted.port, "/other", &[]);
    eventually(
        std::time::Duration::from_secs(5),
        "42 after the restart",
        || today(&restarted.status()).0 == 42,
    );
}
