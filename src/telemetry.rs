//! Logs: the process log (tracing, to stderr) and the access log, one JSON line per request,
//! written in batches by its own thread so a slow, full or stuck target never blocks a request
//! or the exit (see `access`).

use std::time::SystemTime;

use serde::Serialize;

use crate::config::Log;

mod access;
pub mod context;
pub mod export;
pub mod spans;
pub use access::AccessLogger;

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
