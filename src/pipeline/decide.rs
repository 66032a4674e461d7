//! Stage 2, decide: from (snapshot, request head, canonical path, client) to a `Decision` or a
//! `Refusal`. In order: the route (path and method); its rate limit for keys that need no
//! claims (so a flood of bad tokens is limited too); its auth (401/403/503) and the claims as
//! headers; its rate limit for claim keys; the side (the tester header where allowed, a claim
//! rule, else the sticky split); the upstream (404 when the side has none).

use std::borrow::Cow;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Instant;

use http::header::{self, HeaderName, HeaderValue};
use http::request::Parts;

use super::{Client, Decision, Refusal};
use crate::auth::{claim_matches, claim_text, AuthError, Claims, Verifier};
use crate::config::policy::{location, Fixed};
use crate::limits::{Limited, RateLimiter};
use crate::routing::{PathParams, Query, QueryParams};
use crate::split::{self, KeyValue, Side, StickyKey};
use crate::state::{LiveRoute, Snapshot};

const X_STRANGLE_SIDE: HeaderName = HeaderName::from_static("x-strangle-side");

/// The client: the peer, or the first untrusted hop behind a trusted proxy.
pub fn client(snap: &Snapshot, head: &Parts, peer: Option<IpAddr>) -> Client {
    let proxies = &snap.config.server.trusted_proxies;
    Client {
        peer,
        peer_trusted: peer.is_some_and(|p| crate::net::trusted(proxies, p)),
        addr: peer.map(|p| crate::net::client_addr(p, &head.headers, proxies)),
    }
}

/// Chooses the route, side and upstream of a request whose head passed the guard.
pub async fn decide(
    snap: &Arc<Snapshot>,
    head: &Parts,
    path: &str,
    client: &Client,
    sni: Option<&str>,
) -> Result<Decision, Refusal> {
    // A request that names no host (HTTP/1.0) is for the name its TLS connection was made for.
    let host = if snap.table.has_hosts() || snap.host_defaults.has_hosts() {
        request_host(head).or(sni.map(Cow::Borrowed))
    } else {
        None
    };
    let Some(i) = route_for(snap, head, path, host.as_deref()) else {
        let default = snap
            .host_defaults
            .for_host(host.as_deref())
            .flatten()
            .next()
            .or(snap.default.as_ref());
        return match default {
            Some(upstream) => Ok(decision(
                snap,
                None,
                Side::Default,
                upstream,
                None,
                Vec::new(),
            )),
            None => Err(Refusal::new(404, "no route")),
        };
    };
    let r = &snap.routes[i];
    let refused = |e: Refusal| e.on(Some(i));
    let config = &snap.config.routes[i];
    if !config.policy.admits(client.addr) {
        return Err(refused(Refusal::new(
            403,
            "client address not allowed on the route",
        )));
    }
    // Keys that need no claims are checked before the token is verified; claim keys after.
    limit(r, head, client.addr, None, false).map_err(refused)?;
    let mut unverified = None;
    let (claims, claim_headers) = match &r.auth {
        Some(verifier) => match verifier.verify(&head.headers).await {
            Ok(claims) => {
                let headers = claim_headers(&claims, verifier)
                    .map_err(|why| refused(Refusal::new(403, why)))?;
                (Some(claims), headers)
            }
            // A browser's preflight carries no credentials: the route's plugins may answer it
            // (`cors`), nothing else (`Decision::unverified`).
            Err(e) if is_preflight(head) && !snap.config.routes[i].plugins.is_empty() => {
                unverified = Some(refused(deny(&e)));
                (None, Vec::new())
            }
            Err(e) => return Err(refused(deny(&e))),
        },
        None => (None, Vec::new()),
    };
    limit(r, head, client.addr, claims.as_deref(), true).map_err(refused)?;
    if let Some(fixed) = &config.fixed {
        return Err(refused(Refusal::answered(fixed_answer(fixed, path, head))));
    }
    let side = choose_side(r, head, client.addr, claims.as_deref());
    let upstream = match side {
        Side::New => r.new.as_ref(),
        _ => r.legacy.as_ref(),
    };
    let Some(upstream) = upstream else {
        return Err(refused(Refusal::new(404, "no route")));
    };
    let mut d = decision(snap, Some(i), side, upstream, claims, claim_headers);
    d.unverified = unverified;
    Ok(d)
}

