use std::time::Duration;

use super::*;

fn admin() -> Cause {
    Cause::admin("127.0.0.1:5000".into(), false)
}

fn shift(route: &str, to: &str) -> What {
    What::Shift {
        route: route.into(),
        from: None,
        to: to.into(),
    }
}

/// The file's lines once the writer has written `n`.
fn lines(h: &History, n: usize) -> Vec<Entry> {
    h.flush();
    let text = std::fs::read_to_string(h.path()).unwrap_or_default();
    let got: Vec<Entry> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(got.len(), n, "{text}");
    got
}

#[test]
fn entries_are_kept_in_memory_and_in_the_file_beside_the_config_and_survive_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("edge.toml");
    assert_eq!(path_for(&config), dir.path().join("edge.history.jsonl"));
    let h = History::open(&config);
    h.record(shift("bookings", "25%"), &admin());
    h.record(
        What::Reload {
            ok: false,
            error: Some("edge.toml:3:1: bad".into()),
        },
        &Cause::FILE,
    );
    h.record(
        shift("flights", "5%"),
        &Cause::admin("10.0.0.1:1".into(), true),
    );
    let file = lines(&h, 3);
    assert_eq!(file, h.entries(None, 100));
    assert_eq!(file[0].how, How::Admin);
    assert_eq!(file[2].how, How::Cli);
    assert_eq!(file[2].client.as_deref(), Some("10.0.0.1:1"));
    let raw = std::fs::read_to_string(h.path()).unwrap();
    assert!(
        raw.contains(r#""kind":"shift","route":"bookings","to":"25%","how":"admin""#),
        "{raw}"
    );

    // A route's history: its shifts, and every reload.
    let bookings = h.entries(Some("bookings"), 100);
    assert_eq!(bookings.len(), 2);
    assert_eq!(h.entries(None, 1), file[2..]);
    drop(h);

    // A new process reads it back, and appends.
    let again = History::open(&config);
    assert_eq!(again.entries(None, 100), file);
    again.record(shift("bookings", "50%"), &Cause::FILE);
    assert_eq!(lines(&again, 4).len(), 4);
    assert_eq!(
        again.last_shifts(),
        [
            ("bookings".into(), "50%".into()),
            ("flights".into(), "5%".into())
        ]
    );
}

#[test]
fn only_changed_or_new_shifts_are_recorded_with_where_they_came_from() {
    let dir = tempfile::tempdir().unwrap();
    let h = History::open(&dir.path().join("s.toml"));
    let old = [
        ("a".to_string(), "10%".to_string()),
        ("b".into(), "0%".into()),
    ];
    let new = [
        ("a".to_string(), "25%".to_string()),
        ("b".into(), "0%".into()),
        ("c".into(), "100%".into()),
    ];
    h.record_shifts(&old, &new, &Cause::FILE, None);
    let got = h.entries(None, 10);
    assert_eq!(got.len(), 2, "{got:?}");
    assert_eq!(
        got[0].what,
        What::Shift {
            route: "a".into(),
            from: Some("10%".into()),
            to: "25%".into()
        }
    );
    assert_eq!(got[1].what, shift("c", "100%"));
}

#[test]
fn a_cut_or_foreign_line_is_skipped_and_the_file_is_compacted_past_its_size() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("s.toml");
    let good = serde_json::to_string(&Entry {
        at: "2026-12-02T04:00:00.000Z".into(),
        what: shift("a", "1%"),
        how: How::File,
        client: None,
    })
    .unwrap();
    std::fs::write(
        path_for(&config),
        format!("{good}\nnot json\n{{\"kind\":\"other\"}}\n{good}\n{{\"at\":\"x\",\"ki"),
    )
    .unwrap();
    let h = History::open(&config);
    assert_eq!(h.entries(None, 100).len(), 2);
    // The file ended inside a line: the next entry starts on a line of its own.
    h.record(shift("b", "2%"), &Cause::FILE);
    h.flush();
    let text = std::fs::read_to_string(h.path()).unwrap();
    assert!(
        text.ends_with("\n") && text.lines().last().unwrap().contains("\"b\""),
        "{text}"
    );

    // Past MAX_BYTES the file is rewritten with the newest entries, half of it.
    let long = "x".repeat(900);
    let n = (MAX_BYTES as usize / 1000) + 50;
    for i in 0..n {
        let what = What::Reload {
            ok: false,
            error: Some(format!("{i} {long}")),
        };
        h.record(what, &Cause::FILE);
    }
    h.flush();
    std::thread::sleep(Duration::from_millis(100));
    h.flush();
    let size = std::fs::metadata(h.path()).unwrap().len();
    assert!(size < MAX_BYTES, "{size}: compacted, then appended to");
    let kept = std::fs::read_to_string(h.path()).unwrap();
    let last = format!("{} {long}", n - 1);
    assert!(kept.contains(&last), "the newest entry is kept");
    assert!(!dir.path().join("s.history.jsonl.tmp").exists());
    assert!(h.entries(None, KEEP).len() <= KEEP);
}

