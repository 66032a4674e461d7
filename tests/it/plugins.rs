//! Route plugins on the request path: the new side speaks another API than the monolith (a
//! rewritten path, other headers) and the client sees the monolith's API whichever side
//! answers, on every engine (the HTTP/1 fast path, Pingora's proxy, HTTP/2) and every upstream
//! kind (HTTP, a Lambda function); a plugin never lets a client vouch for a header, and a
//! rewrite never leaves the route.

use serde_json::Value;

use crate::support::*;

/// The monolith's `/api/v1/bookings` on the new side as `/bookings`, with its version header,
/// and the new side's answers dressed as the monolith's.
const NEW_SIDE_PLUGINS: &str = r#"[
  { use = "rewrite-path", side = "new", from = "^/api/v1/(.*)$", to = "/$1" },
  { use = "headers", side = "new", request-set = { "x-api-version" = "2" },
    request-remove = ["x-debug"], response-set = { "x-api-shape" = "v1" },
    response-remove = ["x-served-by"] },
]"#;

/// `path` split between `legacy` and `new` (addresses) at `shift`, with `plugins`, legacy the
/// default: more may be added before `build`.
fn split(legacy: &str, new: &str, path: &str, shift: &str, plugins: &str) -> Config {
    Config::new()
        .default("legacy")
        .upstream("legacy", legacy)
        .upstream("new", new)
        .route("bookings", path, |r| {
            r.legacy("legacy")
                .new("new")
                .shift(shift)
                .toml("plugins", plugins)
        })
}

fn http_config(legacy: &Backend, new: &Backend, shift: &str, extra: &str) -> String {
    split(
        &legacy.addr(),
        &new.addr(),
        "/api/v1/bookings",
        shift,
        NEW_SIDE_PLUGINS,
    )
    .server(extra)
    .build()
}

#[test]
fn plugins_run_the_same_on_the_fast_path_pingora_and_http2() {
    let (legacy, new) = (Backend::start("legacy"), Backend::start("new"));
    let text = http_config(&legacy, &new, "100%", "h2c = true");
    for fast_path_off in [false, true] {
        let proxy = Proxy::start_with_env(&text, engine_env(fast_path_off));
        let r = get(
            proxy.port,
            "/api/v1/bookings/42?x=1",
            &[("x-debug", "1"), ("x-forwarded-for", "6.6.6.6")],
        );
        assert_eq!(r.status, 200);
        assert_eq!(r.header("x-api-shape"), Some("v1"));
        let seen = new.seen().pop().unwrap();
        assert_eq!(
            seen.target, "/bookings/42?x=1",
            "fast path off: {fast_path_off}"
        );
        assert_eq!(seen.header("x-api-version"), Some("2"));
        assert_eq!(seen.header("x-debug"), None);
        // The outbound policy has the last word: the client's forwarding header is not kept.
        assert_eq!(seen.header("x-forwarded-for"), Some("127.0.0.1"));
        // HTTP/2 streams take the same hooks.
        let (status, _) = crate::http2::h2c_get(proxy.port, "/api/v1/bookings/7", &["x-debug: 1"]);
        assert_eq!(status, "200 2");
        let seen = new.seen().pop().unwrap();
        assert_eq!(seen.target, "/bookings/7");
        assert_eq!(seen.header("x-api-version"), Some("2"));
        assert_eq!(seen.header("x-debug"), None);
    }
    assert!(legacy.seen().is_empty());
}

#[test]
fn the_legacy_side_gets_the_request_as_the_client_sent_it() {
    let (legacy, new) = (Backend::start("legacy"), Backend::start("new"));
    let proxy = Proxy::start(&http_config(&legacy, &new, "0%", ""));
    let r = get(proxy.port, "/api/v1/bookings/42", &[("x-debug", "1")]);
    assert_eq!(r.status, 200);
    assert_eq!(r.header("x-api-shape"), None);
    let seen = legacy.seen().pop().unwrap();
    assert_eq!(seen.target, "/api/v1/bookings/42");
    assert_eq!(seen.header("x-debug"), Some("1"));
    assert_eq!(seen.header("x-api-version"), None);
    assert!(new.seen().is_empty());
}

