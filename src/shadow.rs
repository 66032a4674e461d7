//! Shadow traffic: a copy of a request sent to the side the split did not choose, in the
//! background, and the two answers compared (`compare`), so a new side is proven on real
//! traffic before it answers anyone.
//!
//! The request path only decides whether a request is shadowed and captures what it needs (the
//! request as forwarded, the answer the client got, each body up to the route's cap). When the
//! client has its answer, the account step hands a `Job` to `Shadows::submit`: a bounded queue
//! (by jobs and by bytes) that never waits; a full queue drops the job and counts it. A worker
//! (`Shadows::run`) sends each copy through an engine (`Sender`, the proxy's, with the same
//! outbound header policy and Lambda signing as the request path) and compares the answers.
//! The worker runs on a thread of its own (`strangle-shadow`, started by the first copy) at the
//! lowest CPU priority there is (Linux's `SCHED_IDLE`): it gets the CPU only when the requests'
//! threads leave it idle, and a request that becomes ready takes the CPU back from it at once.
//! Among the requests' own tasks, a copy's work (a send and a receive on loopback cost about
//! half of a whole proxied request) delayed the requests queued behind it: at 10% shadowed,
//! their p99 was 1.26 times that of no shadowing in the load benchmark; on the idle thread it is
//! 1.03 (BENCHMARKS.md). A worker kept off the CPU (by the requests, or by any other process on
//! a shared CPU) may sit for seconds wherever it was, so it holds nothing a request waits on:
//! no lock the requests take (the queue is only ever `try_send` from the request path, routes'
//! states are read lock-free, its access-log lines go through a channel to a task on the
//! requests' runtime, spans and capture records through lock-free channels), no connection
//! real traffic uses (a pool and an AWS client of its own; AWS credentials read lock-free or
//! fetched on the requests' runtime, `lambda::Caller::Shadow`), and at most half of an
//! upstream's `max-in-flight` slots (`worker::slot`). Large comparisons go to the worker's
//! blocking threads, which inherit its priority.
//! Per route: how many were shadowed, matched, mismatched, dropped and failed, the noise
//! calibration learned, and the last mismatches as redacted samples (`GET /routes/{id}/diffs`).

pub mod compare;
mod report;
mod worker;

use report::{log, redact, trace};
pub use report::{Sample, ShadowStatus, Summary};
pub use worker::{slot, WORKER};

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use async_trait::async_trait;
use bytes::Bytes;

use crate::config::shadow::Shadow;
use crate::split::Side;
use crate::telemetry::context::RequestTrace;
use crate::telemetry::spans::SpanQueue;
use crate::telemetry::AccessLogger;
use crate::upstream::Shared;
use compare::{Answer, Ignore};

/// Jobs waiting at most.
pub const QUEUE_JOBS: usize = 1024;
/// Bytes (bodies) waiting at most.
pub const QUEUE_BYTES: usize = 64 << 20;
/// Bytes held by the captures of requests still being answered, at most: past it a request is
/// not shadowed (counted as dropped), so many large shadowed answers at once cannot exhaust
/// memory before the queue's own bound applies.
pub const CAPTURE_BYTES: usize = 64 << 20;
/// Copies in flight at once.
pub const CONCURRENCY: usize = 8;
/// A copy still queued after this long is not sent (counted as dropped): a write copied long
/// after its request is a surprise, and the config may have changed meanwhile.
pub const MAX_AGE: std::time::Duration = std::time::Duration::from_secs(60);
/// Mismatch samples kept per route.
pub const SAMPLES: usize = 50;
/// Noise paths learned per route at most.
pub const MAX_LEARNED: usize = 256;
/// The first this many shadowed requests of a route calibrate, then one in `CALIBRATE_EVERY`.
const CALIBRATE_FIRST: u64 = 20;
const CALIBRATE_EVERY: u64 = 10;

