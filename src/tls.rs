//! TLS listeners at run time: the certificate each handshake gets, and the handshake itself.
//!
//! **Certificates.** Each `[[server.tls]]` listener has an `Endpoint`: its pairs as loaded,
//! the default first. A handshake takes the pair whose name the client's SNI matches (an exact
//! name before a wildcard), else the default, from the table in force (one atomic load; no
//! lock, no allocation). The files are watched by polling their metadata once a second
//! (`poll`), which sees every way a file is replaced: in place, renamed over, and a Kubernetes
//! Secret volume's `..data` symlink swap (the paths resolve to new files). A change is loaded
//! once the files have stayed the same for one poll (a certificate and key copied one after
//! the other are not caught half-way). A pair that does not load (unreadable, mismatched,
//! expired) is logged and counted, and the pair in force stays: open connections never notice
//! a reload, and new ones get the new pair as soon as it loaded.
//!
//! **Handshakes** run in the connection's task, bounded by `handshake-timeout`; a failure or a
//! timeout is counted and closes the connection. What the client negotiated by ALPN decides
//! the engine (`http1::Http1`): `h2` goes to Pingora's HTTP/2 server, `http/1.1` (or nothing)
//! stays on the HTTP/1 transport with its head deadline and small idle state.

use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;
use pingora::listeners::tls::Acceptor;
use pingora::protocols::Stream;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

use crate::config::tls::{CertFiles, Tls};

/// One TLS listener's certificates and counters.
pub struct Endpoint {
    /// The listener's first address, naming it in logs and metrics.
    pub label: String,
    files: Vec<CertFiles>,
    table: ArcSwap<Vec<Loaded>>,
    /// Per pair, metadata seen changed at the last poll and not loaded yet.
    pending: Mutex<Vec<Option<Stamps>>>,
    pub reloads: AtomicU64,
    pub reload_failures: AtomicU64,
    pub handshake_failures: AtomicU64,
    pub handshake_timeouts: AtomicU64,
}

/// A pair in force.
struct Loaded {
    key: Arc<CertifiedKey>,
    names: Vec<String>,
    not_after: i64,
    /// The files' metadata when they were read (or last failed to load).
    stamps: Option<Stamps>,
}

/// What tells a file changed: it is another file (device, inode), or it was written (size,
/// modification and change times).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stamp {
    dev: u64,
    ino: u64,
    len: u64,
    mtime: (i64, i64),
    ctime: (i64, i64),
}

type Stamps = (Stamp, Stamp);

fn stamp(path: &Path) -> Option<Stamp> {
    let m = std::fs::metadata(path).ok()?;
    Some(Stamp {
        dev: m.dev(),
        ino: m.ino(),
        len: m.len(),
        mtime: (m.mtime(), m.mtime_nsec()),
        ctime: (m.ctime(), m.ctime_nsec()),
    })
}

fn stamps(files: &CertFiles) -> Option<Stamps> {
    Some((stamp(&files.cert)?, stamp(&files.key)?))
}

/// Reads and checks a pair now.
fn load(files: &CertFiles) -> Result<crate::certs::Pair, String> {
    use crate::config::read::{read_bytes, MAX_FILE_BYTES};
    let cert = read_bytes(&files.cert, MAX_FILE_BYTES).map_err(|e| e.to_string())?;
    let key = read_bytes(&files.key, MAX_FILE_BYTES).map_err(|e| e.to_string())?;
    crate::certs::parse(&cert, &key, SystemTime::now())
}

impl Endpoint {
    /// Loads every pair of `tls`; an error names the files and what is wrong.
    pub fn load(tls: &Tls) -> Result<Endpoint, String> {
        let mut table = Vec::new();
        for files in &tls.pairs {
            let before = stamps(files);
            let pair = load(files)
                .map_err(|e| format!("{} / {}: {e}", files.cert.display(), files.key.display()))?;
            table.push(Loaded {
                key: pair.key,
                names: pair.names,
                not_after: pair.not_after,
                stamps: before,
            });
        }
        if table.is_empty() {
            return Err("a TLS listener without a certificate".into());
        }
        Ok(Endpoint {
            label: tls
                .listen
                .first()
                .map_or_else(String::new, ToString::to_string),
            pending: Mutex::new(vec![None; table.len()]),
            files: tls.pairs.clone(),
            table: ArcSwap::from_pointee(table),
            reloads: AtomicU64::new(0),
            reload_failures: AtomicU64::new(0),
            handshake_failures: AtomicU64::new(0),
            handshake_timeouts: AtomicU64::new(0),
        })
    }

