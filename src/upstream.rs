//! Upstreams: an HTTP service (a balanced, health-checked address set, or one base URL) or a
//! Lambda function invoked directly.

pub mod dns;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant, SystemTime};

use arc_swap::ArcSwap;
use http::HeaderValue;
use pingora::lb::health_check::{HttpHealthCheck, TcpHealthCheck};
use pingora::lb::selection::RoundRobin;
use pingora::lb::{Backend, Backends, LoadBalancer};
use pingora::protocols::tls::CaType;
use pingora::upstreams::peer::HttpPeer;
use pingora::utils::tls::{parse_x509, WrappedX509};

use crate::config::{self, Target};
use crate::lambda::LambdaUpstream;
use crate::stats::UpstreamStats;

/// A live HTTP upstream.
pub struct HttpUpstream {
    pub config: config::Upstream,
    lb: LoadBalancer<RoundRobin>,
    tls: bool,
    sni: String,
    /// The Host header to send instead of the client's, for `url` upstreams.
    pub host_header: Option<HeaderValue>,
    ca: Option<Arc<CaType>>,
    /// Requests now being served by this upstream (kept across reloads by name).
    pub stats: Arc<UpstreamStats>,
    /// Passive health and the last health change, one per address (replaced when a name
    /// resolves to other addresses; an address kept keeps its state).
    addresses: ArcSwap<Vec<Arc<AddressHealth>>>,
    /// The configured addresses and what they resolve to.
    dns: Arc<dns::Dns>,
    /// A discovery (name lookups) is running.
    discovering: AtomicBool,
}

/// Milliseconds since the first call: a cheap monotonic clock for health deadlines.
fn now_ms() -> u64 {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    EPOCH.get_or_init(Instant::now).elapsed().as_millis() as u64
}

fn unix_secs() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// What real requests taught about one address (passive health), and when its health last
/// changed either way.
#[derive(Debug)]
struct AddressHealth {
    addr: SocketAddr,
    /// Consecutive failed requests (no response, reset, timeout, refused connect).
    fails: AtomicU32,
    /// Out of rotation until this `now_ms`; 0 when in rotation.
    ejected_until: AtomicU64,
    /// The health last reported (active and passive together), and since when (unix seconds).
    up: AtomicBool,
    changed_at: AtomicU64,
}

/// One address's health as `/status` and `/metrics` show it.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct AddressStatus {
    pub address: String,
    pub up: bool,
    /// The active health check's verdict.
    pub healthy: bool,
    /// Out of rotation after consecutive failures of real requests.
    pub ejected: bool,
    pub consecutive_failures: u32,
    /// When `up` last changed (unix seconds).
    pub since: u64,
}

