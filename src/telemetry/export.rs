//! The OTLP exporters: background work (`run`, started by `services::SpanExport` and
//! `services::LogExport`) that takes finished requests' records off their queue (`queue`),
//! batches them (up to `MAX_BATCH`, or what arrived within `FLUSH_EVERY`) and hands each batch
//! to a `Sink`: spans (`Spans`, turned into the SDK's `SpanData`) or access-log records
//! (`logs::Logs`), sent with `opentelemetry-otlp` (http/protobuf through strangle's own rustls
//! client, or gRPC through tonic), all off the request path. The collector's address and
//! headers are read from the live config for every batch, so a reload that changes them takes
//! effect with the next batch. A batch the collector refuses or cannot take in time is dropped
//! and counted; nothing is retried (the queue behind it keeps moving). On shutdown what is
//! queued is sent once more, within `FLUSH_TIMEOUT`.

use std::borrow::Cow;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use opentelemetry::trace::{
    SpanContext, SpanId, SpanKind, Status, TraceFlags, TraceId, TraceState,
};
use opentelemetry::{InstrumentationScope, KeyValue};
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::trace::{SpanData, SpanEvents, SpanExporter, SpanLinks};
use opentelemetry_sdk::Resource;
use pingora::server::ShutdownWatch;

use super::context::RequestTrace;
use super::queue::{ExportQueue, Exported};
use super::spans::{CallKind, SpanRecord};
use crate::config::Otlp;

/// An OTLP exporter (`opentelemetry_otlp::SpanExporter` or `LogExporter`) for `otlp`:
/// http/protobuf posted to `{endpoint}$path` through strangle's own client, or gRPC. A macro
/// because the two builders share their methods but no trait.
macro_rules! otlp_exporter {
    ($exporter:ty, $path:literal, $otlp:expr) => {{
        use opentelemetry_otlp::{tonic_types, WithExportConfig, WithHttpConfig, WithTonicConfig};
        use $crate::config::{Otlp, OtlpProtocol};
        use $crate::telemetry::export::{Client, EXPORT_TIMEOUT};
        let otlp: &Otlp = $otlp;
        let base = otlp.endpoint.to_string();
        let base = base.trim_end_matches('/');
        match otlp.protocol {
            OtlpProtocol::HttpProtobuf => {
                let headers = otlp
                    .headers
                    .iter()
                    .filter_map(|(k, v)| Some((k.to_string(), v.to_str().ok()?.to_string())))
                    .collect();
                <$exporter>::builder()
                    .with_http()
                    .with_http_client(Client::new()?)
                    .with_protocol(opentelemetry_otlp::Protocol::HttpBinary)
                    .with_endpoint(format!("{base}{}", $path))
                    .with_timeout(EXPORT_TIMEOUT)
                    .with_headers(headers)
                    .build()
            }
            OtlpProtocol::Grpc => {
                let headers: http::HeaderMap = otlp.headers.iter().cloned().collect();
                let metadata = tonic_types::metadata::MetadataMap::from_headers(headers);
                let mut builder = <$exporter>::builder()
                    .with_tonic()
                    .with_endpoint(base.to_string())
                    .with_timeout(EXPORT_TIMEOUT)
                    .with_metadata(metadata);
                if otlp.endpoint.scheme_str() == Some("https") {
                    builder = builder.with_tls_config(
                        tonic_types::transport::ClientTlsConfig::new().with_native_roots(),
                    );
                }
                builder.build()
            }
        }
        .map_err(|e| e.to_string())
    }};
}

pub mod logs;

/// Records sent in one request to the collector, at most.
const MAX_BATCH: usize = 512;
/// How long a record waits for its batch to fill.
const FLUSH_EVERY: Duration = Duration::from_secs(1);
/// One export, at most.
pub(crate) const EXPORT_TIMEOUT: Duration = Duration::from_secs(10);
/// The last export at shutdown, at most (the exit waits this long and a moment for it).
pub const FLUSH_TIMEOUT: Duration = Duration::from_secs(5);
/// At most one warning about failed exports per this long, per exporter.
const WARN_EVERY: Duration = Duration::from_secs(10);

/// The collector to send to and the service name to report, as the live config says now
/// (`None`: this export is off).
pub type Target = Option<(Otlp, String)>;

/// What an exporter does with a batch.
#[async_trait]
pub trait Sink<T>: Send {
    /// Sends `batch`, counting in `queue` what was exported or dropped.
    async fn send(&mut self, queue: &ExportQueue<T>, batch: Vec<T>, within: Duration);

