//! Micro-benchmarks of the work that is strangle's own: per request, path normalisation, route
//! lookup, the split decision, Lambda event encoding and JWT verification; per reload, config
//! parsing and snapshot building.
//! Run with: cargo bench --bench core

// A benchmark whose set-up fails has nothing to measure: it stops there, saying why.
#![allow(clippy::expect_used)]

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use http::{HeaderMap, Method};
use strangle::routing::{
    canonicalize, Cond, Conditions, HostPattern, PathMatch, PathParams, Query, QueryParams,
    RouteKey, RouteTable,
};
use strangle::split::{bucket, route_seed, side_for, KeyValue, Shift, StickyKey};

/// `n` routes; with `any_case`, every seventh matches in any case (a second index is probed).
fn table(n: usize, any_case: bool) -> RouteTable {
    RouteTable::new(
        (0..n)
            .map(|i| RouteKey {
                path: format!("/api/v{}/service-{i}", i % 3),
                kind: if i % 5 == 0 {
                    PathMatch::Exact
                } else {
                    PathMatch::Prefix
                },
                methods: (i % 4 == 0).then(|| vec![Method::GET, Method::POST]),
                case_insensitive: any_case && i % 7 == 0,
                trailing_slash: false,
                hosts: Vec::new(),
                when: None,
            })
            .collect(),
    )
}

/// 1,000 routes over 10 hosts (100 each: the same paths per host, as one monolith serves
/// several names), with one `*.` host among them; with `conditions`, every path also has a
/// canary route on a header and a query condition, so that a lookup judges conditions first.
fn hosted_table(conditions: bool) -> RouteTable {
    let mut keys = Vec::new();
    for h in 0..10 {
        let host = if h == 9 {
            "*.partner.example".to_string()
        } else {
            format!("host-{h}.example.com")
        };
        for i in 0..100 {
            let path = format!("/api/v{}/service-{i}", i % 3);
            let base = RouteKey {
                hosts: vec![HostPattern::parse(&host).expect("a host pattern")],
                methods: (i % 4 == 0).then(|| vec![Method::GET, Method::POST]),
                ..RouteKey::new(&path, PathMatch::Prefix)
            };
            if conditions {
                let when = Conditions {
                    headers: vec![("x-api-version".parse().expect("a name"), Cond::parse("2"))],
                    query: vec![("beta".to_string(), Cond::parse("1"))],
                };
                keys.push(RouteKey {
                    when: Some(std::sync::Arc::new(when)),
                    ..base.clone()
                });
            }
            keys.push(base);
        }
    }
    RouteTable::new(keys)
}

/// Route lookup on 1,000 routes over 10 hosts, with and without conditions (issue 19).
fn host_lookup(c: &mut Criterion) {
    let mut g = c.benchmark_group("route_lookup_hosts");
    let mut headers = HeaderMap::new();
    headers.insert("accept", "application/json".parse().expect("a value"));
    headers.insert("x-api-version", "1".parse().expect("a value"));
    let path = "/api/v2/service-98/items/42";
    let params = QueryParams::new("page=2");
    for conditions in [false, true] {
        let t = hosted_table(conditions);
        let name = if conditions { "conditions" } else { "plain" };
        for (what, host) in [
            ("exact-host", Some("host-4.example.com")),
            ("wildcard-host", Some("a.partner.example")),
            ("no-host-route", Some("www.example.com")),
        ] {
            let q = Query {
                host,
                path,
                method: &Method::GET,
                head: Some((&headers, &params)),
            };
            g.bench_with_input(BenchmarkId::new(name, what), &q, |b, q| {
                b.iter(|| t.find(black_box(q)))
            });
        }
    }
    let host = "Host-4.Example.com:8080";
    g.bench_function("normalize-host", |b| {
        b.iter(|| strangle::routing::host::normalize(black_box(host)))
    });
    g.finish();
}

fn route_lookup(c: &mut Criterion) {
    let mut g = c.benchmark_group("route_lookup");
    for n in [10, 100, 1000] {
        let t = table(n, false);
        let hit = format!("/api/v{}/service-{}/items/42", (n - 1) % 3, n - 1);
        g.bench_with_input(BenchmarkId::new("hit", n), &hit, |b, p| {
            b.iter(|| t.lookup(black_box(p), &Method::GET))
        });
        g.bench_with_input(BenchmarkId::new("miss", n), &"/static/app.js", |b, p| {
            b.iter(|| t.lookup(black_box(p), &Method::GET))
        });
    }
    let t = table(100, true);
    let hit = "/API/V2/Service-98/items/42".to_string();
    g.bench_with_input(BenchmarkId::new("hit-any-case", 100), &hit, |b, p| {
        b.iter(|| t.lookup(black_box(p), &Method::GET))
    });
    g.finish();
}

