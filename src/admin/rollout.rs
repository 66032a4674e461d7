//! Driving progressive rollouts: every `rollout::TICK` each route's counters are sampled and
//! judged (`rollout::Rollouts::tick`), and a step or a rollback is applied the way an admin
//! shift is (the config file edited, then reloaded), recorded in the history as the rollout's.
//! Also `POST /routes/{id}/rollout/{action}` (pause, resume, promote, abort).

use std::sync::Arc;
use std::time::Instant;

use async_trait::async_trait;
use http::{Response, StatusCode};
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use serde_json::json;

use super::fleet::Member;
use super::{apply, error, json_reply, Command};
use crate::config::fleet::Fleet;
use crate::history::{Cause, How, What};
use crate::rollout::{Action, Change, Tick};
use crate::state::Live;

/// What a rollout's own changes are recorded as.
pub(super) const ROLLOUT: Cause = Cause {
    how: How::Rollout,
    client: None,
};

/// Samples, judges and applies every route's rollout.
pub struct RolloutDriver {
    pub live: Arc<Live>,
}

#[async_trait]
impl BackgroundService for RolloutDriver {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let mut every = tokio::time::interval(crate::rollout::TICK);
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // With `[admin.fleet]`: the fleet's client, made again when that table changes.
        let mut member: Option<(Fleet, Member)> = None;
        let mut n = 0u64;
        loop {
            tokio::select! {
                _ = every.tick() => {}
                _ = shutdown.changed() => return,
            }
            n += 1;
            let snap = self.live.load();
            let Some(fleet) = &snap.config.admin.fleet else {
                member = None;
                tick(&self.live).await;
                continue;
            };
            // A fleet's round calls the API server and every replica: every other tick.
            if n % 2 == 1 {
                continue;
            }
            if member.as_ref().is_none_or(|(was, _)| was != fleet) {
                member = match Member::new(fleet) {
                    Ok(m) => Some((fleet.clone(), m)),
                    Err(e) => {
                        tracing::error!("fleet: no client for the Kubernetes API: {e}");
                        None
                    }
                };
            }
            if let Some((fleet, member)) = &member {
                member.tick(&self.live, fleet).await;
            }
        }
    }
}

/// One round over every route with a rollout.
async fn tick(live: &Arc<Live>) {
    let snap = live.load();
    let rollouts = Arc::clone(&live.rollouts);
    let mut save = rollouts.retain(|id| {
        snap.config
            .routes
            .iter()
            .any(|r| r.id == id && r.rollout.is_some())
    });
    let now = Instant::now();
    for (i, route) in snap.config.routes.iter().enumerate() {
        let Some(rollout) = &route.rollout else {
            continue;
        };
        let counters = snap.rollout_counters(i);
        let Tick {
            change,
            note,
            save: changed,
        } = rollouts.tick(&route.id, rollout, route.shift, counters, now);
        save |= changed;
        if let Some((event, reason)) = note {
            tracing::warn!(route = %route.id, event, "rollout: {reason}");
            record(live, &ROLLOUT, &route.id, event, &reason);
        }
        if let Some(change) = change {
            carry_out(live, &change, &ROLLOUT).await;
            save = true;
        }
    }
    if save {
        save_state(live).await;
    }
    write_overrides(live).await;
}

/// Tries again to write into the file the shifts in force by override (`state::Overrides`).
async fn write_overrides(live: &Arc<Live>) {
    for (route, shift) in live.overrides.due(Instant::now()) {
        let (path, id) = (live.path.clone(), route.clone());
        let written =
            tokio::task::spawn_blocking(move || crate::edit::set_shift_in_file(&path, &id, shift))
                .await;
        match written {
            Ok(Ok(_)) => {
                tracing::info!(route = %route, %shift, "the config file now holds the shift that was in force in memory");
                let _ = live.reload(&ROLLOUT).await;
            }
            Ok(Err(e)) => {
                tracing::warn!(route = %route, "the config file still cannot take the shift in force: {e}")
            }
            Err(e) => tracing::warn!(route = %route, "{e}"),
        }
    }
}

/// Applies a change the rollout decided: recorded first (the decision and why), then written
/// and reloaded as an admin shift is; a failure is recorded and tells the rollout.
async fn carry_out(live: &Arc<Live>, change: &Change, cause: &Cause) -> Option<String> {
    let text = format!("{} -> {}: {}", change.from, change.to, change.reason);
    if change.event == "rollback" {
        tracing::warn!(route = %change.route, event = change.event, "rollout: {text}");
    } else {
        tracing::info!(route = %change.route, event = change.event, "rollout: {text}");
    }
    record(live, cause, &change.route, change.event, &text);
    let command = Command::SetShift {
        route: change.route.clone(),
        shift: change.to,
        expect: Some(change.from),
        // A person's edit that lands meanwhile wins: the rollout then pauses on it.
        insist: false,
    };
    match apply(live, command, cause).await {
        Ok(_) => {
            live.rollouts.applied(change);
            None
        }
        // A rollback or an abort the file cannot take is put in force all the same: never
        // leave traffic on a failing new side for want of a writable file.
        Err(e) if matches!(change.event, "rollback" | "abort") => {
            let e = e.to_string();
            match live.override_shift(&change.route, change.to, cause).await {
                Ok(()) => {
                    live.rollouts.applied(change);
                    let why = format!(
                        "{} to {} is in force, but the config file could not take it ({e}); it is written as soon as it can be",
                        change.event, change.to
                    );
                    tracing::error!(route = %change.route, "rollout: {why}");
                    record(live, cause, &change.route, "in-memory", &why);
                    None
                }
                Err(e2) => {
                    let e = format!("{e}; and in memory: {e2}");
                    live.rollouts.failed(change, &e);
                    record(live, cause, &change.route, "failed", &e);
                    Some(e)
                }
            }
        }
        Err(e) => {
            let e = e.to_string();
            tracing::error!(route = %change.route, event = change.event, to = %change.to, "rollout could not change the shift: {e}");
            live.rollouts.failed(change, &e);
            let why = format!("could not {} to {}: {e}", change.event, change.to);
            record(live, cause, &change.route, "failed", &why);
            Some(e)
        }
    }
}

