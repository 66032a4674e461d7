//! A fleet of replicas running one rollout (`[admin.fleet]`): the Kubernetes API calls it
//! needs (a Lease for the leader, the ConfigMap the replicas' config comes from), and the
//! replicas' counters, read from each one's `GET /status` and summed.
//!
//! Leader election is the Lease protocol client-go uses: the holder renews `renewTime` well
//! within `leaseDurationSeconds`; another replica takes the Lease only once it expired, and every
//! write carries the `resourceVersion` it read, so two replicas that race get one 200 and one 409
//! (the API server's optimistic concurrency). The leader also keeps the rollouts' state in the
//! Lease (an annotation), so the replica that takes over goes on where it was.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http::{header, Method, Request, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde_json::{json, Value};

use crate::rollout::Counters;

/// The annotation of the Lease that holds the rollouts' state.
pub const STATE_ANNOTATION: &str = "strangle.dev/rollouts";
/// Every call to the API server or a replica ends by this.
const CALL_TIMEOUT: Duration = Duration::from_secs(5);
/// The largest answer read (a ConfigMap is at most 1 MiB; a replica's status with many routes).
const MAX_ANSWER: usize = 16 << 20;

type HttpClient = Client<hyper_rustls::HttpsConnector<HttpConnector>, Full<Bytes>>;

/// A client of the Kubernetes API for one fleet.
pub struct Kube {
    api: String,
    token_file: PathBuf,
    client: HttpClient,
}

impl Kube {
    /// The API server named by `api`, or the in-cluster one; TLS trusts the cluster's CA
    /// (`ca_file`); calls carry the service account's token (`token_file`, read each time).
    pub fn new(api: Option<&str>, token_file: &Path, ca_file: &Path) -> Result<Kube, String> {
        let api = match api {
            Some(api) => api.to_string(),
            None => {
                let host = std::env::var("KUBERNETES_SERVICE_HOST")
                    .map_err(|_| "not in a cluster ($KUBERNETES_SERVICE_HOST is unset): name the API server ([admin.fleet] api, [admin] kubernetes-api)".to_string())?;
                let port =
                    std::env::var("KUBERNETES_SERVICE_PORT").unwrap_or_else(|_| "443".into());
                let host = if host.contains(':') {
                    format!("[{host}]")
                } else {
                    host
                };
                format!("https://{host}:{port}")
            }
        };
        let builder = hyper_rustls::HttpsConnectorBuilder::new();
        let https = if api.starts_with("https://") {
            let pem = std::fs::read(ca_file)
                .map_err(|e| format!("cannot read the cluster CA {}: {e}", ca_file.display()))?;
            let mut roots = rustls::RootCertStore::empty();
            use rustls::pki_types::pem::PemObject as _;
            for cert in rustls::pki_types::CertificateDer::pem_slice_iter(&pem) {
                let cert = cert.map_err(|e| format!("bad PEM in {}: {e}", ca_file.display()))?;
                roots
                    .add(cert)
                    .map_err(|e| format!("bad CA certificate: {e}"))?;
            }
            let tls = rustls::ClientConfig::builder()
                .with_root_certificates(roots)
                .with_no_client_auth();
            builder
                .with_tls_config(tls)
                .https_only()
                .enable_http1()
                .build()
        } else {
            builder
                .with_tls_config(
                    rustls::ClientConfig::builder()
                        .with_root_certificates(rustls::RootCertStore::empty())
                        .with_no_client_auth(),
                )
                .https_or_http()
                .enable_http1()
                .build()
        };
        Ok(Kube {
            api,
            token_file: token_file.to_path_buf(),
            client: Client::builder(TokioExecutor::new()).build(https),
        })
    }

