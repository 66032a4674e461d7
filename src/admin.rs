//! The admin API, on its own listener (`[admin] listen`, loopback by default).
//!
//! | endpoint                  | what it does                                           |
//! |---------------------------|--------------------------------------------------------|
//! | `GET /status`             | the migration at a glance, JSON (see `status`)         |
//! | `PUT /routes/{id}/shift`  | `{"percent": 25}`: set a route's shift, saved to file  |
//! | `POST /reload`            | reload the config file now                             |
//! | `GET /metrics`            | Prometheus text                                        |
//! | `GET /ready`              | 200 while serving, 503 once draining                   |
//! | `GET /live`               | 200 while the process runs                             |
//!
//! Mutating calls (`PUT`, `POST`) need `Authorization: Bearer <token>` whenever a token is
//! configured, and the config refuses an admin listener off the loopback without one. Every
//! change goes through `apply`, the one place that changes live state; the CLI is a client.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use http::{header, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use serde_json::json;

use crate::edit;
use crate::split::Shift;
use crate::state::Live;
use crate::telemetry::AccessLogger;

/// How long a shift watches the config file after saving it before it answers.
const SETTLE: std::time::Duration = std::time::Duration::from_millis(50);

/// A change to live state.
#[derive(Debug)]
pub enum Command {
    SetShift { route: String, shift: Shift },
    Reload,
}

/// Why a command failed, with the HTTP status it maps to.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    #[error("no route `{route}`; known routes: {known}")]
    NoSuchRoute { route: String, known: String },
    #[error(transparent)]
    Edit(#[from] edit::EditError),
    #[error("reload failed; still serving the previous config:\n{0}")]
    Reload(String),
    #[error(
        "the shift of `{route}` was saved, but another writer changed the config file again \
         right after and it now says {now}; look at the file and run the shift again"
    )]
    Overwritten { route: String, now: String },
}

