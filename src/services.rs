//! Background work beside the proxy: config watching and reload, upstream health checks, key
//! refreshes, stats sampling (and the admin API, in `admin`). All of it runs on one small
//! runtime (`Background`: one thread), not a runtime each: with the process on one core, as a
//! sidecar with a CPU limit is, every extra thread competes with the proxy's worker. Nothing
//! here wakes when it has nothing to do: health checks and key refreshes sleep until the next
//! one is due or a reload changes the config.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use notify::{EventKind, RecursiveMode, Watcher};
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use tokio::sync::mpsc;

use crate::state::{watch_target, Live};

mod emf;
pub use emf::{EmfReporter, EmfService};

/// How long to wait for a burst of file events to settle before reloading: editors and
/// Kubernetes write a config in several steps.
const DEBOUNCE: Duration = Duration::from_millis(100);

/// How often the watcher checks that the directory it watches is still the config's directory.
const REARM_CHECK: Duration = Duration::from_secs(1);

/// What a file event means for the watcher.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Seen {
    /// The config file (or a ConfigMap `..` entry) changed.
    File,
    /// The watched directory itself was removed or moved: the watch is gone or points elsewhere.
    Dir,
}

/// Reloads the config when its file changes or on SIGHUP.
///
/// The directory is watched, not the file: an editor's rename-over and a ConfigMap's `..data`
/// symlink swap both replace the file's inode, which a file watch would lose. A watch is on an
/// inode too, though: when the directory itself is deleted and recreated, or moved away and
/// back (or a symlink in its path is repointed), the watch is re-armed on whatever the path names
/// now. That is noticed from the directory's own events and from its identity, checked every
/// `REARM_CHECK`, and logged.
pub struct ConfigWatcher {
    pub live: Arc<Live>,
}

/// The identity of a directory: a recreated one is a different inode (or, if the inode number
/// is reused, a different birth time).
fn dir_identity(dir: &std::path::Path) -> Option<(u64, u64, Option<std::time::SystemTime>)> {
    let meta = std::fs::metadata(dir).ok()?;
    #[cfg(unix)]
    let (dev, ino) = {
        use std::os::unix::fs::MetadataExt;
        (meta.dev(), meta.ino())
    };
    #[cfg(not(unix))]
    let (dev, ino) = (0, 0);
    Some((dev, ino, meta.created().ok()))
}

type Identity = (u64, u64, Option<std::time::SystemTime>);

/// Starts watching `dir`; events go to `tx`.
fn arm(
    dir: &std::path::Path,
    file_name: Option<std::ffi::OsString>,
    tx: mpsc::UnboundedSender<Seen>,
) -> notify::Result<notify::RecommendedWatcher> {
    let watched = dir.to_path_buf();
    let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        let Ok(event) = event else { return };
        // Reads are not changes; a writer closing the file is (a save in place is only
        // loaded once its writer closes it: see `config::read::writer_of`).
        let closed_after_write = matches!(
            event.kind,
            EventKind::Access(notify::event::AccessKind::Close(
                notify::event::AccessMode::Write
            ))
        );
        if matches!(event.kind, EventKind::Access(_)) && !closed_after_write {
            return;
        }
        // Events about the watched directory itself carry its own path.
        if event.paths.contains(&watched)
            && matches!(event.kind, EventKind::Remove(_) | EventKind::Modify(_))
        {
            let _ = tx.send(Seen::Dir);
            return;
        }
        let relevant = event.paths.iter().any(|p| {
            let name = p.file_name();
            name == file_name.as_deref()
                || name.is_some_and(|n| n.to_string_lossy().starts_with(".."))
        });
        if relevant {
            let _ = tx.send(Seen::File);
        }
    })?;
    watcher.watch(dir, RecursiveMode::NonRecursive)?;
    Ok(watcher)
}

