//! The config pipeline: TOML text → `${env:..}`/`${file:..}` interpolation on the parsed tree →
//! raw serde types (`raw`, `deny_unknown_fields`, kebab-case) → validation → `Config`, the model
//! with no serde on it. Every section is deserialised on its own and every semantic check runs,
//! so one pass reports all problems, each as `FILE:LINE:COL: message` with a hint.

pub mod raw;
pub mod read;

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use http::header::HeaderName;
use http::Method;
use serde::de::DeserializeOwned;
use toml::de::{DeTable, DeValue, ValueDeserializer};
use toml::Spanned;

use crate::routing::{self, PathMatch, RouteKey};
use crate::split::{Shift, StickyKey};
use raw::*;

/// The validated configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    pub server: Server,
    pub admin: Admin,
    pub auth: BTreeMap<String, AuthConfig>,
    pub log: Log,
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
}

/// The admin API's listener and the token that mutating calls need.
#[derive(Clone, PartialEq)]
pub struct Admin {
    pub listen: SocketAddr,
    pub token: Option<String>,
}

impl fmt::Debug for Admin {
    // The token is a secret: never in logs or error output.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Admin")
            .field("listen", &self.listen)
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}

pub const DEFAULT_ADMIN: &str = "127.0.0.1:9901";

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
        [self.response_timeout, self.request_timeout]
            .into_iter()
            .flatten()
            .fold(self.timeout, Duration::min)
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
    pub key_files: Vec<PathBuf>,
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

/// One problem in a config file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostic {
    pub file: String,
    pub line: usize,
    pub col: usize,
    pub message: String,
    pub hint: Option<String>,
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}:{}:{}: {}",
            self.file, self.line, self.col, self.message
        )?;
        if let Some(hint) = &self.hint {
            write!(f, "\n  = hint: {hint}")?;
        }
        Ok(())
    }
}

impl Diagnostic {
    /// `FILE:LINE:COL: warning: message` and its hint.
    pub fn as_warning(&self) -> String {
        let mut w = self.clone();
        w.message = format!("warning: {}", w.message);
        w.to_string()
    }
}

/// Every problem found in a config file.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct ConfigErrors(pub Vec<Diagnostic>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, d) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{d}")?;
        }
        Ok(())
    }
}

/// Reads and validates a config file.
pub fn load(path: &Path) -> Result<Config, ConfigErrors> {
    let name = path.display().to_string();
    let text = read::read_text(path).map_err(|e| {
        ConfigErrors(vec![Diagnostic {
            file: name.clone(),
            line: 1,
            col: 1,
            message: format!("cannot read config: {e}"),
            hint: None,
        }])
    })?;
    parse(&name, &text, path.parent().unwrap_or(Path::new(".")))
}

