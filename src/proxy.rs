//! The request path: Pingora's `ProxyHttp` phases for strangle.
//!
//! `request_filter` validates framing and the path, matches the route and picks the side;
//! `upstream_peer` picks a healthy address of the chosen upstream; the header filters add
//! forwarding headers and strip hop-by-hop ones; `logging` writes the access-log line.

use std::borrow::Cow;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use async_trait::async_trait;
use bytes::Bytes;
use http::header::{self, HeaderName, HeaderValue};
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::prelude::*;
use pingora::proxy::{FailToProxy, ProxyHttp, Session};
use pingora::upstreams::peer::HttpPeer;
use pingora::{ErrorSource, ErrorType};

use crate::config::Target;
use crate::forward::{self, hop_by_hop, Outbound};
use crate::lambda::{event, PAYLOAD_LIMIT};
use crate::routing::{self, PathError};
use crate::split::{self, KeyValue, Side, StickyKey};
use crate::state::{Live, Snapshot};
use crate::stats::RouteStats;
use crate::telemetry::{AccessEvent, AccessLogger, Rfc3339};
use crate::upstream::{Kind, Shared};

/// Requests between `new_ctx` and the end of `logging`: what a graceful shutdown waits for.
pub static IN_FLIGHT: AtomicUsize = AtomicUsize::new(0);

/// Set on SIGTERM: `/ready` turns 503 so load balancers stop sending traffic.
pub static DRAINING: AtomicBool = AtomicBool::new(false);

/// Set when the grace period ends with requests in flight: each is logged and counted as cut
/// off when the runtime's shutdown drops it.
pub static CUT_OFF: AtomicBool = AtomicBool::new(false);

/// Where cut-off requests are logged.
pub static CUT_OFF_LOG: std::sync::OnceLock<Arc<AccessLogger>> = std::sync::OnceLock::new();

const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
const X_STRANGLE_SIDE: HeaderName = HeaderName::from_static("x-strangle-side");

/// The strangle proxy.
pub struct Strangle {
    pub live: Arc<Live>,
    pub access: Arc<AccessLogger>,
}

/// How a request ended, for `Ctx::account`.
struct Finished<'a> {
    status: u16,
    method: &'a str,
    path: &'a str,
    client: Option<IpAddr>,
    /// Body bytes read and sent.
    bytes: (usize, usize),
    error: Option<String>,
}

/// Per-request state.
pub struct Ctx {
    snap: Arc<Snapshot>,
    start: Instant,
    route: Option<usize>,
    side: Option<Side>,
    upstream: Option<Shared>,
    request_id: Option<HeaderValue>,
    /// The path to send upstream when it differs from the client's (normalised or prefixed).
    upstream_path: Option<String>,
    /// The normalised path, when it differs from the client's.
    routed_path: Option<String>,
    upstream_start: Option<Instant>,
    peer_addr: Option<SocketAddr>,
    avoid: Option<SocketAddr>,
    /// Attempts after the first (a refused connect, or a sent idempotent request that got no
    /// response), at most the upstream's `retries`.
    retried: usize,
    /// The upstream's response head arrived (a retry after that would repeat a response).
    head_received: bool,
    /// `response-timeout` / `request-timeout` on the current upstream connection.
    deadline: Option<crate::exchange::ExchangeDeadline>,
    /// A deadline passed on an earlier attempt or this one.
    late: Option<crate::exchange::Late>,
    /// The response failed after its head was handed on: it is logged and counted by its
    /// failure status, not the head's.
    replaced: bool,
    /// The whole request (head and body) has been sent upstream (for the head's deadline and
    /// passive health: a slow client's upload is never the upstream's fault).
    request_sent: bool,
    status: u16,
    error: Option<String>,
    /// The verified JWT claims, on routes with `auth`.
    claims: Option<crate::auth::Claims>,
    /// The client's address after the trusted-proxy walk (the peer when it is not trusted).
    client: Option<IpAddr>,
    /// Whether the TCP peer is one of `[server] trusted-proxies`.
    peer_trusted: bool,
    /// The verified claims as the headers that carry them upstream.
    claim_headers: Vec<(HeaderName, HeaderValue)>,
    /// A `max-in-flight` slot of the upstream, held to the end of the request.
    _permit: Option<tokio::sync::OwnedSemaphorePermit>,
    /// The request line's method and target (a slice of the head's buffer), for the log line
    /// of a request that never reaches `logging`.
    method: Option<http::Method>,
    target: Bytes,
    /// `logging` ran for this request.
    logged: bool,
}

