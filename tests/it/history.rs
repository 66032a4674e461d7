//! The history: shifts and reloads with how they came, `GET /history`, `strangle history`,
//! kept next to the config across restarts.

use std::time::Duration;

use serde_json::Value;

use crate::support::*;

fn history(proxy: &Proxy, query: &str) -> Vec<Value> {
    let r = proxy.admin("GET", &format!("/history{query}"), b"");
    assert_eq!(r.status, 200, "{}", r.text());
    let v: Value = serde_json::from_slice(&r.body).unwrap();
    v["entries"].as_array().unwrap().clone()
}

/// The (kind, route, from, to, how, ok) of each entry, to compare in one line.
fn brief(entries: &[Value]) -> Vec<String> {
    entries
        .iter()
        .map(|e| {
            let s = |k: &str| e[k].as_str().map(str::to_string).unwrap_or_default();
            match e["kind"].as_str() {
                Some("shift") => format!(
                    "shift {} {}->{} {}",
                    s("route"),
                    s("from"),
                    s("to"),
                    s("how")
                ),
                _ => format!("reload {} {}", e["ok"], s("how")),
            }
        })
        .collect()
}

#[test]
fn every_shift_and_reload_is_recorded_with_how_it_came_and_survives_a_restart() {
    let (legacy, new) = (Backend::start("legacy"), Backend::start("new"));
    let text = |shift: &str| split_config(&legacy, &new, shift, "header:x-user");
    let mut proxy = Proxy::start(&text("10%"));
    assert_eq!(brief(&history(&proxy, "")), ["shift bookings ->10% start"]);

    // The CLI, a plain admin call, a file edit, a broken edit.
    let out = proxy.cli(&["shift", "/bookings", "25%"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let r = Client::connect(proxy.admin_port)
        .request(
            "PUT",
            "/routes/bookings/shift",
            &[("content-type", "application/json")],
            br#"{"percent": "30%"}"#,
        )
        .unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    proxy.rewrite(&text("50%"));
    eventually(Duration::from_secs(5), "the file edit", || {
        brief(&history(&proxy, ""))
            .iter()
            .any(|e| e == "shift bookings 30%->50% file")
    });
    proxy.rewrite("this is not toml = = =");
    eventually(Duration::from_secs(5), "the refused reload", || {
        history(&proxy, "").iter().any(|e| e["ok"] == false)
    });
    let all = history(&proxy, "");
    let shifts: Vec<String> = brief(&all)
        .into_iter()
        .filter(|e| e.starts_with("shift"))
        .collect();
    assert_eq!(
        shifts,
        [
            "shift bookings ->10% start",
            "shift bookings 10%->25% cli",
            "shift bookings 25%->30% admin",
            "shift bookings 30%->50% file",
        ]
    );
    let cli = all.iter().find(|e| e["how"] == "cli").unwrap();
    assert!(cli["client"].as_str().unwrap().starts_with("127.0.0.1:"));
    assert!(all
        .iter()
        .any(|e| e["kind"] == "reload" && e["ok"] == true && e["how"] == "cli"));
    let refused = all.iter().rev().find(|e| e["kind"] == "reload").unwrap();
    assert_eq!(
        (refused["ok"].clone(), refused["how"].clone()),
        (Value::Bool(false), "file".into())
    );
    assert!(
        refused["error"].as_str().unwrap().contains("strangle.toml"),
        "{refused}"
    );
    // Newest last, limited, by route.
    assert_eq!(history(&proxy, "?limit=2"), all[all.len() - 2..]);
    assert!(history(&proxy, "?route=nope")
        .iter()
        .all(|e| e["kind"] == "reload"));

    // The CLI prints it.
    let out = proxy.cli(&["history", "/bookings"]);
    let printed = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        printed.contains("shift  bookings: 25% -> 30%  (admin API from 127.0.0.1:"),
        "{printed}"
    );
    assert!(
        printed.contains("shift  bookings: 30% -> 50%  (file edit)"),
        "{printed}"
    );
    assert!(printed.contains("reload refused: "), "{printed}");

    // Kept next to the config: a restart keeps it, and a shift made while the proxy was down
    // is recorded as found at start.
    let file = proxy.dir.path().join("strangle.history.jsonl");
    assert!(file.exists());
    proxy.signal(nix::sys::signal::Signal::SIGTERM);
    proxy.child.wait().unwrap();
    std::fs::write(
        &proxy.config,
        Proxy::render(&text("50%"), proxy.port, proxy.admin_port),
    )
    .unwrap();
    let out = std::process::Command::new(bin())
        .args(["shift", "--file"])
        .arg(&proxy.config)
        .args(["bookings", "60%"])
        .output()
        .unwrap();
    assert!(out.status.success());
    let restarted = Proxy::start_at(
        std::mem::replace(&mut proxy.dir, tempfile::tempdir().unwrap()),
        proxy.config.clone(),
        proxy.port,
        proxy.admin_port,
    );
    let after = history(&restarted, "?limit=1000");
    assert_eq!(after[..all.len()], all[..]);
    assert_eq!(
        brief(&after[all.len()..]),
        ["shift bookings 50%->60% start"]
    );
}

#[test]
fn bad_history_queries_are_400s() {
    let backend = Backend::start("monolith");
    let proxy = Proxy::start(&monolith_config(&backend, ""));
    for (query, why) in [
        ("?limit=0", "`limit` is a number from 1 to 1000"),
        ("?limit=1001", "`limit`"),
        ("?limit=x", "`limit`"),
        ("?since=1", "unknown parameter `since`"),
    ] {
        let r = proxy.admin("GET", &format!("/history{query}"), b"");
        assert_eq!(r.status, 400, "{query}");
        assert!(r.text().contains(why), "{query}: {}", r.text());
    }
    assert_eq!(proxy.admin("DELETE", "/history", b"").status, 405);
}
