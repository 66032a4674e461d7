//! The shadow engine: the request path's side of shadow traffic (`Tap`: whether a request is
//! copied, and the capture of its body and of the answer the client got, each up to the
//! route's cap) and the sender that carries a copy to the other side (`Engine`), through the
//! same parts as the request path: the outbound header policy was applied to the copy's
//! headers as for the client's request; HTTP upstreams are reached with Pingora's transport
//! connector and the fast path's connection pool, Lambda functions with the signed Invoke call,
//! signed endpoints with SigV4. A copy never reports to passive health: a shadow cannot take an
//! address out of the rotation real traffic uses.

use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant, SystemTime};

use async_trait::async_trait;
use bytes::{Bytes, BytesMut};
use http::header::{self, HeaderName, HeaderValue};
use pingora::connectors::TransportConnector;
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::protocols::http::v1::client::HttpSession as Upstream;
use pingora::protocols::http::HttpTask;
use pingora::proxy::Session;
use pingora::upstreams::peer::Peer;

use super::{aws, https, pool, Ctx};
use crate::client::HttpsClient;
use crate::config::shadow::Shadow;
use crate::lambda::{event, Caller};
use crate::pipeline::plugins::{self, PingoraResponse};
use crate::shadow::compare::Answer;
use crate::shadow::{Capture, Copy, Job, Sender};
use crate::split::Side;
use crate::upstream::{Kind, Shared};

/// The header every copy carries, so an upstream (and its logs) can tell a shadow request.
pub(super) const SHADOW_HEADER: &str = "x-strangle-shadow";
/// A copy's exchange ends by this, whatever the upstream's own deadlines.
const COPY_DEADLINE: Duration = Duration::from_secs(30);

/// The capture of a request that is shadowed, or kept in a capture spool should it fail,
/// held by its `Ctx`.
pub(super) struct Tap {
    /// The route's shadow, when this request is copied.
    pub(super) shadow: Option<Arc<Shadow>>,
    /// The route's capture, when this request is kept should the new side fail it.
    pub(super) keep: Option<Arc<crate::config::capture::Capture>>,
    /// Bodies are captured up to this.
    cap: usize,
    /// The request body read so far (for a method with a body).
    pub(super) request: BytesMut,
    pub(super) answer: Answer,
    pub(super) body: BytesMut,
    /// The request body was over the cap: the request is not shadowed after all.
    pub(super) over: bool,
    /// The whole request body passed (a copy of a part of one is never sent).
    pub(super) request_done: bool,
    /// The bytes captured, from the process's budget; spent: not shadowed, counted as dropped.
    capture: crate::shadow::Capture,
    pub(super) spent: bool,
    /// The answer's body is not wanted: only a capture, and no 5xx to keep.
    skip_body: bool,
}

impl Tap {
    /// Whether this request is captured: shadowed (its route shadows, the method is listed,
    /// and it falls in the route's share), or on the new side of a route that keeps what the
    /// new side fails (`capture`); never an upgrade.
    pub(super) fn start(ctx: &Ctx, session: &Session) -> Option<Box<Tap>> {
        let route = ctx.req.snap.config.routes.get(ctx.req.route?)?;
        let side = ctx.req.side()?;
        if side == Side::Default || session.is_upgrade_req() {
            return None;
        }
        let method = &session.req_header().method;
        let shadow = route.shadow.as_ref().filter(|config| {
            let bp = config.percent.bp();
            config.methods.contains(method) && (bp >= 10_000 || rand::random_range(0..10_000) < bp)
        });
        let keep = route.capture.as_ref().filter(|_| side == Side::New);
        if shadow.is_none() && keep.is_none() {
            return None;
        }
        let cap = shadow
            .map_or(0, |s| s.max_body)
            .max(keep.map_or(0, |k| k.max_body));
        Some(Box::new(Tap {
            shadow: shadow.cloned(),
            keep: keep.cloned(),
            cap,
            request: BytesMut::new(),
            answer: Answer::default(),
            body: BytesMut::new(),
            over: false,
            request_done: false,
            capture: ctx.req.snap.shadows.capture(),
            spent: false,
            skip_body: false,
        }))
    }

