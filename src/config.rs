//! The config pipeline: TOML text → `${env:..}`/`${file:..}` interpolation on the parsed tree →
//! raw serde types (`raw`, `deny_unknown_fields`, kebab-case) → validation → `Config`, the model
//! with no serde on it. Every section is deserialised on its own and every semantic check runs,
//! so one pass reports all problems, each as `FILE:LINE:COL: message` with a hint.
//!
//! Lowering is pure: the environment and every file the config names (`${file:..}`, `keys`,
//! `ca-file`) come through one `Inputs` step (`System` for the machine, `Fixed` maps for tests),
//! and the model carries what was read (CA certificates, key texts), so nothing at run time
//! reads those files again and a changed file is a changed config.
//!
//! This module holds the model and the entry points; lowering is split by job: `diag`
//! (diagnostics and the helpers that report them), `inputs`, `interp` (`${..}` references),
//! `pem` (certificates from bytes), and one file per section: `server` (with `[admin]` and
//! `[log]`), `upstream`, `auth`, `route`, `telemetry`. The model imports no runtime module: runtime types
//! (verifiers, limiters, live upstreams) are built from it, never the reverse. Only the leaf
//! vocabulary modules `routing`, `split` and `net` are shared.

pub mod raw;
pub mod read;

mod auth;
pub mod capture;
mod diag;
pub mod fallback;
pub mod fleet;
pub mod hosts;
mod inputs;
mod interp;
mod pem;
pub mod plugin;
pub mod policy;
pub mod rollout;
mod route;
mod server;
pub mod shadow;
mod telemetry;
pub mod tls;
mod upstream;

use diag::valid_name;
pub use diag::{ConfigErrors, Diagnostic};
pub use inputs::{Fixed, Inputs, System};
pub use telemetry::{Emf, Otlp, OtlpProtocol, Telemetry};

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use http::header::HeaderName;
use http::Method;
use rustls::pki_types::CertificateDer;
use toml::de::{DeTable, DeValue};
use toml::Spanned;

use crate::routing::{PathMatch, RouteKey};
use crate::split::{Shift, StickyKey};
use raw::*;

/// The validated configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    pub server: Server,
    pub admin: Admin,
    pub auth: BTreeMap<String, AuthConfig>,
    pub log: Log,
    pub telemetry: Telemetry,
    pub upstreams: BTreeMap<String, Upstream>,
    pub routes: Vec<Route>,
    /// Problems that do not stop the config from loading (`strangle check` prints them; the
    /// proxy logs them at load).
    pub warnings: Vec<Diagnostic>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Server {
    pub listen: Vec<SocketAddr>,
    pub threads: usize,
    pub default: Option<String>,
    /// `[[server.defaults]]`: per-host defaults, before `default`.
    pub defaults: Vec<hosts::HostDefault>,
    /// Answers compressed for clients that accept it (off without it).
    pub compression: Option<policy::Compression>,
    pub grace_period: Duration,
    pub keepalive_timeout: Duration,
    pub header_timeout: Duration,
    pub max_header_bytes: usize,
    pub max_headers: usize,
    /// What `;` in a path gets.
    pub path_params: crate::routing::PathParams,
    /// Peers whose `X-Forwarded-For` is believed.
    pub trusted_proxies: Vec<crate::net::Cidr>,
    /// The longest a request body may take to arrive (buffered bodies: in all; streamed
    /// bodies: between two reads).
    pub body_timeout: Duration,
    /// HTTP/2 with prior knowledge (h2c) on the plain listeners.
    pub h2c: bool,
    /// The HTTP/2 streams a client may have open at once on one connection.
    pub max_concurrent_streams: u32,
    /// `[[server.tls]]`: the TLS listeners.
    pub tls: Vec<tls::Tls>,
}

/// The admin API's listener and the token that mutating calls need.
#[derive(Clone, PartialEq)]
pub struct Admin {
    pub listen: SocketAddr,
    pub token: Option<String>,
    /// Several replicas, one rollout decision (`[admin.fleet]`).
    pub fleet: Option<fleet::Fleet>,
    /// Several replicas from one ConfigMap: shifts are written there (`kubernetes-configmap`).
    pub kubernetes: Option<fleet::ShiftTarget>,
}

