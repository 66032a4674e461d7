//! An upstream named by a host name that does not resolve yet (a new side's Service not in DNS,
//! a typo being fixed) never stops strangle from starting: routes to it answer 502 (or fall
//! back to legacy), everything else is served, and the name is looked up again on every health
//! check until it resolves. A name that stops resolving keeps the addresses it had.
//!
//! strangle runs in its own mount namespace (`unshare --mount`) with its own /etc/hosts, which
//! the test edits, and with name lookups limited to that file (`hosts: files`, a resolver on
//! loopback): no lookup leaves the machine.

use std::path::Path;
use std::time::Duration;

use crate::support::*;

/// Runs strangle with `dir/hosts` as its /etc/hosts and no other source of names.
fn wrap(dir: &Path) -> Vec<String> {
    std::fs::write(dir.join("nsswitch.conf"), "hosts: files\n").unwrap();
    std::fs::write(dir.join("resolv.conf"), "nameserver 127.0.0.1\n").unwrap();
    let file = |n: &str| dir.join(n).display().to_string();
    [
        "unshare",
        "--mount",
        "--propagation",
        "private",
        "--",
        "sh",
        "-c",
        "mount --bind \"$1\" /etc/hosts && mount --bind \"$2\" /etc/nsswitch.conf \
         && mount --bind \"$3\" /etc/resolv.conf && shift 3 && exec \"$@\"",
        "sh",
    ]
    .iter()
    .map(|s| s.to_string())
    .chain([file("hosts"), file("nsswitch.conf"), file("resolv.conf")])
    .collect()
}

/// Rewrites the hosts file in place: the bind mount follows the file, not its name.
fn hosts(dir: &Path, lines: &str) {
    std::fs::write(dir.join("hosts"), format!("127.0.0.1 localhost\n{lines}")).unwrap();
}

fn unresolved(proxy: &Proxy) -> Vec<String> {
    proxy.status()["upstreams"]["new"]["unresolved"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|u| u["address"].as_str().unwrap().to_string())
                .collect()
        })
        .unwrap_or_default()
}

fn unresolved_metric(proxy: &Proxy) -> String {
    proxy
        .admin("GET", "/metrics", b"")
        .text()
        .lines()
        .find(|l| l.starts_with("strangle_upstream_unresolved_addresses{upstream=\"new\"}"))
        .unwrap_or_default()
        .to_string()
}

#[test]
fn a_name_that_does_not_resolve_yet_is_served_around_then_followed_once_it_does() {
    for fast_path_off in [false, true] {
        served_around_then_followed(fast_path_off);
    }
}

fn served_around_then_followed(fast_path_off: bool) {
    let (legacy, new) = (Backend::start("legacy"), Backend::start("new"));
    let dir = tempfile::tempdir().unwrap();
    hosts(dir.path(), "");
    let name = format!("bookings.shop.test:{}", new.port);
    let text = Config::new()
        .upstream("legacy", &legacy.addr())
        .upstream_keys(
            "new",
            &format!("url = \"http://{name}\"\nhealth-check-interval = \"200ms\""),
        )
        .route("bookings", "/bookings", |r| {
            r.legacy("legacy").new("new").shift("100%")
        })
        .route("flights", "/flights", |r| {
            r.legacy("legacy")
                .new("new")
                .shift("100%")
                .raw("fallback = true")
        })
        .build();
    // It starts: before, it refused with "cannot resolve".
    let proxy = Proxy::start_wrapped(&text, engine_env(fast_path_off), &wrap(dir.path()));
    assert!(
        proxy.stderr().contains("cannot resolve"),
        "{}",
        proxy.stderr()
    );
    assert_eq!(unresolved(&proxy), std::slice::from_ref(&name));
    assert!(unresolved_metric(&proxy).ends_with(" 1"));
    // The route to it answers 502; a route that falls back is served by legacy; other paths
    // go on as before.
    let r = get(proxy.port, "/bookings/1", &[]);
    assert_eq!(r.status, 502, "{}", r.text());
    let r = get(proxy.port, "/flights/1", &[]);
    assert_eq!((r.status, r.header("x-backend")), (200, Some("legacy")));
    assert_eq!(get(proxy.port, "/elsewhere", &[]).status, 404);
    assert_eq!(new.count(), 0);

    // The Service appears: the next health check finds it, with no reload.
    hosts(dir.path(), "127.0.0.1 bookings.shop.test\n");
    eventually(Duration::from_secs(10), "the name to resolve", || {
        get(proxy.port, "/bookings/1", &[]).header("x-backend") == Some("new")
    });
    assert!(unresolved(&proxy).is_empty());
    assert!(unresolved_metric(&proxy).ends_with(" 0"));
    let seen = new.seen().pop().unwrap();
    assert_eq!(seen.header("host"), Some(name.as_str()));
    assert!(proxy.stderr().contains("the address resolves again"));

    // DNS goes away: the addresses the name had are kept, and the status says why.
    hosts(dir.path(), "");
    eventually(Duration::from_secs(10), "the failure to show", || {
        unresolved(&proxy) == std::slice::from_ref(&name)
    });
    for _ in 0..5 {
        let r = get(proxy.port, "/bookings/1", &[]);
        assert_eq!((r.status, r.header("x-backend")), (200, Some("new")));
    }
    assert_eq!(
        proxy.status()["upstreams"]["new"]["addresses"][0]["up"],
        true
    );
    // A reload that changes the upstream during the outage keeps what its name had.
    let before = proxy.metric("strangle_config_reloads_total");
    proxy.rewrite(&text.replace(
        "health-check-interval = \"200ms\"",
        "health-check-interval = \"200ms\"\ntimeout = \"20s\"",
    ));
    eventually(Duration::from_secs(10), "the reload", || {
        proxy.metric("strangle_config_reloads_total") > before
    });
    let r = get(proxy.port, "/bookings/1", &[]);
    assert_eq!((r.status, r.header("x-backend")), (200, Some("new")));
    assert_eq!(unresolved(&proxy), std::slice::from_ref(&name));
}

