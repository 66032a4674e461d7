//! The Pingora engine: a thin `ProxyHttp` adapter over the request pipeline (`pipeline`).
//!
//! `request_filter` reads what the pipeline needs from Pingora's session, runs guard and decide,
//! and then forwards: Lambda and signed upstreams are served here (`aws`), plain HTTP upstreams
//! go back to Pingora, whose phases this adapter fills in: `upstream_peer` picks a healthy
//! address; `upstream_request_filter` applies the outbound header policy; the connection and
//! error hooks run the exchange deadlines, retries and passive health; `response_filter`
//! repairs framing (`respond::frame_response`); `logging` is the pipeline's account step.

mod attempt;
mod aws;
mod capture;
mod compress;
mod fast;
mod forward;
mod pool;
mod respond;
mod shadow;

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Instant;

use async_trait::async_trait;
use bytes::Bytes;
use http::header;
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::prelude::*;
use pingora::proxy::{FailToProxy, ProxyHttp, Session};
use pingora::upstreams::peer::HttpPeer;
use pingora::{ErrorSource, ErrorType};

use crate::exchange::ExchangeDeadline;
use crate::pipeline::guard::Inbound;
use crate::pipeline::{outbound, Finished, Request};
use crate::state::Live;
use crate::telemetry::AccessLogger;
pub use fast::Fast;
pub use pool::sweep as sweep_idle_upstreams;
use respond::{final_response_written, frame_response, no_body, refuse, respond};
pub use shadow::start as start_shadows;

/// The strangle proxy.
#[derive(Clone)]
pub struct Strangle {
    pub live: Arc<Live>,
    pub access: Arc<AccessLogger>,
}

impl Strangle {
    /// Accounts a request the HTTP/1 session answered before any filter ran (`status`: 400 for
    /// a head its parser refused, 405 for CONNECT): its access-log line, with no method or
    /// path to tell.
    pub fn malformed(&self, client: Option<IpAddr>, status: u16) {
        let ctx = self.new_ctx();
        let error = match status {
            400 => "malformed request head".to_string(),
            405 => "CONNECT is not served".to_string(),
            s => format!("refused ({s}) before routing"),
        };
        ctx.req.account(
            Some(&self.access),
            Finished {
                status,
                method: "-",
                path: "-",
                client,
                bytes: (0, 0),
                error: Some(error),
            },
        );
    }
}

/// Per-request state: the pipeline's request, the current upstream attempt, and how the
/// response went.
pub struct Ctx {
    req: Request,
    attempt: attempt::Attempt,
    /// The status the client got (or gets, should the grace period cut the response off).
    status: u16,
    error: Option<String>,
    /// The response failed after its head was handed on: it is logged and counted by its
    /// failure status, not the head's.
    replaced: bool,
    /// `logging` ran for this request.
    logged: bool,
    /// The capture of a shadowed request (`None` for nearly all).
    shadow: Option<Box<shadow::Tap>>,
    /// The answer's body held back for the side's body plugins (`None` for nearly all).
    held: Option<Box<crate::pipeline::plugins::HeldBody>>,
    /// The request's body held back for them, on its way to an HTTP side (this attempt's).
    held_request: Option<Box<crate::pipeline::plugins::HeldBody>>,
    /// A plugin gave the answer a status that has no body: the side's is not passed on.
    drop_body: bool,
    /// The answer's body compressed for the client (`None` for most).
    compress: Option<Box<compress::Encoder>>,
}

