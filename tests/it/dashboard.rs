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
    let icon = proxy.admin("GET", "/favicon.svg", b"");
    assert_eq!(icon.header("content-type"), Some("image/svg+xml"));
    assert!(html.contains("href=\"/favicon.svg\""));
    assert_eq!(proxy.admin("POST", "/", b"").status, 405);
    // A page elsewhere that resolves a name to 127.0.0.1 (DNS rebinding) gets nothing.
    let r = send_once(
        proxy.admin_port,
        b"GET / HTTP/1.1\r\nHost: attacker.example\r\nConnection: close\r\n\r\n",
    )
    .unwrap();
    assert_eq!(r.status, 403);
}

mod cdp;

use cdp::Browser;
use serde_json::Value;
use std::time::Duration;

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

/// A laptop's screen, in CSS pixels.
const LAPTOP: (u32, u32) = (1366, 768);

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

/// The page as a user sees it, read in the browser: texts by id, the bookings card, the
/// charts, the burn-down bars, the tables.
const READ_PAGE: &str = r##"(() => {
  const text = (sel) => { const e = document.querySelector(sel); return e ? e.textContent : null; };
  const card = document.querySelector('[data-route="bookings"]');
  const charts = [...card.querySelectorAll("figure")].map((f) => ({
    caption: f.querySelector("figcaption").textContent,
    label: f.querySelector("svg").getAttribute("aria-label"),
    points: Object.fromEntries([...f.querySelectorAll("g[data-side]")].map((g) => [g.dataset.side, +g.dataset.points])),
    ticks: [...f.querySelectorAll("text.tick")].map((t) => t.textContent),
    width: f.querySelector("svg").getBoundingClientRect().width,
  }));
  const bars = [...document.querySelectorAll("#burn-down-chart rect")].map((r) => ({ date: r.dataset.date, height: +r.getAttribute("height"), title: r.textContent }));
  return {
    share: text("#headline-share"), requests: text("#headline-requests"), line: text("#burn-down-line"),
    shift: card.querySelector("dd.shift").textContent, newShare: card.querySelector("dd.new-share").textContent,
    legacy: card.querySelector("dd.legacy").textContent, new: card.querySelector("dd.new").textContent,
    charts, bars,
    burnTicks: [...document.querySelectorAll("#burn-down-chart text.tick")].map((t) => t.textContent),
    burnRows: document.querySelectorAll("#burn-down-table tbody tr").length,
    inventory: [...document.querySelectorAll("#inventory tbody code")].map((c) => c.textContent),
    history: [...document.querySelectorAll("#history li")].map((l) => l.textContent),
    scrollWidth: document.documentElement.scrollWidth, innerWidth: window.innerWidth,
    headlineBottom: document.querySelector("#headline-share").getBoundingClientRect().bottom,
    firstChartBottom: card.querySelector("figure").getBoundingClientRect().bottom,
  };
})()"##;

/// WCAG 2 contrast in the page as drawn: every visible piece of text against the background it
/// sits on (4.5:1, or 3:1 for large text), and every chart mark against white (3:1, WCAG
/// 1.4.11). Returns how many were checked and the failures.
const CONTRAST: &str = r##"(() => {
  const parse = (c) => { const m = /rgba?\(([^)]*)\)/.exec(c || ""); if (!m) return null;
    const p = m[1].split(/[\s,\/]+/).filter(Boolean).map(Number); return { r: p[0], g: p[1], b: p[2], a: p.length > 3 ? p[3] : 1 }; };
  const lum = (c) => { const f = (v) => { v /= 255; return v <= 0.03928 ? v / 12.92 : Math.pow((v + 0.055) / 1.055, 2.4); };
    return 0.2126 * f(c.r) + 0.7152 * f(c.g) + 0.0722 * f(c.b); };
  const ratio = (a, b) => { const [x, y] = [lum(a), lum(b)].sort((p, q) => q - p); return (x + 0.05) / (y + 0.05); };
  const background = (e) => { for (; e; e = e.parentElement) { const c = parse(getComputedStyle(e).backgroundColor); if (c && c.a > 0) return c; }
    return { r: 255, g: 255, b: 255, a: 1 }; };
  const bad = []; let checked = 0;
  const walk = document.createTreeWalker(document.body, NodeFilter.SHOW_TEXT);
  for (let n; (n = walk.nextNode());) {
    const e = n.parentElement;
    if (!n.textContent.trim() || e.closest("title") || e.getClientRects().length === 0) continue;
    const s = getComputedStyle(e);
    if (s.visibility === "hidden") continue;
    const fg = parse(e instanceof SVGElement ? s.fill : s.color);
    const size = parseFloat(s.fontSize), bold = parseInt(s.fontWeight, 10) >= 700;
    const need = size >= 24 || (bold && size >= 18.66) ? 3 : 4.5;
    const r = ratio(fg, background(e)); checked++;
    if (r < need) bad.push(`${e.tagName} "${n.textContent.trim().slice(0, 30)}": ${r.toFixed(2)} < ${need}`);
  }
  for (const m of document.querySelectorAll("svg polyline, svg circle, svg rect")) {
    const s = getComputedStyle(m);
    const c = parse(m.tagName === "polyline" ? s.stroke : s.fill);
    const r = ratio(c, { r: 255, g: 255, b: 255 }); checked++;
    if (r < 3) bad.push(`${m.tagName} mark: ${r.toFixed(2)} < 3`);
  }
  return { checked, bad };
})()"##;

