//! Redaction: what never appears in a log line, a span attribute or an exported record. Query
//! parameters that carry credentials (the well-known ones below, and `[telemetry]
//! redact-query`) keep their names and lose their values. Headers are never logged or put on
//! spans at all; `[telemetry] redact-headers` names more of them for any place that would.

/// The text that replaces a redacted value.
pub const REDACTED: &str = "[redacted]";

/// Query parameters redacted whatever the config says: tokens, passwords, signatures (OAuth,
/// OpenID Connect, AWS presigned URLs, common API keys).
const CREDENTIAL_PARAMS: &[&str] = &[
    "access_token",
    "id_token",
    "refresh_token",
    "token",
    "code",
    "client_secret",
    "password",
    "passwd",
    "secret",
    "api_key",
    "apikey",
    "key",
    "sig",
    "signature",
    "x-amz-signature",
    "x-amz-credential",
    "x-amz-security-token",
];

/// `query` (without its `?`) with the values of credential parameters and of `extra` replaced
/// by `[redacted]`. Names are compared case-insensitively and after percent-decoding, so
/// `%74oken=` is redacted like `token=`.
pub fn query(query: &str, extra: &[String]) -> String {
    let mut out = String::with_capacity(query.len());
    for (i, pair) in query.split('&').enumerate() {
        if i > 0 {
            out.push('&');
        }
        let (name, value) = match pair.split_once('=') {
            Some((n, v)) => (n, Some(v)),
            None => (pair, None),
        };
        let decoded: String = form_urlencoded::parse(name.as_bytes())
            .next()
            .map(|(k, _)| k.into_owned())
            .unwrap_or_default();
        let secret = CREDENTIAL_PARAMS
            .iter()
            .copied()
            .chain(extra.iter().map(String::as_str))
            .any(|p| p.eq_ignore_ascii_case(&decoded) || p.eq_ignore_ascii_case(name));
        out.push_str(name);
        match value {
            Some(_) if secret => {
                out.push('=');
                out.push_str(REDACTED);
            }
            Some(v) => {
                out.push('=');
                out.push_str(v);
            }
            None => {}
        }
    }
    out
}

#[cfg(test)]
mod tests;
