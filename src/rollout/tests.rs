use std::time::{Duration, Instant};

use std::collections::BTreeMap;

use super::*;
use crate::config::rollout::{OnFailure, Rollout};
use crate::stats::SideStats;

fn pct(s: &str) -> Shift {
    Shift::parse(s).unwrap()
}

fn rollout() -> Rollout {
    Rollout {
        steps: vec![pct("5%"), pct("25%"), pct("100%")],
        interval: Duration::from_secs(60),
        min_requests: 500,
        max_error_rate: Some(100),
        max_error_rate_increase: None,
        max_p99_ratio: None,
        max_mismatch_rate: None,
        on_failure: OnFailure::Previous,
    }
}

/// Counters with `n` new-side requests of which `errors` failed, and `legacy` legacy ones, each
/// taking `ms`.
fn counters(n: u64, errors: u64, legacy: u64, ms: u64) -> Counters {
    let (l, s) = (SideStats::default(), SideStats::default());
    for i in 0..n {
        s.record(
            if i < errors { 503 } else { 200 },
            Duration::from_millis(ms),
        );
    }
    for _ in 0..legacy {
        l.record(200, Duration::from_millis(1));
    }
    Counters {
        legacy: l.totals(),
        new: s.totals(),
        compared: 0,
        mismatched: 0,
    }
}

#[test]
fn a_rate_gate_fails_as_soon_as_it_cannot_pass_and_holds_only_from_min_requests() {
    let r = rollout();
    let verdict = |n, errors| judge(&r, &counters(n, errors, 0, 1))[0].verdict;
    // 1% of 500 is 5 errors: a sixth fails the gate whatever else arrives.
    assert_eq!(verdict(10, 5), Verdict::Pending);
    assert_eq!(verdict(10, 6), Verdict::Fail);
    assert_eq!(verdict(499, 0), Verdict::Pending);
    assert_eq!(verdict(500, 5), Verdict::Hold);
    assert_eq!(verdict(1000, 10), Verdict::Hold);
    assert_eq!(verdict(1000, 11), Verdict::Fail);
    let g = &judge(&r, &counters(1000, 11, 0, 1))[0];
    assert_eq!(
        (g.value.as_str(), g.limit.as_str(), g.over),
        ("1.10%", "1.00%", 1000)
    );
}

#[test]
fn comparative_gates_compare_with_legacy_in_the_same_window() {
    let r = Rollout {
        max_error_rate: None,
        max_error_rate_increase: Some(50),
        max_p99_ratio: Some(1.5),
        min_requests: 100,
        ..rollout()
    };
    // New 40 ms against legacy's floor of 1 ms: the p99 ratio fails, the error increase holds.
    let gates = judge(&r, &counters(100, 0, 100, 40));
    assert_eq!(gates[0].verdict, Verdict::Hold, "{gates:?}");
    assert_eq!(gates[1].verdict, Verdict::Fail, "{gates:?}");
    // Without legacy traffic there is no baseline: judged on the new side alone.
    let gates = judge(&r, &counters(100, 0, 0, 40));
    assert_eq!(gates[1].verdict, Verdict::Hold);
    assert_eq!(gates[1].value, "no legacy baseline");
    // One new error in 100 is 1% over legacy's 0%: more than 0.5%.
    assert_eq!(
        judge(&r, &counters(100, 1, 100, 1))[0].verdict,
        Verdict::Fail
    );
}

#[test]
fn the_mismatch_gate_counts_compared_copies() {
    let r = Rollout {
        max_error_rate: None,
        max_mismatch_rate: Some(200),
        ..rollout()
    };
    let mut c = counters(0, 0, 0, 1);
    c.compared = 100;
    c.mismatched = 2;
    assert_eq!(judge(&r, &c)[0].verdict, Verdict::Hold);
    c.mismatched = 3;
    assert_eq!(judge(&r, &c)[0].verdict, Verdict::Fail);
}

/// A rollout store in a directory of its own.
fn store() -> (tempfile::TempDir, Rollouts) {
    let dir = tempfile::tempdir().unwrap();
    let rollouts = Rollouts::open(&dir.path().join("strangle.toml"), BTreeMap::new());
    (dir, rollouts)
}

