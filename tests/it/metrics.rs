//! `/metrics` as Prometheus sees it: `promtool check metrics` passes, and a real Prometheus
//! server scrapes it and answers a query with the traffic the test sent. Both tools come from
//! Debian's `prometheus` package, which `make test` installs.

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::support::*;

fn tool(name: &str) -> &str {
    let found = Command::new(name)
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    assert!(
        found,
        "`{name}` is not installed: run `make test`, which installs Debian's prometheus package"
    );
    name
}

#[test]
fn promtool_accepts_the_exposition() {
    let (legacy, new) = (Backend::start("legacy"), Backend::start("new"));
    let proxy = Proxy::start(&split_config(&legacy, &new, "50%", "none"));
    for _ in 0..20 {
        get(proxy.port, "/bookings", &[]);
        get(proxy.port, "/other", &[]);
    }
    let (r, _) = raw(proxy.port, b"GARBAGE\r\n\r\n");
    assert_eq!(r.map(|r| r.status), Some(400));
    // Counted just after the answer went out.
    let mut text = String::new();
    eventually(Duration::from_secs(5), "the refusal counted", || {
        text = get(proxy.admin_port, "/metrics", &[]).text();
        text.contains("strangle_requests_refused_total{route=\"_default\"")
    });
    assert!(
        text.contains("strangle_route_shift_ratio{route=\"bookings\"} 0.5\n"),
        "{text}"
    );
    assert!(
        text.contains("strangle_requests_refused_total{route=\"_default\",status=\"400\"} 1\n"),
        "{text}"
    );
    assert_eq!(proxy.status()["refused_unmatched"]["400"], 1);
    let mut child = Command::new(tool("promtool"))
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success() && said.trim().is_empty(),
        "promtool: {said}"
    );
}

#[test]
fn a_real_prometheus_scrapes_the_counts_and_runs_every_grafana_query() {
    let (legacy, new) = (Backend::start("legacy"), Backend::start("new"));
    let proxy = Proxy::start(&split_config(&legacy, &new, "100%", "none"));
    let mut c = proxy.client();
    for _ in 0..37 {
        assert_eq!(c.get("/bookings/1", &[]).unwrap().status, 200);
    }
    let dir = tempfile::tempdir().unwrap();
    let web = free_port();
    std::fs::write(
        dir.path().join("prometheus.yml"),
        format!(
            "global:\n  scrape_interval: 1s\nscrape_configs:\n  - job_name: strangle\n    static_configs:\n      - targets: ['127.0.0.1:{}']\n",
            proxy.admin_port
        ),
    )
    .unwrap();
    let mut prometheus = Command::new(tool("prometheus"))
        .arg(format!(
            "--config.file={}",
            dir.path().join("prometheus.yml").display()
        ))
        .arg(format!(
            "--storage.tsdb.path={}",
            dir.path().join("data").display()
        ))
        .arg(format!("--web.listen-address=127.0.0.1:{web}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let query = "/api/v1/query?query=sum(strangle_requests_total%7Broute%3D%22bookings%22%2Cside%3D%22new%22%2Cclass%3D%222xx%22%7D)";
    let value = wait_for(
        Duration::from_secs(30),
        "Prometheus to see the metric",
        || {
            let r = Client::try_connect(web).ok()?.get(query, &[]).ok()?;
            let v: serde_json::Value = serde_json::from_slice(&r.body).unwrap_or_default();
            v["data"]["result"][0]["value"][1]
                .as_str()
                .map(str::to_string)
        },
    );
    // Every query of the Grafana dashboard names metrics `/metrics` has, and Prometheus runs
    // it (the dashboard's variables filled in as Grafana would).
    let exposition = proxy.admin("GET", "/metrics", b"").text();
    let failures: Vec<String> = grafana_queries()
        .into_iter()
        .filter_map(|expr| {
            for name in metric_names(&expr) {
                let present = exposition.lines().any(|l| {
                    l.strip_prefix(&name)
                        .is_some_and(|rest| rest.starts_with(' ') || rest.starts_with('{'))
                });
                if !present {
                    return Some(format!("{expr}: no {name} in /metrics"));
                }
            }
            let promql = expr
                .replace("$__rate_interval", "1m")
                .replace("$route", ".*");
            let q: String = form_urlencoded::Serializer::new(String::new())
                .append_pair("query", &promql)
                .finish();
            let r = Client::try_connect(web)
                .and_then(|mut c| c.get(&format!("/api/v1/query?{q}"), &[]))
                .map(|r| r.text())
                .unwrap_or_default();
            (!r.contains("\"status\":\"success\"")).then(|| format!("{promql}: {r}"))
        })
        .collect();
    let _ = prometheus.kill();
    let _ = prometheus.wait();
    assert_eq!(value, "37");
    assert!(failures.is_empty(), "{failures:#?}");
}

/// Every `expr` in deploy/grafana/strangle.json (panels and variables).
fn grafana_queries() -> Vec<String> {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/grafana/strangle.json");
    let dashboard: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let mut exprs: Vec<String> = dashboard["panels"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|p| p["targets"].as_array().unwrap().iter())
        .map(|t| t["expr"].as_str().unwrap().to_string())
        .collect();
    assert!(exprs.len() >= 10, "{exprs:?}");
    for v in dashboard["templating"]["list"].as_array().unwrap() {
        if let Some(q) = v["query"]["query"].as_str() {
            // `label_values(METRIC, LABEL)` is Grafana's, not PromQL: its metric is checked.
            let metric = q
                .trim_start_matches("label_values(")
                .split(',')
                .next()
                .unwrap();
            exprs.push(metric.to_string());
        }
    }
    exprs
}

/// The `strangle_` metric names in a query (a histogram's `_bucket` series included as named).
fn metric_names(expr: &str) -> Vec<String> {
    let mut names = Vec::new();
    let mut rest = expr;
    while let Some(at) = rest.find("strangle_") {
        let name: String = rest[at..]
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect();
        rest = &rest[at + name.len()..];
        names.push(name);
    }
    names
}

#[test]
fn a_config_of_20000_routes_stays_scrapeable() {
    // Before, every route had 73 series with no traffic at all (a 50,000-route config made a
    // 280 MB scrape). Series for a route's side appear with its first request there.
    let (legacy, new) = (Backend::start("legacy"), Backend::start("new"));
    let mut config = Config::new()
        .default("legacy")
        .upstream("legacy", &legacy.addr())
        .upstream("new", &new.addr());
    for i in 0..20_000 {
        config = config.route(&format!("r{i}"), &format!("/r{i}"), |r| {
            r.legacy("legacy").new("new").shift("0%")
        });
    }
    let proxy = Proxy::start(&config.build());
    for _ in 0..5 {
        assert_eq!(get(proxy.port, "/r7", &[]).status, 200);
    }
    let start = Instant::now();
    let metrics = get(proxy.admin_port, "/metrics", &[]).text();
    let took = start.elapsed();
    // One shift ratio line per route (about 45 bytes each) and the series of the one route
    // and side that had traffic.
    assert!(metrics.len() < 2_000_000, "{} bytes", metrics.len());
    assert!(took < Duration::from_secs(10), "{took:?}");
    assert!(
        metrics.contains("strangle_requests_total{route=\"r7\",side=\"legacy\",class=\"2xx\"} 5\n")
    );
    assert!(
        !metrics.contains("route=\"r8\",side="),
        "a series for a route without traffic"
    );
    assert!(!metrics.contains("route=\"r7\",side=\"new\""));
    assert!(metrics.contains("strangle_route_shift_ratio{route=\"r19999\"} 0\n"));
}
