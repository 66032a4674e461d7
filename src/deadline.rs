//! A total deadline for receiving a request head. Pingora's read timeout restarts with every
//! read, so a client sending one byte a minute would hold a connection forever (slowloris).
//! `HeaderDeadline` wraps the proxy app: each connection's stream is wrapped in a
//! `DeadlineStream` that fails reads once the head has taken longer than the deadline. The
//! clock starts at accept for a connection's first request and at the first byte for each
//! request after that (idle keep-alive time is Pingora's keepalive timeout's business), and
//! stops at the blank line that ends the head.

use std::fmt;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use pingora::apps::{HttpPersistentSettings, HttpServerApp, ServerApp};
use pingora::protocols::http::ServerSession;
use pingora::protocols::raw_connect::ProxyDigest;
use pingora::protocols::{
    GetProxyDigest, GetSocketDigest, GetTimingDigest, Peek, Shutdown, SocketDigest, Ssl, Stream,
    TimingDigest, UniqueID, UniqueIDType, ALPN,
};
use pingora::server::ShutdownWatch;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Sleep;

use crate::state::Live;

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

/// Wraps a Pingora app so every connection gets a request-head deadline.
pub struct HeaderDeadline<A> {
    pub inner: Arc<A>,
    pub deadline: Duration,
    /// Where the current keep-alive timeout is read from (it may change on reload).
    pub live: Arc<Live>,
}

/// Kept-alive connections closed because Pingora handed back a stream other than the
/// transport's own (`strangle_transport_lost_streams_total`; always 0 unless Pingora changed).
pub static LOST_STREAMS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// How long an idle kept-alive connection stays open once draining starts, for a request
/// already on its way (it is answered with `Connection: close`). Closing an idle connection
/// at once loses any request the client sent in that instant.
pub const DRAIN_LINGER: Duration = Duration::from_secs(1);

/// Waits until the next request starts: `false` if the client closed the connection, the
/// head deadline passed, the connection idled past `idle_limit`, or the server is draining and
/// no request came within `DRAIN_LINGER`.
async fn wait_for_request(
    stream: &mut DeadlineStream,
    idle_limit: Option<Duration>,
    draining: &mut ShutdownWatch,
) -> bool {
    let idle = async {
        match idle_limit {
            // Pingora's coarse shared timer (10 ms slots), not a tokio timer: a tokio timer
            // registered and cancelled around every keep-alive wait doubled the proxy's p99 at
            // a fixed rate (BENCHMARKS.md).
            Some(d) => pingora::prelude::fast_timeout::fast_sleep(d).await,
            None => std::future::pending().await,
        }
    };
    let drained = async {
        let _ = draining.wait_for(|stop| *stop).await;
        pingora::prelude::fast_timeout::fast_sleep(DRAIN_LINGER).await;
    };
    tokio::select! {
        biased;
        r = std::future::poll_fn(|cx| stream.poll_request_start(cx)) => r.unwrap_or(false),
        () = drained => false,
        () = idle => false,
    }
}

