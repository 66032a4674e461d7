//! Fallback: a request the new side fails before answering (connect error, a Lambda function
//! error or throttle, a listed 5xx) is served by legacy when its method allows, on both HTTP/1
//! engines; a POST never is unless the route lists it, and what legacy gets is the request as
//! the client sent it (path, body, the headers strangle vouches for).

use std::time::Duration;

use serde_json::Value;

use crate::invoke::{lambda_env, InvokeEndpoint};
use crate::support::*;

fn config(legacy: &Backend, new_addr: &str, keys: &str) -> String {
    Config::new()
        .upstream("legacy", &legacy.addr())
        .upstream_keys("new", &format!("addresses = [\"{new_addr}\"]\nretries = 1"))
        .route("orders", "/orders", |r| {
            r.legacy("legacy").new("new").shift("100%").raw(keys)
        })
        .build()
}

fn route_status(proxy: &Proxy) -> Value {
    proxy.status()["routes"][0].clone()
}

#[test]
fn new_side_connect_errors_become_legacy_answers_and_a_post_is_never_retried_by_default() {
    for fast_path_off in [false, true] {
        let legacy = Backend::start("legacy");
        // Nothing listens there: every connect is refused.
        let dead = format!("127.0.0.1:{}", free_port());
        let proxy = Proxy::start_with_env(
            &config(&legacy, &dead, "fallback = true"),
            engine_env(fast_path_off),
        );
        let mut c = proxy.client();
        let spoof = [("x-strangle-side", "new"), ("x-forwarded-for", "6.6.6.6")];
        let r = c.get("/orders/7?x=1", &spoof).unwrap();
        assert_eq!(r.status, 200, "{}", proxy.stderr());
        assert_eq!(r.header("x-backend"), Some("legacy"));
        let seen = legacy.seen().pop().unwrap();
        assert_eq!(seen.target, "/orders/7?x=1");
        assert_eq!(seen.header("x-forwarded-for"), Some("127.0.0.1"));
        // A PUT is idempotent: it falls back with its body whole.
        let r = c
            .request(
                "PUT",
                "/orders/8",
                &[("content-type", "text/plain")],
                b"seat 1A",
            )
            .unwrap();
        assert_eq!(r.status, 200);
        assert_eq!(legacy.seen().pop().unwrap().body, b"seat 1A");
        // A POST is not: the new side's failure is the answer, and legacy never sees it.
        let before = legacy.count();
        let r = c.request("POST", "/orders", &[], b"buy").unwrap();
        assert_eq!(r.status, 502);
        assert_eq!(legacy.count(), before);
        // (A request is counted at its account step, just after its answer went out.)
        let s = wait_for(Duration::from_secs(5), "the POST counted", || {
            let s = route_status(&proxy);
            (s["sides"]["new"]["in_flight"] == 0).then_some(s)
        });
        assert_eq!(s["fallbacks"], 2, "{s}");
        // The new side's failures count against it (a rollout's gates see them).
        assert_eq!(s["sides"]["new"]["requests"], 3, "{s}");
        assert_eq!(s["sides"]["legacy"]["requests"], 2, "{s}");
        let log = proxy.log_when(3);
        let fell: Vec<(&str, &str)> = log
            .iter()
            .filter_map(|l| Some((l["fallback"].as_str()?, l["side"].as_str()?)))
            .collect();
        assert_eq!(fell, [("connect-error", "legacy"); 2], "{log:#?}");
        let text = proxy.admin("GET", "/metrics", b"").text();
        assert!(
            text.contains("strangle_fallbacks_total{route=\"orders\"} 2"),
            "{text}"
        );
    }
}

#[test]
fn a_listed_new_side_status_falls_back_and_post_only_when_the_route_says_so() {
    for fast_path_off in [false, true] {
        let legacy = Backend::start("legacy");
        // The new side answers what the client asks of it (`x-new-status`); legacy, 200.
        let new = Backend::answering("new", |seen, _| {
            let status = seen.header("x-new-status").and_then(|s| s.parse().ok());
            (status.unwrap_or(200), "text/plain", "new".into())
        });
        let keys =
            "fallback = true\nfallback-methods = [\"GET\", \"POST\"]\nfallback-statuses = [503]";
        let proxy = Proxy::start_with_env(
            &config(&legacy, &new.addr(), keys),
            engine_env(fast_path_off),
        );
        let mut c = proxy.client();
        let r = c.get("/orders/1", &[("x-new-status", "503")]).unwrap();
        assert_eq!((r.status, r.header("x-backend")), (200, Some("legacy")));
        // Listed explicitly, a POST falls back too, its body whole.
        let r = c
            .request("POST", "/orders", &[("x-new-status", "503")], b"buy 2")
            .unwrap();
        assert_eq!((r.status, r.header("x-backend")), (200, Some("legacy")));
        assert_eq!(legacy.seen().pop().unwrap().body, b"buy 2");
        // A status not listed is the new side's answer.
        let r = c.get("/orders/1", &[("x-new-status", "500")]).unwrap();
        assert_eq!((r.status, r.header("x-backend")), (500, Some("new")));
        // PATCH is not listed.
        let r = c
            .request("PATCH", "/orders/1", &[("x-new-status", "503")], b"x")
            .unwrap();
        assert_eq!((r.status, r.header("x-backend")), (503, Some("new")));
        assert_eq!(route_status(&proxy)["fallbacks"], 2);
    }
}

