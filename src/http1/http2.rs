//! HTTP/2 connections, once the transport saw their preface (h2c) or TLS negotiated `h2`.
//!
//! **What it mirrors.** Pingora's HTTP/2 accept loop (pingora-core 0.9.1, the HTTP/2 branch of
//! `apps::process_new` and `protocols::http::v2::server::accept_downstream_sessions`, which is
//! not public): the handshake with the app's `h2_options`, one task per stream running the
//! app's `process_new_http`, GOAWAY when the server shuts down, the connection closed once it
//! has been idle (no stream in flight) for the idle timeout, and at most
//! `MAX_MALFORMED_STREAMS` streams refused as malformed before the connection is closed.
//!
//! **What it adds.** Pingora reads an HTTP/2 request body with no timeout (its `read_body_bytes`
//! says `TODO: timeout`, and `set_read_timeout` does nothing for HTTP/2), so a client that
//! never ended a stream's body held the stream, its task and its connection for ever once the
//! response was complete. Here, once the response is complete (`response_done`), the rest of
//! the body must keep coming as an HTTP/1 body must: at most `body-timeout` between reads (the
//! proxy reports each non-empty read through `body_read`), or the stream is reset (RST_STREAM,
//! which RFC 9113 section 8.1 allows after a complete response) and logged. Before the response
//! is complete a pause may be the upstream's (Pingora reads the client only as fast as the
//! upstream takes the body, and HTTP/2 flow control then stops the client): the upstream's
//! `timeout` bounds that wait, as it does the exchange.

use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use pingora::apps::HttpServerApp;
use pingora::protocols::http::v2::server::{self, H2Accept, HttpSession};
use pingora::protocols::http::ServerSession;
use pingora::protocols::{Digest, Stream};
use pingora::server::ShutdownWatch;
use tokio::sync::Notify;

/// Streams refused as malformed (bad `:path` bytes, conflicting lengths, bad authority) a
/// connection may send before it is closed: Pingora's own bound.
const MAX_MALFORMED_STREAMS: usize = 32;

tokio::task_local! {
    /// The request body's progress of the stream served in this task.
    static PROGRESS: Arc<Progress>;
}

/// The proxy read part of the request body (`done`: all of it). A no-op outside an HTTP/2
/// stream's task.
pub fn body_read(done: bool) {
    let _ = PROGRESS.try_with(|p| p.read(done));
}

/// The response is complete: from now on the request body's pauses are the client's.
pub fn response_done() {
    let _ = PROGRESS.try_with(|p| {
        p.read(false);
        p.responded.store(true, Ordering::Release);
        p.moved.notify_one();
    });
}

/// Whether this stream was reset because its body stopped coming (for its access-log line).
pub fn reset_for_stall() -> bool {
    PROGRESS
        .try_with(|p| p.reset.load(Ordering::Acquire))
        .unwrap_or(false)
}

/// When a stream's request body last moved, and whether it is complete.
struct Progress {
    start: tokio::time::Instant,
    /// Milliseconds from `start` to the last read.
    last: AtomicU64,
    done: AtomicBool,
    /// The response is complete.
    responded: AtomicBool,
    /// Given up: its body stalled.
    reset: AtomicBool,
    moved: Notify,
}

impl Progress {
    fn new(done: bool) -> Progress {
        Progress {
            start: tokio::time::Instant::now(),
            last: AtomicU64::new(0),
            done: AtomicBool::new(done),
            responded: AtomicBool::new(false),
            reset: AtomicBool::new(false),
            moved: Notify::new(),
        }
    }

    fn read(&self, done: bool) {
        let ms = u64::try_from(self.start.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last.store(ms, Ordering::Release);
        if done {
            self.done.store(true, Ordering::Release);
            self.moved.notify_one();
        }
    }

    /// Returns once the body has not moved for `limit` while incomplete after a complete
    /// response (marking the stream reset); never once the body is complete.
    async fn stalled(&self, limit: Duration) {
        loop {
            if self.done.load(Ordering::Acquire) {
                return std::future::pending().await;
            }
            if !self.responded.load(Ordering::Acquire) {
                self.moved.notified().await;
                continue;
            }
            let last = Duration::from_millis(self.last.load(Ordering::Acquire));
            let due = self.start + last + limit;
            if tokio::time::Instant::now() >= due {
                self.reset.store(true, Ordering::Release);
                return;
            }
            tokio::select! {
                () = tokio::time::sleep_until(due) => {}
                () = self.moved.notified() => {}
            }
        }
    }
}

/// Streams in flight on one connection, for its idle timeout.
#[derive(Default)]
struct Active {
    count: AtomicUsize,
    idle: Notify,
}

struct Guard(Arc<Active>);

impl Drop for Guard {
    fn drop(&mut self) {
        if self.0.count.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0.idle.notify_one();
        }
    }
}

