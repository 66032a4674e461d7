//! Redaction: what never appears in a log line, a span attribute or an exported record. Query
//! parameters that carry credentials (the well-known ones below, and `[telemetry]
//! redact-query`) keep their names and lose their values. Headers are never logged or put on
//! spans at all; `[telemetry] redact-headers` names more of them for any place that would.

/// The text that replaces a redacted value.
pub const REDACTED: &str = "[redacted]";

/// A path as a client sent it, for the log of a request refused before its path was made
/// canonical: from its first `;` or `%` on it is cut. A path parameter (`;jsessionid=...`,
/// which Java servers read as the session) may be spelled `%3B`, or hidden behind any other
/// escape the guard refused, so nothing after an escape is kept. A canonical path never has
/// either in a form that hides a parameter (the guard refuses them).
pub fn raw_path(path: &str) -> std::borrow::Cow<'_, str> {
    match path.find([';', '%']) {
        None => path.into(),
        Some(i) => format!("{}{REDACTED}", &path[..=i]).into(),
    }
}

/// Query parameters redacted whatever the config says: tokens, passwords, signatures (OAuth,
/// OpenID Connect, AWS and Google presigned URLs, common API keys and sessions), in the
/// normalised form `normalise` gives.
const CREDENTIAL_PARAMS: &[&str] = &[
    "access_token",
    "accesstoken",
    "id_token",
    "idtoken",
    "refresh_token",
    "refreshtoken",
    "token",
    "auth",
    "auth_token",
    "authtoken",
    "api_token",
    "apitoken",
    "private_token",
    "oauth_token",
    "oauth_signature",
    "jwt",
    "code",
    "client_secret",
    "clientsecret",
    "password",
    "passwd",
    "pwd",
    "secret",
    "api_key",
    "apikey",
    "key",
    "session",
    "sessionid",
    "session_id",
    "session_token",
    "sid",
    "sig",
    "signature",
    "x_amz_signature",
    "x_amz_credential",
    "x_amz_security_token",
    "x_goog_signature",
    "x_goog_credential",
];

/// A parameter name as applications read it: percent-decoded (`+` a space), leading spaces
/// dropped (PHP), lower case, and `.`, `-` and spaces as `_` (PHP turns `api.key` into
/// `api_key`).
fn normalise(name: &str) -> String {
    let decoded: String = form_urlencoded::parse(name.as_bytes())
        .next()
        .map(|(k, _)| k.into_owned())
        .unwrap_or_default();
    decoded
        .trim_start()
        .chars()
        .map(|c| match c {
            '.' | '-' | ' ' => '_',
            c => c.to_ascii_lowercase(),
        })
        .collect()
}

/// Whether a parameter is a credential: its name, or any part of an array name
/// (`user[password]`, `password[]`), is one of the built-in names or of `extra`.
fn secret(name: &str, extra: &[String]) -> bool {
    let n = normalise(name);
    let is = |part: &str| {
        !part.is_empty()
            && (CREDENTIAL_PARAMS.contains(&part) || extra.iter().any(|e| normalise(e) == part))
    };
    n.split(['[', ']']).any(is) || secret_field(&n)
}

/// `query` (without its `?`) with the values of credential parameters and of `extra` replaced
/// by `[redacted]`. Pairs are separated by `&` or `;` (some servers split on both), and names
/// are compared as applications read them (`normalise`), so `%74oken=`, `api.key=` and
/// `user[password]=` are redacted like `token=`.
pub fn query(query: &str, extra: &[String]) -> String {
    let mut out = String::with_capacity(query.len());
    let mut rest = query;
    loop {
        let end = rest.find(['&', ';']).unwrap_or(rest.len());
        let pair = &rest[..end];
        match pair.split_once('=') {
            Some((name, _)) if secret(name, extra) => {
                out.push_str(name);
                out.push('=');
                out.push_str(REDACTED);
            }
            _ => out.push_str(pair),
        }
        if end == rest.len() {
            return out;
        }
        out.push_str(&rest[end..end + 1]);
        rest = &rest[end + 1..];
    }
}

