//! Lowering a route's `[routes.rollout]`: the steps a metric-gated rollout shifts through, how
//! long each lasts at least, and the gates the new side must hold to go on.

use std::time::Duration;

use super::raw::{RawRollout, RawRoute};
use super::Cx;
use crate::split::Shift;

/// The validated `[routes.rollout]` of a route.
#[derive(Debug, Clone, PartialEq)]
pub struct Rollout {
    /// Shifts in rising order; the last is where the rollout ends.
    pub steps: Vec<Shift>,
    /// The least time spent on a step, and the window the gates are judged over.
    pub interval: Duration,
    /// New-side requests (in the window) before a step may advance or a gate be judged.
    pub min_requests: u64,
    /// The new side's share of 5xx and unanswered requests, in basis points.
    pub max_error_rate: Option<u16>,
    /// How much higher than legacy's (same window) the new side's error share may be, in basis
    /// points.
    pub max_error_rate_increase: Option<u16>,
    /// New p99 / legacy p99.
    pub max_p99_ratio: Option<f64>,
    /// The share of compared shadow copies that differ, in basis points.
    pub max_mismatch_rate: Option<u16>,
    pub on_failure: OnFailure,
}

/// Where a failed gate sends the shift.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnFailure {
    /// The step before (0% from the first step).
    Previous,
    Zero,
}

pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(600);
pub const DEFAULT_MIN_REQUESTS: u64 = 100;
/// Gates are judged from counters sampled this often; an interval shorter than this could not
/// be judged.
pub const MIN_INTERVAL: Duration = Duration::from_secs(1);

impl Rollout {
    /// The index of the step the shift `at` is on: the highest step not above it (`None` below
    /// the first step).
    pub fn step_of(&self, at: Shift) -> Option<usize> {
        self.steps.iter().rposition(|s| *s <= at)
    }

    /// The step after the one `at` is on.
    pub fn next_after(&self, at: Shift) -> Option<Shift> {
        self.steps.iter().copied().find(|s| *s > at)
    }

    /// Where a failure at `at` goes back to.
    pub fn back_from(&self, at: Shift) -> Shift {
        match self.on_failure {
            OnFailure::Zero => Shift::ZERO,
            OnFailure::Previous => self
                .steps
                .iter()
                .copied()
                .rev()
                .find(|s| *s < at)
                .unwrap_or(Shift::ZERO),
        }
    }
}

impl Cx<'_> {
    pub(super) fn rollout(&mut self, r: &RawRoute) -> Option<Rollout> {
        let raw = r.rollout.as_ref()?;
        let at = raw.span().start;
        let raw: &RawRollout = raw.get_ref();
        if r.new.is_none() || r.legacy.is_none() {
            let hint = Some("a rollout shifts traffic from `legacy` to `new`: set both".into());
            let message = format!("route `{}` has a rollout but not two sides", r.id.get_ref());
            self.error(at, message, hint);
        }
        let mut steps: Vec<Shift> = Vec::new();
        for s in raw.steps.get_ref() {
            match Shift::parse(&s.get_ref().as_text()) {
                Ok(shift) if shift == Shift::ZERO => {
                    self.err_at(s, "a rollout step of 0% shifts nothing", None);
                }
                Ok(shift) if steps.last().is_some_and(|l| *l >= shift) => {
                    let hint = Some(
                        "list the steps in rising order, like [\"1%\", \"5%\", \"25%\", \"100%\"]"
                            .into(),
                    );
                    self.err_at(s, format!("rollout step {shift} does not rise"), hint);
                }
                Ok(shift) => steps.push(shift),
                Err(e) => self.err_at(s, format!("rollout step: {e}"), None),
            }
        }
        if raw.steps.get_ref().is_empty() {
            let hint = Some("list at least one step, like [\"10%\", \"50%\", \"100%\"]".into());
            self.err_at(&raw.steps, "rollout `steps` is empty", hint);
        }
        let interval = self.duration(&raw.interval, "interval", DEFAULT_INTERVAL);
        if let Some(i) = raw.interval.as_ref().filter(|_| interval < MIN_INTERVAL) {
            self.err_at(i, "rollout `interval` must be at least 1s", None);
        }
        let min_requests = match &raw.min_requests {
            None => DEFAULT_MIN_REQUESTS,
            Some(n) if (1..=1_000_000_000).contains(n.get_ref()) => *n.get_ref() as u64,
            Some(n) => {
                let hint = Some("a gate judged on no requests would pass anything".into());
                self.err_at(n, "`min-requests` must be 1 to 1000000000", hint);
                DEFAULT_MIN_REQUESTS
            }
        };
        let mut rate = |v: &Option<toml::Spanned<super::raw::ShiftValue>>, key: &str| {
            let v = v.as_ref()?;
            match Shift::parse(&v.get_ref().as_text()) {
                Ok(s) => Some(s.bp()),
                Err(e) => {
                    self.err_at(v, format!("`{key}`: {e}"), None);
                    None
                }
            }
        };
        let max_error_rate = rate(&raw.max_error_rate, "max-error-rate");
        let max_error_rate_increase = rate(&raw.max_error_rate_increase, "max-error-rate-increase");
        let max_mismatch_rate = rate(&raw.max_mismatch_rate, "max-mismatch-rate");
        if let (Some(m), None) = (&raw.max_mismatch_rate, &r.shadow) {
            let hint = Some("the mismatch rate comes from shadow copies: add `shadow`".into());
            self.err_at(m, "`max-mismatch-rate` without `shadow` on the route", hint);
        }
        let max_p99_ratio = match &raw.max_p99_ratio {
            None => None,
            Some(v) if v.get_ref().is_finite() && *v.get_ref() >= 1.0 => Some(*v.get_ref()),
            Some(v) => {
                let hint = Some("1.5 lets the new side's p99 be half again legacy's".into());
                self.err_at(v, "`max-p99-ratio` must be a number of at least 1", hint);
                None
            }
        };
        if max_error_rate.is_none()
            && max_error_rate_increase.is_none()
            && max_p99_ratio.is_none()
            && max_mismatch_rate.is_none()
        {
            let hint = Some("add `max-error-rate = \"1%\"` (or another gate): a rollout with no gate advances whatever the new side does".into());
            self.error(at, "the rollout has no gate", hint);
        }
        let on_failure = match raw.on_failure.as_ref().map(|o| (o, o.get_ref().as_str())) {
            None | Some((_, "previous")) => OnFailure::Previous,
            Some((_, "zero")) => OnFailure::Zero,
            Some((o, other)) => {
                let hint = Some("use `previous` (the step before) or `zero`".into());
                self.err_at(o, format!("unknown on-failure `{other}`"), hint);
                OnFailure::Previous
            }
        };
        Some(Rollout {
            steps,
            interval,
            min_requests,
            max_error_rate,
            max_error_rate_increase,
            max_p99_ratio,
            max_mismatch_rate,
            on_failure,
        })
    }
}
