//! The Lambda Invoke call itself, against a stand-in Invoke endpoint that verifies the SigV4
//! signature the way AWS does (re-signing the signed headers with aws-sigv4) and answers as
//! Lambda does for each scenario: a normal answer, a function error, throttling, a slow
//! function, an oversized response.

use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use aws_credential_types::Credentials;
use aws_sigv4::http_request::{sign, SignableBody, SignableRequest, SigningSettings};
use aws_sigv4::sign::v4;
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper::{Request, Response};

use crate::support::*;

const KEY_ID: &str = "AKIASTRANGLETEST0001";
const SECRET: &str = "strangle/test/secret/key/not+a+real+one000";
const TOKEN: &str = "session-token-for-the-test";

/// What the stand-in saw of one Invoke call.
#[derive(Debug, Clone)]
pub struct Invocation {
    pub uri: String,
    pub headers: Vec<(String, String)>,
    pub event: serde_json::Value,
    pub signature_ok: Result<(), String>,
}

pub struct InvokeEndpoint {
    pub port: u16,
    pub seen: Arc<Mutex<Vec<Invocation>>>,
}

fn amz_date_to_time(d: &str) -> Option<SystemTime> {
    // 20261128T082500Z -> 2026-11-28T08:25:00Z
    let rfc = format!(
        "{}-{}-{}T{}:{}:{}Z",
        &d[0..4],
        &d[4..6],
        &d[6..8],
        &d[9..11],
        &d[11..13],
        &d[13..15]
    );
    humantime::parse_rfc3339(&rfc).ok()
}

/// Verifies `Authorization` the way the service does: same scope, and the same signature when
/// the signed headers and body are signed again with the secret.
fn verify(
    service: &str,
    method: &str,
    uri: &str,
    headers: &[(String, String)],
    body: &[u8],
) -> Result<(), String> {
    let get = |n: &str| {
        headers
            .iter()
            .find(|(k, _)| k == n)
            .map(|(_, v)| v.as_str())
    };
    let auth = get("authorization").ok_or("no Authorization header")?;
    let rest = auth.strip_prefix("AWS4-HMAC-SHA256 ").ok_or("not SigV4")?;
    let field = |name: &str| {
        rest.split(", ")
            .find_map(|p| p.strip_prefix(name))
            .map(str::to_string)
            .ok_or(format!("no {name}"))
    };
    let credential = field("Credential=")?;
    let signed = field("SignedHeaders=")?;
    let signature = field("Signature=")?;
    let scope: Vec<&str> = credential.split('/').collect();
    if scope.len() != 5
        || scope[0] != KEY_ID
        || scope[2] != "eu-west-1"
        || scope[3] != service
        || scope[4] != "aws4_request"
    {
        return Err(format!("wrong credential scope {credential}"));
    }
    if get("x-amz-security-token") != Some(TOKEN) {
        return Err("session token missing".into());
    }
    let time =
        amz_date_to_time(get("x-amz-date").ok_or("no x-amz-date")?).ok_or("bad x-amz-date")?;
    let signed_headers: Vec<(&str, &str)> = signed
        .split(';')
        .filter(|h| {
            *h != "x-amz-security-token" && *h != "x-amz-content-sha256" && *h != "x-amz-date"
        })
        .map(|h| (h, get(h).unwrap_or("")))
        .collect();
    let identity = Credentials::new(KEY_ID, SECRET, Some(TOKEN.to_string()), None, "test").into();
    let params = v4::SigningParams::builder()
        .identity(&identity)
        .region("eu-west-1")
        .name(service)
        .time(time)
        .settings(SigningSettings::default())
        .build()
        .unwrap()
        .into();
    let full_uri = format!("http://{}{}", get("host").unwrap_or(""), uri);
    let signable = SignableRequest::new(
        method,
        full_uri,
        signed_headers.into_iter(),
        SignableBody::Bytes(body),
    )
    .map_err(|e| e.to_string())?;
    let (_, expected) = sign(signable, &params)
        .map_err(|e| e.to_string())?
        .into_parts();
    if expected == signature {
        Ok(())
    } else {
        Err(format!(
            "signature mismatch: got {signature}, expected {expected}"
        ))
    }
}

