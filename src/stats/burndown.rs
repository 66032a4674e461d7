//! The burn-down: per UTC day, every request and those a new side served, so that `strangle
//! status` can say "62% of requests no longer reach the monolith, up from 40% 30 days ago".
//! Fed by the stats sampler (a subtraction every 10 s), kept for `KEEP_DAYS`, saved next to the
//! config with the inventory and read back at start, so it spans restarts.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use serde::{Deserialize, Serialize};

/// Days kept.
pub const KEEP_DAYS: usize = 400;
/// How far back "up from" looks.
pub const COMPARE_DAYS: u64 = 30;

/// One day's traffic.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Day {
    pub requests: u64,
    /// Served by new sides.
    pub new: u64,
}

impl Day {
    pub fn new_share(&self) -> f64 {
        super::ratio(self.new, self.requests)
    }
}

#[derive(Debug, Default, Serialize, Deserialize)]
pub struct BurnDown {
    /// By date (`YYYY-MM-DD`, UTC).
    days: BTreeMap<String, Day>,
    /// The totals (every request, new sides') at the last record, this process's.
    #[serde(skip)]
    last: Option<(u64, u64)>,
}

/// A day's point, for `GET /status` and the dashboard.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DayPoint {
    pub date: String,
    pub requests: u64,
    pub new_share: f64,
}

/// What `strangle status` says in one line.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Summary {
    /// Today's share served by new sides (or the last day's with traffic).
    pub date: String,
    pub new_share: f64,
    /// The same `COMPARE_DAYS` ago, or on the oldest day on record when that is nearer.
    pub before: Option<DayPoint>,
    /// The days, oldest first (the last `KEEP_DAYS`).
    pub days: Vec<DayPoint>,
}

/// The UTC date of `t`, `YYYY-MM-DD`.
pub fn date(t: SystemTime) -> String {
    humantime::format_rfc3339_seconds(t).to_string()[..10].to_string()
}

impl BurnDown {
    /// Adds the traffic since the last call (`all` and `new` are this process's totals) to
    /// the day of `now`.
    pub fn record(&mut self, now: SystemTime, all: u64, new: u64) {
        let (all0, new0) = self.last.unwrap_or((0, 0));
        self.last = Some((all, new));
        let (d_all, d_new) = (all.saturating_sub(all0), new.saturating_sub(new0));
        if d_all == 0 {
            return;
        }
        let day = self.days.entry(date(now)).or_default();
        day.requests = day.requests.saturating_add(d_all);
        day.new = day.new.saturating_add(d_new.min(d_all));
        while self.days.len() > KEEP_DAYS {
            self.days.pop_first();
        }
    }

    /// The line's numbers, `None` before any traffic.
    pub fn summary(&self, now: SystemTime) -> Option<Summary> {
        let (today, day) = self.days.iter().next_back()?;
        let point = |(date, d): (&String, &Day)| DayPoint {
            date: date.clone(),
            requests: d.requests,
            new_share: d.new_share(),
        };
        let back = now
            .checked_sub(std::time::Duration::from_secs(COMPARE_DAYS * 86_400))
            .map(date)
            .unwrap_or_default();
        // The day `COMPARE_DAYS` ago or the last one before it; in a younger history, the
        // oldest day that is not the latest.
        let before = self
            .days
            .range(..=back.clone())
            .next_back()
            .or_else(|| self.days.range(back..).find(|(d, _)| *d != today))
            .map(point);
        Some(Summary {
            date: today.clone(),
            new_share: day.new_share(),
            before,
            days: self.days.iter().map(point).collect(),
        })
    }

    /// Adds the days read back from a file (a previous process's). Days after `now`'s (a
    /// clock that was wrong once) and malformed dates are left out: they would be "today" for
    /// good.
    pub fn merge(&mut self, saved: BurnDown, now: SystemTime) {
        let today = date(now);
        for (date, d) in saved.days {
            let well_formed =
                date.len() == 10 && humantime::parse_rfc3339(&format!("{date}T00:00:00Z")).is_ok();
            if !well_formed || date > today {
                continue;
            }
            let day = self.days.entry(date).or_default();
            day.requests = day.requests.saturating_add(d.requests);
            day.new = day.new.saturating_add(d.new).min(day.requests);
        }
        while self.days.len() > KEEP_DAYS {
            self.days.pop_first();
        }
    }
}

/// Where the burn-down of the config at `config` is kept.
pub fn path_for(config: &Path) -> PathBuf {
    crate::config::beside(config, "burndown.json")
}

#[cfg(test)]
mod tests;
