//! Traces, against a real OTLP receiver (tests/fixtures/otlp_receiver.py: the OpenTelemetry
//! protocol's own messages, over http/protobuf and gRPC): one trace from the client through
//! strangle to the backend, the client's context continued only when trusted, requests
//! unaffected when the collector is down, and spans flushed on a graceful shutdown.

use std::process::Child;
use std::time::Duration;

use serde_json::Value;

use crate::support::*;

/// The OTLP receiver, stopped when dropped.
pub struct Receiver {
    child: Child,
    pub http: u16,
    pub grpc: u16,
}

impl Receiver {
    pub fn start() -> Receiver {
        let (http, grpc) = (free_port(), free_port());
        let missing = "opentelemetry-proto and grpcio installed? run `make test`";
        let args = [http.to_string(), grpc.to_string()];
        let child = start_fixture("otlp_receiver.py", &args, missing);
        Receiver { child, http, grpc }
    }

    pub fn spans(&self) -> Vec<Value> {
        let r = get(self.http, "/spans", &[]);
        serde_json::from_str::<Vec<Value>>(&r.text()).unwrap()
    }

    /// Waits until `n` spans have arrived.
    pub fn wait_for(&self, n: usize) -> Vec<Value> {
        wait_for(Duration::from_secs(10), &format!("{n} spans"), || {
            let spans = self.spans();
            (spans.len() >= n).then_some(spans)
        })
    }

    pub fn logs(&self) -> Vec<Value> {
        serde_json::from_str(&get(self.http, "/logs", &[]).text()).unwrap()
    }

    /// Waits until `n` log records have arrived.
    pub fn wait_for_logs(&self, n: usize) -> Vec<Value> {
        wait_for(Duration::from_secs(10), &format!("{n} log records"), || {
            let logs = self.logs();
            (logs.len() >= n).then_some(logs)
        })
    }