/// The request target exactly as the client sent it (HTTP/1, from `raw_head`), fragment and
/// all. A slice of the buffer the head was read into: no copy.
fn raw_target(session: &Session, raw_head: Option<&Bytes>) -> Bytes {
    if let Some(raw) = raw_head {
        let line_end = memchr::memchr(b'\n', raw).unwrap_or(raw.len());
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

/// 503 for a body the plugins' budget has no room for (never passed on unmade).
fn budget_spent<T>(e: crate::pipeline::plugins::BudgetSpent) -> Result<T> {
    Error::e_explain(ErrorType::HTTPStatus(503), e.to_string())
}

fn client_ip(session: &Session) -> Option<IpAddr> {
    session
        .client_addr()
        .and_then(|a| a.as_inet())
        .map(|a| a.ip())
}

/// Whether the client reached strangle over TLS.
fn https(session: &Session) -> bool {
    session.digest().is_some_and(|d| d.ssl_digest.is_some())
}

#[async_trait]
impl ProxyHttp for Strangle {
    type CTX = Ctx;

    fn new_ctx(&self) -> Ctx {
        Ctx {
            req: Request::new(self.live.load(), &self.live.lifecycle),
            attempt: attempt::Attempt::default(),
            status: 0,
            error: None,
            replaced: false,
            logged: false,
            shadow: None,
            held: None,
            held_request: None,
            drop_body: false,
            compress: None,
        }
    }

    async fn request_filter(&self, session: &mut Session, ctx: &mut Ctx) -> Result<bool> {
        let bad_request_line = crate::http1::head_parsed();
        if session.req_header().version == http::Version::HTTP_10 {
            // HTTP/1.0 has no interim responses (RFC 9110 section 15.2).
            session.as_downstream_mut().set_ignore_info_resp(true);
        }
        let raw_head = session
            .as_downstream()
            .as_http1()
            .map(|h1| h1.get_headers_raw_bytes());
        let inbound = Inbound {
            head: session.req_header(),
            target: raw_target(session, raw_head.as_ref()),
            raw_head: raw_head.as_deref(),
            bad_request_line,
            peer: client_ip(session),
            sni: crate::tls::sni(),
        };
        if let Err(r) = ctx.req.guard(inbound) {
            return refuse(session, ctx, r).await;
        }
        if let Err(r) = ctx.req.decide(session.req_header()).await {
            return refuse(session, ctx, r).await;
        }
        self.forward(session, ctx).await
    }

    async fn upstream_peer(&self, session: &mut Session, ctx: &mut Ctx) -> Result<Box<HttpPeer>> {
        let Some(http) = ctx.http_upstream() else {
            return Error::e_explain(ErrorType::HTTPStatus(500), "not an HTTP upstream");
        };
        let Some(backend) = http.select(ctx.attempt.avoid) else {
            // No address at all (its name does not resolve yet): nothing was sent, as after a
            // refused connect, so the route's fallback may serve it.
            let mut e = Error::explain(ErrorType::HTTPStatus(502), "no address to try");
            e.set_retry(ctx.fall_back(session, "no-address", 502));
            return Err(e);
        };
        let mut peer = http.peer(&backend);
        if let Some(t) = ctx.req.policy().and_then(|p| p.timeout) {
            // The route's `timeout` over the upstream's.
            peer.options.read_timeout = Some(t);
            peer.options.write_timeout = Some(t);
        }
        ctx.attempt.peer_addr = backend.addr.as_inet().copied();
        ctx.req.upstream_start.get_or_insert_with(Instant::now);
        Ok(peer)
    }

    fn fail_to_connect(
        &self,
        session: &mut Session,
        _peer: &HttpPeer,
        ctx: &mut Ctx,
        mut e: Box<Error>,
    ) -> Box<Error> {
        // Nothing was sent on a connection that never opened: any method may try another address,
        // and then the legacy side when the route falls back.
        ctx.report(false);
        let retry = ctx.next_attempt(true) || ctx.fall_back(session, "connect-error", 502);
        e.set_retry(retry);
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
        let Some(up) = ctx.req.upstream() else {
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
            .req
            .upstream_start
            .map_or(now, tokio::time::Instant::from_std);
        // Pingora's own framing says whether the body is all read (`Content-Length: 00` is no body
        // to it, whatever the header's spelling).
        let sent = ctx.attempt.request_sent || session.as_downstream_mut().is_body_done();
        ctx.attempt.deadline = ExchangeDeadline::arm(
            fd,
            head.filter(|_| sent).map(|d| (now + d, d)),
            total.map(|d| (started + d, d)),
        );
        Ok(())
    }

    async fn request_body_filter(
        &self,
        _session: &mut Session,
        body: &mut Option<Bytes>,
        end_of_stream: bool,
        ctx: &mut Ctx,
    ) -> Result<()> {
        // An HTTP/2 stream's body must keep coming (`http1::http2`): empty DATA frames are no
        // progress (a client could hold a stream with them for ever).
        if end_of_stream || body.as_ref().is_some_and(|b| !b.is_empty()) {
            crate::http1::http2_body_read(end_of_stream);
        }
        ctx.count_body(body.as_ref())?;
        if let Some(tap) = ctx.shadow.as_mut() {
            if let Some(data) = body.as_ref() {
                tap.request_body(data);
            }
            tap.request_done |= end_of_stream;
        }
        if let Some(held) = ctx.held_request.as_mut() {
            held.pass(body, end_of_stream).or_else(budget_spent)?;
            if !end_of_stream {
                // Nothing goes on yet (`None` would end the upstream's body).
                body.get_or_insert_with(Bytes::new);
            }
        }
        if end_of_stream && !ctx.attempt.request_sent {
            ctx.attempt.request_sent = true;
            let head = ctx.req.upstream().and_then(|u| u.config.response_timeout);
            if let (Some(d), Some(head)) = (&ctx.attempt.deadline, head) {
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
        let a = &ctx.attempt;
        // A total deadline that passed while the client was still uploading is the client's.
        let clients_fault =
            a.late.is_some() && !a.request_sent && !session.as_downstream_mut().is_body_done();
        if upstream_fault && !a.head_received && !clients_fault {
            ctx.report(false);
        }
        // A sent request that got no response is tried again on a fresh connection (another
        // address when there is one) only when repeating it is safe: an idempotent method,
        // a body still held whole, nothing of a response received or passed on, no deadline
        // passed, and retries left.
        let unanswered = upstream_fault
            && a.late.is_none()
            && !a.head_received
            && final_response_written(session).is_none();
        let retry = unanswered
            && session.req_header().method.is_idempotent()
            && !session.as_ref().retry_buffer_truncated();
        // A new side's answer the route falls back from (`upstream_response_filter`), or no
        // answer at all with the retries used up: the legacy side, when the route allows.
        let retry = match ctx.attempt.fallback_status.take() {
            Some(status) => ctx.fall_back(session, "status", status),
            None => {
                ctx.next_attempt(retry)
                    || (unanswered && ctx.fall_back(session, "no-response", 502))
            }
        };
        e.set_retry(retry);
        e
    }

    async fn upstream_request_filter(
        &self,
        session: &mut Session,
        up: &mut RequestHeader,
        ctx: &mut Ctx,
    ) -> Result<()> {
        if let Some(path) = ctx.attempt.upstream_path.as_deref() {
            up.set_raw_path(path.as_bytes())?;
        }
        let out = ctx.req.outbound(
            session.req_header(),
            https(session),
            session.is_upgrade_req(),
        );
        // What the side's plugins made of the headers, then the policy over it.
        if let Some(f) = ctx.req.forward.as_deref() {
            crate::pipeline::plugins::replace_headers(up, &f.headers);
        }
        outbound::apply(up, &out);
        if let Some(host) = ctx.http_upstream().and_then(|h| h.host_header.clone()) {
            up.insert_header(header::HOST, host)?;
        } else if !up.headers.contains_key(header::HOST) {
            // An HTTP/1.0 client may name no host; the upstream is spoken to in HTTP/1.1, which
            // needs one: the TLS server name, else the address it is sent to.
            let host = match (&ctx.req.sni, ctx.attempt.peer_addr) {
                (Some(name), _) => name.to_string(),
                (None, Some(addr)) => addr.to_string(),
                (None, None) => "localhost".to_string(),
            };
            up.insert_header(header::HOST, host)?;
        }
        if ctx.hold_request_body(session) {
            up.remove_header(&header::CONTENT_LENGTH);
        }
        // The body's framing is this hop's: the upstream gets the body as the session decoded
        // it, re-chunked unless its length is known (as Pingora's `HttpProxy` frames it; the
        // fast path does not run Pingora's own removal of `Transfer-Encoding`).
        up.remove_header(&header::TRANSFER_ENCODING);
        if !session.as_mut().is_body_empty() && !up.headers.contains_key(header::CONTENT_LENGTH) {
            up.insert_header(header::TRANSFER_ENCODING, "chunked")?;
        }
        Ok(())
    }

    async fn upstream_response_filter(
        &self,
        session: &mut Session,
        resp: &mut ResponseHeader,
        ctx: &mut Ctx,
    ) -> Result<()> {
        if resp.status.is_informational() && resp.status != http::StatusCode::SWITCHING_PROTOCOLS {
            return Ok(());
        }
        let status = resp.status.as_u16();
        if ctx.req.falls_back_on(status) && !session.as_ref().retry_buffer_truncated() {
            // Nothing of it goes out: the request is sent to legacy (`error_while_proxy`).
            ctx.attempt.fallback_status = Some(status);
            let why = format!("the new side answered {status}");
            return Error::e_explain(ErrorType::HTTPStatus(status), why);
        }
        ctx.attempt.head_received = true;
        if let Some(d) = &ctx.attempt.deadline {
            d.head_received();
        }
        ctx.report(true);
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
            .req
            .upstream()
            .map_or(64 * 1024, |u| u.config.max_response_header_bytes);
        if let Err(why) = frame_response(resp, session.req_header(), cap) {
            return Error::e_explain(ErrorType::HTTPStatus(502), why);
        }
        respond::side_response(session, ctx, resp, false)?;
        if !resp.status.is_informational() {
            compress::start(session, ctx, resp, false);
            ctx.status = resp.status.as_u16();
            // Only interim responses went out before this one: a failure from here on is
            // judged by what of this response reached the client.
            crate::http1::final_response_starts(session.as_downstream());
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
        respond::finish_response(session, ctx, resp)
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
        body: &mut Option<Bytes>,
        end_of_stream: bool,
        ctx: &mut Ctx,
    ) -> Result<Option<std::time::Duration>> {
        if let Some(held) = ctx.held.as_mut() {
            held.pass(body, end_of_stream).or_else(budget_spent)?;
        }
        if ctx.drop_body {
            *body = None;
        }
        if let (Some(tap), Some(data)) = (ctx.shadow.as_mut(), body.as_ref()) {
            tap.body(data);
        }
        compress::body(ctx, body, end_of_stream)?;
        if end_of_stream {
            crate::http1::http2_response_done();
        }
        ctx.body_passed(end_of_stream)
    }

    async fn fail_to_proxy(&self, session: &mut Session, e: &Error, ctx: &mut Ctx) -> FailToProxy {
        ctx.disarm();
        let code = match e.etype() {
            _ if ctx.attempt.late.is_some() => 504,
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
        ctx.error = Some(match ctx.attempt.late {
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
            crate::http1::fail_response(
                session.as_downstream(),
                respond::error_reply(code, ctx.req.request_id.as_ref()),
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
        // An interim response (a `100 Continue` the client hung up after) is never the status.
        let status = match final_response_written(session) {
            Some(r) if !ctx.replaced => r.status.as_u16(),
            _ => ctx.status,
        };
        let error = ctx.error.take().or_else(|| e.map(|e| e.to_string()));
        if ctx.shadow.is_some() {
            capture::keep(session, ctx, status, error.as_deref());
            shadow::submit(session, ctx, status, error.is_some() || ctx.replaced);
        }
        let req = session.req_header();
        let path = ctx.req.logged_path(req.uri.path());
        ctx.req.account(
            Some(&self.access),
            Finished {
                status,
                method: req.method.as_str(),
                path: &path,
                client: ctx.req.client.addr.or_else(|| client_ip(session)),
                bytes: (session.body_bytes_read(), session.body_bytes_sent()),
                error,
            },
        );
    }
}
