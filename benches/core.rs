//! Micro-benchmarks of the per-request work that is strangle's own: path normalisation, route
//! lookup and the split decision.
//! Run with: cargo bench --bench core

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use http::{HeaderMap, Method};
use strangle::routing::{normalize, PathMatch, RouteKey, RouteTable};
use strangle::split::{bucket, route_seed, side_for, KeyValue, Shift, StickyKey};

fn table(n: usize) -> RouteTable {
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
            })
            .collect(),
    )
}

fn route_lookup(c: &mut Criterion) {
    let mut g = c.benchmark_group("route_lookup");
    for n in [10, 100, 1000] {
        let t = table(n);
        let hit = format!("/api/v{}/service-{}/items/42", (n - 1) % 3, n - 1);
        g.bench_with_input(BenchmarkId::new("hit", n), &hit, |b, p| {
            b.iter(|| t.lookup(black_box(p), &Method::GET))
        });
        g.bench_with_input(BenchmarkId::new("miss", n), &"/static/app.js", |b, p| {
            b.iter(|| t.lookup(black_box(p), &Method::GET))
        });
    }
    g.finish();
}

fn paths(c: &mut Criterion) {
    c.bench_function("normalize/clean", |b| {
        b.iter(|| normalize(black_box("/bookings/42/seats?x=1")))
    });
    c.bench_function("normalize/dirty", |b| {
        b.iter(|| normalize(black_box("//bookings/./42/../43")))
    });
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
    use strangle::lambda::event::{decode, encode, Payload, Request};
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

criterion_group!(benches, route_lookup, paths, split, lambda_events);
criterion_main!(benches);
