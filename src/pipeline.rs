//! The request pipeline, independent of the engine that carries the request: **guard** (framing
//! and head checks, the canonical path), **decide** (route, rate limits, auth, side, upstream),
//! **forward** (the one outbound header policy, `outbound`, applied to every upstream kind) and
//! **account** (counters and the access-log line). An engine (the Pingora adapter in
//! `proxy`, a future HTTP/1 fast path or shadow sender) holds a `Request`, calls `guard` and
//! `decide` with what it read, forwards as its upstream kind needs, and ends with `account`.
//! A refusal at any stage is a `Refusal`, which the engine writes as its response.
//!
//! Counting is done by guards the request holds: the process's in-flight count from the
//! request's creation (`Lifecycle::request`), the route side's and the upstream's by the
//! `Decision` itself (counted when it is made, released when it drops), a `max-in-flight` slot
//! from `Decision::admit`. Whichever way a
//! request ends, dropping it releases all of them.

pub mod account;
pub mod decide;
pub mod guard;
pub mod outbound;
pub mod plugins;

use std::borrow::Cow;
use std::net::IpAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use http::header::{HeaderName, HeaderValue};

use crate::auth::Claims;
use crate::lifecycle::{Counted, Lifecycle};
use crate::split::Side;
use crate::state::Snapshot;
use crate::stats::RouteStats;
use crate::telemetry::context::RequestTrace;
use crate::upstream::Shared;

pub use account::Finished;
pub use guard::RequestPath;

/// A request refused by the pipeline: the status, why (for the log, never the client), the
/// extra headers the answer carries, and the route it was refused on, if one matched.
#[derive(Debug)]
pub struct Refusal {
    pub status: u16,
    pub why: String,
    pub headers: Vec<(HeaderName, String)>,
    pub route: Option<usize>,
    /// Not a refusal: the answer the route gives itself (`redirect`, `respond`).
    pub answer: Option<Box<strangle_plugin::Answer>>,
}

impl Refusal {
    pub fn new(status: u16, why: impl Into<String>) -> Refusal {
        Refusal {
            status,
            why: why.into(),
            headers: Vec::new(),
            route: None,
            answer: None,
        }
    }

    /// The answer a route gives itself, instead of a side.
    pub fn answered(answer: strangle_plugin::Answer) -> Refusal {
        Refusal {
            status: answer.status.as_u16(),
            answer: Some(Box::new(answer)),
            ..Refusal::new(0, String::new())
        }
    }

    fn on(mut self, route: Option<usize>) -> Refusal {
        self.route = route;
        self
    }

    fn with(mut self, name: HeaderName, value: impl Into<String>) -> Refusal {
        self.headers.push((name, value.into()));
        self
    }
}

/// Whether an answer with this status ends its connection: after a malformed request (400,
/// 431) or a body framing strangle does not read (501, a transfer coding other than chunked)
/// nothing else on the connection can be trusted.
pub fn closes_connection(status: u16) -> bool {
    matches!(status, 400 | 431 | 501)
}

/// Who sent the request: the TCP peer, whether it is a trusted proxy, and the client address
/// after the trusted-proxy walk (the peer itself when it is not trusted).
#[derive(Debug, Clone, Copy, Default)]
pub struct Client {
    pub peer: Option<IpAddr>,
    pub peer_trusted: bool,
    pub addr: Option<IpAddr>,
}

/// What `decide` chose for a request. Holding it counts the request in its route side's and
/// upstream's in-flight gauges (made only by `Decision::new`, released by its drop).
#[derive(Debug)]
pub struct Decision {
    pub route: Option<usize>,
    pub side: Side,
    pub upstream: Shared,
    /// The verified JWT claims, on routes with `auth`.
    pub claims: Option<Arc<Claims>>,
    /// The verified claims as the headers that carry them upstream.
    pub claim_headers: Vec<(HeaderName, HeaderValue)>,
    /// The counters of the route (or of unmatched traffic) the request is counted in.
    stats: Arc<RouteStats>,
    /// A `max-in-flight` slot of the upstream, held to the end of the request.
    permit: Option<tokio::sync::OwnedSemaphorePermit>,
    /// A browser's CORS preflight on a route with `auth`, whose credentials did not verify (a
    /// browser sends none on a preflight): only the route's plugins may answer it (`cors`);
    /// else it gets this refusal, and never reaches a side.
    pub unverified: Option<Refusal>,
}

