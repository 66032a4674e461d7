//! `[telemetry.otlp] logs = true`: access-log records exported as OTLP logs to a real OTLP
//! receiver, over http/protobuf and gRPC, each naming its request's trace.

use std::time::Duration;

use serde_json::Value;

use crate::support::*;
use crate::tracing::Receiver;

fn config(backend: &Backend, otlp: &str, access: &str) -> String {
    Config::new()
        .default("monolith")
        .upstream("monolith", &backend.addr())
        .route("bookings", "/bookings", |r| r.legacy("monolith"))
        .section("[log]", &format!("access = \"{access}\""))
        .section("[telemetry]", "service-name = \"edge\"")
        .section("[telemetry.otlp]", otlp)
        .build()
}

#[test]
fn every_access_log_record_reaches_the_collector_with_its_trace_and_fields() {
    let receiver = Receiver::start();
    let backend = Backend::start("monolith");
    let otlp = format!(
        "endpoint = \"http://127.0.0.1:{}\"\nsample-ratio = 1\nlogs = true",
        receiver.http
    );
    let proxy = Proxy::start(&config(&backend, &otlp, "access.log"));
    let mut c = proxy.client();
    assert_eq!(c.get("/bookings/1", &[]).unwrap().status, 200);
    let r = c.get("/bookings/2", &[("x-status", "404")]).unwrap();
    assert_eq!(r.status, 404);
    assert_eq!(c.get("/other", &[]).unwrap().status, 200);
    let logs = receiver.wait_for_logs(3);
    let spans = receiver.wait_for(6);
    let access = proxy.log_when(3);
    assert_eq!((logs.len(), access.len()), (3, 3));
    for (record, line) in logs.iter().zip(&access) {
        assert_eq!(record["protocol"], "http");
        assert_eq!(record["event_name"], "strangle.access");
        assert_eq!(record["resource"]["service.name"], "edge");
        // The record carries the line's fields...
        for key in ["request_id", "method", "path", "status", "bytes_out"] {
            assert_eq!(record["attributes"][key], line[key], "{key}");
        }
        assert_eq!(record["attributes"]["route"], line["route"]);
        // ...its trace as the record's trace context, naming the request's server span...
        assert_eq!(record["trace_id"], line["trace_id"]);
        assert_eq!(record["span_id"], line["span_id"]);
        let server = spans
            .iter()
            .find(|s| s["span_id"] == record["span_id"])
            .expect("the record's span was exported");
        assert_eq!(server["kind"], 2);
        // ...and its time.
        let time = humantime::parse_rfc3339(line["time"].as_str().unwrap()).unwrap();
        let nanos = time
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos() as u64;
        assert_eq!(record["time"].as_u64(), Some(nanos));
    }
    let severities: Vec<&Value> = logs.iter().map(|l| &l["severity_text"]).collect();
    assert_eq!(severities, ["INFO", "WARN", "INFO"]);
    assert_eq!(logs[1]["body"], "GET /bookings/2 404");
    assert_eq!(proxy.metric("strangle_logs_exported_total"), 3.0);
}

#[test]
fn records_go_over_grpc_without_an_access_log_and_untraced_requests_have_no_trace() {
    // The access log off, nothing sampled: every request still gets its record, over gRPC.
    let receiver = Receiver::start();
    let backend = Backend::start("monolith");
    let otlp = format!(
        "endpoint = \"http://127.0.0.1:{}\"\nprotocol = \"grpc\"\nsample-ratio = 0\nlogs = true",
        receiver.grpc
    );
    let proxy = Proxy::start(&config(&backend, &otlp, "off"));
    for i in 0..4 {
        assert_eq!(get(proxy.port, &format!("/bookings/{i}"), &[]).status, 200);
    }
    let logs = receiver.wait_for_logs(4);
    assert!(logs
        .iter()
        .all(|l| l["protocol"] == "grpc" && l["trace_id"] == ""));
    assert!(receiver.spans().is_empty(), "nothing sampled");
    assert!(!proxy.dir.path().join("access.log").exists());
    // Turned off by a reload: no more records.
    proxy.rewrite(&config(&backend, &otlp.replace("logs = true", ""), "off"));
    eventually(Duration::from_secs(5), "the reload", || {
        proxy.metric("strangle_config_reloads_total") >= 1.0
    });
    assert_eq!(get(proxy.port, "/bookings/9", &[]).status, 200);
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(receiver.logs().len(), 4);
}
