//! JWT authorization per route. Keys come from a JWKS URL (fetched in the background, refreshed
//! on their lifetime and, with a cooldown, on an unknown `kid`) or from static PEM/JWK files.
//! Tokens are checked against an explicit algorithm allow-list, the issuer and the audiences;
//! `exp` is required and `nbf` checked, with a small leeway. `jku`, `x5u` and embedded `jwk`
//! headers are never followed: only configured keys verify. When the JWKS cannot be fetched,
//! the last good keys serve for `jwks-max-stale`, then requests fail closed with 503.

pub mod cookie;
pub mod crypto;

use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwapOption;
use http::header::{HeaderMap, AUTHORIZATION};
use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{DecodingKey, Validation};
use serde_json::{Map, Value};

use crate::config::AuthConfig;

const CACHE_SHARDS: usize = 16;
/// A cached verification is trusted at most this long (and never past the token's `exp`), so a
/// key withdrawn from the JWKS stops verifying soon even for tokens seen before.
const CACHE_MAX_AGE: Duration = Duration::from_secs(60);

struct Cached {
    token: Box<str>,
    /// Shared with every request the token comes with: a hit costs no copy of the claims.
    claims: Arc<Claims>,
    exp: u64,
    at: Instant,
}

pub const MAX_TOKEN_BYTES: usize = 8 * 1024;

/// Why a request was not let through. The message is safe to show: it never echoes the token.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum AuthError {
    #[error("no bearer token")]
    Missing,
    #[error("{0}")]
    InvalidRequest(&'static str),
    #[error("{0}")]
    InvalidToken(String),
    #[error("the token lacks `{0}`")]
    Forbidden(String),
    #[error("the signing keys are unavailable")]
    KeysUnavailable,
}

impl AuthError {
    pub fn status(&self) -> u16 {
        match self {
            AuthError::Forbidden(_) => 403,
            AuthError::KeysUnavailable => 503,
            _ => 401,
        }
    }

    /// The `WWW-Authenticate` value (RFC 6750 §3).
    pub fn challenge(&self) -> String {
        let escape = |s: &str| s.replace(['"', '\\'], "'");
        match self {
            AuthError::Missing => "Bearer realm=\"strangle\"".to_string(),
            AuthError::InvalidRequest(m) => format!("Bearer realm=\"strangle\", error=\"invalid_request\", error_description=\"{}\"", escape(m)),
            AuthError::InvalidToken(m) => format!("Bearer realm=\"strangle\", error=\"invalid_token\", error_description=\"{}\"", escape(m)),
            AuthError::Forbidden(m) => format!("Bearer realm=\"strangle\", error=\"insufficient_scope\", error_description=\"the token lacks {}\"", escape(m)),
            AuthError::KeysUnavailable => "Bearer realm=\"strangle\", error=\"temporarily_unavailable\"".to_string(),
        }
    }
}

/// The verified claims of a request.
pub type Claims = Map<String, Value>;

/// A claim's value as text, for sticky keys and forwarded headers (a string claim borrowed).
pub fn claim_text<'a>(claims: &'a Claims, name: &str) -> Option<Cow<'a, str>> {
    match claims.get(name)? {
        Value::String(s) => Some(Cow::Borrowed(s)),
        Value::Number(n) => Some(Cow::Owned(n.to_string())),
        Value::Bool(b) => Some(Cow::Borrowed(if *b { "true" } else { "false" })),
        Value::Array(a) => Some(Cow::Owned(
            a.iter()
                .filter_map(|v| v.as_str())
                .collect::<Vec<_>>()
                .join(" "),
        )),
        _ => None,
    }
}

/// Whether a claim satisfies a required value: equal, or for a string, one of the words of a
/// space-separated claim (`scope`) or one of the items of an array claim.
pub fn claim_matches(claims: &Claims, name: &str, want: &Value) -> bool {
    match (claims.get(name), want) {
        (Some(Value::String(have)), Value::String(w)) => {
            have == w || have.split(' ').any(|p| p == w)
        }
        (Some(Value::Array(items)), Value::String(_)) => items.contains(want),
        (Some(have), want) => have == want,
        (None, _) => false,
    }
}

