//! Background work beside the proxy: config watching and reload, upstream health checks.
//! Each runs as a Pingora `BackgroundService`, so nothing here starts before the server forks.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use notify::{EventKind, RecursiveMode, Watcher};
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use tokio::sync::mpsc;

use crate::state::{watch_target, Live};

/// How long to wait for a burst of file events to settle before reloading: editors and
/// Kubernetes write a config in several steps.
const DEBOUNCE: Duration = Duration::from_millis(100);

/// Reloads the config when its file changes or on SIGHUP.
pub struct ConfigWatcher {
    pub live: Arc<Live>,
}

#[async_trait]
impl BackgroundService for ConfigWatcher {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let (tx, mut rx) = mpsc::unbounded_channel::<()>();
        let (dir, file_name) = watch_target(&self.live.path);
        // Watch the directory, not the file: an editor's rename-over and a ConfigMap's `..data`
        // symlink swap both replace the file's inode, which a file watch would lose.
        let watcher_tx = tx.clone();
        let watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
            let Ok(event) = event else { return };
            if matches!(event.kind, EventKind::Access(_)) {
                return;
            }
            let relevant = event.paths.iter().any(|p| {
                let name = p.file_name();
                name == file_name.as_deref()
                    || name.is_some_and(|n| n.to_string_lossy().starts_with(".."))
            });
            if relevant {
                let _ = watcher_tx.send(());
            }
        });
        let _watcher = match watcher {
            Ok(mut w) => match w.watch(&dir, RecursiveMode::NonRecursive) {
                Ok(()) => Some(w),
                Err(e) => {
                    tracing::error!(dir = %dir.display(), "cannot watch the config directory, reload with SIGHUP: {e}");
                    None
                }
            },
            Err(e) => {
                tracing::error!("cannot start the config watcher, reload with SIGHUP: {e}");
                None
            }
        };
        // A change made between loading the config and watching it would otherwise go unseen
        // until the next one: compare once now (a no-op when the bytes are the same).
        let _ = self.live.reload_if_changed().await;
        let mut hangup = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
        {
            Ok(s) => Some(s),
            Err(e) => {
                tracing::error!("cannot listen for SIGHUP: {e}");
                None
            }
        };
        loop {
            tokio::select! {
                _ = shutdown.changed() => return,
                Some(()) = rx.recv() => {
                    // Let the writer finish, then take everything that arrived meanwhile.
                    tokio::time::sleep(DEBOUNCE).await;
                    while rx.try_recv().is_ok() {}
                    let _ = self.live.reload_if_changed().await;
                }
                Some(()) = async { match hangup.as_mut() { Some(h) => h.recv().await, None => std::future::pending().await } } => {
                    tracing::info!("SIGHUP: reloading the config");
                    let _ = self.live.reload().await;
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
        let mut last_run: HashMap<usize, Instant> = HashMap::new();
        let mut tick = tokio::time::interval(Duration::from_millis(250));
        loop {
            tokio::select! {
                _ = shutdown.changed() => return,
                _ = tick.tick() => {}
            }
            let snapshot = self.live.load();
            let now = Instant::now();
            let mut live_keys = Vec::with_capacity(snapshot.upstreams.len());
            for upstream in snapshot.upstreams.values() {
                // Keyed by the upstream's address: an upstream kept across reloads keeps its
                // schedule, a replaced one starts fresh.
                let key = Arc::as_ptr(upstream) as usize;
                live_keys.push(key);
                let due = last_run
                    .get(&key)
                    .is_none_or(|t| now.duration_since(*t) >= upstream.health_check_interval());
                if due {
                    last_run.insert(key, now);
                    let upstream = Arc::clone(upstream);
                    tokio::spawn(async move { upstream.health_check().await });
                }
            }
            last_run.retain(|k, _| live_keys.contains(k));
        }
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

/// Keeps every JWKS fresh: fetched when due, failures logged (the last good keys keep serving
/// until `jwks-max-stale`).
pub struct JwksRefresher {
    pub live: Arc<Live>,
}

#[async_trait]
impl BackgroundService for JwksRefresher {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        let mut failing: HashMap<String, Instant> = HashMap::new();
        loop {
            tokio::select! {
                _ = shutdown.changed() => return,
                _ = tick.tick() => {}
            }
            let snapshot = self.live.load();
            for (name, verifier) in &snapshot.verifiers {
                // After a failure, retry every few seconds (or the refresh interval, if shorter)
                // rather than every tick.
                let backoff = verifier.config.jwks_refresh.min(Duration::from_secs(5));
                let backing_off = failing.get(name).is_some_and(|t| t.elapsed() < backoff);
                if !verifier.due() || backing_off {
                    continue;
                }
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
        }
    }
}
