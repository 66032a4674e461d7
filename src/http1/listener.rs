//! The proxy's own accept loop, in place of Pingora's listening service.
//!
//! Pingora spawns each accepted connection as a task whose future is sized for its TLS
//! handshake path (about 9 KB, held for the connection's life, even on plain TCP). Here a
//! connection's task holds only the app's boxed future, so an idle keep-alive connection costs
//! little more than its socket and the small state of `DeadlineStream` (see `stream.rs`).
//! Sockets are bound before the server starts, so a port in use is a start-up error with the
//! address in it; at shutdown the listeners close at once and new connections are refused.
//! A failing `accept` (out of file descriptors, above all) backs off instead of spinning
//! (`AcceptBackoff`, shared with the admin listener).

use std::io;
use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use pingora::apps::ServerApp;
use pingora::protocols::l4::stream::Stream;
use pingora::protocols::{GetSocketDigest, SocketDigest};
use pingora::server::{ListenFds, ShutdownWatch};
use pingora::services::Service;
use socket2::{Domain, Protocol, Socket, Type};

/// Binds a listening socket the way a server should: address reuse across restarts, the
/// kernel's largest backlog, non-blocking for the runtime.
pub fn bind(addr: SocketAddr) -> io::Result<std::net::TcpListener> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    socket.bind(&addr.into())?;
    socket.listen(65535)?;
    socket.set_nonblocking(true)?;
    Ok(socket.into())
}

/// A bound listening socket, and the TLS handshake its connections start with (`None`: plain).
pub struct Bound {
    pub listener: std::net::TcpListener,
    pub tls: Option<Arc<crate::tls::Handshake>>,
}

/// Serves `app` on already bound listeners, with `threads` runtime threads.
pub struct ProxyListeners<A> {
    pub name: String,
    pub app: Arc<A>,
    pub listeners: Vec<Bound>,
    pub threads: usize,
    /// Counts open connections, for the drain.
    pub lifecycle: Arc<crate::lifecycle::Lifecycle>,
}

#[async_trait]
impl<A: ServerApp + Send + Sync + 'static> Service for ProxyListeners<A> {
    async fn start_service(
        &mut self,
        _fds: Option<ListenFds>,
        shutdown: ShutdownWatch,
        _listeners_per_fd: usize,
    ) {
        let mut loops = Vec::new();
        for Bound { listener, tls } in self.listeners.drain(..) {
            match tokio::net::TcpListener::from_std(listener) {
                Ok(l) => loops.push(tokio::spawn(accept_loop(
                    l,
                    tls,
                    Arc::clone(&self.app),
                    shutdown.clone(),
                    Arc::clone(&self.lifecycle),
                ))),
                Err(e) => tracing::error!("proxy listener: {e}"),
            }
        }
        for l in loops {
            let _ = l.await;
        }
        self.app.cleanup().await;
    }

    fn name(&self) -> &str {
        &self.name
    }

    fn threads(&self) -> Option<usize> {
        Some(self.threads)
    }
}

/// A Pingora stream for an accepted connection, as Pingora's own listener makes it. Built
/// outside the connection's future so that future stays small (it lives as long as the
/// connection).
fn l4_stream(tcp: tokio::net::TcpStream, peer: SocketAddr) -> Stream {
    let mut stream = Stream::from(tcp);
    // Small responses go out whole rather than waiting on the client's ACK.
    let _ = stream.set_nodelay();
    let digest = SocketDigest::from_raw_fd(stream.as_raw_fd());
    let _ = digest.peer_addr.set(Some(peer.into()));
    stream.set_socket_digest(digest);
    stream
}

/// Serves one accepted connection in its own task (after its TLS handshake, on a TLS
/// listener), request after request.
fn serve<A: ServerApp + Send + Sync + 'static>(
    tcp: tokio::net::TcpStream,
    peer: SocketAddr,
    tls: Option<&Arc<crate::tls::Handshake>>,
    app: &Arc<A>,
    shutdown: &ShutdownWatch,
    lifecycle: &Arc<crate::lifecycle::Lifecycle>,
) {
    let app = Arc::clone(app);
    let shutdown = shutdown.clone();
    // Counted from the accept to the end of the connection's task.
    let open = lifecycle.connection();
    let tls = tls.map(Arc::clone);
    tokio::spawn(async move {
        let _open = open;
        let stream = l4_stream(tcp, peer);
        let (stream, sni) = match tls {
            // Boxed: what the handshake holds is not kept for the connection's life.
            Some(tls) => match Box::pin(tls.accept(stream)).await {
                Some(s) => s,
                None => return,
            },
            None => (Box::new(stream) as pingora::protocols::Stream, None),
        };
        crate::tls::with_sni(sni, async {
            let mut next = app.process_new(stream, &shutdown).await;
            while let Some(stream) = next {
                next = app.process_new(stream, &shutdown).await;
            }
        })
        .await;
    });
}