impl InvokeEndpoint {
    pub fn start() -> InvokeEndpoint {
        Self::start_for("lambda")
    }

    /// A stand-in for `service`: `lambda` (the Invoke API) or `execute-api` (an IAM-authorized
    /// API Gateway API, which answers with plain HTTP).
    pub fn start_for(service: &'static str) -> InvokeEndpoint {
        let seen: Arc<Mutex<Vec<Invocation>>> = Arc::default();
        let record = Arc::clone(&seen);
        let port = serve_http(move |req| {
            let record = Arc::clone(&record);
            async move { answer(service, req, &record).await }
        });
        InvokeEndpoint { port, seen }
    }

    pub fn seen(&self) -> Vec<Invocation> {
        self.seen.lock().unwrap().clone()
    }
}

async fn answer(
    service: &str,
    req: Request<hyper::body::Incoming>,
    record: &Mutex<Vec<Invocation>>,
) -> Response<Full<Bytes>> {
    let (parts, body) = req.into_parts();
    let body = body
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let headers: Vec<(String, String)> = parts
        .headers
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_str().unwrap_or("").to_string()))
        .collect();
    let uri = parts.uri.to_string();
    let event: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
    let signature_ok = verify(service, parts.method.as_str(), &uri, &headers, &body);
    record.lock().unwrap().push(Invocation {
        uri,
        headers,
        event: event.clone(),
        signature_ok,
    });
    if service == "execute-api" {
        let text = format!(
            "{} {} {}",
            parts.method,
            parts.uri,
            String::from_utf8_lossy(&body)
        );
        return Response::builder()
            .status(if parts.method == "POST" { 201 } else { 200 })
            .header("x-served-by", "api-gateway")
            .header("set-cookie", "a=1")
            .header("set-cookie", "b=2")
            .body(Full::new(Bytes::from(text)))
            .unwrap();
    }
    let path = event["rawPath"].as_str().unwrap_or("").to_string();
    let reply = |status: u16, body: String| {
        Response::builder()
            .status(status)
            .body(Full::new(Bytes::from(body)))
            .unwrap()
    };
    match path.as_str() {
        "/bookings/fail" => Response::builder()
            .status(200)
            .header("x-amz-function-error", "Unhandled")
            .body(Full::new(Bytes::from(r#"{"errorMessage":"db password is hunter2","errorType":"Panic"}"#)))
            .unwrap(),
        "/bookings/throttle" => reply(429, r#"{"Reason":"ReservedFunctionConcurrentInvocationLimitExceeded","message":"Rate Exceeded."}"#.into()),
        "/bookings/slow" => {
            // A function slower than the upstream's 1 s timeout.
            tokio::time::sleep(Duration::from_secs(3)).await;
            reply(200, r#"{"statusCode":200,"body":"late"}"#.into())
        }
        // A 1xx is no final answer: it must not reach the client as one.
        "/bookings/informational" => reply(200, r#"{"statusCode":100,"headers":{"x-a":"1"},"body":"lost"}"#.into()),
        // 20,000 values of one header (decoding them was quadratic).
        "/bookings/many-headers" => {
            let values: Vec<String> = (0..20_000).map(|i| format!("\"v{i}\"")).collect();
            reply(200, format!(r#"{{"statusCode":200,"multiValueHeaders":{{"x-a":[{}]}},"body":"x"}}"#, values.join(",")))
        }
        "/bookings/huge" => reply(200, format!(r#"{{"statusCode":200,"body":"{}"}}"#, "x".repeat(7 * 1024 * 1024))),
        _ => reply(
            200,
            serde_json::json!({
                "statusCode": 200,
                "headers": {"content-type": "application/json", "x-served-by": "invoke-endpoint"},
                "cookies": ["a=1; Path=/", "b=2"],
                "body": serde_json::json!({"echo": event["rawPath"]}).to_string(),
            })
            .to_string(),
        ),
    }
}

pub fn lambda_env() -> Vec<(&'static str, &'static str)> {
    vec![
        ("AWS_ACCESS_KEY_ID", KEY_ID),
        ("AWS_SECRET_ACCESS_KEY", SECRET),
        ("AWS_SESSION_TOKEN", TOKEN),
        ("AWS_EC2_METADATA_DISABLED", "true"),
        ("AWS_CONFIG_FILE", "/nonexistent"),
        ("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent"),
    ]
}

fn config(endpoint: u16, legacy: &Backend) -> String {
    Config::new()
        .default("monolith")
        .upstream("monolith", &legacy.addr())
        .lambda("bookings-fn", endpoint)
        .with("qualifier = \"live\"\ntimeout = \"1s\"")
        .route("bookings", "/bookings", |r| {
            r.legacy("monolith").new("bookings-fn").shift("100%")
        })
        .build()
}

#[test]
fn invokes_are_sigv4_signed_with_env_credentials_and_client_amz_headers_stay_out() {
    let endpoint = InvokeEndpoint::start();
    let legacy = Backend::start("legacy");
    let proxy = Proxy::start_with_env(&config(endpoint.port, &legacy), &lambda_env());
    let r = get(
        proxy.port,
        "/bookings/7?x=1",
        &[
            ("x-amz-date", "20000101T000000Z"),
            ("x-amz-security-token", "forged"),
            ("x-amzn-trace-id", "Root=1-forged"),
            ("x-keep", "yes"),
        ],
    );
    assert_eq!(r.status, 200, "{}", proxy.stderr());
    assert_eq!(r.header("x-served-by"), Some("invoke-endpoint"));
    assert_eq!(r.text(), r#"{"echo":"/bookings/7"}"#);
    let inv = endpoint.seen().pop().unwrap();
    assert_eq!(
        inv.uri,
        "/2015-03-31/functions/bookings/invocations?Qualifier=live"
    );
    assert_eq!(inv.signature_ok, Ok(()), "{inv:?}");
    let header = |n: &str| {
        inv.headers
            .iter()
            .find(|(k, _)| k == n)
            .map(|(_, v)| v.clone())
    };
    assert_eq!(header("x-amz-security-token").as_deref(), Some(TOKEN));
    assert_ne!(header("x-amz-date").as_deref(), Some("20000101T000000Z"));
    assert!(header("x-amzn-trace-id").is_none());
    for forged in ["x-amz-date", "x-amz-security-token", "x-amzn-trace-id"] {
        assert!(
            inv.event["headers"].get(forged).is_none(),
            "{forged} reached the event"
        );
    }
    assert_eq!(inv.event["headers"]["x-keep"], "yes");
    assert_eq!(inv.event["rawQueryString"], "x=1");
    // A Lambda route logs the path it routed, like an HTTP one.
    assert_eq!(get(proxy.port, "//bookings/./8", &[]).status, 200);
    assert_eq!(
        endpoint.seen().pop().unwrap().event["rawPath"],
        "/bookings/8"
    );
    let log = proxy.log_when(2);
    assert_eq!(log[1]["path"], "/bookings/8");
}

#[test]
fn failures_map_to_the_documented_statuses_and_never_leak_the_error() {
    let endpoint = InvokeEndpoint::start();
    let legacy = Backend::start("legacy");
    let proxy = Proxy::start_with_env(&config(endpoint.port, &legacy), &lambda_env());

    let r = get(proxy.port, "/bookings/fail", &[]);
    assert_eq!(r.status, 502);
    assert!(!r.text().contains("hunter2"));
    assert!(
        proxy.wait_for_log("the function failed (Unhandled)", Duration::from_secs(2)),
        "{}",
        proxy.stderr()
    );

    let r = get(proxy.port, "/bookings/throttle", &[]);
    assert_eq!(r.status, 503);
    assert_eq!(r.header("retry-after"), Some("1"));

    let r = get(proxy.port, "/bookings/slow", &[]);
    assert_eq!(r.status, 504);

    let r = get(proxy.port, "/bookings/huge", &[]);
    assert_eq!(r.status, 502);

    // Over 6 MB of request body: 413 before invoking.
    let before = endpoint.seen().len();
    let mut big = format!(
        "POST /bookings/upload HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\r\n",
        6 * 1024 * 1024 + 1
    )
    .into_bytes();
    big.resize(big.len() + 6 * 1024 * 1024 + 1, b'a');
    let r = Client::connect(proxy.port)
        .send_early_answered(&big)
        .unwrap();
    assert_eq!(r.status, 413);
    // Chunked, without a declared length, is cut off the same way.
    let mut raw_req =
        b"POST /bookings/upload HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
    for _ in 0..7 {
        raw_req.extend_from_slice(format!("{:x}\r\n", 1024 * 1024).as_bytes());
        raw_req.extend(std::iter::repeat_n(b'b', 1024 * 1024));
        raw_req.extend_from_slice(b"\r\n");
    }
    raw_req.extend_from_slice(b"0\r\n\r\n");
    let r = Client::connect(proxy.port)
        .send_early_answered(&raw_req)
        .unwrap();
    assert_eq!(r.status, 413);
    assert_eq!(
        endpoint.seen().len(),
        before,
        "an oversized body was sent to Lambda"
    );

    // Non-idempotent and failing: invoked exactly once.
    let before = endpoint.seen().len();
    let r = Client::connect(proxy.port)
        .request("POST", "/bookings/fail", &[], b"{}")
        .unwrap();
    assert_eq!(r.status, 502);
    assert_eq!(endpoint.seen().len(), before + 1);

    let log = proxy.log_when(6);
    assert_eq!(log[0]["side"], "new");
    assert_eq!(log[0]["upstream"], "bookings-fn");
    assert_eq!(log[0]["status"], 502);
}

#[test]
fn api_gateway_urls_get_sigv4_signed_requests_with_the_body_hash() {
    let api = InvokeEndpoint::start_for("execute-api");
    let legacy = Backend::start("legacy");
    let text = Config::new()
        .default("monolith")
        .upstream("monolith", &legacy.addr())
        .signed_api("bookings-api", api.port)
        .route("bookings", "/bookings", |r| {
            r.legacy("monolith").new("bookings-api").shift("100%")
        })
        .build();
    let proxy = Proxy::start_with_env(&text, &lambda_env());
    let r = Client::connect(proxy.port)
        .request(
            "POST",
            "/bookings/9?currency=EUR",
            &[
                ("content-type", "application/json"),
                ("authorization", "Bearer client-token"),
                ("x-amz-date", "20000101T000000Z"),
            ],
            br#"{"seat":"1A"}"#,
        )
        .unwrap();
    assert_eq!(r.status, 201, "{}", proxy.stderr());
    assert_eq!(
        r.text(),
        r#"POST /prod/bookings/9?currency=EUR {"seat":"1A"}"#
    );
    assert_eq!(r.all("set-cookie"), ["a=1", "b=2"]);
    let seen = api.seen().pop().unwrap();
    assert_eq!(seen.signature_ok, Ok(()), "{seen:?}");
    let header = |n: &str| {
        seen.headers
            .iter()
            .find(|(k, _)| k == n)
            .map(|(_, v)| v.clone())
    };
    assert!(header("authorization")
        .unwrap()
        .starts_with("AWS4-HMAC-SHA256 Credential=AKIASTRANGLETEST0001/"));
    assert_ne!(header("x-amz-date").as_deref(), Some("20000101T000000Z"));
    assert_eq!(header("x-forwarded-for").as_deref(), Some("127.0.0.1"));
    // A GET without a body is signed too.
    let r = get(proxy.port, "/bookings/10", &[]);
    assert_eq!(r.status, 200);
    assert_eq!(api.seen().pop().unwrap().signature_ok, Ok(()));
}
