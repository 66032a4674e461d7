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
use crate::config::fleet::{Fleet, ShiftTarget};
use crate::fleet::{config_text, gather, Kube};
use crate::rollout::{Change, Counters, FleetView, Tick};
use crate::split::Shift;
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
            kube: Kube::new(fleet.api.as_deref(), &fleet.token_file, &fleet.ca_file)?,
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
        let key = config_key(live, fleet.key.as_ref());
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
        let key = config_key(live, fleet.key.as_ref());
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
        let route = &change.route;
        match write_shift(
            &self.kube,
            live,
            &fleet.configmap,
            key,
            route,
            Some(change.from),
            change.to,
        )
        .await
        {
            Ok(Written::Done(_)) => Ok(true),
            Ok(Written::Conflict) => Ok(false),
            Err(ShiftWrite::Stale(now)) => Err(format!(
                "the ConfigMap has {now} for `{route}`, not {} as when the step was decided",
                change.from
            )),
            Err(ShiftWrite::NoRoute) => Err(format!("the ConfigMap has no route `{route}`")),
            Err(ShiftWrite::Failed(e)) => Err(e),
        }
    }
}

/// `PUT /routes/{id}/shift` when the replicas' config comes from a ConfigMap: the shift is
/// written there (read again and written again on a conflict, a few times), so every replica
/// gets the same one.
pub(super) async fn shift_in_configmap(
    live: &Arc<Live>,
    target: &ShiftTarget,
    route: &str,
    to: Shift,
    expect: Option<Shift>,
    who: &str,
) -> Result<serde_json::Value, super::AdminError> {
    let name = format!("{}/{}", target.configmap.0, target.configmap.1);
    let failed = |why: String, conflict: bool| super::AdminError::ConfigMap {
        configmap: name.clone(),
        why,
        conflict,
    };
    let kube = Kube::new(target.api.as_deref(), &target.token_file, &target.ca_file)
        .map_err(|e| failed(e, false))?;
    let key = config_key(live, target.key.as_ref());
    for _ in 0..3 {
        match write_shift(&kube, live, &target.configmap, &key, route, expect, to).await {
            Ok(Written::Done(from)) => {
                tracing::info!(route, %from, %to, client = %who, configmap = %name, "shift written to the ConfigMap");
                return Ok(serde_json::json!({
                    "route": route, "from": from.to_string(), "to": to.to_string(),
                    "file": format!("ConfigMap {name} (key {key}); every replica applies it when its mounted file updates"),
                    "configmap": name,
                }));
            }
            Ok(Written::Conflict) => continue,
            Err(ShiftWrite::Stale(now)) => {
                return Err(super::AdminError::Stale {
                    route: route.to_string(),
                    now,
                    expected: expect.unwrap_or(now),
                })
            }
            Err(ShiftWrite::NoRoute) => {
                return Err(failed(format!("it has no route `{route}`"), false))
            }
            Err(ShiftWrite::Failed(e)) => return Err(failed(e, false)),
        }
    }
    Err(failed(
        "another writer changed it each time it was read (409 three times); try again".into(),
        true,
    ))
}

/// How a shift written into the ConfigMap went.
pub(super) enum Written {
    /// Written; the shift it replaced.
    Done(Shift),
    /// Another writer changed the ConfigMap since it was read (409): read it again.
    Conflict,
}

/// Why a shift was not written into the ConfigMap.
pub(super) enum ShiftWrite {
    NoRoute,
    /// The ConfigMap's shift is this, not the one the change was decided on.
    Stale(Shift),
    Failed(String),
}

/// Writes route `route`'s shift `to` into the ConfigMap's `key`, as it was read (`from`: the
/// shift the change was decided on, if it must still be that): the same comment-keeping edit
/// as the file, checked as a config before it goes, and `resourceVersion` kept, so that a
/// write based on an older ConfigMap is refused by the API server (409) and never overwrites
/// another's.
pub(super) async fn write_shift(
    kube: &Kube,
    live: &Live,
    configmap: &(String, String),
    key: &str,
    route: &str,
    from: Option<Shift>,
    to: Shift,
) -> Result<Written, ShiftWrite> {
    let mut object = kube
        .configmap(configmap)
        .await
        .map_err(ShiftWrite::Failed)?;
    let text = config_text(&object, key)
        .ok_or_else(|| ShiftWrite::Failed(format!("the ConfigMap has no key `{key}`")))?;
    let now = crate::edit::shift_in_text(text, route).ok_or(ShiftWrite::NoRoute)?;
    if from.is_some_and(|f| f != now) {
        return Err(ShiftWrite::Stale(now));
    }
    let (edited, _) = crate::edit::set_shift_in_text(&live.path, text, route, to)
        .map_err(|e| ShiftWrite::Failed(e.to_string()))?;
    // Never hand the fleet a config it would refuse.
    let base = live.path.parent().unwrap_or(std::path::Path::new("."));
    // Where, not what: a message may quote a value the config interpolated (`${file:...}`).
    crate::config::parse(key, &edited, base).map_err(|e| {
        let first = e.0.first().map_or(String::new(), |d| format!(", the first at {}:{}:{}", d.file, d.line, d.col));
        ShiftWrite::Failed(format!(
            "the edited config is invalid ({} problem(s){first}): run `strangle check` on the ConfigMap's text",
            e.0.len()
        ))
    })?;
    object["data"][key] = serde_json::Value::String(edited);
    match kube.replace_configmap(configmap, &object).await {
        Ok(true) => Ok(Written::Done(now)),
        Ok(false) => Ok(Written::Conflict),
        Err(e) => Err(ShiftWrite::Failed(e)),
    }
}

/// The ConfigMap key holding the config: `key`, or the config file's name.
pub(super) fn config_key(live: &Live, key: Option<&String>) -> String {
    key.cloned().unwrap_or_else(|| {
        live.path.file_name().map_or_else(
            || "strangle.toml".into(),
            |n| n.to_string_lossy().into_owned(),
        )
    })
}
