//! JWT authorization against a real issuer: tests/fixtures/jwks_issuer.py makes RSA and EC keys,
//! serves them as a JWKS and mints tokens with PyJWT (`make test` installs PyJWT and
//! cryptography from PyPI).

use std::process::Child;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::{json, Value};

use crate::support::*;

pub struct Issuer {
    child: Child,
    pub port: u16,
}

impl Issuer {
    pub fn start() -> Issuer {
        let port = free_port();
        let missing = "is PyJWT installed? run `make test`";
        let child = start_fixture("jwks_issuer.py", &[port.to_string()], missing);
        Issuer { child, port }
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}/.well-known/jwks.json", self.port)
    }

    fn post(&self, path: &str, body: &Value) -> String {
        let r = Client::connect(self.port)
            .request(
                "POST",
                path,
                &[("content-type", "application/json")],
                body.to_string().as_bytes(),
            )
            .unwrap();
        assert_eq!(r.status, 200);
        r.text()
    }

    pub fn mint(&self, req: Value) -> String {
        self.post("/mint", &req)
    }

    pub fn rotate(&self) {
        self.post("/rotate", &json!({}));
    }

    pub fn set_down(&self, down: bool) {
        self.post(if down { "/down" } else { "/up" }, &json!({}));
    }

    pub fn fetches(&self) -> u64 {
        get(self.port, "/fetches", &[]).text().parse().unwrap()
    }
}

impl Drop for Issuer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// Claims that pass: right issuer and audience, valid for an hour.
pub fn good(sub: &str) -> Value {
    json!({"iss": "https://issuer.test/", "aud": "bookings", "sub": sub, "exp": now() + 3600, "iat": now(), "scope": "bookings:read bookings:write"})
}

pub fn config(issuer: &Issuer, legacy: &Backend, new: &Backend, extra: &str) -> String {
    Config::new()
        .default("legacy")
        .section(
            "[auth.users]",
            &format!(
                "jwks-url = \"{}\"\nissuer = \"https://issuer.test/\"\naudiences = [\"bookings\"]\nalgorithms = [\"RS256\", \"ES256\"]\nleeway = \"5s\"\nforward-claims = {{ sub = \"x-user-id\" }}\n{extra}",
                issuer.url()
            ),
        )
        .upstream("legacy", &legacy.addr())
        .upstream("new", &new.addr())
        .route("bookings", "/bookings", |r| {
            r.legacy("legacy")
                .new("new")
                .shift("50%")
                .sticky("jwt:sub")
                .auth("users")
        })
        .build()
}

fn call(proxy: &Proxy, token: Option<&str>) -> Resp {
    let auth = token.map(|t| format!("Bearer {t}"));
    let mut headers = vec![("x-user-id", "forged-by-client")];
    if let Some(a) = &auth {
        headers.push(("Authorization", a.as_str()));
    }
    get(proxy.port, "/bookings/1", &headers)
}

fn assert_refused(r: &Resp, status: u16, error: &str, what: &str) {
    assert_eq!(r.status, status, "{what}");
    let challenge = r.header("www-authenticate").unwrap_or("");
    assert!(
        challenge.starts_with("Bearer realm=\"strangle\""),
        "{what}: {challenge}"
    );
    assert!(challenge.contains(error), "{what}: {challenge}");
}