/// The request as it is copied: what every upstream kind needs to send it again.
#[derive(Debug, Clone)]
pub struct Copy {
    pub method: http::Method,
    /// The routed (canonical) path, before any upstream base path.
    pub path: String,
    /// `?...` or empty.
    pub query: String,
    pub version: http::Version,
    /// The client's headers after the outbound policy, plus `x-strangle-shadow: 1`.
    pub headers: http::HeaderMap,
    pub body: Bytes,
    /// For a Lambda event.
    pub source_ip: Option<std::net::IpAddr>,
    pub request_id: Option<String>,
    pub route_path: String,
    pub claims: Option<Arc<crate::auth::Claims>>,
    /// The copy's own trace context (a span under the request's), when the request was traced;
    /// the copy's trace headers name its client span.
    pub trace: Option<RequestTrace>,
    /// The other side's plugins: its answer is dressed by them as a client's would be.
    pub plugins: Arc<[Arc<dyn strangle_plugin::Plugin>]>,
}

impl Copy {
    /// The copy's answer as its side's response plugins make it (headers changed in place).
    pub fn dressed(
        &self,
        headers: &mut dyn strangle_plugin::Headers,
        status: http::StatusCode,
    ) -> u16 {
        let mut status = status;
        crate::config::plugin::response(
            &self.plugins,
            &self.method,
            &self.path,
            &self.headers,
            &mut status,
            headers,
        );
        status.as_u16()
    }
}

/// One shadowed request, once its client has the answer.
pub struct Job {
    pub route: String,
    pub config: Arc<Shadow>,
    /// The side that answered the client.
    pub answered_by: Side,
    /// Where the copy goes (the other side), and the legacy side (calibration asks it twice).
    pub other: Shared,
    pub legacy: Shared,
    pub copy: Copy,
    pub answer: Answer,
    /// The path as the access log writes it (query redacted), for the samples.
    pub logged_path: String,
    /// Where a traced copy's spans go.
    pub spans: Option<Arc<SpanQueue>>,
    /// Response headers whose values the samples never show (`[telemetry] redact-headers`).
    pub redact_headers: Arc<[String]>,
    /// `[telemetry] redact-query`, for what the capture spool keeps of the query and body.
    pub redact_query: Arc<[String]>,
    /// The capture spool a mismatch is kept in (`capture = { on = ["mismatch"] }`).
    pub keep: Option<Arc<crate::capture::Spool>>,
    pub queued_at: std::time::Instant,
}

impl Job {
    fn bytes(&self) -> usize {
        self.copy.body.len() + self.answer.body.len()
    }
}

/// Sends a copy to an upstream and captures its answer as `config` says (the listed headers,
/// the body up to `max-body`, its bytes taken from `capture`).
#[async_trait]
pub trait Sender: Send + Sync {
    async fn send(
        &self,
        copy: &Copy,
        to: &Shared,
        config: &Shadow,
        capture: &mut Capture,
    ) -> Result<Answer, String>;

    /// Called once on the worker's thread before its first copy, with the runtime of the
    /// request path that started it.
    fn attach(&self, _home: tokio::runtime::Handle) {}

    /// Called every 10 s on the worker's thread: drop what it keeps and can no longer use.
    fn tidy(&self) {}
}

/// Whether a queued job is still to be sent under the config now in force (its route still
/// shadows its method to the same upstream).
pub type Still = Box<dyn Fn(&Job) -> bool + Send + Sync>;

/// A route's shadow counters, samples and learned noise (kept by route id across reloads).
#[derive(Debug, Default)]
pub struct RouteShadow {
    pub shadowed: AtomicU64,
    pub matched: AtomicU64,
    pub mismatched: AtomicU64,
    pub dropped: AtomicU64,
    pub errors: AtomicU64,
    pub calibrated: AtomicU64,
    /// Shared with the comparisons in progress (a copy per comparison would be 256 strings).
    learned: Mutex<Arc<BTreeSet<String>>>,
    samples: Mutex<VecDeque<Sample>>,
}

impl RouteShadow {
    pub fn status(&self, config: &Shadow) -> ShadowStatus {
        let n = |c: &AtomicU64| c.load(Ordering::Relaxed);
        let (matched, mismatched) = (n(&self.matched), n(&self.mismatched));
        let compared = matched + mismatched;
        ShadowStatus {
            percent: config.percent.to_string(),
            shadowed: n(&self.shadowed),
            matched,
            mismatched,
            mismatch_rate: if compared == 0 {
                0.0
            } else {
                mismatched as f64 / compared as f64
            },
            dropped: n(&self.dropped),
            errors: n(&self.errors),
            calibrated: n(&self.calibrated),
            learned: self.learned(),
        }
    }

