//! The HTTP/1 fast path's per-request work without sockets (`proxy::Fast`), with the binary's
//! allocator (mimalloc).
//! Run with: cargo bench --bench fast_path

// A benchmark whose set-up fails has nothing to measure: it stops there, saying why.
#![allow(clippy::expect_used, clippy::panic)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion};
use strangle::http1::{Engine, SessionSetup};
use strangle::proxy::{Fast, Strangle};
use strangle::state::{Live, Snapshot};
use strangle::stats::Registry;
use strangle::telemetry::AccessLogger;
use strangle::upstream::Kind;
use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};

/// The binary's allocator.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// The fast path's whole per-request work without sockets: a kept-alive client connection and
/// a pooled upstream connection, both in-memory pipes; the config of the load benchmark's
/// "routing" target (a route with a 25% sticky split, access log off). One request per
/// iteration: the head read and parsed, guard and decide, the outbound policy, the head
/// written upstream, the upstream's response (24 bytes of body) read, framed and written back,
/// the account step, the connection handed back for the next request.
fn fast_path(c: &mut Criterion) {
    const BODY: &[u8] = b"abcdefghijklmnopqrstuvwx";
    const REQUEST: &[u8] =
        b"GET /bookings/42 HTTP/1.1\r\nHost: 127.0.0.1\r\nx-user-id: user-1\r\n\r\n";

    /// The upstream: answers every request head on the pipe.
    async fn upstream(mut pipe: DuplexStream) {
        let mut got = Vec::new();
        let mut buf = [0u8; 4096];
        loop {
            match pipe.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => got.extend_from_slice(&buf[..n]),
            }
            while let Some(end) = got.windows(4).position(|w| w == b"\r\n\r\n") {
                got.drain(..end + 4);
                let head =
                    b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 24\r\n\r\n";
                if pipe.write_all(head).await.is_err() || pipe.write_all(BODY).await.is_err() {
                    return;
                }
            }
        }
    }

    let text = "[server]\nlisten = [\"127.0.0.1:1\"]\nthreads = 1\ndefault = \"monolith\"\n\
        [log]\naccess = \"off\"\nlevel = \"warn\"\n\
        [upstreams.monolith]\naddresses = [\"127.0.0.1:9\"]\n\
        [upstreams.new]\naddresses = [\"127.0.0.1:9\"]\n\
        [[routes]]\nid = \"bookings\"\npath = \"/bookings\"\nlegacy = \"monolith\"\nnew = \"new\"\n\
        shift = \"25%\"\nsticky = \"header:x-user-id\"\n";
    let config =
        strangle::config::parse("bench.toml", text, std::path::Path::new(".")).expect("config");
    let access = Arc::new(AccessLogger::new(config.log.access.clone()));
    let registry = Arc::new(Registry::default());
    let snapshot = Snapshot::build(config, None, &registry).expect("snapshot");
    let live = Arc::new(Live::new("bench.toml".into(), snapshot, registry));
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let (fast, peer) = rt.block_on(async {
        let strangle = Strangle {
            live: Arc::clone(&live),
            access,
        };
        let fast = Fast::new(strangle, &Default::default());
        // The address user-1's requests go to (both upstreams have the same one).
        let snap = live.load();
        let Kind::Http(http) = &snap.upstreams["monolith"].kind else {
            panic!("monolith is an HTTP upstream");
        };
        let peer = http.peer(&http.select(None).expect("an address"));
        (fast, peer)
    });
    let (shutdown_tx, shutdown) = tokio::sync::watch::channel(false);
    let (proxy_end, upstream_end) = tokio::io::duplex(64 * 1024);
    rt.spawn(upstream(upstream_end));
    Fast::keep_idle(&peer, Box::new(proxy_end));
    let (client, server_end) = tokio::io::duplex(64 * 1024);
    let mut state = Some((
        client,
        Box::new(server_end) as pingora::protocols::Stream,
        None,
    ));
    c.bench_function("fast_path/request", |b| {
        b.iter_custom(|iters| {
            rt.block_on(async {
                let (mut client, mut stream, mut carried) = state.take().expect("state");
                let mut answer = Vec::with_capacity(1024);
                let mut buf = [0u8; 4096];
                let start = Instant::now();
                for _ in 0..iters {
                    client.write_all(REQUEST).await.expect("request written");
                    let setup = SessionSetup::new(carried.take(), None, Some(60));
                    let served = fast
                        .serve(stream, setup, &shutdown)
                        .await
                        .expect("the connection is kept alive");
                    (stream, carried) = served.reused.consume();
                    answer.clear();
                    while !answer.ends_with(BODY) {
                        let n = client.read(&mut buf).await.expect("response read");
                        assert!(n > 0, "the response ended early");
                        answer.extend_from_slice(&buf[..n]);
                    }
                }
                let took: Duration = start.elapsed();
                state = Some((client, stream, carried));
                took
            })
        })
    });
    drop(shutdown_tx);
}

criterion_group!(benches, fast_path);
criterion_main!(benches);
