//! The forward stage for upstreams strangle calls with its own client: a Lambda function
//! invoked directly (the request becomes an event) and a SigV4-signed HTTP endpoint (API
//! Gateway, Function URLs). Both take the whole request body first; both get their headers
//! from the one outbound policy (`Request::outbound`).

use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use http::header::{self, HeaderName, HeaderValue};
use pingora::http::ResponseHeader;
use pingora::prelude::*;
use pingora::proxy::Session;
use pingora::ErrorType;

use super::respond::{finish_response, respond};
use super::Ctx;
use crate::config::Target;
use crate::lambda::{event, InvokeError, PAYLOAD_LIMIT};
use crate::pipeline::outbound;
use crate::upstream::{Kind, Shared};

/// API Gateway's limit on a request payload.
pub(super) const SIGNED_BODY_LIMIT: usize = 10 * 1024 * 1024;

/// Why a buffered body was not read.
pub(super) enum BodyError {
    TooLarge,
    TooSlow,
}

/// Reads the whole request body within `deadline` (a slow client must not hold an upstream's
/// `max-in-flight` slot, so this runs before the slot is taken). Over `limit` or late, the
/// connection is marked for closing: the rest of the body is never read.
pub(super) async fn read_body(
    session: &mut Session,
    limit: usize,
    deadline: Duration,
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
        if !chunk.is_empty() {
            crate::http1::http2_body_read(false);
        }
        if body.len() + chunk.len() > limit {
            session.set_keepalive(None);
            return Ok(None);
        }
        body.extend_from_slice(&chunk);
    }
    // Read whole (bounded above by `body-timeout` in all): an HTTP/2 stream's body is done.
    crate::http1::http2_body_read(true);
    Ok(Some(body.freeze()))
}

/// The protocol as a Lambda event names it.
pub(super) fn protocol(version: http::Version) -> &'static str {
    match version {
        http::Version::HTTP_10 => "HTTP/1.0",
        http::Version::HTTP_2 => "HTTP/2.0",
        _ => "HTTP/1.1",
    }
}

/// The URL a signed upstream is called at for `path` and `query` (`None`: not a signed URL
/// upstream).
pub(super) fn signed_uri(upstream: &Shared, path: &str, query: &str) -> Option<String> {
    let Target::Url { tls, .. } = &upstream.config.target else {
        return None;
    };
    upstream.config.sigv4.as_ref()?;
    let scheme = if *tls { "https" } else { "http" };
    let authority = upstream.config.target.socket_authority()?;
    Some(format!(
        "{scheme}://{authority}{}{path}{query}",
        upstream.base_path()
    ))
}

