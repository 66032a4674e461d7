//! Token extraction and JWT verification against a static RS256 key: any `Authorization`
//! value or cookie gets a verdict, never a panic, and nothing unsigned passes.
#![no_main]

use std::sync::OnceLock;
use std::time::Duration;

use http::{HeaderMap, HeaderValue};
use libfuzzer_sys::fuzz_target;
use strangle::auth::Verifier;
use strangle::config::{AuthConfig, KeyFile};

fn verifier() -> &'static (Verifier, tokio::runtime::Runtime) {
    static V: OnceLock<(Verifier, tokio::runtime::Runtime)> = OnceLock::new();
    V.get_or_init(|| {
        let config = AuthConfig {
            name: "fuzz".into(),
            jwks_url: None,
            key_files: vec![KeyFile {
                path: "rs256.pub.pem".into(),
                text: include_str!("../rs256.pub.pem").into(),
            }],
            issuer: "https://issuer.test/".into(),
            audiences: vec!["fuzz".into()],
            algorithms: vec![
                jsonwebtoken::Algorithm::RS256,
                jsonwebtoken::Algorithm::ES256,
            ],
            leeway: Duration::from_secs(5),
            cookie: Some("id_token".into()),
            forward_claims: Vec::new(),
            require: Vec::new(),
            jwks_refresh: Duration::from_secs(300),
            jwks_max_stale: Duration::from_secs(3600),
            unknown_kid_cooldown: Duration::from_secs(30),
            token_cache: 0,
        };
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        (Verifier::new(config).expect("the fuzz key loads"), rt)
    })
}

fuzz_target!(|data: &[u8]| {
    let (verifier, rt) = verifier();
    let _ = jsonwebtoken::decode_header(data);
    let mut headers = HeaderMap::new();
    let (first, rest) = data.split_at(data.len() / 2);
    if let Ok(v) = HeaderValue::from_bytes(first) {
        headers.append(http::header::AUTHORIZATION, v);
    }
    if let Ok(v) = HeaderValue::from_bytes(rest) {
        headers.append(http::header::COOKIE, v);
    }
    // Nobody holds the private key of the fuzz key: no input can verify.
    assert!(rt.block_on(verifier.verify(&headers)).is_err());
});
