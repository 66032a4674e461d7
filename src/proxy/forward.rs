//! The forward stage of the Pingora adapter: the side's plugins, the route's body limits, the
//! `100 Continue`, the whole body for the upstreams that take it (Lambda, signed endpoints),
//! the `max-in-flight` slot, the shadow tap; then Lambda and signed upstreams are served here
//! and HTTP upstreams go back to Pingora.

use std::sync::Arc;

use bytes::Bytes;
use http::header;
use pingora::prelude::*;
use pingora::proxy::Session;

use super::respond::{self, refuse, respond};
use super::{aws, shadow, Ctx, Strangle};
use crate::lambda::PAYLOAD_LIMIT;
use crate::upstream::{Kind, Shared};

impl Strangle {
    /// The forward stage once a request is decided: upstreams that take the whole body get it
    /// first (within `body-timeout`, before a `max-in-flight` slot is taken, so a slow client
    /// holds nobody else's slot); Lambda and signed upstreams are served here; an HTTP
    /// upstream's request goes back to Pingora (`Ok(false)`).
    pub(super) async fn forward(&self, session: &mut Session, ctx: &mut Ctx) -> Result<bool> {
        let Some(upstream) = ctx.req.upstream().cloned() else {
            return respond(session, ctx, 500, "no upstream", &[]).await;
        };
        // The side's plugins, before anything else: one may answer the request itself.
        if let Err(a) = ctx.req.run_plugins(session.req_header()) {
            return respond::answer(session, ctx, a).await;
        }
        if let Some(r) = ctx.req.unanswered_preflight() {
            return refuse(session, ctx, r).await;
        }
        let body_timeout = ctx.req.snap.config.server.body_timeout;
        let max_body = ctx.req.policy().and_then(|p| p.max_body);
        let declared = session
            .req_header()
            .headers
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
        if let (Some(max), Some(n)) = (max_body, declared) {
            if n > max {
                // Refused unread: the connection cannot carry another request.
                session.set_keepalive(None);
                let why = "request body over the route's max-body";
                return respond(session, ctx, 413, why, &[]).await;
            }
        }
        let buffered_limit = match &upstream.kind {
            Kind::Lambda(_) => Some((PAYLOAD_LIMIT, "request body over Lambda's 6 MB limit")),
            Kind::Signed => Some((
                aws::SIGNED_BODY_LIMIT,
                "request body over API Gateway's 10 MB limit",
            )),
            Kind::Http(_) => None,
        }
        .map(|(limit, why)| match max_body {
            Some(max) if max < limit as u64 => {
                (max as usize, "request body over the route's max-body")
            }
            _ => (limit, why),
        });
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
        // What is read of the body is kept (Pingora's retry buffer, up to 64 KB), so that a
        // request the new side fails can be sent to legacy (`fallback`).
        if ctx.req.may_fall_back() {
            session.as_mut().enable_retry_buffering();
        }
        let body = match buffered_limit {
            Some((limit, too_large)) => match aws::read_body(session, limit, body_timeout).await? {
                Ok(b) => Some(b),
                Err(aws::BodyError::TooLarge) => {
                    return respond(session, ctx, 413, too_large, &[]).await
                }
                Err(aws::BodyError::TooSlow) => {
                    let why = "request body not received within body-timeout";
                    return respond(session, ctx, 408, why, &[]).await;
                }
            },
            None => {
                // Streamed to the upstream: each read of the body is bounded instead.
                session.set_read_timeout(Some(body_timeout));
                None
            }
        };
        if let Some(d) = ctx.req.decision.as_mut() {
            if let Err(r) = d.admit().await {
                return refuse(session, ctx, r).await;
            }
        }
        ctx.shadow = shadow::Tap::start(ctx, session);
        if let (Some(tap), Some(body)) = (ctx.shadow.as_mut(), &body) {
            tap.request_body(body);
            tap.request_done = true;
        }
        self.serve(session, ctx, upstream, body).await
    }

    /// Serves the decided request from `upstream`, and from the legacy side after it when the
    /// new side fails first and the route falls back (`Ctx::fall_back`).
    async fn serve(
        &self,
        session: &mut Session,
        ctx: &mut Ctx,
        mut upstream: Shared,
        body: Option<Bytes>,
    ) -> Result<bool> {
        loop {
            let served = match (&upstream.kind, &body) {
                (Kind::Lambda(_) | Kind::Signed, Some(body)) => {
                    let method = &session.req_header().method;
                    let body = match ctx.req.dress_request_body(method, body) {
                        Ok(body) => body,
                        Err(e) => return respond(session, ctx, 503, e.to_string(), &[]).await,
                    };
                    if matches!(upstream.kind, Kind::Lambda(_)) {
                        aws::serve_lambda(session, ctx, &upstream, body).await?
                    } else {
                        aws::serve_signed(session, ctx, &upstream, body).await?
                    }
                }
                (Kind::Http(_), _) => {
                    ctx.set_upstream_path();
                    return Ok(false);
                }
                _ => return respond(session, ctx, 500, "the body was not read", &[]).await,
            };
            match (served, ctx.req.upstream()) {
                (aws::Served::FellBack, Some(legacy)) => upstream = Arc::clone(legacy),
                _ => return Ok(true),
            }
        }
    }
}
