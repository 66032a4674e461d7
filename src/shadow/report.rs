//! What shadow traffic reports: a route's results in `GET /status`, its mismatch samples (with
//! secrets redacted) in `GET /routes/{id}/diffs`, and each copy's access-log line and spans.

use std::time::SystemTime;

use serde::Serialize;

use super::compare::{Answer, BodyCompared, Difference};
use super::{Copied, Job};
use crate::split::Side;
use crate::telemetry::spans::{CallKind, SpanRecord, UpstreamCall};
use crate::telemetry::{AccessEvent, AccessLogger, Rfc3339};

/// A mismatch, as `GET /routes/{id}/diffs` shows it: no request headers, no bodies, the query
/// redacted; the differing values (cut) are the point.
#[derive(Debug, Clone, Serialize)]
pub struct Sample {
    pub at: String,
    pub method: String,
    pub path: String,
    /// The side the client got.
    pub answered_by: &'static str,
    pub legacy: Summary,
    pub new: Summary,
    pub body: BodyCompared,
    /// The first differences (`compare::MAX_DIFFERENCES`), and how many there were.
    pub differences: Vec<Difference>,
    pub count: usize,
}

/// One answer in a sample.
#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    pub status: u16,
    pub bytes: usize,
    pub truncated: bool,
}

impl From<&Answer> for Summary {
    fn from(a: &Answer) -> Summary {
        Summary {
            status: a.status,
            bytes: a.body.len(),
            truncated: a.truncated,
        }
    }
}

/// A route's shadow in `GET /status`.
#[derive(Debug, Clone, PartialEq, Serialize, serde::Deserialize)]
pub struct ShadowStatus {
    /// The share of eligible requests copied.
    pub percent: String,
    pub shadowed: u64,
    pub matched: u64,
    pub mismatched: u64,
    /// Mismatched over compared (matched + mismatched).
    pub mismatch_rate: f64,
    pub dropped: u64,
    pub errors: u64,
    pub calibrated: u64,
    /// The noise calibration learned (JSON paths and `header:NAME`).
    pub learned: Vec<String>,
}

/// What a sample shows of a difference: the values of redacted headers (`[telemetry]
/// redact-headers`, and always cookies and credentials) and of JSON fields whose names say
/// they hold secrets are replaced; that they differed still shows.
pub(super) fn redact(mut differences: Vec<Difference>, headers: &[String]) -> Vec<Difference> {
    use crate::telemetry::redact::{secret_field, secret_header, REDACTED};
    for d in &mut differences {
        let secret = match d.path.strip_prefix("header:") {
            Some(name) => secret_header(name, headers),
            None => {
                let last = d.path.rsplit(['.', '[']).next().unwrap_or("");
                secret_field(last.trim_end_matches(']').trim_matches('"'))
            }
        };
        if secret {
            d.legacy = REDACTED.into();
            d.new = REDACTED.into();
        }
    }
    differences
}

/// A mismatch as the capture spool keeps it: the request (its headers and body redacted),
/// the answer the client got, the other side's, and the differences.
pub(super) fn kept(
    job: &Job,
    other: &Answer,
    differences: &[Difference],
) -> crate::capture::Record {
    use crate::capture::{kept_body, kept_headers, kept_query, Body, Record, Request, Response};
    let response = |a: &Answer| Response {
        status: a.status,
        content_type: a.content_type.clone(),
        body: Body::of(&a.body, a.truncated, a.content_type.as_deref()),
    };
    Record {
        at: humantime::format_rfc3339_millis(SystemTime::now()).to_string(),
        route: job.route.clone(),
        event: "mismatch".into(),
        request_id: job.copy.request_id.clone(),
        request: Request {
            method: job.copy.method.to_string(),
            path: job.copy.path.clone(),
            query: kept_query(&job.copy.query, &job.redact_query),
            headers: kept_headers(&job.copy.headers, &job.redact_headers),
            body: kept_body(&job.copy.body, false, &job.copy.headers, &job.redact_query),
        },
        side: job.answered_by.as_str().to_string(),
        upstream: match job.answered_by {
            Side::New => String::new(),
            _ => job.legacy.name().to_string(),
        },
        response: Some(response(&job.answer)),
        other: Some(response(other)),
        differences: differences
            .iter()
            .map(|d| format!("{}: legacy {} new {}", d.path, d.legacy, d.new))
            .collect(),
        error: None,
        fallback: None,
    }
}

/// A traced copy's spans: a span under the request's (`shadow GET /route`, with how it
/// compared) and its call to the upstream.
pub(super) fn trace(job: &Job, copied: &Copied, start: SystemTime) {
    let (Some(trace), Some(spans)) = (job.copy.trace, &job.spans) else {
        return;
    };
    let end = SystemTime::now();
    spans.push(SpanRecord {
        trace,
        start,
        end,
        method: job.copy.method.clone(),
        path: job.copy.path.clone(),
        query: None,
        status: copied.status,
        error: copied.error.clone(),
        route: Some(job.route.clone()),
        route_path: Some(job.copy.route_path.clone()),
        side: Some(other_side(job).as_str()),
        upstream: Some(UpstreamCall {
            name: job.other.config.name.clone(),
            start,
            end,
            called: true,
            kind: CallKind::of(&job.other.config),
        }),
        shadow: Some(copied.outcome),
    });
}

/// The side a copy goes to.
fn other_side(job: &Job) -> Side {
    match job.answered_by {
        Side::New => Side::Legacy,
        _ => Side::New,
    }
}

/// A copy's access-log line: the request it copies (its id, method, path), the side and
/// upstream the copy went to, its status and time, and `"shadow"`: how it compared.
pub(super) fn log(
    access: &AccessLogger,
    lines: Option<&tokio::sync::mpsc::Sender<Vec<u8>>>,
    job: &Job,
    copied: &Copied,
    took: std::time::Duration,
) {
    let side = other_side(job);
    let ms = took.as_secs_f64() * 1000.0;
    let event = AccessEvent {
        time: Rfc3339(SystemTime::now()),
        request_id: job.copy.request_id.as_deref().unwrap_or(""),
        client: job.copy.source_ip,
        method: job.copy.method.as_str(),
        path: &job.logged_path,
        route: Some(&job.route),
        side: Some(side.as_str()),
        upstream: Some(job.other.config.name.as_str()),
        status: copied.status,
        duration_ms: ms,
        upstream_ms: Some(ms),
        bytes_in: job.copy.body.len(),
        bytes_out: 0,
        error: copied.error.clone(),
        trace_id: None,
        span_id: None,
        shadow: Some(copied.outcome),
        fallback: None,
    };
    match lines {
        // The worker never takes the access log's lock (the requests' threads take it): its
        // lines go through a channel to a task on the requests' runtime.
        Some(lines) => {
            if let Some(line) = access.line(&event) {
                if lines.try_send(line).is_err() {
                    access.count_dropped();
                }
            }
        }
        None => access.log(&event, None),
    }
}
