//! `rewrite-path`: the path a side receives, rewritten by a regular expression with captures,
//! e.g. the monolith's `/api/v1/bookings/42` as the new service's `/bookings/42`:
//!
//! ```toml
//! plugins = [{ use = "rewrite-path", side = "new", from = "^/api/v1/(.*)$", to = "/$1" }]
//! ```
//!
//! `from` is matched against the canonical path (no query; the query passes unchanged); a path
//! it does not match passes unchanged. `to` is a template: `$1`, `${1}`, `$name`, `${name}`
//! for captures, `$$` for a `$`. The result is canonicalised by strangle's own rules, like a
//! client's path, and must stay under the fixed part of `to` (what comes before its first
//! capture, up to the last `/`): a capture can never climb out of it (`..` and the like), and
//! a result a client could not have sent (an encoded `/`, a control byte) is refused with 400.

use regex::Regex;
use strangle_plugin::{Answer, Bytes, Error, Flow, HeaderMap, Kind, Plugin, Request, Settings};

pub const KIND: Kind = Kind {
    name: "rewrite-path",
    build,
};

#[derive(Debug)]
struct RewritePath {
    from: Regex,
    to: String,
    /// The result must start with this (`to` up to the last `/` before its first capture).
    under: String,
}

fn build(s: &Settings<'_>) -> Result<Box<dyn Plugin>, Error> {
    let from = s.required("from")?;
    let to = s.required("to")?;
    s.finish(KIND.name)?;
    let from = Regex::new(from)
        .map_err(|e| Error::at("from", format!("not a regular expression: {e}")))?;
    if !to.starts_with('/') {
        return Err(Error::at("to", "a path starts with `/`"));
    }
    let first = captures(to).map_err(|m| Error::at("to", m))?;
    for name in &first.names {
        let known = match name.parse::<usize>() {
            Ok(i) => i < from.captures_len(),
            Err(_) => from.capture_names().flatten().any(|n| n == name),
        };
        if !known {
            return Err(Error::at("to", format!("`from` has no capture `{name}`"))
                .hint("number captures from 1, or name them with (?P<name>...)"));
        }
    }
    literal_is_canonical(to).map_err(|why| {
        Error::at("to", why).hint("the result is a path as routing sees it: plain segments, no `%`, `;`, `.` or `..` segments, `//` or spaces (a capture brings what the client sent)")
    })?;
    let fixed = &to[..first.start.unwrap_or(to.len())];
    let under = match first.start {
        None => to.to_string(),
        Some(_) => fixed[..=fixed.rfind('/').unwrap_or(0)].to_string(),
    };
    Ok(Box::new(RewritePath {
        from,
        to: to.to_string(),
        under,
    }))
}

/// Whether the template's own text (its captures taken as a plain segment's worth) is a path
/// in canonical form: else every request it rewrites would be refused (400), which a config
/// must say when it loads, not a request.
fn literal_is_canonical(to: &str) -> Result<(), String> {
    let refs = Regex::new(r"\$(\d+|\{[^}]*\})").map_err(|e| e.to_string())?;
    let sample = refs.replace_all(to, "x");
    let allowed = |b: u8| b.is_ascii_alphanumeric() || b"-._~!$&'()*+,=:@/".contains(&b);
    if let Some(bad) = sample.bytes().find(|&b| !allowed(b)) {
        return Err(format!(
            "`{to}` has `{}`, which a canonical path never has raw",
            bad.escape_ascii()
        ));
    }
    if sample.contains("//") || sample.split('/').any(|seg| seg == "." || seg == "..") {
        return Err(format!("`{to}` has an empty, `.` or `..` segment"));
    }
    Ok(())
}

/// The captures a template names, and where its first one starts.
struct Template {
    names: Vec<String>,
    start: Option<usize>,
}

fn captures(to: &str) -> Result<Template, String> {
    let bytes = to.as_bytes();
    let (mut names, mut start, mut i) = (Vec::new(), None, 0);
    while i < bytes.len() {
        if bytes[i] != b'$' {
            i += 1;
            continue;
        }
        let at = i;
        i += 1;
        let name = match bytes.get(i) {
            Some(b'$') => {
                i += 1;
                continue;
            }
            Some(b'{') => {
                let end = to[i..].find('}').ok_or("a `${` is not closed")?;
                let name = &to[i + 1..i + end];
                i += end + 1;
                name
            }
            _ => {
                let len = to[i..]
                    .bytes()
                    .take_while(|b| b.is_ascii_alphanumeric() || *b == b'_')
                    .count();
                let name = &to[i..i + len];
                i += len;
                name
            }
        };
        if name.is_empty() {
            return Err("a `$` names no capture (write `$$` for a `$`)".into());
        }
        start.get_or_insert(at);
        names.push(name.to_string());
    }
    Ok(Template { names, start })
}

impl Plugin for RewritePath {
    fn request(&self, req: &mut Request<'_>) -> Flow {
        let Some(caps) = self.from.captures(req.path) else {
            return Flow::Continue;
        };
        let mut rewritten = String::new();
        caps.expand(&self.to, &mut rewritten);
        match (req.canonical)(&rewritten) {
            Ok(path)
                if path.starts_with(&self.under) || path == self.under.trim_end_matches('/') =>
            {
                *req.path = path;
                Flow::Continue
            }
            _ => Flow::Answer(Box::new(Answer {
                status: strangle_plugin::StatusCode::BAD_REQUEST,
                headers: HeaderMap::new(),
                body: Bytes::from_static(b"the request path cannot be rewritten\n"),
            })),
        }
    }
}

#[cfg(test)]
mod tests;
