//! The outbound header policy: what every upstream receives, whatever its kind (a Pingora
//! HTTP request, a SigV4-signed request, a Lambda event's headers). Written once, against a
//! small `Headers` trait, so a second policy cannot drift from this one.
//!
//! In order: hop-by-hop headers (RFC 9110 section 7.6.1, plus those named in `Connection`)
//! removed, keeping an upgrade's pair when the request asks for one; every `x-strangle-*`
//! header and every forwarded-claim header removed (strangle vouches for those, so a client's
//! copy never passes); the headers some servers take as the request's path or method instead
//! of the request line's (`x-original-url`, `x-http-method-override`, ...) removed, whoever sent
//! them; from a peer that is not a trusted proxy, every `x-forwarded-*`,
//! `forwarded` and `x-real-ip` removed; then the headers strangle vouches for set:
//! `x-forwarded-for` (the peer appended to a trusted proxy's list, else the peer alone),
//! `x-forwarded-proto` (the real scheme), `x-forwarded-host`, `x-real-ip` (the client address
//! after the trusted-proxy walk), the verified claims and `x-request-id`. With tracing on, the
//! trace headers are strangle's too: a client's `traceparent` (and `x-amzn-trace-id` with X-Ray
//! propagation) is replaced by the request's own context, and its `tracestate` passes only
//! with a trusted `traceparent` it belongs to.

use std::net::IpAddr;

use http::header::{self, HeaderMap, HeaderName, HeaderValue};

// The headers the policy sets itself, as static text (`Headers::set_static`).
const X_FORWARDED_FOR: &str = "x-forwarded-for";
const X_FORWARDED_PROTO: &str = "x-forwarded-proto";
const X_FORWARDED_HOST: &str = "x-forwarded-host";
const X_REAL_IP: &str = "x-real-ip";
const X_REQUEST_ID: &str = "x-request-id";
const TRACEPARENT: &str = "traceparent";
const TRACESTATE: &str = "tracestate";
const X_AMZN_TRACE_ID: &str = "x-amzn-trace-id";
const KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
const PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");
/// Sent only with an `Upgrade: h2c` (RFC 7540 section 3.2.1): hop-by-hop.
const HTTP2_SETTINGS: HeaderName = HeaderName::from_static("http2-settings");

/// Headers that name the client's address in some proxy's dialect: only a trusted proxy's
/// copies are passed on (one list with the plugins', which may never write them).
const CLIENT_ADDRESS: &[&str] = strangle_plugin::CLIENT_ADDRESS_HEADERS;

/// Headers some servers (IIS, Symfony, Zend) take as the request's path instead of the request
/// line: the path a route was chosen on must be the only one the upstream sees, so they never
/// pass, whoever sends them.
const REWRITES: &[&str] = &["x-original-url", "x-rewrite-url"];

/// Headers many frameworks (Rails, Express's method-override, ASP.NET, Symfony, Spring) take as
/// the request's method instead of the request line: a `GET` carrying `DELETE` in one of these
/// would miss a route limited to `DELETE` (and its auth) and still be a `DELETE` to the
/// monolith. The method a route was chosen on is the only one the upstream sees.
const METHOD_OVERRIDES: &[&str] = &[
    "x-http-method-override",
    "x-http-method",
    "x-method-override",
];

/// A set of request headers the policy can edit.
pub trait Headers {
    fn map(&self) -> &HeaderMap;
    fn remove(&mut self, name: &HeaderName);
    fn set(&mut self, name: HeaderName, value: HeaderValue);
    /// `set` for a name known when strangle is built (lower-case).
    fn set_static(&mut self, name: &'static str, value: HeaderValue) {
        self.set(HeaderName::from_static(name), value);
    }
}

impl Headers for HeaderMap {
    fn map(&self) -> &HeaderMap {
        self
    }
    fn remove(&mut self, name: &HeaderName) {
        HeaderMap::remove(self, name);
    }
    fn set(&mut self, name: HeaderName, value: HeaderValue) {
        self.insert(name, value);
    }
}

