//! Event mapping, both ways, as API Gateway and ALB do it: an HTTP request becomes an
//! `apigw-v2` (HTTP API), `apigw-v1` (REST API) or `alb` event, and the function's answer
//! becomes an HTTP response, including the v2 "inferred" format (a function that returns plain
//! JSON gets 200 and `application/json`).

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::net::IpAddr;
use std::time::SystemTime;

use base64::Engine as _;
use bytes::Bytes;
use http::header::{
    HeaderMap, HeaderName, HeaderValue, CONTENT_TYPE, COOKIE, SET_COOKIE, USER_AGENT,
};
use serde::Serialize;
use serde_json::Value;

use crate::config::Payload;

const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;

/// What the event is built from.
#[derive(Debug)]
pub struct Request<'a> {
    pub method: &'a str,
    /// The normalised path that was routed.
    pub path: &'a str,
    /// The raw query string, without `?`.
    pub query: &'a str,
    pub headers: &'a HeaderMap,
    pub body: &'a [u8],
    pub source_ip: Option<IpAddr>,
    pub request_id: &'a str,
    pub protocol: &'a str,
    /// The route's own path, reported as the resource / route key.
    pub route_path: &'a str,
    pub now: SystemTime,
    /// Verified JWT claims, reported as API Gateway's JWT authorizer does.
    pub claims: Option<&'a serde_json::Map<String, Value>>,
}

/// Headers a client must not be able to pass off as AWS's own.
pub fn is_reserved(name: &str) -> bool {
    name.starts_with("x-amz-") || name.starts_with("x-amzn-")
}

/// Whether a body is sent as text: a textual content type and valid UTF-8.
fn as_text<'a>(headers: &HeaderMap, body: &'a [u8]) -> Option<&'a str> {
    let ct = headers
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_ascii_lowercase();
    let textual = ct.is_empty()
        || ct.starts_with("text/")
        || [
            "json",
            "xml",
            "javascript",
            "x-www-form-urlencoded",
            "graphql",
            "yaml",
        ]
        .iter()
        .any(|t| ct.contains(t));
    textual.then(|| std::str::from_utf8(body).ok()).flatten()
}

fn body_fields(req: &Request<'_>) -> (Option<Cow<'static, str>>, bool) {
    if req.body.is_empty() {
        return (None, false);
    }
    match as_text(req.headers, req.body) {
        Some(text) => (Some(Cow::Owned(text.to_string())), false),
        None => (Some(Cow::Owned(B64.encode(req.body))), true),
    }
}

/// `28/Nov/2026:08:17:44 +0000`, the time format API Gateway puts in its events.
fn clf_time(t: SystemTime) -> String {
    let s = humantime::format_rfc3339_seconds(t).to_string(); // 2026-11-28T08:17:44Z
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let month = s
        .get(5..7)
        .and_then(|m| m.parse::<usize>().ok())
        .unwrap_or(1);
    format!(
        "{}/{}/{}:{} +0000",
        s.get(8..10).unwrap_or("01"),
        MONTHS[(month.max(1) - 1).min(11)],
        s.get(0..4).unwrap_or("1970"),
        s.get(11..19).unwrap_or("00:00:00")
    )
}

fn epoch_ms(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Headers as API Gateway v2 sends them: lower-case names, repeats joined with commas, cookies
/// moved out to their own field, reserved AWS headers dropped.
fn joined_headers(headers: &HeaderMap) -> BTreeMap<&str, Cow<'_, str>> {
    let mut out: BTreeMap<&str, Cow<'_, str>> = BTreeMap::new();
    for (name, value) in headers {
        let name = name.as_str();
        if name == COOKIE || is_reserved(name) {
            continue;
        }
        let value = String::from_utf8_lossy(value.as_bytes());
        out.entry(name)
            .and_modify(|v| {
                let joined = format!("{v},{value}");
                *v = Cow::Owned(joined);
            })
            .or_insert(value);
    }
    out
}

fn multi_headers(headers: &HeaderMap) -> BTreeMap<&str, Vec<Cow<'_, str>>> {
    let mut out: BTreeMap<&str, Vec<Cow<'_, str>>> = BTreeMap::new();
    for (name, value) in headers {
        if is_reserved(name.as_str()) {
            continue;
        }
        out.entry(name.as_str())
            .or_default()
            .push(String::from_utf8_lossy(value.as_bytes()));
    }
    out
}