#[async_trait]
impl BackgroundService for ConfigWatcher {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let (tx, mut rx) = mpsc::unbounded_channel::<Seen>();
        let (dir, file_name) = watch_target(&self.live.path);
        // notify reports absolute paths: compare events with the same.
        let dir = std::path::absolute(&dir).unwrap_or(dir);
        let mut armed: Option<(notify::RecommendedWatcher, Option<Identity>)> = match arm(
            &dir,
            file_name.clone(),
            tx.clone(),
        ) {
            Ok(w) => {
                tracing::info!(dir = %dir.display(), "watching the config directory");
                Some((w, dir_identity(&dir)))
            }
            Err(e) => {
                tracing::error!(dir = %dir.display(), "cannot watch the config directory, retrying every second (SIGHUP reloads meanwhile): {e}");
                None
            }
        };
        // A change made between loading the config and watching it would otherwise go unseen
        // until the next one: compare once now (a no-op when the bytes are the same).
        let _ = self
            .live
            .reload_if_changed(&crate::history::Cause::FILE)
            .await;
        let mut hangup = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
        {
            Ok(s) => Some(s),
            Err(e) => {
                tracing::error!("cannot listen for SIGHUP: {e}");
                None
            }
        };
        let mut check = tokio::time::interval(REARM_CHECK);
        check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // Set when the directory reported its own removal or move: re-armed at the next check
        // even if its identity looks the same (moved away and back).
        let mut suspect = false;
        let mut arm_failing = armed.is_none();
        loop {
            tokio::select! {
                _ = shutdown.changed() => return,
                Some(seen) = rx.recv() => {
                    // Let the writer finish, then take everything that arrived meanwhile.
                    tokio::time::sleep(DEBOUNCE).await;
                    suspect |= seen == Seen::Dir;
                    while let Ok(more) = rx.try_recv() {
                        suspect |= more == Seen::Dir;
                    }
                    if suspect {
                        // Re-arm now rather than at the next tick.
                        check.reset_immediately();
                    }
                    let _ = self.live.reload_if_changed(&crate::history::Cause::FILE).await;
                }
                _ = check.tick() => {
                    let now = dir_identity(&dir);
                    let reason = match (&armed, now) {
                        (Some(_), None) => {
                            tracing::warn!(dir = %dir.display(), "the config directory is gone; hot reload resumes when it is back (SIGHUP reloads meanwhile)");
                            armed = None;
                            suspect = false;
                            continue;
                        }
                        (_, None) => continue,
                        (None, Some(_)) => "it is back",
                        (Some((_, was)), Some(now)) if *was != Some(now) => "it was replaced",
                        (Some(_), Some(_)) if suspect => "it was moved or removed",
                        (Some(_), Some(_)) => continue,
                    };
                    suspect = false;
                    // Drop the old watch first: it may still hold the old inode.
                    armed = None;
                    match arm(&dir, file_name.clone(), tx.clone()) {
                        Ok(w) => {
                            tracing::info!(dir = %dir.display(), "watching the config directory again: {reason}");
                            armed = Some((w, now));
                            arm_failing = false;
                            // Whatever changed while nothing watched is loaded now.
                            let _ = self.live.reload_if_changed(&crate::history::Cause::FILE).await;
                        }
                        Err(e) if !arm_failing => {
                            arm_failing = true;
                            tracing::warn!(dir = %dir.display(), "cannot watch the config directory yet, retrying every second: {e}");
                        }
                        Err(_) => {}
                    }
                }
                Some(()) = async { match hangup.as_mut() { Some(h) => h.recv().await, None => std::future::pending().await } } => {
                    tracing::info!("SIGHUP: reloading the config");
                    let _ = self.live.reload(&crate::history::Cause::SIGNAL).await;
                }
            }
        }
    }
}

/// Runs each upstream's health check on its own interval, for whatever snapshot is live.
pub struct HealthChecks {
    pub live: Arc<Live>,
}

