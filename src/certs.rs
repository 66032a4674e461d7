//! A TLS listener's certificate chain and private key, from PEM bytes, checked the way a
//! client would find them wrong: no certificate or no key, a key that is not the
//! certificate's, a certificate not valid yet or no longer. What a chain serves (its DNS names,
//! for SNI) and until when comes with it.
//!
//! A leaf module with no I/O: the config lowering checks a pair with the bytes its inputs read,
//! and the TLS runtime (`tls`) loads the files again with it when they change.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::sign::CertifiedKey;

/// A chain and its key, ready for a handshake.
pub struct Pair {
    pub key: Arc<CertifiedKey>,
    /// The leaf's `subjectAltName` DNS names, lowercased, without a trailing dot
    /// (`*.example.com` kept as a wildcard). The subject's CN is not a name: clients ignore it.
    pub names: Vec<String>,
    /// The end of the leaf's validity, in seconds since the Unix epoch.
    pub not_after: i64,
}

impl std::fmt::Debug for Pair {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pair")
            .field("names", &self.names)
            .field("not_after", &self.not_after)
            .finish_non_exhaustive()
    }
}

/// Parses and checks a pair: `cert` holds the chain (leaf first), `key` the leaf's private key
/// (PKCS#8, PKCS#1 or SEC1). `now` is when it must be valid. The error says what is wrong in
/// words a person acts on, without naming the files (the caller does).
pub fn parse(cert: &[u8], key: &[u8], now: SystemTime) -> Result<Pair, String> {
    let chain = CertificateDer::pem_slice_iter(cert)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("the certificate file is not valid PEM: {e}"))?;
    let Some(leaf) = chain.first() else {
        return Err("the certificate file holds no CERTIFICATE block".into());
    };
    let key = PrivateKeyDer::from_pem_slice(key).map_err(|e| match e {
        rustls::pki_types::pem::Error::NoItemsFound => {
            "the key file holds no private key (PRIVATE KEY, RSA PRIVATE KEY or EC PRIVATE KEY)"
                .to_string()
        }
        e => format!("the key file is not valid PEM: {e}"),
    })?;
    let (_, parsed) = x509_parser::parse_x509_certificate(leaf)
        .map_err(|e| format!("the first certificate cannot be parsed: {e}"))?;
    let validity = parsed.validity();
    let (not_before, not_after) = (
        validity.not_before.timestamp(),
        validity.not_after.timestamp(),
    );
    let now_s = now
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX));
    if now_s > not_after {
        return Err(format!("the certificate expired at {}", rfc3339(not_after)));
    }
    if now_s < not_before {
        return Err(format!(
            "the certificate is not valid before {}",
            rfc3339(not_before)
        ));
    }
    let mut names = Vec::new();
    if let Ok(Some(san)) = parsed.subject_alternative_name() {
        for name in &san.value.general_names {
            if let x509_parser::extensions::GeneralName::DNSName(n) = name {
                let n = n.trim_end_matches('.').to_ascii_lowercase();
                if !n.is_empty() && !names.contains(&n) {
                    names.push(n);
                }
            }
        }
    }
    let provider = rustls::crypto::ring::default_provider();
    let signing = provider
        .key_provider
        .load_private_key(key)
        .map_err(|e| format!("the private key cannot be used: {e}"))?;
    let certified = CertifiedKey::new(chain, signing);
    match certified.keys_match() {
        Ok(()) => {}
        Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::KeyMismatch)) => {
            return Err("the private key is not the certificate's (a mismatched pair)".into())
        }
        Err(e) => return Err(format!("the key cannot be matched to the certificate: {e}")),
    }
    Ok(Pair {
        key: Arc::new(certified),
        names,
        not_after,
    })
}

/// Whether `name` (no trailing dot, any case) is one a certificate name (lowercase) covers: the
/// same, or `*.rest` and `name` is one label followed by `.rest` (RFC 6125: the wildcard is the
/// whole leftmost label and covers exactly one).
pub fn covers(cert_name: &str, name: &str) -> bool {
    match cert_name.strip_prefix("*.") {
        Some(rest) => name
            .split_once('.')
            .is_some_and(|(label, tail)| !label.is_empty() && tail.eq_ignore_ascii_case(rest)),
        None => cert_name.eq_ignore_ascii_case(name),
    }
}

/// `secs` since the epoch as `2026-12-02T12:00:00Z`.
pub fn rfc3339(secs: i64) -> String {
    let t = if secs >= 0 {
        UNIX_EPOCH + Duration::from_secs(secs.unsigned_abs())
    } else {
        UNIX_EPOCH
    };
    humantime::format_rfc3339_seconds(t).to_string()
}

#[cfg(test)]
pub(crate) mod tests;