    /// One call; the service account's token is read each time (Kubernetes rotates it).
    async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
    ) -> Result<(StatusCode, Value), String> {
        let mut req = Request::builder()
            .method(method)
            .uri(format!("{}{path}", self.api))
            .header(header::ACCEPT, "application/json")
            .header(
                header::USER_AGENT,
                concat!("strangle/", env!("CARGO_PKG_VERSION")),
            );
        if let Ok(token) = std::fs::read_to_string(&self.token_file) {
            req = req.header(header::AUTHORIZATION, format!("Bearer {}", token.trim()));
        }
        let body = match body {
            Some(v) => {
                req = req.header(header::CONTENT_TYPE, "application/json");
                Bytes::from(serde_json::to_vec(v).map_err(|e| e.to_string())?)
            }
            None => Bytes::new(),
        };
        let req = req.body(Full::new(body)).map_err(|e| e.to_string())?;
        let call = async {
            let resp = self.client.request(req).await.map_err(|e| format!("{e}"))?;
            let status = resp.status();
            let bytes = Limited::new(resp.into_body(), MAX_ANSWER)
                .collect()
                .await
                .map_err(|e| format!("reading the answer: {e}"))?
                .to_bytes();
            let value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
            Ok((status, value))
        };
        tokio::time::timeout(CALL_TIMEOUT, call)
            .await
            .map_err(|_| format!("the API server did not answer within {CALL_TIMEOUT:?}"))?
    }

    fn lease_path(ns: &str, name: &str) -> String {
        format!("/apis/coordination.k8s.io/v1/namespaces/{ns}/leases/{name}")
    }

    fn configmap_path(ns: &str, name: &str) -> String {
        format!("/api/v1/namespaces/{ns}/configmaps/{name}")
    }

    /// The ConfigMap (`None` when there is none).
    pub async fn configmap(&self, (ns, name): &(String, String)) -> Result<Value, String> {
        let (status, v) = self
            .call(Method::GET, &Self::configmap_path(ns, name), None)
            .await?;
        match status {
            StatusCode::OK => Ok(v),
            s => Err(format!("GET ConfigMap {ns}/{name}: {s} {}", message(&v))),
        }
    }

    /// Replaces the ConfigMap (`value` carries the `resourceVersion` it was read at): `false`
    /// when another writer changed it since (409).
    pub async fn replace_configmap(
        &self,
        (ns, name): &(String, String),
        value: &Value,
    ) -> Result<bool, String> {
        let (status, v) = self
            .call(Method::PUT, &Self::configmap_path(ns, name), Some(value))
            .await?;
        match status {
            StatusCode::OK => Ok(true),
            StatusCode::CONFLICT => Ok(false),
            s => Err(format!("PUT ConfigMap {ns}/{name}: {s} {}", message(&v))),
        }
    }

    /// Takes or renews the Lease for `me`. Returns who holds it after this call and, when
    /// another replica does (or this one just took it over), the state it keeps.
    pub async fn lead(
        &self,
        (ns, name): &(String, String),
        me: &str,
        duration: Duration,
        state: &str,
    ) -> Result<Lead, String> {
        let path = Self::lease_path(ns, name);
        let now = micro_time(SystemTime::now());
        let secs = duration.as_secs().max(1);
        let (status, lease) = self.call(Method::GET, &path, None).await?;
        if status == StatusCode::NOT_FOUND {
            let body = json!({
                "apiVersion": "coordination.k8s.io/v1",
                "kind": "Lease",
                "metadata": {"name": name, "namespace": ns, "annotations": {STATE_ANNOTATION: state}},
                "spec": {"holderIdentity": me, "leaseDurationSeconds": secs, "acquireTime": now, "renewTime": now, "leaseTransitions": 0},
            });
            let create = format!("/apis/coordination.k8s.io/v1/namespaces/{ns}/leases");
            let (status, v) = self.call(Method::POST, &create, Some(&body)).await?;
            return match status {
                StatusCode::CREATED | StatusCode::OK => Ok(Lead::new(me, true, None)),
                StatusCode::CONFLICT => Ok(Lead::new("", false, None)),
                s => Err(format!("POST Lease {ns}/{name}: {s} {}", message(&v))),
            };
        }
        if status != StatusCode::OK {
            return Err(format!(
                "GET Lease {ns}/{name}: {status} {}",
                message(&lease)
            ));
        }
        let spec = &lease["spec"];
        let holder = spec["holderIdentity"].as_str().unwrap_or("").to_string();
        let kept = lease["metadata"]["annotations"][STATE_ANNOTATION]
            .as_str()
            .map(str::to_string);
        let held_for = Duration::from_secs(spec["leaseDurationSeconds"].as_u64().unwrap_or(secs));
        let renewed = spec["renewTime"]
            .as_str()
            .and_then(|t| humantime::parse_rfc3339(t).ok())
            .unwrap_or(SystemTime::UNIX_EPOCH);
        let expired = renewed + held_for < SystemTime::now();
        if holder != me && !holder.is_empty() && !expired {
            return Ok(Lead::new(&holder, false, kept));
        }
        let mut lease = lease;
        let taking_over = holder != me;
        lease["spec"]["holderIdentity"] = json!(me);
        lease["spec"]["renewTime"] = json!(now);
        lease["spec"]["leaseDurationSeconds"] = json!(secs);
        if taking_over {
            lease["spec"]["acquireTime"] = json!(now);
            let n = lease["spec"]["leaseTransitions"].as_u64().unwrap_or(0);
            lease["spec"]["leaseTransitions"] = json!(n + 1);
        } else {
            // Only the holder writes the state: a replica taking over keeps the one it found.
            lease["metadata"]["annotations"][STATE_ANNOTATION] = json!(state);
        }
        let (status, v) = self.call(Method::PUT, &path, Some(&lease)).await?;
        match status {
            StatusCode::OK => Ok(Lead::new(me, true, kept.filter(|_| taking_over))),
            // Another replica renewed or took it in between: it leads.
            StatusCode::CONFLICT => Ok(Lead::new("", false, None)),
            s => Err(format!("PUT Lease {ns}/{name}: {s} {}", message(&v))),
        }
    }
}

