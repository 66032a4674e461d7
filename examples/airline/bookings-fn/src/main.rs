//! The airline's new bookings service, a Lambda function written with `lambda_http`. strangle
//! sends it a share of `/bookings` traffic; the monolith serves the rest.
//!
//! Besides the bookings API it has a few paths the integration tests use to exercise the
//! proxy's event mapping: `/bookings/echo` (returns what it received), `/bookings/binary`
//! (returns the request body as `application/octet-stream`), `/bookings/fail` (a function
//! error), `/bookings/sleep?ms=N` (a slow function) and `/bookings/big?bytes=N`.

use lambda_http::{run, service_fn, Body, Error, IntoResponse, Request, RequestExt, Response};
use serde_json::json;

async fn handle(req: Request) -> Result<Response<Body>, Error> {
    let path = req.uri().path().to_string();
    let query = req.query_string_parameters();
    match path.trim_end_matches('/') {
        "/bookings/fail" => Err("the bookings database is unreachable".into()),
        "/bookings/sleep" => {
            let ms = query.first("ms").and_then(|m| m.parse().ok()).unwrap_or(1000);
            tokio::time::sleep(std::time::Duration::from_millis(ms)).await;
            Ok(json!({ "slept_ms": ms }).into_response().await)
        }
        "/bookings/big" => {
            let n: usize = query.first("bytes").and_then(|m| m.parse().ok()).unwrap_or(1024);
            Ok(Response::builder()
                .header("content-type", "text/plain")
                .body(Body::Text("x".repeat(n)))?)
        }
        "/bookings/binary" => {
            let bytes = req.body().to_vec();
            Ok(Response::builder()
                .header("content-type", "application/octet-stream")
                .body(Body::Binary(bytes))?)
        }
        "/bookings/echo" => {
            let headers: serde_json::Map<String, serde_json::Value> = req
                .headers()
                .iter()
                .map(|(k, v)| (k.to_string(), json!(v.to_str().unwrap_or(""))))
                .collect();
            let params: serde_json::Map<String, serde_json::Value> = query
                .iter()
                .map(|(k, _)| (k.to_string(), json!(query.all(k).unwrap_or_default())))
                .collect();
            let body = String::from_utf8_lossy(req.body()).into_owned();
            Ok(Response::builder()
                .status(200)
                .header("content-type", "application/json")
                .header("x-served-by", "bookings-fn")
                .header("set-cookie", "session=fn-123; Path=/; HttpOnly")
                .header("set-cookie", "theme=dark; Path=/")
                .body(Body::Text(
                    json!({
                        "method": req.method().as_str(),
                        "path": path,
                        "query": params,
                        "headers": headers,
                        "body": body,
                    })
                    .to_string(),
                ))?)
        }
        _ => {
            let booking = path.strip_prefix("/bookings/").unwrap_or("");
            let status = if req.method() == "POST" { 201 } else { 200 };
            Ok(Response::builder()
                .status(status)
                .header("content-type", "application/json")
                .header("x-served-by", "bookings-fn")
                .body(Body::Text(
                    json!({ "served_by": "bookings-fn", "method": req.method().as_str(), "booking": booking }).to_string(),
                ))?)
        }
    }
}

#[tokio::main]
async fn main() -> Result<(), Error> {
    run(service_fn(handle)).await
}
