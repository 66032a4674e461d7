//! The route table and path normalisation.
//!
//! Matching runs on the request's host and normalised path: a route for the host (its exact
//! name, then a `*.` wildcard of it) beats one for any host; then an exact route beats the
//! longest segment-aware prefix; for the same path a route with conditions (`when`) beats one
//! without; and ties go to the route declared first. `/bookings` matches `/bookings` and
//! `/bookings/42`, never `/bookingsx`. Lookup costs one hash probe per path segment (per host
//! class when routes name hosts), whatever the table size.

use std::collections::HashMap;
use std::sync::Arc;

use http::Method;

pub mod host;
mod path;
pub mod when;

pub use host::{ByHost, HostPattern};
pub use path::*;
pub use when::{Cond, Conditions, QueryParams};

/// How a route's path is compared with the request path.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PathMatch {
    Exact,
    Prefix,
}

/// What the table needs to know about one route.
#[derive(Debug, Clone)]
pub struct RouteKey {
    pub path: String,
    pub kind: PathMatch,
    /// `None` matches every method.
    pub methods: Option<Vec<Method>>,
    /// Match the path whatever its ASCII case (for monoliths that ignore case).
    pub case_insensitive: bool,
    /// Exact routes: also match `PATH/`.
    pub trailing_slash: bool,
    /// The hosts it answers for (empty: any host).
    pub hosts: Vec<HostPattern>,
    /// Conditions on the request head (`None`: none).
    pub when: Option<Arc<Conditions>>,
}

impl RouteKey {
    /// A key for `path` with no methods, hosts or conditions.
    pub fn new(path: &str, kind: PathMatch) -> RouteKey {
        RouteKey {
            path: path.to_string(),
            kind,
            methods: None,
            case_insensitive: false,
            trailing_slash: false,
            hosts: Vec::new(),
            when: None,
        }
    }

    fn allows(&self, q: &Query<'_>) -> bool {
        self.methods.as_ref().is_none_or(|m| m.contains(q.method))
            && self
                .when
                .as_ref()
                .is_none_or(|w| q.head.is_some_and(|(h, query)| w.hold(h, query)))
    }

    /// Whether `other` can never match because this route, declared earlier, takes every
    /// request it would get: the same path, every method and host of `other`, and conditions
    /// that `other`'s imply (a route with conditions comes before one without).
    pub fn shadows(&self, other: &RouteKey) -> bool {
        let same_path = if self.case_insensitive {
            self.path.eq_ignore_ascii_case(&other.path)
        } else {
            self.path == other.path && !other.case_insensitive
        };
        let hosts = self.hosts.is_empty() == other.hosts.is_empty()
            && other.hosts.iter().all(|h| self.hosts.contains(h));
        let when = match (&self.when, &other.when) {
            (None, None) => true,
            (Some(mine), Some(theirs)) => mine.implied_by(theirs),
            _ => false,
        };
        same_path
            && hosts
            && when
            && self.kind == other.kind
            && (self.trailing_slash || !other.trailing_slash)
            && match (&self.methods, &other.methods) {
                (None, _) => true,
                (Some(_), None) => false,
                (Some(a), Some(b)) => b.iter().all(|m| a.contains(m)),
            }
    }
}

/// What a route is looked up by.
#[derive(Clone, Copy)]
pub struct Query<'a> {
    /// The request's host, normalised (`host::normalize`).
    pub host: Option<&'a str>,
    /// The canonical path.
    pub path: &'a str,
    pub method: &'a Method,
    /// The headers and query (without `?`) conditions are judged on; `None`: no route with
    /// conditions matches.
    pub head: Option<(&'a http::HeaderMap, &'a QueryParams<'a>)>,
}

impl<'a> Query<'a> {
    /// A path and method only: no host, no head.
    pub fn path(path: &'a str, method: &'a Method) -> Query<'a> {
        Query {
            host: None,
            path,
            method,
            head: None,
        }
    }
}

/// The index's hasher: foldhash, seeded per process, instead of SipHash (a route lookup hashes
/// every prefix of the path it tries). The keys are the config's paths; a client's path is
/// only looked up, never inserted, so it cannot build up collisions.
type Index = HashMap<String, Vec<usize>, foldhash::fast::RandomState>;

/// Route indices by path, routes with conditions first, then in declaration order.
#[derive(Debug, Default)]
struct PathIndex {
    exact: Index,
    prefix: Index,
    has_root_prefix: bool,
}

impl PathIndex {
    fn add(&mut self, path: String, kind: PathMatch, i: usize) {
        self.has_root_prefix |= kind == PathMatch::Prefix && path == "/";
        let map = match kind {
            PathMatch::Exact => &mut self.exact,
            PathMatch::Prefix => &mut self.prefix,
        };
        let ids = map.entry(path).or_default();
        if !ids.contains(&i) {
            ids.push(i);
        }
    }

    /// Routes with conditions before those without, each in declaration order.
    fn order(&mut self, keys: &[RouteKey]) {
        for ids in self.exact.values_mut().chain(self.prefix.values_mut()) {
            ids.sort_by_key(|&i| (keys[i].when.is_none(), i));
        }
    }
}

/// The routes of one host class: case-sensitive routes indexed by their path, case-insensitive
/// ones by the lower-cased path (only built, and only probed, when there are some).
#[derive(Debug, Default)]
struct Paths {
    exact_case: PathIndex,
    any_case: Option<PathIndex>,
}

