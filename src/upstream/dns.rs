//! The addresses of an HTTP upstream, found again on every health check. An address given as
//! a name (`bookings.shop.svc:8080`, or a `url` upstream's host) is looked up at load and then
//! on each health-check pass, so a Service that appears late, moves, or scales (a headless
//! Service's pod addresses) is followed without a reload. A name that does not resolve never
//! stops strangle from starting or reloading: its upstream has no address and answers 502
//! (the route's `fallback` applies) until the name resolves. A lookup that fails later keeps
//! the addresses the name last had, so a DNS outage does not empty a working upstream.

use std::collections::{BTreeSet, HashMap};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use pingora::lb::discovery::ServiceDiscovery;
use pingora::lb::Backend;
use pingora::protocols::l4::socket::SocketAddr as PeerAddr;

/// How long one lookup may take before it counts as failed.
const LOOKUP_TIMEOUT: Duration = Duration::from_secs(5);

/// One configured address and what it last resolved to.
#[derive(Debug)]
struct Entry {
    /// As configured: `host:port` or `ip:port`.
    name: String,
    /// An IP literal is never looked up.
    literal: bool,
    addrs: Vec<SocketAddr>,
    /// Why the last lookup failed, while it does.
    error: Option<String>,
    /// A lookup that outlasted `LOOKUP_TIMEOUT` (a resolver that hangs): it is waited for,
    /// never started again while it runs, so a hung resolver holds one thread per name.
    pending: Option<tokio::task::JoinHandle<std::io::Result<Vec<SocketAddr>>>>,
}

/// Service discovery by name lookup, for Pingora's load balancer.
#[derive(Debug)]
pub struct Dns {
    upstream: String,
    entries: Mutex<Vec<Entry>>,
    /// Set once the load balancer took the addresses found at load: the first discovery only
    /// hands them over (so building never waits on an asynchronous lookup).
    primed: AtomicBool,
}

impl Dns {
    /// Resolves every configured address once, blocking (call it off the request path) for at
    /// most `LOOKUP_TIMEOUT` in all, the names looked up side by side. A name `previous` (the
    /// upstream this one replaces on a reload) knew keeps what it had there, unlooked-up: the
    /// first health check looks it up again, and a DNS outage during a reload does not empty
    /// the upstream. A name that fails is logged and left without addresses; it is looked up
    /// again on every health check. A name listed twice is one entry.
    pub fn new(upstream: &str, names: &[String], previous: Option<&Dns>) -> Dns {
        let mut unique: Vec<&String> = Vec::with_capacity(names.len());
        for name in names {
            if !unique.contains(&name) {
                unique.push(name);
            }
        }
        let known = |name: &str| {
            let previous = previous?.lock();
            let e = previous
                .iter()
                .find(|e| e.name == name && !e.addrs.is_empty())?;
            Some((e.addrs.clone(), e.error.clone()))
        };
        let lookups: Vec<_> = unique
            .iter()
            .map(|name| match known(name) {
                Some(kept) => Lookup::Kept(kept),
                None => Lookup::start(name),
            })
            .collect();
        let deadline = std::time::Instant::now() + LOOKUP_TIMEOUT;
        let entries = unique
            .into_iter()
            .zip(lookups)
            .map(|(name, lookup)| {
                let (addrs, error) = lookup.finish(deadline);
                if let (Some(e), true) = (&error, addrs.is_empty()) {
                    tracing::warn!(upstream = %upstream, address = %name,
                        "cannot resolve the address: {e}; its requests get 502 until it \
                         resolves (looked up again on every health check)");
                }
                Entry {
                    name: name.clone(),
                    literal: name.parse::<SocketAddr>().is_ok(),
                    addrs,
                    error,
                    pending: None,
                }
            })
            .collect();
        Dns {
            upstream: upstream.to_string(),
            entries: Mutex::new(entries),
            primed: AtomicBool::new(false),
        }
    }

    /// Whether any address is a name (else discovery never changes anything).
    pub fn has_names(&self) -> bool {
        self.lock().iter().any(|e| !e.literal)
    }

