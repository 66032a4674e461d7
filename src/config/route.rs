//! Lowering `[[routes]]`: paths, sides and the split, rate limits, claim rules, and the checks
//! that look across routes (duplicate ids, shadowed routes, auth a spelling can bypass).

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use http::Method;
use toml::Spanned;

use super::raw::{RawClaimRule, RawRoute};
use super::{valid_name, AuthConfig, ClaimRule, Cx, RateLimit, Route, Server, Upstream};
use crate::routing::{self, HostPattern, PathMatch, RouteKey};
use crate::split::{Shift, StickyKey};

impl Cx<'_> {
    pub(super) fn routes(
        &mut self,
        raw: Vec<RawRoute>,
        upstreams: &BTreeMap<String, Upstream>,
        auth: &BTreeMap<String, AuthConfig>,
    ) -> (Vec<Route>, Vec<usize>) {
        let mut out: Vec<Route> = Vec::new();
        let mut id_spans = Vec::new();
        let mut declared = Declared::default();
        let mut ids: BTreeMap<String, usize> = BTreeMap::new();
        for r in raw {
            let id = r.id.get_ref().clone();
            if !valid_name(&id) || id.bytes().all(|b| b == b'.') {
                self.err_at(
                    &r.id,
                    format!("bad route id `{id}`"),
                    Some("use letters, digits, `-`, `_` and `.` (not dots alone: the id is a URL path segment in the admin API)".into()),
                );
            }
            if ids.insert(id.clone(), out.len()).is_some() {
                let hint = Some(
                    "route ids name routes in metrics, logs and the CLI: make each unique".into(),
                );
                self.err_at(&r.id, format!("route id `{id}` is used twice"), hint);
            }
            let path = r.path.get_ref().clone();
            match routing::canonicalize(&path, routing::PathParams::Keep) {
                Ok(p) if p == path && (path == "/" || !path.ends_with('/')) => {}
                _ => {
                    let hint = Some("write a clean absolute path like `/bookings`: no `//`, `.`, `..`, `%2F` or trailing `/`".into());
                    self.err_at(&r.path, format!("bad route path `{path}`"), hint);
                }
            }
            let kind = match r.match_.as_ref().map(|m| (m, m.get_ref().as_str())) {
                None | Some((_, "prefix")) => PathMatch::Prefix,
                Some((_, "exact")) => PathMatch::Exact,
                Some((m, other)) => {
                    self.err_at(
                        m,
                        format!("unknown match `{other}`"),
                        Some("use `prefix` (default) or `exact`".into()),
                    );
                    PathMatch::Prefix
                }
            };
            let methods = r.methods.as_ref().map(|ms| {
                if ms.get_ref().is_empty() {
                    self.err_at(
                        ms,
                        "`methods` is empty",
                        Some("omit `methods` to match every method".into()),
                    );
                }
                ms.get_ref()
                    .iter()
                    .filter_map(|m| {
                        let upper = m.get_ref().to_ascii_uppercase();
                        match Method::from_bytes(upper.as_bytes()) {
                            Ok(method) => Some(method),
                            Err(_) => {
                                self.err_at(m, format!("bad method `{}`", m.get_ref()), None);
                                None
                            }
                        }
                    })
                    .collect::<Vec<_>>()
            });
            for side in [&r.legacy, &r.new].into_iter().flatten() {
                self.check_upstream_ref(side, upstreams);
            }
            let fixed = self.fixed(&r);
            if r.legacy.is_none() && r.new.is_none() && fixed.is_none() {
                let hint = Some("set `legacy = \"monolith\"`, `new = \"...\"` or both".into());
                self.err_at(
                    &r.id,
                    format!("route `{id}` has neither `legacy` nor `new`"),
                    hint,
                );
            }
            let shift = match &r.shift {
                None if r.legacy.is_none() => Shift::ALL,
                None => Shift::ZERO,
                Some(s) => match Shift::parse(&s.get_ref().as_text()) {
                    Ok(shift) => shift,
                    Err(e) => {
                        self.err_at(s, e.to_string(), None);
                        Shift::ZERO
                    }
                },
            };
            let has_a_side = r.legacy.is_some() || r.new.is_some();
            let shift_at = r
                .shift
                .as_ref()
                .map_or(r.id.span().start, |s| s.span().start);
            if has_a_side && r.new.is_none() && shift != Shift::ZERO {
                self.error(
                    shift_at,
                    format!(
                        "route `{id}` shifts {shift} to the new side but has no `new` upstream"
                    ),
                    None,
                );
            }
            if has_a_side && r.legacy.is_none() && shift != Shift::ALL {
                self.error(
                    shift_at,
                    format!(
                        "route `{id}` keeps {} on the legacy side but has no `legacy` upstream",
                        Shift::from_bp(10_000 - shift.bp()).unwrap_or_default()
                    ),
                    None,
                );
            }
            let sticky = match &r.sticky {
                None => StickyKey::None,
                Some(s) => StickyKey::parse(s.get_ref()).unwrap_or_else(|e| {
                    self.err_at(s, e, None);
                    StickyKey::None
                }),
            };
            if let Some(a) = &r.auth {
                if !auth.contains_key(a.get_ref()) {
                    let known: Vec<&str> = auth.keys().map(String::as_str).collect();
                    let hint = if known.is_empty() {
                        "no auth is defined: add an [auth.NAME] section".to_string()
                    } else {
                        format!("known auth sections: {}", known.join(", "))
                    };
                    self.err_at(a, format!("unknown auth `{}`", a.get_ref()), Some(hint));
                }
            }
            if let (StickyKey::Jwt(claim), None) = (&sticky, &r.auth) {
                let at = r.sticky.as_ref().map_or(0, |s| s.span().start);
                self.error(at, format!("`sticky = \"jwt:{claim}\"` needs `auth` on the route: only verified claims key the split"), None);
            }
            let rate_limit = r.rate_limit.as_ref().map(|rl| {
                let raw = rl.get_ref();
                let requests =
                    self.count(&Some(raw.requests.clone()), "requests", 1, 1_000_000_000, 1) as u32;
                let per = self.duration(&raw.per, "per", Duration::from_secs(1));
                if per.is_zero() {
                    if let Some(p) = &raw.per {
                        self.err_at(p, "`per` must be longer than zero", None);
                    }
                }
                let burst = match &raw.burst {
                    Some(_) => self.count(&raw.burst, "burst", 1, 1_000_000_000, 1) as u32,
                    None => requests,
                };
                let key = match &raw.key {
                    None => StickyKey::Ip,
                    Some(k) => StickyKey::parse(k.get_ref()).unwrap_or_else(|e| {
                        self.err_at(k, e.replace("sticky key", "rate-limit key"), None);
                        StickyKey::Ip
                    }),
                };
                if let (StickyKey::Jwt(claim), None) = (&key, &r.auth) {
                    self.err_at(
                        rl,
                        format!("`key = \"jwt:{claim}\"` needs `auth` on the route"),
                        None,
                    );
                }
                let ipv4_prefix = match &raw.ipv4_prefix {
                    Some(_) => self.count(&raw.ipv4_prefix, "ipv4-prefix", 1, 32, 32) as u8,
                    None => 32,
                };
                let ipv6_prefix = match &raw.ipv6_prefix {
                    Some(_) => self.count(&raw.ipv6_prefix, "ipv6-prefix", 1, 128, 64) as u8,
                    None => 64,
                };
                let max_keys = match &raw.max_keys {
                    Some(_) => self.count(&raw.max_keys, "max-keys", 1024, 100_000_000, 100_000),
                    None => 100_000,
                };
                RateLimit {
                    requests,
                    per,
                    burst,
                    key,
                    ipv4_prefix,
                    ipv6_prefix,
                    max_keys,
                }
            });
            let mut claim_rule = |rule: &Option<Spanned<RawClaimRule>>, key: &str| {
                let rule = rule.as_ref()?;
                if r.auth.is_none() {
                    self.err_at(
                        rule,
                        format!("`{key}` needs `auth` on the route: only verified claims count"),
                        None,
                    );
                }
                Some(ClaimRule {
                    claim: rule.get_ref().claim.get_ref().clone(),
                    equals: rule.get_ref().equals.clone(),
                })
            };
            let new_when = claim_rule(&r.new_when, "new-when");
            let override_when = claim_rule(&r.override_when, "override-when");
            if r.override_when.is_some() && !r.override_.as_ref().is_some_and(|o| *o.get_ref()) {
                if let Some(o) = &r.override_when {
                    self.err_at(
                        o,
                        "`override-when` has no effect without `override = true`",
                        None,
                    );
                }
            }
            let case_insensitive = r.case_insensitive.as_ref().is_some_and(|v| *v.get_ref());
            let trailing_slash = r.trailing_slash.as_ref().is_some_and(|v| *v.get_ref());
            if let (Some(t), PathMatch::Prefix) = (&r.trailing_slash, kind) {
                if *t.get_ref() {
                    self.err_at(
                        t,
                        "`trailing-slash` is for exact routes",
                        Some(
                            "a prefix route already matches `PATH/` and everything under it".into(),
                        ),
                    );
                }
            }
            let shadow = self.shadow(&r).map(std::sync::Arc::new);
            let rollout = self.rollout(&r).map(std::sync::Arc::new);
            let fallback = self.fallback(&r).map(std::sync::Arc::new);
            let capture = self.capture(&r).map(std::sync::Arc::new);
            let plugins = self.plugins(&r);
            let hosts = self.route_hosts(&r);
            let when = self.route_when(&r);
            let policy = self.policy(&r);
            let route = Route {
                policy,
                fixed,
                hosts,
                when,
                plugins,
                capture,
                fallback,
                shadow,
                rollout,
                case_insensitive,
                trailing_slash,
                new_when,
                override_when,
                rate_limit,
                auth: r.auth.as_ref().map(|a| a.get_ref().clone()),
                id,
                path,
                kind,
                methods,
                legacy: r.legacy.map(Spanned::into_inner),
                new: r.new.map(Spanned::into_inner),
                shift,
                sticky,
                allow_override: r.override_.is_some_and(|o| *o.get_ref()),
            };
            let key = route.key();
            if let Some(earlier) = declared.shadowing(&key).map(|i| &out[i]) {
                let hint = Some(format!(
                    "route `{}` already takes every request for `{}`; set the methods, hosts or conditions apart, or remove one",
                    earlier.id, route.path
                ));
                self.err_at(
                    &r.path,
                    format!(
                        "route `{}` overlaps route `{}` and can never match",
                        route.id, earlier.id
                    ),
                    hint,
                );
            }
            declared.add(out.len(), key);
            out.push(route);
            id_spans.push(r.id.span().start);
        }
        (out, id_spans)
    }

    /// A route with `auth` for some hosts guards only those: the same path with another `Host`
    /// (the client chooses it) falls through to a route for any host or a default, without
    /// auth unless one of those has the same.
    fn warn_host_bound_auth(&mut self, routes: &[Route], id_spans: &[usize], server: &Server) {
        self.warn_chosen_routes(routes, id_spans);
        for (r, &at) in routes.iter().zip(id_spans) {
            if r.auth.is_none() || r.hosts.is_empty() {
                continue;
            }
            let covered = routes.iter().any(|o| {
                o.hosts.is_empty()
                    && o.auth == r.auth
                    && o.when.is_none()
                    && o.methods.is_none()
                    && o.kind == PathMatch::Prefix
                    && (o.path == "/"
                        || r.path == o.path
                        || r.path.starts_with(&format!("{}/", o.path)))
            });
            let fallthrough = server.default.is_some()
                || !server.defaults.is_empty()
                || routes.iter().any(|o| o.hosts.is_empty());
            if covered || !fallthrough {
                continue;
            }
            self.warn(
                at,
                format!(
                    "route `{}` has auth for its hosts only: `{}` with another Host falls through to what serves other hosts, without this route's auth",
                    r.id, r.path
                ),
                Some(format!(
                    "add a route for `{}` with the same `auth` and no `hosts`, if the monolith serves it on every host",
                    r.path
                )),
            );
        }
    }

    /// A route the client picks by what it sends (its `hosts`, its `when`) comes before a route
    /// for any request on the same paths: when that one has `auth` and the picked one not the
    /// same, any client can choose its way past that auth.
    fn warn_chosen_routes(&mut self, routes: &[Route], id_spans: &[usize]) {
        let covers = |outer: &Route, inner: &Route| {
            outer.path == inner.path
                || outer.kind == PathMatch::Prefix
                    && (outer.path == "/" || inner.path.starts_with(&format!("{}/", outer.path)))
        };
        let guarded: Vec<&Route> = routes
            .iter()
            .filter(|g| g.auth.is_some() && g.hosts.is_empty() && g.when.is_none())
            .collect();
        for (r, &at) in routes.iter().zip(id_spans) {
            if r.hosts.is_empty() && r.when.is_none() {
                continue;
            }
            let Some(g) = guarded
                .iter()
                .find(|g| g.auth != r.auth && (covers(r, g) || covers(g, r)))
            else {
                continue;
            };
            let by = if r.hosts.is_empty() {
                "its `when` conditions"
            } else {
                "its `hosts`"
            };
            self.warn(
                at,
                format!(
                    "route `{}` comes before route `{}` on `{}` for requests that match {by}, which the client sends: they skip `{}`'s auth",
                    r.id, g.id, g.path, g.id
                ),
                Some(format!("give route `{}` the same `auth` as `{}`", r.id, g.id)),
            );
        }
    }

    /// A route with `auth` in front of a default upstream is only as strong as its spelling:
    /// a spelling the route does not match falls through to the default without auth, and the
    /// monolith may serve it as the same resource.
    pub(super) fn warn_bypassable_routes(
        &mut self,
        routes: &[Route],
        id_spans: &[usize],
        server: &Server,
    ) {
        self.warn_host_bound_auth(routes, id_spans, server);
        let Some(default) = &server.default else {
            return;
        };
        for (r, &at) in routes
            .iter()
            .zip(id_spans)
            .filter(|(r, _)| r.auth.is_some())
        {
            let mut spellings = Vec::new();
            if !r.case_insensitive && r.path.bytes().any(|b| b.is_ascii_alphabetic()) {
                spellings.push(format!("`{}`", r.path.to_ascii_uppercase()));
            }
            if r.kind == PathMatch::Exact {
                if !r.trailing_slash && r.path != "/" {
                    spellings.push(format!("`{}/`", r.path));
                }
                spellings.push(format!("`{}.`", r.path));
            }
            if spellings.is_empty() {
                continue;
            }
            let mut fixes = Vec::new();
            if !r.case_insensitive {
                fixes.push("`case-insensitive = true` if the monolith ignores case");
            }
            if r.kind == PathMatch::Exact {
                fixes.push("`trailing-slash = true` or a prefix route if it ignores a trailing `/`, and a route for the other spellings it accepts");
            }
            self.warn(
                at,
                format!(
                    "route `{}` has auth, but {} miss it and reach the default upstream `{default}` without a token",
                    r.id,
                    spellings.join(", ")
                ),
                Some(format!("set {}", fixes.join("; "))),
            );
        }
    }
}

