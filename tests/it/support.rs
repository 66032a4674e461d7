//! Fixtures: the real `strangle` binary on a free port, real HTTP backends, a plain HTTP/1.1
//! client that can also send malformed bytes, a config builder, and polling with a deadline
//! (tests wait for what they expect, never for a fixed time they hope is enough).

use std::collections::HashMap;
use std::convert::Infallible;
use std::fs::File;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;

/// A port nobody listens on right now (bind-probed).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// How often the polling helpers look again.
const POLL_EVERY: Duration = Duration::from_millis(20);

/// Polls `ready` every `every` until it holds or `within` has passed; whether it held.
pub fn poll(within: Duration, every: Duration, mut ready: impl FnMut() -> bool) -> bool {
    let start = Instant::now();
    loop {
        if ready() {
            return true;
        }
        if start.elapsed() >= within {
            return false;
        }
        std::thread::sleep(every);
    }
}

/// Polls `ready` every 20 ms for up to `within`; whether it held (for callers that add their
/// own context to the failure).
pub fn wait_until(within: Duration, ready: impl FnMut() -> bool) -> bool {
    poll(within, POLL_EVERY, ready)
}

/// Polls `ready` every 20 ms; panics, naming `what`, if it does not hold within `within`.
#[track_caller]
pub fn eventually(within: Duration, what: &str, ready: impl FnMut() -> bool) {
    assert!(
        wait_until(within, ready),
        "timed out after {within:?} waiting for {what}"
    );
}

/// Polls `probe` every 20 ms until it gives a value; panics, naming `what`, after `within`.
#[track_caller]
pub fn wait_for<T>(within: Duration, what: &str, mut probe: impl FnMut() -> Option<T>) -> T {
    let mut found = None;
    eventually(within, what, || {
        found = probe();
        found.is_some()
    });
    found.unwrap()
}

/// What a backend saw of one request.
#[derive(Debug, Clone)]
pub struct Seen {
    pub method: String,
    pub target: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Seen {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// How `Backend::answering` answers: status, content type and body, from the request and the
/// number of requests before it.
type Answerer = Arc<dyn Fn(&Seen, usize) -> (u16, &'static str, String) + Send + Sync>;

/// A real HTTP/1.1 server (hyper) that answers `200 {name}` and records every request.
/// A request with `x-delay-ms: N` is answered after N ms.
pub struct Backend {
    pub port: u16,
    pub seen: Arc<Mutex<Vec<Seen>>>,
    /// TCP connections accepted so far.
    pub connections: Arc<std::sync::atomic::AtomicUsize>,
    /// The most requests it was ever serving at once.
    pub max_concurrent: Arc<std::sync::atomic::AtomicUsize>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Backend {
    pub fn start(name: &'static str) -> Backend {
        Self::start_on(name, free_port())
    }

    pub fn start_on(name: &'static str, port: u16) -> Backend {
        Self::serve(name, port, None)
    }

    /// A backend whose answers `answer` makes from each request (and how many came before it):
    /// status, content type, body.
    pub fn answering(
        name: &'static str,
        answer: impl Fn(&Seen, usize) -> (u16, &'static str, String) + Send + Sync + 'static,
    ) -> Backend {
        Self::serve(name, free_port(), Some(Arc::new(answer)))
    }

    fn serve(name: &'static str, port: u16, answer: Option<Answerer>) -> Backend {
        let seen: Arc<Mutex<Vec<Seen>>> = Arc::default();
        let (stop_tx, mut stop_rx) = tokio::sync::oneshot::channel::<()>();
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let record = Arc::clone(&seen);
        let connections = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let accepted = Arc::clone(&connections);
        let max_concurrent = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let peak = Arc::clone(&max_concurrent);
        let current = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
                    .await
                    .unwrap();
                ready_tx.send(()).unwrap();
                loop {
                    let (stream, _) = tokio::select! {
                        _ = &mut stop_rx => return,
                        r = listener.accept() => match r { Ok(s) => s, Err(_) => continue },
                    };
                    accepted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    let record = Arc::clone(&record);
                    let (peak, current) = (Arc::clone(&peak), Arc::clone(&current));
                    let answer = answer.clone();
                    tokio::spawn(async move {
                        let service = service_fn(move |req: Request<hyper::body::Incoming>| {
                            let record = Arc::clone(&record);
                            let (peak, current) = (Arc::clone(&peak), Arc::clone(&current));
                            let answer = answer.clone();
                            async move {
                                use std::sync::atomic::Ordering::SeqCst;
                                let now = current.fetch_add(1, SeqCst) + 1;
                                peak.fetch_max(now, SeqCst);
                                let (parts, body) = req.into_parts();
                                let body = body
                                    .collect()
                                    .await
                                    .map(|b| b.to_bytes().to_vec())
                                    .unwrap_or_default();
                                let delay = parts
                                    .headers
                                    .get("x-delay-ms")
                                    .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
                                // A test asks for the status it wants the backend to answer.
                                let status = parts
                                    .headers
                                    .get("x-status")
                                    .and_then(|v| v.to_str().ok()?.parse::<u16>().ok())
                                    .unwrap_or(200);
                                let seen = Seen {
                                    method: parts.method.to_string(),
                                    target: parts.uri.to_string(),
                                    headers: parts
                                        .headers
                                        .iter()
                                        .map(|(k, v)| {
                                            (
                                                k.to_string(),
                                                String::from_utf8_lossy(v.as_bytes()).into_owned(),
                                            )
                                        })
                                        .collect(),
                                    body,
                                };
                                let (status, content_type, body) = {
                                    let mut record = record.lock().unwrap();
                                    let made = answer.as_ref().map(|f| f(&seen, record.len()));
                                    record.push(seen);
                                    made.unwrap_or((status, "text/plain", name.to_string()))
                                };
                                if let Some(ms) = delay {
                                    tokio::time::sleep(Duration::from_millis(ms)).await;
                                }
                                current.fetch_sub(1, SeqCst);
                                Ok::<_, Infallible>(
                                    Response::builder()
                                        .status(status)
                                        .header("x-backend", name)
                                        .header("content-type", content_type)
                                        .body(Full::new(Bytes::from(body)))
                                        .unwrap(),
                                )
                            }
                        });
                        let _ = hyper::server::conn::http1::Builder::new()
                            .serve_connection(TokioIo::new(stream), service)
                            .await;
                    });
                }
            });
        });
        ready_rx.recv_timeout(Duration::from_secs(5)).unwrap();
        Backend {
            port,
            seen,
            connections,
            max_concurrent,
            stop: Some(stop_tx),
            thread: Some(thread),
        }
    }

    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    pub fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }

    pub fn count(&self) -> usize {
        self.seen.lock().unwrap().len()
    }

    pub fn stop(mut self) {
        self.shutdown();
    }

    fn shutdown(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// The real `strangle serve`, on a free port, with its config in a temp dir.
pub struct Proxy {
    pub child: Child,
    pub port: u16,
    /// The admin API's port (free-probed unless the config names one).
    pub admin_port: u16,
    pub dir: tempfile::TempDir,
    pub config: PathBuf,
}

/// The environment that starts the proxy with its HTTP/1 fast path (`fast_path_off` false, as
/// it ships) or with every request through Pingora's `HttpProxy`.
pub fn engine_env(fast_path_off: bool) -> &'static [(&'static str, &'static str)] {
    if fast_path_off {
        &[("STRANGLE_HTTP1_FAST_PATH", "off")]
    } else {
        &[]
    }
}

/// Starts `python3 tests/fixtures/SCRIPT ARGS...` and waits for its "ready" line; `missing`
/// says what to install when it never comes.
pub fn start_fixture(script: &str, args: &[String], missing: &str) -> std::process::Child {
    let path = format!("{}/tests/fixtures/{script}", env!("CARGO_MANIFEST_DIR"));
    let mut child = std::process::Command::new("python3")
        .arg(path)
        .args(args)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::inherit())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(child.stdout.take().unwrap()),
        &mut line,
    )
    .unwrap();
    assert_eq!(line.trim(), "ready", "{script} did not start ({missing})");
    child
}

pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_strangle")
}

