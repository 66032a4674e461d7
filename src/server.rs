//! `strangle serve`: builds the Pingora server from a validated config and runs it until
//! SIGTERM (drain, then exit 0) or SIGINT (exit at once).

use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use pingora::server::configuration::ServerConf;
use pingora::server::{RunArgs, Server, ShutdownSignal, ShutdownSignalWatch};
use pingora::services::background::background_service;
use tokio::signal::unix::{signal, SignalKind};

use crate::admin::AdminService;
use crate::http1::listener::ProxyListeners;
use crate::http1::Http1;
use crate::lifecycle::Lifecycle;
use crate::proxy::{Fast, Strangle};
use crate::services::{
    Background, ConfigWatcher, EmfReporter, EmfService, HealthChecks, JwksRefresher, OtlpExport,
    StateSaver, StatsSampler,
};
use crate::state::{Live, Snapshot};
use crate::stats::Registry;
use crate::telemetry::AccessLogger;

/// Loads the config, then runs the proxy. Returns only on a start-up error. With `upgrade`,
/// the listening sockets are taken from the process running on this config (`handover`).
pub fn serve(path: PathBuf, upgrade: bool, upgrade_socket: Option<PathBuf>) -> anyhow::Result<()> {
    // Before any thread starts: they all inherit it (see `early`).
    early::hold();
    let _ = rustls::crypto::ring::default_provider().install_default();
    // No transparent huge pages: mimalloc asks for them on its arenas, and a 2 MiB page is
    // resident as a whole as soon as one byte of it is touched. They made a fresh proxy 24 MB
    // resident instead of 16 and a warm one 28 instead of 18 (benches/idle.sh), for no
    // measurable throughput: a proxy's heap is small and its hot set fits the TLB anyway. In
    // a sidecar with a memory limit that is most of the budget.
    let thp = nix::sys::prctl::set_thp_disable(true);
    let config = crate::config::load(&path)?;
    crate::telemetry::init_logging(&config.log);
    if let Err(e) = thp {
        tracing::info!("transparent huge pages stay allowed: {e}");
    }
    for w in &config.warnings {
        tracing::warn!("{}", w.as_warning());
    }
    let server_cfg = config.server.clone();
    let access = Arc::new(AccessLogger::new(config.log.access.clone()));
    let registry = Arc::new(Registry::default());
    let snapshot = Snapshot::build(config, None, &registry)?;
    let live = Arc::new(Live::new(path, snapshot, registry));
    let _ = live.access_log.set(Arc::clone(&access));
    // What earlier processes counted: what the monolith serves, and the burn-down's days.
    crate::inventory::report::load(
        &live.load().inventory,
        &crate::inventory::report::path_for(&live.path),
    );
    live.registry
        .load_burn_down(&crate::stats::burndown::path_for(&live.path));

    let conf = ServerConf {
        threads: server_cfg.threads,
        // `Drain` exits as soon as the in-flight requests are done and the kept-alive
        // connections closed, or at `grace-period` marks what is left as cut off.
        // One second more than ours: `Drain` marks what is left as cut off at `grace-period`,
        // then Pingora's runtime shutdown drops those requests (each is logged on the way).
        grace_period_seconds: Some(server_cfg.grace_period.as_secs() + 1),
        graceful_shutdown_timeout_seconds: Some(1),
        // Pingora's own read and write timeouts of a second or more use tokio's timer (made
        // only when a read or write has to wait) instead of its shared coarse timer, whose
        // thread wakes every 10 ms whether or not anything is due: on one core, as a sidecar
        // with a CPU limit runs, that thread competes with the worker.
        fast_timeout_to_tokio_threshold_seconds: Some(0),
        ..ServerConf::default()
    };
    let handover = match crate::handover::socket_path(&live.path, upgrade_socket) {
        Ok(p) => Some(p),
        Err(e) if upgrade => return Err(e),
        Err(e) => {
            tracing::warn!("SIGQUIT cannot hand the sockets over: {e}");
            None
        }
    };
    // Everything that can fail is settled before the sockets are taken: a process that took
    // them and then failed would leave nothing listening.
    let tls = tls_handshakes(&server_cfg, &live)?;
    let mut inherited = crate::handover::Inherited::default();
    let mut received = false;
    if let (true, Some(sock)) = (upgrade, &handover) {
        // Waiting for the sockets, a stop signal ends the process at once: nothing is taken.
        early::release();
        let received_sockets = crate::handover::Inherited::receive(sock);
        early::hold();
        match received_sockets {
            Ok(got) => {
                tracing::info!(
                    sockets = got.len(),
                    "took the listening sockets of the running process"
                );
                inherited = got;
                received = true;
            }
            Err(e) => tracing::warn!(
                "{e}; binding the listeners afresh (a running process keeps them: then this fails)"
            ),
        }
    }
    let admin_addr = live.load().config.admin.listen;
    let admin_listener = match inherited.take(admin_addr) {
        Some(l) => l,
        None => std::net::TcpListener::bind(admin_addr)
            .and_then(|l| l.set_nonblocking(true).map(|()| l))
            .map_err(|e| anyhow::anyhow!("cannot listen for the admin API on {admin_addr}: {e}"))?,
    };
    let mut server = Server::new_with_opt_and_conf(None, conf);
    server.bootstrap();

    // One adapter, two engines: Pingora's proxy and the fast path drive the same hooks.
    let strangle = Strangle {
        live: Arc::clone(&live),
        access: Arc::clone(&access),
    };
    let mut app = pingora::proxy::HttpProxy::new(strangle.clone(), server.configuration.clone());
    let malformed: crate::http1::Malformed = {
        let strangle = strangle.clone();
        Arc::new(move |peer, status| strangle.malformed(peer, status))
    };
    app.handle_init_modules();
    // No connection reaches Pingora's own server loop: `Http1` serves HTTP/1 and hands HTTP/2
    // (h2c or ALPN) to its own accept loop (`http1::http2`), which reads the idle timeout and
    // body timeout from the transport's settings and the HTTP/2 limits from here.
    app.server_options = Some(pingora::apps::HttpServerOptions::default());
    app.h2_options = Some(h2_options(&server_cfg));
    let listeners = bind_listeners(&server_cfg, tls, &mut inherited)?;
    let unused = inherited.close_rest();
    if !unused.is_empty() {
        tracing::info!(
            ?unused,
            "closed inherited sockets this config does not listen on"
        );
    }
    // What SIGQUIT hands to a new process: every listening socket, by address.
    let mut sockets: Vec<(String, std::os::fd::RawFd)> = listeners
        .iter()
        .map(|b| (addr_of(&b.listener), b.listener.as_raw_fd()))
        .collect();
    sockets.push((addr_of(&admin_listener), admin_listener.as_raw_fd()));
    let handover_sockets = handover.map(|sock| (sock, sockets));
    let proxy = ProxyListeners {
        name: "strangle proxy".to_string(),
        app: Arc::new(Http1 {
            inner: Arc::new(app),
            fast: fast_path_enabled().then(|| {
                Arc::new(Fast::new(strangle, &server.configuration))
                    as Arc<dyn crate::http1::Engine>
            }),
            head_timeout: server_cfg.header_timeout,
            settings: live.transport_settings(),
            lifecycle: Arc::clone(&live.lifecycle),
            h2c: server_cfg.h2c,
            malformed: Some(malformed),
        }),
        listeners,
        threads: server_cfg.threads,
        lifecycle: Arc::clone(&live.lifecycle),
    };
    server.add_service(proxy);
    crate::proxy::start_shadows(&live, &access);
    let live_ = || Arc::clone(&live);
    let emf = Arc::new(EmfReporter::new(live_(), Arc::clone(&access)));
    server.add_service(background_service(
        "background",
        Background {
            services: vec![
                Arc::new(ConfigWatcher { live: live_() }),
                Arc::new(HealthChecks { live: live_() }),
                Arc::new(JwksRefresher { live: live_() }),
                Arc::new(StatsSampler { live: live_() }),
                Arc::new(crate::services::CertWatcher { live: live_() }),
                Arc::new(StateSaver { live: live_() }),
                Arc::new(crate::admin::RolloutDriver { live: live_() }),
                Arc::new(OtlpExport { live: live_() }),
                Arc::new(EmfService {
                    reporter: Arc::clone(&emf),
                }),
                Arc::new(AdminService {
                    live: live_(),
                    access: Arc::clone(&access),
                    listener: std::sync::Mutex::new(Some(admin_listener)),
                }),
            ],
        },
    ));

    live.lifecycle.log_cut_offs_to(Arc::clone(&access));
    // A stop signal that came while starting ends the process now, before it says it serves
    // (the process that handed the sockets over then goes on serving): said ready, it would
    // have to act on the signal later and leave nothing listening.
    early::settle();
    // Listening on everything: the process that handed the sockets over may stop accepting.
    if let (true, Some((sock, _))) = (received, &handover_sockets) {
        crate::handover::say_ready(sock);
    }
    tracing::info!(listen = ?server_cfg.listen, tls = ?server_cfg.tls.iter().flat_map(|t| &t.listen).collect::<Vec<_>>(), h2c = server_cfg.h2c, admin = %live.load().config.admin.listen, config = %live.path.display(), "strangle serving");
    server.run(RunArgs {
        shutdown_signal: Box::new(Drain {
            grace: server_cfg.grace_period,
            handover: handover_sockets,
            stopping: Arc::default(),
            emf: Arc::clone(&emf),
            live: Arc::clone(&live),
            lifecycle: Arc::clone(&live.lifecycle),
        }),
    });
    // A fast shutdown (SIGINT) waits for nothing more than the last lines (EMF's, the access
    // log's, the history's) and the inventory's save.
    emf.flush();
    crate::services::save_state(&live);
    live.history.flush();
    std::process::exit(0)
}