#[test]
fn a_new_side_that_cannot_be_reached_falls_back_to_legacy_with_the_clients_request() {
    let legacy = Backend::start("legacy");
    let text = Config::new()
        .default("legacy")
        .upstream("legacy", &legacy.addr())
        .upstream("new", &format!("127.0.0.1:{}", free_port()))
        .route("bookings", "/api/v1/bookings", |r| {
            r.legacy("legacy")
                .new("new")
                .shift("100%")
                .toml("fallback", "true")
                .toml("plugins", NEW_SIDE_PLUGINS)
        })
        .build();
    let proxy = Proxy::start(&text);
    let r = get(proxy.port, "/api/v1/bookings/42", &[("x-debug", "1")]);
    assert_eq!(r.status, 200);
    assert_eq!(r.text(), "legacy");
    assert_eq!(
        r.header("x-api-shape"),
        None,
        "legacy's answer, legacy's plugins (none)"
    );
    let seen = legacy.seen().pop().unwrap();
    assert_eq!(seen.target, "/api/v1/bookings/42");
    assert_eq!(seen.header("x-debug"), Some("1"));
    assert_eq!(seen.header("x-api-version"), None);
}

#[test]
fn a_rewrite_never_leaves_its_template_and_the_upstream_gets_nothing() {
    let (legacy, new) = (Backend::start("legacy"), Backend::start("new"));
    // `.$1` lets a capture of `.` make a `..` segment.
    let rewrite = r#"[{ use = "rewrite-path", from = "^/api/v1/bookings/x(.*)$", to = "/bookings/.$1/admin" }]"#;
    let text = split(
        &legacy.addr(),
        &new.addr(),
        "/api/v1/bookings",
        "100%",
        rewrite,
    )
    .build();
    let proxy = Proxy::start(&text);
    let r = get(proxy.port, "/api/v1/bookings/x.", &[]);
    assert_eq!(r.status, 400);
    assert!(new.seen().is_empty() && legacy.seen().is_empty());
    // Canonicalised like a client's path: `/bookings/./admin` is `/bookings/admin`, still
    // under the template's `/bookings/`.
    let r = get(proxy.port, "/api/v1/bookings/x", &[]);
    assert_eq!(r.status, 200);
    assert_eq!(new.seen().pop().unwrap().target, "/bookings/admin");
    let r = get(proxy.port, "/api/v1/bookings/xyz", &[]);
    assert_eq!(r.status, 200);
    assert_eq!(new.seen().pop().unwrap().target, "/bookings/.yz/admin");
}

#[test]
fn a_lambda_side_gets_the_rewritten_path_and_its_answer_is_dressed_as_the_monolith() {
    let watch = crate::lambda::LambdaWatch::start();
    let legacy = Backend::start("legacy");
    let text = Config::new()
        .default("legacy")
        .upstream("legacy", &legacy.addr())
        .lambda("bookings-fn", watch.port)
        .route("bookings", "/api/v1/bookings", |r| {
            r.legacy("legacy")
                .new("bookings-fn")
                .shift("100%")
                .toml("plugins", NEW_SIDE_PLUGINS)
        })
        .build();
    let proxy = Proxy::start_with_env(&text, &crate::invoke::lambda_env());
    let r = get(
        proxy.port,
        "/api/v1/bookings/echo?q=1",
        &[("x-debug", "1"), ("x-strangle-side", "legacy")],
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.header("x-api-shape"), Some("v1"));
    assert_eq!(r.header("x-served-by"), None);
    let echo: Value = serde_json::from_str(&r.text()).unwrap();
    assert_eq!(echo["path"], "/bookings/echo", "{echo}");
    assert_eq!(echo["query"]["q"][0], "1", "{echo}");
    assert_eq!(echo["headers"]["x-api-version"], "2", "{echo}");
    assert!(echo["headers"].get("x-debug").is_none(), "{echo}");
    assert!(echo["headers"].get("x-strangle-side").is_none(), "{echo}");
}

