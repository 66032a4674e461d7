//! The dashboard at the admin listener's `GET /`: one page, its script and style, embedded,
//! loading nothing else, never putting API values into the page as HTML.

use crate::support::*;

#[test]
fn the_dashboard_is_served_whole_from_the_binary_with_a_policy_that_loads_nothing_else() {
    let backend = Backend::start("monolith");
    let proxy = Proxy::start(&monolith_config(&backend, ""));
    let page = proxy.admin("GET", "/", b"");
    assert_eq!(page.status, 200);
    assert_eq!(
        page.header("content-type"),
        Some("text/html; charset=utf-8")
    );
    let csp = page.header("content-security-policy").unwrap().to_string();
    for directive in [
        "default-src 'none'",
        "script-src 'self'",
        "connect-src 'self'",
        "frame-ancestors 'none'",
    ] {
        assert!(csp.contains(directive), "{csp}");
    }
    assert_eq!(page.header("x-content-type-options"), Some("nosniff"));
    let html = page.text();
    assert!(html.contains("<script src=\"/dashboard.js\" defer>"));
    // No CDN, nothing off this listener.
    assert!(!html.contains("http://") && !html.contains("https://") && !html.contains("//cdn"));
    let js = proxy.admin("GET", "/dashboard.js", b"");
    assert_eq!(
        js.header("content-type"),
        Some("text/javascript; charset=utf-8")
    );
    let js = js.text();
    // What the API returns (inventory templates come from client paths) goes in as text only.
    for sink in [
        "innerHTML",
        "outerHTML",
        "insertAdjacentHTML",
        "document.write",
        "eval(",
    ] {
        assert!(!js.contains(sink), "{sink} in dashboard.js");
    }
    for endpoint in [
        "/status?series=1h",
        "/history?limit=20",
        "/inventory?limit=20",
    ] {
        assert!(js.contains(endpoint), "{endpoint}");
        let path = endpoint.to_string();
        assert_eq!(proxy.admin("GET", &path, b"").status, 200, "{endpoint}");
    }
    assert_eq!(proxy.admin("GET", "/dashboard.css", b"").status, 200);
    assert_eq!(proxy.admin("POST", "/", b"").status, 405);
    // A page elsewhere that resolves a name to 127.0.0.1 (DNS rebinding) gets nothing.
    let r = send_once(
        proxy.admin_port,
        b"GET / HTTP/1.1\r\nHost: attacker.example\r\nConnection: close\r\n\r\n",
    )
    .unwrap();
    assert_eq!(r.status, 403);
}

/// `chromium`, which `make test` installs (Debian's package).
fn chromium() -> &'static str {
    let found = std::process::Command::new("chromium")
        .arg("--version")
        .output();
    assert!(
        found.is_ok_and(|o| o.status.success()),
        "chromium is not installed: run `make test`, which installs Debian's chromium package"
    );
    "chromium"
}

/// Headless Chromium on `url`, with a few seconds of the page's own time to fetch and draw:
/// the DOM as it is then, and a screenshot at `shot`.
fn render_in_chromium(url: &str, shot: &std::path::Path) -> String {
    let profile = tempfile::tempdir().unwrap();
    let run = |extra: &[&str]| {
        let out = std::process::Command::new(chromium())
            .args([
                "--headless=new",
                "--no-sandbox",
                "--disable-gpu",
                "--hide-scrollbars",
            ])
            .args([
                "--no-first-run",
                "--disable-extensions",
                "--virtual-time-budget=8000",
            ])
            .arg(format!("--user-data-dir={}", profile.path().display()))
            .args(extra)
            .arg(url)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    run(&[
        "--window-size=1280,2000",
        &format!("--screenshot={}", shot.display()),
    ]);
    run(&["--dump-dom"])
}

/// The dashboard's way of writing a share (dashboard.js `pct`).
fn js_pct(x: f64) -> String {
    let p = x * 100.0;
    // `toFixed` rounds halves up; Rust's formatting rounds them to even.
    if p == 0.0 || p >= 10.0 {
        format!("{}%", p.round())
    } else {
        format!("{:.1}%", (p * 10.0).round() / 10.0)
    }
}

/// The text of the element with `id` in `dom`.
fn text_of(dom: &str, id: &str) -> String {
    let at = dom
        .find(&format!("id=\"{id}\""))
        .unwrap_or_else(|| panic!("no #{id}"));
    let start = at + dom[at..].find('>').unwrap() + 1;
    let end = start + dom[start..].find('<').unwrap();
    dom[start..end].to_string()
}

#[test]
fn the_dashboard_shows_real_traffic_in_headless_chromium() {
    let (legacy, new) = (Backend::start("legacy"), Backend::start("new"));
    let proxy = Proxy::start(&split_config(&legacy, &new, "50%", "none"));
    let mut c = proxy.client();
    for i in 0..60 {
        c.get(&format!("/bookings/{i}"), &[]).unwrap();
    }
    // An error burst on the new side.
    for _ in 0..12 {
        let r = c.get(
            "/bookings/7",
            &[("x-strangle-side", "new"), ("x-status", "503")],
        );
        assert_eq!(r.unwrap().status, 503);
    }
    for i in 0..9 {
        c.get(&format!("/flights/{}/seats", 100 + i), &[]).unwrap();
    }
    // A shift and a reload.
    let r = proxy.admin("PUT", "/routes/bookings/shift", br#"{"percent": "60%"}"#);
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(proxy.admin("POST", "/reload", b"").status, 200);
    let status = proxy.status();

    let shot = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("dashboard.png");
    let dom = render_in_chromium(&proxy.admin_url(), &shot);
    assert!(
        dom.contains("data-loaded=\"1\""),
        "the page never drew:\n{dom}"
    );
    // The headline and the route card show what /status says.
    assert_eq!(
        text_of(&dom, "headline-share"),
        js_pct(status["new_share"].as_f64().unwrap())
    );
    assert_eq!(
        text_of(&dom, "headline-requests"),
        status["requests"].to_string()
    );
    let card = &dom[dom
        .find("data-route=\"bookings\"")
        .expect("the bookings card")..];
    let route = &status["routes"][0];
    assert!(card.contains("<dd class=\"shift\">60%</dd>"), "{card}");
    let share = js_pct(route["new_share"].as_f64().unwrap());
    assert!(
        card.contains(&format!("<dd class=\"new-share\">{share}</dd>")),
        "{share}: {card}"
    );
    // The new side's errors: 12 of its requests.
    let errors = js_pct(route["sides"]["new"]["error_rate"].as_f64().unwrap());
    assert!(card.contains(&format!("errors {errors}")), "{errors}");
    // The charts have points.
    assert!(card.contains("data-points=\""), "no chart drawn: {card}");
    // The inventory and the history.
    assert!(dom.contains("<code>/flights/{id}/seats</code>"), "{dom}");
    assert!(dom.contains("shift bookings: 50% → 60%"), "{dom}");
    assert!(dom.contains("reload applied"));
    let png = std::fs::read(&shot).unwrap();
    assert!(
        png.starts_with(b"\x89PNG") && png.len() > 10_000,
        "{} bytes",
        png.len()
    );
}