impl HttpUpstream {
    /// Builds the upstream, resolving its addresses (this may block on DNS: call it off the
    /// request path). A name that does not resolve leaves the upstream without its addresses
    /// until it does (see [`dns`]); it never fails the build.
    pub fn new(
        config: &config::Upstream,
        stats: Arc<UpstreamStats>,
        previous: Option<&HttpUpstream>,
    ) -> HttpUpstream {
        let (addresses, tls, sni, host_header) = match &config.target {
            Target::Lambda(_) => unreachable!("lambda targets are built by Upstream::new"),
            Target::Addresses(addrs) => (addrs.clone(), false, String::new(), None),
            Target::Url {
                tls, host, port, ..
            } => {
                let default_port = if *tls { 443 } else { 80 };
                let authority = match (host.contains(':'), *port == default_port) {
                    (true, true) => format!("[{host}]"),
                    (true, false) => format!("[{host}]:{port}"),
                    (false, true) => host.clone(),
                    (false, false) => format!("{host}:{port}"),
                };
                let addr = config.target.socket_authority().unwrap_or_default();
                (
                    vec![addr],
                    *tls,
                    host.clone(),
                    HeaderValue::from_str(&authority).ok(),
                )
            }
        };
        let dns = Arc::new(dns::Dns::new(
            &config.name,
            &addresses,
            previous.map(|p| &*p.dns),
        ));
        let mut lb = LoadBalancer::<RoundRobin>::from_backends(Backends::new(Box::new(
            dns::Discovery(Arc::clone(&dns)),
        )));
        // The first discovery hands over what `Dns::new` found: it completes at once.
        {
            let first = std::pin::pin!(lb.update());
            let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
            if let std::task::Poll::Ready(Err(e)) = first.poll(&mut cx) {
                tracing::warn!(upstream = %config.name, "no addresses yet: {e}");
            }
        }
        // The certificates the config read from `ca-file`: the file is not read again here.
        let ca = config.ca_file.as_ref().map(|_| {
            let wrapped: Vec<WrappedX509> = config
                .ca_certs
                .iter()
                .map(|c| WrappedX509::new(c.as_ref().to_vec(), parse_x509))
                .collect();
            Arc::from(wrapped.into_boxed_slice())
        });
        match &config.health_check_path {
            Some(path) => {
                let host = host_header
                    .as_ref()
                    .and_then(|h| h.to_str().ok())
                    .unwrap_or("localhost");
                let mut hc = HttpHealthCheck::new(host, tls);
                if let Ok(mut req) =
                    pingora::http::RequestHeader::build("GET", path.as_bytes(), None)
                {
                    let _ = req.insert_header("Host", host);
                    hc.req = req;
                }
                hc.peer_template.options.connection_timeout = Some(config.connect_timeout);
                hc.peer_template.options.read_timeout =
                    Some(config.timeout.min(Duration::from_secs(5)));
                hc.peer_template.options.ca = ca.clone();
                lb.set_health_check(Box::new(hc));
            }
            None => {
                // Reachability only: a TLS handshake here would need the upstream's trust
                // settings and proves little more than the connect does.
                let mut hc = TcpHealthCheck::new();
                hc.peer_template.options.connection_timeout = Some(config.connect_timeout);
                lb.set_health_check(hc);
            }
        }
        lb.health_check_frequency = Some(config.health_check_interval);
        let addresses = ArcSwap::from_pointee(Self::address_health(&lb, &[]));
        HttpUpstream {
            addresses,
            dns,
            discovering: AtomicBool::new(false),
            ca,
            stats,
            config: config.clone(),
            lb,
            tls,
            sni,
            host_header,
        }
    }

    /// One health record per address the balancer has, keeping the records of `kept`.
    fn address_health(
        lb: &LoadBalancer<RoundRobin>,
        kept: &[Arc<AddressHealth>],
    ) -> Vec<Arc<AddressHealth>> {
        let now = unix_secs();
        lb.backends()
            .get_backend()
            .iter()
            .filter_map(|b| b.addr.as_inet().copied())
            .map(|addr| {
                kept.iter()
                    .find(|h| h.addr == addr)
                    .cloned()
                    .unwrap_or_else(|| {
                        Arc::new(AddressHealth {
                            addr,
                            fails: AtomicU32::new(0),
                            ejected_until: AtomicU64::new(0),
                            up: AtomicBool::new(true),
                            changed_at: AtomicU64::new(now),
                        })
                    })
            })
            .collect()
    }

    /// Picks an address in rotation (healthy by the active check and not ejected by failed
    /// requests), avoiding one that just failed. If none is, one that is not avoided is still
    /// better than none, and the avoided one better than nothing: try it anyway.
    pub fn select(&self, avoid: Option<SocketAddr>) -> Option<Backend> {
        let not_avoided = |b: &Backend| avoid.is_none_or(|a| b.addr.as_inet() != Some(&a));
        let now = now_ms();
        let addresses = self.addresses.load();
        let in_rotation = |b: &Backend| {
            b.addr
                .as_inet()
                .and_then(|a| addresses.iter().find(|h| h.addr == *a))
                .is_none_or(|h| h.ejected_until.load(Ordering::Relaxed) <= now)
        };
        self.lb
            .select_with(b"", 32, |b, healthy| {
                healthy && not_avoided(b) && in_rotation(b)
            })
            .or_else(|| self.lb.select_with(b"", 32, |b, _| not_avoided(b)))
            // The only address: a fresh connection to it is still a retry.
            .or_else(|| self.lb.select_with(b"", 32, |_, _| true))
    }