/// HTTP/2's limits: as many streams at once as `max-concurrent-streams`, and a header list no
/// larger than an HTTP/1 head may be (`max-header-bytes`).
fn h2_options(server: &crate::config::Server) -> pingora::protocols::http::v2::server::H2Options {
    let mut h2 = pingora::protocols::http::v2::server::default_h2_options();
    h2.max_concurrent_streams(server.max_concurrent_streams);
    h2.max_header_list_size(u32::try_from(server.max_header_bytes).unwrap_or(u32::MAX));
    // Streams the HTTP/2 library itself resets as malformed before the connection is closed
    // (its default is 1024; Pingora's own bound for those it refuses is 32).
    h2.max_local_error_reset_streams(Some(32));
    h2
}

/// Binds every proxy listener, plain and TLS, loading each TLS listener's certificates (a
/// pair that does not load stops the start, with the files and the reason).
/// Each TLS listener's handshake, its certificates loaded (a pair that does not load stops the
/// start, with the files and the reason).
fn tls_handshakes(
    server: &crate::config::Server,
    live: &Live,
) -> anyhow::Result<Vec<Arc<crate::tls::Handshake>>> {
    let mut endpoints = Vec::new();
    let mut handshakes = Vec::new();
    for tls in &server.tls {
        let endpoint = crate::tls::Endpoint::load(tls)
            .map(Arc::new)
            .map_err(|e| anyhow::anyhow!("TLS listener {:?}: {e}", tls.listen))?;
        handshakes.push(Arc::new(crate::tls::Handshake::new(
            tls,
            Arc::clone(&endpoint),
        )?));
        endpoints.push(endpoint);
    }
    let _ = live.registry.tls.set(endpoints);
    Ok(handshakes)
}