/// The answer a route gives itself: a redirect's `Location` made from the request's
/// canonical path and its query (already checked: a header value), or the fixed response.
fn fixed_answer(fixed: &Fixed, path: &str, head: &Parts) -> strangle_plugin::Answer {
    match fixed {
        Fixed::Redirect { to, status } => {
            let query = head
                .uri
                .query()
                .map(|q| format!("?{q}"))
                .unwrap_or_default();
            let mut headers = http::HeaderMap::new();
            if let Ok(v) = HeaderValue::from_str(&location(to, path, &query)) {
                headers.insert(header::LOCATION, v);
            }
            strangle_plugin::Answer {
                status: *status,
                headers,
                body: bytes::Bytes::new(),
            }
        }
        Fixed::Respond {
            status,
            headers,
            body,
        } => strangle_plugin::Answer {
            status: *status,
            headers: headers.iter().cloned().collect(),
            body: body.clone(),
        },
    }
}

/// The route for a request to `host` (normalised): by its canonical `path` (without `;`
/// parameters when they are kept), method, and head for routes with conditions.
pub fn route_for(snap: &Snapshot, head: &Parts, path: &str, host: Option<&str>) -> Option<usize> {
    let table = &snap.table;
    let path = match snap.config.server.path_params {
        PathParams::Reject => Cow::Borrowed(path),
        PathParams::Keep => crate::routing::without_params(path),
    };
    let params = QueryParams::new(head.uri.query().unwrap_or(""));
    table.find(&Query {
        host,
        path: &path,
        method: &head.method,
        head: table.has_conditions().then_some((&head.headers, &params)),
    })
}

/// The host a request names, normalised: its authority (HTTP/2, an absolute-form target),
/// else its `Host`.
pub fn request_host(head: &Parts) -> Option<Cow<'_, str>> {
    match head.uri.host() {
        Some(h) => crate::routing::host::normalize(h),
        None => crate::routing::host::normalize(head.headers.get(header::HOST)?.to_str().ok()?),
    }
}

/// A browser's CORS preflight: `OPTIONS` with `Origin` and `Access-Control-Request-Method`.
fn is_preflight(head: &Parts) -> bool {
    head.method == http::Method::OPTIONS
        && head.headers.contains_key(header::ORIGIN)
        && head
            .headers
            .contains_key(header::ACCESS_CONTROL_REQUEST_METHOD)
}

fn decision(
    snap: &Snapshot,
    route: Option<usize>,
    side: Side,
    upstream: &crate::upstream::Shared,
    claims: Option<Arc<Claims>>,
    claim_headers: Vec<(HeaderName, HeaderValue)>,
) -> Decision {
    let stats = match route {
        Some(i) => Arc::clone(&snap.routes[i].stats),
        None => Arc::clone(&snap.default_stats),
    };
    Decision::new(
        route,
        side,
        stats,
        Arc::clone(upstream),
        claims,
        claim_headers,
    )
}

/// The value of a sticky or rate-limit key in a request: the one place keys are resolved,
/// claim keys from the verified claims.
pub fn key_value<'a>(
    key: &StickyKey,
    head: &'a Parts,
    client: Option<IpAddr>,
    claims: Option<&'a Claims>,
) -> KeyValue<'a> {
    match key {
        StickyKey::Jwt(claim) => match claims.and_then(|c| claim_text(c, claim)) {
            Some(Cow::Borrowed(text)) => KeyValue::Bytes(text.as_bytes()),
            Some(Cow::Owned(text)) => KeyValue::Owned(text),
            None => KeyValue::Missing,
        },
        other => other.value(&head.headers, client),
    }
}

