//! The token cookie, found once and only once. A second copy (a cookie tossed in from a
//! sibling subdomain, a path-scoped one, or a second pair in the same header) would reach the
//! upstream next to the copy strangle verified, and frameworks disagree on which copy they read
//! (Rack and Node's `cookie` take the first, Python's `SimpleCookie` the last). Names that
//! common frameworks read as the token's name count as copies too: Rack percent-decodes names,
//! Node and Python trim the blanks around `=`, PHP turns `.`, ` ` and `[` into `_`. A request
//! with more than one is refused, never resolved by picking one.

use http::header::{HeaderMap, COOKIE};

use crate::routing::hex_value;

/// Why the token cookie cannot be used.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ambiguous {
    /// The token cookie appears more than once, or under a name a framework would read as it.
    Twice,
}

/// The value of the cookie named `name` (quotes taken off), `None` when there is none or it is
/// empty, `Err` when a second copy or a look-alike name is in the request.
pub fn token_cookie<'a>(headers: &'a HeaderMap, name: &str) -> Result<Option<&'a [u8]>, Ambiguous> {
    let mut found: Option<&'a [u8]> = None;
    let (mut exact, mut alike) = (0usize, 0usize);
    for header in headers.get_all(COOKIE) {
        for pair in header.as_bytes().split(|&b| b == b';') {
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
            } else if reads_as(key, name) {
                alike += 1;
            }
        }
    }
    if exact > 1 || alike > 0 {
        return Err(Ambiguous::Twice);
    }
    Ok(found.filter(|v| !v.is_empty()))
}

/// Whether a framework could read the cookie name `key` as `name`: equal after
/// percent-decoding, trimming blanks, folding ASCII case and mapping `.`, ` `, `[` to `_`.
fn reads_as(key: &[u8], name: &str) -> bool {
    let fold = |b: u8| match b {
        b'.' | b' ' | b'[' => b'_',
        b => b.to_ascii_lowercase(),
    };
    let mut want = name.bytes().map(fold);
    let mut have = Decoded {
        rest: key.trim_ascii(),
    }
    .skip_while(|b| b.is_ascii_whitespace());
    loop {
        match (have.next(), want.next()) {
            (Some(h), Some(w)) if fold(h) == w => {}
            (None, None) => return true,
            // Blanks a framework trims after decoding (`id_token%20`).
            (Some(h), None) if h.is_ascii_whitespace() => {
                return have.all(|b| b.is_ascii_whitespace())
            }
            _ => return false,
        }
    }
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
