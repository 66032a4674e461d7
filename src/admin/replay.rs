//! `POST /routes/{id}/replay?to=legacy|new`: sends a request kept in a capture spool (one
//! `capture::Record`, the body of the call) to one side of its route again, through the same
//! sender shadow copies use (the Lambda event and signing for a function, SigV4 for a signed
//! endpoint), and answers how it went. Mutating: it needs the admin token when one is set.
//!
//! A record is replayed only on the route that would route it: its path must be canonical and
//! match the route for its method (an edited spool cannot send a path to an upstream its route
//! was never chosen for); a body kept cut is refused; headers kept redacted are left out;
//! the rest go through the outbound header policy with no client to vouch for (no forwarding,
//! client-address, claim, `x-strangle-*` or hop-by-hop header passes), the record's `host` is
//! kept, and the copy carries `x-strangle-replay: 1`.

use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Body;
use serde_json::json;

use super::{error, json_reply};
use crate::capture::Record;
use crate::config::shadow::Shadow;
use crate::shadow::Copy;
use crate::split::{Shift, Side};
use crate::state::Live;

/// A record's largest JSON (a 16 MB body in base64, and its headers).
const MAX_RECORD: usize = 24 << 20;
/// A client's head caps: a record is no way around them.
const MAX_HEADERS: usize = 100;
const MAX_HEADER_BYTES: usize = 64 << 10;
/// What of the answer's body is returned.
const SHOWN: usize = 4096;

pub(super) async fn replay<B: Body>(
    live: &Arc<Live>,
    id: &str,
    query: Option<&str>,
    body: B,
) -> Response<Full<Bytes>>
where
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let to = match super::query::replay_to(query) {
        Ok(side) => side,
        Err(why) => return error(StatusCode::BAD_REQUEST, why),
    };
    let read = tokio::time::timeout(
        super::BODY_TIMEOUT,
        Limited::new(body, MAX_RECORD).collect(),
    );
    let bytes = match read.await {
        Ok(Ok(b)) => b.to_bytes(),
        Ok(Err(_)) => return error(StatusCode::PAYLOAD_TOO_LARGE, "the record is too large"),
        Err(_) => {
            return error(
                StatusCode::REQUEST_TIMEOUT,
                "the record did not arrive in time",
            )
        }
    };
    let record: Record = match serde_json::from_slice(&bytes) {
        Ok(r) => r,
        Err(e) => {
            return error(
                StatusCode::BAD_REQUEST,
                format!("not a capture record: {e}"),
            )
        }
    };
    let snap = live.load();
    let Some(i) = snap.routes.iter().position(|r| r.id == id) else {
        return error(
            StatusCode::NOT_FOUND,
            format!("no route `{}`", super::clip(id)),
        );
    };
    let copy = match copy_of(&record, &snap, i) {
        Ok(c) => c,
        Err(why) => return error(StatusCode::UNPROCESSABLE_ENTITY, why),
    };
    let route = &snap.routes[i];
    let side = match to {
        Side::New => &route.new,
        _ => &route.legacy,
    };
    let Some(upstream) = side.clone() else {
        return error(
            StatusCode::CONFLICT,
            format!("route `{id}` has no {} side", to.as_str()),
        );
    };
    let Some(sender) = snap.shadows.sender() else {
        return error(
            StatusCode::SERVICE_UNAVAILABLE,
            "the sender is not running yet",
        );
    };
    let config = Shadow {
        percent: Shift::ALL,
        methods: Vec::new(),
        ignore: Vec::new(),
        headers: Vec::new(),
        calibrate: false,
        max_body: SHOWN,
    };
    let mut budget = snap.shadows.capture();
    let started = Instant::now();
    let sent = match crate::shadow::slot(&upstream) {
        Ok(_slot) => sender.send(&copy, &upstream, &config, &mut budget).await,
        Err(why) => Err(why),
    };
    let took_ms = started.elapsed().as_secs_f64() * 1000.0;
    tracing::info!(route = %id, to = to.as_str(), method = %copy.method, path = %copy.path, "replayed a captured request");
    match sent {
        Ok(answer) => json_reply(
            StatusCode::OK,
            &json!({
                "to": to.as_str(),
                "upstream": upstream.name(),
                "status": answer.status,
                "content_type": answer.content_type,
                "body": String::from_utf8_lossy(&answer.body),
                "took_ms": took_ms,
            }),
        ),
        Err(e) => json_reply(
            StatusCode::OK,
            &json!({ "to": to.as_str(), "upstream": upstream.name(), "error": e, "took_ms": took_ms }),
        ),
    }
}