    /// Before the last batch, at exit: its failure is always said (the warnings' limit is for
    /// a collector that stays down while the proxy runs).
    fn last_batch(&mut self);
}

/// Runs an exporter until `shutdown`; then, while requests are still being served (`idle`
/// says when none are, for at most `grace`), it keeps collecting their records, and sends what
/// is queued once more.
pub async fn run<T: Exported>(
    queue: &ExportQueue<T>,
    sink: &mut impl Sink<T>,
    idle: impl Fn() -> bool,
    grace: Duration,
    mut shutdown: ShutdownWatch,
) {
    let Some(mut rx) = queue.take_receiver() else {
        return;
    };
    let mut batch: Vec<T> = Vec::new();
    let mut due = None;
    loop {
        tokio::select! {
            r = rx.recv() => match r {
                Some(r) => {
                    queue.taken(&r);
                    batch.push(r);
                    due.get_or_insert_with(|| tokio::time::Instant::now() + FLUSH_EVERY);
                }
                None => break,
            },
            _ = tokio::time::sleep_until(due.unwrap_or_else(tokio::time::Instant::now)),
                if due.is_some() => {
                sink.send(queue, std::mem::take(&mut batch), EXPORT_TIMEOUT).await;
                due = None;
            }
            _ = shutdown.changed() => break,
        }
        if batch.len() >= MAX_BATCH {
            sink.send(queue, std::mem::take(&mut batch), EXPORT_TIMEOUT)
                .await;
            due = None;
        }
    }
    // The requests still being served end within the grace period; their records come last.
    let until = tokio::time::Instant::now() + grace;
    while !idle() && tokio::time::Instant::now() < until {
        tokio::time::sleep(Duration::from_millis(20)).await;
        while let Ok(r) = rx.try_recv() {
            queue.taken(&r);
            batch.push(r);
        }
        if batch.len() >= MAX_BATCH {
            sink.send(queue, std::mem::take(&mut batch), FLUSH_TIMEOUT)
                .await;
        }
    }
    while let Ok(r) = rx.try_recv() {
        queue.taken(&r);
        batch.push(r);
    }
    if !batch.is_empty() {
        sink.last_batch();
        sink.send(queue, batch, FLUSH_TIMEOUT).await;
    }
    queue.mark_flushed();
}

/// An exporter built for one `[telemetry.otlp]` and service name.
struct Built<E> {
    otlp: Otlp,
    service: String,
    exporter: E,
}

/// The exporter for `target`: the one built before while the config is the same, else a new
/// one. `None` when this export is off (a reload turned it off after the batch was queued) or
/// the exporter cannot be built (warned about): the batch's `n` items are then counted dropped.
fn current<'a, T, E>(
    built: &'a mut Option<Built<E>>,
    target: Target,
    build: impl FnOnce(&Otlp, &str) -> Result<E, String>,
    queue: &ExportQueue<T>,
    n: u64,
) -> Option<&'a Built<E>> {
    let Some((otlp, service)) = target else {
        queue.dropped.fetch_add(n, Ordering::Relaxed);
        return None;
    };
    let same = built
        .as_ref()
        .is_some_and(|b| b.otlp == otlp && b.service == service);
    if !same {
        *built = match build(&otlp, &service) {
            Ok(exporter) => Some(Built {
                otlp,
                service,
                exporter,
            }),
            Err(e) => {
                tracing::warn!("cannot build the OTLP exporter: {e}");
                None
            }
        };
    }
    if built.is_none() {
        queue.dropped.fetch_add(n, Ordering::Relaxed);
    }
    built.as_ref()
}

/// Failed exports, reported at most once per `WARN_EVERY` with what was dropped meanwhile (a
/// collector that is down would otherwise write a warning a second).
#[derive(Default)]
struct Warnings {
    last: Option<Instant>,
    dropped: u64,
}

