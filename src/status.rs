//! The migration at a glance: the `GET /status` document (built by the proxy, read by
//! `strangle status`) and its rendering as a table a person reads.

use std::fmt::Write as _;
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};

use crate::state::Live;
use crate::stats::{self, Totals, DEFAULT_ROUTE};

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Status {
    pub config: ConfigStatus,
    pub uptime_s: u64,
    /// Share of all requests (every route plus unmatched ones) served by new sides.
    pub new_share: f64,
    pub requests: u64,
    /// The same over the recent window.
    pub recent: Window,
    pub routes: Vec<RouteStatus>,
    /// Requests that matched no route and went to `[server] default`.
    pub default: Option<DefaultStatus>,
    /// Requests that matched no route and that strangle answered itself (a malformed head,
    /// 404 with no default), by status.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub refused_unmatched: std::collections::BTreeMap<String, u64>,
    /// Each upstream's addresses and their health (HTTP upstreams).
    #[serde(default)]
    pub upstreams: std::collections::BTreeMap<String, UpstreamStatus>,
    /// Per day, the share of requests new sides served (kept across restarts).
    #[serde(default)]
    pub burn_down: Option<crate::stats::burndown::Summary>,
    /// With `[admin.fleet]`: who leads the fleet's rollouts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fleet: Option<crate::rollout::FleetView>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct UpstreamStatus {
    pub kind: String,
    pub addresses: Vec<crate::upstream::AddressStatus>,
    /// Configured names that do not resolve now (looked up again on every health check).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub unresolved: Vec<crate::upstream::dns::Unresolved>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ConfigStatus {
    pub path: String,
    pub loaded_at: String,
    pub reloads: u64,
    pub reload_failures: u64,
    pub last_reload_error: Option<ReloadError>,
    /// Seconds the reload now running has taken, if one is (a stuck one shows here).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reload_running_s: Option<f64>,
    /// Config reads that outlived the reload timeout and have still not returned.
    #[serde(default)]
    pub abandoned_reads: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ReloadError {
    pub at: String,
    pub error: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Window {
    pub seconds: u64,
    pub requests: u64,
    pub new_share: f64,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct RouteStatus {
    pub id: String,
    pub path: String,
    #[serde(rename = "match")]
    pub match_: String,
    pub methods: Option<Vec<String>>,
    pub legacy: Option<String>,
    pub new: Option<String>,
    pub shift: String,
    pub shift_bp: u16,
    pub sticky: String,
    pub requests: u64,
    /// Share of this route's requests the new side actually served.
    pub new_share: f64,
    pub sides: Sides,
    pub recent: Sides,
    /// Shadow traffic's results, on a route that shadows.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shadow: Option<crate::shadow::ShadowStatus>,
    /// What the config file says, when the shift in force is another (a rollback the file
    /// could not take).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shift_in_file: Option<String>,
    /// Requests the new side failed that legacy then served, on a route with `fallback`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fallbacks: Option<u64>,
    /// Requests strangle answered itself on this route before any side (a missing token, a
    /// rate limit, the route's own answer), by status (`strangle_requests_refused_total`).
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub refused: std::collections::BTreeMap<String, u64>,
    /// The raw counters a rollout is judged on, on a route that has one (what a fleet's leader
    /// sums over the replicas).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub counters: Option<crate::rollout::Counters>,
    /// A progressive rollout's state, on a route that has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollout: Option<crate::rollout::RolloutStatus>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Sides {
    pub legacy: SideStatus,
    pub new: SideStatus,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct DefaultStatus {
    pub upstream: Option<String>,
    pub stats: SideStatus,
    pub recent: SideStatus,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
pub struct SideStatus {
    pub requests: u64,
    pub errors: u64,
    pub error_rate: f64,
    pub by_class: std::collections::BTreeMap<String, u64>,
    pub p50_ms: Option<f64>,
    pub p90_ms: Option<f64>,
    pub p99_ms: Option<f64>,
    pub in_flight: i64,
}

impl SideStatus {
    fn of(t: &Totals) -> SideStatus {
        let round = |v: Option<f64>| v.map(|v| (v * 100.0).round() / 100.0);
        SideStatus {
            requests: t.requests(),
            errors: t.errors(),
            error_rate: t.error_rate(),
            by_class: stats::CLASSES
                .iter()
                .zip(t.by_class)
                .filter(|(_, n)| *n > 0)
                .map(|(c, n)| (c.to_string(), n))
                .collect(),
            p50_ms: round(t.quantile_ms(0.50)),
            p90_ms: round(t.quantile_ms(0.90)),
            p99_ms: round(t.quantile_ms(0.99)),
            in_flight: t.in_flight,
        }
    }
}

fn rfc3339(t: SystemTime) -> String {
    humantime::format_rfc3339_seconds(t).to_string()
}

/// Builds the status document from the live state.
pub fn build(live: &Live) -> Status {
    let snap = live.load();
    let totals = live.registry.totals();
    let window = live.registry.window_start();
    let zero = [Totals::default(); 2];
    let pair = |id: &str| totals.get(id).copied().unwrap_or(zero);
    let recent_pair = |id: &str| {
        let now = pair(id);
        match &window {
            Some((_, start)) => {
                let then = start.get(id).copied().unwrap_or(zero);
                [now[0].since(&then[0]), now[1].since(&then[1])]
            }
            None => now,
        }
    };
    let (mut all, mut all_new, mut recent_all, mut recent_new) = (0u64, 0u64, 0u64, 0u64);
    let overrides = live.overrides.list();
    let routes = snap
        .config
        .routes
        .iter()
        .zip(&snap.routes)
        .enumerate()
        .map(|(i, (r, live_route))| {
            let [l, n] = pair(&r.id);
            let [rl, rn] = recent_pair(&r.id);
            all += l.requests() + n.requests();
            all_new += n.requests();
            recent_all += rl.requests() + rn.requests();
            recent_new += rn.requests();
            RouteStatus {
                id: r.id.clone(),
                path: r.path.clone(),
                match_: match r.kind {
                    crate::routing::PathMatch::Exact => "exact".into(),
                    crate::routing::PathMatch::Prefix => "prefix".into(),
                },
                methods: r
                    .methods
                    .as_ref()
                    .map(|m| m.iter().map(|m| m.to_string()).collect()),
                legacy: r.legacy.clone(),
                new: r.new.clone(),
                shift: r.shift.to_string(),
                shift_bp: r.shift.bp(),
                sticky: r.sticky.to_string(),
                requests: l.requests() + n.requests(),
                new_share: stats::ratio(n.requests(), l.requests() + n.requests()),
                sides: Sides {
                    legacy: SideStatus::of(&l),
                    new: SideStatus::of(&n),
                },
                recent: Sides {
                    legacy: SideStatus::of(&rl),
                    new: SideStatus::of(&rn),
                },
                shadow: r
                    .shadow
                    .as_ref()
                    .map(|s| snap.shadows.route(&r.id).status(s)),
                shift_in_file: overrides
                    .iter()
                    .find(|(id, _, _)| *id == r.id)
                    .map(|(_, file, _)| file.to_string()),
                fallbacks: r.fallback.as_ref().map(|_| {
                    let n = &live_route.stats.fallbacks;
                    n.load(std::sync::atomic::Ordering::Relaxed)
                }),
                refused: live_route.stats.refused.totals().by_status(),
                counters: r.rollout.as_ref().map(|_| snap.rollout_counters(i)),
                rollout: r
                    .rollout
                    .as_ref()
                    .map(|ro| live.rollouts.status(&r.id, ro, r.shift)),
            }
        })
        .collect();
    let [d, _] = pair(DEFAULT_ROUTE);
    let [rd, _] = recent_pair(DEFAULT_ROUTE);
    all += d.requests();
    recent_all += rd.requests();
    let default =
        (snap.config.server.default.is_some() || d.requests() > 0).then(|| DefaultStatus {
            upstream: snap.config.server.default.clone(),
            stats: SideStatus::of(&d),
            recent: SideStatus::of(&rd),
        });
    let failure = live.last_failure();
    Status {
        fleet: live.rollouts.fleet(),
        burn_down: live.registry.burn_down(),
        config: ConfigStatus {
            path: live.path.display().to_string(),
            loaded_at: rfc3339(snap.loaded_at),
            reloads: live.reloads.load(std::sync::atomic::Ordering::Relaxed),
            reload_failures: live
                .reload_failures
                .load(std::sync::atomic::Ordering::Relaxed),
            last_reload_error: failure.map(|f| ReloadError {
                at: rfc3339(f.at),
                error: f.error,
            }),
            reload_running_s: live.reload_running_for().map(|d| d.as_secs_f64()),
            abandoned_reads: live
                .abandoned_reads
                .load(std::sync::atomic::Ordering::Relaxed),
        },
        uptime_s: SystemTime::now()
            .duration_since(live.started_at)
            .unwrap_or_default()
            .as_secs(),
        new_share: stats::ratio(all_new, all),
        requests: all,
        recent: Window {
            seconds: window.map_or(0, |(ago, _)| ago.as_secs()),
            requests: recent_all,
            new_share: stats::ratio(recent_new, recent_all),
        },
        routes,
        default,
        refused_unmatched: snap.default_stats.refused.totals().by_status(),
        upstreams: snap
            .upstreams
            .iter()
            .map(|(name, u)| {
                let (kind, addresses, unresolved) = match &u.kind {
                    crate::upstream::Kind::Http(h) => ("http", h.health(), h.unresolved()),
                    crate::upstream::Kind::Lambda(_) => ("lambda", Vec::new(), Vec::new()),
                    crate::upstream::Kind::Signed => ("signed", Vec::new(), Vec::new()),
                };
                let kind = kind.to_string();
                let status = UpstreamStatus {
                    kind,
                    addresses,
                    unresolved,
                };
                (name.clone(), status)
            })
            .collect(),
    }
}

/// Colours, used only on a terminal.
pub struct Paint {
    pub on: bool,
}

impl Paint {
    fn wrap(&self, code: &str, text: &str) -> String {
        if self.on {
            format!("\x1b[{code}m{text}\x1b[0m")
        } else {
            text.to_string()
        }
    }
    fn bold(&self, t: &str) -> String {
        self.wrap("1", t)
    }
    fn dim(&self, t: &str) -> String {
        self.wrap("2", t)
    }
    fn rate(&self, rate: f64, requests: u64) -> String {
        let text = if requests == 0 {
            "-".to_string()
        } else {
            format!("{:.1}%", rate * 100.0)
        };
        match () {
            _ if requests == 0 => text,
            _ if rate >= 0.05 => self.wrap("31", &text),
            _ if rate >= 0.01 => self.wrap("33", &text),
            _ => self.wrap("32", &text),
        }
    }
}

fn pct(share: f64) -> String {
    format!("{:.1}%", share * 100.0)
}

fn latency(s: &SideStatus) -> String {
    match (s.p50_ms, s.p99_ms) {
        (Some(p50), Some(p99)) => format!("{}/{} ms", short(p50), short(p99)),
        _ => "-".to_string(),
    }
}

fn short(ms: f64) -> String {
    if ms >= 100.0 {
        format!("{ms:.0}")
    } else {
        format!("{ms:.1}")
    }
}

fn duration(secs: u64) -> String {
    humantime::format_duration(Duration::from_secs(secs))
        .to_string()
        .replace(' ', "")
}

/// Renders the status as a table.
/// "62% of requests no longer reach the monolith (2026-12-02), up from 40% on 2026-11-02."
pub fn burn_down_line(b: &crate::stats::burndown::Summary) -> String {
    let now = format!(
        "{} of requests no longer reach the monolith ({})",
        pct(b.new_share),
        b.date
    );
    match &b.before {
        None => format!("{now}; no earlier day on record."),
        Some(then) => {
            let how = match b.new_share.partial_cmp(&then.new_share) {
                Some(std::cmp::Ordering::Greater) => "up from",
                Some(std::cmp::Ordering::Less) => "down from",
                _ => "as on",
            };
            format!("{now}, {how} {} on {}.", pct(then.new_share), then.date)
        }
    }
}

pub fn render(s: &Status, paint: &Paint) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{} {}",
        paint.bold(&format!(
            "The new side now serves {} of requests;",
            pct(s.new_share)
        )),
        paint.bold(&format!("the monolith {}.", pct(1.0 - s.new_share)))
    );
    let _ = writeln!(
        out,
        "{}",
        paint.dim(&format!(
            "{} requests in {} since start; last {}: {} requests, {} on the new side",
            s.requests,
            duration(s.uptime_s),
            duration(s.recent.seconds.max(1)),
            s.recent.requests,
            pct(s.recent.new_share)
        ))
    );
    if let Some(b) = &s.burn_down {
        let _ = writeln!(out, "{}", burn_down_line(b));
    }
    let _ = writeln!(out);
    let header = [
        "ROUTE",
        "PATH",
        "LEGACY",
        "NEW",
        "SHIFT",
        "ON NEW",
        "REQUESTS",
        "LEGACY ERR",
        "LEGACY p50/p99",
        "NEW ERR",
        "NEW p50/p99",
    ];
    let mut rows: Vec<[String; 11]> = Vec::new();
    let mut colour_rows: Vec<[String; 11]> = Vec::new();
    for r in &s.routes {
        let plain = [
            r.id.clone(),
            r.path.clone() + if r.match_ == "exact" { " (exact)" } else { "" },
            r.legacy.clone().unwrap_or_else(|| "-".into()),
            r.new.clone().unwrap_or_else(|| "-".into()),
            r.shift.clone(),
            if r.requests == 0 {
                "-".into()
            } else {
                pct(r.new_share)
            },
            r.requests.to_string(),
            Paint { on: false }.rate(r.sides.legacy.error_rate, r.sides.legacy.requests),
            latency(&r.sides.legacy),
            Paint { on: false }.rate(r.sides.new.error_rate, r.sides.new.requests),
            latency(&r.sides.new),
        ];
        let mut coloured = plain.clone();
        coloured[7] = paint.rate(r.sides.legacy.error_rate, r.sides.legacy.requests);
        coloured[9] = paint.rate(r.sides.new.error_rate, r.sides.new.requests);
        rows.push(plain);
        colour_rows.push(coloured);
    }
    if let Some(d) = &s.default {
        let plain = [
            "(unmatched)".to_string(),
            "*".into(),
            d.upstream.clone().unwrap_or_else(|| "(404)".into()),
            "-".into(),
            "-".into(),
            "-".into(),
            d.stats.requests.to_string(),
            Paint { on: false }.rate(d.stats.error_rate, d.stats.requests),
            latency(&d.stats),
            "-".into(),
            "-".into(),
        ];
        let mut coloured = plain.clone();
        coloured[7] = paint.rate(d.stats.error_rate, d.stats.requests);
        rows.push(plain);
        colour_rows.push(coloured);
    }
    let widths: Vec<usize> = (0..11)
        .map(|i| {
            rows.iter()
                .map(|r| r[i].chars().count())
                .chain([header[i].len()])
                .max()
                .unwrap_or(0)
        })
        .collect();
    let line = |cells: &[String], plain: &[String]| {
        let mut l = String::new();
        for i in 0..11 {
            l.push_str(&cells[i]);
            if i < 10 {
                l.push_str(&" ".repeat(widths[i] - plain[i].chars().count() + 2));
            }
        }
        l.trim_end().to_string()
    };
    let head: Vec<String> = header.iter().map(|h| h.to_string()).collect();
    let _ = writeln!(out, "{}", paint.bold(&line(&head, &head)));
    for (plain, coloured) in rows.iter().zip(&colour_rows) {
        let _ = writeln!(out, "{}", line(coloured, plain));
    }
    for (id, sh) in s
        .routes
        .iter()
        .filter_map(|r| Some((&r.id, r.shadow.as_ref()?)))
    {
        let compared = sh.matched + sh.mismatched;
        let _ = writeln!(
            out,
            "shadow {id}: {compared} compared, {} mismatched ({}), {} dropped, {} failed; `strangle diffs {id}` shows them",
            sh.mismatched,
            pct(sh.mismatch_rate),
            sh.dropped,
            sh.errors
        );
    }
    for (id, ro) in s
        .routes
        .iter()
        .filter_map(|r| Some((&r.id, r.rollout.as_ref()?)))
    {
        let gates: Vec<String> = ro
            .gates
            .iter()
            .map(|g| format!("{} {} ({:?})", g.gate, g.value, g.verdict).to_lowercase())
            .collect();
        let _ =
            writeln!(
            out,
            "rollout {id}: {} at {} (step {} of {}){}{}; `strangle rollout {id} status` shows why",
            ro.phase,
            ro.shift,
            ro.step,
            ro.steps.len(),
            ro.next.as_ref().map_or(String::new(), |n| format!(", next {n}")),
            if gates.is_empty() { String::new() } else { format!("; {}", gates.join(", ")) },
        );
    }
    let _ = writeln!(out);
    let _ = write!(
        out,
        "{}",
        paint.dim(&format!(
            "config {} loaded {} ({} reload{}, {} failed)",
            s.config.path,
            s.config.loaded_at,
            s.config.reloads,
            if s.config.reloads == 1 { "" } else { "s" },
            s.config.reload_failures
        ))
    );
    let _ = writeln!(out);
    if let Some(secs) = s.config.reload_running_s.filter(|s| *s >= 1.0) {
        let _ = writeln!(
            out,
            "{}",
            paint.wrap(
                "33",
                &format!("a config reload has been running for {secs:.0} s")
            )
        );
    }
    if s.config.abandoned_reads > 0 {
        let _ = writeln!(
            out,
            "{}",
            paint.wrap(
                "31",
                &format!(
                    "{} config read(s) never returned (a hung filesystem?)",
                    s.config.abandoned_reads
                )
            )
        );
    }
    if let Some(e) = &s.config.last_reload_error {
        let _ = writeln!(
            out,
            "{}",
            paint.wrap(
                "31",
                &format!(
                    "last reload failed at {}; still serving the previous config:",
                    e.at
                )
            )
        );
        for l in e.error.lines() {
            let _ = writeln!(out, "  {l}");
        }
    }
    out
}