fn audit_contrast(browser: &mut Browser) {
    let audit = browser.eval(CONTRAST);
    assert!(audit["checked"].as_u64().unwrap() > 20, "{audit}");
    assert_eq!(
        audit["bad"],
        serde_json::json!([]),
        "contrast below WCAG AA"
    );
}

/// Today's date and the one `days` before, as the burn-down writes them.
fn day(days_ago: u64) -> String {
    let t = std::time::SystemTime::now() - Duration::from_secs(days_ago * 86_400);
    humantime::format_rfc3339_seconds(t).to_string()[..10].to_string()
}

#[test]
fn the_dashboard_shows_real_traffic_in_headless_chromium() {
    let (legacy, new) = (Backend::start("legacy"), Backend::start("new"));
    let mut first = Proxy::start(&split_config(&legacy, &new, "50%", "none"));
    // A month of migration behind it, kept beside the config by earlier runs.
    let past = [(30, 0.10), (20, 0.25), (12, 0.40), (3, 0.52)];
    let proxy = first.restart_after(|dir| {
        let days: serde_json::Map<String, Value> = past
            .iter()
            .map(|(ago, share)| {
                let new = (1000.0 * share) as u64;
                (day(*ago), serde_json::json!({"requests": 1000, "new": new}))
            })
            .collect();
        let file = serde_json::json!({ "days": days });
        std::fs::write(dir.join("strangle.burndown.json"), file.to_string()).unwrap();
    });
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
    // What the page shows comes from the counters the account step has written by now.
    eventually(Duration::from_secs(5), "every request counted", || {
        proxy.status()["requests"] == 81
    });
    // Today's traffic reaches the burn-down at the sampler's next 10 s tick.
    eventually(Duration::from_secs(15), "today in the burn-down", || {
        proxy.status()["burn_down"]["date"] == day(0).as_str()
    });
    let status = proxy.status();

    let mut browser = Browser::start(LAPTOP.0, LAPTOP.1);
    browser.open(&proxy.admin_url());
    browser.wait_until(
        "document.body.dataset.loaded === '1' && \
         document.querySelectorAll('[data-route=\"bookings\"] g[data-side]').length === 6",
        Duration::from_secs(20),
    );
    let page = browser.eval(READ_PAGE);

    // The headline and the route card show what /status says.
    assert_eq!(page["share"], js_pct(status["new_share"].as_f64().unwrap()));
    assert_eq!(page["requests"], "81");
    let route = &status["routes"][0];
    assert_eq!(page["shift"], "60%");
    assert_eq!(
        page["newShare"],
        js_pct(route["new_share"].as_f64().unwrap())
    );
    // The new side's errors: 12 of its requests.
    let errors = js_pct(route["sides"]["new"]["error_rate"].as_f64().unwrap());
    assert!(errors != "0%");
    assert!(
        page["new"]
            .as_str()
            .unwrap()
            .contains(&format!("errors {errors}")),
        "{page}"
    );
    assert!(page["legacy"]
        .as_str()
        .unwrap()
        .contains("legacy · errors 0%"));
    // Three charts (rate, 5xx share, p99), each with both sides' points and a time axis, and a
    // text alternative that says the latest values.
    let charts = page["charts"].as_array().unwrap();
    let captions: Vec<&str> = charts
        .iter()
        .map(|c| c["caption"].as_str().unwrap())
        .collect();
    assert_eq!(captions, ["requests/s", "5xx share", "p99 latency"]);
    for chart in charts {
        for side in ["legacy", "new"] {
            assert!(chart["points"][side].as_u64().unwrap() >= 1, "{chart}");
        }
        let label = chart["label"].as_str().unwrap();
        assert!(
            label.contains("latest: legacy ") && label.contains(", new "),
            "{label}"
        );
        // y: 0, half, top; x: three times of day.
        let ticks = chart["ticks"].as_array().unwrap();
        assert_eq!(ticks.len(), 6, "{chart}");
        assert!(ticks[3..]
            .iter()
            .all(|t| t.as_str().unwrap().len() == 5 && t.as_str().unwrap().contains(':')));
        // Drawn at a readable size, not squashed.
        assert!(chart["width"].as_f64().unwrap() >= 240.0, "{chart}");
    }
    // The 5xx chart's new side says the burst: its axis runs to 100%.
    assert_eq!(charts[1]["ticks"][2], "100%");
    assert!(charts[1]["label"].as_str().unwrap().contains("new "));

    // The burn-down: a bar per day on record (the four seeded and today), oldest first, each as
    // tall as its share; the dates under them; the same days as a table.
    let bars = page["bars"].as_array().unwrap();
    let days = status["burn_down"]["days"].as_array().unwrap();
    assert_eq!(bars.len(), 5, "{page}");
    assert_eq!(bars.len(), days.len());
    for (bar, d) in bars.iter().zip(days) {
        assert_eq!(bar["date"], d["date"]);
        let title = format!(
            "{}: {} of {} requests",
            d["date"].as_str().unwrap(),
            js_pct(d["new_share"].as_f64().unwrap()),
            d["requests"]
        );
        assert_eq!(bar["title"], title.as_str());
    }
    let heights: Vec<f64> = bars[..4]
        .iter()
        .map(|b| b["height"].as_f64().unwrap())
        .collect();
    assert!(heights.windows(2).all(|w| w[0] < w[1]), "{heights:?}");
    let ratio = heights[3] / heights[0];
    assert!(
        (ratio - 5.2).abs() < 0.1,
        "52% drawn {ratio} times as tall as 10%"
    );
    let ticks = page["burnTicks"].as_array().unwrap();
    assert_eq!(ticks[3], day(30).as_str(), "{ticks:?}");
    assert_eq!(ticks.last().unwrap(), day(0).as_str(), "{ticks:?}");
    assert_eq!(page["burnRows"], 5);
    // The headline line compares with 30 days ago.
    let line = page["line"].as_str().unwrap();
    assert!(line.contains(&format!("from 10% on {}", day(30))), "{line}");

    // The inventory and the history.
    assert!(page["inventory"]
        .as_array()
        .unwrap()
        .contains(&Value::from("/flights/{id}/seats")));
    let history = page["history"].to_string();
    assert!(history.contains("shift bookings: 50% → 60%"), "{history}");
    assert!(history.contains("reload applied"), "{history}");

    // On a laptop's screen: nothing wider than the window, the headline and the first route's
    // first chart without scrolling sideways.
    assert!(
        page["scrollWidth"].as_f64() <= page["innerWidth"].as_f64(),
        "{page}"
    );
    assert!(page["headlineBottom"].as_f64().unwrap() < f64::from(LAPTOP.1));
    audit_contrast(&mut browser);

    let shot = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("dashboard.png");
    let png = browser.screenshot();
    assert!(
        png.starts_with(b"\x89PNG") && png.len() > 10_000,
        "{} bytes",
        png.len()
    );
    std::fs::write(&shot, png).unwrap();
}

