//! Lowering a route's own policies: `timeout`, `max-body`, `allow-ips` / `deny-ips`, and the
//! answers a route gives itself (`redirect`, `respond`).

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderName, HeaderValue, StatusCode};
use toml::Spanned;

use super::raw::RawRoute;
use super::Cx;
use crate::net::Cidr;

/// What a route's policies ask of its requests.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Policy {
    /// Overrides the side's upstream `timeout` (per read; a Lambda invocation's whole).
    pub timeout: Option<Duration>,
    /// The largest request body (413 before forwarding, or as a streamed body passes it).
    pub max_body: Option<u64>,
    /// Client addresses (the trusted one) let in, when any is listed; and those kept out.
    pub allow_ips: Vec<Cidr>,
    pub deny_ips: Vec<Cidr>,
    /// `compress = false`: its answers are never compressed (`[server] compression`).
    pub compress: bool,
}

/// `[server] compression`: answers compressed for clients that accept gzip, brotli or zstd.
#[derive(Debug, Clone, PartialEq)]
pub struct Compression {
    /// 1 (fast) to 9 (small); brotli and zstd take it as theirs.
    pub level: u32,
    /// Answers with a known length under this pass as they are.
    pub min_size: u64,
    /// Content types compressed: `type/subtype` or `type/*`, lower case.
    pub types: Vec<String>,
}

impl Compression {
    /// Whether answers of this content type are compressed.
    pub fn takes(&self, content_type: &str) -> bool {
        let ct = content_type
            .split(';')
            .next()
            .unwrap_or("")
            .trim()
            .to_ascii_lowercase();
        self.types.iter().any(|t| match t.strip_suffix("/*") {
            Some(major) => ct.split('/').next() == Some(major) && ct.contains('/'),
            None => *t == ct,
        })
    }
}

impl Policy {
    /// Whether the trusted client address may use the route (`None`: unknown, let in only when
    /// no `allow-ips` is set).
    pub fn admits(&self, client: Option<std::net::IpAddr>) -> bool {
        match client {
            Some(ip) => {
                (self.allow_ips.is_empty() || self.allow_ips.iter().any(|c| c.contains(ip)))
                    && !self.deny_ips.iter().any(|c| c.contains(ip))
            }
            None => self.allow_ips.is_empty(),
        }
    }
}

/// An answer a route gives itself, instead of a side.
#[derive(Debug, Clone, PartialEq)]
pub enum Fixed {
    /// `Location` from `to` with `$path` (the canonical path) and `$query` (`?...` or empty).
    Redirect { to: String, status: StatusCode },
    Respond {
        status: StatusCode,
        headers: Vec<(HeaderName, HeaderValue)>,
        body: Bytes,
    },
}

/// Headers a fixed answer may not set: framing and hop-by-hop ones (strangle frames it) and
/// strangle's own.
fn settable(name: &HeaderName) -> bool {
    let n = name.as_str();
    !(n.starts_with("x-strangle-")
        || matches!(
            n,
            "content-length"
                | "transfer-encoding"
                | "connection"
                | "keep-alive"
                | "te"
                | "trailer"
                | "upgrade"
                | "proxy-connection"
                | "x-request-id"
                | "location"
                | "content-type"
        ))
}

