//! The auth-bypass classes from review, each through the real binary: a path spelled so the
//! route misses it, client copies of headers strangle vouches for (HTTP, signed endpoints and
//! Lambda events), trusted proxies, and the hostile-input holes (slow heads and bodies, stale
//! keys, JWKS stampedes, broken Lambda answers, predictable temp files, rate-limit keys,
//! pipelining).

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use serde_json::json;

use crate::auth::{good, Issuer};
use crate::invoke::{lambda_env, InvokeEndpoint};
use crate::support::*;

/// `/admin` (any case) and the exact `/account` (with or without a trailing slash) need a token;
/// everything else goes to the monolith, which serves whatever it is asked.
fn guarded(issuer: &Issuer, monolith: &Backend, extra_server: &str) -> String {
    with_users(
        Config::new().default("monolith").server(extra_server),
        issuer,
    )
    .upstream("monolith", &monolith.addr())
    .route("admin", "/admin", |r| {
        r.legacy("monolith")
            .auth("users")
            .toml("case-insensitive", "true")
    })
    .route("account", "/account", |r| {
        r.set("match", "exact")
            .toml("trailing-slash", "true")
            .legacy("monolith")
            .auth("users")
    })
    .build()
}

/// `[auth.users]`: the issuer's JWKS, its tokens for `bookings`, `sub` sent as `x-user-id`.
fn with_users(config: Config, issuer: &Issuer) -> Config {
    config.section(
        "[auth.users]",
        &format!(
            "jwks-url = \"{}\"\nissuer = \"https://issuer.test/\"\naudiences = [\"bookings\"]\nalgorithms = [\"RS256\"]\nforward-claims = {{ sub = \"x-user-id\" }}",
            issuer.url()
        ),
    )
}

#[test]
fn no_spelling_of_a_guarded_path_reaches_the_monolith_without_a_token() {
    let issuer = Issuer::start();
    let monolith = Backend::start("monolith");
    let proxy = Proxy::start(&guarded(&issuer, &monolith, ""));
    for path in [
        "/%61dmin/secret",
        "/%61%64%6D%69%6E/secret",
        "/ADMIN/secret",
        "/aDmIn",
        "/admin/./secret",
        "//admin//secret",
        "/x/../admin/secret",
        "/x/%2e%2E/admin",
        "/account",
        "/account/",
        "/%61ccount",
    ] {
        assert_eq!(get(proxy.port, path, &[]).status, 401, "{path}");
    }
    for path in [
        "/admin;x=1",
        "/admin%3Bx=1",
        "/admin/a;jsessionid=2/b",
        "/admin%00",
        "/admin%00/x",
        "/adm%0Ain",
        "/admin%7f",
        "/admin/%C0%AE%C0%AE/x",
        "/admin%C0%AF",
        "/x%ED%A0%80",
        "/x%80",
        "/admin?x=%00",
        "/admin?x=%0d%0a",
        "/admin%2Fsecret",
        // Pingora would escape these into `%20`, `%22`, `%3C`: malformed, so refused.
        "/x /admin",
        "/admin /public",
        "/admin\"x",
        "/a<b>",
        // A Java-style case-insensitive monolith reads `ı` as `I` and `ſ` as `S`.
        "/adm%C4%B1n",
        "/adm%c4%b0n",
        "/%E2%84%AAey",
    ] {
        let resp = send_once(
            proxy.port,
            format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes(),
        );
        assert_eq!(resp.map(|r| r.status), Some(400), "{path}");
    }
    assert_eq!(
        monolith.count(),
        0,
        "reached the monolith: {:?}",
        monolith.seen()
    );
    // Host must be an authority: it becomes the x-forwarded-host strangle vouches for.
    for head in [
        "GET /x HTTP/1.1\r\nHost: a b\r\n\r\n",
        "GET /x HTTP/1.1\r\nHost: evil.example/admin?x=\r\n\r\n",
        "GET /x HTTP/1.1\r\nHost: \"<script>\r\n\r\n",
        "GET /x HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
        "GET /x HTTP/1.1\r\nX-A: b\r\n\r\n",
        "GET /x HTTP/1.1\r\nHost: [::1\r\n\r\n",
        "GET /x HTTP/1.1\r\nHost: a:99999\r\n\r\n",
        "GET /x HTTP/1.1\r\nHost: a,b\r\n\r\n",
        "GET /x HTTP/1.1\r\nHost: a@b\r\n\r\n",
        // A lower-case method would miss a route limited to POST and be a POST to Django.
        "post /admin HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\n\r\n",
    ] {
        let resp = send_once(proxy.port, head.as_bytes());
        assert_eq!(resp.map(|r| r.status), Some(400), "{head:?}");
    }
    assert_eq!(monolith.count(), 0);
    let resp = send_once(proxy.port, b"GET /x HTTP/1.0\r\n\r\n");
    assert_eq!(resp.map(|r| r.status), Some(200), "HTTP/1.0 needs no Host");
    for host in [
        "[::1]:8080",
        "shop.example",
        "SHOP.example:443",
        "127.0.0.1",
    ] {
        let head = format!("GET /x HTTP/1.1\r\nHost: {host}\r\n\r\n");
        let resp = send_once(proxy.port, head.as_bytes());
        assert_eq!(resp.map(|r| r.status), Some(200), "{host}");
    }
    // The reason is in the access log.
    assert!(logged(&proxy, |l| l["status"] == 400
        && l["error"] == "encoded control byte in path"));
    assert!(logged(&proxy, |l| l["status"] == 400
        && l["error"] == "`;` path parameter in path"));

    // With a token, the monolith receives exactly the canonical path that was routed.
    let token = issuer.mint(json!({"claims": good("alice")}));
    let bearer = format!("Bearer {token}");
    for (sent, received) in [
        ("/%61dmin/%7esecret?a=%41", "/admin/~secret?a=%41"),
        ("/ADMIN/x/../y", "/ADMIN/y"),
        ("/account/", "/account/"),
        ("/caf%c3%a9/a|b", "/caf%C3%A9/a%7Cb"),
    ] {
        let r = get(proxy.port, sent, &[("Authorization", &bearer)]);
        assert_eq!(r.status, 200, "{sent}");
        let seen = monolith.seen().pop().unwrap();
        assert_eq!(seen.target, received, "{sent}");
        if seen.target.to_ascii_lowercase().starts_with("/admin") {
            assert_eq!(seen.header("x-user-id"), Some("alice"));
        }
    }
    // A claim that cannot travel as a header is refused, not dropped.
    let mut claims = good("alice");
    claims["sub"] = json!("alice\r\nx-admin: 1");
    let odd = issuer.mint(json!({ "claims": claims }));
    let r = get(
        proxy.port,
        "/admin",
        &[("Authorization", &format!("Bearer {odd}"))],
    );
    assert_eq!(r.status, 403);
    assert!(logged(&proxy, |l| l["path"] == "/admin/~secret"
        && l["route"] == "admin"));
}