/// Validates config text. `base` resolves relative `${file:..}` paths.
pub fn parse(file: &str, text: &str, base: &Path) -> Result<Config, ConfigErrors> {
    let mut cx = Cx {
        file,
        text,
        base,
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

const SECTIONS: &[&str] = &["server", "admin", "log", "auth", "upstreams", "routes"];

struct Cx<'a> {
    file: &'a str,
    text: &'a str,
    base: &'a Path,
    diags: Vec<Diagnostic>,
    warnings: Vec<Diagnostic>,
}

impl Cx<'_> {
    fn error(&mut self, at: usize, message: impl Into<String>, hint: Option<String>) {
        let before = &self.text[..at.min(self.text.len())];
        let line = before.matches('\n').count() + 1;
        let col = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
        self.diags.push(Diagnostic {
            file: self.file.to_string(),
            line,
            col,
            message: message.into(),
            hint,
        });
    }

    fn warn(&mut self, at: usize, message: impl Into<String>, hint: Option<String>) {
        self.error(at, message, hint);
        if let Some(d) = self.diags.pop() {
            self.warnings.push(d);
        }
    }

    fn err_at<T>(&mut self, s: &Spanned<T>, message: impl Into<String>, hint: Option<String>) {
        self.error(s.span().start, message, hint);
    }

    fn de<T: DeserializeOwned>(&mut self, value: Spanned<DeValue<'_>>, what: &str) -> Option<T> {
        let start = value.span().start;
        match T::deserialize(ValueDeserializer::from(value)) {
            Ok(v) => Some(v),
            Err(e) => {
                let at = e.span().map_or(start, |s| s.start);
                let message = e.message().trim().to_string();
                let hint = message
                    .contains("unknown field")
                    .then(|| format!("see config/strangle.toml for every key of {what}"));
                self.error(at, message, hint);
                None
            }
        }
    }

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

        let (mut server, mut admin, mut log) = (None, None, None);
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
        let admin = self.admin(admin.unwrap_or_default());
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
            upstreams,
            routes,
            warnings: Vec::new(),
        })
    }

    // ---- interpolation -------------------------------------------------------------------

    fn interpolate_table(&mut self, table: &mut DeTable<'_>) {
        for (_, value) in table.iter_mut() {
            self.interpolate(value);
        }
    }

    fn interpolate(&mut self, value: &mut Spanned<DeValue<'_>>) {
        let start = value.span().start;
        match value.get_mut() {
            DeValue::String(s) if s.contains("${") => match interpolate(s, self.base) {
                Ok(v) => *s = v.into(),
                Err(message) => self.error(start, message, None),
            },
            DeValue::Array(a) => a.iter_mut().for_each(|v| self.interpolate(v)),
            DeValue::Table(t) => self.interpolate_table(t),
            _ => {}
        }
    }

    // ---- sections ------------------------------------------------------------------------

    fn duration(&mut self, v: &Option<Spanned<String>>, key: &str, default: Duration) -> Duration {
        let Some(v) = v else { return default };
        match humantime::parse_duration(v.get_ref().trim()) {
            Ok(d) => d,
            Err(e) => {
                let hint = Some("write a number with a unit: `500ms`, `20s`, `2m`".to_string());
                self.err_at(
                    v,
                    format!("bad duration `{}` for `{key}`: {e}", v.get_ref()),
                    hint,
                );
                default
            }
        }
    }

    /// A duration that is off when absent and must be more than zero when present.
    fn optional_duration(&mut self, v: &Option<Spanned<String>>, key: &str) -> Option<Duration> {
        let d = self.duration(v, key, Duration::ZERO);
        if let (Some(v), true) = (v, d.is_zero()) {
            let hint = Some(format!("leave `{key}` out to turn it off"));
            self.err_at(v, format!("`{key}` must be more than 0"), hint);
        }
        (!d.is_zero()).then_some(d)
    }

    fn count(
        &mut self,
        v: &Option<Spanned<i64>>,
        key: &str,
        min: i64,
        max: i64,
        default: usize,
    ) -> usize {
        let Some(v) = v else { return default };
        let n = *v.get_ref();
        if !(min..=max).contains(&n) {
            self.err_at(
                v,
                format!("`{key}` must be between {min} and {max}, not {n}"),
                None,
            );
            return default;
        }
        n as usize
    }

    fn server(&mut self, raw: RawServer, upstreams: &BTreeMap<String, Upstream>) -> Option<Server> {
        let listen = match raw.listen {
            Some(l) => l,
            None => vec![Spanned::new(0..0, "127.0.0.1:8080".to_string())],
        };
        for addr in &listen {
            if addr.get_ref().parse::<SocketAddr>().is_err() {
                let hint = Some("write `IP:PORT`, e.g. `0.0.0.0:8080` or `[::]:8080`".into());
                self.err_at(
                    addr,
                    format!("bad listen address `{}`", addr.get_ref()),
                    hint,
                );
            }
        }
        if let Some(d) = &raw.default {
            self.check_upstream_ref(d, upstreams);
        }
        Some(Server {
            listen: listen
                .iter()
                .filter_map(|a| a.get_ref().parse().ok())
                .collect(),
            threads: self.count(&raw.threads, "threads", 1, 1024, 2),
            default: raw.default.map(Spanned::into_inner),
            grace_period: self.duration(&raw.grace_period, "grace-period", Duration::from_secs(20)),
            keepalive_timeout: self.duration(
                &raw.keepalive_timeout,
                "keepalive-timeout",
                Duration::from_secs(60),
            ),
            header_timeout: self.duration(
                &raw.header_timeout,
                "header-timeout",
                Duration::from_secs(10),
            ),
            max_header_bytes: self.count(
                &raw.max_header_bytes,
                "max-header-bytes",
                1024,
                1 << 20,
                32 * 1024,
            ),
            max_headers: self.count(&raw.max_headers, "max-headers", 8, 250, 100),
            path_params: match raw.path_parameters.as_ref().map(|p| p.get_ref().as_str()) {
                None | Some("reject") => routing::PathParams::Reject,
                Some("keep") => routing::PathParams::Keep,
                Some(other) => {
                    let p = raw.path_parameters.as_ref().expect("matched Some");
                    self.err_at(p, format!("unknown path-parameters `{other}`"), Some("use `reject` (default: `;` in a path gets 400) or `keep` (forwarded as part of the segment; unsafe in front of servlet containers, which drop `;...` before routing)".into()));
                    routing::PathParams::Reject
                }
            },
            trusted_proxies: raw
                .trusted_proxies
                .iter()
                .flat_map(|l| l.get_ref().iter())
                .filter_map(|c| match c.get_ref().parse::<crate::net::Cidr>() {
                    Ok(cidr) => Some(cidr),
                    Err(e) => {
                        self.err_at(
                            c,
                            format!("bad trusted-proxies entry: {e}"),
                            Some("write a CIDR block such as `10.0.0.0/8` or an address".into()),
                        );
                        None
                    }
                })
                .collect(),
            body_timeout: self.duration(&raw.body_timeout, "body-timeout", Duration::from_secs(10)),
        })
    }

    fn admin(&mut self, raw: RawAdmin) -> Admin {
        let default: SocketAddr = DEFAULT_ADMIN.parse().expect("valid default");
        let listen = match &raw.listen {
            None => default,
            Some(l) => l.get_ref().parse::<SocketAddr>().unwrap_or_else(|_| {
                let hint = Some(format!("write `IP:PORT`, e.g. `{DEFAULT_ADMIN}`"));
                self.err_at(
                    l,
                    format!("bad admin listen address `{}`", l.get_ref()),
                    hint,
                );
                default
            }),
        };
        let token = raw.token.as_ref().map(|t| t.get_ref().clone());
        if let Some(t) = &raw.token {
            if t.get_ref().trim().is_empty() {
                self.err_at(
                    t,
                    "the admin `token` is empty",
                    Some("use a long random secret, e.g. `${env:STRANGLE_ADMIN_TOKEN}`".into()),
                );
            }
        }
        if !listen.ip().is_loopback() && token.is_none() {
            let at = raw.listen.as_ref().map_or(0, |l| l.span().start);
            let hint = Some(
                "set `token = \"${env:STRANGLE_ADMIN_TOKEN}\"`, or listen on 127.0.0.1".into(),
            );
            self.error(
                at,
                format!("the admin API listens off the loopback ({listen}) without a `token`"),
                hint,
            );
        }
        Admin { listen, token }
    }

    fn log(&mut self, raw: RawLog) -> Log {
        let access = match &raw.access {
            None => AccessLog::Stdout,
            Some(a) => match a.get_ref().as_str() {
                "stdout" => AccessLog::Stdout,
                "off" => AccessLog::Off,
                "" => {
                    self.err_at(
                        a,
                        "empty `access`",
                        Some("use `stdout`, `off` or a file path".into()),
                    );
                    AccessLog::Off
                }
                path => AccessLog::File(self.base.join(path)),
            },
        };
        let json = match raw.format.as_ref().map(|f| f.get_ref().as_str()) {
            None | Some("text") => false,
            Some("json") => true,
            Some(other) => {
                let f = raw.format.as_ref().expect("matched Some");
                self.err_at(
                    f,
                    format!("unknown log format `{other}`"),
                    Some("use `text` or `json`".into()),
                );
                false
            }
        };
        if let Some(l) = &raw.level {
            if tracing_subscriber::EnvFilter::try_new(l.get_ref()).is_err() {
                let hint = Some("use error, warn, info, debug or trace".into());
                self.err_at(l, format!("bad log level `{}`", l.get_ref()), hint);
            }
        }
        let level = raw
            .level
            .map_or_else(|| "info".to_string(), Spanned::into_inner);
        Log {
            access,
            json,
            level,
        }
    }

    fn upstreams(
        &mut self,
        raw: Vec<(Spanned<String>, RawUpstream)>,
    ) -> BTreeMap<String, Upstream> {
        let mut out = BTreeMap::new();
        for (name, u) in raw {
            if !valid_name(name.get_ref()) {
                let hint = Some("use letters, digits, `-` and `_`".to_string());
                self.err_at(
                    &name,
                    format!("bad upstream name `{}`", name.get_ref()),
                    hint,
                );
            }
            let lambda = match u.kind.as_ref().map(|k| k.get_ref().as_str()) {
                None | Some("http") => false,
                Some("lambda") => true,
                Some(other) => {
                    let kind = u.kind.as_ref().expect("matched Some");
                    self.err_at(
                        kind,
                        format!("unknown upstream kind `{other}`"),
                        Some("use `http` or `lambda`".into()),
                    );
                    false
                }
            };
            let target = if lambda {
                self.lambda_target(&name, &u)
            } else {
                for (key, field) in [
                    ("function", &u.function),
                    ("qualifier", &u.qualifier),
                    ("region", &u.region),
                    ("payload", &u.payload),
                    ("endpoint", &u.endpoint),
                ] {
                    if let Some(f) = field {
                        self.err_at(
                            f,
                            format!("`{key}` applies to `kind = \"lambda\"` upstreams only"),
                            None,
                        );
                    }
                }
                match (&u.addresses, &u.url) {
                    (Some(_), Some(url)) => {
                        self.err_at(url, "set `addresses` or `url`, not both", None);
                        None
                    }
                    (None, None) => {
                        let hint = Some("add `addresses = [\"127.0.0.1:8081\"]` or `url = \"https://host/base\"`".into());
                        self.err_at(
                            &name,
                            format!("upstream `{}` has no `addresses` or `url`", name.get_ref()),
                            hint,
                        );
                        None
                    }
                    (Some(addrs), None) => self.addresses(addrs),
                    (None, Some(url)) => self.url(url),
                }
            };
            let health_check_path = u.health_check_path.as_ref().map(|p| {
                if !p.get_ref().starts_with('/') {
                    self.err_at(p, "`health-check-path` must start with `/`", None);
                }
                p.get_ref().clone()
            });
            let ca_file = u.ca_file.as_ref().map(|f| {
                let path = self.base.join(f.get_ref());
                if let Err(e) = crate::upstream::load_ca(&path) {
                    self.err_at(
                        f,
                        format!("bad `ca-file`: {e}"),
                        Some("give a PEM file with one or more CERTIFICATE blocks".into()),
                    );
                }
                if !matches!(target, Some(Target::Url { tls: true, .. })) {
                    self.err_at(f, "`ca-file` only applies to an `https://` url", None);
                }
                path
            });
            let sigv4 = u.sigv4.as_ref().and_then(|sig| {
                let raw = sig.get_ref();
                if !matches!(raw.service.get_ref().as_str(), "execute-api" | "lambda") {
                    let hint = Some(
                        "use `execute-api` for API Gateway or `lambda` for a Function URL".into(),
                    );
                    self.err_at(
                        &raw.service,
                        format!("unknown sigv4 service `{}`", raw.service.get_ref()),
                        hint,
                    );
                }
                if !matches!(target, Some(Target::Url { .. })) {
                    self.err_at(sig, "`sigv4` applies to an upstream with a `url`", None);
                    return None;
                }
                if ca_file.is_some() {
                    self.err_at(
                        sig,
                        "`sigv4` upstreams use the system's CA roots: drop `ca-file`",
                        None,
                    );
                }
                Some(Sigv4 {
                    service: raw.service.get_ref().clone(),
                    region: raw.region.get_ref().clone(),
                })
            });
            let upstream = Upstream {
                name: name.get_ref().clone(),
                target: target.unwrap_or(Target::Addresses(Vec::new())),
                ca_file,
                sigv4,
                connect_timeout: self.duration(
                    &u.connect_timeout,
                    "connect-timeout",
                    Duration::from_secs(2),
                ),
                timeout: self.duration(&u.timeout, "timeout", Duration::from_secs(30)),
                idle_timeout: self.duration(
                    &u.idle_timeout,
                    "idle-timeout",
                    Duration::from_secs(60),
                ),
                health_check_interval: self.duration(
                    &u.health_check_interval,
                    "health-check-interval",
                    Duration::from_secs(2),
                ),
                health_check_path,
                retries: self.count(&u.retries, "retries", 0, 5, 1),
                max_in_flight: u
                    .max_in_flight
                    .as_ref()
                    .map(|_| self.count(&u.max_in_flight, "max-in-flight", 1, 1_000_000, 1)),
                queue_timeout: self.duration(
                    &u.queue_timeout,
                    "queue-timeout",
                    Duration::from_secs(1),
                ),
                response_timeout: self.optional_duration(&u.response_timeout, "response-timeout"),
                request_timeout: self.optional_duration(&u.request_timeout, "request-timeout"),
                max_response_header_bytes: self.count(
                    &u.max_response_header_bytes,
                    "max-response-header-bytes",
                    1024,
                    1 << 20,
                    64 * 1024,
                ),
                max_fails: self.count(&u.max_fails, "max-fails", 0, 1000, 3),
                fail_timeout: self.duration(
                    &u.fail_timeout,
                    "fail-timeout",
                    Duration::from_secs(10),
                ),
            };
            if out.insert(name.get_ref().clone(), upstream).is_some() {
                self.err_at(
                    &name,
                    format!("upstream `{}` is defined twice", name.get_ref()),
                    None,
                );
            }
        }
        out
    }

    fn lambda_target(&mut self, name: &Spanned<String>, u: &RawUpstream) -> Option<Target> {
        for (key, field) in [
            ("url", u.url.is_some()),
            ("addresses", u.addresses.is_some()),
            ("health-check-path", u.health_check_path.is_some()),
        ] {
            if field {
                self.err_at(
                    name,
                    format!("`{key}` does not apply to a lambda upstream"),
                    Some("a lambda upstream names a `function` (and `region`)".into()),
                );
            }
        }
        if let Some(sig) = &u.sigv4 {
            self.err_at(
                sig,
                "`sigv4` does not apply to a lambda upstream: Invoke calls are always signed",
                None,
            );
        }
        let Some(function) = &u.function else {
            self.err_at(
                name,
                format!("lambda upstream `{}` has no `function`", name.get_ref()),
                Some("add `function = \"NAME\"` (a name or an ARN)".into()),
            );
            return None;
        };
        let region = match &u.region {
            Some(r) => r.get_ref().clone(),
            None => {
                match std::env::var("AWS_REGION").or_else(|_| std::env::var("AWS_DEFAULT_REGION")) {
                    Ok(r) => r,
                    Err(_) => {
                        self.err_at(
                            name,
                            format!("lambda upstream `{}` has no `region`", name.get_ref()),
                            Some("add `region = \"eu-west-1\"` or set AWS_REGION".into()),
                        );
                        return None;
                    }
                }
            }
        };
        let payload = match &u.payload {
            None => Payload::ApigwV2,
            Some(p) => match Payload::parse(p.get_ref()) {
                Some(p) => p,
                None => {
                    self.err_at(
                        p,
                        format!("unknown payload `{}`", p.get_ref()),
                        Some("use `apigw-v2` (default), `apigw-v1` or `alb`".into()),
                    );
                    return None;
                }
            },
        };
        if let Some(e) = &u.endpoint {
            let ok = e.get_ref().parse::<http::Uri>().is_ok_and(|uri| {
                matches!(uri.scheme_str(), Some("http" | "https"))
                    && uri.host().is_some()
                    && uri.path().trim_matches('/').is_empty()
            });
            if !ok {
                self.err_at(
                    e,
                    format!("bad endpoint `{}`", e.get_ref()),
                    Some(
                        "write `http://127.0.0.1:9000` or `https://lambda.eu-west-1.amazonaws.com`"
                            .into(),
                    ),
                );
            }
        }
        Some(Target::Lambda(LambdaTarget {
            function: function.get_ref().clone(),
            qualifier: u.qualifier.as_ref().map(|q| q.get_ref().clone()),
            region,
            payload,
            endpoint: u
                .endpoint
                .as_ref()
                .map(|e| e.get_ref().trim_end_matches('/').to_string()),
        }))
    }

    fn addresses(&mut self, addrs: &Spanned<Vec<Spanned<String>>>) -> Option<Target> {
        if addrs.get_ref().is_empty() {
            self.err_at(
                addrs,
                "`addresses` is empty",
                Some("list at least one `host:port`".into()),
            );
            return None;
        }
        let mut ok = true;
        for a in addrs.get_ref() {
            let valid = a.get_ref().rsplit_once(':').is_some_and(|(host, port)| {
                !host.is_empty() && port.parse::<u16>().is_ok_and(|p| p > 0)
            });
            if !valid {
                let hint = Some(
                    "write `host:port`, e.g. `127.0.0.1:8081`; for a URL use `url = ...`".into(),
                );
                self.err_at(a, format!("bad address `{}`", a.get_ref()), hint);
                ok = false;
            }
        }
        ok.then(|| {
            Target::Addresses(
                addrs
                    .get_ref()
                    .iter()
                    .map(|a| a.get_ref().clone())
                    .collect(),
            )
        })
    }

    fn url(&mut self, url: &Spanned<String>) -> Option<Target> {
        let text = url.get_ref();
        let parsed = text
            .parse::<http::Uri>()
            .ok()
            .filter(|u| u.host().is_some());
        let Some(uri) = parsed else {
            self.err_at(
                url,
                format!("bad url `{text}`"),
                Some("write `https://host[:port][/base-path]`".into()),
            );
            return None;
        };
        let tls = match uri.scheme_str() {
            Some("https") => true,
            Some("http") => false,
            _ => {
                self.err_at(
                    url,
                    format!("url `{text}` must start with http:// or https://"),
                    None,
                );
                return None;
            }
        };
        if uri.query().is_some() {
            self.err_at(url, "an upstream url cannot have a query string", None);
        }
        let base_path = uri.path().trim_end_matches('/').to_string();
        Some(Target::Url {
            tls,
            host: uri
                .host()
                .unwrap_or_default()
                .trim_matches(['[', ']'])
                .to_string(),
            port: uri.port_u16().unwrap_or(if tls { 443 } else { 80 }),
            base_path,
        })
    }

    fn check_upstream_ref(
        &mut self,
        name: &Spanned<String>,
        upstreams: &BTreeMap<String, Upstream>,
    ) {
        if !upstreams.contains_key(name.get_ref()) {
            let known: Vec<&str> = upstreams.keys().map(String::as_str).collect();
            let hint = if known.is_empty() {
                "no upstreams are defined: add an [upstreams.NAME] table".to_string()
            } else {
                format!("known upstreams: {}", known.join(", "))
            };
            self.err_at(
                name,
                format!("unknown upstream `{}`", name.get_ref()),
                Some(hint),
            );
        }
    }

    fn auths(&mut self, raw: Vec<(Spanned<String>, RawAuth)>) -> BTreeMap<String, AuthConfig> {
        use std::str::FromStr;
        let mut out = BTreeMap::new();
        for (name, a) in raw {
            let n = name.get_ref().clone();
            if !valid_name(&n) {
                self.err_at(
                    &name,
                    format!("bad auth name `{n}`"),
                    Some("use letters, digits, `-` and `_`".into()),
                );
            }
            let keys: Vec<PathBuf> = a.keys.as_ref().map_or_else(Vec::new, |k| {
                k.get_ref()
                    .iter()
                    .map(|p| self.base.join(p.get_ref()))
                    .collect()
            });
            match (&a.jwks_url, &a.keys) {
                (Some(u), Some(_)) => self.err_at(u, "set `jwks-url` or `keys`, not both", None),
                (None, None) => self.err_at(
                    &name,
                    format!("auth `{n}` has no keys"),
                    Some("add `jwks-url = \"https://issuer/.well-known/jwks.json\"` or `keys = [\"public.pem\"]`".into()),
                ),
                (Some(u), None) => match u.get_ref().parse::<http::Uri>() {
                    Ok(uri) if uri.scheme_str() == Some("https") && uri.host().is_some() => {}
                    // Plain HTTP lets anyone on the path swap the keys and mint tokens; local
                    // issuers (sidecars, tests) on the loopback are the one exception.
                    Ok(uri) if uri.scheme_str() == Some("http") && uri.host().is_some_and(is_loopback_host) => {}
                    Ok(uri) if uri.scheme_str() == Some("http") && uri.host().is_some() => self.err_at(
                        u,
                        format!("jwks-url `{}` is plain http", u.get_ref()),
                        Some("keys fetched without TLS can be replaced by anyone on the path, who can then mint tokens: use https (plain http is allowed only for loopback issuers)".into()),
                    ),
                    _ => self.err_at(u, format!("bad jwks-url `{}`", u.get_ref()), None),
                },
                (None, Some(k)) => {
                    for (path, raw) in keys.iter().zip(k.get_ref()) {
                        if let Err(e) = read::read_text(path) {
                            self.err_at(raw, format!("bad key file: {e}"), None);
                        }
                    }
                }
            }
            let issuer = a
                .issuer
                .as_ref()
                .map(|i| i.get_ref().clone())
                .unwrap_or_default();
            if issuer.is_empty() {
                self.err_at(
                    &name,
                    format!("auth `{n}` has no `issuer`"),
                    Some("tokens are only accepted from a named issuer".into()),
                );
            }
            let audiences: Vec<String> = a.audiences.as_ref().map_or_else(Vec::new, |v| {
                v.get_ref().iter().map(|s| s.get_ref().clone()).collect()
            });
            if audiences.is_empty() {
                self.err_at(
                    &name,
                    format!("auth `{n}` has no `audiences`"),
                    Some("list the audiences tokens must be issued for".into()),
                );
            }
            let mut algorithms = Vec::new();
            match &a.algorithms {
                None => self.err_at(
                    &name,
                    format!("auth `{n}` has no `algorithms`"),
                    Some("list the allowed algorithms explicitly, e.g. [\"RS256\"]".into()),
                ),
                Some(list) => {
                    for alg in list.get_ref() {
                        match jsonwebtoken::Algorithm::from_str(alg.get_ref()) {
                            Ok(jsonwebtoken::Algorithm::HS256 | jsonwebtoken::Algorithm::HS384 | jsonwebtoken::Algorithm::HS512) => self.err_at(
                                alg,
                                format!("symmetric algorithm `{}` is not allowed", alg.get_ref()),
                                Some("use a public-key algorithm: RS256, PS256, ES256, EdDSA...".into()),
                            ),
                            Ok(a) => algorithms.push(a),
                            Err(_) => self.err_at(alg, format!("unknown algorithm `{}`", alg.get_ref()), Some("RS256, RS384, RS512, PS256, PS384, PS512, ES256, ES384 or EdDSA".into())),
                        }
                    }
                    if list.get_ref().is_empty() {
                        self.err_at(list, "`algorithms` is empty", None);
                    }
                }
            }
            let mut forward_claims = Vec::new();
            if let Some(fc) = &a.forward_claims {
                for (claim, header) in fc.get_ref() {
                    match HeaderName::from_bytes(header.get_ref().as_bytes()) {
                        Ok(h) => forward_claims.push((claim.clone(), h)),
                        Err(_) => self.err_at(
                            header,
                            format!("bad header name `{}`", header.get_ref()),
                            None,
                        ),
                    }
                }
            }
            let require = a.require.as_ref().map_or_else(Vec::new, |r| {
                r.get_ref()
                    .iter()
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect()
            });
            let leeway = self.duration(&a.leeway, "leeway", Duration::from_secs(30));
            if leeway > Duration::from_secs(300) {
                if let Some(l) = &a.leeway {
                    self.err_at(l, "`leeway` over 5m would accept long-expired tokens", None);
                }
            }
            out.insert(
                n.clone(),
                AuthConfig {
                    name: n,
                    jwks_url: a.jwks_url.as_ref().map(|u| u.get_ref().clone()),
                    key_files: keys,
                    issuer,
                    audiences,
                    algorithms,
                    leeway,
                    cookie: a.cookie.as_ref().map(|c| c.get_ref().clone()),
                    forward_claims,
                    require,
                    jwks_refresh: self.duration(
                        &a.jwks_refresh,
                        "jwks-refresh",
                        Duration::from_secs(300),
                    ),
                    jwks_max_stale: self.duration(
                        &a.jwks_max_stale,
                        "jwks-max-stale",
                        Duration::from_secs(3600),
                    ),
                    unknown_kid_cooldown: self.duration(
                        &a.unknown_kid_cooldown,
                        "unknown-kid-cooldown",
                        Duration::from_secs(30),
                    ),
                    token_cache: self.count(&a.token_cache, "token-cache", 0, 1_000_000, 10_000),
                },
            );
        }
        out
    }

    fn routes(
        &mut self,
        raw: Vec<RawRoute>,
        upstreams: &BTreeMap<String, Upstream>,
        auth: &BTreeMap<String, AuthConfig>,
    ) -> (Vec<Route>, Vec<usize>) {
        let mut out: Vec<Route> = Vec::new();
        let mut id_spans = Vec::new();
        // Earlier routes by path and match kind: only those can shadow a later one, so the
        // check stays linear in the number of routes.
        let mut same_path: HashMap<(String, PathMatch), Vec<usize>> = HashMap::new();
        let mut ids: BTreeMap<String, usize> = BTreeMap::new();
        for r in raw {
            let id = r.id.get_ref().clone();
            if !valid_name(&id) {
                self.err_at(
                    &r.id,
                    format!("bad route id `{id}`"),
                    Some("use letters, digits, `-` and `_`".into()),
                );
            }
            if ids.insert(id.clone(), out.len()).is_some() {
                let hint = Some(
                    "route ids name routes in metrics, logs and the CLI: make each unique".into(),
                );
                self.err_at(&r.id, format!("route id `{id}` is used twice"), hint);
            }
            let path = r.path.get_ref().clone();
            match routing::canonicalize(&path, routing::PathParams::Keep) {
                Ok(p) if p == path && (path == "/" || !path.ends_with('/')) => {}
                _ => {
                    let hint = Some("write a clean absolute path like `/bookings`: no `//`, `.`, `..`, `%2F` or trailing `/`".into());
                    self.err_at(&r.path, format!("bad route path `{path}`"), hint);
                }
            }
            let kind = match r.match_.as_ref().map(|m| m.get_ref().as_str()) {
                None | Some("prefix") => PathMatch::Prefix,
                Some("exact") => PathMatch::Exact,
                Some(other) => {
                    let m = r.match_.as_ref().expect("matched Some");
                    self.err_at(
                        m,
                        format!("unknown match `{other}`"),
                        Some("use `prefix` (default) or `exact`".into()),
                    );
                    PathMatch::Prefix
                }
            };
            let methods = r.methods.as_ref().map(|ms| {
                if ms.get_ref().is_empty() {
                    self.err_at(
                        ms,
                        "`methods` is empty",
                        Some("omit `methods` to match every method".into()),
                    );
                }
                ms.get_ref()
                    .iter()
                    .filter_map(|m| {
                        let upper = m.get_ref().to_ascii_uppercase();
                        match Method::from_bytes(upper.as_bytes()) {
                            Ok(method) => Some(method),
                            Err(_) => {
                                self.err_at(m, format!("bad method `{}`", m.get_ref()), None);
                                None
                            }
                        }
                    })
                    .collect::<Vec<_>>()
            });
            for side in [&r.legacy, &r.new].into_iter().flatten() {
                self.check_upstream_ref(side, upstreams);
            }
            if r.legacy.is_none() && r.new.is_none() {
                let hint = Some("set `legacy = \"monolith\"`, `new = \"...\"` or both".into());
                self.err_at(
                    &r.id,
                    format!("route `{id}` has neither `legacy` nor `new`"),
                    hint,
                );
            }
            let shift = match &r.shift {
                None if r.legacy.is_none() => Shift::ALL,
                None => Shift::ZERO,
                Some(s) => match Shift::parse(&s.get_ref().as_text()) {
                    Ok(shift) => shift,
                    Err(e) => {
                        self.err_at(s, e.to_string(), None);
                        Shift::ZERO
                    }
                },
            };
            let has_a_side = r.legacy.is_some() || r.new.is_some();
            if has_a_side && r.new.is_none() && shift != Shift::ZERO {
                let at = r
                    .shift
                    .as_ref()
                    .map_or(r.id.span().start, |s| s.span().start);
                self.error(
                    at,
                    format!(
                        "route `{id}` shifts {shift} to the new side but has no `new` upstream"
                    ),
                    None,
                );
            }
            if has_a_side && r.legacy.is_none() && shift != Shift::ALL {
                let at = r
                    .shift
                    .as_ref()
                    .map_or(r.id.span().start, |s| s.span().start);
                self.error(
                    at,
                    format!(
                        "route `{id}` keeps {} on the legacy side but has no `legacy` upstream",
                        Shift::from_bp(10_000 - shift.bp()).unwrap_or_default()
                    ),
                    None,
                );
            }
            let sticky = match &r.sticky {
                None => StickyKey::None,
                Some(s) => StickyKey::parse(s.get_ref()).unwrap_or_else(|e| {
                    self.err_at(s, e, None);
                    StickyKey::None
                }),
            };
            if let Some(a) = &r.auth {
                if !auth.contains_key(a.get_ref()) {
                    let known: Vec<&str> = auth.keys().map(String::as_str).collect();
                    let hint = if known.is_empty() {
                        "no auth is defined: add an [auth.NAME] section".to_string()
                    } else {
                        format!("known auth sections: {}", known.join(", "))
                    };
                    self.err_at(a, format!("unknown auth `{}`", a.get_ref()), Some(hint));
                }
            }
            if let (StickyKey::Jwt(claim), None) = (&sticky, &r.auth) {
                let at = r.sticky.as_ref().map_or(0, |s| s.span().start);
                self.error(at, format!("`sticky = \"jwt:{claim}\"` needs `auth` on the route: only verified claims key the split"), None);
            }
            let rate_limit = r.rate_limit.as_ref().map(|rl| {
                let raw = rl.get_ref();
                let requests =
                    self.count(&Some(raw.requests.clone()), "requests", 1, 1_000_000_000, 1) as u32;
                let per = self.duration(&raw.per, "per", Duration::from_secs(1));
                if per.is_zero() {
                    if let Some(p) = &raw.per {
                        self.err_at(p, "`per` must be longer than zero", None);
                    }
                }
                let burst = match &raw.burst {
                    Some(_) => self.count(&raw.burst, "burst", 1, 1_000_000_000, 1) as u32,
                    None => requests,
                };
                let key = match &raw.key {
                    None => StickyKey::Ip,
                    Some(k) => StickyKey::parse(k.get_ref()).unwrap_or_else(|e| {
                        self.err_at(k, e.replace("sticky key", "rate-limit key"), None);
                        StickyKey::Ip
                    }),
                };
                if let (StickyKey::Jwt(claim), None) = (&key, &r.auth) {
                    self.err_at(
                        rl,
                        format!("`key = \"jwt:{claim}\"` needs `auth` on the route"),
                        None,
                    );
                }
                let ipv4_prefix = match &raw.ipv4_prefix {
                    Some(_) => self.count(&raw.ipv4_prefix, "ipv4-prefix", 1, 32, 32) as u8,
                    None => 32,
                };
                let ipv6_prefix = match &raw.ipv6_prefix {
                    Some(_) => self.count(&raw.ipv6_prefix, "ipv6-prefix", 1, 128, 64) as u8,
                    None => 64,
                };
                let max_keys = match &raw.max_keys {
                    Some(_) => self.count(&raw.max_keys, "max-keys", 1024, 100_000_000, 100_000),
                    None => 100_000,
                };
                RateLimit {
                    requests,
                    per,
                    burst,
                    key,
                    ipv4_prefix,
                    ipv6_prefix,
                    max_keys,
                }
            });
            let mut claim_rule = |rule: &Option<Spanned<RawClaimRule>>, key: &str| {
                let rule = rule.as_ref()?;
                if r.auth.is_none() {
                    self.err_at(
                        rule,
                        format!("`{key}` needs `auth` on the route: only verified claims count"),
                        None,
                    );
                }
                Some(ClaimRule {
                    claim: rule.get_ref().claim.get_ref().clone(),
                    equals: rule.get_ref().equals.clone(),
                })
            };
            let new_when = claim_rule(&r.new_when, "new-when");
            let override_when = claim_rule(&r.override_when, "override-when");
            if r.override_when.is_some() && !r.override_.as_ref().is_some_and(|o| *o.get_ref()) {
                if let Some(o) = &r.override_when {
                    self.err_at(
                        o,
                        "`override-when` has no effect without `override = true`",
                        None,
                    );
                }
            }
            let case_insensitive = r.case_insensitive.as_ref().is_some_and(|v| *v.get_ref());
            let trailing_slash = r.trailing_slash.as_ref().is_some_and(|v| *v.get_ref());
            if let (Some(t), PathMatch::Prefix) = (&r.trailing_slash, kind) {
                if *t.get_ref() {
                    self.err_at(
                        t,
                        "`trailing-slash` is for exact routes",
                        Some(
                            "a prefix route already matches `PATH/` and everything under it".into(),
                        ),
                    );
                }
            }
            let route = Route {
                case_insensitive,
                trailing_slash,
                new_when,
                override_when,
                rate_limit,
                auth: r.auth.as_ref().map(|a| a.get_ref().clone()),
                id,
                path,
                kind,
                methods,
                legacy: r.legacy.map(Spanned::into_inner),
                new: r.new.map(Spanned::into_inner),
                shift,
                sticky,
                allow_override: r.override_.is_some_and(|o| *o.get_ref()),
            };
            let key = route.key();
            let earlier = same_path
                .entry((key.path.to_ascii_lowercase(), key.kind))
                .or_default();
            if let Some(earlier) = earlier
                .iter()
                .map(|&i| &out[i])
                .find(|o| o.key().shadows(&key))
            {
                let hint = Some(format!(
                    "route `{}` already takes every request for `{}`; give the methods apart or remove one",
                    earlier.id, route.path
                ));
                self.err_at(
                    &r.path,
                    format!(
                        "route `{}` overlaps route `{}` and can never match",
                        route.id, earlier.id
                    ),
                    hint,
                );
            }
            earlier.push(out.len());
            out.push(route);
            id_spans.push(r.id.span().start);
        }
        (out, id_spans)
    }
}