#[test]
fn a_healthy_side_advances_step_by_step_after_each_interval_and_ends_done() {
    let (_dir, ro) = store();
    let r = rollout();
    let t0 = Instant::now();
    // At 0% the rollout starts at the first step.
    let tick = ro.tick("b", &r, Shift::ZERO, counters(0, 0, 0, 1), t0);
    let change = tick.change.unwrap();
    assert_eq!(
        (change.from, change.to, change.event),
        (Shift::ZERO, pct("5%"), "advance")
    );
    // While the change is applied nothing else happens.
    assert_eq!(
        ro.tick("b", &r, Shift::ZERO, counters(0, 0, 0, 1), t0)
            .change,
        None
    );
    let mut shift = pct("5%");
    let mut at = t0;
    for next in ["25%", "100%"] {
        assert_eq!(
            ro.tick("b", &r, shift, counters(0, 0, 0, 1), at).change,
            None
        );
        // Enough requests before the interval ends: it waits for the interval.
        let healthy = counters(600, 3, 600, 1);
        assert_eq!(
            ro.tick("b", &r, shift, healthy, at + Duration::from_secs(30))
                .change,
            None
        );
        at += Duration::from_secs(61);
        let change = ro.tick("b", &r, shift, healthy, at).change.unwrap();
        assert_eq!((change.from, change.to), (shift, pct(next)));
        assert!(
            change.reason.contains("every gate held"),
            "{}",
            change.reason
        );
        shift = pct(next);
    }
    assert_eq!(
        ro.tick("b", &r, shift, counters(0, 0, 0, 1), at).change,
        None
    );
    at += Duration::from_secs(61);
    let tick = ro.tick("b", &r, shift, counters(600, 0, 0, 1), at);
    assert_eq!(tick.change, None);
    assert_eq!(tick.note.unwrap().0, "done");
    assert_eq!(ro.status("b", &r, shift).phase, "done");
}

#[test]
fn a_failing_gate_rolls_back_at_once_to_the_previous_step_or_to_zero() {
    for (on_failure, back) in [(OnFailure::Previous, "5%"), (OnFailure::Zero, "0%")] {
        let (_dir, ro) = store();
        let r = Rollout {
            on_failure,
            ..rollout()
        };
        let at = Instant::now();
        let shift = pct("25%");
        assert_eq!(
            ro.tick("b", &r, shift, counters(0, 0, 0, 1), at).change,
            None
        );
        // Six errors in the first seconds of the step: it cannot pass any more.
        let tick = ro.tick(
            "b",
            &r,
            shift,
            counters(20, 6, 20, 1),
            at + Duration::from_secs(1),
        );
        let change = tick.change.unwrap();
        assert_eq!((change.event, change.to), ("rollback", pct(back)));
        assert!(
            change
                .reason
                .starts_with("error rate 30.00% over the limit 1.00%"),
            "{}",
            change.reason
        );
        // Applied: rolled back stays there, and a healthy side does not move it again.
        let later = at + Duration::from_secs(600);
        assert_eq!(
            ro.tick("b", &r, pct(back), counters(20, 6, 20, 1), later)
                .change,
            None
        );
        assert_eq!(
            ro.tick(
                "b",
                &r,
                pct(back),
                counters(9000, 6, 20, 1),
                later + Duration::from_secs(600)
            )
            .change,
            None
        );
        let status = ro.status("b", &r, pct(back));
        assert_eq!(status.phase, "rolled-back");
        assert!(status.reason.unwrap().contains("error rate"));
    }
}

#[test]
fn the_window_forgets_what_is_older_than_the_interval() {
    let (_dir, ro) = store();
    let r = rollout();
    let (shift, at) = (pct("25%"), Instant::now());
    ro.tick("b", &r, shift, counters(0, 0, 0, 1), at);
    // Errors early in a long step, then a healthy hour: judged on the last interval only.
    let bad = counters(100, 5, 0, 1);
    ro.tick("b", &r, shift, bad, at + Duration::from_secs(10));
    let mut healthy = bad;
    healthy.new = healthy.new.add(&counters(600, 0, 0, 1).new);
    let change = ro
        .tick("b", &r, shift, healthy, at + Duration::from_secs(3600))
        .change
        .unwrap();
    assert_eq!(change.event, "advance");
}

