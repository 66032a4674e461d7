//! The HTTP/1 transport: strangle's own listener (`listener`) and keep-alive loop (`Http1`)
//! around Pingora's HTTP/1 session, with the request-head scanner (`scan`) and the stream that
//! enforces the head deadline and shapes writes (`stream`).
//!
//! **What it mirrors.** `Http1::process_new` is the HTTP/1 branch of pingora-core 0.9.1's
//! `impl<T: HttpServerApp> ServerApp for T` (`pingora-core/src/apps/mod.rs`, `process_new`):
//! build a `ServerSession` on the stream, hand it to `HttpServerApp::process_new_http`, take
//! the stream and `HttpPersistentSettings` back, repeat. It differs in three ways: between
//! requests it waits for the next request's first byte itself, in a small future (an idle
//! connection holds a few hundred bytes instead of Pingora's request future of tens of KB);
//! every read goes through `DeadlineStream` (a total deadline for each request head); and it
//! owns keep-alive alone: each session starts with the keep-alive timeout of the current
//! `Settings` (or none while draining), whatever Pingora carried over.
//!
//! **What it assumes of Pingora** (re-check on every Pingora upgrade): the stream handed back
//! by `process_new_http` is the one it was given (checked: a different one is logged, counted
//! in `strangle_transport_lost_streams_total`, and closes the connection); the debug form of
//! `HttpPersistentSettings` names a `pipelined_prefix` field (`has_pipelined_prefix`); the
//! session's request filter runs in the connection's task (the `HEAD` task-local).

mod http2;
pub mod listener;
mod scan;
mod stream;

use std::fmt;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use pingora::apps::{HttpPersistentSettings, HttpServerApp, ReusedHttpStream, ServerApp};
use pingora::protocols::http::ServerSession;
use pingora::protocols::{Stream, ALPN};
use pingora::server::ShutdownWatch;
use tokio::sync::watch;

use crate::lifecycle::Lifecycle;
pub use http2::{
    body_read as http2_body_read, reset_for_stall as http2_reset_for_stall,
    response_done as http2_response_done,
};
pub use stream::{fail_response, final_response_starts, DeadlineStream};

tokio::task_local! {
    /// What the transport knows about the request head being served, shared with the proxy's
    /// request filter (both run in the connection's task).
    static HEAD: HeadState;
}

struct HeadState {
    /// The proxy has the parsed head: its deadline no longer applies.
    parsed: std::cell::Cell<bool>,
    /// The request line as received was not valid HTTP (Pingora's parser would have escaped it
    /// into something else and gone on).
    bad_line: std::cell::Cell<bool>,
    /// The status of an answer written to the client before the proxy had a head (0: none):
    /// Pingora's session refused it before any request filter (400 for a head its parser
    /// refused, 405 for CONNECT).
    answered: std::cell::Cell<u16>,
}

/// Called by the transport when it sends the first bytes of a response (`start`): notes its
/// status when the proxy never had the head.
pub(crate) fn answering(start: &[u8]) {
    let _ = HEAD.try_with(|h| {
        if !h.parsed.get() {
            // `HTTP/1.1 405 ...`; a response that does not parse counts as the 400 it mostly is.
            let status = start
                .get(9..12)
                .and_then(|s| std::str::from_utf8(s).ok()?.parse::<u16>().ok())
                .unwrap_or(400);
            h.answered.set(status);
        }
    });
}

/// The status the request now being served was answered with, when the proxy never got its
/// head.
fn refused_unparsed() -> Option<u16> {
    HEAD.try_with(|h| (h.answered.get() != 0 && !h.parsed.get()).then(|| h.answered.get()))
        .ok()
        .flatten()
}

/// Called by the proxy once it has a request head: ends the head deadline for it, and says
/// whether its request line arrived malformed (then it must be refused: Pingora escaped spaces,
/// quotes, angle brackets or control bytes in the target instead of refusing them).
pub fn head_parsed() -> bool {
    HEAD.try_with(|h| {
        h.parsed.set(true);
        h.bad_line.get()
    })
    .unwrap_or(false)
}

/// What the transport reads from the config; sent again on every reload that changes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Settings {
    /// How long an idle kept-alive connection waits for its next request (an HTTP/2
    /// connection, with no stream in flight).
    pub keepalive_timeout: Duration,
    /// The longest a streamed request body may pause between reads (HTTP/2: per stream; HTTP/1
    /// sets it on the session).
    pub body_timeout: Duration,
}

