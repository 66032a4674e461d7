//! Lowering a route's `shadow = { ... }` and `shadow-writes`: which requests are copied to
//! the other side, and how their answers are compared.

use http::{HeaderName, Method};
use toml::Spanned;

use super::raw::{RawRoute, RawShadow};
use super::Cx;
use crate::split::Shift;

/// A body captured for comparison is cut at this size unless `max-body` says otherwise.
pub const DEFAULT_MAX_BODY: usize = 1 << 20;
/// The most `max-body` may be: a shadowed request holds two bodies this large while queued.
pub const MAX_MAX_BODY: usize = 16 << 20;

/// The validated `shadow = { ... }` of a route.
#[derive(Debug, Clone, PartialEq)]
pub struct Shadow {
    /// The share of the route's eligible requests copied to the other side.
    pub percent: Shift,
    pub methods: Vec<Method>,
    /// JSON paths left out of the comparison.
    pub ignore: Vec<Pattern>,
    /// Response headers compared (lower case); the status and the body always are.
    pub headers: Vec<HeaderName>,
    /// Send a sample of requests to the legacy side twice and learn what differs as noise.
    pub calibrate: bool,
    /// Bodies (request and answers) are captured up to this; a larger answer is compared by the
    /// hash of its prefix, a larger request body is not shadowed.
    pub max_body: usize,
}

impl Cx<'_> {
    /// The route's shadow, checked against the route it is on (`r`).
    pub(super) fn shadow(&mut self, r: &RawRoute) -> Option<Shadow> {
        let writes = r.shadow_writes.as_ref().is_some_and(|w| *w.get_ref());
        let Some(raw) = &r.shadow else {
            if let Some(w) = r.shadow_writes.as_ref().filter(|w| *w.get_ref()) {
                self.err_at(w, "`shadow-writes` has no effect without `shadow`", None);
            }
            return None;
        };
        let at = raw.span().start;
        let raw: &RawShadow = raw.get_ref();
        if r.legacy.is_none() || r.new.is_none() {
            let hint = Some("a shadow copy goes to the side the split did not choose: set both `legacy` and `new`".into());
            self.error(
                at,
                format!("route `{}` shadows with only one side", r.id.get_ref()),
                hint,
            );
        }
        let percent = match &raw.percent {
            None => Shift::ALL,
            Some(p) => Shift::parse(&p.get_ref().as_text()).unwrap_or_else(|e| {
                self.err_at(p, format!("shadow `percent`: {e}"), None);
                Shift::ZERO
            }),
        };
        let methods = match &raw.methods {
            None => vec![Method::GET, Method::HEAD],
            Some(ms) => ms
                .get_ref()
                .iter()
                .filter_map(|m| self.shadow_method(m, writes))
                .collect(),
        };
        if raw.methods.as_ref().is_some_and(|m| m.get_ref().is_empty()) {
            self.error(
                at,
                "shadow `methods` is empty",
                Some("leave it out to shadow GET and HEAD".into()),
            );
        }
        let ignore = raw
            .ignore
            .iter()
            .flatten()
            .filter_map(|p| match p.get_ref().parse::<Pattern>() {
                Ok(p) => Some(p),
                Err(e) => {
                    self.err_at(p, e.to_string(), None);
                    None
                }
            })
            .collect();
        let headers = raw
            .headers
            .iter()
            .flatten()
            .filter_map(
                |h| match HeaderName::from_bytes(h.get_ref().trim().as_bytes()) {
                    Ok(name) => Some(name),
                    Err(_) => {
                        self.err_at(h, format!("bad header name `{}`", h.get_ref()), None);
                        None
                    }
                },
            )
            .collect();
        let max_body = match &raw.max_body {
            None => DEFAULT_MAX_BODY,
            Some(v) => match size(&v.get_ref().as_text()) {
                Some(n) if (1..=MAX_MAX_BODY).contains(&n) => n,
                _ => {
                    let hint = Some(format!(
                        "write a size like `64KB` or `1MB`, at most {}MB",
                        MAX_MAX_BODY >> 20
                    ));
                    self.err_at(
                        v,
                        format!("bad shadow `max-body` `{}`", v.get_ref().as_text()),
                        hint,
                    );
                    DEFAULT_MAX_BODY
                }
            },
        };
        Some(Shadow {
            percent,
            methods,
            ignore,
            headers,
            calibrate: raw.calibrate.as_ref().is_some_and(|c| *c.get_ref()),
            max_body,
        })
    }

    /// A method to shadow: a write (anything not safe) only with `shadow-writes = true`, since
    /// the copy makes the write happen twice.
    fn shadow_method(&mut self, m: &Spanned<String>, writes: bool) -> Option<Method> {
        let Ok(method) = Method::from_bytes(m.get_ref().to_ascii_uppercase().as_bytes()) else {
            self.err_at(m, format!("bad method `{}`", m.get_ref()), None);
            return None;
        };
        if method == Method::CONNECT {
            self.err_at(m, "`CONNECT` opens a tunnel and is never shadowed", None);
            return None;
        }
        if !method.is_safe() && !writes {
            let hint = Some("a shadow copy of a write makes it happen twice; set `shadow-writes = true` on the route only if the two sides write to different places".into());
            self.err_at(
                m,
                format!("`{method}` is a write and is not shadowed by default"),
                hint,
            );
            return None;
        }
        Some(method)
    }
}

