//! The HTTP/1 fast path: serves the origin-form HTTP/1 requests with no upgrade
//! (`http1::scan::plain_head`), bodies and `Expect` included, that make nearly all of an
//! edge's traffic, without Pingora's `HttpProxy` machinery around each one.
//!
//! **Same pipeline, same hooks.** It drives the `Strangle` adapter's own `ProxyHttp` hooks in
//! the order `HttpProxy` does (pingora-proxy 0.9.1 `process_request`, `proxy_to_upstream`,
//! `proxy_1to1`, `h1_response_filter`, `finish`, `handle_error`): `request_filter` (guard,
//! decide, the Lambda and signed sides), `upstream_peer`, `fail_to_connect`,
//! `connected_to_upstream`, `upstream_request_filter` (the outbound header policy),
//! `request_body_filter`, `upstream_response_filter`, `response_filter` (framing repair),
//! the body filters, `error_while_proxy`, `fail_to_proxy` and `logging` (account). Nothing of
//! the pipeline is written here a second time. Parsing and writing stay Pingora's HTTP/1
//! sessions (server and client side), with their framing checks.
//!
//! **What it leaves out, and why that is sound for the requests it takes.** No upgrade means
//! no tunnel; an origin-form target with the client's own `Host` means no authority to
//! reconcile (Pingora rewrites the authority only for absolute-form and HTTP/2 requests).
//! Body and response stream in one task, no channels: a piece of the body is read from the
//! client only once the last one is written upstream, and the response is read and written in
//! turn, so a slow reader on either side holds the other back (back-pressure), as Pingora's
//! bounded pipes do. The response is read while the body is still arriving (a 413 or a
//! redirect may come before the upload ends; what is left of the body is then drained from the
//! client, or its connection closed, and the upstream connection, still waiting for it, is not
//! kept). A write the upstream refuses after answering (it closed with the body unread, or
//! stopped reading until the write timed out) ends the upload, not the exchange: the answer is
//! still read and passed on, as `HttpProxy` does. While one write waits on a full socket the
//! response is not read (Pingora's client session reads and writes through one `&mut`), so an
//! upstream that answers and stops reading with the connection open is heard after its
//! `timeout`. The `100 Continue` is the pipeline's (the forward stage's, once authorized), as with
//! `HttpProxy`. Pingora's cache, compression and range modules are off in strangle, so they
//! are not run.
//!
//! **What is cheaper.** One task, no channels, no `try_join!`/`select!` per request, no
//! per-request timers of its own, and upstream connections from `pool` (no task per idle
//! connection, no `getpeername` to take one back). Connections are made by Pingora's
//! `TransportConnector` (the same connect and TLS code as `HttpProxy`'s).

use async_trait::async_trait;
use bytes::Bytes;
use pingora::apps::{HttpPersistentSettings, ReusedHttpStream};
use pingora::connectors::{ConnectorOptions, TransportConnector};
use pingora::http::ResponseHeader;
use pingora::prelude::*;
use pingora::protocols::http::v1::client::HttpSession as Upstream;
use pingora::protocols::http::HttpTask;
use pingora::protocols::{Stream, UniqueID};
use pingora::proxy::{ProxyHttp, Session};
use pingora::server::configuration::ServerConf;
use pingora::server::ShutdownWatch;
use pingora::upstreams::peer::{HttpPeer, Peer};
use pingora::{ErrorSource, ErrorType};

use super::respond::no_body;
use super::{pool, Ctx, Strangle};
use crate::http1::{Engine, Served, SessionSetup};

/// Attempts per request at most, as `HttpProxy` (`ServerConf::max_retries`); the upstream's
/// `retries` decides first (`Ctx::next_attempt`).
const MAX_ATTEMPTS: usize = 16;

/// The fast engine.
pub struct Fast {
    strangle: Strangle,
    connector: TransportConnector,
}

/// How an exchange with the upstream ended: whether the client's connection and the
/// upstream's can carry another request, and the error if it failed.
struct Outcome {
    client_reusable: bool,
    upstream_reusable: bool,
    error: Option<Box<Error>>,
}

impl Outcome {
    fn failed(upstream_reusable: bool, e: Box<Error>) -> Outcome {
        Outcome {
            client_reusable: false,
            upstream_reusable,
            error: Some(e),
        }
    }
}

impl Fast {
    pub fn new(strangle: Strangle, conf: &ServerConf) -> Fast {
        Fast {
            strangle,
            connector: TransportConnector::new(Some(ConnectorOptions::from_server_conf(conf))),
        }
    }