#[test]
fn a_failing_lambda_function_falls_back_to_legacy_with_the_request_body() {
    let endpoint = InvokeEndpoint::start();
    let legacy = Backend::start("legacy");
    let text = Config::new()
        .upstream("legacy", &legacy.addr())
        .lambda("bookings-fn", endpoint.port)
        .route("bookings", "/bookings", |r| {
            r.legacy("legacy")
                .new("bookings-fn")
                .shift("100%")
                .toml("fallback", "true")
        })
        .build();
    let proxy = Proxy::start_with_env(&text, &lambda_env());
    let mut c = proxy.client();
    // A function error and a throttle: legacy answers, with the body the function had.
    let r = c
        .request("PUT", "/bookings/fail", &[], b"{\"seat\":\"1A\"}")
        .unwrap();
    assert_eq!(
        (r.status, r.header("x-backend")),
        (200, Some("legacy")),
        "{}",
        proxy.stderr()
    );
    let seen = legacy.seen().pop().unwrap();
    assert_eq!(
        (seen.target.as_str(), &seen.body[..]),
        ("/bookings/fail", &b"{\"seat\":\"1A\"}"[..])
    );
    let r = c.get("/bookings/throttle", &[]).unwrap();
    assert_eq!((r.status, r.header("x-backend")), (200, Some("legacy")));
    // A working function answers itself.
    let r = c.get("/bookings/7", &[]).unwrap();
    assert_eq!(r.header("x-served-by"), Some("invoke-endpoint"));
    // A POST the function fails is the function's failure (502), never sent to legacy.
    let before = legacy.count();
    let r = c.request("POST", "/bookings/fail", &[], b"{}").unwrap();
    assert_eq!(r.status, 502);
    assert_eq!(legacy.count(), before);
    // A body larger than what is kept to send again (64 KB) cannot go to legacy whole: the
    // failure is the answer, never a cut-off body.
    let big = vec![b'x'; 100 * 1024];
    let r = c.request("PUT", "/bookings/fail", &[], &big).unwrap();
    assert_eq!(r.status, 502);
    assert_eq!(legacy.count(), before);
    assert_eq!(route_status(&proxy)["fallbacks"], 2);
    let reasons: Vec<String> = proxy
        .log_when(6)
        .iter()
        .filter_map(|l| l["fallback"].as_str().map(str::to_string))
        .collect();
    assert_eq!(reasons, ["invoke-error", "invoke-error"]);
}

#[test]
fn a_fallback_config_is_checked() {
    let legacy = Backend::start("legacy");
    let bad = config(
        &legacy,
        "127.0.0.1:1",
        "fallback-methods = [\"GET\"]\nfallback-statuses = [404]",
    );
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("strangle.toml");
    std::fs::write(&path, Proxy::render(&bad, 1, 2)).unwrap();
    let (ok, text) = check(&path);
    assert!(!ok);
    assert!(
        text.contains("`fallback-methods` has no effect without `fallback = true`"),
        "{text}"
    );
    let bad = config(
        &legacy,
        "127.0.0.1:1",
        "fallback = true\nfallback-methods = [\"CONNECT\"]\nfallback-statuses = [404]",
    );
    std::fs::write(&path, Proxy::render(&bad, 1, 2)).unwrap();
    let (_, text) = check(&path);
    assert!(text.contains("`CONNECT` opens a tunnel"), "{text}");
    assert!(text.contains("fallback status 404 is not a 5xx"), "{text}");
}

/// A new side that reads each request and closes the connection without a word.
fn mute_upstream() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            std::thread::spawn(move || {
                let mut stream = stream;
                let mut buf = [0u8; 4096];
                let _ = std::io::Read::read(&mut stream, &mut buf);
            });
        }
    });
    port
}

#[test]
fn a_new_side_that_closes_without_an_answer_falls_back_after_its_retries() {
    for fast_path_off in [false, true] {
        let legacy = Backend::start("legacy");
        let mute = format!("127.0.0.1:{}", mute_upstream());
        let proxy = Proxy::start_with_env(
            &config(&legacy, &mute, "fallback = true"),
            engine_env(fast_path_off),
        );
        let mut c = proxy.client();
        let r = c.get("/orders/1", &[]).unwrap();
        assert_eq!(
            (r.status, r.header("x-backend")),
            (200, Some("legacy")),
            "{}",
            proxy.stderr()
        );
        let r = c.request("DELETE", "/orders/1", &[], b"").unwrap();
        assert_eq!((r.status, r.header("x-backend")), (200, Some("legacy")));
        // A POST that may have reached the new side is never sent again.
        let before = legacy.count();
        let r = proxy
            .client()
            .request("POST", "/orders", &[], b"buy")
            .unwrap();
        assert_eq!(r.status, 502);
        assert_eq!(legacy.count(), before);
        let log = proxy.log_when(3);
        let fell: Vec<&str> = log.iter().filter_map(|l| l["fallback"].as_str()).collect();
        assert_eq!(fell, ["no-response", "no-response"], "{log:#?}");
    }
}
