//! The gates of a rollout step, judged over a window of a route's counters.

use serde::{Deserialize, Serialize};

use super::{MIN_BASELINE, MIN_COMPARED, P99_FLOOR_MS};
use crate::config::rollout::Rollout;
use crate::stats::Totals;

/// What a gate says about the window.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Verdict {
    Hold,
    Fail,
    /// Not enough requests yet.
    Pending,
}

/// One gate's judgment, for `status` and the history.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Gate {
    pub gate: String,
    pub verdict: Verdict,
    /// The measured value and the limit, as text (`"3.20%"`, `"1.00%"`).
    pub value: String,
    pub limit: String,
    /// The requests (or compared copies) it was judged on.
    pub over: u64,
}

impl Gate {
    pub(super) fn reason(&self) -> String {
        format!(
            "{} {} over the limit {} (on {} requests)",
            self.gate, self.value, self.limit, self.over
        )
    }
}

/// A route's counters at one moment: both sides and its shadow results (in `/status` on a
/// route with a rollout, for a fleet's leader to sum).
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Counters {
    pub legacy: Totals,
    pub new: Totals,
    pub compared: u64,
    pub mismatched: u64,
}

impl Counters {
    /// A route's counters now (`shadow`: its shadow results, when it shadows).
    pub fn of(
        stats: &crate::stats::RouteStats,
        shadow: Option<&crate::shadow::RouteShadow>,
    ) -> Counters {
        use std::sync::atomic::Ordering::Relaxed;
        let (matched, mismatched) = shadow.map_or((0, 0), |s| {
            (s.matched.load(Relaxed), s.mismatched.load(Relaxed))
        });
        Counters {
            legacy: stats.legacy.totals(),
            new: stats.new.totals(),
            compared: matched + mismatched,
            mismatched,
        }
    }

    /// The sum of two replicas' counters.
    pub fn add(&self, other: &Counters) -> Counters {
        Counters {
            legacy: self.legacy.add(&other.legacy),
            new: self.new.add(&other.new),
            compared: self.compared + other.compared,
            mismatched: self.mismatched + other.mismatched,
        }
    }

    pub(super) fn since(&self, earlier: &Counters) -> Counters {
        Counters {
            legacy: self.legacy.since(&earlier.legacy),
            new: self.new.since(&earlier.new),
            compared: self.compared.saturating_sub(earlier.compared),
            mismatched: self.mismatched.saturating_sub(earlier.mismatched),
        }
    }
}

/// Judges every gate the rollout sets over a window's counters.
pub fn judge(r: &Rollout, w: &Counters) -> Vec<Gate> {
    let mut gates = Vec::new();
    let (n, errors) = (w.new.requests(), w.new.errors());
    if let Some(bp) = r.max_error_rate {
        gates.push(rate_gate("error rate", errors, n, bp, r.min_requests));
    }
    let (ln, lerrors) = (w.legacy.requests(), w.legacy.errors());
    // Pending until the new side has `min-requests`; then held or failed.
    let judged = |failed: bool| {
        if n < r.min_requests {
            Verdict::Pending
        } else if failed {
            Verdict::Fail
        } else {
            Verdict::Hold
        }
    };
    if let Some(bp) = r.max_error_rate_increase {
        let (new_rate, legacy_rate) = (share(errors, n), share(lerrors, ln));
        let baseline = if ln >= MIN_BASELINE { legacy_rate } else { 0.0 };
        let increase = new_rate - baseline;
        let limit = f64::from(bp) / 100.0;
        gates.push(Gate {
            gate: "error rate increase over legacy".into(),
            verdict: judged(increase > limit),
            value: format!("{increase:.2}%"),
            limit: format!("{limit:.2}%"),
            over: n,
        });
    }
    if let Some(max) = r.max_p99_ratio {
        let new_p99 = w.new.quantile_ms(0.99).unwrap_or(0.0);
        let legacy_p99 = match w.legacy.quantile_ms(0.99) {
            Some(p) if ln >= MIN_BASELINE => Some(p.max(P99_FLOOR_MS)),
            _ => None,
        };
        // Without a legacy baseline (legacy nearly gone) there is nothing to compare with.
        let ratio = legacy_p99.map(|l| new_p99 / l);
        gates.push(Gate {
            gate: "p99 ratio to legacy".into(),
            verdict: judged(ratio.is_some_and(|r| r > max)),
            value: ratio.map_or_else(|| "no legacy baseline".to_string(), |r| format!("{r:.2}")),
            limit: format!("{max:.2}"),
            over: n,
        });
    }
    if let Some(bp) = r.max_mismatch_rate {
        let min = r.min_requests.min(MIN_COMPARED);
        gates.push(rate_gate(
            "shadow mismatch rate",
            w.mismatched,
            w.compared,
            bp,
            min,
        ));
    }
    gates
}

fn share(part: u64, whole: u64) -> f64 {
    crate::stats::ratio(part, whole) * 100.0
}

/// `bad` of `n` against a limit of `bp` basis points: failed as soon as `bad` is over the limit
/// even at `min` requests, held from `min` requests on.
fn rate_gate(gate: &str, bad: u64, n: u64, bp: u16, min: u64) -> Gate {
    let over_limit = |whole: u64| u128::from(bad) * 10_000 > u128::from(bp) * u128::from(whole);
    Gate {
        gate: gate.to_string(),
        verdict: if over_limit(n.max(min)) {
            Verdict::Fail
        } else if n >= min {
            Verdict::Hold
        } else {
            Verdict::Pending
        },
        value: format!("{:.2}%", share(bad, n)),
        limit: format!("{:.2}%", f64::from(bp) / 100.0),
        over: n,
    }
}
