//! Protecting the monolith: `max-in-flight` with `queue-timeout`, tested with real concurrent
//! clients against a backend that reports the most requests it ever served at once.

use std::sync::atomic::Ordering;
use std::time::Duration;

use crate::support::*;

fn config(backend: &Backend, queue_timeout: &str) -> String {
    monolith_config(
        backend,
        &format!("max-in-flight = 3\nqueue-timeout = \"{queue_timeout}\"\n"),
    )
}

fn burst(port: u16, clients: usize) -> Vec<u16> {
    let handles: Vec<_> = (0..clients)
        .map(|_| std::thread::spawn(move || get(port, "/orders", &[("x-delay-ms", "300")]).status))
        .collect();
    handles.into_iter().map(|h| h.join().unwrap()).collect()
}

#[test]
fn the_monolith_never_sees_more_than_max_in_flight() {
    let backend = Backend::start("monolith");
    let proxy = Proxy::start(&config(&backend, "10s"));
    let statuses = burst(proxy.port, 15);
    assert!(statuses.iter().all(|s| *s == 200), "{statuses:?}");
    assert_eq!(backend.count(), 15);
    let peak = backend.max_concurrent.load(Ordering::SeqCst);
    assert!(
        peak <= 3,
        "the backend saw {peak} requests at once with max-in-flight = 3"
    );
    assert_eq!(peak, 3, "the limit should be used fully");
}

#[test]
fn excess_requests_wait_then_get_503_with_retry_after() {
    let backend = Backend::start("monolith");
    let proxy = Proxy::start(&config(&backend, "100ms"));
    let statuses = burst(proxy.port, 12);
    let refused = statuses.iter().filter(|s| **s == 503).count();
    let served = statuses.iter().filter(|s| **s == 200).count();
    assert_eq!(served + refused, 12, "{statuses:?}");
    assert!(refused >= 6, "only {refused} of 12 refused: {statuses:?}");
    assert!(backend.max_concurrent.load(Ordering::SeqCst) <= 3);
    let r = {
        let port = proxy.port;
        let before = backend.count();
        let hold: Vec<_> = (0..3)
            .map(|_| std::thread::spawn(move || get(port, "/orders", &[("x-delay-ms", "600")])))
            .collect();
        eventually(
            Duration::from_secs(1),
            "3 requests holding the slots",
            || backend.count() >= before + 3,
        );
        let r = get(proxy.port, "/orders", &[]);
        for h in hold {
            h.join().unwrap();
        }
        r
    };
    assert_eq!(r.status, 503);
    assert_eq!(r.header("retry-after"), Some("1"));
}

fn rate_config(backend: &Backend) -> String {
    monolith_config(
        backend,
        r#"[[routes]]
id = "search"
path = "/search"
legacy = "monolith"
rate-limit = { requests = 5, per = "1s", burst = 5, key = "header:x-api-key" }
"#,
    )
}

#[test]
fn rate_limits_answer_429_with_retry_after_and_the_policy() {
    let backend = Backend::start("monolith");
    let proxy = Proxy::start(&rate_config(&backend));
    let mut c = proxy.client();
    for i in 0..5 {
        assert_eq!(
            c.get("/search", &[("x-api-key", "team-a")]).unwrap().status,
            200,
            "request {i}"
        );
    }
    let r = c.get("/search", &[("x-api-key", "team-a")]).unwrap();
    assert_eq!(r.status, 429);
    assert_eq!(r.header("retry-after"), Some("1"));
    assert_eq!(r.header("ratelimit-policy"), Some("\"search\";q=5;w=1"));
    assert_eq!(r.header("ratelimit"), Some("\"search\";r=0;t=1"));
    // Another key has its own budget; other routes have none.
    assert_eq!(
        c.get("/search", &[("x-api-key", "team-b")]).unwrap().status,
        200
    );
    assert_eq!(
        c.get("/elsewhere", &[("x-api-key", "team-a")])
            .unwrap()
            .status,
        200
    );
    // The bucket refills at 5 per second: one more after 200 ms (waited out on purpose, with a
    // margin).
    std::thread::sleep(Duration::from_millis(450));
    assert_eq!(
        c.get("/search", &[("x-api-key", "team-a")]).unwrap().status,
        200
    );
    assert_eq!(backend.count(), 5 + 1 + 1 + 1);
}

#[test]
fn concurrent_clients_share_one_budget_per_key() {
    let backend = Backend::start("monolith");
    let proxy = Proxy::start(&rate_config(&backend));
    let start = std::time::Instant::now();
    let port = proxy.port;
    let handles: Vec<_> = (0..4)
        .map(|_| {
            std::thread::spawn(move || {
                let mut c = Client::connect(port);
                (0..10)
                    .map(|_| c.get("/search", &[("x-api-key", "shared")]).unwrap().status)
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    let statuses: Vec<u16> = handles
        .into_iter()
        .flat_map(|h| h.join().unwrap())
        .collect();
    let elapsed = start.elapsed().as_secs_f64();
    let allowed = statuses.iter().filter(|s| **s == 200).count();
    assert!(statuses.iter().all(|s| *s == 200 || *s == 429));
    let ceiling = 5.0 + elapsed * 5.0 + 1.0;
    assert!(
        allowed >= 5 && allowed as f64 <= ceiling,
        "{allowed} allowed in {elapsed:.2}s (ceiling {ceiling:.1})"
    );
    assert_eq!(backend.count(), allowed);
}
