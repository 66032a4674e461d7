//! The admin handler called in-process: no listener, no socket, a `Full<Bytes>` body.

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http::{header, Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};

use super::{handle, Addresses};
use crate::config::AccessLog;
use crate::state::{Live, Snapshot};
use crate::stats::Registry;
use crate::telemetry::AccessLogger;

const TOKEN: &str = "s3cret-admin-token";

struct Admin {
    live: Arc<Live>,
    access: AccessLogger,
    _dir: tempfile::TempDir,
}

fn admin() -> Admin {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("strangle.toml");
    let text = format!(
        "[admin]\ntoken = \"{TOKEN}\"\n\n[upstreams.legacy]\naddresses = [\"127.0.0.1:9\"]\n\n\
         [upstreams.new]\naddresses = [\"127.0.0.1:10\"]\n\n[[routes]]\nid = \"bookings\"\n\
         path = \"/bookings\"\nlegacy = \"legacy\"\nnew = \"new\"\nshift = \"0%\"\n"
    );
    std::fs::write(&path, &text).unwrap();
    let config = crate::config::load(&path).unwrap();
    let registry = Arc::new(Registry::default());
    let snapshot = Snapshot::build(config, None, &registry).unwrap();
    Admin {
        live: Arc::new(Live::new(path, snapshot, registry)),
        access: AccessLogger::new(AccessLog::Off),
        _dir: dir,
    }
}

fn at() -> Addresses {
    let listen: SocketAddr = "127.0.0.1:9901".parse().unwrap();
    Addresses {
        peer: "127.0.0.1:50000".parse().unwrap(),
        local: listen,
        listen,
    }
}

fn request(method: Method, path: &str, token: Option<&str>, body: &str) -> Request<Full<Bytes>> {
    let mut r = Request::builder()
        .method(method)
        .uri(path)
        .header(header::HOST, "127.0.0.1:9901");
    if let Some(t) = token {
        r = r.header(header::AUTHORIZATION, format!("Bearer {t}"));
    }
    r.body(Full::new(Bytes::from(body.to_string()))).unwrap()
}

impl Admin {
    async fn call(&self, req: Request<Full<Bytes>>) -> (StatusCode, String) {
        let resp = handle(req, at(), &self.live, &self.access).await;
        let status = resp.status();
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        (status, String::from_utf8_lossy(&body).into_owned())
    }
}

#[tokio::test]
async fn reads_answer_without_a_token_and_ready_turns_503_when_draining() {
    let a = admin();
    assert_eq!(
        a.call(request(Method::GET, "/live", None, "")).await,
        (StatusCode::OK, "live\n".into())
    );
    assert_eq!(
        a.call(request(Method::GET, "/ready", None, "")).await.0,
        StatusCode::OK
    );
    let (status, body) = a.call(request(Method::GET, "/status", None, "")).await;
    assert_eq!(status, StatusCode::OK);
    assert!(body.contains("\"bookings\""), "{body}");
    a.live.lifecycle.start_draining();
    assert_eq!(
        a.call(request(Method::GET, "/ready", None, "")).await,
        (StatusCode::SERVICE_UNAVAILABLE, "draining\n".into())
    );
}

#[tokio::test]
async fn a_shift_needs_the_token_and_a_sane_body_then_lands_in_file_and_snapshot() {
    let a = admin();
    let shift = |token, body| request(Method::PUT, "/routes/bookings/shift", token, body);
    assert_eq!(
        a.call(shift(None, r#"{"percent": 25}"#)).await.0,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        a.call(shift(Some("s3cret-admin-tokeN"), r#"{"percent": 25}"#))
            .await
            .0,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        a.call(shift(Some(TOKEN), "not json")).await.0,
        StatusCode::BAD_REQUEST
    );
    assert_eq!(
        a.call(shift(Some(TOKEN), r#"{"percent": 101}"#)).await.0,
        StatusCode::BAD_REQUEST
    );
    let huge = format!(r#"{{"percent": 25, "pad": "{}"}}"#, "x".repeat(20 << 10));
    assert_eq!(
        a.call(shift(Some(TOKEN), &huge)).await.0,
        StatusCode::PAYLOAD_TOO_LARGE
    );
    let (status, body) = a
        .call(request(
            Method::PUT,
            "/routes/nope/shift",
            Some(TOKEN),
            r#"{"percent": 5}"#,
        ))
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert!(body.contains("bookings"), "names the known routes: {body}");
    // Nothing above changed anything.
    assert_eq!(a.live.load().routes[0].shift.to_string(), "0%");

    let (status, body) = a.call(shift(Some(TOKEN), r#"{"percent": 25}"#)).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(a.live.load().routes[0].shift.to_string(), "25%");
    let file = std::fs::read_to_string(&a.live.path).unwrap();
    assert!(file.contains("shift = \"25%\""), "{file}");
}

#[tokio::test]
async fn a_foreign_host_is_refused_even_with_the_token() {
    let a = admin();
    let mut req = request(Method::POST, "/reload", Some(TOKEN), "");
    req.headers_mut()
        .insert(header::HOST, "evil.example:9901".parse().unwrap());
    let (status, body) = a.call(req).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    assert!(body.contains("DNS rebinding"), "{body}");
}

#[tokio::test]
async fn a_reload_of_a_broken_file_is_a_typed_422_and_keeps_serving() {
    let a = admin();
    std::fs::write(&a.live.path, "[[routes]]\nid = \"x\"\n").unwrap();
    let (status, body) = a
        .call(request(Method::POST, "/reload", Some(TOKEN), ""))
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert!(body.contains("still serving the previous config"), "{body}");
    assert_eq!(a.live.load().routes[0].id, "bookings");
    assert!(a.live.last_failure().is_some());
    let err = a
        .live
        .reload(&crate::history::Cause::FILE)
        .await
        .unwrap_err();
    assert_eq!(err.kind(), "invalid");
}

#[tokio::test]
async fn unknown_endpoints_and_methods_say_what_exists() {
    let a = admin();
    let (status, body) = a.call(request(Method::GET, "/nope", None, "")).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert!(body.contains("GET /status"), "{body}");
    let (status, _) = a.call(request(Method::DELETE, "/status", None, "")).await;
    assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED);
}