/// Whether an access-log line matching `pred` appears within a few seconds (lines are written
/// in batches).
fn logged(proxy: &Proxy, pred: impl Fn(&serde_json::Value) -> bool) -> bool {
    let found = wait_until(Duration::from_secs(3), || {
        proxy.access_log().iter().any(&pred)
    });
    if !found {
        eprintln!("access log: {:?}", proxy.access_log());
    }
    found
}

#[test]
fn kept_path_parameters_are_routed_without_them_and_forwarded_with_them() {
    let issuer = Issuer::start();
    let monolith = Backend::start("monolith");
    let proxy = Proxy::start(&guarded(&issuer, &monolith, "path-parameters = \"keep\""));
    assert_eq!(get(proxy.port, "/admin;jsessionid=1", &[]).status, 401);
    assert_eq!(get(proxy.port, "/admin;x/secret", &[]).status, 401);
    for path in [
        "/public/..;/admin",
        "/;x/admin",
        "/a/.;/admin",
        "/admin%3Bx",
    ] {
        assert_eq!(get(proxy.port, path, &[]).status, 400, "{path}");
    }
    assert_eq!(monolith.count(), 0);
    let token = issuer.mint(json!({"claims": good("alice")}));
    let r = get(
        proxy.port,
        "/admin;jsessionid=1/x",
        &[("Authorization", &format!("Bearer {token}"))],
    );
    assert_eq!(r.status, 200);
    assert_eq!(
        monolith.seen().pop().unwrap().target,
        "/admin;jsessionid=1/x"
    );
}

