//! The body of `PUT /routes/{id}/shift`: `{"percent": 25}`, and optionally the shift the
//! change was decided on (`"from": "10%"`), so that a change decided on a stale view (another
//! operator shifted meanwhile) is refused instead of silently undoing theirs.

use bytes::Bytes;
use http::{Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Body;

use super::{error, BODY_TIMEOUT, MAX_BODY};
use crate::split::Shift;

/// What a shift request asks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct ShiftBody {
    pub to: Shift,
    /// The shift the caller saw; the change is refused (409) when the route's is another.
    pub from: Option<Shift>,
}

/// Reads `{"percent": 25}` (or `"0.5%"`) within `BODY_TIMEOUT` and `MAX_BODY`.
pub(super) async fn read_shift<B: Body>(body: B) -> Result<ShiftBody, Response<Full<Bytes>>>
where
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let hint = "send a JSON body like {\"percent\": 25} or {\"percent\": \"0.5%\"}";
    let body =
        match tokio::time::timeout(BODY_TIMEOUT, Limited::new(body, MAX_BODY).collect()).await {
            Err(_) => {
                return Err(error(
                    StatusCode::REQUEST_TIMEOUT,
                    format!("the body did not arrive within {BODY_TIMEOUT:?}"),
                ))
            }
            Ok(Err(e)) if e.is::<http_body_util::LengthLimitError>() => {
                return Err(error(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    format!("the body is over {MAX_BODY} bytes; {hint}"),
                ))
            }
            Ok(Err(e)) => {
                return Err(error(
                    StatusCode::BAD_REQUEST,
                    format!("cannot read the body: {e}"),
                ))
            }
            Ok(Ok(b)) => b.to_bytes(),
        };
    let value: serde_json::Value = serde_json::from_slice(&body).map_err(|e| {
        error(
            StatusCode::BAD_REQUEST,
            format!("the body is not JSON ({e}); {hint}"),
        )
    })?;
    let percent = match value.get("percent") {
        Some(serde_json::Value::Number(n)) => n.to_string(),
        Some(serde_json::Value::String(s)) => s.clone(),
        _ => return Err(error(StatusCode::BAD_REQUEST, hint)),
    };
    // The CLI's parser: what `strangle shift` refuses, the API refuses.
    let to = Shift::parse(&percent).map_err(|e| error(StatusCode::BAD_REQUEST, e))?;
    let from = match value.get("from") {
        None | Some(serde_json::Value::Null) => None,
        Some(serde_json::Value::String(s)) => Some(s.clone()),
        Some(serde_json::Value::Number(n)) => Some(n.to_string()),
        Some(_) => {
            return Err(error(
                StatusCode::BAD_REQUEST,
                "`from` is the shift the change was decided on, like \"25%\"",
            ))
        }
    };
    let from = match from.as_deref().map(Shift::parse) {
        None => None,
        Some(Ok(shift)) => Some(shift),
        Some(Err(e)) => return Err(error(StatusCode::BAD_REQUEST, format!("`from`: {e}"))),
    };
    Ok(ShiftBody { to, from })
}