    pub fn learned(&self) -> Vec<String> {
        lock(&self.learned).iter().cloned().collect()
    }

    /// The newest mismatches, newest first.
    pub fn samples(&self) -> Vec<Sample> {
        lock(&self.samples).iter().rev().cloned().collect()
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Every route's shadow state and the queue of copies to send.
pub struct Shadows {
    /// Read without a lock (the worker and the requests both look routes up; a new route's
    /// state is added by a compare-and-swap).
    routes: arc_swap::ArcSwap<HashMap<String, Arc<RouteShadow>>>,
    /// Bytes the request path's captures hold now (`Capture`).
    capturing: Arc<AtomicUsize>,
    queue: tokio::sync::mpsc::Sender<Job>,
    receiver: Mutex<Option<tokio::sync::mpsc::Receiver<Job>>>,
    queued_bytes: Arc<AtomicUsize>,
    /// What the worker needs, given once at start-up (`start_with`); the worker itself starts
    /// with the first copy, on the runtime that submits it.
    runner: std::sync::OnceLock<Runner>,
    started: std::sync::atomic::AtomicBool,
    /// Where the worker's access-log lines go once it runs on its thread (`start_worker`).
    lines: std::sync::OnceLock<tokio::sync::mpsc::Sender<Vec<u8>>>,
}

/// The worker's engine, access log and check of the config now in force.
struct Runner {
    sender: Arc<dyn Sender>,
    access: Arc<AccessLogger>,
    still: Arc<dyn Fn(&Job) -> bool + Send + Sync>,
}

impl Default for Shadows {
    fn default() -> Shadows {
        let (queue, receiver) = tokio::sync::mpsc::channel(QUEUE_JOBS);
        Shadows {
            routes: arc_swap::ArcSwap::default(),
            capturing: Arc::default(),
            queue,
            receiver: Mutex::new(Some(receiver)),
            queued_bytes: Arc::default(),
            runner: std::sync::OnceLock::new(),
            started: std::sync::atomic::AtomicBool::new(false),
            lines: std::sync::OnceLock::new(),
        }
    }
}

impl std::fmt::Debug for Shadows {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shadows").finish_non_exhaustive()
    }
}

/// The bytes one request's capture holds, taken from the process's `CAPTURE_BYTES` and given
/// back when it drops.
#[derive(Debug)]
pub struct Capture {
    budget: Arc<AtomicUsize>,
    held: usize,
}

impl Capture {
    /// Takes `n` more bytes; false (and nothing taken) when the budget is spent.
    pub fn grow(&mut self, n: usize) -> bool {
        let now = self.budget.fetch_add(n, Ordering::Relaxed) + n;
        if now > CAPTURE_BYTES {
            self.budget.fetch_sub(n, Ordering::Relaxed);
            return false;
        }
        self.held += n;
        true
    }
}

impl Drop for Capture {
    fn drop(&mut self) {
        self.budget.fetch_sub(self.held, Ordering::Relaxed);
    }
}

impl Shadows {
    /// A capture for one shadowed request, holding nothing yet.
    pub fn capture(&self) -> Capture {
        Capture {
            budget: Arc::clone(&self.capturing),
            held: 0,
        }
    }

    /// The state of route `id` (made on first use).
    pub fn route(&self, id: &str) -> Arc<RouteShadow> {
        if let Some(r) = self.routes.load().get(id) {
            return Arc::clone(r);
        }
        self.routes.rcu(|routes| {
            let mut routes = HashMap::clone(routes);
            routes
                .entry(id.to_string())
                .or_insert_with(|| Arc::new(RouteShadow::default()));
            routes
        });
        self.routes
            .load()
            .get(id)
            .map_or_else(|| Arc::new(RouteShadow::default()), Arc::clone)
    }

    /// The routes that have shadow state, by id.
    pub fn all(&self) -> Vec<(String, Arc<RouteShadow>)> {
        let mut all: Vec<_> = self
            .routes
            .load()
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        all.sort_by(|a, b| a.0.cmp(&b.0));
        all
    }

    /// Gives the worker what it needs (once; later calls change nothing).
    pub fn start_with(&self, sender: Arc<dyn Sender>, access: Arc<AccessLogger>, still: Still) {
        let _ = self.runner.set(Runner {
            sender,
            access,
            still: Arc::from(still),
        });
    }

