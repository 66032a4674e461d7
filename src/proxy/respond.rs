//! Responses the Pingora adapter writes or checks: strangle's own answers (refusals, errors),
//! what every response gets on its way out, and the framing repair of an upstream's response.

use bytes::Bytes;
use http::header::{self, HeaderName, HeaderValue};
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::prelude::*;
use pingora::proxy::Session;

use super::Ctx;
use crate::pipeline::outbound::hop_by_hop;
use crate::pipeline::Refusal;

/// As static text: Pingora copies a `HeaderName` it does not know into the name's wire form.
const X_REQUEST_ID: &str = "x-request-id";

/// Answers a request the pipeline refused.
pub(super) async fn refuse(session: &mut Session, ctx: &mut Ctx, r: Refusal) -> Result<bool> {
    if let Some(a) = r.answer {
        return answer(session, ctx, a).await;
    }
    respond(session, ctx, r.status, r.why, &r.headers).await
}

/// Ends the request with an empty response carrying `extra` headers. Malformed requests
/// (400, 431) also close the connection: after a framing error nothing else on it can be
/// trusted.
pub(super) async fn respond(
    session: &mut Session,
    ctx: &mut Ctx,
    status: u16,
    why: impl Into<String>,
    extra: &[(HeaderName, String)],
) -> Result<bool> {
    ctx.status = status;
    ctx.error = Some(why.into());
    if crate::pipeline::closes_connection(status) {
        session.set_keepalive(None);
    }
    let mut resp = ResponseHeader::build(status, Some(3 + extra.len()))?;
    for (name, value) in extra {
        resp.insert_header(name.clone(), value.as_str())?;
    }
    resp.insert_header(header::CONTENT_LENGTH, "0")?;
    let discard = will_discard_body(session);
    finish_response(session, ctx, &mut resp)?;
    session.write_response_header(Box::new(resp), true).await?;
    settle_http2(session, true).await;
    discard_body(session, discard).await;
    Ok(true)
}

/// The most of an unread HTTP/1 request body read and thrown away after strangle's own answer
/// (a refusal, a fixed answer), and for how long, so that the connection carries the client's
/// next request as nginx's discarding does; a body larger or slower than that ends the
/// connection, as one never read always did.
const DISCARD_LIMIT: u64 = 64 * 1024;
const DISCARD_TIME: std::time::Duration = std::time::Duration::from_secs(1);

/// Whether the request body still unread will be discarded after the answer (then the answer
/// says `keep-alive`): HTTP/1, a connection still to be kept, a body of at most
/// `DISCARD_LIMIT` declared or chunked, and no `Expect: 100-continue` (a client waiting for a
/// go-ahead it will not get never sends the body: the connection ends instead, or its next
/// request would be read as the body).
fn will_discard_body(session: &mut Session) -> bool {
    if session.is_http2() || session.get_keepalive().is_none() || session.as_mut().is_body_done() {
        return false;
    }
    let headers = &session.req_header().headers;
    if headers.contains_key(header::EXPECT) {
        return false;
    }
    // Only a framing the guard reads the same way: one plain length, or `chunked` alone.
    let one = |name| {
        let mut all = headers.get_all(name).iter();
        match (all.next(), all.next()) {
            (Some(v), None) => v.to_str().ok().map(str::trim),
            _ => None,
        }
    };
    let small = match (
        headers.contains_key(header::CONTENT_LENGTH),
        headers.contains_key(header::TRANSFER_ENCODING),
    ) {
        (true, false) => one(header::CONTENT_LENGTH)
            .filter(|v| !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()))
            .and_then(|v| v.parse::<u64>().ok())
            .is_some_and(|n| n <= DISCARD_LIMIT),
        (false, true) => {
            one(header::TRANSFER_ENCODING).is_some_and(|v| v.eq_ignore_ascii_case("chunked"))
        }
        _ => false,
    };
    if small {
        session
            .as_mut()
            .set_close_on_response_before_downstream_finish(false);
    }
    small
}

/// Reads and drops the rest of the request body (`will_discard_body`); when it is not all
/// there within `DISCARD_LIMIT` bytes and `DISCARD_TIME`, the connection ends after all.
async fn discard_body(session: &mut Session, discard: bool) {
    if !discard {
        return;
    }
    let mut read = 0u64;
    let drained = tokio::time::timeout(DISCARD_TIME, async {
        loop {
            match session.as_mut().read_request_body().await {
                Ok(Some(chunk)) => {
                    read += chunk.len() as u64;
                    if read > DISCARD_LIMIT {
                        return false;
                    }
                }
                Ok(None) => return true,
                Err(_) => return false,
            }
        }
    })
    .await;
    if drained != Ok(true) {
        session.set_keepalive(None);
    }
}

/// How long an HTTP/2 answer given before the request body ended waits for the rest of it
/// (what is already on its way), which also lets the connection send the answer.
const HTTP2_DRAIN: std::time::Duration = std::time::Duration::from_millis(100);

/// After strangle's own answer on HTTP/2 (`head_only`: a head with no body written): the
/// stream is ended here (Pingora ends it only when it finishes the session, which it does not
/// after a failure: the stream would be reset instead, and the client see no answer), and the
/// rest of an unread request body is read and discarded, for 100 ms at most: a stream
/// dropped with body data unread is reset, and the HTTP/2 library then discards what is still
/// queued for it, the answer included. A client still sending after that gets the reset.
pub(super) async fn settle_http2(session: &mut Session, head_only: bool) {
    if !session.is_http2() {
        return;
    }
    if head_only {
        let _ = session.write_response_body(None, true).await;
    }
    if !session.as_mut().is_body_done() {
        let _ = tokio::time::timeout(HTTP2_DRAIN, session.as_mut().drain_request_body()).await;
    }
}

