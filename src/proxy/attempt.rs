//! A request's exchange with its HTTP upstream across retries (`Attempt`), and what the
//! adapter's hooks do with it: deadlines, passive health, the next attempt; and the account of
//! a request the end of the grace period cut off.

use std::net::SocketAddr;

use pingora::prelude::*;
use pingora::proxy::Session;
use pingora::ErrorType;

use super::Ctx;
use crate::exchange::{ExchangeDeadline, Late};
use crate::pipeline::Finished;
use crate::upstream::{HttpUpstream, Kind};

/// The exchange with an HTTP upstream, across retries.
#[derive(Default)]
pub(super) struct Attempt {
    /// The path to send upstream when it differs from the client's (normalised or prefixed).
    pub(super) upstream_path: Option<String>,
    pub(super) peer_addr: Option<SocketAddr>,
    pub(super) avoid: Option<SocketAddr>,
    /// Attempts after the first (a refused connect, or a sent idempotent request that got no
    /// response), at most the upstream's `retries`.
    pub(super) retried: usize,
    /// The upstream's response head arrived (a retry after that would repeat a response).
    pub(super) head_received: bool,
    /// `response-timeout` / `request-timeout` on the current upstream connection.
    pub(super) deadline: Option<ExchangeDeadline>,
    /// A deadline passed on an earlier attempt or this one.
    pub(super) late: Option<Late>,
    /// The whole request (head and body) has been sent upstream (for the head's deadline and
    /// passive health: a slow client's upload is never the upstream's fault).
    pub(super) request_sent: bool,
    /// The new side answered with a status the route falls back from.
    pub(super) fallback_status: Option<u16>,
    /// Request body bytes passed on this attempt (against the route's `max-body`).
    pub(super) body_bytes: u64,
}

impl Drop for Ctx {
    fn drop(&mut self) {
        let stalled = !self.logged && crate::http1::http2_reset_for_stall();
        if !self.logged && (stalled || self.req.lifecycle().cut_off()) {
            // The end of the grace period, or an HTTP/2 request body that stopped coming after
            // the response, dropped this request: it is logged and counted.
            let target = self.req.raw_target();
            let target = String::from_utf8_lossy(&target);
            let fallback = target.split('?').next().unwrap_or("");
            let method = self.req.method.as_ref().map_or("", http::Method::as_str);
            let path = self.req.logged_path(fallback);
            self.req.account(
                self.req.lifecycle().cut_off_log(),
                Finished {
                    status: self.status,
                    method,
                    path: &path,
                    client: self.req.client.addr,
                    bytes: (0, 0),
                    error: Some(if stalled {
                        "reset: the request body stopped coming (body-timeout) after the response"
                            .into()
                    } else {
                        "cut off: the grace period ended before the response did".into()
                    }),
                },
            );
        }
    }
}

impl Ctx {
    /// Response body passed (upstream side or client side). At its end the deadline is over;
    /// if it had passed, the end is the socket shutdown that ended a late exchange, read as
    /// the end of a body delimited by the close, and the client's response must not end as if
    /// complete: an error instead.
    pub(super) fn body_passed(
        &mut self,
        end_of_stream: bool,
    ) -> Result<Option<std::time::Duration>> {
        if end_of_stream {
            self.disarm();
            let late = self.attempt.late.or_else(|| {
                let d = self.attempt.deadline.as_ref();
                d.and_then(ExchangeDeadline::fired)
            });
            if let Some(late) = late {
                self.attempt.late = Some(late);
                let e = Error::explain(ErrorType::ReadTimedout, late.to_string());
                return Err(e.into_up());
            }
        }
        Ok(None)
    }

    /// Ends the deadline on the current upstream connection, noting whether it had passed.
    pub(super) fn disarm(&mut self) {
        if let Some(d) = self.attempt.deadline.take() {
            d.disarm();
            self.attempt.late = self.attempt.late.or(d.fired());
        }
    }

    /// The HTTP upstream serving this request, if it is one.
    pub(super) fn http_upstream(&self) -> Option<&HttpUpstream> {
        match &self.req.upstream()?.kind {
            Kind::Http(h) => Some(h),
            _ => None,
        }
    }