#[async_trait]
impl<A: HttpServerApp + Send + Sync + 'static> ServerApp for HeaderDeadline<A> {
    async fn process_new(
        self: &Arc<Self>,
        stream: Stream,
        shutdown: &ShutdownWatch,
    ) -> Option<Stream> {
        if stream.selected_alpn_proto().is_some() {
            // Negotiated by TLS (h2 or a custom protocol): Pingora's own handling.
            return self.inner.process_new(stream, shutdown).await;
        }
        // HTTP/1: the keep-alive loop of Pingora's `process_new`, with one change. Between
        // requests the connection waits for the next request's first byte here, in a future
        // of a few hundred bytes, and only then enters Pingora's request future (tens of KB):
        // an idle connection holds only the small one. A new connection's wait is bounded by
        // the head deadline (armed at accept), a kept-alive one's by the keep-alive timeout;
        // a shutdown closes idle connections at once. Pipelined requests (RFC 9112 section
        // 9.3.2) are answered in order: Pingora hands the bytes it read past a request back in
        // the persistent settings, and then there is nothing to wait for.
        let mut stream = Box::new(DeadlineStream::new(stream, self.deadline));
        stream.rearm(true);
        let mut settings = None;
        let mut idle_limit = None;
        let mut draining = shutdown.clone();
        let mut pipelined = false;
        loop {
            if !pipelined && !wait_for_request(&mut stream, idle_limit, &mut draining).await {
                return None;
            }
            let bad_line = stream.bad_line;
            let mut session = ServerSession::new_http1(stream);
            session.set_pipelining_enabled(true);
            if idle_limit.is_none() {
                // The first request: Pingora's defaults for a new connection.
                session.set_keepalive(if *shutdown.borrow() { None } else { Some(60) });
                session.set_keepalive_reuses_remaining(
                    self.inner
                        .server_options()
                        .and_then(|o| o.keepalive_request_limit),
                );
            } else if let Some(s) = settings.take() {
                HttpPersistentSettings::apply_to_session(s, &mut session);
            }
            let head = HeadState {
                parsed: std::cell::Cell::new(false),
                bad_line: std::cell::Cell::new(bad_line),
            };
            let (next, persistent) = HEAD
                .scope(head, self.inner.process_new_http(session, shutdown))
                .await?
                .consume();
            stream = match next.into_any().downcast::<DeadlineStream>() {
                Ok(s) => s,
                Err(_) => {
                    // Pingora handed back a stream that is not the one it was given (a change
                    // in a Pingora upgrade): the connection cannot be kept alive. Loud, since
                    // it would end every connection after its first request.
                    LOST_STREAMS.fetch_add(1, Ordering::Relaxed);
                    tracing::error!("the transport got back a stream it did not make; closing the connection (a Pingora change?)");
                    return None;
                }
            };
            pipelined = persistent.as_ref().is_some_and(has_pipelined_prefix);
            // A pipelined head is (at least partly) here already: its clock starts now, and
            // it ends when the proxy has the parsed head (`head_parsed`), since the bytes
            // before went by with the previous request's.
            stream.rearm(pipelined);
            settings = persistent;
            idle_limit = Some(self.live.load().config.server.keepalive_timeout);
        }
    }

    async fn cleanup(&self) {
        self.inner.cleanup().await
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

/// A downstream stream whose reads fail with `TimedOut` while a request head is overdue.
pub struct DeadlineStream {
    inner: Stream,
    deadline: Duration,
    /// Reading a request head.
    in_head: bool,
    timer: Option<Pin<Box<Sleep>>>,
    /// The last bytes seen, to find `\r\n\r\n` split across reads.
    tail: [u8; 3],
    /// A byte other than CR or LF was seen in this head. The parser skips blank lines before a
    /// request line (RFC 9112 section 2.2), so they must not end the head here either.
    started: bool,
    /// The request line ended (its `\n` was seen), and the spaces in it so far.
    line_done: bool,
    line_spaces: u8,
    /// The request line had a byte or a space RFC 9112 does not allow.
    bad_line: bool,
    /// The start of the next request, read while waiting for it and not yet handed on.
    peeked: Option<Bytes>,
    /// Writes not yet sent (see `WRITE_BUFFER`), and how much of them is already out. The
    /// space is given back when the connection goes idle (`poll_request_start`).
    wbuf: Vec<u8>,
    written: usize,
    /// Bytes of the current response reached the socket (set by writes, cleared per request).
    sent: AtomicBool,
    /// What a failed response turns into (`fail_response`): `REPLACE` with the bytes in
    /// `replacement` when nothing had reached the client, `ABORT` (send nothing more) when something had.
    fate: AtomicU8,
    replacement: std::sync::Mutex<Option<Bytes>>,
}

const NORMAL: u8 = 0;
/// `replacement` is to go out instead of what was buffered; later writes are swallowed.
const REPLACE: u8 = 1;
/// The replacement is in the write buffer; later writes are swallowed.
const SEALED: u8 = 2;
/// The client has part of a response that cannot be completed: nothing more is sent, and the
/// connection closes (the response's length or chunking shows it is cut short).
const ABORT: u8 = 3;

/// The transport's stream under an HTTP/1 session (`None` for other sessions).
fn transport(session: &ServerSession) -> Option<&DeadlineStream> {
    session
        .as_http1()
        .and_then(|h1| h1.stream().as_any().downcast_ref::<DeadlineStream>())
}

/// The final response's head is about to be handed to the transport: what went out so far
/// were interim responses (flushed as they were written), so from here `sent` tracks only this
/// response.
pub fn final_response_starts(session: &ServerSession) {
    if let Some(stream) = transport(session) {
        stream.sent.store(false, Ordering::Release);
    }
}

/// A response failed after its head was handed to the transport. When nothing of it has
/// reached the client yet, `reply` (a complete response) goes out instead of what was
/// buffered, and this returns `true`. Otherwise nothing more is sent and this returns `false`.
/// Either way the connection ends after this request.
pub fn fail_response(session: &ServerSession, reply: Bytes) -> bool {
    let Some(stream) = transport(session) else {
        return false;
    };
    if stream.sent.load(Ordering::Acquire) {
        stream.fate.store(ABORT, Ordering::Release);
        return false;
    }
    if let Ok(mut slot) = stream.replacement.lock() {
        *slot = Some(reply);
    }
    stream.fate.store(REPLACE, Ordering::Release);
    true
}

impl DeadlineStream {
    fn new(inner: Stream, deadline: Duration) -> DeadlineStream {
        DeadlineStream {
            inner,
            deadline,
            in_head: true,
            timer: None,
            tail: [0; 3],
            started: false,
            line_done: false,
            line_spaces: 0,
            bad_line: false,
            peeked: None,
            wbuf: Vec::new(),
            written: 0,
            sent: AtomicBool::new(false),
            fate: AtomicU8::new(NORMAL),
            replacement: std::sync::Mutex::new(None),
        }
    }

    fn rearm(&mut self, start_now: bool) {
        *self.sent.get_mut() = false;
        self.in_head = true;
        self.tail = [0; 3];
        self.started = false;
        self.line_done = false;
        self.line_spaces = 0;
        self.bad_line = false;
        self.timer = start_now.then(|| Box::pin(tokio::time::sleep(self.deadline)));
    }

    /// Looks for the end of the head in newly read bytes.
    fn scan(&mut self, mut data: &[u8]) {
        if !self.started {
            match data.iter().position(|&b| b != b'\r' && b != b'\n') {
                Some(i) => {
                    self.started = true;
                    data = &data[i..];
                }
                // Only blank lines so far: the clock runs, the head has not begun.
                None => return,
            }
        }
        if !self.line_done {
            self.check_request_line(data);
        }
        // `\r\n\r\n`, or a bare `\n\n`, which httparse also accepts: look at each `\n` (memchr,
        // vectorised) and the two bytes before it, which may have come in an earlier read.
        let before = |i: usize, back: usize| -> u8 {
            if i >= back {
                data[i - back]
            } else {
                self.tail[3 - (back - i)]
            }
        };
        for i in memchr::memchr_iter(b'\n', data) {
            let prev = before(i, 1);
            if prev == b'\n' || (prev == b'\r' && before(i, 2) == b'\n') {
                self.in_head = false;
                self.timer = None;
                return;
            }
        }
        let n = data.len();
        self.tail = [before(n, 3), before(n, 2), before(n, 1)];
    }
}

impl fmt::Debug for DeadlineStream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DeadlineStream")
            .field("inner", &self.inner)
            .finish()
    }
}

