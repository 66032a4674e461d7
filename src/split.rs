//! The traffic split: shift percentages in basis points, sticky keys, and the side decision.
//!
//! A request goes to the new side iff `hash(route, sticky key) mod 10000 < shift_bp`. The bucket
//! of a key never changes, so raising the shift only moves users from legacy to new and lowering
//! it only moves them back; a request without a key value gets a random bucket.

use std::fmt;
use std::net::IpAddr;

use http::header::{HeaderMap, HeaderName, COOKIE};
use xxhash_rust::xxh3::{xxh3_64, xxh3_64_with_seed};

/// Which side of the migration serves a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    Legacy,
    New,
    /// No route matched; `[server] default` served it.
    Default,
}

impl Side {
    pub fn as_str(self) -> &'static str {
        match self {
            Side::Legacy => "legacy",
            Side::New => "new",
            Side::Default => "default",
        }
    }
}

/// A share of traffic in basis points: 2500 is 25%.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default)]
pub struct Shift(u16);

pub const FULL: u16 = 10_000;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error(
    "bad percent `{0}`: expected 0 to 100 with at most two decimals, like `25%`, `25` or `0.5%`"
)]
pub struct BadPercent(pub String);

impl BadPercent {
    /// Keeps at most 100 characters of the text: the message echoes it.
    fn of(text: &str) -> BadPercent {
        match text.char_indices().nth(100) {
            Some((end, _)) => BadPercent(format!("{}...", &text[..end])),
            None => BadPercent(text.to_string()),
        }
    }
}

impl Shift {
    pub const ZERO: Shift = Shift(0);
    pub const ALL: Shift = Shift(FULL);

    pub fn from_bp(bp: u16) -> Option<Shift> {
        (bp <= FULL).then_some(Shift(bp))
    }

    pub fn bp(self) -> u16 {
        self.0
    }

    /// Parses `25%`, `25`, `0.5%`, `12.34%`. Exact decimal parsing: no float rounding. No
    /// spaces anywhere (`25 %` is refused), the same for the CLI, the admin API and the config.
    pub fn parse(text: &str) -> Result<Shift, BadPercent> {
        let bad = || BadPercent::of(text);
        let t = text.strip_suffix('%').unwrap_or(text);
        let (int, frac) = match t.split_once('.') {
            Some((i, f)) => (i, f),
            None => (t, ""),
        };
        let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
        if !digits(int) || (t.contains('.') && !digits(frac)) || frac.len() > 2 || int.len() > 3 {
            return Err(bad());
        }
        let whole: u32 = int.parse().map_err(|_| bad())?;
        let mut hundredths: u32 = 0;
        for (i, b) in frac.bytes().enumerate() {
            hundredths += u32::from(b - b'0') * if i == 0 { 10 } else { 1 };
        }
        let bp = whole * 100 + hundredths;
        u16::try_from(bp)
            .ok()
            .and_then(Shift::from_bp)
            .ok_or_else(bad)
    }
}

impl fmt::Display for Shift {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (whole, frac) = (self.0 / 100, self.0 % 100);
        match frac {
            0 => write!(f, "{whole}%"),
            n if n % 10 == 0 => write!(f, "{whole}.{}%", n / 10),
            n => write!(f, "{whole}.{n:02}%"),
        }
    }
}

/// Where the sticky key of a request comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StickyKey {
    Header(HeaderName),
    Cookie(String),
    /// A verified JWT claim. Until a route has JWT auth there is no verified claim, so the
    /// request falls back to a random bucket.
    Jwt(String),
    Ip,
    None,
}