    /// Keeps `stream` as an idle connection to `peer`, as if a request had just used it: for
    /// benchmarks and tests that drive the engine on in-memory streams.
    #[doc(hidden)]
    pub fn keep_idle(peer: &HttpPeer, stream: Stream) {
        pool::give_back(peer.reuse_hash(), peer.idle_timeout(), stream);
    }

    /// `HttpProxy::process_request` for a request with no upgrade.
    async fn process(&self, mut session: Box<Session>) -> Option<Served> {
        let s = &self.strangle;
        let mut ctx = s.new_ctx();
        match s.request_filter(&mut session, &mut ctx).await {
            // Answered by the pipeline (a refusal, a Lambda or signed side).
            Ok(true) => return finish(s, session, &mut ctx, true, None).await,
            Ok(false) => {}
            Err(e) => {
                s.fail_to_proxy(&mut session, &e, &mut ctx).await;
                s.logging(&mut session, Some(&e), &mut ctx).await;
                session.downstream_session.on_proxy_failure(e);
                // `fail_to_proxy` never lets the client's connection be reused after an error.
                return None;
            }
        }
        let mut reusable = false;
        let mut error = None;
        for _ in 0..MAX_ATTEMPTS {
            let (r, e) = self.attempt(&mut session, &mut ctx).await;
            reusable = r;
            let retry = e.as_ref().is_some_and(|e| e.retry());
            error = e;
            if !retry {
                break;
            }
        }
        if let Some(e) = error.as_deref() {
            s.fail_to_proxy(&mut session, e, &mut ctx).await;
        }
        finish(s, session, &mut ctx, reusable, error).await
    }

    /// `HttpProxy::proxy_to_upstream` for an HTTP/1 upstream: one attempt, on a pooled
    /// connection when there is one.
    async fn attempt(&self, session: &mut Session, ctx: &mut Ctx) -> (bool, Option<Box<Error>>) {
        let s = &self.strangle;
        let peer = match s.upstream_peer(session, ctx).await {
            Ok(p) => p,
            Err(e) => return (false, Some(e)),
        };
        // The peer's pool key, hashed once for the take and the give-back.
        let key = peer.reuse_hash();
        let (stream, reused) = match pool::take(key) {
            Some(stream) => (stream, true),
            None => match self.connector.new_stream(&*peer).await {
                Ok(stream) => (stream, false),
                Err(mut e) => {
                    e.as_up();
                    let e = s.fail_to_connect(session, &peer, ctx, e);
                    return (false, Some(e.into_up()));
                }
            },
        };
        let mut upstream = Upstream::new_with_options(stream, &*peer);
        let out = exchange(s, session, &mut upstream, reused, &peer, ctx).await;
        if out.upstream_reusable {
            // As Pingora's connector releases one: what the response said of keep-alive
            // (`Connection: close`, HTTP/1.0, a body delimited by the close) decides.
            upstream.respect_keepalive();
            if let Some(stream) = upstream.reuse().await {
                pool::give_back(key, peer.idle_timeout(), stream);
            }
        }
        let error = out
            .error
            .map(|e| s.error_while_proxy(&peer, session, e, ctx, reused));
        (out.client_reusable, error)
    }
}

#[async_trait]
impl Engine for Fast {
    async fn serve(
        &self,
        stream: Stream,
        setup: SessionSetup,
        _shutdown: &ShutdownWatch,
    ) -> Option<Served> {
        // Boxed once: the session (over a kilobyte) is then handed on by pointer, not copied
        // from future to future.
        let mut session = Box::new(Session::new_h1(stream));
        setup.apply(&mut session.downstream_session);
        // `HttpProxy::handle_new_request`. The head is all here already (the transport saw
        // it), so there is no wait for a shutdown to cut short.
        match session.downstream_session.read_request().await {
            Ok(true) => {}
            Ok(false) => return None,
            Err(e) => {
                if matches!(e.etype(), ErrorType::InvalidHTTPHeader) {
                    let _ = session.downstream_session.respond_error(400).await;
                }
                session.downstream_session.shutdown().await;
                return None;
            }
        }
        self.process(session).await
    }
}