#[test]
fn valid_tokens_pass_and_every_bad_one_is_refused() {
    let issuer = Issuer::start();
    let (legacy, new) = (Backend::start("legacy"), Backend::start("new"));
    let proxy = Proxy::start(&config(&issuer, &legacy, &new, ""));

    for kid in ["rsa-1", "ec-1"] {
        let token = issuer.mint(json!({"claims": good("alice"), "kid": kid}));
        let r = call(&proxy, Some(&token));
        assert_eq!(r.status, 200, "{kid}: {}", proxy.stderr());
    }
    // The identity the backend sees is the verified one, never the client's.
    let seen: Vec<Seen> = legacy.seen().into_iter().chain(new.seen()).collect();
    assert_eq!(seen.len(), 2);
    for s in &seen {
        assert_eq!(s.header("x-user-id"), Some("alice"));
        assert!(s
            .headers
            .iter()
            .all(|(k, v)| k != "x-user-id" || v != "forged-by-client"));
    }

    let mut claims = good("a");
    claims["exp"] = json!(now() - 60);
    let cases: Vec<(&str, Value, &str)> = vec![
        ("expired", json!({"claims": claims}), "expired"),
        (
            "not yet valid",
            json!({"claims": {"iss": "https://issuer.test/", "aud": "bookings", "exp": now() + 3600, "nbf": now() + 600}}),
            "not valid yet",
        ),
        (
            "wrong issuer",
            json!({"claims": {"iss": "https://evil.test/", "aud": "bookings", "exp": now() + 3600}}),
            "wrong issuer",
        ),
        (
            "wrong audience",
            json!({"claims": {"iss": "https://issuer.test/", "aud": "flights", "exp": now() + 3600}}),
            "wrong audience",
        ),
        (
            "no exp",
            json!({"claims": {"iss": "https://issuer.test/", "aud": "bookings"}}),
            "`exp`",
        ),
        (
            "alg none",
            json!({"claims": good("a"), "attack": "none"}),
            "invalid_token",
        ),
        (
            "HS256 keyed with the RSA public key",
            json!({"claims": good("a"), "attack": "hs256-with-public-key"}),
            "not allowed",
        ),
        (
            "an algorithm not on the list",
            json!({"claims": good("a"), "alg": "PS256"}),
            "not allowed",
        ),
        (
            "tampered claims",
            json!({"claims": good("a"), "attack": "tamper"}),
            "bad signature",
        ),
        (
            "a key the issuer never published",
            json!({"claims": good("a"), "attack": "foreign-key"}),
            "bad signature",
        ),
        (
            "unknown kid",
            json!({"claims": good("a"), "kid": "nobody"}),
            "unknown signing key",
        ),
        (
            "embedded jwk header",
            json!({"claims": good("a"), "attack": "foreign-key", "headers": {"jku": "http://127.0.0.1:1/evil.json"}}),
            "bad signature",
        ),
    ];
    for (what, req, message) in cases {
        let token = issuer.mint(req);
        assert_refused(&call(&proxy, Some(&token)), 401, message, what);
    }
    // No token: 401 with a bare challenge.
    let r = call(&proxy, None);
    assert_eq!(r.status, 401);
    assert_eq!(
        r.header("www-authenticate"),
        Some("Bearer realm=\"strangle\"")
    );
    // Two tokens, a malformed header, an over-long token.
    let token = issuer.mint(json!({"claims": good("a")}));
    let two = get(
        proxy.port,
        "/bookings/1",
        &[
            ("Authorization", &format!("Bearer {token}")),
            ("Authorization", &format!("Bearer {token}")),
        ],
    );
    assert_refused(&two, 401, "invalid_request", "two tokens");
    let basic = get(
        proxy.port,
        "/bookings/1",
        &[("Authorization", "Basic YWxpY2U6cGFzcw==")],
    );
    assert_refused(&basic, 401, "invalid_request", "not a bearer token");
    let long = "a".repeat(9000);
    assert_refused(
        &call(&proxy, Some(&long)),
        401,
        "over 8192 bytes",
        "over-long token",
    );
    // Nothing refused reached a backend.
    assert_eq!(legacy.count() + new.count(), 2);
}

#[test]
fn required_claims_give_403_and_match_inside_space_separated_scopes() {
    let issuer = Issuer::start();
    let (legacy, new) = (Backend::start("legacy"), Backend::start("new"));
    let proxy = Proxy::start(&config(
        &issuer,
        &legacy,
        &new,
        "require = { scope = \"bookings:write\" }",
    ));
    let ok = issuer.mint(json!({"claims": good("alice")}));
    assert_eq!(call(&proxy, Some(&ok)).status, 200);
    let mut reader = good("bob");
    reader["scope"] = json!("bookings:read");
    let token = issuer.mint(json!({"claims": reader}));
    assert_refused(
        &call(&proxy, Some(&token)),
        403,
        "insufficient_scope",
        "missing scope",
    );
    let mut array = good("carol");
    array["scope"] = json!(["bookings:write"]);
    assert_eq!(
        call(&proxy, Some(&issuer.mint(json!({"claims": array})))).status,
        200
    );
}

#[test]
fn keys_rotate_without_a_restart() {
    let issuer = Issuer::start();
    let (legacy, new) = (Backend::start("legacy"), Backend::start("new"));
    let proxy = Proxy::start(&config(
        &issuer,
        &legacy,
        &new,
        "jwks-refresh = \"1s\"\nunknown-kid-cooldown = \"1s\"",
    ));
    let old = issuer.mint(json!({"claims": good("alice"), "kid": "rsa-1"}));
    assert_eq!(call(&proxy, Some(&old)).status, 200);
    issuer.rotate();
    // A token from the new key: its unknown kid triggers a refresh.
    let fresh = issuer.mint(json!({"claims": good("alice"), "kid": "rsa-2"}));
    assert_eq!(call(&proxy, Some(&fresh)).status, 200, "{}", proxy.stderr());
    // The removed key stops verifying once the keys are refreshed (every second).
    let refused = wait_for(
        Duration::from_millis(2500),
        "a refresh without rsa-1",
        || Some(call(&proxy, Some(&old))).filter(|r| r.status != 200),
    );
    assert_refused(&refused, 401, "unknown signing key", "a removed key");
}

