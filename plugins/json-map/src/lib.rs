//! `json-map`: fields of JSON bodies renamed, moved, dropped and defaulted: a side's answers,
//! so the client gets the monolith's shape (the new service's `booking` as the monolith's
//! `id`), or the requests on their way to it (`on = "request"`: the monolith's `id` as the
//! new service's `booking`):
//!
//! ```toml
//! plugins = [
//!   { use = "json-map", side = "new", rename = { "$.booking" = "$.id" },
//!     drop = ["$.served_by", "$.items[*].internal"], default = { "$.currency" = "EUR" },
//!     max-body = 1048576 },
//!   { use = "json-map", side = "new", on = "request", rename = { "$.id" = "$.booking" } },
//! ]
//! ```
//!
//! `on` is `"response"` (the default), `"request"` or `"both"`.
//! Paths are `$` then `.name` (or `["name"]`) for an object's field and `[*]` for each element
//! of an array. `rename` moves a value from one path to another (creating the objects on the
//! way; the `[*]` of both paths must be the same, so a field moves within each element);
//! `drop` removes; `default` sets a field that is missing (any TOML value, as JSON). Applied in
//! that order to answers whose content type is JSON (`application/json`, `...+json`) and whose
//! body is at most `max-body` bytes (1 MiB by default, at most 4 MiB: parsed, a body takes several
//! times its size while it is mapped); other answers pass
//! untouched, and so does a body that is not valid JSON. Object fields come out in name order.

use serde_json::{Map, Value};
use strangle_plugin::{BodyHead, BodyUse, Error, HeaderMap, Kind, Plugin, RequestHead, Settings};

pub const KIND: Kind = Kind {
    name: "json-map",
    build,
};

const DEFAULT_MAX: usize = 1 << 20;
const MAX_MAX: usize = 4 << 20;

#[derive(Debug, Clone, PartialEq, Eq)]
enum Step {
    Field(String),
    Each,
}

type Path = Vec<Step>;

#[derive(Debug)]
struct JsonMap {
    rename: Vec<(Path, Path)>,
    drop: Vec<Path>,
    default: Vec<(Path, Value)>,
    max_body: usize,
    /// Maps requests' bodies, answers' bodies.
    requests: bool,
    responses: bool,
}

/// `$.a.b`, `$.list[*].id`, `$["odd name"]`.
fn path(key: &str, text: &str) -> Result<Path, Error> {
    let bad = |why: &str| {
        Error::at(key, format!("`{text}`: {why}")).hint("paths look like $.a.b or $.items[*].id")
    };
    let mut rest = text
        .strip_prefix('$')
        .ok_or_else(|| bad("a path starts with `$`"))?;
    let mut steps = Vec::new();
    while !rest.is_empty() {
        if let Some(r) = rest.strip_prefix("[*]") {
            steps.push(Step::Each);
            rest = r;
        } else if let Some(r) = rest.strip_prefix("[\"") {
            let end = r.find("\"]").ok_or_else(|| bad("a `[\"` is not closed"))?;
            steps.push(Step::Field(r[..end].to_string()));
            rest = &r[end + 2..];
        } else if let Some(r) = rest.strip_prefix('.') {
            let end = r.find(['.', '[']).unwrap_or(r.len());
            if end == 0 {
                return Err(bad("an empty field name"));
            }
            steps.push(Step::Field(r[..end].to_string()));
            rest = &r[end..];
        } else {
            return Err(bad("expected `.name`, `[\"name\"]` or `[*]`"));
        }
    }
    if !matches!(steps.last(), Some(Step::Field(_))) {
        return Err(bad("a path ends with a field"));
    }
    Ok(steps)
}

/// A TOML value as JSON; a float JSON cannot carry (NaN, infinity) is refused.
fn toml_to_json(v: &strangle_plugin::TomlValue) -> Result<Value, String> {
    use strangle_plugin::TomlValue as T;
    Ok(match v {
        T::String(s) => Value::String(s.clone()),
        T::Integer(n) => Value::from(*n),
        T::Float(f) => Value::Number(
            serde_json::Number::from_f64(*f).ok_or_else(|| format!("{f} is not a JSON number"))?,
        ),
        T::Boolean(b) => Value::Bool(*b),
        T::Datetime(d) => Value::String(d.to_string()),
        T::Array(a) => Value::Array(a.iter().map(toml_to_json).collect::<Result<_, _>>()?),
        T::Table(t) => Value::Object(
            t.iter()
                .map(|(k, v)| Ok((k.clone(), toml_to_json(v)?)))
                .collect::<Result<_, String>>()?,
        ),
    })
}

