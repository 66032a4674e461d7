//! A real `lambda_http` function (examples/airline/bookings-fn) running under `cargo lambda
//! watch`, which serves the real Lambda Invoke API on loopback. `make test` installs
//! cargo-lambda (PyPI) and builds the function first.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::support::*;

/// `cargo lambda watch` on a free port, stopped on drop.
pub struct LambdaWatch {
    child: Child,
    pub port: u16,
}

impl LambdaWatch {
    pub fn start() -> LambdaWatch {
        let found = Command::new("cargo")
            .args(["lambda", "--version"])
            .output()
            .is_ok_and(|o| o.status.success());
        assert!(found, "cargo-lambda is not installed: run `make test`, which installs it (pip install cargo-lambda)");
        let port = free_port();
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/airline/bookings-fn");
        let child = Command::new("cargo")
            .args([
                "lambda",
                "watch",
                "--invoke-address",
                "127.0.0.1",
                "--invoke-port",
                &port.to_string(),
            ])
            .current_dir(dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let watch = LambdaWatch { child, port };
        // The first invocation starts (and if needed builds) the function.
        let probe = br#"{"version":"2.0","routeKey":"$default","rawPath":"/bookings/0","rawQueryString":"","headers":{},"requestContext":{"accountId":"a","apiId":"b","domainName":"x","domainPrefix":"x","http":{"method":"GET","path":"/bookings/0","protocol":"HTTP/1.1","sourceIp":"127.0.0.1","userAgent":"t"},"requestId":"r","routeKey":"$default","stage":"$default","time":"t","timeEpoch":0},"isBase64Encoded":false}"#;
        let served = poll(Duration::from_secs(600), Duration::from_millis(500), || {
            Client::try_connect(port)
                .and_then(|mut c| {
                    c.request(
                        "POST",
                        "/2015-03-31/functions/bookings/invocations",
                        &[],
                        probe,
                    )
                })
                .is_ok_and(|r| r.status == 200)
        });
        assert!(served, "cargo lambda watch never served the function");
        watch
    }
}

impl Drop for LambdaWatch {
    fn drop(&mut self) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.child.id() as i32),
            nix::sys::signal::Signal::SIGINT,
        );
        // A moment to stop its function too; then it is killed.
        wait_until(Duration::from_millis(500), || {
            self.child.try_wait().is_ok_and(|s| s.is_some())
        });
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn config(watch: &LambdaWatch, legacy: &Backend, shift: &str) -> String {
    Config::new()
        .default("monolith")
        .upstream("monolith", &legacy.addr())
        .lambda("bookings-fn", watch.port)
        .with("timeout = \"2s\"")
        .route("bookings", "/bookings", |r| {
            r.legacy("monolith")
                .new("bookings-fn")
                .shift(shift)
                .sticky("header:x-user")
        })
        .build()
}

