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
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use async_trait::async_trait;
use pingora::apps::ServerApp;
use pingora::protocols::raw_connect::ProxyDigest;
use pingora::protocols::{
    GetProxyDigest, GetSocketDigest, GetTimingDigest, Peek, Shutdown, SocketDigest, Ssl, Stream,
    TimingDigest, UniqueID, UniqueIDType, ALPN,
};
use pingora::server::ShutdownWatch;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Sleep;

/// Wraps a Pingora app so every connection gets a request-head deadline.
pub struct HeaderDeadline<A> {
    pub inner: Arc<A>,
    pub deadline: Duration,
}

#[async_trait]
impl<A: ServerApp + Send + Sync + 'static> ServerApp for HeaderDeadline<A> {
    async fn process_new(
        self: &Arc<Self>,
        stream: Stream,
        shutdown: &ShutdownWatch,
    ) -> Option<Stream> {
        let stream: Stream = if stream.as_any().is::<DeadlineStream>() {
            // A kept-alive connection coming back for its next request.
            let mut s = stream.into_any().downcast::<DeadlineStream>().ok()?;
            s.rearm(false);
            s
        } else {
            let mut s = Box::new(DeadlineStream::new(stream, self.deadline));
            s.rearm(true);
            s
        };
        self.inner.process_new(stream, shutdown).await
    }

    async fn cleanup(&self) {
        self.inner.cleanup().await
    }
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
}

impl DeadlineStream {
    fn new(inner: Stream, deadline: Duration) -> DeadlineStream {
        DeadlineStream {
            inner,
            deadline,
            in_head: true,
            timer: None,
            tail: [0; 3],
        }
    }

    fn rearm(&mut self, start_now: bool) {
        self.in_head = true;
        self.tail = [0; 3];
        self.timer = start_now.then(|| Box::pin(tokio::time::sleep(self.deadline)));
    }

    /// Looks for the end of the head in newly read bytes.
    fn scan(&mut self, data: &[u8]) {
        let mut window = self.tail;
        for &b in data {
            // `\r\n\r\n`, or a bare `\n\n`, which httparse also accepts.
            if b == b'\n' && (window[2] == b'\n' || (window[2] == b'\r' && window[1] == b'\n')) {
                self.in_head = false;
                self.timer = None;
                return;
            }
            window = [window[1], window[2], b];
        }
        self.tail = window;
    }
}

impl fmt::Debug for DeadlineStream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DeadlineStream")
            .field("inner", &self.inner)
            .finish()
    }
}

impl AsyncRead for DeadlineStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if this.in_head {
            if let Some(timer) = this.timer.as_mut() {
                if timer.as_mut().poll(cx).is_ready() {
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        "request head deadline",
                    )));
                }
            }
        }
        let before = buf.filled().len();
        let result = Pin::new(&mut this.inner).poll_read(cx, buf);
        if this.in_head {
            if let Poll::Ready(Ok(())) = &result {
                let new = &buf.filled()[before..];
                if !new.is_empty() {
                    if this.timer.is_none() {
                        this.timer = Some(Box::pin(tokio::time::sleep(this.deadline)));
                    }
                    this.scan(new);
                }
            }
        }
        result
    }
}

impl AsyncWrite for DeadlineStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

#[async_trait]
impl Shutdown for DeadlineStream {
    async fn shutdown(&mut self) {
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
