//! Writing a change back into the config file, which stays the single source of truth: the
//! edit keeps comments and layout (toml_edit), is validated before it is written, and replaces
//! the file atomically (a temp file beside it, fsync, rename).

use std::io::Write;
use std::path::{Path, PathBuf};

use toml_edit::{DocumentMut, Item, Value};

use crate::config;
use crate::split::Shift;

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

fn shift_of(v: &Value) -> Shift {
    let text = match v {
        Value::String(s) => s.value().clone(),
        Value::Integer(i) => i.value().to_string(),
        Value::Float(f) => f.value().to_string(),
        _ => String::new(),
    };
    Shift::parse(&text).unwrap_or_default()
}

/// Sets a route's shift in a config file: validated, then written atomically. Returns the old
/// shift.
pub fn set_shift_in_file(path: &Path, id: &str, shift: Shift) -> Result<Shift, EditError> {
    let target = std::fs::canonicalize(path).map_err(|error| EditError::Io {
        path: path.to_path_buf(),
        error,
    })?;
    check_writable(&target, id)?;
    let text = std::fs::read_to_string(&target).map_err(|error| EditError::Io {
        path: target.clone(),
        error,
    })?;
    let (edited, old) = set_shift_in_text(path, &text, id, shift)?;
    let base = target.parent().unwrap_or(Path::new("."));
    config::parse(&path.display().to_string(), &edited, base).map_err(EditError::Invalid)?;
    write_atomically(&target, &edited, id)?;
    Ok(old)
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

fn write_atomically(target: &Path, text: &str, route: &str) -> Result<(), EditError> {
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
        file.write_all(text.as_bytes())?;
        file.as_file().sync_all()?;
        Ok(())
    })();
    result.map_err(io)?;
    // Dropped on failure: the temp file is removed.
    file.persist(target).map_err(|e| io(e.error))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = r#"# The migration.
[upstreams.a]
addresses = ["127.0.0.1:1"]  # the monolith

[[routes]]
id = "bookings"   # stable id
path = "/bookings"
legacy = "a"
new = "a"
shift = "25%"     # raised on Monday

[[routes]]
id = "flights"
path = "/flights"
legacy = "a"
new = "a"
"#;

    #[test]
    fn edits_keep_comments_and_layout() {
        let (out, old) = set_shift_in_text(
            Path::new("x.toml"),
            TEXT,
            "bookings",
            Shift::parse("50%").unwrap(),
        )
        .unwrap();
        assert_eq!(old.bp(), 2500);
        assert_eq!(
            out,
            TEXT.replace(
                "shift = \"25%\"     # raised",
                "shift = \"50%\"     # raised"
            )
        );
        let (out, old) = set_shift_in_text(
            Path::new("x.toml"),
            TEXT,
            "flights",
            Shift::parse("0.5%").unwrap(),
        )
        .unwrap();
        assert_eq!(old, Shift::ZERO);
        assert!(out.ends_with("new = \"a\"\nshift = \"0.5%\"\n"), "{out}");
        assert!(out.starts_with("# The migration.\n"));
    }

    #[test]
    fn unknown_routes_name_the_known_ones() {
        let err = set_shift_in_text(Path::new("x.toml"), TEXT, "hotels", Shift::ZERO).unwrap_err();
        assert_eq!(
            err.to_string(),
            "no route `hotels`; known routes: bookings, flights"
        );
    }

    #[test]
    fn files_are_replaced_atomically_and_read_only_ones_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("strangle.toml");
        std::fs::write(&path, TEXT).unwrap();
        let old = set_shift_in_file(&path, "bookings", Shift::parse("75%").unwrap()).unwrap();
        assert_eq!(old.bp(), 2500);
        assert!(std::fs::read_to_string(&path)
            .unwrap()
            .contains("shift = \"75%\"     # raised"));
        assert_eq!(
            std::fs::read_dir(dir.path()).unwrap().count(),
            1,
            "temp file left behind"
        );

        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o444)).unwrap();
            let err = set_shift_in_file(&path, "bookings", Shift::ALL).unwrap_err();
            assert!(matches!(err, EditError::ReadOnly { .. }), "{err}");
            assert!(err.to_string().contains("strangle shift --file"));
        }
    }

    #[test]
    fn an_edit_that_breaks_the_config_is_not_written() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("strangle.toml");
        // A route with no `new` upstream cannot take a shift above 0%.
        let text = "[upstreams.a]\naddresses = [\"127.0.0.1:1\"]\n[[routes]]\nid = \"r\"\npath = \"/r\"\nlegacy = \"a\"\n";
        std::fs::write(&path, text).unwrap();
        let err = set_shift_in_file(&path, "r", Shift::parse("10%").unwrap()).unwrap_err();
        assert!(matches!(err, EditError::Invalid(_)), "{err}");
        assert_eq!(std::fs::read_to_string(&path).unwrap(), text);
    }
}
