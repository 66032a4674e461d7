//! Stage 1, guard: the checks every request head passes before anything is routed on it, and
//! the canonical path the route is chosen on and every upstream receives. In order: a request
//! line that arrived malformed; one valid `Host` (required on HTTP/1.1); an upper-case method;
//! one unambiguous body framing; the header count and size caps; no control bytes in values;
//! then the target: UTF-8, a clean query, the path canonicalised once.

use std::borrow::Cow;
use std::net::IpAddr;

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};

use super::Refusal;
use crate::routing::{self, PathError};
use crate::state::Snapshot;

const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// What an engine read of a request, for the guard.
pub struct Inbound<'a> {
    pub head: &'a http::request::Parts,
    /// The request target exactly as the client sent it (fragment and all: a parsed URI would
    /// have dropped a fragment, which must be refused rather than ignored).
    pub target: Bytes,
    /// The raw header block when the engine has it (HTTP/1), for what a parsed view hides.
    pub raw_head: Option<&'a [u8]>,
    /// The transport saw bytes in the request line that HTTP does not allow (a parser may
    /// have escaped them into something else and gone on).
    pub bad_request_line: bool,
    /// The TCP peer.
    pub peer: Option<IpAddr>,
    /// The server name the client asked for on its TLS connection (normalised), if any.
    pub sni: Option<std::sync::Arc<str>>,
}

/// The request target with its canonical path: the route is chosen on `routed()`, and every
/// upstream receives it.
#[derive(Debug, Clone)]
pub struct RequestPath {
    /// The target as received (a slice of the head's buffer: no copy).
    pub target: Bytes,
    path_len: usize,
    /// The canonical path when it differs from the received one.
    canonical: Option<String>,
}

impl RequestPath {
    /// The canonical path.
    pub fn routed(&self) -> &str {
        match &self.canonical {
            Some(p) => p,
            None => std::str::from_utf8(&self.target[..self.path_len]).unwrap_or(""),
        }
    }

    /// The query as received, with its `?`, or "" (bytes that are not UTF-8 replaced, as
    /// every upstream kind gets it).
    pub fn query(&self) -> Cow<'_, str> {
        String::from_utf8_lossy(&self.target[self.path_len..])
    }

    /// Whether the canonical path differs from the one the client sent.
    pub fn rewritten(&self) -> bool {
        self.canonical.is_some()
    }
}

/// The request id: the client's `x-request-id` when it is one (1 to 128 visible ASCII
/// characters), else a new random one.
pub fn request_id(headers: &HeaderMap) -> HeaderValue {
    match headers.get(&X_REQUEST_ID) {
        Some(v) if valid_request_id(v) => v.clone(),
        _ => new_request_id(),
    }
}

fn valid_request_id(v: &HeaderValue) -> bool {
    let b = v.as_bytes();
    !b.is_empty() && b.len() <= 128 && b.iter().all(|c| c.is_ascii_graphic())
}

/// 32 random hex digits, formatted on the stack (the header value is the one allocation).
fn new_request_id() -> HeaderValue {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut n = rand::random::<u128>();
    let mut id = [0u8; 32];
    for digit in id.iter_mut().rev() {
        *digit = HEX[(n & 0xf) as usize];
        n >>= 4;
    }
    HeaderValue::from_bytes(&id).unwrap_or(HeaderValue::from_static("0"))
}

