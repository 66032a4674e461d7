//! Lowering a route's `capture = { on, dir, max-size, max-body }`: which requests are kept in a
//! spool (JSON lines, size-rotated) to look at and replay (`strangle replay`).

use std::path::PathBuf;

use super::raw::RawRoute;
use super::Cx;

/// The validated `capture` of a route.
#[derive(Debug, Clone, PartialEq)]
pub struct Capture {
    pub on: Vec<Event>,
    /// The spool's directory (absolute: relative ones are the config file's).
    pub dir: PathBuf,
    /// The spool's files together stay under this.
    pub max_size: u64,
    /// Bodies (the request's and the answer's) are kept up to this.
    pub max_body: usize,
}

/// What makes a request kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event {
    /// The new side answered with a 5xx.
    New5xx,
    /// The new side failed to answer (a connect error, no response, a Lambda failure), whether
    /// or not legacy then served the request (`fallback`).
    NewError,
    /// A shadow copy's answer differed from the client's.
    Mismatch,
}

impl Event {
    pub fn as_str(self) -> &'static str {
        match self {
            Event::New5xx => "new-5xx",
            Event::NewError => "new-error",
            Event::Mismatch => "mismatch",
        }
    }
}

pub const DEFAULT_MAX_SIZE: u64 = 100 << 20;
pub const DEFAULT_MAX_BODY: usize = 1 << 20;
/// The spool is rotated in two halves: less than this leaves no room for a record.
const MIN_MAX_SIZE: u64 = 1 << 20;

/// `100MB`, `2GB`, `512KB`.
pub(super) fn bytes(s: &str) -> Option<u64> {
    let t = s.trim();
    match t.strip_suffix("GB").or_else(|| t.strip_suffix("G")) {
        Some(n) => n.trim().parse::<u64>().ok()?.checked_mul(1 << 30),
        None => super::shadow::size(t).map(|n| n as u64),
    }
}

impl Cx<'_> {
    pub(super) fn capture(&mut self, r: &RawRoute) -> Option<Capture> {
        let raw = r.capture.as_ref()?;
        let at = raw.span().start;
        let raw = raw.get_ref();
        let mut on = Vec::new();
        for e in raw.on.get_ref() {
            let event = match e.get_ref().as_str() {
                "new-5xx" => Event::New5xx,
                "new-error" => Event::NewError,
                "mismatch" => Event::Mismatch,
                other => {
                    let hint = Some("use `new-5xx`, `new-error` or `mismatch`".into());
                    self.err_at(e, format!("unknown capture event `{other}`"), hint);
                    continue;
                }
            };
            if event == Event::Mismatch && r.shadow.is_none() {
                let hint =
                    Some("mismatches come from shadow copies: add `shadow` to the route".into());
                self.err_at(e, "capture `mismatch` without `shadow` on the route", hint);
            }
            if !on.contains(&event) {
                on.push(event);
            }
        }
        if on.is_empty() {
            let hint = Some("list what to keep, like on = [\"new-5xx\", \"new-error\"]".into());
            self.err_at(&raw.on, "capture `on` is empty", hint);
        }
        if r.new.is_none() {
            let hint = Some("every capture event is about the new side: set `new`".into());
            self.error(
                at,
                format!("route `{}` captures with no new side", r.id.get_ref()),
                hint,
            );
        }
        let dir = raw.dir.get_ref().trim();
        if dir.is_empty() {
            self.err_at(&raw.dir, "capture `dir` is empty", None);
        }
        let dir = self.base.join(dir).components().collect();
        let max_size = match &raw.max_size {
            None => DEFAULT_MAX_SIZE,
            Some(v) => match bytes(v.get_ref()) {
                Some(n) if n >= MIN_MAX_SIZE => n,
                _ => {
                    let hint =
                        Some("write a size of at least 1MB, like \"100MB\" or \"2GB\"".into());
                    self.err_at(v, format!("bad capture `max-size` `{}`", v.get_ref()), hint);
                    DEFAULT_MAX_SIZE
                }
            },
        };
        let max_body = match &raw.max_body {
            None => DEFAULT_MAX_BODY,
            Some(v) => match super::shadow::size(v.get_ref()) {
                Some(n) if n <= super::shadow::MAX_MAX_BODY && (n as u64) < max_size / 4 => n,
                _ => {
                    let hint = Some("at most 16MB and a quarter of `max-size`".into());
                    self.err_at(v, format!("bad capture `max-body` `{}`", v.get_ref()), hint);
                    DEFAULT_MAX_BODY
                }
            },
        };
        Some(Capture {
            on,
            dir,
            max_size,
            max_body,
        })
    }
}
