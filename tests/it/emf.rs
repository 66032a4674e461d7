//! `[telemetry.emf]`: CloudWatch Embedded Metric Format lines, checked against the
//! specification's structure, counted against the access log, and kept apart from it on a
//! shared stdout.

use std::collections::HashMap;
use std::time::Duration;

use nix::sys::signal::Signal;
use serde_json::Value;

use crate::support::*;

/// The units CloudWatch accepts (the specification's `Unit` member).
const UNITS: [&str; 27] = [
    "Seconds",
    "Microseconds",
    "Milliseconds",
    "Bytes",
    "Kilobytes",
    "Megabytes",
    "Gigabytes",
    "Terabytes",
    "Bits",
    "Kilobits",
    "Megabits",
    "Gigabits",
    "Terabits",
    "Percent",
    "Count",
    "Bytes/Second",
    "Kilobytes/Second",
    "Megabytes/Second",
    "Gigabytes/Second",
    "Terabytes/Second",
    "Bits/Second",
    "Kilobits/Second",
    "Megabits/Second",
    "Gigabits/Second",
    "Terabits/Second",
    "Count/Second",
    "None",
];

/// Checks one line against the EMF specification's document structure; panics naming what is
/// wrong. Returns the parsed line.
fn check_emf(line: &str) -> Value {
    assert!(line.len() < 256 * 1024, "a line of {} bytes", line.len());
    let root: Value = serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}"));
    let root_obj = root.as_object().expect("the root node is an object");
    let aws = root_obj["_aws"].as_object().expect("_aws is an object");
    let keys: Vec<&str> = aws.keys().map(String::as_str).collect();
    assert_eq!(
        keys.len(),
        2,
        "_aws has only Timestamp and CloudWatchMetrics: {keys:?}"
    );
    assert!(
        aws["Timestamp"].is_u64(),
        "Timestamp is milliseconds since the epoch: {line}"
    );
    let directives = aws["CloudWatchMetrics"]
        .as_array()
        .expect("CloudWatchMetrics is an array");
    assert!(!directives.is_empty());
    for d in directives {
        let d = d.as_object().expect("a MetricDirective is an object");
        let ns = d["Namespace"].as_str().expect("Namespace is a string");
        assert!((1..=255).contains(&ns.len()), "{ns}");
        for set in d["Dimensions"].as_array().expect("Dimensions is an array") {
            let set = set.as_array().expect("a DimensionSet is an array");
            assert!(set.len() <= 30, "at most 30 dimensions in a set");
            for dim in set {
                let name = dim.as_str().expect("a dimension is a member's name");
                let value = root_obj
                    .get(name)
                    .unwrap_or_else(|| panic!("no member {name}"));
                let value = value.as_str().expect("a dimension's value is a string");
                assert!(
                    (1..=1024).contains(&value.len()),
                    "dimension {name}={value}"
                );
            }
        }
        let metrics = d["Metrics"].as_array().expect("Metrics is an array");
        assert!(metrics.len() <= 100, "at most 100 metrics in a directive");
        for m in metrics {
            let m = m.as_object().expect("a MetricDefinition is an object");
            let name = m["Name"].as_str().expect("Name is a string");
            assert!((1..=255).contains(&name.len()));
            if let Some(unit) = m.get("Unit") {
                let unit = unit.as_str().unwrap();
                assert!(UNITS.contains(&unit), "unit {unit}");
            }
            for k in m.keys() {
                assert!(
                    ["Name", "Unit", "StorageResolution"].contains(&k.as_str()),
                    "{k}"
                );
            }
            let value = root_obj
                .get(name)
                .unwrap_or_else(|| panic!("no member {name}"));
            let numbers = match value {
                Value::Array(values) => values.iter().all(Value::is_number) && values.len() <= 100,
                v => v.is_number(),
            };
            assert!(
                numbers,
                "metric {name} is a number or up to 100 numbers: {value}"
            );
        }
    }
    root
}

/// The lines of `text`: EMF ones checked and returned, the rest must be access-log lines.
fn split_lines(text: &str) -> (Vec<Value>, Vec<Value>) {
    let (mut emf, mut access) = (Vec::new(), Vec::new());
    for line in text.lines() {
        if line.contains("\"_aws\"") {
            emf.push(check_emf(line));
        } else {
            let v: Value = serde_json::from_str(line).unwrap_or_else(|e| {
                panic!("a line that is neither EMF nor access log ({e}): {line:?}")
            });
            assert!(v["request_id"].is_string(), "{line}");
            access.push(v);
        }
    }
    (emf, access)
}

/// Sums a metric of the EMF lines by (route, side).
fn sum_by_side(emf: &[Value], metric: &str) -> HashMap<(String, String), u64> {
    let mut sums = HashMap::new();
    for l in emf {
        let key = (
            l["route"].as_str().unwrap().into(),
            l["side"].as_str().unwrap().into(),
        );
        *sums.entry(key).or_default() += l[metric].as_u64().unwrap();
    }
    sums
}