impl StickyKey {
    pub fn parse(text: &str) -> Result<StickyKey, String> {
        let hint = "expected `header:NAME`, `cookie:NAME`, `jwt:CLAIM`, `ip` or `none`";
        match text.split_once(':') {
            Some(("header", name)) => HeaderName::from_bytes(name.as_bytes())
                .map(StickyKey::Header)
                .map_err(|_| format!("bad header name `{name}` in sticky key")),
            Some(("cookie", name)) if valid_token(name) => Ok(StickyKey::Cookie(name.to_string())),
            Some(("cookie", name)) => Err(format!("bad cookie name `{name}` in sticky key")),
            Some(("jwt", claim)) if !claim.is_empty() => Ok(StickyKey::Jwt(claim.to_string())),
            None if text == "ip" => Ok(StickyKey::Ip),
            None if text == "none" => Ok(StickyKey::None),
            _ => Err(format!("bad sticky key `{text}`: {hint}")),
        }
    }

    /// The key's value in this request, borrowed from the request: no allocation. A claim key
    /// has no value here: the pipeline resolves it from the verified claims
    /// (`pipeline::decide::key_value`), the one place keys are resolved.
    pub fn value<'a>(&self, headers: &'a HeaderMap, client_ip: Option<IpAddr>) -> KeyValue<'a> {
        match self {
            StickyKey::Header(name) => headers
                .get(name)
                .map(|v| v.as_bytes())
                .filter(|v| !v.is_empty())
                .map_or(KeyValue::Missing, KeyValue::Bytes),
            StickyKey::Cookie(name) => {
                cookie(headers, name).map_or(KeyValue::Missing, KeyValue::Bytes)
            }
            StickyKey::Ip => client_ip.map_or(KeyValue::Missing, KeyValue::Ip),
            StickyKey::Jwt(_) | StickyKey::None => KeyValue::Missing,
        }
    }
}

impl fmt::Display for StickyKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StickyKey::Header(n) => write!(f, "header:{n}"),
            StickyKey::Cookie(n) => write!(f, "cookie:{n}"),
            StickyKey::Jwt(c) => write!(f, "jwt:{c}"),
            StickyKey::Ip => f.write_str("ip"),
            StickyKey::None => f.write_str("none"),
        }
    }
}

fn valid_token(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

/// A sticky key value found in a request.
#[derive(Debug, Clone)]
pub enum KeyValue<'a> {
    Bytes(&'a [u8]),
    /// A value made for the request, such as a verified claim's text.
    Owned(String),
    Ip(IpAddr),
    Missing,
}

/// Finds a cookie's value across all `Cookie` headers.
pub fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a [u8]> {
    for header in headers.get_all(COOKIE) {
        for pair in header.as_bytes().split(|&b| b == b';') {
            let pair = pair.trim_ascii();
            if let Some(rest) = pair.strip_prefix(name.as_bytes()) {
                if let Some(value) = rest.strip_prefix(b"=") {
                    let value = value
                        .strip_prefix(b"\"")
                        .and_then(|v| v.strip_suffix(b"\""))
                        .unwrap_or(value);
                    if !value.is_empty() {
                        return Some(value);
                    }
                }
            }
        }
    }
    None
}

/// The per-route hash seed, so that one user is not on the new side of every route at once.
pub fn route_seed(route_id: &str) -> u64 {
    xxh3_64(route_id.as_bytes())
}

/// The user's bucket in `0..10000` for a route.
pub fn bucket(seed: u64, key: KeyValue<'_>) -> u16 {
    let h = match key {
        KeyValue::Bytes(b) => xxh3_64_with_seed(b, seed),
        KeyValue::Owned(s) => xxh3_64_with_seed(s.as_bytes(), seed),
        KeyValue::Ip(IpAddr::V4(ip)) => xxh3_64_with_seed(&ip.octets(), seed),
        KeyValue::Ip(IpAddr::V6(ip)) => xxh3_64_with_seed(&ip.octets(), seed),
        KeyValue::Missing => rand::random::<u64>(),
    };
    // Lemire's multiply-shift maps the 64-bit hash onto 0..10000 without modulo bias.
    ((u128::from(h) * u128::from(FULL)) >> 64) as u16
}

/// The side for a bucket under a shift.
pub fn side_for(bucket: u16, shift: Shift) -> Side {
    if bucket < shift.bp() {
        Side::New
    } else {
        Side::Legacy
    }
}

#[cfg(test)]
#[path = "split/tests.rs"]
mod tests;
