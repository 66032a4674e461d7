//! The contract between strangle and its plugins: the per-route anti-corruption layer between
//! the monolith's API and the new services'.
//!
//! A plugin kind (`Kind`) has a name (what a route's `use = "..."` says) and builds an instance
//! from the route entry's other keys (`Settings`), once per config snapshot: a plugin is
//! configured when the config loads, never on the request path, and a mistake in its settings
//! is a config error at the key it concerns (the whole config is refused: a route never runs
//! with part of its chain missing). On the request path an instance only sees plain HTTP parts
//! (`Request`, `Response`), so one plugin serves every engine (HTTP/1, HTTP/2) and every
//! upstream kind (HTTP, signed endpoints, Lambda events) alike.

use std::cell::RefCell;
use std::collections::BTreeSet;
use std::fmt;

pub use bytes::Bytes;
pub use http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode};
pub use toml::{Table, Value as TomlValue};

/// Headers that name the client's address in some proxy's dialect. strangle passes only a
/// trusted proxy's copies on (its outbound policy), so a plugin must never write one: its value
/// would look like the trusted proxy's.
pub const CLIENT_ADDRESS_HEADERS: &[&str] = &[
    "x-real-ip",
    "x-client-ip",
    "true-client-ip",
    "cf-connecting-ip",
    "fastly-client-ip",
    "x-cluster-client-ip",
];

/// A plugin instance, built from its settings when a config loads.
pub trait Plugin: Send + Sync + fmt::Debug {
    /// The request on its way to the side, before strangle's outbound header policy (which
    /// then removes hop-by-hop headers and any copy of a header strangle vouches for, and sets
    /// its own: a plugin can never vouch for what a client sent). It may change the path
    /// (canonicalised by strangle's own rules, `Request::canonical`) and the headers, or answer
    /// the request itself.
    fn request(&self, _req: &mut Request<'_>) -> Flow {
        Flow::Continue
    }

    /// Whether this plugin works on the request's body, told the request as the request hooks
    /// left it (a request with no body is never asked). strangle then holds the body back
    /// until it is whole, as for an answer's body (`response_body_use`), and the side gets it
    /// with its new length.
    fn request_body_use(&self, _req: &RequestHead<'_>) -> BodyUse {
        BodyUse::None
    }

    /// The whole request body (or empty when a plugin replaces it), when this plugin's
    /// `request_body_use` asked for it. Runs in chain order.
    fn request_body(&self, _req: &RequestHead<'_>, _body: &mut Vec<u8>) {}

    /// The side's answer on its way to the client (its status and headers).
    fn response(&self, _resp: &mut Response<'_>) {}

    /// Whether this plugin works on the answer's body, told the side's own status and the
    /// answer as the response hooks left it. strangle then holds the body back until it is
    /// whole: up to the largest `Read` any plugin asked for (a larger body passes untouched),
    /// or, when one plugin `Replace`s it, none of it at all.
    fn response_body_use(&self, _answer: &BodyHead<'_>) -> BodyUse {
        BodyUse::None
    }

    /// The whole answer body (the side's, or empty when a plugin replaces it), when this
    /// plugin's `response_body_use` asked for it. Runs in chain order.
    fn response_body(&self, _answer: &BodyHead<'_>, _body: &mut Vec<u8>) {}
}

/// What a plugin does with an answer's body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyUse {
    /// Nothing.
    None,
    /// Reads and may change it, when it is at most this many bytes.
    Read(usize),
    /// Replaces it whatever it is: the side's body is discarded unread.
    Replace,
}

/// A request as a body hook sees it: as the request hooks left it.
pub struct RequestHead<'a> {
    pub method: &'a Method,
    /// The path the side receives.
    pub path: &'a str,
    pub headers: &'a HeaderMap,
}

/// An answer as a body hook sees it.
pub struct BodyHead<'a> {
    /// The side's status, before any plugin.
    pub original: StatusCode,
    /// The status and headers the client gets.
    pub status: StatusCode,
    pub headers: &'a HeaderMap,
}

/// What a request hook decided.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Flow {
    /// On to the next plugin, then the side.
    Continue,
    /// The client gets this answer; the side is never asked.
    Answer(Box<Answer>),
}

/// An answer a plugin gives instead of the side.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