/// A resolver that never answers (here /etc/hosts is a FIFO nobody writes: every lookup
/// blocks in `open`) holds nothing up: strangle starts after the lookup's 5 s, a reload that
/// needs a lookup is applied after at most as long, other routes are served meanwhile, and the
/// health checks' lookups do not pile up threads (one stays waiting per name).
#[test]
fn a_resolver_that_never_answers_holds_up_neither_start_nor_reload_nor_threads() {
    let legacy = Backend::start("legacy");
    let dir = tempfile::tempdir().unwrap();
    nix::unistd::mkfifo(&dir.path().join("hosts"), nix::sys::stat::Mode::S_IRWXU).unwrap();
    let base = Config::new()
        .upstream("legacy", &legacy.addr())
        .upstream_keys(
            "new",
            "url = \"http://svc.shop.test:8080\"\nhealth-check-interval = \"200ms\"",
        )
        .route("a", "/a", |r| r.legacy("legacy").new("new").shift("100%"))
        .route("b", "/b", |r| r.legacy("legacy"));
    let proxy = Proxy::start_wrapped(&base.clone().build(), &[], &wrap(dir.path()));
    assert_eq!(get(proxy.port, "/b", &[]).status, 200);
    assert_eq!(get(proxy.port, "/a", &[]).status, 502);
    let error = proxy.status()["upstreams"]["new"]["unresolved"][0]["error"].clone();
    assert!(error.as_str().unwrap().contains("no answer"), "{error}");
    let threads = || {
        std::fs::read_dir(format!("/proc/{}/task", proxy.child.id()))
            .unwrap()
            .count()
    };
    let at_start = threads();
    // A reload that needs a lookup (a new upstream): applied, not held.
    proxy.rewrite(
        &base
            .clone()
            .upstream_keys("other", "url = \"http://other.shop.test:8080\"")
            .route("c", "/c", |r| r.legacy("other"))
            .build(),
    );
    let r = proxy.admin("POST", "/reload", b"");
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(r.text().contains("other.shop.test"), "{}", r.text());
    assert_eq!(get(proxy.port, "/b", &[]).status, 200);
    // Many health-check rounds later: at most the one waiting lookup per name more.
    std::thread::sleep(Duration::from_secs(6));
    let later = threads();
    assert!(later <= at_start + 3, "threads: {at_start} then {later}");
}

#[test]
fn a_reload_that_names_an_unresolvable_upstream_is_applied_and_post_reload_says_so() {
    let legacy = Backend::start("legacy");
    let dir = tempfile::tempdir().unwrap();
    hosts(dir.path(), "");
    let base = Config::new()
        .upstream("legacy", &legacy.addr())
        .route("a", "/a", |r| r.legacy("legacy"));
    let proxy = Proxy::start_wrapped(&base.clone().build(), &[], &wrap(dir.path()));
    let r = proxy.admin("POST", "/reload", b"");
    assert_eq!(r.status, 200, "{}", r.text());
    let body: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
    assert_eq!(
        body["warnings"],
        serde_json::json!([]),
        "a clean reload warns of nothing"
    );
    // Written but not yet applied by the watcher when POST /reload applies it (either may
    // come first: both install the same file).
    proxy.rewrite(
        &base
            .server("threads = 3")
            .upstream_keys(
                "new",
                "addresses = [\"orders.shop.test:8080\", \"127.0.0.1:9\"]",
            )
            .route("b", "/b", |r| r.legacy("legacy").new("new").shift("100%"))
            // A route with auth in front of a default upstream is warned of (`/C` misses it).
            .default("legacy")
            .section(
                "[auth.users]",
                "jwks-url = \"http://127.0.0.1:9/jwks\"\nissuer = \"https://issuer.test/\"\n\
                 audiences = [\"shop\"]\nalgorithms = [\"RS256\"]",
            )
            .route("c", "/c", |r| r.legacy("legacy").auth("users"))
            .build(),
    );
    let r = proxy.admin("POST", "/reload", b"");
    assert_eq!(r.status, 200, "{}", r.text());
    let body: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
    let warnings: Vec<&str> = body["warnings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| w.as_str().unwrap())
        .collect();
    // What the reload logged, the client that asked for it hears too: a config warning
    // (FILE:LINE:COL), a key applied only at restart, and a name that does not resolve.
    assert_eq!(warnings.len(), 3, "{warnings:?}");
    assert!(
        warnings[0].contains("strangle.toml:") && warnings[0].contains("`/C`"),
        "{warnings:?}"
    );
    assert!(warnings[1].contains("[server] threads"), "{warnings:?}");
    assert!(
        warnings[2].contains("cannot resolve `orders.shop.test:8080`"),
        "{warnings:?}"
    );
    assert_eq!(unresolved(&proxy), ["orders.shop.test:8080"]);
    // The literal address beside it is used; nothing listens there, so 502.
    assert_eq!(get(proxy.port, "/b", &[]).status, 502);
    assert_eq!(get(proxy.port, "/a", &[]).status, 200);
}
