//! `headers`: request and response headers set, appended, removed and renamed, e.g. the new
//! service's `x-api-version` and the monolith's cache header:
//!
//! ```toml
//! plugins = [{ use = "headers", side = "new",
//!              request-set = { "x-api-version" = "2" }, request-rename = { "x-tenant" = "x-org" },
//!              response-remove = ["x-powered-by"], response-set = { "cache-control" = "no-store" } }]
//! ```
//!
//! Keys: `request-set`, `request-append`, `request-rename` and `response-...` the same (tables
//! of header name to value, or old name to new name), `request-remove` and `response-remove`
//! (lists of names). Applied in that order: remove, rename, set, append. Names are compared
//! case-insensitively. The headers strangle owns are refused at load: a request's forwarding
//! headers, `x-strangle-*`, `host`, `x-request-id` and the message's framing and hop-by-hop
//! headers (strangle's outbound policy, which runs after the plugins, would drop or replace
//! them anyway, and a rename into one must never look like something strangle vouches for).

use strangle_plugin::{
    header_name, header_value, Error, Flow, HeaderName, HeaderValue, Kind, Plugin, Request,
    Response, Settings, CLIENT_ADDRESS_HEADERS,
};

pub const KIND: Kind = Kind {
    name: "headers",
    build,
};

/// The changes for one direction.
#[derive(Debug, Default)]
struct Rules {
    remove: Vec<HeaderName>,
    rename: Vec<(HeaderName, HeaderName)>,
    set: Vec<(HeaderName, HeaderValue)>,
    append: Vec<(HeaderName, HeaderValue)>,
}

#[derive(Debug)]
struct HeaderRules {
    request: Rules,
    response: Rules,
}

/// Headers strangle owns on either message.
const OWNED: &[&str] = &[
    "host",
    "content-length",
    "transfer-encoding",
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "upgrade",
    "forwarded",
    "x-request-id",
];

fn owned(name: &HeaderName) -> bool {
    let n = name.as_str();
    OWNED.contains(&n)
        || CLIENT_ADDRESS_HEADERS.contains(&n)
        || n.starts_with("x-strangle-")
        || n.starts_with("x-forwarded-")
}

fn build(s: &Settings<'_>) -> Result<Box<dyn Plugin>, Error> {
    let rules = HeaderRules {
        request: rules(s, "request")?,
        response: rules(s, "response")?,
    };
    s.finish(KIND.name)?;
    Ok(Box::new(rules))
}

fn rules(s: &Settings<'_>, side: &str) -> Result<Rules, Error> {
    let key = |what: &str| format!("{side}-{what}");
    let name = |key: &str, n: &str| {
        let name = header_name(key, n)?;
        if owned(&name) {
            return Err(Error::at(key, format!("strangle owns `{name}`"))
                .hint("forwarding, framing and strangle's own headers are set by strangle"));
        }
        Ok(name)
    };
    let values = |what: &str| -> Result<Vec<(HeaderName, HeaderValue)>, Error> {
        let k = key(what);
        s.string_table(&k)?
            .unwrap_or_default()
            .into_iter()
            .map(|(n, v)| Ok((name(&k, n)?, header_value(&k, v)?)))
            .collect()
    };
    let (remove_key, rename_key) = (key("remove"), key("rename"));
    Ok(Rules {
        remove: s
            .strings(&remove_key)?
            .unwrap_or_default()
            .into_iter()
            .map(|n| name(&remove_key, n))
            .collect::<Result<_, _>>()?,
        rename: s
            .string_table(&rename_key)?
            .unwrap_or_default()
            .into_iter()
            .map(|(from, to)| Ok((name(&rename_key, from)?, name(&rename_key, to)?)))
            .collect::<Result<_, Error>>()?,
        set: values("set")?,
        append: values("append")?,
    })
}

impl Rules {
    fn apply(&self, h: &mut dyn strangle_plugin::Headers) {
        for name in &self.remove {
            h.remove(name);
        }
        for (from, to) in &self.rename {
            let moved: Vec<HeaderValue> = h.map().get_all(from).iter().cloned().collect();
            if moved.is_empty() {
                continue;
            }
            h.remove(from);
            h.remove(to);
            for v in moved {
                h.append(to.clone(), v);
            }
        }
        for (name, value) in &self.set {
            h.set(name.clone(), value.clone());
        }
        for (name, value) in &self.append {
            h.append(name.clone(), value.clone());
        }
    }
}

impl Plugin for HeaderRules {
    fn request(&self, req: &mut Request<'_>) -> Flow {
        self.request.apply(req.headers);
        Flow::Continue
    }

    fn response(&self, resp: &mut Response<'_>) {
        self.response.apply(resp.headers);
    }
}

#[cfg(test)]
mod tests;
