use std::time::Duration;

use serde_json::{json, Value};

use super::*;

fn point<'a>(route: &'a str, side: &'static str, requests: u64) -> Point<'a> {
    Point {
        route,
        side,
        requests,
        status_4xx: 2,
        status_5xx: 1,
        p50_ms: (requests > 0).then_some(3.25),
        p99_ms: (requests > 0).then_some(41.0),
    }
}

fn lines(points: &[Point<'_>]) -> Vec<Value> {
    let mut out = Vec::new();
    write_lines(
        "shop/strangle",
        1_764_000_000_123,
        Duration::from_secs(60),
        points,
        &mut out,
    );
    let text = String::from_utf8(out).unwrap();
    assert!(text.ends_with('\n'));
    text.lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[test]
fn a_line_carries_the_directive_the_dimensions_and_one_number_per_metric() {
    let got = lines(&[point("/bookings", "new", 10)]);
    assert_eq!(got.len(), 1);
    assert_eq!(
        got[0],
        json!({
            "_aws": {
                "Timestamp": 1_764_000_000_123_u64,
                "CloudWatchMetrics": [{
                    "Namespace": "shop/strangle",
                    "Dimensions": [["route"], ["route", "side"]],
                    "Metrics": [
                        {"Name": "Requests", "Unit": "Count"},
                        {"Name": "4xx", "Unit": "Count"},
                        {"Name": "5xx", "Unit": "Count"},
                        {"Name": "LatencyP50", "Unit": "Milliseconds"},
                        {"Name": "LatencyP99", "Unit": "Milliseconds"},
                    ],
                }],
            },
            "route": "/bookings",
            "side": "new",
            "interval_s": 60.0,
            "Requests": 10,
            "4xx": 2,
            "5xx": 1,
            "LatencyP50": 3.25,
            "LatencyP99": 41.0,
        })
    );
}

#[test]
fn an_idle_side_reports_zero_requests_and_no_latency() {
    // Zero, not silence, so that an alarm on "no traffic" sees it; and no latency metric in the
    // directive, since every metric a directive names must be in the line.
    let got = lines(&[point("/a", "legacy", 0), point("/a", "new", 4)]);
    assert_eq!(got.len(), 2);
    let idle = &got[0];
    assert_eq!(idle["Requests"], 0);
    assert!(idle.get("LatencyP50").is_none() && idle.get("LatencyP99").is_none());
    let names: Vec<_> = idle["_aws"]["CloudWatchMetrics"][0]["Metrics"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["Name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["Requests", "4xx", "5xx"]);
    assert_eq!(got[1]["LatencyP99"], 41.0);
}

#[test]
fn long_route_ids_are_cut_to_what_cloudwatch_takes_and_stay_apart() {
    let a = format!("/{}a", "x".repeat(5000));
    let b = format!("/{}b", "x".repeat(5000));
    let multibyte = "/é".repeat(700);
    let got = lines(&[
        point(&a, "new", 1),
        point(&b, "new", 1),
        point(&multibyte, "legacy", 1),
    ]);
    let ids: Vec<&str> = got.iter().map(|l| l["route"].as_str().unwrap()).collect();
    assert!(
        ids.iter().all(|id| id.len() <= MAX_DIMENSION_VALUE),
        "{ids:?}"
    );
    assert_ne!(ids[0], ids[1], "two long ids sharing a start stay apart");
    assert!(ids[2].starts_with("/é/é"));
    // Short ids are untouched.
    assert_eq!(lines(&[point("/b", "new", 1)])[0]["route"], "/b");
}

#[test]
fn every_line_stays_well_below_cloudwatchs_event_limit() {
    let long = "/".repeat(100_000);
    let mut out = Vec::new();
    let points = [point(&long, "legacy", u64::MAX), point("/x", "new", 1)];
    write_lines("n", u64::MAX, Duration::from_secs(3600), &points, &mut out);
    for line in out.split(|&b| b == b'\n').filter(|l| !l.is_empty()) {
        assert!(line.len() < 4096, "{} bytes", line.len());
    }
}
