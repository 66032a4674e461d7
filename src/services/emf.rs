//! The EMF reporter: every `[telemetry.emf] interval`, the traffic of each route and side since
//! the last report, as CloudWatch Embedded Metric Format lines (`telemetry::emf`).
//!
//! It reads the counters the request path keeps anyway (`stats`), so EMF costs the request
//! path nothing. Lines bound for where the access log goes are queued on the access log's
//! writer, so the two never interleave on stdout; elsewhere EMF has a writer of its own with
//! the same guarantees (never blocks, bounded, whole lines, reopened after a reload).

use std::collections::HashMap;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Instant, SystemTime};

use async_trait::async_trait;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;

use crate::config::{AccessLog, Emf};
use crate::state::Live;
use crate::stats::refused::RefusedTotals;
use crate::stats::{Totals, TotalsByRoute, DEFAULT_ROUTE};
use crate::telemetry::emf::{write_lines, Point};
use crate::telemetry::AccessLogger;

pub struct EmfReporter {
    live: Arc<Live>,
    access: Arc<AccessLogger>,
    state: Mutex<Interval>,
}

/// The interval being counted: the totals it started from (`None` while EMF is off) and when.
struct Interval {
    start: Option<Start>,
    since: Instant,
}

/// The counters at the start of an interval: each route side's, and each route's refusals.
#[derive(Clone, Default)]
struct Start {
    totals: TotalsByRoute,
    refused: HashMap<String, RefusedTotals>,
}

impl Start {
    fn now(registry: &crate::stats::Registry) -> Start {
        Start {
            totals: registry.totals(),
            refused: registry.refused().into_iter().collect(),
        }
    }
}

impl EmfReporter {
    pub fn new(live: Arc<Live>, access: Arc<AccessLogger>) -> EmfReporter {
        // The counters start at zero with the process: the first interval counts from there.
        let on = live.load().config.telemetry.emf.is_some();
        EmfReporter {
            live,
            access,
            state: Mutex::new(Interval {
                start: on.then(Start::default),
                since: Instant::now(),
            }),
        }
    }

    /// When the next report is due: `None` while EMF is off. A reload that turns EMF on starts
    /// the first interval; one that turns it off forgets the current one.
    fn due(&self) -> Option<Instant> {
        let snap = self.live.load();
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        match (&snap.config.telemetry.emf, &state.start) {
            (None, _) => {
                state.start = None;
                None
            }
            (Some(_), None) => {
                state.start = Some(Start::now(&self.live.registry));
                state.since = Instant::now();
                snap.config
                    .telemetry
                    .emf
                    .as_ref()
                    .map(|e| state.since + e.interval)
            }
            (Some(e), Some(_)) => Some(state.since + e.interval),
        }
    }

