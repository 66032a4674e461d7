use std::time::Duration;

use super::report::{report, Report};
use super::*;

#[test]
fn ids_fold_and_words_stay() {
    for (path, want) in [
        ("/flights/123/seats", "/flights/{id}/seats"),
        ("/users/550e8400-e29b-41d4-a716-446655440000", "/users/{id}"),
        ("/blobs/9f86d081884c7d65", "/blobs/{id}"),
        ("/blobs/deadbeefdeadbeef", "/blobs/{id}"),
        ("/orders/ORD-12345/items", "/orders/{id}/items"),
        ("/s/eyJhbGciOiJIUzI1NiJ9x1", "/s/{id}"),
        ("/api/v2/bookings", "/api/v2/bookings"),
        ("/cafe/menu", "/cafe/menu"),
        ("/", "/"),
        ("/a//b/", "/a//b/"),
    ] {
        assert_eq!(template(path), want, "{path}");
    }
    let long = format!("/{}", "word/".repeat(200));
    let t = template(&long);
    assert!(t.len() <= MAX_TEMPLATE + 4 && t.ends_with("/..."), "{t}");
}

fn config() -> crate::config::Config {
    crate::config::parse(
        "t.toml",
        r#"
[server]
listen = ["127.0.0.1:8080"]
default = "monolith"
[upstreams.monolith]
addresses = ["127.0.0.1:9000"]
[auth.users]
keys = []
issuer = "https://issuer.test/"
audiences = ["a"]
algorithms = ["RS256"]
[[routes]]
id = "api"
path = "/api"
legacy = "monolith"
auth = "users"
[[routes]]
id = "admin"
path = "/admin"
methods = ["GET"]
legacy = "monolith"
auth = "users"
[[routes]]
id = "reports"
path = "/reports/2024"
legacy = "monolith"
"#,
        std::path::Path::new("."),
    )
    .unwrap()
}

fn serve(inv: &Inventory, source: &str, method: &str, path: &str, status: u16) {
    inv.record(source, method, path, status, Duration::from_millis(3));
}

#[test]
fn twenty_ids_under_one_path_are_one_template_with_its_share_methods_and_errors() {
    let inv = Inventory::default();
    for n in 0..20 {
        serve(&inv, "_default", "GET", &format!("/flights/{n}/seats"), 200);
    }
    serve(&inv, "_default", "POST", "/flights/7/seats", 503);
    for _ in 0..9 {
        serve(&inv, "_default", "GET", "/health", 200);
    }
    let r: Report = report(&inv, &config(), 100);
    assert_eq!((r.requests, r.templates), (30, 2));
    let seats = &r.rows[0];
    assert_eq!(
        (seats.template.as_str(), seats.requests),
        ("/flights/{id}/seats", 21)
    );
    assert_eq!(seats.methods, ["GET", "POST"]);
    assert!((seats.share - 0.7).abs() < 1e-9);
    assert_eq!(seats.errors, 1);
    assert!(seats.p99_ms.unwrap() > 0.0);
    let snippet = seats.route.as_deref().unwrap();
    assert!(
        snippet.contains("path = \"/flights\"") && snippet.contains("legacy = \"monolith\""),
        "{snippet}"
    );
    assert!(snippet.contains("id = \"flights-seats\""), "{snippet}");
    let health = r.rows[1].route.as_deref().unwrap();
    assert!(health.contains("match = \"exact\""), "{health}");
}

#[test]
fn a_template_split_out_of_an_authorised_route_keeps_its_auth() {
    let inv = Inventory::default();
    serve(&inv, "api", "GET", "/api/bookings/12", 200);
    serve(&inv, "api", "GET", "/api/42", 200);
    let r = report(&inv, &config(), 10);
    let bookings = r
        .rows
        .iter()
        .find(|r| r.template == "/api/bookings/{id}")
        .unwrap();
    let snippet = bookings.route.as_deref().unwrap();
    assert!(
        snippet.contains("path = \"/api/bookings\"") && snippet.contains("auth = \"users\""),
        "{snippet}"
    );
    // Nothing more specific than the route itself: no suggestion.
    let bare = r.rows.iter().find(|r| r.template == "/api/{id}").unwrap();
    assert_eq!(bare.route, None);
}