    /// A piece of the request body, as it passes to the upstream.
    pub(super) fn request_body(&mut self, data: &[u8]) {
        if self.over || self.spent {
            return;
        }
        if self.request.len() + data.len() > self.cap {
            self.over = true;
            self.request = BytesMut::new();
        } else if self.capture.grow(data.len()) {
            self.request.extend_from_slice(data);
        } else {
            self.spent = true;
        }
    }

    /// The answer's head, as it goes to the client.
    pub(super) fn head(&mut self, resp: &ResponseHeader) {
        let compared = self.shadow.as_ref().map_or(&[][..], |s| &s.headers[..]);
        self.answer = answer_head(&resp.headers, resp.status.as_u16(), compared);
        self.body.clear();
        self.skip_body = self.shadow.is_none() && resp.status.as_u16() < 500;
    }

    /// A piece of the answer's body, as it goes to the client.
    pub(super) fn body(&mut self, data: &[u8]) {
        if self.spent || self.skip_body {
            return;
        }
        match capture(&mut self.body, data, self.cap, &mut self.capture) {
            Ok(whole) => self.answer.truncated |= !whole,
            Err(_) => self.spent = true,
        }
    }
}

/// At the account step: the copy of a shadowed request whose client got a whole answer goes
/// to the queue.
pub(super) fn submit(session: &mut Session, ctx: &mut Ctx, status: u16, failed: bool) {
    let Some(mut tap) = ctx.shadow.take() else {
        return;
    };
    let Some(config) = tap.shadow.take() else {
        return;
    };
    if failed || status == 0 || tap.answer.status != status {
        return;
    }
    // Not copied, and counted: a body over the cap, the capture budget spent, or a body the
    // client had not sent whole when its answer came (a copy must never carry part of one).
    let whole = tap.request_done || session.as_mut().is_body_empty();
    if tap.spent || tap.over || !whole {
        if let Some(route) = ctx.req.route_id() {
            let state = ctx.req.snap.shadows.route(route);
            state
                .dropped
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
        return;
    }
    let (Some(route), Some(side), Some(path)) = (ctx.req.route, ctx.req.side(), &ctx.req.path)
    else {
        return;
    };
    let snap = &ctx.req.snap;
    let live = &snap.routes[route];
    let (other, legacy) = match (side, &live.legacy, &live.new) {
        (Side::Legacy, Some(l), Some(n)) => (n.clone(), l.clone()),
        (Side::New, Some(l), Some(_)) => (l.clone(), l.clone()),
        _ => return,
    };
    // A traced request's copy has spans of its own: the policy's trace headers continue the
    // copy's client span instead of the request's.
    let trace = ctx
        .req
        .trace
        .filter(|t| t.server.sampled)
        .map(|t| t.shadow());
    let req = session.req_header();
    // The other side's plugins make the copy from what the client sent; one that would answer
    // the request itself leaves nothing to compare.
    let Ok(forward) = ctx.req.plugins_for(req, side == Side::Legacy) else {
        return drop_copy(snap, &live.id);
    };
    let plugins = Arc::clone(
        snap.config.routes[route]
            .plugins
            .side_arc(side == Side::Legacy),
    );
    let mut body = tap.request.split().freeze();
    // Its body as the other side's body plugins make it, as a client's would be.
    if let Some(f) = forward.as_deref() {
        let held = plugins::hold_request_body(&plugins, &req.method, f, None);
        match plugins::made_whole(held, &body) {
            Ok(made) => body = made.unwrap_or(body),
            // No room to make it as the other side's plugins would: no copy.
            Err(_) => return drop_copy(snap, &live.id),
        }
    }
    let (mut headers, forward_path) = match forward {
        Some(f) => (f.headers, Some(f.path)),
        None => (req.headers.clone(), None),
    };
    let mut out = ctx
        .req
        .outbound(req, https(session), session.is_upgrade_req());
    if let Some(t) = &trace {
        out.trace = ctx.req.propagation_of(t);
    }
    crate::pipeline::outbound::apply(&mut headers, &out);
    headers.insert(SHADOW_HEADER, HeaderValue::from_static("1"));
    if headers.contains_key(header::CONTENT_LENGTH) {
        headers.insert(header::CONTENT_LENGTH, HeaderValue::from(body.len()));
    }
    let mut answer = std::mem::take(&mut tap.answer);
    answer.body = tap.body.split().freeze();
    let copy = Copy {
        method: req.method.clone(),
        path: forward_path.unwrap_or_else(|| path.routed().to_string()),
        query: path.query().to_string(),
        version: req.version,
        headers,
        body,
        source_ip: ctx.req.client.addr,
        request_id: Some(ctx.req.request_id_str().to_string()),
        route_path: live.path.clone(),
        claims: ctx.req.decision.as_ref().and_then(|d| d.claims.clone()),
        trace,
        plugins,
    };
    let logged_path = ctx.req.logged_path(req.uri.path());
    let redact_headers = Arc::clone(&snap.redact_headers);
    snap.shadows.submit(Job {
        route: live.id.clone(),
        redact_query: Arc::clone(&snap.redact_query),
        keep: snap.config.routes[route]
            .capture
            .as_ref()
            .filter(|k| k.on.contains(&crate::config::capture::Event::Mismatch))
            .map(|k| snap.captures.spool(&k.dir, k.max_size)),
        config,
        answered_by: side,
        other,
        legacy,
        copy,
        answer,
        logged_path: logged_path.into_owned(),
        spans: trace.map(|_| Arc::clone(&snap.spans)),
        redact_headers,
        queued_at: Instant::now(),
    });
}

/// Sends copies for the shadow worker.
pub(super) struct Engine {
    connector: TransportConnector,
    /// The client of the worker's Lambda and signed calls (its own pool, built on first use).
    aws: OnceLock<Result<HttpsClient, String>>,
    /// The runtime of the request path that started the worker (`Sender::attach`).
    home: OnceLock<tokio::runtime::Handle>,
    /// The copies' idle connections.
    pool: pool::Pool,
}

impl Default for Engine {
    fn default() -> Engine {
        Engine {
            connector: TransportConnector::new(None),
            aws: OnceLock::new(),
            home: OnceLock::new(),
            pool: pool::Pool::default(),
        }
    }
}

/// Gives the live config's shadows their engine, the access log and the check of the config
/// in force (once, at start-up); the worker starts with the first copy.
pub fn start(live: &Arc<crate::state::Live>, access: &Arc<crate::telemetry::AccessLogger>) {
    let shadows = Arc::clone(&live.load().shadows);
    let live = Arc::clone(live);
    // A queued copy is sent only if the config now in force still shadows it: its route, its
    // method, the same upstream on the other side.
    let still: crate::shadow::Still = Box::new(move |job: &Job| {
        let snap = live.load();
        let Some(i) = snap.routes.iter().position(|r| r.id == job.route) else {
            return false;
        };
        let shadows_it = snap.config.routes[i]
            .shadow
            .as_ref()
            .is_some_and(|s| s.methods.contains(&job.copy.method));
        let other = match job.answered_by {
            Side::New => &snap.routes[i].legacy,
            _ => &snap.routes[i].new,
        };
        shadows_it && other.as_ref().is_some_and(|o| o.name() == job.other.name())
    });
    shadows.start_with(Arc::new(Engine::default()), Arc::clone(access), still);
}

impl Engine {
    /// Who the AWS calls are made as: the worker, with its own client, once it runs on its
    /// thread; the request path's way before (a replay sent before any copy).
    fn caller(&self) -> Result<Caller<'_>, String> {
        let Some(home) = self.home.get() else {
            return Ok(Caller::Request);
        };
        let client = self
            .aws
            .get_or_init(crate::client::build)
            .as_ref()
            .map_err(String::clone)?;
        Ok(Caller::Shadow { client, home })
    }

    async fn http(
        &self,
        copy: &Copy,
        to: &Shared,
        config: &Shadow,
        budget: &mut Capture,
    ) -> Result<Answer, String> {
        let Kind::Http(h) = &to.kind else {
            return Err("not an HTTP upstream".into());
        };
        let backend = h.select(None).ok_or("no address in rotation")?;
        let peer = h.peer(&backend);
        // Copies keep connections of their own, in a pool of their own: a copy never takes
        // or leaves a connection real traffic then uses, and the worker never holds the lock
        // of the requests' pool.
        let key = peer.reuse_hash();
        let stream = match self.pool.take(key) {
            Some(s) => s,
            None => self
                .connector
                .new_stream(&*peer)
                .await
                .map_err(|e| format!("connect: {e}"))?,
        };
        let mut up = Upstream::new_with_options(stream, &*peer);
        up.read_timeout = peer.options.read_timeout;
        up.write_timeout = peer.options.write_timeout;
        let target = format!("{}{}{}", to.base_path(), copy.path, copy.query);
        let mut req = RequestHeader::build(copy.method.clone(), target.as_bytes(), None)
            .map_err(|e| e.to_string())?;
        for (name, value) in &copy.headers {
            req.append_header(name.clone(), value.clone())
                .map_err(|e| e.to_string())?;
        }
        if let Some(host) = &h.host_header {
            req.insert_header(header::HOST, host.clone())
                .map_err(|e| e.to_string())?;
        }
        req.remove_header(&header::TRANSFER_ENCODING);
        if !copy.body.is_empty() || !copy.method.is_safe() {
            req.insert_header(header::CONTENT_LENGTH, copy.body.len().to_string())
                .map_err(|e| e.to_string())?;
        }
        up.write_request_header(Box::new(req))
            .await
            .map_err(|e| e.to_string())?;
        if !copy.body.is_empty() {
            up.write_body(&copy.body).await.map_err(|e| e.to_string())?;
        }
        up.finish_body().await.map_err(|e| e.to_string())?;
        let mut answer = Answer::default();
        let mut body = BytesMut::new();
        let mut whole = false;
        // The side's status and the answer's dressed headers, for its body plugins.
        let mut dressed = None;
        loop {
            match up.read_response_task().await.map_err(|e| e.to_string())? {
                HttpTask::Header(mut head, end) => {
                    if head.status.is_informational() {
                        continue;
                    }
                    let original = head.status;
                    let status = copy.dressed(&mut PingoraResponse(&mut head), original);
                    answer = answer_head(&head.headers, status, &config.headers);
                    if !copy.plugins.is_empty() {
                        dressed = Some((original, head.headers.clone()));
                    }
                    if end {
                        whole = true;
                        break;
                    }
                }
                HttpTask::Body(data, end) => {
                    if let Some(data) = data {
                        if !capture(&mut body, &data, config.max_body, budget)? {
                            // Past the cap: compared by the prefix; the rest is not read (the
                            // connection is not kept).
                            answer.truncated = true;
                            break;
                        }
                    }
                    if end {
                        whole = true;
                        break;
                    }
                }
                HttpTask::Failed(e) => return Err(e.to_string()),
                HttpTask::Done | HttpTask::Trailer(_) | HttpTask::UpgradedBody(..) => {
                    whole = true;
                    break;
                }
            }
        }
        answer.body = body.freeze();
        if let Some((original, headers)) = &dressed {
            dress_body(copy, *original, &headers.clone(), &mut answer);
        }
        if whole {
            up.respect_keepalive();
            if let Some(stream) = up.reuse().await {
                self.pool.give_back(key, peer.idle_timeout(), stream);
            }
        }
        Ok(answer)
    }

    async fn lambda(
        &self,
        copy: &Copy,
        to: &Shared,
        config: &Shadow,
        budget: &mut Capture,
    ) -> Result<Answer, String> {
        let Kind::Lambda(lambda) = &to.kind else {
            return Err("not a Lambda upstream".into());
        };
        let event = event::encode(
            lambda.payload(),
            &event::Request {
                method: copy.method.as_str(),
                path: &copy.path,
                query: copy.query.strip_prefix('?').unwrap_or(&copy.query),
                headers: &copy.headers,
                body: &copy.body,
                source_ip: copy.source_ip,
                request_id: copy.request_id.as_deref().unwrap_or(""),
                protocol: aws::protocol(copy.version),
                route_path: &copy.route_path,
                now: SystemTime::now(),
                claims: copy.claims.as_deref(),
            },
        );
        let r = lambda
            .invoke_as(self.caller()?, event, None, None)
            .await
            .map_err(|e| e.to_string())?;
        let mut headers: http::HeaderMap = r.headers.into_iter().collect();
        let original =
            http::StatusCode::from_u16(r.status).unwrap_or(http::StatusCode::BAD_GATEWAY);
        let status = copy.dressed(&mut headers, original);
        let mut answer = answer_head(&headers, status, &config.headers);
        let mut body = BytesMut::new();
        answer.truncated = !capture(&mut body, &r.body, config.max_body, budget)?;
        answer.body = body.freeze();
        dress_body(copy, original, &headers, &mut answer);
        Ok(answer)
    }

    async fn signed(
        &self,
        copy: &Copy,
        to: &Shared,
        config: &Shadow,
        budget: &mut Capture,
    ) -> Result<Answer, String> {
        let (Some(sig), Some(uri)) = (
            &to.config.sigv4,
            aws::signed_uri(to, &copy.path, &copy.query),
        ) else {
            return Err("not a signed upstream".into());
        };
        let response = crate::lambda::send_signed(
            self.caller()?,
            sig,
            copy.method.as_str(),
            &uri,
            aws::signable(&copy.headers),
            copy.body.clone(),
            to.config.head_deadline(),
        )
        .await
        .map_err(|e| e.to_string())?;
        let (mut parts, mut incoming) = response.into_parts();
        let original = parts.status;
        let status = copy.dressed(&mut parts.headers, original);
        let mut answer = answer_head(&parts.headers, status, &config.headers);
        let mut body = BytesMut::new();
        while let Some(frame) = http_body_util::BodyExt::frame(&mut incoming).await {
            let frame = frame.map_err(|e| e.to_string())?;
            if let Ok(data) = frame.into_data() {
                if !capture(&mut body, &data, config.max_body, budget)? {
                    answer.truncated = true;
                    break;
                }
            }
        }
        answer.body = body.freeze();
        dress_body(copy, original, &parts.headers, &mut answer);
        Ok(answer)
    }
}