    /// Writes the lines of the interval so far and starts the next one. Called when an
    /// interval is over, and once more at exit so the last one is not lost.
    pub fn report(&self) {
        let snap = self.live.load();
        let Some(emf) = &snap.config.telemetry.emf else {
            return;
        };
        // Totals taken under the lock: two reports at once (the last interval at exit) count
        // each request once.
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        let now = Start::now(&self.live.registry);
        let Some(start) = state.start.replace(now.clone()) else {
            state.since = Instant::now();
            return;
        };
        let length = std::mem::replace(&mut state.since, Instant::now()).elapsed();
        drop(state);

        let (totals, refused) = (&now.totals, &now.refused);
        let zero = [Totals::default(); 2];
        let delta = |id: &str| {
            let (now, then) = (
                totals.get(id).unwrap_or(&zero),
                start.totals.get(id).unwrap_or(&zero),
            );
            [now[0].since(&then[0]), now[1].since(&then[1])]
        };
        let mut sides = Vec::new();
        for r in &snap.config.routes {
            let [legacy, new] = delta(&r.id);
            // A configured side reports even when idle (a zero an alarm can see); a side
            // removed by a reload still reports the traffic it had.
            for (name, has, t) in [
                ("legacy", r.legacy.is_some(), legacy),
                ("new", r.new.is_some(), new),
            ] {
                if has || t.requests() > 0 {
                    sides.push((r.id.as_str(), name, t));
                }
            }
        }
        // A route a reload removed (or renamed) still reports what it served this interval.
        let mut gone: Vec<&str> = totals
            .keys()
            .map(String::as_str)
            .filter(|id| *id != DEFAULT_ROUTE && !snap.config.routes.iter().any(|r| r.id == *id))
            .collect();
        gone.sort_unstable();
        for id in gone {
            let [legacy, new] = delta(id);
            for (name, t) in [("legacy", legacy), ("new", new)] {
                if t.requests() > 0 {
                    sides.push((id, name, t));
                }
            }
        }
        let [default, _] = delta(DEFAULT_ROUTE);
        if snap.config.server.default.is_some() || default.requests() > 0 {
            sides.push((DEFAULT_ROUTE, "default", default));
        }
        let mut points: Vec<Point<'_>> = sides
            .iter()
            .map(|(route, side, t)| point(route, side, t))
            .collect();
        // What each route (and `_default`, the unmatched) answered itself, in intervals when
        // it did: as side `refused`, with no latency.
        let mut refusing: Vec<(&str, RefusedTotals)> = refused
            .iter()
            .map(|(id, t)| {
                let then = start.refused.get(id).copied().unwrap_or_default();
                (id.as_str(), t.since(&then))
            })
            .filter(|(_, t)| t.total() > 0)
            .collect();
        refusing.sort_by(|a, b| a.0.cmp(b.0));
        points.extend(refusing.iter().map(|(route, t)| Point {
            route,
            side: "refused",
            requests: t.total(),
            status_4xx: t.class(4),
            status_5xx: t.class(5),
            p50_ms: None,
            p99_ms: None,
        }));
        let mut out = Vec::with_capacity(points.len() * 512);
        write_lines(
            &emf.namespace,
            epoch_ms(SystemTime::now()),
            length,
            &points,
            &mut out,
        );
        self.live.emf_lines.fetch_add(points.len() as u64, Relaxed);
        if !self.writer(emf, &snap.config.log.access).push_lines(&out) {
            self.live
                .emf_dropped
                .fetch_add(points.len() as u64, Relaxed);
        }
    }

    /// The access log's writer when EMF goes where it goes, EMF's own otherwise.
    /// `access`: the access log's target in the same snapshot as `emf`.
    fn writer(&self, emf: &Emf, access: &AccessLog) -> &AccessLogger {
        if let Some(log) = self.live.access_log.get() {
            if *access == emf.output && *access != AccessLog::Off {
                return log;
            }
        }
        let own = self
            .live
            .emf_out
            .get_or_init(|| Arc::new(AccessLogger::labelled("EMF output", emf.output.clone())));
        // A no-op for the writer unless the target changed (or the file was renamed away).
        own.reopen(emf.output.clone());
        own
    }

    /// At exit: the last interval's lines, then both writers flushed (each bounded).
    pub fn flush(&self) {
        self.report();
        if let Some(own) = self.live.emf_out.get() {
            own.flush();
        }
        self.access.flush();
    }
}

fn point<'a>(route: &'a str, side: &'a str, t: &Totals) -> Point<'a> {
    Point {
        route,
        side,
        requests: t.requests(),
        status_4xx: t.by_class[3],
        status_5xx: t.by_class[4],
        p50_ms: t.quantile_ms(0.5),
        p99_ms: t.quantile_ms(0.99),
    }
}

fn epoch_ms(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Runs the reporter on the interval of whatever config is live.
pub struct EmfService {
    pub reporter: Arc<EmfReporter>,
}

#[async_trait]
impl BackgroundService for EmfService {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let mut installed = self.reporter.live.installed();
        loop {
            let due = self.reporter.due();
            if due.is_some_and(|d| d <= Instant::now()) {
                self.reporter.report();
                continue;
            }
            // The last interval is reported by the exit (`flush`), after the drain.
            if !super::wait_until(due, &mut installed, &mut shutdown).await {
                return;
            }
        }
    }
}