fn build(s: &Settings<'_>) -> Result<Box<dyn Plugin>, Error> {
    let mut rename = Vec::new();
    for (from, to) in s.string_table("rename")?.unwrap_or_default() {
        let (f, t) = (path("rename", from)?, path("rename", to)?);
        // The `[*]` steps must be a prefix both share: a field moves within each element.
        let shared = after_each(&f).max(after_each(&t));
        if f.len() < shared || t.len() < shared || f[..shared] != t[..shared] {
            return Err(Error::at(
                "rename",
                format!("`{from}` and `{to}` must share their `[*]` steps"),
            ));
        }
        rename.push((f, t));
    }
    let drop: Vec<Path> = s
        .strings("drop")?
        .unwrap_or_default()
        .into_iter()
        .map(|p| path("drop", p))
        .collect::<Result<_, _>>()?;
    let mut default = Vec::new();
    if let Some(t) = s.table("default")? {
        for (p, v) in t {
            let value =
                toml_to_json(v).map_err(|why| Error::at("default", format!("`{p}`: {why}")))?;
            default.push((path("default", p)?, value));
        }
    }
    let max_body = match s.integer("max-body")? {
        None => DEFAULT_MAX,
        Some(n) if n == 0 || n > MAX_MAX as u64 => {
            return Err(Error::at("max-body", format!("1 to {MAX_MAX} bytes")))
        }
        Some(n) => n as usize,
    };
    let (requests, responses) = match s.string("on")? {
        None | Some("response") => (false, true),
        Some("request") => (true, false),
        Some("both") => (true, true),
        Some(other) => {
            return Err(
                Error::at("on", format!("`{other}` is not what a map is on"))
                    .hint("`response` (the default), `request` or `both`"),
            )
        }
    };
    s.finish(KIND.name)?;
    if rename.is_empty() && drop.is_empty() && default.is_empty() {
        return Err(Error::whole(
            "nothing to map: give `rename`, `drop` or `default`",
        ));
    }
    Ok(Box::new(JsonMap {
        rename,
        drop,
        default,
        max_body,
        requests,
        responses,
    }))
}

/// The value at `path` under `v`, taken out.
fn take(v: &mut Value, path: &[Step]) -> Option<Value> {
    match path {
        [Step::Field(f)] => v.as_object_mut()?.remove(f),
        [Step::Field(f), rest @ ..] => take(v.get_mut(f)?, rest),
        _ => None,
    }
}

/// Puts `value` at `path` under `v`, making objects on the way; `only_if_missing` keeps what
/// is there. False when the way is blocked (a value that is not an object).
fn put(v: &mut Value, path: &[Step], value: Value, only_if_missing: bool) -> bool {
    let Some(obj) = v.as_object_mut() else {
        return false;
    };
    match path {
        [Step::Field(f)] => {
            if !(only_if_missing && obj.contains_key(f)) {
                obj.insert(f.clone(), value);
            }
            true
        }
        [Step::Field(f), rest @ ..] => {
            let next = obj
                .entry(f.clone())
                .or_insert_with(|| Value::Object(Map::new()));
            put(next, rest, value, only_if_missing)
        }
        _ => false,
    }
}

impl JsonMap {
    fn apply(&self, doc: &mut Value) {
        for (from, to) in &self.rename {
            let shared = after_each(from);
            let (f, t) = (&from[shared..], &to[shared..]);
            each_prefix(doc, &from[..shared], &mut |v| {
                if let Some(value) = take(v, f) {
                    put(v, t, value, false);
                }
            });
        }
        for p in &self.drop {
            let shared = after_each(p);
            each_prefix(doc, &p[..shared], &mut |v| {
                take(v, &p[shared..]);
            });
        }
        for (p, value) in &self.default {
            let shared = after_each(p);
            each_prefix(doc, &p[..shared], &mut |v| {
                put(v, &p[shared..], value.clone(), true);
            });
        }
    }
}

/// Where a path's last `[*]` ends (0: it has none).
fn after_each(p: &[Step]) -> usize {
    p.iter()
        .rposition(|s| *s == Step::Each)
        .map_or(0, |i| i + 1)
}

/// Runs `f` on each value a path of fields and `[*]` steps leads to.
fn each_prefix(v: &mut Value, prefix: &[Step], f: &mut dyn FnMut(&mut Value)) {
    match prefix {
        [] => f(v),
        [Step::Field(name), rest @ ..] => {
            if let Some(next) = v.get_mut(name) {
                each_prefix(next, rest, f);
            }
        }
        [Step::Each, rest @ ..] => {
            if let Value::Array(items) = v {
                for item in items {
                    each_prefix(item, rest, f);
                }
            }
        }
    }
}

/// A JSON body (`application/json`, `application/...+json`) with no content coding.
fn is_json(headers: &HeaderMap) -> bool {
    if headers.contains_key("content-encoding") {
        return false;
    }
    headers
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .map(|ct| {
            ct.split(';')
                .next()
                .unwrap_or("")
                .trim()
                .to_ascii_lowercase()
        })
        .is_some_and(|ct| {
            ct == "application/json" || (ct.starts_with("application/") && ct.ends_with("+json"))
        })
}

impl JsonMap {
    fn body_use(&self, on: bool, headers: &HeaderMap) -> BodyUse {
        if on && is_json(headers) {
            BodyUse::Read(self.max_body)
        } else {
            BodyUse::None
        }
    }

    /// The body mapped, when it is JSON (else untouched).
    fn map_body(&self, body: &mut Vec<u8>) {
        let Ok(mut doc) = serde_json::from_slice::<Value>(body) else {
            return;
        };
        self.apply(&mut doc);
        if let Ok(out) = serde_json::to_vec(&doc) {
            *body = out;
        }
    }
}

impl Plugin for JsonMap {
    fn request_body_use(&self, req: &RequestHead<'_>) -> BodyUse {
        self.body_use(self.requests, req.headers)
    }

    fn request_body(&self, _req: &RequestHead<'_>, body: &mut Vec<u8>) {
        self.map_body(body);
    }

    fn response_body_use(&self, answer: &BodyHead<'_>) -> BodyUse {
        self.body_use(self.responses, answer.headers)
    }

    fn response_body(&self, _answer: &BodyHead<'_>, body: &mut Vec<u8>) {
        self.map_body(body);
    }
}

#[cfg(test)]
mod tests;
