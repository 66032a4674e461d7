//! The admin API and the client commands: shift, status, metrics, token rules.

use std::process::Command;
use std::time::{Duration, Instant};

use crate::support::*;

fn admin_get(proxy: &Proxy, path: &str) -> Resp {
    get(proxy.admin_port, path, &[])
}

fn served_by_new(proxy: &Proxy, users: std::ops::Range<u32>) -> usize {
    let mut c = proxy.client();
    users
        .filter(|u| {
            c.get("/bookings/1", &[("x-user", &format!("user-{u}"))])
                .unwrap()
                .header("x-backend")
                == Some("new")
        })
        .count()
}

#[test]
fn shift_through_the_cli_applies_at_once_is_saved_with_comments_and_survives_a_restart() {
    let (legacy, new) = (Backend::start("legacy"), Backend::start("new"));
    let text = split_config(&legacy, &new, "0%", "header:x-user").replace(
        "shift = \"0%\"",
        "# Raise slowly: the bookings Lambda is cold-start sensitive.\nshift = \"0%\"   # started on Monday",
    );
    let mut proxy = Proxy::start(&text);
    assert_eq!(served_by_new(&proxy, 0..200), 0);

    let out = proxy.cli(&["shift", "/bookings", "50%"]);
    assert!(out.status.success(), "{}", stderr_of(&out));
    assert_eq!(
        stdout_of(&out).trim(),
        format!("bookings: 0% -> 50% (saved to {})", proxy.config.display())
    );
    // At once: the very next requests see it.
    let on_new = served_by_new(&proxy, 0..1000);
    assert!(
        (440..=560).contains(&on_new),
        "{on_new} of 1000 on the new side after a 50% shift"
    );
    let saved = std::fs::read_to_string(&proxy.config).unwrap();
    assert!(saved.contains("# Raise slowly: the bookings Lambda is cold-start sensitive.\nshift = \"50%\"   # started on Monday"), "{saved}");
    assert!(proxy.wait_for_log("shift changed", Duration::from_secs(2)));
    let log = proxy.stderr();
    assert!(
        log.contains("from=0% to=50%") && log.contains("client=127.0.0.1:"),
        "{log}"
    );

    // By id and with the other percent forms.
    let out = proxy.cli(&["shift", "bookings", "12.5"]);
    assert!(out.status.success(), "{}", stderr_of(&out));
    assert!(std::fs::read_to_string(&proxy.config)
        .unwrap()
        .contains("shift = \"12.5%\""));

    // A restart reads the file: the shift stays.
    let restarted = proxy.restart();
    assert_eq!(restarted.status()["routes"][0]["shift"], "12.5%");
    let on_new = served_by_new(&restarted, 0..1000);
    assert!(
        (90..=160).contains(&on_new),
        "{on_new} of 1000 on the new side at 12.5% after restart"
    );
}

