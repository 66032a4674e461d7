//! The worker's bookkeeping with a scripted engine (the engines themselves are tested against
//! real upstreams in tests/it/shadow.rs).

use std::sync::atomic::Ordering;

use super::compare::Difference;
use super::*;
use crate::config::shadow::DEFAULT_MAX_BODY;
use crate::split::Shift;

/// Answers every copy with the next of its scripted bodies (the last one again when they run
/// out), as JSON; an empty script fails.
struct Scripted {
    bodies: Mutex<VecDeque<&'static str>>,
    last: Mutex<&'static str>,
    calls: AtomicU64,
}

impl Scripted {
    fn new(bodies: &[&'static str]) -> Scripted {
        Scripted {
            bodies: Mutex::new(bodies.iter().copied().collect()),
            last: Mutex::new(""),
            calls: AtomicU64::new(0),
        }
    }
}

#[async_trait]
impl Sender for Scripted {
    async fn send(
        &self,
        _copy: &Copy,
        _to: &Shared,
        _config: &Shadow,
        _capture: &mut Capture,
    ) -> Result<Answer, String> {
        self.calls.fetch_add(1, Ordering::Relaxed);
        let next = lock(&self.bodies).pop_front();
        let body = match next {
            Some(b) => {
                *lock(&self.last) = b;
                b
            }
            None => *lock(&self.last),
        };
        if body.is_empty() {
            return Err("connection refused".into());
        }
        Ok(json(body))
    }
}

fn json(body: &'static str) -> Answer {
    Answer {
        status: 200,
        headers: Vec::new(),
        content_type: Some("application/json".into()),
        body: Bytes::from_static(body.as_bytes()),
        truncated: false,
    }
}

fn upstream() -> Shared {
    static ONE: std::sync::OnceLock<Shared> = std::sync::OnceLock::new();
    ONE.get_or_init(make_upstream).clone()
}

fn make_upstream() -> Shared {
    let config = crate::config::parse(
        "t.toml",
        "[server]\nlisten = [\"127.0.0.1:1\"]\ndefault = \"u\"\n[upstreams.u]\naddresses = [\"127.0.0.1:2\"]\n",
        std::path::Path::new("."),
    )
    .unwrap();
    let u = &config.upstreams["u"];
    Arc::new(crate::upstream::Upstream::new(u, Arc::default(), None))
}

fn job(answer: &'static str, calibrate: bool, ignore: &[&str]) -> Job {
    let up = upstream();
    Job {
        route: "r".into(),
        config: Arc::new(Shadow {
            percent: Shift::ALL,
            methods: vec![http::Method::GET],
            ignore: ignore.iter().map(|p| p.parse().unwrap()).collect(),
            headers: Vec::new(),
            calibrate,
            max_body: DEFAULT_MAX_BODY,
        }),
        answered_by: Side::Legacy,
        other: up.clone(),
        legacy: up,
        copy: Copy {
            method: http::Method::GET,
            path: "/r/1".into(),
            query: String::new(),
            version: http::Version::HTTP_11,
            headers: http::HeaderMap::new(),
            body: Bytes::new(),
            source_ip: None,
            request_id: None,
            route_path: "/r".into(),
            claims: None,
            trace: None,
            plugins: Arc::from(Vec::new()),
        },
        answer: json(answer),
        logged_path: "/r/1".into(),
        spans: None,
        redact_headers: Arc::from(Vec::new()),
        keep: None,
        redact_query: Arc::from(Vec::new()),
        queued_at: std::time::Instant::now(),
    }
}

#[tokio::test]
async fn matches_mismatches_and_failures_are_counted_and_mismatches_sampled() {
    let shadows = Shadows::default();
    let new = Scripted::new(&[r#"{"a": 1}"#, r#"{"a": 2}"#, ""]);
    shadows.process(&job(r#"{"a": 1}"#, false, &[]), &new).await;
    shadows.process(&job(r#"{"a": 1}"#, false, &[]), &new).await;
    shadows.process(&job(r#"{"a": 1}"#, false, &[]), &new).await;
    let r = shadows.route("r");
    let counts = |r: &RouteShadow| {
        [&r.shadowed, &r.matched, &r.mismatched, &r.errors].map(|c| c.load(Ordering::Relaxed))
    };
    assert_eq!(counts(&r), [3, 1, 1, 1]);
    let samples = r.samples();
    assert_eq!(samples.len(), 1);
    assert_eq!(samples[0].differences[0].path, "$.a");
    assert_eq!(samples[0].differences[0].legacy, "1");
    assert_eq!(samples[0].differences[0].new, "2");
    assert_eq!(samples[0].answered_by, "legacy");
    // Samples are bounded.
    let always_wrong = Scripted::new(&[r#"{"a": 9}"#]);
    for _ in 0..SAMPLES + 5 {
        shadows
            .process(&job(r#"{"a": 1}"#, false, &[]), &always_wrong)
            .await;
    }
    assert_eq!(r.samples().len(), SAMPLES);
}

#[tokio::test]
async fn calibration_learns_what_differs_between_two_legacy_answers() {
    let shadows = Shadows::default();
    // Each call answers the next body: the copy to new, then legacy again (calibration).
    let sender = Scripted::new(&[
        r#"{"id": 1, "now": "10:00:01", "req": "b"}"#,
        r#"{"id": 1, "now": "10:00:02", "req": "c"}"#,
    ]);
    shadows
        .process(
            &job(r#"{"id": 1, "now": "10:00:00", "req": "a"}"#, true, &[]),
            &sender,
        )
        .await;
    let r = shadows.route("r");
    assert_eq!(r.learned(), ["$.now", "$.req"]);
    assert_eq!(r.calibrated.load(Ordering::Relaxed), 1);
    assert_eq!(r.matched.load(Ordering::Relaxed), 1, "{:?}", r.samples());
    assert_eq!(sender.calls.load(Ordering::Relaxed), 2);
    // Without calibration the same answers mismatch, unless the paths are ignored.
    let plain = Shadows::default();
    let sender = Scripted::new(&[r#"{"id": 1, "now": "10:00:01", "req": "b"}"#]);
    let j = job(r#"{"id": 1, "now": "10:00:00", "req": "a"}"#, false, &[]);
    plain.process(&j, &sender).await;
    assert_eq!(plain.route("r").mismatched.load(Ordering::Relaxed), 1);
    let j = job(
        r#"{"id": 1, "now": "10:00:00", "req": "a"}"#,
        false,
        &["$.now", "$.req"],
    );
    plain.process(&j, &sender).await;
    assert_eq!(plain.route("r").matched.load(Ordering::Relaxed), 1);
}

#[tokio::test]
async fn a_full_queue_drops_and_counts_and_never_waits() {
    let shadows = Arc::new(Shadows::default());
    for _ in 0..QUEUE_JOBS + 7 {
        shadows.submit(job("{}", false, &[]));
    }
    assert_eq!(shadows.route("r").dropped.load(Ordering::Relaxed), 7);
    // By bytes too: a job as large as the whole queue's room does not fit.
    let fresh = Arc::new(Shadows::default());
    let mut big = job("{}", false, &[]);
    big.copy.body = Bytes::from(vec![b'x'; QUEUE_BYTES + 1]);
    fresh.submit(big);
    assert_eq!(fresh.route("r").dropped.load(Ordering::Relaxed), 1);
    fresh.submit(job("{}", false, &[]));
    assert_eq!(fresh.route("r").dropped.load(Ordering::Relaxed), 1);
}

#[test]
fn captures_share_one_budget_and_give_it_back_when_they_drop() {
    let shadows = Shadows::default();
    let mut a = shadows.capture();
    assert!(a.grow(CAPTURE_BYTES - 10));
    let mut b = shadows.capture();
    assert!(!b.grow(11), "over the budget: nothing taken");
    assert!(b.grow(10));
    drop(a);
    let mut c = shadows.capture();
    assert!(c.grow(CAPTURE_BYTES - 10));
    drop((b, c));
    assert!(shadows.capture().grow(CAPTURE_BYTES));
}

#[tokio::test]
async fn calibration_never_learns_an_outcome_and_forgets_when_turned_off() {
    let shadows = Shadows::default();
    // The monolith's second answer is another document: nothing to learn from it.
    let sender = Scripted::new(&[r#"{"a": 2}"#, r#"[1, 2, 3]"#]);
    shadows
        .process(&job(r#"{"a": 1}"#, true, &[]), &sender)
        .await;
    let r = shadows.route("r");
    assert!(r.learned().is_empty());
    assert_eq!(r.mismatched.load(Ordering::Relaxed), 1);
    // Learned noise applies only while calibration is on.
    let sender = Scripted::new(&[r#"{"a": 1, "t": 2}"#, r#"{"a": 1, "t": 3}"#]);
    shadows
        .process(&job(r#"{"a": 1, "t": 1}"#, true, &[]), &sender)
        .await;
    assert_eq!(r.learned(), ["$.t"]);
    let sender = Scripted::new(&[r#"{"a": 1, "t": 9}"#]);
    shadows
        .process(&job(r#"{"a": 1, "t": 1}"#, false, &[]), &sender)
        .await;
    assert!(r.learned().is_empty());
    assert_eq!(r.mismatched.load(Ordering::Relaxed), 2);
}

#[tokio::test]
async fn samples_never_show_secret_values() {
    let shadows = Shadows::default();
    let sender = Scripted::new(&[
        r#"{"token": "new-secret", "user": {"api-key": "k2", "card": "4111"}, "n": 2}"#,
    ]);
    let mut j = job(
        r#"{"token": "old-secret", "user": {"api-key": "k1", "card": "4000"}, "n": 1}"#,
        false,
        &[],
    );
    j.redact_headers = Arc::from(vec!["x-session".to_string()]);
    shadows.process(&j, &sender).await;
    let sample = &shadows.route("r").samples()[0];
    let shown = serde_json::to_string(sample).unwrap();
    for secret in ["secret", "k1", "k2", "4111", "4000"] {
        assert!(!shown.contains(secret), "{secret} in {shown}");
    }
    let paths: Vec<&str> = sample.differences.iter().map(|d| d.path.as_str()).collect();
    assert_eq!(paths, ["$.n", "$.token", "$.user.api-key", "$.user.card"]);
    assert_eq!(sample.differences[0].new, "2", "other values show");
    let headers = redact(
        vec![
            Difference {
                path: "header:set-cookie".into(),
                legacy: "sid=1".into(),
                new: "sid=2".into(),
            },
            Difference {
                path: "header:x-session".into(),
                legacy: "a".into(),
                new: "b".into(),
            },
            Difference {
                path: "header:etag".into(),
                legacy: "1".into(),
                new: "2".into(),
            },
        ],
        &["x-session".to_string()],
    );
    let values: Vec<&str> = headers.iter().map(|d| d.legacy.as_str()).collect();
    assert_eq!(values, ["[redacted]", "[redacted]", "1"]);
}

#[tokio::test]
async fn queued_copies_the_config_no_longer_wants_or_too_old_are_dropped() {
    let shadows = Arc::new(Shadows::default());
    shadows.submit(job("{}", false, &[]));
    let mut old = job("{}", false, &[]);
    old.queued_at = std::time::Instant::now() - MAX_AGE - std::time::Duration::from_secs(1);
    old.route = "old".into();
    shadows.submit(old);
    let sender = Arc::new(Scripted::new(&["{}"]));
    let access = Arc::new(AccessLogger::new(crate::config::AccessLog::Off));
    let worker = tokio::spawn(Arc::clone(&shadows).run(
        sender.clone(),
        access,
        Box::new(|j: &Job| j.route != "r"),
    ));
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    worker.abort();
    assert_eq!(
        shadows.route("r").dropped.load(Ordering::Relaxed),
        1,
        "no longer shadowed"
    );
    assert_eq!(
        shadows.route("old").dropped.load(Ordering::Relaxed),
        1,
        "too old"
    );
    assert_eq!(sender.calls.load(Ordering::Relaxed), 0);
}
