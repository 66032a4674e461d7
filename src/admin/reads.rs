//! The admin API's reads that take parameters: `GET /status` (`?series=`), `GET /inventory`,
//! `GET /history` and `GET /routes/{id}/diffs`.

use std::sync::Arc;

use bytes::Bytes;
use http::{Response, StatusCode};
use http_body_util::Full;
use serde_json::json;

use super::{clip, error, json_reply, query, reply};
use crate::state::Live;

/// `GET /status`, with the time series when `?series=RANGE` asks (compact: for programs).
pub(super) fn status(live: &Arc<Live>, q: Option<&str>) -> Response<Full<Bytes>> {
    let range = match query::series_range(q) {
        Ok(r) => r,
        Err(why) => return error(StatusCode::BAD_REQUEST, why),
    };
    let mut status = serde_json::to_value(crate::status::build(live)).unwrap_or_default();
    let Some(range) = range else {
        return json_reply(StatusCode::OK, &status);
    };
    if let Some(obj) = status.as_object_mut() {
        let series = live.registry.series(range);
        obj.insert(
            "series".into(),
            serde_json::to_value(series).unwrap_or_default(),
        );
    }
    // Series are for programs (the dashboard reads them every few seconds): compact.
    let body = serde_json::to_vec(&status).unwrap_or_default();
    reply(StatusCode::OK, "application/json", body)
}

pub(super) fn inventory(live: &Arc<Live>, q: Option<&str>) -> Response<Full<Bytes>> {
    match query::limit_query(q, 100) {
        Ok(limit) => {
            let snap = live.load();
            let report = crate::inventory::report::report(&snap.inventory, &snap.config, limit);
            json_reply(
                StatusCode::OK,
                &serde_json::to_value(report).unwrap_or_default(),
            )
        }
        Err(why) => error(StatusCode::BAD_REQUEST, why),
    }
}

pub(super) fn history(live: &Arc<Live>, q: Option<&str>) -> Response<Full<Bytes>> {
    match query::history_query(q) {
        Ok((route, limit)) => json_reply(
            StatusCode::OK,
            &json!({
                "file": live.history.path().display().to_string(),
                "entries": live.history.entries(route.as_deref(), limit),
            }),
        ),
        Err(why) => error(StatusCode::BAD_REQUEST, why),
    }
}

/// `GET /routes/{id}/diffs`: the route's shadow results and its last mismatches, newest first.
pub(super) fn diffs(live: &Arc<Live>, id: &str) -> Response<Full<Bytes>> {
    let snap = live.load();
    let Some(route) = snap.config.routes.iter().find(|r| r.id == id) else {
        let known: Vec<&str> = snap.config.routes.iter().map(|r| r.id.as_str()).collect();
        let why = format!(
            "no route `{}`; known routes: {}",
            clip(id),
            known.join(", ")
        );
        return error(StatusCode::NOT_FOUND, why);
    };
    let Some(config) = &route.shadow else {
        let why = format!(
            "route `{}` does not shadow: add `shadow = {{ percent = \"10%\" }}` to it",
            route.id
        );
        return error(StatusCode::NOT_FOUND, why);
    };
    let state = snap.shadows.route(&route.id);
    json_reply(
        StatusCode::OK,
        &json!({
            "route": route.id,
            "shadow": state.status(config),
            "samples": state.samples(),
        }),
    )
}