    pub fn headers(&self) -> Vec<Value> {
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
    let r = proxy
        .client()
        .get("/bookings/./7?q=1&access_token=s3cr3t", &[])
        .unwrap();
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
    assert!(!serde_json::to_string(&spans).unwrap().contains("s3cr3t"));
    // Each span ends after it starts; the call sits inside the request.
    let n = |s: &Value, k: &str| s[k].as_u64().unwrap();
    assert!(n(server, "start") <= n(client, "start") && n(client, "end") <= n(server, "end"));
    // Counted once the export's answer is back, which may be just after the receiver has them.
    eventually(
        Duration::from_secs(5),
        "two spans counted as exported",
        || proxy.metric("strangle_spans_exported_total") == 2.0,
    );
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
        "endpoint = \"http://127.0.0.1:{}\"\nsample-ratio = 1\nlogs = true",
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
    eventually(
        Duration::from_secs(10),
        "20 log records counted dropped",
        || proxy.metric("strangle_logs_dropped_total") >= 20.0,
    );
    assert_eq!(proxy.metric("strangle_logs_exported_total"), 0.0);
    // One warning for the failed batches, not one a batch.
    let warnings = proxy.stderr().matches("dropped: the collector").count();
    assert!(
        (1..=2).contains(&warnings),
        "{warnings} warnings:\n{}",
        proxy.stderr()
    );
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
fn a_graceful_shutdown_flushes_the_spans_and_log_records_still_queued() {
    let receiver = Receiver::start();
    let backend = Backend::start("monolith");
    let otlp = format!(
        "endpoint = \"http://127.0.0.1:{}\"\nsample-ratio = 1\nlogs = true",
        receiver.http
    );
    let mut proxy = Proxy::start(&config(&backend, &otlp));
    let mut c = proxy.client();
    for i in 0..5 {
        assert_eq!(c.get(&format!("/bookings/{i}"), &[]).unwrap().status, 200);
    }
    drop(c);
    // And one still being served when the signal comes (found by an adversarial review: its
    // spans were lost, the exporter's last flush came before the request ended).
    let port = proxy.port;
    let slow = std::thread::spawn(move || {
        let mut c = Client::connect(port);
        c.get("/bookings/slow", &[("x-delay-ms", "700")])
            .unwrap()
            .status
    });
    eventually(
        Duration::from_secs(5),
        "the slow request reaches the backend",
        || backend.count() == 6,
    );
    // At once: the batch is not due for another second.
    proxy.signal(nix::sys::signal::Signal::SIGTERM);
    assert_eq!(slow.join().unwrap(), 200);
    assert!(proxy.child.wait().unwrap().success());
    let spans = receiver.spans();
    assert_eq!(spans.len(), 12, "{spans:#?}");
    assert!(spans
        .iter()
        .any(|s| s["attributes"]["url.path"] == "/bookings/slow"));
    let logs = receiver.logs();
    assert_eq!(logs.len(), 6, "{logs:#?}");
    assert!(logs
        .iter()
        .any(|l| l["attributes"]["path"] == "/bookings/slow"));
}

#[test]
fn secrets_never_reach_a_log_line_an_emf_line_or_an_exported_span_or_record() {
    // A token, a cookie, an API key, a configured secret header and query parameter, and the
    // built-in credential parameters, on a traced request with every log as chatty as it gets.
    let receiver = Receiver::start();
    let backend = Backend::start("monolith");
    let dir = tempfile::tempdir().unwrap();
    let access = dir.path().join("access.log");
    let config = Config::new()
        .default("monolith")
        .upstream("monolith", &backend.addr())
        .route("bookings", "/bookings", |r| r.legacy("monolith"))
        .section(
            "[log]",
            &format!(
                "access = \"{}\"\nformat = \"json\"\nlevel = \"trace,pingora_core::protocols::http::v1::client=trace,aws_sigv4=trace,notify=trace\"",
                access.display()
            ),
        )
        .section(
            "[telemetry]",
            "redact-headers = [\"x-internal-secret\"]\nredact-query = [\"session\"]",
        )
        .section(
            "[telemetry.otlp]",
            &format!(
                "endpoint = \"http://127.0.0.1:{}\"\nsample-ratio = 1\nlogs = true",
                receiver.http
            ),
        )
        .section("[telemetry.emf]", "output = \"emf.log\"\ninterval = \"1s\"")
        .build();
    let proxy = Proxy::start(&config);
    const SECRETS: [&str; 8] = [
        "jsess-4p5q6r",
        "jsess-7s8t9u",
        "tok-9f8e7d",
        "cookie-5a4b3c",
        "apikey-1a2b3c",
        "internal-7g8h9i",
        "session-0j1k2l",
        "access-3m4n5o",
    ];
    let headers = [
        ("authorization", "Bearer tok-9f8e7d"),
        ("cookie", "sid=cookie-5a4b3c"),
        ("x-api-key", "apikey-1a2b3c"),
        ("x-internal-secret", "internal-7g8h9i"),
    ];
    let path = "/bookings/1?session=session-0j1k2l&access_token=access-3m4n5o&page=2";
    for _ in 0..3 {
        assert_eq!(proxy.client().get(path, &headers).unwrap().status, 200);
    }
    // A path refused for its path parameter is logged without it (a Java session id).
    let refused = proxy
        .client()
        .get("/bookings;jsessionid=jsess-4p5q6r", &headers);
    assert_eq!(refused.unwrap().status, 400);
    let escaped = proxy
        .client()
        .get("/bookings%3Bjsessionid=jsess-7s8t9u", &headers);
    assert_eq!(escaped.unwrap().status, 400);
    let spans = receiver.wait_for(6);
    let exported = serde_json::to_string(&spans).unwrap();
    let exported_logs = serde_json::to_string(&receiver.wait_for_logs(5)).unwrap();
    assert!(exported_logs.contains("/bookings/1"));
    assert!(exported.contains("session=[redacted]&access_token=[redacted]&page=2"));
    eventually(Duration::from_secs(5), "the access log lines", || {
        std::fs::read_to_string(&access).is_ok_and(|t| t.lines().count() >= 5)
    });
    let access_log = std::fs::read_to_string(&access).unwrap();
    // Every access-log line of a traced request names its trace.
    for line in access_log.lines() {
        let v: Value = serde_json::from_str(line).unwrap();
        if v["status"] == 400 {
            let path = v["path"].as_str().unwrap();
            assert!(
                ["/bookings;[redacted]", "/bookings%[redacted]"].contains(&path),
                "{path}"
            );
            continue;
        }
        let traced = spans
            .iter()
            .any(|s| s["trace_id"] == v["trace_id"] && s["span_id"] == v["span_id"]);
        assert!(traced, "{line}");
    }
    let emf_file = proxy.dir.path().join("emf.log");
    let mut emf = String::new();
    eventually(
        Duration::from_secs(5),
        "the EMF interval with the requests",
        || {
            emf = std::fs::read_to_string(&emf_file).unwrap_or_default();
            let lines = emf
                .lines()
                .map(|l| serde_json::from_str::<Value>(l).unwrap());
            // The three served, and the two refused (counted with no route, no side).
            lines.map(|l| l["Requests"].as_u64().unwrap()).sum::<u64>() == 5
        },
    );
    let process_log = proxy.stderr();
    for secret in SECRETS {
        for (what, text) in [
            ("spans", &exported),
            ("access log", &access_log),
            ("process log", &process_log),
            ("EMF lines", &emf),
            ("exported log records", &exported_logs),
        ] {
            let leak = text.lines().find(|l| l.contains(secret));
            assert_eq!(leak, None, "{secret} in the {what}");
        }
    }
    // The upstream still gets what the client sent.
    let seen = backend.seen().pop().unwrap();
    assert_eq!(seen.header("authorization"), Some("Bearer tok-9f8e7d"));
}

#[test]
fn a_lambda_function_gets_the_trace_in_its_events_headers() {
    // A real `lambda_http` function under `cargo lambda watch`: its event's headers carry
    // strangle's traceparent (a client's copy replaced), and the client span names the
    // function and its region.
    let watch = crate::lambda::LambdaWatch::start();
    let receiver = Receiver::start();
    let legacy = Backend::start("monolith");
    let config = Config::new()
        .default("monolith")
        .upstream("monolith", &legacy.addr())
        .lambda("bookings-fn", watch.port)
        .with("timeout = \"5s\"")
        .route("bookings", "/bookings", |r| {
            r.legacy("monolith").new("bookings-fn").shift("100%")
        })
        .section(
            "[telemetry.otlp]",
            &format!(
                "endpoint = \"http://127.0.0.1:{}\"\nsample-ratio = 1",
                receiver.http
            ),
        )
        .build();
    let proxy = Proxy::start_with_env(&config, &crate::invoke::lambda_env());
    let spoofed = (
        "traceparent",
        "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
    );
    let r = proxy.client().get("/bookings/echo", &[spoofed]).unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    let echo: Value = serde_json::from_slice(&r.body).unwrap();
    let tp = echo["headers"]["traceparent"].as_str().unwrap().to_string();
    assert!(!tp.contains("0af7651916cd43dd8448eb211c80319c"), "{tp}");
    let spans = receiver.wait_for(2);
    let client = kind(&spans, CLIENT)[0];
    assert_eq!(
        tp,
        format!(
            "00-{}-{}-01",
            client["trace_id"].as_str().unwrap(),
            client["span_id"].as_str().unwrap()
        )
    );
    let a = &client["attributes"];
    assert_eq!(a["faas.invoked_name"], "bookings");
    assert_eq!(a["faas.invoked_region"], "eu-west-1");
    assert_eq!(a["faas.invoked_provider"], "aws");
    assert_eq!(
        kind(&spans, SERVER)[0]["attributes"]["strangle.side"],
        "new"
    );
}

#[test]
fn a_shadow_copy_has_its_own_spans_under_the_request_it_copies() {
    let receiver = Receiver::start();
    let (legacy, new) = (Backend::start("legacy"), Backend::start("new"));
    let otlp = format!(
        "endpoint = \"http://127.0.0.1:{}\"\nsample-ratio = 1.0",
        receiver.http
    );
    let text = shadowing(&legacy, &new, "{}")
        .section("[telemetry.otlp]", &otlp)
        .build();
    let proxy = Proxy::start(&text);
    assert_eq!(proxy.client().get("/bookings/1", &[]).unwrap().status, 200);
    // The request's two spans, and the copy's two.
    let spans = receiver.wait_for(4);
    assert_eq!(spans.len(), 4, "{spans:#?}");
    let server = kind(&spans, SERVER)[0];
    let copy = spans
        .iter()
        .find(|s| s["name"] == "shadow GET /bookings")
        .expect("the copy's span");
    assert_eq!(copy["trace_id"], server["trace_id"]);
    assert_eq!(copy["parent_span_id"], server["span_id"]);
    let a = &copy["attributes"];
    // The backends answer differently ("legacy" / "new"): a mismatch.
    assert_eq!(a["strangle.shadow"], "mismatched");
    assert_eq!(a["strangle.side"], "new");
    assert_eq!(a["strangle.upstream"], "new");
    let call = spans
        .iter()
        .find(|s| s["kind"] == CLIENT && s["parent_span_id"] == copy["span_id"])
        .expect("the copy's call");
    // The new side continued the copy's call, not the request's.
    let (trace_id, parent, _) = received(&new);
    assert_eq!(trace_id, server["trace_id"].as_str().unwrap());
    assert_eq!(parent, call["span_id"].as_str().unwrap());
    let (_, legacy_parent, _) = received(&legacy);
    assert_ne!(legacy_parent, parent);
}