/// Headers as a hook may change them. strangle's own header types keep extra state beside the
/// map (the names' wire case), so changes go through these methods, never the map itself.
pub trait Headers {
    fn map(&self) -> &HeaderMap;
    /// Replaces every value of `name`.
    fn set(&mut self, name: HeaderName, value: HeaderValue);
    /// Adds a value after those `name` has.
    fn append(&mut self, name: HeaderName, value: HeaderValue);
    fn remove(&mut self, name: &HeaderName);
}

impl Headers for HeaderMap {
    fn map(&self) -> &HeaderMap {
        self
    }
    fn set(&mut self, name: HeaderName, value: HeaderValue) {
        self.insert(name, value);
    }
    fn append(&mut self, name: HeaderName, value: HeaderValue) {
        HeaderMap::append(self, name, value);
    }
    fn remove(&mut self, name: &HeaderName) {
        HeaderMap::remove(self, name);
    }
}

/// A request as a request hook sees it.
pub struct Request<'a> {
    pub method: &'a Method,
    /// The path the side receives (canonical, no query). A plugin that changes it must keep it
    /// inside what its own settings allow (`rewrite-path`: under its template's fixed part);
    /// strangle canonicalises the result again and refuses a path a client could not send.
    pub path: &'a mut String,
    /// The query, without its `?` (empty when none).
    pub query: &'a str,
    pub headers: &'a mut dyn Headers,
    /// strangle's path canonicalisation (the one routing uses): what a path becomes, or why a
    /// client could not have sent it.
    pub canonical: &'a dyn Fn(&str) -> Result<String, String>,
}

/// An answer as a response hook sees it.
pub struct Response<'a> {
    /// The request's method and the path the client asked for.
    pub method: &'a Method,
    pub path: &'a str,
    /// The request's headers as the client sent them (an `Origin`, an `Accept`).
    pub request_headers: &'a HeaderMap,
    pub status: &'a mut StatusCode,
    pub headers: &'a mut dyn Headers,
}

/// A plugin kind: the name a route's `use` gives, and how an instance is built.
#[derive(Clone, Copy)]
pub struct Kind {
    pub name: &'static str,
    pub build: fn(&Settings<'_>) -> Result<Box<dyn Plugin>, Error>,
}

impl Kind {
    /// An instance from settings written as TOML (tests and tools; strangle itself builds from
    /// the config it loaded).
    pub fn from_toml(&self, text: &str) -> Result<Box<dyn Plugin>, Error> {
        let table: Table = text
            .parse()
            .map_err(|e| Error::whole(format!("not TOML: {e}")))?;
        (self.build)(&Settings::new(&table))
    }
}

/// Header maps from name/value pairs, for plugins' tests.
pub fn header_map(pairs: &[(&str, &str)]) -> HeaderMap {
    let mut h = HeaderMap::new();
    for (n, v) in pairs {
        if let (Ok(n), Ok(v)) = (
            HeaderName::from_bytes(n.as_bytes()),
            HeaderValue::from_str(v),
        ) {
            h.append(n, v);
        }
    }
    h
}

impl fmt::Debug for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name)
    }
}

/// A mistake in a plugin's settings: the key it is at (`None`: the entry as a whole), what is
/// wrong, and how to put it right.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Error {
    pub key: Option<String>,
    pub message: String,
    pub hint: Option<String>,
}

impl Error {
    pub fn at(key: &str, message: impl Into<String>) -> Error {
        Error {
            key: Some(key.to_string()),
            message: message.into(),
            hint: None,
        }
    }

    pub fn whole(message: impl Into<String>) -> Error {
        Error {
            key: None,
            message: message.into(),
            hint: None,
        }
    }

    pub fn hint(mut self, hint: impl Into<String>) -> Error {
        self.hint = Some(hint.into());
        self
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.key {
            Some(k) => write!(f, "`{k}`: {}", self.message),
            None => f.write_str(&self.message),
        }
    }
}

/// A plugin entry's settings: its keys other than `use` and `side`. Each getter marks its key
/// as known; `finish` refuses the keys no getter asked for (a misspelt key is an error, as
/// everywhere in the config).
pub struct Settings<'a> {
    table: &'a toml::Table,
    asked: RefCell<BTreeSet<String>>,
}

impl<'a> Settings<'a> {
    pub fn new(table: &'a toml::Table) -> Settings<'a> {
        Settings {
            table,
            asked: RefCell::default(),
        }
    }

    fn get(&self, key: &str) -> Option<&'a toml::Value> {
        self.asked.borrow_mut().insert(key.to_string());
        self.table.get(key)
    }