impl Headers for pingora::http::RequestHeader {
    fn map(&self) -> &HeaderMap {
        &self.headers
    }
    fn remove(&mut self, name: &HeaderName) {
        self.remove_header(name);
    }
    fn set(&mut self, name: HeaderName, value: HeaderValue) {
        // Only fails on a name/value pair `http` would refuse, which these are not.
        let _ = self.insert_header(name, value);
    }
    fn set_static(&mut self, name: &'static str, value: HeaderValue) {
        // Pingora keeps each name's wire form beside the header, and copies a `HeaderName`
        // `http` does not know into it; static text it keeps as it is (the same bytes).
        let _ = self.insert_header(name, value);
    }
}

/// What the policy needs to know about the request being forwarded.
pub struct Outbound<'a> {
    /// The TCP peer (the client, or the proxy in front of strangle).
    pub peer: Option<IpAddr>,
    /// Whether `peer` is in `[server] trusted-proxies`.
    pub peer_trusted: bool,
    /// The client address after the trusted-proxy walk.
    pub client: Option<IpAddr>,
    /// The scheme the client used to reach strangle.
    pub https: bool,
    /// The request's `Host`, before any upstream rewrites it.
    pub host: Option<HeaderValue>,
    /// Keep `Connection: upgrade` and `Upgrade` (the request asks for a protocol switch).
    pub keep_upgrade: bool,
    /// The names of every forwarded-claim header in the config.
    pub identity_headers: &'a [HeaderName],
    /// The verified claims to send, as headers.
    pub claims: &'a [(HeaderName, HeaderValue)],
    pub request_id: Option<&'a HeaderValue>,
    /// The trace headers to send when tracing is on (`None`: a client's pass untouched).
    pub trace: Option<Propagation>,
}

/// The trace context as headers for the upstream.
#[derive(Debug, Clone, Default)]
pub struct Propagation {
    /// `traceparent`, when W3C trace context is propagated.
    pub traceparent: Option<HeaderValue>,
    /// `x-amzn-trace-id`, when X-Ray's is.
    pub xray: Option<HeaderValue>,
    /// The client's `tracestate` belongs to the trusted context this request continues.
    pub keep_tracestate: bool,
}

