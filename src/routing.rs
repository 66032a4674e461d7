//! The route table and path normalisation.
//!
//! Matching runs on the normalised path: an exact route beats the longest segment-aware prefix,
//! and ties go to the route declared first. `/bookings` matches `/bookings` and `/bookings/42`,
//! never `/bookingsx`. Lookup costs one hash probe per path segment, whatever the table size.

use std::borrow::Cow;
use std::collections::HashMap;

use http::Method;

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
}

impl RouteKey {
    fn allows(&self, method: &Method) -> bool {
        self.methods.as_ref().is_none_or(|m| m.contains(method))
    }

    /// Whether `other` can never match because this route, declared earlier, takes every
    /// request it would get.
    pub fn shadows(&self, other: &RouteKey) -> bool {
        let same_path = if self.case_insensitive {
            self.path.eq_ignore_ascii_case(&other.path)
        } else {
            self.path == other.path && !other.case_insensitive
        };
        same_path
            && self.kind == other.kind
            && (self.trailing_slash || !other.trailing_slash)
            && match (&self.methods, &other.methods) {
                (None, _) => true,
                (Some(_), None) => false,
                (Some(a), Some(b)) => b.iter().all(|m| a.contains(m)),
            }
    }
}

/// The index's hasher: foldhash, seeded per process, instead of SipHash (a route lookup hashes
/// every prefix of the path it tries). The keys are the config's paths; a client's path is
/// only looked up, never inserted, so it cannot build up collisions.
type Index = HashMap<String, Vec<usize>, foldhash::fast::RandomState>;

/// Route indices by path, in declaration order within each path.
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
}

/// The route table: case-sensitive routes indexed by their path, case-insensitive ones by the
/// lower-cased path (only built, and only probed, when there are some).
#[derive(Debug, Default)]
pub struct RouteTable {
    keys: Vec<RouteKey>,
    exact_case: PathIndex,
    any_case: Option<PathIndex>,
}

