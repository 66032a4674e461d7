//! Per-route, per-side accounting: requests, responses by status class, a latency histogram and
//! in-flight counts. The request path only does relaxed atomic adds on counters owned by its
//! route; nothing is locked. Counters live in a registry keyed by route id so a reload keeps
//! them, and a sampler keeps a ring of past totals so a recent window is a subtraction.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::split::Side;

pub mod burndown;
pub mod refused;
pub mod series;

/// Upper bounds of the latency buckets, in milliseconds; one more bucket holds the rest.
pub const BUCKETS_MS: [f64; 26] = [
    0.5, 1.0, 2.0, 3.0, 5.0, 7.5, 10.0, 15.0, 20.0, 30.0, 50.0, 75.0, 100.0, 150.0, 200.0, 300.0,
    500.0, 750.0, 1000.0, 1500.0, 2000.0, 3000.0, 5000.0, 10000.0, 30000.0, 60000.0,
];
const N_BUCKETS: usize = BUCKETS_MS.len() + 1;

/// Status classes: 1xx..5xx, and "none" for a request that got no response (client gone).
pub const CLASSES: [&str; 6] = ["1xx", "2xx", "3xx", "4xx", "5xx", "none"];

/// The counters of one side of one route. Cache-line aligned so two sides' counters do not
/// share a line between cores.
#[repr(align(64))]
#[derive(Debug, Default)]
pub struct SideStats {
    pub by_class: [AtomicU64; 6],
    pub buckets: [AtomicU64; N_BUCKETS],
    pub sum_us: AtomicU64,
    pub in_flight: AtomicI64,
}

impl SideStats {
    pub fn record(&self, status: u16, elapsed: Duration) {
        let class = match status {
            100..=599 => usize::from(status / 100) - 1,
            _ => 5,
        };
        self.by_class[class].fetch_add(1, Relaxed);
        let ms = elapsed.as_secs_f64() * 1000.0;
        let bucket = BUCKETS_MS
            .iter()
            .position(|&b| ms <= b)
            .unwrap_or(BUCKETS_MS.len());
        self.buckets[bucket].fetch_add(1, Relaxed);
        self.sum_us.fetch_add(elapsed.as_micros() as u64, Relaxed);
    }

    pub fn totals(&self) -> Totals {
        Totals {
            by_class: std::array::from_fn(|i| self.by_class[i].load(Relaxed)),
            buckets: std::array::from_fn(|i| self.buckets[i].load(Relaxed)),
            sum_us: self.sum_us.load(Relaxed),
            in_flight: self.in_flight.load(Relaxed),
        }
    }
}

/// A side's counters at one moment; subtracting two gives the traffic in between.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Totals {
    pub by_class: [u64; 6],
    pub buckets: [u64; N_BUCKETS],
    pub sum_us: u64,
    pub in_flight: i64,
}

impl Default for Totals {
    fn default() -> Totals {
        Totals {
            by_class: [0; 6],
            buckets: [0; N_BUCKETS],
            sum_us: 0,
            in_flight: 0,
        }
    }
}

impl Totals {
    pub fn requests(&self) -> u64 {
        self.by_class.iter().sum()
    }

    /// Server-side failures: 5xx and requests that got no response.
    pub fn errors(&self) -> u64 {
        self.by_class[4] + self.by_class[5]
    }

    pub fn error_rate(&self) -> f64 {
        ratio(self.errors(), self.requests())
    }

    pub fn since(&self, earlier: &Totals) -> Totals {
        Totals {
            by_class: std::array::from_fn(|i| self.by_class[i].saturating_sub(earlier.by_class[i])),
            buckets: std::array::from_fn(|i| self.buckets[i].saturating_sub(earlier.buckets[i])),
            sum_us: self.sum_us.saturating_sub(earlier.sum_us),
            in_flight: self.in_flight,
        }
    }

    pub fn add(&self, other: &Totals) -> Totals {
        Totals {
            by_class: std::array::from_fn(|i| self.by_class[i] + other.by_class[i]),
            buckets: std::array::from_fn(|i| self.buckets[i] + other.buckets[i]),
            sum_us: self.sum_us + other.sum_us,
            in_flight: self.in_flight + other.in_flight,
        }
    }

    /// The latency under which a share `q` of requests finished, interpolated within its
    /// bucket. `None` without requests.
    pub fn quantile_ms(&self, q: f64) -> Option<f64> {
        let n = self.requests();
        if n == 0 {
            return None;
        }
        let rank = (q * n as f64).ceil().max(1.0);
        let mut seen = 0.0;
        for (i, &count) in self.buckets.iter().enumerate() {
            if count == 0 {
                continue;
            }
            let next = seen + count as f64;
            if next >= rank {
                let low = if i == 0 { 0.0 } else { BUCKETS_MS[i - 1] };
                let Some(&high) = BUCKETS_MS.get(i) else {
                    return Some(low); // past the last bound: report the bound
                };
                return Some(low + (high - low) * (rank - seen) / count as f64);
            }
            seen = next;
        }
        BUCKETS_MS.last().copied()
    }
}

