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
use std::time::SystemTime;

use arc_swap::ArcSwap;

use crate::auth::Verifier;
use crate::config::{self, Config, Route};
use crate::limits::RateLimiter;
use crate::routing::RouteTable;
use crate::split::{route_seed, Shift, StickyKey};
use crate::stats::{Registry, RouteStats, DEFAULT_ROUTE};
use crate::upstream::{Shared, Upstream};

/// A route ready for the request path: upstreams resolved to `Arc`s, hash seed precomputed.
#[derive(Debug)]
pub struct LiveRoute {
    pub id: String,
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
    /// Counters for traffic that matched no route.
    pub default_stats: Arc<RouteStats>,
    /// One verifier per `[auth.NAME]`.
    pub verifiers: HashMap<String, Arc<Verifier>>,
    /// Every header a verified claim is forwarded in: client copies are always stripped.
    pub identity_headers: Vec<http::HeaderName>,
    pub loaded_at: SystemTime,
}

#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error(transparent)]
    Config(#[from] config::ConfigErrors),
    #[error(transparent)]
    Resolve(#[from] crate::upstream::ResolveError),
    #[error("auth `{0}`: {1}")]
    Auth(String, String),
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
            let reused = previous
                .and_then(|p| p.upstreams.get(name))
                .filter(|u| u.config == *cfg)
                .cloned();
            let upstream = match reused {
                Some(u) => u,
                None => Arc::new(Upstream::new(cfg, registry.upstream(name))?),
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
        Ok(Snapshot {
            config,
            table,
            routes,
            upstreams,
            default,
            default_stats: registry.route(DEFAULT_ROUTE),
            verifiers,
            identity_headers,
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

/// The live snapshot plus reload bookkeeping. Shared by the proxy and its background services.
#[derive(Debug)]
pub struct Live {
    pub path: PathBuf,
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
    /// A hash of the config text last read, to skip reloads of unchanged bytes.
    loaded_digest: AtomicU64,
    /// Told the new `[log] access` on every reload that installs a snapshot (set at start-up).
    pub access_log: std::sync::OnceLock<Arc<crate::telemetry::AccessLogger>>,
}

impl Live {
    pub fn new(path: PathBuf, snapshot: Snapshot, registry: Arc<Registry>) -> Live {
        let digest = std::fs::read(&path).map_or(0, |b| xxhash_rust::xxh3::xxh3_64(&b));
        Live {
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
            access_log: std::sync::OnceLock::new(),
        }
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
    pub async fn reload(self: &Arc<Self>) -> Result<(), String> {
        self.reload_when(true).await.map(|_| ())
    }

    /// Reloads only if the file's bytes changed since the last load (or the last failure):
    /// a file event that rewrote the same text, such as our own `shift` edit already applied,
    /// is not a reload. Returns whether a new snapshot was installed.
    pub async fn reload_if_changed(self: &Arc<Self>) -> Result<bool, String> {
        self.reload_when(false).await
    }

    async fn reload_when(self: &Arc<Self>, force: bool) -> Result<bool, String> {
        let _one_at_a_time = self.reload_lock.lock().await;
        let live = Arc::clone(self);
        // Reading, parsing and DNS resolution block: keep them off the proxy's worker threads.
        let built = tokio::task::spawn_blocking(move || {
            let text = std::fs::read_to_string(&live.path)
                .map_err(|e| format!("cannot read {}: {e}", live.path.display()))?;
            let digest = xxhash_rust::xxh3::xxh3_64(text.as_bytes());
            if !force && digest == live.loaded_digest.load(Ordering::Acquire) {
                return Ok(None);
            }
            live.loaded_digest.store(digest, Ordering::Release);
            let base = live.path.parent().unwrap_or(Path::new("."));
            let config = config::parse(&live.path.display().to_string(), &text, base)
                .map_err(|e| e.to_string())?;
            for w in &config.warnings {
                tracing::warn!("{}", w.as_warning());
            }
            Snapshot::build(config, Some(&live.load()), &live.registry)
                .map(Some)
                .map_err(|e| e.to_string())
        })
        .await
        .map_err(|e| format!("reload task failed: {e}"))?;
        match built {
            Ok(None) => Ok(false),
            Ok(Some(snapshot)) => {
                let old = self.load();
                warn_on_restart_only_changes(&old.config, &snapshot.config);
                if let Some(log) = self.access_log.get() {
                    // A changed target, or a file logrotate renamed away, is reopened.
                    log.reopen(snapshot.config.log.access.clone());
                }
                self.snapshot.store(Arc::new(snapshot));
                self.reloads.fetch_add(1, Ordering::Relaxed);
                if let Ok(mut f) = self.last_failure.lock() {
                    *f = None;
                }
                tracing::info!(path = %self.path.display(), "config reloaded");
                Ok(true)
            }
            Err(error) => {
                let failures = self.reload_failures.fetch_add(1, Ordering::Relaxed) + 1;
                tracing::error!(
                    failures,
                    "config reload failed, keeping the last good config:\n{error}"
                );
                if let Ok(mut f) = self.last_failure.lock() {
                    *f = Some(ReloadFailure {
                        at: SystemTime::now(),
                        error: error.clone(),
                    });
                }
                Err(error)
            }
        }
    }
}

fn warn_on_restart_only_changes(old: &Config, new: &Config) {
    let (o, n) = (&old.server, &new.server);
    if o.listen != n.listen || o.threads != n.threads {
        tracing::warn!(
            "`listen` and `threads` changed in the config: they take effect at the next restart"
        );
    }
    if (&old.log.level, old.log.json) != (&new.log.level, new.log.json) {
        tracing::warn!(
            "`[log] level` and `format` changed in the config: they take effect at the next restart"
        );
    }
}

/// The directory to watch and the file name within it for a config path.
pub fn watch_target(path: &Path) -> (PathBuf, Option<std::ffi::OsString>) {
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .map_or_else(|| PathBuf::from("."), Path::to_path_buf);
    (dir, path.file_name().map(|n| n.to_os_string()))
}