    /// The sender copies go out through (once started): what `POST /routes/{id}/replay` sends
    /// a kept request with.
    pub fn sender(&self) -> Option<Arc<dyn Sender>> {
        self.runner.get().map(|r| Arc::clone(&r.sender))
    }

    /// Queues a job; never waits. A full queue (by jobs or bytes) drops it, counted. The first
    /// job starts the worker's thread.
    pub fn submit(self: &Arc<Self>, job: Job) {
        self.enqueue(job);
        if self.started.load(Ordering::Relaxed) {
            return;
        }
        let (Some(runner), Ok(home)) = (self.runner.get(), tokio::runtime::Handle::try_current())
        else {
            return;
        };
        if !self.started.swap(true, Ordering::Relaxed) {
            if let Err(e) = self.start_worker(runner, home) {
                // The queue fills and its drops are counted; the next copy tries again.
                tracing::error!("the shadow worker's thread did not start: {e}");
                self.started.store(false, Ordering::Relaxed);
            }
        }
    }

    fn enqueue(&self, job: Job) {
        let bytes = job.bytes();
        let queued = self.queued_bytes.fetch_add(bytes, Ordering::Relaxed) + bytes;
        if queued > QUEUE_BYTES {
            self.queued_bytes.fetch_sub(bytes, Ordering::Relaxed);
            self.route(&job.route)
                .dropped
                .fetch_add(1, Ordering::Relaxed);
            return;
        }
        if let Err(e) = self.queue.try_send(job) {
            self.queued_bytes.fetch_sub(bytes, Ordering::Relaxed);
            let job = match e {
                tokio::sync::mpsc::error::TrySendError::Full(j)
                | tokio::sync::mpsc::error::TrySendError::Closed(j) => j,
            };
            self.route(&job.route)
                .dropped
                .fetch_add(1, Ordering::Relaxed);
        }
    }

    /// The worker: sends each queued copy (at most `CONCURRENCY` at once), compares, and
    /// writes an access-log line for it (`"shadow": OUTCOME`). Runs for the process's life; a
    /// second call returns at once.
    pub async fn run(
        self: Arc<Self>,
        sender: Arc<dyn Sender>,
        access: Arc<AccessLogger>,
        still: Still,
    ) {
        let Some(mut jobs) = lock(&self.receiver).take() else {
            return;
        };
        let slots = Arc::new(tokio::sync::Semaphore::new(CONCURRENCY));
        while let Some(job) = jobs.recv().await {
            let Ok(slot) = slots.clone().acquire_owned().await else {
                return;
            };
            // Too old, or its route no longer shadows it (a reload): not sent.
            if job.queued_at.elapsed() > MAX_AGE || !still(&job) {
                self.queued_bytes.fetch_sub(job.bytes(), Ordering::Relaxed);
                self.route(&job.route)
                    .dropped
                    .fetch_add(1, Ordering::Relaxed);
                continue;
            }
            let (me, sender, access) = (self.clone(), sender.clone(), access.clone());
            tokio::spawn(async move {
                let (started, wall) = (std::time::Instant::now(), SystemTime::now());
                let copied = me.process(&job, &*sender).await;
                log(&access, me.lines.get(), &job, &copied, started.elapsed());
                trace(&job, &copied, wall);
                // Its bytes count against the queue's bound until it is done.
                me.queued_bytes.fetch_sub(job.bytes(), Ordering::Relaxed);
                drop(slot);
            });
        }
    }