pub(super) fn record(live: &Live, cause: &Cause, route: &str, event: &str, reason: &str) {
    let what = What::Rollout {
        route: route.to_string(),
        event: event.to_string(),
        reason: reason.to_string(),
    };
    live.history.record(what, cause);
}

async fn save_state(live: &Arc<Live>) {
    let rollouts = Arc::clone(&live.rollouts);
    let saved = tokio::task::spawn_blocking(move || rollouts.save()).await;
    if let Ok(Err(e)) = saved {
        tracing::warn!(path = %live.rollouts.path().display(), "the rollouts' state is not saved: {e}");
    }
}

/// `POST /routes/{id}/rollout/{action}`.
pub(super) async fn act(
    live: &Arc<Live>,
    id: &str,
    action: &str,
    cause: &Cause,
) -> Response<http_body_util::Full<bytes::Bytes>> {
    let Some(action) = Action::parse(action) else {
        return error(
            StatusCode::NOT_FOUND,
            "no such rollout action; use pause, resume, promote or abort",
        );
    };
    let snap = live.load();
    let Some(route) = snap.config.routes.iter().find(|r| r.id == id) else {
        return error(
            StatusCode::NOT_FOUND,
            format!("no route `{}`", super::clip(id)),
        );
    };
    let Some(rollout) = &route.rollout else {
        return error(
            StatusCode::NOT_FOUND,
            format!("route `{id}` has no rollout; add a [routes.rollout] table to its config"),
        );
    };
    let who = match (&cause.how, &cause.client) {
        (How::Cli, Some(c)) => format!("the CLI from {c}"),
        (_, Some(c)) => format!("the admin API from {c}"),
        _ => "the admin API".to_string(),
    };
    if let Some(fleet) = &snap.config.admin.fleet {
        let view = live.rollouts.fleet();
        if !view.as_ref().is_some_and(|v| v.leading) {
            let leader = view.map(|v| v.leader).filter(|l| !l.is_empty());
            let leader = leader.unwrap_or_else(|| "not known yet".into());
            return error(
                StatusCode::CONFLICT,
                format!("this replica does not lead the fleet's rollouts (the leader is {leader}): send the action to the leader's admin API"),
            );
        }
        return act_in_fleet(live, fleet, id, rollout, route.shift, action, &who, cause).await;
    }
    let change = match live.rollouts.act(id, rollout, route.shift, action, &who) {
        Ok(change) => change,
        Err(e) => return error(StatusCode::CONFLICT, e),
    };
    tracing::info!(route = %id, action = action.as_str(), client = ?cause.client, "rollout {}", action.as_str());
    let mut failed = None;
    match &change {
        Some(change) => failed = carry_out(live, change, cause).await,
        None => record(
            live,
            cause,
            id,
            action.as_str(),
            &format!("{} by {who}", action.as_str()),
        ),
    }
    save_state(live).await;
    let snap = live.load();
    let shift = snap
        .config
        .routes
        .iter()
        .find(|r| r.id == id)
        .map_or(route.shift, |r| r.shift);
    let status = live.rollouts.status(id, rollout, shift);
    match failed {
        Some(e) => error(StatusCode::CONFLICT, e),
        None => json_reply(StatusCode::OK, &json!({ "route": id, "rollout": status })),
    }
}

/// An action on the fleet's leader: its change is written into the ConfigMap; the new state
/// reaches the other replicas through the Lease.
#[allow(clippy::too_many_arguments)]
async fn act_in_fleet(
    live: &Arc<Live>,
    fleet: &Fleet,
    id: &str,
    rollout: &crate::config::rollout::Rollout,
    shift: crate::split::Shift,
    action: Action,
    who: &str,
    cause: &Cause,
) -> Response<http_body_util::Full<bytes::Bytes>> {
    let member = match Member::new(fleet) {
        Ok(m) => m,
        Err(e) => return error(StatusCode::SERVICE_UNAVAILABLE, e),
    };
    let change = match live.rollouts.act(id, rollout, shift, action, who) {
        Ok(change) => change,
        Err(e) => return error(StatusCode::CONFLICT, e),
    };
    record(
        live,
        cause,
        id,
        action.as_str(),
        &format!("{} by {who}", action.as_str()),
    );
    if let Some(change) = &change {
        if let Err(e) = member.write_step(live, fleet, change).await {
            return error(StatusCode::CONFLICT, e);
        }
    }
    let shift = change.map_or(shift, |c| c.to);
    let status = live.rollouts.status(id, rollout, shift);
    json_reply(StatusCode::OK, &json!({ "route": id, "rollout": status }))
}