/// Headers whose values are never shown or kept: credentials and cookies.
const SECRET_HEADERS: [&str; 4] = [
    "authorization",
    "proxy-authorization",
    "cookie",
    "set-cookie",
];

/// Whether a header's value is a secret: credentials, cookies, any header whose name says it
/// holds a token, key, secret or password, and `extra` (`[telemetry] redact-headers`).
pub fn secret_header(name: &str, extra: &[String]) -> bool {
    let n = name.to_ascii_lowercase();
    SECRET_HEADERS.contains(&n.as_str())
        || secret_field(&n)
        || secret_field(n.strip_prefix("x-").unwrap_or(&n))
        || extra.iter().any(|h| h.eq_ignore_ascii_case(name))
}

/// A URL (or any text with a `?`) with its query's credential parameters redacted: what a
/// `Referer`, a `Location` or an error page's JSON echoes of a request.
pub fn url<'a>(text: &'a str, extra: &[String]) -> std::borrow::Cow<'a, str> {
    match text.split_once('?') {
        Some((before, q)) if q.contains('=') => format!("{before}?{}", query(q, extra)).into(),
        _ => text.into(),
    }
}

/// Whether a field's (or header's) name says it holds a secret: it contains one of the words
/// below (`password`, `apiToken`, `card_number`, `x-session-id`, `private_key`), or is one of
/// the short names (`pin`, `sid`) whole. Better a harmless field redacted than a secret kept.
pub fn secret_field(name: &str) -> bool {
    const WORDS: [&str; 16] = [
        "token",
        "secret",
        "pass",
        "pwd",
        "auth",
        "cookie",
        "card",
        "cvv",
        "ssn",
        "apikey",
        "api_key",
        "credential",
        "private",
        "session",
        "signature",
        "jwt",
    ];
    const WHOLE: [&str; 5] = ["pin", "sid", "otp", "key", "code"];
    let n = name.to_ascii_lowercase().replace(['-', '.', ' '], "_");
    WORDS.iter().any(|w| n.contains(w)) || WHOLE.contains(&n.as_str())
}

/// A form body (`a=1&password=x`) with the values of secret parameters (`query`'s credential
/// names, and names `secret_field` takes) replaced.
pub fn form(body: &str, extra: &[String]) -> String {
    let mut out = query(body, extra);
    // `query` keeps its own list; names only `secret_field` knows are redacted here.
    let parts: Vec<String> = out
        .split('&')
        .map(|pair| match pair.split_once('=') {
            Some((name, value)) if value != REDACTED && secret_field(&normalise(name)) => {
                format!("{name}={REDACTED}")
            }
            _ => pair.to_string(),
        })
        .collect();
    out = parts.join("&");
    out
}

/// Replaces the values of secret-named fields (`secret_field`), at any depth; a string that
/// holds a JSON document is redacted inside, and one that holds a URL loses its query's
/// credentials.
pub fn json(value: &mut serde_json::Value) {
    match value {
        serde_json::Value::Object(map) => {
            for (k, v) in map.iter_mut() {
                if secret_field(k) {
                    *v = serde_json::Value::String(REDACTED.into());
                } else {
                    json(v);
                }
            }
        }
        serde_json::Value::Array(items) => items.iter_mut().for_each(json),
        serde_json::Value::String(s) => {
            let inner = s.trim_start();
            if inner.starts_with(['{', '[']) {
                if let Ok(mut doc) = serde_json::from_str::<serde_json::Value>(inner) {
                    json(&mut doc);
                    *s = doc.to_string();
                    return;
                }
            }
            if let std::borrow::Cow::Owned(redacted) = url(s, &[]) {
                *s = redacted;
            }
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests;