    /// Passive health: a real request to `addr` got a response (`ok`) or failed without one.
    /// `max-fails` failures in a row take the address out of rotation for `fail-timeout`;
    /// after that it gets real requests again, and one more failure takes it out again.
    pub fn report(&self, addr: SocketAddr, ok: bool) {
        let addresses = self.addresses.load();
        let Some(h) = addresses.iter().find(|h| h.addr == addr) else {
            return;
        };
        if ok {
            if h.fails.load(Ordering::Relaxed) != 0 {
                h.fails.store(0, Ordering::Relaxed);
            }
            if h.ejected_until.load(Ordering::Relaxed) != 0 {
                h.ejected_until.store(0, Ordering::Relaxed);
                tracing::info!(upstream = %self.config.name, address = %addr,
                    "address back in rotation: a request succeeded");
                self.observe(h);
            }
            return;
        }
        let fails = h.fails.fetch_add(1, Ordering::Relaxed).saturating_add(1);
        let max = self.config.max_fails;
        if max > 0 && fails as usize >= max {
            let until = now_ms() + self.config.fail_timeout.as_millis() as u64;
            let was = h.ejected_until.swap(until, Ordering::Relaxed);
            if was <= now_ms() {
                tracing::warn!(upstream = %self.config.name, address = %addr, failures = fails,
                    "address out of rotation for {:?} after consecutive failed requests",
                    self.config.fail_timeout);
            }
            self.observe(h);
        }
    }

    /// Each address's health now; also notes when it changed.
    pub fn health(&self) -> Vec<AddressStatus> {
        self.addresses
            .load()
            .iter()
            .map(|h| {
                let (healthy, ejected, up) = self.observe(h);
                AddressStatus {
                    address: h.addr.to_string(),
                    up,
                    healthy,
                    ejected,
                    consecutive_failures: h.fails.load(Ordering::Relaxed),
                    since: h.changed_at.load(Ordering::Relaxed),
                }
            })
            .collect()
    }

    /// One address's health (active check, passive ejection, both together); when the
    /// combined verdict differs from the last one seen, `changed_at` is set.
    fn observe(&self, h: &AddressHealth) -> (bool, bool, bool) {
        let backends = self.lb.backends();
        let healthy = backends
            .get_backend()
            .iter()
            .find(|b| b.addr.as_inet() == Some(&h.addr))
            .is_none_or(|b| backends.ready(b));
        let ejected = h.ejected_until.load(Ordering::Relaxed) > now_ms();
        let up = healthy && !ejected;
        if h.up.swap(up, Ordering::Relaxed) != up {
            h.changed_at.store(unix_secs(), Ordering::Relaxed);
        }
        (healthy, ejected, up)
    }

    /// Records health changes (for `since`) without anyone asking.
    pub fn refresh_health(&self) {
        for h in self.addresses.load().iter() {
            self.observe(h);
        }
    }

    pub fn peer(&self, backend: &Backend) -> Box<HttpPeer> {
        let mut peer = Box::new(HttpPeer::new(
            backend.addr.clone(),
            self.tls,
            self.sni.clone(),
        ));
        let o = &mut peer.options;
        o.connection_timeout = Some(self.config.connect_timeout);
        o.total_connection_timeout = Some(self.config.connect_timeout + Duration::from_secs(1));
        o.read_timeout = Some(self.config.timeout);
        o.write_timeout = Some(self.config.timeout);
        o.idle_timeout = Some(self.config.idle_timeout);
        o.ca = self.ca.clone();
        peer
    }

