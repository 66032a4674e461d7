//! Comparing two answers to the same request: the status, the listed headers, and the body
//! (JSON structurally, by JSON path, leaving out the ignored paths; other bodies by hash; a body
//! over the capture cap by the hash of the prefix both sides captured, and said so). Also what
//! calibration learns: the paths where two answers of the *same* side differ are noise.

use std::collections::BTreeSet;
use std::fmt::Write as _;

use serde::Serialize;
use serde_json::Value;

pub use crate::config::shadow::{BadPattern, PathStep as At, Pattern};

/// At most this many differences are kept per comparison (the count says how many there were).
pub const MAX_DIFFERENCES: usize = 20;
/// A value shown in a difference is cut to this many bytes.
const MAX_SHOWN: usize = 200;
/// JSON nested deeper than this is compared by hash below that depth (no stack to exhaust).
const MAX_DEPTH: usize = 64;
/// Bodies larger than this are compared by hash, not parsed: a parsed document takes many
/// times its size in memory (a 16 MB array of zeros takes hundreds of megabytes).
pub const MAX_JSON: usize = 1 << 20;

/// One side's answer as captured for comparison.
#[derive(Debug, Clone, Default)]
pub struct Answer {
    pub status: u16,
    /// The listed headers, by lower-case name; `None` where the answer had none.
    pub headers: Vec<(String, Option<String>)>,
    pub content_type: Option<String>,
    /// The body's first bytes, up to the cap.
    pub body: bytes::Bytes,
    /// The body was longer than the cap (`body` is its prefix).
    pub truncated: bool,
}

/// One difference, for the diff samples.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Difference {
    /// `status`, `header:NAME`, `body` (by hash) or a JSON path (`$.a[2].b`).
    pub path: String,
    pub legacy: String,
    pub new: String,
}

/// How the bodies were compared.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum BodyCompared {
    Json,
    Hash,
    /// Over the cap: the hash of the prefix both captured.
    PrefixHash,
}

/// The outcome of one comparison.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Outcome {
    pub body: BodyCompared,
    /// The differences left after the ignored paths and the learned noise, the first
    /// `MAX_DIFFERENCES`.
    pub differences: Vec<Difference>,
    /// How many there were in all.
    pub count: usize,
    /// Differences left out because the route ignores them or calibration learned them.
    pub ignored: usize,
}

impl Outcome {
    pub fn matched(&self) -> bool {
        self.count == 0
    }
}

/// What to leave out of a comparison: the route's `ignore` paths and the noise calibration
/// learned (concrete paths: `status`, `header:NAME`, `body`, `$.a.b`).
#[derive(Debug, Clone, Copy)]
pub struct Ignore<'a> {
    pub paths: &'a [Pattern],
    pub learned: &'a BTreeSet<String>,
}

/// Compares `legacy` with `new`.
pub fn compare(legacy: &Answer, new: &Answer, ignore: Ignore<'_>) -> Outcome {
    let mut out = Collect::new(ignore);
    if legacy.status != new.status {
        out.add_plain("status", legacy.status.to_string(), new.status.to_string());
    }
    for ((name, a), (_, b)) in legacy.headers.iter().zip(&new.headers) {
        if a != b {
            let show = |v: &Option<String>| v.clone().unwrap_or_else(|| "(none)".into());
            out.add_plain(&format!("header:{name}"), show(a), show(b));
        }
    }
    let body = if legacy.truncated || new.truncated {
        // Both over the cap: the prefixes both captured (the same length). One over it and
        // the other not: they differ (one is longer), whatever their first bytes.
        let same = legacy.truncated == new.truncated && hash(&legacy.body) == hash(&new.body);
        if !same {
            out.add_plain("body", describe(legacy), describe(new));
        }
        BodyCompared::PrefixHash
    } else {
        match (json(legacy), json(new)) {
            (Some(a), Some(b)) => {
                let mut path = Vec::new();
                out.values(&mut path, &a, &b, 0);
                BodyCompared::Json
            }
            _ => {
                if hash(&legacy.body) != hash(&new.body) {
                    out.add_plain("body", describe(legacy), describe(new));
                }
                BodyCompared::Hash
            }
        }
    };
    Outcome {
        body,
        differences: out.kept,
        count: out.count,
        ignored: out.ignored,
    }
}

/// At most this many paths are learned from one calibration: two answers that differ in more
/// places are two different documents, not one with noise in it.
pub const MAX_NOISE: usize = 32;

/// Calibration: the concrete paths where two answers of the same side differ, to be learned as
/// noise: listed headers and JSON paths below the root, never the status or a whole body. Two
/// answers with different statuses, or bodies that differ and are not both JSON, or that
/// differ in more than `MAX_NOISE` places, teach nothing (an empty list).
pub fn noise(first: &Answer, second: &Answer) -> Vec<String> {
    if first.status != second.status || first.truncated || second.truncated {
        return Vec::new();
    }
    let none = BTreeSet::new();
    let mut out = Collect::new(Ignore {
        paths: &[],
        learned: &none,
    });
    out.keep_all = true;
    for ((name, a), (_, b)) in first.headers.iter().zip(&second.headers) {
        if a != b {
            out.add_plain(&format!("header:{name}"), String::new(), String::new());
        }
    }
    match (json(first), json(second)) {
        (Some(a), Some(b)) => out.values(&mut Vec::new(), &a, &b, 0),
        _ if hash(&first.body) != hash(&second.body) => return Vec::new(),
        _ => {}
    }
    let paths: Vec<String> = out.kept.into_iter().map(|d| d.path).collect();
    if paths.len() > MAX_NOISE || paths.iter().any(|p| p == "$") {
        return Vec::new();
    }
    paths
}

