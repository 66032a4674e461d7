//! What a rollout keeps beyond the process: its saved form (`strangle.rollout.json` beside the
//! config, or a fleet's Lease), written and taken back.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use serde::{Deserialize, Serialize};

use super::{Phase, Rollouts, RouteRollout};
use crate::split::Shift;

/// The saved form of one route's rollout.
#[derive(Debug, Serialize, Deserialize)]
pub(super) struct Saved {
    pub(super) phase: Phase,
    pub(super) shift: String,
    /// Unix milliseconds.
    pub(super) step_started: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(super) reason: Option<String>,
}

/// The most routes a saved file may bring back, and its largest size.
pub(super) const MAX_SAVED: usize = 4096;
pub(super) const MAX_FILE: u64 = 4 << 20;

/// A saved rollout's shift and when its step began (a clock that went back, or a file from
/// the future, begins it now).
pub(super) fn restored(s: &Saved) -> Option<(Shift, Instant)> {
    let shift = Shift::parse(&s.shift).ok()?;
    let started = SystemTime::UNIX_EPOCH + Duration::from_millis(s.step_started);
    let ago = SystemTime::now()
        .duration_since(started)
        .unwrap_or_default();
    let now = Instant::now();
    Some((shift, now.checked_sub(ago).unwrap_or(now)))
}

pub fn path_for(config: &Path) -> PathBuf {
    crate::config::beside(config, "rollout.json")
}

fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

impl Rollouts {
    /// Takes the state another replica kept (`to_json`'s form): the fleet leader's, seen by a
    /// follower, or the one a replica taking over the lead goes on from. A text that does not
    /// parse changes nothing.
    pub fn adopt(&self, text: &str) -> bool {
        let Ok(saved) = serde_json::from_str::<BTreeMap<String, Saved>>(text) else {
            return false;
        };
        let mut routes = self.routes.lock().unwrap_or_else(|e| e.into_inner());
        for (id, s) in saved.into_iter().take(MAX_SAVED) {
            let Some((shift, began)) = restored(&s) else {
                continue;
            };
            let r = routes
                .entry(id)
                .or_insert_with(|| RouteRollout::new(shift, s.phase, None, began));
            if r.shift != shift {
                r.samples.clear();
                r.gates.clear();
            }
            r.pending = None;
            r.shift = shift;
            r.phase = s.phase;
            r.reason = s.reason;
            r.began = began;
        }
        true
    }

    /// The saved form of every rollout, as JSON.
    pub fn to_json(&self) -> Vec<u8> {
        let routes = self.routes.lock().unwrap_or_else(|e| e.into_inner());
        let saved: BTreeMap<&String, Saved> = routes
            .iter()
            .map(|(id, r)| {
                let s = Saved {
                    phase: r.phase,
                    // What the file will say once a pending change is applied.
                    shift: r.pending.as_ref().map_or(r.shift, |p| p.to).to_string(),
                    step_started: unix_ms(r.step_started()),
                    reason: r.reason.clone(),
                };
                (id, s)
            })
            .collect();
        serde_json::to_vec_pretty(&saved).unwrap_or_default()
    }

    /// Writes the state next to the config (a temporary file renamed over it).
    pub fn save(&self) -> std::io::Result<()> {
        let text = self.to_json();
        let tmp = self.path.with_extension("json.tmp");
        std::fs::write(&tmp, text).and_then(|()| std::fs::rename(&tmp, &self.path))
    }
}
