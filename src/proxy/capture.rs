//! The request path's side of capture: at the account step, a request on the new side of a
//! route with `capture` that the new side failed (a 5xx answer, or no answer at all, whether or
//! not legacy then served it) is kept in the route's spool, with what the client got.

use std::time::SystemTime;

use pingora::proxy::Session;

use super::{https, Ctx};
use crate::capture::{kept_body, kept_headers, kept_query, Body, Record, Request, Response};
use crate::config::capture::Event;

/// Keeps the request in its route's spool when the new side failed it and the route keeps
/// that (`status`: what the client got; `error`: why the request failed, if it did).
pub(super) fn keep(session: &mut Session, ctx: &Ctx, status: u16, error: Option<&str>) {
    let Some(tap) = ctx.shadow.as_deref() else {
        return;
    };
    let Some(keep) = tap.keep.as_ref() else {
        return;
    };
    // The tap keeps only what the split sent to the new side; a fallback moved it to legacy.
    let new_side = ctx.req.side() == Some(crate::split::Side::New) || ctx.req.fallback.is_some();
    if !new_side {
        return;
    }
    let event = if ctx.req.fallback.is_some() || (error.is_some() && status >= 500) {
        Event::NewError
    } else if status >= 500 {
        Event::New5xx
    } else {
        return;
    };
    if !keep.on.contains(&event) {
        return;
    }
    let (Some(route), Some(side), Some(path)) = (ctx.req.route_id(), ctx.req.side(), &ctx.req.path)
    else {
        return;
    };
    let snap = &ctx.req.snap;
    // A body the client had not sent whole, or over the cap, is kept as a prefix, marked cut
    // (such a record is never replayed).
    let whole = (tap.request_done || session.as_mut().is_body_empty()) && !tap.over && !tap.spent;
    let req = session.req_header();
    let mut headers = req.headers.clone();
    let out = ctx.req.outbound(req, https(session), false);
    crate::pipeline::outbound::apply(&mut headers, &out);
    let answer = &tap.answer;
    let record = Record {
        at: humantime::format_rfc3339_millis(SystemTime::now()).to_string(),
        route: route.to_string(),
        event: event.as_str().to_string(),
        request_id: Some(ctx.req.request_id_str().to_string()),
        request: Request {
            method: req.method.to_string(),
            path: path.routed().to_string(),
            query: kept_query(&path.query(), &snap.redact_query),
            headers: kept_headers(&headers, &snap.redact_headers),
            body: kept_body(&tap.request, !whole, &headers, &snap.redact_query),
        },
        side: side.as_str().to_string(),
        upstream: ctx.req.upstream().map_or("", |u| u.name()).to_string(),
        response: (answer.status != 0).then(|| Response {
            status: answer.status,
            content_type: answer.content_type.clone(),
            body: Body::of(&tap.body, answer.truncated, answer.content_type.as_deref()),
        }),
        other: None,
        differences: Vec::new(),
        error: error.map(str::to_string),
        fallback: ctx.req.fallback.map(str::to_string),
    };
    snap.captures.spool(&keep.dir, keep.max_size).keep(&record);
}
