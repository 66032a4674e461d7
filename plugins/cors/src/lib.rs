//! `cors`: a side answers browsers' cross-origin requests as the monolith did, whatever the
//! side itself says about CORS:
//!
//! ```toml
//! plugins = [{ use = "cors", origins = ["https://app.example"], methods = ["GET", "POST"],
//!              headers = ["content-type", "authorization"], expose = ["x-request-id"],
//!              credentials = true, max-age = 600 }]
//! ```
//!
//! A preflight (`OPTIONS` with `Origin` and `Access-Control-Request-Method`) is answered here,
//! never sent to the side: 204 with the allowed methods and headers when the origin and the
//! method are allowed, 403 without any CORS header otherwise. On other answers, a request from
//! an allowed origin gets `Access-Control-Allow-Origin` (the origin itself; `*` only for
//! `origins = ["*"]` without credentials), `Vary: Origin`, the credentials and exposed headers;
//! the CORS headers the side set are always replaced, so a side can never widen what the route
//! allows. Origins are compared exactly (scheme, host and port), case-insensitively.

use strangle_plugin::{
    header_name, Answer, Bytes, Error, Flow, HeaderMap, HeaderName, HeaderValue, Kind, Method,
    Plugin, Request, Response, Settings, StatusCode,
};

pub const KIND: Kind = Kind {
    name: "cors",
    build,
};

const MAX_AGE: u64 = 86_400;

#[derive(Debug)]
struct Cors {
    /// Lower-cased origins; empty with `any`.
    origins: Vec<String>,
    any: bool,
    methods: Vec<Method>,
    /// `Access-Control-Allow-Methods`, `-Headers` and `-Expose-Headers` as sent.
    allow_methods: HeaderValue,
    allow_headers: Option<HeaderValue>,
    expose: Option<HeaderValue>,
    credentials: bool,
    max_age: Option<HeaderValue>,
}

const ALLOW_ORIGIN: HeaderName = HeaderName::from_static("access-control-allow-origin");
const ALLOW_METHODS: HeaderName = HeaderName::from_static("access-control-allow-methods");
const ALLOW_HEADERS: HeaderName = HeaderName::from_static("access-control-allow-headers");
const ALLOW_CREDENTIALS: HeaderName = HeaderName::from_static("access-control-allow-credentials");
const EXPOSE: HeaderName = HeaderName::from_static("access-control-expose-headers");
const MAX_AGE_HEADER: HeaderName = HeaderName::from_static("access-control-max-age");
const VARY: HeaderName = HeaderName::from_static("vary");
const REQUEST_METHOD: &str = "access-control-request-method";

fn build(s: &Settings<'_>) -> Result<Box<dyn Plugin>, Error> {
    let origins = s.strings("origins")?.unwrap_or_default();
    let methods = s
        .strings("methods")?
        .unwrap_or_else(|| vec!["GET", "HEAD", "POST"]);
    let headers = s.strings("headers")?.unwrap_or_default();
    let expose = s.strings("expose")?.unwrap_or_default();
    let credentials = s.boolean("credentials")?.unwrap_or(false);
    let max_age = s.integer("max-age")?;
    s.finish(KIND.name)?;
    if origins.is_empty() {
        return Err(Error::whole("`origins` is required and not empty")
            .hint("list the origins browsers load the pages from, e.g. \"https://app.example\""));
    }
    let any = origins == ["*"];
    if any && credentials {
        return Err(
            Error::at("credentials", "browsers refuse `*` with credentials")
                .hint("list the origins instead of `*`"),
        );
    }
    let mut lowered = Vec::new();
    for o in origins.iter().filter(|_| !any) {
        lowered.push(origin(o)?);
    }
    let methods: Vec<Method> = methods
        .iter()
        .map(|m| {
            Method::from_bytes(m.to_ascii_uppercase().as_bytes())
                .map_err(|_| Error::at("methods", format!("`{m}` is not a method")))
        })
        .collect::<Result<_, _>>()?;
    let names = |key: &str, list: &[&str]| -> Result<Option<HeaderValue>, Error> {
        let names: Vec<HeaderName> = list
            .iter()
            .map(|n| header_name(key, n))
            .collect::<Result<_, _>>()?;
        let joined = names
            .iter()
            .map(HeaderName::as_str)
            .collect::<Vec<_>>()
            .join(", ");
        Ok((!names.is_empty())
            .then(|| HeaderValue::from_str(&joined))
            .and_then(Result::ok))
    };
    if max_age.is_some_and(|a| a > MAX_AGE) {
        return Err(Error::at(
            "max-age",
            format!("at most {MAX_AGE} seconds (browsers cap it)"),
        ));
    }
    let joined = methods
        .iter()
        .map(Method::as_str)
        .collect::<Vec<_>>()
        .join(", ");
    Ok(Box::new(Cors {
        origins: lowered,
        any,
        allow_methods: HeaderValue::from_str(&joined)
            .map_err(|_| Error::at("methods", "not header text"))?,
        methods,
        allow_headers: names("headers", &headers)?,
        expose: names("expose", &expose)?,
        credentials,
        max_age: max_age.map(HeaderValue::from),
    }))
}