/// `HttpProxy::finish`: the account step, then the client's connection back to the transport
/// when it can carry another request.
async fn finish(
    s: &Strangle,
    mut session: Box<Session>,
    ctx: &mut Ctx,
    reusable: bool,
    error: Option<Box<Error>>,
) -> Option<Served> {
    s.logging(&mut session, error.as_deref(), ctx).await;
    if let Some(e) = error {
        session.downstream_session.on_proxy_failure(e);
    }
    if !reusable {
        return None;
    }
    let mut settings = HttpPersistentSettings::for_session(&session.downstream_session);
    let (stream, prefix) = session
        .downstream_session
        .finish()
        .await
        .ok()
        .flatten()?
        .into_parts();
    let pipelined = prefix.is_some();
    if let Some(prefix) = prefix {
        settings.set_pipelined_prefix(prefix);
    }
    Some(Served {
        reused: ReusedHttpStream::new(stream, Some(settings)),
        pipelined,
    })
}

/// Room in the upstream head's header maps for what the outbound policy adds (the forwarding
/// headers, the request id, `Host`, forwarded claims, the trace headers).
const POLICY_ROOM: usize = 14;

/// The client's request head, in its header names' case, as the start of the upstream's: a
/// copy with room for what the policy adds. `RequestHeader::clone` (what `HttpProxy` does)
/// copies both header maps at their exact length, so every header the policy then set grew
/// both of them: 16 of the 104 allocations a routed request made (`benches/allocs.sh`).
fn upstream_head(client: &RequestHeader) -> RequestHeader {
    // Without the names' case (not from an HTTP/1 parse) there is nothing to copy from.
    if !client.has_case() {
        return client.clone();
    }
    let room = client.headers.len() + POLICY_ROOM;
    RequestHeader::build(client.method.clone(), client.raw_path(), Some(room))
        .and_then(|mut up| {
            for (name, value) in client.case_header_iter() {
                up.append_header(name.clone(), value.clone())?;
            }
            Ok(up)
        })
        .unwrap_or_else(|_| client.clone())
}

/// `HttpProxy::proxy_to_h1_upstream` and `proxy_1to1`: the head out, then the body up and the
/// response back through the hooks, in one task.
async fn exchange(
    s: &Strangle,
    session: &mut Session,
    upstream: &mut Upstream,
    reused: bool,
    peer: &HttpPeer,
    ctx: &mut Ctx,
) -> Outcome {
    let fd = upstream.id();
    if let Err(e) = s
        .connected_to_upstream(session, reused, peer, fd, Some(upstream.digest()), ctx)
        .await
    {
        return Outcome::failed(false, e);
    }
    // What is read of the body is kept (up to 64 KB) to send again if this attempt fails; only
    // an idempotent request is ever sent again (`error_while_proxy`), so only its body is kept
    // (`HttpProxy` copies every body).
    if session.req_header().method.is_idempotent() && !session.as_mut().is_body_empty() {
        session.as_mut().enable_retry_buffering();
    }
    upstream.read_timeout = peer.options.read_timeout;
    upstream.write_timeout = peer.options.write_timeout;
    let mut req = Box::new(upstream_head(session.req_header()));
    req.set_version(http::Version::HTTP_11);
    // The outbound policy (hop-by-hop headers, the headers strangle vouches for, the path).
    if let Err(e) = s.upstream_request_filter(session, &mut req, ctx).await {
        return Outcome::failed(true, e);
    }
    if let Err(e) = upstream.write_request_header(req).await {
        return Outcome::failed(false, e.into_up());
    }
    // The body, if any, streams up while the response streams down, in one task: each piece
    // read from the client is written to the upstream before the next is read (back-pressure
    // both ways, as Pingora's bounded pipes give), and a response may start (or end: a 413,
    // a redirect) before the body is all sent. A retry sends again what the first attempt
    // read of the body (Pingora's retry buffer, as `HttpProxy` does).
    // Whether more of the body is to be read and sent, and whether all of it reached the
    // upstream. A write the upstream refuses (it answered early and closed, or stopped reading
    // until the write timed out) ends the sending, not the exchange: its answer, already on
    // the way, is read as usual and reaches the client (a 401 or 413 before an upload ends
    // is the upstream's to give), and only a failed read fails the exchange.
    let mut sending = !session.as_mut().is_body_done();
    let mut sent_whole = false;
    let resent = session.as_ref().get_retry_buffer();
    if resent.is_some() || !sending {
        let end = !sending;
        match send_body(s, session, upstream, resent, end, ctx).await {
            Ok(()) => sent_whole = end,
            Err(e) if e.esource() == &ErrorSource::Upstream => sending = false,
            Err(e) => return Outcome::failed(false, e),
        }
    }
    loop {
        let done = tokio::select! {
            // The response first: once it has begun, the client is answered as soon as the
            // upstream speaks, whatever the client is still sending.
            biased;
            task = upstream.read_response_task() => {
                match response_task(s, session, task, ctx).await {
                    Ok(done) => done,
                    Err(e) => return Outcome::failed(false, e),
                }
            }
            body = session.downstream_session.read_request_body(), if sending => {
                let body = match body {
                    Ok(body) => body,
                    Err(e) => return Outcome::failed(false, e.into_down()),
                };
                let end = body.is_none() || session.as_mut().is_body_done();
                match send_body(s, session, upstream, body, end, ctx).await {
                    Ok(()) => {
                        sending = !end;
                        sent_whole = end;
                    }
                    Err(e) if e.esource() == &ErrorSource::Upstream => {
                        tracing::debug!("the upstream stopped taking the body: {e}");
                        sending = false;
                    }
                    Err(e) => return Outcome::failed(false, e),
                }
                false
            }
        };
        if done {
            break;
        }
    }
    if let Err(e) = session.as_mut().finish_body().await {
        return Outcome::failed(false, e.into_down());
    }
    Outcome {
        // The rest of an unread body is drained (or the connection closed) as the client's
        // session is finished.
        client_reusable: true,
        // An upstream that answered before the whole body reached it is still waiting for the
        // rest of it (or refused it): the connection cannot carry another request.
        upstream_reusable: sent_whole,
        error: None,
    }
}

