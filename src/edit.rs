//! Writing a change back into the config file, which stays the single source of truth: the
//! edit keeps comments and layout (toml_edit), is validated before it is written, and replaces
//! the file atomically (a temp file beside it, fsync, rename).
//!
//! No change is lost between writers:
//! - Every edit by strangle (the admin API's shift, `strangle shift --file`) holds an exclusive
//!   `flock` on the config file's directory while it reads, applies and writes. The directory,
//!   not the file: the write renames a new file over the old one, so a lock on the file would
//!   be on an inode that is gone after the first edit; the directory's identity survives, and no
//!   lock file is left beside the config.
//! - An editor that takes no lock is protected by compare-and-swap on the file's contents: the
//!   new file is swapped in with `renameat2(RENAME_EXCHANGE)`, which hands back exactly the file
//!   it displaced; if that is not the text the edit was based on, someone saved in between, so
//!   their file is swapped back and the edit is re-read and re-applied (a few times, then a loud
//!   failure). After the swap the file is read once more: a save that landed just after ours
//!   (with our change missing) is also re-applied on top.
//!
//! What is left, stated plainly: a writer that opened the file before the swap and writes into
//! that open descriptor after it (an in-place `write`, not a rename) writes into the displaced
//! inode; the displaced file is compared `SAVE_GRACE` after the swap, so only a writer that
//! stalls longer than that between its `open` and its `write` (or keeps the file open and writes
//! much later) loses its write with that inode. On a filesystem without `RENAME_EXCHANGE` the
//! swap is a plain rename right after a final comparison, and a rename by another writer in the
//! microseconds between the two is lost. And no lock-free scheme stops a writer that read the
//! file before our save from saving its stale copy after it: that reverts the change; the admin
//! API watches the file for a moment after the save and re-applies or reports it, but a stale
//! save that lands after it answered is the writer's to see.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use toml_edit::{DocumentMut, Item, Value};

use crate::config;
use crate::config::read::{read_text, ReadError};
use crate::split::Shift;

/// How many times an edit re-reads and re-applies when the file changed under it.
const ATTEMPTS: usize = 5;
/// How long an edit waits for a process writing the config in place to close it.
const WRITER_WAIT: Duration = Duration::from_secs(5);
/// How long after swapping the edit in the file it displaced is compared: a save in place that
/// had opened it just before the swap lands in it, not in ours, and must not be lost.
const SAVE_GRACE: Duration = Duration::from_millis(20);
/// How long an edit waits for another strangle edit of the same directory to finish.
const LOCK_WAIT: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum EditError {
    #[error(
        "the config file `{path}` is read-only ({why}), so the shift cannot be saved there. Change \
         `shift` for route `{route}` where the file comes from (for a mounted ConfigMap: edit the \
         ConfigMap and apply it; strangle reloads it within seconds), or edit a writable copy with \
         `strangle shift --file FILE {route} PERCENT`"
    )]
    ReadOnly {
        path: PathBuf,
        route: String,
        why: String,
    },
    #[error("no route `{route}`; known routes: {known}")]
    NoSuchRoute { route: String, known: String },
    #[error("cannot parse `{path}` for editing: {error}")]
    Parse { path: PathBuf, error: String },
    #[error("the edited config would not be valid:\n{0}")]
    Invalid(config::ConfigErrors),
    #[error("cannot write `{path}`: {error}")]
    Io {
        path: PathBuf,
        error: std::io::Error,
    },
    #[error(transparent)]
    Read(#[from] ReadError),
    #[error(
        "`{path}` kept changing while the shift was being saved ({attempts} attempts, another \
         writer saved each time): the shift was not saved; look at the file and run it again"
    )]
    Conflict { path: PathBuf, attempts: usize },
    #[error(
        "`{}` is open for writing by process {pid} (saved in place, still being written): the \
         shift was not saved; run it again once that write is done", path.display()
    )]
    BeingWritten { path: PathBuf, pid: u32 },
    #[error("cannot lock `{dir}` to edit the config in it: {why}")]
    Lock { dir: PathBuf, why: String },
}

/// Sets `shift` of the route with `id` in config text; returns the new text and the old shift.
pub fn set_shift_in_text(
    path: &Path,
    text: &str,
    id: &str,
    shift: Shift,
) -> Result<(String, Shift), EditError> {
    let mut doc: DocumentMut =
        text.parse()
            .map_err(|e: toml_edit::TomlError| EditError::Parse {
                path: path.to_path_buf(),
                error: e.to_string(),
            })?;
    let routes = doc
        .get_mut("routes")
        .and_then(Item::as_array_of_tables_mut)
        .ok_or_else(|| EditError::NoSuchRoute {
            route: id.to_string(),
            known: "(none)".to_string(),
        })?;
    let mut known = Vec::new();
    let mut old = None;
    for table in routes.iter_mut() {
        let this_id = table
            .get("id")
            .and_then(Item::as_str)
            .unwrap_or_default()
            .to_string();
        if this_id != id {
            known.push(this_id);
            continue;
        }
        let new_value = Value::from(shift.to_string());
        match table.get_mut("shift").and_then(Item::as_value_mut) {
            Some(v) => {
                old = Some(shift_of(v));
                // Keep whatever comment or spacing surrounds the value.
                let decor = v.decor().clone();
                *v = new_value;
                *v.decor_mut() = decor;
            }
            None => {
                old = Some(Shift::ZERO);
                table.insert("shift", Item::Value(new_value));
            }
        }
    }
    let Some(old) = old else {
        return Err(EditError::NoSuchRoute {
            route: id.to_string(),
            known: known.join(", "),
        });
    };
    Ok((doc.to_string(), old))
}