/// Focus moves with Tab: the focused element as a short name, and whether a focus ring shows.
const FOCUSED: &str = r##"(() => {
  const e = document.activeElement;
  const s = getComputedStyle(e);
  return { id: e.id, tag: e.tagName, text: (e.textContent || "").trim().slice(0, 40),
           ring: s.outlineStyle !== "none" && parseFloat(s.outlineWidth) >= 2 };
})()"##;

#[test]
fn a_shift_is_changed_from_the_dashboard_by_keyboard_and_only_after_confirmation() {
    let (legacy, new) = (Backend::start("legacy"), Backend::start("new"));
    let token = "dashboard-test-token-0123456789";
    let proxy = Proxy::start(&format!(
        "{}\n[admin]\nlisten = \"{{admin}}\"\ntoken = \"{token}\"\n",
        split_config(&legacy, &new, "50%", "none")
    ));
    let shift = |proxy: &Proxy| proxy.status()["routes"][0]["shift"].clone();
    let mut browser = Browser::start(LAPTOP.0, LAPTOP.1);
    browser.open(&proxy.admin_url());
    browser.wait_until(
        "document.body.dataset.loaded === '1' && !!document.getElementById('shift-bookings')",
        Duration::from_secs(20),
    );

    // Tab reaches the route's shift field, every stop showing where the focus is.
    let mut stops = Vec::new();
    loop {
        browser.press("Tab", false);
        let focused = browser.eval(FOCUSED);
        assert_eq!(focused["ring"], true, "no focus ring on {focused}");
        stops.push(focused["id"].as_str().unwrap().to_string());
        if focused["id"] == "shift-bookings" {
            break;
        }
        assert!(
            stops.len() < 30,
            "Tab never reached the shift field: {stops:?}"
        );
    }
    // The skip link comes first.
    assert_eq!(stops[0], "skip");
    browser.eval("document.activeElement.select()");
    browser.type_text("75%");
    browser.press("Tab", false);
    assert_eq!(browser.eval(FOCUSED)["text"], "Set shift…");
    // A refresh (every 5 s) keeps what was typed and where the focus is.
    let updated = browser.eval("document.getElementById('updated').textContent");
    browser.wait_until(
        &format!("document.getElementById('updated').textContent !== {updated}"),
        Duration::from_secs(12),
    );
    assert_eq!(browser.eval(FOCUSED)["text"], "Set shift…");
    assert_eq!(
        browser.eval("document.getElementById('shift-bookings').value"),
        "75%"
    );

    // Enter asks first; the token field has the focus; Escape changes nothing.
    browser.press("Enter", false);
    assert_eq!(
        browser.eval("document.getElementById('confirm').open"),
        true
    );
    assert_eq!(browser.eval(FOCUSED)["id"], "confirm-token");
    let asked = browser.eval("document.getElementById('confirm-text').textContent");
    assert!(
        asked.as_str().unwrap().contains("from 50% to 75%"),
        "{asked}"
    );
    audit_contrast(&mut browser);
    browser.press("Escape", false);
    assert_eq!(
        browser.eval("document.getElementById('confirm').open"),
        false
    );
    // The focus goes back to the field (the dialog's close event comes as a task of its own).
    browser.wait_until(
        "document.activeElement.id === 'shift-bookings'",
        Duration::from_secs(5),
    );

    // A wrong token: the refusal is shown in the dialog, which stays open; nothing changes.
    browser.press("Tab", false);
    browser.press("Enter", false);
    browser.type_text("wrong-token");
    browser.press("Enter", false);
    browser.wait_until(
        "document.getElementById('confirm').open && \
         document.getElementById('confirm-error').textContent.startsWith('Not changed')",
        Duration::from_secs(10),
    );
    assert_eq!(shift(&proxy), "50%");
    // Escape after a refusal still changes nothing (the answer before it must not count).
    browser.eval("document.getElementById('confirm-token').value = ''");
    browser.type_text(token);
    browser.press("Escape", false);
    browser.wait_until(
        "document.activeElement.id === 'shift-bookings'",
        Duration::from_secs(5),
    );
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(shift(&proxy), "50%");
    assert!(std::fs::read_to_string(&proxy.config)
        .unwrap()
        .contains("shift = \"50%\""));

    // With the token, confirmed: the shift changes, in the proxy, the file and the page.
    browser.press("Tab", false);
    browser.press("Enter", false);
    assert_eq!(browser.eval(FOCUSED)["id"], "confirm-token");
    // The token typed for an earlier answer is not kept for this one.
    assert_eq!(
        browser.eval("document.getElementById('confirm-token').value"),
        ""
    );
    browser.type_text(token);
    browser.press("Enter", false);
    eventually(Duration::from_secs(10), "the shift changed", || {
        shift(&proxy) == "75%"
    });
    assert!(std::fs::read_to_string(&proxy.config)
        .unwrap()
        .contains("shift = \"75%\""));
    browser.wait_until(
        "document.querySelector('[data-route=\"bookings\"] dd.shift').textContent === '75%' && \
         document.getElementById('notice').textContent === 'Route bookings: shift set from 50% to 75%.'",
        Duration::from_secs(10),
    );
    // The focus is back where the user was.
    browser.wait_until(
        "document.activeElement.id === 'shift-bookings'",
        Duration::from_secs(5),
    );
    // Decided on a stale view: while the dialog is open another operator shifts to 80%. The
    // change is refused (it would undo theirs) and the dialog shows the shift as it is now.
    browser.eval("document.getElementById('shift-bookings').select()");
    browser.type_text("30");
    browser.press("Tab", false);
    browser.press("Enter", false);
    let asked = browser.eval("document.getElementById('confirm-text').textContent");
    assert!(
        asked.as_str().unwrap().contains("from 75% to 30%"),
        "{asked}"
    );
    let bearer = format!("Bearer {token}");
    let other = Client::connect(proxy.admin_port)
        .request(
            "PUT",
            "/routes/bookings/shift",
            &[("Authorization", &bearer)],
            br#"{"percent": "80%"}"#,
        )
        .unwrap();
    assert_eq!(other.status, 200);
    browser.type_text(token);
    browser.press("Enter", false);
    browser.wait_until(
        "document.getElementById('confirm').open && \
         document.getElementById('confirm-text').textContent.includes('from 80% to 30%') && \
         document.getElementById('confirm-error').textContent.includes('is 80% now, not 75%')",
        Duration::from_secs(10),
    );
    assert_eq!(shift(&proxy), "80%");
    // Confirmed again, on what it is now.
    browser.press("Enter", false);
    eventually(Duration::from_secs(10), "the shift changed", || {
        shift(&proxy) == "30%"
    });

    let history = proxy.admin("GET", "/history?route=bookings", b"");
    let entries: Value = serde_json::from_str(&history.text()).unwrap();
    let shifts: Vec<(String, String)> = entries["entries"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["kind"] == "shift")
        .map(|e| {
            (
                e["to"].as_str().unwrap().into(),
                e["how"].as_str().unwrap().into(),
            )
        })
        .collect();
    let admin = |to: &str| (to.to_string(), "admin".to_string());
    assert_eq!(shifts[1..], [admin("75%"), admin("80%"), admin("30%")]);
}

