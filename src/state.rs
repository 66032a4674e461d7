//! The live routing snapshot and how it is replaced.
//!
//! A request takes one `Arc<Snapshot>` when it starts and keeps it to the end, whatever reloads
//! happen meanwhile. A reload builds the next snapshot off the request path (parsing, DNS,
//! health-check set-up) and swaps it in with one atomic store; a broken file leaves the last good
//! snapshot serving and is counted and remembered.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;

mod bounded;
mod overrides;
mod restart;
mod running;
pub use bounded::run_bounded;
pub use overrides::Overrides;
pub use restart::restart_only_changes;
use restart::warn_on_restart_only_changes;
use running::Running;

use crate::auth::Verifier;
use crate::config::{self, Config, Route};
use crate::history::Cause;
use crate::limits::RateLimiter;
use crate::routing::{ByHost, RouteTable};
use crate::split::{route_seed, Shift, StickyKey};
use crate::stats::{Registry, RouteStats, DEFAULT_ROUTE};
use crate::telemetry::context::TracePolicy;
use crate::telemetry::spans::SpanQueue;
use crate::upstream::{Shared, Upstream};

/// A route ready for the request path: upstreams resolved to `Arc`s, hash seed precomputed.
#[derive(Debug)]
pub struct LiveRoute {
    pub id: String,
    /// The route's path pattern (`http.route`, the Lambda event's `routeKey`).
    pub path: String,
    pub legacy: Option<Shared>,
    pub new: Option<Shared>,
    pub shift: Shift,
    pub sticky: StickyKey,
    pub seed: u64,
    pub allow_override: bool,
    pub stats: Arc<RouteStats>,
    pub auth: Option<Arc<Verifier>>,
    pub rate_limit: Option<Arc<RateLimiter>>,
    pub new_when: Option<config::ClaimRule>,
    pub override_when: Option<config::ClaimRule>,
}

/// Everything the request path reads, immutable once built.
#[derive(Debug)]
pub struct Snapshot {
    pub config: Config,
    pub table: RouteTable,
    pub routes: Vec<LiveRoute>,
    pub upstreams: HashMap<String, Shared>,
    pub default: Option<Shared>,
    /// `[[server.defaults]]`: the default upstream of particular hosts, before `default`.
    pub host_defaults: ByHost<Option<Shared>>,
    /// Counters for traffic that matched no route.
    pub default_stats: Arc<RouteStats>,
    /// One verifier per `[auth.NAME]`.
    pub verifiers: HashMap<String, Arc<Verifier>>,
    /// Every header a verified claim is forwarded in: client copies are always stripped.
    pub identity_headers: Vec<http::HeaderName>,
    /// What requests do about traces (`None`: tracing off).
    pub trace: Option<TracePolicy>,
    /// Where sampled requests leave their spans.
    pub spans: Arc<SpanQueue>,
    /// What the legacy sides and the default upstream serve, by path template (kept across
    /// reloads: each snapshot takes the previous one's).
    pub inventory: Arc<crate::inventory::Inventory>,
    /// Shadow traffic's queue and per-route results (the same across reloads).
    pub shadows: Arc<crate::shadow::Shadows>,
    /// Capture spools by directory (the same across reloads).
    pub captures: Arc<crate::capture::Spools>,
    /// `[telemetry] redact-headers`, for what shadow samples show.
    pub redact_headers: Arc<[String]>,
    /// `[telemetry] redact-query`, for what the capture spool keeps.
    pub redact_query: Arc<[String]>,
    /// Where requests leave their access-log records for the OTLP log exporter, when the
    /// config exports logs (`[telemetry.otlp] logs = true`).
    pub logs: Option<Arc<crate::telemetry::export::logs::LogQueue>>,
    pub loaded_at: SystemTime,
}

#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error(transparent)]
    Config(#[from] config::ConfigErrors),
    #[error("auth `{0}`: {1}")]
    Auth(String, String),
}

