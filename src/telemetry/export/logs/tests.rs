use opentelemetry::logs::LoggerProvider as _;

use super::*;

fn convert(line: &str) -> SdkLogRecord {
    let provider = SdkLoggerProvider::builder().build();
    record(&provider.logger("test"), line.as_bytes())
}

fn attribute<'a>(r: &'a SdkLogRecord, key: &str) -> Option<&'a AnyValue> {
    r.attributes_iter()
        .find(|(k, _)| k.as_str() == key)
        .map(|(_, v)| v)
}

#[test]
fn an_access_line_becomes_a_record_with_its_fields_its_trace_and_a_severity() {
    let line = r#"{"time":"2026-12-02T04:00:00.123Z","request_id":"r1","client":"127.0.0.1","method":"GET","path":"/bookings/1","route":"bookings","side":"new","upstream":"new","status":503,"duration_ms":1.5,"upstream_ms":null,"bytes_in":0,"bytes_out":12,"trace_id":"0af7651916cd43dd8448eb211c80319c","span_id":"b7ad6b7169203331"}"#;
    let r = convert(line);
    assert_eq!(r.event_name(), Some("strangle.access"));
    assert_eq!(r.severity_number(), Some(Severity::Error));
    assert_eq!(r.severity_text(), Some("ERROR"));
    assert_eq!(
        r.timestamp(),
        Some(humantime::parse_rfc3339("2026-12-02T04:00:00.123Z").unwrap())
    );
    assert_eq!(
        r.body(),
        Some(&AnyValue::String("GET /bookings/1 503".into()))
    );
    let t = r.trace_context().unwrap();
    assert_eq!(t.trace_id.to_string(), "0af7651916cd43dd8448eb211c80319c");
    assert_eq!(t.span_id.to_string(), "b7ad6b7169203331");
    assert_eq!(
        attribute(&r, "route"),
        Some(&AnyValue::String("bookings".into()))
    );
    assert_eq!(attribute(&r, "status"), Some(&AnyValue::Int(503)));
    assert_eq!(attribute(&r, "duration_ms"), Some(&AnyValue::Double(1.5)));
    // Nulls are left out; the ids are the trace context, not attributes.
    for absent in ["upstream_ms", "trace_id", "span_id", "time"] {
        assert_eq!(attribute(&r, absent), None, "{absent}");
    }
}

#[test]
fn severities_follow_the_status_and_untraced_lines_have_no_trace_context() {
    for (status, severity) in [
        (200, Severity::Info),
        (302, Severity::Info),
        (404, Severity::Warn),
        (502, Severity::Error),
        (0, Severity::Error),
    ] {
        let r = convert(&format!(
            r#"{{"method":"GET","path":"/","status":{status}}}"#
        ));
        assert_eq!(r.severity_number(), Some(severity), "{status}");
        assert!(r.trace_context().is_none());
    }
    // A malformed id is no trace context (lines are strangle's own, but never trust a parse).
    let r = convert(r#"{"status":200,"trace_id":"zz","span_id":"b7ad6b7169203331"}"#);
    assert!(r.trace_context().is_none());
}
