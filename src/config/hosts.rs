//! Lowering what routes match on besides their path: `hosts`, `when` conditions, and the
//! per-host defaults (`[[server.defaults]]`).

use std::collections::BTreeMap;
use std::sync::Arc;

use http::HeaderName;
use toml::Spanned;

use super::raw::{RawHostDefault, RawRoute};
use super::{Cx, Upstream};
use crate::routing::{Cond, Conditions, HostPattern};

/// `[[server.defaults]]`: the upstream for requests to `hosts` that match no route.
#[derive(Debug, Clone, PartialEq)]
pub struct HostDefault {
    pub hosts: Vec<HostPattern>,
    pub upstream: String,
}

/// Headers a condition may not name: strangle's own, hop-by-hop ones, and those the proxy
/// rewrites before a side sees them (a condition on them would judge what no upstream gets).
fn unconditional(name: &str) -> bool {
    name.starts_with("x-strangle-")
        || matches!(
            name,
            "connection"
                | "keep-alive"
                | "te"
                | "trailer"
                | "transfer-encoding"
                | "upgrade"
                | "proxy-connection"
        )
}

impl Cx<'_> {
    /// A list of host patterns, each checked; the same pattern twice is an error.
    fn host_list(&mut self, list: &Spanned<Vec<Spanned<String>>>, key: &str) -> Vec<HostPattern> {
        if list.get_ref().is_empty() {
            let hint = Some(format!("omit `{key}` to match every host"));
            self.err_at(list, format!("`{key}` is empty"), hint);
        }
        let mut out: Vec<HostPattern> = Vec::new();
        let mut seen = std::collections::HashSet::new();
        for h in list.get_ref() {
            match HostPattern::parse(h.get_ref()) {
                Ok(p) if !seen.insert(p.clone()) => {
                    self.err_at(h, format!("host `{p}` is listed twice"), None);
                }
                Ok(p) => out.push(p),
                Err(why) => {
                    let hint = Some(
                        "write a name like `api.example.com` or one leading wildcard label like `*.example.com` (no scheme, port or path)".into(),
                    );
                    self.err_at(h, why, hint);
                }
            }
        }
        out
    }

    /// A route's `hosts` (empty: any host).
    pub(super) fn route_hosts(&mut self, r: &RawRoute) -> Vec<HostPattern> {
        match &r.hosts {
            None => Vec::new(),
            Some(list) => self.host_list(list, "hosts"),
        }
    }

    /// A route's `when` conditions.
    pub(super) fn route_when(&mut self, r: &RawRoute) -> Option<Arc<Conditions>> {
        let when = r.when.as_ref()?;
        let raw = when.get_ref();
        let mut c = Conditions::default();
        for (name, value) in raw.header.iter().flatten() {
            let lower = name.get_ref().to_ascii_lowercase();
            match HeaderName::from_bytes(lower.as_bytes()) {
                Ok(n) if unconditional(n.as_str()) => {
                    let hint = Some("conditions are on what the client sends an upstream: not hop-by-hop headers nor strangle's own".into());
                    self.err_at(name, format!("a condition cannot be on `{lower}`"), hint);
                }
                Ok(n) => c.headers.push((n, Cond::parse(value.get_ref()))),
                Err(_) => {
                    self.err_at(
                        name,
                        format!("`{}` is not a header name", name.get_ref()),
                        None,
                    );
                }
            }
        }
        for (name, value) in raw.query.iter().flatten() {
            if name.get_ref().is_empty() {
                self.err_at(name, "a query condition needs a parameter name", None);
            }
            c.query
                .push((name.get_ref().clone(), Cond::parse(value.get_ref())));
        }
        let given = raw.header.iter().chain(&raw.query).any(|t| !t.is_empty());
        if !given {
            let hint = Some("give `header = { NAME = VALUE }` or `query = { NAME = VALUE }`; a value may be `present` or `absent`".into());
            self.err_at(when, "`when` has no conditions", hint);
            return None;
        }
        if c.is_empty() {
            return None;
        }
        c.headers
            .sort_by(|a, b| (a.0.as_str(), &a.1).cmp(&(b.0.as_str(), &b.1)));
        c.query.sort();
        Some(Arc::new(c))
    }

    /// `[[server.defaults]]`: each entry's hosts and upstream checked; a host in two entries is
    /// an error.
    pub(super) fn host_defaults(
        &mut self,
        raw: Option<Vec<Spanned<RawHostDefault>>>,
        upstreams: &BTreeMap<String, Upstream>,
    ) -> Vec<HostDefault> {
        let mut out: Vec<HostDefault> = Vec::new();
        let mut taken = std::collections::HashSet::new();
        for d in raw.into_iter().flatten() {
            let d = d.into_inner();
            self.check_upstream_ref(&d.upstream, upstreams);
            let hosts = self.host_list(&d.hosts, "hosts");
            for h in &hosts {
                if !taken.insert(h.clone()) {
                    let hint = Some("each host has one default: remove it from one entry".into());
                    self.err_at(&d.hosts, format!("host `{h}` has two defaults"), hint);
                }
            }
            out.push(HostDefault {
                hosts,
                upstream: d.upstream.into_inner(),
            });
        }
        out
    }
}
