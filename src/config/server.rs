//! Lowering `[server]`, `[admin]` and `[log]`.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use toml::Spanned;

use super::raw::{RawAdmin, RawLog, RawServer};
use super::{AccessLog, Admin, Cx, Log, Server, Upstream, DEFAULT_ADMIN};
use crate::routing;

impl Cx<'_> {
    pub(super) fn server(
        &mut self,
        raw: RawServer,
        upstreams: &BTreeMap<String, Upstream>,
    ) -> Option<Server> {
        let listen = match raw.listen {
            Some(l) => l,
            None => vec![Spanned::new(0..0, "127.0.0.1:8080".to_string())],
        };
        let mut seen: Vec<SocketAddr> = Vec::new();
        for addr in &listen {
            if let Ok(a) = addr.get_ref().parse::<SocketAddr>() {
                if seen.iter().any(|s| super::tls::clash(s, &a)) {
                    let msg =
                        format!("`{a}` is already in use by a listener: one address, one listener");
                    self.err_at(addr, msg, None);
                }
                seen.push(a);
            }
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
        let plain: Vec<SocketAddr> = listen
            .iter()
            .filter_map(|a| a.get_ref().parse().ok())
            .collect();
        let tls = self.tls_listeners(raw.tls.unwrap_or_default(), &plain);
        let defaults = self.host_defaults(raw.defaults, upstreams);
        let compression = self.compression(&raw.compression);
        Some(Server {
            compression,
            defaults,
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
            path_params: match raw
                .path_parameters
                .as_ref()
                .map(|p| (p, p.get_ref().as_str()))
            {
                None | Some((_, "reject")) => routing::PathParams::Reject,
                Some((_, "keep")) => routing::PathParams::Keep,
                Some((p, other)) => {
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
            h2c: raw.h2c.as_ref().is_some_and(|b| *b.get_ref()),
            max_concurrent_streams: self.count(
                &raw.max_concurrent_streams,
                "max-concurrent-streams",
                1,
                10_000,
                100,
            ) as u32,
            tls,
        })
    }

    /// `[admin]`; `taken` are the proxy's listeners (plain and TLS), which it cannot share.
    pub(super) fn admin(&mut self, raw: RawAdmin, taken: &[SocketAddr]) -> Admin {
        let listen = match &raw.listen {
            None => DEFAULT_ADMIN,
            Some(l) => l.get_ref().parse::<SocketAddr>().unwrap_or_else(|_| {
                let hint = Some(format!("write `IP:PORT`, e.g. `{DEFAULT_ADMIN}`"));
                self.err_at(
                    l,
                    format!("bad admin listen address `{}`", l.get_ref()),
                    hint,
                );
                DEFAULT_ADMIN
            }),
        };
        if let (Some(l), true) = (
            &raw.listen,
            taken.iter().any(|t| super::tls::clash(t, &listen)),
        ) {
            self.err_at(
                l,
                format!("`{listen}` is already in use by a proxy listener: the admin API needs its own address"),
                None,
            );
        }
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
        let fleet = raw.fleet.as_ref().map(|f| self.fleet(f));
        let kubernetes = self.shift_target(&raw, fleet.as_ref());
        Admin {
            listen,
            token,
            fleet,
            kubernetes,
        }
    }

    /// Where lines go (`[log] access`, `[telemetry.emf] output`): stdout however it is spelled
    /// (two writers on one stdout would split each other's lines), or a file, its path made
    /// absolute and plain (`./a.log` and `a.log` are one file, and compare equal).
    pub(super) fn output(&self, path: &str) -> AccessLog {
        match path {
            "stdout" | "/dev/stdout" | "/dev/fd/1" | "/proc/self/fd/1" => AccessLog::Stdout,
            path => AccessLog::File(self.base.join(path).components().collect()),
        }
    }

    pub(super) fn log(&mut self, raw: RawLog) -> Log {
        let access = match &raw.access {
            None => AccessLog::Stdout,
            Some(a) => match a.get_ref().as_str() {
                "off" => AccessLog::Off,
                "" => {
                    self.err_at(
                        a,
                        "empty `access`",
                        Some("use `stdout`, `off` or a file path".into()),
                    );
                    AccessLog::Off
                }
                path => self.output(path),
            },
        };
        let json = match raw.format.as_ref().map(|f| (f, f.get_ref().as_str())) {
            None | Some((_, "text")) => false,
            Some((_, "json")) => true,
            Some((f, other)) => {
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
}