impl Drop for Ctx {
    fn drop(&mut self) {
        if !self.logged && CUT_OFF.load(Ordering::Acquire) {
            self.log_cut_off();
        }
        if let Some(side) = self.side {
            self.route_stats()
                .side(side)
                .in_flight
                .fetch_sub(1, Ordering::Relaxed);
        }
        if let Some(up) = &self.upstream {
            up.stats.in_flight.fetch_sub(1, Ordering::Relaxed);
        }
        IN_FLIGHT.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Ctx {
    /// Logs and counts a request the end of the grace period cut off.
    fn log_cut_off(&self) {
        let target = String::from_utf8_lossy(&self.target);
        let path = self
            .routed_path
            .as_deref()
            .unwrap_or_else(|| target.split('?').next().unwrap_or(""));
        self.account(
            CUT_OFF_LOG.get().map(Arc::as_ref),
            Finished {
                status: self.status,
                method: self.method.as_ref().map_or("", http::Method::as_str),
                path,
                client: self.client,
                bytes: (0, 0),
                error: Some("cut off: the grace period ended before the response did".into()),
            },
        );
    }

    /// The request's last step, whichever way it ended: its side's counters, and its
    /// access-log line when there is a log.
    fn account(&self, access: Option<&AccessLogger>, done: Finished<'_>) {
        let now = Instant::now();
        if let Some(side) = self.side {
            self.route_stats()
                .side(side)
                .record(done.status, now - self.start);
        }
        let Some(access) = access.filter(|a| a.enabled()) else {
            return;
        };
        access.log(&AccessEvent {
            time: Rfc3339(SystemTime::now()),
            request_id: self
                .request_id
                .as_ref()
                .and_then(|v| v.to_str().ok())
                .unwrap_or(""),
            client: done.client,
            method: done.method,
            path: done.path,
            route: self.route_id(),
            side: self.side.map(Side::as_str),
            upstream: self.upstream.as_ref().map(|u| u.config.name.as_str()),
            status: done.status,
            duration_ms: ms(now - self.start),
            upstream_ms: self.upstream_start.map(|s| ms(now - s)),
            bytes_in: done.bytes.0,
            bytes_out: done.bytes.1,
            error: done.error,
        });
    }

    /// Response body passed (upstream side or client side). At its end the deadline is over;
    /// if it had passed, the end is the socket shutdown that ended a late exchange, read as
    /// the end of a body delimited by the close, and the client's response must not end as if
    /// complete: an error instead.
    fn body_passed(&mut self, end_of_stream: bool) -> Result<Option<std::time::Duration>> {
        if end_of_stream {
            self.disarm();
            self.fail_if_late()?;
        }
        Ok(None)
    }

    /// An error when a deadline passed on this exchange.
    fn fail_if_late(&mut self) -> Result<()> {
        let late = self
            .late
            .or_else(|| self.deadline.as_ref().and_then(|d| d.fired()));
        match late {
            Some(late) => {
                self.late = Some(late);
                let e = Error::explain(ErrorType::ReadTimedout, late.to_string());
                Err(e.into_up())
            }
            None => Ok(()),
        }
    }

    /// Ends the deadline on the current upstream connection, noting whether it had passed.
    fn disarm(&mut self) {
        if let Some(d) = self.deadline.take() {
            d.disarm();
            self.late = self.late.or(d.fired());
        }
    }

    /// The HTTP upstream serving this request, if it is one.
    fn http_upstream(&self) -> Option<&crate::upstream::HttpUpstream> {
        match &self.upstream.as_ref()?.kind {
            Kind::Http(h) => Some(h),
            _ => None,
        }
    }

    fn route_id(&self) -> Option<&str> {
        self.route.map(|i| self.snap.routes[i].id.as_str())
    }

    fn route_stats(&self) -> &RouteStats {
        match self.route {
            Some(i) => &self.snap.routes[i].stats,
            None => &self.snap.default_stats,
        }
    }
}

/// Ends the request with an empty error response carrying `extra` headers. Malformed requests
/// (400, 431) also close the connection: after a framing error nothing else on it can be trusted.
async fn respond(
    session: &mut Session,
    ctx: &mut Ctx,
    status: u16,
    why: impl Into<String>,
    extra: &[(HeaderName, String)],
) -> Result<bool> {
    ctx.status = status;
    ctx.error = Some(why.into());
    if status == 400 || status == 431 {
        session.set_keepalive(None);
    }
    let mut resp = ResponseHeader::build(status, Some(3 + extra.len()))?;
    for (name, value) in extra {
        resp.insert_header(name.clone(), value.as_str())?;
    }
    resp.insert_header(header::CONTENT_LENGTH, "0")?;
    finish_response(session, ctx, &mut resp)?;
    session.write_response_header(Box::new(resp), true).await?;
    Ok(true)
}

/// What strangle sets on every response it sends, whichever path made it (an upstream's,
/// a Lambda function's, a signed endpoint's, its own): hop-by-hop headers removed (an upgrade's
/// pair kept for a switch the client asked for), the request id, and `Connection: close` when
/// the connection ends after this response (draining, or a session not to be reused): a client
/// must not send another request on it only to find it closed.
fn finish_response(session: &mut Session, ctx: &Ctx, resp: &mut ResponseHeader) -> Result<()> {
    let upgrade = resp.status == http::StatusCode::SWITCHING_PROTOCOLS && session.is_upgrade_req();
    for name in hop_by_hop(&resp.headers, upgrade) {
        resp.remove_header(&name);
    }
    if let Some(id) = &ctx.request_id {
        resp.insert_header(X_REQUEST_ID, id.clone())?;
    }
    if !upgrade {
        if DRAINING.load(Ordering::Acquire) {
            session.set_keepalive(None);
        }
        if session.get_keepalive().is_none() {
            resp.insert_header(header::CONNECTION, "close")?;
        }
    }
    Ok(())
}

async fn reject(
    session: &mut Session,
    ctx: &mut Ctx,
    status: u16,
    why: impl Into<String>,
) -> Result<bool> {
    respond(session, ctx, status, why, &[]).await
}

/// The request target exactly as the client sent it (HTTP/1), fragment and all; Pingora's parsed
/// URI has already dropped a fragment, which we must refuse rather than ignore. A slice of the
/// buffer the head was read into: no copy.
fn raw_target(session: &Session) -> Bytes {
    if let Some(h1) = session.as_downstream().as_http1() {
        let raw = h1.get_headers_raw_bytes();
        let line_end = raw.iter().position(|&b| b == b'\n').unwrap_or(raw.len());
        let line = &raw[..line_end];
        if let Some(start) = line.iter().position(|&b| b == b' ').map(|i| i + 1) {
            let len = line[start..]
                .iter()
                .position(|&b| b == b' ')
                .unwrap_or(line.len() - start);
            return raw.slice(start..start + len);
        }
    }
    Bytes::copy_from_slice(session.req_header().raw_path())
}

/// Refuses a request that failed authorization: 401 with a `WWW-Authenticate` that says why,
/// 403 for a missing claim, 503 when the keys are unavailable.
async fn deny(session: &mut Session, ctx: &mut Ctx, e: &crate::auth::AuthError) -> Result<bool> {
    let extra = [(header::WWW_AUTHENTICATE, e.challenge())];
    respond(session, ctx, e.status(), e.to_string(), &extra).await
}

/// 429 for a request over its route's rate limit, with when to retry and the policy.
async fn too_many(
    session: &mut Session,
    ctx: &mut Ctx,
    limiter: &crate::limits::RateLimiter,
    route: &str,
    limited: crate::limits::Limited,
) -> Result<bool> {
    let retry = limited.retry_after.as_secs_f64().ceil().max(1.0) as u64;
    let extra = [
        (header::RETRY_AFTER, retry.to_string()),
        (
            HeaderName::from_static("ratelimit-policy"),
            limiter.policy_header(route),
        ),
        (
            HeaderName::from_static("ratelimit"),
            format!("\"{route}\";r=0;t={retry}"),
        ),
    ];
    respond(session, ctx, 429, "rate limited", &extra).await
}

/// 503 for a request that found its upstream at `max-in-flight` for all of `queue-timeout`.
async fn overloaded(session: &mut Session, ctx: &mut Ctx, upstream: &str) -> Result<bool> {
    let why = format!("upstream `{upstream}` at max-in-flight");
    respond(
        session,
        ctx,
        503,
        why,
        &[(header::RETRY_AFTER, "1".to_string())],
    )
    .await
}

/// The forwarded-claim headers for verified `claims`: `(header, value)`. A claim that is
/// present but cannot be a header value (a CR or LF in it) is an error, never silently left
/// out: the upstream would see a verified request without the identity it relies on.
fn claim_headers(
    claims: &crate::auth::Claims,
    verifier: &crate::auth::Verifier,
) -> std::result::Result<Vec<(HeaderName, HeaderValue)>, String> {
    let mut out = Vec::with_capacity(verifier.config.forward_claims.len());
    for (claim, header) in &verifier.config.forward_claims {
        if let Some(value) = crate::auth::claim_text(claims, claim) {
            let value = HeaderValue::from_str(&value)
                .map_err(|_| format!("claim `{claim}` cannot be sent as `{header}`"))?;
            out.push((header.clone(), value));
        }
    }
    Ok(out)
}

/// A `Host` value that is an authority (RFC 3986 section 3.2): a DNS name or an address in
/// brackets, and an optional port, nothing that could smuggle a path, user info, a list or
/// markup into the `x-forwarded-host` strangle vouches for.
fn valid_host(v: &[u8]) -> bool {
    let (host, port) = match v.first() {
        Some(b'[') => match v.iter().position(|&b| b == b']') {
            Some(end) => {
                let literal = &v[1..end];
                let ok = std::str::from_utf8(literal)
                    .is_ok_and(|s| s.parse::<std::net::Ipv6Addr>().is_ok());
                if !ok {
                    return false;
                }
                (&v[..=end], &v[end + 1..])
            }
            None => return false,
        },
        _ => match v.iter().position(|&b| b == b':') {
            Some(i) => (&v[..i], &v[i..]),
            None => (v, &v[v.len()..]),
        },
    };
    let name_ok = host.first() == Some(&b'[')
        || (!host.is_empty()
            && host
                .iter()
                .all(|&b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_')));
    let port_ok = match port {
        [] => true,
        [b':', digits @ ..] => {
            !digits.is_empty()
                && digits.len() <= 5
                && digits.iter().all(u8::is_ascii_digit)
                && std::str::from_utf8(digits)
                    .ok()
                    .and_then(|d| d.parse::<u32>().ok())
                    .is_some_and(|n| n <= 65535)
        }
        _ => false,
    };
    name_ok && port_ok
}

/// A complete error response in wire form, for a response that failed after its head was
/// handed to the transport but before any of it went out.
fn error_reply(code: u16, request_id: Option<&HeaderValue>) -> Bytes {
    let reason = http::StatusCode::from_u16(code)
        .ok()
        .and_then(|s| s.canonical_reason())
        .unwrap_or("Error");
    let mut out = format!("HTTP/1.1 {code} {reason}\r\nContent-Length: 0\r\n");
    if let Some(id) = request_id.and_then(|v| v.to_str().ok()) {
        out.push_str("x-request-id: ");
        out.push_str(id);
        out.push_str("\r\n");
    }
    out.push_str("Connection: close\r\n\r\n");
    Bytes::from(out)
}

/// The final (non-interim) response head handed to the client, if any.
fn final_response_written(session: &Session) -> Option<&ResponseHeader> {
    session.response_written().filter(|r| {
        !r.status.is_informational() || r.status == http::StatusCode::SWITCHING_PROTOCOLS
    })
}

/// Responses that never have a body (RFC 9110 sections 6.4.1, 15.3.5, 15.4.5).
fn no_body(status: http::StatusCode, method: &http::Method) -> bool {
    status.is_informational()
        || status == http::StatusCode::NO_CONTENT
        || status == http::StatusCode::NOT_MODIFIED
        || method == http::Method::HEAD
}

/// Checks and repairs an upstream response's framing before it is passed on: no body headers
/// on responses that cannot have a body, one unambiguous length, a head within `cap` bytes.
fn frame_response(
    resp: &mut ResponseHeader,
    req: &RequestHeader,
    cap: usize,
) -> std::result::Result<(), &'static str> {
    let reason = resp.get_reason_phrase().map_or(0, str::len);
    let head: usize = 16
        + reason
        + resp
            .headers
            .iter()
            .map(|(k, v)| k.as_str().len() + v.len() + 4)
            .sum::<usize>();
    if head > cap {
        return Err("response head over max-response-header-bytes");
    }
    let status = resp.status;
    if status.is_informational() || status == http::StatusCode::NO_CONTENT {
        // RFC 9110 section 8.6: never a Content-Length on 1xx or 204.
        resp.remove_header(&header::CONTENT_LENGTH);
        resp.remove_header(&header::TRANSFER_ENCODING);
        return Ok(());
    }
    let codings = resp.headers.get_all(header::TRANSFER_ENCODING);
    let chunked = codings.iter().next().is_some();
    if chunked {
        // Chunked must be the last coding, and only HTTP/1.1 has it (RFC 9112 sections 6.1,
        // 6.3): otherwise the body runs to the close and a client or cache that reads the
        // header differently would see another response inside it.
        let last = codings
            .iter()
            .next_back()
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.rsplit(',').next())
            .map(str::trim);
        if !last.is_some_and(|c| c.eq_ignore_ascii_case("chunked")) {
            return Err("a Transfer-Encoding that does not end in chunked in the response");
        }
        if resp.version != http::Version::HTTP_11 {
            return Err("Transfer-Encoding in a response that is not HTTP/1.1");
        }
    }
    let mut lengths = resp.headers.get_all(header::CONTENT_LENGTH).iter();
    let first = lengths.next().map(|v| v.as_bytes().to_vec());
    if let Some(first) = first {
        if chunked {
            return Err("both Content-Length and Transfer-Encoding in the response");
        }
        // `5`, `5, 5` and two `5` lines are one length (RFC 9110 section 8.6); anything
        // else is ambiguous.
        let mut value: Option<u64> = None;
        let all = std::iter::once(&first[..]).chain(lengths.map(HeaderValue::as_bytes));
        for line in all {
            for part in line.split(|&b| b == b',') {
                let part = part.trim_ascii();
                let n = std::str::from_utf8(part)
                    .ok()
                    .filter(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()))
                    .and_then(|p| p.parse::<u64>().ok())
                    .ok_or("malformed Content-Length in the response")?;
                if value.is_some_and(|v| v != n) {
                    return Err("conflicting Content-Length values in the response");
                }
                value = Some(n);
            }
        }
        if let Some(n) = value {
            resp.insert_header(header::CONTENT_LENGTH, n)
                .map_err(|_| "malformed Content-Length in the response")?;
        }
    }
    if status == http::StatusCode::NOT_MODIFIED || req.method == http::Method::HEAD {
        // The length of a representation that is not sent; no coding for a body that is not.
        resp.remove_header(&header::TRANSFER_ENCODING);
        if status == http::StatusCode::NOT_MODIFIED {
            resp.remove_header(&header::CONTENT_LENGTH);
        }
    }
    Ok(())
}

/// Why a buffered body was not read.
enum BodyError {
    TooLarge,
    TooSlow,
}

/// What the outbound header policy needs to know about this request.
fn outbound<'a>(session: &Session, ctx: &'a Ctx) -> Outbound<'a> {
    Outbound {
        peer: client_ip(session).map(crate::net::unmap),
        peer_trusted: ctx.peer_trusted,
        client: ctx.client,
        https: session.digest().is_some_and(|d| d.ssl_digest.is_some()),
        host: session.req_header().headers.get(header::HOST).cloned(),
        keep_upgrade: session.is_upgrade_req(),
        identity_headers: &ctx.snap.identity_headers,
        claims: &ctx.claim_headers,
        request_id: ctx.request_id.as_ref(),
    }
}