#[test]
fn a_browsers_preflight_is_answered_by_the_route_and_answers_carry_its_cors_headers() {
    let (legacy, new) = (Backend::start("legacy"), Backend::start("new"));
    let cors = r#"[{ use = "cors", origins = ["https://app.example"], methods = ["GET", "PUT"], credentials = true }]"#;
    let text = split(&legacy.addr(), &new.addr(), "/bookings", "100%", cors).build();
    let proxy = Proxy::start(&text);
    let mut c = proxy.client();
    let preflight = [
        ("origin", "https://app.example"),
        ("access-control-request-method", "PUT"),
    ];
    let r = c
        .request("OPTIONS", "/bookings/1", &preflight, b"")
        .unwrap();
    assert_eq!(r.status, 204);
    assert_eq!(
        r.header("access-control-allow-origin"),
        Some("https://app.example")
    );
    assert_eq!(r.header("access-control-allow-methods"), Some("GET, PUT"));
    let r = c
        .request(
            "OPTIONS",
            "/bookings/1",
            &[
                ("origin", "https://evil.example"),
                ("access-control-request-method", "PUT"),
            ],
            b"",
        )
        .unwrap();
    assert_eq!(r.status, 403);
    assert_eq!(r.header("access-control-allow-origin"), None);
    assert!(new.seen().is_empty(), "preflights never reach the side");
    let r = c
        .get("/bookings/1", &[("origin", "https://app.example")])
        .unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(
        r.header("access-control-allow-origin"),
        Some("https://app.example")
    );
    assert_eq!(r.header("access-control-allow-credentials"), Some("true"));
    assert_eq!(new.seen().len(), 1);
}

/// The new side's bookings as the monolith shapes them: `booking` is `id`, no `served_by`,
/// a `currency`; its 404 problem document is the monolith's page.
const MONOLITH_SHAPE: &str = r#"[
  { use = "rewrite-path", side = "new", from = "^/api/v1/(.*)$", to = "/$1" },
  { use = "json-map", side = "new", rename = { "$.booking" = "$.id" }, drop = ["$.served_by"],
    default = { "$.currency" = "EUR" } },
  { use = "status-map", side = "new", status = 404, content-type = "text/html", body = "<h1>Not Found</h1>" },
]"#;

#[test]
fn a_client_sees_the_monoliths_json_whichever_side_answers_a_lambda_function_included() {
    let watch = crate::lambda::LambdaWatch::start();
    let legacy = Backend::answering("legacy", |seen, _| {
        let id = seen
            .target
            .trim_start_matches("/api/v1/bookings/")
            .to_string();
        let body = serde_json::json!({"id": id, "method": seen.method, "currency": "EUR"});
        (200, "application/json", body.to_string())
    });
    let text = Config::new()
        .default("legacy")
        .upstream("legacy", &legacy.addr())
        .lambda("bookings-fn", watch.port)
        .route("bookings", "/api/v1/bookings", |r| {
            r.legacy("legacy")
                .new("bookings-fn")
                .shift("0%")
                .toml("override", "true")
                .toml("plugins", MONOLITH_SHAPE)
        })
        .build();
    let proxy = Proxy::start_with_env(&text, &crate::invoke::lambda_env());
    let answer = |side: &str| {
        let r = get(
            proxy.port,
            "/api/v1/bookings/42",
            &[("x-strangle-side", side)],
        );
        assert_eq!(r.status, 200, "{side}: {}", r.text());
        assert_eq!(
            r.header("content-length").map(str::to_string),
            Some(r.body.len().to_string())
        );
        serde_json::from_str::<Value>(&r.text()).unwrap()
    };
    let (from_legacy, from_new) = (answer("legacy"), answer("new"));
    assert_eq!(from_new, from_legacy, "the same document from either side");
    assert_eq!(
        from_new,
        serde_json::json!({"id": "42", "method": "GET", "currency": "EUR"})
    );
}