impl Decision {
    /// Takes a `max-in-flight` slot of the upstream, waiting up to its `queue-timeout`: 503
    /// when none frees up. Engines call it once the request is ready to go (a buffered body
    /// read), so a slow client holds nobody else's slot.
    pub async fn admit(&mut self) -> Result<(), Refusal> {
        let Some(limiter) = &self.upstream.limiter else {
            return Ok(());
        };
        let wait = self.upstream.config.queue_timeout;
        match tokio::time::timeout(wait, Arc::clone(limiter).acquire_owned()).await {
            Ok(Ok(permit)) => {
                self.permit = Some(permit);
                Ok(())
            }
            _ => Err(Refusal::new(
                503,
                format!("upstream `{}` at max-in-flight", self.upstream.name()),
            )
            .with(http::header::RETRY_AFTER, "1")
            .on(self.route)),
        }
    }
}

impl Decision {
    /// Counts the request in its route side's and upstream's in-flight gauges.
    fn new(
        route: Option<usize>,
        side: Side,
        stats: Arc<RouteStats>,
        upstream: Shared,
        claims: Option<Arc<Claims>>,
        claim_headers: Vec<(HeaderName, HeaderValue)>,
    ) -> Decision {
        let d = Decision {
            route,
            side,
            upstream,
            claims,
            claim_headers,
            stats,
            permit: None,
            unverified: None,
        };
        d.count(1);
        d
    }

    /// Adds `n` to the in-flight gauges of its route side and upstream.
    fn count(&self, n: i64) {
        let side = &self.stats.side(self.side).in_flight;
        side.fetch_add(n, Ordering::Relaxed);
        self.upstream
            .stats
            .in_flight
            .fetch_add(n, Ordering::Relaxed);
    }

    /// Moves the request to `to` on `side`: its in-flight counts go with it, and the
    /// `max-in-flight` slot it holds becomes `permit` (the new upstream's, if it has a limit).
    fn switch(
        &mut self,
        side: Side,
        to: Shared,
        permit: Option<tokio::sync::OwnedSemaphorePermit>,
    ) {
        self.count(-1);
        self.side = side;
        self.upstream = to;
        self.permit = permit;
        self.count(1);
    }
}

impl Drop for Decision {
    fn drop(&mut self) {
        self.count(-1);
    }
}

/// One request's way through the pipeline, whatever engine carries it.
pub struct Request {
    /// The snapshot the request started with; reloads meanwhile do not affect it.
    pub snap: Arc<Snapshot>,
    pub start: Instant,
    /// The request's `x-request-id` (the client's when well formed, else a new one).
    pub request_id: Option<HeaderValue>,
    pub client: Client,
    /// The server name of the TLS connection the request came on, if it named one.
    pub sni: Option<Arc<str>>,
    /// The request line's method and target as received.
    pub method: Option<http::Method>,
    pub path: Option<RequestPath>,
    /// The route the request matched, set once by `decide` (refused or not).
    pub route: Option<usize>,
    pub decision: Option<Decision>,
    /// When the first call to the upstream started.
    pub upstream_start: Option<Instant>,
    /// The trace context, when tracing is on (set by the guard).
    pub trace: Option<RequestTrace>,
    /// Why the new side's failure sent this request to legacy (`fallback`), if it did.
    pub fallback: Option<&'static str>,
    /// The request as the side's plugins made it (routes with plugins only).
    pub forward: Option<Box<plugins::Forward>>,
    counted: Counted,
}

impl Request {
    pub fn new(snap: Arc<Snapshot>, lifecycle: &Arc<Lifecycle>) -> Request {
        Request {
            snap,
            start: Instant::now(),
            request_id: None,
            client: Client::default(),
            sni: None,
            method: None,
            path: None,
            route: None,
            decision: None,
            upstream_start: None,
            trace: None,
            fallback: None,
            forward: None,
            counted: lifecycle.request(),
        }
    }

