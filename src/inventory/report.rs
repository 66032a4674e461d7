//! The inventory as `GET /inventory` and `strangle inventory` show it, each template with a
//! route entry to paste; and the file it is kept in between processes.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::{Counts, Inventory, Key, OTHER};
use crate::config::Config;
use crate::routing::PathMatch;
use crate::stats::DEFAULT_ROUTE;

/// One template, for people.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Row {
    /// The route that served it on its legacy side, or `_default` (no route matched).
    pub source: String,
    pub template: String,
    pub methods: Vec<String>,
    pub requests: u64,
    /// Share of every request the inventory counted.
    pub share: f64,
    pub errors: u64,
    pub error_rate: f64,
    pub p99_ms: Option<f64>,
    /// A `[[routes]]` entry that takes this template's traffic (legacy side only, shift 0%),
    /// when a path more specific than what routes it now exists.
    pub route: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Report {
    /// Every request counted (all templates).
    pub requests: u64,
    /// Templates counted, and the cap past which new ones count as `other`.
    pub templates: usize,
    pub max_templates: usize,
    /// Largest first.
    pub rows: Vec<Row>,
}

/// The inventory, largest first, at most `limit` rows.
pub fn report(inventory: &Inventory, config: &Config, limit: usize) -> Report {
    let mut all = inventory.all();
    all.sort_by(|a, b| b.1.requests.cmp(&a.1.requests).then_with(|| a.0.cmp(&b.0)));
    let requests = all
        .iter()
        .fold(0u64, |n, (_, c)| n.saturating_add(c.requests));
    let templates = all.len();
    let mut taken: Vec<String> = config.routes.iter().map(|r| r.id.clone()).collect();
    let rows = all
        .into_iter()
        .take(limit)
        .map(|((source, template), c)| {
            let route = suggest(config, &source, &template, &mut taken);
            Row {
                methods: c.methods().into_iter().map(str::to_string).collect(),
                requests: c.requests,
                share: ratio(c.requests, requests),
                errors: c.errors,
                error_rate: ratio(c.errors, c.requests),
                p99_ms: c.p99_ms(),
                route,
                source,
                template,
            }
        })
        .collect();
    Report {
        requests,
        templates,
        max_templates: super::MAX_TEMPLATES,
        rows,
    }
}

fn ratio(a: u64, b: u64) -> f64 {
    if b == 0 {
        0.0
    } else {
        a as f64 / b as f64
    }
}

/// A route entry for `template` seen on `source`: the template's path up to its first id,
/// as a prefix route (or the template itself, exact, when it has no id), on the upstream that
/// serves it now, with the `auth` of the most specific authorised route it lies in (splitting
/// a path out of an authorised route must never leave it open). `None` when no path more
/// specific than the source's exists.
fn suggest(
    config: &Config,
    source: &str,
    template: &str,
    taken: &mut Vec<String>,
) -> Option<String> {
    if template == OTHER {
        return None;
    }
    let (legacy, current) = if source == DEFAULT_ROUTE {
        (config.server.default.clone()?, None)
    } else {
        let r = config.routes.iter().find(|r| r.id == source)?;
        (r.legacy.clone()?, Some(r))
    };
    let (path, exact) = match template.find("/{id}") {
        None if !template.contains("...") => (template.to_string(), true),
        None => return None,
        Some(at) => (template[..at].to_string(), false),
    };
    if path.is_empty() || path == "/" || path.contains('{') {
        return None;
    }
    // Strictly inside what routes it now (a template that folded one of the route's own
    // segments would give a broader path), and not another route's path.
    if let Some(r) = current {
        let inside = path.len() > r.path.len()
            && path.starts_with(r.path.as_str())
            && (r.path.ends_with('/') || path.as_bytes()[r.path.len()] == b'/');
        if !inside {
            return None;
        }
    }
    if config.routes.iter().any(|r| r.path == path) {
        return None;
    }
    // The auth of every route whose paths the entry would take over, for any method (a route
    // limited to GET sends a POST to the default, so the source can be unauthorised while the
    // path sits inside an authorised route): the most specific one's. Never a route opened up.
    let auth = config
        .routes
        .iter()
        .filter(|r| covers(r, &path))
        .filter(|r| r.auth.is_some())
        .max_by_key(|r| r.path.len())
        .and_then(|r| r.auth.clone());
    let base: String = template
        .split('/')
        .filter(|s| !s.is_empty() && *s != "{id}")
        .map(|s| {
            s.chars()
                .map(|c| {
                    if c.is_ascii_alphanumeric() {
                        c.to_ascii_lowercase()
                    } else {
                        '-'
                    }
                })
                .collect::<String>()
        })
        .collect::<Vec<_>>()
        .join("-");
    let base = if base.is_empty() {
        "route".to_string()
    } else {
        base
    };
    let mut id = base.clone();
    let mut n = 2;
    while taken.contains(&id) {
        id = format!("{base}-{n}");
        n += 1;
    }
    taken.push(id.clone());
    let q = |s: &str| toml::Value::String(s.to_string()).to_string();
    let mut lines = vec![
        "[[routes]]".to_string(),
        format!("id = {}", q(&id)),
        format!("path = {}", q(&path)),
    ];
    if exact {
        lines.push("match = \"exact\"".into());
    }
    lines.push(format!("legacy = {}", q(&legacy)));
    if let Some(auth) = auth {
        lines.push(format!("auth = {}", q(&auth)));
    }
    lines.push(
        "# new = \"NEW-SIDE\"   # the upstream that replaces it, then `strangle shift`".into(),
    );
    lines.push("shift = \"0%\"".into());
    Some(lines.join("\n") + "\n")
}

/// A saved inventory is a few hundred KB (`MAX_TEMPLATES` rows); anything far larger is not
/// one.
const MAX_FILE: usize = 64 << 20;

/// Whether route `r` matches `path` and what lies under it.
fn covers(r: &crate::config::Route, path: &str) -> bool {
    match r.kind {
        PathMatch::Exact => r.path == path,
        PathMatch::Prefix => {
            path == r.path
                || (path.starts_with(r.path.as_str())
                    && (r.path.ends_with('/') || path.as_bytes()[r.path.len()] == b'/'))
        }
    }
}

/// Where the inventory of the config at `config` is kept.
pub fn path_for(config: &Path) -> PathBuf {
    crate::config::beside(config, "inventory.json")
}

#[derive(Serialize, Deserialize)]
struct Saved {
    templates: Vec<(Key, Counts)>,
}

/// Writes the inventory to `path` (a temporary file renamed over it).
pub fn save(inventory: &Inventory, path: &Path) -> std::io::Result<()> {
    let text = serde_json::to_vec(&Saved {
        templates: inventory.all(),
    })?;
    let tmp = path.with_extension("json.tmp");
    std::fs::write(&tmp, text).and_then(|()| std::fs::rename(&tmp, path))
}

/// Adds what `path` holds (nothing when it is missing or unreadable: said, not fatal).
pub fn load(inventory: &Inventory, path: &Path) {
    let text = match crate::config::read::read_state(path, MAX_FILE as u64) {
        Ok(Some(t)) => t,
        Ok(None) => return,
        Err(e) => {
            tracing::warn!("the saved inventory is not read, starting afresh: {e}");
            return;
        }
    };
    match serde_json::from_slice::<Saved>(&text) {
        Ok(saved) => inventory.merge(saved.templates),
        Err(e) => {
            tracing::warn!(path = %path.display(), "the saved inventory does not parse, starting afresh: {e}")
        }
    }
}
