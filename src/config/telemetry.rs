//! Lowering `[telemetry]` and `[telemetry.otlp]`.

use http::header::{HeaderName, HeaderValue};
use toml::Spanned;

use std::time::Duration;

use super::raw::{RawEmf, RawOtlp, RawTelemetry};
use super::{AccessLog, Cx};
use std::fmt;

impl Cx<'_> {
    pub(super) fn telemetry(&mut self, raw: RawTelemetry) -> Telemetry {
        let mut t = Telemetry::default();
        if let Some(name) = &raw.service_name {
            if name.get_ref().trim().is_empty() {
                self.err_at(name, "empty `service-name`", None);
            } else {
                t.service_name = name.get_ref().clone();
            }
        }
        for h in raw.redact_headers.iter().flatten() {
            match HeaderName::from_bytes(h.get_ref().as_bytes()) {
                Ok(name) => t.redact_headers.push(name),
                Err(_) => self.err_at(h, format!("`{}` is not a header name", h.get_ref()), None),
            }
        }
        for q in raw.redact_query.iter().flatten() {
            if q.get_ref().is_empty() {
                self.err_at(q, "empty query parameter name in `redact-query`", None);
            } else {
                t.redact_query.push(q.get_ref().clone());
            }
        }
        t.otlp = raw.otlp.and_then(|o| self.otlp(o));
        t.emf = raw.emf.map(|e| self.emf(e));
        t
    }

    fn emf(&mut self, raw: RawEmf) -> Emf {
        let output = match &raw.output {
            None => AccessLog::Stdout,
            Some(o) => {
                match o.get_ref().as_str() {
                    "" | "off" => {
                        let hint = Some("use `stdout` or a file path; leave `[telemetry.emf]` out to write none".into());
                        self.err_at(o, format!("`{}` is not an EMF output", o.get_ref()), hint);
                        AccessLog::Stdout
                    }
                    path => self.output(path),
                }
            }
        };
        let namespace = match &raw.namespace {
            None => "strangle".to_string(),
            Some(n) => {
                if let Err(why) = cloudwatch_namespace(n.get_ref()) {
                    let hint = Some(
                        "1 to 255 letters, digits and `. - _ / # :` or spaces, not starting with `AWS/`"
                            .into(),
                    );
                    self.err_at(n, format!("namespace `{}` {why}", n.get_ref()), hint);
                }
                n.get_ref().clone()
            }
        };
        let interval = self.duration(&raw.interval, "interval", Duration::from_secs(60));
        if let Some(i) = &raw.interval {
            if !(Duration::from_secs(1)..=Duration::from_secs(3600)).contains(&interval) {
                let hint =
                    Some("CloudWatch keeps points per second or per minute: `60s` is usual".into());
                self.err_at(
                    i,
                    format!("EMF `interval` {} is not between 1s and 1h", i.get_ref()),
                    hint,
                );
            }
        }
        Emf {
            output,
            namespace,
            interval: interval.clamp(Duration::from_secs(1), Duration::from_secs(3600)),
        }
    }

    fn otlp(&mut self, raw: RawOtlp) -> Option<Otlp> {
        let protocol = match raw.protocol.as_ref().map(|p| (p, p.get_ref().as_str())) {
            None | Some((_, "http/protobuf")) => OtlpProtocol::HttpProtobuf,
            Some((_, "grpc")) => OtlpProtocol::Grpc,
            Some((p, other)) => {
                let hint = Some("use `http/protobuf` or `grpc`".into());
                self.err_at(p, format!("unknown OTLP protocol `{other}`"), hint);
                OtlpProtocol::HttpProtobuf
            }
        };
        let endpoint = match &raw.endpoint {
            None => {
                let default = match protocol {
                    OtlpProtocol::HttpProtobuf => "http://127.0.0.1:4318",
                    OtlpProtocol::Grpc => "http://127.0.0.1:4317",
                };
                Some(http::Uri::from_static(default))
            }
            // Reported; the other keys are still checked.
            Some(e) => self.endpoint(e),
        };
        let sample_ratio = match raw.sample_ratio {
            None => 0.01,
            Some(r) => {
                let v = r.get_ref().value();
                if !(0.0..=1.0).contains(&v) {
                    let hint = Some("a share from 0 to 1: 0.01 samples one trace in 100".into());
                    self.err_at(
                        &r,
                        format!("`sample-ratio` {v} is not between 0 and 1"),
                        hint,
                    );
                }
                v.clamp(0.0, 1.0)
            }
        };
        let (mut tracecontext, mut xray) = (raw.propagate.is_none(), false);
        for p in raw.propagate.iter().flatten() {
            match p.get_ref().as_str() {
                "tracecontext" => tracecontext = true,
                "xray" => xray = true,
                other => self.err_at(
                    p,
                    format!("unknown propagator `{other}`"),
                    Some("use `tracecontext` and/or `xray`".into()),
                ),
            }
        }
        if let Some(e) = &raw.endpoint {
            let grpc_path = protocol == OtlpProtocol::Grpc
                && e.get_ref()
                    .parse::<http::Uri>()
                    .is_ok_and(|u| u.path() != "/");
            if grpc_path {
                let hint = Some("a gRPC endpoint is `http(s)://HOST:PORT`".into());
                self.err_at(e, "a gRPC OTLP endpoint has no path", hint);
            }
        }
        let mut headers = Vec::new();
        for (name, value) in raw.headers.iter().flatten() {
            let n = HeaderName::from_bytes(name.get_ref().as_bytes());
            let v = HeaderValue::from_str(value.get_ref());
            match (n, v) {
                (Ok(n), Ok(v)) if v.to_str().is_ok() => headers.push((n, v)),
                (Ok(_), Ok(_)) => self.err_at(
                    value,
                    "a collector header value must be visible ASCII",
                    None,
                ),
                (Err(_), _) => self.err_at(
                    name,
                    format!("`{}` is not a header name", name.get_ref()),
                    None,
                ),
                (_, Err(_)) => self.err_at(value, "not a valid header value", None),
            }
        }
        Some(Otlp {
            endpoint: endpoint?,
            protocol,
            sample_ratio,
            trust_incoming: raw.trust_incoming.unwrap_or(false),
            tracecontext,
            xray,
            headers,
            logs: raw.logs.is_some_and(Spanned::into_inner),
        })
    }

    /// A collector's base URL: `http://` or `https://`, a host, no query.
    fn endpoint(&mut self, e: &Spanned<String>) -> Option<http::Uri> {
        let hint = Some(
            "e.g. `http://127.0.0.1:4318` (http/protobuf) or `http://127.0.0.1:4317` (grpc)".into(),
        );
        let Ok(uri) = e.get_ref().parse::<http::Uri>() else {
            self.err_at(e, format!("bad OTLP endpoint `{}`", e.get_ref()), hint);
            return None;
        };
        let scheme_ok = matches!(uri.scheme_str(), Some("http") | Some("https"));
        let text = e.get_ref();
        if !scheme_ok
            || uri.host().is_none_or(str::is_empty)
            || uri.query().is_some()
            || text.contains('#')
        {
            self.err_at(
                e,
                format!("OTLP endpoint `{text}` is not an http(s) URL"),
                hint,
            );
            return None;
        }
        if uri.authority().is_some_and(|a| a.as_str().contains('@')) {
            // Never sent (and it would be logged with the address): credentials go in `headers`.
            let hint = Some("put credentials in `headers`, e.g. `headers = { authorization = \"${env:OTLP_AUTH}\" }`".into());
            self.err_at(
                e,
                "an OTLP endpoint cannot carry a user name or password",
                hint,
            );
            return None;
        }
        // From the text: `http` takes `:99999` and gives no port for it.
        let port = uri
            .authority()
            .map(|a| a.as_str())
            .filter(|a| !a.ends_with(']'))
            .and_then(|a| a.rsplit_once(':'))
            .map(|(_, p)| p.parse::<u16>());
        if port.is_some_and(|p| p.is_err() || p == Ok(0)) {
            self.err_at(e, format!("OTLP endpoint `{text}` has no valid port"), hint);
            return None;
        }
        if uri.path().trim_end_matches('/').ends_with("/v1/traces") {
            let hint = Some("give the collector's base URL: strangle adds `/v1/traces`".into());
            self.err_at(
                e,
                "an OTLP endpoint is the base URL, without `/v1/traces`",
                hint,
            );
            return None;
        }
        Some(uri)
    }
}