    pub fn lifecycle(&self) -> &Lifecycle {
        self.counted.lifecycle()
    }

    /// Stage 1: checks the head and takes the canonical path (see `guard`).
    pub fn guard(&mut self, inbound: guard::Inbound<'_>) -> Result<(), Refusal> {
        self.request_id = Some(guard::request_id(&inbound.head.headers));
        self.method = Some(inbound.head.method.clone());
        if let Some(policy) = &self.snap.trace {
            // More than one `traceparent` is no valid context (W3C Trace Context 3.2).
            let mut lines = inbound.head.headers.get_all("traceparent").iter();
            let incoming = match (lines.next(), lines.next()) {
                (Some(v), None) => Some(v.as_bytes()),
                _ => None,
            };
            self.trace = Some(RequestTrace::start(policy, incoming));
        }
        self.client = decide::client(&self.snap, inbound.head, inbound.peer);
        self.sni = inbound.sni.clone();
        self.path = Some(guard::check(&self.snap, inbound)?);
        Ok(())
    }

    /// Stage 2: chooses route, side and upstream (see `decide`). The route is recorded
    /// whether the request is refused on it or not.
    pub async fn decide(&mut self, head: &http::request::Parts) -> Result<(), Refusal> {
        let Some(path) = &self.path else {
            return Err(Refusal::new(500, "decide before guard"));
        };
        let decided = decide::decide(
            &self.snap,
            head,
            path.routed(),
            &self.client,
            self.sni.as_deref(),
        )
        .await;
        match decided {
            Ok(d) => {
                self.route = d.route;
                self.decision = Some(d);
                Ok(())
            }
            Err(r) => {
                self.route = r.route;
                Err(r)
            }
        }
    }

    /// Whether the new side's failure may still send this request to legacy: it is on the
    /// new side of a route with `fallback`, its method is one the route lists, and it has not
    /// fallen back already.
    pub fn may_fall_back(&self) -> bool {
        let (Some(i), Some(Side::New), None) = (self.route, self.side(), self.fallback) else {
            return false;
        };
        let route = &self.snap.config.routes[i];
        let method = self.method.as_ref();
        route
            .fallback
            .as_ref()
            .is_some_and(|f| method.is_some_and(|m| f.methods.contains(m)))
            && self.snap.routes[i].legacy.is_some()
    }

    /// Whether a new-side answer with `status` is one the route falls back from.
    pub fn falls_back_on(&self, status: u16) -> bool {
        self.may_fall_back()
            && self.route.is_some_and(|i| {
                let f = self.snap.config.routes[i].fallback.as_ref();
                f.is_some_and(|f| f.statuses.contains(&status))
            })
    }

    /// Sends the request to the legacy side after the new side failed (`why`) before any of
    /// an answer went out, when the route allows it. The failure is counted on the new side
    /// (as `status`, what the client would have got: the rollout's gates see it) and as a
    /// fallback; legacy then serves the request within its own `max-in-flight` (a legacy side
    /// at its limit takes no fallback: the new side's failure is answered instead).
    pub fn fall_back(&mut self, why: &'static str, status: u16) -> bool {
        if !self.may_fall_back() {
            return false;
        }
        let Some(i) = self.route else { return false };
        let Some(legacy) = self.snap.routes[i].legacy.clone() else {
            return false;
        };
        let permit = match &legacy.limiter {
            None => None,
            Some(limiter) => match Arc::clone(limiter).try_acquire_owned() {
                Ok(p) => Some(p),
                Err(_) => return false,
            },
        };
        let stats = &self.snap.routes[i].stats;
        stats.new.record(status, self.start.elapsed());
        stats.fallbacks.fetch_add(1, Ordering::Relaxed);
        if let Some(d) = self.decision.as_mut() {
            d.switch(Side::Legacy, legacy, permit);
        }
        self.fallback = Some(why);
        self.upstream_start = None;
        true
    }