    /// The path to send the HTTP upstream when it differs from the routed one: its base path
    /// in front, or the canonical path when the client's spelling was another.
    pub(super) fn set_upstream_path(&mut self) {
        let (Some(upstream), Some(path)) = (self.req.upstream(), self.req.path.as_ref()) else {
            return;
        };
        let base = upstream.base_path();
        let routed = self.req.forward_path().unwrap_or_else(|| path.routed());
        self.attempt.upstream_path =
            (!base.is_empty() || path.rewritten() || self.req.forward.is_some())
                .then(|| format!("{base}{routed}{}", path.query()));
    }

    /// After the new side failed (`why`; `status` is what the client would have got) before
    /// anything of an answer went out: the legacy side serves the request instead, when the
    /// route falls back for its method and what was read of its body can be sent again (all
    /// of it is in the retry buffer, or none was read yet). The next attempt starts afresh on
    /// legacy.
    pub(super) fn fall_back(
        &mut self,
        session: &mut Session,
        why: &'static str,
        status: u16,
    ) -> bool {
        if !self.req.may_fall_back() || session.as_ref().retry_buffer_truncated() {
            return false;
        }
        // The legacy side gets the request as its own plugins make it (from what the client
        // sent); a legacy plugin that would answer it itself means no fallback.
        let Ok(legacy) = self.req.plugins_for(session.req_header(), false) else {
            return false;
        };
        if !self.req.fall_back(why, status) {
            return false;
        }
        self.req.forward = legacy;
        tracing::warn!(
            route = self.req.route_id().unwrap_or("-"),
            request_id = %self.req.request_id_str(),
            why,
            "the new side failed before answering; legacy serves the request"
        );
        self.disarm();
        self.attempt = Attempt::default();
        // No shadow copy (the answer is legacy's either way); a capture goes on.
        if let Some(tap) = self.shadow.as_mut() {
            tap.shadow = None;
        }
        self.set_upstream_path();
        true
    }

    /// Whether the side's plugins take the request's body, to an HTTP side, on this attempt
    /// (`held_request`): it is then held until whole, and goes on with a length known only
    /// then. An upgrade's bytes after the switch are a tunnel's, never a body to hold.
    pub(super) fn hold_request_body(&mut self, session: &mut Session) -> bool {
        // Each attempt sends the body from its start.
        self.attempt.body_bytes = 0;
        self.held_request = if session.as_mut().is_body_empty() || session.is_upgrade_req() {
            None
        } else {
            let req = session.req_header();
            let declared = req
                .headers
                .get(http::header::CONTENT_LENGTH)
                .and_then(|v| v.to_str().ok()?.parse().ok());
            self.req.hold_request_body(&req.method, declared)
        };
        self.held_request.is_some()
    }

    /// Counts a piece of a streamed request body against the route's `max-body`: 413 past it
    /// (the upstream, given part of it, never gets a whole request).
    pub(super) fn count_body(&mut self, data: Option<&bytes::Bytes>) -> Result<()> {
        let Some(max) = self.req.policy().and_then(|p| p.max_body) else {
            return Ok(());
        };
        self.attempt.body_bytes += data.map_or(0, |d| d.len() as u64);
        if self.attempt.body_bytes > max {
            return Error::e_explain(
                ErrorType::HTTPStatus(413),
                "request body over the route's max-body",
            );
        }
        Ok(())
    }

    /// Passive health: tells the upstream how the current address did.
    pub(super) fn report(&self, ok: bool) {
        if let (Some(up), Some(addr)) = (self.http_upstream(), self.attempt.peer_addr) {
            up.report(addr, ok);
        }
    }

    /// After a failed attempt: the next one avoids this address, and happens when `allowed`
    /// and the upstream's `retries` are not used up.
    pub(super) fn next_attempt(&mut self, allowed: bool) -> bool {
        let retries = self.req.upstream().map_or(0, |u| u.config.retries);
        let a = &mut self.attempt;
        a.avoid = a.peer_addr;
        let retry = allowed && a.retried < retries;
        if retry {
            a.retried += 1;
        }
        retry
    }
}