fn bind_listeners(
    server: &crate::config::Server,
    tls: Vec<Arc<crate::tls::Handshake>>,
    inherited: &mut crate::handover::Inherited,
) -> anyhow::Result<Vec<crate::http1::listener::Bound>> {
    use crate::http1::listener::{bind, Bound};
    let mut bind = |addr| match inherited.take(addr) {
        Some(l) => Ok(l),
        None => {
            bind(addr).map_err(|e| anyhow::anyhow!("cannot listen for the proxy on {addr}: {e}"))
        }
    };
    let mut bound = Vec::new();
    for &addr in &server.listen {
        bound.push(Bound {
            listener: bind(addr)?,
            tls: None,
        });
    }
    for (tls, handshake) in server.tls.iter().zip(tls) {
        for &addr in &tls.listen {
            bound.push(Bound {
                listener: bind(addr)?,
                tls: Some(Arc::clone(&handshake)),
            });
        }
    }
    Ok(bound)
}

/// A listener's address as the hand-over names it.
fn addr_of(l: &std::net::TcpListener) -> String {
    l.local_addr()
        .map_or_else(|_| String::new(), |a| a.to_string())
}

/// Turns SIGTERM into: stop accepting, wait for in-flight requests (at most `grace`), exit 0;
/// and SIGQUIT into the same once the listening sockets went to a new process.
struct Drain {
    grace: Duration,
    /// The upgrade socket and the listening sockets SIGQUIT hands over.
    handover: Option<(PathBuf, Vec<(String, std::os::fd::RawFd)>)>,
    /// Set on SIGTERM or SIGINT: a hand-over under way stops waiting.
    stopping: Arc<std::sync::atomic::AtomicBool>,
    emf: Arc<EmfReporter>,
    live: Arc<Live>,
    lifecycle: Arc<Lifecycle>,
}

