//! Lowering `[auth.NAME]`: where the keys come from and what a token must carry.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use http::header::HeaderName;
use toml::Spanned;

use super::inputs;
use super::raw::RawAuth;
use super::{valid_name, AuthConfig, Cx, KeyFile};

impl Cx<'_> {
    pub(super) fn auths(
        &mut self,
        raw: Vec<(Spanned<String>, RawAuth)>,
    ) -> BTreeMap<String, AuthConfig> {
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
            // Read here, once: the verifier parses what the config carries.
            let mut key_files = Vec::new();
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
                    for (path, raw) in keys.into_iter().zip(k.get_ref()) {
                        match inputs::text(self.inputs, &path) {
                            Ok(text) => key_files.push(KeyFile { path, text }),
                            Err(e) => self.err_at(raw, format!("bad key file: {e}"), None),
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
                    key_files,
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