/// Applies the policy to `h`.
pub fn apply<H: Headers>(h: &mut H, out: &Outbound<'_>) {
    let mut drop = hop_by_hop(h.map(), out.keep_upgrade);
    for name in h.map().keys() {
        let s = folded(name);
        let forwarding =
            s.starts_with("x-forwarded-") || CLIENT_ADDRESS.contains(&&*s) || s == "forwarded";
        if s.starts_with("x-strangle-")
            || out.identity_headers.iter().any(|h| folds_to(h.as_str(), &s))
            || REWRITES.contains(&&*s)
            || METHOD_OVERRIDES.contains(&&*s)
            || s == "expect"
            || (forwarding && !out.peer_trusted)
            // strangle sends its own `x-request-id`; another spelling of it would compete.
            || (s == X_REQUEST_ID && name.as_str() != s)
            // With tracing on, X-Ray's header too, propagated or not: X-Ray-instrumented
            // upstreams obey it (sampling, the trace they join).
            || out.trace.as_ref().is_some_and(|t| {
                s == TRACEPARENT
                    || (s == TRACESTATE && !(t.keep_tracestate && name.as_str() == s && tracestate_fits(h.map())))
                    || s == X_AMZN_TRACE_ID
            })
        {
            drop.push(name.clone());
        }
    }
    for name in &drop {
        h.remove(name);
    }
    // The peer's address as a header value, made once: it is usually the whole of
    // `x-forwarded-for` and `x-real-ip` too.
    let peer = out.peer.and_then(|p| Some((p, ip_value(p)?)));
    if let Some((ip, value)) = &peer {
        // Only a trusted proxy's lines survived the removal above; all of them are the list
        // (HAProxy adds a line of its own), and a line that is not text voids it.
        let prior: Option<Vec<&str>> = h
            .map()
            .get_all(X_FORWARDED_FOR)
            .iter()
            .map(|v| v.to_str().ok().map(str::trim))
            .filter(|v| v != &Some(""))
            .collect();
        let xff = match prior {
            Some(lines) if !lines.is_empty() => {
                HeaderValue::from_str(&format!("{}, {ip}", lines.join(", "))).ok()
            }
            _ => Some(value.clone()),
        };
        if let Some(v) = xff {
            h.set_static(X_FORWARDED_FOR, v);
        }
    }
    if !h.map().contains_key(X_FORWARDED_PROTO) {
        let proto = if out.https { "https" } else { "http" };
        h.set_static(X_FORWARDED_PROTO, HeaderValue::from_static(proto));
    }
    if !h.map().contains_key(X_FORWARDED_HOST) {
        if let Some(host) = &out.host {
            h.set_static(X_FORWARDED_HOST, host.clone());
        }
    }
    let real_ip = match (&peer, out.client) {
        (Some((ip, value)), Some(client)) if *ip == client => Some(value.clone()),
        (_, client) => client.and_then(ip_value),
    };
    if let Some(v) = real_ip {
        h.set_static(X_REAL_IP, v);
    }
    for (name, value) in out.claims {
        h.set(name.clone(), value.clone());
    }
    if let Some(id) = out.request_id {
        h.set_static(X_REQUEST_ID, id.clone());
    }
    if let Some(t) = &out.trace {
        if let Some(v) = &t.traceparent {
            h.set_static(TRACEPARENT, v.clone());
        }
        if let Some(v) = &t.xray {
            h.set_static(X_AMZN_TRACE_ID, v.clone());
        }
    }
    join_cookies(h);
}

/// HTTP/2 clients (browsers) send each cookie as a field of its own (RFC 9113 section 8.2.3);
/// an HTTP/1 upstream, a signed endpoint and a Lambda event get them as one `Cookie`, joined
/// with `; ` (many servers read only the first line). One line is left as it is.
fn join_cookies<H: Headers>(h: &mut H) {
    let mut lines = h.map().get_all(http::header::COOKIE).iter();
    let (Some(first), Some(_)) = (lines.next(), lines.next()) else {
        return;
    };
    let mut joined = first.as_bytes().to_vec();
    for line in h.map().get_all(http::header::COOKIE).iter().skip(1) {
        joined.extend_from_slice(b"; ");
        joined.extend_from_slice(line.as_bytes());
    }
    if let Ok(v) = HeaderValue::from_bytes(&joined) {
        h.set_static(http::header::COOKIE.as_str(), v);
    }
}

/// Whether a client's `tracestate` is within W3C Trace Context's limit (512 characters in all,
/// one line): a longer one is not passed on.
fn tracestate_fits(h: &HeaderMap) -> bool {
    let mut lines = h.get_all(TRACESTATE).iter();
    matches!((lines.next(), lines.next()), (Some(v), None) if v.len() <= 512)
}

/// A header name as servers that fold punctuation read it. CGI-style servers read `x_user_id`
/// as `x-user-id` (both become `HTTP_X_USER_ID`), and some fold every character that is not a
/// letter or a digit that way (`x.user.id`): a name strangle owns is matched in each spelling.
fn folded(name: &HeaderName) -> std::borrow::Cow<'_, str> {
    let s = name.as_str();
    if s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-') {
        return std::borrow::Cow::Borrowed(s);
    }
    std::borrow::Cow::Owned(
        s.chars()
            .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
            .collect(),
    )
}

/// Whether `name` folds (as `folded` does) to `folded_name`, without making the folded copy:
/// a claim header configured as `x_user_id` is the same header to a CGI server as a client's
/// `x-user-id`.
fn folds_to(name: &str, folded_name: &str) -> bool {
    name.len() == folded_name.len()
        && name.bytes().zip(folded_name.bytes()).all(|(a, b)| {
            let a = if a.is_ascii_alphanumeric() { a } else { b'-' };
            a == b
        })
}