/// The request a record describes, checked against the route it is replayed on.
fn copy_of(record: &Record, snap: &crate::state::Snapshot, route: usize) -> Result<Copy, String> {
    let r = &record.request;
    let method = http::Method::from_bytes(r.method.as_bytes())
        .map_err(|_| format!("bad method `{}`", r.method))?;
    if method == http::Method::CONNECT {
        return Err("a CONNECT is never replayed".into());
    }
    let canonical = crate::routing::canonicalize(&r.path, crate::routing::PathParams::Reject)
        .map_err(|e| format!("the path is refused: {e}"))?;
    if canonical != r.path {
        return Err("the path is not in its canonical form".into());
    }
    // A query as a request line carries it: visible ASCII after its `?`, nothing a target or
    // a head could be split on.
    let visible = r.query.bytes().all(|b| b.is_ascii_graphic() && b != b'#');
    if !(r.query.is_empty() || r.query.starts_with('?')) || !visible {
        return Err("the query is malformed".into());
    }
    if r.body.truncated {
        return Err(
            "the body was kept cut (over the capture's max-body): it cannot be sent again whole"
                .into(),
        );
    }
    let body = Bytes::from(r.body.bytes()?);
    let size: usize = r.headers.iter().map(|(n, v)| n.len() + v.len() + 4).sum();
    if r.headers.len() > MAX_HEADERS || size > MAX_HEADER_BYTES {
        return Err(format!(
            "the record has more headers than a client may send ({MAX_HEADERS}, {MAX_HEADER_BYTES} bytes)"
        ));
    }
    let mut headers = HeaderMap::new();
    for (name, value) in &r.headers {
        let Ok(name) = HeaderName::from_bytes(name.as_bytes()) else {
            return Err(format!("bad header name `{name}`"));
        };
        let dropped = value == crate::telemetry::redact::REDACTED
            || name == http::header::CONTENT_LENGTH
            || name == http::header::TRANSFER_ENCODING
            || name == http::header::UPGRADE;
        if dropped {
            continue;
        }
        let value = HeaderValue::from_str(value).map_err(|_| format!("bad value for `{name}`"))?;
        headers.append(name, value);
    }
    let Some(host) = headers.get(http::header::HOST).cloned() else {
        return Err("the record has no `host` header".into());
    };
    // Routed as the client's request was: by the host it named (kept as `x-forwarded-host`
    // when the upstream was sent another), its path, method and head.
    let named = headers
        .get("x-forwarded-host")
        .unwrap_or(&host)
        .to_str()
        .ok()
        .and_then(crate::routing::host::normalize);
    let params = crate::routing::QueryParams::new(r.query.strip_prefix('?').unwrap_or(&r.query));
    let routed = snap.table.find(&crate::routing::Query {
        host: named.as_deref(),
        path: &r.path,
        method: &method,
        head: Some((&headers, &params)),
    });
    if routed != Some(route) {
        return Err(format!(
            "`{} {}` is not routed to `{}`",
            method, r.path, snap.routes[route].id
        ));
    }
    // The outbound header policy, as for any request, with no client to vouch for: what names
    // a client's address, what strangle owns or vouches for (claims), hop-by-hop headers,
    // rewrites and method overrides do not pass.
    let request_id = record
        .request_id
        .as_deref()
        .and_then(|id| HeaderValue::from_str(id).ok());
    let out = crate::pipeline::outbound::Outbound {
        peer: None,
        peer_trusted: false,
        client: None,
        https: false,
        host: Some(host),
        keep_upgrade: false,
        identity_headers: &snap.identity_headers,
        claims: &[],
        request_id: request_id.as_ref(),
        trace: None,
    };
    crate::pipeline::outbound::apply(&mut headers, &out);
    headers.remove(http::header::CONNECTION);
    headers.insert("x-strangle-replay", HeaderValue::from_static("1"));
    Ok(Copy {
        method,
        path: r.path.clone(),
        query: r.query.clone(),
        version: http::Version::HTTP_11,
        headers,
        body,
        source_ip: None,
        request_id: record.request_id.clone(),
        route_path: snap.routes[route].path.clone(),
        claims: None,
        trace: None,
        // A kept request is what its upstream got: its plugins already ran.
        plugins: std::sync::Arc::from(Vec::new()),
    })
}
