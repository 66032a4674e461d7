//! A route's conditions on the request head (`when = { header = { "x-api-version" = "2" },
//! query = { beta = "1" } }`): every one must hold for the route to match.

use std::borrow::Cow;
use std::cell::OnceCell;
use std::collections::HashMap;

use http::{HeaderMap, HeaderName};

/// A request's query as conditions judge it: parsed once, when a condition first asks, into
/// each name's count and value (percent-decoded, `+` a space), so that any number of routes
/// with conditions cost one pass over it.
pub struct QueryParams<'a> {
    raw: &'a str,
    parsed: OnceCell<Counted<'a>>,
}

/// Each query name's count and last value.
type Counted<'a> = HashMap<Cow<'a, str>, (usize, Cow<'a, str>)>;

impl<'a> QueryParams<'a> {
    /// `raw`: the query without its `?`.
    pub fn new(raw: &'a str) -> QueryParams<'a> {
        QueryParams {
            raw,
            parsed: OnceCell::new(),
        }
    }

    /// How many times `name` is given, and its (last) value.
    fn get(&self, name: &str) -> (usize, Option<&str>) {
        let parsed = self.parsed.get_or_init(|| {
            let mut map = Counted::new();
            for (k, v) in form_urlencoded::parse(self.raw.as_bytes()) {
                let e = map.entry(k).or_insert((0, Cow::Borrowed("")));
                *e = (e.0 + 1, v);
            }
            map
        });
        match parsed.get(name) {
            Some((n, v)) => (*n, Some(v)),
            None => (0, None),
        }
    }
}

/// What one condition asks of a header or a query parameter.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Cond {
    /// Given once, with exactly this value. Given twice it matches no value: the two could be
    /// read either way by the upstream (first or last wins), so neither is believed.
    Equals(String),
    Present,
    Absent,
}

impl Cond {
    /// `"present"`, `"absent"`, or the value to equal.
    pub fn parse(text: &str) -> Cond {
        match text {
            "present" => Cond::Present,
            "absent" => Cond::Absent,
            v => Cond::Equals(v.to_string()),
        }
    }

    /// Whether it holds for the values given (`count` of them; `only`: the one, when one).
    fn holds(&self, count: usize, only: Option<&[u8]>) -> bool {
        match self {
            Cond::Present => count > 0,
            Cond::Absent => count == 0,
            Cond::Equals(v) => count == 1 && only == Some(v.as_bytes()),
        }
    }
}

impl std::fmt::Display for Cond {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Cond::Present => f.write_str("present"),
            Cond::Absent => f.write_str("absent"),
            Cond::Equals(v) => write!(f, "{v:?}"),
        }
    }
}

/// A route's conditions, in name order.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct Conditions {
    pub headers: Vec<(HeaderName, Cond)>,
    /// Query parameter names and values compared percent-decoded (`+` is a space).
    pub query: Vec<(String, Cond)>,
}

impl Conditions {
    pub fn is_empty(&self) -> bool {
        self.headers.is_empty() && self.query.is_empty()
    }

    /// Whether every condition holds for a request's headers and query.
    pub fn hold(&self, headers: &HeaderMap, query: &QueryParams<'_>) -> bool {
        self.headers.iter().all(|(name, cond)| {
            let mut values = headers.get_all(name).iter();
            let first = values.next();
            let count = first.map_or(0, |_| 1 + values.count());
            cond.holds(count, first.map(|v| v.as_bytes()))
        }) && self.query.iter().all(|(name, cond)| {
            let (count, value) = query.get(name);
            cond.holds(count, value.map(str::as_bytes))
        })
    }

    /// Whether a request meeting every condition of `other` meets all of these: these are a
    /// subset of `other`'s.
    pub fn implied_by(&self, other: &Conditions) -> bool {
        self.headers.iter().all(|c| other.headers.contains(c))
            && self.query.iter().all(|c| other.query.contains(c))
    }
}