impl RouteTable {
    pub fn new(keys: Vec<RouteKey>) -> RouteTable {
        let mut table = RouteTable::default();
        for (i, key) in keys.iter().enumerate() {
            let index = if key.case_insensitive {
                table.any_case.get_or_insert_with(PathIndex::default)
            } else {
                &mut table.exact_case
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
        table.keys = keys;
        table
    }

    pub fn len(&self) -> usize {
        self.keys.len()
    }

    /// Whether any route matches the path whatever its case.
    pub fn folds_case(&self) -> bool {
        self.any_case.is_some()
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// The index of the route for a canonical path and method: exact beats the longest
    /// prefix; among routes for the same path, the first declared wins.
    pub fn lookup(&self, path: &str, method: &Method) -> Option<usize> {
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
            ids.and_then(|ids| ids.iter().copied().find(|&i| self.keys[i].allows(method)))
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
                (Some(a), Some(b)) => Some(a.min(b)),
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

/// Why a request path was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    #[error("path must start with `/`")]
    NotAbsolute,
    #[error("encoded `/` or `\\` in path")]
    EncodedSeparator,
    #[error("raw `#` or backslash in path")]
    ForbiddenByte,
    #[error("control or non-ASCII byte in path")]
    InvalidByte,
    #[error("encoded control byte in path")]
    EncodedControl,
    #[error("bad percent-encoding in path")]
    BadEscape,
    #[error("invalid UTF-8 in a decoded path segment")]
    InvalidUtf8,
    #[error("`;` path parameter in path")]
    PathParameter,
    #[error("path parameter on an empty or dot segment")]
    DotParameter,
    #[error("raw or encoded control byte in query")]
    QueryControl,
    #[error("raw non-ASCII byte in query (percent-encode it)")]
    QueryNonAscii,
}

/// What `;` in a path segment gets (`[server] path-parameters`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum PathParams {
    /// 400: servlet containers drop `;...` from a segment before routing, so `/admin;x=1` would
    /// be `/admin` to the monolith and something else to strangle.
    #[default]
    Reject,
    /// Part of the segment, forwarded as sent. Only safe when the monolith does not strip them.
    Keep,
}

/// RFC 3986 unreserved: decoded wherever it appears percent-encoded (section 6.2.2.2).
fn unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

/// Bytes a path may carry raw (pchar and `/`); anything else is percent-encoded in the
/// canonical form, so `/a|b` and `/a%7Cb` are one path.
fn raw_allowed(b: u8) -> bool {
    unreserved(b)
        || matches!(
            b,
            b'/' | b'!'
                | b'$'
                | b'&'
                | b'\''
                | b'('
                | b')'
                | b'*'
                | b'+'
                | b','
                | b';'
                | b'='
                | b':'
                | b'@'
        )
}

fn hex_value(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

const HEX: &[u8; 16] = b"0123456789ABCDEF";

/// Canonicalises the path part of a request target (RFC 3986 section 6.2.2): percent-encoded
/// unreserved characters decoded, other escapes upper-cased, characters outside `pchar`
/// encoded, dot-segments resolved, repeated slashes merged. Refused: raw `#` and `\`, raw or
/// encoded control bytes, raw non-ASCII, encoded `/` and `\`, escapes that do not decode to
/// UTF-8 (overlong forms included), `;` parameters unless kept, and dot-segments carrying a
/// parameter (`..;x` is `..` to a servlet container). The route is chosen on the result and the
/// result is what every upstream receives. An already canonical path borrows and allocates
/// nothing.
pub fn canonicalize(path: &str, params: PathParams) -> Result<Cow<'_, str>, PathError> {
    let bytes = path.as_bytes();
    if bytes.first() != Some(&b'/') {
        return Err(PathError::NotAbsolute);
    }
    let mut needs_work = false;
    let mut high_escapes = false;
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'#' | b'\\' => return Err(PathError::ForbiddenByte),
            b if !(0x20..0x7f).contains(&b) => return Err(PathError::InvalidByte),
            b';' if params == PathParams::Reject => return Err(PathError::PathParameter),
            b'%' => {
                let (Some(hi), Some(lo)) = (
                    bytes.get(i + 1).copied().and_then(hex_value),
                    bytes.get(i + 2).copied().and_then(hex_value),
                ) else {
                    return Err(PathError::BadEscape);
                };
                let value = hi * 16 + lo;
                match value {
                    b'/' | b'\\' => return Err(PathError::EncodedSeparator),
                    v if v < 0x20 || v == 0x7f => return Err(PathError::EncodedControl),
                    // Kept parameters are split at a raw `;` only; a stack that decodes first
                    // would split at this one too, so it is refused either way.
                    b';' => return Err(PathError::PathParameter),
                    v if v >= 0x80 => high_escapes = true,
                    v if unreserved(v) => needs_work = true,
                    _ => {}
                }
                if bytes[i + 1].is_ascii_lowercase() || bytes[i + 2].is_ascii_lowercase() {
                    needs_work = true;
                }
                i += 3;
                continue;
            }
            b'/' => {
                let next = bytes.get(i + 1).copied();
                if next == Some(b'/') || (next == Some(b'.') && is_dot_segment(&bytes[i + 1..])) {
                    needs_work = true;
                }
            }
            b if !raw_allowed(b) => needs_work = true,
            _ => {}
        }
        i += 1;
    }
    if high_escapes {
        check_utf8(bytes)?;
    }
    let canonical = if needs_work {
        Cow::Owned(resolve(&encode_canonical(bytes)))
    } else {
        Cow::Borrowed(path)
    };
    if params == PathParams::Keep {
        for segment in canonical.split('/') {
            let name = segment.split(';').next().unwrap_or("");
            if segment.contains(';') && matches!(name, "" | "." | "..") {
                return Err(PathError::DotParameter);
            }
        }
    }
    Ok(canonical)
}

/// Whether a canonical path holds a character that a case-insensitive matcher may fold onto
/// ASCII where strangle's ASCII folding does not: `İ` and `ı` (to `i`/`I` in Java's
/// `equalsIgnoreCase`), the long `ſ` (to `S`) and the Kelvin sign (to `k`). With
/// case-insensitive routes such a path could miss its route here and be that route's path to
/// the monolith, so it is refused.
pub fn case_fold_trap(path: &str) -> bool {
    path.contains('%')
        && ["%C4%B0", "%C4%B1", "%C5%BF", "%E2%84%AA"]
            .iter()
            .any(|t| path.contains(t))
}

/// The path a route is chosen on when `;` parameters are kept: each segment without its
/// parameters, as a servlet container routes it (so `/admin;x=1` is guarded by `/admin`).
/// Borrows when there are none.
pub fn without_params(path: &str) -> Cow<'_, str> {
    if !path.contains(';') {
        return Cow::Borrowed(path);
    }
    let mut out = String::with_capacity(path.len());
    for (i, segment) in path.split('/').enumerate() {
        if i > 0 {
            out.push('/');
        }
        out.push_str(segment.split(';').next().unwrap_or(""));
    }
    Cow::Owned(out)
}

