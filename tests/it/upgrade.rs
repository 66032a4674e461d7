//! Zero-downtime upgrade: `strangle serve --upgrade` takes the listening sockets of the running
//! process (SIGQUIT hands them over), under steady traffic, with no connection refused and no
//! request failed; the old process drains and exits 0.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use nix::sys::signal::Signal;

use crate::support::*;

/// What the load saw.
#[derive(Default)]
struct Tally {
    answered: AtomicUsize,
    /// `connect` failed: the port refused (or reset) a connection.
    refused: AtomicUsize,
    /// A request written that got no complete answer, or an answer other than 200.
    failed: AtomicUsize,
}

/// Requests on kept-alive connections, a new connection whenever the proxy closes one (every
/// fifth connection also closes itself after one request, so new connections keep coming).
fn load(port: u16, stop: Arc<AtomicBool>, tally: Arc<Tally>) {
    let mut n = 0usize;
    while !stop.load(Ordering::SeqCst) {
        n += 1;
        let Ok(stream) = TcpStream::connect(("127.0.0.1", port)) else {
            tally.refused.fetch_add(1, Ordering::SeqCst);
            std::thread::sleep(Duration::from_millis(5));
            continue;
        };
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        let mut reader = BufReader::new(stream);
        let one_shot = n % 5 == 0;
        loop {
            let req: &[u8] = if one_shot {
                b"GET /bookings HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n"
            } else {
                b"GET /bookings HTTP/1.1\r\nHost: a\r\n\r\n"
            };
            if reader.get_mut().write_all(req).is_err() {
                break; // closed before this request was written: not a lost request
            }
            match read_answer(&mut reader) {
                Some((200, close)) => {
                    tally.answered.fetch_add(1, Ordering::SeqCst);
                    if close || one_shot || stop.load(Ordering::SeqCst) {
                        break;
                    }
                }
                _ => {
                    tally.failed.fetch_add(1, Ordering::SeqCst);
                    break;
                }
            }
        }
    }
}

/// Status and whether the answer said `Connection: close`; `None` when the connection ended
/// before a whole answer.
fn read_answer(reader: &mut BufReader<TcpStream>) -> Option<(u16, bool)> {
    let mut status = String::new();
    if reader.read_line(&mut status).ok()? == 0 {
        return None;
    }
    let code = status.get(9..12)?.parse().ok()?;
    let (mut close, mut length) = (false, 0usize);
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).ok()? == 0 {
            return None;
        }
        let l = line.trim_end().to_ascii_lowercase();
        if l.is_empty() {
            break;
        }
        close |= l == "connection: close";
        if let Some(v) = l.strip_prefix("content-length: ") {
            length = v.parse().ok()?;
        }
    }
    let mut body = vec![0u8; length];
    reader.read_exact(&mut body).ok()?;
    Some((code, close))
}

/// The new process, on the old one's config, taking its sockets.
fn start_upgrade(proxy: &Proxy) -> Child {
    let stderr = std::fs::File::create(proxy.dir.path().join("stderr-new.log")).unwrap();
    Command::new(bin())
        .args(["serve", "--upgrade", "-c"])
        .arg(&proxy.config)
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .stdout(Stdio::null())
        .stderr(stderr)
        .spawn()
        .unwrap()
}

/// Every request to `legacy`, the default upstream.
fn legacy_only(legacy: &Backend) -> String {
    Config::new()
        .default("legacy")
        .upstream("legacy", &legacy.addr())
        .build()
}

struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn an_upgrade_under_load_refuses_no_connection_and_fails_no_request() {
    let (legacy, new) = (Backend::start("legacy"), Backend::start("new"));
    let mut proxy = Proxy::start(&split_config(&legacy, &new, "0%", "none"));
    let port = proxy.port;
    let stop = Arc::new(AtomicBool::new(false));
    let tally = Arc::new(Tally::default());
    let clients: Vec<_> = (0..6)
        .map(|_| {
            let (s, t) = (Arc::clone(&stop), Arc::clone(&tally));
            std::thread::spawn(move || load(port, s, t))
        })
        .collect();
    eventually(
        Duration::from_secs(30),
        "300 requests before the upgrade",
        || tally.answered.load(Ordering::SeqCst) >= 300,
    );

    let new_process = Killed(start_upgrade(&proxy));
    let new_log = proxy.dir.path().join("stderr-new.log");
    std::thread::sleep(Duration::from_millis(300));
    proxy.signal(nix::sys::signal::Signal::SIGQUIT);
    let before = tally.answered.load(Ordering::SeqCst);
    // The old process hands over, drains and exits 0.
    let status = proxy.child.wait().unwrap();
    assert_eq!(status.code(), Some(0), "{}", proxy.stderr());
    assert!(
        proxy.stderr().contains("listening sockets handed over"),
        "{}",
        proxy.stderr()
    );
    let new_stderr = || std::fs::read_to_string(&new_log).unwrap_or_default();
    // The sockets may still be on their way (the new process looks for them once a second):
    // the kernel holds them meanwhile.
    assert!(
        wait_until(Duration::from_secs(5), || new_stderr()
            .contains("took the listening sockets")),
        "{}",
        new_stderr()
    );
    // The new process serves on: traffic goes on after the old one is gone.
    let after_exit = tally.answered.load(Ordering::SeqCst);
    eventually(
        Duration::from_secs(10),
        "200 more requests after the old process exited",
        || tally.answered.load(Ordering::SeqCst) >= after_exit + 200,
    );
    stop.store(true, Ordering::SeqCst);
    for c in clients {
        c.join().unwrap();
    }
    let (answered, refused, failed) = (
        tally.answered.load(Ordering::SeqCst),
        tally.refused.load(Ordering::SeqCst),
        tally.failed.load(Ordering::SeqCst),
    );
    assert_eq!(
        (refused, failed),
        (0, 0),
        "{answered} answered ({before} before SIGQUIT)"
    );
    // The admin API moved with it.
    let r = Client::connect(proxy.admin_port)
        .get("/ready", &[])
        .unwrap();
    assert_eq!(r.status, 200);
    assert!(new_stderr().contains("strangle serving"));
    drop(new_process);
}

#[test]
fn an_upgrade_with_no_running_process_binds_afresh_and_a_port_in_use_stops_it() {
    let legacy = Backend::start("legacy");
    let text = legacy_only(&legacy);
    let proxy = Proxy::start(&text);
    // The running one is not told (no SIGQUIT): the new one waits 5 s, then cannot bind.
    let out = Command::new(bin())
        .args(["serve", "--upgrade", "-c"])
        .arg(&proxy.config)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = stderr_of(&out);
    assert!(err.contains("no sockets received"), "{err}");
    assert!(err.contains("cannot listen"), "{err}");
    assert_eq!(get(proxy.port, "/", &[]).status, 200);
}

#[test]
fn a_new_process_that_fails_after_taking_the_sockets_leaves_the_old_one_serving() {
    let legacy = Backend::start("legacy");
    let text = legacy_only(&legacy);
    let mut proxy = Proxy::start(&text);
    // The config the new process reads listens on one more address, which another program
    // holds: it takes the sockets, then cannot bind that one.
    let held = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let held_addr = held.local_addr().unwrap();
    let config = std::fs::read_to_string(&proxy.config).unwrap();
    let listen = format!("listen = [\"127.0.0.1:{}\"]", proxy.port);
    assert!(config.contains(&listen), "{config}");
    std::fs::write(
        &proxy.config,
        config.replace(
            &listen,
            &format!("listen = [\"127.0.0.1:{}\", \"{held_addr}\"]", proxy.port),
        ),
    )
    .unwrap();
    let mut new_process = start_upgrade(&proxy);
    std::thread::sleep(Duration::from_millis(300));
    proxy.signal(nix::sys::signal::Signal::SIGQUIT);
    let status = new_process.wait().unwrap();
    assert!(!status.success());
    let new_stderr =
        std::fs::read_to_string(proxy.dir.path().join("stderr-new.log")).unwrap_or_default();
    assert!(
        new_stderr.contains(&format!("cannot listen for the proxy on {held_addr}")),
        "{new_stderr}"
    );
    // The old process never stopped accepting: served while it waits for a word from the new
    // one, and after it gave up waiting.
    assert_eq!(get(proxy.port, "/", &[]).status, 200);
    assert!(
        proxy.wait_for_log("did not say it listens", Duration::from_secs(20)),
        "{}",
        proxy.stderr()
    );
    for _ in 0..20 {
        assert_eq!(get(proxy.port, "/", &[]).status, 200);
    }
    assert!(
        proxy.child.try_wait().unwrap().is_none(),
        "the old process exited"
    );
    assert_eq!(proxy.admin("GET", "/ready", b"").status, 200);
    drop(held);
}