#[test]
fn long_names_and_errors_wrap_and_only_the_first_routes_draw_charts_at_once() {
    let (legacy, new) = (Backend::start("legacy"), Backend::start("new"));
    let long_id = format!("r{}", "x".repeat(300));
    let long_upstream = format!("u{}", "y".repeat(200));
    let mut config = Config::new()
        .default("legacy")
        .upstream("legacy", &legacy.addr())
        .upstream(&long_upstream, &new.addr())
        .upstream("new-side", &new.addr());
    config = config.route(&long_id, "/long", |r| {
        r.legacy("legacy").new(&long_upstream).shift("10%")
    });
    for i in 0..11 {
        config = config.route(&format!("r{i}"), &format!("/r{i}"), |r| {
            r.legacy("legacy").new("new-side").shift("5%")
        });
    }
    let text = config.build();
    let proxy = Proxy::start(&text);
    // Latency over 10 ms, so the p99 axis has its widest labels.
    let mut c = proxy.client();
    for _ in 0..3 {
        c.get("/long/1", &[("x-delay-ms", "15")]).unwrap();
    }
    // A reload refused with a long error that has no place to break.
    let bogus = format!("[server]\nbogus-{} = 1", "z".repeat(600));
    proxy.rewrite(&text.replacen("[server]", &bogus, 1));
    assert_eq!(proxy.admin("POST", "/reload", b"").status, 422);

    let mut browser = Browser::start(LAPTOP.0, LAPTOP.1);
    browser.open(&proxy.admin_url());
    browser.wait_until(
        "document.body.dataset.loaded === '1' && \
         [...document.querySelectorAll('#history li')].some((l) => l.textContent.includes('reload refused'))",
        Duration::from_secs(20),
    );
    let page = browser.eval(
        r##"(() => ({
          scroll: document.documentElement.scrollWidth, inner: window.innerWidth,
          // What sticks out, if anything does.
          wide: [...document.querySelectorAll("body *")].filter((e) => e.getBoundingClientRect().right > window.innerWidth + 1)
            .slice(0, 6).map((e) => `${e.tagName}.${e.className}#${e.id} ${Math.round(e.getBoundingClientRect().width)}`),
          cards: document.querySelectorAll("article.route").length,
          drawn: [...document.querySelectorAll("article.route")].filter((a) => a.querySelector("svg")).length,
          // Every axis label inside its chart (none cut at the left edge).
          clipped: [...document.querySelectorAll("svg.chart-svg text.tick")].filter((t) => t.getBBox().x < 0).map((t) => t.textContent),
          p99: document.querySelector("article.route").querySelectorAll("figure")[2].querySelectorAll("text.tick")[2].textContent,
        }))()"##,
    );
    assert!(page["scroll"].as_f64() <= page["inner"].as_f64(), "{page}");
    assert_eq!(page["cards"], 12);
    assert_eq!(page["drawn"], 8, "charts for the first routes only: {page}");
    assert_eq!(page["clipped"], serde_json::json!([]), "{page}");
    assert!(page["p99"].as_str().unwrap().ends_with(" ms"), "{page}");
    // The others draw when opened.
    browser.eval("document.querySelectorAll('article.route details')[10].open = true");
    browser.wait_until(
        "!!document.querySelectorAll('article.route')[10].querySelector('svg')",
        Duration::from_secs(5),
    );
}

