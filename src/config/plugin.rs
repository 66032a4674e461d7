//! Lowering a route's `plugins = [{ use = "...", side = "...", ... }]`: each entry's plugin
//! built once from its settings (the kinds in `plugins/`, compiled in), into one chain per side.
//! A mistake is reported at its key like any config error, and refuses the whole config: a
//! route never runs with part of its chain missing.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

use strangle_plugin::{Headers, Kind, Plugin, Response, Settings};
use toml::Spanned;

use super::raw::RawRoute;
use super::Cx;

/// Every plugin kind strangle is built with.
pub const KINDS: &[Kind] = &[
    strangle_plugin_rewrite_path::KIND,
    strangle_plugin_headers::KIND,
    strangle_plugin_cors::KIND,
    strangle_plugin_status_map::KIND,
    strangle_plugin_json_map::KIND,
];

/// One entry of a route's `plugins`, as written: `use`, `side` and the plugin's own keys.
pub type RawPlugin = BTreeMap<Spanned<String>, Spanned<toml::Value>>;

/// A route's plugins, in the order it lists them, per side.
#[derive(Clone, Default)]
pub struct Plugins {
    pub legacy: Arc<[Arc<dyn Plugin>]>,
    pub new: Arc<[Arc<dyn Plugin>]>,
    /// The entries as written: what two configs compare by.
    written: Vec<String>,
}

impl Plugins {
    pub fn is_empty(&self) -> bool {
        self.written.is_empty()
    }

    /// The chain for a side (`new`: the new side's; anything else: legacy's).
    pub fn side(&self, new: bool) -> &[Arc<dyn Plugin>] {
        self.side_arc(new)
    }

    /// `side`, shared.
    pub fn side_arc(&self, new: bool) -> &Arc<[Arc<dyn Plugin>]> {
        if new {
            &self.new
        } else {
            &self.legacy
        }
    }
}

/// Runs `chain`'s response hooks on an answer.
pub fn response(
    chain: &[Arc<dyn Plugin>],
    method: &http::Method,
    path: &str,
    request_headers: &http::HeaderMap,
    status: &mut http::StatusCode,
    headers: &mut dyn Headers,
) {
    for plugin in chain {
        plugin.response(&mut Response {
            method,
            path,
            request_headers,
            status: &mut *status,
            headers: &mut *headers,
        });
    }
}

impl PartialEq for Plugins {
    fn eq(&self, other: &Plugins) -> bool {
        self.written == other.written
    }
}

impl fmt::Debug for Plugins {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(&self.written).finish()
    }
}

impl Cx<'_> {
    /// The route's plugins; errors at the entry or key they concern.
    pub(super) fn plugins(&mut self, r: &RawRoute) -> Plugins {
        let Some(entries) = &r.plugins else {
            return Plugins::default();
        };
        let (mut legacy, mut new, mut written) = (Vec::new(), Vec::new(), Vec::new());
        for entry in entries.get_ref() {
            let at = entry.span().start;
            let Some((kind, sides)) = self.plugin_head(entry.get_ref(), at) else {
                continue;
            };
            let mut table = toml::Table::new();
            for (k, v) in entry.get_ref() {
                table.insert(k.get_ref().clone(), v.get_ref().clone());
            }
            let whole = format!("{table:?}");
            table.remove("use");
            table.remove("side");
            match (kind.build)(&Settings::new(&table)) {
                Ok(plugin) => {
                    let plugin: Arc<dyn Plugin> = Arc::from(plugin);
                    if sides.0 {
                        legacy.push(Arc::clone(&plugin));
                    }
                    if sides.1 {
                        new.push(plugin);
                    }
                    written.push(whole);
                }
                Err(e) => {
                    let key_at = e.key.as_deref().and_then(|key| {
                        entry
                            .get_ref()
                            .iter()
                            .find(|(k, _)| k.get_ref() == key)
                            .map(|(_, v)| v.span().start)
                    });
                    self.error(
                        key_at.unwrap_or(at),
                        format!("plugin `{}`: {}", kind.name, e.message),
                        e.hint,
                    );
                }
            }
        }
        Plugins {
            legacy: legacy.into(),
            new: new.into(),
            written,
        }
    }

    /// An entry's kind (`use`) and the sides it runs for (`side`, both by default).
    fn plugin_head(&mut self, entry: &RawPlugin, at: usize) -> Option<(Kind, (bool, bool))> {
        let get = |key: &str| {
            entry
                .iter()
                .find(|(k, _)| k.get_ref() == key)
                .map(|(_, v)| v)
        };
        let known = || KINDS.iter().map(|k| k.name).collect::<Vec<_>>().join(", ");
        let kind = match get("use") {
            None => {
                let hint = Some(format!("name the plugin with `use`: {}", known()));
                self.error(at, "a plugin entry without `use`", hint);
                return None;
            }
            Some(u) => match u
                .get_ref()
                .as_str()
                .and_then(|n| KINDS.iter().find(|k| k.name == n))
            {
                Some(kind) => *kind,
                None => {
                    let hint = Some(format!("strangle has {}", known()));
                    self.err_at(u, format!("unknown plugin {}", u.get_ref()), hint);
                    return None;
                }
            },
        };
        let sides = match get("side") {
            None => (true, true),
            Some(s) => match s.get_ref().as_str() {
                Some("legacy") => (true, false),
                Some("new") => (false, true),
                Some("both") => (true, true),
                _ => {
                    let hint = Some("`legacy`, `new` or `both` (the default)".into());
                    self.err_at(
                        s,
                        format!("plugin `side` {} is not a side", s.get_ref()),
                        hint,
                    );
                    return None;
                }
            },
        };
        Some((kind, sides))
    }
}