#[test]
fn answer_bodies_are_mapped_the_same_on_every_engine_and_framed_anew() {
    let legacy = Backend::start("legacy");
    let new = Backend::answering("new", |seen, _| {
        let booking = seen.target.trim_start_matches("/bookings/").to_string();
        if booking == "missing" {
            let problem = r#"{"type":"about:blank","title":"Not Found","status":404}"#;
            return (404, "application/problem+json", problem.to_string());
        }
        // Larger than one read, so the body comes in pieces.
        let pad = "x".repeat(100_000);
        let body = serde_json::json!({"served_by": "new", "booking": booking, "pad": pad});
        (200, "application/json", body.to_string())
    });
    let text = split(
        &legacy.addr(),
        &new.addr(),
        "/api/v1/bookings",
        "100%",
        MONOLITH_SHAPE,
    )
    .server("h2c = true")
    .build();
    for fast_path_off in [false, true] {
        let proxy = Proxy::start_with_env(&text, engine_env(fast_path_off));
        let mut c = proxy.client();
        // Twice on one connection: the framing of the first leaves the second intact.
        for _ in 0..2 {
            let r = c.get("/api/v1/bookings/7", &[]).unwrap();
            assert_eq!(r.status, 200);
            let doc: Value = serde_json::from_slice(&r.body).unwrap();
            assert_eq!(doc["id"], "7");
            assert_eq!(doc["currency"], "EUR");
            assert!(doc.get("served_by").is_none() && doc.get("booking").is_none());
            let r = c.get("/api/v1/bookings/missing", &[]).unwrap();
            assert_eq!(r.status, 404);
            assert_eq!(r.header("content-type"), Some("text/html"));
            assert_eq!(r.text(), "<h1>Not Found</h1>");
        }
        let (status, body) = crate::http2::h2c_get(proxy.port, "/api/v1/bookings/missing", &[]);
        assert_eq!(
            (status.as_str(), body.as_str()),
            ("404 2", "<h1>Not Found</h1>")
        );
        let (status, body) = crate::http2::h2c_get(proxy.port, "/api/v1/bookings/8", &[]);
        assert_eq!(status, "200 2");
        let doc: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(
            (doc["id"].as_str(), doc["currency"].as_str()),
            (Some("8"), Some("EUR"))
        );
        // HEAD: the head as for GET (no length: the body GET gets is another than the
        // side's), and nothing held back or sent.
        let out = std::process::Command::new("curl")
            .args(["-sS", "--max-time", "10", "-I"])
            .arg(format!(
                "http://127.0.0.1:{}/api/v1/bookings/missing",
                proxy.port
            ))
            .output()
            .unwrap();
        let head = String::from_utf8_lossy(&out.stdout).to_ascii_lowercase();
        assert!(head.starts_with("http/1.1 404"), "{head}");
        assert!(head.contains("content-type: text/html"), "{head}");
        assert!(!head.contains("content-length"), "{head}");
    }
}