/// Runs the head checks and canonicalises the path.
pub fn check(snap: &Snapshot, inbound: Inbound<'_>) -> Result<RequestPath, Refusal> {
    let req = inbound.head;
    let limits = &snap.config.server;
    if inbound.bad_request_line {
        return Err(Refusal::new(400, "malformed request line"));
    }
    let mut hosts = req.headers.get_all(header::HOST).iter();
    match (hosts.next(), hosts.next()) {
        (Some(_), Some(_)) => return Err(Refusal::new(400, "more than one Host")),
        (Some(h), None) if !valid_host(h.as_bytes()) => {
            return Err(Refusal::new(400, "malformed Host"))
        }
        (None, _) if req.version == http::Version::HTTP_11 => {
            return Err(Refusal::new(400, "no Host"))
        }
        _ => {}
    }
    // A connection made for one name carries requests for that name only (RFC 9110 section
    // 15.5.20): a client that reuses it for another host is told to connect again.
    if let Some(sni) = &inbound.sni {
        if super::decide::request_host(req).is_some_and(|h| *h != **sni) {
            return Err(Refusal::new(421, "Host is not the TLS server name"));
        }
    }
    // Methods are case-sensitive (RFC 9110 section 9.1), but many monoliths upper-case them:
    // `post` would miss a route limited to POST and still be a POST to the monolith.
    if req.method.as_str().bytes().any(|b| b.is_ascii_lowercase()) {
        return Err(Refusal::new(400, "method not in upper case"));
    }
    // Framing: one unambiguous body length or none.
    let cl_values = req.headers.get_all(header::CONTENT_LENGTH).iter().count();
    if req.headers.contains_key(header::TRANSFER_ENCODING)
        && (cl_values > 0 || inbound.raw_head.is_some_and(raw_has_content_length))
    {
        return Err(Refusal::new(
            400,
            "both Content-Length and Transfer-Encoding",
        ));
    }
    // This hop decodes chunked framing and frames the body again for the upstream; it undoes
    // no other transfer coding, so one (`gzip, chunked`) would reach the upstream undeclared:
    // not implemented (RFC 9112 section 6.1), as is a coding list spread over several lines.
    let mut codings = req.headers.get_all(header::TRANSFER_ENCODING).iter();
    if let Some(first) = codings.next() {
        if codings.next().is_some()
            || !first
                .as_bytes()
                .trim_ascii()
                .eq_ignore_ascii_case(b"chunked")
        {
            return Err(Refusal::new(501, "a transfer coding other than chunked"));
        }
    }
    if cl_values > 1
        || req
            .headers
            .get(header::CONTENT_LENGTH)
            .is_some_and(|v| v.as_bytes().contains(&b','))
    {
        return Err(Refusal::new(400, "repeated Content-Length"));
    }
    // Header caps.
    if req.headers.len() > limits.max_headers {
        return Err(Refusal::new(431, "too many request headers"));
    }
    let header_bytes: usize = req
        .headers
        .iter()
        .map(|(k, v)| k.as_str().len() + v.len() + 4)
        .sum();
    if header_bytes > limits.max_header_bytes {
        return Err(Refusal::new(431, "request headers too large"));
    }
    if req.headers.values().any(|v| has_control_byte(v.as_bytes())) {
        return Err(Refusal::new(400, "control byte in a header value"));
    }
    connection_options(&req.headers)?;
    path(snap, inbound.target)
}

/// Path: canonicalised once; the route is chosen on it and every upstream receives it.
fn path(snap: &Snapshot, target: Bytes) -> Result<RequestPath, Refusal> {
    let path_len = memchr::memchr(b'?', &target).unwrap_or(target.len());
    let Ok(path_str) = std::str::from_utf8(&target[..path_len]) else {
        return Err(Refusal::new(400, PathError::InvalidByte.to_string()));
    };
    routing::check_query(&target[path_len..]).map_err(|e| Refusal::new(400, e.to_string()))?;
    let canonical = match routing::canonicalize(path_str, snap.config.server.path_params) {
        Ok(Cow::Borrowed(_)) => None,
        Ok(Cow::Owned(p)) => Some(p),
        Err(e) => return Err(Refusal::new(400, e.to_string())),
    };
    let path = RequestPath {
        target,
        path_len,
        canonical,
    };
    if snap.table.folds_case() && routing::case_fold_trap(path.routed()) {
        let why = "a character that some case-insensitive matchers fold to ASCII";
        return Err(Refusal::new(400, why));
    }
    Ok(path)
}

/// The most options a `Connection` header may list (Pingora's limit).
const MAX_CONNECTION_OPTIONS: usize = 10;