#[async_trait]
impl BackgroundService for HealthChecks {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let mut installed = self.live.installed();
        let mut last_run: HashMap<usize, Instant> = HashMap::new();
        loop {
            let snapshot = self.live.load();
            let now = Instant::now();
            let mut next = None;
            let mut live_keys = Vec::with_capacity(snapshot.upstreams.len());
            for upstream in snapshot.upstreams.values() {
                if !upstream.has_health_check() {
                    continue;
                }
                // Keyed by the upstream's address: an upstream kept across reloads keeps its
                // schedule, a replaced one starts fresh.
                let key = Arc::as_ptr(upstream) as usize;
                live_keys.push(key);
                let interval = upstream.health_check_interval();
                let mut due = last_run.get(&key).map_or(now, |t| *t + interval);
                if due <= now {
                    last_run.insert(key, now);
                    let upstream = Arc::clone(upstream);
                    tokio::spawn(async move { upstream.health_check().await });
                    due = now + interval;
                }
                next = earliest(next, due);
            }
            last_run.retain(|k, _| live_keys.contains(k));
            drop(snapshot);
            if !wait_until(next, &mut installed, &mut shutdown).await {
                return;
            }
        }
    }
}

/// The earlier of a next due time so far and another.
fn earliest(next: Option<Instant>, due: Instant) -> Option<Instant> {
    Some(next.map_or(due, |n| n.min(due)))
}

/// Sleeps until `next` (for ever when nothing is due), or until a reload installs a new
/// snapshot. `false` once the server is shutting down.
async fn wait_until(
    next: Option<Instant>,
    installed: &mut tokio::sync::watch::Receiver<u64>,
    shutdown: &mut ShutdownWatch,
) -> bool {
    let due = async {
        match next {
            Some(t) => tokio::time::sleep_until(t.into()).await,
            None => std::future::pending().await,
        }
    };
    let reloaded = async {
        if installed.changed().await.is_err() {
            // The config can no longer change: only the due time matters.
            std::future::pending::<()>().await;
        }
    };
    tokio::select! {
        _ = shutdown.changed() => false,
        () = reloaded => true,
        () = due => true,
    }
}

/// Samples the traffic counters for `status`'s recent window.
pub struct StatsSampler {
    pub live: Arc<Live>,
}

#[async_trait]
impl BackgroundService for StatsSampler {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let mut tick = tokio::time::interval(crate::stats::SAMPLE_EVERY);
        loop {
            tokio::select! {
                _ = shutdown.changed() => return,
                _ = tick.tick() => {
                    self.live.registry.sample();
                    crate::proxy::sweep_idle_upstreams();
                    let now = Instant::now();
                    for route in &self.live.load().routes {
                        if let Some(limiter) = &route.rate_limit {
                            limiter.sweep(now);
                        }
                    }
                }
            }
        }
    }
}

/// Looks at the TLS listeners' certificate files once a second and loads the pairs that changed
/// (`tls::Endpoint::poll`).
pub struct CertWatcher {
    pub live: Arc<Live>,
}

#[async_trait]
impl BackgroundService for CertWatcher {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let Some(endpoints) = self.live.registry.tls.get().filter(|e| !e.is_empty()) else {
            return;
        };
        let mut tick = tokio::time::interval(std::time::Duration::from_secs(1));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = shutdown.changed() => return,
                _ = tick.tick() => {
                    let endpoints = endpoints.clone();
                    // Metadata and reads block: off the runtime's workers.
                    let _ = tokio::task::spawn_blocking(move || {
                        for e in &endpoints {
                            e.poll();
                        }
                    })
                    .await;
                }
            }
        }
    }
}

/// Keeps every JWKS fresh: fetched when due, failures logged (the last good keys keep serving
/// until `jwks-max-stale`).
pub struct JwksRefresher {
    pub live: Arc<Live>,
}

#[async_trait]
impl BackgroundService for JwksRefresher {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let mut installed = self.live.installed();
        let mut failing: HashMap<String, Instant> = HashMap::new();
        loop {
            let snapshot = self.live.load();
            let mut next = None;
            for (name, verifier) in &snapshot.verifiers {
                // After a failure, retry every few seconds (or the refresh interval, if shorter)
                // rather than at once.
                let backoff = verifier.config.jwks_refresh.min(Duration::from_secs(5));
                let due_at = |failing: &HashMap<String, Instant>| {
                    let due = verifier.due_at()?;
                    Some(failing.get(name).map_or(due, |t| due.max(*t + backoff)))
                };
                let Some(due) = due_at(&failing) else {
                    continue;
                };
                if due <= Instant::now() {
                    match verifier.fetch().await {
                        Ok(()) => {
                            failing.remove(name);
                        }
                        Err(e) => {
                            tracing::warn!(auth = %name, "JWKS fetch failed, keeping the last good keys: {e}");
                            failing.insert(name.clone(), Instant::now());
                        }
                    }
                }
                if let Some(due) = due_at(&failing) {
                    next = earliest(next, due);
                }
            }
            failing.retain(|name, _| snapshot.verifiers.contains_key(name));
            drop(snapshot);
            if !wait_until(next, &mut installed, &mut shutdown).await {
                return;
            }
        }
    }
}