    /// Sends one copy and compares its answer with the client's.
    pub async fn process(&self, job: &Job, sender: &dyn Sender) -> Copied {
        let state = self.route(&job.route);
        let Ok(_slot) = slot(&job.other).inspect_err(|why| {
            state.dropped.fetch_add(1, Ordering::Relaxed);
            tracing::debug!(route = %job.route, "shadow copy not sent: {why}");
        }) else {
            return Copied {
                outcome: "dropped",
                status: 0,
                error: None,
            };
        };
        let n = state.shadowed.fetch_add(1, Ordering::Relaxed);
        let mut capture = self.capture();
        let other = match sender
            .send(&job.copy, &job.other, &job.config, &mut capture)
            .await
        {
            Ok(a) => a,
            Err(e) => {
                state.errors.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(route = %job.route, "shadow copy failed: {e}");
                return Copied {
                    outcome: "error",
                    status: 0,
                    error: Some(e),
                };
            }
        };
        let status = other.status;
        let (legacy, new) = match job.answered_by {
            Side::Legacy | Side::Default => (&job.answer, &other),
            Side::New => (&other, &job.answer),
        };
        // Calibration: the legacy side asked again; where its two answers differ is noise.
        // Only for safe methods: a write is never made a third time.
        let calibrate = job.config.calibrate
            && job.copy.method.is_safe()
            && (n < CALIBRATE_FIRST || n % CALIBRATE_EVERY == 0);
        if !job.config.calibrate {
            // What calibration learned applies only while it is on.
            *lock(&state.learned) = Arc::default();
        }
        if calibrate {
            let again = match slot(&job.legacy) {
                Ok(_slot) => {
                    sender
                        .send(&job.copy, &job.legacy, &job.config, &mut capture)
                        .await
                }
                Err(why) => Err(why),
            };
            if let Ok(again) = again {
                state.calibrated.fetch_add(1, Ordering::Relaxed);
                let first = legacy.clone();
                let big = first.body.len().max(again.body.len()) > INLINE;
                let noise = off_thread(big, move || compare::noise(&first, &again))
                    .await
                    .unwrap_or_default();
                let mut guard = lock(&state.learned);
                let new_noise = noise.iter().any(|p| !guard.contains(p));
                if new_noise && guard.len() < MAX_LEARNED {
                    // Copied only when it changes and a comparison still holds the old set.
                    let learned = Arc::make_mut(&mut guard);
                    for path in noise {
                        if learned.len() >= MAX_LEARNED {
                            break;
                        }
                        learned.insert(path);
                    }
                }
            }
        }
        let learned = Arc::clone(&lock(&state.learned));
        let big = legacy.body.len().max(new.body.len()) > INLINE;
        let (l, n, config) = (legacy.clone(), new.clone(), Arc::clone(&job.config));
        let outcome = off_thread(big, move || {
            let ignore = Ignore {
                paths: &config.ignore,
                learned: &learned,
            };
            compare::compare(&l, &n, ignore)
        })
        .await;
        let Some(outcome) = outcome else {
            state.errors.fetch_add(1, Ordering::Relaxed);
            return Copied {
                outcome: "error",
                status,
                error: Some("the comparison did not finish".into()),
            };
        };
        if outcome.matched() {
            state.matched.fetch_add(1, Ordering::Relaxed);
            return Copied {
                outcome: "matched",
                status,
                error: None,
            };
        }
        state.mismatched.fetch_add(1, Ordering::Relaxed);
        let sample = Sample {
            at: humantime::format_rfc3339_millis(SystemTime::now()).to_string(),
            method: job.copy.method.to_string(),
            path: job.logged_path.clone(),
            answered_by: match job.answered_by {
                Side::New => "new",
                _ => "legacy",
            },
            legacy: legacy.into(),
            new: new.into(),
            body: outcome.body,
            differences: redact(outcome.differences, &job.redact_headers),
            count: outcome.count,
        };
        if let Some(spool) = &job.keep {
            spool.keep(&report::kept(job, &other, &sample.differences));
        }
        let mut samples = lock(&state.samples);
        samples.push_back(sample);
        while samples.len() > SAMPLES {
            samples.pop_front();
        }
        Copied {
            outcome: "mismatched",
            status,
            error: None,
        }
    }
}

/// Bodies up to this are compared on the worker's task; larger ones on a blocking thread, so a
/// large document never holds up the requests sharing the runtime.
const INLINE: usize = 64 << 10;

/// Runs `f` here, or on a blocking thread when `big` (`None`: that thread never answered, as
/// when the runtime is shutting down).
async fn off_thread<T: Send + 'static>(
    big: bool,
    f: impl FnOnce() -> T + Send + 'static,
) -> Option<T> {
    if !big {
        return Some(f());
    }
    tokio::task::spawn_blocking(f).await.ok()
}

/// How a copy went, for its access-log line.
#[derive(Debug)]
pub struct Copied {
    pub outcome: &'static str,
    /// The copy's answer's status (0: none).
    pub status: u16,
    pub error: Option<String>,
}

#[cfg(test)]
mod tests;