/// Reads the whole request body within `deadline` (a slow client must not hold an upstream's
/// `max-in-flight` slot, so this runs before the slot is taken). Over `limit` or late, the
/// connection is marked for closing: the rest of the body is never read.
async fn read_body(
    session: &mut Session,
    limit: usize,
    deadline: std::time::Duration,
) -> Result<std::result::Result<Bytes, BodyError>> {
    match tokio::time::timeout(deadline, read_body_within(session, limit)).await {
        Ok(r) => r.map(|b| b.ok_or(BodyError::TooLarge)),
        Err(_) => {
            session.set_keepalive(None);
            Ok(Err(BodyError::TooSlow))
        }
    }
}

async fn read_body_within(session: &mut Session, limit: usize) -> Result<Option<Bytes>> {
    let declared = session
        .req_header()
        .headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<usize>().ok());
    if declared.is_some_and(|n| n > limit) {
        session.set_keepalive(None);
        return Ok(None);
    }
    let mut body = bytes::BytesMut::with_capacity(declared.unwrap_or(0));
    while let Some(chunk) = session.read_request_body().await? {
        if body.len() + chunk.len() > limit {
            session.set_keepalive(None);
            return Ok(None);
        }
        body.extend_from_slice(&chunk);
    }
    Ok(Some(body.freeze()))
}