impl Snapshot {
    /// Route `i`'s counters as a rollout judges them. Shadow results are read only on a route
    /// that shadows: asking for them makes a route's shadow state, which `/metrics` then lists.
    pub fn rollout_counters(&self, i: usize) -> crate::rollout::Counters {
        let shadow = self.config.routes[i]
            .shadow
            .is_some()
            .then(|| self.shadows.route(&self.routes[i].id));
        crate::rollout::Counters::of(&self.routes[i].stats, shadow.as_deref())
    }
}

impl Snapshot {
    /// Builds a snapshot, reusing the upstreams of `previous` whose config is unchanged.
    pub fn build(
        config: Config,
        previous: Option<&Snapshot>,
        registry: &Registry,
    ) -> Result<Snapshot, BuildError> {
        let mut upstreams = HashMap::with_capacity(config.upstreams.len());
        for (name, cfg) in &config.upstreams {
            let before = previous.and_then(|p| p.upstreams.get(name));
            let upstream = match before.filter(|u| u.config == *cfg) {
                Some(u) => Arc::clone(u),
                None => Arc::new(Upstream::new(
                    cfg,
                    registry.upstream(name),
                    before.map(|u| &**u),
                )),
            };
            upstreams.insert(name.clone(), upstream);
        }
        let mut verifiers = HashMap::with_capacity(config.auth.len());
        for (name, cfg) in &config.auth {
            let reused = previous
                .and_then(|p| p.verifiers.get(name))
                .filter(|v| v.serves(cfg))
                .cloned();
            let verifier = match reused {
                Some(v) => v,
                None => Arc::new(
                    Verifier::new(cfg.clone()).map_err(|e| BuildError::Auth(name.clone(), e))?,
                ),
            };
            verifiers.insert(name.clone(), verifier);
        }
        let mut identity_headers: Vec<http::HeaderName> = config
            .auth
            .values()
            .flat_map(|a| a.forward_claims.iter().map(|(_, h)| h.clone()))
            .collect();
        identity_headers.sort_by(|a, b| a.as_str().cmp(b.as_str()));
        identity_headers.dedup();
        let get = |name: &Option<String>| name.as_ref().and_then(|n| upstreams.get(n)).cloned();
        let routes = config
            .routes
            .iter()
            .map(|r: &Route| LiveRoute {
                id: r.id.clone(),
                path: r.path.clone(),
                legacy: get(&r.legacy),
                new: get(&r.new),
                shift: r.shift,
                sticky: r.sticky.clone(),
                seed: route_seed(&r.id),
                allow_override: r.allow_override,
                stats: registry.route(&r.id),
                auth: r.auth.as_ref().and_then(|a| verifiers.get(a)).cloned(),
                new_when: r.new_when.clone(),
                override_when: r.override_when.clone(),
                // Buckets survive a reload that leaves the route's limit as it was.
                rate_limit: r.rate_limit.as_ref().map(|cfg| {
                    previous
                        .and_then(|p| p.routes.iter().find(|o| o.id == r.id))
                        .and_then(|o| o.rate_limit.clone())
                        .filter(|l| l.config == *cfg)
                        .unwrap_or_else(|| Arc::new(RateLimiter::new(cfg.clone())))
                }),
            })
            .collect();
        let table = RouteTable::new(config.routes.iter().map(Route::key).collect());
        let default = get(&config.server.default);
        let host_defaults = (config.server.defaults.iter())
            .flat_map(|d| {
                d.hosts
                    .iter()
                    .map(|h| (h, upstreams.get(&d.upstream).cloned()))
            })
            .collect();
        let trace = config.telemetry.otlp.as_ref().map(|o| {
            TracePolicy::propagating(o.sample_ratio, o.trust_incoming, o.tracecontext, o.xray)
        });
        let export_logs = config.telemetry.otlp.as_ref().is_some_and(|o| o.logs);
        let logs = export_logs.then(|| Arc::clone(&registry.logs));
        let redact_headers = config
            .telemetry
            .redact_headers
            .iter()
            .map(|h| h.as_str().to_string())
            .collect();
        let redact_query = config.telemetry.redact_query.clone().into();
        Ok(Snapshot {
            redact_query,
            config,
            table,
            routes,
            upstreams,
            default,
            host_defaults,
            default_stats: registry.route(DEFAULT_ROUTE),
            verifiers,
            identity_headers,
            trace,
            spans: Arc::clone(&registry.spans),
            inventory: previous.map_or_else(Arc::default, |p| Arc::clone(&p.inventory)),
            shadows: previous.map_or_else(Arc::default, |p| Arc::clone(&p.shadows)),
            captures: previous.map_or_else(Arc::default, |p| Arc::clone(&p.captures)),
            redact_headers,
            logs,
            loaded_at: SystemTime::now(),
        })
    }
}

