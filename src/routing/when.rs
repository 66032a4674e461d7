//! A route's conditions on the request head (`when = { header = { "x-api-version" = "2" },
//! query = { beta = "1" } }`): every one must hold for the route to match.

use http::{HeaderMap, HeaderName};

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

    /// Whether every condition holds for a request's headers and query (without its `?`).
    pub fn hold(&self, headers: &HeaderMap, query: &str) -> bool {
        self.headers.iter().all(|(name, cond)| {
            let mut values = headers.get_all(name).iter();
            let first = values.next();
            let count = first.map_or(0, |_| 1 + values.count());
            cond.holds(count, first.map(|v| v.as_bytes()))
        }) && self.query.iter().all(|(name, cond)| {
            let mut count = 0;
            let mut only = None;
            for (k, v) in form_urlencoded::parse(query.as_bytes()) {
                if k == name.as_str() {
                    count += 1;
                    only = Some(v);
                }
            }
            cond.holds(count, only.as_deref().map(str::as_bytes))
        })
    }

    /// Whether a request meeting every condition of `other` meets all of these: these are a
    /// subset of `other`'s.
    pub fn implied_by(&self, other: &Conditions) -> bool {
        self.headers.iter().all(|c| other.headers.contains(c))
            && self.query.iter().all(|c| other.query.contains(c))
    }
}
