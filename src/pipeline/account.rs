//! Stage 4, account: a request's last step, whichever way it ended (served, refused, failed,
//! cut off by the end of a grace period): its route side's counters, and its access-log line
//! when there is a log.

use std::net::IpAddr;
use std::time::{Duration, Instant, SystemTime};

use super::Request;
use crate::split::Side;
use crate::telemetry::context::RequestTrace;
use crate::telemetry::redact;
use crate::telemetry::spans::{CallKind, SpanRecord, UpstreamCall};
use crate::telemetry::{AccessEvent, AccessLogger, Hex, Rfc3339};

/// How a request ended.
pub struct Finished<'a> {
    pub status: u16,
    pub method: &'a str,
    pub path: &'a str,
    pub client: Option<IpAddr>,
    /// Body bytes read and sent.
    pub bytes: (usize, usize),
    pub error: Option<String>,
}

impl Request {
    /// Counts the request on its route side and writes its access-log line.
    pub fn account(&self, access: Option<&AccessLogger>, done: Finished<'_>) {
        let now = Instant::now();
        if self.side().is_none() {
            // Answered before any side: on its route, or with the unmatched ones.
            self.route_stats().refused.record(done.status);
        }
        if let Some(side) = self.side() {
            self.route_stats()
                .side(side)
                .record(done.status, now - self.start);
            // What the monolith still serves, by path template: legacy sides and unmatched.
            if side != Side::New {
                let source = self.route_id().unwrap_or(crate::stats::DEFAULT_ROUTE);
                self.snap.inventory.record(
                    source,
                    done.method,
                    done.path,
                    done.status,
                    now - self.start,
                );
            }
        }
        let traced = self.trace.filter(|t| t.server.sampled);
        if let Some(trace) = traced {
            self.snap.spans.push(self.span_record(trace, now, &done));
        }
        let otlp = self.snap.logs.as_deref();
        let Some(access) = access.filter(|a| a.enabled() || otlp.is_some()) else {
            return;
        };
        let event = AccessEvent {
            time: Rfc3339(SystemTime::now()),
            request_id: self.request_id_str(),
            client: done.client,
            method: done.method,
            path: done.path,
            route: self.route_id(),
            side: self.side().map(Side::as_str),
            upstream: self.upstream().map(|u| u.config.name.as_str()),
            status: done.status,
            duration_ms: ms(now - self.start),
            upstream_ms: self.upstream_start.map(|s| ms(now - s)),
            bytes_in: done.bytes.0,
            bytes_out: done.bytes.1,
            error: done.error,
            trace_id: traced.map(|t| Hex(t.server.trace_id)),
            span_id: traced.map(|t| Hex(t.server.span_id)),
            shadow: None,
            fallback: self.fallback,
        };
        access.log(&event, otlp);
    }
}

impl Request {
    /// What a sampled request's spans are made of (strings copied only here).
    fn span_record(&self, trace: RequestTrace, now: Instant, done: &Finished<'_>) -> SpanRecord {
        let wall = SystemTime::now();
        let at = |i: Instant| wall.checked_sub(now - i).unwrap_or(wall);
        let route = self.route.map(|i| &self.snap.routes[i]);
        let upstream = self.upstream().map(|u| {
            let kind = CallKind::of(&u.config);
            UpstreamCall {
                name: u.config.name.clone(),
                // A request refused before the call (a limit, a body too large) has no call.
                start: self.upstream_start.map_or(wall, at),
                end: wall,
                called: self.upstream_start.is_some(),
                kind,
            }
        });
        SpanRecord {
            trace,
            start: at(self.start),
            end: wall,
            method: self.method.clone().unwrap_or_default(),
            path: clip(done.path),
            query: self
                .path
                .as_ref()
                .map(|p| p.query())
                .filter(|q| q.len() > 1)
                .map(|q| {
                    clip(&redact::query(
                        &q[1..],
                        &self.snap.config.telemetry.redact_query,
                    ))
                }),
            status: done.status,
            error: done.error.clone(),
            route: route.map(|r| r.id.clone()),
            route_path: route.map(|r| r.path.clone()),
            side: self.side().map(Side::as_str),
            upstream,
            shadow: None,
        }
    }
}

/// The most of a path or query a span keeps: the queue then holds at most a few megabytes
/// whatever clients send (a target may be 64 KB).
const SPAN_TEXT: usize = 1024;

/// `text`, cut at `SPAN_TEXT` bytes (on a character boundary).
fn clip(text: &str) -> String {
    let mut end = text.len().min(SPAN_TEXT);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text[..end].to_string()
}

fn ms(d: Duration) -> f64 {
    (d.as_secs_f64() * 1000.0 * 1000.0).round() / 1000.0
}
