//! Capture and replay: what the new side fails (a 5xx, no answer) and what a shadow copy
//! finds different are kept in a spool of JSON lines, redacted; `strangle replay` sends them
//! again to either side through the proxy, and a record edited to reach somewhere else is
//! refused.

use std::path::PathBuf;

use serde_json::{json, Value};

use crate::support::*;

const TOKEN: &str = "capture-admin-token";

fn spool(proxy: &Proxy) -> PathBuf {
    proxy.dir.path().join("spool").join("capture.jsonl")
}

/// The spool's records once it has `n`.
fn records(proxy: &Proxy, n: usize) -> Vec<Value> {
    wait_for(std::time::Duration::from_secs(5), "the records", || {
        let text = std::fs::read_to_string(spool(proxy)).ok()?;
        let records: Vec<Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        (records.len() >= n).then_some(records)
    })
}

fn replay(proxy: &Proxy, args: &[&str]) -> (bool, String, String) {
    let file = spool(proxy);
    let mut all = vec!["replay", file.to_str().unwrap(), "--token", TOKEN];
    all.extend_from_slice(args);
    let out = proxy.cli(&all);
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn what_the_new_side_fails_is_kept_redacted_and_replays_to_either_side() {
    let legacy = Backend::start("legacy");
    // The new side fails `/orders/fail*` with a 503 whose body names a token.
    let new = Backend::answering("new", |seen, _| {
        if seen.target.starts_with("/orders/fail") {
            (
                503,
                "application/json",
                json!({"error": "db down", "token": "t0p"}).to_string(),
            )
        } else {
            (200, "application/json", "{}".into())
        }
    });
    let dead = free_port();
    let text = Config::new()
        .upstream("legacy", &legacy.addr())
        .upstream("new", &new.addr())
        .upstream("gone", &format!("127.0.0.1:{dead}"))
        .route("orders", "/orders", |r| {
            r.legacy("legacy").new("new").shift("100%").toml(
                "capture",
                r#"{ on = ["new-5xx", "new-error"], dir = "spool", max-size = "10MB" }"#,
            )
        })
        .route("carts", "/carts", |r| {
            r.legacy("legacy")
                .new("gone")
                .shift("100%")
                .toml("fallback", "true")
                .toml("capture", r#"{ on = ["new-error"], dir = "spool" }"#)
        })
        .route("other", "/other", |r| r.legacy("legacy"))
        .section(
            "[admin]",
            &format!("listen = \"{{admin}}\"\ntoken = \"{TOKEN}\""),
        )
        .build();
    let proxy = Proxy::start(&text);
    let mut c = proxy.client();
    assert_eq!(c.get("/orders/ok", &[]).unwrap().status, 200);
    assert_eq!(c.get("/orders/fail/1?x=1", &[]).unwrap().status, 503);
    let put = c
        .request(
            "PUT",
            "/orders/fail/2",
            &[
                ("authorization", "Bearer secret-jwt"),
                ("content-type", "application/json"),
                ("x-strangle-shadow", "1"),
            ],
            br#"{"seat":"1A","password":"hunter2"}"#,
        )
        .unwrap();
    assert_eq!(put.status, 503);
    // Connect refused on the new side: legacy answers, and the failure is kept.
    let r = c.get("/carts/3", &[]).unwrap();
    assert_eq!((r.status, r.header("x-backend")), (200, Some("legacy")));
    let kept = records(&proxy, 3);
    assert_eq!(kept.len(), 3, "a 200 is not kept: {kept:#?}");
    let get = &kept[0];
    assert_eq!(get["event"], "new-5xx");
    assert_eq!(get["route"], "orders");
    assert_eq!(get["request"]["path"], "/orders/fail/1");
    assert_eq!(get["request"]["query"], "?x=1");
    assert_eq!(get["response"]["status"], 503);
    assert_eq!(
        get["response"]["body"]["text"],
        r#"{"error":"db down","token":"[redacted]"}"#
    );
    let put = &kept[1];
    assert_eq!(
        put["request"]["body"]["text"],
        r#"{"password":"[redacted]","seat":"1A"}"#
    );
    let headers: Vec<(String, String)> =
        serde_json::from_value(put["request"]["headers"].clone()).unwrap();
    let header = |name: &str| {
        headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    };
    assert_eq!(header("authorization"), Some("[redacted]"));
    // As the upstream got them: the client's own strangle header never appears.
    assert_eq!(header("x-strangle-shadow"), None);
    assert_eq!(header("x-forwarded-for"), Some("127.0.0.1"));
    let carts = &kept[2];
    assert_eq!(
        (carts["event"].as_str(), carts["fallback"].as_str()),
        (Some("new-error"), Some("connect-error"))
    );
    let text = std::fs::read_to_string(spool(&proxy)).unwrap();
    assert!(!text.contains("hunter2") && !text.contains("secret-jwt") && !text.contains("t0p"));

    // Replayed to legacy: every request arrives as kept, marked, at the given rate.
    let before = legacy.count();
    let (ok, out, err) = replay(
        &proxy,
        &[
            "--to",
            "legacy",
            "--rate",
            "50",
            "--header",
            "authorization: Bearer fresh",
        ],
    );
    assert!(ok, "{out}\n{err}");
    assert!(
        out.contains("GET /orders/fail/1?x=1  -> legacy: 200  (was new-5xx: 503)"),
        "{out}"
    );
    assert!(out.contains("3 replayed to legacy, 0 failed"), "{out}");
    let seen = legacy.seen();
    let replayed = &seen[before..];
    assert_eq!(replayed.len(), 3);
    assert_eq!(replayed[0].target, "/orders/fail/1?x=1");
    assert_eq!(replayed[1].method, "PUT");
    assert_eq!(
        replayed[1].body,
        br#"{"password":"[redacted]","seat":"1A"}"#
    );
    assert_eq!(replayed[1].header("authorization"), Some("Bearer fresh"));
    assert!(replayed
        .iter()
        .all(|s| s.header("x-strangle-replay") == Some("1")));
    // Replayed to the new side, they fail again: said, and the command fails.
    let (ok, out, _) = replay(&proxy, &["--to", "new"]);
    assert!(!ok);
    assert!(out.contains("-> new: 503"), "{out}");
    assert!(out.contains("/carts/3  -> new: failed: connect"), "{out}");
}

#[test]
fn an_edited_record_cannot_reach_another_route_or_side_or_skip_the_token() {
    let legacy = Backend::start("legacy");
    let new = Backend::answering("new", |_, _| (500, "text/plain", "no".into()));
    let text = Config::new()
        .upstream("legacy", &legacy.addr())
        .upstream("new", &new.addr())
        .route("orders", "/orders", |r| {
            r.legacy("legacy")
                .new("new")
                .shift("100%")
                .toml("capture", r#"{ on = ["new-5xx"], dir = "spool" }"#)
        })
        .route("admin", "/admin", |r| r.legacy("legacy"))
        .section(
            "[admin]",
            &format!("listen = \"{{admin}}\"\ntoken = \"{TOKEN}\""),
        )
        .build();
    let proxy = Proxy::start(&text);
    assert_eq!(get(proxy.port, "/orders/1", &[]).status, 500);
    let record = records(&proxy, 1).remove(0);
    let send = |record: &Value, token: Option<&str>| {
        let auth = token.map(|t| format!("Bearer {t}"));
        let headers: Vec<(&str, &str)> =
            auth.iter().map(|a| ("authorization", a.as_str())).collect();
        Client::connect(proxy.admin_port)
            .request(
                "POST",
                "/routes/orders/replay?to=legacy",
                &headers,
                record.to_string().as_bytes(),
            )
            .unwrap()
    };
    assert_eq!(send(&record, None).status, 401);
    assert_eq!(send(&record, Some("wrong")).status, 401);
    let before = legacy.count();
    let edited = |path: &str| {
        let mut r = record.clone();
        r["request"]["path"] = json!(path);
        r
    };
    for (path, why) in [
        ("/admin/users", "is not routed to `orders`"),
        ("/orders/../admin/users", "not in its canonical form"),
        ("/orders/%2e%2e/admin", "not in its canonical form"),
        ("orders", "the path is refused"),
    ] {
        let r = send(&edited(path), Some(TOKEN));
        assert_eq!(r.status, 422, "{path}: {}", r.text());
        assert!(r.text().contains(why), "{path}: {}", r.text());
    }
    for query in [
        "?a=1\r\nx-injected: 1",
        "?a=1 HTTP/1.1",
        "?a#b",
        "a=1",
        "?\u{7f}",
    ] {
        let mut bad = record.clone();
        bad["request"]["query"] = json!(query);
        let r = send(&bad, Some(TOKEN));
        assert_eq!(r.status, 422, "{query:?}: {}", r.text());
        assert!(r.text().contains("the query is malformed"), "{}", r.text());
    }
    let mut cut = record.clone();
    cut["request"]["body"]["truncated"] = json!(true);
    assert!(send(&cut, Some(TOKEN)).text().contains("kept cut"));
    let mut spoofed = record.clone();
    spoofed["request"]["headers"] = json!([
        ["host", "shop.test"],
        ["x-strangle-side", "new"],
        ["connection", "x-keep"],
        ["x-keep", "1"],
        ["x-ok", "1"],
        ["x-forwarded-for", "6.6.6.6"],
        ["x-forwarded-host", "evil.test"],
        ["forwarded", "for=6.6.6.6"],
        ["x-real-ip", "6.6.6.6"],
        ["true-client-ip", "6.6.6.6"],
        ["cf-connecting-ip", "6.6.6.6"],
        ["x-http-method-override", "DELETE"],
        ["x-original-url", "/admin"]
    ]);
    let r = send(&spoofed, Some(TOKEN));
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(legacy.count(), before + 1);
    let seen = legacy.seen().pop().unwrap();
    assert_eq!(seen.header("x-ok"), Some("1"));
    assert_eq!(seen.header("x-strangle-side"), None);
    assert_eq!(seen.header("x-keep"), None, "hop-by-hop by `Connection`");
    assert_eq!(seen.header("host"), Some("shop.test"));
    // The record's own forwarding headers never pass: the policy's are the record's host.
    assert_eq!(seen.header("x-forwarded-host"), Some("shop.test"));
    for name in [
        "x-forwarded-for",
        "forwarded",
        "x-real-ip",
        "true-client-ip",
        "cf-connecting-ip",
        "x-http-method-override",
        "x-original-url",
    ] {
        assert_eq!(seen.header(name), None, "{name}");
    }
    let mut many = record.clone();
    let headers: Vec<Value> = (0..200).map(|i| json!([format!("x-h{i}"), "v"])).collect();
    many["request"]["headers"] = json!(headers);
    let r = send(&many, Some(TOKEN));
    assert_eq!(r.status, 422);
    assert!(
        r.text().contains("more headers than a client may send"),
        "{}",
        r.text()
    );
    for bad in ["to=both", "", "to=new&to=sideways"] {
        let r = Client::connect(proxy.admin_port)
            .request(
                "POST",
                &format!("/routes/orders/replay?{bad}"),
                &[("authorization", &format!("Bearer {TOKEN}"))],
                record.to_string().as_bytes(),
            )
            .unwrap();
        assert_eq!(r.status, 400, "{bad}: {}", r.text());
    }
    let r = Client::connect(proxy.admin_port)
        .request(
            "POST",
            "/routes/orders/replay?to=new",
            &[("authorization", &format!("Bearer {TOKEN}"))],
            b"{not json",
        )
        .unwrap();
    assert_eq!(r.status, 400);
}

#[test]
fn a_shadow_mismatch_is_kept_with_both_answers_and_the_differing_paths() {
    let legacy = Backend::answering("legacy", |_, _| {
        (200, "application/json", r#"{"price":100}"#.into())
    });
    let new = Backend::answering("new", |_, _| {
        (200, "application/json", r#"{"price":125}"#.into())
    });
    let text = Config::new()
        .upstream("legacy", &legacy.addr())
        .upstream("new", &new.addr())
        .route("flights", "/flights", |r| {
            r.legacy("legacy")
                .new("new")
                .shift("0%")
                .toml("shadow", "{}")
                .toml("capture", r#"{ on = ["mismatch"], dir = "spool" }"#)
        })
        .build();
    let proxy = Proxy::start(&text);
    assert_eq!(get(proxy.port, "/flights/7", &[]).status, 200);
    let kept = records(&proxy, 1);
    let m = &kept[0];
    assert_eq!(m["event"], "mismatch");
    assert_eq!(m["side"], "legacy");
    assert_eq!(m["response"]["body"]["text"], r#"{"price":100}"#);
    assert_eq!(m["other"]["body"]["text"], r#"{"price":125}"#);
    assert_eq!(m["differences"], json!(["$.price: legacy 100 new 125"]));
}