/// The routes declared so far, indexed for the overlap check: only a route on the same path
/// (lower-cased) with the same match kind can shadow another, and for a route with hosts only
/// one that lists its first host (a host route is shadowed only by one listing all its hosts).
/// So thousands of routes on one path, one per host, are checked in linear time.
#[derive(Default)]
struct Declared {
    keys: Vec<RouteKey>,
    by_place: HashMap<(String, PathMatch, Option<HostPattern>), Vec<usize>>,
}

impl Declared {
    /// The first route declared so far that takes every request `key` would get.
    fn shadowing(&self, key: &RouteKey) -> Option<usize> {
        let place = (
            key.path.to_ascii_lowercase(),
            key.kind,
            key.hosts.first().cloned(),
        );
        self.by_place
            .get(&place)?
            .iter()
            .copied()
            .find(|&i| self.keys[i].shadows(key))
    }

    fn add(&mut self, route: usize, key: RouteKey) {
        let path = key.path.to_ascii_lowercase();
        let places: Vec<Option<HostPattern>> = if key.hosts.is_empty() {
            vec![None]
        } else {
            key.hosts.iter().cloned().map(Some).collect()
        };
        for host in places {
            self.by_place
                .entry((path.clone(), key.kind, host))
                .or_default()
                .push(self.keys.len());
        }
        debug_assert_eq!(self.keys.len(), route);
        self.keys.push(key);
    }
}