#[test]
fn cardinality_stays_bounded_under_a_hundred_thousand_random_paths() {
    let inv = Inventory::default();
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    for _ in 0..100_000 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        // Random words (no digits, so they are not ids): every path its own template.
        let word: String = (0..10)
            .map(|i| (b'a' + ((x >> (i * 5)) % 26) as u8) as char)
            .collect();
        serve(&inv, "_default", "GET", &format!("/{word}/x"), 200);
    }
    let all = inv.all();
    assert!(all.len() <= MAX_TEMPLATES + 1, "{}", all.len());
    let other = all.iter().find(|((_, t), _)| t == OTHER).unwrap();
    let counted: u64 = all.iter().map(|(_, c)| c.requests).sum();
    assert_eq!(counted, 100_000, "every request counted somewhere");
    assert!(other.1.requests >= 100_000 - MAX_TEMPLATES as u64);
    let r = report(&inv, &config(), 5);
    assert_eq!(r.rows.len(), 5);
    assert_eq!(r.rows[0].template, OTHER);
    assert_eq!(r.rows[0].route, None);
    // Found by an adversarial review: once full (and saved), real templates were kept out for
    // good. Pruning folds the smallest into `other` and makes room.
    for _ in 0..5 {
        serve(&inv, "_default", "GET", "/reports/summary", 200);
    }
    assert!(!inv.all().iter().any(|((_, t), _)| t == "/reports/summary"));
    assert!(inv.prune() >= MAX_TEMPLATES / 2);
    serve(&inv, "_default", "GET", "/reports/summary", 200);
    assert!(inv.all().iter().any(|((_, t), _)| t == "/reports/summary"));
    let total: u64 = inv.all().iter().map(|(_, c)| c.requests).sum();
    assert_eq!(total, 100_006, "folding loses no request");
}

#[test]
fn a_saved_inventory_is_read_back_and_added_to() {
    let dir = tempfile::tempdir().unwrap();
    let path = report::path_for(&dir.path().join("edge.toml"));
    assert!(path.ends_with("edge.inventory.json"));
    let inv = Inventory::default();
    serve(&inv, "_default", "GET", "/a/1", 200);
    report::save(&inv, &path).unwrap();
    let again = Inventory::default();
    report::load(&again, &path);
    serve(&again, "_default", "DELETE", "/a/2", 500);
    let all = again.all();
    assert_eq!(all.len(), 1);
    assert_eq!(all[0].1.requests, 2);
    assert_eq!(all[0].1.methods(), ["GET", "DELETE"]);
    // Rows no process of ours writes are left out: a template too long or with a bidi mark,
    // a source that is no route id, more errors than requests.
    let row = |source: &str, template: &str, requests: u64, errors: u64| {
        let c = Counts {
            requests,
            errors,
            ..Counts::default()
        };
        ((source.to_string(), template.to_string()), c)
    };
    let hand_edited = Inventory::default();
    hand_edited.merge(vec![
        row("_default", &format!("/{}", "a".repeat(300)), 1, 0),
        row("_default", "/\u{202e}gpj.exe", 1, 0),
        row("<img src=x>", "/x", 1, 0),
        row("bookings", "/x", 1, 5),
        row("bookings", "/kept/{id}", 3, 1),
    ]);
    let kept: Vec<String> = hand_edited.all().into_iter().map(|((_, t), _)| t).collect();
    assert_eq!(kept, ["/kept/{id}"]);
    // A file that is not an inventory is said and ignored.
    std::fs::write(&path, "{not json").unwrap();
    let fresh = Inventory::default();
    report::load(&fresh, &path);
    assert!(fresh.all().is_empty());
}

#[test]
fn a_suggestion_never_opens_up_an_authorised_route_nor_widens_its_source() {
    // Found by an adversarial review: a POST under a GET-only authorised route reaches the
    // default upstream, and the entry suggested for it had no `auth`: pasted, it served
    // `GET /admin/users` without a token.
    let inv = Inventory::default();
    serve(&inv, "_default", "POST", "/admin/users/12345", 200);
    serve(&inv, "_default", "DELETE", "/admin/settings", 200);
    // A route's own segment folded (`2024`): the suggestion would be broader than the route.
    serve(&inv, "reports", "GET", "/reports/2024/summary", 200);
    let r = report(&inv, &config(), 10);
    let row = |t: &str| r.rows.iter().find(|r| r.template == t).unwrap();
    for t in ["/admin/users/{id}", "/admin/settings"] {
        let snippet = row(t).route.as_deref().unwrap();
        assert!(snippet.contains("auth = \"users\""), "{t}: {snippet}");
    }
    assert_eq!(row("/reports/{id}/summary").route, None);
}
