//! `status-map`: a side's answers of one status, as the monolith gave them, e.g. the new
//! service's 404 `application/problem+json` as the monolith's 404 page:
//!
//! ```toml
//! plugins = [{ use = "status-map", side = "new", status = 404,
//!              content-type = "text/html; charset=utf-8", body = "<h1>Not Found</h1>" }]
//! ```
//!
//! `status` is the side's status to map; `to` the status the client gets instead (the same by
//! default); `body` (with its `content-type`, `text/plain; charset=utf-8` by default) replaces
//! the side's body, which is then discarded unread, whatever its size. An entry per status.

use strangle_plugin::{
    BodyHead, BodyUse, Bytes, Error, HeaderName, HeaderValue, Kind, Plugin, Response, Settings,
    StatusCode,
};

pub const KIND: Kind = Kind {
    name: "status-map",
    build,
};

#[derive(Debug)]
struct StatusMap {
    from: StatusCode,
    to: StatusCode,
    /// The body and its content type, when the body is replaced.
    body: Option<(Bytes, HeaderValue)>,
}

fn status(key: &str, n: Option<u64>) -> Result<Option<StatusCode>, Error> {
    let Some(n) = n else { return Ok(None) };
    u16::try_from(n)
        .ok()
        .filter(|n| (200..600).contains(n))
        .and_then(|n| StatusCode::from_u16(n).ok())
        .map(Some)
        .ok_or_else(|| Error::at(key, format!("{n} is not a final status (200 to 599)")))
}

fn build(s: &Settings<'_>) -> Result<Box<dyn Plugin>, Error> {
    let from = status("status", s.integer("status")?)?
        .ok_or_else(|| Error::whole("`status` is required"))?;
    let to = status("to", s.integer("to")?)?.unwrap_or(from);
    let body = s.string("body")?;
    let content_type = s.string("content-type")?;
    s.finish(KIND.name)?;
    if content_type.is_some() && body.is_none() {
        return Err(Error::at(
            "content-type",
            "`content-type` goes with a `body`",
        ));
    }
    if body.is_none() && to == from {
        return Err(Error::whole("nothing to map: give `to`, `body` or both"));
    }
    // 204 and 304 answers have no body: there is none to map from, and none to give one.
    let bodiless = |s: StatusCode| s == StatusCode::NO_CONTENT || s == StatusCode::NOT_MODIFIED;
    if bodiless(from) {
        return Err(Error::at(
            "status",
            format!("{from} answers have no body to map"),
        ));
    }
    if bodiless(to) && body.is_some() {
        return Err(Error::at("body", format!("a {to} answer has no body")));
    }
    let body = match body {
        None => None,
        Some(b) => {
            let ct = content_type.unwrap_or("text/plain; charset=utf-8");
            let ct = HeaderValue::from_str(ct)
                .map_err(|_| Error::at("content-type", format!("`{ct}` is not a header value")))?;
            Some((Bytes::copy_from_slice(b.as_bytes()), ct))
        }
    };
    Ok(Box::new(StatusMap { from, to, body }))
}

/// What describes the side's body, and no longer holds once it is replaced.
const STALE: [HeaderName; 4] = [
    HeaderName::from_static("content-encoding"),
    HeaderName::from_static("etag"),
    HeaderName::from_static("last-modified"),
    HeaderName::from_static("content-range"),
];

impl Plugin for StatusMap {
    fn response(&self, resp: &mut Response<'_>) {
        if *resp.status != self.from {
            return;
        }
        *resp.status = self.to;
        if let Some((_, content_type)) = &self.body {
            for name in &STALE {
                resp.headers.remove(name);
            }
            resp.headers.set(
                HeaderName::from_static("content-type"),
                content_type.clone(),
            );
        }
    }

    fn response_body_use(&self, answer: &BodyHead<'_>) -> BodyUse {
        match &self.body {
            Some(_) if answer.original == self.from && answer.status == self.to => BodyUse::Replace,
            _ => BodyUse::None,
        }
    }

    fn response_body(&self, _answer: &BodyHead<'_>, body: &mut Vec<u8>) {
        if let Some((replacement, _)) = &self.body {
            body.clear();
            body.extend_from_slice(replacement);
        }
    }
}

#[cfg(test)]
mod tests;