/// How long an idle kept-alive connection stays open once draining starts, for a request
/// already on its way (it is answered with `Connection: close`). Closing an idle connection
/// at once loses any request the client sent in that instant.
pub const DRAIN_LINGER: Duration = Duration::from_secs(1);

/// An engine that serves one request on the transport's stream itself: the HTTP/1 fast path
/// (`proxy::fast`). It reads the head with a session it builds and `setup`s, and hands the
/// stream back for the next request as Pingora's proxy does.
#[async_trait]
pub trait Engine: Send + Sync {
    async fn serve(
        &self,
        stream: Stream,
        setup: SessionSetup,
        shutdown: &ShutdownWatch,
    ) -> Option<Served>;
}

/// A request served by an `Engine`, its connection ready for the next one.
pub struct Served {
    pub reused: ReusedHttpStream,
    /// Bytes of the next request were read with this one (HTTP/1.1 pipelining).
    pub pipelined: bool,
}

/// How the transport sets up each request's session, whichever engine serves it.
pub struct SessionSetup {
    /// What the previous request on the connection carried over.
    persistent: Option<HttpPersistentSettings>,
    /// The keep-alive request limit, for a connection's first session.
    reuses: Option<u32>,
    /// The keep-alive timeout in seconds; `None` once the server is draining.
    keepalive: Option<u64>,
}

impl SessionSetup {
    /// The setup of a connection's first request (`keepalive` in seconds, `None` to close the
    /// connection after it), or of a later one with what the previous request carried over.
    pub fn new(
        persistent: Option<HttpPersistentSettings>,
        reuses: Option<u32>,
        keepalive: Option<u64>,
    ) -> SessionSetup {
        SessionSetup {
            persistent,
            reuses,
            keepalive,
        }
    }

    pub fn apply(self, session: &mut ServerSession) {
        session.set_pipelining_enabled(true);
        match self.persistent {
            Some(s) => HttpPersistentSettings::apply_to_session(s, session),
            None => session.set_keepalive_reuses_remaining(self.reuses),
        }
        session.set_keepalive(self.keepalive);
    }
}

/// Accounts a request the session answered before any filter: the client's address, the status.
pub type Malformed = Arc<dyn Fn(Option<std::net::IpAddr>, u16) + Send + Sync>;

/// The HTTP/1 keep-alive loop around a Pingora app.
pub struct Http1<A> {
    pub inner: Arc<A>,
    /// The fast engine for plain requests (`None`: Pingora's proxy serves every request).
    pub fast: Option<Arc<dyn Engine>>,
    /// The total time a request head may take to arrive (restart-only).
    pub head_timeout: Duration,
    pub settings: watch::Receiver<Settings>,
    pub lifecycle: Arc<Lifecycle>,
    /// HTTP/2 with prior knowledge on plain connections (`[server] h2c`).
    pub h2c: bool,
    /// Accounts a request Pingora's session answered before any request filter (400 for a head
    /// its parser refused, 405 for CONNECT), with the client's address and the status: it is
    /// in the access log too.
    pub malformed: Option<Malformed>,
}

/// Waits until the next request starts: `false` if the client closed the connection, the
/// head deadline passed, the connection idled past `idle` (its timer and limit), or the server
/// is draining and no request came within `DRAIN_LINGER`.
///
/// The idle timer is the connection's own, made once and moved on at every wait: tokio extends
/// a registered timer to a later deadline with one atomic update, where a new timer per wait
/// (registered and cancelled under the timer wheel's lock on every request) doubled the
/// proxy's p99 at a fixed rate, and Pingora's shared coarse timer needs a thread that wakes
/// every 10 ms whether or not anything is due.
async fn wait_for_request(
    stream: &mut DeadlineStream,
    idle: Option<(Pin<&mut tokio::time::Sleep>, Duration)>,
    draining: &mut ShutdownWatch,
) -> bool {
    let idle = async {
        match idle {
            Some((mut timer, limit)) => {
                timer.as_mut().reset(tokio::time::Instant::now() + limit);
                timer.await;
            }
            None => std::future::pending().await,
        }
    };
    // Two waits one after the other, not one `select!` over a drain future holding its linger
    // timer: this future is what an idle connection holds, and the linger timer is needed only
    // once the server drains.
    tokio::select! {
        biased;
        r = std::future::poll_fn(|cx| stream.poll_request_start(cx)) => return r.unwrap_or(false),
        _ = draining.wait_for(|stop| *stop) => {}
        () = idle => return false,
    }
    tokio::select! {
        biased;
        r = std::future::poll_fn(|cx| stream.poll_request_start(cx)) => r.unwrap_or(false),
        () = tokio::time::sleep(DRAIN_LINGER) => false,
    }
}

