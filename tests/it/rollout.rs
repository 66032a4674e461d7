//! Progressive rollouts against real upstreams: a healthy new side advances through every step,
//! one that starts failing is rolled back within a gate window with the reason shown, a restart
//! resumes the step, and the operator's actions (with the admin token) and a shift by hand.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::support::*;

const TOKEN: &str = "rollout-admin-token";

fn config(legacy: &Backend, new: &Backend, shift: &str, rollout: &str) -> String {
    Config::new()
        .upstream("legacy", &legacy.addr())
        .upstream("new", &new.addr())
        .route("flights", "/flights", |r| {
            r.legacy("legacy")
                .new("new")
                .shift(shift)
                .sticky("none")
                .toml("rollout", rollout)
        })
        .section(
            "[admin]",
            &format!("listen = \"{{admin}}\"\ntoken = \"{TOKEN}\""),
        )
        .build()
}

fn rollout(proxy: &Proxy) -> Value {
    proxy.status()["routes"][0]["rollout"].clone()
}

fn history(proxy: &Proxy) -> Vec<Value> {
    let r = proxy.admin("GET", "/history?limit=200", b"");
    serde_json::from_slice::<Value>(&r.body).unwrap()["entries"]
        .as_array()
        .unwrap()
        .clone()
}

fn shift_in_file(proxy: &Proxy) -> String {
    let text = std::fs::read_to_string(&proxy.config).unwrap();
    let config: toml::Value = toml::from_str(&text).unwrap();
    config["routes"][0]["shift"].as_str().unwrap().to_string()
}