impl fmt::Debug for Admin {
    // The token is a secret: never in logs or error output.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Admin")
            .field("listen", &self.listen)
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .field("fleet", &self.fleet)
            .field("kubernetes", &self.kubernetes)
            .finish()
    }
}

/// Where the admin API listens when `[admin] listen` is not set.
pub const DEFAULT_ADMIN: SocketAddr = SocketAddr::V4(std::net::SocketAddrV4::new(
    std::net::Ipv4Addr::LOCALHOST,
    9901,
));

#[derive(Debug, Clone, PartialEq)]
pub enum AccessLog {
    Stdout,
    File(PathBuf),
    Off,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Log {
    pub access: AccessLog,
    pub json: bool,
    pub level: String,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Upstream {
    pub name: String,
    pub target: Target,
    /// PEM certificates to trust for this upstream instead of the system's roots.
    pub ca_file: Option<PathBuf>,
    /// The certificates of `ca_file`, read at load (empty without one): the upstream trusts
    /// these and never reads the file itself, and a changed file is a changed config.
    pub ca_certs: Vec<CertificateDer<'static>>,
    /// Sign forwarded requests with SigV4 (IAM-authorized API Gateway APIs, AWS_IAM Function URLs).
    pub sigv4: Option<Sigv4>,
    pub connect_timeout: Duration,
    pub timeout: Duration,
    pub idle_timeout: Duration,
    pub health_check_interval: Duration,
    pub health_check_path: Option<String>,
    pub retries: usize,
    /// At most this many requests at once; the excess waits up to `queue_timeout`, then 503.
    pub max_in_flight: Option<usize>,
    pub queue_timeout: Duration,
    /// The longest the whole response head may take to arrive after the request was sent
    /// (`timeout` restarts with every read; this does not).
    pub response_timeout: Option<Duration>,
    /// The longest a whole exchange with the upstream may take, body included.
    pub request_timeout: Option<Duration>,
    /// A response head over this many bytes is a 502.
    pub max_response_header_bytes: usize,
    /// Passive health: this many consecutive failed requests (no response, reset, timeout)
    /// take an address out of rotation for `fail_timeout`; 0 turns it off.
    pub max_fails: usize,
    pub fail_timeout: Duration,
}

impl Upstream {
    /// The longest to wait for a response head: `timeout`, or less when `response-timeout` or
    /// `request-timeout` is shorter.
    pub fn head_deadline(&self) -> Duration {
        self.head_deadline_with(None)
    }

    /// `head_deadline` with a route's `timeout` in place of the upstream's.
    pub fn head_deadline_with(&self, timeout: Option<Duration>) -> Duration {
        [self.response_timeout, self.request_timeout]
            .into_iter()
            .flatten()
            .fold(timeout.unwrap_or(self.timeout), Duration::min)
    }
}

/// SigV4 signing of requests forwarded to an AWS HTTP endpoint.
#[derive(Debug, Clone, PartialEq)]
pub struct Sigv4 {
    /// `execute-api` (API Gateway) or `lambda` (Function URLs).
    pub service: String,
    pub region: String,
}

/// A Lambda function invoked directly.
#[derive(Debug, Clone, PartialEq)]
pub struct LambdaTarget {
    /// A name or an ARN.
    pub function: String,
    pub qualifier: Option<String>,
    pub region: String,
    pub payload: Payload,
    /// Overrides `https://lambda.{region}.amazonaws.com`, e.g. a local emulator.
    pub endpoint: Option<String>,
}

/// Which event format the function expects.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Payload {
    ApigwV2,
    ApigwV1,
    Alb,
}

impl Payload {
    pub fn parse(s: &str) -> Option<Payload> {
        match s {
            "apigw-v2" => Some(Payload::ApigwV2),
            "apigw-v1" => Some(Payload::ApigwV1),
            "alb" => Some(Payload::Alb),
            _ => None,
        }
    }
}

/// Where an upstream lives.
#[derive(Debug, Clone, PartialEq)]
pub enum Target {
    Lambda(LambdaTarget),
    /// Plain HTTP to one or more `host:port` addresses, balanced.
    Addresses(Vec<String>),
    /// One base URL; `https` uses TLS with SNI, the Host header is rewritten to the URL's
    /// authority and the base path is prefixed to every request path.
    Url {
        tls: bool,
        host: String,
        port: u16,
        base_path: String,
    },
}

impl Target {
    /// `host:port` of a `url` target, IPv6 in brackets: what to connect to.
    pub fn socket_authority(&self) -> Option<String> {
        match self {
            Target::Url { host, port, .. } if host.contains(':') => {
                Some(format!("[{host}]:{port}"))
            }
            Target::Url { host, port, .. } => Some(format!("{host}:{port}")),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Route {
    pub id: String,
    pub path: String,
    pub kind: PathMatch,
    pub methods: Option<Vec<Method>>,
    pub legacy: Option<String>,
    pub new: Option<String>,
    pub shift: Shift,
    pub sticky: StickyKey,
    pub allow_override: bool,
    /// The `[auth.NAME]` that guards this route.
    pub auth: Option<String>,
    pub rate_limit: Option<RateLimit>,
    /// Users whose verified claim matches go to the new side whatever the shift.
    pub new_when: Option<ClaimRule>,
    /// The tester header is honoured only for users whose verified claim matches.
    pub override_when: Option<ClaimRule>,
    pub case_insensitive: bool,
    pub trailing_slash: bool,
    pub shadow: Option<std::sync::Arc<shadow::Shadow>>,
    /// A metric-gated progressive shift (`[routes.rollout]`).
    pub rollout: Option<std::sync::Arc<rollout::Rollout>>,
    /// Requests the new side failed before answering are served by legacy (`fallback = true`).
    pub fallback: Option<std::sync::Arc<fallback::Fallback>>,
    /// Requests kept in a spool to look at and replay (`capture = { ... }`).
    pub capture: Option<std::sync::Arc<capture::Capture>>,
    /// Request and response plugins, per side (`plugins = [...]`).
    pub plugins: plugin::Plugins,
    /// The hosts it answers for (empty: any host).
    pub hosts: Vec<crate::routing::HostPattern>,
    /// Conditions on the request head (`when = { ... }`).
    pub when: Option<std::sync::Arc<crate::routing::Conditions>>,
    /// `timeout`, `max-body`, `allow-ips`, `deny-ips`.
    pub policy: policy::Policy,
    /// The answer it gives itself (`redirect`, `respond`): a route with one has no sides.
    pub fixed: Option<std::sync::Arc<policy::Fixed>>,
}

/// `{ claim = "beta", equals = true }`: matches a verified claim (inside space-separated strings
/// and arrays too).
#[derive(Debug, Clone, PartialEq)]
pub struct ClaimRule {
    pub claim: String,
    pub equals: serde_json::Value,
}

impl Route {
    pub fn key(&self) -> RouteKey {
        RouteKey {
            path: self.path.clone(),
            kind: self.kind,
            methods: self.methods.clone(),
            case_insensitive: self.case_insensitive,
            trailing_slash: self.trailing_slash,
            hosts: self.hosts.clone(),
            when: self.when.clone(),
        }
    }
}

/// The validated `rate-limit = { ... }` of a route.
#[derive(Debug, Clone, PartialEq)]
pub struct RateLimit {
    pub requests: u32,
    pub per: Duration,
    pub burst: u32,
    pub key: StickyKey,
    pub ipv4_prefix: u8,
    pub ipv6_prefix: u8,
    /// The most buckets kept; past it the least recently used is evicted.
    pub max_keys: usize,
}

/// The validated `[auth.NAME]` section.
#[derive(Debug, Clone, PartialEq)]
pub struct AuthConfig {
    pub name: String,
    pub jwks_url: Option<String>,
    /// The static keys (`keys = [..]`), read at load: a changed key file is a changed config.
    pub key_files: Vec<KeyFile>,
    pub issuer: String,
    pub audiences: Vec<String>,
    pub algorithms: Vec<jsonwebtoken::Algorithm>,
    pub leeway: Duration,
    pub cookie: Option<String>,
    /// claim → header sent upstream.
    pub forward_claims: Vec<(String, HeaderName)>,
    /// claim → required value (a string matches inside space-separated strings and arrays).
    pub require: Vec<(String, serde_json::Value)>,
    pub jwks_refresh: Duration,
    pub jwks_max_stale: Duration,
    pub unknown_kid_cooldown: Duration,
    /// How many verified tokens to remember (0: verify every time).
    pub token_cache: usize,
}

/// A key file of `[auth.NAME] keys` and its text (a PEM public key, a JWK or a JWK set).
#[derive(Debug, Clone, PartialEq)]
pub struct KeyFile {
    pub path: PathBuf,
    pub text: String,
}

/// Reads and validates a config file (the one a process starts with, or `strangle check`).
pub fn load(path: &Path) -> Result<Config, ConfigErrors> {
    read_and_lower(path, true)
}

/// `load` for a file that is edited, not served (`strangle shift --file`): TLS certificate
/// files are looked at but a pair that does not load is only a warning, as on a reload.
pub fn load_to_edit(path: &Path) -> Result<Config, ConfigErrors> {
    read_and_lower(path, false)
}

fn read_and_lower(path: &Path, tls_pairs_must_load: bool) -> Result<Config, ConfigErrors> {
    let name = path.display().to_string();
    let text = inputs::text(&System, path).map_err(|e| {
        ConfigErrors(vec![Diagnostic {
            file: name.clone(),
            line: 1,
            col: 1,
            message: format!("cannot read config: {e}"),
            hint: None,
        }])
    })?;
    let base = path.parent().unwrap_or(Path::new("."));
    lower(&name, &text, base, &System, tls_pairs_must_load)
}

/// Validates config text. `base` resolves relative paths (`${file:..}`, `keys`, `ca-file`);
/// the environment and those files are the machine's.
pub fn parse(file: &str, text: &str, base: &Path) -> Result<Config, ConfigErrors> {
    parse_with(file, text, base, &System)
}

/// Validates config text, taking every environment variable and file it needs from `inputs`
/// (nothing else is read).
pub fn parse_with(
    file: &str,
    text: &str,
    base: &Path,
    inputs: &dyn Inputs,
) -> Result<Config, ConfigErrors> {
    lower(file, text, base, inputs, false)
}

/// `tls_pairs_must_load`: a TLS certificate pair that does not load is an error (the config a
/// process starts with, and `strangle check`), or a warning (a reload or an edit: listeners
/// change only at a restart, and the TLS runtime keeps the pair in force when files go bad,
/// so a bad file must not block a shift or a rollback).
fn lower(
    file: &str,
    text: &str,
    base: &Path,
    inputs: &dyn Inputs,
    tls_pairs_must_load: bool,
) -> Result<Config, ConfigErrors> {
    let mut cx = Cx {
        file,
        text,
        base,
        inputs,
        tls_pairs_must_load,
        diags: Vec::new(),
        warnings: Vec::new(),
    };
    let config = cx.lower();
    if cx.diags.is_empty() {
        if let Some(mut config) = config {
            cx.warnings.sort_by_key(|d| (d.line, d.col));
            config.warnings = cx.warnings;
            return Ok(config);
        }
    }
    cx.diags.sort_by_key(|d| (d.line, d.col));
    Err(ConfigErrors(cx.diags))
}

const SECTIONS: &[&str] = &[
    "server",
    "admin",
    "log",
    "telemetry",
    "auth",
    "upstreams",
    "routes",
];

struct Cx<'a> {
    file: &'a str,
    text: &'a str,
    base: &'a Path,
    /// The only way lowering reaches the environment or a file.
    inputs: &'a dyn Inputs,
    /// A TLS pair that does not load is an error (else a warning): see `lower`.
    tls_pairs_must_load: bool,
    diags: Vec<Diagnostic>,
    warnings: Vec<Diagnostic>,
}

impl Cx<'_> {
    fn lower(&mut self) -> Option<Config> {
        let mut root = match DeTable::parse(self.text) {
            Ok(root) => root,
            Err(e) => {
                let at = e.span().map_or(0, |s| s.start);
                self.error(at, format!("invalid TOML: {}", e.message().trim()), None);
                return None;
            }
        };
        self.interpolate_table(root.get_mut());

        let (mut server, mut admin, mut log, mut telemetry) = (None, None, None, None);
        let mut upstreams: Vec<(Spanned<String>, RawUpstream)> = Vec::new();
        let mut routes: Vec<RawRoute> = Vec::new();
        let mut auths: Vec<(Spanned<String>, RawAuth)> = Vec::new();
        let mut ok = true;
        for (key, value) in root.into_inner() {
            let span = key.span();
            let key_name = key.into_inner();
            match &*key_name {
                "server" => server = self.de::<RawServer>(value, "[server]"),
                "admin" => admin = self.de::<RawAdmin>(value, "[admin]"),
                "log" => log = self.de::<RawLog>(value, "[log]"),
                "telemetry" => telemetry = self.de::<RawTelemetry>(value, "[telemetry]"),
                "upstreams" => match value.into_inner() {
                    DeValue::Table(t) => {
                        for (name, v) in t {
                            let name = Spanned::new(name.span(), name.into_inner().into_owned());
                            match self.de::<RawUpstream>(v, "an upstream") {
                                Some(u) => upstreams.push((name, u)),
                                None => ok = false,
                            }
                        }
                    }
                    _ => self.error(
                        span.start,
                        "`upstreams` must be a table: [upstreams.NAME]",
                        None,
                    ),
                },
                "auth" => match value.into_inner() {
                    DeValue::Table(t) => {
                        for (name, v) in t {
                            let name = Spanned::new(name.span(), name.into_inner().into_owned());
                            match self.de::<RawAuth>(v, "an [auth.NAME] section") {
                                Some(a) => auths.push((name, a)),
                                None => ok = false,
                            }
                        }
                    }
                    _ => self.error(span.start, "`auth` must be a table: [auth.NAME]", None),
                },
                "routes" => match value.into_inner() {
                    DeValue::Array(a) => {
                        for v in a.iter().cloned() {
                            match self.de::<RawRoute>(v, "a route") {
                                Some(r) => routes.push(r),
                                None => ok = false,
                            }
                        }
                    }
                    _ => self.error(
                        span.start,
                        "`routes` must be an array of tables: [[routes]]",
                        None,
                    ),
                },
                other => {
                    let hint = Some(format!("known sections: {}", SECTIONS.join(", ")));
                    self.error(span.start, format!("unknown section `{other}`"), hint);
                }
            }
        }
        let server = server.unwrap_or_default();
        let log = log.unwrap_or_default();
        let upstreams = self.upstreams(upstreams);
        let server = self.server(server, &upstreams);
        let log = self.log(log);
        let telemetry = self.telemetry(telemetry.unwrap_or_default());
        let taken: Vec<std::net::SocketAddr> = server
            .iter()
            .flat_map(|s| s.listen.iter().chain(s.tls.iter().flat_map(|t| &t.listen)))
            .copied()
            .collect();
        let admin = self.admin(admin.unwrap_or_default(), &taken);
        let auth = self.auths(auths);
        let (routes, id_spans) = self.routes(routes, &upstreams, &auth);
        if let Some(server) = &server {
            self.warn_bypassable_routes(&routes, &id_spans, server);
        }
        (ok && self.diags.is_empty()).then_some(Config {
            server: server?,
            admin,
            auth,
            log,
            telemetry,
            upstreams,
            routes,
            warnings: Vec::new(),
        })
    }
}

#[cfg(test)]
mod tests;

/// A file kept beside the config file: `strangle.toml` → `strangle.{what}` (the history, the
/// inventory, the burn-down).
pub fn beside(config: &Path, what: &str) -> PathBuf {
    let stem = config
        .file_stem()
        .map_or_else(|| "strangle".into(), |s| s.to_string_lossy().into_owned());
    config.with_file_name(format!("{stem}.{what}"))
}