impl AdminError {
    fn status(&self) -> StatusCode {
        match self {
            AdminError::NoSuchRoute { .. } => StatusCode::NOT_FOUND,
            AdminError::Edit(
                edit::EditError::ReadOnly { .. }
                | edit::EditError::Conflict { .. }
                | edit::EditError::Lock { .. },
            )
            | AdminError::Overwritten { .. } => StatusCode::CONFLICT,
            AdminError::Edit(edit::EditError::NoSuchRoute { .. }) => StatusCode::NOT_FOUND,
            AdminError::Edit(edit::EditError::Invalid(_)) | AdminError::Reload(_) => {
                StatusCode::UNPROCESSABLE_ENTITY
            }
            AdminError::Edit(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

/// Applies a command: the file is changed first (it is the source of truth), then reloaded.
pub async fn apply(
    live: &Arc<Live>,
    command: Command,
    who: &str,
) -> Result<serde_json::Value, AdminError> {
    match command {
        Command::SetShift { route, shift } => {
            let _one_edit_at_a_time = live.edit_lock.lock().await;
            let snap = live.load();
            let Some(r) = snap.config.routes.iter().find(|r| r.id == route) else {
                let known: Vec<&str> = snap.config.routes.iter().map(|r| r.id.as_str()).collect();
                return Err(AdminError::NoSuchRoute {
                    route,
                    known: known.join(", "),
                });
            };
            let from = r.shift;
            // The file is the truth: answer 200 only when the config read back from it after
            // the edit has the shift. A writer that saved a stale copy in between dropped it;
            // apply it again on top of theirs, a few times, then say so.
            let mut now = from;
            for _ in 0..3 {
                let (path, id) = (live.path.clone(), route.clone());
                tokio::task::spawn_blocking(move || edit::set_shift_in_file(&path, &id, shift))
                    .await
                    .map_err(|e| AdminError::Reload(e.to_string()))??;
                live.reload().await.map_err(AdminError::Reload)?;
                // An editor that read the file before this save and writes its copy now would
                // drop the shift a moment after we answered: watch the file for that moment.
                tokio::time::sleep(SETTLE).await;
                live.reload_if_changed().await.map_err(AdminError::Reload)?;
                now = live
                    .load()
                    .config
                    .routes
                    .iter()
                    .find(|r| r.id == route)
                    .map_or(Shift::ZERO, |r| r.shift);
                if now == shift {
                    break;
                }
            }
            if now != shift {
                return Err(AdminError::Overwritten {
                    route,
                    now: now.to_string(),
                });
            }
            tracing::info!(route = %route, from = %from, to = %shift, client = %who, "shift changed");
            Ok(
                json!({ "route": route, "from": from.to_string(), "to": shift.to_string(), "file": live.path.display().to_string() }),
            )
        }
        Command::Reload => {
            live.reload().await.map_err(AdminError::Reload)?;
            tracing::info!(client = %who, "config reloaded on request");
            Ok(json!({ "reloaded": live.path.display().to_string() }))
        }
    }
}

/// The admin server, run beside the proxy.
pub struct AdminService {
    pub live: Arc<Live>,
    pub access: Arc<AccessLogger>,
    /// Bound before the server starts, so a port clash fails start-up with a clear error.
    pub listener: std::sync::Mutex<Option<std::net::TcpListener>>,
}

#[async_trait]
impl BackgroundService for AdminService {
    // Keeps answering while the proxy drains after SIGTERM, so `/ready` can say 503 and the
    // last scrapes of `/metrics` still work; the process exit ends it.
    async fn start(&self, _shutdown: ShutdownWatch) {
        let Some(std_listener) = self.listener.lock().ok().and_then(|mut l| l.take()) else {
            return;
        };
        let listener = match tokio::net::TcpListener::from_std(std_listener) {
            Ok(l) => l,
            Err(e) => {
                tracing::error!("admin listener: {e}");
                return;
            }
        };
        loop {
            let (stream, peer) = match listener.accept().await {
                Ok(s) => s,
                Err(e) => {
                    tracing::warn!("admin accept: {e}");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            };
            let (live, access) = (Arc::clone(&self.live), Arc::clone(&self.access));
            tokio::spawn(async move {
                let service = service_fn(move |req| {
                    let (live, access) = (Arc::clone(&live), Arc::clone(&access));
                    async move {
                        Ok::<_, std::convert::Infallible>(handle(req, peer, &live, &access).await)
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    }
}

fn reply(status: StatusCode, content_type: &str, body: impl Into<Bytes>) -> Response<Full<Bytes>> {
    Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, content_type)
        .header(header::CACHE_CONTROL, "no-store")
        .body(Full::new(body.into()))
        .unwrap_or_default()
}

fn json_reply(status: StatusCode, value: &serde_json::Value) -> Response<Full<Bytes>> {
    let mut body = serde_json::to_vec_pretty(value).unwrap_or_default();
    body.push(b'\n');
    reply(status, "application/json", body)
}

fn error(status: StatusCode, message: impl std::fmt::Display) -> Response<Full<Bytes>> {
    json_reply(status, &json!({ "error": message.to_string() }))
}

const ENDPOINTS: &str =
    "GET /status, PUT /routes/{id}/shift, POST /reload, GET /metrics, GET /ready, GET /live";

/// Compares without leaking the position of the first difference through timing.
fn same_secret(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

async fn handle(
    req: Request<Incoming>,
    peer: SocketAddr,
    live: &Arc<Live>,
    access: &AccessLogger,
) -> Response<Full<Bytes>> {
    let path = req.uri().path().to_string();
    let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
    let method = req.method().clone();
    let mutating = matches!(
        (&method, segments.as_slice()),
        (&Method::PUT, ["routes", _, "shift"]) | (&Method::POST, ["reload"])
    );
    if mutating {
        if let Some(token) = live.load().config.admin.token.as_deref() {
            let given = req
                .headers()
                .get(header::AUTHORIZATION)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.strip_prefix("Bearer "))
                .map(str::trim);
            if !given.is_some_and(|g| same_secret(g.as_bytes(), token.as_bytes())) {
                tracing::warn!(client = %peer, %path, "admin call refused: missing or wrong token");
                let mut r = error(
                    StatusCode::UNAUTHORIZED,
                    "this call needs `Authorization: Bearer <admin token>`",
                );
                r.headers_mut().insert(
                    header::WWW_AUTHENTICATE,
                    http::HeaderValue::from_static("Bearer realm=\"strangle-admin\""),
                );
                return r;
            }
        }
    }
    let who = peer.to_string();
    match (&method, segments.as_slice()) {
        (&Method::GET, ["status"]) => {
            let status = crate::status::build(live);
            json_reply(
                StatusCode::OK,
                &serde_json::to_value(status).unwrap_or_default(),
            )
        }
        (&Method::GET, ["metrics"]) => reply(
            StatusCode::OK,
            "text/plain; version=0.0.4; charset=utf-8",
            crate::metrics::render(live, access.dropped.load(Ordering::Relaxed)),
        ),
        (&Method::GET, ["live"]) => reply(StatusCode::OK, "text/plain", "live\n"),
        (&Method::GET, ["ready"]) => {
            if crate::proxy::DRAINING.load(Ordering::Acquire) {
                reply(StatusCode::SERVICE_UNAVAILABLE, "text/plain", "draining\n")
            } else {
                reply(StatusCode::OK, "text/plain", "ready\n")
            }
        }
        (&Method::PUT, ["routes", id, "shift"]) => {
            let id = id.to_string();
            let body = match Limited::new(req.into_body(), 4096).collect().await {
                Ok(b) => b.to_bytes(),
                Err(e) => {
                    return error(
                        StatusCode::BAD_REQUEST,
                        format!("cannot read the body: {e}"),
                    )
                }
            };
            let percent = match serde_json::from_slice::<serde_json::Value>(&body)
                .ok()
                .and_then(|v| v.get("percent").cloned())
            {
                Some(serde_json::Value::Number(n)) => n.to_string(),
                Some(serde_json::Value::String(s)) => s,
                _ => {
                    return error(
                        StatusCode::BAD_REQUEST,
                        "send a JSON body like {\"percent\": 25} or {\"percent\": \"0.5%\"}",
                    )
                }
            };
            let shift = match Shift::parse(&percent) {
                Ok(s) => s,
                Err(e) => return error(StatusCode::BAD_REQUEST, e),
            };
            match apply(live, Command::SetShift { route: id, shift }, &who).await {
                Ok(v) => json_reply(StatusCode::OK, &v),
                Err(e) => {
                    tracing::warn!(client = %who, "shift refused: {e}");
                    error(e.status(), e)
                }
            }
        }
        (&Method::POST, ["reload"]) => match apply(live, Command::Reload, &who).await {
            Ok(v) => json_reply(StatusCode::OK, &v),
            Err(e) => error(e.status(), e),
        },
        (_, ["status" | "metrics" | "live" | "ready"])
        | (_, ["reload"])
        | (_, ["routes", _, "shift"]) => error(
            StatusCode::METHOD_NOT_ALLOWED,
            format!("{method} is not allowed on {path}; endpoints: {ENDPOINTS}"),
        ),
        _ => error(
            StatusCode::NOT_FOUND,
            format!("no endpoint {path}; endpoints: {ENDPOINTS}"),
        ),
    }
}
