//! A fleet's rollout (`[admin.fleet]`): every tick each replica takes or renews the Lease. The
//! one that holds it leads: it sums every replica's counters (their `GET /status`), judges the
//! gates on the sum with the same `rollout::Rollouts` a single instance uses, and writes each
//! step into the shared ConfigMap (the same comment-keeping edit as the file, checked as a
//! config first, optimistic on `resourceVersion`); every replica, the leader too, reloads it
//! when the kubelet updates the mounted file. The others follow: they show the leader's state,
//! kept in the Lease, and act on nothing.

use std::sync::Arc;
use std::time::Instant;

use super::rollout::{record, ROLLOUT};
use crate::config::fleet::Fleet;
use crate::fleet::{config_text, gather, Kube};
use crate::rollout::{Change, Counters, FleetView, Tick};
use crate::state::Live;

/// The fleet's client and who this replica is.
pub(super) struct Member {
    kube: Kube,
    identity: String,
}

impl Member {
    pub(super) fn new(fleet: &Fleet) -> Result<Member, String> {
        let identity = fleet
            .identity
            .clone()
            .filter(|i| !i.is_empty())
            .or_else(|| std::env::var("POD_NAME").ok())
            .or_else(|| {
                nix::unistd::gethostname()
                    .ok()
                    .and_then(|h| h.into_string().ok())
            })
            .unwrap_or_else(|| format!("strangle-{}", std::process::id()));
        Ok(Member {
            kube: Kube::new(fleet)?,
            identity,
        })
    }

    /// One round: the Lease, then (leading) the rollouts of every route that has one.
    pub(super) async fn tick(&self, live: &Arc<Live>, fleet: &Fleet) {
        let view = |leader: &str, leading: bool, error: Option<String>| FleetView {
            identity: self.identity.clone(),
            leader: leader.to_string(),
            leading,
            error,
        };
        let state = String::from_utf8(live.rollouts.to_json()).unwrap_or_default();
        let lead = match self
            .kube
            .lead(&fleet.lease, &self.identity, fleet.lease_duration, &state)
            .await
        {
            Ok(lead) => lead,
            Err(e) => {
                tracing::warn!("fleet: the Lease cannot be read or renewed: {e}");
                let was = live.rollouts.fleet();
                // Not knowing the Lease, this replica does not lead.
                let leader = was.map(|v| v.leader).unwrap_or_default();
                live.rollouts.set_fleet(view(&leader, false, Some(e)));
                return;
            }
        };
        let was_leading = live.rollouts.fleet().is_some_and(|v| v.leading);
        if let Some(kept) = &lead.state {
            live.rollouts.adopt(kept);
        }
        if lead.leading && !was_leading {
            tracing::info!(identity = %self.identity, "fleet: this replica leads the rollouts now");
        }
        if !lead.leading {
            live.rollouts.set_fleet(view(&lead.holder, false, None));
            return;
        }
        let error = self.lead_rollouts(live, fleet).await.err();
        if let Some(e) = &error {
            tracing::warn!("fleet: {e}");
        }
        live.rollouts.set_fleet(view(&self.identity, true, error));
    }

    async fn lead_rollouts(&self, live: &Arc<Live>, fleet: &Fleet) -> Result<(), String> {
        let snap = live.load();
        if snap.config.routes.iter().all(|r| r.rollout.is_none()) {
            return Ok(());
        }
        let key = key(live, fleet);
        let configmap = self.kube.configmap(&fleet.configmap).await?;
        let text = config_text(&configmap, &key)
            .ok_or_else(|| format!("the ConfigMap has no key `{key}`"))?
            .to_string();
        let token = snap.config.admin.token.as_deref();
        let (sums, missing) = gather(&fleet.peers, token).await;
        let hold = missing
            .first()
            .map(|m| format!("replica {m} did not answer ({} of them)", missing.len()));
        let now = Instant::now();
        for route in &snap.config.routes {
            let Some(rollout) = &route.rollout else {
                continue;
            };
            // The ConfigMap is the fleet's truth for the step, ahead of this replica's file.
            let shift = crate::edit::shift_in_text(&text, &route.id).unwrap_or(route.shift);
            let counters = sums.get(&route.id).copied().unwrap_or(Counters::default());
            let Tick { change, note, .. } = live.rollouts.tick_unless(
                &route.id,
                rollout,
                shift,
                counters,
                now,
                hold.as_deref(),
            );
            if let Some((event, reason)) = note {
                tracing::warn!(route = %route.id, event, "rollout: {reason}");
                record(live, &ROLLOUT, &route.id, event, &reason);
            }
            if let Some(change) = change {
                if let Err(e) = self.write_step(live, fleet, &change).await {
                    tracing::error!(route = %change.route, "rollout could not write the ConfigMap: {e}");
                }
            }
        }
        Ok(())
    }

    /// Writes a step into the ConfigMap (re-read and edited again on a conflict, a few
    /// times), recorded in this replica's history.
    pub(super) async fn write_step(
        &self,
        live: &Arc<Live>,
        fleet: &Fleet,
        change: &Change,
    ) -> Result<(), String> {
        let text = format!("{} -> {}: {}", change.from, change.to, change.reason);
        tracing::info!(route = %change.route, event = change.event, "rollout (fleet): {text}");
        record(live, &ROLLOUT, &change.route, change.event, &text);
        let key = key(live, fleet);
        let mut last = String::new();
        for _ in 0..3 {
            match self.try_write(live, fleet, &key, change).await {
                Ok(true) => {
                    live.rollouts.applied(change);
                    return Ok(());
                }
                Ok(false) => last = "the ConfigMap changed meanwhile".into(),
                Err(e) => {
                    last = e;
                    break;
                }
            }
        }
        live.rollouts.failed(change, &last);
        let why = format!("could not {} to {}: {last}", change.event, change.to);
        record(live, &ROLLOUT, &change.route, "failed", &why);
        Err(why)
    }

    async fn try_write(
        &self,
        live: &Arc<Live>,
        fleet: &Fleet,
        key: &str,
        change: &Change,
    ) -> Result<bool, String> {
        let mut configmap = self.kube.configmap(&fleet.configmap).await?;
        let text = config_text(&configmap, key).ok_or_else(|| format!("no key `{key}`"))?;
        let now = crate::edit::shift_in_text(text, &change.route);
        if now != Some(change.from) {
            return Err(format!(
                "the ConfigMap has {} for `{}`, not {} as when the step was decided",
                now.map_or("no route".to_string(), |s| s.to_string()),
                change.route,
                change.from
            ));
        }
        let (edited, _) =
            crate::edit::set_shift_in_text(&live.path, text, &change.route, change.to)
                .map_err(|e| e.to_string())?;
        // Never hand the fleet a config it would refuse.
        let base = live.path.parent().unwrap_or(std::path::Path::new("."));
        crate::config::parse(key, &edited, base)
            .map_err(|e| format!("the edited config is invalid: {e}"))?;
        configmap["data"][key] = serde_json::Value::String(edited);
        self.kube
            .replace_configmap(&fleet.configmap, &configmap)
            .await
    }
}

/// The ConfigMap key holding the config: `key`, or the config file's name.
fn key(live: &Live, fleet: &Fleet) -> String {
    fleet.key.clone().unwrap_or_else(|| {
        live.path.file_name().map_or_else(
            || "strangle.toml".into(),
            |n| n.to_string_lossy().into_owned(),
        )
    })
}
