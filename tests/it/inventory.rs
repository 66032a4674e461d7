//! The migration inventory: what the monolith still serves, by path template, with a route
//! entry that passes `strangle check`, kept across a restart.

use serde_json::Value;

use crate::support::*;

fn inventory(proxy: &Proxy) -> Value {
    let r = proxy.admin("GET", "/inventory", b"");
    assert_eq!(r.status, 200, "{}", r.text());
    serde_json::from_slice(&r.body).unwrap()
}

#[test]
fn the_inventory_groups_ids_into_templates_suggests_routes_and_survives_a_restart() {
    let (monolith, new) = (Backend::start("monolith"), Backend::start("new"));
    let config = Config::new()
        .default("monolith")
        .upstream("monolith", &monolith.addr())
        .upstream("new", &new.addr())
        .route("api", "/api", |r| r.legacy("monolith"))
        .route("moved", "/moved", |r| {
            r.legacy("monolith").new("new").shift("100%")
        })
        .build();
    let mut proxy = Proxy::start(&config);
    let mut c = proxy.client();
    for n in 0..20 {
        let status = if n == 3 { "500" } else { "200" };
        let r = c.get(
            &format!("/flights/{}/seats", 1000 + n * 7),
            &[("x-status", status)],
        );
        assert_eq!(r.unwrap().status.to_string(), status);
    }
    for _ in 0..5 {
        c.get("/health", &[]).unwrap();
    }
    for n in 0..4 {
        c.get(&format!("/api/bookings/{n}"), &[]).unwrap();
    }
    // The new side's traffic is not the monolith's.
    for n in 0..6 {
        c.get(&format!("/moved/{n}"), &[]).unwrap();
    }
    let mut inv = Value::Null;
    eventually(
        std::time::Duration::from_secs(5),
        "29 requests counted",
        || {
            inv = inventory(&proxy);
            inv["requests"] == 29
        },
    );
    let rows = inv["rows"].as_array().unwrap();
    assert_eq!(rows.len(), 3, "{inv:#}");
    let seats = &rows[0];
    assert_eq!(seats["template"], "/flights/{id}/seats");
    assert_eq!(seats["source"], "_default");
    assert_eq!(seats["requests"], 20);
    assert!((seats["share"].as_f64().unwrap() - 20.0 / 29.0).abs() < 1e-9);
    assert_eq!(
        (seats["errors"].clone(), seats["methods"].clone()),
        (1.into(), serde_json::json!(["GET"]))
    );
    let api = rows.iter().find(|r| r["source"] == "api").unwrap();
    assert_eq!(api["template"], "/api/bookings/{id}");

    // Every suggested entry passes `strangle check` in this config.
    let mut text = std::fs::read_to_string(&proxy.config).unwrap();
    for row in rows {
        text.push('\n');
        text.push_str(row["route"].as_str().unwrap());
    }
    let checked = proxy.dir.path().join("with-suggestions.toml");
    std::fs::write(&checked, &text).unwrap();
    let out = std::process::Command::new(bin())
        .arg("check")
        .arg(&checked)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}\n{text}",
        String::from_utf8_lossy(&out.stderr)
    );

    // The CLI lists them, largest first, each with its entry.
    let out = proxy.cli(&["inventory"]);
    let printed = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let at = |needle: &str| {
        printed
            .find(needle)
            .unwrap_or_else(|| panic!("{needle} in:\n{printed}"))
    };
    assert!(at("/flights/{id}/seats  (unmatched)") < at("/health  (unmatched)"));
    assert!(at("    path = \"/flights\"") > at("/flights/{id}/seats"));
    assert!(
        printed.starts_with("29 requests the monolith served, in 3 templates"),
        "{printed}"
    );

    // Saved at exit, read back at start, and added to.
    let restarted = proxy.restart();
    assert!(restarted
        .dir
        .path()
        .join("strangle.inventory.json")
        .exists());
    assert_eq!(inventory(&restarted)["requests"], 29);
    get(restarted.port, "/flights/99999/seats", &[]);
    eventually(
        std::time::Duration::from_secs(5),
        "the restarted count",
        || inventory(&restarted)["rows"][0]["requests"] == 21,
    );
}