#[test]
fn jwks_down_serves_on_cached_keys_then_fails_closed() {
    let issuer = Issuer::start();
    let (legacy, new) = (Backend::start("legacy"), Backend::start("new"));
    let proxy = Proxy::start(&config(
        &issuer,
        &legacy,
        &new,
        "jwks-refresh = \"1s\"\njwks-max-stale = \"4s\"",
    ));
    let token = issuer.mint(json!({"claims": good("alice")}));
    assert_eq!(call(&proxy, Some(&token)).status, 200);
    issuer.set_down(true);
    // Past a failed refresh (every 1 s) on purpose, well inside jwks-max-stale (4 s).
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(
        call(&proxy, Some(&token)).status,
        200,
        "cached keys should still verify"
    );
    // Then no later than the 5.5 s after the outage that a fixed wait used to allow.
    let r = wait_for(Duration::from_secs(4), "the stale keys to fail", || {
        Some(call(&proxy, Some(&token))).filter(|r| r.status != 200)
    });
    assert_eq!(r.status, 503, "stale keys must fail closed");
    assert!(proxy.stderr().contains("JWKS fetch failed"));
    issuer.set_down(false);
    eventually(Duration::from_secs(8), "the keys to come back", || {
        call(&proxy, Some(&token)).status == 200
    });
}

#[test]
fn a_flood_of_unknown_kids_fetches_at_most_once_per_cooldown() {
    let issuer = Issuer::start();
    let (legacy, new) = (Backend::start("legacy"), Backend::start("new"));
    let proxy = Proxy::start(&config(
        &issuer,
        &legacy,
        &new,
        "jwks-refresh = \"1h\"\nunknown-kid-cooldown = \"30s\"",
    ));
    let token = issuer.mint(json!({"claims": good("alice")}));
    assert_eq!(call(&proxy, Some(&token)).status, 200);
    let before = issuer.fetches();
    let bogus: Vec<String> = (0..40)
        .map(|i| issuer.mint(json!({"claims": good("x"), "kid": format!("bogus-{i}")})))
        .collect();
    let handles: Vec<_> = bogus
        .chunks(10)
        .map(|chunk| {
            let (chunk, port) = (chunk.to_vec(), proxy.port);
            std::thread::spawn(move || {
                for t in chunk {
                    let r = get(
                        port,
                        "/bookings/1",
                        &[("Authorization", &format!("Bearer {t}"))],
                    );
                    assert_eq!(r.status, 401);
                }
            })
        })
        .collect();
    for h in handles {
        h.join().unwrap();
    }
    let fetched = issuer.fetches() - before;
    assert!(
        fetched <= 1,
        "{fetched} JWKS fetches for 40 unknown kids in one cooldown"
    );
}

#[test]
fn sticky_by_jwt_subject_keeps_each_user_on_one_side() {
    let issuer = Issuer::start();
    let (legacy, new) = (Backend::start("legacy"), Backend::start("new"));
    let proxy = Proxy::start(&config(&issuer, &legacy, &new, ""));
    let mut sides = std::collections::HashMap::new();
    for u in 0..40 {
        let token = issuer.mint(json!({"claims": good(&format!("user-{u}"))}));
        let first = call(&proxy, Some(&token))
            .header("x-backend")
            .unwrap()
            .to_string();
        for _ in 0..3 {
            assert_eq!(
                call(&proxy, Some(&token)).header("x-backend").unwrap(),
                first
            );
        }
        sides.insert(u, first);
    }
    let on_new = sides.values().filter(|s| *s == "new").count();
    assert!(
        (8..=32).contains(&on_new),
        "{on_new} of 40 users on the new side at 50%"
    );
}

