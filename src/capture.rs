//! Capture: requests kept to look at and replay. A route's `capture = { on, dir, max-size }`
//! appends the requests the new side failed (a 5xx, no answer) or whose shadow copy differed
//! to a spool of JSON lines, with the answer or the error, redacted: credentials, cookies,
//! `[telemetry] redact-headers` and secret-named JSON fields never reach the disk.
//!
//! The spool never slows a request: records go through a bounded queue to a writer thread of
//! their own (a full queue drops the record, counted). It stays under `max-size` in two
//! halves: `capture.jsonl` is renamed to `capture.1.jsonl` (replacing the older half) once it
//! holds half of it. `strangle replay FILE --to legacy|new` sends the records again through
//! the admin API (`POST /routes/{id}/replay`), as a dead-letter queue for HTTP.

use std::collections::HashMap;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{mpsc, Arc, Mutex};

use base64::Engine as _;
use serde::{Deserialize, Serialize};

use crate::telemetry::redact;

/// Records waiting for the writer, at most.
const QUEUE: usize = 1024;
/// The spool's current file, and the older half it is renamed to.
pub const FILE: &str = "capture.jsonl";
pub const OLDER: &str = "capture.1.jsonl";

/// A body as kept: text when it is UTF-8, else base64.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Body {
    #[serde(default)]
    pub text: String,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub base64: bool,
    /// Longer than the cap: `text` is its prefix (such a request is not replayed).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub truncated: bool,
    /// Not kept: not a JSON document or a form, so its secrets could not be found (XML,
    /// multipart, malformed JSON...), or in a content coding. Never replayed.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub withheld: bool,
}

impl Body {
    /// `bytes` as kept, its secrets redacted: a JSON document (whatever its content type says)
    /// loses its secret-named fields, a form body its secret parameters. A body in a
    /// content coding (`gzip`) is not kept: it cannot be looked into.
    pub fn of(bytes: &[u8], truncated: bool, content_type: Option<&str>) -> Body {
        Body::redacted(bytes, truncated, content_type, None, &[])
    }

    /// `of`, for a body with its `content-encoding` and the extra names to redact. Only what
    /// can be redacted is kept: a JSON document or a form; any other body is withheld (better
    /// a record that cannot be replayed than a password on disk).
    pub fn redacted(
        bytes: &[u8],
        truncated: bool,
        content_type: Option<&str>,
        encoding: Option<&str>,
        extra: &[String],
    ) -> Body {
        let kept = |text: String| Body {
            text,
            base64: false,
            truncated,
            withheld: false,
        };
        if bytes.is_empty() {
            return kept(String::new());
        }
        let coded = encoding.is_some_and(|e| !e.eq_ignore_ascii_case("identity"));
        if !coded && !truncated {
            if let Ok(mut v) = serde_json::from_slice::<serde_json::Value>(bytes) {
                if v.is_object() || v.is_array() {
                    redact::json(&mut v);
                    return kept(v.to_string());
                }
            }
            let form = content_type.is_some_and(|c| c.contains("x-www-form-urlencoded"));
            if let Ok(text) = std::str::from_utf8(bytes) {
                if form || looks_like_form(text) {
                    return kept(redact::form(text, extra));
                }
            }
        }
        Body {
            text: String::new(),
            base64: false,
            truncated: true,
            withheld: true,
        }
    }

    pub fn bytes(&self) -> Result<Vec<u8>, String> {
        if self.base64 {
            base64::engine::general_purpose::STANDARD
                .decode(&self.text)
                .map_err(|e| format!("the body is not base64: {e}"))
        } else {
            Ok(self.text.as_bytes().to_vec())
        }
    }
}

/// The request as kept.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Request {
    pub method: String,
    /// The canonical path it was routed on, and its query (with its `?`).
    pub path: String,
    #[serde(default)]
    pub query: String,
    /// As the upstream got them (after the outbound header policy), secrets redacted.
    pub headers: Vec<(String, String)>,
    pub body: Body,
}

/// An answer as kept.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Response {
    pub status: u16,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content_type: Option<String>,
    pub body: Body,
}

/// One kept request.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Record {
    /// RFC 3339, milliseconds.
    pub at: String,
    pub route: String,
    /// `new-5xx`, `new-error`, `mismatch`.
    pub event: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
    pub request: Request,
    /// The side that answered the client, and the upstream.
    pub side: String,
    pub upstream: String,
    /// What the client got (for a mismatch: the answer the client got).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub response: Option<Response>,
    /// The other side's answer, for a mismatch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub other: Option<Response>,
    /// The differences by JSON path, for a mismatch.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub differences: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Why legacy served it instead (`fallback`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fallback: Option<String>,
}

/// Text that reads as `name=value&...` (a form sent as `text/plain`, say).
fn looks_like_form(text: &str) -> bool {
    !text.is_empty()
        && !text.contains([' ', '\n', '{', '<'])
        && text
            .split('&')
            .all(|p| p.split_once('=').is_some_and(|(n, _)| !n.is_empty()))
}

/// A query (with its `?`) as kept: credential parameters' values replaced.
pub fn kept_query(query: &str, extra: &[String]) -> String {
    match query.strip_prefix('?') {
        Some(q) if !q.is_empty() => format!("?{}", redact::query(q, extra)),
        _ => String::new(),
    }
}

/// A request's body as kept, from its headers (content type and coding).
pub fn kept_body(
    bytes: &[u8],
    truncated: bool,
    headers: &http::HeaderMap,
    extra: &[String],
) -> Body {
    let get = |name| {
        headers
            .get(name)
            .and_then(|v: &http::HeaderValue| v.to_str().ok())
    };
    Body::redacted(
        bytes,
        truncated,
        get(http::header::CONTENT_TYPE),
        get(http::header::CONTENT_ENCODING),
        extra,
    )
}

