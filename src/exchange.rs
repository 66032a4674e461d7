//! Deadlines on a whole exchange with an HTTP upstream. Pingora's `timeout` restarts with
//! every read, so an upstream that trickles its head a byte at a time is never late. An
//! `ExchangeDeadline` bounds the time to the whole response head (`response-timeout`) and to
//! the end of the exchange (`request-timeout`): when one passes, the upstream socket is shut
//! down, which ends whatever read or write Pingora is waiting on, and the request is answered
//! 504 (or, once part of the response went out, its connection is reset).
//!
//! The timer is disarmed before the connection goes back to the pool (at the end of the
//! response) and whenever the exchange ends otherwise (errors, the end of the request). On an
//! error Pingora closes the connection just before strangle hears of it; so that a timer firing
//! in that instant cannot touch a socket that reused the descriptor's number, it shuts the
//! socket down only if its two addresses are still the ones recorded when it was armed.

use std::os::fd::RawFd;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;

/// Which deadline passed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Late {
    /// The response head did not arrive within `response-timeout`.
    Head(Duration),
    /// The exchange did not end within `request-timeout`.
    Total(Duration),
}

impl std::fmt::Display for Late {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Late::Head(d) => write!(f, "no response head within response-timeout {d:?}"),
            Late::Total(d) => write!(f, "exchange not done within request-timeout {d:?}"),
        }
    }
}

struct State {
    armed: bool,
    fired: Option<Late>,
    /// The head's deadline; its clock starts once the request is sent (`request_sent`), so a
    /// slow client's upload never counts against the upstream.
    head_by: Option<(Instant, Duration)>,
    head_seen: bool,
    total_by: Option<(Instant, Duration)>,
}

struct Shared {
    state: Mutex<State>,
    /// Wakes the timer when a deadline is set.
    changed: tokio::sync::Notify,
    fd: RawFd,
    /// The connection's local and peer addresses when armed.
    identity: Option<(SockaddrStorage, SockaddrStorage)>,
}

use nix::sys::socket::{getpeername, getsockname, SockaddrStorage};

fn identity(fd: RawFd) -> Option<(SockaddrStorage, SockaddrStorage)> {
    Some((getsockname(fd).ok()?, getpeername(fd).ok()?))
}

/// An armed deadline on one upstream connection.
pub struct ExchangeDeadline {
    shared: Arc<Shared>,
    task: tokio::task::JoinHandle<()>,
}

impl ExchangeDeadline {
    /// Arms deadlines on the connection `fd`: `head_by` for the response head (or later, with
    /// `request_sent`), `total_by` for the whole exchange. `None` when the connection's
    /// addresses cannot be read.
    pub fn arm(
        fd: RawFd,
        head_by: Option<(Instant, Duration)>,
        total_by: Option<(Instant, Duration)>,
    ) -> Option<ExchangeDeadline> {
        let shared = Arc::new(Shared {
            identity: Some(identity(fd)?),
            state: Mutex::new(State {
                armed: true,
                fired: None,
                head_by,
                head_seen: false,
                total_by,
            }),
            changed: tokio::sync::Notify::new(),
            fd,
        });
        let timer = Arc::clone(&shared);
        let task = tokio::spawn(async move { timer.run().await });
        Some(ExchangeDeadline { shared, task })
    }

    /// The whole request is sent: the head's clock starts now (unless the head is here).
    pub fn request_sent(&self, head_timeout: Duration) {
        if let Ok(mut s) = self.shared.state.lock() {
            if s.armed && !s.head_seen && s.head_by.is_none() {
                s.head_by = Some((Instant::now() + head_timeout, head_timeout));
                self.shared.changed.notify_one();
            }
        }
    }

    /// The response head arrived: only the total deadline (if any) still applies.
    pub fn head_received(&self) {
        if let Ok(mut s) = self.shared.state.lock() {
            s.head_by = None;
            s.head_seen = true;
            if s.total_by.is_none() {
                s.armed = false;
                self.task.abort();
            }
        }
    }

    /// Which deadline passed, if one did.
    pub fn fired(&self) -> Option<Late> {
        self.shared.state.lock().ok().and_then(|s| s.fired)
    }

    /// Ends the deadline: after this returns, the timer never touches the socket.
    pub fn disarm(&self) {
        if let Ok(mut s) = self.shared.state.lock() {
            s.armed = false;
        }
        self.task.abort();
    }
}

impl Drop for ExchangeDeadline {
    fn drop(&mut self) {
        self.disarm();
    }
}

impl Shared {
    async fn run(&self) {
        loop {
            // Registered before the state is read, so a deadline set meanwhile is not missed.
            let changed = self.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            let next = {
                let Ok(s) = self.state.lock() else { return };
                if !s.armed {
                    return;
                }
                match (s.head_by, s.total_by) {
                    (Some((h, _)), Some((t, _))) => Some(h.min(t)),
                    (Some((h, _)), None) => Some(h),
                    (None, Some((t, _))) => Some(t),
                    (None, None) => None,
                }
            };
            match next {
                Some(at) => {
                    tokio::select! {
                        () = tokio::time::sleep_until(at) => {}
                        () = &mut changed => continue,
                    }
                }
                None => {
                    changed.await;
                    continue;
                }
            }
            let Ok(mut s) = self.state.lock() else { return };
            if !s.armed {
                return;
            }
            let now = Instant::now();
            let late = match (s.head_by, s.total_by) {
                (Some((h, d)), _) if h <= now => Late::Head(d),
                (_, Some((t, d))) if t <= now => Late::Total(d),
                _ => continue,
            };
            s.fired = Some(late);
            s.armed = false;
            // Both directions: a pending read sees the end, a pending write fails.
            if self.identity.is_some() && identity(self.fd) == self.identity {
                let _ = nix::sys::socket::shutdown(self.fd, nix::sys::socket::Shutdown::Both);
            }
            return;
        }
    }
}
