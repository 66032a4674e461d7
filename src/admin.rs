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
//!
//! What a web page in the operator's browser could make it send is refused with 403: on a
//! loopback listener, a `Host` other than a loopback address, `localhost` or the listener's
//! own address, with any port (DNS rebinding re-points the attacker's name at 127.0.0.1; a
//! port-forward keeps the local names); and on mutating calls, an `Origin` that is not the
//! API's own (`http://` + the Host) or `Sec-Fetch-Site: cross-site`/`same-site` (CSRF). The
//! CLI, curl and Prometheus send neither.
//!
//! The listener cannot exhaust the process: at most `MAX_CONNECTIONS` connections at once (more
//! are closed as soon as they are accepted), a request head must arrive within `HEAD_TIMEOUT`
//! (also how long an idle keep-alive connection is kept), a body within `BODY_TIMEOUT` and
//! `MAX_BODY` bytes, and a failing `accept` backs off. Every error is a JSON `{"error": ...}`
//! that echoes at most `ECHO` characters of what the client sent.

use std::borrow::Cow;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;

use crate::history::Cause;

mod dashboard;
mod fleet;
mod query;
mod reads;
mod replay;
mod rollout;
pub use rollout::RolloutDriver;
mod shift;
use bytes::Bytes;
use http::{header, Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Body;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use serde_json::json;

use crate::edit;
use crate::http1::listener::AcceptBackoff;
use crate::split::Shift;
use crate::state::{Live, ReloadError};
use crate::telemetry::AccessLogger;

/// How long a shift watches the config file after saving it before it answers.
const SETTLE: std::time::Duration = std::time::Duration::from_millis(50);

/// A change to live state.
#[derive(Debug)]
pub enum Command {
    /// `expect`: the shift the change was decided on, if the caller said. `insist`: apply it
    /// again over a writer that saved a stale copy right after (a person's shift); without it
    /// (a rollout's step) another writer's change stands and the step is refused.
    SetShift {
        route: String,
        shift: Shift,
        expect: Option<Shift>,
        insist: bool,
    },
    Reload,
}

/// Why a command failed, with the HTTP status it maps to.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    #[error("no route `{}`; known routes: {known}", clip(route))]
    NoSuchRoute { route: String, known: String },
    #[error(transparent)]
    Edit(#[from] edit::EditError),
    #[error("reload failed; still serving the previous config:\n{0}")]
    Reload(#[from] crate::state::ReloadError),
    #[error(
        "the shift of `{route}` was saved, but another writer changed the config file again \
         right after and it now says {now}; look at the file and run the shift again"
    )]
    Overwritten { route: String, now: String },
    #[error(
        "the shift of `{}` is {now} now, not {expected} as when this change was decided (someone \
         changed it meanwhile); nothing changed: look again and decide on {now}",
        clip(route)
    )]
    Stale {
        route: String,
        now: Shift,
        expected: Shift,
    },
    /// The fleet's ConfigMap could not be written (`conflict`: it kept changing under it).
    #[error("the shift could not be written into the ConfigMap {configmap}: {why}")]
    ConfigMap {
        configmap: String,
        why: String,
        conflict: bool,
    },
}

