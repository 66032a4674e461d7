use super::*;

/// Lower-case hex, as the access log writes ids (`telemetry::Hex`).
fn hex<const N: usize>(id: &[u8; N]) -> String {
    crate::telemetry::Hex(*id).to_string()
}

const VALID: &[u8] = b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

#[test]
fn a_valid_traceparent_is_read_and_written_back_the_same() {
    let c = parse_traceparent(VALID).unwrap();
    assert!(c.sampled);
    assert_eq!(hex(&c.trace_id), "4bf92f3577b34da6a3ce929d0e0e4736");
    assert_eq!(hex(&c.span_id), "00f067aa0ba902b7");
    assert_eq!(&format_traceparent(&c)[..], VALID);
    let unsampled = parse_traceparent(b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00");
    assert!(!unsampled.unwrap().sampled);
    // A later version may add fields after a dash.
    let v1 = b"01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra";
    assert_eq!(parse_traceparent(v1).unwrap().trace_id, c.trace_id);
}

#[test]
fn an_invalid_traceparent_is_no_context() {
    let bad: &[&[u8]] = &[
        b"",
        b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-0",
        // Version 00 is exactly 55 bytes.
        b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
        b"ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        // Upper-case hex, non-hex, all-zero ids, wrong separators.
        b"00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
        b"00-4bf92f3577b34da6a3ce929d0e0e473g-00f067aa0ba902b7-01",
        b"00-00000000000000000000000000000000-00f067aa0ba902b7-01",
        b"00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
        b"00_4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        b"01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01x",
        b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-0\n",
    ];
    for v in bad {
        assert_eq!(parse_traceparent(v), None, "{}", String::from_utf8_lossy(v));
    }
}

#[test]
fn a_trusted_context_is_continued_and_an_untrusted_one_only_linked() {
    let trusting = TracePolicy::new(0.0, true, false);
    let t = RequestTrace::start(&trusting, Some(VALID));
    let client = parse_traceparent(VALID).unwrap();
    assert_eq!(t.server.trace_id, client.trace_id);
    assert_eq!(t.parent, Some(client.span_id));
    assert!(t.server.sampled, "the client's decision travels on");
    assert_eq!(t.link, None);
    assert_ne!(t.server.span_id, client.span_id);
    assert_ne!(t.upstream_span, t.server.span_id);
    // The upstream's parent is the client span, in the same trace.
    let up = parse_traceparent(&t.traceparent()).unwrap();
    assert_eq!(
        (up.trace_id, up.span_id, up.sampled),
        (client.trace_id, t.upstream_span, true)
    );

    let wary = TracePolicy::new(0.0, false, false);
    let t = RequestTrace::start(&wary, Some(VALID));
    assert_ne!(t.server.trace_id, client.trace_id, "a new trace");
    assert_eq!(t.parent, None);
    assert_eq!(t.link, Some(client));
    assert!(!t.server.sampled, "a client cannot force sampling");
    assert!(!parse_traceparent(&t.traceparent()).unwrap().sampled);
}

#[test]
fn sampling_follows_the_ratio_and_is_decided_by_the_trace_id() {
    for (ratio, low, high) in [(0.0, 0, 0), (1.0, 10_000, 10_000), (0.25, 2_200, 2_800)] {
        let p = TracePolicy::new(ratio, false, false);
        let sampled = (0..10_000)
            .filter(|_| RequestTrace::start(&p, None).server.sampled)
            .count();
        assert!((low..=high).contains(&sampled), "{ratio}: {sampled}");
    }
    // The same id, the same decision.
    let p = TracePolicy::new(0.5, false, false);
    let t = RequestTrace::start(&p, None);
    assert_eq!(p.samples(&t.server.trace_id), t.server.sampled);
}

#[test]
fn the_xray_header_names_the_same_trace_and_starts_with_the_time() {
    let p = TracePolicy::new(1.0, false, true);
    let t = RequestTrace::start(&p, None);
    let xray = t.xray();
    let text = std::str::from_utf8(&xray).unwrap();
    let id = hex(&t.server.trace_id);
    let expected = format!(
        "Root=1-{}-{};Parent={};Sampled=1",
        &id[..8],
        &id[8..],
        hex(&t.upstream_span)
    );
    assert_eq!(text, expected);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let stamped = u64::from(u32::from_be_bytes(
        t.server.trace_id[..4].try_into().unwrap(),
    ));
    assert!(now.abs_diff(stamped) < 5, "{now} {stamped}");
}