async fn accept_loop<A: ServerApp + Send + Sync + 'static>(
    listener: tokio::net::TcpListener,
    tls: Option<Arc<crate::tls::Handshake>>,
    app: Arc<A>,
    shutdown: ShutdownWatch,
    lifecycle: Arc<crate::lifecycle::Lifecycle>,
) {
    let mut stop = shutdown.clone();
    let stopping = stop.wait_for(|stop| *stop);
    tokio::pin!(stopping);
    let mut backoff = AcceptBackoff::new("proxy");
    loop {
        let accepted = tokio::select! {
            biased;
            _ = &mut stopping => break,
            r = listener.accept() => r,
        };
        match accepted {
            Ok((tcp, peer)) => {
                backoff.accepted();
                serve(tcp, peer, tls.as_ref(), &app, &shutdown, &lifecycle);
            }
            Err(e) => {
                let pause = backoff.failed(&e);
                tokio::select! {
                    biased;
                    _ = &mut stopping => break,
                    _ = tokio::time::sleep(pause) => {}
                }
            }
        }
    }
    // Connections the kernel completed before the listener closes are clients that already
    // sent (or are sending) a request: closing the listener would reset them. The backlog
    // shrinks to its minimum first (new handshakes then mostly wait for a SYN retry, which
    // the closed port refuses), then what is queued is served once, with `Connection: close`.
    // Not when the socket went to a new process: it accepts from the same queue.
    if !lifecycle.handed_over() {
        let _ = nix::sys::socket::listen(
            &listener,
            nix::sys::socket::Backlog::new(0).unwrap_or(nix::sys::socket::Backlog::MAXCONN),
        );
    }
    let mut late = 0usize;
    for _ in 0..3 {
        while let Ok(Ok((tcp, peer))) =
            tokio::time::timeout(Duration::ZERO, listener.accept()).await
        {
            serve(tcp, peer, tls.as_ref(), &app, &shutdown, &lifecycle);
            late += 1;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    while let Ok(Ok((tcp, peer))) = tokio::time::timeout(Duration::ZERO, listener.accept()).await {
        serve(tcp, peer, tls.as_ref(), &app, &shutdown, &lifecycle);
        late += 1;
    }
    tracing::info!(addr = ?listener.local_addr().ok(), late, "stopped accepting");
}

/// What an accept loop does after a failed `accept`. The pending connection stays in the
/// backlog and the socket stays readable, so retrying at once spins a core (EMFILE: out of
/// file descriptors, ENFILE, ENOBUFS, ENOMEM) and floods the log. Instead: wait 10 ms, doubling
/// up to 1 s while it keeps failing, and log at most once per 10 s with the count.
pub struct AcceptBackoff {
    what: &'static str,
    delay: Duration,
    failures: u64,
    logged: Option<std::time::Instant>,
}

impl AcceptBackoff {
    const FIRST: Duration = Duration::from_millis(10);
    const MAX: Duration = Duration::from_secs(1);
    const LOG_EVERY: Duration = Duration::from_secs(10);

    pub fn new(what: &'static str) -> AcceptBackoff {
        AcceptBackoff {
            what,
            delay: Duration::ZERO,
            failures: 0,
            logged: None,
        }
    }

    pub fn accepted(&mut self) {
        if self.delay > Duration::ZERO {
            tracing::info!(
                listener = self.what,
                failures = self.failures,
                "accepting connections again"
            );
            self.delay = Duration::ZERO;
            self.failures = 0;
        }
    }

    /// Counts a failure; returns how long to wait before the next `accept`.
    pub fn failed(&mut self, e: &io::Error) -> Duration {
        self.failures += 1;
        self.delay = (self.delay * 2).clamp(Self::FIRST, Self::MAX);
        if self.logged.is_none_or(|t| t.elapsed() >= Self::LOG_EVERY) {
            let hint = if matches!(
                e.raw_os_error(),
                Some(nix::libc::EMFILE | nix::libc::ENFILE)
            ) {
                " (out of file descriptors: raise `ulimit -n` / LimitNOFILE)"
            } else {
                ""
            };
            tracing::error!(
                listener = self.what,
                failures = self.failures,
                "cannot accept connections: {e}{hint}; retrying in {:?}",
                self.delay
            );
            self.logged = Some(std::time::Instant::now());
        }
        self.delay
    }
}