/// A piece of the request body (`None`: nothing new, at its end) through the body hook and
/// to the upstream; at the end of the body, the upstream's framing ends too.
async fn send_body(
    s: &Strangle,
    session: &mut Session,
    upstream: &mut Upstream,
    mut data: Option<Bytes>,
    end: bool,
    ctx: &mut Ctx,
) -> Result<()> {
    s.request_body_filter(session, &mut data, end, ctx).await?;
    if let Some(data) = data.filter(|d| !d.is_empty()) {
        upstream.write_body(&data).await.map_err(|e| e.into_up())?;
    }
    if end {
        upstream.finish_body().await.map_err(|e| e.into_up())?;
    }
    Ok(())
}

/// One task read from the upstream's response, through the response hooks and to the client.
/// Returns whether the response is complete.
async fn response_task(
    s: &Strangle,
    session: &mut Session,
    task: Result<HttpTask>,
    ctx: &mut Ctx,
) -> Result<bool> {
    match task.map_err(|e| e.into_up())? {
        HttpTask::Header(mut head, end) => {
            response_head(s, session, &mut head, end, ctx).await?;
            session
                .write_response_header(head, end)
                .await
                .map_err(|e| e.into_down())?;
            Ok(end)
        }
        HttpTask::Body(mut data, end) => {
            response_body(s, session, &mut data, end, ctx)?;
            session
                .write_response_body(data, end)
                .await
                .map_err(|e| e.into_down())?;
            Ok(end)
        }
        HttpTask::Failed(e) => Err(e),
        // No trailers or upgraded bodies on an HTTP/1 response to a request with no upgrade.
        HttpTask::Done | HttpTask::Trailer(_) | HttpTask::UpgradedBody(..) => Ok(true),
    }
}

/// The response head's hooks, as `HttpProxy::h1_response_filter` runs them.
async fn response_head(
    s: &Strangle,
    session: &mut Session,
    head: &mut ResponseHeader,
    end: bool,
    ctx: &mut Ctx,
) -> Result<()> {
    s.upstream_response_filter(session, head, ctx).await?;
    // A response delimited by the close (HTTP/1.0 style) goes on chunked, so the client's
    // connection can be kept alive.
    if !end
        && !no_body(head.status, &session.req_header().method)
        && !head.headers.contains_key(http::header::TRANSFER_ENCODING)
        && !head.headers.contains_key(http::header::CONTENT_LENGTH)
    {
        head.set_version(http::Version::HTTP_11);
        head.insert_header(http::header::TRANSFER_ENCODING, "chunked")?;
    }
    s.response_filter(session, head, ctx).await
}

/// A piece of the response body through both body hooks.
fn response_body(
    s: &Strangle,
    session: &mut Session,
    data: &mut Option<Bytes>,
    end: bool,
    ctx: &mut Ctx,
) -> Result<()> {
    s.upstream_response_body_filter(session, data, end, ctx)?;
    s.response_body_filter(session, data, end, ctx)?;
    Ok(())
}

#[cfg(test)]
mod tests;