    /// Looks at the files once: loads pairs whose files changed and then stayed the same for a
    /// poll. Blocking (metadata and reads): call it off the runtime's workers.
    pub fn poll(&self) {
        let table = self.table.load_full();
        let mut pending = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        let mut next: Option<Vec<Loaded>> = None;
        for (i, files) in self.files.iter().enumerate() {
            let now = stamps(files);
            if now == table[i].stamps {
                pending[i] = None;
                continue;
            }
            if now.is_none() {
                // Gone (deleted, or unreadable): the pair loaded stays in use; said (and
                // counted as a failed reload) once.
                self.reload_failures.fetch_add(1, Ordering::Relaxed);
                tracing::error!(listener = %self.label, cert = %files.cert.display(), key = %files.key.display(), "a certificate or key file cannot be read; the pair loaded before stays in use");
                next.get_or_insert_with(|| copy(&table))[i].stamps = None;
                pending[i] = None;
                continue;
            }
            if pending[i] != now {
                // Changed since the last look: loaded once it stays as it is for a poll.
                pending[i] = now;
                continue;
            }
            pending[i] = None;
            let next = next.get_or_insert_with(|| copy(&table));
            match load(files) {
                Ok(pair) => {
                    tracing::info!(listener = %self.label, cert = %files.cert.display(), names = ?pair.names, not_after = %crate::certs::rfc3339(pair.not_after), "certificate reloaded; new connections get it");
                    self.reloads.fetch_add(1, Ordering::Relaxed);
                    next[i] = Loaded {
                        key: pair.key,
                        names: pair.names,
                        not_after: pair.not_after,
                        stamps: now,
                    };
                }
                Err(e) => {
                    tracing::error!(listener = %self.label, cert = %files.cert.display(), key = %files.key.display(), "certificate not reloaded: {e}; the pair loaded before stays in use");
                    self.reload_failures.fetch_add(1, Ordering::Relaxed);
                    // Not tried again until the files change again.
                    next[i].stamps = now;
                }
            }
        }
        if let Some(next) = next {
            self.table.store(Arc::new(next));
        }
    }

    /// Per pair in force: its certificate file, its first name, and the end of its validity.
    pub fn in_force(&self) -> Vec<(String, String, i64)> {
        self.table
            .load()
            .iter()
            .zip(&self.files)
            .map(|(l, f)| {
                let name = l.names.first().cloned().unwrap_or_default();
                (f.cert.display().to_string(), name, l.not_after)
            })
            .collect()
    }

    /// The pair for a client that asked for `name` (`None`: sent no SNI).
    fn pick(&self, name: Option<&str>) -> Option<Arc<CertifiedKey>> {
        let table = self.table.load();
        if let Some(name) = name {
            let name = name.strip_suffix('.').unwrap_or(name);
            let covered = |wildcard: bool| {
                table.iter().find(|l| {
                    l.names
                        .iter()
                        .any(|n| n.starts_with("*.") == wildcard && crate::certs::covers(n, name))
                })
            };
            let (exact, wild) = (covered(false), || covered(true));
            if let Some(l) = exact.or_else(wild) {
                return Some(Arc::clone(&l.key));
            }
        }
        table.first().map(|l| Arc::clone(&l.key))
    }
}

fn copy(table: &[Loaded]) -> Vec<Loaded> {
    table
        .iter()
        .map(|l| Loaded {
            key: Arc::clone(&l.key),
            names: l.names.clone(),
            not_after: l.not_after,
            stamps: l.stamps,
        })
        .collect()
}

impl std::fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Endpoint")
            .field("label", &self.label)
            .field("files", &self.files)
            .finish_non_exhaustive()
    }
}