/// Ends the request with the answer a plugin gave instead of the side.
pub(super) async fn answer(
    session: &mut Session,
    ctx: &mut Ctx,
    a: Box<strangle_plugin::Answer>,
) -> Result<bool> {
    ctx.status = a.status.as_u16();
    let mut resp = ResponseHeader::build(a.status, Some(3 + a.headers.len()))?;
    for (name, value) in &a.headers {
        if name != header::CONTENT_LENGTH && name != header::TRANSFER_ENCODING {
            resp.append_header(name.clone(), value.clone())?;
        }
    }
    resp.insert_header(header::CONTENT_LENGTH, a.body.len().to_string())?;
    let discard = will_discard_body(session);
    finish_response(session, ctx, &mut resp)?;
    let head_only = a.body.is_empty() || session.req_header().method == http::Method::HEAD;
    session
        .write_response_header(Box::new(resp), head_only)
        .await?;
    if !head_only {
        session.write_response_body(Some(a.body), true).await?;
    }
    settle_http2(session, head_only).await;
    discard_body(session, discard).await;
    Ok(true)
}

/// The side's response plugins on its answer (a final one), before `finish_response`. When
/// they work on its body, it is held back (`Ctx::held`) and, unless the caller has it `whole`
/// already, goes out chunked (its length will change).
pub(super) fn side_response(
    session: &Session,
    ctx: &mut Ctx,
    resp: &mut ResponseHeader,
    whole: bool,
) -> Result<()> {
    let Some(chain) = ctx.req.response_chain() else {
        return Ok(());
    };
    if chain.is_empty() || resp.status.is_informational() {
        return Ok(());
    }
    let chain = std::sync::Arc::clone(chain);
    let req = session.req_header();
    let original = resp.status;
    let mut status = resp.status;
    crate::pipeline::plugins::response(
        &chain,
        &req.method,
        req.uri.path(),
        &req.headers,
        &mut status,
        &mut crate::pipeline::plugins::PingoraResponse(resp),
    );
    if status != resp.status {
        resp.set_status(status)?;
    }
    if no_body(resp.status, &http::Method::GET) {
        // A status that has no body (a plugin's 204 or 304): nothing may say there is one, and
        // the side's body is not passed on.
        resp.remove_header(&header::CONTENT_LENGTH);
        resp.remove_header(&header::TRANSFER_ENCODING);
        ctx.drop_body = !no_body(original, &http::Method::GET);
        return Ok(());
    }
    let held = crate::pipeline::plugins::hold_body(&chain, original, resp.status, &resp.headers);
    if req.method == http::Method::HEAD {
        // No body, but the head says what GET would get: not the side's length.
        if held.is_some() {
            resp.remove_header(&header::CONTENT_LENGTH);
        }
        return Ok(());
    }
    ctx.held = held;
    if ctx.held.is_some() && !whole {
        resp.remove_header(&header::CONTENT_LENGTH);
        if !session.is_http2() && req.version == http::Version::HTTP_11 {
            resp.insert_header(header::TRANSFER_ENCODING, "chunked")?;
        }
    }
    Ok(())
}

/// What strangle sets on every response it sends, whichever path made it (an upstream's,
/// a Lambda function's, a signed endpoint's, its own): hop-by-hop headers removed (an upgrade's
/// pair kept for a switch the client asked for), the request id, and `Connection: close` when
/// the connection ends after this response (draining, or a session not to be reused): a client
/// must not send another request on it only to find it closed.
pub(super) fn finish_response(
    session: &mut Session,
    ctx: &mut Ctx,
    resp: &mut ResponseHeader,
) -> Result<()> {
    if let Some(tap) = ctx.shadow.as_mut() {
        tap.head(resp);
    }
    let upgrade = resp.status == http::StatusCode::SWITCHING_PROTOCOLS && session.is_upgrade_req();
    for name in hop_by_hop(&resp.headers, upgrade) {
        resp.remove_header(&name);
    }
    if let Some(id) = &ctx.req.request_id {
        resp.insert_header(X_REQUEST_ID, id.clone())?;
    }
    if !upgrade {
        if ctx.req.lifecycle().draining() {
            session.set_keepalive(None);
        }
        // HTTP/2 has no `Connection` (a drain sends GOAWAY instead).
        if session.get_keepalive().is_none() && !session.is_http2() {
            resp.insert_header(header::CONNECTION, "close")?;
        }
    }
    Ok(())
}

/// A complete error response in wire form, for a response that failed after its head was
/// handed to the transport but before any of it went out.
pub(super) fn error_reply(code: u16, request_id: Option<&HeaderValue>) -> Bytes {
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
pub(super) fn final_response_written(session: &Session) -> Option<&ResponseHeader> {
    session.response_written().filter(|r| {
        !r.status.is_informational() || r.status == http::StatusCode::SWITCHING_PROTOCOLS
    })
}

/// Responses that never have a body (RFC 9110 sections 6.4.1, 15.3.5, 15.4.5).
pub(super) fn no_body(status: http::StatusCode, method: &http::Method) -> bool {
    status.is_informational()
        || status == http::StatusCode::NO_CONTENT
        || status == http::StatusCode::NOT_MODIFIED
        || method == http::Method::HEAD
}

/// Checks and repairs an upstream response's framing before it is passed on: no body headers
/// on responses that cannot have a body, one unambiguous length, a head within `cap` bytes.
pub(super) fn frame_response(
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
