//! The migration's history: every shift (from, to, when, and how: an admin call, the CLI, a
//! file edit), and every reload (applied, or its error), kept next to the config file as JSON
//! lines (`strangle.toml` → `strangle.history.jsonl`) so it survives restarts.
//!
//! Written through its own line writer (`telemetry::AccessLogger`'s guarantees: never blocks,
//! bounded, whole lines, reopened when renamed away), so a slow or read-only disk costs the
//! history file, never a reload or a request; the newest `KEEP` entries are also kept in memory
//! for `GET /history`. The file is bounded: past `MAX_BYTES` it is rewritten with the newest
//! entries that fill half of it, and each route's last shift however old (up to `MAX_ROUTES`
//! of them), so that a restart after many reloads still knows every route's shift and does not
//! record it again as found at start.

use std::collections::{BTreeMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::SystemTime;

use serde::{Deserialize, Serialize};

use crate::config::AccessLog;
use crate::telemetry::AccessLogger;

/// Entries kept in memory, and in the file after it is compacted.
pub const KEEP: usize = 1000;
/// The file is compacted past this size.
pub const MAX_BYTES: u64 = 1 << 20;
/// A reload error longer than this is cut (a config with hundreds of mistakes).
const MAX_ERROR: usize = 4096;
/// At most this much of an existing file is read at start-up (its end).
const READ_AT_MOST: u64 = 4 << 20;
/// Routes whose last shift is kept past `KEEP` entries (routes long gone from the config fall
/// out first).
pub const MAX_ROUTES: usize = 4096;

/// What made a change.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum How {
    /// The config file was edited (or replaced, as a ConfigMap is).
    File,
    /// SIGHUP.
    Signal,
    /// An admin API call (`PUT /routes/{id}/shift`, `POST /reload`).
    Admin,
    /// `strangle shift` or `strangle reload` against the admin API.
    Cli,
    /// The config the process started with.
    Start,
    /// A progressive rollout (`[routes.rollout]`) moved the shift.
    Rollout,
}

/// Who or what asked for a reload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cause {
    pub how: How,
    pub client: Option<String>,
}

impl Cause {
    pub const FILE: Cause = Cause {
        how: How::File,
        client: None,
    };
    pub const SIGNAL: Cause = Cause {
        how: How::Signal,
        client: None,
    };

    /// An admin call from `client`: the CLI's (it says so in its `User-Agent`) or another's.
    pub fn admin(client: String, cli: bool) -> Cause {
        Cause {
            how: if cli { How::Cli } else { How::Admin },
            client: Some(client),
        }
    }
}

/// A shift an admin call is writing to the config file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Edit {
    pub cause: Cause,
    pub route: String,
    pub to: String,
}

/// One entry.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Entry {
    /// RFC 3339, milliseconds.
    pub at: String,
    #[serde(flatten)]
    pub what: What,
    pub how: How,
    /// The admin API's caller (address), when an admin call or the CLI made it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum What {
    /// A route's shift changed (`from` is absent for a route that is new).
    Shift {
        route: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        from: Option<String>,
        to: String,
    },
    /// A reload: applied (`ok`), or refused with its error (the last good config kept).
    Reload {
        ok: bool,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        error: Option<String>,
    },
    /// A rollout's event (advance, rollback, pause, resume, promote, abort, done) and why.
    Rollout {
        route: String,
        event: String,
        reason: String,
    },
}

pub struct History {
    path: PathBuf,
    writer: AccessLogger,
    kept: Mutex<Kept>,
    /// The file's size as far as this process knows.
    bytes: AtomicU64,
}

/// What is kept in memory: the newest entries, and each route's last shift.
#[derive(Default)]
struct Kept {
    recent: VecDeque<Entry>,
    /// By route: its last shift entry.
    last: BTreeMap<String, Entry>,
}

impl Kept {
    fn push(&mut self, entry: Entry) {
        if let What::Shift { route, .. } = &entry.what {
            self.last.insert(route.clone(), entry.clone());
            if self.last.len() > MAX_ROUTES {
                // The route shifted longest ago goes.
                let oldest = self.last.iter().min_by(|a, b| a.1.at.cmp(&b.1.at));
                if let Some(route) = oldest.map(|(r, _)| r.clone()) {
                    self.last.remove(&route);
                }
            }
        }
        self.recent.push_back(entry);
        while self.recent.len() > KEEP {
            self.recent.pop_front();
        }
    }
}

