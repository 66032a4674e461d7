//! Shifts in force that the config file does not hold: a rollback (or an abort) the file could
//! not take, because it is read-only (a mounted ConfigMap) or does not parse. Failing to write
//! it must not keep traffic on a new side that is failing, so the shift is applied in memory
//! and the file written when it can be (`Live::retry_overrides`).
//!
//! Each override remembers what the file said when it was made. It is applied to every config a
//! reload reads while the file still says that; once the file says anything else (the shift
//! written after all, or a person's edit), the file is the truth again and the override ends.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::config::Config;
use crate::split::Shift;

/// How often writing an override into the file is tried again.
const RETRY_EVERY: Duration = Duration::from_secs(30);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Override {
    /// The route's shift in the file when the override was made.
    file_says: Shift,
    /// The shift in force.
    shift: Shift,
    /// When writing it into the file was last tried.
    tried: Instant,
}

#[derive(Debug, Default)]
pub struct Overrides(Mutex<BTreeMap<String, Override>>);

impl Overrides {
    /// Puts `shift` in force for `route`, over what the file says (`file_says`; an override
    /// already in force keeps the file's value it was made against).
    pub fn set(&self, route: &str, file_says: Shift, shift: Shift) {
        let mut all = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let file_says = all.get(route).map_or(file_says, |o| o.file_says);
        let o = Override {
            file_says,
            shift,
            tried: Instant::now(),
        };
        all.insert(route.to_string(), o);
    }

    /// Applies the overrides to a config read from the file, ending those whose route's shift
    /// in the file has moved on. Returns the routes it applied to.
    pub fn apply(&self, config: &mut Config) -> Vec<String> {
        let mut all = self.0.lock().unwrap_or_else(|e| e.into_inner());
        all.retain(|id, o| {
            config
                .routes
                .iter()
                .any(|r| &r.id == id && r.shift == o.file_says)
        });
        let mut applied = Vec::new();
        for route in &mut config.routes {
            if let Some(o) = all.get(&route.id) {
                route.shift = o.shift;
                applied.push(route.id.clone());
            }
        }
        applied
    }

    /// The overrides whose writing into the file is due to be tried again (marked tried).
    pub fn due(&self, now: Instant) -> Vec<(String, Shift)> {
        let mut all = self.0.lock().unwrap_or_else(|e| e.into_inner());
        all.iter_mut()
            .filter(|(_, o)| now.duration_since(o.tried) >= RETRY_EVERY)
            .map(|(id, o)| {
                o.tried = now;
                (id.clone(), o.shift)
            })
            .collect()
    }

    /// Each route in force by override: (route, what the file says, the shift in force).
    pub fn list(&self) -> Vec<(String, Shift, Shift)> {
        let all = self.0.lock().unwrap_or_else(|e| e.into_inner());
        all.iter()
            .map(|(id, o)| (id.clone(), o.file_says, o.shift))
            .collect()
    }
}

impl super::Live {
    /// Puts `shift` in force for `route` without the config file (see the module doc): the
    /// running snapshot is rebuilt with it, and every reload keeps it while the file still says
    /// what it said.
    pub async fn override_shift(
        self: &std::sync::Arc<Self>,
        route: &str,
        shift: Shift,
        cause: &crate::history::Cause,
    ) -> Result<(), super::ReloadError> {
        let _one_at_a_time = self.reload_lock.lock().await;
        let old = self.load();
        let Some(now) = old.config.routes.iter().find(|r| r.id == route) else {
            return Err(super::ReloadError::Stalled(format!("no route `{route}`")));
        };
        self.overrides.set(route, now.shift, shift);
        let mut config = old.config.clone();
        self.overrides.apply(&mut config);
        let live = std::sync::Arc::clone(self);
        let snapshot = tokio::task::spawn_blocking(move || {
            super::Snapshot::build(config, Some(&live.load()), &live.registry)
        })
        .await
        .map_err(|e| {
            super::ReloadError::Stalled(format!("rebuilding the snapshot failed: {e}"))
        })??;
        self.snapshot.store(std::sync::Arc::new(snapshot));
        self.installed.send_modify(|n| *n += 1);
        let new = self.load();
        self.history.record_shifts(
            &super::shifts(&old.config),
            &super::shifts(&new.config),
            cause,
            None,
        );
        Ok(())
    }
}
