//! Finished spans on their way to the exporter: what a sampled request leaves behind (one
//! record for its server span and its upstream call), and the bounded queue between the request
//! path and the exporter (`export`). The request path only ever `try_send`s: when the queue is
//! full (a collector that is down or slow), the record is dropped and counted, and the request
//! never waits.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Condvar, Mutex};
use std::time::{Duration, SystemTime};

use tokio::sync::mpsc;

use super::context::RequestTrace;

/// How many finished requests' spans may wait for the exporter.
pub const QUEUE: usize = 4096;

/// A sampled request, as its spans need it. Strings are copied only for sampled requests.
#[derive(Debug, Clone)]
pub struct SpanRecord {
    pub trace: RequestTrace,
    pub start: SystemTime,
    pub end: SystemTime,
    pub method: http::Method,
    /// The canonical path (`url.path`).
    pub path: String,
    /// The query without its `?`, credentials redacted (`url.query`), when there is one.
    pub query: Option<String>,
    pub status: u16,
    /// Why the request failed, when it did.
    pub error: Option<String>,
    pub route: Option<String>,
    /// The route's path pattern (`http.route`).
    pub route_path: Option<String>,
    pub side: Option<&'static str>,
    pub upstream: Option<UpstreamCall>,
}

/// The call to the upstream: the client span.
#[derive(Debug, Clone)]
pub struct UpstreamCall {
    pub name: String,
    pub start: SystemTime,
    pub end: SystemTime,
    /// The call was made (a request refused by a limit after the side was chosen was not).
    pub called: bool,
    pub kind: CallKind,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CallKind {
    Http,
    Signed,
    Lambda { function: String, region: String },
}

/// The queue between requests and the exporter, with its counters (in `/metrics`).
#[derive(Debug)]
pub struct SpanQueue {
    tx: mpsc::Sender<SpanRecord>,
    rx: Mutex<Option<mpsc::Receiver<SpanRecord>>>,
    /// Records dropped: the queue was full, or the collector refused or could not be reached.
    pub dropped: AtomicU64,
    /// Spans the collector accepted.
    pub exported: AtomicU64,
    /// The exporter's last flush is done (set once, at shutdown).
    flushed: Mutex<bool>,
    flushed_cv: Condvar,
}

impl Default for SpanQueue {
    fn default() -> SpanQueue {
        let (tx, rx) = mpsc::channel(QUEUE);
        SpanQueue {
            tx,
            rx: Mutex::new(Some(rx)),
            dropped: AtomicU64::new(0),
            exported: AtomicU64::new(0),
            flushed: Mutex::new(false),
            flushed_cv: Condvar::new(),
        }
    }
}

impl SpanQueue {
    /// Hands a finished request's spans to the exporter, or drops them when it is behind.
    pub fn push(&self, record: SpanRecord) {
        let spans = 1 + u64::from(record.upstream.as_ref().is_some_and(|u| u.called));
        if self.tx.try_send(record).is_err() {
            self.dropped.fetch_add(spans, Ordering::Relaxed);
        }
    }

    /// Said by the exporter once its last flush is done.
    pub fn mark_flushed(&self) {
        *self.flushed.lock().unwrap_or_else(|e| e.into_inner()) = true;
        self.flushed_cv.notify_all();
    }

    /// At exit: waits (at most `within`) for the exporter's last flush, when there is an
    /// exporter with spans to send.
    pub fn wait_flushed(&self, within: Duration) {
        let running = self.rx.lock().unwrap_or_else(|e| e.into_inner()).is_none();
        if !running {
            return;
        }
        let done = self.flushed.lock().unwrap_or_else(|e| e.into_inner());
        let _ = self.flushed_cv.wait_timeout_while(done, within, |d| !*d);
    }

    /// The receiving end, for the one exporter.
    pub fn take_receiver(&self) -> Option<mpsc::Receiver<SpanRecord>> {
        self.rx.lock().unwrap_or_else(|e| e.into_inner()).take()
    }
}
