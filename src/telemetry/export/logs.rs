//! Access-log records as OTLP logs (`[telemetry.otlp] logs = true`), so that one collector
//! receives a request's trace and its log record together.
//!
//! The request path hands over a copy of the access-log line it has serialised anyway (one
//! allocation, only with `logs = true`); turning it into a log record (its fields as
//! attributes, its trace and span ids as the record's trace context, a severity from the
//! status) happens here, in batches, off the request path. A record therefore carries exactly
//! what the access-log line carries, redaction included.

use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use bytes::Bytes;
use opentelemetry::logs::{AnyValue, LogRecord as _, Logger as _, LoggerProvider as _, Severity};
use opentelemetry::trace::{SpanId, TraceFlags, TraceId};
use opentelemetry::InstrumentationScope;
use opentelemetry_sdk::logs::{
    LogBatch, LogExporter as _, SdkLogRecord, SdkLogger, SdkLoggerProvider,
};
use serde_json::Value;

use super::{current, resource, Built, Sink, Target, Warnings};
use crate::config::Otlp;
use crate::telemetry::queue::{ExportQueue, Exported};

/// Access-log lines (without their newline) on their way to the log exporter.
pub type LogQueue = ExportQueue<Bytes>;

impl Exported for Bytes {
    fn bytes(&self) -> usize {
        self.len()
    }
}

/// The exporter, and the logger that makes its records (a provider with no processor: it is
/// only a record factory, the batching is `export::run`'s).
pub struct LogsExporter {
    exporter: opentelemetry_otlp::LogExporter,
    logger: SdkLogger,
    _provider: SdkLoggerProvider,
}

/// The log sink: the exporter for the config's `[telemetry.otlp]` when it says `logs = true`.
pub struct Logs<F> {
    target: F,
    built: Option<Built<LogsExporter>>,
    warnings: Warnings,
    scope: InstrumentationScope,
}

impl<F: Fn() -> Target + Send> Logs<F> {
    pub fn new(target: F) -> Logs<F> {
        Logs {
            target,
            built: None,
            warnings: Warnings::default(),
            scope: super::scope(),
        }
    }
}

fn build(otlp: &Otlp, service: &str) -> Result<LogsExporter, String> {
    let mut exporter = otlp_exporter!(opentelemetry_otlp::LogExporter, "/v1/logs", otlp)?;
    exporter.set_resource(&resource(service));
    let provider = SdkLoggerProvider::builder().build();
    Ok(LogsExporter {
        exporter,
        logger: provider.logger("strangle"),
        _provider: provider,
    })
}

#[async_trait]
impl<F: Fn() -> Target + Send> Sink<Bytes> for Logs<F> {
    async fn send(&mut self, queue: &LogQueue, batch: Vec<Bytes>, within: Duration) {
        let n = batch.len() as u64;
        let Some(b) = current(&mut self.built, (self.target)(), build, queue, n) else {
            return;
        };
        let records: Vec<SdkLogRecord> = batch
            .iter()
            .map(|l| record(&b.exporter.logger, l))
            .collect();
        let refs: Vec<(&SdkLogRecord, &InstrumentationScope)> =
            records.iter().map(|r| (r, &self.scope)).collect();
        let outcome =
            tokio::time::timeout(within, b.exporter.exporter.export(LogBatch::new(&refs))).await;
        self.warnings.count(
            queue,
            n,
            "access-log records",
            &b.otlp.endpoint,
            outcome,
            within,
        );
    }

    fn last_batch(&mut self) {
        self.warnings.last = None;
    }
}

/// One access-log line as a log record.
fn record(logger: &SdkLogger, line: &[u8]) -> SdkLogRecord {
    let mut r = logger.create_log_record();
    r.set_event_name("strangle.access");
    r.set_observed_timestamp(SystemTime::now());
    let Ok(Value::Object(fields)) = serde_json::from_slice::<Value>(line) else {
        // Never happens (the line was serialised from an event); the text still goes.
        r.set_body(AnyValue::String(
            String::from_utf8_lossy(line).into_owned().into(),
        ));
        return r;
    };
    let text = |k: &str| fields.get(k).and_then(Value::as_str);
    if let Some(t) = text("time").and_then(|t| humantime::parse_rfc3339(t).ok()) {
        r.set_timestamp(t);
    }
    let status = fields.get("status").and_then(Value::as_u64).unwrap_or(0);
    let (number, name) = match status {
        500.. | 0 => (Severity::Error, "ERROR"),
        400..=499 => (Severity::Warn, "WARN"),
        _ => (Severity::Info, "INFO"),
    };
    r.set_severity_number(number);
    r.set_severity_text(name);
    let body = format!(
        "{} {} {status}",
        text("method").unwrap_or("-"),
        text("path").unwrap_or("-")
    );
    r.set_body(AnyValue::String(body.into()));
    let trace = text("trace_id").and_then(|t| TraceId::from_hex(t).ok());
    let span = text("span_id").and_then(|s| SpanId::from_hex(s).ok());
    if let (Some(trace), Some(span)) = (trace, span) {
        // Only sampled requests' lines carry ids.
        r.set_trace_context(trace, span, Some(TraceFlags::SAMPLED));
    }
    for (key, value) in fields {
        if matches!(key.as_str(), "time" | "trace_id" | "span_id") {
            continue;
        }
        let value = match value {
            Value::String(s) => AnyValue::String(s.into()),
            Value::Bool(b) => AnyValue::Boolean(b),
            Value::Number(n) => match n.as_i64() {
                Some(i) => AnyValue::Int(i),
                None => AnyValue::Double(n.as_f64().unwrap_or_default()),
            },
            Value::Null | Value::Array(_) | Value::Object(_) => continue,
        };
        r.add_attribute(key, value);
    }
    r
}

#[cfg(test)]
mod tests;
