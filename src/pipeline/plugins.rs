//! The forward stage's plugins (`plugins = [...]` on a route): the chosen side's request hooks
//! run once per request, on a copy of the request (the client's own head is never changed, so
//! the legacy side after a fallback and a shadow copy to the other side start again from what
//! the client sent); what they made (`Forward`) is what every upstream kind is given, before the
//! outbound header policy, which then has the last word on the headers strangle vouches for.
//! The side's response hooks run on its answer before strangle's own response headers. A route
//! without plugins costs one length check.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode};
use pingora::http::{RequestHeader, ResponseHeader};
use strangle_plugin::{Answer, BodyHead, BodyUse, Flow, Headers, Plugin, RequestHead};

use crate::routing::{self, PathParams};

/// The request as the side's plugins made it.
#[derive(Debug)]
pub struct Forward {
    /// For the new side (else legacy).
    pub new: bool,
    /// The path the side receives (canonical; no query, no upstream base path).
    pub path: String,
    pub headers: HeaderMap,
}

/// What one side's plugins (`new`, else legacy) make of the request: `None` when the route has
/// none there (one length check: what a route without plugins pays).
pub fn forward(
    plugins: &crate::config::plugin::Plugins,
    new: bool,
    method: &Method,
    path: &str,
    query: &str,
    headers: &HeaderMap,
    params: PathParams,
) -> Result<Option<Box<Forward>>, Box<Answer>> {
    let chain = plugins.side(new);
    if chain.is_empty() {
        return Ok(None);
    }
    request(chain, new, method, path, query, headers, params).map(|f| Some(Box::new(f)))
}

/// Runs `chain`'s request hooks on a copy of the request; an answer a plugin gives instead.
pub fn request(
    chain: &[Arc<dyn Plugin>],
    new: bool,
    method: &Method,
    path: &str,
    query: &str,
    headers: &HeaderMap,
    params: PathParams,
) -> Result<Forward, Box<Answer>> {
    let mut f = Forward {
        new,
        path: path.to_string(),
        headers: headers.clone(),
    };
    let canonical = |p: &str| {
        routing::canonicalize(p, params)
            .map(|c| c.into_owned())
            .map_err(|e| e.to_string())
    };
    for plugin in chain {
        let mut req = strangle_plugin::Request {
            method,
            path: &mut f.path,
            query: query.strip_prefix('?').unwrap_or(query),
            headers: &mut f.headers,
            canonical: &canonical,
        };
        if let Flow::Answer(a) = plugin.request(&mut req) {
            return Err(a);
        }
    }
    // Whatever a plugin did, the side gets a path a client could have sent.
    match routing::canonicalize(&f.path, params) {
        Ok(c) if c == f.path => Ok(f),
        _ => Err(Box::new(Answer {
            status: StatusCode::BAD_REQUEST,
            headers: HeaderMap::new(),
            body: "the request path cannot be rewritten\n".into(),
        })),
    }
}

pub use crate::config::plugin::response;

/// The most body bytes held for plugins at once, over every request (a plugin's own work on
/// a body, a parse, comes on top, one body per worker thread at a time).
pub const HELD_BUDGET: usize = 256 << 20;

/// Body bytes held for plugins now, over every request.
static HELD: AtomicUsize = AtomicUsize::new(0);

/// Body bytes held for plugins now (a gauge).
pub fn held_bytes() -> usize {
    HELD.load(Ordering::Relaxed)
}

/// The bodies held for plugins are at `HELD_BUDGET`: this one cannot be, and is refused
/// rather than passed on as the plugins would not have made it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BudgetSpent;

impl std::fmt::Display for BudgetSpent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "the bodies held for plugins are at their budget ({HELD_BUDGET} bytes)"
        )
    }
}

