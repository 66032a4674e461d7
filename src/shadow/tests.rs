//! The worker's bookkeeping with a scripted engine (the engines themselves are tested against
//! real upstreams in tests/it/shadow.rs).

use std::sync::atomic::Ordering;

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
    async fn send(&self, _copy: &Copy, _to: &Shared, _config: &Shadow) -> Result<Answer, String> {
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
    Arc::new(crate::upstream::Upstream::new(u, Arc::default()).unwrap())
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
        },
        answer: json(answer),
        logged_path: "/r/1".into(),
        spans: None,
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
    let shadows = Shadows::default();
    for _ in 0..QUEUE_JOBS + 7 {
        shadows.submit(job("{}", false, &[]));
    }
    assert_eq!(shadows.route("r").dropped.load(Ordering::Relaxed), 7);
    // By bytes too: a job as large as the whole queue's room does not fit.
    let fresh = Shadows::default();
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
