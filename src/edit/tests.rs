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

/// Two routes with a `# rev` line an editor bumps.
fn two_routes(a: &str, b: &str, rev: u32) -> String {
    format!(
        "# rev {rev}\n[upstreams.u]\naddresses = [\"127.0.0.1:1\"]\n\n[[routes]]\nid = \"a\"\npath = \"/a\"\nlegacy = \"u\"\nnew = \"u\"\nshift = \"{a}\"\n\n[[routes]]\nid = \"b\"\npath = \"/b\"\nlegacy = \"u\"\nnew = \"u\"\nshift = \"{b}\"\n"
    )
}

#[test]
fn concurrent_edits_of_different_routes_both_stay() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("strangle.toml");
    for round in 0..40u32 {
        std::fs::write(&path, two_routes("0%", "0%", 0)).unwrap();
        let (pa, pb) = (path.clone(), path.clone());
        let want_a = format!("{}%", round % 99 + 1);
        let want_b = format!("{}%", (round + 50) % 99 + 1);
        let (sa, sb) = (
            Shift::parse(&want_a).unwrap(),
            Shift::parse(&want_b).unwrap(),
        );
        let ta = std::thread::spawn(move || set_shift_in_file(&pa, "a", sa));
        let tb = std::thread::spawn(move || set_shift_in_file(&pb, "b", sb));
        ta.join().unwrap().unwrap();
        tb.join().unwrap().unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(
            text.contains(&format!(
                "id = \"a\"\npath = \"/a\"\nlegacy = \"u\"\nnew = \"u\"\nshift = \"{want_a}\""
            )),
            "round {round}: route a lost its shift:\n{text}"
        );
        assert!(
            text.contains(&format!("shift = \"{want_b}\"\n"))
                && text.ends_with(&format!("shift = \"{want_b}\"\n")),
            "round {round}: route b lost its shift:\n{text}"
        );
    }
    assert_eq!(
        std::fs::read_dir(dir.path()).unwrap().count(),
        1,
        "temp file left behind"
    );
}

#[test]
fn an_editor_saving_without_the_lock_never_loses_its_change() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("strangle.toml");
    std::fs::write(&path, two_routes("0%", "0%", 0)).unwrap();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let (editor_path, editor_stop) = (path.clone(), std::sync::Arc::clone(&stop));
    // Bumps `# rev N` on whatever the file holds, saving like editors do: half the time a
    // temp file renamed over, half the time a plain rewrite in place. No lock.
    let editor = std::thread::spawn(move || {
        let mut rev = 0u32;
        while !editor_stop.load(std::sync::atomic::Ordering::Relaxed) {
            let Ok(text) = std::fs::read_to_string(&editor_path) else {
                continue;
            };
            let Some(rest) = text.strip_prefix(&format!("# rev {rev}\n")) else {
                // A torn read of an in-place write of ours: read again.
                continue;
            };
            rev += 1;
            let next = format!("# rev {rev}\n{rest}");
            if rev % 2 == 0 {
                let tmp = editor_path.with_extension("swp");
                std::fs::write(&tmp, next).unwrap();
                std::fs::rename(&tmp, &editor_path).unwrap();
            } else {
                std::fs::write(&editor_path, next).unwrap();
            }
            // A busy editor, not a tight loop: edits in between must be able to win too.
            std::thread::sleep(std::time::Duration::from_millis(2));
        }
        rev
    });
    let (mut saved, mut refused) = (0, 0);
    for round in 0..150u32 {
        let shift = Shift::parse(&format!("{}%", round % 100)).unwrap();
        match set_shift_in_file(&path, "a", shift) {
            Ok(_) => saved += 1,
            // A torn in-place write read as config, or an editor that kept winning.
            Err(
                EditError::Conflict { .. }
                | EditError::NoSuchRoute { .. }
                | EditError::Parse { .. }
                | EditError::Invalid(_),
            ) => refused += 1,
            Err(e) => panic!("{e}"),
        }
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let last_rev = editor.join().unwrap();
    let text = std::fs::read_to_string(&path).unwrap();
    // Had any edit of ours replaced a file it had not read, the editor's chain of revisions
    // would be broken: it only ever bumps the number it finds.
    assert!(
        text.starts_with(&format!("# rev {last_rev}\n")),
        "the editor's rev {last_rev} was lost:\n{text}"
    );
    assert!(last_rev > 10, "the editor barely ran: {last_rev}");
    eprintln!("{saved} saved, {refused} refused, editor at rev {last_rev}");
    assert!(saved > 50, "{saved} saved, {refused} refused");
}

#[test]
fn a_routes_shift_is_read_from_config_text() {
    let text = "[[routes]]\nid = \"a\"\nshift = \"25%\" # c\n\n[[routes]]\nid = \"b\"\n\n[[routes]]\nid = \"c\"\nshift = 40\n";
    assert_eq!(shift_in_text(text, "a"), Shift::parse("25%").ok());
    assert_eq!(shift_in_text(text, "b"), Some(Shift::ZERO));
    assert_eq!(shift_in_text(text, "c"), Shift::parse("40%").ok());
    assert_eq!(shift_in_text(text, "d"), None);
    assert_eq!(shift_in_text("not = [toml", "a"), None);
}