impl Active {
    fn start(self: &Arc<Self>) -> Guard {
        self.count.fetch_add(1, Ordering::AcqRel);
        Guard(Arc::clone(self))
    }

    /// Returns once no stream has been in flight for `limit`.
    async fn idle_for(&self, limit: Duration) {
        loop {
            while self.count.load(Ordering::Acquire) != 0 {
                self.idle.notified().await;
            }
            tokio::select! {
                () = tokio::time::sleep(limit) => {
                    if self.count.load(Ordering::Acquire) == 0 {
                        return;
                    }
                }
                () = self.idle.notified() => {}
            }
        }
    }
}

/// Serves an HTTP/2 connection whose preface is waiting on `stream`: each stream through
/// `app`, each request body within `body_timeout` between reads, the connection closed when
/// idle for `idle_timeout`, GOAWAY when the server shuts down.
pub(super) async fn serve<A: HttpServerApp + Send + Sync + 'static>(
    app: &Arc<A>,
    stream: Stream,
    shutdown: &ShutdownWatch,
    body_timeout: Duration,
    idle_timeout: Duration,
) {
    let digest = Arc::new(Digest {
        ssl_digest: stream.get_ssl_digest(),
        timing_digest: stream.get_timing_digest(),
        proxy_digest: stream.get_proxy_digest(),
        socket_digest: stream.get_socket_digest(),
    });
    let mut conn = match server::handshake(stream, app.h2_options()).await {
        Ok(c) => c,
        Err(e) => {
            tracing::debug!("HTTP/2 handshake failed: {e}");
            return;
        }
    };
    let active = Arc::new(Active::default());
    let mut stopping = shutdown.clone();
    let mut shutting_down = false;
    let mut malformed = 0usize;
    loop {
        let accepted = if shutting_down {
            HttpSession::from_h2_conn(&mut conn, Arc::clone(&digest)).await
        } else {
            tokio::select! {
                biased;
                _ = stopping.changed() => {
                    // GOAWAY; streams in flight finish, then the client closes.
                    conn.graceful_shutdown();
                    shutting_down = true;
                    continue;
                }
                r = HttpSession::from_h2_conn(&mut conn, Arc::clone(&digest)) => r,
                () = active.idle_for(idle_timeout) => return,
            }
        };
        match accepted {
            Err(e) => {
                tracing::debug!("HTTP/2 connection ended: {e}");
                return;
            }
            Ok(None) => return,
            Ok(Some(H2Accept::Rejected)) => {
                malformed += 1;
                if malformed > MAX_MALFORMED_STREAMS {
                    conn.abrupt_shutdown(h2::Reason::ENHANCE_YOUR_CALM);
                    return;
                }
            }
            Ok(Some(H2Accept::Session(session))) => {
                let progress = Arc::new(Progress::new(session.is_body_done()));
                // Each stream's task is its own: the connection's server name goes with it.
                let served = crate::tls::with_sni(
                    crate::tls::sni(),
                    PROGRESS.scope(
                        Arc::clone(&progress),
                        serve_stream(app, session, shutdown.clone()),
                    ),
                );
                let guard = active.start();
                tokio::spawn(async move {
                    let _guard = guard;
                    tokio::select! {
                        () = served => {}
                        () = progress.stalled(body_timeout) => {
                            // Dropping the stream's future (in the task-local's scope: its
                            // context logs it) drops its session: RST_STREAM.
                            tracing::debug!("HTTP/2 request body stalled past body-timeout after the response; stream reset");
                        }
                    }
                });
            }
        }
    }
}

fn serve_stream<A: HttpServerApp + Send + Sync + 'static>(
    app: &Arc<A>,
    session: HttpSession,
    shutdown: ShutdownWatch,
) -> impl Future<Output = ()> + Send + 'static {
    let app = Arc::clone(app);
    async move {
        let _ = app
            .process_new_http(ServerSession::new_http2(session), &shutdown)
            .await;
    }
}