#[test]
fn beta_users_go_new_and_only_testers_may_force_a_side() {
    let issuer = Issuer::start();
    let (legacy, new) = (Backend::start("legacy"), Backend::start("new"));
    let text = config(&issuer, &legacy, &new, "")
        .replace("shift = \"50%\"", "shift = \"0%\"\noverride = true\nnew-when = { claim = \"beta\", equals = true }\noverride-when = { claim = \"roles\", equals = \"tester\" }");
    let proxy = Proxy::start(&text);
    let side = |claims: Value, force: Option<&str>| {
        let token = issuer.mint(json!({ "claims": claims }));
        let auth = format!("Bearer {token}");
        let mut headers = vec![("Authorization", auth.as_str())];
        if let Some(f) = force {
            headers.push(("x-strangle-side", f));
        }
        let r = get(proxy.port, "/bookings/1", &headers);
        assert_eq!(r.status, 200);
        r.header("x-backend").unwrap().to_string()
    };
    let mut beta = good("b1");
    beta["beta"] = json!(true);
    assert_eq!(side(beta, None), "new");
    assert_eq!(side(good("plain"), None), "legacy");
    // The tester header from a non-tester is ignored; from a tester it is honoured.
    assert_eq!(side(good("plain"), Some("new")), "legacy");
    let mut tester = good("t1");
    tester["roles"] = json!(["tester", "staff"]);
    assert_eq!(side(tester, Some("new")), "new");
}

#[test]
fn static_pem_keys_and_a_token_cookie_work_and_tokens_stay_out_of_the_access_log() {
    let issuer = Issuer::start();
    let (legacy, new) = (Backend::start("legacy"), Backend::start("new"));
    let keys = tempfile::tempdir().unwrap();
    for kid in ["rsa-1", "ec-1"] {
        std::fs::write(
            keys.path().join(format!("{kid}.pem")),
            get(issuer.port, &format!("/public/{kid}.pem"), &[]).body,
        )
        .unwrap();
    }
    let text = config(&issuer, &legacy, &new, "cookie = \"id_token\"").replace(
        &format!("jwks-url = \"{}\"", issuer.url()),
        &format!(
            "keys = [\"{}\", \"{}\"]",
            keys.path().join("rsa-1.pem").display(),
            keys.path().join("ec-1.pem").display()
        ),
    );
    let proxy = Proxy::start(&text);
    let before = issuer.fetches();
    for kid in ["rsa-1", "ec-1"] {
        let token = issuer.mint(json!({"claims": good("alice"), "kid": kid}));
        assert_eq!(
            call(&proxy, Some(&token)).status,
            200,
            "{kid} in the header"
        );
        let cookie = format!("theme=dark; id_token={token}");
        assert_eq!(
            get(proxy.port, "/bookings/1", &[("Cookie", &cookie)]).status,
            200,
            "{kid} in the cookie"
        );
        // Header and cookie at once is ambiguous.
        let both = get(
            proxy.port,
            "/bookings/1",
            &[
                ("Cookie", &cookie),
                ("Authorization", &format!("Bearer {token}")),
            ],
        );
        assert_refused(&both, 401, "invalid_request", "token twice");
        // A second copy of the cookie (tossed in from a sibling domain, say), or a name the
        // upstream's framework reads as it, would reach the upstream beside the verified one.
        let seen = legacy.seen.lock().unwrap().len() + new.seen.lock().unwrap().len();
        for spoof in [
            format!("{cookie}; id_token=forged"),
            format!("id_token=; {cookie}"),
            format!("{cookie}; id%5Ftoken=forged"),
            format!("{cookie}; ID_TOKEN=forged"),
            format!("{cookie}; id_token =forged"),
            format!("id.token=forged; {cookie}"),
            format!("{cookie}; x=1 id_token=forged"),
            format!("{cookie}, id_token=forged"),
            format!("{cookie}; \u{a0}id_token=forged"),
        ] {
            assert_refused(
                &get(proxy.port, "/bookings/1", &[("Cookie", &spoof)]),
                401,
                "more than once",
                &spoof,
            );
        }
        let twice = get(
            proxy.port,
            "/bookings/1",
            &[("Cookie", &cookie), ("Cookie", "id_token=forged")],
        );
        assert_refused(&twice, 401, "more than once", "two Cookie fields");
        let total = legacy.seen.lock().unwrap().len() + new.seen.lock().unwrap().len();
        assert_eq!(total, seen, "a refused request reached an upstream");
        // Counted on the route, by status, though no side saw them (just after each answer).
        eventually(Duration::from_secs(5), "11 refusals counted", || {
            proxy.status()["routes"][0]["refused"]["401"].as_u64() >= Some(11)
        });
        let log = proxy.log_when(1);
        let text = std::fs::read_to_string(proxy.dir.path().join("access.log")).unwrap();
        assert!(
            !log.is_empty() && !text.contains(&token[..40]),
            "a token reached the access log"
        );
    }
    let wrong = issuer.mint(json!({"claims": good("x"), "attack": "foreign-key"}));
    assert_refused(
        &call(&proxy, Some(&wrong)),
        401,
        "bad signature",
        "a key not in the files",
    );
    assert_eq!(
        issuer.fetches(),
        before,
        "static keys must not fetch a JWKS"
    );
}