impl DeadlineStream {
    /// Checks the request line's bytes: `METHOD SP TARGET SP VERSION`, no other spaces, no
    /// control bytes but the final CR, none of `"<>` (which httparse refuses and Pingora
    /// would escape).
    fn check_request_line(&mut self, data: &[u8]) {
        let end = memchr::memchr(b'\n', data);
        let line = &data[..end.unwrap_or(data.len())];
        for (i, &b) in line.iter().enumerate() {
            let last_cr = b == b'\r' && end.is_some() && i + 1 == line.len();
            match b {
                b' ' => self.line_spaces = self.line_spaces.saturating_add(1),
                b'"' | b'<' | b'>' | 0x7f => self.bad_line = true,
                b if b < 0x20 && !last_cr => self.bad_line = true,
                _ => {}
            }
        }
        if self.line_spaces > 2 {
            self.bad_line = true;
        }
        if end.is_some() {
            self.line_done = true;
        }
        if self.bad_line {
            let _ = HEAD.try_with(|h| h.bad_line.set(true));
        }
    }

    /// Fails once the head is overdue.
    fn poll_deadline(&mut self, cx: &mut Context<'_>) -> io::Result<()> {
        if self.in_head && HEAD.try_with(|h| h.parsed.get()).unwrap_or(false) {
            self.in_head = false;
            self.timer = None;
        }
        if self.in_head {
            if let Some(timer) = self.timer.as_mut() {
                if timer.as_mut().poll(cx).is_ready() {
                    return Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        "request head deadline",
                    ));
                }
            }
        }
        Ok(())
    }

    /// Bytes of the head arrived. The clock runs from the first of them to the blank line;
    /// a head that arrives whole (the usual case) never needs the timer.
    fn seen(&mut self, data: &[u8]) {
        if self.in_head && !data.is_empty() {
            self.scan(data);
            if self.in_head && self.timer.is_none() {
                self.timer = Some(Box::pin(tokio::time::sleep(self.deadline)));
            }
        }
    }

    /// Waits for the start of the next request and keeps what arrived for the next read: one
    /// read, as Pingora's would have been, into a buffer of the size that arrived.
    /// `Ok(false)`: the client closed the connection.
    fn poll_request_start(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<bool>> {
        if self.peeked.is_some() {
            return Poll::Ready(Ok(true));
        }
        self.poll_deadline(cx)?;
        let mut chunk = [0u8; 4096];
        let mut buf = ReadBuf::new(&mut chunk);
        match Pin::new(&mut self.inner).poll_read(cx, &mut buf) {
            Poll::Ready(Ok(())) if buf.filled().is_empty() => Poll::Ready(Ok(false)),
            Poll::Ready(Ok(())) => {
                let data = Bytes::copy_from_slice(buf.filled());
                self.seen(&data);
                self.peeked = Some(data);
                Poll::Ready(Ok(true))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => {
                // Going idle: the write buffer's space goes back until there is a request.
                // A busy connection whose next request is already there keeps it.
                if self.wbuf.is_empty() && self.wbuf.capacity() > 0 {
                    self.wbuf = Vec::new();
                }
                Poll::Pending
            }
        }
    }
}

impl AsyncRead for DeadlineStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if let Some(mut data) = this.peeked.take() {
            // What arrived while waiting for the request; already scanned.
            let n = data.len().min(buf.remaining());
            buf.put_slice(&data.split_to(n));
            if !data.is_empty() {
                this.peeked = Some(data);
            }
            return Poll::Ready(Ok(()));
        }
        this.poll_deadline(cx)?;
        let before = buf.filled().len();
        let result = Pin::new(&mut this.inner).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = &result {
            this.seen(&buf.filled()[before..]);
        }
        result
    }
}

