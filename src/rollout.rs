//! Progressive rollout: per route, the state of a metric-gated shift through `[routes.rollout]`
//! steps, the gates judged from the route's own counters, and what to do next.
//!
//! This module decides; it does not act. The driver (`admin::rollout`) samples the counters
//! every `TICK`, asks `Rollouts::tick` what to do, and applies a step the way an admin shift is
//! applied: written into the config file (which stays the truth for the step) and reloaded.
//! What the file cannot hold (the phase, when the step began, why it last moved) is saved next
//! to it (`strangle.rollout.json`), so a restart resumes the step where it was.
//!
//! The gates are judged over the last `interval` of the step (a sliding window of samples,
//! never reaching back before the step began). A rate gate fails as soon as it cannot pass any
//! more, even before `min-requests`: with `max-error-rate = 1%` and `min-requests = 500`, the
//! sixth error fails it whatever else arrives. It holds only once `min-requests` were seen.

use std::collections::{BTreeMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime};

use serde::{Deserialize, Serialize};

use crate::config::rollout::Rollout;
use crate::split::Shift;

mod act;
mod gates;
mod saved;
pub use act::{Action, ActionError};
pub use gates::{judge, Counters, Gate, Verdict};
pub use saved::path_for;
use saved::{restored, Saved, MAX_FILE, MAX_SAVED};

/// How often the driver samples the counters and judges the gates.
pub const TICK: Duration = Duration::from_millis(500);
/// Legacy requests a comparative gate (error-rate increase, p99 ratio) needs in the window to
/// compare with; with fewer (legacy nearly gone), the gate is judged on the new side alone.
pub const MIN_BASELINE: u64 = 20;
/// How long after a change that could not be applied (a read-only config, a conflict) the
/// rollout tries again.
pub const RETRY_AFTER: Duration = Duration::from_secs(30);
/// Compared shadow copies the mismatch gate needs (or `min-requests`, if lower).
pub const MIN_COMPARED: u64 = 100;
/// A legacy p99 below this is taken as this: on loopback a sub-millisecond p99 would make any
/// ratio noise.
pub const P99_FLOOR_MS: f64 = 1.0;

/// Where a rollout is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Phase {
    /// Advancing when the gates hold.
    Running,
    /// Not advancing (`strangle rollout ROUTE pause`, or a shift made by hand); a failing gate
    /// still rolls back.
    Paused,
    /// The last step held for an interval, or was promoted to.
    Done,
    /// A gate failed and the shift went back; `resume` tries again from there.
    RolledBack,
    /// Sent to 0% by `abort`; `resume` starts again.
    Aborted,
}

impl Phase {
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Running => "running",
            Phase::Paused => "paused",
            Phase::Done => "done",
            Phase::RolledBack => "rolled-back",
            Phase::Aborted => "aborted",
        }
    }
}

/// What the driver should do for a route.
#[derive(Debug, Clone, PartialEq)]
pub struct Change {
    pub route: String,
    pub from: Shift,
    pub to: Shift,
    /// `advance`, `rollback`, `promote`, `abort`.
    pub event: &'static str,
    pub reason: String,
}

/// One route's rollout.
#[derive(Debug)]
struct RouteRollout {
    phase: Phase,
    /// The shift this state is about (the config's when last seen).
    shift: Shift,
    /// When the step began.
    began: Instant,
    /// Why it last moved or stopped.
    reason: Option<String>,
    /// The last judgment.
    gates: Vec<Gate>,
    /// Counters sampled since the step began, the oldest reaching back one interval.
    samples: VecDeque<(Instant, Counters)>,
    /// A change handed to the driver and not yet seen in the config.
    pending: Option<Change>,
    /// Why the step does not advance though it could (a fleet replica not heard from).
    waiting: Option<String>,
    /// A change that could not be applied is not tried again before this.
    /// (the failed change's event: a rollback is never held back by a failed advance).
    retry_at: Option<(Instant, &'static str)>,
}

impl RouteRollout {
    fn new(shift: Shift, phase: Phase, reason: Option<String>, now: Instant) -> RouteRollout {
        RouteRollout {
            phase,
            shift,
            began: now,
            reason,
            gates: Vec::new(),
            samples: VecDeque::new(),
            pending: None,
            waiting: None,
            retry_at: None,
        }
    }

