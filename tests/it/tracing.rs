//! Traces, against a real OTLP receiver (tests/fixtures/otlp_receiver.py: the OpenTelemetry
//! protocol's own messages, over http/protobuf and gRPC): one trace from the client through
//! strangle to the backend, the client's context continued only when trusted, requests
//! unaffected when the collector is down, and spans flushed on a graceful shutdown.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::Value;

use crate::support::*;

/// The OTLP receiver, stopped when dropped.
struct Receiver {
    child: Child,
    http: u16,
    grpc: u16,
}

impl Receiver {
    fn start() -> Receiver {
        let (http, grpc) = (free_port(), free_port());
        let script = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/fixtures/otlp_receiver.py"
        );
        let mut child = Command::new("python3")
            .args([script, &http.to_string(), &grpc.to_string()])
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let mut line = String::new();
        std::io::BufRead::read_line(
            &mut std::io::BufReader::new(child.stdout.take().unwrap()),
            &mut line,
        )
        .unwrap();
        assert_eq!(
            line.trim(),
            "ready",
            "the OTLP receiver did not start (opentelemetry-proto and grpcio installed? run `make test`)"
        );
        Receiver { child, http, grpc }
    }

    fn spans(&self) -> Vec<Value> {
        let r = get(self.http, "/spans", &[]);
        serde_json::from_str::<Vec<Value>>(&r.text()).unwrap()
    }

    /// Waits until `n` spans have arrived.
    fn wait_for(&self, n: usize) -> Vec<Value> {
        wait_for(Duration::from_secs(10), &format!("{n} spans"), || {
            let spans = self.spans();
            (spans.len() >= n).then_some(spans)
        })
    }

    fn headers(&self) -> Vec<Value> {
        serde_json::from_str(&get(self.http, "/headers", &[]).text()).unwrap()
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

const SERVER: i64 = 2;
const CLIENT: i64 = 3;

fn config(backend: &Backend, otlp: &str) -> String {
    Config::new()
        .default("monolith")
        .upstream("monolith", &backend.addr())
        .route("bookings", "/bookings", |r| r.legacy("monolith"))
        .section("[telemetry.otlp]", otlp)
        .build()
}

fn kind(spans: &[Value], k: i64) -> Vec<&Value> {
    spans.iter().filter(|s| s["kind"] == k).collect()
}

/// The `traceparent` the backend received, split: (trace id, parent span id, flags).
fn received(backend: &Backend) -> (String, String, String) {
    let seen = backend.seen().pop().unwrap();
    let tp = seen.header("traceparent").expect("a traceparent upstream");
    let parts: Vec<&str> = tp.split('-').collect();
    assert_eq!((parts.len(), parts[0]), (4, "00"), "{tp}");
    (parts[1].into(), parts[2].into(), parts[3].into())
}

#[test]
fn a_traced_request_is_one_trace_from_strangle_to_the_backend() {
    let receiver = Receiver::start();
    let backend = Backend::start("monolith");
    let otlp = format!(
        "endpoint = \"http://127.0.0.1:{}\"\nsample-ratio = 1.0",
        receiver.http
    );
    let proxy = Proxy::start(&config(&backend, &otlp));
    let r = proxy.client().get("/bookings/./7?secret=1", &[]).unwrap();
    assert_eq!(r.status, 200);
    let (trace_id, parent, flags) = received(&backend);
    assert_eq!(flags, "01");

    let spans = receiver.wait_for(2);
    assert_eq!(spans.len(), 2, "{spans:#?}");
    let (server, client) = (kind(&spans, SERVER)[0], kind(&spans, CLIENT)[0]);
    for s in [server, client] {
        assert_eq!(s["trace_id"], trace_id.as_str());
        assert_eq!(s["resource"]["service.name"], "strangle");
        assert_eq!(s["scope"], "strangle");
        assert_eq!(s["flags"].as_i64().unwrap() & 0xff, 1, "sampled");
    }
    // The backend's parent is the client span, whose parent is the server span, a root.
    assert_eq!(client["span_id"], parent.as_str());
    assert_eq!(client["parent_span_id"], server["span_id"]);
    assert_eq!(server["parent_span_id"], "");
    let a = &server["attributes"];
    assert_eq!(server["name"], "GET /bookings");
    assert_eq!(a["http.request.method"], "GET");
    assert_eq!(
        a["url.path"], "/bookings/7",
        "the canonical path, never the query"
    );
    assert_eq!(a["http.route"], "/bookings");
    assert_eq!(a["http.response.status_code"], 200);
    assert_eq!(a["strangle.route"], "bookings");
    assert_eq!(a["strangle.side"], "legacy");
    assert_eq!(a["strangle.upstream"], "monolith");
    assert_eq!(client["attributes"]["strangle.upstream"], "monolith");
    assert!(!serde_json::to_string(&spans).unwrap().contains("secret"));
    // Each span ends after it starts; the call sits inside the request.
    let n = |s: &Value, k: &str| s[k].as_u64().unwrap();
    assert!(n(server, "start") <= n(client, "start") && n(client, "end") <= n(server, "end"));
    assert_eq!(proxy.metric("strangle_spans_exported_total"), 2.0);
}

#[test]
fn a_clients_trace_context_is_continued_only_when_trusted() {
    const CLIENTS: &str = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
    let receiver = Receiver::start();
    let backend = Backend::start("monolith");
    let endpoint = format!("endpoint = \"http://127.0.0.1:{}\"", receiver.http);
    let traced = |proxy: &Proxy| {
        let headers = [("traceparent", CLIENTS), ("tracestate", "vendor=client")];
        assert_eq!(
            proxy.client().get("/bookings/1", &headers).unwrap().status,
            200
        );
        let seen = backend.seen().pop().unwrap();
        (
            received(&backend),
            seen.header("tracestate").map(str::to_string),
        )
    };

    // Not trusted, nothing sampled: a new trace, and the client's sampled flag is ignored.
    let proxy = Proxy::start(&config(&backend, &format!("{endpoint}\nsample-ratio = 0")));
    let ((trace_id, _, flags), state) = traced(&proxy);
    assert_ne!(trace_id, "0af7651916cd43dd8448eb211c80319c");
    assert_eq!(flags, "00", "a client cannot force sampling");
    assert_eq!(state, None, "its tracestate does not pass either");
    drop(proxy);

    // Not trusted, everything sampled: the client's context is a link, not the parent.
    let proxy = Proxy::start(&config(&backend, &format!("{endpoint}\nsample-ratio = 1")));
    let ((trace_id, _, _), _) = traced(&proxy);
    let spans = receiver.wait_for(2);
    let server = kind(&spans, SERVER)[0];
    assert_eq!(server["trace_id"], trace_id.as_str());
    assert_eq!(server["parent_span_id"], "");
    assert_eq!(
        server["links"][0]["trace_id"],
        "0af7651916cd43dd8448eb211c80319c"
    );
    assert_eq!(server["links"][0]["span_id"], "b7ad6b7169203331");
    drop(proxy);

    // Trusted, nothing sampled by ratio: the client's trace and decision carry on.
    let proxy = Proxy::start(&config(
        &backend,
        &format!("{endpoint}\nsample-ratio = 0\ntrust-incoming = true"),
    ));
    let ((trace_id, _, flags), state) = traced(&proxy);
    assert_eq!(trace_id, "0af7651916cd43dd8448eb211c80319c");
    assert_eq!(flags, "01");
    assert_eq!(state.as_deref(), Some("vendor=client"));
    let spans = receiver.wait_for(4);
    let continued: Vec<&Value> = kind(&spans, SERVER)
        .into_iter()
        .filter(|s| s["trace_id"] == "0af7651916cd43dd8448eb211c80319c")
        .collect();
    assert_eq!(continued.len(), 1, "{spans:#?}");
    assert_eq!(continued[0]["parent_span_id"], "b7ad6b7169203331");
}

#[test]
fn x_ray_propagation_names_the_same_trace_and_replaces_a_clients_header() {
    let backend = Backend::start("monolith");
    let otlp = "endpoint = \"http://127.0.0.1:9\"\nsample-ratio = 0\npropagate = [\"tracecontext\", \"xray\"]";
    let proxy = Proxy::start(&config(&backend, otlp));
    let spoofed = (
        "x-amzn-trace-id",
        "Root=1-5759e988-bd862e3fe1be46a994272793;Sampled=1",
    );
    assert_eq!(
        proxy
            .client()
            .get("/bookings/1", &[spoofed])
            .unwrap()
            .status,
        200
    );
    let seen = backend.seen().pop().unwrap();
    let (trace_id, parent, _) = received(&backend);
    let xray = seen
        .headers
        .iter()
        .filter(|(k, _)| k == "x-amzn-trace-id")
        .collect::<Vec<_>>();
    assert_eq!(xray.len(), 1, "{xray:?}");
    assert_eq!(
        xray[0].1,
        format!(
            "Root=1-{}-{};Parent={parent};Sampled=0",
            &trace_id[..8],
            &trace_id[8..]
        )
    );
}

#[test]
fn with_the_collector_down_every_request_succeeds_and_the_spans_are_counted_dropped() {
    let backend = Backend::start("monolith");
    // Nothing listens there.
    let otlp = format!(
        "endpoint = \"http://127.0.0.1:{}\"\nsample-ratio = 1",
        free_port()
    );
    let proxy = Proxy::start(&config(&backend, &otlp));
    let mut c = proxy.client();
    for i in 0..20 {
        assert_eq!(c.get(&format!("/bookings/{i}"), &[]).unwrap().status, 200);
    }
    eventually(Duration::from_secs(10), "40 spans counted dropped", || {
        proxy.metric("strangle_spans_dropped_total") >= 40.0
    });
    assert_eq!(proxy.metric("strangle_spans_exported_total"), 0.0);
}

#[test]
fn spans_go_over_grpc_with_the_configured_headers() {
    let receiver = Receiver::start();
    let backend = Backend::start("monolith");
    let otlp = format!(
        "endpoint = \"http://127.0.0.1:{}\"\nprotocol = \"grpc\"\nsample-ratio = 1\nheaders = {{ \"x-api-key\" = \"k-123\" }}",
        receiver.grpc
    );
    let proxy = Proxy::start(&config(&backend, &otlp));
    assert_eq!(proxy.client().get("/bookings/1", &[]).unwrap().status, 200);
    let (trace_id, _, _) = received(&backend);
    let spans = receiver.wait_for(2);
    assert!(spans
        .iter()
        .all(|s| s["protocol"] == "grpc" && s["trace_id"] == trace_id.as_str()));
    let headers = receiver.headers();
    assert_eq!(headers[0]["x-api-key"], "k-123");
}

#[test]
fn a_graceful_shutdown_flushes_the_spans_still_queued() {
    let receiver = Receiver::start();
    let backend = Backend::start("monolith");
    let otlp = format!(
        "endpoint = \"http://127.0.0.1:{}\"\nsample-ratio = 1",
        receiver.http
    );
    let mut proxy = Proxy::start(&config(&backend, &otlp));
    let mut c = proxy.client();
    for i in 0..5 {
        assert_eq!(c.get(&format!("/bookings/{i}"), &[]).unwrap().status, 200);
    }
    drop(c);
    // At once: the batch is not due for another second.
    proxy.signal(nix::sys::signal::Signal::SIGTERM);
    assert!(proxy.child.wait().unwrap().success());
    assert_eq!(receiver.spans().len(), 10);
}
