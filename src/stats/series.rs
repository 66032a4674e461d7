//! Time series: per route and side, what each recent interval saw (requests, 4xx, 5xx, p50,
//! p99), at two resolutions: 10-second points for an hour and 5-minute points for a week.
//!
//! Built by the stats sampler from the totals it takes anyway (a subtraction per route side and
//! interval), so the request path pays nothing. Memory is bounded: an interval without requests
//! stores no point, a point is 32 bytes, a ring holds at most its tier's span (360 and 2,016
//! points), and at most `MAX_SIDES` route sides keep a series (a side busy all week: 76 KB).

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::time::{Duration, SystemTime};

use serde::Serialize;

use super::{Totals, TotalsByRoute};

/// One resolution: a point per `every`, kept for `keep`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tier {
    pub every: Duration,
    pub keep: Duration,
}

pub const TIERS: [Tier; 2] = [
    Tier {
        every: Duration::from_secs(10),
        keep: Duration::from_secs(3600),
    },
    Tier {
        every: Duration::from_secs(300),
        keep: Duration::from_secs(7 * 24 * 3600),
    },
];

/// Route sides with a series, at most (a config of tens of thousands of routes stays small;
/// the sides left out are counted).
pub const MAX_SIDES: usize = 2048;

/// What one side of one route saw in one interval.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Point {
    /// The interval's start, in seconds since the epoch.
    pub t: u64,
    pub requests: u32,
    #[serde(rename = "4xx")]
    pub status_4xx: u32,
    #[serde(rename = "5xx")]
    pub status_5xx: u32,
    pub p50_ms: f32,
    pub p99_ms: f32,
}

impl Point {
    fn of(t: u64, d: &Totals) -> Point {
        let sat = |n: u64| u32::try_from(n).unwrap_or(u32::MAX);
        Point {
            t,
            requests: sat(d.requests()),
            status_4xx: sat(d.by_class[3]),
            status_5xx: sat(d.by_class[4]),
            p50_ms: d.quantile_ms(0.5).unwrap_or(0.0) as f32,
            p99_ms: d.quantile_ms(0.99).unwrap_or(0.0) as f32,
        }
    }
}

/// One tier's rings, and the totals its current interval started from.
#[derive(Debug)]
struct Rings {
    tier: Tier,
    /// The current interval's start (seconds since the epoch) and the totals then.
    start: Option<(u64, TotalsByRoute)>,
    /// `[legacy, new]` points by route id, oldest first.
    points: HashMap<String, [VecDeque<Point>; 2]>,
}

/// Every route side's recent points.
#[derive(Debug)]
pub struct Series {
    rings: Vec<Rings>,
    /// Route sides that got no series because `MAX_SIDES` were taken.
    pub left_out: u64,
}

impl Default for Series {
    fn default() -> Series {
        Series {
            rings: TIERS
                .iter()
                .map(|&tier| Rings {
                    tier,
                    start: None,
                    points: HashMap::new(),
                })
                .collect(),
            left_out: 0,
        }
    }
}

/// Seconds since the epoch.
pub fn epoch(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Each route side's traffic between `then` and `now` (by route id), when it had any:
/// `(route id, 0 for legacy or 1 for new, the difference)`.
fn deltas<'a>(
    now: &'a TotalsByRoute,
    then: &'a TotalsByRoute,
) -> impl Iterator<Item = (&'a String, usize, Totals)> + 'a {
    now.iter().flat_map(move |(id, now)| {
        let then = then.get(id).copied().unwrap_or_default();
        (0..2)
            .map(move |side| (id, side, now[side].since(&then[side])))
            .filter(|(_, _, d)| d.requests() > 0)
    })
}

/// What `GET /status?series=RANGE` returns.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Reply {
    /// Seconds per point.
    pub resolution_s: u64,
    /// The range asked for, in seconds since the epoch.
    pub from: u64,
    pub to: u64,
    /// By route id (`_default` for unmatched traffic, on `legacy`). Intervals without requests
    /// have no point; the last point of each side is the interval still running.
    pub routes: BTreeMap<String, Sides>,
}

#[derive(Debug, Clone, PartialEq, Default, Serialize)]
pub struct Sides {
    pub legacy: Vec<Point>,
    pub new: Vec<Point>,
}

impl Series {
    /// Records `totals`, taken at `now`: every tier whose interval ended since the last call
    /// gets a point per route side that had requests in it.
    pub fn record(&mut self, now: SystemTime, totals: &TotalsByRoute) {
        let secs = epoch(now);
        for rings in &mut self.rings {
            let mut sides = rings.points.len() * 2;
            let every = rings.tier.every.as_secs();
            let boundary = secs - secs % every;
            let Some((start, then)) = &rings.start else {
                // Counters start at zero with the process: what came before the first sample
                // belongs to the first interval.
                rings.start = Some((boundary, TotalsByRoute::new()));
                continue;
            };
            if *start == boundary {
                continue;
            }
            let start = *start;
            for (id, side, d) in deltas(totals, then) {
                let ring = match rings.points.get_mut(id) {
                    Some(r) => r,
                    None if sides < MAX_SIDES => {
                        sides += 2;
                        rings.points.entry(id.clone()).or_default()
                    }
                    None => {
                        self.left_out += 1;
                        continue;
                    }
                };
                ring[side].push_back(Point::of(start, &d));
            }
            let oldest = secs.saturating_sub(rings.tier.keep.as_secs());
            rings.points.retain(|_, sides| {
                for s in sides.iter_mut() {
                    while s.front().is_some_and(|p| p.t < oldest) {
                        s.pop_front();
                    }
                }
                sides.iter().any(|s| !s.is_empty())
            });
            rings.start = Some((boundary, totals.clone()));
        }
    }

    /// The points of the last `range`, at the finest resolution that reaches that far (`None`
    /// past the longest), with the interval still running as each side's last point.
    pub fn range(&self, range: Duration, now: SystemTime, totals: &TotalsByRoute) -> Option<Reply> {
        let rings = self.rings.iter().find(|r| r.tier.keep >= range)?;
        let to = epoch(now);
        let from = to.saturating_sub(range.as_secs());
        let mut routes: BTreeMap<String, Sides> = BTreeMap::new();
        for (id, sides) in &rings.points {
            let entry = routes.entry(id.clone()).or_default();
            for (side, out) in [&mut entry.legacy, &mut entry.new].into_iter().enumerate() {
                out.extend(sides[side].iter().filter(|p| p.t >= from));
            }
        }
        let empty = TotalsByRoute::new();
        let (start, then) = match &rings.start {
            Some((start, then)) => (*start, then),
            None => (to - to % rings.tier.every.as_secs(), &empty),
        };
        for (id, side, d) in deltas(totals, then) {
            let entry = routes.entry(id.clone()).or_default();
            let out = if side == 0 {
                &mut entry.legacy
            } else {
                &mut entry.new
            };
            out.push(Point::of(start, &d));
        }
        routes.retain(|_, s| !s.legacy.is_empty() || !s.new.is_empty());
        Some(Reply {
            resolution_s: rings.tier.every.as_secs(),
            from,
            to,
            routes,
        })
    }
}

#[cfg(test)]
mod tests;
