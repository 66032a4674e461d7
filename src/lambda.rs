//! Lambda upstreams: requests served by invoking a function through the Lambda Invoke API
//! (`POST /2015-03-31/functions/{function}/invocations`), signed with SigV4 using credentials
//! from the standard AWS chain (environment, profile, web identity / IRSA, EKS Pod Identity,
//! ECS, IMDSv2), refreshed before they expire. The HTTP client and the credential chain are built
//! on first use, inside Pingora's runtime, never before the server starts.

pub mod event;

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use aws_credential_types::provider::ProvideCredentials;
use aws_credential_types::Credentials;
use aws_sigv4::http_request::{sign, SignableBody, SignableRequest, SigningSettings};
use aws_sigv4::sign::v4;
use bytes::Bytes;
use http::{HeaderValue, Method, Request, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use tokio::sync::{Mutex, OnceCell};

use crate::config::{self, Payload};

/// Lambda's limit on a synchronous invocation's request and response payloads.
pub const PAYLOAD_LIMIT: usize = 6 * 1024 * 1024;

use crate::client::HttpsClient;

/// What an invocation came to, short of a normal response.
#[derive(Debug, thiserror::Error)]
pub enum InvokeError {
    #[error("the function failed ({kind}): {detail}")]
    Function { kind: String, detail: String },
    #[error("throttled by Lambda: {0}")]
    Throttled(String),
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    #[error("the response is over Lambda's {PAYLOAD_LIMIT}-byte limit")]
    TooLarge,
    #[error("no AWS credentials: {0}")]
    Credentials(String),
    #[error("the Invoke API answered {status}: {body}")]
    Api { status: u16, body: String },
    #[error("cannot reach the Invoke API: {0}")]
    Transport(String),
    #[error(transparent)]
    Decode(#[from] event::DecodeError),
}

impl InvokeError {
    /// The status the client gets: never the function's own error text.
    pub fn status(&self) -> u16 {
        match self {
            InvokeError::Throttled(_) => 503,
            InvokeError::Timeout(_) => 504,
            InvokeError::Credentials(_) => 500,
            _ => 502,
        }
    }
}

/// Process-wide AWS state: one pooled HTTPS client and one credential chain, built lazily.
struct Aws {
    client: &'static HttpsClient,
    provider: aws_credential_types::provider::SharedCredentialsProvider,
    cached: Mutex<Option<Credentials>>,
    /// The credentials last fetched, for callers that must never wait on `cached` (the shadow
    /// worker): read without a lock.
    latest: arc_swap::ArcSwapOption<Credentials>,
}

/// Who makes an AWS call.
#[derive(Clone, Copy)]
pub enum Caller<'a> {
    /// The request path: the shared client; credentials are refreshed here when due.
    Request,
    /// The shadow worker, on its idle-priority thread: a client of its own, so that no
    /// connection the request path uses is driven by that thread; the credentials the request
    /// path's chain last fetched, or fetched on `home` (the request path's runtime) when there
    /// are none fresh, so that the worker never holds a refresh or a lock a request waits on
    /// while the requests keep it off the CPU.
    Shadow {
        client: &'a HttpsClient,
        home: &'a tokio::runtime::Handle,
    },
}

impl<'a> Caller<'a> {
    /// The client to send with and fresh credentials for `region`.
    async fn ready(self, region: &str) -> Result<(&'a HttpsClient, Credentials), InvokeError> {
        match self {
            Caller::Request => {
                let aws = aws(region).await?;
                let creds = aws.credentials().await?;
                Ok((aws.client, creds))
            }
            Caller::Shadow { client, home } => {
                let latest = AWS.get().and_then(|aws| aws.latest.load_full());
                if let Some(creds) = latest.filter(|c| fresh(c)) {
                    return Ok((client, Credentials::clone(&creds)));
                }
                let region = region.to_string();
                let creds = home
                    .spawn(async move { aws(&region).await?.credentials().await })
                    .await
                    .map_err(|e| InvokeError::Credentials(format!("not fetched: {e}")))??;
                Ok((client, creds))
            }
        }
    }
}

/// Whether credentials are good for five more minutes at least.
fn fresh(c: &Credentials) -> bool {
    c.expiry()
        .is_none_or(|exp| exp > SystemTime::now() + Duration::from_secs(300))
}

static AWS: OnceCell<Arc<Aws>> = OnceCell::const_new();

/// `region` seeds the SDK's own region so it never has to look one up (IMDS included).
async fn aws(region: &str) -> Result<Arc<Aws>, InvokeError> {
    AWS.get_or_try_init(|| async {
        let client = crate::client::shared().map_err(InvokeError::Transport)?;
        let smithy_http = aws_smithy_http_client::Builder::new()
            .tls_provider(aws_smithy_http_client::tls::Provider::Rustls(
                aws_smithy_http_client::tls::rustls_provider::CryptoMode::Ring,
            ))
            .build_https();
        let sdk = aws_config::defaults(aws_config::BehaviorVersion::latest())
            .region(aws_config::Region::new(region.to_string()))
            .http_client(smithy_http)
            .load()
            .await;
        let provider = sdk
            .credentials_provider()
            .ok_or_else(|| InvokeError::Credentials("the AWS credential chain is empty".into()))?;
        Ok(Arc::new(Aws {
            client,
            provider,
            cached: Mutex::new(None),
            latest: arc_swap::ArcSwapOption::empty(),
        }))
    })
    .await
    .cloned()
}

impl Aws {
    /// Current credentials, refreshed five minutes before they expire.
    async fn credentials(&self) -> Result<Credentials, InvokeError> {
        let mut cached = self.cached.lock().await;
        if let Some(c) = cached.as_ref().filter(|c| fresh(c)) {
            return Ok(c.clone());
        }
        let c = self.provider.provide_credentials().await.map_err(|e| {
            InvokeError::Credentials(format!(
                "{e}: {}",
                std::error::Error::source(&e)
                    .map(|s| s.to_string())
                    .unwrap_or_default()
            ))
        })?;
        *cached = Some(c.clone());
        self.latest.store(Some(Arc::new(c.clone())));
        Ok(c)
    }
}

/// A live Lambda upstream.
#[derive(Debug)]
pub struct LambdaUpstream {
    pub target: config::LambdaTarget,
    /// `https://lambda.{region}.amazonaws.com/2015-03-31/functions/{fn}/invocations[?Qualifier=]`
    invoke_uri: String,
    pub timeout: Duration,
}

impl LambdaUpstream {
    pub fn new(target: &config::LambdaTarget, timeout: Duration) -> LambdaUpstream {
        let base = target
            .endpoint
            .clone()
            .unwrap_or_else(|| format!("https://lambda.{}.amazonaws.com", target.region));
        let function: String =
            form_urlencoded::byte_serialize(target.function.as_bytes()).collect();
        let mut invoke_uri = format!(
            "{}/2015-03-31/functions/{function}/invocations",
            base.trim_end_matches('/')
        );
        if let Some(q) = &target.qualifier {
            let q: String = form_urlencoded::byte_serialize(q.as_bytes()).collect();
            invoke_uri.push_str(&format!("?Qualifier={q}"));
        }
        LambdaUpstream {
            target: target.clone(),
            invoke_uri,
            timeout,
        }
    }

    pub fn payload(&self) -> Payload {
        self.target.payload
    }

    /// Invokes the function with an event and decodes its answer. `xray` is the trace header
    /// for the Invoke call (Lambda's active tracing continues it), when X-Ray propagation is on.
    /// `timeout`: a route's, in place of the upstream's.
    pub async fn invoke(
        &self,
        event: Vec<u8>,
        xray: Option<&[u8]>,
        timeout: Option<Duration>,
    ) -> Result<event::Response, InvokeError> {
        self.invoke_as(Caller::Request, event, xray, timeout).await
    }

    /// `invoke`, by `caller`.
    pub async fn invoke_as(
        &self,
        caller: Caller<'_>,
        event: Vec<u8>,
        xray: Option<&[u8]>,
        timeout: Option<Duration>,
    ) -> Result<event::Response, InvokeError> {
        let timeout = timeout.unwrap_or(self.timeout);
        let (client, creds) = caller.ready(&self.target.region).await?;
        let mut request = signed_invoke(
            &self.invoke_uri,
            &self.target.region,
            &creds,
            event,
            SystemTime::now(),
        )?;
        if let Some(v) = xray.and_then(|v| http::HeaderValue::from_bytes(v).ok()) {
            // Not signed: AWS reads it as the trace to continue, whatever the signature covers.
            request.headers_mut().insert("x-amzn-trace-id", v);
        }
        let call = async {
            let resp = client
                .request(request)
                .await
                .map_err(|e| InvokeError::Transport(e.to_string()))?;
            let status = resp.status();
            let function_error = resp
                .headers()
                .get("x-amz-function-error")
                .and_then(|v| v.to_str().ok())
                .map(str::to_string);
            let body = Limited::new(resp.into_body(), PAYLOAD_LIMIT)
                .collect()
                .await
                .map_err(|e| {
                    if e.downcast_ref::<http_body_util::LengthLimitError>()
                        .is_some()
                    {
                        InvokeError::TooLarge
                    } else {
                        InvokeError::Transport(e.to_string())
                    }
                })?
                .to_bytes();
            Ok::<_, InvokeError>((status, function_error, body))
        };
        let (status, function_error, body) = tokio::time::timeout(timeout, call)
            .await
            .map_err(|_| InvokeError::Timeout(timeout))??;
        let text = || String::from_utf8_lossy(&body[..body.len().min(2048)]).into_owned();
        if status == StatusCode::TOO_MANY_REQUESTS {
            return Err(InvokeError::Throttled(text()));
        }
        if !status.is_success() {
            return Err(InvokeError::Api {
                status: status.as_u16(),
                body: text(),
            });
        }
        if let Some(kind) = function_error {
            return Err(InvokeError::Function {
                kind,
                detail: text(),
            });
        }
        Ok(event::decode(self.target.payload, &body)?)
    }
}

/// `host[:port]` of a URL, as the Host header and the signature carry it.
fn host_of(uri: &http::Uri) -> Result<String, InvokeError> {
    match (uri.host(), uri.port_u16()) {
        (Some(h), Some(p)) => Ok(format!("{h}:{p}")),
        (Some(h), None) => Ok(h.to_string()),
        _ => Err(InvokeError::Transport(format!("no host in {uri}"))),
    }
}

/// Signs a request with SigV4: the body by its hash and, of the headers, only `signed` (those
/// strangle sets itself), so nothing a client sent reaches the signature. Adds `authorization`,
/// `x-amz-date` and, with temporary credentials, `x-amz-security-token`.
fn sign_request(
    request: &mut Request<Full<Bytes>>,
    region: &str,
    service: &str,
    creds: &Credentials,
    signed: &[http::HeaderName],
    body: &[u8],
    now: SystemTime,
) -> Result<(), InvokeError> {
    let failed = |e: &dyn std::fmt::Display| InvokeError::Credentials(e.to_string());
    let identity = creds.clone().into();
    let params = v4::SigningParams::builder()
        .identity(&identity)
        .region(region)
        .name(service)
        .time(now)
        .settings(SigningSettings::default())
        .build()
        .map_err(|e| failed(&e))?
        .into();
    let uri = request.uri().to_string();
    let headers = signed.iter().filter_map(|name| {
        let value = request.headers().get(name)?.to_str().ok()?;
        Some((name.as_str(), value))
    });
    let signable = SignableRequest::new(
        request.method().as_str(),
        uri,
        headers,
        SignableBody::Bytes(body),
    )
    .map_err(|e| failed(&e))?;
    let (instructions, _) = sign(signable, &params)
        .map_err(|e| failed(&e))?
        .into_parts();
    instructions.apply_to_request_http1x(request);
    Ok(())
}

/// Sends a request to an AWS HTTP endpoint (API Gateway, a Function URL) signed with SigV4 for
/// `sig`'s service and region, body hash included. Returns the response with its body still
/// streaming.
pub async fn send_signed(
    caller: Caller<'_>,
    sig: &config::Sigv4,
    method: &str,
    uri: &str,
    headers: Vec<(http::HeaderName, HeaderValue)>,
    body: Bytes,
    timeout: Duration,
) -> Result<http::Response<hyper::body::Incoming>, InvokeError> {
    let (region, service) = (sig.region.as_str(), sig.service.as_str());
    let (client, creds) = caller.ready(region).await?;
    let parsed: http::Uri = uri
        .parse()
        .map_err(|e| InvokeError::Transport(format!("bad URL {uri}: {e}")))?;
    let mut builder = Request::builder()
        .method(method)
        .header(http::header::HOST, host_of(&parsed)?)
        .uri(parsed);
    for (k, v) in headers {
        if k != http::header::HOST && k != http::header::CONTENT_LENGTH {
            builder = builder.header(k, v);
        }
    }
    let mut request = builder
        .header(http::header::CONTENT_LENGTH, body.len())
        .body(Full::new(body.clone()))
        .map_err(|e| InvokeError::Transport(e.to_string()))?;
    let signed = [http::header::HOST, http::header::CONTENT_TYPE];
    sign_request(
        &mut request,
        region,
        service,
        &creds,
        &signed,
        &body,
        SystemTime::now(),
    )?;
    tokio::time::timeout(timeout, client.request(request))
        .await
        .map_err(|_| InvokeError::Timeout(timeout))?
        .map_err(|e| InvokeError::Transport(e.to_string()))
}

/// Builds the signed Invoke request.
pub fn signed_invoke(
    uri: &str,
    region: &str,
    creds: &Credentials,
    event: Vec<u8>,
    now: SystemTime,
) -> Result<Request<Full<Bytes>>, InvokeError> {
    let parsed: http::Uri = uri
        .parse()
        .map_err(|e| InvokeError::Transport(format!("bad invoke URL {uri}: {e}")))?;
    let event = Bytes::from(event);
    let mut request = Request::builder()
        .method(Method::POST)
        .header(http::header::HOST, host_of(&parsed)?)
        .uri(parsed)
        .header(http::header::CONTENT_TYPE, "application/json")
        .header("x-amz-invocation-type", "RequestResponse")
        .header(http::header::CONTENT_LENGTH, event.len())
        .body(Full::new(event.clone()))
        .map_err(|e| InvokeError::Transport(e.to_string()))?;
    let signed = [
        http::header::HOST,
        http::header::CONTENT_TYPE,
        http::HeaderName::from_static("x-amz-invocation-type"),
    ];
    sign_request(&mut request, region, "lambda", creds, &signed, &event, now)?;
    Ok(request)
}
