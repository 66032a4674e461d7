//! Logs: the process log (tracing, to stderr) and the access log, one JSON line per request,
//! written in batches by its own thread so a slow, full or stuck target never blocks a request
//! or the exit (see `access`).

use std::time::SystemTime;

use serde::Serialize;

use crate::config::Log;

mod access;
pub mod context;
pub mod emf;
pub mod export;
pub mod queue;
pub mod redact;
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
    /// The trace and server span, when the request was traced (sampled), to find its spans.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub trace_id: Option<Hex<16>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub span_id: Option<Hex<8>>,
    /// A shadow copy's line: how its answer compared (`matched`, `mismatched`, `error`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub shadow: Option<&'a str>,
    /// Why the new side's failure sent the request to legacy (`fallback`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fallback: Option<&'a str>,
}

/// An id that serialises as lower-case hex, with no allocation.
#[derive(Debug, Clone, Copy)]
pub struct Hex<const N: usize>(pub [u8; N]);

impl<const N: usize> std::fmt::Display for Hex<N> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.iter().try_for_each(|b| write!(f, "{b:02x}"))
    }
}

impl<const N: usize> serde::Serialize for Hex<N> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl serde::Serialize for Rfc3339 {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(&humantime::format_rfc3339_millis(self.0))
    }
}

/// A wall-clock time that serialises as RFC 3339 with milliseconds.
#[derive(Debug)]
pub struct Rfc3339(pub SystemTime);

/// Whether an event may be logged: every library's debug and trace output is dropped, whatever
/// level the config or `STRANGLE_LOG` asks for (a directive naming a library module cannot
/// bring it back). Pingora writes every request head it sends at `trace`, `Authorization` and
/// cookies included, the AWS signer its canonical requests, the file watcher an event for
/// every write (a log file next to the config fed itself); redaction is on by default, so only
/// strangle's own debug output, which never prints header values, gets through.
fn allowed(meta: &tracing::Metadata<'_>) -> bool {
    *meta.level() <= tracing::Level::INFO
        || meta.target() == "strangle"
        || meta.target().starts_with("strangle::")
}

/// Sets up the process log on stderr.
pub fn init_logging(log: &Log) {
    use tracing_subscriber::layer::SubscriberExt as _;
    use tracing_subscriber::util::SubscriberInitExt as _;
    use tracing_subscriber::Layer as _;
    let filter = tracing_subscriber::EnvFilter::try_from_env("STRANGLE_LOG")
        .or_else(|_| tracing_subscriber::EnvFilter::try_new(&log.level))
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let cap = tracing_subscriber::filter::filter_fn(allowed);
    let fmt = tracing_subscriber::fmt::layer()
        .with_ansi(ansi)
        .with_writer(std::io::stderr);
    let registry = tracing_subscriber::registry();
    let _ = if log.json {
        registry
            .with(fmt.json().with_filter(filter).with_filter(cap))
            .try_init()
    } else {
        registry
            .with(fmt.with_filter(filter).with_filter(cap))
            .try_init()
    };
}