#[test]
fn check_warns_of_bypassable_routes_and_refuses_plain_http_key_urls() {
    let dir = tempfile::tempdir().unwrap();
    let write = |name: &str, jwks: &str, route: &str| {
        let path = dir.path().join(name);
        std::fs::write(
            &path,
            format!(
                r#"
[server]
default = "monolith"
[auth.users]
jwks-url = "{jwks}"
issuer = "https://issuer.test/"
audiences = ["a"]
algorithms = ["RS256"]
[upstreams.monolith]
addresses = ["127.0.0.1:9"]
[[routes]]
id = "account"
path = "/account"
legacy = "monolith"
auth = "users"
{route}
"#
            ),
        )
        .unwrap();
        path
    };
    let run = |path: &std::path::Path| {
        std::process::Command::new(bin())
            .arg("check")
            .arg(path)
            .output()
            .unwrap()
    };
    let exact = write(
        "exact.toml",
        "https://issuer.test/jwks.json",
        "match = \"exact\"",
    );
    let out = run(&exact);
    let text =
        String::from_utf8_lossy(&out.stderr).to_string() + &String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(text.contains("warning:"), "{text}");
    for spelling in [
        "`/ACCOUNT`",
        "`/account/`",
        "`/account.`",
        "case-insensitive",
        "trailing-slash",
    ] {
        assert!(text.contains(spelling), "{spelling}: {text}");
    }
    let covered = write(
        "covered.toml",
        "http://127.0.0.1:8080/jwks.json",
        "case-insensitive = true",
    );
    let out = run(&covered);
    let text =
        String::from_utf8_lossy(&out.stderr).to_string() + &String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(!text.contains("warning:"), "{text}");
    let plain = write("plain.toml", "http://issuer.test/jwks.json", "");
    let out = run(&plain);
    let text = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(text.contains("plain http"), "{text}");
    assert!(text.contains("use https"), "{text}");
    let prefix_slash = write(
        "slash.toml",
        "https://issuer.test/jwks.json",
        "trailing-slash = true",
    );
    assert!(!run(&prefix_slash).status.success());
}

/// The headers a hostile client adds to pose as something strangle vouches for.
const SPOOFED: &[(&str, &str)] = &[
    ("X-User-Id", "root"),
    ("X-Strangle-Side", "new"),
    ("X-Strangle-Shadow", "1"),
    ("X-Forwarded-For", "6.6.6.6"),
    ("X-Forwarded-Host", "evil.example"),
    ("X-Forwarded-Proto", "https"),
    ("X-Forwarded-Prefix", "/admin"),
    ("Forwarded", "for=6.6.6.6;proto=https"),
    ("X-Real-IP", "6.6.6.6"),
    // CGI-style servers read these as X-User-Id and X-Forwarded-For.
    ("X_User_Id", "root"),
    ("X_Forwarded_For", "6.6.6.6"),
    ("X_Strangle_Side", "new"),
    // IIS and Symfony route on these instead of the request line.
    ("X-Original-URL", "/admin"),
    ("X-Rewrite-URL", "/admin"),
    ("True-Client-IP", "6.6.6.6"),
    // Frameworks take these as the method instead of the request line's.
    ("X-HTTP-Method-Override", "DELETE"),
    ("X-HTTP-Method", "DELETE"),
    ("X_Method_Override", "DELETE"),
];