/// An address as a header value, formatted on the stack (the value is the one allocation).
fn ip_value(ip: IpAddr) -> Option<HeaderValue> {
    use std::io::Write as _;
    // The longest IPv6 text form, `ffff:ffff:ffff:ffff:ffff:ffff:255.255.255.255`, is 45 bytes.
    let mut buf = [0u8; 48];
    let mut out = &mut buf[..];
    write!(out, "{ip}").ok()?;
    let len = 48 - out.len();
    HeaderValue::from_bytes(&buf[..len]).ok()
}

/// The hop-by-hop headers present (RFC 9110 section 7.6.1) and those named in `Connection`,
/// except the pair that carries a protocol upgrade when `keep_upgrade`. Usually none: then
/// nothing is allocated.
pub fn hop_by_hop(headers: &HeaderMap, keep_upgrade: bool) -> Vec<HeaderName> {
    let mut names = Vec::new();
    for v in headers.get_all(header::CONNECTION) {
        let Ok(s) = v.to_str() else { continue };
        for token in s.split(',').map(str::trim) {
            if keep_upgrade && token.eq_ignore_ascii_case("upgrade") {
                continue;
            }
            if let Ok(name) = HeaderName::from_bytes(token.as_bytes()) {
                names.push(name);
            }
        }
    }
    for name in [
        KEEP_ALIVE,
        PROXY_CONNECTION,
        header::TE,
        header::TRAILER,
        // Credentials for this hop (a proxy), never for the upstream.
        header::PROXY_AUTHORIZATION,
        header::PROXY_AUTHENTICATE,
    ] {
        if headers.contains_key(&name) {
            names.push(name);
        }
    }
    if !keep_upgrade {
        for name in [header::CONNECTION, header::UPGRADE, HTTP2_SETTINGS] {
            if headers.contains_key(&name) {
                names.push(name);
            }
        }
    }
    names
}

#[cfg(test)]
mod tests {
    use super::*;

