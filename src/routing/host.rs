//! Hosts a route answers for (`hosts = ["api.example.com", "*.partner.example"]`), and the
//! request's host as routing compares it.

use std::borrow::Cow;
use std::collections::HashMap;

/// One entry of a route's `hosts`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum HostPattern {
    /// The whole name, lower-cased, without a final dot.
    Exact(String),
    /// `*.partner.example`: any one label in front of this (`partner.example`).
    Wildcard(String),
}

impl HostPattern {
    /// A pattern as a config writes it, or why it is not one. Names are compared
    /// case-insensitively and without a final dot; a port is not part of a pattern.
    pub fn parse(text: &str) -> Result<HostPattern, String> {
        let lower = text.to_ascii_lowercase();
        let name = lower.strip_suffix('.').unwrap_or(&lower);
        let (wild, rest) = match name.strip_prefix("*.") {
            Some(rest) => (true, rest),
            None => (false, name),
        };
        if rest.is_empty() {
            return Err(format!("`{text}` names no host"));
        }
        if rest.contains('*') {
            return Err(format!(
                "`{text}`: a wildcard is one whole leading label (`*.example.com`)"
            ));
        }
        if rest.contains(':') && !rest.starts_with('[') {
            return Err(format!("`{text}`: a host pattern has no port"));
        }
        let ok = if rest.starts_with('[') {
            !wild
                && rest.ends_with(']')
                && rest[1..rest.len() - 1]
                    .parse::<std::net::Ipv6Addr>()
                    .is_ok()
        } else {
            rest.split('.').all(|label| {
                !label.is_empty()
                    && label.len() <= 63
                    && label
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
            })
        };
        if !ok || rest.len() > 253 {
            return Err(format!("`{text}` is not a host name"));
        }
        Ok(if wild {
            HostPattern::Wildcard(rest.to_string())
        } else {
            HostPattern::Exact(rest.to_string())
        })
    }

    /// Whether a normalised request host (`normalize`) is this pattern's.
    pub fn matches(&self, host: &str) -> bool {
        match self {
            HostPattern::Exact(name) => host == name,
            HostPattern::Wildcard(parent) => host
                .split_once('.')
                .is_some_and(|(label, rest)| !label.is_empty() && rest == parent),
        }
    }
}

impl std::fmt::Display for HostPattern {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            HostPattern::Exact(name) => f.write_str(name),
            HostPattern::Wildcard(parent) => write!(f, "*.{parent}"),
        }
    }
}

/// The host a request names (its `:authority` or `Host`) as routing compares it: lower-cased,
/// without its port and final dot. `None` when it names none that a pattern could match.
pub fn normalize(authority: &str) -> Option<Cow<'_, str>> {
    let name = if authority.starts_with('[') {
        // An IPv6 literal: `[::1]` or `[::1]:8080`.
        &authority[..authority.find(']')? + 1]
    } else {
        match authority.rsplit_once(':') {
            Some((name, port)) if port.bytes().all(|b| b.is_ascii_digit()) => name,
            Some(_) => return None,
            None => authority,
        }
    };
    let name = name.strip_suffix('.').unwrap_or(name);
    if name.is_empty() || !name.is_ascii() {
        return None;
    }
    Some(if name.bytes().any(|b| b.is_ascii_uppercase()) {
        Cow::Owned(name.to_ascii_lowercase())
    } else {
        Cow::Borrowed(name)
    })
}

/// Values by host: exact names, then one-label wildcards, then the one for any host.
#[derive(Debug, Clone)]
pub struct ByHost<T> {
    exact: HashMap<String, T, foldhash::fast::RandomState>,
    wildcard: HashMap<String, T, foldhash::fast::RandomState>,
    pub any: T,
}

impl<T: Default> Default for ByHost<T> {
    fn default() -> Self {
        ByHost {
            exact: HashMap::default(),
            wildcard: HashMap::default(),
            any: T::default(),
        }
    }
}

/// Values for hosts (none for any host), from patterns and values.
impl<'a, T> FromIterator<(&'a HostPattern, Option<T>)> for ByHost<Option<T>> {
    fn from_iter<I: IntoIterator<Item = (&'a HostPattern, Option<T>)>>(iter: I) -> Self {
        let mut by = ByHost::new(None);
        for (pattern, value) in iter {
            *by.entry(pattern, || None) = value;
        }
        by
    }
}

impl<T> ByHost<T> {
    pub fn new(any: T) -> Self {
        ByHost {
            exact: HashMap::default(),
            wildcard: HashMap::default(),
            any,
        }
    }

    /// Whether any value is for a particular host.
    pub fn has_hosts(&self) -> bool {
        !self.exact.is_empty() || !self.wildcard.is_empty()
    }

    /// The value for `pattern`, made with `make` the first time.
    pub fn entry(&mut self, pattern: &HostPattern, make: impl FnOnce() -> T) -> &mut T {
        match pattern {
            HostPattern::Exact(name) => self.exact.entry(name.clone()).or_insert_with(make),
            HostPattern::Wildcard(parent) => {
                self.wildcard.entry(parent.clone()).or_insert_with(make)
            }
        }
    }

    /// The values a normalised host has, most specific first: its exact name's, then its
    /// wildcard's (at most two; not the one for any host).
    pub fn for_host<'a>(&'a self, host: Option<&str>) -> impl Iterator<Item = &'a T> + 'a {
        let (exact, wild) = match host {
            Some(h) if self.has_hosts() => (
                self.exact.get(h),
                h.split_once('.')
                    .filter(|(label, _)| !label.is_empty())
                    .and_then(|(_, parent)| self.wildcard.get(parent)),
            ),
            _ => (None, None),
        };
        exact.into_iter().chain(wild)
    }

    /// Runs `f` on every value, the one for any host included.
    pub fn for_each_mut(&mut self, mut f: impl FnMut(&mut T)) {
        f(&mut self.any);
        for v in self.exact.values_mut().chain(self.wildcard.values_mut()) {
            f(v);
        }
    }
}