/// Every value of a header, joined as one would be.
fn joined(headers: &[(String, String)], name: &str) -> Option<String> {
    let v: Vec<&str> = headers
        .iter()
        .filter(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
        .collect();
    (!v.is_empty()).then(|| v.join(", "))
}

/// Asserts one upstream's view of the spoofed request: `header` reads a header as the
/// upstream received it (joined with `, ` if repeated).
fn assert_vouched(kind: &str, port: u16, header: &dyn Fn(&str) -> Option<String>) {
    assert_eq!(header("x-user-id").as_deref(), Some("alice"), "{kind}");
    assert_eq!(header("x-strangle-side"), None, "{kind}");
    assert_eq!(header("x-strangle-shadow"), None, "{kind}");
    assert_eq!(
        header("x-forwarded-for").as_deref(),
        Some("127.0.0.1"),
        "{kind}"
    );
    assert_eq!(header("x-real-ip").as_deref(), Some("127.0.0.1"), "{kind}");
    assert_eq!(
        header("x-forwarded-proto").as_deref(),
        Some("http"),
        "{kind}"
    );
    let host = format!("127.0.0.1:{port}");
    assert_eq!(
        header("x-forwarded-host").as_deref(),
        Some(&*host),
        "{kind}"
    );
    assert_eq!(header("x-forwarded-prefix"), None, "{kind}");
    assert_eq!(header("forwarded"), None, "{kind}");
    for name in [
        "x_user_id",
        "x_forwarded_for",
        "x_strangle_side",
        "x-original-url",
        "x-rewrite-url",
        "true-client-ip",
        "x-http-method-override",
        "x-http-method",
        "x_method_override",
        "x-method-override",
    ] {
        assert_eq!(header(name), None, "{kind}: {name}");
    }
    assert_eq!(header("x-keep").as_deref(), Some("yes"), "{kind}");
}

#[test]
fn one_header_policy_for_http_signed_and_lambda_upstreams() {
    let issuer = Issuer::start();
    let monolith = Backend::start("monolith");
    let invoke = InvokeEndpoint::start();
    let api = InvokeEndpoint::start_for("execute-api");
    let text = with_users(Config::new().default("monolith"), &issuer)
        .upstream("monolith", &monolith.addr())
        .lambda("fn", invoke.port)
        .signed_api("api", api.port)
        .route("http", "/http", |r| {
            r.legacy("monolith").auth("users").toml("override", "true")
        })
        .route("fn", "/fn", |r| r.new("fn").auth("users"))
        .route("api", "/api", |r| r.new("api").auth("users"))
        .build();
    let proxy = Proxy::start_with_env(&text, &lambda_env());
    let token = issuer.mint(json!({"claims": good("alice")}));
    let bearer = format!("Bearer {token}");
    let mut headers = SPOOFED.to_vec();
    headers.push(("Authorization", &bearer));
    headers.push(("X-Keep", "yes"));

    let r = get(proxy.port, "/http/%61", &headers);
    assert_eq!(r.status, 200, "{}", proxy.stderr());
    let seen = monolith.seen().pop().unwrap();
    assert_eq!(seen.target, "/http/a");
    assert_vouched("http", proxy.port, &|name| joined(&seen.headers, name));

    let r = get(proxy.port, "/fn/%61", &headers);
    assert_eq!(r.status, 200, "{}", proxy.stderr());
    let event = invoke.seen().pop().unwrap().event;
    assert_eq!(event["rawPath"], "/fn/a");
    assert_eq!(event["requestContext"]["http"]["sourceIp"], "127.0.0.1");
    let event_header = |name: &str| event["headers"][name].as_str().map(String::from);
    assert_vouched("lambda", proxy.port, &event_header);

    let r = get(proxy.port, "/api/%61", &headers);
    assert_eq!(r.status, 200, "{}", proxy.stderr());
    let call = api.seen().pop().unwrap();
    assert_eq!(call.signature_ok, Ok(()));
    assert_eq!(call.uri, "/prod/api/a");
    assert_vouched("signed", proxy.port, &|name| joined(&call.headers, name));
}

/// A verified claim is forwarded exactly or not at all: white space around it would be trimmed
/// by the upstream's parser (`" admin"` arriving as `admin`, another identity), and a CR or LF
/// cannot be a header value. Either is refused (403) before anything is forwarded; white space
/// inside a value is the value.
#[test]
fn a_claim_that_a_header_would_change_is_refused_not_forwarded() {
    let issuer = Issuer::start();
    let monolith = Backend::start("monolith");
    let text = with_users(Config::new().default("monolith"), &issuer)
        .upstream("monolith", &monolith.addr())
        .route("http", "/http", |r| r.legacy("monolith").auth("users"))
        .build();
    let proxy = Proxy::start(&text);
    for sub in [
        " admin",
        "admin ",
        "\tadmin",
        "admin\t",
        "ad\r\nmin",
        "admin\n",
    ] {
        let token = issuer.mint(json!({"claims": good(sub)}));
        let bearer = format!("Bearer {token}");
        // Twice: the second answer comes from the token cache.
        for _ in 0..2 {
            let r = get(proxy.port, "/http/a", &[("Authorization", &bearer)]);
            assert_eq!(r.status, 403, "{sub:?}: {}", r.text());
        }
    }
    assert!(monolith.seen().is_empty());
    let token = issuer.mint(json!({"claims": good("ad min")}));
    let bearer = format!("Bearer {token}");
    assert_eq!(
        get(proxy.port, "/http/a", &[("Authorization", &bearer)]).status,
        200
    );
    let seen = monolith.seen().pop().unwrap();
    assert_eq!(
        joined(&seen.headers, "x-user-id").as_deref(),
        Some("ad min")
    );
}

#[test]
fn trusted_proxies_are_believed_and_nobody_else() {
    let monolith = Backend::start("monolith");
    let text = monolith_config(
        &monolith,
        r#"
[[routes]]
id = "limited"
path = "/limited"
legacy = "monolith"
rate-limit = { requests = 2, per = "1m", burst = 2 }
"#,
    )
    .replace(
        "default = \"monolith\"",
        "default = \"monolith\"\ntrusted-proxies = [\"127.0.0.0/8\"]",
    );
    let proxy = Proxy::start(&text);
    let r = get(
        proxy.port,
        "/x",
        &[
            ("X-Forwarded-For", "6.6.6.6, 203.0.113.7"),
            ("X-Forwarded-Proto", "https"),
        ],
    );
    assert_eq!(r.status, 200);
    let seen = monolith.seen().pop().unwrap();
    assert_eq!(
        seen.header("x-forwarded-for"),
        Some("6.6.6.6, 203.0.113.7, 127.0.0.1")
    );
    assert_eq!(seen.header("x-real-ip"), Some("203.0.113.7"));
    assert_eq!(seen.header("x-forwarded-proto"), Some("https"));
    // A proxy in front may add a line of its own: all lines are one list.
    let mut c = proxy.client();
    c.stream()
        .write_all(b"GET /x HTTP/1.1\r\nHost: a\r\nX-Forwarded-For: 6.6.6.6\r\nX-Forwarded-For: 203.0.113.8\r\n\r\n")
        .unwrap();
    assert_eq!(c.read_response().unwrap().status, 200);
    let seen = monolith.seen().pop().unwrap();
    assert_eq!(
        seen.header("x-forwarded-for"),
        Some("6.6.6.6, 203.0.113.8, 127.0.0.1")
    );
    assert_eq!(seen.header("x-real-ip"), Some("203.0.113.8"));
    assert!(logged(&proxy, |l| l["client"] == "203.0.113.7"));

    // Rate limits key on the client behind the proxy; an IPv6 client holds its whole /64.
    let from = |xff: &str| get(proxy.port, "/limited", &[("X-Forwarded-For", xff)]).status;
    assert_eq!(from("2001:db8:1:2::1"), 200);
    assert_eq!(from("2001:db8:1:2::1"), 200);
    assert_eq!(from("2001:db8:1:2:ffff::9"), 429, "same /64");
    assert_eq!(from("2001:db8:1:3::1"), 200, "another /64");
    assert_eq!(from("198.51.100.1"), 200);
    assert_eq!(
        from("198.51.100.2"),
        200,
        "IPv4 clients are keyed per address"
    );
}

#[test]
fn rate_limits_come_before_token_checks_and_keys_are_capped() {
    let issuer = Issuer::start();
    let monolith = Backend::start("monolith");
    let text = guarded(&issuer, &monolith, "").replace(
        "case-insensitive = true",
        "case-insensitive = true\nrate-limit = { requests = 3, per = \"1m\", burst = 3 }",
    ) + r#"
[[routes]]
id = "keyed"
path = "/keyed"
legacy = "monolith"
rate-limit = { requests = 1, per = "1m", burst = 1, key = "header:x-api-key", max-keys = 1024 }
"#;
    let proxy = Proxy::start(&text);
    let before = issuer.fetches();
    let statuses: Vec<u16> = (0..10)
        .map(|_| {
            get(
                proxy.port,
                "/admin/x",
                &[("Authorization", "Bearer not.a.token")],
            )
            .status
        })
        .collect();
    assert_eq!(&statuses[..3], &[401, 401, 401]);
    assert!(statuses[3..].iter().all(|&s| s == 429), "{statuses:?}");
    assert!(issuer.fetches() - before <= 1);
    // 1,200 distinct keys against a cap of 1,024: the newcomers past the cap share an
    // overflow bucket instead of each getting a fresh one.
    let mut c = proxy.client();
    let passed = (0..1200)
        .filter(|i| {
            let key = format!("key-{i}");
            c.get("/keyed", &[("x-api-key", &key)]).unwrap().status == 200
        })
        .count();
    assert!((800..1200).contains(&passed), "{passed} passed");
    let metrics = get(proxy.admin_port, "/metrics", &[]).text();
    let value = |name: &str| -> f64 {
        metrics
            .lines()
            .find(|l| l.starts_with(&format!("{name}{{route=\"keyed\"}}")))
            .and_then(|l| l.rsplit(' ').next()?.parse().ok())
            .unwrap_or_else(|| panic!("{name} missing:\n{metrics}"))
    };
    assert!(value("strangle_rate_limit_keys") <= 1024.0 + 64.0);
    assert!(value("strangle_rate_limit_overflow_total") >= 1200.0 - 1024.0);
    assert_eq!(value("strangle_rate_limit_evictions_total"), 0.0);
}

/// Sends `first`, then `each` every 250 ms for up to 8 s, until the proxy closes the
/// connection: whether it did, when, and what it answered meanwhile.
fn dribble(port: u16, first: &[u8], each: &[u8]) -> (bool, Duration, Vec<u8>) {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_millis(250)))
        .unwrap();
    s.write_all(first).unwrap();
    let start = Instant::now();
    let mut answer = Vec::new();
    for _ in 0..32 {
        if s.write_all(each).is_err() {
            return (true, start.elapsed(), answer);
        }
        let mut b = [0u8; 1024];
        match s.read(&mut b) {
            Ok(0) => return (true, start.elapsed(), answer),
            Ok(n) => answer.extend_from_slice(&b[..n]),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(_) => return (true, start.elapsed(), answer),
        }
    }
    (false, start.elapsed(), answer)
}

