//! Path canonicalisation: the one spelling of a request path that routing, auth and every
//! upstream see (percent-encoding, dot segments, slashes, path parameters, case traps).

use std::borrow::Cow;

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

/// The value of one hex digit, either case.
pub(crate) fn hex_value(b: u8) -> Option<u8> {
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