/// A body held back for the side's body plugins until it is whole: an answer's, or a
/// request's on its way to the side.
#[derive(Debug)]
pub struct HeldBody {
    /// Bytes of `HELD` this body holds.
    charged: usize,
    chain: Arc<[Arc<dyn Plugin>]>,
    head: Head,
    /// The most bytes held (a larger body passes untouched); `replace`: none are kept.
    limit: usize,
    replace: bool,
    buf: BytesMut,
    /// Over `limit`: passing through untouched.
    over: bool,
}

/// What the body hooks are told of the message whose body they change.
#[derive(Debug)]
enum Head {
    Response {
        original: StatusCode,
        status: StatusCode,
        headers: HeaderMap,
    },
    Request {
        method: Method,
        path: String,
        headers: HeaderMap,
    },
}

/// The most and whether to replace, from the chain's answers (`None`: no plugin works on it).
fn body_uses(uses: impl Iterator<Item = BodyUse>) -> Option<(usize, bool)> {
    let (mut limit, mut replace) = (0, false);
    for u in uses {
        match u {
            BodyUse::None => {}
            BodyUse::Read(n) => limit = limit.max(n),
            BodyUse::Replace => replace = true,
        }
    }
    (limit > 0 || replace).then_some((limit, replace))
}

impl HeldBody {
    fn new(
        chain: &Arc<[Arc<dyn Plugin>]>,
        head: Head,
        (limit, replace): (usize, bool),
    ) -> Box<Self> {
        Box::new(HeldBody {
            charged: 0,
            chain: Arc::clone(chain),
            head,
            limit,
            replace,
            buf: BytesMut::new(),
            over: false,
        })
    }
}

/// What `chain` does with an answer's body (`original`: the side's own status; `status` and
/// `headers`: the answer as the response hooks left it): `None` when no plugin works on it.
pub fn hold_body(
    chain: &Arc<[Arc<dyn Plugin>]>,
    original: StatusCode,
    status: StatusCode,
    headers: &HeaderMap,
) -> Option<Box<HeldBody>> {
    let head = BodyHead {
        original,
        status,
        headers,
    };
    let uses = body_uses(chain.iter().map(|p| p.response_body_use(&head)))?;
    let head = Head::Response {
        original,
        status,
        headers: headers.clone(),
    };
    Some(HeldBody::new(chain, head, uses))
}

/// What `chain` does with the body of a request (`f`: as its request hooks left it), whose
/// length is `declared` when the client said it: `None` when no plugin works on it, or when it
/// is declared larger than any plugin reads (it passes untouched, its length kept).
pub fn hold_request_body(
    chain: &Arc<[Arc<dyn Plugin>]>,
    method: &Method,
    f: &Forward,
    declared: Option<u64>,
) -> Option<Box<HeldBody>> {
    let head = RequestHead {
        method,
        path: &f.path,
        headers: &f.headers,
    };
    let (limit, replace) = body_uses(chain.iter().map(|p| p.request_body_use(&head)))?;
    if !replace && declared.is_some_and(|n| n > limit as u64) {
        return None;
    }
    let head = Head::Request {
        method: method.clone(),
        path: f.path.clone(),
        headers: f.headers.clone(),
    };
    Some(HeldBody::new(chain, head, (limit, replace)))
}

impl HeldBody {
    /// Takes `n` more bytes of the budget, or says it is spent.
    fn charge(&mut self, n: usize) -> Result<(), BudgetSpent> {
        let before = HELD.fetch_add(n, Ordering::Relaxed);
        if before + n > HELD_BUDGET {
            HELD.fetch_sub(n, Ordering::Relaxed);
            return Err(BudgetSpent);
        }
        self.charged += n;
        Ok(())
    }

    fn release(&mut self) {
        HELD.fetch_sub(std::mem::take(&mut self.charged), Ordering::Relaxed);
    }