fn paths(c: &mut Criterion) {
    c.bench_function("canonicalize/clean", |b| {
        b.iter(|| canonicalize(black_box("/bookings/42/seats"), PathParams::Reject))
    });
    c.bench_function("canonicalize/dirty", |b| {
        b.iter(|| canonicalize(black_box("//bookings/./42/../43"), PathParams::Reject))
    });
    c.bench_function("canonicalize/escapes", |b| {
        b.iter(|| canonicalize(black_box("/%62ookings/caf%c3%a9/42"), PathParams::Reject))
    });
}

/// The outbound header policy on a browser-like request with a forwarded claim.
fn forward_policy(c: &mut Criterion) {
    use http::{HeaderMap, HeaderName, HeaderValue};
    use strangle::pipeline::outbound::{apply, Outbound};
    let mut request = HeaderMap::new();
    for (k, v) in [
        ("host", "shop.example"),
        (
            "user-agent",
            "Mozilla/5.0 (X11; Linux x86_64) Gecko/20100101 Firefox/128.0",
        ),
        ("accept", "application/json"),
        ("accept-language", "en-GB,en;q=0.5"),
        ("accept-encoding", "gzip, deflate, br"),
        ("authorization", "Bearer eyJhbGciOiJSUzI1NiJ9.e30.c2ln"),
        ("cookie", "session=abc; theme=dark"),
        ("x-request-id", "4bf92f3577b34da6a3ce929d0e0e4736"),
    ] {
        request.insert(HeaderName::from_static(k), HeaderValue::from_static(v));
    }
    let ids = [HeaderName::from_static("x-user-id")];
    let claims = [(ids[0].clone(), HeaderValue::from_static("alice"))];
    let id = HeaderValue::from_static("4bf92f3577b34da6a3ce929d0e0e4736");
    let client = std::net::IpAddr::from([203, 0, 113, 9]);
    let out = Outbound {
        peer: Some(client),
        peer_trusted: false,
        client: Some(client),
        https: false,
        host: Some(HeaderValue::from_static("shop.example")),
        keep_upgrade: false,
        identity_headers: &ids,
        claims: &claims,
        request_id: Some(&id),
        trace: None,
    };
    c.bench_function("forward/policy", |b| {
        b.iter_batched(
            || request.clone(),
            |mut h| {
                apply(&mut h, &out);
                h
            },
            criterion::BatchSize::SmallInput,
        )
    });
}

/// The forward stage's plugins on the same request: a route without plugins (what every route
/// that has none pays), and one with a `headers` plugin setting one header and removing one.
fn plugin_chain(c: &mut Criterion) {
    use http::{HeaderMap, HeaderName, HeaderValue, Method};
    use strangle::pipeline::plugins::forward;
    let text = |plugins: &str| {
        format!(
            "[server]\ndefault = \"m\"\n[upstreams.m]\naddresses = [\"127.0.0.1:9\"]\n\
             [[routes]]\nid = \"b\"\npath = \"/bookings\"\nlegacy = \"m\"\nnew = \"m\"\n{plugins}"
        )
    };
    let base = std::path::Path::new(".");
    let none = strangle::config::parse("bench.toml", &text(""), base).expect("config");
    let headers = strangle::config::parse(
        "bench.toml",
        &text("plugins = [{ use = \"headers\", request-set = { \"x-api-version\" = \"2\" }, request-remove = [\"x-debug\"] }]"),
        base,
    )
    .expect("config");
    let mut request = HeaderMap::new();
    for (k, v) in [
        ("host", "shop.example"),
        (
            "user-agent",
            "Mozilla/5.0 (X11; Linux x86_64) Gecko/20100101 Firefox/128.0",
        ),
        ("accept", "application/json"),
        ("accept-encoding", "gzip, deflate, br"),
        ("cookie", "session=abc; theme=dark"),
        ("x-debug", "1"),
    ] {
        request.insert(HeaderName::from_static(k), HeaderValue::from_static(v));
    }
    let params = strangle::routing::PathParams::Reject;
    let mut g = c.benchmark_group("plugins");
    for (name, config) in [("none", &none), ("headers", &headers)] {
        let plugins = &config.routes[0].plugins;
        g.bench_function(name, |b| {
            b.iter(|| {
                forward(
                    black_box(plugins),
                    true,
                    &Method::GET,
                    black_box("/bookings/42"),
                    "",
                    &request,
                    params,
                )
            })
        });
    }
    g.finish();
}