/// What a drained exit waits for (each bounded): the last EMF interval and the access log's last
/// lines and, when tracing is on, the exporters' last spans and log records.
fn flush_telemetry(emf: &EmfReporter, live: &Live) {
    emf.flush();
    crate::services::save_state(live);
    live.history.flush();
    if let Some(otlp) = &live.load().config.telemetry.otlp {
        // The two exporters flush at the same time: the second wait is what is left of it.
        let until = std::time::Instant::now()
            + crate::telemetry::export::FLUSH_TIMEOUT
            + Duration::from_secs(1);
        live.registry
            .spans
            .wait_flushed(until.saturating_duration_since(std::time::Instant::now()));
        if otlp.logs {
            live.registry
                .logs
                .wait_flushed(until.saturating_duration_since(std::time::Instant::now()));
        }
    }
}

#[async_trait]
impl ShutdownSignalWatch for Drain {
    async fn recv(&self) -> ShutdownSignal {
        let (Ok(mut term), Ok(mut int), Ok(mut quit)) = (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
            signal(SignalKind::quit()),
        ) else {
            tracing::error!("cannot install signal handlers; stopping");
            return ShutdownSignal::FastShutdown;
        };
        // A hand-over under way (it waits for the new process); other signals still count.
        let mut handing: Option<tokio::task::JoinHandle<bool>> = None;
        // The handlers are in place: a signal held back since the start arrives now.
        early::release();
        loop {
            let busy = handing.is_some();
            let handed = async {
                match handing.as_mut() {
                    Some(h) => h.await.unwrap_or(false),
                    None => std::future::pending().await,
                }
            };
            let got = tokio::select! {
                _ = int.recv() => Got::Int,
                _ = quit.recv(), if !busy => Got::Quit,
                done = handed => Got::Handed(done),
                _ = term.recv() => Got::Term,
            };
            match got {
                Got::Int => {
                    self.stopping
                        .store(true, std::sync::atomic::Ordering::Release);
                    let left = self.lifecycle.in_flight();
                    tracing::warn!(left, "SIGINT: stopping at once, without draining ({left} requests in flight are cut off; SIGTERM drains)");
                    return ShutdownSignal::FastShutdown;
                }
                Got::Quit => handing = self.hand_over(),
                Got::Handed(done) => {
                    handing = None;
                    if done {
                        self.lifecycle.mark_handed_over();
                        tracing::info!(grace = ?self.grace, "the new process serves on the listening sockets; stopping accepting and draining");
                        return self.drain();
                    }
                }
                Got::Term => {
                    self.stopping
                        .store(true, std::sync::atomic::Ordering::Release);
                    tracing::info!(grace = ?self.grace, "SIGTERM: draining in-flight requests");
                    return self.drain();
                }
            }
        }
    }
}

/// A signal the drain watch acts on.
enum Got {
    Int,
    Quit,
    Handed(bool),
    Term,
}

/// The drain watch's signals (SIGINT, SIGTERM, SIGQUIT) are held back from the start of
/// `serve` until the watch listens (`Drain::recv`, started by Pingora's loop): without a
/// handler then, one of them would take the default action and end the process on the spot,
/// cutting off what it had accepted. One that came while starting (or waiting for a
/// hand-over's sockets) acts at once, by its default action, just before strangle says it
/// serves (`settle`): a process that took over the sockets must never say it serves and then
/// stop. From there to the watch, a signal is held and reaches the watch as soon as it
/// listens. Every thread strangle starts inherits the mask, so none takes
/// such a signal by default; processes it starts do not (the standard library resets it).
mod early {
    use nix::sys::signal::{pthread_sigmask, SigSet, SigmaskHow, Signal};

    fn set() -> SigSet {
        let mut set = SigSet::empty();
        for s in [Signal::SIGINT, Signal::SIGTERM, Signal::SIGQUIT] {
            set.add(s);
        }
        set
    }

    /// Holds the signals back in this thread and in every thread it starts from now on.
    pub(super) fn hold() {
        if let Err(e) = pthread_sigmask(SigmaskHow::SIG_BLOCK, Some(&set()), None) {
            eprintln!("strangle: cannot hold signals back until the server loop starts: {e}");
        }
    }