    fn restart_step(&mut self, shift: Shift, now: Instant) {
        self.shift = shift;
        self.began = now;
        self.samples.clear();
        self.gates.clear();
    }

    /// The counters of the window: the newest sample less the oldest kept.
    fn window(&self) -> Counters {
        match (self.samples.front(), self.samples.back()) {
            (Some((_, old)), Some((_, new))) => new.since(old),
            _ => Counters::default(),
        }
    }

    fn in_step(&self, now: Instant) -> Duration {
        now.saturating_duration_since(self.began)
    }

    /// When the step began, on the wall clock.
    fn step_started(&self) -> SystemTime {
        SystemTime::now() - self.began.elapsed()
    }
}

/// What `strangle rollout ROUTE status` and `/status` show of one route.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RolloutStatus {
    pub phase: String,
    pub shift: String,
    /// 1-based; 0 below the first step.
    pub step: usize,
    pub steps: Vec<String>,
    pub next: Option<String>,
    pub step_started: String,
    pub in_step_seconds: u64,
    pub interval_seconds: u64,
    pub min_requests: u64,
    pub gates: Vec<Gate>,
    pub reason: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub waiting: Option<String>,
}

/// Every route's rollout, kept across reloads.
#[derive(Debug)]
pub struct Rollouts {
    path: PathBuf,
    routes: Mutex<BTreeMap<String, RouteRollout>>,
    /// With `[admin.fleet]`: who leads the fleet's rollouts.
    fleet: Mutex<Option<FleetView>>,
    /// Why the saved state could not be read, if it could not.
    unreadable: Option<String>,
    /// Routes the history says were stopped, with the event and when (see `open`).
    stopped: BTreeMap<String, (String, SystemTime)>,
}