pub fn ratio(part: u64, whole: u64) -> f64 {
    if whole == 0 {
        0.0
    } else {
        part as f64 / whole as f64
    }
}

/// Both sides of one route (or of the default upstream, which uses `legacy`).
#[derive(Debug, Default)]
pub struct RouteStats {
    pub legacy: SideStats,
    pub new: SideStats,
    /// Requests the new side failed before answering that legacy then served (`fallback`).
    pub fallbacks: AtomicU64,
    /// Requests answered before any side (refusals, the route's own answers).
    pub refused: refused::Refused,
}

impl RouteStats {
    pub fn side(&self, side: Side) -> &SideStats {
        match side {
            Side::New => &self.new,
            Side::Legacy | Side::Default => &self.legacy,
        }
    }
}

/// In-flight requests per upstream.
#[derive(Debug, Default)]
pub struct UpstreamStats {
    pub in_flight: AtomicI64,
}

/// `[legacy, new]` totals by route id.
pub type TotalsByRoute = HashMap<String, [Totals; 2]>;

/// The id under which unmatched (default-upstream) traffic is counted.
pub const DEFAULT_ROUTE: &str = "_default";

/// All counters, by route id and upstream name. Looked up when a snapshot is built, never on
/// the request path.
#[derive(Debug, Default)]
pub struct Registry {
    routes: Mutex<HashMap<String, Arc<RouteStats>>>,
    upstreams: Mutex<HashMap<String, Arc<UpstreamStats>>>,
    history: Mutex<VecDeque<(Instant, TotalsByRoute)>>,
    /// Per route side, the points of recent intervals (`GET /status?series=`).
    series: Mutex<series::Series>,
    /// Per day, the share new sides served.
    burn_down: Mutex<burndown::BurnDown>,
    /// Finished spans on their way to the exporter, whatever the snapshot.
    pub spans: Arc<crate::telemetry::spans::SpanQueue>,
    /// Access-log records on their way to the OTLP log exporter (`logs = true`).
    pub logs: Arc<crate::telemetry::export::logs::LogQueue>,
    /// The TLS listeners' certificates and handshake counters (set at start-up).
    pub tls: std::sync::OnceLock<Vec<Arc<crate::tls::Endpoint>>>,
}

/// How far back the recent window reaches, and how often it is sampled.
pub const WINDOW: Duration = Duration::from_secs(300);
pub const SAMPLE_EVERY: Duration = Duration::from_secs(10);

impl Registry {
    pub fn route(&self, id: &str) -> Arc<RouteStats> {
        let mut routes = self.routes.lock().unwrap_or_else(|e| e.into_inner());
        Arc::clone(routes.entry(id.to_string()).or_default())
    }

    pub fn upstream(&self, name: &str) -> Arc<UpstreamStats> {
        let mut ups = self.upstreams.lock().unwrap_or_else(|e| e.into_inner());
        Arc::clone(ups.entry(name.to_string()).or_default())
    }

    /// Current totals of every route ever seen: `[legacy, new]` by route id.
    pub fn totals(&self) -> TotalsByRoute {
        let routes = self.routes.lock().unwrap_or_else(|e| e.into_inner());
        routes
            .iter()
            .map(|(id, s)| (id.clone(), [s.legacy.totals(), s.new.totals()]))
            .collect()
    }

    /// Every route's refusal counts (`refused`), by route id, in id order.
    pub fn refused(&self) -> Vec<(String, refused::RefusedTotals)> {
        let routes = self.routes.lock().unwrap_or_else(|e| e.into_inner());
        let mut v: Vec<_> = routes
            .iter()
            .map(|(id, s)| (id.clone(), s.refused.totals()))
            .collect();
        v.sort_by(|a, b| a.0.cmp(&b.0));
        v
    }

    pub fn upstream_in_flight(&self) -> Vec<(String, i64)> {
        let ups = self.upstreams.lock().unwrap_or_else(|e| e.into_inner());
        let mut v: Vec<_> = ups
            .iter()
            .map(|(n, s)| (n.clone(), s.in_flight.load(Relaxed)))
            .collect();
        v.sort();
        v
    }

