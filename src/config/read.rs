//! Reading a file the config names (the config itself, every `${file:..}`, key and CA files):
//! only a regular file, at most `MAX_FILE_BYTES`, never a blocking open.
//!
//! A config path that is briefly a FIFO used to block the reload forever in `open`, and one
//! that points at `/dev/zero` grew memory without bound. So: the file is opened with
//! `O_NONBLOCK` (a FIFO without a writer opens at once instead of waiting for one), its type is
//! checked on the opened descriptor (`fstat`, so a swap between check and read cannot slip a
//! device in), and at most one byte more than the cap is read, whatever the file claims its size
//! is (procfs and sysfs files say 0).

use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};

/// The largest file read as config. A real config is kilobytes; a routing table with thousands
/// of routes is a few megabytes.
pub const MAX_FILE_BYTES: u64 = 8 * 1024 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error(
        "`{}` is {what}, not a regular file: strangle reads config (and every file it names) only \
         from regular files or symlinks to them",
        path.display()
    )]
    NotRegular { path: PathBuf, what: &'static str },
    #[error(
        "`{}` is larger than {} MB, the limit for a file strangle reads as config: is it the right file?",
        path.display(),
        cap / (1024 * 1024)
    )]
    TooLarge { path: PathBuf, cap: u64 },
    #[error("`{}` is not UTF-8 text", path.display())]
    NotText { path: PathBuf },
    #[error("cannot read `{}`: {error}", path.display())]
    Io {
        path: PathBuf,
        error: std::io::Error,
    },
}

/// Reads a config file as text; see the module doc for what is refused.
pub fn read_text(path: &Path) -> Result<String, ReadError> {
    let bytes = read_bytes(path, MAX_FILE_BYTES)?;
    String::from_utf8(bytes).map_err(|_| ReadError::NotText {
        path: path.to_path_buf(),
    })
}

/// Reads at most `cap` bytes of a regular file (symlinks followed).
pub fn read_bytes(path: &Path, cap: u64) -> Result<Vec<u8>, ReadError> {
    let io = |error: std::io::Error| ReadError::Io {
        path: path.to_path_buf(),
        error,
    };
    let file = open_nonblocking(path).map_err(io)?;
    let meta = file.metadata().map_err(io)?;
    if !meta.file_type().is_file() {
        return Err(ReadError::NotRegular {
            path: path.to_path_buf(),
            what: describe(&meta.file_type()),
        });
    }
    if meta.len() > cap {
        return Err(ReadError::TooLarge {
            path: path.to_path_buf(),
            cap,
        });
    }
    let mut bytes = Vec::with_capacity(usize::try_from(meta.len()).unwrap_or(0));
    // One byte over the cap tells a file that grew past it from one that fits exactly.
    file.take(cap + 1).read_to_end(&mut bytes).map_err(io)?;
    if bytes.len() as u64 > cap {
        return Err(ReadError::TooLarge {
            path: path.to_path_buf(),
            cap,
        });
    }
    Ok(bytes)
}

#[cfg(unix)]
fn open_nonblocking(path: &Path) -> std::io::Result<File> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(nix::libc::O_NONBLOCK | nix::libc::O_NOCTTY)
        .open(path)
}

#[cfg(not(unix))]
fn open_nonblocking(path: &Path) -> std::io::Result<File> {
    File::open(path)
}

fn describe(t: &std::fs::FileType) -> &'static str {
    #[cfg(unix)]
    {
        use std::os::unix::fs::FileTypeExt;
        if t.is_fifo() {
            return "a FIFO (named pipe)";
        }
        if t.is_char_device() {
            return "a character device";
        }
        if t.is_block_device() {
            return "a block device";
        }
        if t.is_socket() {
            return "a socket";
        }
    }
    if t.is_dir() {
        "a directory"
    } else {
        "not a regular file"
    }
}