#[test]
fn a_rewrite_never_reaches_a_route_guarded_by_other_auth() {
    let issuer = crate::auth::Issuer::start();
    let (legacy, new) = (Backend::start("legacy"), Backend::start("new"));
    // `/public` rewrites onto the same side's root; `/admin` needs a token.
    let text = crate::auth::config(&issuer, &legacy, &new, "").replacen(
        "[[routes]]",
        "[[routes]]\nid = \"public\"\npath = \"/public\"\nlegacy = \"legacy\"\n\
             plugins = [{ use = \"rewrite-path\", from = \"^/public/(.*)$\", to = \"/$1\" }]\n\
             [[routes]]\nid = \"admin\"\npath = \"/admin\"\nlegacy = \"legacy\"\nauth = \"users\"\n\
             [[routes]]",
        1,
    );
    let proxy = Proxy::start(&text);
    let r = get(proxy.port, "/public/admin/users", &[]);
    assert_eq!(r.status, 403, "{}", r.text());
    let r = get(proxy.port, "/public/ADMIN/../admin/users", &[]);
    assert_eq!(r.status, 403);
    // Spellings the monolith may take for the same resource.
    for spelling in ["/public/ADMIN/users", "/public/admin.", "/public/Admin/"] {
        assert_eq!(get(proxy.port, spelling, &[]).status, 403, "{spelling}");
    }
    assert!(legacy.seen().is_empty(), "nothing reached the monolith");
    // Without a token the client could not have reached it directly either.
    assert_eq!(get(proxy.port, "/admin/users", &[]).status, 401);
    // A rewrite onto an open path passes.
    let r = get(proxy.port, "/public/catalogue/1", &[]);
    assert_eq!(r.status, 200);
    assert_eq!(legacy.seen().pop().unwrap().target, "/catalogue/1");
}

/// The monolith's `/api/v1/bookings` on the new side as `/bookings`, the monolith's `id` in a
/// request's JSON as the new service's `booking` (bodies up to 1 KB).
const REQUEST_SHAPE: &str = r#"[
  { use = "rewrite-path", side = "new", from = "^/api/v1/(.*)$", to = "/$1" },
  { use = "json-map", side = "new", on = "request", rename = { "$.id" = "$.booking" },
    max-body = 1024 },
]"#;

/// curl with a JSON body: ("STATUS VERSION", body). `http2`: over h2c.
fn curl_send(port: u16, path: &str, body: &str, args: &[&str], http2: bool) -> (String, String) {
    let mut all = vec![
        "-H",
        "content-type: application/json",
        "--data-binary",
        body,
    ];
    all.extend_from_slice(args);
    if http2 {
        all.push("--http2-prior-knowledge");
    }
    crate::http2::curl(port, path, &all)
}