/// Headers a `Connection` option may not name (see `connection_options`).
const PROTECTED_FROM_CONNECTION: &[&str] = &[
    "host",
    "content-length",
    "transfer-encoding",
    "x-forwarded-for",
    "x-forwarded-host",
    "x-forwarded-proto",
    "x-real-ip",
    "forwarded",
];

/// `Connection` names the headers that end at this hop; the outbound policy removes them. A
/// name that is not a token (RFC 9110 section 5.6.2: quoted, non-ASCII, a pseudo-header) would
/// name nothing the policy can match, so the header it meant would pass: refused. So are the
/// headers a request cannot be forwarded without, or whose removal would reframe it (`Host`,
/// `Content-Length`, `Transfer-Encoding`), and the forwarding headers strangle sets itself.
fn connection_options(headers: &http::HeaderMap) -> Result<(), Refusal> {
    let mut count = 0;
    for value in headers.get_all(header::CONNECTION) {
        for option in value.as_bytes().split(|&b| b == b',') {
            let option = option.trim_ascii();
            if option.is_empty() {
                continue;
            }
            count += 1;
            if count > MAX_CONNECTION_OPTIONS {
                return Err(Refusal::new(400, "too many Connection options"));
            }
            if !option.iter().all(|&b| is_tchar(b)) {
                return Err(Refusal::new(400, "a Connection option that is not a token"));
            }
            if PROTECTED_FROM_CONNECTION
                .iter()
                .any(|p| option.eq_ignore_ascii_case(p.as_bytes()))
            {
                return Err(Refusal::new(
                    400,
                    "a Connection option naming a protected header",
                ));
            }
        }
    }
    Ok(())
}

/// A `tchar` (RFC 9110 section 5.6.2).
fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric()
        || matches!(
            b,
            b'!' | b'#'
                | b'$'
                | b'%'
                | b'&'
                | b'\''
                | b'*'
                | b'+'
                | b'-'
                | b'.'
                | b'^'
                | b'_'
                | b'`'
                | b'|'
                | b'~'
        )
}

/// Whether the raw header block repeats Content-Length next to Transfer-Encoding: Pingora drops
/// the Content-Length in that case, but a request framed two ways is a smuggling attempt.
fn raw_has_content_length(raw: &[u8]) -> bool {
    raw.split(|&b| b == b'\n')
        .skip(1)
        .any(|line| line.len() > 15 && line[..15].eq_ignore_ascii_case(b"content-length:"))
}

/// A control byte other than tab. Without an early exit the loop vectorises: header values
/// such as bearer tokens run to hundreds of bytes.
fn has_control_byte(v: &[u8]) -> bool {
    v.iter().fold(false, |bad, &b| {
        bad | ((b < 0x20) & (b != b'\t')) | (b == 0x7f)
    })
}