#[derive(Default)]
struct FetchState {
    last: Option<Result<(), String>>,
    failures: u32,
    /// After a failure, no fetch before this.
    retry_at: Option<Instant>,
}

/// The longest wait between JWKS fetch attempts while the issuer keeps failing.
const MAX_FETCH_BACKOFF: Duration = Duration::from_secs(10);

struct KeySet {
    by_kid: HashMap<String, DecodingKey>,
    unnamed: Vec<DecodingKey>,
    fetched_at: Instant,
}

/// Verifies tokens for one `[auth.NAME]`.
pub struct Verifier {
    pub config: AuthConfig,
    keys: ArcSwapOption<KeySet>,
    static_keys: bool,
    /// Serialises JWKS fetches and remembers the last outcome, for single flight and backoff.
    refresh: tokio::sync::Mutex<FetchState>,
    /// Completed fetch attempts: a caller that waited while another fetch ran takes its result.
    fetch_generation: AtomicU64,
    /// When the last unknown-kid refresh ran, in ms since `epoch`.
    last_kid_refresh_ms: AtomicU64,
    epoch: Instant,
    pub fetches: AtomicU64,
    cache: Vec<std::sync::Mutex<HashMap<u64, Cached>>>,
}

impl std::fmt::Debug for Verifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Verifier")
            .field("name", &self.config.name)
            .finish()
    }
}

fn parse_keys(text: &str) -> Result<Vec<(Option<String>, DecodingKey)>, String> {
    let trimmed = text.trim_start();
    if trimmed.starts_with('{') {
        let set: JwkSet = match serde_json::from_str::<JwkSet>(text) {
            Ok(s) => s,
            Err(_) => JwkSet {
                keys: vec![
                    serde_json::from_str(text).map_err(|e| format!("not a JWK or JWK set: {e}"))?
                ],
            },
        };
        return Ok(set
            .keys
            .iter()
            .filter_map(|jwk| {
                DecodingKey::from_jwk(jwk)
                    .ok()
                    .map(|k| (jwk.common.key_id.clone(), k))
            })
            .collect());
    }
    let key = DecodingKey::from_rsa_pem(text.as_bytes())
        .or_else(|_| DecodingKey::from_ec_pem(text.as_bytes()))
        .or_else(|_| DecodingKey::from_ed_pem(text.as_bytes()))
        .map_err(|e| format!("not a PEM public key: {e}"))?;
    Ok(vec![(None, key)])
}

impl Verifier {
    /// Builds a verifier; static keys are parsed now, from the texts the config read (a bad
    /// one fails the config).
    pub fn new(config: AuthConfig) -> Result<Verifier, String> {
        crypto::install();
        let static_keys = config.jwks_url.is_none();
        let verifier = Verifier {
            config,
            keys: ArcSwapOption::empty(),
            static_keys,
            refresh: tokio::sync::Mutex::new(FetchState::default()),
            fetch_generation: AtomicU64::new(0),
            last_kid_refresh_ms: AtomicU64::new(0),
            epoch: Instant::now(),
            fetches: AtomicU64::new(0),
            cache: (0..CACHE_SHARDS)
                .map(|_| std::sync::Mutex::new(HashMap::new()))
                .collect(),
        };
        if static_keys {
            let mut all = Vec::new();
            for key in &verifier.config.key_files {
                let keys =
                    parse_keys(&key.text).map_err(|e| format!("`{}`: {e}", key.path.display()))?;
                all.extend(keys);
            }
            verifier.install(all);
        }
        Ok(verifier)
    }

    /// Whether this verifier still holds what `config` would load. The config carries the key
    /// files' contents, so a replaced key file (a revoked key) is a different config and never
    /// served by the old verifier.
    pub fn serves(&self, config: &AuthConfig) -> bool {
        self.config == *config
    }

    fn install(&self, keys: Vec<(Option<String>, DecodingKey)>) {
        let mut set = KeySet {
            by_kid: HashMap::new(),
            unnamed: Vec::new(),
            fetched_at: Instant::now(),
        };
        for (kid, key) in keys {
            match kid {
                Some(kid) => {
                    set.by_kid.insert(kid, key);
                }
                None => set.unnamed.push(key),
            }
        }
        self.keys.store(Some(Arc::new(set)));
        // New keys: what was verified with the old ones is verified again.
        for shard in &self.cache {
            shard.lock().unwrap_or_else(|e| e.into_inner()).clear();
        }
    }