#[test]
fn blank_lines_before_a_request_do_not_stretch_the_head_deadline() {
    let monolith = Backend::start("monolith");
    let text = monolith_config(&monolith, "").replace(
        "default = \"monolith\"",
        "default = \"monolith\"\nheader-timeout = \"1s\"",
    );
    let proxy = Proxy::start(&text);
    // A blank line every 250 ms for up to 8 s: the 1 s deadline must end it long before.
    let (closed, took, _) = dribble(proxy.port, b"", b"\r\n");
    assert!(closed, "still open after {took:?}");
    assert!(took < Duration::from_secs(5), "{took:?}");
    // A pipelined head that never ends is cut off at the deadline too.
    let first = b"GET /x HTTP/1.1\r\nHost: x\r\n\r\nGET /admin HTTP/1.1\r\n";
    let (closed, took, answer) = dribble(proxy.port, first, b"X-A: b\r\n");
    assert!(String::from_utf8_lossy(&answer).starts_with("HTTP/1.1 200"));
    assert!(closed, "pipelined head still open after {took:?}");
    assert!(took < Duration::from_secs(5), "{took:?}");
    // Blank lines before a request sent whole are still fine.
    let resp = send_once(proxy.port, b"\r\n\r\nGET /x HTTP/1.1\r\nHost: x\r\n\r\n");
    assert_eq!(resp.map(|r| r.status), Some(200));
}