/// A `Host` value that is an authority (RFC 3986 section 3.2): a DNS name or an address in
/// brackets, and an optional port, nothing that could smuggle a path, user info, a list or
/// markup into the `x-forwarded-host` strangle vouches for.
pub fn valid_host(v: &[u8]) -> bool {
    let (host, port) = match v.first() {
        Some(b'[') => match v.iter().position(|&b| b == b']') {
            Some(end) => {
                let literal = &v[1..end];
                let ok = std::str::from_utf8(literal)
                    .is_ok_and(|s| s.parse::<std::net::Ipv6Addr>().is_ok());
                if !ok {
                    return false;
                }
                (&v[..=end], &v[end + 1..])
            }
            None => return false,
        },
        _ => match v.iter().position(|&b| b == b':') {
            Some(i) => (&v[..i], &v[i..]),
            None => (v, &v[v.len()..]),
        },
    };
    let name_ok = host.first() == Some(&b'[')
        || (!host.is_empty()
            && host
                .iter()
                .all(|&b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_')));
    let port_ok = match port {
        [] => true,
        [b':', digits @ ..] => {
            !digits.is_empty()
                && digits.len() <= 5
                && digits.iter().all(u8::is_ascii_digit)
                && std::str::from_utf8(digits)
                    .ok()
                    .and_then(|d| d.parse::<u32>().ok())
                    .is_some_and(|n| n <= 65535)
        }
        _ => false,
    };
    name_ok && port_ok
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connection_options_must_be_tokens_and_never_name_a_protected_header() {
        let check = |values: &[&[u8]]| {
            let mut h = http::HeaderMap::new();
            for v in values {
                h.append(header::CONNECTION, HeaderValue::from_bytes(v).unwrap());
            }
            connection_options(&h).map_err(|r| r.why)
        };
        assert!(check(&[b"keep-alive, x-secret", b"close,,"]).is_ok());
        assert!(check(&[b"Upgrade"]).is_ok());
        for bad in [
            &b"x-secret, \xff"[..],
            b"\"x-secret\"",
            b":authority",
            b"x secret",
            b"Host",
            b"close, content-length",
            b"X-Forwarded-For",
            b"forwarded",
            b"a,b,c,d,e,f,g,h,i,j,k",
        ] {
            assert!(check(&[bad]).is_err(), "{}", String::from_utf8_lossy(bad));
        }
    }

    #[test]
    fn hosts_are_authorities_and_nothing_else() {
        for ok in [
            "example.com",
            "a-b.c_d:8080",
            "[::1]:443",
            "[::1]",
            "x:65535",
        ] {
            assert!(valid_host(ok.as_bytes()), "{ok}");
        }
        for bad in [
            "", ":80", "a b", "a/b", "u@h", "a,b", "[::1", "[zz]", "x:65536", "x:", "x:+1", "<x>",
            "x:123456",
        ] {
            assert!(!valid_host(bad.as_bytes()), "{bad}");
        }
    }

    #[test]
    fn control_bytes_but_tab_are_found_anywhere_in_a_value() {
        assert!(!has_control_byte(b"Bearer abc\tdef"));
        assert!(has_control_byte(b"abc\x00"));
        assert!(has_control_byte(
            &[b'a'; 300]
                .iter()
                .chain(b"\x7f")
                .copied()
                .collect::<Vec<_>>()
        ));
    }

    #[test]
    fn a_content_length_line_is_found_in_any_case_but_not_in_the_request_line() {
        assert!(raw_has_content_length(
            b"POST / HTTP/1.1\r\nHost: x\r\nCONTENT-LENGTH: 5\r\n\r\n"
        ));
        assert!(!raw_has_content_length(
            b"GET /content-length:abcdefgh HTTP/1.1\r\n\r\n"
        ));
    }

    #[test]
    fn request_ids_are_kept_only_when_visible_ascii_and_short() {
        let mut h = HeaderMap::new();
        h.insert(X_REQUEST_ID, HeaderValue::from_static("abc-123"));
        assert_eq!(request_id(&h), "abc-123");
        h.insert(X_REQUEST_ID, HeaderValue::from_static("has space"));
        assert_ne!(request_id(&h), "has space");
        h.insert(
            X_REQUEST_ID,
            HeaderValue::from_str(&"a".repeat(129)).unwrap(),
        );
        assert_eq!(request_id(&h).len(), 32);
    }

    #[test]
    fn new_request_ids_are_32_lowercase_hex_digits_and_differ() {
        let ids: Vec<HeaderValue> = (0..64).map(|_| new_request_id()).collect();
        for id in &ids {
            assert_eq!(id.len(), 32, "{id:?}");
            assert!(id
                .as_bytes()
                .iter()
                .all(|c| c.is_ascii_digit() || (b'a'..=b'f').contains(c)));
        }
        let distinct: std::collections::HashSet<&[u8]> =
            ids.iter().map(HeaderValue::as_bytes).collect();
        assert_eq!(distinct.len(), ids.len());
        // Every digit position is used: the id is not a short number padded with zeros.
        assert!((0..32).all(|i| ids.iter().any(|id| id.as_bytes()[i] != b'0')));
    }
}
