//! Lowering a route's `fallback = true`, `fallback-methods` and `fallback-statuses`: which
//! requests the new side failed are served by the legacy side instead.

use http::Method;

use super::raw::RawRoute;
use super::Cx;

/// The validated fallback of a route.
#[derive(Debug, Clone, PartialEq)]
pub struct Fallback {
    /// Methods that may be sent to legacy after the new side failed: the idempotent ones unless
    /// `fallback-methods` lists others.
    pub methods: Vec<Method>,
    /// New-side answers (5xx) that count as a failure to fall back from; connect errors, Lambda
    /// throttles and function errors always do.
    pub statuses: Vec<u16>,
}

/// RFC 9110 section 9.2.2: sending these twice has the effect of sending them once.
pub const IDEMPOTENT: [Method; 6] = [
    Method::GET,
    Method::HEAD,
    Method::OPTIONS,
    Method::TRACE,
    Method::PUT,
    Method::DELETE,
];

impl Cx<'_> {
    pub(super) fn fallback(&mut self, r: &RawRoute) -> Option<Fallback> {
        let on = r.fallback.as_ref().is_some_and(|f| *f.get_ref());
        if !on {
            let stray = [
                r.fallback_methods
                    .as_ref()
                    .map(|m| (m.span(), "fallback-methods")),
                r.fallback_statuses
                    .as_ref()
                    .map(|s| (s.span(), "fallback-statuses")),
            ];
            for (span, key) in stray.into_iter().flatten() {
                let hint = Some("add `fallback = true` to the route".into());
                self.error(
                    span.start,
                    format!("`{key}` has no effect without `fallback = true`"),
                    hint,
                );
            }
            return None;
        }
        if r.legacy.is_none() || r.new.is_none() {
            if let Some(f) = &r.fallback {
                let hint = Some("a fallback goes from `new` to `legacy`: set both".into());
                self.err_at(
                    f,
                    format!("route `{}` falls back with only one side", r.id.get_ref()),
                    hint,
                );
            }
        }
        let methods = match &r.fallback_methods {
            None => IDEMPOTENT.to_vec(),
            Some(ms) => {
                if ms.get_ref().is_empty() {
                    let hint = Some("leave it out to fall back for the idempotent methods".into());
                    self.err_at(ms, "`fallback-methods` is empty", hint);
                }
                ms.get_ref()
                    .iter()
                    .filter_map(|m| {
                        let upper = m.get_ref().to_ascii_uppercase();
                        match Method::from_bytes(upper.as_bytes()) {
                            Ok(Method::CONNECT) => {
                                self.err_at(
                                    m,
                                    "`CONNECT` opens a tunnel and is never sent twice",
                                    None,
                                );
                                None
                            }
                            Ok(method) => Some(method),
                            Err(_) => {
                                self.err_at(m, format!("bad method `{}`", m.get_ref()), None);
                                None
                            }
                        }
                    })
                    .collect()
            }
        };
        let statuses = r
            .fallback_statuses
            .iter()
            .flat_map(|s| s.get_ref())
            .filter_map(|s| match u16::try_from(*s.get_ref()) {
                Ok(code @ 500..=599) => Some(code),
                _ => {
                    let hint = Some(
                        "only a 5xx is the new side failing; list those, like [502, 503]".into(),
                    );
                    self.err_at(
                        s,
                        format!("fallback status {} is not a 5xx", s.get_ref()),
                        hint,
                    );
                    None
                }
            })
            .collect();
        Some(Fallback { methods, statuses })
    }
}