#[test]
fn a_replaced_key_file_stops_verifying_after_a_reload() {
    let issuer = Issuer::start();
    let monolith = Backend::start("monolith");
    let keys = tempfile::tempdir().unwrap();
    let key = keys.path().join("signing.pem");
    std::fs::write(&key, get(issuer.port, "/public/rsa-1.pem", &[]).body).unwrap();
    let text = guarded(&issuer, &monolith, "")
        .replace(
            &format!("jwks-url = \"{}\"", issuer.url()),
            &format!("keys = [\"{}\"]", key.display()),
        )
        .replace(
            "algorithms = [\"RS256\"]",
            "algorithms = [\"RS256\", \"ES256\"]",
        );
    let proxy = Proxy::start(&text);
    let old = issuer.mint(json!({"claims": good("alice"), "kid": "rsa-1"}));
    let new = issuer.mint(json!({"claims": good("alice"), "kid": "ec-1"}));
    let call = |t: &str| {
        get(
            proxy.port,
            "/admin",
            &[("Authorization", &format!("Bearer {t}"))],
        )
        .status
    };
    assert_eq!(call(&old), 200);
    assert_eq!(call(&new), 401);
    // The rsa-1 key is revoked: its file now holds ec-1. The config text is unchanged.
    std::fs::write(&key, get(issuer.port, "/public/ec-1.pem", &[]).body).unwrap();
    let r = proxy.admin("POST", "/reload", b"");
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(call(&old), 401, "a revoked key still verifies");
    assert_eq!(call(&new), 200);
}