/// The outcome of the last reload attempt that failed, for `status` and logs.
#[derive(Debug, Clone)]
pub struct ReloadFailure {
    pub at: SystemTime,
    pub error: String,
}

/// Why a reload kept the last good config.
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    /// A process still has the file open for writing: it is half written.
    #[error("`{}` is still open for writing (process {pid}); it is loaded once written", path.display())]
    BeingWritten { path: PathBuf, pid: u32 },
    #[error(transparent)]
    Read(#[from] config::read::ReadError),
    /// Read while an editor had truncated it.
    #[error(
        "`{}` is empty (read in the middle of a save?); an empty file is never loaded over a \
         running config",
        .0.display()
    )]
    Empty(PathBuf),
    #[error(transparent)]
    Invalid(#[from] config::ConfigErrors),
    /// The config is valid but could not be put to work (an upstream's name does not
    /// resolve, an auth's keys cannot be loaded).
    #[error(transparent)]
    Build(#[from] BuildError),
    /// Reading took longer than `READ_TIMEOUT` (a hung filesystem), or its task failed.
    #[error("{0}")]
    Stalled(String),
}

impl ReloadError {
    /// A short name for the kind of failure, for logs and the admin API.
    pub fn kind(&self) -> &'static str {
        match self {
            ReloadError::BeingWritten { .. } => "being-written",
            ReloadError::Read(_) => "read",
            ReloadError::Empty(_) => "empty",
            ReloadError::Invalid(_) => "invalid",
            ReloadError::Build(_) => "build",
            ReloadError::Stalled(_) => "stalled",
        }
    }
}

/// The live snapshot plus reload bookkeeping. Shared by the proxy and its background services.
#[derive(Debug)]
pub struct Live {
    pub path: PathBuf,
    /// Shifts and reloads, kept next to the config file.
    pub history: crate::history::History,
    /// Progressive rollouts' state, kept next to the config file.
    pub rollouts: Arc<crate::rollout::Rollouts>,
    /// Shifts in force that the file could not take (a rollback against a read-only file).
    pub overrides: Overrides,
    /// The shift an admin call is writing, so the reload that sees it records it as that
    /// call's.
    pub editing: Mutex<Option<crate::history::Edit>>,
    pub registry: Arc<Registry>,
    pub started_at: SystemTime,
    snapshot: ArcSwap<Snapshot>,
    pub reloads: AtomicU64,
    pub reload_failures: AtomicU64,
    last_failure: Mutex<Option<ReloadFailure>>,
    /// Serialises reloads; the request path never touches it.
    reload_lock: tokio::sync::Mutex<()>,
    /// Serialises edits of the config file.
    pub edit_lock: tokio::sync::Mutex<()>,
    /// A hash of the config text last read, to skip reloads of unchanged bytes (0: unknown).
    loaded_digest: AtomicU64,
    /// When the reload that holds `reload_lock` started, for `status` and `/metrics`.
    reload_since: Mutex<Option<SystemTime>>,
    /// Reads of the config that outlived `READ_TIMEOUT` and have still not returned (a hung
    /// filesystem): each holds one blocking thread.
    pub abandoned_reads: Arc<AtomicU64>,
    /// Told the new `[log] access` on every reload that installs a snapshot (set at start-up).
    pub access_log: std::sync::OnceLock<Arc<crate::telemetry::AccessLogger>>,
    /// EMF's own writer, made when EMF lines first go somewhere the access log does not.
    pub emf_out: std::sync::OnceLock<Arc<crate::telemetry::AccessLogger>>,
    /// EMF lines made so far.
    pub emf_lines: AtomicU64,
    /// EMF lines dropped before a writer took them (its queue was full).
    pub emf_dropped: AtomicU64,
    /// Requests in flight, connections open, draining.
    pub lifecycle: Arc<crate::lifecycle::Lifecycle>,
    /// What the transport reads from the config, sent again when a reload changes it.
    transport: tokio::sync::watch::Sender<crate::http1::Settings>,
    /// Bumped whenever a snapshot is installed, for background work that sleeps until its next
    /// due time (health checks, key refreshes) and must look again when the config changes.
    installed: tokio::sync::watch::Sender<u64>,
}

