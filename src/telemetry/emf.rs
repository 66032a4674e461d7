//! CloudWatch Embedded Metric Format: lines that CloudWatch Logs turns into metrics by itself,
//! so a container on ECS or EKS (or a Lambda extension) gets per-route metrics with no agent
//! config and no PutMetricData calls.
//!
//! One line per route and side per interval, following the specification: the metadata
//! (`_aws.Timestamp`, one directive with the namespace, the dimension sets `[route]` and
//! `[route, side]` and the metrics' names and units) and, at the top level, the dimension values
//! and one number per metric. CloudWatch sums the counts of a route's two sides under the
//! `[route]` dimension set; for the latency quantiles there it keeps both points (the
//! `Maximum` statistic is then the slower side's).
//!
//! Nothing in a line comes from a request: route ids and side names come from the config, the
//! numbers from the counters. Building a line is the reporter's job, once per interval, never
//! the request path's.

use serde::Serialize;

/// What one side of one route did in one interval.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Point<'a> {
    pub route: &'a str,
    /// `legacy`, `new`, `default` for unmatched requests, or `refused` for those strangle
    /// answered itself before any side.
    pub side: &'a str,
    pub requests: u64,
    pub status_4xx: u64,
    /// 5xx answers (a request whose client left before any answer is in neither count).
    pub status_5xx: u64,
    /// Latency quantiles in milliseconds; `None` when the interval had no requests.
    pub p50_ms: Option<f64>,
    pub p99_ms: Option<f64>,
}

/// CloudWatch Logs refuses an event of 256 KB or more.
pub const MAX_LINE: usize = 256 * 1024;
/// The specification's limit of metrics in one directive.
pub const MAX_METRICS: usize = 100;
/// CloudWatch's limit on a dimension value.
const MAX_DIMENSION_VALUE: usize = 1024;

const DIMENSIONS: &[&[&str]] = &[&["route"], &["route", "side"]];
/// What strangle answered itself (side `refused`) stays out of the `[route]` sums: a route's
/// 5xx there are its sides', never a planned `respond = { status = 503 }`.
const REFUSED_DIMENSIONS: &[&[&str]] = &[&["route", "side"]];

#[derive(Debug, Clone, Copy, Serialize)]
struct MetricDefinition {
    #[serde(rename = "Name")]
    name: &'static str,
    #[serde(rename = "Unit")]
    unit: &'static str,
}

const COUNTS: [MetricDefinition; 3] = [
    MetricDefinition {
        name: "Requests",
        unit: "Count",
    },
    MetricDefinition {
        name: "4xx",
        unit: "Count",
    },
    MetricDefinition {
        name: "5xx",
        unit: "Count",
    },
];
const WITH_LATENCY: [MetricDefinition; 5] = [
    COUNTS[0],
    COUNTS[1],
    COUNTS[2],
    MetricDefinition {
        name: "LatencyP50",
        unit: "Milliseconds",
    },
    MetricDefinition {
        name: "LatencyP99",
        unit: "Milliseconds",
    },
];
const _: () = assert!(WITH_LATENCY.len() <= MAX_METRICS);

#[derive(Serialize)]
struct Directive<'a> {
    #[serde(rename = "Namespace")]
    namespace: &'a str,
    #[serde(rename = "Dimensions")]
    dimensions: &'static [&'static [&'static str]],
    #[serde(rename = "Metrics")]
    metrics: &'static [MetricDefinition],
}

#[derive(Serialize)]
struct Metadata<'a> {
    #[serde(rename = "Timestamp")]
    timestamp: u64,
    #[serde(rename = "CloudWatchMetrics")]
    cloudwatch_metrics: [Directive<'a>; 1],
}

#[derive(Serialize)]
struct Line<'a> {
    #[serde(rename = "_aws")]
    aws: Metadata<'a>,
    route: &'a str,
    side: &'a str,
    /// Not a metric: how long the interval the numbers count was, for readers of the log.
    interval_s: f64,
    #[serde(rename = "Requests")]
    requests: u64,
    #[serde(rename = "4xx")]
    status_4xx: u64,
    #[serde(rename = "5xx")]
    status_5xx: u64,
    #[serde(rename = "LatencyP50", skip_serializing_if = "Option::is_none")]
    p50: Option<f64>,
    #[serde(rename = "LatencyP99", skip_serializing_if = "Option::is_none")]
    p99: Option<f64>,
}

/// Appends one line per point to `out`, each ending in `\n`. `timestamp_ms`: the end of the
/// interval, in milliseconds since the epoch.
pub fn write_lines(
    namespace: &str,
    timestamp_ms: u64,
    interval: std::time::Duration,
    points: &[Point<'_>],
    out: &mut Vec<u8>,
) {
    for p in points {
        let route = dimension_value(p.route);
        // Both quantiles or neither: a directive's metrics must all be present.
        let latency = p.p50_ms.zip(p.p99_ms).filter(|_| p.requests > 0);
        let line = Line {
            aws: Metadata {
                timestamp: timestamp_ms,
                cloudwatch_metrics: [Directive {
                    namespace,
                    dimensions: if p.side == "refused" {
                        REFUSED_DIMENSIONS
                    } else {
                        DIMENSIONS
                    },
                    metrics: if latency.is_some() {
                        &WITH_LATENCY
                    } else {
                        &COUNTS
                    },
                }],
            },
            route: &route,
            side: p.side,
            interval_s: interval.as_secs_f64(),
            requests: p.requests,
            status_4xx: p.status_4xx,
            status_5xx: p.status_5xx,
            p50: latency.map(|(p50, _)| round_ms(p50)),
            p99: latency.map(|(_, p99)| round_ms(p99)),
        };
        let start = out.len();
        if serde_json::to_writer(&mut *out, &line).is_err() {
            out.truncate(start);
            continue;
        }
        out.push(b'\n');
        // A bounded route id and fixed members keep a line to a few KB.
        debug_assert!(out.len() - start < MAX_LINE);
    }
}

/// Microsecond precision is plenty, and keeps the numbers short.
fn round_ms(ms: f64) -> f64 {
    (ms * 1000.0).round() / 1000.0
}

/// A route id as a dimension value: ids longer than CloudWatch takes are cut, with a hash of
/// the whole id so that two long ids sharing a start stay apart.
fn dimension_value(id: &str) -> std::borrow::Cow<'_, str> {
    if id.len() <= MAX_DIMENSION_VALUE {
        return id.into();
    }
    let mut cut = MAX_DIMENSION_VALUE - 17;
    while !id.is_char_boundary(cut) {
        cut -= 1;
    }
    // FNV-1a: stable across builds and platforms, unlike the std hasher.
    let hash = id.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    });
    format!("{}~{hash:016x}", &id[..cut]).into()
}

#[cfg(test)]
mod tests;
