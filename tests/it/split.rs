//! The weighted, sticky split through the real proxy.

use std::collections::HashMap;
use std::time::Duration;

use crate::support::*;

/// Sends one request per key over `threads` keep-alive connections; returns key → side.
fn sides(port: u16, keys: &[String], header: &str) -> HashMap<String, String> {
    let chunks: Vec<Vec<String>> = keys
        .chunks(keys.len().div_ceil(4))
        .map(|c| c.to_vec())
        .collect();
    let handles: Vec<_> = chunks
        .into_iter()
        .map(|chunk| {
            let header = header.to_string();
            std::thread::spawn(move || {
                let mut c = Client::connect(port);
                chunk
                    .into_iter()
                    .map(|k| {
                        let r = c.get("/bookings/1", &[(&header, &k)]).unwrap();
                        assert_eq!(r.status, 200);
                        (k, r.header("x-backend").unwrap().to_string())
                    })
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    handles
        .into_iter()
        .flat_map(|h| h.join().unwrap())
        .collect()
}

fn new_share(sides: &HashMap<String, String>) -> f64 {
    sides.values().filter(|s| *s == "new").count() as f64 / sides.len() as f64
}

#[test]
fn ten_thousand_users_split_sticky_and_monotone() {
    let (legacy, new) = (Backend::start("legacy"), Backend::start("new"));
    let proxy = Proxy::start(&split_config(&legacy, &new, "25%", "header:x-user"));
    let keys: Vec<String> = (0..10_000).map(|i| format!("user-{i}")).collect();

    let at25 = sides(proxy.port, &keys, "x-user");
    let share = new_share(&at25);
    assert!(
        (0.235..=0.265).contains(&share),
        "new side share at 25%: {share}"
    );

    // The same users again: every one lands where it landed before.
    let again = sides(proxy.port, &keys[..2000], "x-user");
    for (k, side) in &again {
        assert_eq!(side, &at25[k], "{k} switched sides");
    }

    // Raise to 50%: nobody on the new side goes back.
    proxy.rewrite(&split_config(&legacy, &new, "50%", "header:x-user"));
    assert!(
        proxy.wait_for_log("config reloaded", Duration::from_secs(5)),
        "{}",
        proxy.stderr()
    );
    let at50 = sides(proxy.port, &keys, "x-user");
    let share = new_share(&at50);
    assert!(
        (0.485..=0.515).contains(&share),
        "new side share at 50%: {share}"
    );
    let moved_back = keys
        .iter()
        .filter(|k| at25[*k] == "new" && at50[*k] != "new")
        .count();
    assert_eq!(
        moved_back, 0,
        "users moved from new back to legacy when the shift rose"
    );
}

#[test]
fn cookie_and_ip_keys_are_sticky_and_requests_without_a_key_spread() {
    let (legacy, new) = (Backend::start("legacy"), Backend::start("new"));
    let proxy = Proxy::start(&split_config(&legacy, &new, "50%", "cookie:sid"));
    let mut c = proxy.client();
    for user in 0..20 {
        let cookie = format!("theme=dark; sid=s{user}");
        let first = c
            .get("/bookings", &[("Cookie", &cookie)])
            .unwrap()
            .header("x-backend")
            .unwrap()
            .to_string();
        for _ in 0..5 {
            let r = c.get("/bookings", &[("Cookie", &cookie)]).unwrap();
            assert_eq!(r.header("x-backend").unwrap(), first);
        }
    }
    // No cookie: random per request, so both sides serve.
    let mut seen = HashMap::new();
    for _ in 0..200 {
        let r = c.get("/bookings", &[]).unwrap();
        *seen
            .entry(r.header("x-backend").unwrap().to_string())
            .or_insert(0) += 1;
    }
    assert!(
        seen.get("new").copied().unwrap_or(0) > 50 && seen.get("legacy").copied().unwrap_or(0) > 50,
        "{seen:?}"
    );

    // ip: every request from 127.0.0.1 lands on one side.
    proxy.rewrite(&split_config(&legacy, &new, "50%", "ip"));
    assert!(proxy.wait_for_log("config reloaded", Duration::from_secs(5)));
    let sides: std::collections::HashSet<String> = (0..50)
        .map(|_| {
            get(proxy.port, "/bookings", &[])
                .header("x-backend")
                .unwrap()
                .to_string()
        })
        .collect();
    assert_eq!(sides.len(), 1, "{sides:?}");
}

#[test]
fn testers_can_force_a_side_only_where_the_route_allows() {
    let (legacy, new) = (Backend::start("legacy"), Backend::start("new"));
    let proxy = Proxy::start(&split_config(&legacy, &new, "0%", "none"));
    assert_eq!(
        get(proxy.port, "/bookings", &[("x-strangle-side", "new")]).header("x-backend"),
        Some("new")
    );
    assert_eq!(
        get(proxy.port, "/bookings", &[]).header("x-backend"),
        Some("legacy")
    );

    proxy.rewrite(
        &split_config(&legacy, &new, "0%", "none").replace("override = true", "override = false"),
    );
    assert!(proxy.wait_for_log("config reloaded", Duration::from_secs(5)));
    for _ in 0..10 {
        assert_eq!(
            get(proxy.port, "/bookings", &[("x-strangle-side", "new")]).header("x-backend"),
            Some("legacy")
        );
    }
}