impl Cx<'_> {
    /// A route with `auth` in front of a default upstream is only as strong as its spelling:
    /// a spelling the route does not match falls through to the default without auth, and the
    /// monolith may serve it as the same resource.
    fn warn_bypassable_routes(&mut self, routes: &[Route], id_spans: &[usize], server: &Server) {
        let Some(default) = &server.default else {
            return;
        };
        for (r, &at) in routes
            .iter()
            .zip(id_spans)
            .filter(|(r, _)| r.auth.is_some())
        {
            let mut spellings = Vec::new();
            if !r.case_insensitive && r.path.bytes().any(|b| b.is_ascii_alphabetic()) {
                spellings.push(format!("`{}`", r.path.to_ascii_uppercase()));
            }
            if r.kind == PathMatch::Exact {
                if !r.trailing_slash && r.path != "/" {
                    spellings.push(format!("`{}/`", r.path));
                }
                spellings.push(format!("`{}.`", r.path));
            }
            if spellings.is_empty() {
                continue;
            }
            let mut fixes = Vec::new();
            if !r.case_insensitive {
                fixes.push("`case-insensitive = true` if the monolith ignores case");
            }
            if r.kind == PathMatch::Exact {
                fixes.push("`trailing-slash = true` or a prefix route if it ignores a trailing `/`, and a route for the other spellings it accepts");
            }
            self.warn(
                at,
                format!(
                    "route `{}` has auth, but {} miss it and reach the default upstream `{default}` without a token",
                    r.id,
                    spellings.join(", ")
                ),
                Some(format!("set {}", fixes.join("; "))),
            );
        }
    }
}

/// Whether a URL host is on the loopback (where plain http cannot be intercepted).
fn is_loopback_host(host: &str) -> bool {
    host.eq_ignore_ascii_case("localhost")
        || host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

fn valid_name(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
}

/// Replaces `${env:NAME}` and `${file:PATH}` in a string. The message on failure never contains
/// a resolved value.
pub fn interpolate(text: &str, base: &Path) -> Result<String, String> {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(start) = rest.find("${") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let end = after
            .find('}')
            .ok_or_else(|| "unclosed `${` in string".to_string())?;
        let reference = &after[..end];
        match reference.split_once(':') {
            Some(("env", name)) => match std::env::var(name) {
                Ok(v) => out.push_str(&v),
                Err(_) => return Err(format!("environment variable `{name}` is not set")),
            },
            Some(("file", p)) => {
                let path = base.join(p);
                let v = read::read_text(&path).map_err(|e| e.to_string())?;
                out.push_str(v.trim_end_matches(['\n', '\r']));
            }
            _ => {
                return Err(format!(
                    "unknown reference `${{{reference}}}`: use `${{env:NAME}}` or `${{file:PATH}}`"
                ))
            }
        }
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

#[cfg(test)]
mod tests;