/// The OTLP exporters (`telemetry::export`): spans, and access-log records when the config
/// says `logs = true`, each reading the collector's address from the live config for every
/// batch.
pub struct OtlpExport {
    pub live: Arc<Live>,
}

#[async_trait]
impl BackgroundService for OtlpExport {
    async fn start(&self, shutdown: ShutdownWatch) {
        use crate::telemetry::export::{logs::Logs, run, Spans, Target};
        let target = |logs: bool| {
            let snap = self.live.load();
            let t = &snap.config.telemetry;
            let otlp = t.otlp.clone().filter(|o| o.logs || !logs);
            otlp.map(|o| (o, t.service_name.clone())) as Target
        };
        let idle = || self.live.lifecycle.in_flight() == 0;
        // The proxy's own grace period, and a moment for its last account step.
        let grace = self.live.load().config.server.grace_period + Duration::from_secs(1);
        let registry = &self.live.registry;
        let (mut spans, mut logs) = (Spans::new(|| target(false)), Logs::new(|| target(true)));
        tokio::join!(
            run(&registry.spans, &mut spans, idle, grace, shutdown.clone()),
            run(&registry.logs, &mut logs, idle, grace, shutdown),
        );
    }
}

/// Saves what outlives the process next to the config (the inventory, the burn-down's days)
/// every `SAVE_STATE_EVERY`; the exit saves them once more (`save_state`).
pub struct StateSaver {
    pub live: Arc<Live>,
}

pub const SAVE_STATE_EVERY: Duration = Duration::from_secs(60);

/// Writes the inventory and the burn-down to their files (blocking: call it off the runtime's
/// workers); a failure is logged.
pub fn save_state(live: &Live) {
    let folded = live.load().inventory.prune();
    if folded > 0 {
        tracing::info!(
            folded,
            "inventory near its cap: the smallest templates were folded into `other`"
        );
    }
    let path = crate::inventory::report::path_for(&live.path);
    if let Err(e) = crate::inventory::report::save(&live.load().inventory, &path) {
        tracing::warn!(path = %path.display(), "cannot save the inventory: {e}");
    }
    let path = crate::stats::burndown::path_for(&live.path);
    if let Err(e) = live.registry.save_burn_down(&path) {
        tracing::warn!(path = %path.display(), "cannot save the burn-down: {e}");
    }
}

#[async_trait]
impl BackgroundService for StateSaver {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let mut tick = tokio::time::interval(SAVE_STATE_EVERY);
        tick.tick().await;
        loop {
            tokio::select! {
                _ = shutdown.changed() => return,
                _ = tick.tick() => {
                    let live = Arc::clone(&self.live);
                    let _ = tokio::task::spawn_blocking(move || save_state(&live)).await;
                }
            }
        }
    }
}

/// Every background service on one runtime: Pingora gives each service its own runtime and
/// thread, so five services would be five threads beside the proxy's worker.
pub struct Background {
    pub services: Vec<Arc<dyn BackgroundService + Send + Sync>>,
}

#[async_trait]
impl BackgroundService for Background {
    async fn start(&self, shutdown: ShutdownWatch) {
        let running: Vec<_> = self
            .services
            .iter()
            .map(|s| {
                let (s, shutdown) = (Arc::clone(s), shutdown.clone());
                tokio::spawn(async move { s.start(shutdown).await })
            })
            .collect();
        for r in running {
            let _ = r.await;
        }
    }
}