fn transport_settings(config: &Config) -> crate::http1::Settings {
    crate::http1::Settings {
        keepalive_timeout: config.server.keepalive_timeout,
        body_timeout: config.server.body_timeout,
    }
}

/// The longest a reload waits for the config file (and the files it names) to be read and
/// parsed. Past it the reload fails and lets go of its lock, so the next reload, SIGHUP, `POST
/// /reload` or shift is not stuck behind a read that never returns (a hung NFS or FUSE mount;
/// FIFOs and devices are refused before any read, see `config::read`).
pub const READ_TIMEOUT: Duration = Duration::from_secs(10);

/// How long a reload waits for a process writing the config in place to close it.
const WRITER_WAIT: Duration = Duration::from_secs(5);

/// What the read stage of a reload found.
enum ReadOutcome {
    Unchanged,
    Parsed {
        digest: u64,
        config: Result<Box<Config>, config::ConfigErrors>,
    },
}

impl Live {
    pub fn new(path: PathBuf, snapshot: Snapshot, registry: Arc<Registry>) -> Live {
        // Absolute once: reads and edits must find the file the watcher watches, even after
        // the directory the process started in was replaced.
        let path = std::path::absolute(&path).unwrap_or(path);
        let digest =
            config::read::read_text(&path).map_or(0, |t| xxhash_rust::xxh3::xxh3_64(t.as_bytes()));
        let (transport, _) = tokio::sync::watch::channel(transport_settings(&snapshot.config));
        // Shifts made while the process was not running (`strangle shift --file`, an edit)
        // are recorded as found at start.
        let history = crate::history::History::open(&path);
        let start = crate::history::Cause {
            how: crate::history::How::Start,
            client: None,
        };
        history.record_shifts(
            &history.last_shifts(),
            &shifts(&snapshot.config),
            &start,
            None,
        );
        Live {
            overrides: Overrides::default(),
            rollouts: Arc::new(crate::rollout::Rollouts::open(
                &path,
                history.stopped_rollouts(),
            )),
            history,
            editing: Mutex::new(None),
            path,
            registry,
            started_at: SystemTime::now(),
            snapshot: ArcSwap::from_pointee(snapshot),
            reloads: AtomicU64::new(0),
            reload_failures: AtomicU64::new(0),
            last_failure: Mutex::new(None),
            reload_lock: tokio::sync::Mutex::new(()),
            edit_lock: tokio::sync::Mutex::new(()),
            loaded_digest: AtomicU64::new(digest),
            reload_since: Mutex::new(None),
            abandoned_reads: Arc::new(AtomicU64::new(0)),
            access_log: std::sync::OnceLock::new(),
            emf_out: std::sync::OnceLock::new(),
            emf_lines: AtomicU64::new(0),
            emf_dropped: AtomicU64::new(0),
            lifecycle: Arc::default(),
            transport,
            installed: tokio::sync::watch::channel(0).0,
        }
    }

