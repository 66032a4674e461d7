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

/// The fast path's whole per-request work without sockets, for the load benchmark's two
/// strangle targets:
/// - "routing": a route with a 25% sticky split by header, access log off;
/// - "full": the same route behind JWT (RS256, token cache on), the split sticky by the
///   token's `sub`, a rate limit and `max-in-flight` far above the load, the `sub` claim
///   forwarded as a header, and the access log written to a file.
///
/// A kept-alive client connection and a pooled upstream connection, both in-memory pipes. One
/// request per iteration: the head read and parsed, guard and decide, the outbound policy, the
/// head written upstream, the upstream's response (24 bytes of body) read, framed and written
/// back, the account step, the connection handed back for the next request. The difference
/// between the two is what the full pipeline costs over routing. "upload" is routing with a
/// 4 KB request body; "full-traced" the full pipeline with tracing at 1%.
fn fast_path(c: &mut Criterion) {
    const ROUTE: &str = "[[routes]]\nid = \"bookings\"\npath = \"/bookings\"\n\
        legacy = \"monolith\"\nnew = \"new\"\nshift = \"25%\"\n";
    const UPSTREAMS: &str = "[upstreams.monolith]\naddresses = [\"127.0.0.1:9\"]\n\
        max-in-flight = 1000\n[upstreams.new]\naddresses = [\"127.0.0.1:9\"]\n\
        max-in-flight = 1000\n";
    const SERVER: &str =
        "[server]\nlisten = [\"127.0.0.1:1\"]\nthreads = 1\ndefault = \"monolith\"\n";
    let routing = format!(
        "{SERVER}[log]\naccess = \"off\"\nlevel = \"warn\"\n{UPSTREAMS}{ROUTE}\
         sticky = \"header:x-user-id\"\n"
    );
    run(
        c,
        "fast_path/request",
        &routing,
        b"GET /bookings/42 HTTP/1.1\r\nHost: 127.0.0.1\r\nx-user-id: user-1\r\n\r\n",
    );

    // An upload: the same route, a 4 KB body streamed up (`benches/uploads.sh` under load).
    let mut upload = b"POST /bookings/42 HTTP/1.1\r\nHost: 127.0.0.1\r\nx-user-id: user-1\r\n\
          Content-Length: 4096\r\n\r\n"
        .to_vec();
    upload.resize(upload.len() + 4096, b'a');
    run(c, "fast_path/upload", &routing, &upload);

    let dir = std::env::temp_dir().join(format!("strangle-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("a temporary directory");
    let (public, token) = rs256_token();
    std::fs::write(dir.join("rsa.pem"), public).expect("key written");
    let full = format!(
        "{SERVER}[log]\naccess = \"{access}\"\nlevel = \"warn\"\n\
         [auth.users]\nkeys = [\"{key}\"]\nissuer = \"https://issuer.test/\"\n\
         audiences = [\"bookings\"]\nalgorithms = [\"RS256\"]\n\
         forward-claims = {{ sub = \"x-user-id\" }}\n{UPSTREAMS}{ROUTE}\
         sticky = \"jwt:sub\"\nauth = \"users\"\n\
         rate-limit = {{ requests = 10000000, per = \"1s\", burst = 10000000, key = \"jwt:sub\" }}\n",
        access = dir.join("access.log").display(),
        key = dir.join("rsa.pem").display(),
    );
    let request = format!(
        "GET /bookings/42 HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {token}\r\n\r\n"
    );
    run(c, "fast_path/full", &full, request.as_bytes());
    // The same with tracing on at 1% (what the load benchmark's full row runs): every request
    // gets a trace context and a `traceparent` upstream, one in a hundred leaves its spans on
    // the queue (here nobody empties it: once full, they are dropped and counted).
    let traced =
        format!("{full}[telemetry.otlp]\nendpoint = \"http://127.0.0.1:9\"\nsample-ratio = 0.01\n");
    run(c, "fast_path/full-traced", &traced, request.as_bytes());
    let _ = std::fs::remove_dir_all(&dir);
}

/// An RS256 public key (PEM) and a token it verifies, valid for an hour.
fn rs256_token() -> (String, String) {
    use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
    use rsa::pkcs8::{EncodePrivateKey as _, EncodePublicKey as _};

    strangle::auth::crypto::install();
    let key = rsa::RsaPrivateKey::new(&mut rsa::rand_core::OsRng, 2048).expect("rsa key");
    let private = key.to_pkcs8_pem(Default::default()).expect("pem");
    let public = key
        .to_public_key()
        .to_public_key_pem(Default::default())
        .expect("pem");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("time")
        .as_secs();
    let claims = serde_json::json!({"iss": "https://issuer.test/", "aud": "bookings",
        "sub": "user-1", "exp": now + 3600});
    let signing = EncodingKey::from_rsa_pem(private.as_bytes()).expect("encoding key");
    let token = encode(&Header::new(Algorithm::RS256), &claims, &signing).expect("token");
    (public, token)
}

/// Measures one request at a time through the fast path for `text` (a config).
/// The `Content-Length` of a request head, 0 without one.
fn content_length(head: &[u8]) -> usize {
    String::from_utf8_lossy(head)
        .lines()
        .find_map(|l| {
            let (name, value) = l.split_once(':')?;
            name.eq_ignore_ascii_case("content-length")
                .then(|| value.trim().parse().ok())?
        })
        .unwrap_or(0)
}

fn run(c: &mut Criterion, name: &str, text: &str, request: &[u8]) {
    const BODY: &[u8] = b"abcdefghijklmnopqrstuvwx";

    /// The upstream: answers every request head on the pipe.
    async fn upstream(mut pipe: DuplexStream) {
        let mut got = Vec::new();
        let mut buf = [0u8; 4096];
        loop {
            match pipe.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => got.extend_from_slice(&buf[..n]),
            }
            // A whole request (its head, and as many bytes of body as it says) is answered.
            while let Some(end) = got.windows(4).position(|w| w == b"\r\n\r\n") {
                let length = content_length(&got[..end]);
                if got.len() < end + 4 + length {
                    break;
                }
                got.drain(..end + 4 + length);
                let head =
                    b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 24\r\n\r\n";
                if pipe.write_all(head).await.is_err() || pipe.write_all(BODY).await.is_err() {
                    return;
                }
            }
        }
    }

    let config =
        strangle::config::parse("bench.toml", text, std::path::Path::new("/")).expect("config");
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
    c.bench_function(name, |b| {
        b.iter_custom(|iters| {
            rt.block_on(async {
                let (mut client, mut stream, mut carried) = state.take().expect("state");
                let mut answer = Vec::with_capacity(1024);
                let mut buf = [0u8; 4096];
                let start = Instant::now();
                for _ in 0..iters {
                    client.write_all(request).await.expect("request written");
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