impl std::fmt::Debug for History {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("History").field("path", &self.path).finish()
    }
}

/// Where the history of the config at `config` is kept.
pub fn path_for(config: &Path) -> PathBuf {
    crate::config::beside(config, "history.jsonl")
}

impl History {
    /// Reads what the file holds (its newest `KEEP` entries) and opens it for appending.
    pub fn open(config: &Path) -> History {
        let path = path_for(config);
        let (kept, bytes) = read_tail(&path);
        History {
            writer: AccessLogger::labelled("history", AccessLog::File(path.clone())),
            path,
            kept: Mutex::new(kept),
            bytes: AtomicU64::new(bytes),
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Appends an entry, now.
    pub fn record(&self, mut what: What, cause: &Cause) {
        if let What::Reload {
            error: Some(error), ..
        } = &mut what
        {
            if error.len() > MAX_ERROR {
                let mut cut = MAX_ERROR;
                while !error.is_char_boundary(cut) {
                    cut -= 1;
                }
                error.truncate(cut);
                error.push_str(" [...]");
            }
        }
        let entry = Entry {
            at: humantime::format_rfc3339_millis(SystemTime::now()).to_string(),
            what,
            how: cause.how.clone(),
            client: cause.client.clone(),
        };
        let Ok(mut line) = serde_json::to_vec(&entry) else {
            return;
        };
        line.push(b'\n');
        let mut kept = self.kept.lock().unwrap_or_else(|e| e.into_inner());
        kept.push(entry);
        if !self.writer.push_lines(&line) {
            tracing::warn!(path = %self.path.display(), "the history writer is behind: an entry is kept in memory only");
        }
        let bytes = self.bytes.fetch_add(line.len() as u64, Ordering::Relaxed) + line.len() as u64;
        if bytes > MAX_BYTES {
            self.compact(&kept);
        }
    }

    /// Rewrites the file with each route's last shift and the newest entries, half the limit in
    /// all so that compactions stay rare (once per several thousand entries).
    fn compact(&self, kept: &Kept) {
        // What is queued goes to the old file first, so nothing is written twice.
        self.writer.flush();
        let line = |e: &Entry| {
            let mut line = serde_json::to_vec(e).ok()?;
            line.push(b'\n');
            Some(line)
        };
        // The routes' last shifts first (the newest of them, up to a quarter of the limit),
        // then the newest entries up to half; written in time order.
        let mut chosen: Vec<(&Entry, Vec<u8>)> = Vec::new();
        let mut total = 0;
        let mut last: Vec<&Entry> = kept.last.values().collect();
        last.sort_by(|a, b| b.at.cmp(&a.at));
        // A recent entry that is its route's last shift is among those already.
        let pinned = |e: &Entry| match &e.what {
            What::Shift { route, .. } => kept.last.get(route) == Some(e),
            What::Reload { .. } | What::Rollout { .. } => false,
        };
        let recent = kept.recent.iter().rev().filter(|e| !pinned(e));
        for (e, budget) in last
            .into_iter()
            .map(|e| (e, MAX_BYTES / 4))
            .chain(recent.map(|e| (e, MAX_BYTES / 2)))
        {
            let Some(bytes) = line(e) else { continue };
            if total + bytes.len() as u64 > budget {
                continue;
            }
            total += bytes.len() as u64;
            chosen.push((e, bytes));
        }
        chosen.sort_by(|a, b| a.0.at.cmp(&b.0.at));
        let text: Vec<u8> = chosen.into_iter().flat_map(|(_, l)| l).collect();
        let tmp = self.path.with_extension("jsonl.tmp");
        let done = std::fs::write(&tmp, &text).and_then(|()| std::fs::rename(&tmp, &self.path));
        match done {
            Ok(()) => {
                self.bytes.store(text.len() as u64, Ordering::Relaxed);
                // The writer notices the file was replaced and opens the new one.
                self.writer.reopen(AccessLog::File(self.path.clone()));
            }
            Err(e) => {
                let _ = std::fs::remove_file(&tmp);
                tracing::warn!(path = %self.path.display(), "cannot compact the history: {e}");
            }
        }
    }

    /// The newest entries, oldest first: at most `limit`, of `route` when given (its shifts,
    /// and every reload).
    pub fn entries(&self, route: Option<&str>, limit: usize) -> Vec<Entry> {
        let kept = self.kept.lock().unwrap_or_else(|e| e.into_inner());
        let mut picked: Vec<Entry> = kept
            .recent
            .iter()
            .rev()
            .filter(|e| match (&e.what, route) {
                (_, None) | (What::Reload { .. }, _) => true,
                (What::Shift { route: r, .. } | What::Rollout { route: r, .. }, Some(want)) => {
                    r == want
                }
            })
            .take(limit)
            .cloned()
            .collect();
        picked.reverse();
        picked
    }

    /// Records the shifts that differ between `old` and `new` (`(route id, shift)` pairs): a
    /// route that is new, or whose shift changed. A change that is the one an admin call is
    /// making (`editing`: its cause, route and shift) is that call's, whichever reload saw it
    /// first (the file watcher often does).
    pub fn record_shifts(
        &self,
        old: &[(String, String)],
        new: &[(String, String)],
        cause: &Cause,
        editing: Option<&Edit>,
    ) {
        for (route, to) in new {
            let from = old.iter().find(|(r, _)| r == route).map(|(_, s)| s.clone());
            if from.as_ref() != Some(to) {
                // While a call edits one route, any other change was made by someone else's
                // edit of the file, whichever reload sees it.
                let by = match editing {
                    Some(e) if e.route == *route && e.to == *to => &e.cause,
                    Some(_) => &Cause::FILE,
                    None => cause,
                };
                let what = What::Shift {
                    route: route.clone(),
                    from,
                    to: to.clone(),
                };
                self.record(what, by);
            }
        }
    }

    /// Each route's shift as the history last recorded it.
    pub fn last_shifts(&self) -> Vec<(String, String)> {
        let kept = self.kept.lock().unwrap_or_else(|e| e.into_inner());
        let shift = |(route, e): (&String, &Entry)| match &e.what {
            What::Shift { to, .. } => Some((route.clone(), to.clone())),
            What::Reload { .. } | What::Rollout { .. } => None,
        };
        kept.last.iter().filter_map(shift).collect()
    }

    /// The routes whose last rollout event kept in the history stopped the rollout (a
    /// rollback, an abort, a pause), with that event.
    pub fn stopped_rollouts(&self) -> BTreeMap<String, (String, SystemTime)> {
        let kept = self.kept.lock().unwrap_or_else(|e| e.into_inner());
        let mut last = BTreeMap::new();
        for e in &kept.recent {
            if let What::Rollout { route, event, .. } = &e.what {
                let at = humantime::parse_rfc3339(&e.at).unwrap_or(SystemTime::UNIX_EPOCH);
                last.insert(route.clone(), (event.clone(), at));
            }
        }
        last.retain(|_, (event, _)| {
            matches!(
                event.as_str(),
                "rollback" | "abort" | "pause" | "paused" | "failed" | "in-memory"
            )
        });
        last
    }

    /// At exit: the last entries written (bounded, like the access log's).
    pub fn flush(&self) {
        self.writer.flush();
    }
}

/// The newest `KEEP` entries of the file at `path` and its routes' last shifts, and its size.
/// Lines that do not parse (a line cut by a crash, a hand edit) are skipped.
fn read_tail(path: &Path) -> (Kept, u64) {
    let (text, size) = crate::config::read::read_state_tail(path, READ_AT_MOST);
    let mut kept = Kept::default();
    // A read that started mid-file starts mid-line: its first line is skipped (it fails to
    // parse, or it is whole only by chance, which is fine either way).
    for line in text.split(|&b| b == b'\n') {
        if let Ok(e) = serde_json::from_slice::<Entry>(line) {
            kept.push(e);
        }
    }
    (kept, size)
}

#[cfg(test)]
mod tests;