    fn cached(&self, token: &str) -> Option<Arc<Claims>> {
        if self.config.token_cache == 0 {
            return None;
        }
        let hash = xxhash_rust::xxh3::xxh3_64(token.as_bytes());
        let shard = self.cache[(hash as usize) % CACHE_SHARDS]
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        let hit = shard.get(&hash)?;
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        // The full token is compared: a hash collision never passes for a verified token.
        (&*hit.token == token && hit.exp > now && hit.at.elapsed() < CACHE_MAX_AGE)
            .then(|| Arc::clone(&hit.claims))
    }

    fn remember(&self, token: &str, claims: &Arc<Claims>) {
        if self.config.token_cache == 0 {
            return;
        }
        let Some(exp) = claims.get("exp").and_then(Value::as_u64) else {
            return;
        };
        let hash = xxhash_rust::xxh3::xxh3_64(token.as_bytes());
        let mut shard = self.cache[(hash as usize) % CACHE_SHARDS]
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if shard.len() >= self.config.token_cache.div_ceil(CACHE_SHARDS) {
            // Bounded: drop what is old, or everything if that frees nothing.
            shard.retain(|_, c| c.at.elapsed() < CACHE_MAX_AGE);
            if shard.len() >= self.config.token_cache.div_ceil(CACHE_SHARDS) {
                shard.clear();
            }
        }
        shard.insert(
            hash,
            Cached {
                token: token.into(),
                claims: Arc::clone(claims),
                exp,
                at: Instant::now(),
            },
        );
    }

    /// Fetches the JWKS now. Single flight: callers that arrive while a fetch runs share its
    /// outcome instead of fetching again; after a failure, further attempts wait out a backoff
    /// (1 s, doubling to 10 s or the refresh interval) and fail at once meanwhile.
    pub async fn fetch(&self) -> Result<(), String> {
        let Some(url) = &self.config.jwks_url else {
            return Ok(());
        };
        let generation = self.fetch_generation.load(Ordering::Acquire);
        let mut state = self.refresh.lock().await;
        if self.fetch_generation.load(Ordering::Acquire) != generation {
            if let Some(last) = &state.last {
                return last.clone();
            }
        }
        if state.retry_at.is_some_and(|at| Instant::now() < at) {
            return Err("backing off after a failed JWKS fetch".to_string());
        }
        self.fetches.fetch_add(1, Ordering::Relaxed);
        let result = match fetch_jwks(url).await {
            Ok(keys) if !keys.is_empty() => {
                tracing::debug!(auth = %self.config.name, keys = keys.len(), "JWKS fetched");
                self.install(keys);
                Ok(())
            }
            Ok(_) => Err("the JWKS has no usable keys".to_string()),
            Err(e) => Err(e),
        };
        if result.is_ok() {
            state.failures = 0;
            state.retry_at = None;
        } else {
            state.failures = state.failures.saturating_add(1);
            let backoff = Duration::from_secs(1)
                .saturating_mul(1 << state.failures.min(6).saturating_sub(1))
                .min(MAX_FETCH_BACKOFF)
                .min(self.config.jwks_refresh.max(Duration::from_secs(1)));
            state.retry_at = Some(Instant::now() + backoff);
        }
        state.last = Some(result.clone());
        self.fetch_generation.fetch_add(1, Ordering::AcqRel);
        result
    }

    /// When the keys are due for their periodic refresh (now, if they were never fetched);
    /// `None` for static keys, which are never fetched.
    pub fn due_at(&self) -> Option<Instant> {
        if self.static_keys {
            return None;
        }
        let keys = self.keys.load();
        Some(
            keys.as_ref()
                .map_or_else(Instant::now, |k| k.fetched_at + self.config.jwks_refresh),
        )
    }