#[test]
fn a_shift_made_by_hand_pauses_the_rollout_until_it_is_resumed() {
    let (_dir, ro) = store();
    let r = rollout();
    let at = Instant::now();
    ro.tick("b", &r, pct("5%"), counters(0, 0, 0, 1), at);
    let tick = ro.tick("b", &r, pct("50%"), counters(0, 0, 0, 1), at);
    assert_eq!(tick.note.as_ref().unwrap().0, "paused");
    assert!(tick
        .note
        .unwrap()
        .1
        .contains("changed by hand from 5% to 50%"));
    // Paused: healthy traffic does not advance it...
    let healthy = counters(600, 0, 600, 1);
    assert_eq!(
        ro.tick("b", &r, pct("50%"), healthy, at + Duration::from_secs(120))
            .change,
        None
    );
    // ...but a failing gate still rolls it back.
    let failing = counters(700, 100, 600, 1);
    let change = ro
        .tick("b", &r, pct("50%"), failing, at + Duration::from_secs(121))
        .change
        .unwrap();
    assert_eq!((change.event, change.to), ("rollback", pct("25%")));
}

#[test]
fn actions_pause_resume_promote_and_abort_and_refuse_what_does_nothing() {
    let (_dir, ro) = store();
    let r = rollout();
    let shift = pct("25%");
    ro.tick("b", &r, shift, counters(0, 0, 0, 1), Instant::now());
    assert_eq!(ro.act("b", &r, shift, Action::Pause, "ann"), Ok(None));
    assert!(matches!(
        ro.act("b", &r, shift, Action::Pause, "ann"),
        Err(ActionError::Pointless { .. })
    ));
    assert_eq!(
        ro.status("b", &r, shift).reason.as_deref(),
        Some("paused by ann")
    );
    assert_eq!(ro.act("b", &r, shift, Action::Resume, "bob"), Ok(None));
    let promote = ro
        .act("b", &r, shift, Action::Promote, "bob")
        .unwrap()
        .unwrap();
    assert_eq!(
        (promote.from, promote.to, promote.event),
        (shift, Shift::ALL, "promote")
    );
    ro.tick("b", &r, Shift::ALL, counters(0, 0, 0, 1), Instant::now());
    assert_eq!(ro.status("b", &r, Shift::ALL).phase, "done");
    let abort = ro
        .act("b", &r, Shift::ALL, Action::Abort, "cy")
        .unwrap()
        .unwrap();
    assert_eq!((abort.to, abort.event), (Shift::ZERO, "abort"));
    ro.tick("b", &r, Shift::ZERO, counters(0, 0, 0, 1), Instant::now());
    // Aborted stays at 0% until resumed; resumed, it starts at the first step again.
    assert_eq!(
        ro.tick("b", &r, Shift::ZERO, counters(0, 0, 0, 1), Instant::now())
            .change,
        None
    );
    ro.act("b", &r, Shift::ZERO, Action::Resume, "cy").unwrap();
    let again = ro
        .tick("b", &r, Shift::ZERO, counters(0, 0, 0, 1), Instant::now())
        .change
        .unwrap();
    assert_eq!(again.to, pct("5%"));
}

#[test]
fn the_state_saved_beside_the_config_resumes_the_step_and_its_phase() {
    let (dir, ro) = store();
    let r = rollout();
    let began = Instant::now() - Duration::from_secs(40);
    ro.tick("b", &r, pct("25%"), counters(0, 0, 0, 1), began);
    ro.act("b", &r, pct("25%"), Action::Pause, "ann").unwrap();
    ro.save().unwrap();
    assert!(dir.path().join("strangle.rollout.json").exists());
    let again = Rollouts::open(&dir.path().join("strangle.toml"), BTreeMap::new());
    let status = again.status("b", &r, pct("25%"));
    assert_eq!(status.phase, "paused");
    assert!((39..=42).contains(&status.in_step_seconds), "{status:?}");
    assert_eq!((status.step, status.next.as_deref()), (2, Some("100%")));
    // A file that does not parse: nothing moves by itself until told (it might have said
    // aborted); a file from the future is no harm.
    std::fs::write(dir.path().join("strangle.rollout.json"), "{not json").unwrap();
    let broken = Rollouts::open(&dir.path().join("strangle.toml"), BTreeMap::new());
    ro_paused(&broken, &r);
    let future = r#"{"b": {"phase": "running", "shift": "25%", "step_started": 99999999999999}}"#;
    std::fs::write(dir.path().join("strangle.rollout.json"), future).unwrap();
    let future = Rollouts::open(&dir.path().join("strangle.toml"), BTreeMap::new());
    assert_eq!(future.status("b", &r, pct("25%")).in_step_seconds, 0);
}