fn split(c: &mut Criterion) {
    let seed = route_seed("bookings");
    let shift = Shift::parse("25%").unwrap_or_default();
    let mut headers = HeaderMap::new();
    headers.insert("x-user-id", "user-1234567".parse().expect("header value"));
    headers.insert(
        "cookie",
        "theme=dark; sid=abcdef0123456789; lang=en"
            .parse()
            .expect("header value"),
    );
    let by_header = StickyKey::parse("header:x-user-id").expect("sticky key");
    let by_cookie = StickyKey::parse("cookie:sid").expect("sticky key");
    c.bench_function("split/header", |b| {
        b.iter(|| {
            side_for(
                bucket(seed, by_header.value(black_box(&headers), None)),
                shift,
            )
        })
    });
    c.bench_function("split/cookie", |b| {
        b.iter(|| {
            side_for(
                bucket(seed, by_cookie.value(black_box(&headers), None)),
                shift,
            )
        })
    });
    c.bench_function("split/random", |b| {
        b.iter(|| side_for(bucket(seed, KeyValue::Missing), shift))
    });
}

fn lambda_events(c: &mut Criterion) {
    use strangle::config::Payload;
    use strangle::lambda::event::{decode, encode, Request};
    let mut headers = HeaderMap::new();
    for (k, v) in [
        ("host", "api.airline.example"),
        (
            "user-agent",
            "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36",
        ),
        ("accept", "application/json"),
        ("content-type", "application/json"),
        ("cookie", "sid=abcdef0123456789; theme=dark"),
        ("x-user-id", "user-1234567"),
        ("x-request-id", "0f3c2b1a9d8e7f6a5b4c3d2e1f0a9b8c"),
        ("x-forwarded-for", "203.0.113.9"),
    ] {
        headers.insert(
            http::HeaderName::from_static(k),
            v.parse().expect("header value"),
        );
    }
    let body = br#"{"flight":"LH123","seat":"14C","passengers":[{"name":"A. Traveller"}]}"#;
    let req = Request {
        method: "POST",
        path: "/bookings/42",
        query: "currency=EUR&lang=en",
        headers: &headers,
        body,
        source_ip: Some(std::net::IpAddr::from([203, 0, 113, 9])),
        request_id: "0f3c2b1a9d8e7f6a5b4c3d2e1f0a9b8c",
        protocol: "HTTP/1.1",
        route_path: "/bookings",
        now: std::time::SystemTime::now(),
        claims: None,
    };
    for (name, format) in [
        ("apigw-v2", Payload::ApigwV2),
        ("apigw-v1", Payload::ApigwV1),
        ("alb", Payload::Alb),
    ] {
        c.bench_function(&format!("lambda/encode/{name}"), |b| {
            b.iter(|| encode(format, black_box(&req)))
        });
    }
    let response = br#"{"statusCode":201,"headers":{"content-type":"application/json","x-served-by":"bookings-fn"},"cookies":["session=fn-123; Path=/; HttpOnly"],"body":"{\"booking\":\"42\",\"status\":\"confirmed\"}","isBase64Encoded":false}"#;
    c.bench_function("lambda/decode/apigw-v2", |b| {
        b.iter(|| decode(Payload::ApigwV2, black_box(response)))
    });
    c.bench_function("lambda/encode+decode/apigw-v2", |b| {
        b.iter(|| {
            let event = encode(Payload::ApigwV2, black_box(&req));
            (event.len(), decode(Payload::ApigwV2, black_box(response)))
        })
    });
}