/// A copy not made after all, counted as dropped.
fn drop_copy(snap: &crate::state::Snapshot, route: &str) {
    snap.shadows
        .route(route)
        .dropped
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
}

/// A copy's whole answer body as its side's body plugins make it, as a client's would be
/// (`original`: the side's own status; `headers`: the answer as the response hooks left it).
/// A body cut at the capture's cap stays as it is.
fn dress_body(
    copy: &Copy,
    original: http::StatusCode,
    headers: &http::HeaderMap,
    answer: &mut Answer,
) {
    if copy.plugins.is_empty() || answer.truncated {
        return;
    }
    let status = http::StatusCode::from_u16(answer.status).unwrap_or(original);
    let held = plugins::hold_body(&copy.plugins, original, status, headers);
    match plugins::made_whole(held, &answer.body) {
        Ok(made) => answer.body = made.unwrap_or_else(|| answer.body.clone()),
        // No room to dress it: compared as it came, and marked so.
        Err(_) => answer.truncated = true,
    }
}

#[async_trait]
impl Sender for Engine {
    fn attach(&self, home: tokio::runtime::Handle) {
        let _ = self.home.set(home);
    }

    fn tidy(&self) {
        self.pool.sweep();
    }

    async fn send(
        &self,
        copy: &Copy,
        to: &Shared,
        config: &Shadow,
        budget: &mut Capture,
    ) -> Result<Answer, String> {
        let started = Instant::now();
        let sent = async {
            match &to.kind {
                Kind::Http(_) => self.http(copy, to, config, budget).await,
                Kind::Lambda(_) => self.lambda(copy, to, config, budget).await,
                Kind::Signed => self.signed(copy, to, config, budget).await,
            }
        };
        match tokio::time::timeout(COPY_DEADLINE, sent).await {
            Ok(r) => r,
            Err(_) => Err(format!("no answer within {:?}", started.elapsed())),
        }
    }
}

/// The head of an answer: its status, content type and the headers the route compares.
fn answer_head(headers: &http::HeaderMap, status: u16, compared: &[HeaderName]) -> Answer {
    let get = |name: &HeaderName| {
        headers
            .get(name)
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
    };
    Answer {
        status,
        headers: compared
            .iter()
            .map(|h| (h.as_str().to_string(), get(h)))
            .collect(),
        content_type: get(&header::CONTENT_TYPE),
        body: Bytes::new(),
        truncated: false,
    }
}

/// Appends what fits under `cap`; false when something did not. The bytes come out of the
/// shadow capture budget; an error when it is spent.
fn capture(
    body: &mut BytesMut,
    data: &[u8],
    cap: usize,
    budget: &mut Capture,
) -> Result<bool, String> {
    let room = cap.saturating_sub(body.len());
    let take = &data[..data.len().min(room)];
    if !budget.grow(take.len()) {
        return Err("over the shadow capture budget".into());
    }
    body.extend_from_slice(take);
    Ok(data.len() <= room)
}