/// An upgrade stopped while it starts (Ctrl-C, or SIGTERM from a deploy that gave up) never
/// leaves nothing listening: stopped while it waits for the sockets, it ends at once and the
/// old process, asked to hand them over, goes on serving (found by an adversarial review: the
/// new process took the sockets, said it served, then acted on the signal and exited, and the
/// old one had stopped).
#[test]
fn an_upgrade_stopped_while_it_starts_leaves_the_old_process_serving() {
    let legacy = Backend::start("legacy");
    let mut proxy = Proxy::start(&legacy_only(&legacy));
    for signal in [Signal::SIGINT, Signal::SIGTERM] {
        let mut new_process = start_upgrade(&proxy);
        std::thread::sleep(Duration::from_millis(700));
        let pid = nix::unistd::Pid::from_raw(new_process.id() as i32);
        nix::sys::signal::kill(pid, signal).unwrap();
        let stopped = wait_until(Duration::from_secs(3), || {
            new_process.try_wait().unwrap().is_some()
        });
        assert!(stopped, "{signal}: the new process went on waiting");
        proxy.signal(Signal::SIGQUIT);
        std::thread::sleep(Duration::from_millis(500));
        for _ in 0..10 {
            assert_eq!(get(proxy.port, "/", &[]).status, 200, "{signal}");
        }
        assert!(
            proxy.child.try_wait().unwrap().is_none(),
            "the old process exited"
        );
    }
    assert_eq!(proxy.admin("GET", "/ready", b"").status, 200);
}

#[test]
fn sockets_go_only_to_a_socket_of_this_user_in_a_directory_no_one_else_can_enter() {
    use std::os::unix::fs::PermissionsExt;
    let legacy = Backend::start("legacy");
    let text = legacy_only(&legacy);
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o700)).unwrap();
    let sock = dir.path().join("u.sock");
    let proxy = Proxy::start_with_env(
        &text,
        &[("STRANGLE_UPGRADE_SOCKET", sock.to_str().unwrap())],
    );
    // Served once: the signal handlers are in place (they are installed as serving starts).
    assert_eq!(get(proxy.port, "/", &[]).status, 200);
    // Someone else's socket at the path (another user's process bound it): refused.
    let stranger = std::os::unix::net::UnixListener::bind(&sock).unwrap();
    stranger.set_nonblocking(true).unwrap();
    nix::unistd::chown(&sock, Some(nix::unistd::Uid::from_raw(65534)), None).unwrap();
    proxy.signal(nix::sys::signal::Signal::SIGQUIT);
    assert!(
        proxy.wait_for_log("is not a socket of this user", Duration::from_secs(10)),
        "{}",
        proxy.stderr()
    );
    assert!(
        stranger.accept().is_err(),
        "the sockets went to a stranger's socket"
    );
    assert_eq!(get(proxy.port, "/", &[]).status, 200);
    // Our socket, but in a directory others can enter (a /tmp cleaner removed ours and
    // someone made it again, say): refused.
    nix::unistd::chown(&sock, Some(nix::unistd::getuid()), None).unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
    proxy.signal(nix::sys::signal::Signal::SIGQUIT);
    assert!(
        proxy.wait_for_log("no one else can enter", Duration::from_secs(10)),
        "{}",
        proxy.stderr()
    );
    assert!(stranger.accept().is_err());
    assert_eq!(get(proxy.port, "/", &[]).status, 200);
    assert_eq!(proxy.admin("GET", "/ready", b"").status, 200);
}