/// Checks the route's rate limit for keys that need claims (`after_auth`) or not.
fn limit(
    r: &LiveRoute,
    head: &Parts,
    client: Option<IpAddr>,
    claims: Option<&Claims>,
    after_auth: bool,
) -> Result<(), Refusal> {
    let Some(limiter) = &r.rate_limit else {
        return Ok(());
    };
    if matches!(limiter.config.key, StickyKey::Jwt(_)) != after_auth {
        return Ok(());
    }
    // Requests without the key's value share one bucket.
    let key = match key_value(&limiter.config.key, head, client, claims) {
        KeyValue::Bytes(b) => limiter.key(b),
        KeyValue::Owned(s) => limiter.key(s.as_bytes()),
        KeyValue::Ip(ip) => limiter.ip_key(ip),
        KeyValue::Missing => 0,
    };
    match limiter.check(key, Instant::now()) {
        Ok(_) => Ok(()),
        Err(limited) => Err(too_many(limiter, &r.id, limited)),
    }
}

/// 429 for a request over its route's rate limit, with when to retry and the policy.
fn too_many(limiter: &RateLimiter, route: &str, limited: Limited) -> Refusal {
    let retry = limited.retry_after.as_secs_f64().ceil().max(1.0) as u64;
    Refusal::new(429, "rate limited")
        .with(header::RETRY_AFTER, retry.to_string())
        .with(
            HeaderName::from_static("ratelimit-policy"),
            limiter.policy_header(route),
        )
        .with(
            HeaderName::from_static("ratelimit"),
            format!("\"{route}\";r=0;t={retry}"),
        )
}

/// A failed authorization: 401 with a `WWW-Authenticate` that says why, 403 for a missing
/// claim, 503 when the keys are unavailable.
fn deny(e: &AuthError) -> Refusal {
    Refusal::new(e.status(), e.to_string()).with(header::WWW_AUTHENTICATE, e.challenge())
}

/// The forwarded-claim headers for verified `claims`. A claim that is present but cannot be a
/// header value as it is (a CR or LF in it, white space around it) is an error, never silently left out: the upstream would
/// see a verified request without the identity it relies on.
fn claim_headers(
    claims: &Claims,
    verifier: &Verifier,
) -> Result<Vec<(HeaderName, HeaderValue)>, String> {
    let mut out = Vec::with_capacity(verifier.config.forward_claims.len());
    for (claim, header) in &verifier.config.forward_claims {
        if let Some(value) = claim_text(claims, claim) {
            // White space around a value is not part of it to an HTTP parser: `" admin"` would
            // reach the upstream as `admin`, another identity.
            let padded = value.starts_with([' ', '\t']) || value.ends_with([' ', '\t']);
            let value = HeaderValue::from_str(&value)
                .ok()
                .filter(|_| !padded)
                .ok_or_else(|| format!("claim `{claim}` cannot be sent as `{header}`"))?;
            out.push((header.clone(), value));
        }
    }
    Ok(out)
}

fn choose_side(
    r: &LiveRoute,
    head: &Parts,
    client: Option<IpAddr>,
    claims: Option<&Claims>,
) -> Side {
    match (&r.legacy, &r.new) {
        (Some(_), None) => return Side::Legacy,
        (None, _) => return Side::New,
        _ => {}
    }
    let claim_rule = |rule: &crate::config::ClaimRule| {
        claims.is_some_and(|c| claim_matches(c, &rule.claim, &rule.equals))
    };
    if r.allow_override && r.override_when.as_ref().is_none_or(claim_rule) {
        match head.headers.get(&X_STRANGLE_SIDE).map(|v| v.as_bytes()) {
            Some(b"new") => return Side::New,
            Some(b"legacy") => return Side::Legacy,
            _ => {}
        }
    }
    if r.new_when.as_ref().is_some_and(claim_rule) {
        return Side::New;
    }
    let key = key_value(&r.sticky, head, client, claims);
    split::side_for(split::bucket(r.seed, key), r.shift)
}
