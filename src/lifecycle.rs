//! The process's lifecycle state: requests in flight, connections open, draining, cut off.
//!
//! One `Lifecycle` per process, owned by `Live` and handed (as an `Arc`) to the transport, the
//! proxy, the admin API and the drain; no globals, so tests and a second server in one process
//! each have their own. Counts are RAII guards: a request or a connection is counted from the
//! guard's creation to its drop, whichever way it ends.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};

use crate::telemetry::AccessLogger;

#[derive(Default)]
pub struct Lifecycle {
    in_flight: AtomicUsize,
    open: AtomicUsize,
    draining: AtomicBool,
    cut_off: AtomicBool,
    handed_over: AtomicBool,
    lost_streams: AtomicU64,
    /// HTTP/1 requests served by the fast path and by Pingora's proxy.
    engines: [AtomicU64; 2],
    /// Where requests the end of the grace period cuts off are logged.
    cut_off_log: OnceLock<Arc<AccessLogger>>,
}

impl std::fmt::Debug for Lifecycle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Lifecycle")
            .field("in_flight", &self.in_flight)
            .field("open", &self.open)
            .field("draining", &self.draining)
            .field("cut_off", &self.cut_off)
            .finish_non_exhaustive()
    }
}

impl Lifecycle {
    /// Counts a request until the guard drops.
    pub fn request(self: &Arc<Self>) -> Counted {
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        Counted {
            of: Arc::clone(self),
            which: Which::Request,
        }
    }

    /// Counts an accepted connection until the guard drops.
    pub fn connection(self: &Arc<Self>) -> Counted {
        self.open.fetch_add(1, Ordering::AcqRel);
        Counted {
            of: Arc::clone(self),
            which: Which::Connection,
        }
    }

    /// Requests between their first byte's parse and their last accounting step.
    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Acquire)
    }

    /// Connections accepted and not yet closed: a drain is over when none is left.
    pub fn open_connections(&self) -> usize {
        self.open.load(Ordering::Acquire)
    }

    /// Set on SIGTERM/SIGQUIT: `/ready` turns 503 and every response says `Connection: close`.
    pub fn draining(&self) -> bool {
        self.draining.load(Ordering::Acquire)
    }

    pub fn start_draining(&self) {
        self.draining.store(true, Ordering::Release);
    }

    /// Set once the listening sockets went to a new process (`strangle serve --upgrade`): they
    /// stay open there, so stopping must not touch them beyond closing this process's copy.
    pub fn handed_over(&self) -> bool {
        self.handed_over.load(Ordering::Acquire)
    }

    pub fn mark_handed_over(&self) {
        self.handed_over.store(true, Ordering::Release);
    }

    /// Set when the grace period ends with requests in flight: each is logged and counted as
    /// cut off when the runtime's shutdown drops it.
    pub fn cut_off(&self) -> bool {
        self.cut_off.load(Ordering::Acquire)
    }

    pub fn mark_cut_off(&self) {
        self.cut_off.store(true, Ordering::Release);
    }

    /// Sets where cut-off requests are logged (once, at start-up).
    pub fn log_cut_offs_to(&self, access: Arc<AccessLogger>) {
        let _ = self.cut_off_log.set(access);
    }

    pub fn cut_off_log(&self) -> Option<&AccessLogger> {
        self.cut_off_log.get().map(Arc::as_ref)
    }

    /// A kept-alive connection closed because Pingora handed back a stream the transport did
    /// not make (`strangle_transport_lost_streams_total`; 0 unless Pingora changed).
    pub fn lost_stream(&self) {
        self.lost_streams.fetch_add(1, Ordering::Relaxed);
    }

    pub fn lost_streams(&self) -> u64 {
        self.lost_streams.load(Ordering::Relaxed)
    }

    /// An HTTP/1 request was handed to an engine: the fast path, or Pingora's proxy.
    pub fn served_by(&self, fast: bool) {
        self.engines[usize::from(fast)].fetch_add(1, Ordering::Relaxed);
    }

    /// HTTP/1 requests handed to (the fast path, Pingora's proxy) so far.
    pub fn engines(&self) -> (u64, u64) {
        let [pingora, fast] = &self.engines;
        (
            fast.load(Ordering::Relaxed),
            pingora.load(Ordering::Relaxed),
        )
    }
}

#[derive(Debug)]
enum Which {
    Request,
    Connection,
}

/// A request or connection counted in its `Lifecycle` while this lives.
#[derive(Debug)]
pub struct Counted {
    of: Arc<Lifecycle>,
    which: Which,
}

impl Counted {
    pub fn lifecycle(&self) -> &Lifecycle {
        &self.of
    }
}

impl Drop for Counted {
    fn drop(&mut self) {
        let counter = match self.which {
            Which::Request => &self.of.in_flight,
            Which::Connection => &self.of.open,
        };
        counter.fetch_sub(1, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn guards_count_until_dropped_whatever_the_order() {
        let l = Arc::new(Lifecycle::default());
        let a = l.request();
        let b = l.request();
        let c = l.connection();
        assert_eq!((l.in_flight(), l.open_connections()), (2, 1));
        drop(a);
        assert_eq!(l.in_flight(), 1);
        drop(c);
        assert_eq!(l.open_connections(), 0);
        drop(b);
        assert_eq!(l.in_flight(), 0);
    }

    #[test]
    fn two_lifecycles_do_not_share_state() {
        let (one, two) = (
            Arc::new(Lifecycle::default()),
            Arc::new(Lifecycle::default()),
        );
        one.start_draining();
        let _r = one.request();
        assert!(!two.draining());
        assert_eq!(two.in_flight(), 0);
    }
}