#[test]
fn request_bodies_are_mapped_for_the_new_side_on_every_engine() {
    let (legacy, new) = (Backend::start("legacy"), Backend::start("new"));
    let text = split(
        &legacy.addr(),
        &new.addr(),
        "/api/v1/bookings",
        "100%",
        REQUEST_SHAPE,
    )
    .server("h2c = true")
    .build();
    let sent = r#"{"id":"42","nights":3}"#;
    let wanted = serde_json::json!({"booking": "42", "nights": 3});
    for fast_path_off in [false, true] {
        let proxy = Proxy::start_with_env(&text, engine_env(fast_path_off));
        let json = [("content-type", "application/json")];
        // With a length, twice on one connection (the framing of the first leaves the
        // second intact), then chunked, then over HTTP/2.
        let mut c = proxy.client();
        for _ in 0..2 {
            let r = c
                .request("POST", "/api/v1/bookings", &json, sent.as_bytes())
                .unwrap();
            assert_eq!(r.status, 200, "fast path off: {fast_path_off}");
            let seen = new.seen().pop().unwrap();
            assert_eq!(seen.target, "/bookings");
            let body: Value = serde_json::from_slice(&seen.body).unwrap();
            assert_eq!(body, wanted, "fast path off: {fast_path_off}");
            // Sent with its new length (chunked: known only once it is whole).
            assert_eq!(seen.header("content-length"), None);
            assert_eq!(seen.header("transfer-encoding"), Some("chunked"));
        }
        let te = ["-H", "transfer-encoding: chunked"];
        for (args, http2) in [(&te[..], false), (&[][..], true)] {
            let (status, _) = curl_send(proxy.port, "/api/v1/bookings", sent, args, http2);
            assert!(status.starts_with("200"), "{status} http2: {http2}");
            let body: Value = serde_json::from_slice(&new.seen().pop().unwrap().body).unwrap();
            assert_eq!(body, wanted, "http2: {http2}");
        }
        // What the map does not take passes byte for byte: a body declared larger than
        // `max-body` and one that is not JSON by its type (never held: their length kept),
        // and one that says JSON but is not (held, then sent as it came).
        let big = format!(r#"{{"id":"1","pad":"{}"}}"#, "x".repeat(2000));
        let text_type = [("content-type", "text/plain")];
        for (headers, body, held) in [
            (&json[..], big.as_str(), false),
            (&text_type[..], sent, false),
            (&json[..], "{\"id\": not json", true),
        ] {
            let r = c
                .request("POST", "/api/v1/bookings", headers, body.as_bytes())
                .unwrap();
            assert_eq!(r.status, 200);
            let seen = new.seen().pop().unwrap();
            assert_eq!(seen.body, body.as_bytes());
            let length = (!held).then(|| body.len().to_string());
            assert_eq!(seen.header("content-length").map(str::to_string), length);
        }
        // A chunked body that turns out larger than `max-body` passes whole, untouched.
        let (status, _) = curl_send(proxy.port, "/api/v1/bookings", &big, &te, false);
        assert!(status.starts_with("200"), "{status}");
        assert_eq!(new.seen().pop().unwrap().body, big.as_bytes());
    }
    assert!(legacy.seen().is_empty());
}

#[test]
fn a_lambda_side_gets_the_mapped_body_and_legacy_after_a_fallback_the_clients() {
    let watch = crate::lambda::LambdaWatch::start();
    let legacy = Backend::start("legacy");
    let text = Config::new()
        .default("legacy")
        .upstream("legacy", &legacy.addr())
        .lambda("bookings-fn", watch.port)
        .upstream("gone", &format!("127.0.0.1:{}", free_port()))
        .route("bookings", "/api/v1/bookings", |r| {
            r.legacy("legacy")
                .new("bookings-fn")
                .shift("100%")
                .toml("plugins", REQUEST_SHAPE)
        })
        .route("orders", "/api/v1/orders", |r| {
            r.legacy("legacy")
                .new("gone")
                .shift("100%")
                .toml("fallback", "true")
                .toml("plugins", REQUEST_SHAPE)
        })
        .build();
    let proxy = Proxy::start_with_env(&text, &crate::invoke::lambda_env());
    let json = [("content-type", "application/json")];
    let sent = br#"{"id":"42","nights":3}"#;
    let r = proxy
        .client()
        .request("POST", "/api/v1/bookings/echo", &json, sent)
        .unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    let echo: Value = serde_json::from_str(&r.text()).unwrap();
    assert_eq!(echo["path"], "/bookings/echo", "{echo}");
    let body: Value = serde_json::from_str(echo["body"].as_str().unwrap()).unwrap();
    assert_eq!(body, serde_json::json!({"booking": "42", "nights": 3}));
    // The event says the length of the body it carries, not the client's.
    let length = echo["headers"]["content-length"].as_str().unwrap();
    assert_eq!(length, echo["body"].as_str().unwrap().len().to_string());
    // The new side cannot be reached: legacy gets the client's body as it was sent (its own
    // plugins, none, made it), whatever the new side's would have made of it.
    let r = proxy
        .client()
        .request("PUT", "/api/v1/orders/9", &json, sent)
        .unwrap();
    assert_eq!((r.status, r.text().as_str()), (200, "legacy"));
    let seen = legacy.seen().pop().unwrap();
    assert_eq!(seen.target, "/api/v1/orders/9");
    assert_eq!(seen.body, sent);
}

#[test]
fn a_preflight_on_a_route_with_auth_is_answered_by_cors_and_nothing_else_passes_unverified() {
    let issuer = crate::auth::Issuer::start();
    let (legacy, new) = (Backend::start("legacy"), Backend::start("new"));
    // `/bookings` has auth and `cors`; `/orders` has auth and a plugin that answers nothing.
    let text = crate::auth::config(&issuer, &legacy, &new, "")
        .replacen(
            "auth = \"users\"",
            "auth = \"users\"\nplugins = [{ use = \"cors\", origins = [\"https://app.example\"], methods = [\"GET\", \"PUT\"] }]",
            1,
        )
        .replacen(
            "[[routes]]",
            "[[routes]]\nid = \"orders\"\npath = \"/orders\"\nlegacy = \"legacy\"\nauth = \"users\"\n\
             plugins = [{ use = \"headers\", request-set = { \"x-a\" = \"1\" } }]\n[[routes]]",
            1,
        );
    let proxy = Proxy::start(&text);
    let preflight = |path: &str, origin: &str, extra: &[(&str, &str)]| {
        let mut headers = vec![("origin", origin), ("access-control-request-method", "PUT")];
        headers.extend_from_slice(extra);
        proxy
            .client()
            .request("OPTIONS", path, &headers, b"")
            .unwrap()
    };
    // A browser's preflight carries no token: `cors` answers it.
    let r = preflight("/bookings/1", "https://app.example", &[]);
    assert_eq!(r.status, 204, "{}", r.text());
    assert_eq!(
        r.header("access-control-allow-origin"),
        Some("https://app.example")
    );
    // A forged token on it changes nothing, and an origin `cors` refuses gets its 403.
    let r = preflight(
        "/bookings/1",
        "https://app.example",
        &[("authorization", "Bearer forged")],
    );
    assert_eq!(r.status, 204);
    assert_eq!(
        preflight("/bookings/1", "https://evil.example", &[]).status,
        403
    );
    // What no plugin answers is refused as any unverified request: a preflight to a route
    // without `cors`, an OPTIONS that is not a preflight, and the actual request.
    let r = preflight("/orders/1", "https://app.example", &[]);
    assert_eq!(r.status, 401);
    assert!(r.header("www-authenticate").is_some());
    let r = proxy
        .client()
        .request(
            "OPTIONS",
            "/bookings/1",
            &[("origin", "https://app.example")],
            b"",
        )
        .unwrap();
    assert_eq!(r.status, 401);
    let r = get(
        proxy.port,
        "/bookings/1",
        &[("origin", "https://app.example")],
    );
    assert_eq!(r.status, 401);
    assert!(legacy.seen().is_empty() && new.seen().is_empty());
    // With a token the actual request passes and carries the route's CORS headers.
    let token = issuer.mint(serde_json::json!({"claims": crate::auth::good("alice")}));
    let r = get(
        proxy.port,
        "/bookings/1",
        &[
            ("origin", "https://app.example"),
            ("authorization", &format!("Bearer {token}")),
        ],
    );
    assert_eq!(r.status, 200);
    assert_eq!(
        r.header("access-control-allow-origin"),
        Some("https://app.example")
    );
}

#[test]
fn a_status_mapped_to_one_without_a_body_is_framed_as_one_on_every_engine() {
    let legacy = Backend::start("legacy");
    let new = Backend::answering("new", |_, _| (200, "application/json", r#"{"a":1}"#.into()));
    let to_204 = r#"[{ use = "status-map", side = "new", status = 200, to = 204 }]"#;
    let text = split(&legacy.addr(), &new.addr(), "/bookings", "100%", to_204)
        .server("h2c = true")
        .build();
    for fast_path_off in [false, true] {
        let proxy = Proxy::start_with_env(&text, engine_env(fast_path_off));
        let mut c = proxy.client();
        for _ in 0..2 {
            let r = c.get("/bookings/1", &[]).unwrap();
            assert_eq!(r.status, 204);
            assert_eq!(r.header("content-length"), None);
            assert_eq!(r.header("transfer-encoding"), None);
            assert!(r.body.is_empty());
        }
        let (status, body) = crate::http2::h2c_get(proxy.port, "/bookings/1", &[]);
        assert_eq!((status.as_str(), body.as_str()), ("204 2", ""));
    }
}