    /// Records the current totals for the recent window; called every `SAMPLE_EVERY`.
    pub fn sample(&self) {
        let now = Instant::now();
        let totals = self.totals();
        self.series
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .record(std::time::SystemTime::now(), &totals);
        self.record_burn_down(&totals);
        let mut history = self.history.lock().unwrap_or_else(|e| e.into_inner());
        history.push_back((now, totals));
        while history
            .front()
            .is_some_and(|(t, _)| now.duration_since(*t) > WINDOW + SAMPLE_EVERY)
        {
            history.pop_front();
        }
    }

    /// Adds the traffic since the last record to today's burn-down point.
    fn record_burn_down(&self, totals: &TotalsByRoute) {
        let (all, new) = totals.values().fold((0, 0), |(all, new), [l, n]| {
            (all + l.requests() + n.requests(), new + n.requests())
        });
        self.burn_down
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .record(std::time::SystemTime::now(), all, new);
    }

    /// The burn-down's line and days (`None` before any traffic).
    pub fn burn_down(&self) -> Option<burndown::Summary> {
        self.record_burn_down(&self.totals());
        let b = self.burn_down.lock().unwrap_or_else(|e| e.into_inner());
        b.summary(std::time::SystemTime::now())
    }

    /// Saves the burn-down's days to `path` (a temporary file renamed over it).
    pub fn save_burn_down(&self, path: &std::path::Path) -> std::io::Result<()> {
        self.record_burn_down(&self.totals());
        let text = {
            let b = self.burn_down.lock().unwrap_or_else(|e| e.into_inner());
            serde_json::to_vec(&*b)?
        };
        let tmp = path.with_extension("json.tmp");
        std::fs::write(&tmp, text).and_then(|()| std::fs::rename(&tmp, path))
    }

    /// Adds the days a previous process saved at `path` (nothing when there is no file; a file
    /// that does not parse is said and ignored).
    pub fn load_burn_down(&self, path: &std::path::Path) {
        let text = match crate::config::read::read_state(path, 16 << 20) {
            Ok(Some(t)) => t,
            Ok(None) => return,
            Err(e) => {
                tracing::warn!("the saved burn-down is not read: {e}");
                return;
            }
        };
        match serde_json::from_slice::<burndown::BurnDown>(&text) {
            Ok(saved) => self
                .burn_down
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .merge(saved, std::time::SystemTime::now()),
            Err(e) => {
                tracing::warn!(path = %path.display(), "the saved burn-down does not parse: {e}")
            }
        }
    }

    /// The points of the last `range` (`None` past what is kept).
    pub fn series(&self, range: Duration) -> Option<series::Reply> {
        let totals = self.totals();
        let series = self.series.lock().unwrap_or_else(|e| e.into_inner());
        series.range(range, std::time::SystemTime::now(), &totals)
    }

    /// Route sides left without a series (more than `series::MAX_SIDES` had traffic).
    pub fn series_left_out(&self) -> u64 {
        self.series
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .left_out
    }

    /// The oldest sample no older than the window, and how long ago it was taken.
    pub fn window_start(&self) -> Option<(Duration, TotalsByRoute)> {
        let history = self.history.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        history
            .iter()
            .find(|(t, _)| now.duration_since(*t) <= WINDOW + Duration::from_secs(1))
            .map(|(t, m)| (now.duration_since(*t), m.clone()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_interpolate_within_buckets() {
        let s = SideStats::default();
        for ms in 1..=100 {
            s.record(200, Duration::from_millis(ms));
        }
        let t = s.totals();
        assert_eq!(t.requests(), 100);
        let p50 = t.quantile_ms(0.5).unwrap();
        assert!((40.0..=60.0).contains(&p50), "{p50}");
        let p99 = t.quantile_ms(0.99).unwrap();
        assert!((90.0..=100.0).contains(&p99), "{p99}");
        assert_eq!(Totals::default().quantile_ms(0.5), None);
    }

    #[test]
    fn classes_errors_and_windows() {
        let s = SideStats::default();
        for status in [200, 201, 302, 404, 500, 503, 0] {
            s.record(status, Duration::from_millis(1));
        }
        let before = s.totals();
        assert_eq!(before.by_class, [0, 2, 1, 1, 2, 1]);
        assert_eq!(before.errors(), 3);
        s.record(200, Duration::from_millis(1));
        let recent = s.totals().since(&before);
        assert_eq!(recent.requests(), 1);
        assert_eq!(recent.errors(), 0);
    }

    #[test]
    fn the_registry_keeps_counters_by_id() {
        let r = Registry::default();
        r.route("a").new.record(200, Duration::from_millis(1));
        assert_eq!(r.route("a").new.totals().requests(), 1);
        r.sample();
        let (ago, start) = r.window_start().unwrap();
        assert!(ago < Duration::from_secs(1));
        assert_eq!(start["a"][1].requests(), 1);
    }
}