    /// The transport's settings, now and after every reload that changes them.
    pub fn transport_settings(&self) -> tokio::sync::watch::Receiver<crate::http1::Settings> {
        self.transport.subscribe()
    }

    /// Changes whenever a reload installs a new snapshot.
    pub fn installed(&self) -> tokio::sync::watch::Receiver<u64> {
        self.installed.subscribe()
    }

    /// How long the reload now running has been at it, if one is.
    pub fn reload_running_for(&self) -> Option<Duration> {
        let since = self.reload_since.lock().ok().and_then(|s| *s)?;
        Some(since.elapsed().unwrap_or_default())
    }

    /// The current snapshot, for one request.
    #[inline]
    pub fn load(&self) -> Arc<Snapshot> {
        self.snapshot.load_full()
    }

    pub fn last_failure(&self) -> Option<ReloadFailure> {
        self.last_failure.lock().map(|f| f.clone()).unwrap_or(None)
    }

    /// Reads the config file again and swaps in the new snapshot if it is valid.
    /// Reloads the file; what the new config warns of (also logged) comes back.
    pub async fn reload(self: &Arc<Self>, cause: &Cause) -> Result<Vec<String>, ReloadError> {
        self.reload_when(true, cause)
            .await
            .map(Option::unwrap_or_default)
    }

    /// Reloads only if the file's bytes changed since the last load (or the last failure):
    /// a file event that rewrote the same text, such as our own `shift` edit already applied,
    /// is not a reload. Returns whether a new snapshot was installed.
    pub async fn reload_if_changed(self: &Arc<Self>, cause: &Cause) -> Result<bool, ReloadError> {
        self.reload_when(false, cause).await.map(|w| w.is_some())
    }

    async fn reload_when(
        self: &Arc<Self>,
        force: bool,
        cause: &Cause,
    ) -> Result<Option<Vec<String>>, ReloadError> {
        let _one_at_a_time = self.reload_lock.lock().await;
        let _running = Running::start(&self.reload_since);
        let result = self.read_and_install(force, cause).await;
        if let Err(error) = &result {
            let what = crate::history::What::Reload {
                ok: false,
                error: Some(error.to_string()),
            };
            self.history.record(what, cause);
            let failures = self.reload_failures.fetch_add(1, Ordering::Relaxed) + 1;
            tracing::error!(
                failures,
                kind = error.kind(),
                "config reload failed, keeping the last good config:\n{error}"
            );
            if let Ok(mut f) = self.last_failure.lock() {
                *f = Some(ReloadFailure {
                    at: SystemTime::now(),
                    error: error.to_string(),
                });
            }
        }
        result
    }