#[test]
fn shift_mistakes_exit_non_zero_and_say_what_is_accepted() {
    let (legacy, new) = (Backend::start("legacy"), Backend::start("new"));
    let proxy = Proxy::start(&split_config(&legacy, &new, "0%", "none"));
    let out = proxy.cli(&["shift", "/hotels", "10%"]);
    assert!(!out.status.success());
    assert!(
        stderr_of(&out).contains("no route `/hotels`; known routes: bookings (/bookings)"),
        "{}",
        stderr_of(&out)
    );
    for bad in ["150%", "ten", "1.234%", "-5"] {
        let out = proxy.cli(&["shift", "/bookings", bad]);
        assert!(!out.status.success(), "{bad}");
        assert!(
            stderr_of(&out).contains("like `25%`, `25` or `0.5%`"),
            "{bad}: {}",
            stderr_of(&out)
        );
    }
    // Nothing changed.
    assert!(std::fs::read_to_string(&proxy.config)
        .unwrap()
        .contains("shift = \"0%\""));
    // The API itself refuses the same.
    let r = Client::connect(proxy.admin_port)
        .request("PUT", "/routes/hotels/shift", &[], br#"{"percent": 10}"#)
        .unwrap();
    assert_eq!(r.status, 404);
    assert!(r.text().contains("known routes: bookings"));
    let r = Client::connect(proxy.admin_port)
        .request("PUT", "/routes/bookings/shift", &[], br#"{"percent": 101}"#)
        .unwrap();
    assert_eq!(r.status, 400);
}

#[test]
fn a_read_only_config_gives_a_helpful_error_and_file_edits_work_offline() {
    use std::os::unix::fs::PermissionsExt;
    let (legacy, new) = (Backend::start("legacy"), Backend::start("new"));
    let proxy = Proxy::start(&split_config(&legacy, &new, "10%", "none"));
    std::fs::set_permissions(&proxy.config, std::fs::Permissions::from_mode(0o444)).unwrap();
    let out = proxy.cli(&["shift", "/bookings", "50%"]);
    assert!(!out.status.success());
    let err = stderr_of(&out);
    assert!(err.contains("is read-only"), "{err}");
    assert!(
        err.contains("ConfigMap") && err.contains("strangle shift --file FILE bookings PERCENT"),
        "{err}"
    );
    assert!(err.contains("HTTP 409"), "{err}");
    assert_eq!(
        proxy.status()["routes"][0]["shift"],
        "10%",
        "a refused shift must not apply"
    );

    // Offline edit of a writable copy.
    let copy = proxy.dir.path().join("copy.toml");
    std::fs::copy(&proxy.config, &copy).unwrap();
    std::fs::set_permissions(&copy, std::fs::Permissions::from_mode(0o644)).unwrap();
    let out = Command::new(bin())
        .args(["shift", "--file"])
        .arg(&copy)
        .args(["/bookings", "30%"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr_of(&out));
    assert!(std::fs::read_to_string(&copy)
        .unwrap()
        .contains("shift = \"30%\""));
    let out = Command::new(bin())
        .args(["shift", "--file"])
        .arg(&copy)
        .args(["/nope", "30%"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(stderr_of(&out).contains("known routes: bookings (/bookings)"));
}

#[test]
fn off_the_loopback_the_admin_api_needs_a_token() {
    let (legacy, new) = (Backend::start("legacy"), Backend::start("new"));
    let base = split_config(&legacy, &new, "0%", "none");

    // No token: refuses to start, saying why.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s.toml");
    let admin_port = free_port();
    std::fs::write(
        &path,
        Proxy::render(
            &format!("{base}\n[admin]\nlisten = \"0.0.0.0:{admin_port}\"\n"),
            free_port(),
            admin_port,
        ),
    )
    .unwrap();
    let said = serve_refused(&path);
    assert!(
        said.contains("listens off the loopback (0.0.0.0:"),
        "{said}"
    );

    // With a token (from the environment): reads are open, changes need the token.
    std::env::set_var("STRANGLE_TEST_ADMIN_TOKEN", "s3cret-token-for-tests");
    let admin_port = free_port();
    let proxy = Proxy::start(&format!(
        "{base}\n[admin]\nlisten = \"0.0.0.0:{admin_port}\"\ntoken = \"${{env:STRANGLE_TEST_ADMIN_TOKEN}}\"\n"
    ));
    let admin = |method: &str, path: &str, headers: &[(&str, &str)], body: &[u8]| {
        Client::connect(admin_port)
            .request(method, path, headers, body)
            .unwrap()
    };
    assert_eq!(admin("GET", "/status", &[], b"").status, 200);
    assert_eq!(admin("GET", "/metrics", &[], b"").status, 200);
    let r = admin("PUT", "/routes/bookings/shift", &[], br#"{"percent": 50}"#);
    assert_eq!(r.status, 401);
    assert!(r.header("www-authenticate").unwrap().starts_with("Bearer"));
    assert_eq!(
        admin("POST", "/reload", &[("Authorization", "Bearer wrong")], b"").status,
        401
    );
    assert_eq!(
        admin(
            "POST",
            "/reload",
            &[("Authorization", "Bearer s3cret-token-for-tests")],
            b""
        )
        .status,
        200
    );
    let r = admin(
        "PUT",
        "/routes/bookings/shift",
        &[("Authorization", "Bearer s3cret-token-for-tests")],
        br#"{"percent": 50}"#,
    );
    assert_eq!(r.status, 200);

    // The CLI passes --token; without it the refusal is clear.
    let url = format!("http://127.0.0.1:{admin_port}");
    let out = Command::new(bin())
        .args(["shift", "--admin", &url, "bookings", "60%"])
        .env_remove("STRANGLE_ADMIN_TOKEN")
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(stderr_of(&out).contains("HTTP 401"), "{}", stderr_of(&out));
    let out = Command::new(bin())
        .args([
            "shift",
            "--admin",
            &url,
            "--token",
            "s3cret-token-for-tests",
            "bookings",
            "60%",
        ])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr_of(&out));
    // The secret appears nowhere in what the proxy says about itself.
    let status = admin("GET", "/status", &[], b"").text();
    let metrics = admin("GET", "/metrics", &[], b"").text();
    for text in [status, metrics, proxy.stderr()] {
        assert!(!text.contains("s3cret-token-for-tests"));
    }
}

#[test]
fn status_json_matches_the_traffic_sent() {
    let (legacy, new) = (Backend::start("legacy"), Backend::start("new"));
    let proxy = Proxy::start(&split_config(&legacy, &new, "30%", "header:x-user"));
    let mut c = proxy.client();
    for u in 0..3000 {
        assert_eq!(
            c.get("/bookings/1", &[("x-user", &format!("u{u}"))])
                .unwrap()
                .status,
            200
        );
    }
    for _ in 0..500 {
        assert_eq!(c.get("/flights/1", &[]).unwrap().status, 200);
    }
    let out = proxy.cli(&["status", "--json"]);
    assert!(out.status.success(), "{}", stderr_of(&out));
    let s: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let route = &s["routes"][0];
    let (on_new, on_legacy) = (new.count() as u64, legacy.count() as u64 - 500);
    assert_eq!(route["sides"]["new"]["requests"].as_u64(), Some(on_new));
    assert_eq!(
        route["sides"]["legacy"]["requests"].as_u64(),
        Some(on_legacy)
    );
    assert_eq!(route["requests"].as_u64(), Some(3000));
    assert_eq!(route["shift"], "30%");
    let share = route["new_share"].as_f64().unwrap();
    assert!((share - on_new as f64 / 3000.0).abs() < 1e-9);
    assert!((share - 0.30).abs() < 0.03, "{share}");
    assert_eq!(s["default"]["stats"]["requests"].as_u64(), Some(500));
    assert_eq!(s["requests"].as_u64(), Some(3500));
    let overall = s["new_share"].as_f64().unwrap();
    assert!((overall - on_new as f64 / 3500.0).abs() < 0.01, "{overall}");
    assert!(route["sides"]["new"]["p99_ms"].as_f64().unwrap() > 0.0);
    assert_eq!(
        route["sides"]["new"]["by_class"]["2xx"].as_u64(),
        Some(on_new)
    );

    // The table shows the same, with the headline.
    let out = proxy.cli(&["status"]);
    let table = stdout_of(&out);
    assert!(
        table.starts_with(&format!(
            "The new side now serves {:.1}% of requests",
            overall * 100.0
        )),
        "{table}"
    );
    assert!(
        table.contains("bookings") && table.contains("30%") && table.contains("3000"),
        "{table}"
    );
    assert!(
        !table.contains("\x1b["),
        "colour codes when not on a terminal"
    );
}

#[test]
fn a_failed_reload_shows_in_status_and_metrics() {
    let (legacy, new) = (Backend::start("legacy"), Backend::start("new"));
    let proxy = Proxy::start(&split_config(&legacy, &new, "0%", "none"));
    std::fs::write(&proxy.config, "[server]\nthreads = \"many\"\n").unwrap();
    let s = wait_for(
        Duration::from_secs(5),
        "the failed reload in /status",
        || {
            let s = proxy.status();
            (s["config"]["reload_failures"] == 1).then_some(s)
        },
    );
    assert!(
        s["config"]["last_reload_error"]["error"]
            .as_str()
            .unwrap()
            .contains(":2:11:"),
        "{s}"
    );
    let metrics = admin_get(&proxy, "/metrics").text();
    assert!(
        metrics.contains("strangle_config_reload_failures_total 1\n"),
        "{metrics}"
    );
    assert!(metrics.contains("strangle_config_last_reload_successful 0\n"));
    let out = proxy.cli(&["status"]);
    assert!(
        stdout_of(&out).contains("last reload failed"),
        "{}",
        stdout_of(&out)
    );
    // POST /reload reports the same errors.
    let r = proxy.admin("POST", "/reload", b"");
    assert_eq!(r.status, 422);
    assert!(r.text().contains("2:11"));
}

#[test]
fn ready_and_live_and_unknown_endpoints() {
    let (legacy, new) = (Backend::start("legacy"), Backend::start("new"));
    let proxy = Proxy::start(&split_config(&legacy, &new, "0%", "none"));
    assert_eq!(admin_get(&proxy, "/ready").status, 200);
    assert_eq!(admin_get(&proxy, "/live").status, 200);
    let r = admin_get(&proxy, "/nope");
    assert_eq!(r.status, 404);
    assert!(r.text().contains("GET /status"));
    assert_eq!(
        Client::connect(proxy.admin_port)
            .request("DELETE", "/status", &[], b"")
            .unwrap()
            .status,
        405
    );
    // While draining, /ready says so.
    let port = proxy.port;
    let slow = std::thread::spawn(move || get(port, "/bookings", &[("x-delay-ms", "1500")]));
    eventually(Duration::from_secs(5), "the slow request upstream", || {
        legacy.count() > 0
    });
    proxy.signal(nix::sys::signal::Signal::SIGTERM);
    // Within the slow request's 1.5 s, while the proxy drains.
    eventually(Duration::from_secs(1), "/ready to say it drains", || {
        admin_get(&proxy, "/ready").status == 503
    });
    assert_eq!(slow.join().unwrap().status, 200);
}

// The admin listener under hostile clients: idle and slow connections, DNS rebinding, pages
// that post cross-site, malformed and oversized input.

/// One request with exactly these header lines (no Host added), on a fresh connection.
fn admin_raw(proxy: &Proxy, method: &str, path: &str, headers: &[&str], body: &str) -> Resp {
    let mut head = format!("{method} {path} HTTP/1.1\r\n");
    for h in headers {
        head.push_str(h);
        head.push_str("\r\n");
    }
    if method == "PUT" || method == "POST" {
        head.push_str(&format!("Content-Length: {}\r\n", body.len()));
    }
    head.push_str("Connection: close\r\n\r\n");
    head.push_str(body);
    let mut c = Client::connect(proxy.admin_port);
    c.stream()
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    c.send_raw(head.as_bytes()).unwrap()
}

/// The `error` of a JSON error reply.
fn json_error(r: &Resp) -> String {
    assert_eq!(
        r.header("content-type"),
        Some("application/json"),
        "{}: {}",
        r.status,
        r.text()
    );
    let v: serde_json::Value =
        serde_json::from_slice(&r.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", r.text()));
    v["error"]
        .as_str()
        .unwrap_or_else(|| panic!("no error in {v}"))
        .to_string()
}

fn shift_now(proxy: &Proxy) -> String {
    proxy.status()["routes"][0]["shift"]
        .as_str()
        .unwrap()
        .to_string()
}

/// Lowers the running proxy's file-descriptor limit, as a tight `ulimit -n` would.
fn limit_descriptors(proxy: &Proxy, n: u32) {
    let out = Command::new("prlimit")
        .arg(format!("--pid={}", proxy.child.id()))
        .arg(format!("--nofile={n}:{n}"))
        .output()
        .unwrap();
    assert!(out.status.success(), "prlimit: {}", stderr_of(&out));
}

/// Whether the server closed this connection (EOF or reset), without waiting.
fn closed(stream: &mut std::net::TcpStream) -> bool {
    use std::io::Read;
    stream.set_nonblocking(true).unwrap();
    let mut b = [0u8; 64];
    match stream.read(&mut b) {
        Ok(0) => true,
        Ok(_) => false,
        Err(e) => e.kind() != std::io::ErrorKind::WouldBlock,
    }
}

#[test]
fn idle_admin_connections_are_capped_and_timed_out_and_never_starve_the_proxy() {
    let backend = Backend::start("legacy");
    let proxy = Proxy::start(&monolith_config(&backend, ""));
    // Without the cap, 600 idle admin connections take every descriptor the proxy has.
    limit_descriptors(&proxy, 400);
    let admin = std::net::SocketAddr::from(([127, 0, 0, 1], proxy.admin_port));
    let mut idle: Vec<std::net::TcpStream> = (0..600)
        .filter_map(|_| {
            std::net::TcpStream::connect_timeout(&admin, Duration::from_millis(500)).ok()
        })
        .collect();
    assert!(idle.len() > 456, "only {} connections", idle.len());
    // "At once": within a second, far inside the 10 s idle timeout.
    let mut refused = 0;
    let beyond_cap = idle.len() - 256;
    wait_until(Duration::from_secs(1), || {
        refused = idle.iter_mut().map(closed).filter(|&c| c).count();
        refused >= beyond_cap
    });
    assert!(
        refused >= beyond_cap,
        "{refused} of {} closed at once beyond the cap of 256",
        idle.len()
    );
    // The proxy still serves.
    let mut c = proxy.client();
    c.stream()
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    assert_eq!(c.get("/still-here", &[]).unwrap().status, 200);
    // The idle ones are closed after the admin timeout (10 s), then the API answers again.
    eventually(
        Duration::from_secs(25),
        "the idle admin connections to be closed",
        || idle.iter_mut().all(closed),
    );
    assert_eq!(admin_get(&proxy, "/status").status, 200);
    assert!(proxy
        .stderr()
        .contains("connections open already; closing new ones"));
}

#[test]
fn idle_and_slow_admin_connections_are_cut() {
    use std::io::Write;
    let (legacy, new) = (Backend::start("legacy"), Backend::start("new"));
    let proxy = Proxy::start(&split_config(&legacy, &new, "0%", "none"));
    let port = proxy.admin_port;
    // Each scenario on its own thread: they all wait out the same 10 s timeout.
    let idle = std::thread::spawn(move || {
        let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
        eventually(
            Duration::from_secs(25),
            "an idle admin connection to be cut",
            || closed(&mut s),
        );
    });
    let kept_alive = std::thread::spawn(move || {
        let mut c = Client::connect(port);
        assert_eq!(c.get("/live", &[]).unwrap().status, 200);
        let s = c.stream();
        eventually(
            Duration::from_secs(25),
            "an idle keep-alive admin connection to be cut",
            || closed(s),
        );
    });
    // Slowloris: a head that never ends, one byte every 200 ms.
    let slow_head = std::thread::spawn(move || {
        let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
        s.write_all(b"GET /status HTTP/1.1\r\nHost: 127.0.0.1\r\n")
            .unwrap();
        let start = Instant::now();
        loop {
            if s.write_all(b"X").is_err() || closed(&mut s) {
                break;
            }
            assert!(
                start.elapsed() < Duration::from_secs(25),
                "a dribbled head is never cut"
            );
            s.set_nonblocking(false).unwrap();
            // The dribble is the test's subject.
            std::thread::sleep(Duration::from_millis(200));
        }
    });
    // A body that stops: 408 with a JSON error.
    let slow_body = std::thread::spawn(move || {
        let mut c = Client::connect(port);
        c.stream()
            .write_all(b"PUT /routes/bookings/shift HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 100\r\n\r\n{\"percent\"")
            .unwrap();
        c.stream()
            .set_read_timeout(Some(Duration::from_secs(25)))
            .unwrap();
        c.read_response().unwrap()
    });
    idle.join().unwrap();
    kept_alive.join().unwrap();
    slow_head.join().unwrap();
    let r = slow_body.join().unwrap();
    assert_eq!(r.status, 408, "{}", r.text());
    assert!(json_error(&r).contains("did not arrive"));
    assert_eq!(shift_now(&proxy), "0%");
}

#[test]
fn foreign_hosts_and_cross_site_calls_are_refused() {
    let (legacy, new) = (Backend::start("legacy"), Backend::start("new"));
    let proxy = Proxy::start(&split_config(&legacy, &new, "0%", "none"));
    let port = proxy.admin_port;
    let put = r#"{"percent": 50}"#;
    // DNS rebinding: the attacker's name, now pointing at 127.0.0.1.
    for host in ["evil.example", &format!("evil.example:{port}")] {
        let r = admin_raw(&proxy, "GET", "/status", &[&format!("Host: {host}")], "");
        assert_eq!(r.status, 403, "Host: {host}");
        assert!(json_error(&r).contains("DNS rebinding"));
        let r = admin_raw(
            &proxy,
            "PUT",
            "/routes/bookings/shift",
            &[&format!("Host: {host}")],
            put,
        );
        assert_eq!(r.status, 403, "Host: {host}");
    }
    // The listener's own names, with its port or a forwarded one, and no Host at all.
    for host in [
        format!("Host: 127.0.0.1:{port}"),
        "Host: 127.0.0.1".to_string(),
        format!("Host: localhost:{port}"),
        "Host: LOCALHOST:19901".to_string(),
        format!("Host: [::1]:{port}"),
    ] {
        let r = admin_raw(&proxy, "GET", "/status", &[&host], "");
        assert_eq!(r.status, 200, "{host}: {}", r.text());
    }
    // A page elsewhere posting to the API.
    let host = format!("Host: 127.0.0.1:{port}");
    for browser in [
        "Origin: http://evil.example",
        "Origin: null",
        "Sec-Fetch-Site: cross-site",
        "Sec-Fetch-Site: same-site",
    ] {
        let r = admin_raw(
            &proxy,
            "PUT",
            "/routes/bookings/shift",
            &[&host, browser],
            put,
        );
        assert_eq!(r.status, 403, "{browser}: {}", r.text());
        assert!(json_error(&r).contains("web page"), "{}", r.text());
        let r = admin_raw(&proxy, "POST", "/reload", &[&host, browser], "");
        assert_eq!(r.status, 403, "{browser}");
    }
    assert_eq!(shift_now(&proxy), "0%");
    assert!(std::fs::read_to_string(&proxy.config)
        .unwrap()
        .contains("shift = \"0%\""));
    // The API's own page (same origin) reads and changes.
    let own = format!("Origin: http://127.0.0.1:{port}");
    let r = admin_raw(
        &proxy,
        "GET",
        "/status",
        &[&host, &own, "Sec-Fetch-Site: same-origin"],
        "",
    );
    assert_eq!(r.status, 200);
    let r = admin_raw(
        &proxy,
        "PUT",
        "/routes/bookings/shift",
        &[&host, &own, "Sec-Fetch-Site: same-origin"],
        put,
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(shift_now(&proxy), "50%");
}

#[test]
fn bad_admin_input_gets_a_short_json_error() {
    let (legacy, new) = (Backend::start("legacy"), Backend::start("new"));
    let proxy = Proxy::start(&split_config(&legacy, &new, "0%", "none"));
    let put = |body: &str| {
        Client::connect(proxy.admin_port)
            .request("PUT", "/routes/bookings/shift", &[], body.as_bytes())
            .unwrap()
    };
    // Refused by the API as by the CLI.
    let r = put(r#"{"percent": "25 %"}"#);
    assert_eq!(r.status, 400, "{}", r.text());
    assert!(json_error(&r).contains("bad percent `25 %`"));
    let out = proxy.cli(&["shift", "/bookings", "25 %"]);
    assert!(!out.status.success());
    assert!(
        stderr_of(&out).contains("bad percent `25 %`"),
        "{}",
        stderr_of(&out)
    );
    // A long bad value is echoed short.
    let long = "7".repeat(10_000);
    let r = put(&format!(r#"{{"percent": "{long}"}}"#));
    assert_eq!(r.status, 400);
    let e = json_error(&r);
    assert!(
        e.contains(&"7".repeat(100)) && !e.contains(&"7".repeat(101)),
        "{e}"
    );
    assert!(e.len() < 300, "{e}");
    let r = Client::connect(proxy.admin_port)
        .request(
            "PUT",
            &format!("/routes/{long}/shift"),
            &[],
            br#"{"percent": 5}"#,
        )
        .unwrap();
    assert_eq!(r.status, 404);
    let e = json_error(&r);
    assert!(!e.contains(&"7".repeat(101)), "{} chars", e.len());
    // Not JSON, not the right JSON, too big.
    for (body, status) in [
        (r#"{"percent": "#.to_string(), 400),
        ("percent=25".to_string(), 400),
        (r#"{"percent": true}"#.to_string(), 400),
        (
            format!(r#"{{"percent": 5, "pad": "{}"}}"#, "x".repeat(20_000)),
            413,
        ),
    ] {
        let r = put(&body);
        assert_eq!(r.status, status, "{}", r.text());
        assert!(json_error(&r).contains("{\"percent\": 25}"), "{}", r.text());
    }
    assert_eq!(shift_now(&proxy), "0%");
}

#[test]
fn the_proxy_backs_off_when_out_of_file_descriptors() {
    let backend = Backend::start("legacy");
    // Idle client connections stay open while the descriptors are exhausted.
    let text = monolith_config(&backend, "").replace(
        "default = \"monolith\"",
        "default = \"monolith\"\nheader-timeout = \"60s\"",
    );
    let proxy = Proxy::start(&text);
    assert_eq!(get(proxy.port, "/warm", &[]).status, 200);
    limit_descriptors(&proxy, 64);
    let mut held: Vec<std::net::TcpStream> = (0..120)
        .map(|_| std::net::TcpStream::connect(("127.0.0.1", proxy.port)).unwrap())
        .collect();
    let pid = proxy.child.id();
    let cpu = || {
        // utime + stime, in clock ticks (fields 14 and 15 of /proc/PID/stat).
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
        let rest: Vec<u64> = stat
            .rsplit_once(") ")
            .unwrap()
            .1
            .split(' ')
            .skip(11)
            .take(2)
            .map(|f| f.parse().unwrap())
            .collect();
        rest[0] + rest[1]
    };
    assert!(
        proxy.wait_for_log("Too many open files", Duration::from_secs(5)),
        "{}",
        proxy.stderr()
    );
    let before = cpu();
    // A measuring window, not a wait: CPU spent in these 2 s.
    std::thread::sleep(Duration::from_secs(2));
    let spent = cpu() - before;
    // 100 ticks a second: less than a quarter of one core while out of descriptors.
    assert!(spent < 50, "{spent} ticks of CPU in 2 s out of descriptors");
    let errors = proxy.stderr().matches("Too many open files").count();
    assert!(
        errors <= 2,
        "{errors} accept errors logged:\n{}",
        proxy.stderr()
    );
    // Once the connections go, it serves again.
    for s in &mut held {
        let _ = s.shutdown(std::net::Shutdown::Both);
    }
    held.clear();
    let serving = wait_until(Duration::from_secs(20), || {
        let answered = Client::try_connect(proxy.port).and_then(|mut c| {
            c.stream().set_read_timeout(Some(Duration::from_secs(2)))?;
            c.get("/again", &[])
        });
        answered.is_ok_and(|r| r.status == 200)
    });
    assert!(serving, "not serving again:\n{}", proxy.stderr());
}

// Lost updates (issue 11 item 10): every edit is locked and compare-and-swap on the file.

/// Two routes, so two writers can change different ones.
fn two_route_config(legacy: &Backend, new: &Backend) -> String {
    split_config(legacy, new, "0%", "none")
        + "\n[[routes]]\nid = \"flights\"\npath = \"/flights\"\nlegacy = \"legacy\"\nnew = \"new\"\nshift = \"0%\"\n"
}

#[test]
fn concurrent_offline_shifts_of_different_routes_both_stay_in_the_file() {
    let (legacy, new) = (Backend::start("legacy"), Backend::start("new"));
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("strangle.toml");
    std::fs::write(
        &file,
        Proxy::render(&two_route_config(&legacy, &new), free_port(), free_port()),
    )
    .unwrap();
    let shift = |route: &str, percent: String| {
        Command::new(bin())
            .args(["shift", "--file"])
            .arg(&file)
            .args([route, &percent])
            .output()
            .unwrap()
    };
    for round in 0..60u32 {
        let (b, f) = (round % 99 + 1, (round + 40) % 99 + 1);
        let (out_b, out_f) = std::thread::scope(|s| {
            let tb = s.spawn(|| shift("bookings", format!("{b}%")));
            let tf = s.spawn(|| shift("flights", format!("{f}%")));
            (tb.join().unwrap(), tf.join().unwrap())
        });
        assert!(out_b.status.success(), "{}", stderr_of(&out_b));
        assert!(out_f.status.success(), "{}", stderr_of(&out_f));
        assert!(
            stdout_of(&out_b).contains("(saved to"),
            "{}",
            stdout_of(&out_b)
        );
        let config = strangle::config::load(&file).unwrap();
        let got: Vec<String> = config.routes.iter().map(|r| r.shift.to_string()).collect();
        assert_eq!(
            got,
            [format!("{b}%"), format!("{f}%")],
            "round {round}: both printed \"saved\" but the file has {got:?}"
        );
    }
}

/// A `PUT /routes/{id}/shift` racing an editor that saves another key without any lock, the
/// way editors do (half the time a temp file renamed over, half the time a rewrite in place),
/// after checking, as editors do, that the file did not change since it read it.
#[test]
fn a_shift_racing_an_editors_save_loses_neither_change() {
    use std::sync::{Arc, Barrier};
    let (legacy, new) = (Backend::start("legacy"), Backend::start("new"));
    let proxy = Proxy::start(&split_config(&legacy, &new, "0%", "none"));
    let (mut saved, mut refused, mut late) = (0, 0, 0);
    for round in 1..=100u32 {
        let percent = round % 99 + 1;
        let barrier = Arc::new(Barrier::new(2));
        let (config, start) = (proxy.config.clone(), Arc::clone(&barrier));
        let editor = std::thread::spawn(move || {
            start.wait();
            // Somewhere inside the shift: before, during or just after its save (the race is
            // the test's subject).
            std::thread::sleep(Duration::from_micros(u64::from(round * 7919 % 60_000)));
            loop {
                let text = std::fs::read_to_string(&config).unwrap();
                let edited: String = text
                    .lines()
                    .map(|l| {
                        if l.starts_with("grace-period = ") {
                            format!("grace-period = \"{round}s\"\n")
                        } else {
                            format!("{l}\n")
                        }
                    })
                    .collect();
                assert_ne!(edited, text, "round {round}: nothing to edit in\n{text}");
                // "The file has changed since reading it": start over from the new text.
                if std::fs::read_to_string(&config).unwrap() != text {
                    continue;
                }
                if round % 2 == 0 {
                    let tmp = config.with_file_name(".strangle.toml.swp");
                    std::fs::write(&tmp, edited).unwrap();
                    std::fs::rename(&tmp, &config).unwrap();
                } else {
                    std::fs::write(&config, edited).unwrap();
                }
                return Instant::now();
            }
        });
        barrier.wait();
        let r = Client::connect(proxy.admin_port)
            .request(
                "PUT",
                "/routes/bookings/shift",
                &[],
                format!("{{\"percent\": {percent}}}").as_bytes(),
            )
            .unwrap();
        let answered = Instant::now();
        let editor_saved = editor.join().unwrap();
        let text = std::fs::read_to_string(&proxy.config).unwrap();
        assert!(
            text.contains(&format!("grace-period = \"{round}s\"\n")),
            "round {round}: the editor's save was overwritten (PUT answered {}):\n{text}",
            r.status
        );
        if r.status == 200 {
            saved += 1;
            if !text.contains(&format!("shift = \"{percent}%\"\n")) {
                // The one case no answer can reflect: the editor checked the file before the
                // shift was saved and wrote its copy after the answer went out.
                assert!(
                    editor_saved > answered,
                    "round {round}: PUT answered 200 but the file had lost the shift before the answer:\n{text}"
                );
                late += 1;
            }
        } else {
            // Loud, never silent: a conflict, or a reload that read a half-written file.
            refused += 1;
            assert!(
                [409, 422].contains(&r.status),
                "round {round}: {} {}",
                r.status,
                r.text()
            );
        }
    }
    eprintln!(
        "{saved} saved, {refused} refused, {late} overwritten by the editor after the answer; \
         {} saves re-applied on top of the editor's",
        proxy.stderr().matches("applying it again").count()
    );
    assert!(saved >= 60, "{saved} saved, {refused} refused");
    assert!(
        late <= 5,
        "{late} shifts reverted by saves after the answer"
    );
}

#[test]
fn a_shift_decided_on_a_stale_view_is_refused_and_changes_nothing() {
    let (legacy, new) = (Backend::start("legacy"), Backend::start("new"));
    let proxy = Proxy::start(&split_config(&legacy, &new, "10%", "none"));
    let put = |body: &str| {
        Client::connect(proxy.admin_port)
            .request("PUT", "/routes/bookings/shift", &[], body.as_bytes())
            .unwrap()
    };
    // Someone else moved it to 40% after this caller saw 10%.
    assert_eq!(put(r#"{"percent": "40%"}"#).status, 200);
    let r = put(r#"{"percent": "20%", "from": "10%"}"#);
    assert_eq!(r.status, 409, "{}", r.text());
    let e = json_error(&r);
    assert!(
        e.contains("is 40% now, not 10%") && e.contains("nothing changed"),
        "{e}"
    );
    assert_eq!(shift_now(&proxy), "40%");
    assert!(std::fs::read_to_string(&proxy.config)
        .unwrap()
        .contains("shift = \"40%\""));
    // On the current view (any spelling of it) it goes through; `from` is optional.
    let r = put(r#"{"percent": "20%", "from": 40}"#);
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(shift_now(&proxy), "20%");
    for bad in [
        r#"{"percent": 5, "from": "abc"}"#,
        r#"{"percent": 5, "from": [1]}"#,
    ] {
        let r = put(bad);
        assert_eq!(r.status, 400, "{bad}: {}", r.text());
    }
    assert_eq!(shift_now(&proxy), "20%");
}

#[test]
fn a_client_command_whose_reader_went_away_ends_quietly() {
    let backend = Backend::start("monolith");
    let proxy = Proxy::start(&monolith_config(&backend, ""));
    let mut child = Command::new(bin())
        .args(["status", "--admin", &proxy.admin_url()])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // The reader (`| head` that has what it wanted) closes before anything is printed.
    drop(child.stdout.take());
    let out = child.wait_with_output().unwrap();
    let stderr = stderr_of(&out);
    assert_eq!(out.status.code(), Some(141), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
}