/// CloudWatch's rule for a namespace (PutMetricData would refuse the metrics otherwise).
fn cloudwatch_namespace(n: &str) -> Result<(), &'static str> {
    let allowed = |c: char| c.is_ascii_alphanumeric() || ".-_/#: ".contains(c);
    if n.trim().is_empty() {
        Err("is empty")
    } else if n.len() > 255 {
        Err("is longer than 255 characters")
    } else if !n.chars().all(allowed) {
        Err("has a character CloudWatch refuses")
    } else if n.starts_with("AWS/") {
        Err("is reserved for AWS services")
    } else {
        Ok(())
    }
}

/// `[telemetry]`: what is traced and exported, and what never appears in a log line, a span
/// or an exported record.
#[derive(Debug, Clone, PartialEq)]
pub struct Telemetry {
    /// `service.name` of the resource strangle reports as.
    pub service_name: String,
    /// Headers whose values are redacted wherever they would appear (on top of the built-in
    /// `authorization`, cookies, `proxy-authorization`, `x-api-key` and token headers).
    pub redact_headers: Vec<HeaderName>,
    /// Query parameters whose values are redacted.
    pub redact_query: Vec<String>,
    /// Trace export; `None`: no spans, and a client's trace headers pass through untouched.
    pub otlp: Option<Otlp>,
    /// CloudWatch Embedded Metric Format lines; `None`: none written.
    pub emf: Option<Emf>,
}