    /// `None` when the file did not change (and nothing was forced); else what the installed
    /// config warns of.
    async fn read_and_install(
        self: &Arc<Self>,
        force: bool,
        cause: &Cause,
    ) -> Result<Option<Vec<String>>, ReloadError> {
        let live = Arc::clone(self);
        let what = format!("reading `{}`", self.path.display());
        // Reading and parsing block (file reads, `${file:..}`): off the proxy's worker threads,
        // and bounded, so a read that never returns cannot hold the reload lock forever.
        let read = run_bounded(&what, READ_TIMEOUT, &self.abandoned_reads, move || {
            // A file still being written in place is half a config (perhaps without its
            // `auth` lines): wait for its writer (the watcher also hears the close).
            let settled_by = std::time::Instant::now() + WRITER_WAIT;
            let text = loop {
                let left = settled_by.saturating_duration_since(std::time::Instant::now());
                if let Err(pid) = config::read::wait_for_writers(&live.path, left) {
                    let path = live.path.clone();
                    return Err(ReloadError::BeingWritten { path, pid });
                }
                let text = config::read::read_text(&live.path)?;
                // A writer that opened the file between the check and the read may have left
                // only its first half there: read again once it is done.
                if config::read::writer_of(&live.path).is_none() {
                    break text;
                }
            };
            if text.trim().is_empty() {
                // An editor that rewrites the file in place truncates it first: read at that
                // moment it would be a valid config with no routes.
                return Err(ReloadError::Empty(live.path.clone()));
            }
            let digest = xxhash_rust::xxh3::xxh3_64(text.as_bytes());
            if !force && digest == live.loaded_digest.load(Ordering::Acquire) {
                return Ok(ReadOutcome::Unchanged);
            }
            let base = live.path.parent().unwrap_or(Path::new("."));
            let config = config::parse(&live.path.display().to_string(), &text, base).map(Box::new);
            Ok(ReadOutcome::Parsed { digest, config })
        })
        .await
        .map_err(ReloadError::Stalled)
        .and_then(|r| r);
        let mut warnings = Vec::new();
        let config = match read {
            Ok(ReadOutcome::Unchanged) => return Ok(None),
            Ok(ReadOutcome::Parsed { digest, config }) => {
                // A file that failed to parse is not read again until its bytes change.
                self.loaded_digest.store(digest, Ordering::Release);
                let mut config = config?;
                for route in self.overrides.apply(&mut config) {
                    tracing::warn!(
                        route,
                        "a shift the config file could not take stays in force"
                    );
                    warnings.push(format!(
                        "route `{route}`: a shift the config file could not take stays in force"
                    ));
                }
                config
            }
            Err(e) => {
                // Whatever is there next is read in full, even bytes that match the config
                // being served: it clears this failure.
                self.loaded_digest.store(0, Ordering::Release);
                return Err(e);
            }
        };
        for w in &config.warnings {
            tracing::warn!("{}", w.as_warning());
        }
        warnings.splice(0..0, config.warnings.iter().map(|w| w.as_warning()));
        let live = Arc::clone(self);
        // DNS resolution blocks too.
        let snapshot = tokio::task::spawn_blocking(move || {
            Snapshot::build(*config, Some(&live.load()), &live.registry)
        })
        .await
        .map_err(|e| ReloadError::Stalled(format!("reload task failed: {e}")))??;
        let old = self.load();
        warnings.extend(warn_on_restart_only_changes(&old.config, &snapshot.config));
        warnings.extend(crate::upstream::unresolved_warnings(&snapshot.upstreams));
        if let Some(log) = self.access_log.get() {
            // A changed target, or a file logrotate renamed away, is reopened.
            log.reopen(snapshot.config.log.access.clone());
        }
        let settings = transport_settings(&snapshot.config);
        self.snapshot.store(Arc::new(snapshot));
        self.transport
            .send_if_modified(|s| std::mem::replace(s, settings) != settings);
        self.installed.send_modify(|n| *n += 1);
        self.reloads.fetch_add(1, Ordering::Relaxed);
        if let Ok(mut f) = self.last_failure.lock() {
            *f = None;
        }
        tracing::info!(path = %self.path.display(), "config reloaded");
        let what = crate::history::What::Reload {
            ok: true,
            error: None,
        };
        self.history.record(what, cause);
        let new = self.load();
        let editing = self
            .editing
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        self.history.record_shifts(
            &shifts(&old.config),
            &shifts(&new.config),
            cause,
            editing.as_ref(),
        );
        Ok(Some(warnings))
    }
}

/// Each route's id and shift, for the history.
fn shifts(config: &Config) -> Vec<(String, String)> {
    config
        .routes
        .iter()
        .map(|r| (r.id.clone(), r.shift.to_string()))
        .collect()
}

/// The directory to watch and the file name within it for a config path.
pub fn watch_target(path: &Path) -> (PathBuf, Option<std::ffi::OsString>) {
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .map_or_else(|| PathBuf::from("."), Path::to_path_buf);
    (dir, path.file_name().map(|n| n.to_os_string()))
}