fn jwt(c: &mut Criterion) {
    use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
    use p256::pkcs8::{EncodePrivateKey as _, EncodePublicKey as _};
    use strangle::auth::Verifier;
    use strangle::config::{AuthConfig, KeyFile};

    // As in the proxy: ring verifies; installed before the first token is signed here.
    strangle::auth::crypto::install();
    let mut rng = rsa::rand_core::OsRng;
    let rsa_key = rsa::RsaPrivateKey::new(&mut rng, 2048).expect("rsa key");
    let rsa_private = rsa_key.to_pkcs8_pem(Default::default()).expect("pem");
    let rsa_public = rsa_key
        .to_public_key()
        .to_public_key_pem(Default::default())
        .expect("pem");
    let ec_key = p256::SecretKey::random(&mut rng);
    let ec_private = ec_key.to_pkcs8_pem(Default::default()).expect("pem");
    let ec_public = ec_key
        .public_key()
        .to_public_key_pem(Default::default())
        .expect("pem");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("time")
        .as_secs();
    let claims = serde_json::json!({"iss": "https://issuer.test/", "aud": "bookings", "sub": "user-1", "exp": now + 3600, "scope": "bookings:read"});
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("runtime");

    for (name, alg, private, public) in [
        (
            "RS256",
            Algorithm::RS256,
            EncodingKey::from_rsa_pem(rsa_private.as_bytes()),
            rsa_public,
        ),
        (
            "ES256",
            Algorithm::ES256,
            EncodingKey::from_ec_pem(ec_private.as_bytes()),
            ec_public,
        ),
    ] {
        // The config carries the key's text; the verifier reads no file.
        let key_file = KeyFile {
            path: format!("{name}.pem").into(),
            text: public,
        };
        let token =
            encode(&Header::new(alg), &claims, &private.expect("encoding key")).expect("token");
        let mut headers = HeaderMap::new();
        headers.insert(
            "authorization",
            format!("Bearer {token}").parse().expect("header"),
        );
        for cache in [0, 10_000] {
            let verifier = Verifier::new(AuthConfig {
                name: "bench".into(),
                jwks_url: None,
                key_files: vec![key_file.clone()],
                issuer: "https://issuer.test/".into(),
                audiences: vec!["bookings".into()],
                algorithms: vec![alg],
                leeway: std::time::Duration::from_secs(5),
                cookie: None,
                forward_claims: Vec::new(),
                require: Vec::new(),
                jwks_refresh: std::time::Duration::from_secs(300),
                jwks_max_stale: std::time::Duration::from_secs(3600),
                unknown_kid_cooldown: std::time::Duration::from_secs(30),
                token_cache: cache,
            })
            .expect("verifier");
            let label = if cache == 0 { "uncached" } else { "cached" };
            c.bench_function(&format!("jwt/{name}/{label}"), |b| {
                b.iter(|| {
                    runtime
                        .block_on(verifier.verify(black_box(&headers)))
                        .expect("valid token")
                })
            });
        }
    }
}

/// What a reload costs off the request path: parsing and validating the TOML, then building
/// the snapshot (route table, upstreams, splits), fresh and reusing the previous snapshot's
/// unchanged upstreams as a reload does.
fn reload(c: &mut Criterion) {
    use strangle::state::Snapshot;
    use strangle::stats::Registry;

    let mut g = c.benchmark_group("reload");
    for n in [10, 100, 1000] {
        let mut text = String::from("[server]\ndefault = \"u0\"\n");
        for u in 0..10 {
            text.push_str(&format!(
                "[upstreams.u{u}]\naddresses = [\"127.0.0.1:{}\", \"127.0.0.2:{}\"]\n",
                9000 + u,
                9000 + u
            ));
        }
        for i in 0..n {
            text.push_str(&format!(
                "[[routes]]\nid = \"r{i}\"\npath = \"/api/v{}/service-{i}\"\nlegacy = \"u{}\"\nnew = \"u{}\"\nshift = \"{}%\"\nsticky = \"header:x-user-id\"\n",
                i % 3,
                i % 10,
                (i + 1) % 10,
                i % 100
            ));
        }
        let base = std::path::Path::new(".");
        g.bench_with_input(BenchmarkId::new("parse", n), &text, |b, t| {
            b.iter(|| strangle::config::parse("bench.toml", black_box(t), base).expect("config"))
        });
        let registry = Registry::default();
        let config = strangle::config::parse("bench.toml", &text, base).expect("config");
        g.bench_with_input(BenchmarkId::new("snapshot", n), &config, |b, cfg| {
            b.iter(|| Snapshot::build(black_box(cfg.clone()), None, &registry).expect("snapshot"))
        });
        let previous = Snapshot::build(config.clone(), None, &registry).expect("snapshot");
        g.bench_with_input(
            BenchmarkId::new("snapshot_reusing", n),
            &config,
            |b, cfg| {
                b.iter(|| {
                    Snapshot::build(black_box(cfg.clone()), Some(&previous), &registry)
                        .expect("snapshot")
                })
            },
        );
    }
    g.finish();
}

criterion_group!(
    benches,
    route_lookup,
    host_lookup,
    paths,
    forward_policy,
    plugin_chain,
    split,
    lambda_events,
    jwt,
    reload
);
criterion_main!(benches);