/// Answers a failed call to an AWS endpoint with the status that failure maps to; the failure's
/// own text goes to the log, never to the client.
async fn fail_aws(
    session: &mut Session,
    ctx: &mut Ctx,
    upstream: &str,
    e: crate::lambda::InvokeError,
) -> Result<bool> {
    let status = e.status();
    let id = ctx
        .request_id
        .as_ref()
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    tracing::warn!(upstream = %upstream, request_id = %id, status, "upstream call failed: {e}");
    let retry = [(header::RETRY_AFTER, "1".to_string())];
    let extra: &[(HeaderName, String)] = if status == 503 { &retry } else { &[] };
    respond(session, ctx, status, e.to_string(), extra).await
}

/// API Gateway's limit on a request payload.
const SIGNED_BODY_LIMIT: usize = 10 * 1024 * 1024;

/// Whether the raw header block repeats Content-Length next to Transfer-Encoding: Pingora drops
/// the Content-Length in that case, but a request framed two ways is a smuggling attempt.
fn raw_has_content_length(session: &Session) -> bool {
    let Some(h1) = session.as_downstream().as_http1() else {
        return false;
    };
    h1.get_headers_raw_bytes()
        .split(|&b| b == b'\n')
        .skip(1)
        .any(|line| line.len() > 15 && line[..15].eq_ignore_ascii_case(b"content-length:"))
}

/// A control byte other than tab. Without an early exit the loop vectorises: header values
/// such as bearer tokens run to hundreds of bytes.
fn has_control_byte(v: &[u8]) -> bool {
    v.iter().fold(false, |bad, &b| {
        bad | ((b < 0x20) & (b != b'\t')) | (b == 0x7f)
    })
}

fn valid_request_id(v: &HeaderValue) -> bool {
    let b = v.as_bytes();
    !b.is_empty() && b.len() <= 128 && b.iter().all(|c| c.is_ascii_graphic())
}

fn new_request_id() -> HeaderValue {
    let id = format!("{:032x}", rand::random::<u128>());
    HeaderValue::from_str(&id).unwrap_or(HeaderValue::from_static("0"))
}

fn client_ip(session: &Session) -> Option<IpAddr> {
    session
        .client_addr()
        .and_then(|a| a.as_inet())
        .map(|a| a.ip())
}

impl Strangle {
    /// Serves a request from a Lambda function: the body is buffered (Lambda takes the whole
    /// event at once), the event built, the function invoked, its answer written back.
    async fn serve_lambda(
        &self,
        session: &mut Session,
        ctx: &mut Ctx,
        path: &str,
        query: &str,
        body: Bytes,
    ) -> Result<bool> {
        let Some(upstream) = ctx.upstream.clone() else {
            return reject(session, ctx, 500, "no upstream").await;
        };
        let Kind::Lambda(lambda) = &upstream.kind else {
            return reject(session, ctx, 500, "not a lambda upstream").await;
        };
        // The event carries the same headers an HTTP upstream would get.
        let mut headers = session.req_header().headers.clone();
        forward::apply(&mut headers, &outbound(session, ctx));
        let req = session.req_header();
        let route_path = ctx
            .route
            .map_or("/", |i| ctx.snap.config.routes[i].path.as_str());
        let protocol = match req.version {
            http::Version::HTTP_10 => "HTTP/1.0",
            http::Version::HTTP_2 => "HTTP/2.0",
            _ => "HTTP/1.1",
        };
        let event = event::encode(
            lambda.payload(),
            &event::Request {
                method: req.method.as_str(),
                path,
                query,
                headers: &headers,
                body: &body,
                source_ip: ctx.client,
                request_id: ctx
                    .request_id
                    .as_ref()
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or(""),
                protocol,
                route_path,
                now: SystemTime::now(),
                claims: ctx.claims.as_ref(),
            },
        );
        if event.len() > PAYLOAD_LIMIT {
            return reject(session, ctx, 413, "event over Lambda's 6 MB limit").await;
        }
        ctx.upstream_start = Some(Instant::now());
        let response = match lambda.invoke(event).await {
            Ok(r) => r,
            Err(e) => return fail_aws(session, ctx, upstream.name(), e).await,
        };
        let mut resp = ResponseHeader::build(response.status, Some(response.headers.len() + 2))?;
        for (name, value) in response.headers {
            if name == header::CONTENT_LENGTH || name == header::TRANSFER_ENCODING {
                continue;
            }
            resp.append_header(name, value)?;
        }
        resp.insert_header(header::CONTENT_LENGTH, response.body.len().to_string())?;
        finish_response(session, ctx, &mut resp)?;
        ctx.status = response.status;
        let empty = response.body.is_empty();
        session.write_response_header(Box::new(resp), empty).await?;
        if !empty {
            session
                .write_response_body(Some(response.body), true)
                .await?;
        }
        Ok(true)
    }

