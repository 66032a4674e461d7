//! Lowering `[[server.tls]]`: TLS listeners, the certificates they serve (checked here with the
//! bytes the inputs read; the TLS runtime re-reads the files when they change), ALPN, the
//! lowest protocol version and the handshake deadline.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use toml::Spanned;

use super::raw::{RawCertPair, RawTls, S};
use super::Cx;

/// One `[[server.tls]]` table.
#[derive(Debug, Clone, PartialEq)]
pub struct Tls {
    pub listen: Vec<SocketAddr>,
    /// The certificates, the default (for clients that send no name, or one no certificate
    /// covers) first: `cert`/`key` when given, else the first of `certs`.
    pub pairs: Vec<CertFiles>,
    /// Offer `h2` in ALPN (HTTP/2).
    pub h2: bool,
    /// Offer `http/1.1` in ALPN.
    pub http11: bool,
    /// TLS 1.3 only (`min-version = "1.3"`); else 1.2 and 1.3.
    pub tls13_only: bool,
    /// How long a client has to finish its handshake.
    pub handshake_timeout: Duration,
}

/// A certificate chain file and its key file, resolved against the config's directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// Whether two listening addresses cannot both be bound: the same port, and the same address
/// or either of them every address (`0.0.0.0`, `[::]`, which on Linux also takes IPv4's).
pub(super) fn clash(a: &SocketAddr, b: &SocketAddr) -> bool {
    // `[::ffff:127.0.0.1]` is `127.0.0.1`; port 0 is a new port each time.
    let (x, y) = (crate::net::unmap(a.ip()), crate::net::unmap(b.ip()));
    a.port() == b.port() && a.port() != 0 && (x == y || x.is_unspecified() || y.is_unspecified())
}

