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
}

impl RouteKey {
    fn allows(&self, method: &Method) -> bool {
        self.methods.as_ref().is_none_or(|m| m.contains(method))
    }

    /// Whether `other` can never match because this route, declared earlier, takes every
    /// request it would get.
    pub fn shadows(&self, other: &RouteKey) -> bool {
        self.path == other.path
            && self.kind == other.kind
            && match (&self.methods, &other.methods) {
                (None, _) => true,
                (Some(_), None) => false,
                (Some(a), Some(b)) => b.iter().all(|m| a.contains(m)),
            }
    }
}

/// Route indices by path, in declaration order within each path.
#[derive(Debug, Default)]
pub struct RouteTable {
    keys: Vec<RouteKey>,
    exact: HashMap<String, Vec<usize>>,
    prefix: HashMap<String, Vec<usize>>,
    has_root_prefix: bool,
}

impl RouteTable {
    pub fn new(keys: Vec<RouteKey>) -> RouteTable {
        let mut table = RouteTable::default();
        for (i, key) in keys.iter().enumerate() {
            let map = match key.kind {
                PathMatch::Exact => &mut table.exact,
                PathMatch::Prefix => &mut table.prefix,
            };
            map.entry(key.path.clone()).or_default().push(i);
            table.has_root_prefix |= key.kind == PathMatch::Prefix && key.path == "/";
        }
        table.keys = keys;
        table
    }

    pub fn len(&self) -> usize {
        self.keys.len()
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// The index of the route for a normalised path and method.
    pub fn lookup(&self, path: &str, method: &Method) -> Option<usize> {
        let first = |ids: Option<&Vec<usize>>| {
            ids.and_then(|ids| ids.iter().copied().find(|&i| self.keys[i].allows(method)))
        };
        if let Some(i) = first(self.exact.get(path)) {
            return Some(i);
        }
        if self.prefix.is_empty() {
            return None;
        }
        // Try the whole path, then cut it back one segment at a time.
        let mut end = path.len();
        loop {
            let candidate = &path[..end];
            let candidate = if candidate.len() > 1 {
                candidate.strip_suffix('/').unwrap_or(candidate)
            } else {
                candidate
            };
            if let Some(i) = first(self.prefix.get(candidate)) {
                return Some(i);
            }
            match candidate.rfind('/') {
                Some(0) | None => break,
                Some(cut) => end = cut,
            }
        }
        if self.has_root_prefix {
            return first(self.prefix.get("/"));
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
    #[error("bad percent-encoding in path")]
    BadEscape,
}

/// Normalises the path part of a request target: `%2E` decoded, dot-segments resolved, repeated
/// slashes merged. Encoded separators, raw `#`, backslashes and control bytes are refused. The
/// common case, an already clean path, borrows and allocates nothing.
pub fn normalize(path: &str) -> Result<Cow<'_, str>, PathError> {
    let bytes = path.as_bytes();
    if bytes.first() != Some(&b'/') {
        return Err(PathError::NotAbsolute);
    }
    let mut needs_work = false;
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'#' | b'\\' => return Err(PathError::ForbiddenByte),
            b if b <= 0x20 || b >= 0x7f => return Err(PathError::InvalidByte),
            b'%' => {
                let hex = bytes.get(i + 1..i + 3).ok_or(PathError::BadEscape)?;
                let value = decode_hex(hex).ok_or(PathError::BadEscape)?;
                match value {
                    b'/' | b'\\' => return Err(PathError::EncodedSeparator),
                    b'.' => needs_work = true,
                    _ => {}
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
            _ => {}
        }
        i += 1;
    }
    if !needs_work {
        return Ok(Cow::Borrowed(path));
    }
    Ok(Cow::Owned(resolve(path)))
}

fn decode_hex(hex: &[u8]) -> Option<u8> {
    let digit = |b: u8| (b as char).to_digit(16);
    Some((digit(hex[0])? * 16 + digit(hex[1])?) as u8)
}

/// Whether `rest` (just after a `/`) starts with a `.` or `..` segment.
fn is_dot_segment(rest: &[u8]) -> bool {
    let seg_end = rest.iter().position(|&b| b == b'/').unwrap_or(rest.len());
    matches!(&rest[..seg_end], b"." | b"..")
}

fn resolve(path: &str) -> String {
    // `%2E`/`%2e` is an encoded dot; decode it so `/%2e%2e/` cannot climb past a route's prefix.
    let decoded = if path.contains('%') {
        Cow::Owned(path.replace("%2E", ".").replace("%2e", "."))
    } else {
        Cow::Borrowed(path)
    };
    let mut out: Vec<&str> = Vec::new();
    let trailing = decoded.ends_with('/') || decoded.ends_with("/.") || decoded.ends_with("/..");
    for segment in decoded.split('/') {
        match segment {
            "" | "." => {}
            ".." => {
                out.pop();
            }
            s => out.push(s),
        }
    }
    let mut result = String::with_capacity(decoded.len());
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