/// Serves HTTP/1 on a free loopback port from a thread of its own, each request answered by
/// `handle` (a stand-in for a service strangle calls); returns the port.
pub fn serve_http<F>(
    handle: impl Fn(Request<hyper::body::Incoming>) -> F + Clone + Send + Sync + 'static,
) -> u16
where
    F: std::future::Future<Output = Response<Full<Bytes>>> + Send + 'static,
{
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let listener = tokio::net::TcpListener::from_std(listener).unwrap();
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let handle = handle.clone();
                tokio::spawn(async move {
                    let service = service_fn(move |req| {
                        let answer = handle(req);
                        async move { Ok::<_, Infallible>(answer.await) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
    });
    port
}

/// `strangle check PATH`: whether it passed, and what it printed (stderr, then stdout).
/// `strangle serve -c PATH` for a config that must not start: asserts it exited unsuccessfully
/// and returns what it said.
pub fn serve_refused(path: &std::path::Path) -> String {
    let out = Command::new(bin())
        .args(["serve", "-c"])
        .arg(path)
        .output()
        .unwrap();
    assert!(!out.status.success(), "started: {}", stderr_of(&out));
    stderr_of(&out)
}

pub fn check(path: &std::path::Path) -> (bool, String) {
    let out = Command::new(bin()).arg("check").arg(path).output().unwrap();
    let text =
        String::from_utf8_lossy(&out.stderr).to_string() + &String::from_utf8_lossy(&out.stdout);
    (out.status.success(), text)
}

impl Proxy {
    /// Starts the proxy. `{listen}` in the text becomes its address; unless the text has a
    /// `[log]` section, the access log goes to `access.log` in the temp dir.
    pub fn start(text: &str) -> Proxy {
        Self::start_with_env(text, &[])
    }

    /// Starts the proxy with extra environment variables (AWS credentials, say).
    /// A port picked by `free_port` can be taken by another test before strangle binds it:
    /// then strangle refuses to start, and it is tried again on other ports.
    pub fn start_with_env(text: &str, env: &[(&str, &str)]) -> Proxy {
        Self::start_wrapped(text, env, &[])
    }

    /// `start_with_env`, with strangle run by the command `wrap` (its arguments follow).
    pub fn start_wrapped(text: &str, env: &[(&str, &str)], wrap: &[String]) -> Proxy {
        let mut attempts = 0;
        loop {
            let dir = tempfile::tempdir().unwrap();
            let config = dir.path().join("strangle.toml");
            let (port, admin_port) = (free_port(), free_port());
            std::fs::write(&config, Self::render(text, port, admin_port)).unwrap();
            match Self::try_spawn(dir, config, port, admin_port, env, wrap) {
                Ok(proxy) => return proxy,
                Err(e) if e.contains("in use") && attempts < 5 => attempts += 1,
                Err(e) => panic!("{e}"),
            }
        }
    }

    /// `{listen}` becomes the proxy's address and `{admin}` the admin API's; without an
    /// `[admin]` section one is added, and without `[log]` the access log goes to a file.
    pub fn render(text: &str, port: u16, admin_port: u16) -> String {
        let mut body = text
            .replace("{listen}", &format!("127.0.0.1:{port}"))
            .replace("{admin}", &format!("127.0.0.1:{admin_port}"));
        if !body.contains("[log]") {
            body.push_str("\n[log]\naccess = \"access.log\"\nlevel = \"info\"\n");
        }
        if !body.contains("[admin]") {
            body.push_str(&format!("\n[admin]\nlisten = \"127.0.0.1:{admin_port}\"\n"));
        }
        body
    }

    pub fn start_at(dir: tempfile::TempDir, config: PathBuf, port: u16, admin_port: u16) -> Proxy {
        Self::spawn(dir, config, port, admin_port, &[])
    }

    /// `start_at` with environment variables (the config may read them: `${env:NAME}`).
    pub fn start_at_with_env(
        dir: tempfile::TempDir,
        config: PathBuf,
        port: u16,
        admin_port: u16,
        env: &[(&str, &str)],
    ) -> Proxy {
        Self::spawn(dir, config, port, admin_port, env)
    }

    fn spawn(
        dir: tempfile::TempDir,
        config: PathBuf,
        port: u16,
        admin_port: u16,
        env: &[(&str, &str)],
    ) -> Proxy {
        Self::try_spawn(dir, config, port, admin_port, env, &[]).unwrap_or_else(|e| panic!("{e}"))
    }

    /// Starts strangle and waits until it serves: its port answers and it says so (a port
    /// that answers while strangle failed to bind it belongs to another test).
    fn try_spawn(
        dir: tempfile::TempDir,
        config: PathBuf,
        port: u16,
        admin_port: u16,
        env: &[(&str, &str)],
        wrap: &[String],
    ) -> Result<Proxy, String> {
        let stderr = File::create(dir.path().join("stderr.log")).unwrap();
        let mut command = match wrap.split_first() {
            Some((first, rest)) => {
                let mut c = Command::new(first);
                c.args(rest).arg(bin());
                c
            }
            None => Command::new(bin()),
        };
        let mut child = command
            .args(["serve", "-c"])
            .arg(&config)
            .envs(env.iter().copied())
            // Never let the AWS credential chain look beyond this machine.
            .env("AWS_EC2_METADATA_DISABLED", "true")
            .stdout(Stdio::piped())
            .stderr(stderr)
            .spawn()
            .unwrap();
        // Copied through a pipe, as a container runtime reads it: two writers that interleave
        // their lines on stdout would show here (a file's shared offset would hide it).
        let mut out = child.stdout.take().unwrap();
        let mut copy = File::create(dir.path().join("stdout.log")).unwrap();
        std::thread::spawn(move || std::io::copy(&mut out, &mut copy));
        let mut proxy = Proxy {
            child,
            port,
            admin_port,
            dir,
            config,
        };
        let start = Instant::now();
        while TcpStream::connect(("127.0.0.1", port)).is_err()
            || !proxy.stderr().contains("strangle serving")
        {
            if let Ok(Some(status)) = proxy.child.try_wait() {
                return Err(format!(
                    "strangle exited with {status}:\n{}",
                    proxy.stderr()
                ));
            }
            if start.elapsed() > Duration::from_secs(15) {
                return Err(format!("strangle did not start:\n{}", proxy.stderr()));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(proxy)
    }

    /// Stops the proxy with SIGTERM (a drained exit) and starts it again on the same config,
    /// directory and ports: what it kept beside the config is read back.
    pub fn restart(&mut self) -> Proxy {
        self.restart_after(|_| {})
    }

    /// `restart`, with `edit` run on the directory between the exit and the start (to change
    /// what the proxy kept there, as an operator or an older version could have).
    pub fn restart_after(&mut self, edit: impl FnOnce(&std::path::Path)) -> Proxy {
        self.signal(nix::sys::signal::Signal::SIGTERM);
        self.child.wait().unwrap();
        edit(self.dir.path());
        Proxy::start_at(
            std::mem::replace(&mut self.dir, tempfile::tempdir().unwrap()),
            self.config.clone(),
            self.port,
            self.admin_port,
        )
    }

    pub fn rewrite(&self, text: &str) {
        write_atomically(
            &self.config,
            &Self::render(text, self.port, self.admin_port),
        );
    }

    pub fn admin_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.admin_port)
    }

    /// Runs a `strangle` client command against this proxy's admin API.
    pub fn cli(&self, args: &[&str]) -> std::process::Output {
        Command::new(bin())
            .args(args)
            .env("STRANGLE_ADMIN", self.admin_url())
            .env_remove("STRANGLE_ADMIN_TOKEN")
            .output()
            .unwrap()
    }

    /// What strangle wrote to stdout so far.
    pub fn stdout(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("stdout.log")).unwrap_or_default()
    }

    pub fn stderr(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("stderr.log")).unwrap_or_default()
    }

    /// Access-log lines, parsed.
    pub fn access_log(&self) -> Vec<serde_json::Value> {
        std::fs::read_to_string(self.dir.path().join("access.log"))
            .unwrap_or_default()
            .lines()
            .map(|l| {
                serde_json::from_str(l).unwrap_or_else(|e| panic!("bad access-log line {l:?}: {e}"))
            })
            .collect()
    }

    pub fn signal(&self, sig: nix::sys::signal::Signal) {
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.child.id() as i32), sig).unwrap();
    }

    pub fn client(&self) -> Client {
        Client::connect(self.port)
    }

    /// Waits for a line in the process log.
    pub fn wait_for_log(&self, needle: &str, within: Duration) -> bool {
        wait_until(within, || self.stderr().contains(needle))
    }

    /// The access log once it has at least `n` lines (lines are written in batches), or as it
    /// is after 5 s: the caller's assertions say what was missing.
    pub fn log_when(&self, n: usize) -> Vec<serde_json::Value> {
        let mut log = Vec::new();
        wait_until(Duration::from_secs(5), || {
            log = self.access_log();
            log.len() >= n
        });
        log
    }

    /// One request to the admin API on a fresh connection.
    pub fn admin(&self, method: &str, path: &str, body: &[u8]) -> Resp {
        Client::connect(self.admin_port)
            .request(method, path, &[], body)
            .unwrap()
    }

    /// `GET /status` of the admin API, parsed.
    pub fn status(&self) -> serde_json::Value {
        let r = self.admin("GET", "/status", b"");
        serde_json::from_slice(&r.body)
            .unwrap_or_else(|e| panic!("/status is not JSON ({e}): {}", r.text()))
    }

    /// The value of an unlabelled series in `/metrics`, e.g. `strangle_config_reload_failures_total`.
    pub fn metric(&self, name: &str) -> f64 {
        let text = self.admin("GET", "/metrics", b"").text();
        text.lines()
            .find_map(|l| l.strip_prefix(&format!("{name} ")))
            .unwrap_or_else(|| panic!("no {name} in:\n{text}"))
            .parse()
            .unwrap()
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Writes a file the way editors do: a temp file renamed over the old one.
pub fn write_atomically(path: &std::path::Path, text: &str) {
    let tmp = path.with_extension("tmp~");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

/// A parsed response.
#[derive(Debug)]
pub struct Resp {
    pub status: u16,
    /// The last value of each header, by lower-case name.
    pub headers: HashMap<String, String>,
    /// Every header line in order.
    pub all_headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Resp {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).map(String::as_str)
    }
    pub fn all(&self, name: &str) -> Vec<&str> {
        self.all_headers
            .iter()
            .filter(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
            .collect()
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// A keep-alive HTTP/1.1 client over one connection.
pub struct Client {
    reader: BufReader<TcpStream>,
    port: u16,
}

impl Client {
    pub fn connect(port: u16) -> Client {
        Self::try_connect(port).unwrap()
    }

    pub fn try_connect(port: u16) -> std::io::Result<Client> {
        let stream = TcpStream::connect(("127.0.0.1", port))?;
        stream.set_read_timeout(Some(Duration::from_secs(20)))?;
        stream.set_nodelay(true)?;
        Ok(Client {
            reader: BufReader::new(stream),
            port,
        })
    }

    pub fn get(&mut self, path: &str, headers: &[(&str, &str)]) -> std::io::Result<Resp> {
        self.request("GET", path, headers, b"")
    }

    pub fn request(
        &mut self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> std::io::Result<Resp> {
        // The proxy's address as the `Host`, unless the caller gives one.
        let mut req = format!("{method} {path} HTTP/1.1\r\n");
        if !headers.iter().any(|(k, _)| k.eq_ignore_ascii_case("host")) {
            req.push_str(&format!("Host: 127.0.0.1:{}\r\n", self.port));
        }
        for (k, v) in headers {
            req.push_str(&format!("{k}: {v}\r\n"));
        }
        if !body.is_empty() || method == "POST" || method == "PUT" {
            req.push_str(&format!("Content-Length: {}\r\n", body.len()));
        }
        req.push_str("\r\n");
        let mut bytes = req.into_bytes();
        bytes.extend_from_slice(body);
        self.send_raw(&bytes)
    }

    /// Sends a request whose body the proxy may refuse before reading it all: a failed write
    /// (the proxy already answered and closed) is not an error, the answer is read anyway.
    pub fn send_early_answered(&mut self, bytes: &[u8]) -> std::io::Result<Resp> {
        let _ = self.reader.get_mut().write_all(bytes);
        read_response(&mut self.reader)
    }

    pub fn send_raw(&mut self, bytes: &[u8]) -> std::io::Result<Resp> {
        self.reader.get_mut().write_all(bytes)?;
        read_response(&mut self.reader)
    }

    /// The connection, to write a request by hand (then `read_response`).
    pub fn stream(&mut self) -> &mut TcpStream {
        self.reader.get_mut()
    }

    pub fn read_response(&mut self) -> std::io::Result<Resp> {
        read_response(&mut self.reader)
    }

    /// Reads an interim (1xx) response: a status line and headers, never a body. Returns the
    /// status.
    pub fn read_interim(&mut self) -> std::io::Result<u16> {
        let mut line = String::new();
        self.reader.read_line(&mut line)?;
        let status = line
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| std::io::Error::other(format!("bad status line {line:?}")))?;
        loop {
            let mut h = String::new();
            if self.reader.read_line(&mut h)? == 0 || h.trim_end().is_empty() {
                return Ok(status);
            }
        }
    }

    /// After a response: whether the proxy closed the connection.
    pub fn closed_by_peer(&mut self) -> bool {
        let s = self.reader.get_mut();
        s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        let mut b = [0u8; 1];
        matches!(s.read(&mut b), Ok(0))
            || matches!(s.read(&mut b), Err(ref e) if e.kind() == std::io::ErrorKind::ConnectionReset)
    }
}

fn read_response(r: &mut BufReader<TcpStream>) -> std::io::Result<Resp> {
    let mut line = String::new();
    if r.read_line(&mut line)? == 0 {
        return Err(std::io::Error::new(
            std::io::ErrorKind::UnexpectedEof,
            "connection closed",
        ));
    }
    let status: u16 = line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("bad status line {line:?}")))?;
    let mut headers = HashMap::new();
    let mut all_headers = Vec::new();
    loop {
        let mut h = String::new();
        r.read_line(&mut h)?;
        let h = h.trim_end();
        if h.is_empty() {
            break;
        }
        if let Some((k, v)) = h.split_once(':') {
            headers.insert(k.trim().to_ascii_lowercase(), v.trim().to_string());
            all_headers.push((k.trim().to_ascii_lowercase(), v.trim().to_string()));
        }
    }
    let mut body = Vec::new();
    if let Some(len) = headers.get("content-length") {
        body.resize(len.parse().unwrap_or(0), 0);
        r.read_exact(&mut body)?;
    } else if headers
        .get("transfer-encoding")
        .is_some_and(|t| t.contains("chunked"))
    {
        loop {
            let mut size = String::new();
            r.read_line(&mut size)?;
            let n = usize::from_str_radix(size.trim(), 16).map_err(std::io::Error::other)?;
            let mut chunk = vec![0; n + 2];
            r.read_exact(&mut chunk)?;
            if n == 0 {
                break;
            }
            body.extend_from_slice(&chunk[..n]);
        }
    } else if status != 204 && status != 304 {
        r.read_to_end(&mut body)?;
    }
    Ok(Resp {
        status,
        headers,
        all_headers,
        body,
    })
}

/// One request on a fresh connection.
pub fn get(port: u16, path: &str, headers: &[(&str, &str)]) -> Resp {
    Client::connect(port).get(path, headers).unwrap()
}

/// Sends raw bytes on a fresh connection; returns the response, if any, without waiting to
/// see whether the connection stays open (`raw` waits up to 2 s for that).
pub fn send_once(port: u16, bytes: &[u8]) -> Option<Resp> {
    Client::connect(port).send_raw(bytes).ok()
}

/// Sends raw bytes on a fresh connection; returns the response (if any) and whether the proxy
/// closed the connection afterwards.
pub fn raw(port: u16, bytes: &[u8]) -> (Option<Resp>, bool) {
    let mut c = Client::connect(port);
    match c.send_raw(bytes) {
        Ok(resp) => {
            let closed = c.closed_by_peer();
            (Some(resp), closed)
        }
        Err(_) => (None, true),
    }
}

/// A config's text, section by section: `[server]` with the proxy's `{listen}` placeholder
/// first, then upstreams, routes and any other section in the order they are added, a blank
/// line between sections.
///
/// ```ignore
/// Config::new()
///     .default("legacy")
///     .upstream("legacy", &legacy.addr())
///     .upstream("new", &new.addr())
///     .route("bookings", "/bookings", |r| r.legacy("legacy").new("new").shift("25%"))
///     .build()
/// ```
#[derive(Clone)]
pub struct Config {
    server: Vec<String>,
    sections: Vec<String>,
}

impl Config {
    pub fn new() -> Config {
        Config {
            server: vec![r#"listen = ["{listen}"]"#.to_string()],
            sections: Vec::new(),
        }
    }

    /// `[server] default`: the upstream for requests no route matches.
    pub fn default(self, upstream: &str) -> Config {
        self.server(&format!("default = \"{upstream}\""))
    }

    /// More `[server]` lines, as they are (`header-timeout = "1s"`).
    pub fn server(mut self, lines: &str) -> Config {
        let lines = lines.trim_matches('\n');
        if !lines.is_empty() {
            self.server.push(lines.to_string());
        }
        self
    }

    /// `[upstreams.NAME]` at one address.
    pub fn upstream(self, name: &str, addr: &str) -> Config {
        self.upstream_keys(name, &format!("addresses = [\"{addr}\"]"))
    }

    /// `[upstreams.NAME]` with these keys, as they are.
    pub fn upstream_keys(self, name: &str, keys: &str) -> Config {
        self.section(&format!("[upstreams.{name}]"), keys)
    }

    /// A `kind = "lambda"` upstream for the function `bookings` in eu-west-1, invoked at a
    /// local endpoint (a stand-in or `cargo lambda watch`).
    pub fn lambda(self, name: &str, endpoint_port: u16) -> Config {
        self.upstream_keys(
            name,
            &format!(
                "kind = \"lambda\"\nfunction = \"bookings\"\nregion = \"eu-west-1\"\nendpoint = \"http://127.0.0.1:{endpoint_port}\""
            ),
        )
    }

    /// An API Gateway stage at a local endpoint, called with IAM auth (SigV4 for execute-api).
    pub fn signed_api(self, name: &str, endpoint_port: u16) -> Config {
        self.upstream_keys(
            name,
            &format!(
                "url = \"http://127.0.0.1:{endpoint_port}/prod\"\nsigv4 = {{ service = \"execute-api\", region = \"eu-west-1\" }}"
            ),
        )
    }

    /// One `[[routes]]` entry: `id` and `path`, then what `keys` adds.
    pub fn route(self, id: &str, path: &str, keys: impl FnOnce(Route) -> Route) -> Config {
        let route = keys(Route(vec![
            format!("id = \"{id}\""),
            format!("path = \"{path}\""),
        ]));
        self.section("[[routes]]", &route.0.join("\n"))
    }

    /// Any section: its header line and its keys, as they are.
    pub fn section(mut self, header: &str, keys: &str) -> Config {
        let keys = keys.trim_matches('\n');
        self.sections.push(if keys.is_empty() {
            format!("{header}\n")
        } else {
            format!("{header}\n{keys}\n")
        });
        self
    }

    /// More keys for the section added last (an upstream's `timeout`, a route's `auth`).
    pub fn with(mut self, keys: &str) -> Config {
        let keys = keys.trim_matches('\n');
        if !keys.is_empty() {
            let last = self.sections.last_mut().expect("with() follows a section");
            last.push_str(keys);
            last.push('\n');
        }
        self
    }

    /// Text appended as it is, after a blank line (whole sections, say).
    pub fn raw(mut self, text: &str) -> Config {
        self.sections.push(text.to_string());
        self
    }

    pub fn build(&self) -> String {
        let mut text = format!("\n[server]\n{}\n", self.server.join("\n"));
        for section in &self.sections {
            text.push('\n');
            text.push_str(section);
        }
        text
    }
}

/// The keys of one `[[routes]]` entry after its `id` and `path`.
pub struct Route(Vec<String>);

impl Route {
    /// A key with a string value.
    pub fn set(mut self, key: &str, value: &str) -> Route {
        self.0.push(format!("{key} = \"{value}\""));
        self
    }

    /// A key with a value written as TOML (`true`, `["GET"]`, `{ requests = 5 }`).
    pub fn toml(mut self, key: &str, value: &str) -> Route {
        self.0.push(format!("{key} = {value}"));
        self
    }

    /// Keys written as they are (one or several lines).
    pub fn raw(mut self, lines: &str) -> Route {
        self.0.push(lines.to_string());
        self
    }

    pub fn legacy(self, upstream: &str) -> Route {
        self.set("legacy", upstream)
    }

    // Named after the route's `new` key, as `legacy` is after `legacy`.
    #[allow(clippy::wrong_self_convention)]
    pub fn new(self, upstream: &str) -> Route {
        self.set("new", upstream)
    }

    pub fn shift(self, percent: &str) -> Route {
        self.set("shift", percent)
    }

    pub fn sticky(self, key: &str) -> Route {
        self.set("sticky", key)
    }

    pub fn auth(self, name: &str) -> Route {
        self.set("auth", name)
    }
}

/// The config most small tests start from: the proxy's listener and a `monolith` upstream at
/// `backend` that is the default, then `rest` (more keys of that upstream, or more sections).
pub fn monolith_config(backend: &Backend, rest: &str) -> String {
    Config::new()
        .default("monolith")
        .upstream("monolith", &backend.addr())
        .with(rest)
        .build()
}

/// `/bookings` split between `legacy` and `new` at 0%, shadowing with `shadow` (the inline
/// table), legacy the default: more sections may be added before `build`.
pub fn shadowing(legacy: &Backend, new: &Backend, shadow: &str) -> Config {
    Config::new()
        .default("legacy")
        .upstream("legacy", &legacy.addr())
        .upstream("new", &new.addr())
        .route("bookings", "/bookings", |r| {
            r.legacy("legacy")
                .new("new")
                .shift("0%")
                .toml("shadow", shadow)
        })
}

/// The two-backend config most tests use: `/bookings` split between `legacy` (also the
/// default) and `new`, testers allowed to force a side. Its line numbers are relied on: line 17
/// is `new = "new"`.
pub fn split_config(legacy: &Backend, new: &Backend, shift: &str, sticky: &str) -> String {
    Config::new()
        .default("legacy")
        .server(r#"grace-period = "5s""#)
        .upstream("legacy", &legacy.addr())
        .upstream("new", &new.addr())
        .route("bookings", "/bookings", |r| {
            r.legacy("legacy")
                .new("new")
                .shift(shift)
                .sticky(sticky)
                .toml("override", "true")
        })
        .build()
}

/// The output of a finished command, as text.
pub fn stdout_of(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

pub fn stderr_of(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// A TLS backend for `localhost` with its own CA: answers `200 tls` and records the SNI name
/// and the request head it received.
/// What the TLS backend saw: the SNI name and the raw request head.
pub type TlsSeen = Arc<Mutex<Vec<(Option<String>, String)>>>;

pub struct TlsBackend {
    pub port: u16,
    pub ca_pem: String,
    pub seen: TlsSeen,
}

impl TlsBackend {
    pub fn start() -> TlsBackend {
        use std::sync::Arc as A;
        let ca_key = rcgen::KeyPair::generate().unwrap();
        let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let ca = rcgen::CertifiedIssuer::self_signed(ca_params, ca_key).unwrap();
        let key = rcgen::KeyPair::generate().unwrap();
        let params = rcgen::CertificateParams::new(vec!["localhost".to_string()]).unwrap();
        let cert = params.signed_by(&key, &ca).unwrap();
        let provider = A::new(rustls::crypto::ring::default_provider());
        let config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(
                vec![cert.der().clone()],
                rustls::pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into()),
            )
            .unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(A::new(config));
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let port = listener.local_addr().unwrap().port();
        let seen: TlsSeen = Arc::default();
        let record = Arc::clone(&seen);
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(listener).unwrap();
                loop {
                    let Ok((stream, _)) = listener.accept().await else { continue };
                    let (acceptor, record) = (acceptor.clone(), Arc::clone(&record));
                    tokio::spawn(async move {
                        use tokio::io::{AsyncReadExt, AsyncWriteExt};
                        let Ok(mut tls) = acceptor.accept(stream).await else { return };
                        let sni = tls.get_ref().1.server_name().map(str::to_string);
                        let mut head = Vec::new();
                        let mut buf = [0u8; 4096];
                        while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                            match tls.read(&mut buf).await {
                                Ok(0) | Err(_) => return,
                                Ok(n) => head.extend_from_slice(&buf[..n]),
                            }
                        }
                        record.lock().unwrap().push((sni, String::from_utf8_lossy(&head).into_owned()));
                        let _ = tls
                            .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nX-Backend: tls\r\nConnection: close\r\n\r\ntls")
                            .await;
                        let _ = tls.shutdown().await;
                    });
                }
            });
        });
        TlsBackend {
            port,
            ca_pem: ca.pem(),
            seen,
        }
    }
}

/// Sends `GET /flights/N` to a proxy from a thread of its own until dropped.
pub struct Traffic {
    stop: Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Traffic {
    pub fn start(port: u16) -> Traffic {
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let stopped = Arc::clone(&stop);
        let thread = std::thread::spawn(move || {
            let mut c = Client::connect(port);
            let mut n = 0u64;
            while !stopped.load(std::sync::atomic::Ordering::Relaxed) {
                n += 1;
                if c.get(&format!("/flights/{n}"), &[]).is_err() {
                    std::thread::sleep(Duration::from_millis(50));
                    c = Client::connect(port);
                }
                std::thread::sleep(Duration::from_millis(2));
            }
        });
        Traffic {
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for Traffic {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