impl Warnings {
    /// Counts the outcome of exporting `n` items (`what`: "spans", "log records") in `queue`.
    fn count<T>(
        &mut self,
        queue: &ExportQueue<T>,
        n: u64,
        what: &str,
        endpoint: &http::Uri,
        outcome: Result<OTelSdkResult, tokio::time::error::Elapsed>,
        within: Duration,
    ) {
        let why = match outcome {
            Ok(Ok(())) => {
                queue.exported.fetch_add(n, Ordering::Relaxed);
                return;
            }
            Ok(Err(e)) => format!("the collector at {endpoint} refused them: {e}"),
            Err(_) => format!("the collector at {endpoint} did not answer within {within:?}"),
        };
        queue.dropped.fetch_add(n, Ordering::Relaxed);
        self.dropped += n;
        if self.last.is_some_and(|t| t.elapsed() < WARN_EVERY) {
            return;
        }
        let dropped = std::mem::take(&mut self.dropped);
        tracing::warn!(
            dropped,
            "{dropped} {what} dropped: {why} (at most one such warning every {WARN_EVERY:?})"
        );
        self.last = Some(Instant::now());
    }
}

/// The span sink: the exporter for the config's `[telemetry.otlp]`.
pub struct Spans<F> {
    /// What the live config says now.
    pub target: F,
    built: Option<Built<opentelemetry_otlp::SpanExporter>>,
    warnings: Warnings,
    scope: InstrumentationScope,
}

impl<F: Fn() -> Target + Send> Spans<F> {
    pub fn new(target: F) -> Spans<F> {
        Spans {
            target,
            built: None,
            warnings: Warnings::default(),
            scope: scope(),
        }
    }
}

#[async_trait]
impl<F: Fn() -> Target + Send> Sink<SpanRecord> for Spans<F> {
    async fn send(
        &mut self,
        queue: &ExportQueue<SpanRecord>,
        batch: Vec<SpanRecord>,
        within: Duration,
    ) {
        let spans: Vec<SpanData> = batch
            .iter()
            .flat_map(|r| span_data(r, &self.scope))
            .collect();
        let n = spans.len() as u64;
        let Some(b) = current(&mut self.built, (self.target)(), build_spans, queue, n) else {
            return;
        };
        let outcome = tokio::time::timeout(within, b.exporter.export(spans)).await;
        self.warnings
            .count(queue, n, "spans", &b.otlp.endpoint, outcome, within);
    }

    fn last_batch(&mut self) {
        self.warnings.last = None;
    }
}

/// The span exporter for `otlp`, reporting as `service`.
fn build_spans(otlp: &Otlp, service: &str) -> Result<opentelemetry_otlp::SpanExporter, String> {
    let mut exporter = otlp_exporter!(opentelemetry_otlp::SpanExporter, "/v1/traces", otlp)?;
    exporter.set_resource(&resource(service));
    Ok(exporter)
}

fn resource(service: &str) -> Resource {
    let host = nix::unistd::gethostname()
        .ok()
        .and_then(|h| h.into_string().ok())
        .unwrap_or_default();
    Resource::builder_empty()
        .with_service_name(service.to_string())
        .with_attributes([
            KeyValue::new("service.version", env!("CARGO_PKG_VERSION")),
            KeyValue::new("host.name", host),
        ])
        .build()
}

fn scope() -> InstrumentationScope {
    InstrumentationScope::builder("strangle")
        .with_version(env!("CARGO_PKG_VERSION"))
        .build()
}

fn context(trace: &RequestTrace, span: [u8; 8], remote: bool) -> SpanContext {
    let flags = if trace.server.sampled {
        TraceFlags::SAMPLED
    } else {
        TraceFlags::default()
    };
    SpanContext::new(
        TraceId::from_bytes(trace.server.trace_id),
        SpanId::from_bytes(span),
        flags,
        remote,
        TraceState::default(),
    )
}

