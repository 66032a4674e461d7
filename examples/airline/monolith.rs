//! The airline's legacy monolith: one HTTP app serving `/bookings`, `/flights` and `/profile`.
//! strangle moves `/bookings` from here to the new Lambda function, route by route.
//!
//! Run with: cargo run --example airline-monolith [-- 127.0.0.1:8081]
//! then: curl -s http://127.0.0.1:8081/flights/LH123

use std::convert::Infallible;
use std::net::SocketAddr;

use http_body_util::Full;
use hyper::body::Bytes;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;

fn handle(req: &Request<hyper::body::Incoming>) -> (StatusCode, String) {
    let path = req.uri().path();
    let mut parts = path.trim_start_matches('/').splitn(2, '/');
    let (section, rest) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let user = req
        .headers()
        .get("x-user-id")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("guest");
    match section {
        "bookings" => (
            if req.method() == "POST" {
                StatusCode::CREATED
            } else {
                StatusCode::OK
            },
            format!(r#"{{"served_by":"monolith","booking":"{rest}","passenger":"{user}"}}"#),
        ),
        "flights" => (
            StatusCode::OK,
            format!(r#"{{"served_by":"monolith","flight":"{rest}","status":"on time"}}"#),
        ),
        "profile" => (
            StatusCode::OK,
            format!(r#"{{"served_by":"monolith","user":"{user}","tier":"gold"}}"#),
        ),
        _ => (
            StatusCode::NOT_FOUND,
            r#"{"error":"no such page"}"#.to_string(),
        ),
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> std::io::Result<()> {
    let addr: SocketAddr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:8081".into())
        .parse()
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
    let listener = tokio::net::TcpListener::bind(addr).await?;
    println!("airline monolith on http://{addr}");
    loop {
        let (stream, _) = listener.accept().await?;
        tokio::spawn(async move {
            let service = service_fn(|req: Request<hyper::body::Incoming>| async move {
                let (status, body) = handle(&req);
                Ok::<_, Infallible>(
                    Response::builder()
                        .status(status)
                        .header("content-type", "application/json")
                        .header("x-served-by", "monolith")
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
