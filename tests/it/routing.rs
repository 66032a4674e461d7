//! Routing by path and method, default upstream, forwarding headers.

use crate::support::*;

#[test]
fn routes_by_segment_aware_prefix_exact_and_method() {
    let (mono, new, admin) = (
        Backend::start("monolith"),
        Backend::start("bookings"),
        Backend::start("admin"),
    );
    let proxy = Proxy::start(
        &Config::new()
            .default("monolith")
            .upstream("monolith", &mono.addr())
            .upstream("bookings", &new.addr())
            .upstream("admin", &admin.addr())
            .route("bookings-write", "/bookings", |r| {
                r.toml("methods", r#"["POST"]"#).new("bookings")
            })
            .route("bookings", "/bookings", |r| r.legacy("monolith"))
            .route("search", "/bookings/search", |r| {
                r.set("match", "exact").new("admin")
            })
            .build(),
    );
    let mut c = proxy.client();
    let mut served_by = |method: &str, path: &str| {
        let r = c.request(method, path, &[], b"").unwrap();
        assert_eq!(r.status, 200, "{method} {path}");
        r.header("x-backend").unwrap().to_string()
    };
    assert_eq!(served_by("GET", "/bookings"), "monolith");
    assert_eq!(served_by("GET", "/bookings/42"), "monolith");
    assert_eq!(served_by("POST", "/bookings/42"), "bookings");
    assert_eq!(served_by("GET", "/bookings/search"), "admin");
    assert_eq!(served_by("GET", "/bookings/search/deep"), "monolith");
    assert_eq!(served_by("GET", "/bookingsx"), "monolith"); // the default, not the route
    assert_eq!(served_by("GET", "/"), "monolith");

    let log = proxy.log_when(7);
    let routes: Vec<&str> = log
        .iter()
        .map(|l| l["route"].as_str().unwrap_or("-"))
        .collect();
    assert_eq!(
        routes,
        [
            "bookings",
            "bookings",
            "bookings-write",
            "search",
            "bookings",
            "-",
            "-"
        ]
    );
    assert_eq!(log[5]["side"], "default");
}

#[test]
fn without_a_default_unmatched_requests_get_404() {
    let mono = Backend::start("monolith");
    let proxy = Proxy::start(
        &Config::new()
            .upstream("monolith", &mono.addr())
            .route("api", "/api", |r| r.legacy("monolith"))
            .build(),
    );
    assert_eq!(get(proxy.port, "/api/x", &[]).status, 200);
    let r = get(proxy.port, "/other", &[]);
    assert_eq!(r.status, 404);
    assert!(r.header("x-request-id").is_some());
    assert_eq!(mono.count(), 1);
}

#[test]
fn forwards_with_proxy_headers_and_without_hop_by_hop_ones() {
    let (legacy, new) = (Backend::start("legacy"), Backend::start("new"));
    let proxy = Proxy::start(&split_config(&legacy, &new, "0%", "none"));
    let r = get(
        proxy.port,
        "/bookings/1?x=1&y=2",
        &[
            ("X-Forwarded-For", "203.0.113.9"),
            ("Connection", "keep-alive, x-secret-hop"),
            ("X-Secret-Hop", "1"),
            ("Keep-Alive", "timeout=5"),
            ("Proxy-Connection", "keep-alive"),
            ("X-Request-Id", "req-abc-123"),
            ("X-Strangle-Side", "legacy"),
        ],
    );
    assert_eq!(r.status, 200);
    assert_eq!(r.header("x-request-id"), Some("req-abc-123"));
    let seen = legacy.seen().pop().unwrap();
    assert_eq!(seen.target, "/bookings/1?x=1&y=2");
    // The client is not a trusted proxy: its X-Forwarded-For is replaced, never appended to
    // (the trusted-proxy case is in bypass.rs).
    assert_eq!(seen.header("x-forwarded-for"), Some("127.0.0.1"));
    assert_eq!(seen.header("x-forwarded-proto"), Some("http"));
    assert_eq!(
        seen.header("x-forwarded-host"),
        Some(&*format!("127.0.0.1:{}", proxy.port))
    );
    assert_eq!(seen.header("x-request-id"), Some("req-abc-123"));
    for hop in [
        "x-secret-hop",
        "keep-alive",
        "proxy-connection",
        "x-strangle-side",
    ] {
        assert_eq!(seen.header(hop), None, "{hop} was forwarded");
    }

    // Without an id, one is generated, sent upstream and returned.
    let r = get(proxy.port, "/bookings/2", &[]);
    let id = r.header("x-request-id").unwrap().to_string();
    assert_eq!(id.len(), 32);
    assert_eq!(
        legacy.seen().pop().unwrap().header("x-request-id"),
        Some(&*id)
    );
}

#[test]
fn url_upstreams_get_host_rewritten_and_base_path_prefixed() {
    let (legacy, svc) = (Backend::start("legacy"), Backend::start("svc"));
    let proxy = Proxy::start(
        &Config::new()
            .default("legacy")
            .upstream("legacy", &legacy.addr())
            .upstream_keys(
                "svc",
                &format!("url = \"http://localhost:{}/v2/\"", svc.port),
            )
            .route("bookings", "/bookings", |r| r.new("svc"))
            .build(),
    );
    assert_eq!(
        get(proxy.port, "/bookings/7?q=1", &[]).header("x-backend"),
        Some("svc")
    );
    let seen = svc.seen().pop().unwrap();
    assert_eq!(seen.target, "/v2/bookings/7?q=1");
    assert_eq!(
        seen.header("host"),
        Some(&*format!("localhost:{}", svc.port))
    );
}

#[test]
fn https_url_upstreams_use_tls_with_sni_and_verify_the_certificate() {
    let legacy = Backend::start("legacy");
    let tls = TlsBackend::start();
    let config = |ca: &str| {
        Config::new()
            .default("legacy")
            .upstream("legacy", &legacy.addr())
            .upstream_keys(
                "fn-url",
                &format!("url = \"https://localhost:{}/prod\"\n{ca}", tls.port),
            )
            .route("bookings", "/bookings", |r| r.new("fn-url"))
            .build()
    };
    let ca_dir = tempfile::tempdir().unwrap();
    let ca = ca_dir.path().join("ca.pem");
    std::fs::write(&ca, &tls.ca_pem).unwrap();
    let proxy = Proxy::start(&config(&format!("ca-file = \"{}\"", ca.display())));
    let r = get(proxy.port, "/bookings/1?x=y", &[]);
    assert_eq!(r.status, 200, "{}", proxy.stderr());
    assert_eq!(r.header("x-backend"), Some("tls"));
    let (sni, head) = tls.seen.lock().unwrap().pop().unwrap();
    assert_eq!(sni.as_deref(), Some("localhost"));
    assert!(
        head.starts_with("GET /prod/bookings/1?x=y HTTP/1.1\r\n"),
        "{head}"
    );
    assert!(
        head.to_ascii_lowercase()
            .contains(&format!("host: localhost:{}\r\n", tls.port)),
        "{head}"
    );

    // Without the CA the certificate is not trusted: 502, never an unverified connection.
    let untrusting = Proxy::start(&config(""));
    assert_eq!(get(untrusting.port, "/bookings/1", &[]).status, 502);
}

#[test]
fn upstream_connections_are_pooled_and_reused() {
    let (legacy, new) = (Backend::start("legacy"), Backend::start("new"));
    let proxy = Proxy::start(&split_config(&legacy, &new, "0%", "none"));
    // Fresh client connections each time: the upstream side still reuses its pooled ones.
    for _ in 0..50 {
        assert_eq!(get(proxy.port, "/bookings", &[]).status, 200);
    }
    let opened = legacy.connections.load(std::sync::atomic::Ordering::SeqCst);
    assert!(
        opened <= 3,
        "50 sequential requests opened {opened} upstream connections"
    );
}

#[test]
fn the_reference_config_splits_bookings_25_percent_as_documented() {
    let (legacy, new) = (Backend::start("legacy"), Backend::start("new"));
    let reference =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/config/strangle.toml"))
            .unwrap();
    let text = reference
        .replace("\"127.0.0.1:8080\"", "\"{listen}\"")
        .replace("127.0.0.1:8081", &legacy.addr())
        .replace("127.0.0.1:8082", &new.addr())
        .replace("access = \"stdout\"", "access = \"access.log\"");
    let proxy = Proxy::start(&text);
    let mut c = proxy.client();
    let mut on_new = 0;
    for user in 0..2000 {
        let r = c
            .get("/bookings/1", &[("x-user-id", &format!("u{user}"))])
            .unwrap();
        assert_eq!(r.status, 200);
        if r.header("x-backend") == Some("new") {
            on_new += 1;
        }
    }
    assert!(
        (440..=560).contains(&on_new),
        "{on_new} of 2000 users on the new side at 25%"
    );
    assert_eq!(
        get(proxy.port, "/flights", &[]).header("x-backend"),
        Some("legacy")
    );
}

/// `GET path` with `Host: host` and more headers: who answered.
fn served_by(port: u16, host: &str, path: &str, headers: &[(&str, &str)]) -> String {
    let mut all = vec![("Host", host)];
    all.extend_from_slice(headers);
    let r = Client::connect(port).get(path, &all).unwrap();
    assert_eq!(r.status, 200, "{host} {path}: {}", r.text());
    r.text()
}

#[test]
fn hosts_route_the_same_paths_to_different_monoliths_with_per_host_defaults() {
    let (www, api, partner, other) = (
        Backend::start("www"),
        Backend::start("api"),
        Backend::start("partner"),
        Backend::start("other"),
    );
    let text = Config::new()
        .default("www")
        .upstream("www", &www.addr())
        .upstream("api", &api.addr())
        .upstream("partner", &partner.addr())
        .upstream("other", &other.addr())
        .server("h2c = true")
        .section(
            "[[server.defaults]]",
            "hosts = [\"other.example\"]\nupstream = \"other\"",
        )
        // Declared first, for any host: the host routes still win for their hosts.
        .route("www-bookings", "/bookings", |r| r.legacy("www"))
        .route("api-bookings", "/bookings", |r| {
            r.legacy("api").toml("hosts", r#"["api.example.com"]"#)
        })
        .route("partners", "/", |r| {
            r.legacy("partner")
                .toml("hosts", r#"["*.partner.example"]"#)
        })
        .build();
    let proxy = Proxy::start(&text);
    let port = proxy.port;
    assert_eq!(
        served_by(port, "api.example.com", "/bookings/1", &[]),
        "api"
    );
    // Case, port and a final dot do not make another host.
    assert_eq!(
        served_by(port, "API.Example.COM.:8080", "/bookings/1", &[]),
        "api"
    );
    assert_eq!(
        served_by(port, "www.example.com", "/bookings/1", &[]),
        "www"
    );
    // A host-specific route beats one for any host, even with a shorter path.
    assert_eq!(
        served_by(port, "acme.partner.example", "/bookings/1", &[]),
        "partner"
    );
    // One label only, and not the parent.
    assert_eq!(
        served_by(port, "partner.example", "/bookings/1", &[]),
        "www"
    );
    assert_eq!(
        served_by(port, "a.b.partner.example", "/bookings/1", &[]),
        "www"
    );
    // Unrouted: the host's own default, else the server's.
    assert_eq!(served_by(port, "other.example", "/cart", &[]), "other");
    assert_eq!(served_by(port, "api.example.com", "/cart", &[]), "www");
    // Over HTTP/2 `:authority` names the host.
    for (host, want) in [
        ("api.example.com:9", "api"),
        ("x.partner.example", "partner"),
    ] {
        let (status, body) = crate::http2::curl(
            port,
            "/bookings/3",
            &["--http2-prior-knowledge", "-H", &format!("host: {host}")],
        );
        assert!(status.starts_with("200 2"), "{status}");
        assert_eq!(body, want);
    }
    // An absolute-form target (a host named twice) is refused, whatever the two say.
    for host in ["api.example.com", "www.example.com"] {
        let r = Client::connect(port)
            .get("http://api.example.com/bookings/2", &[("Host", host)])
            .unwrap();
        assert_eq!(r.status, 400);
    }
    assert!(api.seen().iter().all(|s| s.target != "/bookings/2"));
}

#[test]
fn header_and_query_conditions_pick_a_canary_route() {
    let (mono, v2, beta) = (
        Backend::start("monolith"),
        Backend::start("v2"),
        Backend::start("beta"),
    );
    let text = Config::new()
        .default("monolith")
        .server("h2c = true")
        .upstream("monolith", &mono.addr())
        .upstream("v2", &v2.addr())
        .upstream("beta", &beta.addr())
        .route("bookings", "/bookings", |r| r.legacy("monolith"))
        .route("bookings-v2", "/bookings", |r| {
            r.new("v2")
                .toml("when", r#"{ header = { "x-api-version" = "2" } }"#)
        })
        .route("bookings-beta", "/bookings", |r| {
            r.new("beta").toml(
                "when",
                r#"{ query = { beta = "1" }, header = { "x-debug" = "absent" } }"#,
            )
        })
        .build();
    let proxy = Proxy::start(&text);
    let port = proxy.port;
    let h = "127.0.0.1";
    assert_eq!(served_by(port, h, "/bookings/1", &[]), "monolith");
    assert_eq!(
        served_by(port, h, "/bookings/1", &[("x-api-version", "2")]),
        "v2"
    );
    assert_eq!(
        served_by(port, h, "/bookings/1", &[("X-Api-Version", "2")]),
        "v2"
    );
    assert_eq!(
        served_by(port, h, "/bookings/1", &[("x-api-version", "3")]),
        "monolith"
    );
    // Twice with different values: believed neither way.
    assert_eq!(
        served_by(
            port,
            h,
            "/bookings/1",
            &[("x-api-version", "2"), ("x-api-version", "1")]
        ),
        "monolith"
    );
    assert_eq!(served_by(port, h, "/bookings/1?beta=1", &[]), "beta");
    assert_eq!(served_by(port, h, "/bookings/1?x=y&beta=%31", &[]), "beta");
    assert_eq!(
        served_by(port, h, "/bookings/1?beta=1", &[("x-debug", "1")]),
        "monolith"
    );
    assert_eq!(
        served_by(port, h, "/bookings/1?beta=1&beta=1", &[]),
        "monolith"
    );
    // Over HTTP/2 the same.
    let (status, body) =
        crate::http2::curl(port, "/bookings/1?beta=1", &["--http2-prior-knowledge"]);
    assert!(status.starts_with("200"), "{status}");
    assert_eq!(body, "beta");
    assert_eq!(v2.seen().len(), 2);
}

#[test]
fn an_http10_request_without_host_still_reaches_the_upstream_with_one() {
    let mono = Backend::start("monolith");
    let proxy = Proxy::start(
        &Config::new()
            .default("monolith")
            .upstream("monolith", &mono.addr())
            .build(),
    );
    let r = send_once(proxy.port, b"GET /x HTTP/1.0\r\n\r\n").unwrap();
    assert_eq!(r.status, 200);
    let seen = mono.seen().pop().unwrap();
    assert_eq!(seen.header("host"), Some(mono.addr().as_str()));
}

#[test]
fn many_query_conditions_judge_one_parse_of_the_query() {
    // 200 routes on one path, each with a query condition: a request with a long query of
    // empty parameters is routed (its query parsed once, not once per route).
    let (mono, chosen) = (Backend::start("monolith"), Backend::start("chosen"));
    let mut config = Config::new()
        .default("monolith")
        .upstream("monolith", &mono.addr())
        .upstream("chosen", &chosen.addr());
    for i in 0..200 {
        let side = if i == 150 { "chosen" } else { "monolith" };
        config = config.route(&format!("t{i}"), "/api", |r| {
            r.legacy(side)
                .toml("when", &format!("{{ query = {{ tenant = \"t{i}\" }} }}"))
        });
    }
    let proxy = Proxy::start(&config.build());
    let query = "&".repeat(30_000);
    let r = get(proxy.port, &format!("/api?{query}&tenant=t150"), &[]);
    assert_eq!((r.status, r.text().as_str()), (200, "chosen"));
    let r = get(
        proxy.port,
        &format!("/api?{query}&tenant=t150&tenant=t150"),
        &[],
    );
    assert_eq!(r.text(), "monolith", "given twice: no condition holds");
}