/// A replica's view of its fleet (`/status` `fleet`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FleetView {
    pub identity: String,
    /// The Lease's holder (empty while unknown).
    pub leader: String,
    pub leading: bool,
    /// The last failure to reach the API server or the replicas.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl Rollouts {
    /// Reads what a previous process saved next to the config (nothing when there is none; a
    /// file that does not parse is said and ignored: every rollout then starts its step again).
    /// Reads what a previous process saved next to the config. `stopped` names the routes
    /// whose last rollout event in the history stopped them (a rollback, an abort, a pause),
    /// with that event. A rollout nothing saved speaks for starts running, except that it
    /// starts paused, never moving traffic by itself, when the saved file could not be read, or
    /// is missing while the history says the rollout was stopped. A saved rollout that was
    /// running starts paused too when the history stopped it after the state was saved (the
    /// state could not be written then: a read-only directory).
    pub fn open(config: &Path, stopped: BTreeMap<String, (String, SystemTime)>) -> Rollouts {
        let path = path_for(config);
        let mut unreadable = None;
        let saved = match crate::config::read::read_state(&path, MAX_FILE) {
            Ok(Some(bytes)) => serde_json::from_slice::<BTreeMap<String, Saved>>(&bytes)
                .unwrap_or_else(|e| {
                    unreadable = Some(format!("the saved rollout state does not parse ({e})"));
                    BTreeMap::new()
                }),
            Ok(None) => BTreeMap::new(),
            Err(e) => {
                unreadable = Some(format!("the saved rollout state is not read ({e})"));
                BTreeMap::new()
            }
        };
        if let Some(why) = &unreadable {
            tracing::warn!(path = %path.display(), "{why}: every rollout starts paused");
        }
        let mut routes = BTreeMap::new();
        for (id, s) in saved.into_iter().take(MAX_SAVED) {
            let Some((shift, began)) = restored(&s) else {
                continue;
            };
            let mut r = RouteRollout::new(shift, s.phase, s.reason, began);
            let saved_at = SystemTime::UNIX_EPOCH + Duration::from_millis(s.step_started);
            if let Some((event, _)) = stopped.get(&id).filter(|(_, at)| *at > saved_at) {
                if matches!(r.phase, Phase::Running | Phase::Done) {
                    r.phase = Phase::Paused;
                    r.reason = Some(format!(
                        "the history's last rollout event (`{event}`) is newer than the saved state: paused until `strangle rollout {id} resume`"
                    ));
                }
            }
            routes.insert(id, r);
        }
        Rollouts {
            path,
            routes: Mutex::new(routes),
            fleet: Mutex::new(None),
            unreadable,
            stopped,
        }
    }

    /// How a rollout nothing saved speaks for starts (see `open`).
    fn first(&self, route: &str, shift: Shift, now: Instant) -> RouteRollout {
        let paused = match (&self.unreadable, self.stopped.get(route)) {
            (Some(why), _) => Some(why.clone()),
            (None, Some((event, _))) => Some(format!(
                "no saved state, and the history's last rollout event was `{event}`"
            )),
            (None, None) => None,
        };
        match paused {
            Some(why) => RouteRollout::new(
                shift,
                Phase::Paused,
                Some(format!(
                    "{why}: paused until `strangle rollout {route} resume`"
                )),
                now,
            ),
            None => RouteRollout::new(shift, Phase::Running, None, now),
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn fleet(&self) -> Option<FleetView> {
        self.fleet.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    pub fn set_fleet(&self, view: FleetView) {
        *self.fleet.lock().unwrap_or_else(|e| e.into_inner()) = Some(view);
    }

    /// Samples one route's counters and says what to do. `shift` is the route's shift in the
    /// config now. Routes without a rollout are forgotten by `retain`.
    pub fn tick(
        &self,
        route: &str,
        rollout: &Rollout,
        shift: Shift,
        counters: Counters,
        now: Instant,
    ) -> Tick {
        self.tick_unless(route, rollout, shift, counters, now, None)
    }

    /// `tick`, where `hold` (why not) keeps the step from advancing: a fleet's leader holds
    /// while a replica's counters are missing. The gates are judged all the same, and a failure
    /// still rolls back.
    pub fn tick_unless(
        &self,
        route: &str,
        rollout: &Rollout,
        shift: Shift,
        counters: Counters,
        now: Instant,
        hold: Option<&str>,
    ) -> Tick {
        let mut routes = self.routes.lock().unwrap_or_else(|e| e.into_inner());
        let mut saved = false;
        let r = routes.entry(route.to_string()).or_insert_with(|| {
            saved = true;
            self.first(route, shift, now)
        });
        if r.shift != shift {
            match r.pending.take() {
                Some(p) if p.to == shift => r.restart_step(shift, now),
                _ => {
                    // Someone else moved the shift (the CLI, an edit): the rollout stops there
                    // and goes on only when told to.
                    let reason = format!(
                        "the shift was changed by hand from {} to {shift}; `strangle rollout {route} resume` goes on from there",
                        r.shift
                    );
                    r.restart_step(shift, now);
                    if matches!(r.phase, Phase::Running | Phase::Done) {
                        r.phase = Phase::Paused;
                    }
                    r.reason = Some(reason.clone());
                    return Tick {
                        change: None,
                        note: Some(("paused", reason)),
                        save: true,
                    };
                }
            }
            saved = true;
        }
        if r.pending.is_some() {
            // The driver is still applying it.
            return Tick::nothing(saved);
        }
        r.samples.push_back((now, counters));
        while r
            .samples
            .get(1)
            .is_some_and(|(t, _)| now.duration_since(*t) >= rollout.interval)
        {
            r.samples.pop_front();
        }
        if !matches!(r.phase, Phase::Running | Phase::Paused) {
            r.gates.clear();
            return Tick::nothing(saved);
        }
        if shift == Shift::ZERO || rollout.step_of(shift).is_none() {
            if r.phase == Phase::Paused {
                return Tick::nothing(saved);
            }
            let to = rollout.steps[0];
            return r.hand_over(
                route,
                shift,
                to,
                "advance",
                "the rollout starts".into(),
                saved,
            );
        }
        r.gates = judge(rollout, &r.window());
        let held_back = |event| r.retry_at.is_some_and(|(at, e)| now < at && e == event);
        if let Some(failed) = r.gates.iter().find(|g| g.verdict == Verdict::Fail) {
            if held_back("rollback") {
                return Tick::nothing(saved);
            }
            let reason = failed.reason();
            let to = rollout.back_from(shift);
            r.phase = Phase::RolledBack;
            return r.hand_over(route, shift, to, "rollback", reason, true);
        }
        r.waiting = hold.map(|h| format!("not advancing: {h}"));
        let held = r.gates.iter().all(|g| g.verdict == Verdict::Hold);
        if r.phase != Phase::Running || !held || r.in_step(now) < rollout.interval || hold.is_some()
        {
            return Tick::nothing(saved);
        }
        let why = format!(
            "every gate held for {} over {} new-side requests",
            humantime::format_duration(rollout.interval),
            r.window().new.requests()
        );
        match rollout.next_after(shift) {
            Some(to) => r.hand_over(route, shift, to, "advance", why, true),
            None => {
                r.phase = Phase::Done;
                r.reason = Some(format!("done at {shift}: {why}"));
                Tick {
                    change: None,
                    note: Some(("done", r.reason.clone().unwrap_or_default())),
                    save: true,
                }
            }
        }
    }

    /// Forgets the rollouts of routes that no longer have one.
    pub fn retain(&self, keep: impl Fn(&str) -> bool) -> bool {
        let mut routes = self.routes.lock().unwrap_or_else(|e| e.into_inner());
        let before = routes.len();
        routes.retain(|id, _| keep(id));
        routes.len() != before
    }

    /// The driver applied a change: the new step begins now.
    pub fn applied(&self, change: &Change) {
        let mut routes = self.routes.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(r) = routes.get_mut(&change.route) {
            if r.pending.as_ref() == Some(change) {
                r.pending = None;
                r.restart_step(change.to, Instant::now());
            }
        }
    }

    /// The driver could not apply a change (the file is read-only, another writer won): the
    /// rollout pauses with that reason.
    pub fn failed(&self, change: &Change, error: &str) {
        let mut routes = self.routes.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(r) = routes.get_mut(&change.route) {
            r.pending = None;
            // Paused, a failing gate is still judged: a rollback that could not be written is
            // tried again, once `RETRY_AFTER` has passed (a read-only file fails every time).
            r.phase = Phase::Paused;
            r.retry_at = Some((Instant::now() + RETRY_AFTER, change.event));
            r.reason = Some(format!(
                "could not {} to {}: {error}",
                change.event, change.to
            ));
        }
    }

    /// One route's rollout for `status` (`None` when it has not been looked at yet).
    pub fn status(&self, route: &str, rollout: &Rollout, shift: Shift) -> RolloutStatus {
        let routes = self.routes.lock().unwrap_or_else(|e| e.into_inner());
        let r = routes.get(route);
        let step = rollout.step_of(shift).map_or(0, |i| i + 1);
        RolloutStatus {
            phase: r.map_or(Phase::Running, |r| r.phase).as_str().to_string(),
            shift: shift.to_string(),
            step,
            steps: rollout.steps.iter().map(Shift::to_string).collect(),
            next: rollout.next_after(shift).map(|s| s.to_string()),
            step_started: humantime::format_rfc3339_seconds(
                r.map_or_else(SystemTime::now, RouteRollout::step_started),
            )
            .to_string(),
            in_step_seconds: r.map_or(0, |r| r.in_step(Instant::now()).as_secs()),
            interval_seconds: rollout.interval.as_secs(),
            min_requests: rollout.min_requests,
            gates: r.map(|r| r.gates.clone()).unwrap_or_default(),
            reason: r.and_then(|r| r.reason.clone()),
            waiting: r.and_then(|r| r.waiting.clone()),
        }
    }
}

impl RouteRollout {
    fn change(
        &mut self,
        route: &str,
        from: Shift,
        to: Shift,
        event: &'static str,
        reason: String,
    ) -> Change {
        let change = Change {
            route: route.to_string(),
            from,
            to,
            event,
            reason: reason.clone(),
        };
        self.reason = Some(reason);
        self.pending = Some(change.clone());
        change
    }

    fn hand_over(
        &mut self,
        route: &str,
        from: Shift,
        to: Shift,
        event: &'static str,
        reason: String,
        save: bool,
    ) -> Tick {
        if from == to {
            // A rollback from the first step with nothing below: stays, stopped.
            self.reason = Some(reason);
            return Tick::nothing(save);
        }
        Tick {
            change: Some(self.change(route, from, to, event, reason)),
            note: None,
            save,
        }
    }
}

/// What one tick asks of the driver.
#[derive(Debug, Default, PartialEq)]
pub struct Tick {
    pub change: Option<Change>,
    /// Something to log and record without a shift change: (event, reason).
    pub note: Option<(&'static str, String)>,
    /// The saved state changed.
    pub save: bool,
}

impl Tick {
    fn nothing(save: bool) -> Tick {
        Tick {
            save,
            ..Tick::default()
        }
    }
}

#[cfg(test)]
mod tests;