/// A request's spans: the server span, and the client span of its upstream call.
fn span_data(r: &SpanRecord, scope: &InstrumentationScope) -> Vec<SpanData> {
    let t = &r.trace;
    let failed = r.status >= 500 || r.error.is_some();
    let mut attributes = vec![
        KeyValue::new("http.request.method", r.method.to_string()),
        KeyValue::new("url.path", r.path.clone()),
        KeyValue::new("http.response.status_code", i64::from(r.status)),
    ];
    if let Some(query) = &r.query {
        attributes.push(KeyValue::new("url.query", query.clone()));
    }
    if let Some(route) = &r.route_path {
        attributes.push(KeyValue::new("http.route", route.clone()));
    }
    if let Some(route) = &r.route {
        attributes.push(KeyValue::new("strangle.route", route.clone()));
    }
    if let Some(side) = r.side {
        attributes.push(KeyValue::new("strangle.side", side));
    }
    if let Some(call) = &r.upstream {
        attributes.push(KeyValue::new("strangle.upstream", call.name.clone()));
    }
    if failed {
        let kind = r.error.clone().unwrap_or_else(|| r.status.to_string());
        attributes.push(KeyValue::new("error.type", kind));
    }
    let status = if failed {
        Status::error(r.error.clone().unwrap_or_default())
    } else {
        Status::Unset
    };
    let links = r
        .trace
        .link
        .map(|l| {
            let flags = if l.sampled {
                TraceFlags::SAMPLED
            } else {
                TraceFlags::default()
            };
            let ctx = SpanContext::new(
                TraceId::from_bytes(l.trace_id),
                SpanId::from_bytes(l.span_id),
                flags,
                true,
                TraceState::default(),
            );
            opentelemetry::trace::Link::with_context(ctx)
        })
        .into_iter()
        .collect();
    // `SpanLinks` cannot be built with a literal (it is `non_exhaustive`), only filled.
    let mut span_links = SpanLinks::default();
    span_links.links = links;
    let mut name = match &r.route_path {
        Some(route) => format!("{} {route}", r.method),
        None => r.method.to_string(),
    };
    // A shadow copy's span sits under the request it copies, in this process.
    if let Some(outcome) = r.shadow {
        name = format!("shadow {name}");
        attributes.push(KeyValue::new("strangle.shadow", outcome));
    }
    let server = SpanData {
        span_context: context(t, t.server.span_id, false),
        parent_span_id: t.parent.map_or(SpanId::INVALID, SpanId::from_bytes),
        parent_span_is_remote: t.parent.is_some() && r.shadow.is_none(),
        span_kind: if r.shadow.is_some() {
            SpanKind::Internal
        } else {
            SpanKind::Server
        },
        name: Cow::Owned(name),
        start_time: r.start,
        end_time: r.end,
        attributes,
        dropped_attributes_count: 0,
        events: SpanEvents::default(),
        links: span_links,
        status: status.clone(),
        instrumentation_scope: scope.clone(),
    };
    let Some(call) = r.upstream.as_ref().filter(|c| c.called) else {
        return vec![server];
    };
    let (name, attributes) = match &call.kind {
        CallKind::Lambda { function, region } => (
            Cow::Owned(function.clone()),
            vec![
                KeyValue::new("faas.invoked_name", function.clone()),
                KeyValue::new("faas.invoked_provider", "aws"),
                KeyValue::new("faas.invoked_region", region.clone()),
                KeyValue::new("strangle.upstream", call.name.clone()),
            ],
        ),
        // A signed endpoint is an HTTP call as far as the span says.
        CallKind::Signed | CallKind::Http => (
            Cow::Owned(r.method.to_string()),
            vec![
                KeyValue::new("http.request.method", r.method.to_string()),
                KeyValue::new("http.response.status_code", i64::from(r.status)),
                KeyValue::new("strangle.upstream", call.name.clone()),
            ],
        ),
    };
    let client = SpanData {
        span_context: context(t, t.upstream_span, false),
        parent_span_id: SpanId::from_bytes(t.server.span_id),
        parent_span_is_remote: false,
        span_kind: SpanKind::Client,
        name,
        start_time: call.start,
        end_time: call.end,
        attributes,
        dropped_attributes_count: 0,
        events: SpanEvents::default(),
        links: SpanLinks::default(),
        status,
        instrumentation_scope: scope.clone(),
    };
    vec![server, client]
}

/// strangle's HTTP client for the collector: hyper with rustls on ring (the one crypto stack),
/// pooled, answers read up to 4 MB.
#[derive(Debug, Clone)]
pub(crate) struct Client(crate::client::HttpsClient);

impl Client {
    fn new() -> Result<Client, String> {
        crate::client::build().map(Client)
    }
}

#[async_trait]
impl opentelemetry_http::HttpClient for Client {
    async fn send_bytes(
        &self,
        request: http::Request<Bytes>,
    ) -> Result<http::Response<Bytes>, opentelemetry_http::HttpError> {
        let (parts, body) = request.into_parts();
        let request = http::Request::from_parts(parts, Full::new(body));
        let response = tokio::time::timeout(EXPORT_TIMEOUT, self.0.request(request))
            .await
            .map_err(|_| "the collector did not answer in time")??;
        let (parts, body) = response.into_parts();
        let body = http_body_util::Limited::new(body, 4 * 1024 * 1024)
            .collect()
            .await?
            .to_bytes();
        Ok(http::Response::from_parts(parts, body))
    }
}
