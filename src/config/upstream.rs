//! Lowering `[upstreams.NAME]`: HTTP addresses or a URL, a Lambda function, and the settings
//! both share.

use std::collections::BTreeMap;
use std::time::Duration;

use toml::Spanned;

use super::raw::RawUpstream;
use super::{inputs, pem};
use super::{valid_name, Cx, LambdaTarget, Payload, Sigv4, Target, Upstream};

impl Cx<'_> {
    pub(super) fn upstreams(
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
            let lambda = match u.kind.as_ref().map(|kind| (kind, kind.get_ref().as_str())) {
                None | Some((_, "http")) => false,
                Some((_, "lambda")) => true,
                Some((kind, other)) => {
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
            let mut ca_certs = Vec::new();
            let ca_file = u.ca_file.as_ref().map(|f| {
                let path = self.base.join(f.get_ref());
                let certs = inputs::bytes(self.inputs, &path)
                    .and_then(|pem| pem::certificates(&pem, &path));
                match certs {
                    Ok(certs) => ca_certs = certs,
                    Err(e) => self.err_at(
                        f,
                        format!("bad `ca-file`: {e}"),
                        Some("give a PEM file with one or more CERTIFICATE blocks".into()),
                    ),
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
                ca_certs,
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

    pub(super) fn lambda_target(
        &mut self,
        name: &Spanned<String>,
        u: &RawUpstream,
    ) -> Option<Target> {
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
                let from_env = self.inputs.var("AWS_REGION");
                match from_env.or_else(|| self.inputs.var("AWS_DEFAULT_REGION")) {
                    Some(r) => r,
                    None => {
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

    pub(super) fn addresses(&mut self, addrs: &Spanned<Vec<Spanned<String>>>) -> Option<Target> {
        if addrs.get_ref().is_empty() {
            self.err_at(
                addrs,
                "`addresses` is empty",
                Some("list at least one `host:port`".into()),
            );
            return None;
        }
        let mut ok = true;
        for (i, a) in addrs.get_ref().iter().enumerate() {
            let valid = a.get_ref().rsplit_once(':').is_some_and(|(host, port)| {
                valid_host(host) && port.parse::<u16>().is_ok_and(|p| p > 0)
            });
            if !valid {
                let hint = Some(
                    "write `host:port` (a DNS name, an IPv4 address or a bracketed IPv6 one, e.g. `127.0.0.1:8081`, `[::1]:8081`, `bookings.shop.svc:8080`); for a URL use `url = ...`".into(),
                );
                self.err_at(a, format!("bad address `{}`", a.get_ref()), hint);
                ok = false;
            } else if addrs.get_ref()[..i]
                .iter()
                .any(|b| b.get_ref() == a.get_ref())
            {
                self.warn(
                    a.span().start,
                    format!(
                        "`{}` is listed twice: it gets no more traffic for it",
                        a.get_ref()
                    ),
                    None,
                );
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

    pub(super) fn url(&mut self, url: &Spanned<String>) -> Option<Target> {
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

    pub(super) fn check_upstream_ref(
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
}

/// Whether `host` (of a `host:port` address) can name a peer: an IPv4 address, a bracketed
/// IPv6 address, or a DNS name (labels of letters, digits, `-` and `_`, none empty or over 63
/// bytes, a final dot allowed). Anything else would only show as 502s at run time.
fn valid_host(host: &str) -> bool {
    if let Some(v6) = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
        return v6.parse::<std::net::Ipv6Addr>().is_ok();
    }
    let name = host.strip_suffix('.').unwrap_or(host);
    !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        })
}
