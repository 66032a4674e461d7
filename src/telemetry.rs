//! Logs: the process log (tracing, to stderr) and the access log, one JSON line per request,
//! written in batches by its own thread so a slow disk or pipe never blocks a request.

use std::io::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, OnceLock, PoisonError};
use std::time::{Duration, SystemTime};

use serde::Serialize;

use crate::config::{AccessLog, Log};

/// One access-log event. Borrowed fields: building it allocates nothing.
#[derive(Debug, Serialize)]
pub struct AccessEvent<'a> {
    pub time: Rfc3339,
    pub request_id: &'a str,
    pub client: Option<std::net::IpAddr>,
    pub method: &'a str,
    pub path: &'a str,
    pub route: Option<&'a str>,
    pub side: Option<&'a str>,
    pub upstream: Option<&'a str>,
    pub status: u16,
    pub duration_ms: f64,
    pub upstream_ms: Option<f64>,
    pub bytes_in: usize,
    pub bytes_out: usize,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl serde::Serialize for Rfc3339 {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(&humantime::format_rfc3339_millis(self.0))
    }
}

/// A wall-clock time that serialises as RFC 3339 with milliseconds.
#[derive(Debug)]
pub struct Rfc3339(pub SystemTime);

/// Where access-log lines go. A request serialises its line into a per-thread buffer and
/// appends it to a shared batch under a short lock: no allocation, no system call, no thread
/// wake-up per request. The writer thread is woken when a batch starts, lets it gather for
/// `GATHER`, then writes it with one `write`; so lines appear within about `GATHER` and a busy
/// proxy writes at most 1/`GATHER` times a second (nginx's `buffer=`/`flush=` idea). Lines that
/// would grow the batch past `MAX_PENDING` (the writer is stuck) are dropped and counted
/// rather than stalling requests or memory.
pub struct AccessLogger {
    target: AccessLog,
    shared: OnceLock<Option<Arc<Batch>>>,
    pub dropped: AtomicU64,
}

struct Batch {
    pending: Mutex<Vec<u8>>,
    started: Condvar,
    out: Mutex<Box<dyn Write + Send>>,
}

const GATHER: Duration = Duration::from_millis(50);
const MAX_PENDING: usize = 16 << 20;

thread_local! {
    static LINE: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
}

impl AccessLogger {
    pub fn new(target: AccessLog) -> AccessLogger {
        AccessLogger {
            target,
            shared: OnceLock::new(),
            dropped: AtomicU64::new(0),
        }
    }

    pub fn enabled(&self) -> bool {
        self.target != AccessLog::Off
    }

    pub fn log(&self, event: &AccessEvent<'_>) {
        let Some(batch) = self.shared.get_or_init(|| self.start()) else {
            return;
        };
        LINE.with_borrow_mut(|line| {
            line.clear();
            if serde_json::to_writer(&mut *line, event).is_err() {
                return;
            }
            line.push(b'\n');
            let mut pending = batch.pending.lock().unwrap_or_else(PoisonError::into_inner);
            if pending.len() + line.len() > MAX_PENDING {
                self.dropped.fetch_add(1, Ordering::Relaxed);
                return;
            }
            let first = pending.is_empty();
            pending.extend_from_slice(line);
            drop(pending);
            if first {
                batch.started.notify_one();
            }
        });
    }

    /// Writes whatever is pending now: at exit, so a drained process has logged everything.
    pub fn flush(&self) {
        if let Some(Some(batch)) = self.shared.get() {
            batch.write_pending(&mut Vec::new());
        }
    }

    // The thread starts on the first request, after Pingora has forked (if it does).
    fn start(&self) -> Option<Arc<Batch>> {
        let out: Box<dyn Write + Send> = match &self.target {
            AccessLog::Off => return None,
            AccessLog::Stdout => Box::new(std::io::stdout()),
            AccessLog::File(path) => match std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
            {
                Ok(f) => Box::new(f),
                Err(e) => {
                    tracing::error!(path = %path.display(), "cannot open the access log: {e}");
                    return None;
                }
            },
        };
        let batch = Arc::new(Batch {
            pending: Mutex::new(Vec::new()),
            started: Condvar::new(),
            out: Mutex::new(out),
        });
        let writer = Arc::clone(&batch);
        let spawned = std::thread::Builder::new()
            .name("access-log".into())
            .spawn(move || {
                let mut spare = Vec::new();
                loop {
                    let pending = writer
                        .pending
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner);
                    let pending = writer
                        .started
                        .wait_while(pending, |p| p.is_empty())
                        .unwrap_or_else(PoisonError::into_inner);
                    drop(pending);
                    std::thread::sleep(GATHER);
                    writer.write_pending(&mut spare);
                }
            });
        match spawned {
            Ok(_) => Some(batch),
            Err(e) => {
                tracing::error!("cannot start the access-log writer: {e}");
                None
            }
        }
    }
}

impl Batch {
    /// Swaps the pending lines out (`spare` goes in, empty) and writes them in one go.
    fn write_pending(&self, spare: &mut Vec<u8>) {
        let mut out = self.out.lock().unwrap_or_else(PoisonError::into_inner);
        std::mem::swap(
            &mut *self.pending.lock().unwrap_or_else(PoisonError::into_inner),
            spare,
        );
        if !spare.is_empty() {
            let _ = out.write_all(spare);
            let _ = out.flush();
        }
        spare.clear();
        if spare.capacity() > 1 << 20 {
            // A burst's worth of buffer is not kept for ever.
            *spare = Vec::new();
        }
    }
}

/// Sets up the process log on stderr.
pub fn init_logging(log: &Log) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("STRANGLE_LOG")
        .or_else(|_| tracing_subscriber::EnvFilter::try_new(&log.level))
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi)
        .with_writer(std::io::stderr);
    let _ = if log.json {
        builder.json().try_init()
    } else {
        builder.try_init()
    };
}