fn cookies(headers: &HeaderMap) -> Vec<&str> {
    headers
        .get_all(COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .map(str::trim)
        .filter(|c| !c.is_empty())
        .collect()
}

/// Decoded query parameters; API Gateway joins repeats with commas (v2) or keeps the last (v1).
fn query_params(query: &str) -> Vec<(String, String)> {
    form_urlencoded::parse(query.as_bytes())
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect()
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct V2Event<'a> {
    version: &'static str,
    route_key: &'static str,
    raw_path: &'a str,
    raw_query_string: &'a str,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    cookies: Vec<&'a str>,
    headers: BTreeMap<&'a str, Cow<'a, str>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    query_string_parameters: Option<BTreeMap<String, String>>,
    request_context: V2Context<'a>,
    #[serde(skip_serializing_if = "Option::is_none")]
    body: Option<Cow<'static, str>>,
    is_base64_encoded: bool,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct V2Context<'a> {
    account_id: &'static str,
    api_id: &'static str,
    domain_name: &'a str,
    domain_prefix: &'a str,
    http: V2Http<'a>,
    request_id: &'a str,
    route_key: &'static str,
    stage: &'static str,
    time: String,
    time_epoch: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    authorizer: Option<V2Authorizer<'a>>,
}

#[derive(Serialize)]
struct V2Authorizer<'a> {
    jwt: V2Jwt<'a>,
}

