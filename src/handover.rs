//! Zero-downtime upgrade: the running process hands its listening sockets to a new one.
//!
//! `strangle serve --upgrade` (the new binary, on the same config) waits up to 5 seconds on the
//! upgrade socket; SIGQUIT to the running process sends it every listening socket (proxy, TLS
//! and admin) with Pingora's descriptor hand-over protocol (`pingora::server::Fds`: the
//! addresses in the payload, the descriptors as `SCM_RIGHTS`). The new process adopts the
//! sockets of the addresses its config still listens on and binds the others; the old one
//! stops accepting, drains and exits. The listening sockets are never closed in between (both
//! processes hold them for a moment), so the kernel queues connections that arrive during the
//! switch instead of refusing them.
//!
//! The upgrade socket lives in a directory only this user can enter (`/tmp/strangle-UID/`
//! unless `--upgrade-socket` says otherwise): Pingora makes the socket itself writable by
//! anyone, and a process that connected to it first could hand strangle a socket of its own.
//!
//! This is the one module that may use `unsafe` (the crate denies it everywhere else): taking
//! ownership of a received descriptor has no safe form.
#![allow(unsafe_code)]

use std::collections::HashMap;
use std::net::SocketAddr;
use std::os::fd::{FromRawFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};

use std::time::{Duration, Instant};

use pingora::server::Fds;

/// How long the old process waits, after handing the sockets over, for the new one to say it
/// listens on all of them (`say_ready`); meanwhile it goes on serving.
pub const READY_WITHIN: Duration = Duration::from_secs(10);

/// The file the new process makes beside the upgrade socket once it listens on everything.
fn ready_path(sock: &Path) -> PathBuf {
    sock.with_extension("ready")
}

/// Called by the new process once it listens on every socket: the old one may stop accepting.
pub fn say_ready(sock: &Path) {
    if let Err(e) = std::fs::write(ready_path(sock), std::process::id().to_string()) {
        tracing::error!(
            "cannot tell the old process it may stop ({e}); it goes on serving next to this one"
        );
    }
}

/// Waits (blocking) for `say_ready`; `true` once it came (the file is removed), `false` after
/// `within` or once `stop` is set. Only a regular file of this user, in the private directory,
/// is the word: anything else is left where it is and ignored.
pub fn await_ready(sock: &Path, within: Duration, stop: &std::sync::atomic::AtomicBool) -> bool {
    let path = ready_path(sock);
    let start = Instant::now();
    while start.elapsed() < within && !stop.load(std::sync::atomic::Ordering::Acquire) {
        let ours = sock.parent().is_some_and(|d| is_private(d).is_ok())
            && owned_by_us(&path, |t| t.is_file());
        if ours && std::fs::remove_file(&path).is_ok() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    false
}

/// Whether `path` is there, not a symlink, of the type `kind` accepts, and this user's.
fn owned_by_us(path: &Path, kind: impl Fn(&std::fs::FileType) -> bool) -> bool {
    use std::os::unix::fs::MetadataExt;
    std::fs::symlink_metadata(path)
        .is_ok_and(|m| kind(&m.file_type()) && m.uid() == nix::unistd::getuid().as_raw())
}

/// Where the hand-over happens for the config at `config` when `--upgrade-socket` is not
/// given: `/tmp/strangle-UID/upgrade-HASH.sock`, HASH of the config's absolute path (so two
/// instances on one machine do not meet). The directory is made (mode 0700) or checked.
pub fn socket_path(config: &Path, given: Option<PathBuf>) -> anyhow::Result<PathBuf> {
    let path = match given {
        Some(p) => p,
        None => {
            // One name whatever the spelling of the path (`./x.toml`, `a/../x.toml`, a symlink).
            let abs = std::fs::canonicalize(config)
                .or_else(|_| std::path::absolute(config))
                .unwrap_or_else(|_| config.to_path_buf());
            let hash = xxhash_rust::xxh3::xxh3_64(abs.as_os_str().as_encoded_bytes());
            let uid = nix::unistd::getuid();
            std::env::temp_dir()
                .join(format!("strangle-{uid}"))
                .join(format!("upgrade-{hash:016x}.sock"))
        }
    };
    if let Some(dir) = path.parent() {
        private_dir(dir)?;
    }
    // sockaddr_un holds 108 bytes with its terminating NUL.
    if path.as_os_str().len() > 107 {
        anyhow::bail!(
            "the upgrade socket path {} is longer than a Unix socket's 107 bytes",
            path.display()
        );
    }
    Ok(path)
}

/// Makes `dir` (mode 0700) or checks that it is ours and no one else's.
fn private_dir(dir: &Path) -> anyhow::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    match std::fs::DirBuilder::new().mode(0o700).create(dir) {
        Ok(()) => return Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(e) => anyhow::bail!(
            "cannot make the upgrade socket's directory {}: {e}",
            dir.display()
        ),
    }
    is_private(dir)
}

