//! The span exporter: background work (`run`, started by `services::SpanExport`) that takes
//! finished requests' spans off the queue
//! (`spans`), batches them (up to `MAX_BATCH`, or what arrived within `FLUSH_EVERY`), turns them
//! into the SDK's `SpanData` and sends them with `opentelemetry-otlp` (http/protobuf through
//! strangle's own rustls client, or gRPC through tonic), all off the request path. The
//! collector's address and headers are read from the live config for every batch, so a reload
//! that changes them takes effect with the next batch. A batch the collector refuses or cannot
//! take in time is dropped and counted; nothing is retried (the queue behind it keeps moving).
//! On shutdown what is queued is sent once more, within `FLUSH_TIMEOUT`.

use std::borrow::Cow;
use std::sync::atomic::Ordering;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use opentelemetry::trace::{
    SpanContext, SpanId, SpanKind, Status, TraceFlags, TraceId, TraceState,
};
use opentelemetry::{InstrumentationScope, KeyValue};
use opentelemetry_otlp::{tonic_types, WithExportConfig, WithHttpConfig, WithTonicConfig};
use opentelemetry_sdk::trace::{SpanData, SpanEvents, SpanExporter, SpanLinks};
use opentelemetry_sdk::Resource;
use pingora::server::ShutdownWatch;

use super::context::RequestTrace;
use super::spans::{CallKind, SpanQueue, SpanRecord};
use crate::config::{Otlp, OtlpProtocol};

/// Spans sent in one request to the collector, at most.
const MAX_BATCH: usize = 512;
/// How long a span waits for its batch to fill.
const FLUSH_EVERY: Duration = Duration::from_secs(1);
/// One export, at most.
const EXPORT_TIMEOUT: Duration = Duration::from_secs(10);
/// The last export at shutdown, at most (the exit waits this long and a moment for it).
pub const FLUSH_TIMEOUT: Duration = Duration::from_secs(5);

/// An exporter built for one `[telemetry.otlp]` and service name.
struct Built {
    otlp: Otlp,
    service: String,
    exporter: opentelemetry_otlp::SpanExporter,
}

/// The collector to send to and the service name to report, as the live config says now
/// (`None`: tracing is off).
pub type Target = Option<(Otlp, String)>;

/// Runs the exporter until `shutdown`; then, while requests are still being served (`idle`
/// says when none are, for at most `grace`), it keeps collecting their spans, and sends what
/// is queued once more. `target` is asked for every batch.
pub async fn run(
    queue: &SpanQueue,
    target: impl Fn() -> Target,
    idle: impl Fn() -> bool,
    grace: Duration,
    mut shutdown: ShutdownWatch,
) {
    let Some(mut rx) = queue.take_receiver() else {
        return;
    };
    let mut built: Option<Built> = None;
    let mut batch: Vec<SpanRecord> = Vec::new();
    let mut due = None;
    loop {
        tokio::select! {
            r = rx.recv() => match r {
                Some(r) => {
                    batch.push(r);
                    due.get_or_insert_with(|| tokio::time::Instant::now() + FLUSH_EVERY);
                }
                None => break,
            },
            _ = tokio::time::sleep_until(due.unwrap_or_else(tokio::time::Instant::now)),
                if due.is_some() => {
                flush(queue, target(), &mut built, &mut batch, EXPORT_TIMEOUT).await;
                due = None;
            }
            _ = shutdown.changed() => break,
        }
        if batch.len() >= MAX_BATCH {
            flush(queue, target(), &mut built, &mut batch, EXPORT_TIMEOUT).await;
            due = None;
        }
    }
    // The requests still being served end within the grace period; their spans come last.
    let until = tokio::time::Instant::now() + grace;
    while !idle() && tokio::time::Instant::now() < until {
        tokio::time::sleep(Duration::from_millis(20)).await;
        while let Ok(r) = rx.try_recv() {
            batch.push(r);
        }
        if batch.len() >= MAX_BATCH {
            flush(queue, target(), &mut built, &mut batch, FLUSH_TIMEOUT).await;
        }
    }
    while let Ok(r) = rx.try_recv() {
        batch.push(r);
    }
    flush(queue, target(), &mut built, &mut batch, FLUSH_TIMEOUT).await;
    queue.mark_flushed();
}