/// An origin as browsers send it: `scheme://host[:port]`, lower-cased.
fn origin(o: &str) -> Result<String, Error> {
    let bad = || {
        Error::at("origins", format!("`{o}` is not an origin"))
            .hint("scheme://host[:port], with no path, e.g. \"https://app.example\"")
    };
    let (scheme, rest) = o.split_once("://").ok_or_else(bad)?;
    if !matches!(scheme, "http" | "https")
        || rest.is_empty()
        || rest.contains(['/', '?', '#', '@', ' ', '*'])
    {
        return Err(bad());
    }
    Ok(o.to_ascii_lowercase())
}

impl Cors {
    /// The request's `Origin`, when it is allowed.
    fn allowed<'h>(&self, headers: &'h HeaderMap) -> Option<&'h HeaderValue> {
        let origin = headers.get("origin")?;
        let text = origin.to_str().ok()?;
        (self.any || self.origins.iter().any(|o| o.eq_ignore_ascii_case(text))).then_some(origin)
    }

    /// The answer's CORS headers for an allowed `origin`.
    fn dress(&self, h: &mut dyn strangle_plugin::Headers, origin: &HeaderValue) {
        if self.any {
            h.set(ALLOW_ORIGIN, HeaderValue::from_static("*"));
        } else {
            h.set(ALLOW_ORIGIN, origin.clone());
            h.append(VARY, HeaderValue::from_static("origin"));
        }
        if self.credentials {
            h.set(ALLOW_CREDENTIALS, HeaderValue::from_static("true"));
        }
    }
}

/// Every CORS header an answer may carry, so that a side can never widen what is allowed.
fn strip(h: &mut dyn strangle_plugin::Headers) {
    for name in [
        ALLOW_ORIGIN,
        ALLOW_METHODS,
        ALLOW_HEADERS,
        ALLOW_CREDENTIALS,
        EXPOSE,
        MAX_AGE_HEADER,
    ] {
        h.remove(&name);
    }
}

impl Plugin for Cors {
    fn request(&self, req: &mut Request<'_>) -> Flow {
        let headers = req.headers.map();
        if *req.method != Method::OPTIONS || !headers.contains_key("origin") {
            return Flow::Continue;
        }
        let Some(asked) = headers.get(REQUEST_METHOD) else {
            return Flow::Continue;
        };
        let mut answer = HeaderMap::new();
        let allowed_method = Method::from_bytes(asked.as_bytes()).is_ok_and(|m| {
            self.methods.contains(&m) || m == Method::HEAD && self.methods.contains(&Method::GET)
        });
        let status = match self.allowed(headers).filter(|_| allowed_method) {
            Some(origin) => {
                let origin = origin.clone();
                self.dress(&mut answer, &origin);
                answer.insert(ALLOW_METHODS, self.allow_methods.clone());
                if let Some(h) = &self.allow_headers {
                    answer.insert(ALLOW_HEADERS, h.clone());
                }
                if let Some(a) = &self.max_age {
                    answer.insert(MAX_AGE_HEADER, a.clone());
                }
                StatusCode::NO_CONTENT
            }
            None => StatusCode::FORBIDDEN,
        };
        Flow::Answer(Box::new(Answer {
            status,
            headers: answer,
            body: Bytes::new(),
        }))
    }

    fn response(&self, resp: &mut Response<'_>) {
        strip(resp.headers);
        if let Some(origin) = self.allowed(resp.request_headers) {
            let origin = origin.clone();
            self.dress(resp.headers, &origin);
            if let Some(e) = &self.expose {
                resp.headers.set(EXPOSE, e.clone());
            }
        }
    }
}

#[cfg(test)]
mod tests;