impl Paths {
    fn add(&mut self, key: &RouteKey, i: usize) {
        let index = if key.case_insensitive {
            self.any_case.get_or_insert_with(PathIndex::default)
        } else {
            &mut self.exact_case
        };
        let path = if key.case_insensitive {
            key.path.to_ascii_lowercase()
        } else {
            key.path.clone()
        };
        if key.kind == PathMatch::Exact && key.trailing_slash && path != "/" {
            index.add(format!("{path}/"), key.kind, i);
        }
        index.add(path, key.kind, i);
    }

    fn order(&mut self, keys: &[RouteKey]) {
        self.exact_case.order(keys);
        if let Some(a) = &mut self.any_case {
            a.order(keys);
        }
    }

    /// Exact beats the longest prefix; among routes for the same path, those with conditions
    /// first, then the first declared.
    fn lookup(&self, keys: &[RouteKey], q: &Query<'_>) -> Option<usize> {
        let path = q.path;
        // The lower-cased path for the any-case index, on the stack for paths up to 256 bytes
        // (lower-casing ASCII keeps the byte offsets and the UTF-8 of a canonical path).
        let mut stack = [0u8; 256];
        let heap: Vec<u8>;
        let lower: Option<&str> = match &self.any_case {
            None => None,
            Some(_) if path.len() <= stack.len() => {
                let buf = &mut stack[..path.len()];
                buf.copy_from_slice(path.as_bytes());
                buf.make_ascii_lowercase();
                std::str::from_utf8(buf).ok()
            }
            Some(_) => {
                heap = path.as_bytes().to_ascii_lowercase();
                std::str::from_utf8(&heap).ok()
            }
        };
        let first = |ids: Option<&Vec<usize>>| {
            ids.and_then(|ids| ids.iter().copied().find(|&i| keys[i].allows(q)))
        };
        // The same candidate, probed in both indexes (lower-casing keeps byte offsets: the
        // canonical path is ASCII).
        let probe = |exact: bool, end: usize| -> Option<usize> {
            let pick = |index: &PathIndex, p: &str| {
                first(if exact {
                    index.exact.get(p)
                } else {
                    index.prefix.get(p)
                })
            };
            let a = pick(&self.exact_case, &path[..end]);
            let b = match (&self.any_case, lower) {
                (Some(index), Some(l)) => pick(index, &l[..end]),
                _ => None,
            };
            match (a, b) {
                // Conditions first, then declaration order, across both indexes.
                (Some(a), Some(b)) => {
                    Some(std::cmp::min_by_key(a, b, |&i| (keys[i].when.is_none(), i)))
                }
                (a, b) => a.or(b),
            }
        };
        if let Some(i) = probe(true, path.len()) {
            return Some(i);
        }
        let any_prefix = !self.exact_case.prefix.is_empty()
            || self.any_case.as_ref().is_some_and(|i| !i.prefix.is_empty());
        if !any_prefix {
            return None;
        }
        // Try the whole path, then cut it back one segment at a time.
        let mut end = path.len();
        loop {
            let mut cut = end;
            if cut > 1 && path.as_bytes()[cut - 1] == b'/' {
                cut -= 1;
            }
            if let Some(i) = probe(false, cut) {
                return Some(i);
            }
            match path[..cut].rfind('/') {
                Some(0) | None => break,
                Some(c) => end = c,
            }
        }
        let root = self.exact_case.has_root_prefix
            || self.any_case.as_ref().is_some_and(|i| i.has_root_prefix);
        if root {
            return probe(false, 1);
        }
        None
    }
}

/// The route table: the routes of each host (exact names, one-label wildcards) and those for
/// any host.
#[derive(Debug, Default)]
pub struct RouteTable {
    keys: Vec<RouteKey>,
    by_host: ByHost<Paths>,
    folds_case: bool,
    has_conditions: bool,
}

impl RouteTable {
    pub fn new(keys: Vec<RouteKey>) -> RouteTable {
        let mut table = RouteTable::default();
        for (i, key) in keys.iter().enumerate() {
            table.folds_case |= key.case_insensitive;
            table.has_conditions |= key.when.is_some();
            if key.hosts.is_empty() {
                table.by_host.any.add(key, i);
            }
            for host in &key.hosts {
                table.by_host.entry(host, Paths::default).add(key, i);
            }
        }
        table.by_host.for_each_mut(|p| p.order(&keys));
        table.keys = keys;
        table
    }

    pub fn len(&self) -> usize {
        self.keys.len()
    }

    /// Whether any route matches the path whatever its case.
    pub fn folds_case(&self) -> bool {
        self.folds_case
    }

    /// Whether any route is for particular hosts (requests then need their host looked at).
    pub fn has_hosts(&self) -> bool {
        self.by_host.has_hosts()
    }

    /// Whether any route has conditions (requests then need their head looked at).
    pub fn has_conditions(&self) -> bool {
        self.has_conditions
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// The route for a request: one for its host (its exact name, then its wildcard) beats one
    /// for any host; then exact path beats the longest prefix; for the same path, a route with
    /// conditions beats one without; then the first declared wins.
    pub fn find(&self, q: &Query<'_>) -> Option<usize> {
        for paths in self.by_host.for_host(q.host) {
            if let Some(i) = paths.lookup(&self.keys, q) {
                return Some(i);
            }
        }
        self.by_host.any.lookup(&self.keys, q)
    }

    /// `find` for a path and method only (no host, no conditions).
    pub fn lookup(&self, path: &str, method: &Method) -> Option<usize> {
        self.find(&Query::path(path, method))
    }
}

#[cfg(test)]
#[path = "routing/tests.rs"]
mod tests;