/// `1048576`, `64KB`, `1MB` (powers of 1024; `KiB`/`MiB` too).
pub(super) fn size(s: &str) -> Option<usize> {
    let s = s.trim();
    let digits = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let n: usize = s[..digits].parse().ok()?;
    let unit = match s[digits..].trim().to_ascii_uppercase().as_str() {
        "" | "B" => 1,
        "KB" | "KIB" | "K" => 1 << 10,
        "MB" | "MIB" | "M" => 1 << 20,
        _ => return None,
    };
    n.checked_mul(unit)
}

/// A JSON path pattern from `ignore`: `$.a.b`, `$.items[*].id`, `$..requestId` (any depth),
/// `$.headers.*`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Pattern(Vec<Step>);

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
enum Step {
    Key(String),
    Index(usize),
    /// `*` or `[*]`: any one key or index.
    Any,
    /// `..`: any number of levels, then the next step.
    Descend,
}

/// A pattern that does not parse, with why.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("`{pattern}` is not a JSON path this compares: {why} (write `$.field`, `$.list[*].id` or `$..field`)")]
pub struct BadPattern {
    pub pattern: String,
    pub why: &'static str,
}

impl std::str::FromStr for Pattern {
    type Err = BadPattern;

    fn from_str(s: &str) -> Result<Pattern, BadPattern> {
        let bad = |why| BadPattern {
            pattern: s.to_string(),
            why,
        };
        let rest = s
            .strip_prefix('$')
            .ok_or_else(|| bad("it must start with `$`"))?;
        let b = rest.as_bytes();
        let mut steps = Vec::new();
        let mut i = 0;
        while i < b.len() {
            match b[i] {
                b'.' if b.get(i + 1) == Some(&b'.') => {
                    steps.push(Step::Descend);
                    i += 2;
                    i = key(rest, i, &mut steps)
                        .ok_or_else(|| bad("`..` needs a name after it"))?;
                }
                b'.' => {
                    i = key(rest, i + 1, &mut steps)
                        .ok_or_else(|| bad("`.` needs a name after it"))?;
                }
                b'[' => {
                    let end = rest[i..]
                        .find(']')
                        .ok_or_else(|| bad("a `[` is not closed"))?
                        + i;
                    let inner = &rest[i + 1..end];
                    let step = if inner == "*" {
                        Step::Any
                    } else if let Some(name) = inner
                        .strip_prefix('\'')
                        .and_then(|n| n.strip_suffix('\''))
                        .or_else(|| inner.strip_prefix('"').and_then(|n| n.strip_suffix('"')))
                    {
                        Step::Key(name.to_string())
                    } else {
                        Step::Index(
                            inner
                                .parse()
                                .map_err(|_| bad("`[...]` holds an index, `*` or a quoted name"))?,
                        )
                    };
                    steps.push(step);
                    i = end + 1;
                }
                _ => return Err(bad("steps are `.name`, `[n]`, `[*]` or `..name`")),
            }
        }
        if steps.last() == Some(&Step::Descend) {
            return Err(bad("`..` needs a name after it"));
        }
        Ok(Pattern(steps))
    }
}

/// Reads a `.name` step's name (up to the next `.` or `[`) from `i`; `*` is any key.
fn key(s: &str, i: usize, steps: &mut Vec<Step>) -> Option<usize> {
    let end = s[i..].find(['.', '[']).map_or(s.len(), |e| e + i);
    let name = &s[i..end];
    if name.is_empty() {
        return None;
    }
    steps.push(if name == "*" {
        Step::Any
    } else {
        Step::Key(name.to_string())
    });
    Some(end)
}

/// A step of a concrete path in a document.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PathStep<'a> {
    Key(&'a str),
    Index(usize),
}

impl Pattern {
    pub fn matches(&self, path: &[PathStep<'_>]) -> bool {
        fn go(p: &[Step], path: &[PathStep<'_>]) -> bool {
            match (p.first(), path.first()) {
                (None, _) => path.is_empty(),
                (Some(Step::Descend), _) => (0..=path.len()).any(|skip| go(&p[1..], &path[skip..])),
                (Some(_), None) => false,
                (Some(step), Some(at)) => {
                    let ok = match (step, at) {
                        (Step::Any, _) => true,
                        (Step::Key(k), PathStep::Key(a)) => k == a,
                        (Step::Index(n), PathStep::Index(a)) => n == a,
                        _ => false,
                    };
                    ok && go(&p[1..], &path[1..])
                }
            }
        }
        go(&self.0, path)
    }
}