    /// On an unknown kid: refresh at most once per cooldown, whatever the flood of bogus kids.
    async fn refresh_for_unknown_kid(&self) {
        if self.static_keys {
            return;
        }
        let now = self.epoch.elapsed().as_millis() as u64;
        let last = self.last_kid_refresh_ms.load(Ordering::Acquire);
        let cooldown = self.config.unknown_kid_cooldown.as_millis() as u64;
        if last != 0 && now.saturating_sub(last) < cooldown {
            return;
        }
        if self
            .last_kid_refresh_ms
            .compare_exchange(last, now.max(1), Ordering::AcqRel, Ordering::Acquire)
            .is_err()
        {
            return; // another request is refreshing
        }
        if let Err(e) = self.fetch().await {
            tracing::warn!(auth = %self.config.name, "JWKS refresh for an unknown kid failed: {e}");
        }
    }

    /// Finds the token in the request: one `Authorization: Bearer` header or the configured
    /// cookie, never both, never twice (a second copy of the cookie, or a name a framework
    /// reads as it, included).
    pub fn token<'a>(&self, headers: &'a HeaderMap) -> Result<&'a str, AuthError> {
        let mut auths = headers.get_all(AUTHORIZATION).iter();
        let header = match (auths.next(), auths.next()) {
            (Some(_), Some(_)) => {
                return Err(AuthError::InvalidRequest(
                    "more than one Authorization header",
                ))
            }
            (Some(v), None) => {
                let v = v
                    .to_str()
                    .map_err(|_| AuthError::InvalidRequest("malformed Authorization header"))?;
                let (scheme, token) = v
                    .split_once(' ')
                    .ok_or(AuthError::InvalidRequest("malformed Authorization header"))?;
                if !scheme.eq_ignore_ascii_case("bearer")
                    || token.trim().is_empty()
                    || token.trim().contains(' ')
                {
                    return Err(AuthError::InvalidRequest("malformed Authorization header"));
                }
                Some(token.trim())
            }
            _ => None,
        };
        let cookie = self
            .config
            .cookie
            .as_deref()
            .map(|name| cookie::token_cookie(headers, name))
            .transpose()
            .map_err(|_| AuthError::InvalidRequest("the token cookie is sent more than once"))?
            .flatten()
            .map(|v| {
                std::str::from_utf8(v)
                    .map_err(|_| AuthError::InvalidRequest("malformed token cookie"))
            })
            .transpose()?;
        let token = match (header, cookie) {
            (Some(_), Some(_)) => {
                return Err(AuthError::InvalidRequest(
                    "a token in both the header and the cookie",
                ))
            }
            (Some(t), None) | (None, Some(t)) => t,
            (None, None) => return Err(AuthError::Missing),
        };
        if token.len() > MAX_TOKEN_BYTES {
            return Err(AuthError::InvalidToken(format!(
                "the token is over {MAX_TOKEN_BYTES} bytes"
            )));
        }
        Ok(token)
    }

    fn key_for(&self, kid: Option<&str>) -> Result<Option<Vec<DecodingKey>>, AuthError> {
        let keys = self.keys.load();
        let Some(set) = keys.as_ref() else {
            return Err(AuthError::KeysUnavailable);
        };
        if !self.static_keys && set.fetched_at.elapsed() > self.config.jwks_max_stale {
            return Err(AuthError::KeysUnavailable);
        }
        Ok(match kid {
            // Keys without a kid (PEM files) are tried for any kid none of the named keys has.
            Some(kid) => match set.by_kid.get(kid) {
                Some(k) => Some(vec![k.clone()]),
                None if !set.unnamed.is_empty() => Some(set.unnamed.clone()),
                None => None,
            },
            None if !set.unnamed.is_empty() => Some(set.unnamed.clone()),
            None if set.by_kid.len() == 1 => Some(set.by_kid.values().cloned().collect()),
            None => None,
        })
    }

    /// Verifies a request's token and the required claims.
    pub async fn verify(&self, headers: &HeaderMap) -> Result<Arc<Claims>, AuthError> {
        let token = self.token(headers)?;
        if let Some(claims) = self.cached(token) {
            // A cached verification still needs keys that are not past `jwks-max-stale`.
            let stale = !self.static_keys
                && self
                    .keys
                    .load()
                    .as_ref()
                    .is_none_or(|k| k.fetched_at.elapsed() > self.config.jwks_max_stale);
            if stale {
                return Err(AuthError::KeysUnavailable);
            }
            return Ok(claims);
        }
        // A token that cannot be valid is refused before any key is fetched for it.
        let header = jsonwebtoken::decode_header(token)
            .map_err(|e| AuthError::InvalidToken(format!("malformed token: {e}")))?;
        if !self.config.algorithms.contains(&header.alg) {
            return Err(AuthError::InvalidToken(format!(
                "algorithm {:?} is not allowed",
                header.alg
            )));
        }
        if !self.static_keys && self.keys.load().is_none() {
            // First use before the background fetch finished: fetch now (single flight).
            if let Err(e) = self.fetch().await {
                tracing::warn!(auth = %self.config.name, "JWKS fetch failed: {e}");
            }
        }
        let kid = header.kid.as_deref();
        let keys = match self.key_for(kid)? {
            Some(k) => k,
            None => {
                self.refresh_for_unknown_kid().await;
                self.key_for(kid)?
                    .ok_or_else(|| AuthError::InvalidToken("unknown signing key".into()))?
            }
        };
        let mut validation = Validation::new(header.alg);
        validation.algorithms = vec![header.alg];
        validation.set_issuer(&[&self.config.issuer]);
        validation.set_audience(&self.config.audiences);
        validation.set_required_spec_claims(&["exp", "iss", "aud"]);
        validation.validate_nbf = true;
        validation.leeway = self.config.leeway.as_secs();
        let mut last = AuthError::InvalidToken("no key verified the token".into());
        for key in &keys {
            match jsonwebtoken::decode::<Claims>(token, key, &validation) {
                Ok(data) => {
                    let claims = data.claims;
                    for (name, want) in &self.config.require {
                        if !claim_matches(&claims, name, want) {
                            return Err(AuthError::Forbidden(format!("{name}={want}")));
                        }
                    }
                    let claims = Arc::new(claims);
                    self.remember(token, &claims);
                    return Ok(claims);
                }
                // A key of another type (an EC key for an RS256 token) says nothing about the
                // token: report what a key of the right type said.
                Err(e)
                    if matches!(
                        e.kind(),
                        jsonwebtoken::errors::ErrorKind::InvalidKeyFormat
                            | jsonwebtoken::errors::ErrorKind::InvalidAlgorithm
                    ) => {}
                Err(e) => last = AuthError::InvalidToken(describe(&e)),
            }
        }
        Err(last)
    }
}

