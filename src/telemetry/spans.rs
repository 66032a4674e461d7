//! Finished spans on their way to the exporter: what a sampled request leaves behind (one
//! record for its server span and its upstream call), queued for the exporter (`export`).

use std::time::SystemTime;

use super::context::RequestTrace;
use super::queue::{ExportQueue, Exported};

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
    /// A shadow copy's spans: how its answer compared (`matched`, `mismatched`, `error`).
    pub shadow: Option<&'static str>,
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

impl CallKind {
    /// How an upstream of this config is called.
    pub fn of(upstream: &crate::config::Upstream) -> CallKind {
        match &upstream.target {
            crate::config::Target::Lambda(l) => CallKind::Lambda {
                function: l.function.clone(),
                region: l.region.clone(),
            },
            _ if upstream.sigv4.is_some() => CallKind::Signed,
            _ => CallKind::Http,
        }
    }
}

/// The queue between requests and the span exporter.
pub type SpanQueue = ExportQueue<SpanRecord>;

impl Exported for SpanRecord {
    fn items(&self) -> u64 {
        1 + u64::from(self.upstream.as_ref().is_some_and(|u| u.called))
    }

    fn bytes(&self) -> usize {
        std::mem::size_of::<SpanRecord>()
            + self.path.len()
            + self.query.as_ref().map_or(0, String::len)
            + self.error.as_ref().map_or(0, String::len)
    }
}