    /// A string, if the key is there.
    pub fn string(&self, key: &str) -> Result<Option<&'a str>, Error> {
        match self.get(key) {
            None => Ok(None),
            Some(toml::Value::String(s)) => Ok(Some(s)),
            Some(v) => Err(Error::at(key, format!("a string, not {}", v.type_str()))),
        }
    }

    /// A string that must be there.
    pub fn required(&self, key: &str) -> Result<&'a str, Error> {
        self.string(key)?
            .ok_or_else(|| Error::whole(format!("`{key}` is required")))
    }

    /// A list of strings, if the key is there.
    pub fn strings(&self, key: &str) -> Result<Option<Vec<&'a str>>, Error> {
        match self.get(key) {
            None => Ok(None),
            Some(toml::Value::Array(a)) => a
                .iter()
                .map(|v| match v {
                    toml::Value::String(s) => Ok(s.as_str()),
                    v => Err(Error::at(key, format!("strings, not {}", v.type_str()))),
                })
                .collect::<Result<Vec<_>, _>>()
                .map(Some),
            Some(v) => Err(Error::at(
                key,
                format!("a list of strings, not {}", v.type_str()),
            )),
        }
    }

    /// A table of strings (`{ name = "value", ... }`), in key order, if the key is there.
    pub fn string_table(&self, key: &str) -> Result<Option<Vec<(&'a str, &'a str)>>, Error> {
        match self.get(key) {
            None => Ok(None),
            Some(toml::Value::Table(t)) => t
                .iter()
                .map(|(k, v)| match v {
                    toml::Value::String(s) => Ok((k.as_str(), s.as_str())),
                    v => Err(Error::at(
                        key,
                        format!("`{k}`: a string, not {}", v.type_str()),
                    )),
                })
                .collect::<Result<Vec<_>, _>>()
                .map(Some),
            Some(v) => Err(Error::at(
                key,
                format!("a table of strings, not {}", v.type_str()),
            )),
        }
    }

    /// A table as written (its values any TOML), if the key is there.
    pub fn table(&self, key: &str) -> Result<Option<&'a toml::Table>, Error> {
        match self.get(key) {
            None => Ok(None),
            Some(toml::Value::Table(t)) => Ok(Some(t)),
            Some(v) => Err(Error::at(key, format!("a table, not {}", v.type_str()))),
        }
    }

    /// A non-negative integer, if the key is there.
    pub fn integer(&self, key: &str) -> Result<Option<u64>, Error> {
        match self.get(key) {
            None => Ok(None),
            Some(toml::Value::Integer(n)) => u64::try_from(*n)
                .map(Some)
                .map_err(|_| Error::at(key, "must not be negative")),
            Some(v) => Err(Error::at(key, format!("an integer, not {}", v.type_str()))),
        }
    }

    /// A boolean, if the key is there.
    pub fn boolean(&self, key: &str) -> Result<Option<bool>, Error> {
        match self.get(key) {
            None => Ok(None),
            Some(toml::Value::Boolean(b)) => Ok(Some(*b)),
            Some(v) => Err(Error::at(
                key,
                format!("true or false, not {}", v.type_str()),
            )),
        }
    }

    /// Refuses any key no getter asked for.
    pub fn finish(&self, kind: &str) -> Result<(), Error> {
        let asked = self.asked.borrow();
        match self.table.keys().find(|k| !asked.contains(k.as_str())) {
            None => Ok(()),
            Some(k) => {
                let mut known: Vec<_> = asked.iter().map(String::as_str).collect();
                known.sort_unstable();
                Err(Error::at(k, format!("unknown key for `{kind}`"))
                    .hint(format!("`{kind}` takes {}", known.join(", "))))
            }
        }
    }
}

/// A header name from settings, lower-cased, or why it is not one.
pub fn header_name(key: &str, name: &str) -> Result<HeaderName, Error> {
    HeaderName::from_bytes(name.to_ascii_lowercase().as_bytes())
        .map_err(|_| Error::at(key, format!("`{name}` is not a header name")))
}

/// A header value from settings, or why it is not one.
pub fn header_value(key: &str, value: &str) -> Result<HeaderValue, Error> {
    HeaderValue::from_str(value)
        .map_err(|_| Error::at(key, format!("`{value}` is not a header value")))
}

#[cfg(test)]
mod tests;
