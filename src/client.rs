//! strangle's own outbound HTTP client (Lambda Invoke, signed AWS endpoints, JWKS): pooled
//! keep-alive connections, rustls on ring with the system's roots. Built on first use, inside the
//! runtime that uses it.

use std::sync::OnceLock;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

pub type HttpsClient = Client<hyper_rustls::HttpsConnector<HttpConnector>, Full<Bytes>>;

static CLIENT: OnceLock<Result<HttpsClient, String>> = OnceLock::new();

/// The shared client, or why it could not be built (no system CA roots).
pub fn shared() -> Result<&'static HttpsClient, String> {
    CLIENT.get_or_init(build).as_ref().map_err(String::clone)
}

/// A client of its own (its own connection pool), for work that runs on another runtime.
pub fn build() -> Result<HttpsClient, String> {
    let https = hyper_rustls::HttpsConnectorBuilder::new()
        .with_native_roots()
        .map_err(|e| format!("no system CA roots: {e}"))?
        .https_or_http()
        .enable_http1()
        .build();
    Ok(Client::builder(TokioExecutor::new())
        .pool_idle_timeout(Duration::from_secs(60))
        .build(https))
}
