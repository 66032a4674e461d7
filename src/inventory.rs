//! The migration inventory: what the monolith still serves. Every request answered by a legacy
//! side or by the default upstream is counted under its path template (ids folded to `{id}`)
//! and where it came from (the route, or `_default` for unmatched traffic), with its methods,
//! errors and a latency histogram. `strangle inventory` lists the templates largest first, each
//! with a route entry to paste.
//!
//! On the request path: the template is built in a per-thread buffer (no allocation), then one
//! short lock of one of `SHARDS` maps; a template seen for the first time allocates its key.
//! Cardinality is bounded: past `MAX_TEMPLATES` new templates are counted under `other`.
//! Persisted next to the config (`persist`), so it covers more than one process lifetime.

use std::collections::HashMap;
use std::hash::BuildHasher;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::stats::{Totals, BUCKETS_MS};

/// Templates counted, at most, over every source; past it, new ones count as `OTHER`.
pub const MAX_TEMPLATES: usize = 2000;
/// The template of the requests past `MAX_TEMPLATES`.
pub const OTHER: &str = "other";
/// A template is cut after this many bytes (and ends in `/...`).
const MAX_TEMPLATE: usize = 256;
const SHARDS: usize = 16;

pub mod report;

thread_local! {
    static TEMPLATE: std::cell::RefCell<String> = const { std::cell::RefCell::new(String::new()) };
}

/// The methods a template was seen with, as bits.
const METHODS: [&str; 8] = [
    "GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "OTHER",
];

/// What one template of one source saw.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Counts {
    /// Bits of `METHODS`.
    pub methods: u8,
    pub requests: u64,
    /// 5xx answers.
    pub errors: u64,
    /// Requests by latency bucket (`stats::BUCKETS_MS`, and one more past the last bound).
    pub buckets: Vec<u64>,
}

impl Default for Counts {
    fn default() -> Counts {
        Counts {
            methods: 0,
            requests: 0,
            errors: 0,
            buckets: vec![0; BUCKETS_MS.len() + 1],
        }
    }
}

impl Counts {
    fn add(&mut self, method: &str, status: u16, elapsed: Duration) {
        let bit = METHODS.iter().position(|m| *m == method).unwrap_or(7);
        self.methods |= 1 << bit;
        self.requests = self.requests.saturating_add(1);
        self.errors = self.errors.saturating_add(u64::from(status >= 500));
        let ms = elapsed.as_secs_f64() * 1000.0;
        let b = BUCKETS_MS
            .iter()
            .position(|&b| ms <= b)
            .unwrap_or(BUCKETS_MS.len());
        if let Some(slot) = self.buckets.get_mut(b) {
            *slot = slot.saturating_add(1);
        }
    }

    fn merge(&mut self, other: &Counts) {
        self.methods |= other.methods;
        self.requests = self.requests.saturating_add(other.requests);
        self.errors = self.errors.saturating_add(other.errors);
        for (a, b) in self.buckets.iter_mut().zip(&other.buckets) {
            *a = a.saturating_add(*b);
        }
    }

    pub fn methods(&self) -> Vec<&'static str> {
        METHODS
            .iter()
            .enumerate()
            .filter(|(i, _)| self.methods & (1 << i) != 0)
            .map(|(_, m)| *m)
            .collect()
    }

    pub fn p99_ms(&self) -> Option<f64> {
        let mut t = Totals::default();
        for (slot, n) in t.buckets.iter_mut().zip(&self.buckets) {
            *slot = *n;
        }
        t.by_class[1] = self.requests;
        t.quantile_ms(0.99)
    }
}

/// `(source, template)`: the route id (or `_default`) and the path template.
pub type Key = (String, String);

/// Every template's counts, in shards, keyed by `source \0 template` (so a request looks its
/// key up by a borrowed string).
#[derive(Debug)]
pub struct Inventory {
    shards: Vec<Mutex<HashMap<String, Counts>>>,
    templates: AtomicUsize,
    hasher: std::collections::hash_map::RandomState,
}

impl Default for Inventory {
    fn default() -> Inventory {
        Inventory {
            shards: (0..SHARDS).map(|_| Mutex::default()).collect(),
            templates: AtomicUsize::new(0),
            hasher: Default::default(),
        }
    }
}