#[derive(Serialize)]
struct V2Jwt<'a> {
    claims: &'a serde_json::Map<String, Value>,
    scopes: Option<Vec<&'a str>>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct V2Http<'a> {
    method: &'a str,
    path: &'a str,
    protocol: &'a str,
    source_ip: String,
    user_agent: &'a str,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct V1Event<'a> {
    resource: String,
    path: &'a str,
    http_method: &'a str,
    headers: BTreeMap<&'a str, Cow<'a, str>>,
    multi_value_headers: BTreeMap<&'a str, Vec<Cow<'a, str>>>,
    query_string_parameters: Option<BTreeMap<String, String>>,
    multi_value_query_string_parameters: Option<BTreeMap<String, Vec<String>>>,
    path_parameters: Option<BTreeMap<String, String>>,
    stage_variables: Option<()>,
    request_context: V1Context<'a>,
    body: Option<Cow<'static, str>>,
    is_base64_encoded: bool,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct V1Context<'a> {
    account_id: &'static str,
    api_id: &'static str,
    domain_name: &'a str,
    http_method: &'a str,
    path: &'a str,
    protocol: &'a str,
    request_id: &'a str,
    request_time: String,
    request_time_epoch: u64,
    resource_path: String,
    stage: &'static str,
    identity: V1Identity<'a>,
    #[serde(skip_serializing_if = "Option::is_none")]
    authorizer: Option<V1Authorizer<'a>>,
}

#[derive(Serialize)]
struct V1Authorizer<'a> {
    claims: &'a serde_json::Map<String, Value>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct V1Identity<'a> {
    source_ip: String,
    user_agent: &'a str,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct AlbEvent<'a> {
    request_context: AlbContext,
    http_method: &'a str,
    path: &'a str,
    query_string_parameters: BTreeMap<String, String>,
    headers: BTreeMap<&'a str, Cow<'a, str>>,
    body: Cow<'static, str>,
    is_base64_encoded: bool,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct AlbContext {
    elb: AlbElb,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct AlbElb {
    target_group_arn: &'static str,
}

/// Builds the event for a request, as JSON bytes.
pub fn encode(format: Payload, req: &Request<'_>) -> Vec<u8> {
    let host = req
        .headers
        .get(http::header::HOST)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("localhost");
    let user_agent = req
        .headers
        .get(USER_AGENT)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let source_ip = req
        .source_ip
        .map_or_else(|| "127.0.0.1".to_string(), |ip| ip.to_string());
    let (body, is_base64_encoded) = body_fields(req);
    let params = query_params(req.query);
    let out = match format {
        Payload::ApigwV2 => {
            let mut joined: BTreeMap<String, String> = BTreeMap::new();
            for (k, v) in params {
                joined
                    .entry(k)
                    .and_modify(|e| {
                        e.push(',');
                        e.push_str(&v);
                    })
                    .or_insert(v);
            }
            serde_json::to_vec(&V2Event {
                version: "2.0",
                route_key: "$default",
                raw_path: req.path,
                raw_query_string: req.query,
                cookies: cookies(req.headers),
                headers: joined_headers(req.headers),
                query_string_parameters: (!joined.is_empty()).then_some(joined),
                request_context: V2Context {
                    account_id: "anonymous",
                    api_id: "strangle",
                    domain_name: host,
                    domain_prefix: host.split('.').next().unwrap_or(host),
                    http: V2Http {
                        method: req.method,
                        path: req.path,
                        protocol: req.protocol,
                        source_ip,
                        user_agent,
                    },
                    request_id: req.request_id,
                    route_key: "$default",
                    stage: "$default",
                    time: clf_time(req.now),
                    time_epoch: epoch_ms(req.now),
                    authorizer: req.claims.map(|claims| V2Authorizer {
                        jwt: V2Jwt {
                            claims,
                            scopes: claims
                                .get("scope")
                                .and_then(Value::as_str)
                                .map(|s| s.split(' ').filter(|p| !p.is_empty()).collect()),
                        },
                    }),
                },
                body,
                is_base64_encoded,
            })
        }
        Payload::ApigwV1 => {
            let mut last: BTreeMap<String, String> = BTreeMap::new();
            let mut multi: BTreeMap<String, Vec<String>> = BTreeMap::new();
            for (k, v) in params {
                last.insert(k.clone(), v.clone());
                multi.entry(k).or_default().push(v);
            }
            let headers: BTreeMap<&str, Cow<'_, str>> = multi_headers(req.headers)
                .into_iter()
                .filter_map(|(k, mut v)| v.pop().map(|last| (k, last)))
                .collect();
            let resource = format!("{}/{{proxy+}}", req.route_path.trim_end_matches('/'));
            serde_json::to_vec(&V1Event {
                resource: resource.clone(),
                path: req.path,
                http_method: req.method,
                headers,
                multi_value_headers: multi_headers(req.headers),
                query_string_parameters: (!last.is_empty()).then_some(last),
                multi_value_query_string_parameters: (!multi.is_empty()).then_some(multi),
                path_parameters: None,
                stage_variables: None,
                request_context: V1Context {
                    account_id: "anonymous",
                    api_id: "strangle",
                    domain_name: host,
                    http_method: req.method,
                    path: req.path,
                    protocol: req.protocol,
                    request_id: req.request_id,
                    request_time: clf_time(req.now),
                    request_time_epoch: epoch_ms(req.now),
                    resource_path: resource,
                    stage: "$default",
                    identity: V1Identity {
                        source_ip,
                        user_agent,
                    },
                    authorizer: req.claims.map(|claims| V1Authorizer { claims }),
                },
                body,
                is_base64_encoded,
            })
        }
        Payload::Alb => {
            // ALB passes query parameters as sent, without decoding them.
            let raw: BTreeMap<String, String> = req
                .query
                .split('&')
                .filter(|p| !p.is_empty())
                .map(|p| match p.split_once('=') {
                    Some((k, v)) => (k.to_string(), v.to_string()),
                    None => (p.to_string(), String::new()),
                })
                .collect();
            let headers: BTreeMap<&str, Cow<'_, str>> = multi_headers(req.headers)
                .into_iter()
                .filter_map(|(k, mut v)| v.pop().map(|last| (k, last)))
                .collect();
            serde_json::to_vec(&AlbEvent {
                request_context: AlbContext {
                    elb: AlbElb {
                        target_group_arn: "arn:aws:elasticloadbalancing:us-east-1:000000000000:targetgroup/strangle/0000000000000000",
                    },
                },
                http_method: req.method,
                path: req.path,
                query_string_parameters: raw,
                headers,
                body: body.unwrap_or(Cow::Borrowed("")),
                is_base64_encoded,
            })
        }
    };
    out.unwrap_or_default()
}

/// A function's answer as an HTTP response.
#[derive(Debug, PartialEq)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(HeaderName, HeaderValue)>,
    pub body: Bytes,
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum DecodeError {
    #[error("the function's response is not a valid {0:?} response: {1}")]
    Invalid(Payload, String),
}

fn header_pair(name: &str, value: &str) -> Option<(HeaderName, HeaderValue)> {
    Some((
        HeaderName::from_bytes(name.as_bytes()).ok()?,
        HeaderValue::from_str(value).ok()?,
    ))
}

fn scalar(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

/// The most headers a function's response may carry, and their total size: past either it is
/// a broken response (502), as an upstream's oversized head would be.
pub const MAX_RESPONSE_HEADERS: usize = 256;
pub const MAX_RESPONSE_HEADER_BYTES: usize = 64 * 1024;

/// A function's response headers as they are decoded: capped, and de-duplicated in linear time.
#[derive(Default)]
struct ResponseHeaders {
    list: Vec<(HeaderName, HeaderValue)>,
    seen: std::collections::HashSet<(HeaderName, HeaderValue)>,
    bytes: usize,
}

impl ResponseHeaders {
    fn push(&mut self, pair: (HeaderName, HeaderValue)) -> Result<(), &'static str> {
        self.bytes += pair.0.as_str().len() + pair.1.len() + 4;
        if self.list.len() >= MAX_RESPONSE_HEADERS {
            return Err("more than 256 response headers");
        }
        if self.bytes > MAX_RESPONSE_HEADER_BYTES {
            return Err("response headers over 64 KiB");
        }
        self.seen.insert(pair.clone());
        self.list.push(pair);
        Ok(())
    }

    fn push_once(&mut self, pair: (HeaderName, HeaderValue)) -> Result<(), &'static str> {
        if self.seen.contains(&pair) {
            return Ok(());
        }
        self.push(pair)
    }
}

/// Turns the function's payload into a response.
pub fn decode(format: Payload, payload: &[u8]) -> Result<Response, DecodeError> {
    let invalid = |why: &str| DecodeError::Invalid(format, why.to_string());
    let value: Value = match serde_json::from_slice(payload) {
        Ok(v) => v,
        Err(_) if format == Payload::ApigwV2 => {
            return Err(invalid("not JSON"));
        }
        Err(_) => return Err(invalid("not JSON")),
    };
    let structured = value.as_object().filter(|o| o.contains_key("statusCode"));
    let Some(obj) = structured else {
        if format == Payload::ApigwV2 {
            // The inferred format: the payload itself is a JSON body.
            return Ok(Response {
                status: 200,
                headers: vec![(CONTENT_TYPE, HeaderValue::from_static("application/json"))],
                body: Bytes::copy_from_slice(payload),
            });
        }
        return Err(invalid("no statusCode"));
    };
    let status = match obj.get("statusCode") {
        Some(Value::Number(n)) => n.as_u64(),
        Some(Value::String(s)) => s.parse().ok(),
        _ => None,
    }
    // A 1xx is not a final answer (the client would read the next response as this one's),
    // and strangle never asked the function for a protocol switch.
    .filter(|s| (200..=599).contains(s))
    .ok_or_else(|| invalid("statusCode is not a final HTTP status (200-599)"))?
        as u16;
    let mut headers = ResponseHeaders::default();
    if let Some(Value::Object(h)) = obj.get("headers") {
        for (k, v) in h {
            if let Some(pair) = scalar(v).and_then(|v| header_pair(k, &v)) {
                headers.push(pair).map_err(&invalid)?;
            }
        }
    }
    if let Some(Value::Object(h)) = obj.get("multiValueHeaders") {
        for (k, vs) in h {
            for v in vs.as_array().into_iter().flatten() {
                if let Some(pair) = scalar(v).and_then(|v| header_pair(k, &v)) {
                    // API Gateway merges `headers` into `multiValueHeaders`: a pair in both is
                    // sent once.
                    headers.push_once(pair).map_err(&invalid)?;
                }
            }
        }
    }
    if let Some(Value::Array(cookies)) = obj.get("cookies") {
        for c in cookies.iter().filter_map(Value::as_str) {
            if let Ok(v) = HeaderValue::from_str(c) {
                headers.push((SET_COOKIE, v)).map_err(&invalid)?;
            }
        }
    }
    let headers = headers.list;
    let base64 = matches!(obj.get("isBase64Encoded"), Some(Value::Bool(true)));
    let body = match obj.get("body") {
        None | Some(Value::Null) => Bytes::new(),
        Some(Value::String(s)) if base64 => B64
            .decode(s)
            .map(Bytes::from)
            .map_err(|_| invalid("body is not valid base64"))?,
        Some(Value::String(s)) => Bytes::from(s.clone()),
        Some(other) => Bytes::from(other.to_string()),
    };
    Ok(Response {
        status,
        headers,
        body,
    })
}

#[cfg(test)]
#[path = "event/tests.rs"]
mod tests;