    fn outbound<'a>(
        trusted: bool,
        ids: &'a [HeaderName],
        claims: &'a [(HeaderName, HeaderValue)],
    ) -> Outbound<'a> {
        Outbound {
            peer: Some("10.0.0.5".parse().unwrap()),
            peer_trusted: trusted,
            client: Some(
                if trusted { "1.2.3.4" } else { "10.0.0.5" }
                    .parse()
                    .unwrap(),
            ),
            https: false,
            host: Some(HeaderValue::from_static("shop.example")),
            keep_upgrade: false,
            identity_headers: ids,
            claims,
            request_id: None,
            trace: None,
        }
    }

    fn spoofed() -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in [
            ("x-user-id", "root"),
            ("x-strangle-side", "new"),
            ("x-strangle-anything", "1"),
            ("x-forwarded-for", "6.6.6.6"),
            ("x-forwarded-proto", "https"),
            ("x-forwarded-host", "evil.example"),
            ("x-forwarded-prefix", "/admin"),
            ("forwarded", "for=6.6.6.6"),
            ("x-real-ip", "6.6.6.6"),
            ("x_user_id", "root"),
            ("x_strangle_side", "new"),
            ("x_forwarded_for", "6.6.6.6"),
            ("x.user.id", "root"),
            ("x.forwarded.for", "6.6.6.6"),
            ("x-strangle.side", "new"),
            ("x+real+ip", "6.6.6.6"),
            ("x_request_id", "forged"),
            ("x.request.id", "forged"),
            ("x-original-url", "/admin"),
            ("x-rewrite-url", "/admin"),
            ("true-client-ip", "6.6.6.6"),
            ("x-http-method-override", "DELETE"),
            ("x_http_method", "DELETE"),
            ("x-method-override", "DELETE"),
            ("expect", "100-continue"),
            ("connection", "keep-alive, x-drop-me"),
            ("x-drop-me", "1"),
            ("te", "trailers"),
            ("accept", "text/html"),
        ] {
            h.append(HeaderName::from_static(k), HeaderValue::from_static(v));
        }
        h
    }

    #[test]
    fn an_untrusted_client_controls_nothing_strangle_vouches_for() {
        let ids = [HeaderName::from_static("x-user-id")];
        let claims = [(ids[0].clone(), HeaderValue::from_static("alice"))];
        let mut h = spoofed();
        let id = HeaderValue::from_static("req-1");
        let mut out = outbound(false, &ids, &claims);
        out.request_id = Some(&id);
        apply(&mut h, &out);
        assert_eq!(h["x-user-id"], "alice");
        assert_eq!(h.get_all("x-user-id").iter().count(), 1);
        assert!(!h.contains_key("x-strangle-side") && !h.contains_key("x-strangle-anything"));
        assert_eq!(h["x-forwarded-for"], "10.0.0.5");
        assert_eq!(h["x-forwarded-proto"], "http");
        assert_eq!(h["x-forwarded-host"], "shop.example");
        assert_eq!(h["x-real-ip"], "10.0.0.5");
        for gone in [
            "x-forwarded-prefix",
            "forwarded",
            "connection",
            "x-drop-me",
            "te",
            "x_user_id",
            "x_strangle_side",
            "x_forwarded_for",
            "x.user.id",
            "x.forwarded.for",
            "x-strangle.side",
            "x+real+ip",
            "x_request_id",
            "x.request.id",
            "x-original-url",
            "x-rewrite-url",
            "true-client-ip",
            "x-http-method-override",
            "x_http_method",
            "x-method-override",
            "expect",
        ] {
            assert!(!h.contains_key(gone), "{gone}");
        }
        assert_eq!(h["x-request-id"], "req-1");
        assert_eq!(h["accept"], "text/html");
    }

    #[test]
    fn a_trusted_proxy_list_is_appended_to() {
        let mut h = spoofed();
        h.append("x-forwarded-for", HeaderValue::from_static("7.7.7.7"));
        apply(&mut h, &outbound(true, &[], &[]));
        assert_eq!(h["x-forwarded-for"], "6.6.6.6, 7.7.7.7, 10.0.0.5");
        assert_eq!(h.get_all("x-forwarded-for").iter().count(), 1);
        assert!(!h.contains_key("x-original-url"));
        assert_eq!(h["x-forwarded-proto"], "https");
        assert_eq!(h["x-real-ip"], "1.2.3.4");
        // Identity and strangle headers are never a proxy's to set either.
        assert!(!h.contains_key("x-strangle-side"));
    }

    #[test]
    fn addresses_are_written_as_their_text_form() {
        for ip in [
            "10.0.0.5",
            "255.255.255.255",
            "::1",
            "2001:db8::8a2e:370:7334",
            "::ffff:10.0.0.5",
            "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff",
        ] {
            let ip: IpAddr = ip.parse().unwrap();
            assert_eq!(ip_value(ip).unwrap(), ip.to_string().as_str());
        }
    }

    /// A claim header configured with punctuation (`x_user_id`) is the same header to a CGI
    /// server as a client's `x-user-id`: the client's copy never passes beside the verified one.
    #[test]
    fn a_claim_header_is_matched_in_every_folded_spelling_of_its_configured_name() {
        let ids = [HeaderName::from_static("x_user_id")];
        let claims = [(ids[0].clone(), HeaderValue::from_static("alice"))];
        let mut h = HeaderMap::new();
        for name in ["x-user-id", "x.user.id", "x_user_id", "X-User_Id"] {
            h.append(
                HeaderName::from_bytes(name.as_bytes()).unwrap(),
                HeaderValue::from_static("root"),
            );
        }
        apply(&mut h, &outbound(false, &ids, &claims));
        assert_eq!(h.get_all("x_user_id").iter().collect::<Vec<_>>(), ["alice"]);
        assert!(!h.contains_key("x-user-id") && !h.contains_key("x.user.id"));
        assert!(folds_to("x_user_id", "x-user-id") && !folds_to("x_user_id", "x-user-i"));
    }

    #[test]
    fn with_tracing_on_the_trace_headers_are_strangles() {
        let mut h = HeaderMap::new();
        for (k, v) in [
            (
                "traceparent",
                "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            ),
            (
                "trace_parent",
                "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            ),
            ("tracestate", "vendor=evil"),
            (
                "x-amzn-trace-id",
                "Root=1-5759e988-bd862e3fe1be46a994272793;Sampled=1",
            ),
            (
                "x.amzn.trace.id",
                "Root=1-5759e988-bd862e3fe1be46a994272793;Sampled=1",
            ),
        ] {
            h.append(HeaderName::from_static(k), HeaderValue::from_static(v));
        }
        // Tracing off: a client's trace headers pass untouched (strangle vouches for none).
        let mut off = h.clone();
        apply(&mut off, &outbound(false, &[], &[]));
        assert_eq!(off.get("tracestate").unwrap(), "vendor=evil");
        assert_eq!(
            off.get("x-amzn-trace-id").unwrap(),
            h.get("x-amzn-trace-id").unwrap()
        );

        let ours = "00-11111111111111111111111111111111-2222222222222222-00";
        let xray = "Root=1-11111111-111111111111111111111111;Parent=2222222222222222;Sampled=0";
        let mut out = outbound(false, &[], &[]);
        out.trace = Some(Propagation {
            traceparent: Some(HeaderValue::from_static(ours)),
            xray: Some(HeaderValue::from_static(xray)),
            keep_tracestate: false,
        });
        let mut on = h.clone();
        apply(&mut on, &out);
        assert_eq!(on.get_all("traceparent").iter().collect::<Vec<_>>(), [ours]);
        assert_eq!(
            on.get_all("x-amzn-trace-id").iter().collect::<Vec<_>>(),
            [xray]
        );
        for gone in ["tracestate", "x.amzn.trace.id"] {
            assert!(!on.contains_key(gone), "{gone} passed");
        }
        // A trusted context keeps the state that goes with it; X-Ray's header is strangle's
        // whenever tracing is on, propagated or not.
        out.trace = Some(Propagation {
            traceparent: Some(HeaderValue::from_static(ours)),
            xray: None,
            keep_tracestate: true,
        });
        let mut kept = h.clone();
        apply(&mut kept, &out);
        assert_eq!(kept.get("tracestate").unwrap(), "vendor=evil");
        assert!(!kept.contains_key("x-amzn-trace-id"));
        assert_eq!(kept.get_all("traceparent").iter().count(), 1);
        // Past W3C's 512 characters, a trusted tracestate is dropped too.
        let mut long = h.clone();
        let value = HeaderValue::from_str(&"a=b,".repeat(200)).unwrap();
        long.insert(HeaderName::from_static("tracestate"), value);
        apply(&mut long, &out);
        assert!(!long.contains_key("tracestate"));
    }

    #[test]
    fn cookies_sent_as_several_fields_reach_the_upstream_as_one() {
        let mut h = HeaderMap::new();
        h.append("cookie", HeaderValue::from_static("a=1"));
        h.append("cookie", HeaderValue::from_static("b=2; c=3"));
        apply(&mut h, &outbound(false, &[], &[]));
        assert_eq!(h.get_all("cookie").iter().count(), 1);
        assert_eq!(h["cookie"], "a=1; b=2; c=3");
        // One line is left as it was.
        let mut one = HeaderMap::new();
        one.insert("cookie", HeaderValue::from_static("a=1;b=2"));
        apply(&mut one, &outbound(false, &[], &[]));
        assert_eq!(one["cookie"], "a=1;b=2");
    }
}