#[async_trait]
impl<A: HttpServerApp + Send + Sync + 'static> ServerApp for Http1<A> {
    async fn process_new(
        self: &Arc<Self>,
        stream: Stream,
        shutdown: &ShutdownWatch,
    ) -> Option<Stream> {
        if matches!(stream.selected_alpn_proto(), Some(ALPN::H2)) {
            // HTTP/2 negotiated by TLS. TLS with `http/1.1` (or no ALPN) stays here. Boxed:
            // the HTTP/1 connection's future stays as small as it was.
            return Box::pin(self.serve_tls_h2(stream, shutdown)).await;
        }
        let h2c = self.h2c && stream.get_ssl_digest().is_none();
        // A new connection's wait is bounded by the head deadline (armed at accept), a
        // kept-alive one's by the keep-alive timeout; a shutdown closes idle connections after
        // `DRAIN_LINGER`. Pipelined requests (RFC 9112 section 9.3.2) are answered in order:
        // Pingora hands the bytes it read past a request back in the persistent settings, and
        // then there is nothing to wait for.
        let mut settings = self.settings.clone();
        let mut keepalive = settings.borrow_and_update().keepalive_timeout;
        let mut stream = Box::new(DeadlineStream::new(stream, self.head_timeout));
        stream.rearm(true);
        let mut persistent = None;
        let mut idle_limit = None;
        let mut draining = shutdown.clone();
        let mut pipelined = false;
        // Made at the first keep-alive wait: a connection that sends one request never needs it.
        let mut idle_timer: Option<Pin<Box<tokio::time::Sleep>>> = None;
        loop {
            let idle = idle_limit.map(|limit| {
                let timer = idle_timer.get_or_insert_with(|| Box::pin(tokio::time::sleep(limit)));
                (timer.as_mut(), limit)
            });
            if !pipelined && !wait_for_request(&mut stream, idle, &mut draining).await {
                return None;
            }
            // `idle_limit` is set after the first request: only a connection's first bytes.
            if h2c && idle_limit.is_none() {
                // A connection's first bytes: HTTP/2's preface makes it an h2c connection,
                // served by Pingora's HTTP/2 server from here on.
                match std::future::poll_fn(|cx| stream.poll_h2c_preface(cx)).await {
                    Ok(true) => {
                        stream.leave_http1();
                        return Box::pin(self.serve_http2(stream, shutdown)).await;
                    }
                    Ok(false) => {}
                    Err(_) => return None,
                }
            }
            // Keep-alive is the transport's: whatever Pingora carried over, a session starts
            // with the configured timeout, or none once the server is shutting down.
            let setup = SessionSetup {
                persistent: persistent.take(),
                reuses: self
                    .inner
                    .server_options()
                    .and_then(|o| o.keepalive_request_limit),
                keepalive: (!*shutdown.borrow()).then_some(keepalive.as_secs().max(1)),
            };
            // Boxed: what serving a request holds is not kept while the connection idles.
            let (next, carried, next_pipelined) =
                Box::pin(self.serve_one(stream, setup, pipelined, shutdown)).await?;
            stream = match next.into_any().downcast::<DeadlineStream>() {
                Ok(s) => s,
                Err(_) => {
                    // Pingora handed back a stream that is not the one it was given (a change
                    // in a Pingora upgrade): the connection cannot be kept alive. Loud, since
                    // it would end every connection after its first request.
                    self.lifecycle.lost_stream();
                    tracing::error!("the transport got back a stream it did not make; closing the connection (a Pingora change?)");
                    return None;
                }
            };
            pipelined = next_pipelined;
            // A pipelined head is (at least partly) here already: its clock starts now, and
            // it ends when the proxy has the parsed head (`head_parsed`), since the bytes
            // before went by with the previous request's.
            stream.rearm(pipelined);
            persistent = carried;
            // A reload's new keep-alive timeout applies from the next wait (a version check,
            // no lock, when nothing changed).
            if settings.has_changed().unwrap_or(false) {
                keepalive = settings.borrow_and_update().keepalive_timeout;
            }
            idle_limit = Some(keepalive);
        }
    }

    async fn cleanup(&self) {
        self.inner.cleanup().await
    }
}