    /// Lets a signal held since the start act now, by its default action (the process ends),
    /// then holds them again until the drain watch listens.
    pub(super) fn settle() {
        release();
        hold();
    }

    /// Lets them through to this thread: the drain watch's handlers are in place (or a signal
    /// may end the process by its default action, as while it waits for a hand-over).
    pub(super) fn release() {
        if let Err(e) = pthread_sigmask(SigmaskHow::SIG_UNBLOCK, Some(&set()), None) {
            tracing::error!("cannot let signals through to the drain watch: {e}");
        }
    }
}

impl Drain {
    /// SIGQUIT: sends the listening sockets to the process started with `--upgrade` (waiting
    /// up to 5 seconds for one), then waits for it to say it listens on all of them. The task
    /// ends `true` once it did; `false` when no process took them or the one that did never
    /// said so: this process goes on serving, as if nothing happened (a new binary that failed
    /// to start must not take the old one down; it still holds every socket).
    fn hand_over(&self) -> Option<tokio::task::JoinHandle<bool>> {
        let Some((sock, sockets)) = self.handover.clone() else {
            tracing::error!(
                "SIGQUIT: no upgrade socket (see the start-up warning); going on serving"
            );
            return None;
        };
        tracing::info!(socket = %sock.display(), "SIGQUIT: handing the listening sockets to the new process");
        let stopping = Arc::clone(&self.stopping);
        Some(tokio::task::spawn_blocking(move || {
            if let Err(e) = crate::handover::send(&sock, &sockets) {
                tracing::error!("SIGQUIT: {e}; going on serving (start `strangle serve --upgrade` first, then send SIGQUIT within 5 seconds)");
                return false;
            }
            tracing::info!(
                "listening sockets handed over; serving on until the new process says it listens"
            );
            if !crate::handover::await_ready(&sock, crate::handover::READY_WITHIN, &stopping) {
                if stopping.load(std::sync::atomic::Ordering::Acquire) {
                    return false;
                }
                tracing::error!("the new process took the sockets but did not say it listens within {:?}; going on serving (both processes accept now; stop the new one if it failed)", crate::handover::READY_WITHIN);
                return false;
            }
            true
        }))
    }

    /// Starts draining: `/ready` turns 503, every response says `Connection: close`, and the
    /// process exits once nothing is in flight and no connection is open, or at the grace
    /// period, when what is left is logged and counted as cut off.
    fn drain(&self) -> ShutdownSignal {
        let grace = self.grace;
        let emf = Arc::clone(&self.emf);
        let live = Arc::clone(&self.live);
        let lifecycle = Arc::clone(&self.lifecycle);
        lifecycle.start_draining();
        // Pingora stops the listeners when this returns; this task ends the process as soon as
        // nothing is in flight instead of sleeping out the whole grace period.
        tokio::spawn(async move {
            let start = Instant::now();
            // Requests already read but not yet counted get a moment to register.
            tokio::time::sleep(Duration::from_millis(100)).await;
            // Kept-alive connections get one more request each (answered with
            // `Connection: close`) and close when idle for `DRAIN_LINGER`.
            let busy = || lifecycle.in_flight() > 0 || lifecycle.open_connections() > 0;
            while busy() && start.elapsed() < grace {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            let left = lifecycle.in_flight();
            if left == 0 {
                // Blocking waits, bounded: off the runtime's workers.
                let _ = tokio::task::spawn_blocking(move || flush_telemetry(&emf, &live)).await;
                tracing::info!("drained; exiting");
                std::process::exit(0);
            }
            // The rest are ended by the runtime's shutdown, which drops them: each is logged
            // and counted as cut off on the way (`Ctx`'s drop).
            tracing::warn!(
                left,
                "grace period over: {left} requests still in flight are cut off"
            );
            lifecycle.mark_cut_off();
            std::thread::spawn(move || {
                // In case the runtime's shutdown does not return.
                std::thread::sleep(Duration::from_secs(5));
                flush_telemetry(&emf, &live);
                std::process::exit(0);
            });
        });
        ShutdownSignal::GracefulTerminate
    }
}

/// Whether plain HTTP/1 requests take the fast path (`proxy::Fast`): on unless
/// `STRANGLE_HTTP1_FAST_PATH=off`, which serves every request through Pingora's proxy (to
/// compare the two in a benchmark, or to rule the fast path out when chasing a problem).
fn fast_path_enabled() -> bool {
    std::env::var("STRANGLE_HTTP1_FAST_PATH").map_or(true, |v| v != "off")
}