/// The shift of the route with `id` in config text (`None`: no such route, or text that is not
/// TOML); a route without `shift` is at 0%.
pub fn shift_in_text(text: &str, id: &str) -> Option<Shift> {
    let doc: DocumentMut = text.parse().ok()?;
    let routes = doc.get("routes").and_then(Item::as_array_of_tables)?;
    let route = routes
        .iter()
        .find(|t| t.get("id").and_then(Item::as_str) == Some(id))?;
    Some(
        route
            .get("shift")
            .and_then(Item::as_value)
            .map_or(Shift::ZERO, shift_of),
    )
}

fn shift_of(v: &Value) -> Shift {
    let text = match v {
        Value::String(s) => s.value().clone(),
        Value::Integer(i) => i.value().to_string(),
        Value::Float(f) => f.value().to_string(),
        _ => String::new(),
    };
    Shift::parse(&text).unwrap_or_default()
}

/// Sets a route's shift in a config file: locked, validated, then swapped in only if the file
/// still holds the text the edit was based on (see the module doc). Returns the old shift.
pub fn set_shift_in_file(path: &Path, id: &str, shift: Shift) -> Result<Shift, EditError> {
    let target = std::fs::canonicalize(path).map_err(|error| EditError::Io {
        path: path.to_path_buf(),
        error,
    })?;
    check_writable(&target, id)?;
    let _locked = lock_dir_of(&target)?;
    let base = target.parent().unwrap_or(Path::new("."));
    for _ in 0..ATTEMPTS {
        // A file being written in place is half a config: an edit based on it would save the
        // half (perhaps without its `auth` lines) for good. Wait for the writer to close it.
        if let Err(pid) = crate::config::read::wait_for_writers(&target, WRITER_WAIT) {
            return Err(EditError::BeingWritten { path: target, pid });
        }
        let text = read_text(&target)?;
        let applied = set_shift_in_text(path, &text, id, shift).and_then(|(edited, old)| {
            if edited != text {
                config::parse(&path.display().to_string(), &edited, base)
                    .map_err(EditError::Invalid)?;
            }
            Ok((edited, old))
        });
        let (edited, old) = match applied {
            Ok(done) => done,
            // An editor rewriting the file in place leaves it empty or half-written for a
            // moment: a file that is still open for writing or still changing is read again,
            // not judged. (A writer that opened it just after the check above, and was then
            // descheduled, leaves it empty for as long as it sleeps: ask for writers again.)
            Err(_) if still_changing(&target, &text) => continue,
            Err(e) => return Err(e),
        };
        if edited == text {
            // Already so (another writer set the same shift, or a retry found it applied).
            return Ok(old);
        }
        match swap_in(&target, &text, &edited, id)? {
            Swap::Done => return Ok(old),
            Swap::Changed => {
                tracing::info!(path = %target.display(), route = %id, "the config file changed while the shift was saved; applying it again on the new text");
            }
        }
    }
    Err(EditError::Conflict {
        path: target,
        attempts: ATTEMPTS,
    })
}

/// Whether a process has the file open for writing, or it no longer holds `text` a moment later.
fn still_changing(target: &Path, text: &str) -> bool {
    if crate::config::read::writer_of(target).is_some() {
        return true;
    }
    std::thread::sleep(Duration::from_millis(20));
    read_text(target).map_or(true, |now| now != text)
}

/// An exclusive `flock` on the directory of `target`, held until dropped. Waits for another
/// edit at most `LOCK_WAIT`, never forever.
fn lock_dir_of(target: &Path) -> Result<nix::fcntl::Flock<std::fs::File>, EditError> {
    use nix::errno::Errno;
    use nix::fcntl::{Flock, FlockArg};
    let dir = target.parent().unwrap_or(Path::new(".")).to_path_buf();
    let fail = |why: String| EditError::Lock {
        dir: dir.clone(),
        why,
    };
    let start = Instant::now();
    let mut handle = std::fs::File::open(&dir).map_err(|e| fail(e.to_string()))?;
    loop {
        match Flock::lock(handle, FlockArg::LockExclusiveNonblock) {
            Ok(locked) => return Ok(locked),
            Err((h, Errno::EWOULDBLOCK | Errno::EINTR)) if start.elapsed() < LOCK_WAIT => {
                handle = h;
                std::thread::sleep(Duration::from_millis(5));
            }
            Err((_, Errno::EWOULDBLOCK)) => {
                return Err(fail(format!(
                    "another edit has held the lock for over {} s",
                    LOCK_WAIT.as_secs()
                )))
            }
            Err((_, e)) => return Err(fail(e.desc().to_string())),
        }
    }
}