    pub fn upstream(&self) -> Option<&Shared> {
        self.decision.as_ref().map(|d| &d.upstream)
    }

    pub fn side(&self) -> Option<Side> {
        self.decision.as_ref().map(|d| d.side)
    }

    /// The chosen side's request plugins, run on a copy of the request (`head`): what the
    /// side is given (`forward`), or the answer a plugin gives instead.
    pub fn run_plugins(
        &mut self,
        head: &http::request::Parts,
    ) -> Result<(), Box<strangle_plugin::Answer>> {
        let new = self.side() == Some(Side::New);
        self.forward = self.plugins_for(head, new)?;
        Ok(())
    }

    /// The refusal of a preflight that skipped verification and that no plugin answered.
    pub fn unanswered_preflight(&mut self) -> Option<Refusal> {
        self.decision.as_mut()?.unverified.take()
    }

    /// What the plugins of one side (`new`, else legacy) make of the request (`None`: the
    /// route has none there).
    pub fn plugins_for(
        &self,
        head: &http::request::Parts,
        new: bool,
    ) -> Result<Option<Box<plugins::Forward>>, Box<strangle_plugin::Answer>> {
        let (Some(route), Some(path)) = (self.route, &self.path) else {
            return Ok(None);
        };
        if self.side().is_none_or(|s| s == Side::Default) {
            return Ok(None);
        }
        let forward = plugins::forward(
            &self.snap.config.routes[route].plugins,
            new,
            &head.method,
            path.routed(),
            &path.query(),
            &head.headers,
            self.snap.config.server.path_params,
        )?;
        if let Some(f) = forward.as_deref().filter(|f| f.path != path.routed()) {
            self.rewrite_stays(&f.path, head, route)?;
        }
        Ok(forward)
    }