/// Headers as kept: the values of secret ones replaced.
pub fn kept_headers(headers: &http::HeaderMap, extra: &[String]) -> Vec<(String, String)> {
    headers
        .iter()
        .map(|(name, value)| {
            let value = if redact::secret_header(name.as_str(), extra) {
                redact::REDACTED.to_string()
            } else {
                redact::url(&String::from_utf8_lossy(value.as_bytes()), extra).into_owned()
            };
            (name.as_str().to_string(), value)
        })
        .collect()
}

/// One spool directory's writer.
#[derive(Debug)]
pub struct Spool {
    dir: PathBuf,
    tx: Option<mpsc::SyncSender<Vec<u8>>>,
    pub written: Arc<AtomicU64>,
    pub dropped: AtomicU64,
    pub failed: Arc<AtomicU64>,
}

impl Spool {
    fn open(dir: PathBuf, max_size: u64) -> Spool {
        let (tx, rx) = mpsc::sync_channel::<Vec<u8>>(QUEUE);
        let written = Arc::new(AtomicU64::new(0));
        let failed = Arc::new(AtomicU64::new(0));
        let (w, f, d) = (Arc::clone(&written), Arc::clone(&failed), dir.clone());
        let started = std::thread::Builder::new()
            .name("strangle-capture".into())
            .spawn(move || write_loop(&d, max_size, &rx, &w, &f));
        if let Err(e) = &started {
            tracing::error!(dir = %dir.display(), "the capture spool has no writer: {e}");
        }
        Spool {
            dir,
            tx: started.ok().map(|_| tx),
            written,
            dropped: AtomicU64::new(0),
            failed,
        }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Queues a record for the writer; never waits (a full queue drops it, counted).
    pub fn keep(&self, record: &Record) {
        let Ok(mut line) = serde_json::to_vec(record) else {
            return;
        };
        line.push(b'\n');
        let sent = self.tx.as_ref().is_some_and(|tx| tx.try_send(line).is_ok());
        if !sent {
            self.dropped.fetch_add(1, Relaxed);
        }
    }
}

/// The writer: appends lines, renames the file to the older half past `max_size / 2`.
fn write_loop(
    dir: &Path,
    max_size: u64,
    rx: &mpsc::Receiver<Vec<u8>>,
    written: &AtomicU64,
    failed: &AtomicU64,
) {
    let path = dir.join(FILE);
    let mut file: Option<(std::fs::File, u64)> = None;
    for line in rx {
        // A spool file removed or renamed away (by hand, or logrotate) is not written into
        // unseen: the file at the path is what is written.
        if file.as_ref().is_some_and(|(f, _)| !same_file(f, &path)) {
            file = None;
        }
        if file.is_none() {
            match open(dir, &path) {
                Ok(f) => {
                    let size = f.metadata().map_or(0, |m| m.len());
                    file = Some((f, size));
                }
                Err(e) => {
                    if failed.fetch_add(1, Relaxed) == 0 {
                        tracing::error!(path = %path.display(), "the capture spool cannot be written: {e}");
                    }
                    continue;
                }
            }
        }
        let Some((f, size)) = file.as_mut() else {
            continue;
        };
        if f.write_all(&line).is_err() {
            failed.fetch_add(1, Relaxed);
            file = None;
            continue;
        }
        written.fetch_add(1, Relaxed);
        *size += line.len() as u64;
        if *size >= max_size / 2 {
            if let Err(e) = std::fs::rename(&path, dir.join(OLDER)) {
                tracing::warn!(path = %path.display(), "the capture spool is not rotated: {e}");
            }
            file = None;
        }
    }
}

/// Opens the spool file for appending: never blocking (a FIFO put there would hold the writer
/// in `open` until a reader came), and only a regular file.
fn open(dir: &Path, path: &Path) -> std::io::Result<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt as _;
    std::fs::create_dir_all(dir)?;
    let file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .custom_flags(nix::fcntl::OFlag::O_NONBLOCK.bits() | nix::fcntl::OFlag::O_NOFOLLOW.bits())
        .open(path)?;
    if !file.metadata()?.is_file() {
        return Err(std::io::Error::other("not a regular file"));
    }
    Ok(file)
}

/// Whether `file` is still the file at `path`.
fn same_file(file: &std::fs::File, path: &Path) -> bool {
    use std::os::unix::fs::MetadataExt as _;
    match (file.metadata(), std::fs::symlink_metadata(path)) {
        (Ok(a), Ok(b)) => a.dev() == b.dev() && a.ino() == b.ino(),
        _ => false,
    }
}

/// Every spool, by directory, kept across reloads (a reload that keeps a route's `dir` keeps
/// its writer).
#[derive(Debug, Default)]
pub struct Spools {
    by_dir: Mutex<HashMap<PathBuf, Arc<Spool>>>,
}

impl Spools {
    /// The spool of `dir` (made on first use; the first route's `max-size` is the spool's).
    pub fn spool(&self, dir: &Path, max_size: u64) -> Arc<Spool> {
        let mut by_dir = self.by_dir.lock().unwrap_or_else(|e| e.into_inner());
        Arc::clone(
            by_dir
                .entry(dir.to_path_buf())
                .or_insert_with(|| Arc::new(Spool::open(dir.to_path_buf(), max_size))),
        )
    }

    /// Every spool, for `/metrics`.
    pub fn all(&self) -> Vec<Arc<Spool>> {
        let by_dir = self.by_dir.lock().unwrap_or_else(|e| e.into_inner());
        let mut all: Vec<_> = by_dir.values().cloned().collect();
        all.sort_by(|a, b| a.dir.cmp(&b.dir));
        all
    }
}

#[cfg(test)]
mod tests;
