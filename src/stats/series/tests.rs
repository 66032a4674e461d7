use std::time::{Duration, SystemTime};

use super::*;
use crate::stats::SideStats;

/// A clock and counters to drive `Series` with.
struct Drive {
    series: Series,
    stats: HashMap<String, [SideStats; 2]>,
    now: SystemTime,
}

impl Drive {
    fn new() -> Drive {
        Drive {
            series: Series::default(),
            stats: HashMap::new(),
            // A 5-minute boundary, so tiers line up with the test's arithmetic.
            now: SystemTime::UNIX_EPOCH + Duration::from_secs(1_764_000_000),
        }
    }

    fn serve(&mut self, route: &str, side: usize, status: u16, n: usize) {
        let s = self.stats.entry(route.to_string()).or_default();
        for _ in 0..n {
            s[side].record(status, Duration::from_millis(5));
        }
    }

    fn totals(&self) -> TotalsByRoute {
        self.stats
            .iter()
            .map(|(id, s)| (id.clone(), [s[0].totals(), s[1].totals()]))
            .collect()
    }

    /// Lets `secs` pass, sampling every 10 s as the sampler does.
    fn pass(&mut self, secs: u64) {
        for _ in 0..secs / 10 {
            self.now += Duration::from_secs(10);
            let totals = self.totals();
            self.series.record(self.now, &totals);
        }
    }

    fn range(&self, range: Duration) -> Reply {
        self.series.range(range, self.now, &self.totals()).unwrap()
    }
}

#[test]
fn each_interval_becomes_a_point_per_side_with_its_counts_and_quantiles() {
    let mut d = Drive::new();
    d.pass(10); // the first sample: the baseline
    d.serve("bookings", 0, 200, 8);
    d.serve("bookings", 0, 404, 1);
    d.serve("bookings", 1, 503, 2);
    d.pass(10);
    d.serve("bookings", 1, 200, 3);
    d.pass(20);
    let r = d.range(Duration::from_secs(3600));
    assert_eq!(r.resolution_s, 10);
    let b = &r.routes["bookings"];
    assert_eq!(b.legacy.len(), 1, "one interval had legacy traffic: {b:?}");
    let p = b.legacy[0];
    assert_eq!((p.requests, p.status_4xx, p.status_5xx), (9, 1, 0));
    assert!(p.p50_ms > 0.0 && p.p50_ms <= p.p99_ms, "{p:?}");
    let new: Vec<_> = b.new.iter().map(|p| (p.requests, p.status_5xx)).collect();
    assert_eq!(new, [(2, 2), (3, 0)]);
    assert_eq!(b.new[1].t - b.new[0].t, 10);
}

#[test]
fn the_interval_still_running_is_the_last_point() {
    let mut d = Drive::new();
    d.pass(10);
    d.serve("a", 0, 200, 4);
    let r = d.range(Duration::from_secs(600));
    assert_eq!(r.routes["a"].legacy[0].requests, 4);
    assert!(r.routes["a"].new.is_empty());
}

#[test]
fn longer_ranges_come_from_the_five_minute_tier_and_old_points_go() {
    let mut d = Drive::new();
    d.pass(10);
    for _ in 0..3 {
        d.serve("a", 1, 200, 10);
        d.pass(300);
    }
    let r = d.range(Duration::from_secs(6 * 3600));
    assert_eq!(r.resolution_s, 300);
    let counts: Vec<u32> = r.routes["a"].new.iter().map(|p| p.requests).collect();
    assert_eq!(counts.iter().sum::<u32>(), 30, "{counts:?}");
    // An hour later the 10 s points of that traffic are gone, the 5 min ones stay.
    d.pass(3700);
    assert!(!d.range(Duration::from_secs(3600)).routes.contains_key("a"));
    assert!(d.range(Duration::from_secs(86400)).routes.contains_key("a"));
    // And a week later those too.
    d.pass(7 * 24 * 3600);
    assert!(d.range(Duration::from_secs(7 * 86400)).routes.is_empty());
    assert!(d
        .series
        .range(Duration::from_secs(8 * 86400), d.now, &d.totals())
        .is_none());
}

#[test]
fn idle_intervals_store_nothing_and_the_number_of_sides_is_capped() {
    let mut d = Drive::new();
    d.pass(10);
    d.pass(600);
    assert!(d.series.rings.iter().all(|r| r.points.is_empty()));
    for i in 0..MAX_SIDES {
        d.serve(&format!("/r{i}"), 0, 200, 1);
    }
    d.pass(10);
    let rings = &d.series.rings[0];
    assert_eq!(rings.points.len() * 2, MAX_SIDES);
    assert_eq!(d.series.left_out, MAX_SIDES as u64 / 2);
}
