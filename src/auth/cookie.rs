//! The token cookie, found once and only once. A second copy (a cookie tossed in from a
//! sibling subdomain, a path-scoped one, or a second pair in the same header) would reach the
//! upstream next to the copy strangle verified, and frameworks disagree on which copy they read
//! (Rack and Node's `cookie` take the first, Python's `SimpleCookie` and Django the last).
//! Whatever a common framework could read as the token's name counts as a copy too, however
//! it splits and trims the header: Rack percent-decodes names; Node, Werkzeug and Django trim
//! Unicode blanks (`\xa0`, `\x85`) around them; `SimpleCookie` also ends a cookie at a blank;
//! servlet containers and old Rack split on `,`; PHP turns `.`, ` `, `[` and (decoded) `+` into
//! `_` and reads `name[0]` as the name. A request with more than one is refused, never
//! resolved by picking one.

use http::header::{HeaderMap, COOKIE};

use crate::routing::hex_value;

/// Why the token cookie cannot be used.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ambiguous {
    /// The token cookie appears more than once, or under a name a framework would read as it.
    Twice,
}

/// The value of the cookie named `name` (quotes taken off), `None` when there is none or it is
/// empty, `Err` when a second copy, or anything a framework could read as one, is in the
/// request.
pub fn token_cookie<'a>(headers: &'a HeaderMap, name: &str) -> Result<Option<&'a [u8]>, Ambiguous> {
    let mut found: Option<&'a [u8]> = None;
    let (mut exact, mut mentions) = (0usize, 0usize);
    for header in headers.get_all(COOKIE) {
        let bytes = header.as_bytes();
        for pair in bytes.split(|&b| b == b';') {
            // Blanks after `;` are the separator's; blanks inside the pair are the name's.
            let pair = pair.trim_ascii_start();
            let (key, value) = match pair.iter().position(|&b| b == b'=') {
                Some(eq) => (&pair[..eq], &pair[eq + 1..]),
                None => (pair, &b""[..]),
            };
            if key == name.as_bytes() {
                exact += 1;
                let value = value.trim_ascii_end();
                found = Some(
                    value
                        .strip_prefix(b"\"")
                        .and_then(|v| v.strip_suffix(b"\""))
                        .unwrap_or(value),
                );
            }
        }
        mentions += mentions_of(bytes, name.as_bytes());
    }
    // Every mention beyond the one exact pair is a copy some framework reads.
    if exact > 1 || mentions != exact {
        return Err(Ambiguous::Twice);
    }
    Ok(found.filter(|v| !v.is_empty()))
}

/// How many times `name` stands in a Cookie field as a cookie's name, read as loosely as any
/// common framework reads it: percent-decoded, ASCII case folded; starting the field or
/// after a separator (`;`, `,`, a blank, a byte over 0x7f, `"`); `_`, `.`, ` `, `[` and `+`
/// standing for one another; followed, past blanks, by `=`, `[`, `;`, `,` or the end.
fn mentions_of(field: &[u8], name: &[u8]) -> usize {
    let field: std::borrow::Cow<'_, [u8]> = if field.contains(&b'%') {
        std::borrow::Cow::Owned(Decoded { rest: field }.collect())
    } else {
        std::borrow::Cow::Borrowed(field)
    };
    let soft = |b: u8| matches!(b, b'_' | b'.' | b' ' | b'[' | b'+');
    let blank = |b: u8| b.is_ascii_whitespace() || b >= 0x80;
    let separator = |b: u8| matches!(b, b';' | b',' | b'"') || blank(b);
    let same = |h: u8, n: u8| {
        if soft(n) {
            soft(h)
        } else {
            h.eq_ignore_ascii_case(&n)
        }
    };
    let mut count = 0;
    for start in 0..field.len() {
        if start > 0 && !separator(field[start - 1]) {
            continue;
        }
        let Some(candidate) = field.get(start..start + name.len()) else {
            break;
        };
        if !candidate.iter().zip(name).all(|(&h, &n)| same(h, n)) {
            continue;
        }
        let mut after = field[start + name.len()..]
            .iter()
            .skip_while(|&&b| blank(b));
        if matches!(after.next(), None | Some(b'=' | b'[' | b';' | b',')) {
            count += 1;
        }
    }
    count
}

/// A name's bytes with `%XX` decoded (a malformed escape stays as it is).
struct Decoded<'a> {
    rest: &'a [u8],
}

impl Iterator for Decoded<'_> {
    type Item = u8;

    fn next(&mut self) -> Option<u8> {
        let (&b, rest) = self.rest.split_first()?;
        if b == b'%' {
            if let [h, l, tail @ ..] = rest {
                if let (Some(h), Some(l)) = (hex_value(*h), hex_value(*l)) {
                    self.rest = tail;
                    return Some(h << 4 | l);
                }
            }
        }
        self.rest = rest;
        Some(b)
    }
}

#[cfg(test)]
mod tests;
