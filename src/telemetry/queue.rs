//! The bounded queue between the request path and an OTLP exporter (spans, access-log records).
//! The request path only ever `try_send`s: when the queue is full (a collector that is down or
//! slow), the record is dropped and counted, and the request never waits.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Condvar, Mutex};
use std::time::Duration;

use tokio::sync::mpsc;

/// How many finished requests' records may wait for an exporter.
pub const QUEUE: usize = 4096;
/// And how many bytes they may hold, at most: records carry paths, which clients size (a
/// collector that hangs would otherwise cost `QUEUE` times the largest request head).
pub const QUEUE_BYTES: usize = 16 << 20;

/// A queued record, how many exported items (spans, log records) it makes, and about how many
/// bytes it holds.
pub trait Exported: Send + 'static {
    fn items(&self) -> u64 {
        1
    }

    fn bytes(&self) -> usize;
}

/// The queue between requests and one exporter, with its counters (in `/metrics`).
#[derive(Debug)]
pub struct ExportQueue<T> {
    tx: mpsc::Sender<T>,
    rx: Mutex<Option<mpsc::Receiver<T>>>,
    /// Items dropped: the queue was full, or the collector refused or could not be reached.
    pub dropped: AtomicU64,
    /// Items the collector accepted.
    pub exported: AtomicU64,
    /// Bytes held by records queued and not yet taken by the exporter.
    pending: AtomicUsize,
    /// The exporter's last flush is done (set once, at shutdown).
    flushed: Mutex<bool>,
    flushed_cv: Condvar,
}

impl<T> Default for ExportQueue<T> {
    fn default() -> ExportQueue<T> {
        let (tx, rx) = mpsc::channel(QUEUE);
        ExportQueue {
            tx,
            rx: Mutex::new(Some(rx)),
            dropped: AtomicU64::new(0),
            exported: AtomicU64::new(0),
            pending: AtomicUsize::new(0),
            flushed: Mutex::new(false),
            flushed_cv: Condvar::new(),
        }
    }
}

impl<T: Exported> ExportQueue<T> {
    /// Hands a finished request's record to the exporter, or drops it when it is behind.
    pub fn push(&self, record: T) {
        let (items, bytes) = (record.items(), record.bytes());
        if self.pending.fetch_add(bytes, Ordering::Relaxed) + bytes > QUEUE_BYTES {
            self.pending.fetch_sub(bytes, Ordering::Relaxed);
            self.dropped.fetch_add(items, Ordering::Relaxed);
            return;
        }
        if self.tx.try_send(record).is_err() {
            self.pending.fetch_sub(bytes, Ordering::Relaxed);
            self.dropped.fetch_add(items, Ordering::Relaxed);
        }
    }

    /// Said by the exporter for each record it takes off the queue.
    pub fn taken(&self, record: &T) {
        self.pending.fetch_sub(record.bytes(), Ordering::Relaxed);
    }
}

impl<T> ExportQueue<T> {
    /// Said by the exporter once its last flush is done.
    pub fn mark_flushed(&self) {
        *self.flushed.lock().unwrap_or_else(|e| e.into_inner()) = true;
        self.flushed_cv.notify_all();
    }

    /// At exit: waits (at most `within`) for the exporter's last flush, when there is an
    /// exporter with records to send.
    pub fn wait_flushed(&self, within: Duration) {
        let running = self.rx.lock().unwrap_or_else(|e| e.into_inner()).is_none();
        if !running {
            return;
        }
        let done = self.flushed.lock().unwrap_or_else(|e| e.into_inner());
        let _ = self.flushed_cv.wait_timeout_while(done, within, |d| !*d);
    }

    /// The receiving end, for the one exporter.
    pub fn take_receiver(&self) -> Option<mpsc::Receiver<T>> {
        self.rx.lock().unwrap_or_else(|e| e.into_inner()).take()
    }
}

#[cfg(test)]
mod tests;