    /// Forwards a request to an AWS HTTP endpoint with a SigV4 signature, which needs the whole
    /// body (its hash is signed); the response streams back.
    async fn serve_signed(
        &self,
        session: &mut Session,
        ctx: &mut Ctx,
        upstream_path: &str,
        body: Bytes,
    ) -> Result<bool> {
        let Some(upstream) = ctx.upstream.clone() else {
            return reject(session, ctx, 500, "no upstream").await;
        };
        let (Some(sig), Target::Url { tls, .. }) =
            (&upstream.config.sigv4, &upstream.config.target)
        else {
            return reject(session, ctx, 500, "not a signed url upstream").await;
        };
        let scheme = if *tls { "https" } else { "http" };
        let authority = upstream
            .config
            .target
            .socket_authority()
            .unwrap_or_default();
        let uri = format!("{scheme}://{authority}{upstream_path}");
        let mut map = session.req_header().headers.clone();
        forward::apply(&mut map, &outbound(session, ctx));
        // The signature sets these; a client's copies would be signed as if strangle sent them.
        let headers: Vec<(HeaderName, HeaderValue)> = map
            .iter()
            .filter(|(k, _)| {
                *k != header::HOST && *k != header::AUTHORIZATION && !event::is_reserved(k.as_str())
            })
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        let method = session.req_header().method.as_str().to_string();
        let started = Instant::now();
        ctx.upstream_start = Some(started);
        let timeout = upstream.config.timeout;
        let done_by = upstream.config.request_timeout.map(|t| started + t);
        let response = match crate::lambda::send_signed(
            &sig.region,
            &sig.service,
            &method,
            &uri,
            headers,
            body,
            upstream.config.head_deadline(),
        )
        .await
        {
            Ok(r) => r,
            Err(e) => return fail_aws(session, ctx, upstream.name(), e).await,
        };
        let (parts, mut incoming) = response.into_parts();
        let mut resp = ResponseHeader::build(parts.status.as_u16(), Some(parts.headers.len() + 1))?;
        for (k, v) in &parts.headers {
            if *k != header::TRANSFER_ENCODING {
                resp.append_header(k.clone(), v.clone())?;
            }
        }
        finish_response(session, ctx, &mut resp)?;
        ctx.status = parts.status.as_u16();
        session.write_response_header(Box::new(resp), false).await?;
        loop {
            // Each read within `timeout`, all of them by `request-timeout`.
            let wait = done_by.map_or(timeout, |by| {
                timeout.min(by.saturating_duration_since(Instant::now()))
            });
            match tokio::time::timeout(wait, http_body_util::BodyExt::frame(&mut incoming)).await {
                Ok(Some(Ok(frame))) => {
                    if let Ok(data) = frame.into_data() {
                        session.write_response_body(Some(data), false).await?;
                    }
                }
                Ok(None) => break,
                Ok(Some(Err(e))) => {
                    let e = Error::explain(ErrorType::ReadError, format!("upstream body: {e}"));
                    return Err(e.into_up());
                }
                Err(_) => {
                    ctx.late = upstream
                        .config
                        .request_timeout
                        .filter(|_| done_by.is_some_and(|by| Instant::now() >= by))
                        .map(crate::exchange::Late::Total);
                    let e = Error::explain(ErrorType::ReadTimedout, "upstream body timed out");
                    return Err(e.into_up());
                }
            }
        }
        session.write_response_body(None, true).await?;
        Ok(true)
    }

    /// The hash that picks a request's rate-limit bucket. Requests without the key's value
    /// share one bucket.
    fn rate_key(&self, session: &Session, ctx: &Ctx, limiter: &crate::limits::RateLimiter) -> u64 {
        let headers = &session.req_header().headers;
        match &limiter.config.key {
            StickyKey::Jwt(claim) => ctx
                .claims
                .as_ref()
                .and_then(|c| crate::auth::claim_text(c, claim))
                .map_or(0, |v| limiter.key(v.as_bytes())),
            StickyKey::None => 0,
            StickyKey::Ip => ctx.client.map_or(0, |ip| limiter.ip_key(ip)),
            other => match other.value(headers, None) {
                KeyValue::Bytes(b) => limiter.key(b),
                KeyValue::Ip(ip) => limiter.ip_key(ip),
                KeyValue::Missing => 0,
            },
        }
    }

    /// Checks the route's rate limit: `Some(response)` when the request is over it.
    async fn limit(
        &self,
        session: &mut Session,
        ctx: &mut Ctx,
        route: usize,
        after_auth: bool,
    ) -> Option<Result<bool>> {
        let limiter = ctx.snap.routes[route].rate_limit.clone()?;
        // Keys that need no claims are checked before the token is verified, so a flood of
        // bad tokens is limited too; claim keys can only be checked after.
        if matches!(limiter.config.key, StickyKey::Jwt(_)) != after_auth {
            return None;
        }
        let key = self.rate_key(session, ctx, &limiter);
        let limited = limiter.check(key, Instant::now()).err()?;
        ctx.route = Some(route);
        let id = ctx.snap.routes[route].id.clone();
        Some(too_many(session, ctx, &limiter, &id, limited).await)
    }

    fn choose_side(&self, session: &Session, ctx: &Ctx, route: usize) -> Side {
        let r = &ctx.snap.routes[route];
        match (&r.legacy, &r.new) {
            (Some(_), None) => return Side::Legacy,
            (None, _) => return Side::New,
            _ => {}
        }
        let headers = &session.req_header().headers;
        let claim_matches = |rule: &crate::config::ClaimRule| {
            ctx.claims
                .as_ref()
                .is_some_and(|c| crate::auth::claim_matches(c, &rule.claim, &rule.equals))
        };
        let override_allowed =
            r.allow_override && r.override_when.as_ref().is_none_or(claim_matches);
        if override_allowed {
            match headers.get(&X_STRANGLE_SIDE).map(|v| v.as_bytes()) {
                Some(b"new") => return Side::New,
                Some(b"legacy") => return Side::Legacy,
                _ => {}
            }
        }
        if r.new_when.as_ref().is_some_and(claim_matches) {
            return Side::New;
        }
        let bucket = match &r.sticky {
            StickyKey::Jwt(claim) => {
                let value = ctx
                    .claims
                    .as_ref()
                    .and_then(|c| crate::auth::claim_text(c, claim));
                split::bucket(
                    r.seed,
                    value
                        .as_deref()
                        .map_or(KeyValue::Missing, |v| KeyValue::Bytes(v.as_bytes())),
                )
            }
            sticky => split::bucket(r.seed, sticky.value(headers, ctx.client)),
        };
        split::side_for(bucket, r.shift)
    }
}

#[async_trait]
impl ProxyHttp for Strangle {
    type CTX = Ctx;

    fn new_ctx(&self) -> Ctx {
        IN_FLIGHT.fetch_add(1, Ordering::AcqRel);
        Ctx {
            snap: self.live.load(),
            start: Instant::now(),
            route: None,
            side: None,
            upstream: None,
            request_id: None,
            upstream_path: None,
            routed_path: None,
            upstream_start: None,
            peer_addr: None,
            avoid: None,
            retried: 0,
            head_received: false,
            deadline: None,
            late: None,
            replaced: false,
            request_sent: false,
            method: None,
            target: Bytes::new(),
            logged: false,
            status: 0,
            error: None,
            claims: None,
            client: None,
            peer_trusted: false,
            claim_headers: Vec::new(),
            _permit: None,
        }
    }