/// A process that has `path` open for writing, if one can be seen (in `/proc`): a file being
/// written in place (`> strangle.toml`, `curl -o`, an editor that saves in place) is half a
/// config until its writer closes it, and half a config may be one without its `auth` line.
/// Reloads and edits wait for the writer instead of reading it. Processes this one cannot see
/// (another PID namespace, `hidepid`) are not found; writers that replace the file by rename
/// never need this.
pub fn writer_of(path: &Path) -> Option<u32> {
    use std::os::unix::fs::MetadataExt;
    let target = std::fs::metadata(path).ok()?;
    let (dev, ino) = (target.dev(), target.ino());
    let me = std::process::id();
    for proc_entry in std::fs::read_dir("/proc").ok()?.flatten() {
        let Some(pid) = proc_entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        if pid == me {
            continue;
        }
        let Ok(fds) = std::fs::read_dir(proc_entry.path().join("fd")) else {
            continue;
        };
        for fd in fds.flatten() {
            // The descriptor's file (the link followed), then its open flags.
            let Ok(meta) = std::fs::metadata(fd.path()) else {
                continue;
            };
            if meta.dev() != dev || meta.ino() != ino {
                continue;
            }
            let info = proc_entry.path().join("fdinfo").join(fd.file_name());
            let writing = std::fs::read_to_string(info).ok().is_some_and(|text| {
                text.lines()
                    .find_map(|l| l.strip_prefix("flags:"))
                    .and_then(|f| u32::from_str_radix(f.trim(), 8).ok())
                    .is_some_and(|flags| flags & 0o3 != 0)
            });
            if writing {
                return Some(pid);
            }
        }
    }
    None
}

/// Waits (up to `limit`) until no process has `path` open for writing; `Err(pid)` if one
/// still has.
pub fn wait_for_writers(path: &Path, limit: std::time::Duration) -> Result<(), u32> {
    let start = std::time::Instant::now();
    loop {
        match writer_of(path) {
            None => return Ok(()),
            Some(pid) if start.elapsed() >= limit => return Err(pid),
            Some(_) => std::thread::sleep(std::time::Duration::from_millis(50)),
        }
    }
}

/// Reads a state file strangle keeps beside the config (history, inventory, burn-down): `None`
/// when there is none; an error, said by the caller, when it is not a regular file or is over
/// `cap` (a FIFO or a symlink to `/dev/zero` must never hang or fill the process).
pub fn read_state(path: &Path, cap: u64) -> Result<Option<Vec<u8>>, ReadError> {
    match read_bytes(path, cap) {
        Ok(bytes) => Ok(Some(bytes)),
        Err(ReadError::Io { error, .. }) if error.kind() == std::io::ErrorKind::NotFound => {
            Ok(None)
        }
        Err(e) => Err(e),
    }
}

/// The last `at_most` bytes of a regular state file (nothing when there is none or it is not a
/// regular file), and its size.
pub fn read_state_tail(path: &Path, at_most: u64) -> (Vec<u8>, u64) {
    use std::io::{Seek, SeekFrom};
    let Ok(mut file) = open_nonblocking(path) else {
        return (Vec::new(), 0);
    };
    let Ok(meta) = file.metadata() else {
        return (Vec::new(), 0);
    };
    if !meta.file_type().is_file() {
        tracing::warn!(path = %path.display(), "not a regular file: not read");
        return (Vec::new(), 0);
    }
    let size = meta.len();
    let mut text = Vec::new();
    if file
        .seek(SeekFrom::Start(size.saturating_sub(at_most)))
        .is_err()
        || file.take(at_most).read_to_end(&mut text).is_err()
    {
        return (Vec::new(), size);
    }
    (text, size)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn regular_files_are_read_and_everything_else_refused_at_once() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("a.toml");
        std::fs::write(&file, "x = 1\n").unwrap();
        assert_eq!(read_text(&file).unwrap(), "x = 1\n");

        let err = read_text(dir.path()).unwrap_err();
        assert!(err.to_string().contains("is a directory"), "{err}");

        #[cfg(unix)]
        {
            let link = dir.path().join("zero.toml");
            std::os::unix::fs::symlink("/dev/zero", &link).unwrap();
            let err = read_text(&link).unwrap_err();
            assert!(
                err.to_string().contains("zero.toml` is a character device"),
                "{err}"
            );
            // A FIFO with no writer: `open` would block forever without O_NONBLOCK.
            let fifo = dir.path().join("fifo.toml");
            nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
            let err = read_text(&fifo).unwrap_err();
            assert!(err.to_string().contains("is a FIFO"), "{err}");
        }
    }

    #[test]
    fn files_over_the_cap_are_refused_and_files_at_it_read() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("big");
        std::fs::write(&file, vec![b'#'; 100]).unwrap();
        assert_eq!(read_bytes(&file, 100).unwrap().len(), 100);
        let err = read_bytes(&file, 99).unwrap_err();
        assert!(matches!(err, ReadError::TooLarge { cap: 99, .. }), "{err}");
        std::fs::write(&file, vec![b'#'; (MAX_FILE_BYTES + 1) as usize]).unwrap();
        let err = read_text(&file).unwrap_err();
        assert!(err.to_string().contains("larger than 8 MB"), "{err}");
    }
}