impl Cx<'_> {
    /// `[server] compression`.
    pub(super) fn compression(
        &mut self,
        raw: &Option<Spanned<super::raw::RawCompression>>,
    ) -> Option<Compression> {
        let raw = raw.as_ref()?.get_ref();
        let level = match &raw.level {
            Some(_) => self.count(&raw.level, "level", 1, 9, 5) as u32,
            None => 5,
        };
        let min_size = match &raw.min_size {
            None => 1024,
            Some(m) => {
                let text = m.get_ref().as_text();
                super::capture::bytes(&text).unwrap_or_else(|| {
                    let hint = Some("a size such as `1KB` or `1024`".into());
                    self.err_at(m, format!("bad `min-size` `{text}`"), hint);
                    0
                })
            }
        };
        let types = match &raw.types {
            None => [
                "text/*",
                "application/json",
                "application/javascript",
                "application/xml",
                "image/svg+xml",
            ]
            .map(String::from)
            .to_vec(),
            Some(list) => list
                .get_ref()
                .iter()
                .filter_map(|t| {
                    let lower = t.get_ref().to_ascii_lowercase();
                    let ok = lower.split_once('/').is_some_and(|(a, b)| {
                        !a.is_empty()
                            && !b.is_empty()
                            && a != "*"
                            && (b == "*" || !b.contains('*'))
                            && !lower.contains([';', ' '])
                    });
                    if !ok {
                        let hint =
                            Some("a media type such as `application/json`, or `text/*`".into());
                        self.err_at(t, format!("bad compression type `{}`", t.get_ref()), hint);
                    }
                    ok.then_some(lower)
                })
                .collect(),
        };
        Some(Compression {
            level,
            min_size,
            types,
        })
    }

    /// A list of CIDR blocks, each checked.
    fn cidr_list(&mut self, list: &Option<Spanned<Vec<Spanned<String>>>>, key: &str) -> Vec<Cidr> {
        let Some(list) = list else {
            return Vec::new();
        };
        if list.get_ref().is_empty() {
            self.err_at(
                list,
                format!("`{key}` is empty"),
                Some(format!("omit `{key}`")),
            );
        }
        list.get_ref()
            .iter()
            .filter_map(|c| match c.get_ref().parse::<Cidr>() {
                Ok(cidr) => Some(cidr),
                Err(e) => {
                    let hint = Some("write a CIDR block such as `10.0.0.0/8` or an address".into());
                    self.err_at(c, format!("bad `{key}` entry: {e}"), hint);
                    None
                }
            })
            .collect()
    }

    pub(super) fn policy(&mut self, r: &RawRoute) -> Policy {
        let timeout = r.timeout.as_ref().map(|t| {
            let d = self.duration(&Some(t.clone()), "timeout", Duration::from_secs(30));
            if d.is_zero() {
                self.err_at(t, "`timeout` must be longer than zero", None);
            }
            d
        });
        let max_body = r
            .max_body
            .as_ref()
            .map(|m| match super::capture::bytes(m.get_ref()) {
                Some(n) => n,
                None => {
                    let hint = Some("a size such as `10MB`, `512KB` or `1048576`".into());
                    self.err_at(m, format!("bad `max-body` `{}`", m.get_ref()), hint);
                    u64::MAX
                }
            });
        Policy {
            compress: r.compress.as_ref().is_none_or(|c| *c.get_ref()),
            timeout,
            max_body,
            allow_ips: self.cidr_list(&r.allow_ips, "allow-ips"),
            deny_ips: self.cidr_list(&r.deny_ips, "deny-ips"),
        }
    }

    /// The answer the route gives itself (`redirect` or `respond`), if it has one. Such a route
    /// has no sides.
    pub(super) fn fixed(&mut self, r: &RawRoute) -> Option<Arc<Fixed>> {
        let fixed = match (&r.redirect, &r.respond) {
            (None, None) => return None,
            (Some(_), Some(b)) => {
                self.err_at(b, "a route either redirects or responds, not both", None);
                return None;
            }
            (Some(redirect), None) => self.redirect(redirect)?,
            (None, Some(respond)) => self.respond(respond)?,
        };
        for (key, given) in [
            ("legacy", r.legacy.is_some()),
            ("new", r.new.is_some()),
            ("shift", r.shift.is_some()),
            ("shadow", r.shadow.is_some()),
            ("rollout", r.rollout.is_some()),
            ("fallback", r.fallback.is_some()),
            ("plugins", r.plugins.is_some()),
            ("timeout", r.timeout.is_some()),
        ] {
            if given {
                let hint = Some("a route that redirects or responds itself sends nothing to a side: remove the key, or make it two routes".into());
                self.err_at(
                    &r.id,
                    format!("route `{}` answers itself and has `{key}`", r.id.get_ref()),
                    hint,
                );
            }
        }
        Some(Arc::new(fixed))
    }

    fn status(&mut self, s: &Spanned<i64>, allowed: &[u16], what: &str) -> Option<StatusCode> {
        let ok = u16::try_from(*s.get_ref())
            .ok()
            .filter(|n| allowed.contains(n) || allowed.is_empty() && (200..=599).contains(n))
            .and_then(|n| StatusCode::from_u16(n).ok());
        if ok.is_none() {
            let hint = if allowed.is_empty() {
                "a final status from 200 to 599".to_string()
            } else {
                format!("one of {allowed:?}")
            };
            self.err_at(s, format!("bad {what} status {}", s.get_ref()), Some(hint));
        }
        ok
    }

    fn redirect(&mut self, raw: &Spanned<super::raw::RawRedirect>) -> Option<Fixed> {
        let raw = raw.get_ref();
        let status = match &raw.status {
            None => StatusCode::PERMANENT_REDIRECT,
            Some(s) => self.status(s, &[301, 302, 303, 307, 308], "redirect")?,
        };
        let to = raw.to.get_ref();
        // What the template gives with a path and query in must be a header value; the
        // variables are all it may take from the request.
        // Judged on what it gives (`/$path` is `//host/...`: another site).
        let sample = location(to, "/p", "?q");
        let scheme_ok = sample.starts_with('/') && !sample.starts_with("//")
            || sample.starts_with("https://")
            || sample.starts_with("http://");
        if HeaderValue::from_str(&sample).is_err() || !scheme_ok || sample.contains(['$', '\\']) {
            let hint = Some("a path (`/new$path`) or an absolute http(s) URL; `$path` and `$query` are the only variables".into());
            self.err_at(&raw.to, format!("bad redirect `to` `{to}`"), hint);
            return None;
        }
        Some(Fixed::Redirect {
            to: to.clone(),
            status,
        })
    }

    fn respond(&mut self, raw: &Spanned<super::raw::RawRespond>) -> Option<Fixed> {
        let raw = raw.get_ref();
        let status = self.status(&raw.status, &[], "respond");
        let mut headers = Vec::new();
        let content_type = raw
            .content_type
            .as_ref()
            .map_or("text/plain; charset=utf-8", |c| c.get_ref());
        match HeaderValue::from_str(content_type) {
            Ok(v) => headers.push((http::header::CONTENT_TYPE, v)),
            Err(_) => {
                if let Some(c) = &raw.content_type {
                    self.err_at(c, "`content-type` is not a header value", None);
                }
            }
        }
        for (name, value) in raw.headers.iter().flatten() {
            let lower = name.get_ref().to_ascii_lowercase();
            let parsed = (HeaderName::from_bytes(lower.as_bytes()).ok())
                .zip(HeaderValue::from_str(value.get_ref()).ok());
            match parsed {
                Some((n, v)) if settable(&n) => headers.push((n, v)),
                Some((n, _)) => {
                    let hint = Some("strangle sets framing, hop-by-hop, its own and `content-type` (its own key) itself".into());
                    self.err_at(name, format!("`respond` cannot set `{n}`"), hint);
                }
                None => self.err_at(name, format!("bad header `{}`", name.get_ref()), None),
            }
        }
        Some(Fixed::Respond {
            status: status?,
            headers,
            body: Bytes::from(
                raw.body
                    .as_ref()
                    .map_or(String::new(), |b| b.get_ref().clone()),
            ),
        })
    }
}

/// A redirect's `Location`: the template with the request's canonical path and query, in one
/// pass (what they bring is never read as a variable).
pub fn location(to: &str, path: &str, query: &str) -> String {
    let mut out = String::with_capacity(to.len() + path.len() + query.len());
    let mut rest = to;
    while let Some(at) = rest.find('$') {
        out.push_str(&rest[..at]);
        let after = &rest[at..];
        if let Some(r) = after.strip_prefix("$path") {
            out.push_str(path);
            rest = r;
        } else if let Some(r) = after.strip_prefix("$query") {
            out.push_str(query);
            rest = r;
        } else {
            out.push('$');
            rest = &after[1..];
        }
    }
    out.push_str(rest);
    out
}