#[test]
fn a_change_that_could_not_be_applied_is_tried_again_only_after_a_while() {
    let (_dir, ro) = store();
    let r = rollout();
    let (shift, at) = (pct("25%"), Instant::now());
    ro.tick("b", &r, shift, counters(0, 0, 0, 1), at);
    let failing = counters(20, 10, 20, 1);
    let change = ro.tick("b", &r, shift, failing, at).change.unwrap();
    ro.failed(&change, "the file is read-only");
    let status = ro.status("b", &r, shift);
    assert_eq!(status.phase, "paused");
    assert!(status
        .reason
        .unwrap()
        .contains("could not rollback to 5%: the file is read-only"));
    // Every tick would fail the same way: none is tried for a while...
    let soon = Instant::now() + Duration::from_secs(1);
    assert_eq!(ro.tick("b", &r, shift, failing, soon).change, None);
    // ...then the rollback is tried again (a failing gate still rolls a paused rollout back).
    let later = Instant::now() + RETRY_AFTER + Duration::from_secs(1);
    let again = ro.tick("b", &r, shift, failing, later).change.unwrap();
    assert_eq!((again.event, again.to), ("rollback", pct("5%")));
}

/// A rollout that starts paused: no change, whatever its gates say.
fn ro_paused(ro: &Rollouts, r: &Rollout) {
    let t = ro.tick("b", r, Shift::ZERO, counters(0, 0, 0, 1), Instant::now());
    assert_eq!(t.change, None);
    let status = ro.status("b", r, Shift::ZERO);
    assert_eq!(status.phase, "paused");
    assert!(status.reason.unwrap().contains("strangle rollout b resume"));
}

#[test]
fn a_rollout_the_history_says_was_stopped_starts_paused_without_its_saved_state() {
    let dir = tempfile::tempdir().unwrap();
    let r = rollout();
    let stopped = BTreeMap::from([(
        "b".to_string(),
        ("abort".to_string(), std::time::SystemTime::now()),
    )]);
    let ro = Rollouts::open(&dir.path().join("strangle.toml"), stopped);
    ro_paused(&ro, &r);
    assert!(ro
        .status("b", &r, Shift::ZERO)
        .reason
        .unwrap()
        .contains("`abort`"));
    // Another route starts as usual.
    let t = ro.tick("c", &r, Shift::ZERO, counters(0, 0, 0, 1), Instant::now());
    assert_eq!(t.change.unwrap().to, pct("5%"));
}

#[test]
fn a_failed_advance_never_holds_back_a_rollback() {
    let (_dir, ro) = store();
    let r = Rollout {
        interval: Duration::from_secs(1),
        ..rollout()
    };
    let (shift, at) = (pct("25%"), Instant::now());
    ro.tick("b", &r, shift, counters(0, 0, 0, 1), at);
    let healthy = counters(600, 0, 600, 1);
    let later = at + Duration::from_secs(2);
    let advance = ro.tick("b", &r, shift, healthy, later).change.unwrap();
    ro.failed(&advance, "another writer changed the file");
    // The new side then fails: the rollback goes at once.
    let mut failing = healthy;
    failing.new = failing.new.add(&counters(100, 100, 0, 1).new);
    let change = ro.tick("b", &r, shift, failing, later).change.unwrap();
    assert_eq!((change.event, change.to), ("rollback", pct("5%")));
}

#[test]
fn a_running_state_older_than_a_stop_in_the_history_starts_paused() {
    let (dir, ro) = store();
    let r = rollout();
    ro.tick("b", &r, pct("25%"), counters(0, 0, 0, 1), Instant::now());
    ro.save().unwrap();
    // The rollback after it could be recorded, but not saved (a read-only directory).
    let later = std::time::SystemTime::now() + Duration::from_secs(5);
    let stopped = BTreeMap::from([("b".to_string(), ("in-memory".to_string(), later))]);
    let again = Rollouts::open(&dir.path().join("strangle.toml"), stopped);
    let status = again.status("b", &r, pct("25%"));
    assert_eq!(status.phase, "paused");
    assert!(status
        .reason
        .unwrap()
        .contains("`in-memory`) is newer than the saved state"));
    // An older stop says nothing about the saved state.
    let earlier = std::time::SystemTime::now() - Duration::from_secs(3600);
    let stopped = BTreeMap::from([("b".to_string(), ("rollback".to_string(), earlier))]);
    let again = Rollouts::open(&dir.path().join("strangle.toml"), stopped);
    assert_eq!(again.status("b", &r, pct("25%")).phase, "running");
}
