//! The file types: what a TOML config may say, exactly as written, with the spans needed to point
//! at a mistake. Nothing here is validated; the `Cx` lowering in `config` (one file per section,
//! entered through `config::parse_with`) turns these into the model.

use serde::Deserialize;
use toml::Spanned;

pub type S<T> = Spanned<T>;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct RawServer {
    pub listen: Option<Vec<S<String>>>,
    pub threads: Option<S<i64>>,
    pub default: Option<S<String>>,
    pub grace_period: Option<S<String>>,
    pub keepalive_timeout: Option<S<String>>,
    pub header_timeout: Option<S<String>>,
    pub max_header_bytes: Option<S<i64>>,
    pub max_headers: Option<S<i64>>,
    pub path_parameters: Option<S<String>>,
    pub trusted_proxies: Option<S<Vec<S<String>>>>,
    pub body_timeout: Option<S<String>>,
    pub h2c: Option<S<bool>>,
    pub max_concurrent_streams: Option<S<i64>>,
    pub tls: Option<Vec<S<RawTls>>>,
    pub defaults: Option<Vec<S<RawHostDefault>>>,
    pub compression: Option<S<RawCompression>>,
}

/// `[server] compression = { level = 5, min-size = 1024, types = ["text/*"] }`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct RawCompression {
    pub level: Option<S<i64>>,
    /// `1024` or `"1KB"`.
    pub min_size: Option<S<ShiftValue>>,
    pub types: Option<S<Vec<S<String>>>>,
}

/// `[[server.defaults]]`: the upstream for requests to these hosts that match no route.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct RawHostDefault {
    pub hosts: S<Vec<S<String>>>,
    pub upstream: S<String>,
}

/// A route's `when = { header = { ... }, query = { ... } }`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct RawWhen {
    pub header: Option<std::collections::BTreeMap<S<String>, S<String>>>,
    pub query: Option<std::collections::BTreeMap<S<String>, S<String>>>,
}