    /// A path a plugin rewrote is routed like a client's: landing on another route that guards
    /// with other auth than this one's is refused (403), so a rewrite never reaches what the
    /// client could not reach with the same credentials.
    fn rewrite_stays(
        &self,
        path: &str,
        head: &http::request::Parts,
        route: usize,
    ) -> Result<(), Box<strangle_plugin::Answer>> {
        let host = decide::request_host(head).or(self.sni.as_deref().map(Cow::Borrowed));
        let routes = &self.snap.config.routes;
        let guarded_elsewhere = |p: &str| {
            decide::route_for(&self.snap, head, p, host.as_deref()).is_some_and(|i| {
                i != route && routes[i].auth.is_some() && routes[i].auth != routes[route].auth
            })
        };
        // Also the spellings a monolith may take for the same resource (another case, a final
        // `.` or `/`): a client asking for them directly would reach the default at most, never
        // that route's side; through a rewrite they would reach this route's side.
        let lower = path.to_ascii_lowercase();
        let bare = |p: &'_ str| -> String {
            let t = p.trim_end_matches(['.', '/']);
            if t.is_empty() {
                "/".to_string()
            } else {
                t.to_string()
            }
        };
        let spellings = [path.to_string(), lower.clone(), bare(path), bare(&lower)];
        if spellings.iter().any(|p| guarded_elsewhere(p)) {
            return Err(Box::new(strangle_plugin::Answer {
                status: http::StatusCode::FORBIDDEN,
                headers: http::HeaderMap::new(),
                body: "the rewritten path belongs to a route with other auth\n".into(),
            }));
        }
        Ok(())
    }

    /// The side's body plugins' hold on the request's body, when they work on it (`declared`:
    /// its length, when the client said it).
    pub fn hold_request_body(
        &self,
        method: &http::Method,
        declared: Option<u64>,
    ) -> Option<Box<plugins::HeldBody>> {
        let f = self.forward.as_deref()?;
        let chain = self.snap.config.routes[self.route?].plugins.side_arc(f.new);
        plugins::hold_request_body(chain, method, f, declared)
    }

    /// A request body read whole (for a Lambda or signed side) as the side's body plugins make
    /// it.
    pub fn dress_request_body(
        &self,
        method: &http::Method,
        body: &bytes::Bytes,
    ) -> Result<bytes::Bytes, plugins::BudgetSpent> {
        let made = match self.hold_request_body(method, None) {
            Some(mut held) => held.whole(body)?,
            None => None,
        };
        Ok(made.unwrap_or_else(|| body.clone()))
    }

    /// The path the side receives: a plugin's, else the routed one.
    pub fn forward_path(&self) -> Option<&str> {
        match &self.forward {
            Some(f) => Some(&f.path),
            None => self.path.as_ref().map(RequestPath::routed),
        }
    }

    /// The route's own policies (none off a route).
    pub fn policy(&self) -> Option<&crate::config::policy::Policy> {
        self.route.map(|i| &self.snap.config.routes[i].policy)
    }

    /// The side's response plugins (none off a route).
    pub fn response_plugins(&self) -> &[Arc<dyn strangle_plugin::Plugin>] {
        self.response_chain().map_or(&[], |c| &c[..])
    }

    /// `response_plugins`, shared.
    pub fn response_chain(&self) -> Option<&Arc<[Arc<dyn strangle_plugin::Plugin>]>> {
        match (self.route, self.side()) {
            (Some(route), Some(side)) => Some(
                self.snap.config.routes[route]
                    .plugins
                    .side_arc(side == Side::New),
            ),
            _ => None,
        }
    }

    pub fn route_id(&self) -> Option<&str> {
        self.route.map(|i| self.snap.routes[i].id.as_str())
    }

    pub fn route_stats(&self) -> &RouteStats {
        match self.route {
            Some(i) => &self.snap.routes[i].stats,
            None => &self.snap.default_stats,
        }
    }

    pub fn request_id_str(&self) -> &str {
        self.request_id
            .as_ref()
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
    }

    /// Stage 3's input: what the outbound header policy needs, from the decision and head.
    pub fn outbound<'a>(
        &'a self,
        head: &http::request::Parts,
        https: bool,
        keep_upgrade: bool,
    ) -> outbound::Outbound<'a> {
        let claims = self
            .decision
            .as_ref()
            .map_or(&[][..], |d| &d.claim_headers[..]);
        outbound::Outbound {
            peer: self.client.peer.map(crate::net::unmap),
            peer_trusted: self.client.peer_trusted,
            client: self.client.addr,
            https,
            // HTTP/2 names the host in `:authority`; `Host` is optional there.
            host: head.headers.get(http::header::HOST).cloned().or_else(|| {
                head.uri
                    .authority()
                    .and_then(|a| http::HeaderValue::from_str(a.as_str()).ok())
            }),
            keep_upgrade,
            identity_headers: &self.snap.identity_headers,
            claims,
            request_id: self.request_id.as_ref(),
            trace: self.propagation(),
        }
    }

    /// The trace headers for the upstream, when tracing is on.
    fn propagation(&self) -> Option<outbound::Propagation> {
        self.propagation_of(self.trace.as_ref()?)
    }

    /// The trace headers that continue `trace` (this request's, or its shadow copy's).
    pub fn propagation_of(&self, trace: &RequestTrace) -> Option<outbound::Propagation> {
        let policy = self.snap.trace.as_ref()?;
        Some(outbound::Propagation {
            traceparent: policy
                .tracecontext
                .then(|| HeaderValue::from_bytes(&trace.traceparent()).ok())
                .flatten(),
            xray: policy
                .xray
                .then(|| HeaderValue::from_bytes(&trace.xray()).ok())
                .flatten(),
            keep_tracestate: trace.parent.is_some(),
        })
    }

    /// The path the request was routed on, for the log: the canonical one once guarded, the
    /// raw target's path before (its path parameters redacted: a request refused for them
    /// would otherwise log a session id).
    pub fn logged_path<'a>(&'a self, fallback: &'a str) -> std::borrow::Cow<'a, str> {
        match &self.path {
            Some(p) => p.routed().into(),
            None => crate::telemetry::redact::raw_path(fallback),
        }
    }

    /// The raw target, for requests that never reached the guard's path step.
    pub fn raw_target(&self) -> Bytes {
        self.path
            .as_ref()
            .map_or_else(Bytes::new, |p| p.target.clone())
    }
}