impl<A: HttpServerApp + Send + Sync + 'static> Http1<A> {
    /// An HTTP/2 connection negotiated by TLS: Pingora's HTTP/2 server, each stream through
    /// the same proxy, once the client's preface arrived within the head deadline (Pingora's
    /// HTTP/2 handshake has none).
    async fn serve_tls_h2(
        self: &Arc<Self>,
        stream: Stream,
        shutdown: &ShutdownWatch,
    ) -> Option<Stream> {
        let mut stream = Box::new(DeadlineStream::new(stream, self.head_timeout));
        stream.rearm(true);
        let mut draining = shutdown.clone();
        if !wait_for_request(&mut stream, None, &mut draining).await
            || !matches!(
                std::future::poll_fn(|cx| stream.poll_h2c_preface(cx)).await,
                Ok(true)
            )
        {
            return None;
        }
        stream.leave_http1();
        self.serve_http2(stream, shutdown).await
    }

    /// Serves an HTTP/2 connection (its preface is waiting), with the current settings.
    async fn serve_http2(
        self: &Arc<Self>,
        stream: Stream,
        shutdown: &ShutdownWatch,
    ) -> Option<Stream> {
        let settings = *self.settings.borrow();
        http2::serve(
            &self.inner,
            stream,
            shutdown,
            settings.body_timeout,
            settings.keepalive_timeout,
        )
        .await;
        None
    }

    /// Serves the request whose first bytes are on `stream` with the fast engine or Pingora's
    /// proxy, and hands back the connection's stream with what carries over to the next
    /// request and whether bytes of it came with this one.
    async fn serve_one(
        self: &Arc<Self>,
        mut stream: Box<DeadlineStream>,
        setup: SessionSetup,
        pipelined: bool,
        shutdown: &ShutdownWatch,
    ) -> Option<(Stream, Option<HttpPersistentSettings>, bool)> {
        let bad_line = stream.bad_line();
        // A plain request whose whole head is here goes to the fast engine; everything
        // else (pipelined heads, heads in pieces, bodies, upgrades) to Pingora's proxy.
        let fast = self
            .fast
            .as_ref()
            .filter(|_| !pipelined && stream.plain_head_waiting());
        let head = HeadState {
            parsed: std::cell::Cell::new(false),
            bad_line: std::cell::Cell::new(bad_line),
            answered: std::cell::Cell::new(0),
        };
        let peer = self.malformed.as_ref().and_then(|_| stream.peer_ip());
        // After the engine: a head it refused unparsed is accounted here, for either engine.
        let account = || {
            if let (Some(log), Some(status)) = (self.malformed.as_ref(), refused_unparsed()) {
                log(peer, status);
            }
        };
        self.lifecycle.served_by(fast.is_some());
        // Whether bytes of a next, pipelined request came back with the stream: the fast
        // engine says so; Pingora's proxy only shows it in its settings' `Debug` form.
        let (next, carried, next_pipelined) = match fast {
            Some(engine) => {
                let served = HEAD
                    .scope(head, async {
                        let served = engine.serve(stream, setup, shutdown).await;
                        account();
                        served
                    })
                    .await?;
                let (next, carried) = served.reused.consume();
                (next, carried, served.pipelined)
            }
            None => {
                let mut session = ServerSession::new_http1(stream);
                setup.apply(&mut session);
                let reused = HEAD
                    .scope(head, async {
                        let reused = self.inner.process_new_http(session, shutdown).await;
                        account();
                        reused
                    })
                    .await?;
                let (next, carried) = reused.consume();
                let pipelined = carried.as_ref().is_some_and(has_pipelined_prefix);
                (next, carried, pipelined)
            }
        };
        Some((next, carried, next_pipelined))
    }
}

/// Whether Pingora carried bytes of a next, pipelined request over to it. The settings do not
/// expose the field, only their `Debug` form (pingora-core 0.9.1 `apps::HttpPersistentSettings`);
/// re-read this when upgrading Pingora.
fn has_pipelined_prefix(settings: &HttpPersistentSettings) -> bool {
    use std::fmt::Write;
    struct Probe(bool, usize);
    impl Write for Probe {
        fn write_str(&mut self, s: &str) -> fmt::Result {
            // Stop formatting (with an error) as soon as the field's value is known.
            const NEEDLE: &str = "pipelined_prefix: ";
            for (i, c) in s.char_indices() {
                if self.1 == NEEDLE.len() {
                    self.0 = s[i..].starts_with("Some");
                    return Err(fmt::Error);
                }
                if NEEDLE.as_bytes()[self.1] == c as u8 {
                    self.1 += 1;
                } else {
                    self.1 = usize::from(NEEDLE.as_bytes()[0] == c as u8);
                }
            }
            Ok(())
        }
    }
    let mut probe = Probe(false, 0);
    let _ = write!(probe, "{settings:?}");
    probe.0
}

#[cfg(test)]
mod tests;