/// Checks that `dir` is a directory of this user that no one else can enter (again at every
/// hand-over: a /tmp cleaner may have removed it, and someone else made it since).
fn is_private(dir: &Path) -> anyhow::Result<()> {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let meta = std::fs::symlink_metadata(dir)?;
    let uid = nix::unistd::getuid().as_raw();
    if !meta.is_dir() || meta.uid() != uid || meta.permissions().mode() & 0o077 != 0 {
        anyhow::bail!(
            "the upgrade socket's directory {} must be a directory of this user (uid {uid}) that no one else can enter (chmod 700)",
            dir.display()
        );
    }
    Ok(())
}

/// The sockets received from the process being replaced, by address.
#[derive(Debug, Default)]
pub struct Inherited {
    fds: HashMap<String, OwnedFd>,
}

impl Inherited {
    /// Waits (up to 5 seconds, Pingora's protocol) for the running process to send its
    /// sockets. Nothing received: the error says so and the caller binds afresh.
    pub fn receive(path: &Path) -> anyhow::Result<Inherited> {
        use std::os::unix::fs::FileTypeExt;
        if let Ok(meta) = std::fs::symlink_metadata(path) {
            if !meta.file_type().is_socket() {
                anyhow::bail!(
                    "{} is there and is not a socket; remove it (or pick another --upgrade-socket)",
                    path.display()
                );
            }
        }
        let path_str = path.to_string_lossy().into_owned();
        let mut fds = Fds::new();
        // Pingora's receiver panics on some failures (another process took the socket's path
        // meanwhile): that is an error here, not a crash.
        let hook = std::panic::take_hook();
        std::panic::set_hook(Box::new(|_| {}));
        let got = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            fds.get_from_sock(path_str.as_str())
        }));
        std::panic::set_hook(hook);
        match got {
            Ok(Ok(())) => {}
            Ok(Err(e)) => anyhow::bail!("no sockets received on {}: {e}", path.display()),
            Err(_) => anyhow::bail!(
                "no sockets received on {}: the socket went away while waiting (another `--upgrade` took its path?)",
                path.display()
            ),
        }
        let (binds, raw) = fds.serialize();
        let mut out = HashMap::new();
        for (bind, fd) in binds.into_iter().zip(raw) {
            // SAFETY: `fd` arrived in this process by SCM_RIGHTS a moment ago
            // (`Fds::get_from_sock` hands each descriptor over once and keeps no other
            // reference to it); nothing else in the process knows of it, so this is its only
            // owner, and it is closed when the `OwnedFd` drops.
            let owned = unsafe { OwnedFd::from_raw_fd(fd) };
            out.insert(bind, owned);
        }
        Ok(Inherited { fds: out })
    }

    /// The inherited listening socket for `addr`, when one came and it is a listening TCP
    /// socket bound to exactly that address (anything else is closed).
    pub fn take(&mut self, addr: SocketAddr) -> Option<std::net::TcpListener> {
        let fd = self.fds.remove(&addr.to_string())?;
        let socket = socket2::Socket::from(fd);
        let fits = socket.r#type().ok() == Some(socket2::Type::STREAM)
            && socket.is_listener().unwrap_or(false)
            && socket.local_addr().ok().and_then(|a| a.as_socket()) == Some(addr);
        if !fits {
            tracing::warn!(%addr, "an inherited socket is not a TCP listener on its address; closed, binding afresh");
            return None;
        }
        socket.set_nonblocking(true).ok()?;
        Some(socket.into())
    }

    /// How many sockets were received.
    pub fn len(&self) -> usize {
        self.fds.len()
    }

    pub fn is_empty(&self) -> bool {
        self.fds.is_empty()
    }

    /// Closes the sockets the new config does not listen on any more; returns their addresses.
    pub fn close_rest(self) -> Vec<String> {
        self.fds.into_keys().collect()
    }
}

/// Sends `listeners` (address, descriptor) to the process waiting on `path`, retrying for up to
/// 5 seconds while none waits. Blocking.
pub fn send(path: &Path, listeners: &[(String, RawFd)]) -> anyhow::Result<usize> {
    use std::os::unix::fs::FileTypeExt;
    // A word from an earlier hand-over is no word from this one.
    let _ = std::fs::remove_file(ready_path(path));
    // Only to a socket this user made, in a directory only this user can enter: the sockets
    // are the proxy's ports, and whoever receives them serves its traffic.
    let dir = path.parent().unwrap_or(Path::new("/"));
    let start = Instant::now();
    loop {
        is_private(dir).map_err(|e| anyhow::anyhow!("not handing the sockets over: {e}"))?;
        if owned_by_us(path, |t| t.is_socket()) {
            break;
        }
        if std::fs::symlink_metadata(path).is_ok() {
            anyhow::bail!(
                "not handing the sockets over: {} is not a socket of this user",
                path.display()
            );
        }
        if start.elapsed() > Duration::from_secs(5) {
            anyhow::bail!("no new process waits on {}", path.display());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let mut fds = Fds::new();
    for (addr, fd) in listeners {
        fds.add(addr.clone(), *fd);
    }
    let path_str = path.to_string_lossy().into_owned();
    fds.send_to_sock(path_str.as_str())
        .map_err(|e| anyhow::anyhow!("no new process took the sockets on {}: {e}", path.display()))
}