    async fn request_filter(&self, session: &mut Session, ctx: &mut Ctx) -> Result<bool> {
        let bad_request_line = crate::deadline::head_parsed();
        ctx.method = Some(session.req_header().method.clone());
        let limits = &ctx.snap.config.server;
        if session.get_keepalive() == Some(0) {
            // Pingora keeps an HTTP/1.1 connection forever by default; bound the idle time.
            session.set_keepalive(Some(limits.keepalive_timeout.as_secs().max(1)));
        }
        let req = session.req_header();
        ctx.request_id = Some(match req.headers.get(&X_REQUEST_ID) {
            Some(v) if valid_request_id(v) => v.clone(),
            _ => new_request_id(),
        });

        if bad_request_line {
            return reject(session, ctx, 400, "malformed request line").await;
        }
        if session.req_header().version == http::Version::HTTP_10 {
            // HTTP/1.0 has no interim responses (RFC 9110 section 15.2).
            session.as_downstream_mut().set_ignore_info_resp(true);
        }
        let req = session.req_header();
        let mut hosts = req.headers.get_all(header::HOST).iter();
        match (hosts.next(), hosts.next()) {
            (Some(_), Some(_)) => return reject(session, ctx, 400, "more than one Host").await,
            (Some(h), None) if !valid_host(h.as_bytes()) => {
                return reject(session, ctx, 400, "malformed Host").await
            }
            (None, _) if req.version == http::Version::HTTP_11 => {
                return reject(session, ctx, 400, "no Host").await
            }
            _ => {}
        }
        // Methods are case-sensitive (RFC 9110 section 9.1), but many monoliths upper-case them:
        // `post` would miss a route limited to POST and still be a POST to the monolith.
        if req.method.as_str().bytes().any(|b| b.is_ascii_lowercase()) {
            return reject(session, ctx, 400, "method not in upper case").await;
        }
        let req = session.req_header();

        // Framing: one unambiguous body length or none.
        let cl_values = req.headers.get_all(header::CONTENT_LENGTH).iter().count();
        if req.headers.contains_key(header::TRANSFER_ENCODING)
            && (cl_values > 0 || raw_has_content_length(session))
        {
            return reject(
                session,
                ctx,
                400,
                "both Content-Length and Transfer-Encoding",
            )
            .await;
        }
        let req = session.req_header();
        if cl_values > 1
            || req
                .headers
                .get(header::CONTENT_LENGTH)
                .is_some_and(|v| v.as_bytes().contains(&b','))
        {
            return reject(session, ctx, 400, "repeated Content-Length").await;
        }
        // Header caps.
        if req.headers.len() > limits.max_headers {
            return reject(session, ctx, 431, "too many request headers").await;
        }
        let header_bytes: usize = req
            .headers
            .iter()
            .map(|(k, v)| k.as_str().len() + v.len() + 4)
            .sum();
        if header_bytes > limits.max_header_bytes {
            return reject(session, ctx, 431, "request headers too large").await;
        }
        if req.headers.values().any(|v| has_control_byte(v.as_bytes())) {
            return reject(session, ctx, 400, "control byte in a header value").await;
        }

        // The client: the peer, or the first untrusted hop behind a trusted proxy.
        let peer = client_ip(session);
        let proxies = &ctx.snap.config.server.trusted_proxies;
        let peer_trusted = peer.is_some_and(|p| crate::net::trusted(proxies, p));
        let client =
            peer.map(|p| crate::net::client_addr(p, &session.req_header().headers, proxies));
        (ctx.peer_trusted, ctx.client) = (peer_trusted, client);

        // Path: canonicalised once; the route is chosen on it and every upstream receives it.
        let target = raw_target(session);
        ctx.target = target.clone();
        let (path_part, query) = match target.iter().position(|&b| b == b'?') {
            Some(q) => (&target[..q], Some(&target[q..])),
            None => (&target[..], None),
        };
        let Ok(path_str) = std::str::from_utf8(path_part) else {
            return reject(session, ctx, 400, PathError::InvalidByte.to_string()).await;
        };
        if let Err(e) = query.map_or(Ok(()), routing::check_query) {
            return reject(session, ctx, 400, e.to_string()).await;
        }
        let canonical = match routing::canonicalize(path_str, ctx.snap.config.server.path_params) {
            Ok(p) => p,
            Err(e) => {
                let why = e.to_string();
                return reject(session, ctx, 400, why).await;
            }
        };
        // The access log reports the path that was routed, whichever kind serves it.
        if let Cow::Owned(p) = &canonical {
            ctx.routed_path = Some(p.clone());
        }
        if ctx.snap.table.folds_case() && routing::case_fold_trap(&canonical) {
            let why = "a character that some case-insensitive matchers fold to ASCII";
            return reject(session, ctx, 400, why).await;
        }
        let method = session.req_header().method.clone();
        let route = match ctx.snap.config.server.path_params {
            routing::PathParams::Reject => ctx.snap.table.lookup(&canonical, &method),
            routing::PathParams::Keep => ctx
                .snap
                .table
                .lookup(&routing::without_params(&canonical), &method),
        };
        if let Some(i) = route {
            if let Some(limited) = self.limit(session, ctx, i, false).await {
                return limited;
            }
        }
        if let Some(verifier) = route.and_then(|i| ctx.snap.routes[i].auth.clone()) {
            match verifier.verify(&session.req_header().headers).await {
                Ok(claims) => {
                    match claim_headers(&claims, &verifier) {
                        Ok(headers) => ctx.claim_headers = headers,
                        Err(why) => {
                            ctx.route = route;
                            return reject(session, ctx, 403, why).await;
                        }
                    }
                    ctx.claims = Some(claims);
                }
                Err(e) => {
                    ctx.route = route;
                    return deny(session, ctx, &e).await;
                }
            }
        }
        if let Some(i) = route {
            if let Some(limited) = self.limit(session, ctx, i, true).await {
                return limited;
            }
        }
        let (side, upstream) = match route {
            Some(i) => {
                let side = self.choose_side(session, ctx, i);
                let r = &ctx.snap.routes[i];
                let up = match side {
                    Side::New => r.new.clone(),
                    _ => r.legacy.clone(),
                };
                (side, up)
            }
            None => (Side::Default, ctx.snap.default.clone()),
        };
        ctx.route = route;
        let Some(upstream) = upstream else {
            return reject(session, ctx, 404, "no route").await;
        };
        ctx.side = Some(side);
        ctx.route_stats()
            .side(side)
            .in_flight
            .fetch_add(1, Ordering::Relaxed);
        upstream.stats.in_flight.fetch_add(1, Ordering::Relaxed);
        ctx.upstream = Some(Arc::clone(&upstream));

        // Upstreams that take the whole body get it before a `max-in-flight` slot is taken,
        // within `body-timeout`: a slow client holds nobody else's slot.
        let body_timeout = ctx.snap.config.server.body_timeout;
        let buffered_limit = match &upstream.kind {
            Kind::Lambda(_) => Some((PAYLOAD_LIMIT, "request body over Lambda's 6 MB limit")),
            Kind::Signed => Some((
                SIGNED_BODY_LIMIT,
                "request body over API Gateway's 10 MB limit",
            )),
            Kind::Http(_) => None,
        };
        // The client waits for a go-ahead before sending the body: it is authorized now, so
        // strangle gives it (upstreams never see the `Expect`: the policy removes it).
        let expects_continue = session
            .req_header()
            .headers
            .get(header::EXPECT)
            .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"100-continue"));
        if expects_continue && session.req_header().version == http::Version::HTTP_11 {
            session.write_continue_response().await?;
        }
        let body = match buffered_limit {
            Some((limit, too_large)) => match read_body(session, limit, body_timeout).await? {
                Ok(b) => Some(b),
                Err(BodyError::TooLarge) => return reject(session, ctx, 413, too_large).await,
                Err(BodyError::TooSlow) => {
                    return reject(
                        session,
                        ctx,
                        408,
                        "request body not received within body-timeout",
                    )
                    .await
                }
            },
            None => {
                // Streamed to the upstream: each read of the body is bounded instead.
                session.set_read_timeout(Some(body_timeout));
                None
            }
        };
        if let Some(limiter) = &upstream.limiter {
            let wait = upstream.config.queue_timeout;
            match tokio::time::timeout(wait, Arc::clone(limiter).acquire_owned()).await {
                Ok(Ok(permit)) => ctx._permit = Some(permit),
                _ => return overloaded(session, ctx, upstream.name()).await,
            }
        }

        let base = upstream.base_path();
        let query = query.map(String::from_utf8_lossy).unwrap_or_default();
        match (&upstream.kind, body) {
            (Kind::Lambda(_), Some(body)) => {
                let q = query.strip_prefix('?').unwrap_or(&query);
                self.serve_lambda(session, ctx, &canonical, q, body).await
            }
            (Kind::Signed, Some(body)) => {
                let path = format!("{base}{canonical}{query}");
                self.serve_signed(session, ctx, &path, body).await
            }
            _ => {
                if !base.is_empty() || matches!(canonical, Cow::Owned(_)) {
                    ctx.upstream_path = Some(format!("{base}{canonical}{query}"));
                }
                Ok(false)
            }
        }
    }

    async fn upstream_peer(&self, _session: &mut Session, ctx: &mut Ctx) -> Result<Box<HttpPeer>> {
        let Some(upstream) = ctx.upstream.as_ref() else {
            return Error::e_explain(ErrorType::HTTPStatus(500), "no upstream chosen");
        };
        let Kind::Http(http) = &upstream.kind else {
            return Error::e_explain(ErrorType::HTTPStatus(500), "not an HTTP upstream");
        };
        let Some(backend) = http.select(ctx.avoid) else {
            return Error::e_explain(ErrorType::HTTPStatus(502), "no address to try");
        };
        ctx.peer_addr = backend.addr.as_inet().copied();
        ctx.upstream_start.get_or_insert_with(Instant::now);
        Ok(http.peer(&backend))
    }

    fn fail_to_connect(
        &self,
        _session: &mut Session,
        _peer: &HttpPeer,
        ctx: &mut Ctx,
        mut e: Box<Error>,
    ) -> Box<Error> {
        // Nothing was sent on a connection that never opened: any method may try another address.
        ctx.avoid = ctx.peer_addr;
        if let (Some(up), Some(addr)) = (ctx.http_upstream(), ctx.peer_addr) {
            up.report(addr, false);
        }
        let retries = ctx.upstream.as_ref().map_or(0, |u| u.config.retries);
        if ctx.retried < retries {
            ctx.retried += 1;
            e.set_retry(true);
        } else {
            e.set_retry(false);
        }
        e
    }

    async fn connected_to_upstream(
        &self,
        session: &mut Session,
        _reused: bool,
        _peer: &HttpPeer,
        fd: std::os::unix::io::RawFd,
        _digest: Option<&pingora::protocols::Digest>,
        ctx: &mut Ctx,
    ) -> Result<()> {
        ctx.disarm();
        let Some(up) = ctx.upstream.as_ref() else {
            return Ok(());
        };
        let (head, total) = (up.config.response_timeout, up.config.request_timeout);
        if head.is_none() && total.is_none() {
            return Ok(());
        }
        let now = tokio::time::Instant::now();
        // The head's clock starts once the request is sent, on each attempt (a retry resends
        // a body that is already here); the total's with the first attempt.
        let started = ctx
            .upstream_start
            .map_or(now, tokio::time::Instant::from_std);
        // Pingora's own framing says whether the body is all read (`Content-Length: 00` is no body
        // to it, whatever the header's spelling).
        let sent = ctx.request_sent || session.as_downstream_mut().is_body_done();
        ctx.deadline = crate::exchange::ExchangeDeadline::arm(
            fd,
            head.filter(|_| sent).map(|d| (now + d, d)),
            total.map(|d| (started + d, d)),
        );
        Ok(())
    }

    async fn request_body_filter(
        &self,
        _session: &mut Session,
        _body: &mut Option<Bytes>,
        end_of_stream: bool,
        ctx: &mut Ctx,
    ) -> Result<()> {
        if end_of_stream && !ctx.request_sent {
            ctx.request_sent = true;
            let head = ctx
                .upstream
                .as_ref()
                .and_then(|u| u.config.response_timeout);
            if let (Some(d), Some(head)) = (&ctx.deadline, head) {
                d.request_sent(head);
            }
        }
        Ok(())
    }

    fn error_while_proxy(
        &self,
        peer: &HttpPeer,
        session: &mut Session,
        e: Box<Error>,
        ctx: &mut Ctx,
        _client_reused: bool,
    ) -> Box<Error> {
        ctx.disarm();
        let mut e = e.more_context(format!("Peer: {peer}"));
        let upstream_fault = e.esource() == &ErrorSource::Upstream;
        // A total deadline that passed while the client was still uploading is the client's.
        let clients_fault =
            ctx.late.is_some() && !ctx.request_sent && !session.as_downstream_mut().is_body_done();
        if upstream_fault && !ctx.head_received && !clients_fault {
            if let (Some(up), Some(addr)) = (ctx.http_upstream(), ctx.peer_addr) {
                up.report(addr, false);
            }
        }
        ctx.avoid = ctx.peer_addr;
        // A sent request that got no response is tried again on a fresh connection (another
        // address when there is one) only when repeating it is safe: an idempotent method,
        // a body still held whole, nothing of a response received or passed on, no deadline
        // passed, and retries left.
        let retries = ctx.upstream.as_ref().map_or(0, |u| u.config.retries);
        let retry = upstream_fault
            && ctx.late.is_none()
            && !ctx.head_received
            && final_response_written(session).is_none()
            && session.req_header().method.is_idempotent()
            && !session.as_ref().retry_buffer_truncated()
            && ctx.retried < retries;
        if retry {
            ctx.retried += 1;
        }
        e.set_retry(retry);
        e
    }

    async fn upstream_request_filter(
        &self,
        session: &mut Session,
        up: &mut RequestHeader,
        ctx: &mut Ctx,
    ) -> Result<()> {
        if let Some(path) = ctx.upstream_path.as_deref() {
            up.set_raw_path(path.as_bytes())?;
        }
        forward::apply(up, &outbound(session, ctx));
        let host_header = ctx.upstream.as_ref().and_then(|u| match &u.kind {
            Kind::Http(h) => h.host_header.clone(),
            Kind::Lambda(_) | Kind::Signed => None,
        });
        if let Some(host) = host_header {
            up.insert_header(header::HOST, host)?;
        }
        Ok(())
    }

    async fn upstream_response_filter(
        &self,
        _session: &mut Session,
        resp: &mut ResponseHeader,
        ctx: &mut Ctx,
    ) -> Result<()> {
        if resp.status.is_informational() && resp.status != http::StatusCode::SWITCHING_PROTOCOLS {
            return Ok(());
        }
        ctx.head_received = true;
        if let Some(d) = &ctx.deadline {
            d.head_received();
        }
        if let (Some(up), Some(addr)) = (ctx.http_upstream(), ctx.peer_addr) {
            up.report(addr, true);
        }
        Ok(())
    }

    async fn response_filter(
        &self,
        session: &mut Session,
        resp: &mut ResponseHeader,
        ctx: &mut Ctx,
    ) -> Result<()> {
        if resp.status == http::StatusCode::SWITCHING_PROTOCOLS && !session.is_upgrade_req() {
            // A protocol switch nobody asked for would turn the connection into a raw tunnel
            // to the upstream: refuse it (502; the upstream connection is not reused).
            return Error::e_explain(
                ErrorType::HTTPStatus(502),
                "unsolicited 101 Switching Protocols from the upstream",
            );
        }
        let cap = ctx
            .upstream
            .as_ref()
            .map_or(64 * 1024, |u| u.config.max_response_header_bytes);
        if let Err(why) = frame_response(resp, session.req_header(), cap) {
            return Error::e_explain(ErrorType::HTTPStatus(502), why);
        }
        if !resp.status.is_informational() {
            // What the client gets, should the grace period cut the response off.
            ctx.status = resp.status.as_u16();
            // Only interim responses went out before this one: a failure from here on is
            // judged by what of this response reached the client.
            crate::deadline::final_response_starts(session.as_downstream());
        }
        if session.req_header().version == http::Version::HTTP_10
            && !resp.status.is_informational()
            && !resp.headers.contains_key(header::CONTENT_LENGTH)
            && !no_body(resp.status, &session.req_header().method)
        {
            // HTTP/1.0 has no chunked coding (RFC 9112 section 6.1): the body is delimited
            // by the close instead.
            resp.remove_header(&header::TRANSFER_ENCODING);
            session.set_keepalive(None);
        }
        finish_response(session, ctx, resp)
    }

    fn upstream_response_body_filter(
        &self,
        _session: &mut Session,
        _body: &mut Option<Bytes>,
        end_of_stream: bool,
        ctx: &mut Ctx,
    ) -> Result<Option<std::time::Duration>> {
        // At the end: before the connection goes back to the pool.
        ctx.body_passed(end_of_stream)
    }

    fn response_body_filter(
        &self,
        _session: &mut Session,
        _body: &mut Option<Bytes>,
        end_of_stream: bool,
        ctx: &mut Ctx,
    ) -> Result<Option<std::time::Duration>> {
        ctx.body_passed(end_of_stream)
    }

    async fn fail_to_proxy(&self, session: &mut Session, e: &Error, ctx: &mut Ctx) -> FailToProxy {
        ctx.disarm();
        let code = match e.etype() {
            _ if ctx.late.is_some() => 504,
            ErrorType::HTTPStatus(code) => *code,
            ErrorType::ConnectTimedout | ErrorType::ReadTimedout | ErrorType::WriteTimedout
                if e.esource() == &ErrorSource::Upstream =>
            {
                504
            }
            _ => match e.esource() {
                ErrorSource::Upstream => 502,
                ErrorSource::Downstream => match e.etype() {
                    ErrorType::WriteError | ErrorType::ReadError | ErrorType::ConnectionClosed => 0,
                    // The body stalled past `body-timeout`.
                    ErrorType::ReadTimedout => 408,
                    _ => 400,
                },
                ErrorSource::Internal | ErrorSource::Unset => 500,
            },
        };
        ctx.status = code;
        ctx.error = Some(match ctx.late {
            Some(late) => format!("{late}: {e}"),
            None => e.to_string(),
        });
        // The connection is not reused after a failed proxy attempt (`can_reuse_downstream`).
        session.set_keepalive(None);
        if code > 0 && final_response_written(session).is_none() {
            // Nothing final was sent (an interim 100 or 103 may have been): the error is the
            // answer. The client may be gone already; nothing more to do about a failed write.
            let why = ctx.error.clone().unwrap_or_default();
            let _ = respond(session, ctx, code, why, &[]).await;
        } else if code > 0 {
            ctx.replaced = true;
            // The head was handed on but may not have left yet: if nothing reached the
            // client, it gets the error instead; otherwise its connection is reset, so a
            // truncated body never looks complete.
            crate::deadline::fail_response(
                session.as_downstream(),
                error_reply(code, ctx.request_id.as_ref()),
            );
        }
        FailToProxy {
            error_code: code,
            can_reuse_downstream: false,
        }
    }

    async fn logging(&self, session: &mut Session, e: Option<&Error>, ctx: &mut Ctx) {
        ctx.disarm();
        ctx.logged = true;
        let status = match session.response_written() {
            Some(r) if !ctx.replaced => r.status.as_u16(),
            _ => ctx.status,
        };
        let req = session.req_header();
        let error = ctx.error.take().or_else(|| e.map(|e| e.to_string()));
        ctx.account(
            Some(&self.access),
            Finished {
                status,
                method: req.method.as_str(),
                path: ctx.routed_path.as_deref().unwrap_or(req.uri.path()),
                client: ctx.client.or_else(|| client_ip(session)),
                bytes: (session.body_bytes_read(), session.body_bytes_sent()),
                error,
            },
        );
    }
}

fn ms(d: std::time::Duration) -> f64 {
    (d.as_secs_f64() * 1000.0 * 1000.0).round() / 1000.0
}