#[test]
fn a_long_reload_error_is_cut() {
    let dir = tempfile::tempdir().unwrap();
    let h = History::open(&dir.path().join("s.toml"));
    let error = "é".repeat(10_000);
    h.record(
        What::Reload {
            ok: false,
            error: Some(error),
        },
        &Cause::FILE,
    );
    let What::Reload {
        error: Some(kept), ..
    } = &h.entries(None, 1)[0].what
    else {
        panic!("a reload entry");
    };
    assert!(
        kept.len() <= MAX_ERROR + 10 && kept.ends_with(" [...]"),
        "{}",
        kept.len()
    );
}

#[test]
fn the_shift_an_admin_call_is_writing_is_that_calls_whichever_reload_sees_it() {
    // Found by a fresh-clone run: the file watcher's reload saw the admin's edit first and the
    // shift was recorded as a file edit.
    let dir = tempfile::tempdir().unwrap();
    let h = History::open(&dir.path().join("s.toml"));
    let editing = Edit {
        cause: admin(),
        route: "a".into(),
        to: "30%".into(),
    };
    let old = [
        ("a".to_string(), "25%".to_string()),
        ("b".into(), "1%".into()),
    ];
    let new = [
        ("a".to_string(), "30%".to_string()),
        ("b".into(), "2%".into()),
    ];
    h.record_shifts(&old, &new, &Cause::FILE, Some(&editing));
    let hows: Vec<How> = h.entries(None, 10).into_iter().map(|e| e.how).collect();
    assert_eq!(
        hows,
        [How::Admin, How::File],
        "only the admin's own change is the admin's"
    );
}

#[test]
fn each_routes_last_shift_outlives_the_entries_kept_and_the_compaction() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("s.toml");
    let h = History::open(&config);
    h.record(shift("a", "10%"), &admin());
    h.record(shift("b", "20%"), &admin());
    h.record(shift("a", "30%"), &admin());
    // More reloads than are kept, and enough bytes to compact the file twice.
    let long = "y".repeat(900);
    for i in 0..(2 * MAX_BYTES as usize / 900) {
        let what = What::Reload {
            ok: false,
            error: Some(format!("{i} {long}")),
        };
        h.record(what, &Cause::FILE);
    }
    h.flush();
    assert!(h
        .entries(Some("a"), KEEP)
        .iter()
        .all(|e| matches!(e.what, What::Reload { .. })));
    let mut last = h.last_shifts();
    last.sort();
    let want = vec![
        ("a".to_string(), "30%".to_string()),
        ("b".into(), "20%".into()),
    ];
    assert_eq!(last, want);
    let size = std::fs::metadata(h.path()).unwrap().len();
    assert!(size < MAX_BYTES, "{size}");
    drop(h);

    // After a restart: the same shifts, so the start records nothing for them.
    let h = History::open(&config);
    let mut last = h.last_shifts();
    last.sort();
    assert_eq!(last, want);
    let before = h.entries(None, KEEP).len();
    h.record_shifts(
        &h.last_shifts(),
        &want,
        &Cause {
            how: How::Start,
            client: None,
        },
        None,
    );
    assert_eq!(h.entries(None, KEEP).len(), before, "nothing new at start");
    // The file holds them in time order: the routes' shifts come first.
    let text = std::fs::read_to_string(h.path()).unwrap();
    let mut first: Vec<What> = text
        .lines()
        .take(2)
        .map(|l| serde_json::from_str::<Entry>(l).unwrap().what)
        .collect();
    first.sort_by_key(|w| format!("{w:?}"));
    assert_eq!(first, [shift("a", "30%"), shift("b", "20%")]);
}

#[test]
fn the_routes_kept_past_the_entries_are_bounded() {
    let dir = tempfile::tempdir().unwrap();
    let h = History::open(&dir.path().join("s.toml"));
    for i in 0..MAX_ROUTES + 10 {
        h.record(shift(&format!("r{i}"), "5%"), &Cause::FILE);
    }
    let last = h.last_shifts();
    assert_eq!(last.len(), MAX_ROUTES);
    assert!(last
        .iter()
        .any(|(r, _)| r == &format!("r{}", MAX_ROUTES + 9)));
}
