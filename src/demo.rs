//! `strangle demo`: a working migration on loopback with nothing to set up. A demo monolith
//! and a demo bookings service run in this process; the proxy runs as a child `strangle serve`
//! on an embedded config written to a temp dir (so `strangle shift` can edit it); a trickle of
//! traffic keeps `strangle status --watch` moving.

use std::convert::Infallible;
use std::net::{SocketAddr, TcpListener};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{bail, Context};
use bytes::Bytes;
use http_body_util::Full;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;

use crate::cli::{fetch_status, AdminTarget};
use crate::status::{render, Paint};

const CONFIG: &str = r#"# The strangle demo: /bookings is being strangled out of the monolith.
# Try: strangle shift /bookings 50%   (this file is rewritten, comments kept)
[server]
listen = ["{proxy}"]
default = "monolith"
grace-period = "2s"

[admin]
listen = "{admin}"

[log]
access = "access.log"

[upstreams.monolith]
addresses = ["{legacy}"]

[upstreams.bookings-svc]
addresses = ["{new}"]

[[routes]]
id = "bookings"
path = "/bookings"
legacy = "monolith"
new = "bookings-svc"
shift = "25%"
sticky = "header:x-user-id"
override = true
"#;

/// Binds the preferred port if it is free, else any free port.
fn pick(preferred: u16) -> std::io::Result<SocketAddr> {
    let listener = TcpListener::bind(("127.0.0.1", preferred))
        .or_else(|_| TcpListener::bind(("127.0.0.1", 0)))?;
    listener.local_addr()
}

async fn app(name: &'static str, listener: tokio::net::TcpListener) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        tokio::spawn(async move {
            let service = service_fn(move |req: Request<hyper::body::Incoming>| async move {
                let user = req
                    .headers()
                    .get("x-user-id")
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("-")
                    .to_string();
                let body = format!(
                    "{{\"served_by\":\"{name}\",\"path\":\"{}\",\"user\":\"{user}\"}}\n",
                    req.uri().path()
                );
                Ok::<_, Infallible>(
                    Response::builder()
                        .header("content-type", "application/json")
                        .header("x-served-by", name)
                        .body(Full::new(Bytes::from(body)))
                        .unwrap_or_default(),
                )
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

/// One GET through the proxy; returns who served it.
async fn send(proxy: SocketAddr, path: &str, user: Option<&str>) -> anyhow::Result<String> {
    let stream = tokio::net::TcpStream::connect(proxy).await?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(conn);
    let mut req = Request::get(path).header("host", proxy.to_string());
    if let Some(u) = user {
        req = req.header("x-user-id", u);
    }
    let resp = sender
        .send_request(req.body(Full::new(Bytes::new()))?)
        .await?;
    Ok(resp
        .headers()
        .get("x-served-by")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("?")
        .to_string())
}

struct Proxy(Child);

impl Drop for Proxy {
    fn drop(&mut self) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.0.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        );
        let _ = self.0.wait();
    }
}

fn start_proxy(dir: &Path) -> anyhow::Result<Proxy> {
    let exe = std::env::current_exe().context("cannot find the strangle binary")?;
    let log = std::fs::File::create(dir.join("strangle.log"))?;
    let child = Command::new(exe)
        .args(["serve", "-c"])
        .arg(dir.join("strangle.toml"))
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .context("cannot start `strangle serve`")?;
    Ok(Proxy(child))
}

/// Runs the demo until Ctrl-C, or for `run_for` if given.
pub async fn run(run_for: Option<Duration>) -> anyhow::Result<()> {
    let (proxy_addr, admin_addr) = (pick(8080)?, pick(9901)?);
    let legacy = tokio::net::TcpListener::bind(pick(8081)?).await?;
    let new = tokio::net::TcpListener::bind(pick(8082)?).await?;
    let (legacy_addr, new_addr) = (legacy.local_addr()?, new.local_addr()?);
    tokio::spawn(app("monolith", legacy));
    tokio::spawn(app("bookings-svc", new));

    let dir = tempfile::Builder::new()
        .prefix("strangle-demo-")
        .tempdir()?;
    let config = CONFIG
        .replace("{proxy}", &proxy_addr.to_string())
        .replace("{admin}", &admin_addr.to_string())
        .replace("{legacy}", &legacy_addr.to_string())
        .replace("{new}", &new_addr.to_string());
    let config_path = dir.path().join("strangle.toml");
    std::fs::write(&config_path, config)?;
    let mut proxy = start_proxy(dir.path())?;
    let admin = AdminTarget {
        url: format!("http://{admin_addr}"),
        token: None,
    };
    let mut ready = false;
    for _ in 0..100 {
        if let Ok(Some(status)) = proxy.0.try_wait() {
            let log = std::fs::read_to_string(dir.path().join("strangle.log")).unwrap_or_default();
            bail!("the proxy exited ({status}):\n{log}");
        }
        if fetch_status(&admin).await.is_ok() && send(proxy_addr, "/", None).await.is_ok() {
            ready = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    if !ready {
        bail!(
            "the proxy did not come up; see {}",
            dir.path().join("strangle.log").display()
        );
    }

    println!("strangle demo: a monolith and its new bookings service, strangle in front.");
    println!("  proxy     http://{proxy_addr}");
    println!("  monolith  http://{legacy_addr}   bookings-svc  http://{new_addr}");
    println!(
        "  admin     http://{admin_addr}   config  {}",
        config_path.display()
    );
    println!();
    let mut on_new = 0;
    for u in 0..1000 {
        if send(proxy_addr, "/bookings/42", Some(&format!("user-{u}"))).await? == "bookings-svc" {
            on_new += 1;
        }
    }
    for _ in 0..100 {
        send(proxy_addr, "/flights/LH123", None).await?;
    }
    println!(
        "Sent 1000 users to /bookings (shift 25%): {on_new} went to the new bookings service,"
    );
    println!(
        "{} to the monolith; 100 requests to /flights all went to the monolith.",
        1000 - on_new
    );
    println!();
    let status = fetch_status(&admin).await?;
    print!("{}", render(&status, &Paint { on: false }));
    let admin_flag = if admin_addr.port() == 9901 {
        String::new()
    } else {
        format!(" --admin http://{admin_addr}")
    };
    println!();
    println!("Try next (a little traffic keeps flowing):");
    println!("  curl -s -H 'x-user-id: alice' http://{proxy_addr}/bookings/7");
    println!("  curl -s -H 'x-strangle-side: new' http://{proxy_addr}/bookings/7");
    println!("  strangle shift /bookings 50%{admin_flag}");
    println!("  strangle status --watch{admin_flag}");
    println!("  tail -f {}", dir.path().join("access.log").display());
    println!("Ctrl-C stops the demo.");

    let trickle = tokio::spawn(async move {
        let mut n = 0u64;
        loop {
            n += 1;
            let user = format!("user-{}", n % 500);
            let path = if n % 3 == 0 {
                "/flights/LH123"
            } else {
                "/bookings/42"
            };
            let _ = send(proxy_addr, path, Some(&user)).await;
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    });
    match run_for {
        Some(d) => tokio::time::sleep(d).await,
        None => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
    trickle.abort();
    drop(proxy);
    println!("\ndemo stopped");
    Ok(())
}