async fn flush(
    queue: &SpanQueue,
    target: Target,
    built: &mut Option<Built>,
    batch: &mut Vec<SpanRecord>,
    within: Duration,
) {
    if batch.is_empty() {
        return;
    }
    let records = std::mem::take(batch);
    let spans: Vec<SpanData> = records.iter().flat_map(span_data).collect();
    let n = spans.len() as u64;
    let Some((otlp, service)) = target else {
        // Tracing was turned off by a reload after these were queued.
        queue.dropped.fetch_add(n, Ordering::Relaxed);
        return;
    };
    let current = built
        .as_ref()
        .is_some_and(|b| b.otlp == otlp && b.service == service);
    if !current {
        *built = match build(&otlp, &service) {
            Ok(exporter) => Some(Built {
                otlp: otlp.clone(),
                service,
                exporter,
            }),
            Err(e) => {
                tracing::warn!("cannot build the OTLP exporter: {e}");
                None
            }
        };
    }
    let Some(b) = built.as_ref() else {
        queue.dropped.fetch_add(n, Ordering::Relaxed);
        return;
    };
    match tokio::time::timeout(within, b.exporter.export(spans)).await {
        Ok(Ok(())) => {
            queue.exported.fetch_add(n, Ordering::Relaxed);
        }
        Ok(Err(e)) => {
            queue.dropped.fetch_add(n, Ordering::Relaxed);
            tracing::warn!(
                "{n} spans dropped: the collector at {} refused them: {e}",
                otlp.endpoint
            );
        }
        Err(_) => {
            queue.dropped.fetch_add(n, Ordering::Relaxed);
            tracing::warn!(
                "{n} spans dropped: the collector at {} did not answer within {within:?}",
                otlp.endpoint
            );
        }
    }
}

/// The OTLP exporter for `otlp`, reporting as `service`.
fn build(otlp: &Otlp, service: &str) -> Result<opentelemetry_otlp::SpanExporter, String> {
    let base = otlp.endpoint.to_string();
    let base = base.trim_end_matches('/');
    let mut exporter = match otlp.protocol {
        OtlpProtocol::HttpProtobuf => {
            let headers = otlp
                .headers
                .iter()
                .filter_map(|(k, v)| Some((k.to_string(), v.to_str().ok()?.to_string())))
                .collect();
            opentelemetry_otlp::SpanExporter::builder()
                .with_http()
                .with_http_client(Client::new()?)
                .with_protocol(opentelemetry_otlp::Protocol::HttpBinary)
                .with_endpoint(format!("{base}/v1/traces"))
                .with_timeout(EXPORT_TIMEOUT)
                .with_headers(headers)
                .build()
        }
        OtlpProtocol::Grpc => {
            let headers: http::HeaderMap = otlp.headers.iter().cloned().collect();
            let metadata = tonic_types::metadata::MetadataMap::from_headers(headers);
            let mut builder = opentelemetry_otlp::SpanExporter::builder()
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
    .map_err(|e| e.to_string())?;
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
fn span_data(r: &SpanRecord) -> Vec<SpanData> {
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
    let name = match &r.route_path {
        Some(route) => format!("{} {route}", r.method),
        None => r.method.to_string(),
    };
    let server = SpanData {
        span_context: context(t, t.server.span_id, false),
        parent_span_id: t.parent.map_or(SpanId::INVALID, SpanId::from_bytes),
        parent_span_is_remote: t.parent.is_some(),
        span_kind: SpanKind::Server,
        name: Cow::Owned(name),
        start_time: r.start,
        end_time: r.end,
        attributes,
        dropped_attributes_count: 0,
        events: SpanEvents::default(),
        links: span_links,
        status: status.clone(),
        instrumentation_scope: scope(),
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
        instrumentation_scope: scope(),
    };
    vec![server, client]
}

/// strangle's HTTP client for the collector: hyper with rustls on ring (the one crypto stack),
/// pooled, answers read up to 4 MB.
#[derive(Debug, Clone)]
struct Client(crate::client::HttpsClient);

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