/// What a compare-and-swap of the file did.
enum Swap {
    /// The edited text is in the file, and what it replaced was the text it was based on.
    Done,
    /// Another writer saved first (or just after): nothing of theirs was lost, nothing saved.
    Changed,
}

/// A file nobody may write (mode bits), or one on a read-only filesystem, is read-only even to
/// root: check both before touching anything.
fn check_writable(target: &Path, route: &str) -> Result<(), EditError> {
    let read_only = |why: &str| EditError::ReadOnly {
        path: target.to_path_buf(),
        route: route.to_string(),
        why: why.to_string(),
    };
    let meta = std::fs::metadata(target).map_err(|error| EditError::Io {
        path: target.to_path_buf(),
        error,
    })?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        if meta.permissions().mode() & 0o222 == 0 {
            return Err(read_only("no write permission on the file"));
        }
    }
    #[cfg(not(unix))]
    if meta.permissions().readonly() {
        return Err(read_only("the file is marked read-only"));
    }
    Ok(())
}

/// Writes `edited` into a temp file beside `target`, then swaps it in only if `target` still
/// holds `expected`.
fn swap_in(target: &Path, expected: &str, edited: &str, route: &str) -> Result<Swap, EditError> {
    let dir = target.parent().unwrap_or(Path::new("."));
    let name = target
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let io = |error: std::io::Error| EditError::Io {
        path: target.to_path_buf(),
        error,
    };
    // A random name, created exclusively (O_EXCL, mode 0600): a link planted at a predictable
    // name cannot make the edit write somewhere else.
    let mut file = match tempfile::Builder::new()
        .prefix(&format!(".{name}.strangle-"))
        .tempfile_in(dir)
    {
        Ok(f) => f,
        Err(e)
            if matches!(
                e.kind(),
                std::io::ErrorKind::ReadOnlyFilesystem | std::io::ErrorKind::PermissionDenied
            ) =>
        {
            return Err(EditError::ReadOnly {
                path: target.to_path_buf(),
                why: e.to_string(),
                route: route.to_string(),
            })
        }
        Err(e) => return Err(io(e)),
    };
    let result = (|| {
        if let Ok(meta) = std::fs::metadata(target) {
            file.as_file().set_permissions(meta.permissions())?;
            #[cfg(unix)]
            {
                use std::os::unix::fs::MetadataExt;
                // Keep the owner too; only root may give a file away, so elsewhere this is a
                // no-op that may fail, and the file then belongs to whoever edits it.
                let _ =
                    std::os::unix::fs::fchown(file.as_file(), Some(meta.uid()), Some(meta.gid()));
            }
        }
        file.write_all(edited.as_bytes())?;
        file.as_file().sync_all()?;
        Ok(())
    })();
    result.map_err(io)?;
    // From here on, only the temp path: dropping it removes whatever file is at it (ours, or one
    // we displaced and no longer need).
    let temp = file.into_temp_path();
    let still = |p: &Path| read_text(p).is_ok_and(|t| t == expected);
    if !still(target) {
        return Ok(Swap::Changed);
    }
    match exchange(&temp, target) {
        Ok(true) => {
            // `temp` now names exactly the file our edit displaced. A writer that opened it
            // just before the swap writes into it, not into ours: give such a save a moment to
            // land before judging (readers see our file meanwhile).
            std::thread::sleep(SAVE_GRACE);
            if !still(&temp) {
                // Someone saved between the check and the swap: give them their file back.
                exchange(&temp, target).map_err(io)?;
                if read_text(&temp).is_ok_and(|t| t != edited) {
                    // And a third save landed between our two swaps: `temp` holds the newest
                    // file now, which replaced the one we just put back; it wins.
                    exchange(&temp, target).map_err(io)?;
                }
                return Ok(Swap::Changed);
            }
        }
        Ok(false) => temp.persist(target).map_err(|e| io(e.error))?,
        // Deleted between the check and the swap: someone is saving it (delete and create).
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Swap::Changed),
        Err(e) => return Err(io(e)),
    }
    // A save that landed right after ours, from a copy read before it, dropped our change.
    if read_text(target).is_ok_and(|t| t != edited) {
        return Ok(Swap::Changed);
    }
    Ok(Swap::Done)
}

/// Atomically exchanges two paths. `Ok(false)` when the filesystem cannot (the caller renames
/// instead, with a tiny window after its last comparison).
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn exchange(a: &Path, b: &Path) -> std::io::Result<bool> {
    use nix::errno::Errno;
    use nix::fcntl::{renameat2, RenameFlags, AT_FDCWD};
    match renameat2(AT_FDCWD, a, AT_FDCWD, b, RenameFlags::RENAME_EXCHANGE) {
        Ok(()) => Ok(true),
        Err(Errno::EINVAL | Errno::ENOSYS | Errno::EOPNOTSUPP) => Ok(false),
        Err(e) => Err(e.into()),
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn exchange(_: &Path, _: &Path) -> std::io::Result<bool> {
    Ok(false)
}

#[cfg(test)]
mod tests;
