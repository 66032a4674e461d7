//! An operator's actions on a rollout: pause, resume, promote, abort.

use std::time::Instant;

use super::{Change, Phase, Rollouts};
use crate::config::rollout::Rollout;
use crate::split::Shift;

/// An operator's command.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Pause,
    Resume,
    Promote,
    Abort,
}

impl Action {
    pub fn parse(s: &str) -> Option<Action> {
        Some(match s {
            "pause" => Action::Pause,
            "resume" => Action::Resume,
            "promote" => Action::Promote,
            "abort" => Action::Abort,
            _ => return None,
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Action::Pause => "pause",
            Action::Resume => "resume",
            Action::Promote => "promote",
            Action::Abort => "abort",
        }
    }
}

/// Why an action was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ActionError {
    #[error("route `{0}` has no rollout")]
    NoRollout(String),
    #[error("the rollout of `{route}` is {phase}: {action} does nothing now")]
    Pointless {
        route: String,
        phase: &'static str,
        action: &'static str,
    },
}

impl Rollouts {
    /// Applies an operator's action; returns the shift change it needs, if any.
    pub fn act(
        &self,
        route: &str,
        rollout: &Rollout,
        shift: Shift,
        action: Action,
        who: &str,
    ) -> Result<Option<Change>, ActionError> {
        let mut routes = self.routes.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        let r = routes
            .entry(route.to_string())
            .or_insert_with(|| self.first(route, shift, now));
        let pointless = |phase: Phase| ActionError::Pointless {
            route: route.to_string(),
            phase: phase.as_str(),
            action: action.as_str(),
        };
        let last = rollout.steps.last().copied().unwrap_or(Shift::ALL);
        let change = match action {
            Action::Pause if r.phase == Phase::Running => {
                r.phase = Phase::Paused;
                r.reason = Some(format!("paused by {who}"));
                None
            }
            Action::Resume if r.phase != Phase::Running && r.phase != Phase::Done => {
                r.phase = Phase::Running;
                r.reason = Some(format!("resumed by {who}"));
                r.restart_step(shift, now);
                None
            }
            Action::Promote if shift != last || r.phase != Phase::Done => {
                r.phase = Phase::Done;
                let reason = format!("promoted to {last} by {who}");
                (shift != last).then(|| r.change(route, shift, last, "promote", reason.clone()))
            }
            Action::Abort if r.phase != Phase::Aborted || shift != Shift::ZERO => {
                r.phase = Phase::Aborted;
                let reason = format!("aborted by {who}");
                (shift != Shift::ZERO)
                    .then(|| r.change(route, shift, Shift::ZERO, "abort", reason.clone()))
            }
            _ => return Err(pointless(r.phase)),
        };
        Ok(change)
    }
}
