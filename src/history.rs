//! The migration's history: every shift (from, to, when, and how: an admin call, the CLI, a
//! file edit), and every reload (applied, or its error), kept next to the config file as JSON
//! lines (`strangle.toml` → `strangle.history.jsonl`) so it survives restarts.
//!
//! Written through its own line writer (`telemetry::AccessLogger`'s guarantees: never blocks,
//! bounded, whole lines, reopened when renamed away), so a slow or read-only disk costs the
//! history file, never a reload or a request; the newest `KEEP` entries are also kept in memory
//! for `GET /history`. The file is bounded: past `MAX_BYTES` it is rewritten with the newest
//! entries that fill half of it.

use std::collections::VecDeque;
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
}

pub struct History {
    path: PathBuf,
    writer: AccessLogger,
    recent: Mutex<VecDeque<Entry>>,
    /// The file's size as far as this process knows.
    bytes: AtomicU64,
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
        let (recent, bytes) = read_tail(&path);
        History {
            writer: AccessLogger::labelled("history", AccessLog::File(path.clone())),
            path,
            recent: Mutex::new(recent),
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
        let mut recent = self.recent.lock().unwrap_or_else(|e| e.into_inner());
        recent.push_back(entry);
        while recent.len() > KEEP {
            recent.pop_front();
        }
        if !self.writer.push_lines(&line) {
            tracing::warn!(path = %self.path.display(), "the history writer is behind: an entry is kept in memory only");
        }
        let bytes = self.bytes.fetch_add(line.len() as u64, Ordering::Relaxed) + line.len() as u64;
        if bytes > MAX_BYTES {
            self.compact(&recent);
        }
    }

    /// Rewrites the file with the newest entries (rare: once per several thousand).
    fn compact(&self, recent: &VecDeque<Entry>) {
        // What is queued goes to the old file first, so nothing is written twice.
        self.writer.flush();
        // The newest entries that fill half the limit, so that compactions stay rare.
        let mut lines: Vec<Vec<u8>> = Vec::new();
        let mut total = 0;
        for e in recent.iter().rev() {
            let Ok(mut line) = serde_json::to_vec(e) else {
                continue;
            };
            line.push(b'\n');
            total += line.len() as u64;
            if total > MAX_BYTES / 2 {
                break;
            }
            lines.push(line);
        }
        let text: Vec<u8> = lines.into_iter().rev().flatten().collect();
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
        let recent = self.recent.lock().unwrap_or_else(|e| e.into_inner());
        let mut picked: Vec<Entry> = recent
            .iter()
            .rev()
            .filter(|e| match (&e.what, route) {
                (_, None) | (What::Reload { .. }, _) => true,
                (What::Shift { route: r, .. }, Some(want)) => r == want,
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
        let recent = self.recent.lock().unwrap_or_else(|e| e.into_inner());
        let mut last: Vec<(String, String)> = Vec::new();
        for e in recent.iter() {
            if let What::Shift { route, to, .. } = &e.what {
                match last.iter_mut().find(|(r, _)| r == route) {
                    Some(slot) => slot.1 = to.clone(),
                    None => last.push((route.clone(), to.clone())),
                }
            }
        }
        last
    }

    /// At exit: the last entries written (bounded, like the access log's).
    pub fn flush(&self) {
        self.writer.flush();
    }
}

/// The newest `KEEP` entries of the file at `path`, and its size. Lines that do not parse (a
/// line cut by a crash, a hand edit) are skipped.
fn read_tail(path: &Path) -> (VecDeque<Entry>, u64) {
    let (text, size) = crate::config::read::read_state_tail(path, READ_AT_MOST);
    let mut recent = VecDeque::new();
    // A read that started mid-file starts mid-line: its first line is skipped (it fails to
    // parse, or it is whole only by chance, which is fine either way).
    for line in text.split(|&b| b == b'\n') {
        if let Ok(e) = serde_json::from_slice::<Entry>(line) {
            recent.push_back(e);
            if recent.len() > KEEP {
                recent.pop_front();
            }
        }
    }
    (recent, size)
}

#[cfg(test)]
mod tests;