    /// A piece of the body as it comes (`end`: the last): `data` becomes what goes on now:
    /// nothing (`None`) until the body is whole, then the whole body as the plugins made it;
    /// past the limit, what was held and the rest as they are.
    pub fn pass(&mut self, data: &mut Option<Bytes>, end: bool) -> Result<(), BudgetSpent> {
        if self.over {
            return Ok(());
        }
        if let Some(piece) = data.take() {
            if self.replace {
                // Discarded unread.
            } else if self.buf.len() + piece.len() > self.limit {
                self.over = true;
                self.release();
                let mut all = std::mem::take(&mut self.buf);
                all.extend_from_slice(&piece);
                *data = Some(all.freeze());
                return Ok(());
            } else {
                self.charge(piece.len())?;
                self.buf.extend_from_slice(&piece);
            }
        }
        if end {
            *data = Some(self.finish());
        }
        Ok(())
    }

    /// A whole body (a Lambda function's answer, a request read whole) as the plugins make it;
    /// `None` when it is over the limit and passes untouched.
    pub fn whole(&mut self, body: &[u8]) -> Result<Option<Bytes>, BudgetSpent> {
        if !self.replace {
            if body.len() > self.limit {
                return Ok(None);
            }
            self.charge(body.len())?;
            self.buf.extend_from_slice(body);
        }
        Ok(Some(self.finish()))
    }

    fn finish(&mut self) -> Bytes {
        // Charged until the plugins are done with it.
        let mut body = std::mem::take(&mut self.buf).to_vec();
        match &self.head {
            Head::Response {
                original,
                status,
                headers,
            } => {
                let head = BodyHead {
                    original: *original,
                    status: *status,
                    headers,
                };
                for plugin in self.chain.iter() {
                    if plugin.response_body_use(&head) != BodyUse::None {
                        plugin.response_body(&head, &mut body);
                    }
                }
            }
            Head::Request {
                method,
                path,
                headers,
            } => {
                let head = RequestHead {
                    method,
                    path,
                    headers,
                };
                for plugin in self.chain.iter() {
                    if plugin.request_body_use(&head) != BodyUse::None {
                        plugin.request_body(&head, &mut body);
                    }
                }
            }
        }
        self.release();
        Bytes::from(body)
    }
}

/// A whole body as `held` makes it (`Ok(None)`: no plugin works on it, or it passes
/// untouched).
pub fn made_whole(held: Option<Box<HeldBody>>, body: &[u8]) -> Result<Option<Bytes>, BudgetSpent> {
    match held {
        Some(mut held) => held.whole(body),
        None => Ok(None),
    }
}

impl Drop for HeldBody {
    fn drop(&mut self) {
        self.release();
    }
}

/// A Pingora response head as plugins change it (its case map kept in step).
pub struct PingoraResponse<'a>(pub &'a mut ResponseHeader);

impl Headers for PingoraResponse<'_> {
    fn map(&self) -> &HeaderMap {
        &self.0.headers
    }
    fn set(&mut self, name: HeaderName, value: HeaderValue) {
        // Only fails on a name/value pair `http` would refuse, which these are not.
        let _ = self.0.insert_header(name, value);
    }
    fn append(&mut self, name: HeaderName, value: HeaderValue) {
        let _ = self.0.append_header(name, value);
    }
    fn remove(&mut self, name: &HeaderName) {
        self.0.remove_header(name);
    }
}

/// Gives an upstream request head exactly `headers` (through Pingora's methods, so that the
/// names' wire case stays in step).
pub fn replace_headers(up: &mut RequestHeader, headers: &HeaderMap) {
    let gone: Vec<HeaderName> = up
        .headers
        .keys()
        .filter(|n| !headers.contains_key(*n))
        .cloned()
        .collect();
    for name in gone {
        up.remove_header(&name);
    }
    for name in headers.keys() {
        let mut values = headers.get_all(name).iter();
        if let Some(first) = values.next() {
            let _ = up.insert_header(name.clone(), first.clone());
        }
        for v in values {
            let _ = up.append_header(name.clone(), v.clone());
        }
    }
}

#[cfg(test)]
mod tests;