/// `[[server.tls]]`: a TLS listener.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct RawTls {
    pub listen: Option<S<Vec<S<String>>>>,
    pub cert: Option<S<String>>,
    pub key: Option<S<String>>,
    pub certs: Option<S<Vec<S<RawCertPair>>>>,
    pub alpn: Option<S<Vec<S<String>>>>,
    pub min_version: Option<S<String>>,
    pub handshake_timeout: Option<S<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct RawCertPair {
    pub cert: S<String>,
    pub key: S<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct RawAdmin {
    pub listen: Option<S<String>>,
    pub token: Option<S<String>>,
    pub fleet: Option<S<RawFleet>>,
    pub kubernetes_configmap: Option<S<String>>,
    pub kubernetes_api: Option<S<String>>,
    pub kubernetes_token_file: Option<S<String>>,
    pub kubernetes_ca_file: Option<S<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct RawFleet {
    pub configmap: S<String>,
    pub key: Option<S<String>>,
    pub lease: S<String>,
    pub peers: S<Vec<S<String>>>,
    pub identity: Option<S<String>>,
    pub api: Option<S<String>>,
    pub token_file: Option<S<String>>,
    pub ca_file: Option<S<String>>,
    pub lease_duration: Option<S<String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct RawLog {
    pub access: Option<S<String>>,
    pub format: Option<S<String>>,
    pub level: Option<S<String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct RawTelemetry {
    pub service_name: Option<S<String>>,
    pub redact_headers: Option<Vec<S<String>>>,
    pub redact_query: Option<Vec<S<String>>>,
    pub otlp: Option<RawOtlp>,
    pub emf: Option<RawEmf>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct RawEmf {
    pub output: Option<S<String>>,
    pub namespace: Option<S<String>>,
    pub interval: Option<S<String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct RawOtlp {
    pub endpoint: Option<S<String>>,
    pub protocol: Option<S<String>>,
    pub sample_ratio: Option<S<RawNumber>>,
    pub trust_incoming: Option<bool>,
    pub propagate: Option<Vec<S<String>>>,
    pub headers: Option<std::collections::BTreeMap<S<String>, S<String>>>,
    pub logs: Option<S<bool>>,
}

/// A TOML number as written: `1` and `1.0` mean the same ratio.
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(untagged)]
pub enum RawNumber {
    Int(i64),
    Float(f64),
}

impl RawNumber {
    pub fn value(self) -> f64 {
        match self {
            RawNumber::Int(i) => i as f64,
            RawNumber::Float(f) => f,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct RawUpstream {
    pub kind: Option<S<String>>,
    pub addresses: Option<S<Vec<S<String>>>>,
    pub url: Option<S<String>>,
    pub ca_file: Option<S<String>>,
    pub connect_timeout: Option<S<String>>,
    pub timeout: Option<S<String>>,
    pub idle_timeout: Option<S<String>>,
    pub health_check_interval: Option<S<String>>,
    pub health_check_path: Option<S<String>>,
    pub retries: Option<S<i64>>,
    pub max_in_flight: Option<S<i64>>,
    pub queue_timeout: Option<S<String>>,
    pub response_timeout: Option<S<String>>,
    pub request_timeout: Option<S<String>>,
    pub max_response_header_bytes: Option<S<i64>>,
    pub max_fails: Option<S<i64>>,
    pub fail_timeout: Option<S<String>>,
    // kind = "lambda"
    pub function: Option<S<String>>,
    pub qualifier: Option<S<String>>,
    pub region: Option<S<String>>,
    pub payload: Option<S<String>>,
    pub endpoint: Option<S<String>>,
    // kind = "http" with a url: sign forwarded requests
    pub sigv4: Option<S<RawSigv4>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct RawSigv4 {
    pub service: S<String>,
    pub region: S<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct RawAuth {
    pub jwks_url: Option<S<String>>,
    pub keys: Option<S<Vec<S<String>>>>,
    pub issuer: Option<S<String>>,
    pub audiences: Option<S<Vec<S<String>>>>,
    pub algorithms: Option<S<Vec<S<String>>>>,
    pub leeway: Option<S<String>>,
    pub cookie: Option<S<String>>,
    pub forward_claims: Option<S<std::collections::BTreeMap<String, S<String>>>>,
    pub require: Option<S<std::collections::BTreeMap<String, serde_json::Value>>>,
    pub jwks_refresh: Option<S<String>>,
    pub jwks_max_stale: Option<S<String>>,
    pub unknown_kid_cooldown: Option<S<String>>,
    pub token_cache: Option<S<i64>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct RawRoute {
    pub id: S<String>,
    pub path: S<String>,
    #[serde(rename = "match")]
    pub match_: Option<S<String>>,
    pub methods: Option<S<Vec<S<String>>>>,
    pub legacy: Option<S<String>>,
    pub new: Option<S<String>>,
    pub shift: Option<S<ShiftValue>>,
    pub sticky: Option<S<String>>,
    #[serde(rename = "override")]
    pub override_: Option<S<bool>>,
    pub auth: Option<S<String>>,
    pub rate_limit: Option<S<RawRateLimit>>,
    pub new_when: Option<S<RawClaimRule>>,
    pub override_when: Option<S<RawClaimRule>>,
    pub case_insensitive: Option<S<bool>>,
    pub trailing_slash: Option<S<bool>>,
    pub shadow: Option<S<RawShadow>>,
    pub shadow_writes: Option<S<bool>>,
    pub rollout: Option<S<RawRollout>>,
    pub fallback: Option<S<bool>>,
    pub fallback_methods: Option<S<Vec<S<String>>>>,
    pub fallback_statuses: Option<S<Vec<S<i64>>>>,
    pub capture: Option<S<RawCapture>>,
    pub plugins: Option<S<Vec<S<super::plugin::RawPlugin>>>>,
    pub hosts: Option<S<Vec<S<String>>>>,
    pub when: Option<S<RawWhen>>,
    pub timeout: Option<S<String>>,
    pub max_body: Option<S<String>>,
    pub allow_ips: Option<S<Vec<S<String>>>>,
    pub deny_ips: Option<S<Vec<S<String>>>>,
    pub redirect: Option<S<RawRedirect>>,
    pub respond: Option<S<RawRespond>>,
    pub compress: Option<S<bool>>,
}

/// `redirect = { to = "https://example.com/new$path", status = 308 }`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct RawRedirect {
    pub to: S<String>,
    pub status: Option<S<i64>>,
}

/// `respond = { status = 503, body = "...", content-type = "...", headers = { ... } }`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct RawRespond {
    pub status: S<i64>,
    pub body: Option<S<String>>,
    pub content_type: Option<S<String>>,
    pub headers: Option<std::collections::BTreeMap<S<String>, S<String>>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct RawCapture {
    pub on: S<Vec<S<String>>>,
    pub dir: S<String>,
    pub max_size: Option<S<String>>,
    pub max_body: Option<S<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct RawRollout {
    pub steps: S<Vec<S<ShiftValue>>>,
    pub interval: Option<S<String>>,
    pub min_requests: Option<S<i64>>,
    pub max_error_rate: Option<S<ShiftValue>>,
    pub max_error_rate_increase: Option<S<ShiftValue>>,
    pub max_p99_ratio: Option<S<f64>>,
    pub max_mismatch_rate: Option<S<ShiftValue>>,
    pub on_failure: Option<S<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct RawShadow {
    pub percent: Option<S<ShiftValue>>,
    pub methods: Option<S<Vec<S<String>>>>,
    pub ignore: Option<Vec<S<String>>>,
    pub headers: Option<Vec<S<String>>>,
    pub calibrate: Option<S<bool>>,
    pub max_body: Option<S<ShiftValue>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct RawClaimRule {
    pub claim: S<String>,
    pub equals: serde_json::Value,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct RawRateLimit {
    pub requests: S<i64>,
    pub per: Option<S<String>>,
    pub burst: Option<S<i64>>,
    pub key: Option<S<String>>,
    pub ipv4_prefix: Option<S<i64>>,
    pub ipv6_prefix: Option<S<i64>>,
    pub max_keys: Option<S<i64>>,
}

/// `shift = "25%"` is the documented form; a bare number (`shift = 25`) is accepted too.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum ShiftValue {
    Text(String),
    Int(i64),
    Float(f64),
}

impl ShiftValue {
    pub fn as_text(&self) -> String {
        match self {
            ShiftValue::Text(s) => s.clone(),
            ShiftValue::Int(i) => i.to_string(),
            ShiftValue::Float(f) => f.to_string(),
        }
    }
}