impl Inventory {
    fn shard(&self, key: &str) -> std::sync::MutexGuard<'_, HashMap<String, Counts>> {
        self.shards[self.hasher.hash_one(key) as usize % SHARDS]
            .lock()
            .unwrap_or_else(|e| e.into_inner())
    }

    /// Counts one request `source` (a route id, or `_default`) served on its legacy side.
    pub fn record(&self, source: &str, method: &str, path: &str, status: u16, elapsed: Duration) {
        TEMPLATE.with_borrow_mut(|key| {
            key.clear();
            key.push_str(source);
            key.push('\0');
            template_into(path, key);
            let mut map = self.shard(key);
            if let Some(c) = map.get_mut(key.as_str()) {
                c.add(method, status, elapsed);
                return;
            }
            if self.templates.fetch_add(1, Ordering::Relaxed) < MAX_TEMPLATES {
                map.entry(key.clone())
                    .or_default()
                    .add(method, status, elapsed);
                return;
            }
            self.templates.fetch_sub(1, Ordering::Relaxed);
            drop(map);
            key.truncate(source.len() + 1);
            key.push_str(OTHER);
            self.shard(key)
                .entry(key.clone())
                .or_default()
                .add(method, status, elapsed);
        });
    }

    /// Every template's counts.
    pub fn all(&self) -> Vec<(Key, Counts)> {
        let mut all = Vec::new();
        for shard in &self.shards {
            let map = shard.lock().unwrap_or_else(|e| e.into_inner());
            all.extend(map.iter().filter_map(|(k, c)| {
                let (source, template) = k.split_once('\0')?;
                Some(((source.to_string(), template.to_string()), c.clone()))
            }));
        }
        all
    }

    /// Makes room when the cap is near: past three quarters of `MAX_TEMPLATES`, the smallest
    /// templates are folded into their source's `other` until half the cap is left, so that a
    /// scan of random paths, once saved, cannot keep real templates out for good. Returns how
    /// many were folded. Called every minute, before the inventory is saved.
    pub fn prune(&self) -> usize {
        if self.templates.load(Ordering::Relaxed) <= MAX_TEMPLATES * 3 / 4 {
            return 0;
        }
        let is_other = |k: &str| k.rsplit('\0').next() == Some(OTHER);
        let mut counts: Vec<u64> = Vec::new();
        for shard in &self.shards {
            let map = shard.lock().unwrap_or_else(|e| e.into_inner());
            counts.extend(
                map.iter()
                    .filter(|(k, _)| !is_other(k))
                    .map(|(_, c)| c.requests),
            );
        }
        let keep = MAX_TEMPLATES / 2;
        if counts.len() <= keep {
            return 0;
        }
        counts.sort_unstable();
        let threshold = counts[counts.len() - keep - 1];
        let mut folded: Vec<(String, Counts)> = Vec::new();
        for shard in &self.shards {
            let mut map = shard.lock().unwrap_or_else(|e| e.into_inner());
            let small: Vec<String> = map
                .iter()
                .filter(|(k, c)| !is_other(k) && c.requests <= threshold)
                .map(|(k, _)| k.clone())
                .collect();
            for key in small {
                if let Some(c) = map.remove(&key) {
                    let source = key.split('\0').next().unwrap_or_default();
                    folded.push((format!("{source}\0{OTHER}"), c));
                }
            }
        }
        let n = folded.len();
        self.templates.fetch_sub(n, Ordering::Relaxed);
        for (key, c) in folded {
            self.shard(&key).entry(key).or_default().merge(&c);
        }
        n
    }

    /// Adds counts read back from a file (a previous process's), under the same cap.
    pub fn merge(&self, saved: Vec<(Key, Counts)>) {
        for ((source, template), counts) in saved {
            // What no process of ours writes: not taken in. Templates come from canonical
            // paths (printable ASCII, non-ASCII percent-encoded) and sources are route ids, so
            // a longer one, or one with controls or bidi marks, was written by hand.
            let route_id = |s: &str| {
                s.len() <= 1024
                    && s.bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
            };
            let foreign = !route_id(&source)
                || template.is_empty()
                || template.len() > MAX_TEMPLATE
                || !template.bytes().all(|b| b.is_ascii_graphic())
                || counts.buckets.len() != BUCKETS_MS.len() + 1
                || counts.errors > counts.requests;
            if foreign {
                continue;
            }
            let mut key = format!("{source}\0{template}");
            let mut map = self.shard(&key);
            if let Some(c) = map.get_mut(&key) {
                c.merge(&counts);
                continue;
            }
            if template != OTHER && self.templates.fetch_add(1, Ordering::Relaxed) >= MAX_TEMPLATES
            {
                self.templates.fetch_sub(1, Ordering::Relaxed);
                drop(map);
                key = format!("{source}\0{OTHER}");
                map = self.shard(&key);
            }
            map.entry(key).or_default().merge(&counts);
        }
    }
}

/// Whether a path segment is an id: all digits, a UUID, hex of 8 or more with a digit (or 16
/// or more), a token of 20 or more characters with a digit, or anything with a run of four
/// digits (`ORD-12345`, `user_00042`).
pub fn is_id(segment: &str) -> bool {
    let b = segment.as_bytes();
    if b.is_empty() {
        return false;
    }
    let digits = b.iter().filter(|c| c.is_ascii_digit()).count();
    let hex = b.iter().all(u8::is_ascii_hexdigit);
    let uuid = b.len() == 36
        && b.iter().enumerate().all(|(i, c)| match i {
            8 | 13 | 18 | 23 => *c == b'-',
            _ => c.is_ascii_hexdigit(),
        });
    let token = b.len() >= 20
        && digits > 0
        && b.iter()
            .all(|c| c.is_ascii_alphanumeric() || *c == b'-' || *c == b'_' || *c == b'.');
    let run = b.split(|c| !c.is_ascii_digit()).any(|r| r.len() >= 4);
    digits == b.len()
        || uuid
        || (hex && (b.len() >= 16 || (b.len() >= 8 && digits > 0)))
        || token
        || run
}

/// Appends the template of `path` to `out`: each id segment becomes `{id}`; cut after
/// `MAX_TEMPLATE` bytes.
pub fn template_into(path: &str, out: &mut String) {
    let start = out.len();
    for (i, segment) in path.split('/').enumerate() {
        if i > 0 {
            out.push('/');
        }
        if out.len() - start + segment.len() > MAX_TEMPLATE {
            out.push_str("...");
            return;
        }
        out.push_str(if is_id(segment) { "{id}" } else { segment });
    }
}

/// The template of `path`.
pub fn template(path: &str) -> String {
    let mut out = String::new();
    template_into(path, &mut out);
    out
}

#[cfg(test)]
mod tests;