/// Small writes are gathered up to this size and sent on flush, so a response's head and a
/// small body leave in one segment (Pingora's default listener buffers the same way).
const WRITE_BUFFER: usize = 1460;

impl DeadlineStream {
    /// Whether writes are to be swallowed because the response failed (`fail_response`);
    /// a pending replacement takes the place of whatever was buffered.
    fn swallowing(&mut self) -> bool {
        match *self.fate.get_mut() {
            NORMAL => false,
            ABORT => {
                self.wbuf.clear();
                self.written = 0;
                true
            }
            REPLACE => {
                let reply = self.replacement.get_mut().ok().and_then(Option::take);
                self.wbuf.clear();
                self.written = 0;
                if let Some(reply) = reply {
                    self.wbuf.extend_from_slice(&reply);
                }
                *self.fate.get_mut() = SEALED;
                true
            }
            _ => true,
        }
    }

    /// Sends what the write buffer holds.
    fn poll_write_out(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.written < self.wbuf.len() {
            let n = ready!(Pin::new(&mut self.inner).poll_write(cx, &self.wbuf[self.written..]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            *self.sent.get_mut() = true;
            self.written += n;
        }
        self.wbuf.clear();
        self.written = 0;
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for DeadlineStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        if this.swallowing() {
            return Poll::Ready(Ok(buf.len()));
        }
        if this.wbuf.len() + buf.len() > WRITE_BUFFER {
            ready!(this.poll_write_out(cx))?;
        }
        if buf.len() >= WRITE_BUFFER {
            let n = ready!(Pin::new(&mut this.inner).poll_write(cx, buf))?;
            *this.sent.get_mut() |= n > 0;
            return Poll::Ready(Ok(n));
        }
        if this.wbuf.capacity() == 0 {
            this.wbuf.reserve_exact(WRITE_BUFFER);
        }
        this.wbuf.extend_from_slice(buf);
        Poll::Ready(Ok(buf.len()))
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.swallowing();
        ready!(self.poll_write_out(cx))?;
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.swallowing();
        ready!(self.poll_write_out(cx))?;
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

impl Drop for DeadlineStream {
    fn drop(&mut self) {
        match *self.fate.get_mut() {
            NORMAL => {}
            ABORT => {}
            _ => {
                // Pingora drops a failed session without flushing it: the replacement goes
                // out now, in one try (it is small, and the socket's buffer is empty).
                self.swallowing();
                let mut cx = Context::from_waker(std::task::Waker::noop());
                let _ = self.poll_write_out(&mut cx);
            }
        }
    }
}

#[async_trait]
impl Shutdown for DeadlineStream {
    async fn shutdown(&mut self) {
        self.swallowing();
        // Whatever is still buffered goes out before the connection is shut.
        let _ = std::future::poll_fn(|cx| self.poll_write_out(cx)).await;
        self.inner.shutdown().await
    }
}

impl UniqueID for DeadlineStream {
    fn id(&self) -> UniqueIDType {
        self.inner.id()
    }
}

impl Ssl for DeadlineStream {
    fn get_ssl(&self) -> Option<&pingora::protocols::tls::TlsRef> {
        self.inner.get_ssl()
    }
    fn get_ssl_digest(&self) -> Option<Arc<pingora::protocols::tls::SslDigest>> {
        self.inner.get_ssl_digest()
    }
    fn selected_alpn_proto(&self) -> Option<ALPN> {
        self.inner.selected_alpn_proto()
    }
}

impl GetTimingDigest for DeadlineStream {
    fn get_timing_digest(&self) -> Vec<Option<TimingDigest>> {
        self.inner.get_timing_digest()
    }
    fn get_read_pending_time(&self) -> Duration {
        self.inner.get_read_pending_time()
    }
    fn get_write_pending_time(&self) -> Duration {
        self.inner.get_write_pending_time()
    }
}

impl GetProxyDigest for DeadlineStream {
    fn get_proxy_digest(&self) -> Option<Arc<ProxyDigest>> {
        self.inner.get_proxy_digest()
    }
    fn set_proxy_digest(&mut self, digest: ProxyDigest) {
        self.inner.set_proxy_digest(digest)
    }
}

impl GetSocketDigest for DeadlineStream {
    fn get_socket_digest(&self) -> Option<Arc<SocketDigest>> {
        self.inner.get_socket_digest()
    }
    fn set_socket_digest(&mut self, digest: SocketDigest) {
        self.inner.set_socket_digest(digest)
    }
}

#[async_trait]
impl Peek for DeadlineStream {
    async fn try_peek(&mut self, buf: &mut [u8]) -> io::Result<bool> {
        self.inner.try_peek(buf).await
    }
}
