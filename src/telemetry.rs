//! Logs: the process log (tracing, to stderr) and the access log, one JSON line per request,
//! written by its own thread so a slow disk or pipe never blocks a request.

use std::io::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{sync_channel, SyncSender, TrySendError};
use std::sync::OnceLock;
use std::time::SystemTime;

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

/// Where access-log lines go. Lines that cannot be queued (the writer is far behind) are
/// dropped and counted rather than stalling requests.
pub struct AccessLogger {
    target: AccessLog,
    sender: OnceLock<Option<SyncSender<Vec<u8>>>>,
    pub dropped: AtomicU64,
}

const QUEUE: usize = 16 * 1024;

impl AccessLogger {
    pub fn new(target: AccessLog) -> AccessLogger {
        AccessLogger {
            target,
            sender: OnceLock::new(),
            dropped: AtomicU64::new(0),
        }
    }

    pub fn enabled(&self) -> bool {
        self.target != AccessLog::Off
    }

    pub fn log(&self, event: &AccessEvent<'_>) {
        let Some(sender) = self.sender.get_or_init(|| self.start()) else {
            return;
        };
        let mut line = Vec::with_capacity(320);
        if serde_json::to_writer(&mut line, event).is_err() {
            return;
        }
        line.push(b'\n');
        if let Err(TrySendError::Full(_)) = sender.try_send(line) {
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }

    // The thread starts on the first request, after Pingora has forked (if it does).
    fn start(&self) -> Option<SyncSender<Vec<u8>>> {
        let mut out: Box<dyn Write + Send> = match &self.target {
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
        let (tx, rx) = sync_channel::<Vec<u8>>(QUEUE);
        let spawned = std::thread::Builder::new()
            .name("access-log".into())
            .spawn(move || {
                let mut buf = std::io::BufWriter::with_capacity(64 * 1024, &mut out);
                while let Ok(line) = rx.recv() {
                    let _ = buf.write_all(&line);
                    while let Ok(line) = rx.try_recv() {
                        let _ = buf.write_all(&line);
                    }
                    // Flush whenever the queue is empty: lines appear promptly, and a process
                    // that exits after draining has written everything.
                    let _ = buf.flush();
                }
            });
        match spawned {
            Ok(_) => Some(tx),
            Err(e) => {
                tracing::error!("cannot start the access-log writer: {e}");
                None
            }
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