fn emf_config(legacy: &Backend, new: &Backend, access: &str, emf: &str) -> String {
    Config::new()
        .default("legacy")
        .server(r#"grace-period = "5s""#)
        .upstream("legacy", &legacy.addr())
        .upstream("new", &new.addr())
        .route("bookings", "/bookings", |r| {
            r.legacy("legacy").new("new").shift("50%").sticky("none")
        })
        .route("reports", "/reports", |r| r.legacy("legacy").new("new"))
        .route("frozen", "/frozen", |r| {
            r.toml("respond", r#"{ status = 503, body = "frozen" }"#)
        })
        .section("[log]", &format!("access = \"{access}\""))
        .section("[telemetry.emf]", emf)
        .build()
}

#[test]
fn emf_lines_follow_the_specification_count_every_request_and_never_split_an_access_line() {
    // EMF and the access log both on stdout, read through a pipe as a container runtime reads
    // it, while four clients keep the access log busy across several intervals: every line is
    // whole, and the EMF counts add up to the access log's, the last interval written at exit.
    let (legacy, new) = (Backend::start("legacy"), Backend::start("new"));
    // `/dev/stdout` is stdout too (found by an adversarial review: as two writers on one pipe
    // they split each other's lines).
    let config = emf_config(
        &legacy,
        &new,
        "/dev/stdout",
        "output = \"stdout\"\nnamespace = \"shop/strangle\"\ninterval = \"1s\"",
    );
    let proxy = Proxy::start(&config);
    let port = proxy.port;
    let clients: Vec<_> = (0..4)
        .map(|c| {
            std::thread::spawn(move || {
                let mut client = Client::connect(port);
                for i in 0..150 {
                    let status = match i % 10 {
                        0 => "404",
                        1 if c == 0 => "503",
                        _ => "200",
                    };
                    let path = if i % 3 == 0 {
                        "/unmatched"
                    } else if status == "503" {
                        // The route's own answer: the same status, no side.
                        "/frozen"
                    } else {
                        "/bookings/1"
                    };
                    let r = client.get(path, &[("x-status", status)]).unwrap();
                    assert_eq!(r.status.to_string(), status);
                    std::thread::sleep(Duration::from_millis(15));
                }
            })
        })
        .collect();
    for c in clients {
        c.join().unwrap();
    }
    // Heads the parser refuses: refused with no route.
    for _ in 0..3 {
        let (r, _) = raw(port, b"GARBAGE\r\n\r\n");
        assert_eq!(r.map(|r| r.status), Some(400));
    }
    proxy.signal(Signal::SIGTERM);
    let mut proxy = proxy;
    let exited = wait_until(Duration::from_secs(10), || {
        proxy.child.try_wait().unwrap().is_some()
    });
    assert!(exited, "strangle did not exit after SIGTERM");
    // The copying thread may still be reading the pipe's last bytes.
    let mut out = proxy.stdout();
    wait_until(Duration::from_secs(2), || {
        out = proxy.stdout();
        out.ends_with('\n') && out.lines().count() >= 603
    });
    let (emf, access) = split_lines(&out);
    assert_eq!(access.len(), 603, "every request's access-log line, whole");

    // Several intervals, each line in the namespace with the two dimension sets.
    let stamps: std::collections::BTreeSet<u64> = emf
        .iter()
        .map(|l| l["_aws"]["Timestamp"].as_u64().unwrap())
        .collect();
    assert!(stamps.len() >= 2, "one report per interval: {stamps:?}");
    for l in &emf {
        let d = &l["_aws"]["CloudWatchMetrics"][0];
        assert_eq!(d["Namespace"], "shop/strangle");
        // Refusals stay out of a route's `[route]` sums (a planned 503 is no side's 5xx).
        let want = if l["side"] == "refused" {
            serde_json::json!([["route", "side"]])
        } else {
            serde_json::json!([["route"], ["route", "side"]])
        };
        assert_eq!(d["Dimensions"], want, "{l}");
    }

    // The counts are the access log's, by route and side.
    let mut want: HashMap<(String, String), [u64; 3]> = HashMap::new();
    for a in &access {
        let route = a["route"].as_str().unwrap_or("_default").to_string();
        // No side: answered by strangle itself (refused, or the route's own answer).
        let side = a["side"].as_str().unwrap_or("refused");
        let counts = want.entry((route, side.to_string())).or_default();
        let status = a["status"].as_u64().unwrap();
        counts[0] += 1;
        counts[1] += u64::from((400..500).contains(&status));
        counts[2] += u64::from(status >= 500);
    }
    let (requests, c4, c5) = (
        sum_by_side(&emf, "Requests"),
        sum_by_side(&emf, "4xx"),
        sum_by_side(&emf, "5xx"),
    );
    for (key, [n, n4, n5]) in &want {
        assert_eq!(requests.get(key), Some(n), "{key:?}: {requests:?}");
        assert_eq!(c4.get(key), Some(n4), "{key:?}");
        assert_eq!(c5.get(key), Some(n5), "{key:?}");
    }
    assert!(
        want.contains_key(&("bookings".into(), "new".into())),
        "{want:?}"
    );
    assert!(
        want.contains_key(&("_default".into(), "default".into())),
        "{want:?}"
    );
    assert_eq!(want[&("frozen".into(), "refused".into())], [10, 0, 10]);
    assert_eq!(want[&("_default".into(), "refused".into())], [3, 3, 0]);
    // Refusals report in the intervals they happened in, never with a latency.
    let refused: Vec<_> = emf.iter().filter(|l| l["side"] == "refused").collect();
    assert!(refused
        .iter()
        .all(|l| l["Requests"].as_u64() > Some(0) && l.get("LatencyP50").is_none()));
    // An idle configured route reports zeros, and no latency.
    let idle: Vec<_> = emf.iter().filter(|l| l["route"] == "reports").collect();
    assert!(!idle.is_empty());
    assert!(idle
        .iter()
        .all(|l| l["Requests"] == 0 && l.get("LatencyP99").is_none()));
    // A busy side reports latency quantiles, p50 <= p99.
    let busy = emf
        .iter()
        .find(|l| l["route"] == "bookings" && l["Requests"].as_u64().unwrap() > 0)
        .unwrap();
    assert!(busy["LatencyP50"].as_f64().unwrap() <= busy["LatencyP99"].as_f64().unwrap());
}

#[test]
fn emf_to_its_own_file_follows_reloads_and_is_counted() {
    // EMF in a file while the access log goes to stdout: each stays in its place; a reload
    // that changes the namespace is followed, and `/metrics` counts the lines.
    let (legacy, new) = (Backend::start("legacy"), Backend::start("new"));
    let emf_keys =
        |ns: &str| format!("output = \"emf.log\"\nnamespace = \"{ns}\"\ninterval = \"1s\"");
    let proxy = Proxy::start(&emf_config(&legacy, &new, "stdout", &emf_keys("first")));
    let file = proxy.dir.path().join("emf.log");
    // Whole lines only: one being written may be read in part.
    let read = || {
        let mut text = std::fs::read_to_string(&file).unwrap_or_default();
        text.truncate(text.rfind('\n').map_or(0, |i| i + 1));
        text
    };
    for _ in 0..5 {
        assert_eq!(get(proxy.port, "/bookings", &[]).status, 200);
    }
    eventually(Duration::from_secs(5), "the first interval's lines", || {
        split_lines(&read())
            .0
            .iter()
            .any(|l| l["Requests"].as_u64() > Some(0))
    });
    // A route removed by the reload still reports what it served in its last interval.
    for _ in 0..3 {
        assert_eq!(get(proxy.port, "/reports/x", &[]).status, 200);
    }
    let without_reports = emf_config(&legacy, &new, "stdout", &emf_keys("second")).replace(
        "id = \"reports\"\npath = \"/reports\"",
        "id = \"summaries\"\npath = \"/summaries\"",
    );
    assert!(without_reports.contains("summaries"));
    proxy.rewrite(&without_reports);
    eventually(Duration::from_secs(5), "lines in the new namespace", || {
        read().contains("\"Namespace\":\"second\"")
    });
    eventually(
        Duration::from_secs(5),
        "the removed route's last interval",
        || {
            let (emf, _) = split_lines(&read());
            let reports = emf.iter().filter(|l| l["route"] == "reports");
            reports
                .map(|l| l["Requests"].as_u64().unwrap())
                .sum::<u64>()
                == 3
        },
    );
    let (emf, access) = split_lines(&read());
    assert!(access.is_empty(), "no access-log line in the EMF file");
    let requests: u64 = emf.iter().map(|l| l["Requests"].as_u64().unwrap()).sum();
    assert_eq!(requests, 8);
    let (emf_out, access_out) = split_lines(&proxy.stdout());
    assert!(emf_out.is_empty(), "no EMF line on stdout");
    assert_eq!(access_out.len(), 8);
    assert!(proxy.metric("strangle_emf_lines_total") >= emf.len() as f64);
    assert_eq!(proxy.metric("strangle_emf_dropped_total"), 0.0);
    // Turned off by a reload: no more lines.
    let mut off = emf_config(&legacy, &new, "stdout", "");
    off = off.replace("[telemetry.emf]\n", "");
    proxy.rewrite(&off);
    eventually(Duration::from_secs(5), "the reload", || {
        proxy.metric("strangle_config_reloads_total") >= 2.0
    });
    std::thread::sleep(Duration::from_millis(300));
    let before = read().lines().count();
    std::thread::sleep(Duration::from_millis(2200));
    assert_eq!(
        read().lines().count(),
        before,
        "EMF turned off writes nothing"
    );
}