impl ResolvesServerCert for Endpoint {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.pick(hello.server_name())
    }
}

/// A TLS listener's handshake: its acceptor, deadline and counters.
pub struct Handshake {
    acceptor: Acceptor,
    timeout: Duration,
    /// HTTP/1.1 is offered: without it, a client that negotiated nothing is refused too.
    http11: bool,
    pub endpoint: Arc<Endpoint>,
}

impl Handshake {
    /// The handshake of `tls`'s listeners with `endpoint`'s certificates.
    pub fn new(tls: &Tls, endpoint: Arc<Endpoint>) -> anyhow::Result<Handshake> {
        use rustls::version::{TLS12, TLS13};
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let versions: &[&rustls::SupportedProtocolVersion] = if tls.tls13_only {
            &[&TLS13]
        } else {
            &[&TLS12, &TLS13]
        };
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_protocol_versions(versions)?
            .with_no_client_auth()
            .with_cert_resolver(Arc::clone(&endpoint) as Arc<dyn ResolvesServerCert>);
        config.alpn_protocols = [(tls.h2, &b"h2"[..]), (tls.http11, &b"http/1.1"[..])]
            .into_iter()
            .filter(|&(on, _)| on)
            .map(|(_, p)| p.to_vec())
            .collect();
        // Resumption across connections (TLS 1.3 tickets), keys rotated every 6 hours.
        config.ticketer = rustls::crypto::ring::Ticketer::new()?;
        Ok(Handshake {
            acceptor: Acceptor::from_server_config(Arc::new(config)),
            timeout: tls.handshake_timeout,
            http11: tls.http11,
            endpoint,
        })
    }

    /// The TLS stream over `stream` and the server name the client asked for (SNI, as
    /// routing compares hosts), or `None` (counted) when the client failed or took longer than
    /// the deadline.
    pub async fn accept(
        &self,
        stream: pingora::protocols::l4::stream::Stream,
    ) -> Option<(Stream, Option<Arc<str>>)> {
        match tokio::time::timeout(self.timeout, self.acceptor.tls_handshake(stream)).await {
            Ok(Ok(tls)) => {
                use pingora::protocols::Ssl;
                let sni = tls
                    .get_ssl()
                    .and_then(|t| t.server_name())
                    .and_then(crate::routing::host::normalize)
                    .map(|n| Arc::from(n.as_ref()));
                let h2 = matches!(
                    tls.selected_alpn_proto(),
                    Some(pingora::protocols::ALPN::H2)
                );
                if !h2 && !self.http11 {
                    // An `h2`-only listener: a client that negotiated no protocol would be
                    // served HTTP/1.1, which the listener does not offer.
                    self.endpoint
                        .handshake_failures
                        .fetch_add(1, Ordering::Relaxed);
                    return None;
                }
                Some((Box::new(tls), sni))
            }
            Ok(Err(e)) => {
                self.endpoint
                    .handshake_failures
                    .fetch_add(1, Ordering::Relaxed);
                tracing::debug!(listener = %self.endpoint.label, "TLS handshake failed: {e}");
                None
            }
            Err(_) => {
                self.endpoint
                    .handshake_timeouts
                    .fetch_add(1, Ordering::Relaxed);
                tracing::debug!(listener = %self.endpoint.label, "TLS handshake took longer than {:?}", self.timeout);
                None
            }
        }
    }
}

tokio::task_local! {
    /// The server name (SNI) of the TLS connection being served, for the tasks that serve its
    /// requests (`sni`).
    static SNI: Option<Arc<str>>;
}

/// The server name the client asked for when it made the TLS connection this request came
/// on (`None` over plain TCP, or when it named none).
pub fn sni() -> Option<Arc<str>> {
    SNI.try_with(Clone::clone).ok().flatten()
}

/// Runs `f` with `name` as the connection's server name (`sni`).
pub async fn with_sni<F: std::future::Future>(name: Option<Arc<str>>, f: F) -> F::Output {
    SNI.scope(name, f).await
}

#[cfg(test)]
mod tests;
