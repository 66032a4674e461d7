//! What lowering needs from outside the config text: environment variables (`${env:..}`, the
//! Lambda region default) and the files the config names (`${file:..}`, `keys`, `ca-file`).
//! They come through one trait, so lowering itself touches neither the filesystem nor the
//! environment: `System` is the machine (the only reader of either), `Fixed` a map, for tests
//! and tools that lower a config from strings alone.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use super::read::{self, ReadError, MAX_FILE_BYTES};

/// Where lowering gets environment variables and file contents.
pub trait Inputs {
    /// An environment variable's value; `None` when it is unset (or not Unicode).
    fn var(&self, name: &str) -> Option<String>;
    /// A file's bytes, or why it cannot be read (a message that names the path).
    fn file(&self, path: &Path) -> Result<Vec<u8>, String>;
}

/// The process environment and the filesystem, read as `read` allows (regular files only, at
/// most `MAX_FILE_BYTES`, never a blocking open).
#[derive(Debug, Clone, Copy, Default)]
pub struct System;

impl Inputs for System {
    fn var(&self, name: &str) -> Option<String> {
        std::env::var(name).ok()
    }

    fn file(&self, path: &Path) -> Result<Vec<u8>, String> {
        read::read_bytes(path, MAX_FILE_BYTES).map_err(|e| e.to_string())
    }
}

/// Variables and files from maps: lowering a config from strings, with no machine behind it.
/// A file that is not in the map reads as a missing file does on the machine.
#[derive(Clone, Default)]
pub struct Fixed {
    pub vars: HashMap<String, String>,
    pub files: HashMap<PathBuf, Vec<u8>>,
}

impl Fixed {
    pub fn new() -> Fixed {
        Fixed::default()
    }

    /// Sets an environment variable.
    pub fn with_var(mut self, name: impl Into<String>, value: impl Into<String>) -> Fixed {
        self.vars.insert(name.into(), value.into());
        self
    }

    /// Adds a file; `path` is matched exactly as lowering forms it (the config's directory
    /// joined with the path the config names).
    pub fn with_file(mut self, path: impl Into<PathBuf>, contents: impl Into<Vec<u8>>) -> Fixed {
        self.files.insert(path.into(), contents.into());
        self
    }
}

impl Inputs for Fixed {
    fn var(&self, name: &str) -> Option<String> {
        self.vars.get(name).cloned()
    }

    fn file(&self, path: &Path) -> Result<Vec<u8>, String> {
        self.files.get(path).cloned().ok_or_else(|| {
            ReadError::Io {
                path: path.to_path_buf(),
                error: std::io::Error::from_raw_os_error(nix::libc::ENOENT),
            }
            .to_string()
        })
    }
}

/// A file's bytes as lowering may use them: at most `MAX_FILE_BYTES`, whatever the inputs.
pub(super) fn bytes(inputs: &dyn Inputs, path: &Path) -> Result<Vec<u8>, String> {
    let bytes = inputs.file(path)?;
    if bytes.len() as u64 > MAX_FILE_BYTES {
        return Err(ReadError::TooLarge {
            path: path.to_path_buf(),
            cap: MAX_FILE_BYTES,
        }
        .to_string());
    }
    Ok(bytes)
}

/// A file's text: its bytes, which must be UTF-8.
pub(super) fn text(inputs: &dyn Inputs, path: &Path) -> Result<String, String> {
    String::from_utf8(bytes(inputs, path)?).map_err(|_| {
        ReadError::NotText {
            path: path.to_path_buf(),
        }
        .to_string()
    })
}
