//! The transport's stream: what the HTTP/1 session reads from and writes to. Reads enforce the
//! request-head deadline (a total for the head, where Pingora's read timeout restarts with
//! every read: slowloris); writes are gathered into one segment per response and can be
//! replaced by an error response when a response fails before any of it went out.

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
use pingora::protocols::http::ServerSession;
use pingora::protocols::raw_connect::ProxyDigest;
use pingora::protocols::{
    GetProxyDigest, GetSocketDigest, GetTimingDigest, Peek, Shutdown, SocketDigest, Ssl, Stream,
    TimingDigest, UniqueID, UniqueIDType, ALPN,
};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Sleep;

use super::scan::HeadScan;
use super::HEAD;

/// A downstream stream whose reads fail with `TimedOut` while a request head is overdue.
pub struct DeadlineStream {
    inner: Stream,
    deadline: Duration,
    /// Reading a request head.
    in_head: bool,
    timer: Option<Pin<Box<Sleep>>>,
    scan: HeadScan,
    /// The start of the next request, read while waiting for it and not yet handed on.
    peeked: Option<Bytes>,
    /// Writes not yet sent (see `WRITE_BUFFER`), and how much of them is already out. The
    /// space is given back when the connection goes idle (`poll_request_start`).
    wbuf: Vec<u8>,
    written: usize,
    /// Bytes of the current response reached the socket (set by writes, cleared per request).
    sent: AtomicBool,
    /// The client's address, once asked for.
    peer: Option<Option<std::net::IpAddr>>,
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
    pub(super) fn new(inner: Stream, deadline: Duration) -> DeadlineStream {
        DeadlineStream {
            inner,
            deadline,
            in_head: true,
            timer: None,
            scan: HeadScan::default(),
            peeked: None,
            wbuf: Vec::new(),
            written: 0,
            sent: AtomicBool::new(false),
            peer: None,
            fate: AtomicU8::new(NORMAL),
            replacement: std::sync::Mutex::new(None),
        }
    }

    /// Whether the request line of the head being read had bytes HTTP/1 does not allow.
    pub(super) fn bad_line(&self) -> bool {
        self.scan.bad_line()
    }

    /// Whether the next request's whole head is here, read while waiting for it, and is one the
    /// HTTP/1 fast path serves (`scan::plain_head`).
    pub(super) fn plain_head_waiting(&self) -> bool {
        self.scan.done() && self.peeked.as_deref().is_some_and(super::scan::plain_head)
    }

    /// The client's address (looked up once per connection).
    pub(super) fn peer_ip(&mut self) -> Option<std::net::IpAddr> {
        let inner = &self.inner;
        *self.peer.get_or_insert_with(|| {
            let digest = inner.get_socket_digest()?;
            Some(digest.peer_addr()?.as_inet()?.ip())
        })
    }

    /// Starts the scan of the next request head; its clock starts now, or at its first byte.
    pub(super) fn rearm(&mut self, start_now: bool) {
        *self.sent.get_mut() = false;
        self.in_head = true;
        self.scan = HeadScan::default();
        self.timer = start_now.then(|| Box::pin(tokio::time::sleep(self.deadline)));
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
            if self.scan.feed(data) {
                self.in_head = false;
                self.timer = None;
            }
            if self.scan.bad_line() {
                let _ = HEAD.try_with(|h| h.bad_line.set(true));
            }
            if self.in_head && self.timer.is_none() {
                self.timer = Some(Box::pin(tokio::time::sleep(self.deadline)));
            }
        }
    }

    /// Waits for the start of the next request and keeps what arrived for the next read: one
    /// read, as Pingora's would have been, into a buffer of the size that arrived.
    /// `Ok(false)`: the client closed the connection.
    pub(super) fn poll_request_start(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<bool>> {
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

/// The connection preface of HTTP/2 (RFC 9113 section 3.4).
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

impl DeadlineStream {
    /// Whether the connection starts with HTTP/2's preface (h2c with prior knowledge). Reads
    /// on, within the head deadline, while what arrived is the preface's beginning; what was
    /// read stays for the next read either way.
    pub(super) fn poll_h2c_preface(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<bool>> {
        loop {
            let have = self.peeked.as_deref().unwrap_or_default();
            let n = have.len().min(H2_PREFACE.len());
            if have[..n] != H2_PREFACE[..n] {
                return Poll::Ready(Ok(false));
            }
            if n == H2_PREFACE.len() {
                return Poll::Ready(Ok(true));
            }
            // The preface's beginning can look like a whole HTTP/1 head (`PRI * HTTP/2.0` and a
            // blank line), which ends the head deadline: the rest of it gets one of its own.
            let timer = self
                .timer
                .get_or_insert_with(|| Box::pin(tokio::time::sleep(self.deadline)));
            if timer.as_mut().poll(cx).is_ready() {
                return Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "HTTP/2 preface deadline",
                )));
            }
            let mut chunk = [0u8; 1024];
            let mut buf = ReadBuf::new(&mut chunk);
            ready!(Pin::new(&mut self.inner).poll_read(cx, &mut buf))?;
            if buf.filled().is_empty() {
                return Poll::Ready(Ok(false));
            }
            // Scanned as HTTP/1 bytes too: if this is no preface, the head they start is
            // checked as one that arrived whole would be.
            self.seen(buf.filled());
            let have = self.peeked.as_deref().unwrap_or_default();
            let mut more = Vec::with_capacity(have.len() + buf.filled().len());
            more.extend_from_slice(have);
            more.extend_from_slice(buf.filled());
            self.peeked = Some(Bytes::from(more));
        }
    }

    /// The connection leaves HTTP/1 for HTTP/2 (its preface is here): no head deadline from
    /// here on (HTTP/2 has its own idle timeout), and reads pass straight through.
    pub(super) fn leave_http1(&mut self) {
        self.in_head = false;
        self.timer = None;
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
            if !*self.sent.get_mut() {
                super::answering(&self.wbuf[self.written..]);
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
            if n > 0 && !*this.sent.get_mut() {
                super::answering(buf);
            }
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
    /// What was read ahead is what a peek sees; the stream under it is never read past those
    /// bytes (they are the next read's).
    async fn try_peek(&mut self, buf: &mut [u8]) -> io::Result<bool> {
        match self.peeked.as_deref() {
            Some(p) if p.len() >= buf.len() => {
                buf.copy_from_slice(&p[..buf.len()]);
                Ok(true)
            }
            _ => Ok(false),
        }
    }
}