/// What `Kube::lead` found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lead {
    /// The holder ("" when a race was lost and it is not known yet).
    pub holder: String,
    pub leading: bool,
    /// The rollouts' state kept in the Lease, to adopt: a follower's view, or what a replica
    /// that just took over goes on from.
    pub state: Option<String>,
}

impl Lead {
    fn new(holder: &str, leading: bool, state: Option<String>) -> Lead {
        Lead {
            holder: holder.to_string(),
            leading,
            state,
        }
    }
}

/// Kubernetes' `MicroTime`: RFC 3339 with microseconds.
fn micro_time(t: SystemTime) -> String {
    humantime::format_rfc3339_micros(t).to_string()
}

fn message(v: &Value) -> String {
    v["message"]
        .as_str()
        .unwrap_or("")
        .chars()
        .take(300)
        .collect()
}

/// The config text a ConfigMap holds under `key`.
pub fn config_text<'a>(configmap: &'a Value, key: &str) -> Option<&'a str> {
    configmap["data"][key].as_str()
}

/// The replicas' counters, by route, summed; and the replicas that did not answer (a step is
/// never taken without every replica's traffic: a failing one could be among them).
pub async fn gather(
    peers: &[String],
    token: Option<&str>,
) -> (std::collections::HashMap<String, Counters>, Vec<String>) {
    let mut addresses: Vec<SocketAddr> = Vec::new();
    let mut missing = Vec::new();
    for peer in peers {
        match tokio::time::timeout(CALL_TIMEOUT, tokio::net::lookup_host(peer.as_str())).await {
            Ok(Ok(found)) => {
                let mut any = false;
                for a in found {
                    any = true;
                    if !addresses.contains(&a) {
                        addresses.push(a);
                    }
                }
                if !any {
                    missing.push(format!("{peer} (no address)"));
                }
            }
            _ => missing.push(format!("{peer} (not resolved)")),
        }
    }
    let client: Client<HttpConnector, Full<Bytes>> =
        Client::builder(TokioExecutor::new()).build_http();
    let mut calls = tokio::task::JoinSet::new();
    for (i, addr) in addresses.iter().copied().enumerate() {
        let client = client.clone();
        let auth = token.map(|t| format!("Bearer {t}"));
        calls.spawn(async move {
            let mut req = Request::get(format!("http://{addr}/status"))
                .header(header::HOST, addr.to_string());
            if let Some(auth) = auth {
                req = req.header(header::AUTHORIZATION, auth);
            }
            let call = async {
                let req = req
                    .body(Full::new(Bytes::new()))
                    .map_err(|e| e.to_string())?;
                let resp = client.request(req).await.map_err(|e| e.to_string())?;
                if !resp.status().is_success() {
                    return Err(format!("status {}", resp.status()));
                }
                let bytes = Limited::new(resp.into_body(), MAX_ANSWER)
                    .collect()
                    .await
                    .map_err(|e| e.to_string())?
                    .to_bytes();
                serde_json::from_slice::<Value>(&bytes).map_err(|e| e.to_string())
            };
            let answer = tokio::time::timeout(CALL_TIMEOUT, call)
                .await
                .map_err(|_| "timed out".to_string())
                .and_then(|r| r);
            (i, answer)
        });
    }
    let mut answers: Vec<Result<Value, String>> = addresses
        .iter()
        .map(|_| Err("no answer".to_string()))
        .collect();
    while let Some(done) = calls.join_next().await {
        if let Ok((i, answer)) = done {
            answers[i] = answer;
        }
    }
    let mut sums: std::collections::HashMap<String, Counters> = std::collections::HashMap::new();
    for (addr, answer) in addresses.iter().zip(answers) {
        let status = match answer {
            Ok(s) => s,
            Err(e) => {
                missing.push(format!("{addr} ({e})"));
                continue;
            }
        };
        for route in status["routes"].as_array().into_iter().flatten() {
            let (Some(id), Ok(c)) = (
                route["id"].as_str(),
                serde_json::from_value::<Counters>(route["counters"].clone()),
            ) else {
                continue;
            };
            let sum = sums.entry(id.to_string()).or_default();
            *sum = sum.add(&c);
        }
    }
    (sums, missing)
}