/// `[telemetry.emf]`: per route and side, one CloudWatch EMF line per interval.
#[derive(Debug, Clone, PartialEq)]
pub struct Emf {
    /// `Stdout` or `File` (never `Off`: leaving the table out turns EMF off).
    pub output: AccessLog,
    pub namespace: String,
    pub interval: Duration,
}

impl Default for Telemetry {
    fn default() -> Telemetry {
        Telemetry {
            service_name: "strangle".into(),
            redact_headers: Vec::new(),
            redact_query: Vec::new(),
            otlp: None,
            emf: None,
        }
    }
}

/// How spans are sent to a collector.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OtlpProtocol {
    /// Protobuf posted to `{endpoint}/v1/traces`.
    HttpProtobuf,
    Grpc,
}

/// `[telemetry.otlp]`.
#[derive(Clone, PartialEq)]
pub struct Otlp {
    /// The collector's base URL (`http://` or `https://`).
    pub endpoint: http::Uri,
    pub protocol: OtlpProtocol,
    /// Share of new traces sampled, 0 to 1 (parent-based: a continued trace keeps its flag).
    pub sample_ratio: f64,
    /// Continue a client's `traceparent`; otherwise it only becomes a link.
    pub trust_incoming: bool,
    /// Propagate W3C trace context (`traceparent`, `tracestate`) to upstreams.
    pub tracecontext: bool,
    /// Propagate X-Ray's `X-Amzn-Trace-Id` to upstreams and on Lambda Invoke calls.
    pub xray: bool,
    /// Headers sent to the collector (an API key for a hosted one).
    pub headers: Vec<(HeaderName, http::HeaderValue)>,
    /// Export access-log records as OTLP logs too.
    pub logs: bool,
}

impl fmt::Debug for Otlp {
    // The collector's headers are usually credentials.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Otlp")
            .field("endpoint", &self.endpoint)
            .field("protocol", &self.protocol)
            .field("sample_ratio", &self.sample_ratio)
            .field("trust_incoming", &self.trust_incoming)
            .field("tracecontext", &self.tracecontext)
            .field("xray", &self.xray)
            .field(
                "headers",
                &self.headers.iter().map(|(k, _)| k).collect::<Vec<_>>(),
            )
            .field("logs", &self.logs)
            .finish()
    }
}