#[test]
fn a_healthy_new_side_advances_through_every_step_and_the_history_says_so() {
    let (legacy, new) = (Backend::start("legacy"), Backend::start("new"));
    let steps = r#"{ steps = ["10%", "50%", "100%"], interval = "1s", min-requests = 20, max-error-rate = "5%", max-p99-ratio = 20.0 }"#;
    let proxy = Proxy::start(&config(&legacy, &new, "0%", steps));
    let _traffic = Traffic::start(proxy.port);
    let done = wait_for(Duration::from_secs(40), "the rollout done", || {
        let r = rollout(&proxy);
        (r["phase"] == "done").then_some(r)
    });
    assert_eq!(done["shift"], "100%", "{done}");
    assert_eq!(done["step"], 3);
    assert!(
        done["reason"].as_str().unwrap().contains("every gate held"),
        "{done}"
    );
    // The file is the truth for the step.
    assert_eq!(shift_in_file(&proxy), "100%");
    // Judging a route that does not shadow makes no shadow series for it.
    let metrics = proxy.admin("GET", "/metrics", b"").text();
    assert!(metrics.contains("strangle_rollout_step{route=\"flights\",phase=\"done\"} 3"));
    assert!(
        !metrics.contains("strangle_shadow_requests_total{route=\"flights\""),
        "{metrics}"
    );
    // Every step is in the history: the shifts made by the rollout, and its events.
    let entries = history(&proxy);
    let shifts: Vec<(&str, &str)> = entries
        .iter()
        .filter(|e| e["kind"] == "shift" && e["how"] == "rollout")
        .map(|e| (e["from"].as_str().unwrap(), e["to"].as_str().unwrap()))
        .collect();
    assert_eq!(
        shifts,
        [("0%", "10%"), ("10%", "50%"), ("50%", "100%")],
        "{entries:#?}"
    );
    let events: Vec<&str> = entries
        .iter()
        .filter(|e| e["kind"] == "rollout")
        .map(|e| e["event"].as_str().unwrap())
        .collect();
    assert_eq!(events, ["advance", "advance", "advance", "done"]);
    // The new side served a share at each step, and all of it at the end.
    assert!(new.count() > 40 && legacy.count() > 20);
    let out = proxy.cli(&["rollout", "/flights", "status"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{out:?}");
    assert!(
        text.contains("rollout flights: done at 100% (step 3 of 3: 10% -> 50% -> 100%)"),
        "{text}"
    );
    assert!(text.contains("error rate"), "{text}");
}

#[test]
fn a_new_side_that_starts_failing_is_rolled_back_within_one_gate_window() {
    let failing = Arc::new(AtomicBool::new(false));
    let fails = Arc::clone(&failing);
    let legacy = Backend::start("legacy");
    let new = Backend::answering("new", move |_, _| {
        if fails.load(Ordering::Relaxed) {
            (503, "text/plain", "broken".into())
        } else {
            (200, "text/plain", "new".into())
        }
    });
    let steps = r#"{ steps = ["20%", "50%", "100%"], interval = "3s", min-requests = 30, max-error-rate = "2%" }"#;
    let proxy = Proxy::start(&config(&legacy, &new, "0%", steps));
    let _traffic = Traffic::start(proxy.port);
    wait_for(Duration::from_secs(30), "the second step", || {
        (rollout(&proxy)["shift"] == "50%").then_some(())
    });
    failing.store(true, Ordering::Relaxed);
    let broke = Instant::now();
    let back = wait_for(Duration::from_secs(10), "the rollback", || {
        let r = rollout(&proxy);
        (r["phase"] == "rolled-back" && r["shift"] != "50%").then_some(r)
    });
    // Within one gate window (3 s), with room for the sampling tick and the reload.
    assert!(
        broke.elapsed() < Duration::from_secs(4),
        "{:?}",
        broke.elapsed()
    );
    assert_eq!(back["shift"], "20%", "back to the previous step: {back}");
    let reason = back["reason"].as_str().unwrap();
    assert!(
        reason.starts_with("error rate ") && reason.contains("over the limit 2.00%"),
        "{reason}"
    );
    assert_eq!(shift_in_file(&proxy), "20%");
    // It stays rolled back, however long the side keeps failing or recovers.
    failing.store(false, Ordering::Relaxed);
    std::thread::sleep(Duration::from_secs(4));
    assert_eq!(rollout(&proxy)["shift"], "20%");
    assert_eq!(rollout(&proxy)["phase"], "rolled-back");
    let out = proxy.cli(&["rollout", "flights", "status"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("rollout flights: rolled-back at 20%"),
        "{text}"
    );
    assert!(text.contains("last: error rate"), "{text}");
    let rollback = history(&proxy)
        .into_iter()
        .find(|e| e["kind"] == "rollout" && e["event"] == "rollback")
        .unwrap();
    assert!(
        rollback["reason"]
            .as_str()
            .unwrap()
            .starts_with("50% -> 20%: error rate"),
        "{rollback}"
    );
    assert!(proxy.stderr().contains("rollout: 50% -> 20%: error rate"));
}

#[test]
fn a_restart_resumes_the_step_and_the_operator_pauses_promotes_and_aborts() {
    let (legacy, new) = (Backend::start("legacy"), Backend::start("new"));
    let steps = r#"{ steps = ["10%", "50%", "100%"], interval = "1h", min-requests = 20, max-error-rate = "5%" }"#;
    let mut proxy = Proxy::start(&config(&legacy, &new, "0%", steps));
    wait_for(Duration::from_secs(10), "the first step", || {
        (rollout(&proxy)["shift"] == "10%").then_some(())
    });
    let token = ["--token", TOKEN];
    // Without the token the action is refused and changes nothing.
    let refused = proxy.cli(&["rollout", "flights", "pause"]);
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("401"));
    assert_eq!(rollout(&proxy)["phase"], "running");
    let paused = proxy.cli(&["rollout", "flights", "pause", token[0], token[1]]);
    assert!(paused.status.success(), "{paused:?}");
    assert!(String::from_utf8_lossy(&paused.stdout).contains("paused at 10%"));
    std::thread::sleep(Duration::from_secs(2));
    let mut proxy = proxy.restart();
    let r = rollout(&proxy);
    assert_eq!(
        (r["phase"].as_str(), r["shift"].as_str()),
        (Some("paused"), Some("10%")),
        "{r}"
    );
    assert!(
        r["in_step_seconds"].as_u64().unwrap() >= 2,
        "the step went on: {r}"
    );
    // Twice is refused, not repeated.
    let again = proxy.cli(&["rollout", "flights", "pause", token[0], token[1]]);
    assert!(String::from_utf8_lossy(&again.stderr).contains("is paused: pause does nothing now"));
    // A shift by hand while running pauses it with the reason.
    proxy.cli(&["rollout", "flights", "resume", token[0], token[1]]);
    let out = proxy.cli(&["shift", "flights", "30%", token[0], token[1]]);
    assert!(out.status.success(), "{out:?}");
    let r = wait_for(Duration::from_secs(5), "paused by the shift", || {
        let r = rollout(&proxy);
        (r["phase"] == "paused").then_some(r)
    });
    assert!(
        r["reason"]
            .as_str()
            .unwrap()
            .contains("changed by hand from 10% to 30%"),
        "{r}"
    );
    let promoted = proxy.cli(&["rollout", "flights", "promote", token[0], token[1]]);
    assert!(promoted.status.success(), "{promoted:?}");
    assert!(String::from_utf8_lossy(&promoted.stdout).contains("done at 100%"));
    assert_eq!(shift_in_file(&proxy), "100%");
    let aborted = proxy.cli(&["rollout", "flights", "abort", token[0], token[1]]);
    assert!(aborted.status.success(), "{aborted:?}");
    assert_eq!(shift_in_file(&proxy), "0%");
    // Aborted stays at 0% (the rollout does not start again by itself) across a restart.
    let mut proxy = proxy.restart();
    std::thread::sleep(Duration::from_secs(1));
    let r = rollout(&proxy);
    assert_eq!(
        (r["phase"].as_str(), r["shift"].as_str()),
        (Some("aborted"), Some("0%")),
        "{r}"
    );
    let how: Vec<String> = history(&proxy)
        .iter()
        .filter(|e| e["kind"] == "rollout")
        .map(|e| {
            format!(
                "{} {}",
                e["event"].as_str().unwrap(),
                e["how"].as_str().unwrap()
            )
        })
        .collect();
    assert_eq!(
        how,
        [
            "advance rollout",
            "pause cli",
            "resume cli",
            "paused rollout",
            "promote cli",
            "abort cli"
        ],
    );
    // Even with its saved state gone: the history's last word was an abort.
    let proxy =
        proxy.restart_after(|dir| std::fs::remove_file(dir.join("strangle.rollout.json")).unwrap());
    std::thread::sleep(Duration::from_secs(1));
    let r = rollout(&proxy);
    assert_eq!(
        (r["phase"].as_str(), r["shift"].as_str()),
        (Some("paused"), Some("0%")),
        "{r}"
    );
    assert!(r["reason"].as_str().unwrap().contains("`abort`"), "{r}");
    // Unknown actions and routes without a rollout get clear refusals.
    let bad = proxy.admin("POST", "/routes/flights/rollout/skip", b"");
    assert_eq!(bad.status, 401, "mutating calls need the token first");
    let bad = Client::connect(proxy.admin_port)
        .request(
            "POST",
            "/routes/flights/rollout/skip",
            &[("authorization", &format!("Bearer {TOKEN}"))],
            b"",
        )
        .unwrap();
    assert_eq!(bad.status, 404, "{}", bad.text());
}

#[test]
fn a_rollback_the_config_file_cannot_take_is_in_force_all_the_same() {
    let failing = Arc::new(AtomicBool::new(false));
    let fails = Arc::clone(&failing);
    let legacy = Backend::start("legacy");
    let new = Backend::answering("new", move |_, _| {
        let status = if fails.load(Ordering::Relaxed) {
            503
        } else {
            200
        };
        (status, "text/plain", "new".into())
    });
    let steps = r#"{ steps = ["20%", "50%", "100%"], interval = "2s", min-requests = 20, max-error-rate = "2%" }"#;
    let proxy = Proxy::start(&config(&legacy, &new, "0%", steps));
    let _traffic = Traffic::start(proxy.port);
    wait_for(Duration::from_secs(30), "the second step", || {
        (rollout(&proxy)["shift"] == "50%").then_some(())
    });
    // (The step's own write has settled.)
    std::thread::sleep(Duration::from_millis(500));
    // The file breaks (a bad edit, say): the proxy keeps serving its last good config, and
    // the file can take no shift.
    let good = std::fs::read_to_string(&proxy.config).unwrap();
    std::fs::write(&proxy.config, format!("{good}\n[[[ not toml\n")).unwrap();
    wait_for(Duration::from_secs(5), "the reload refused", || {
        (!proxy.status()["config"]["last_reload_error"].is_null()).then_some(())
    });
    failing.store(true, Ordering::Relaxed);
    let back = wait_for(
        Duration::from_secs(10),
        &format!("the rollback in force: {}", proxy.stderr()),
        || {
            let s = proxy.status();
            let r = &s["routes"][0];
            (r["shift"] == "20%" && r["rollout"]["phase"] == "rolled-back").then(|| s.clone())
        },
    );
    assert!(
        shift_in_file_text(&proxy).contains(r#"shift = "50%""#),
        "the file could not take it"
    );
    assert_eq!(back["routes"][0]["shift_in_file"], "50%", "{back}");
    let kept = history(&proxy)
        .into_iter()
        .find(|e| e["kind"] == "rollout" && e["event"] == "in-memory")
        .unwrap_or_else(|| panic!("{back}"));
    assert!(
        kept["reason"]
            .as_str()
            .unwrap()
            .contains("rollback to 20% is in force"),
        "{kept}"
    );
    // The file fixed (still saying 50%): the rollback stays in force over the reload.
    std::fs::write(&proxy.config, &good).unwrap();
    wait_for(Duration::from_secs(5), "the reload", || {
        proxy.status()["config"]["last_reload_error"]
            .is_null()
            .then_some(())
    });
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(proxy.status()["routes"][0]["shift"], "20%");
}

fn shift_in_file_text(proxy: &Proxy) -> String {
    std::fs::read_to_string(&proxy.config).unwrap()
}