impl AdminError {
    fn status(&self) -> StatusCode {
        match self {
            AdminError::NoSuchRoute { .. } => StatusCode::NOT_FOUND,
            AdminError::Edit(
                edit::EditError::ReadOnly { .. }
                | edit::EditError::Conflict { .. }
                | edit::EditError::BeingWritten { .. }
                | edit::EditError::Lock { .. },
            )
            | AdminError::Overwritten { .. }
            | AdminError::Stale { .. }
            | AdminError::ConfigMap { conflict: true, .. } => StatusCode::CONFLICT,
            AdminError::ConfigMap { .. } => StatusCode::BAD_GATEWAY,
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
    cause: &Cause,
) -> Result<serde_json::Value, AdminError> {
    let who = cause.client.as_deref().unwrap_or("-");
    match command {
        Command::SetShift {
            route,
            shift,
            expect,
            insist,
        } => {
            let _one_edit_at_a_time = live.edit_lock.lock().await;
            let snap = live.load();
            let Some(r) = snap.config.routes.iter().find(|r| r.id == route) else {
                let known: Vec<&str> = snap.config.routes.iter().map(|r| r.id.as_str()).collect();
                return Err(AdminError::NoSuchRoute {
                    route,
                    known: known.join(", "),
                });
            };
            // Replicas that load their config from a ConfigMap: the shift goes there, for all
            // of them (each reloads it when the kubelet updates its mounted file).
            if let Some(target) = &snap.config.admin.kubernetes {
                return fleet::shift_in_configmap(live, target, &route, shift, expect, who).await;
            }
            let from = r.shift;
            if let Some(expected) = expect.filter(|e| *e != from) {
                return Err(AdminError::Stale {
                    route,
                    now: from,
                    expected,
                });
            }
            let _editing = Editing::start(
                live,
                crate::history::Edit {
                    cause: cause.clone(),
                    route: route.clone(),
                    to: shift.to_string(),
                },
            );
            // The file is the truth: answer 200 only when the config read back from it after
            // the edit has the shift. A writer that saved a stale copy in between dropped it;
            // apply it again on top of theirs, a few times, then say so.
            let mut now = from;
            for _ in 0..if insist { 3 } else { 1 } {
                let (path, id) = (live.path.clone(), route.clone());
                tokio::task::spawn_blocking(move || edit::set_shift_in_file(&path, &id, shift))
                    .await
                    .map_err(|e| AdminError::Reload(ReloadError::Stalled(e.to_string())))??;
                live.reload(cause).await.map_err(AdminError::Reload)?;
                // An editor that read the file before this save and writes its copy now would
                // drop the shift a moment after we answered: watch the file for that moment.
                tokio::time::sleep(SETTLE).await;
                live.reload_if_changed(cause)
                    .await
                    .map_err(AdminError::Reload)?;
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
            let warnings = live.reload(cause).await.map_err(AdminError::Reload)?;
            tracing::info!(client = %who, "config reloaded on request");
            Ok(json!({ "reloaded": live.path.display().to_string(), "warnings": warnings }))
        }
    }
}

/// Marks a shift as being written by an admin call while it lives (see `Live::editing`).
struct Editing<'a>(&'a Live);

impl<'a> Editing<'a> {
    fn start(live: &'a Live, edit: crate::history::Edit) -> Editing<'a> {
        *live.editing.lock().unwrap_or_else(|e| e.into_inner()) = Some(edit);
        Editing(live)
    }
}

impl Drop for Editing<'_> {
    fn drop(&mut self) {
        *self.0.editing.lock().unwrap_or_else(|e| e.into_inner()) = None;
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
        let listen = listener
            .local_addr()
            .unwrap_or_else(|_| self.live.load().config.admin.listen);
        let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
        let mut backoff = AcceptBackoff::new("admin");
        let mut over_cap = OverCap::default();
        loop {
            let (stream, peer) = match listener.accept().await {
                Ok(s) => {
                    backoff.accepted();
                    s
                }
                Err(e) => {
                    tokio::time::sleep(backoff.failed(&e)).await;
                    continue;
                }
            };
            let Ok(slot) = Arc::clone(&slots).try_acquire_owned() else {
                // Closed at once: idle admin connections must not take every file descriptor
                // the proxy needs.
                drop(stream);
                over_cap.refused();
                continue;
            };
            let local = stream.local_addr().unwrap_or(listen);
            let (live, access) = (Arc::clone(&self.live), Arc::clone(&self.access));
            tokio::spawn(async move {
                let _slot = slot;
                let service = service_fn(move |req| {
                    let (live, access) = (Arc::clone(&live), Arc::clone(&access));
                    let at = Addresses {
                        peer,
                        local,
                        listen,
                    };
                    async move {
                        Ok::<_, std::convert::Infallible>(handle(req, at, &live, &access).await)
                    }
                });
                let conn = hyper::server::conn::http1::Builder::new()
                    .timer(TokioTimer::new())
                    .header_read_timeout(HEAD_TIMEOUT)
                    .max_buf_size(MAX_HEAD)
                    .serve_connection(TokioIo::new(stream), service);
                // A client that pipelines requests and never reads the answers would hold its
                // slot for ever (hyper has no write timeout): every connection ends by this.
                let _ = tokio::time::timeout(MAX_LIFETIME, conn).await;
            });
        }
    }
}

/// Admin connections at once; more are closed as soon as they are accepted.
const MAX_CONNECTIONS: usize = 256;
/// A request head must arrive whole within this; an idle keep-alive connection is closed
/// after it too (hyper starts the head's clock when it starts waiting for one).
const HEAD_TIMEOUT: Duration = Duration::from_secs(10);
/// The longest an admin connection lives, whatever it does.
const MAX_LIFETIME: Duration = Duration::from_secs(60);
/// A request body must arrive whole within this.
const BODY_TIMEOUT: Duration = Duration::from_secs(10);
const MAX_BODY: usize = 16 << 10;
/// The largest request head (hyper answers 431 beyond it).
const MAX_HEAD: usize = 64 << 10;
/// The most characters of a client's input an error message repeats.
const ECHO: usize = 100;

/// Connections refused over `MAX_CONNECTIONS`, logged at most once per 10 s.
#[derive(Default)]
struct OverCap {
    refused: u64,
    logged: Option<Instant>,
}

impl OverCap {
    fn refused(&mut self) {
        self.refused += 1;
        if self
            .logged
            .is_none_or(|t| t.elapsed() >= Duration::from_secs(10))
        {
            tracing::warn!(
                refused = self.refused,
                "admin API: {MAX_CONNECTIONS} connections open already; closing new ones"
            );
            self.logged = Some(Instant::now());
            self.refused = 0;
        }
    }
}

/// Who is asking, and on which address they reached the admin API.
#[derive(Debug, Clone, Copy)]
pub struct Addresses {
    pub peer: SocketAddr,
    /// The address the connection came in on.
    pub local: SocketAddr,
    /// The address the listener is bound to.
    pub listen: SocketAddr,
}

/// At most `ECHO` characters of `text`, for an error message.
fn clip(text: &str) -> Cow<'_, str> {
    match text.char_indices().nth(ECHO) {
        Some((end, _)) => Cow::Owned(format!("{}...", &text[..end])),
        None => Cow::Borrowed(text),
    }
}

/// Why a request a browser could have been made to send is refused (see the module comment).
fn browser_refusal<B>(req: &Request<B>, at: Addresses) -> Option<String> {
    let headers = req.headers();
    let host = headers.get(header::HOST).map(|h| h.to_str().unwrap_or(""));
    if at.listen.ip().is_loopback() {
        if let Some(host) = host.filter(|h| !own_host(h, at)) {
            return Some(format!(
                "Host `{}` is not this admin API: refused, so a web page cannot reach it through a name pointed at the loopback (DNS rebinding); use http://{} or http://localhost:{}",
                clip(host),
                at.local,
                at.local.port()
            ));
        }
    }
    if matches!(*req.method(), Method::GET | Method::HEAD | Method::OPTIONS) {
        return None;
    }
    let site = headers
        .get("sec-fetch-site")
        .map(|v| v.to_str().unwrap_or(""));
    if let Some(site) = site.filter(|s| matches!(*s, "cross-site" | "same-site")) {
        return Some(format!(
            "a {site} request from a web page cannot change the proxy; use `strangle` or curl"
        ));
    }
    let origin = headers.get(header::ORIGIN)?.to_str().unwrap_or("");
    let own = host.map(|h| format!("http://{h}"));
    if own.is_some_and(|own| own.eq_ignore_ascii_case(origin)) {
        return None;
    }
    Some(format!(
        "Origin `{}` is not this admin API's own: a web page cannot change the proxy; use `strangle` or curl",
        clip(origin)
    ))
}

/// Whether a Host names this listener: a loopback address, `localhost` or the listener's own
/// address, any port.
fn own_host(host: &str, at: Addresses) -> bool {
    let Ok(authority) = host.parse::<http::uri::Authority>() else {
        return false;
    };
    let name = authority.host();
    if name.eq_ignore_ascii_case("localhost") {
        return true;
    }
    let ip = name
        .strip_prefix('[')
        .and_then(|n| n.strip_suffix(']'))
        .unwrap_or(name);
    ip.parse::<IpAddr>().is_ok_and(|ip| {
        ip == at.local.ip()
            || ip == at.listen.ip()
            || ip == IpAddr::V4(Ipv4Addr::LOCALHOST)
            || ip == IpAddr::V6(Ipv6Addr::LOCALHOST)
    })
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
    "GET / (the dashboard), GET /status, GET /history, GET /inventory, GET /routes/{id}/diffs, PUT /routes/{id}/shift, POST /routes/{id}/rollout/{pause,resume,promote,abort}, POST /routes/{id}/replay?to=legacy|new, POST /reload, GET /metrics, GET /ready, GET /live";

/// Compares without leaking the position of the first difference through timing.
fn same_secret(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Answers one admin request. Generic over the body, so tests call it in-process with a
/// `Full<Bytes>` body and no socket; the listener passes hyper's `Incoming`.
pub async fn handle<B: Body>(
    req: Request<B>,
    at: Addresses,
    live: &Arc<Live>,
    access: &AccessLogger,
) -> Response<Full<Bytes>>
where
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let peer = at.peer;
    if let Some(why) = browser_refusal(&req, at) {
        tracing::warn!(client = %peer, method = %req.method(), "admin call refused: {why}");
        return error(StatusCode::FORBIDDEN, why);
    }
    let path = req.uri().path().to_string();
    let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
    let method = req.method().clone();
    let mutating = matches!(
        (&method, segments.as_slice()),
        (&Method::PUT, ["routes", _, "shift"])
            | (&Method::POST, ["reload"])
            | (&Method::POST, ["routes", _, "rollout", _])
            | (&Method::POST, ["routes", _, "replay"])
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
                tracing::warn!(client = %peer, path = %clip(&path), "admin call refused: missing or wrong token");
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
    let cli = req
        .headers()
        .get(header::USER_AGENT)
        .is_some_and(|ua| ua.as_bytes().starts_with(b"strangle/"));
    let cause = Cause::admin(who.clone(), cli);
    match (&method, segments.as_slice()) {
        (&Method::GET, ["status"]) => reads::status(live, req.uri().query()),
        (&Method::GET, [file @ ("" | "dashboard.js" | "dashboard.css" | "favicon.svg")]) => {
            dashboard::asset(file)
        }
        (&Method::GET, ["inventory"]) => reads::inventory(live, req.uri().query()),
        (&Method::GET, ["history"]) => reads::history(live, req.uri().query()),
        (&Method::GET, ["routes", id, "diffs"]) => reads::diffs(live, id),
        (&Method::GET, ["metrics"]) => reply(
            StatusCode::OK,
            "text/plain; version=0.0.4; charset=utf-8",
            crate::metrics::render(live, access.dropped()),
        ),
        (&Method::GET, ["live"]) => reply(StatusCode::OK, "text/plain", "live\n"),
        (&Method::GET, ["ready"]) => {
            if live.lifecycle.draining() {
                reply(StatusCode::SERVICE_UNAVAILABLE, "text/plain", "draining\n")
            } else {
                reply(StatusCode::OK, "text/plain", "ready\n")
            }
        }
        (&Method::PUT, ["routes", id, "shift"]) => {
            let id = id.to_string();
            let asked = match shift::read_shift(req.into_body()).await {
                Ok(s) => s,
                Err(refused) => return refused,
            };
            let command = Command::SetShift {
                route: id,
                shift: asked.to,
                expect: asked.from,
                insist: true,
            };
            match apply(live, command, &cause).await {
                Ok(v) => json_reply(StatusCode::OK, &v),
                Err(e) => {
                    tracing::warn!(client = %who, "shift refused: {e}");
                    error(e.status(), e)
                }
            }
        }
        (&Method::POST, ["routes", id, "replay"]) => {
            let (id, query) = (id.to_string(), req.uri().query().map(str::to_string));
            replay::replay(live, &id, query.as_deref(), req.into_body()).await
        }
        (&Method::POST, ["routes", id, "rollout", action]) => {
            rollout::act(live, id, action, &cause).await
        }
        (&Method::POST, ["reload"]) => match apply(live, Command::Reload, &cause).await {
            Ok(v) => json_reply(StatusCode::OK, &v),
            Err(e) => error(e.status(), e),
        },
        (_, ["" | "dashboard.js" | "dashboard.css" | "favicon.svg"])
        | (_, ["status" | "metrics" | "live" | "ready" | "history" | "inventory"])
        | (_, ["reload"])
        | (_, ["routes", _, "shift" | "diffs" | "replay"])
        | (_, ["routes", _, "rollout", _]) => error(
            StatusCode::METHOD_NOT_ALLOWED,
            format!(
                "{method} is not allowed on {}; endpoints: {ENDPOINTS}",
                clip(&path)
            ),
        ),
        _ => error(
            StatusCode::NOT_FOUND,
            format!("no endpoint {}; endpoints: {ENDPOINTS}", clip(&path)),
        ),
    }
}

#[cfg(test)]
#[path = "admin/tests.rs"]
mod tests;