    /// The configured names that do not resolve now, with why.
    pub fn unresolved(&self) -> Vec<Unresolved> {
        self.lock()
            .iter()
            .filter_map(|e| {
                e.error.as_ref().map(|error| Unresolved {
                    address: e.name.clone(),
                    error: error.clone(),
                })
            })
            .collect()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Entry>> {
        self.entries.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn backends(entries: &[Entry]) -> BTreeSet<Backend> {
        entries
            .iter()
            .flat_map(|e| &e.addrs)
            .map(|a| Backend {
                addr: PeerAddr::Inet(*a),
                weight: 1,
                ext: Default::default(),
            })
            .collect()
    }
}

/// One name's lookup while an upstream is built.
enum Lookup {
    /// What the upstream it replaces had.
    Kept((Vec<SocketAddr>, Option<String>)),
    /// An IP literal, parsed.
    Literal(SocketAddr),
    /// Running on a thread of its own (left behind if the resolver never answers).
    Running(std::sync::mpsc::Receiver<std::io::Result<Vec<SocketAddr>>>),
}

impl Lookup {
    fn start(name: &str) -> Lookup {
        if let Ok(addr) = name.parse::<SocketAddr>() {
            return Lookup::Literal(addr);
        }
        let (tx, rx) = std::sync::mpsc::channel();
        let name = name.to_string();
        let spawned = std::thread::Builder::new()
            .name("strangle-lookup".into())
            .spawn(move || {
                let found =
                    std::net::ToSocketAddrs::to_socket_addrs(name.as_str()).map(Iterator::collect);
                let _ = tx.send(found);
            });
        if let Err(e) = spawned {
            let (tx, rx) = std::sync::mpsc::channel();
            let _ = tx.send(Err(e));
            return Lookup::Running(rx);
        }
        Lookup::Running(rx)
    }

    /// The addresses and the error, waiting for a running lookup until `deadline`.
    fn finish(self, deadline: std::time::Instant) -> (Vec<SocketAddr>, Option<String>) {
        match self {
            Lookup::Kept(kept) => kept,
            Lookup::Literal(addr) => (vec![addr], None),
            Lookup::Running(rx) => {
                let left = deadline.saturating_duration_since(std::time::Instant::now());
                match rx.recv_timeout(left) {
                    Ok(Ok(addrs)) => usable(addrs.into_iter()),
                    Ok(Err(e)) => (Vec::new(), Some(e.to_string())),
                    Err(_) => (
                        Vec::new(),
                        Some(format!("no answer within {LOOKUP_TIMEOUT:?}")),
                    ),
                }
            }
        }
    }
}

/// A configured address that does not resolve, as `/status` shows it.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Unresolved {
    pub address: String,
    pub error: String,
}

/// The addresses a lookup found, in a stable order; none is an error too.
fn usable(found: impl Iterator<Item = SocketAddr>) -> (Vec<SocketAddr>, Option<String>) {
    let mut addrs: Vec<SocketAddr> = found.collect();
    addrs.sort();
    addrs.dedup();
    if addrs.is_empty() {
        (addrs, Some("the name has no addresses".to_string()))
    } else {
        (addrs, None)
    }
}

/// The load balancer's handle on a [`Dns`] that the upstream also reads (for `/status`).
pub struct Discovery(pub Arc<Dns>);

#[async_trait]
impl ServiceDiscovery for Discovery {
    async fn discover(&self) -> pingora::Result<(BTreeSet<Backend>, HashMap<u64, bool>)> {
        self.0.discover().await
    }
}

impl Dns {
    async fn discover(&self) -> pingora::Result<(BTreeSet<Backend>, HashMap<u64, bool>)> {
        if !self.primed.swap(true, Ordering::Relaxed) {
            return Ok((Self::backends(&self.lock()), HashMap::new()));
        }
        // Each name's lookup: a new one, or the one still running from an earlier round.
        let jobs: Vec<_> = self
            .lock()
            .iter_mut()
            .filter(|e| !e.literal)
            .map(|e| {
                let job = e.pending.take().unwrap_or_else(|| {
                    let name = e.name.clone();
                    tokio::task::spawn_blocking(move || {
                        std::net::ToSocketAddrs::to_socket_addrs(name.as_str())
                            .map(Iterator::collect)
                    })
                });
                (e.name.clone(), job)
            })
            .collect();
        let mut found = Vec::with_capacity(jobs.len());
        for (name, mut job) in jobs {
            let result = match tokio::time::timeout(LOOKUP_TIMEOUT, &mut job).await {
                Ok(Ok(Ok(addrs))) => usable(addrs.into_iter()),
                Ok(Ok(Err(e))) => (Vec::new(), Some(e.to_string())),
                Ok(Err(e)) => (Vec::new(), Some(format!("the lookup failed: {e}"))),
                Err(_) => {
                    if let Some(e) = self.lock().iter_mut().find(|e| e.name == name) {
                        e.pending = Some(job);
                    }
                    (
                        Vec::new(),
                        Some(format!("no answer within {LOOKUP_TIMEOUT:?}")),
                    )
                }
            };
            found.push((name, result));
        }
        let mut entries = self.lock();
        for (name, (addrs, error)) in found {
            let Some(e) = entries.iter_mut().find(|e| e.name == name) else {
                continue;
            };
            match (&e.error, &error) {
                (None, Some(err)) => tracing::warn!(upstream = %self.upstream, address = %name,
                    kept = e.addrs.len(),
                    "cannot resolve the address: {err}; keeping the addresses it last had"),
                (Some(_), None) => tracing::info!(upstream = %self.upstream, address = %name,
                    addresses = addrs.len(), "the address resolves again"),
                _ => {}
            }
            if error.is_none() {
                if addrs != e.addrs {
                    tracing::info!(upstream = %self.upstream, address = %name,
                        "resolved to {addrs:?} (was {:?})", e.addrs);
                }
                e.addrs = addrs;
            }
            e.error = error;
        }
        Ok((Self::backends(&entries), HashMap::new()))
    }
}

#[cfg(test)]
mod tests;
