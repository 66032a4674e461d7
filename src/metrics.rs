//! `GET /metrics`: the Prometheus text exposition of strangle's counters. Label values are
//! route ids and upstream names, which config validation restricts to `[A-Za-z0-9._-]`, so
//! they need no escaping; the raw path never becomes a label.

use std::fmt::Write as _;
use std::sync::atomic::Ordering::Relaxed;

use crate::state::Live;
use crate::stats::{self, Totals, BUCKETS_MS, DEFAULT_ROUTE};

fn header(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

/// Renders every metric.
pub fn render(live: &Live, access_log_dropped: u64) -> String {
    let snap = live.load();
    let mut totals: Vec<(String, [Totals; 2])> = live.registry.totals().into_iter().collect();
    totals.sort_by(|a, b| a.0.cmp(&b.0));
    // (route, side label, totals) for every side that exists.
    let mut series: Vec<(&str, &str, &Totals)> = Vec::new();
    // Only sides that have seen traffic: a config of 50,000 routes must stay scrapeable, and
    // a series appears with a side's first request.
    let seen = |t: &Totals| t.requests() > 0 || t.in_flight != 0;
    for (id, [legacy, new]) in &totals {
        if id == DEFAULT_ROUTE {
            if seen(legacy) {
                series.push((id, "default", legacy));
            }
        } else {
            if seen(legacy) {
                series.push((id, "legacy", legacy));
            }
            if seen(new) {
                series.push((id, "new", new));
            }
        }
    }
    let mut out = String::with_capacity(4096 + series.len() * 2048);

    header(
        &mut out,
        "strangle_requests_total",
        "counter",
        "Requests served, by route, side and status class.",
    );
    for (route, side, t) in &series {
        for (class, n) in stats::CLASSES.iter().zip(t.by_class) {
            let _ = writeln!(out, "strangle_requests_total{{route=\"{route}\",side=\"{side}\",class=\"{class}\"}} {n}");
        }
    }

    header(
        &mut out,
        "strangle_request_duration_seconds",
        "histogram",
        "Time from the request head to the end of the response, by route and side.",
    );
    for (route, side, t) in &series {
        let mut cumulative = 0;
        for (i, bound) in BUCKETS_MS.iter().enumerate() {
            cumulative += t.buckets[i];
            let le = bound / 1000.0;
            let _ = writeln!(
                out,
                "strangle_request_duration_seconds_bucket{{route=\"{route}\",side=\"{side}\",le=\"{le}\"}} {cumulative}"
            );
        }
        let count = t.requests();
        let _ = writeln!(
            out,
            "strangle_request_duration_seconds_bucket{{route=\"{route}\",side=\"{side}\",le=\"+Inf\"}} {count}"
        );
        let _ = writeln!(
            out,
            "strangle_request_duration_seconds_sum{{route=\"{route}\",side=\"{side}\"}} {}",
            t.sum_us as f64 / 1e6
        );
        let _ = writeln!(
            out,
            "strangle_request_duration_seconds_count{{route=\"{route}\",side=\"{side}\"}} {count}"
        );
    }

    header(
        &mut out,
        "strangle_requests_in_flight",
        "gauge",
        "Requests being served now, by route and side.",
    );
    for (route, side, t) in &series {
        let _ = writeln!(
            out,
            "strangle_requests_in_flight{{route=\"{route}\",side=\"{side}\"}} {}",
            t.in_flight
        );
    }

    header(
        &mut out,
        "strangle_route_shift_ratio",
        "gauge",
        "The configured share of users sent to the new side, 0 to 1.",
    );
    for r in &snap.config.routes {
        let _ = writeln!(
            out,
            "strangle_route_shift_ratio{{route=\"{}\"}} {}",
            r.id,
            f64::from(r.shift.bp()) / 10_000.0
        );
    }

    type Read = fn(&crate::limits::RateLimiter) -> u64;
    let rate_limit_series: [(&str, &str, &str, Read); 3] = [
        (
            "strangle_rate_limit_keys",
            "gauge",
            "Rate-limit buckets held, by route (capped by the route's `max-keys`).",
            |l| l.keys() as u64,
        ),
        (
            "strangle_rate_limit_evictions_total",
            "counter",
            "Rate-limit buckets evicted (refilled ones only) to stay under `max-keys`, by route (since the limit was last changed).",
            |l| l.evicted.load(Relaxed),
        ),
        (
            "strangle_rate_limit_overflow_total",
            "counter",
            "Requests of new keys that found all of the route's buckets in use (past `max-keys`) and shared an overflow bucket, by route.",
            |l| l.overflowed.load(Relaxed),
        ),
    ];
    for (name, kind, help, read) in rate_limit_series {
        header(&mut out, name, kind, help);
        for r in &snap.routes {
            if let Some(l) = &r.rate_limit {
                let _ = writeln!(out, "{name}{{route=\"{}\"}} {}", r.id, read(l));
            }
        }
    }

    header(
        &mut out,
        "strangle_upstream_in_flight",
        "gauge",
        "Requests being served now, by upstream.",
    );
    for (name, n) in live.registry.upstream_in_flight() {
        let _ = writeln!(
            out,
            "strangle_upstream_in_flight{{upstream=\"{name}\"}} {n}"
        );
    }

    let mut health: Vec<(&String, Vec<crate::upstream::AddressStatus>)> = snap
        .upstreams
        .iter()
        .filter_map(|(name, u)| match &u.kind {
            crate::upstream::Kind::Http(h) => Some((name, h.health())),
            _ => None,
        })
        .collect();
    health.sort_by(|a, b| a.0.cmp(b.0));
    type Field = fn(&crate::upstream::AddressStatus) -> u64;
    let health_series: [(&str, &str, &str, Field); 3] = [
        (
            "strangle_upstream_address_up",
            "gauge",
            "1 if the address is in rotation: healthy by the active check and not taken out by consecutive failed requests.",
            |a| u64::from(a.up),
        ),
        (
            "strangle_upstream_address_ejected",
            "gauge",
            "1 if consecutive failed requests (max-fails) took the address out of rotation for fail-timeout.",
            |a| u64::from(a.ejected),
        ),
        (
            "strangle_upstream_address_last_change_seconds",
            "gauge",
            "When the address last went in or out of rotation (unix seconds).",
            |a| a.since,
        ),
    ];
    for (name, kind, help, field) in health_series {
        header(&mut out, name, kind, help);
        for (upstream, addresses) in &health {
            for a in addresses {
                let _ = writeln!(
                    out,
                    "{name}{{upstream=\"{upstream}\",address=\"{}\"}} {}",
                    a.address,
                    field(a)
                );
            }
        }
    }

    header(
        &mut out,
        "strangle_upstream_unresolved_addresses",
        "gauge",
        "Configured addresses whose name does not resolve now (looked up again on every health check; a name that stops resolving keeps its last addresses).",
    );
    let mut unresolved: Vec<(&String, usize)> = snap
        .upstreams
        .iter()
        .filter_map(|(name, u)| match &u.kind {
            crate::upstream::Kind::Http(h) => Some((name, h.unresolved().len())),
            _ => None,
        })
        .collect();
    unresolved.sort();
    for (name, n) in unresolved {
        let _ = writeln!(
            out,
            "strangle_upstream_unresolved_addresses{{upstream=\"{name}\"}} {n}"
        );
    }

    header(
        &mut out,
        "strangle_transport_lost_streams_total",
        "counter",
        "Client connections closed after a request because Pingora handed back a stream the transport did not make (0 unless a Pingora upgrade changed that).",
    );
    let _ = writeln!(
        out,
        "strangle_transport_lost_streams_total {}",
        live.lifecycle.lost_streams()
    );

    tls(
        &mut out,
        live.registry.tls.get().map_or(&[][..], Vec::as_slice),
    );

    let (spans, logs) = (&live.registry.spans, &live.registry.logs);
    for (name, what, exported, dropped) in [
        ("spans", "Spans", &spans.exported, &spans.dropped),
        (
            "logs",
            "Access-log records (exported as OTLP logs with `logs = true`)",
            &logs.exported,
            &logs.dropped,
        ),
    ] {
        let exported_name = format!("strangle_{name}_exported_total");
        let help = format!("{what} the OTLP collector accepted.");
        header(&mut out, &exported_name, "counter", &help);
        let _ = writeln!(out, "{exported_name} {}", exported.load(Relaxed));
        let dropped_name = format!("strangle_{name}_dropped_total");
        let help = format!("{what} dropped: the export queue was full, or the collector refused them or could not be reached in time.");
        header(&mut out, &dropped_name, "counter", &help);
        let _ = writeln!(out, "{dropped_name} {}", dropped.load(Relaxed));
    }

    header(
        &mut out,
        "strangle_http1_requests_total",
        "counter",
        "HTTP/1 requests by the engine that served them: the fast path (origin-form requests without an upgrade whose head arrived whole, bodies included) or Pingora's proxy (upgrades, absolute-form targets, pipelined or split heads).",
    );
    let (fast, pingora) = live.lifecycle.engines();
    let _ = writeln!(
        out,
        "strangle_http1_requests_total{{engine=\"fast\"}} {fast}\nstrangle_http1_requests_total{{engine=\"pingora\"}} {pingora}"
    );

    header(
        &mut out,
        "strangle_config_reloads_total",
        "counter",
        "Successful config reloads.",
    );
    let _ = writeln!(
        out,
        "strangle_config_reloads_total {}",
        live.reloads.load(Relaxed)
    );
    header(
        &mut out,
        "strangle_config_reload_failures_total",
        "counter",
        "Config reloads refused because the file was invalid; the last good config kept serving.",
    );
    let _ = writeln!(
        out,
        "strangle_config_reload_failures_total {}",
        live.reload_failures.load(Relaxed)
    );
    header(
        &mut out,
        "strangle_config_last_reload_successful",
        "gauge",
        "1 if the config file as it is now is the one being served, 0 if its last reload failed.",
    );
    let _ = writeln!(
        out,
        "strangle_config_last_reload_successful {}",
        u8::from(live.last_failure().is_none())
    );
    let running = live.reload_running_for();
    header(
        &mut out,
        "strangle_config_reload_in_progress",
        "gauge",
        "1 while a config reload is running.",
    );
    let _ = writeln!(
        out,
        "strangle_config_reload_in_progress {}",
        u8::from(running.is_some())
    );
    header(
        &mut out,
        "strangle_config_reload_running_seconds",
        "gauge",
        "How long the config reload now running has taken (0 when none is); a reload gives up reading after 10 s.",
    );
    let _ = writeln!(
        out,
        "strangle_config_reload_running_seconds {:.3}",
        running.map_or(0.0, |d| d.as_secs_f64())
    );
    header(
        &mut out,
        "strangle_config_reads_abandoned",
        "gauge",
        "Config file reads that outlived the reload timeout and have still not returned (a hung filesystem).",
    );
    let _ = writeln!(
        out,
        "strangle_config_reads_abandoned {}",
        live.abandoned_reads.load(Relaxed)
    );
    header(
        &mut out,
        "strangle_access_log_dropped_total",
        "counter",
        "Access-log lines dropped: the writer fell behind, or the log could not be opened or written.",
    );
    let _ = writeln!(
        out,
        "strangle_access_log_dropped_total {access_log_dropped}"
    );
    header(
        &mut out,
        "strangle_series_sides_left_out_total",
        "counter",
        "Route-side intervals that got no time-series point because the series already hold the most route sides they keep.",
    );
    let _ = writeln!(
        out,
        "strangle_series_sides_left_out_total {}",
        live.registry.series_left_out()
    );
    header(
        &mut out,
        "strangle_shadow_requests_total",
        "counter",
        "Shadow copies by route and outcome: matched or mismatched (compared with the client's answer), error (the copy failed), dropped (the queue was full).",
    );
    for (route, r) in snap.shadows.all() {
        for (outcome, n) in [
            ("matched", &r.matched),
            ("mismatched", &r.mismatched),
            ("error", &r.errors),
            ("dropped", &r.dropped),
        ] {
            let n = n.load(Relaxed);
            let _ = writeln!(
                out,
                "strangle_shadow_requests_total{{route=\"{route}\",outcome=\"{outcome}\"}} {n}"
            );
        }
    }
    header(
        &mut out,
        "strangle_requests_refused_total",
        "counter",
        "Requests strangle answered itself before any side (a malformed head, a missing or bad token, a rate limit, an address not allowed, no route; a route's redirect or fixed answer), by route (_default: matched no route) and status (codes it refuses with one by one, others by class).",
    );
    for (route, t) in live.registry.refused() {
        for (status, n) in t.labelled() {
            let _ = writeln!(
                out,
                "strangle_requests_refused_total{{route=\"{route}\",status=\"{status}\"}} {n}"
            );
        }
    }
    header(
        &mut out,
        "strangle_fallbacks_total",
        "counter",
        "Requests the new side failed before answering (connect error, no response, a Lambda or signed-endpoint failure, a listed 5xx) that the legacy side then served, by route (`fallback = true`).",
    );
    for (route, live_route) in snap.config.routes.iter().zip(&snap.routes) {
        if route.fallback.is_some() {
            let n = live_route.stats.fallbacks.load(Relaxed);
            let _ = writeln!(
                out,
                "strangle_fallbacks_total{{route=\"{}\"}} {n}",
                route.id
            );
        }
    }
    header(
        &mut out,
        "strangle_capture_records_total",
        "counter",
        "Requests kept in capture spools (capture = { ... }) by outcome: written, dropped (the writer's queue was full) or failed (the spool could not be written).",
    );
    let (mut written, mut dropped, mut failed) = (0, 0, 0);
    for spool in snap.captures.all() {
        written += spool.written.load(Relaxed);
        dropped += spool.dropped.load(Relaxed);
        failed += spool.failed.load(Relaxed);
    }
    for (outcome, n) in [
        ("written", written),
        ("dropped", dropped),
        ("failed", failed),
    ] {
        let _ = writeln!(
            out,
            "strangle_capture_records_total{{outcome=\"{outcome}\"}} {n}"
        );
    }
    header(
        &mut out,
        "strangle_rollout_step",
        "gauge",
        "A progressive rollout's step (1-based; 0 below the first), by route and phase (running, paused, done, rolled-back, aborted).",
    );
    for route in &snap.config.routes {
        if let Some(rollout) = &route.rollout {
            let st = live.rollouts.status(&route.id, rollout, route.shift);
            let _ = writeln!(
                out,
                "strangle_rollout_step{{route=\"{}\",phase=\"{}\"}} {}",
                route.id, st.phase, st.step
            );
        }
    }
    header(
        &mut out,
        "strangle_emf_lines_total",
        "counter",
        "CloudWatch EMF lines made ([telemetry.emf]); written through the access log's writer when both go to the same place.",
    );
    let _ = writeln!(
        out,
        "strangle_emf_lines_total {}",
        live.emf_lines.load(Relaxed)
    );
    header(
        &mut out,
        "strangle_emf_dropped_total",
        "counter",
        "EMF lines dropped: a writer's queue was full, or EMF's own file refused them (lines written through the access log's writer that its target refuses count in strangle_access_log_dropped_total).",
    );
    let _ = writeln!(
        out,
        "strangle_emf_dropped_total {}",
        live.emf_dropped.load(Relaxed) + live.emf_out.get().map_or(0, |w| w.dropped())
    );
    out
}

/// The TLS listeners': handshakes that failed or timed out, certificate reloads, and when the
/// certificates in force expire. Nothing when there is no TLS listener.
fn tls(out: &mut String, endpoints: &[std::sync::Arc<crate::tls::Endpoint>]) {
    if endpoints.is_empty() {
        return;
    }
    // (name, help, label, [(label value, count)]).
    type Count = fn(&crate::tls::Endpoint) -> u64;
    type Family = (
        &'static str,
        &'static str,
        &'static str,
        [(&'static str, Count); 2],
    );
    let families: [Family; 2] = [
        (
            "strangle_tls_handshake_failures_total",
            "TLS handshakes that failed (`reason=\"error\"`: no common protocol, version or cipher, a bad message, a closed connection) or took longer than `handshake-timeout` (`reason=\"timeout\"`).",
            "reason",
            [
                ("error", |e| e.handshake_failures.load(Relaxed)),
                ("timeout", |e| e.handshake_timeouts.load(Relaxed)),
            ],
        ),
        (
            "strangle_tls_certificate_reloads_total",
            "Certificate pairs re-read after their files changed: loaded (`result=\"ok\"`), or refused and the pair in force kept (`result=\"failed\"`: unreadable, mismatched, expired).",
            "result",
            [
                ("ok", |e| e.reloads.load(Relaxed)),
                ("failed", |e| e.reload_failures.load(Relaxed)),
            ],
        ),
    ];
    for (name, help, label, values) in families {
        header(out, name, "counter", help);
        for e in endpoints {
            for (value, count) in &values {
                let _ = writeln!(
                    out,
                    "{name}{{listener=\"{}\",{label}=\"{value}\"}} {}",
                    e.label,
                    count(e)
                );
            }
        }
    }
    header(
        out,
        "strangle_tls_certificate_expiry_timestamp_seconds",
        "gauge",
        "When each certificate in force expires (Unix time), by listener and certificate file.",
    );
    for e in endpoints {
        for (file, _, not_after) in e.in_force() {
            let file = file
                .replace('\\', "\\\\")
                .replace('"', "\\\"")
                .replace('\n', "\\n");
            let _ = writeln!(
                out,
                "strangle_tls_certificate_expiry_timestamp_seconds{{listener=\"{}\",cert=\"{file}\"}} {not_after}",
                e.label
            );
        }
    }
}
