//! The dashboard at `GET /`: a page that reads this API and draws it (`dashboard.html`, `.js`,
//! `.css`, embedded in the binary; no CDN, no build step).

use bytes::Bytes;
use http::{header, Response, StatusCode};
use http_body_util::Full;

use super::reply;

/// The dashboard (`GET /`): one page, its script and its style, embedded in the binary.
const DASHBOARD_HTML: &str = include_str!("dashboard.html");
const DASHBOARD_JS: &str = include_str!("dashboard.js");
const DASHBOARD_CSS: &str = include_str!("dashboard.css");
/// A small icon, so the browser's own request for one is answered.
const FAVICON: &str = "<svg xmlns=\"http://www.w3.org/2000/svg\" viewBox=\"0 0 16 16\">\
<rect width=\"16\" height=\"16\" rx=\"3\" fill=\"#1f4e9c\"/><rect x=\"8\" width=\"8\" height=\"16\" \
rx=\"3\" fill=\"#a34f00\"/></svg>";

/// A dashboard file, with a policy that lets it load only itself and read only this API (a
/// template from a client path can never run as script), and never be framed.
pub(super) fn asset(file: &str) -> Response<Full<Bytes>> {
    let (content_type, body) = match file {
        "dashboard.js" => ("text/javascript; charset=utf-8", DASHBOARD_JS),
        "dashboard.css" => ("text/css; charset=utf-8", DASHBOARD_CSS),
        "favicon.svg" => ("image/svg+xml", FAVICON),
        _ => ("text/html; charset=utf-8", DASHBOARD_HTML),
    };
    let mut r = reply(StatusCode::OK, content_type, body);
    let headers = [
        (
            header::CONTENT_SECURITY_POLICY,
            "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; \
             img-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
        ),
        (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        (header::X_FRAME_OPTIONS, "DENY"),
        (header::REFERRER_POLICY, "no-referrer"),
        (header::CACHE_CONTROL, "no-cache"),
    ];
    for (name, value) in headers {
        r.headers_mut()
            .insert(name, http::HeaderValue::from_static(value));
    }
    r
}