    /// Looks the names up again (when there are any), then checks every address.
    pub async fn health_check(&self) {
        // Pingora's updates of one backend set must not overlap: a lookup slower than the
        // health-check interval skips the next one.
        if self.dns.has_names() && !self.discovering.swap(true, Ordering::Acquire) {
            let before = self.lb.backends().get_backend();
            if let Err(e) = self.lb.update().await {
                tracing::warn!(upstream = %self.config.name, "address discovery failed: {e}");
            }
            if self.lb.backends().get_backend() != before {
                let kept = self.addresses.load_full();
                self.addresses
                    .store(Arc::new(Self::address_health(&self.lb, &kept)));
            }
            self.discovering.store(false, Ordering::Release);
        }
        self.lb.backends().run_health_check(true).await;
        self.refresh_health();
    }

    /// The configured addresses that do not resolve now.
    pub fn unresolved(&self) -> Vec<dns::Unresolved> {
        self.dns.unresolved()
    }
}

impl std::fmt::Debug for HttpUpstream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpUpstream")
            .field("name", &self.config.name)
            .finish()
    }
}

/// An upstream of either kind, with what both share.
#[derive(Debug)]
pub struct Upstream {
    pub config: config::Upstream,
    /// Requests now being served by this upstream (kept across reloads by name).
    pub stats: Arc<UpstreamStats>,
    pub kind: Kind,
    /// `max-in-flight`: one permit per request being served.
    pub limiter: Option<Arc<tokio::sync::Semaphore>>,
}

#[derive(Debug)]
pub enum Kind {
    Http(Box<HttpUpstream>),
    Lambda(LambdaUpstream),
    /// A `url` upstream whose requests are SigV4-signed and sent by strangle's own client, which
    /// resolves the host per request (nothing is resolved at load).
    Signed,
}

impl Upstream {
    /// `previous`: the upstream of that name this one replaces on a reload (its names'
    /// addresses are kept until looked up again).
    pub fn new(
        config: &config::Upstream,
        stats: Arc<UpstreamStats>,
        previous: Option<&Upstream>,
    ) -> Upstream {
        let kind = match &config.target {
            // The function's whole answer arrives at once: every deadline bounds the call.
            Target::Lambda(t) => Kind::Lambda(LambdaUpstream::new(t, config.head_deadline())),
            _ if config.sigv4.is_some() => Kind::Signed,
            _ => {
                let previous = previous.and_then(|p| match &p.kind {
                    Kind::Http(h) => Some(&**h),
                    _ => None,
                });
                Kind::Http(Box::new(HttpUpstream::new(
                    config,
                    Arc::clone(&stats),
                    previous,
                )))
            }
        };
        Upstream {
            config: config.clone(),
            stats,
            kind,
            limiter: config
                .max_in_flight
                .map(|n| Arc::new(tokio::sync::Semaphore::new(n))),
        }
    }

    pub fn name(&self) -> &str {
        &self.config.name
    }

    /// Prefixed to every request path: the path of a `url` upstream, else empty.
    pub fn base_path(&self) -> &str {
        match &self.config.target {
            Target::Url { base_path, .. } => base_path,
            _ => "",
        }
    }

    pub async fn health_check(&self) {
        if let Kind::Http(h) = &self.kind {
            h.health_check().await;
        }
    }

    /// Whether `health_check` does anything: only HTTP upstreams have addresses to check.
    pub fn has_health_check(&self) -> bool {
        matches!(self.kind, Kind::Http(_))
    }

    pub fn health_check_interval(&self) -> Duration {
        self.config.health_check_interval
    }
}

/// A warning per configured upstream name that does not resolve now (its upstream answers 502
/// until it does), in name order.
pub fn unresolved_warnings(upstreams: &std::collections::HashMap<String, Shared>) -> Vec<String> {
    let mut out: Vec<String> = upstreams
        .iter()
        .filter_map(|(name, u)| match &u.kind {
            Kind::Http(h) => Some((name, h.unresolved())),
            _ => None,
        })
        .flat_map(|(name, unresolved)| {
            unresolved.into_iter().map(move |u| {
                format!(
                    "upstream `{name}`: cannot resolve `{}`: {}; its requests get 502 until it resolves",
                    u.address, u.error
                )
            })
        })
        .collect();
    out.sort();
    out
}

/// Upstreams are shared between snapshots when their config did not change, so a reload keeps
/// their health state and pooled connections.
pub type Shared = Arc<Upstream>;