fn describe(e: &jsonwebtoken::errors::Error) -> String {
    use jsonwebtoken::errors::ErrorKind as K;
    match e.kind() {
        K::ExpiredSignature => "the token has expired".into(),
        K::ImmatureSignature => "the token is not valid yet".into(),
        K::InvalidIssuer => "wrong issuer".into(),
        K::InvalidAudience => "wrong audience".into(),
        K::InvalidSignature => "bad signature".into(),
        K::InvalidAlgorithm => "the key does not match the algorithm".into(),
        K::MissingRequiredClaim(c) => format!("the `{c}` claim is missing"),
        _ => format!("invalid token: {e}"),
    }
}

async fn fetch_jwks(url: &str) -> Result<Vec<(Option<String>, DecodingKey)>, String> {
    use http_body_util::{BodyExt, Full, Limited};
    let client = crate::client::shared()?;
    let req = http::Request::get(url)
        .header(http::header::ACCEPT, "application/json")
        .body(Full::new(bytes::Bytes::new()))
        .map_err(|e| e.to_string())?;
    let resp = tokio::time::timeout(Duration::from_secs(5), client.request(req))
        .await
        .map_err(|_| format!("{url}: no answer within 5s"))?
        .map_err(|e| format!("{url}: {e}"))?;
    if !resp.status().is_success() {
        return Err(format!("{url}: HTTP {}", resp.status()));
    }
    let body = Limited::new(resp.into_body(), 1024 * 1024)
        .collect()
        .await
        .map_err(|e| format!("{url}: {e}"))?
        .to_bytes();
    parse_keys(std::str::from_utf8(&body).map_err(|_| format!("{url}: not UTF-8"))?)
}