impl Cx<'_> {
    pub(super) fn tls_listeners(&mut self, raw: Vec<S<RawTls>>, plain: &[SocketAddr]) -> Vec<Tls> {
        let mut taken: Vec<SocketAddr> = plain.to_vec();
        let mut out = Vec::new();
        for table in raw {
            let at = table.span().start;
            let t = table.into_inner();
            let listen = self.tls_listen(&t, at, &mut taken);
            let pairs = self.tls_pairs(&t, at);
            let (h2, http11) = self.alpn(&t.alpn);
            let tls13_only = match t.min_version.as_ref().map(|v| (v, v.get_ref().as_str())) {
                None | Some((_, "1.2")) => false,
                Some((_, "1.3")) => true,
                Some((v, other)) => {
                    let hint = Some("write `1.2` (1.2 and 1.3, the default) or `1.3`".into());
                    self.err_at(v, format!("unknown TLS `min-version` `{other}`"), hint);
                    false
                }
            };
            let handshake_timeout = self.duration(
                &t.handshake_timeout,
                "handshake-timeout",
                Duration::from_secs(10),
            );
            if let (Some(v), true) = (&t.handshake_timeout, handshake_timeout.is_zero()) {
                let hint = Some("leave it out for the default, 10s".into());
                self.err_at(v, "`handshake-timeout` must be more than 0", hint);
            }
            out.push(Tls {
                listen,
                pairs,
                h2,
                http11,
                tls13_only,
                handshake_timeout,
            });
        }
        out
    }

    fn tls_listen(
        &mut self,
        t: &RawTls,
        at: usize,
        taken: &mut Vec<SocketAddr>,
    ) -> Vec<SocketAddr> {
        let Some(listen) = &t.listen else {
            let hint = Some("e.g. `listen = [\"0.0.0.0:8443\"]`".into());
            self.error(at, "a `[[server.tls]]` listener needs `listen`", hint);
            return Vec::new();
        };
        if listen.get_ref().is_empty() {
            self.err_at(listen, "`listen` of a TLS listener is empty", None);
        }
        let mut addrs = Vec::new();
        for a in listen.get_ref() {
            match a.get_ref().parse::<SocketAddr>() {
                Ok(addr) if taken.iter().any(|t| clash(t, &addr)) => self.err_at(
                    a,
                    format!("`{addr}` is already in use by a listener: one address, one listener"),
                    None,
                ),
                Ok(addr) => {
                    taken.push(addr);
                    addrs.push(addr);
                }
                Err(_) => {
                    let hint = Some("write `IP:PORT`, e.g. `0.0.0.0:8443`".into());
                    self.err_at(a, format!("bad listen address `{}`", a.get_ref()), hint);
                }
            }
        }
        addrs
    }

    /// The pairs, each read and checked now: a listener never starts with a certificate a
    /// client would refuse.
    fn tls_pairs(&mut self, t: &RawTls, at: usize) -> Vec<CertFiles> {
        let mut raw: Vec<(&Spanned<String>, &Spanned<String>)> = Vec::new();
        match (&t.cert, &t.key) {
            (Some(c), Some(k)) => raw.push((c, k)),
            (Some(c), None) => self.err_at(c, "`cert` without `key`", None),
            (None, Some(k)) => self.err_at(k, "`key` without `cert`", None),
            (None, None) => {}
        }
        if let Some(list) = &t.certs {
            raw.extend(
                list.get_ref()
                    .iter()
                    .map(|p| -> (&Spanned<String>, &Spanned<String>) {
                        let RawCertPair { cert, key } = p.get_ref();
                        (cert, key)
                    }),
            );
        }
        if raw.is_empty() {
            let hint = Some(
                "give `cert` and `key`, or `certs = [{ cert = \"..\", key = \"..\" }]`".into(),
            );
            self.error(at, "a TLS listener needs a certificate", hint);
        }
        let mut names: Vec<(String, String)> = Vec::new();
        let mut pairs = Vec::new();
        for (i, (cert, key)) in raw.into_iter().enumerate() {
            let files = CertFiles {
                cert: self.base.join(cert.get_ref()),
                key: self.base.join(key.get_ref()),
            };
            let (c, k) = match (self.inputs.file(&files.cert), self.inputs.file(&files.key)) {
                (Ok(c), Ok(k)) => (c, k),
                (Err(e), _) => {
                    self.bad_pair(cert, e);
                    pairs.push(files);
                    continue;
                }
                (_, Err(e)) => {
                    self.bad_pair(key, e);
                    pairs.push(files);
                    continue;
                }
            };
            match crate::certs::parse(&c, &k, SystemTime::now()) {
                Ok(pair) => {
                    if pair.names.is_empty() && i > 0 {
                        self.warn(
                            cert.span().start,
                            format!(
                                "`{}` names no DNS name: no client's SNI picks it",
                                cert.get_ref()
                            ),
                            Some(
                                "only the first (default) certificate is served without a name"
                                    .into(),
                            ),
                        );
                    }
                    for n in pair.names {
                        if let Some((_, other)) = names.iter().find(|(m, _)| *m == n) {
                            let hint = Some("each name is served by one certificate".into());
                            let msg = format!("`{n}` is in `{}` and in `{other}`", cert.get_ref());
                            self.err_at(cert, msg, hint);
                        } else {
                            names.push((n, cert.get_ref().clone()));
                        }
                    }
                }
                Err(e) => {
                    let msg = format!("`{}` / `{}`: {e}", cert.get_ref(), key.get_ref());
                    self.bad_pair(cert, msg);
                }
            }
            pairs.push(files);
        }
        pairs
    }

    /// A pair that does not load: an error for the config a process starts with, a warning on
    /// a reload or an edit (the TLS runtime keeps the pair in force).
    fn bad_pair(&mut self, at: &Spanned<String>, message: String) {
        if self.tls_pairs_must_load {
            self.err_at(at, message, None);
        } else {
            let hint = Some("a running listener keeps the pair it loaded until the files load; a restart needs them right".into());
            self.warn(at.span().start, message, hint);
        }
    }

    fn alpn(&mut self, alpn: &Option<S<Vec<S<String>>>>) -> (bool, bool) {
        let Some(list) = alpn else {
            return (true, true);
        };
        let (mut h2, mut h1) = (false, false);
        for p in list.get_ref() {
            match p.get_ref().as_str() {
                "h2" => h2 = true,
                "http/1.1" => h1 = true,
                other => {
                    let hint = Some("offer `h2`, `http/1.1` or both".into());
                    self.err_at(p, format!("unknown ALPN protocol `{other}`"), hint);
                }
            }
        }
        if list.get_ref().is_empty() {
            self.err_at(
                list,
                "`alpn` is empty",
                Some("leave it out for `[\"h2\", \"http/1.1\"]`".into()),
            );
        }
        (h2, h1)
    }
}