/// The body as JSON, when the answer says it is JSON, is not too large to parse, and parses.
fn json(a: &Answer) -> Option<Value> {
    if a.body.len() > MAX_JSON {
        return None;
    }
    let ct = a.content_type.as_deref()?.to_ascii_lowercase();
    let essence = ct.split(';').next().unwrap_or("").trim();
    let is_json = essence == "application/json" || essence.ends_with("+json");
    if !is_json {
        return None;
    }
    serde_json::from_slice(&a.body).ok()
}

fn hash(b: &[u8]) -> u64 {
    xxhash_rust::xxh3::xxh3_64(b)
}

fn describe(a: &Answer) -> String {
    let over = if a.truncated { " (over the cap)" } else { "" };
    format!("{} bytes{over}, xxh3 {:016x}", a.body.len(), hash(&a.body))
}

/// Whether two JSON numbers are the same number: integers exactly (above 2^53 a float would
/// take two ids as one), others as floats (1 and 1.0 are the same to a JSON reader).
fn same_number(x: &serde_json::Number, y: &serde_json::Number) -> bool {
    let int = |n: &serde_json::Number| {
        n.as_i64()
            .map(i128::from)
            .or_else(|| n.as_u64().map(i128::from))
    };
    match (int(x), int(y)) {
        (Some(a), Some(b)) => a == b,
        _ => x.as_f64() == y.as_f64(),
    }
}

/// A value as shown in a difference: its JSON, cut.
fn show(v: &Value) -> String {
    let mut s = v.to_string();
    if s.len() > MAX_SHOWN {
        let mut cut = MAX_SHOWN;
        while !s.is_char_boundary(cut) {
            cut -= 1;
        }
        s.truncate(cut);
        s.push('…');
    }
    s
}

fn render(path: &[At<'_>]) -> String {
    let mut s = String::from("$");
    for at in path {
        match at {
            At::Key(k)
                if !k.is_empty()
                    && k.bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-') =>
            {
                let _ = write!(s, ".{k}");
            }
            At::Key(k) => {
                let _ = write!(s, "[{}]", Value::from(*k));
            }
            At::Index(i) => {
                let _ = write!(s, "[{i}]");
            }
        }
    }
    s
}

struct Collect<'a> {
    ignore: Ignore<'a>,
    kept: Vec<Difference>,
    count: usize,
    ignored: usize,
    /// Calibration keeps every path (not only the first `MAX_DIFFERENCES`).
    keep_all: bool,
}

impl<'a> Collect<'a> {
    fn new(ignore: Ignore<'a>) -> Collect<'a> {
        Collect {
            ignore,
            kept: Vec::new(),
            count: 0,
            ignored: 0,
            keep_all: false,
        }
    }

    fn add_plain(&mut self, path: &str, legacy: String, new: String) {
        if self.ignore.learned.contains(path) {
            self.ignored += 1;
            return;
        }
        self.push(path.to_string(), legacy, new);
    }

    fn push(&mut self, path: String, legacy: String, new: String) {
        self.count += 1;
        if self.keep_all || self.kept.len() < MAX_DIFFERENCES {
            self.kept.push(Difference { path, legacy, new });
        }
    }

    fn add(&mut self, path: &[At<'_>], legacy: String, new: String) {
        let rendered = render(path);
        if self.ignore.paths.iter().any(|p| p.matches(path))
            || self.ignore.learned.contains(&rendered)
        {
            self.ignored += 1;
            return;
        }
        self.push(rendered, legacy, new);
    }

    /// Walks two JSON values together; a subtree that is ignored as a whole is not walked.
    fn values<'v>(&mut self, path: &mut Vec<At<'v>>, a: &'v Value, b: &'v Value, depth: usize) {
        if self.ignore.paths.iter().any(|p| p.matches(path)) {
            if a != b {
                self.ignored += 1;
            }
            return;
        }
        match (a, b) {
            (Value::Object(x), Value::Object(y)) if depth < MAX_DEPTH => {
                for (k, va) in x {
                    path.push(At::Key(k));
                    match y.get(k) {
                        Some(vb) => self.values(path, va, vb, depth + 1),
                        None => self.add(path, show(va), "(absent)".into()),
                    }
                    path.pop();
                }
                for (k, vb) in y {
                    if !x.contains_key(k) {
                        path.push(At::Key(k));
                        self.add(path, "(absent)".into(), show(vb));
                        path.pop();
                    }
                }
            }
            (Value::Array(x), Value::Array(y)) if depth < MAX_DEPTH => {
                for i in 0..x.len().max(y.len()) {
                    path.push(At::Index(i));
                    match (x.get(i), y.get(i)) {
                        (Some(va), Some(vb)) => self.values(path, va, vb, depth + 1),
                        (Some(va), None) => self.add(path, show(va), "(absent)".into()),
                        (None, Some(vb)) => self.add(path, "(absent)".into(), show(vb)),
                        (None, None) => {}
                    }
                    path.pop();
                }
            }
            // 1 and 1.0 are the same number to a JSON reader.
            (Value::Number(x), Value::Number(y)) if same_number(x, y) => {}
            _ if a == b => {}
            _ => self.add(path, show(a), show(b)),
        }
    }
}

#[cfg(test)]
mod tests;