#[test]
fn a_shadowing_route_shows_its_comparisons_on_its_card() {
    let (legacy, new) = (Backend::start("legacy"), Backend::start("new"));
    let text = shadowing(&legacy, &new, "{}").build();
    let proxy = Proxy::start(&text);
    for i in 0..3 {
        proxy.client().get(&format!("/bookings/{i}"), &[]).unwrap();
    }
    // The two backends answer "legacy" and "new": every copy mismatches.
    eventually(Duration::from_secs(10), "the copies compared", || {
        proxy.status()["routes"][0]["shadow"]["mismatched"] == 3
    });
    let mut browser = Browser::start(LAPTOP.0, LAPTOP.1);
    browser.open(&proxy.admin_url());
    browser.wait_until(
        "!!document.querySelector('[data-route=\"bookings\"] dd.shadow')",
        Duration::from_secs(20),
    );
    let row =
        browser.eval("document.querySelector('[data-route=\"bookings\"] dd.shadow').textContent");
    assert_eq!(
        row, "100% copied · 3 compared · 3 mismatched (100%)",
        "{row}"
    );
    audit_contrast(&mut browser);
}

#[test]
fn a_rolled_back_rollout_and_fallbacks_show_on_the_card_with_why() {
    let legacy = Backend::start("legacy");
    let new = Backend::answering("new", |_, _| (503, "text/plain", "down".into()));
    let text = Config::new()
        .upstream("legacy", &legacy.addr())
        .upstream("new", &new.addr())
        .route("bookings", "/bookings", |r| {
            r.legacy("legacy")
                .new("new")
                .shift("0%")
                .sticky("none")
                .toml("fallback", "true")
                .toml("fallback-statuses", "[503]")
                .toml("rollout", r#"{ steps = ["50%", "100%"], interval = "1h", min-requests = 5, max-error-rate = "1%" }"#)
        })
        .route("frozen", "/frozen", |r| {
            r.toml("respond", r#"{ status = 503, body = "frozen" }"#)
        })
        .build();
    let proxy = Proxy::start(&text);
    for _ in 0..2 {
        assert_eq!(get(proxy.port, "/frozen", &[]).status, 503);
    }
    let mut c = proxy.client();
    // Every new-side answer falls back to legacy, and fails the rollout's gate.
    eventually(Duration::from_secs(20), "the rollback", || {
        let _ = c.get("/bookings/1", &[]);
        proxy.status()["routes"][0]["rollout"]["phase"] == "rolled-back"
    });
    let mut browser = Browser::start(LAPTOP.0, LAPTOP.1);
    browser.open(&proxy.admin_url());
    browser.wait_until(
        "!!document.querySelector('[data-route=\"bookings\"] dd.rollout')",
        Duration::from_secs(20),
    );
    let row =
        browser.eval("document.querySelector('[data-route=\"bookings\"] dd.rollout').textContent");
    let row = row.as_str().unwrap_or_default().to_string();
    assert!(
        row.starts_with("rolled-back at 0% (step 0 of 2, next 50%) · error rate"),
        "{row}"
    );
    let fallbacks = browser
        .eval("document.querySelector('[data-route=\"bookings\"] dd.fallbacks').textContent");
    assert!(
        fallbacks
            .as_str()
            .unwrap_or_default()
            .ends_with("served by legacy after the new side failed"),
        "{fallbacks}"
    );
    // A route's own answers, by status.
    let refused =
        browser.eval("document.querySelector('[data-route=\"frozen\"] dd.refused').textContent");
    assert_eq!(refused, "2 × 503 answered by strangle", "{refused}");
    audit_contrast(&mut browser);
}
