//! Two tiny HTTP apps for trying strangle on loopback: a "legacy" monolith and its "new"
//! replacement. Each answers every request with a JSON line naming itself.
//!
//! Run with: cargo run --example backends -- 127.0.0.1:8081 127.0.0.1:8082
//! then: strangle serve -c examples/demo.toml, and
//! curl -s -H 'x-user-id: alice' http://127.0.0.1:8080/bookings/42

use std::convert::Infallible;
use std::net::SocketAddr;

use http_body_util::Full;
use hyper::body::Bytes;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;

async fn serve(name: &'static str, addr: SocketAddr) -> std::io::Result<()> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    println!("{name} app listening on http://{addr}");
    loop {
        let (stream, _) = listener.accept().await?;
        tokio::spawn(async move {
            let service = service_fn(move |req: Request<hyper::body::Incoming>| async move {
                let body = format!(
                    "{{\"served_by\":\"{name}\",\"method\":\"{}\",\"path\":\"{}\",\"request_id\":\"{}\"}}\n",
                    req.method(),
                    req.uri().path(),
                    req.headers().get("x-request-id").and_then(|v| v.to_str().ok()).unwrap_or("")
                );
                Ok::<_, Infallible>(
                    Response::builder()
                        .header("content-type", "application/json")
                        .header("x-served-by", name)
                        .body(Full::new(Bytes::from(body)))
                        .unwrap_or_default(),
                )
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> std::io::Result<()> {
    let mut args = std::env::args().skip(1);
    let parse = |a: Option<String>, default: &str| {
        a.unwrap_or_else(|| default.to_string())
            .parse::<SocketAddr>()
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))
    };
    let legacy = parse(args.next(), "127.0.0.1:8081")?;
    let new = parse(args.next(), "127.0.0.1:8082")?;
    tokio::try_join!(serve("legacy", legacy), serve("new", new))?;
    Ok(())
}