#[test]
fn garbage_tokens_never_fetch_keys_and_concurrent_misses_share_one_fetch() {
    let issuer = Issuer::start();
    issuer.set_down(true);
    let monolith = Backend::start("monolith");
    let proxy = Proxy::start(&guarded(&issuer, &monolith, ""));
    // Let the start-up fetch fail and its backoff begin.
    eventually(Duration::from_secs(5), "the start-up JWKS fetch", || {
        issuer.fetches() >= 1
    });
    let before = issuer.fetches();
    let flood = |token: String| {
        let handles: Vec<_> = (0..20)
            .map(|_| {
                let (port, token) = (proxy.port, token.clone());
                std::thread::spawn(move || {
                    get(
                        port,
                        "/admin",
                        &[("Authorization", &format!("Bearer {token}"))],
                    )
                    .status
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap())
            .collect::<Vec<u16>>()
    };
    let started = Instant::now();
    let garbage = flood("garbage".into());
    assert!(garbage.iter().all(|&s| s == 401), "{garbage:?}");
    let forged_header = flood("eyJhbGciOiJub25lIn0.e30.".into());
    assert!(forged_header.iter().all(|&s| s == 401), "{forged_header:?}");
    assert_eq!(
        issuer.fetches() - before,
        0,
        "malformed tokens fetched keys"
    );
    let token = issuer.mint(json!({"claims": good("alice")}));
    let real = flood(token);
    assert!(real.iter().all(|&s| s == 503), "{real:?}");
    let fetched = issuer.fetches() - before;
    assert!(fetched <= 2, "{fetched} fetches for 20 concurrent requests");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
}

/// `/bookings` served by a function behind the Invoke stand-in, the rest by the monolith.
fn lambda_config(
    invoke: &InvokeEndpoint,
    monolith: &Backend,
    server: &str,
    function: &str,
) -> String {
    Config::new()
        .default("monolith")
        .server(server)
        .upstream("monolith", &monolith.addr())
        .lambda("fn", invoke.port)
        .with(function)
        .route("fn", "/bookings", |r| r.new("fn"))
        .build()
}

#[test]
fn a_slow_body_holds_no_upstream_slot() {
    let invoke = InvokeEndpoint::start();
    let monolith = Backend::start("monolith");
    let text = lambda_config(
        &invoke,
        &monolith,
        "body-timeout = \"1s\"",
        "max-in-flight = 1\nqueue-timeout = \"300ms\"",
    );
    let proxy = Proxy::start_with_env(&text, &lambda_env());
    let mut slow = Client::connect(proxy.port);
    slow.stream()
        .write_all(b"POST /bookings/1 HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n0123456789")
        .unwrap();
    // Time for the slow request to take the only slot if it were going to: a slot it does not
    // take has nothing to poll for.
    std::thread::sleep(Duration::from_millis(200));
    let r = Client::connect(proxy.port)
        .request("POST", "/bookings/2", &[], b"{}")
        .unwrap();
    assert_eq!(r.status, 200, "the slow body held the only slot");
    let r = slow.read_response().unwrap();
    assert_eq!(r.status, 408);
    // A body streamed to an HTTP upstream is bounded between reads.
    let mut slow = Client::connect(proxy.port);
    slow.stream()
        .write_all(b"POST /other HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n0123456789")
        .unwrap();
    let r = slow.read_response().unwrap();
    assert_eq!(r.status, 408);
}

#[test]
fn expect_continue_is_answered_once_authorized_and_never_forwarded() {
    let invoke = InvokeEndpoint::start();
    let monolith = Backend::start("monolith");
    let proxy = Proxy::start_with_env(&lambda_config(&invoke, &monolith, "", ""), &lambda_env());
    for path in ["/bookings/1", "/other"] {
        let mut c = proxy.client();
        c.stream()
            .write_all(
                format!("POST {path} HTTP/1.1\r\nHost: a\r\nContent-Length: 2\r\nExpect: 100-continue\r\n\r\n")
                    .as_bytes(),
            )
            .unwrap();
        // The go-ahead comes before any body byte was sent.
        assert_eq!(c.read_interim().unwrap(), 100, "{path}");
        c.stream().write_all(b"{}").unwrap();
        assert_eq!(c.read_response().unwrap().status, 200, "{path}");
    }
    assert_eq!(monolith.seen().pop().unwrap().header("expect"), None);
    let event = invoke.seen().pop().unwrap().event;
    assert!(event["headers"].get("expect").is_none(), "{event}");
    // A client that hangs up after the go-ahead got no final status: the 100 is never logged
    // or counted as one (it was, as a `1xx`, until the adversarial review of issue 12).
    for path in ["/bookings/hangup", "/other/hangup"] {
        let mut c = proxy.client();
        c.stream()
            .write_all(
                format!("POST {path} HTTP/1.1\r\nHost: a\r\nContent-Length: 10\r\nExpect: 100-continue\r\n\r\n")
                    .as_bytes(),
            )
            .unwrap();
        assert_eq!(c.read_interim().unwrap(), 100, "{path}");
        drop(c);
        assert!(logged(&proxy, |l| l["path"] == path), "{path}");
    }
    let log = proxy.access_log();
    assert!(
        log.iter().all(|l| l["status"] != 100),
        "an interim status was logged as the final one: {log:?}"
    );
    let metrics = proxy.admin("GET", "/metrics", b"").text();
    assert!(
        !metrics
            .lines()
            .any(|l| l.contains("class=\"1xx\"") && !l.ends_with(" 0")),
        "{metrics}"
    );
}

#[test]
fn broken_lambda_answers_get_502_and_the_connection_stays_in_step() {
    let invoke = InvokeEndpoint::start();
    let monolith = Backend::start("monolith");
    let text = lambda_config(&invoke, &monolith, "", "");
    let proxy = Proxy::start_with_env(&text, &lambda_env());
    let mut c = proxy.client();
    let r = c.get("/bookings/informational", &[]).unwrap();
    assert_eq!(r.status, 502);
    assert_ne!(r.text(), "lost");
    // The next answer on the same connection is the next request's own.
    let r = c.get("/bookings/7", &[]).unwrap();
    assert_eq!(r.status, 200);
    assert!(r.text().contains("/bookings/7"), "{}", r.text());
    let r = c.get("/bookings/many-headers", &[]).unwrap();
    assert_eq!(r.status, 502);
    assert_eq!(get(proxy.port, "/bookings/8", &[]).status, 200);
}

#[test]
fn pipelined_requests_are_answered_in_order() {
    let monolith = Backend::start("monolith");
    let proxy = Proxy::start(&monolith_config(&monolith, ""));
    let mut c = proxy.client();
    c.stream()
        .write_all(
            b"GET /one HTTP/1.1\r\nHost: x\r\n\r\nPOST /two HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabcGET /three HTTP/1.1\r\nHost: x\r\n\r\n",
        )
        .unwrap();
    for _ in 0..3 {
        assert_eq!(c.read_response().unwrap().status, 200);
    }
    let targets: Vec<String> = monolith.seen().into_iter().map(|s| s.target).collect();
    assert_eq!(targets, ["/one", "/two", "/three"]);
    assert_eq!(monolith.seen()[1].body, b"abc");
    // The connection is still good for more.
    assert_eq!(c.get("/four", &[]).unwrap().status, 200);
}

#[test]
fn shift_writes_through_no_planted_link_and_keeps_the_file_mode() {
    use std::os::unix::fs::PermissionsExt;
    let (legacy, new) = (Backend::start("legacy"), Backend::start("new"));
    let proxy = Proxy::start(&split_config(&legacy, &new, "0%", "none"));
    std::fs::set_permissions(&proxy.config, std::fs::Permissions::from_mode(0o640)).unwrap();
    let victim_dir = tempfile::tempdir().unwrap();
    let victim = victim_dir.path().join("victim");
    std::fs::write(&victim, "victim").unwrap();
    // The temp name an earlier version used, predictable from the proxy's pid.
    let planted = proxy
        .dir
        .path()
        .join(format!(".strangle.toml.strangle-{}", proxy.child.id()));
    std::os::unix::fs::symlink(&victim, &planted).unwrap();
    let out = proxy.cli(&["shift", "bookings", "30%"]);
    assert!(out.status.success(), "{}", stderr_of(&out));
    assert_eq!(std::fs::read_to_string(&victim).unwrap(), "victim");
    let text = std::fs::read_to_string(&proxy.config).unwrap();
    assert!(text.contains("shift = \"30%\""), "{text}");
    let mode = std::fs::metadata(&proxy.config)
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o640);
    let strays: Vec<_> = std::fs::read_dir(proxy.dir.path())
        .unwrap()
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains(".strangle-") && !planted.ends_with(n))
        .collect();
    assert!(strays.is_empty(), "{strays:?}");
}