#[test]
fn a_real_lambda_http_function_serves_requests_faithfully() {
    let watch = LambdaWatch::start();
    let legacy = Backend::start("monolith");
    let proxy = Proxy::start_with_env(
        &config(&watch, &legacy, "100%"),
        &crate::invoke::lambda_env(),
    );
    let mut c = proxy.client();

    // GET with a query string (a repeated parameter) and repeated headers.
    let r = c
        .get(
            "/bookings/echo?seat=1A&seat=2B&q=a%20b",
            &[
                ("X-Tag", "one"),
                ("X-Tag", "two"),
                ("Cookie", "sid=abc; theme=light"),
            ],
        )
        .unwrap();
    assert_eq!(r.status, 200, "{}", proxy.stderr());
    let echo: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
    assert_eq!(echo["method"], "GET");
    assert_eq!(echo["path"], "/bookings/echo");
    assert_eq!(echo["query"]["seat"], serde_json::json!(["1A", "2B"]));
    assert_eq!(echo["query"]["q"], serde_json::json!(["a b"]));
    assert_eq!(echo["headers"]["x-tag"], "one,two");
    assert_eq!(echo["headers"]["cookie"], "sid=abc; theme=light");
    // Cookies back: each its own Set-Cookie.
    assert_eq!(
        r.all("set-cookie"),
        ["session=fn-123; Path=/; HttpOnly", "theme=dark; Path=/"]
    );

    // POST with a JSON body; the function's 201 comes through.
    let r = c
        .request(
            "POST",
            "/bookings/echo",
            &[("content-type", "application/json")],
            br#"{"seat":"3C"}"#,
        )
        .unwrap();
    let echo: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
    assert_eq!(echo["method"], "POST");
    assert_eq!(echo["body"], r#"{"seat":"3C"}"#);
    let r = c
        .request(
            "POST",
            "/bookings/new",
            &[("content-type", "application/json")],
            b"{}",
        )
        .unwrap();
    assert_eq!(r.status, 201);

    // A binary body round-trips byte for byte.
    let body: Vec<u8> = (0..=255u8).cycle().take(70_000).collect();
    let r = c
        .request(
            "POST",
            "/bookings/binary",
            &[("content-type", "application/octet-stream")],
            &body,
        )
        .unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-type"), Some("application/octet-stream"));
    assert!(r.body == body, "binary body changed on the way");

    // A function error is a 502 that does not show the error.
    let r = c.get("/bookings/fail", &[]).unwrap();
    assert_eq!(r.status, 502);
    assert!(!r.text().contains("database"));

    // Over 6 MB: 413, never invoked.
    let mut big = format!(
        "POST /bookings/echo HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\r\n",
        7 * 1024 * 1024
    )
    .into_bytes();
    big.resize(big.len() + 7 * 1024 * 1024, b'z');
    assert_eq!(
        Client::connect(proxy.port)
            .send_early_answered(&big)
            .unwrap()
            .status,
        413
    );

    // A function slower than the upstream timeout: 504 (last: the emulator runs one at a time).
    let r = Client::connect(proxy.port)
        .get("/bookings/sleep?ms=4000", &[])
        .unwrap();
    assert_eq!(r.status, 504);
    assert_eq!(legacy.count(), 0);
}

#[test]
fn a_route_split_25_percent_between_the_monolith_and_a_function_is_sticky() {
    let watch = LambdaWatch::start();
    let legacy = Backend::start("monolith");
    let proxy = Proxy::start_with_env(
        &config(&watch, &legacy, "25%"),
        &crate::invoke::lambda_env(),
    );
    let mut c = proxy.client();
    let mut sides = std::collections::HashMap::new();
    for u in 0..400 {
        let user = format!("traveller-{u}");
        let r = c.get("/bookings/42", &[("x-user", &user)]).unwrap();
        assert_eq!(r.status, 200);
        let side = if r.header("x-served-by") == Some("bookings-fn") {
            "new"
        } else {
            "legacy"
        };
        sides.insert(user, side);
    }
    let on_new = sides.values().filter(|s| **s == "new").count();
    assert!(
        (70..=130).contains(&on_new),
        "{on_new} of 400 users on the function at 25%"
    );
    // The same users again land where they landed.
    for (user, side) in sides.iter().take(60) {
        let r = c.get("/bookings/42", &[("x-user", user)]).unwrap();
        let again = if r.header("x-served-by") == Some("bookings-fn") {
            "new"
        } else {
            "legacy"
        };
        assert_eq!(again, *side, "{user} switched sides");
    }
    // A request is counted in its account step, just after its response is written: the
    // last one may be counted a moment after the client has read it.
    let expected = on_new + sides.values().take(60).filter(|s| **s == "new").count();
    let counted = || {
        let s = proxy.status();
        s["routes"][0]["sides"]["new"]["requests"].as_u64().unwrap() as usize
    };
    eventually(Duration::from_secs(5), "every request counted", || {
        counted() >= expected
    });
    assert_eq!(counted(), expected);
}