/// Checks a request's query: no raw or encoded control bytes, no `#`. The query is forwarded as
/// sent; strangle routes on the path only.
pub fn check_query(query: &[u8]) -> Result<(), PathError> {
    let mut i = 0;
    while i < query.len() {
        match query[i] {
            b'#' => return Err(PathError::ForbiddenByte),
            b if b < 0x20 || b == 0x7f => return Err(PathError::QueryControl),
            // HTTP/1's request line cannot carry them; HTTP/2's `:path` is refused the same.
            b if b >= 0x80 => return Err(PathError::QueryNonAscii),
            b'%' => {
                let value = query
                    .get(i + 1)
                    .copied()
                    .and_then(hex_value)
                    .zip(query.get(i + 2).copied().and_then(hex_value))
                    .map(|(h, l)| h * 16 + l);
                if value.is_some_and(|v| v < 0x20 || v == 0x7f) {
                    return Err(PathError::QueryControl);
                }
            }
            _ => {}
        }
        i += 1;
    }
    Ok(())
}

/// The bytes of a path whose escapes were validated, each with whether it was escaped.
fn decoded(bytes: &[u8]) -> impl Iterator<Item = (u8, bool)> + '_ {
    let mut i = 0;
    std::iter::from_fn(move || {
        let b = *bytes.get(i)?;
        if b == b'%' {
            let value =
                hex_value(bytes[i + 1]).unwrap_or(0) * 16 + hex_value(bytes[i + 2]).unwrap_or(0);
            i += 3;
            Some((value, true))
        } else {
            i += 1;
            Some((b, false))
        }
    })
}

/// Whether every escape decodes to UTF-8 (overlong forms and surrogates are not UTF-8).
fn check_utf8(bytes: &[u8]) -> Result<(), PathError> {
    let plain: Vec<u8> = decoded(bytes).map(|(b, _)| b).collect();
    std::str::from_utf8(&plain).map_err(|_| PathError::InvalidUtf8)?;
    Ok(())
}

/// The percent-encoding step of canonicalisation (dot-segments untouched): unreserved bytes
/// plain, bytes outside `pchar` escaped, escapes in upper case.
fn encode_canonical(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len() + 8);
    for (b, escaped) in decoded(bytes) {
        let plain = if escaped {
            unreserved(b)
        } else {
            raw_allowed(b)
        };
        if plain {
            out.push(b as char);
        } else {
            out.push('%');
            out.push(HEX[(b >> 4) as usize] as char);
            out.push(HEX[(b & 15) as usize] as char);
        }
    }
    out
}

/// Whether `rest` (just after a `/`) starts with a `.` or `..` segment, spelled raw.
fn is_dot_segment(rest: &[u8]) -> bool {
    let seg_end = rest.iter().position(|&b| b == b'/').unwrap_or(rest.len());
    matches!(&rest[..seg_end], b"." | b"..")
}

/// Resolves dot-segments and merges slashes of an encoded-canonical path.
fn resolve(path: &str) -> String {
    let mut out: Vec<&str> = Vec::new();
    let trailing = path.ends_with('/') || path.ends_with("/.") || path.ends_with("/..");
    for segment in path.split('/') {
        match segment {
            "" | "." => {}
            ".." => {
                out.pop();
            }
            s => out.push(s),
        }
    }
    let mut result = String::with_capacity(path.len());
    for s in &out {
        result.push('/');
        result.push_str(s);
    }
    if trailing || result.is_empty() {
        result.push('/');
    }
    result
}

#[cfg(test)]
#[path = "routing/tests.rs"]
mod tests;