/// The headers a signed request carries: the policed ones less those the signature sets (a
/// client's copies would be signed as if strangle sent them).
pub(super) fn signable(headers: &http::HeaderMap) -> Vec<(HeaderName, HeaderValue)> {
    headers
        .iter()
        .filter(|(k, _)| {
            **k != header::HOST && **k != header::AUTHORIZATION && !event::is_reserved(k.as_str())
        })
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

/// Answers a failed call to an AWS endpoint with the status that failure maps to; the failure's
/// own text goes to the log, never to the client.
async fn fail_aws(session: &mut Session, ctx: &mut Ctx, e: InvokeError) -> Result<bool> {
    let status = e.status();
    let upstream = ctx.req.upstream().map_or("", |u| u.name());
    tracing::warn!(upstream = %upstream, request_id = %ctx.req.request_id_str(), status, "upstream call failed: {e}");
    let retry = [(header::RETRY_AFTER, "1".to_string())];
    let extra: &[(HeaderName, String)] = if status == 503 { &retry } else { &[] };
    respond(session, ctx, status, e.to_string(), extra).await
}

/// The request's headers after the outbound policy, as every upstream kind gets them.
fn policed_headers(session: &Session, ctx: &Ctx) -> http::HeaderMap {
    let mut headers = match &ctx.req.forward {
        Some(f) => f.headers.clone(),
        None => session.req_header().headers.clone(),
    };
    let out = ctx.req.outbound(
        session.req_header(),
        super::https(session),
        session.is_upgrade_req(),
    );
    outbound::apply(&mut headers, &out);
    headers
}

/// How a Lambda or signed upstream's part ended.
pub(super) enum Served {
    /// The client has its answer (the upstream's, or the failure's).
    Answered,
    /// The new side failed first and the request now goes to the legacy side (`fallback`).
    FellBack,
}

/// Answers a failure, unless the route falls back from it.
async fn failed(
    session: &mut Session,
    ctx: &mut Ctx,
    why: &'static str,
    e: InvokeError,
) -> Result<Served> {
    if ctx.fall_back(session, why, e.status()) {
        tracing::warn!(request_id = %ctx.req.request_id_str(), "the new side failed: {e}");
        return Ok(Served::FellBack);
    }
    fail_aws(session, ctx, e).await?;
    Ok(Served::Answered)
}

/// Serves a request from a Lambda function: the event built from the request and its body,
/// the function invoked, its answer written back.
pub(super) async fn serve_lambda(
    session: &mut Session,
    ctx: &mut Ctx,
    upstream: &Shared,
    body: Bytes,
) -> Result<Served> {
    let Kind::Lambda(lambda) = &upstream.kind else {
        respond(session, ctx, 500, "not a lambda upstream", &[]).await?;
        return Ok(Served::Answered);
    };
    let mut headers = policed_headers(session, ctx);
    if headers.contains_key(header::CONTENT_LENGTH) {
        // The body's own (the side's body plugins may have changed it).
        headers.insert(header::CONTENT_LENGTH, HeaderValue::from(body.len()));
    }
    let req = session.req_header();
    let route_path = ctx
        .req
        .route
        .map_or("/", |i| ctx.req.snap.routes[i].path.as_str());
    let protocol = protocol(req.version);
    let (path, query) = match (ctx.req.forward_path(), &ctx.req.path) {
        (Some(path), Some(p)) => (path, p.query()),
        _ => {
            respond(session, ctx, 500, "no path", &[]).await?;
            return Ok(Served::Answered);
        }
    };
    let event = event::encode(
        lambda.payload(),
        &event::Request {
            method: req.method.as_str(),
            path,
            query: query.strip_prefix('?').unwrap_or(&query),
            headers: &headers,
            body: &body,
            source_ip: ctx.req.client.addr,
            request_id: ctx.req.request_id_str(),
            protocol,
            route_path,
            now: SystemTime::now(),
            claims: ctx.req.decision.as_ref().and_then(|d| d.claims.as_deref()),
        },
    );
    if event.len() > PAYLOAD_LIMIT {
        respond(session, ctx, 413, "event over Lambda's 6 MB limit", &[]).await?;
        return Ok(Served::Answered);
    }
    ctx.req.upstream_start = Some(Instant::now());
    let xray = ctx
        .req
        .trace
        .filter(|_| ctx.req.snap.trace.is_some_and(|p| p.xray))
        .map(|t| t.xray());
    let timeout = ctx.req.policy().and_then(|p| p.timeout);
    let response = match lambda
        .invoke(event, xray.as_ref().map(|x| &x[..]), timeout)
        .await
    {
        Ok(r) => r,
        Err(e) => return failed(session, ctx, "invoke-error", e).await,
    };
    if ctx.req.falls_back_on(response.status) && ctx.fall_back(session, "status", response.status) {
        return Ok(Served::FellBack);
    }
    let mut resp = ResponseHeader::build(response.status, Some(response.headers.len() + 2))?;
    for (name, value) in response.headers {
        if name == header::CONTENT_LENGTH || name == header::TRANSFER_ENCODING {
            continue;
        }
        resp.append_header(name, value)?;
    }
    super::respond::side_response(session, ctx, &mut resp, true)?;
    let mut body = response.body;
    let made = match ctx.held.take() {
        Some(mut held) => held
            .whole(&body)
            .map_err(|e| Error::explain(ErrorType::HTTPStatus(503), e.to_string()))?,
        None => None,
    };
    if let Some(made) = made {
        body = made;
    }
    if ctx.drop_body {
        body = Bytes::new();
    } else {
        resp.insert_header(header::CONTENT_LENGTH, body.len().to_string())?;
    }
    if let Some(tap) = ctx.shadow.as_mut() {
        tap.body(&body);
    }
    super::compress::start(session, ctx, &mut resp, true);
    if ctx.compress.is_some() {
        let mut data = Some(body);
        super::compress::body(ctx, &mut data, true)?;
        body = data.unwrap_or_default();
        resp.insert_header(header::CONTENT_LENGTH, body.len().to_string())?;
    }
    finish_response(session, ctx, &mut resp)?;
    ctx.status = resp.status.as_u16();
    let empty = body.is_empty();
    session.write_response_header(Box::new(resp), empty).await?;
    if !empty {
        session.write_response_body(Some(body), true).await?;
    }
    Ok(Served::Answered)
}

/// Forwards a request to an AWS HTTP endpoint with a SigV4 signature, which needs the whole
/// body (its hash is signed); the response streams back.
pub(super) async fn serve_signed(
    session: &mut Session,
    ctx: &mut Ctx,
    upstream: &Shared,
    body: Bytes,
) -> Result<Served> {
    let Some(path) = &ctx.req.path else {
        respond(session, ctx, 500, "no path", &[]).await?;
        return Ok(Served::Answered);
    };
    let (Some(sig), Some(uri)) = (
        &upstream.config.sigv4,
        signed_uri(
            upstream,
            ctx.req.forward_path().unwrap_or_else(|| path.routed()),
            &path.query(),
        ),
    ) else {
        respond(session, ctx, 500, "not a signed url upstream", &[]).await?;
        return Ok(Served::Answered);
    };
    let headers = signable(&policed_headers(session, ctx));
    let method = session.req_header().method.as_str().to_string();
    let started = Instant::now();
    ctx.req.upstream_start = Some(started);
    let route_timeout = ctx.req.policy().and_then(|p| p.timeout);
    let timeout = route_timeout.unwrap_or(upstream.config.timeout);
    let done_by = upstream.config.request_timeout.map(|t| started + t);
    let response = match crate::lambda::send_signed(
        crate::lambda::Caller::Request,
        sig,
        &method,
        &uri,
        headers,
        body,
        upstream.config.head_deadline_with(route_timeout),
    )
    .await
    {
        Ok(r) => r,
        Err(e) => return failed(session, ctx, "signed-error", e).await,
    };
    let status = response.status().as_u16();
    if ctx.req.falls_back_on(status) && ctx.fall_back(session, "status", status) {
        return Ok(Served::FellBack);
    }
    let (parts, mut incoming) = response.into_parts();
    let mut resp = ResponseHeader::build(parts.status.as_u16(), Some(parts.headers.len() + 1))?;
    for (k, v) in &parts.headers {
        if *k != header::TRANSFER_ENCODING {
            resp.append_header(k.clone(), v.clone())?;
        }
    }
    super::respond::side_response(session, ctx, &mut resp, false)?;
    super::compress::start(session, ctx, &mut resp, false);
    finish_response(session, ctx, &mut resp)?;
    ctx.status = resp.status.as_u16();
    session.write_response_header(Box::new(resp), false).await?;
    loop {
        // Each read within `timeout`, all of them by `request-timeout`.
        let wait = done_by.map_or(timeout, |by| {
            timeout.min(by.saturating_duration_since(Instant::now()))
        });
        match tokio::time::timeout(wait, http_body_util::BodyExt::frame(&mut incoming)).await {
            Ok(Some(Ok(frame))) => {
                if let Ok(data) = frame.into_data() {
                    let mut data = Some(data);
                    if let Some(held) = ctx.held.as_mut() {
                        held.pass(&mut data, false).map_err(|e| {
                            Error::explain(ErrorType::HTTPStatus(503), e.to_string())
                        })?;
                    }
                    if let Some(data) = data.filter(|_| !ctx.drop_body) {
                        if let Some(tap) = ctx.shadow.as_mut() {
                            tap.body(&data);
                        }
                        let mut data = Some(data);
                        super::compress::body(ctx, &mut data, false)?;
                        if data.is_some() {
                            session.write_response_body(data, false).await?;
                        }
                    }
                }
            }
            Ok(None) => break,
            Ok(Some(Err(e))) => {
                let e = Error::explain(ErrorType::ReadError, format!("upstream body: {e}"));
                return Err(e.into_up());
            }
            Err(_) => {
                ctx.attempt.late = upstream
                    .config
                    .request_timeout
                    .filter(|_| done_by.is_some_and(|by| Instant::now() >= by))
                    .map(crate::exchange::Late::Total);
                let e = Error::explain(ErrorType::ReadTimedout, "upstream body timed out");
                return Err(e.into_up());
            }
        }
    }
    let mut rest = None;
    if let Some(held) = ctx.held.as_mut() {
        held.pass(&mut rest, true)
            .map_err(|e| Error::explain(ErrorType::HTTPStatus(503), e.to_string()))?;
    }
    if ctx.drop_body {
        rest = None;
    }
    if let (Some(tap), Some(data)) = (ctx.shadow.as_mut(), rest.as_ref()) {
        tap.body(data);
    }
    super::compress::body(ctx, &mut rest, true)?;
    session.write_response_body(rest, true).await?;
    Ok(Served::Answered)
}
