//! Requests strangle answered itself, before any side: refusals (a malformed head, a missing
//! token, a rate limit, no route) and a route's own answers (`redirect`, `respond`). They reach
//! no upstream, so no side counts them; these counters do, per route (`_default` for requests
//! that matched none), by status code.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use super::CLASSES;

/// The codes counted one by one: those strangle refuses with, and the usual fixed answers.
/// Any other code is counted by its class.
pub const CODES: [u16; 19] = [
    301, 302, 303, 307, 308, 400, 401, 403, 404, 405, 413, 414, 421, 429, 431, 500, 501, 503, 504,
];
const LABELS: [&str; 19] = [
    "301", "302", "303", "307", "308", "400", "401", "403", "404", "405", "413", "414", "421",
    "429", "431", "500", "501", "503", "504",
];
const SLOTS: usize = CODES.len() + CLASSES.len();

/// One route's counters: a relaxed add per refused request.
#[derive(Debug, Default)]
pub struct Refused {
    by_code: [AtomicU64; SLOTS],
}

/// A route's counts at one moment, by slot (`CODES`, then the classes of other codes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RefusedTotals(pub [u64; SLOTS]);

impl Default for RefusedTotals {
    fn default() -> RefusedTotals {
        RefusedTotals([0; SLOTS])
    }
}

impl Refused {
    pub fn record(&self, status: u16) {
        let slot = CODES.iter().position(|&c| c == status).unwrap_or_else(|| {
            CODES.len()
                + match status {
                    100..=599 => usize::from(status / 100) - 1,
                    _ => CLASSES.len() - 1,
                }
        });
        self.by_code[slot].fetch_add(1, Relaxed);
    }

    pub fn totals(&self) -> RefusedTotals {
        RefusedTotals(std::array::from_fn(|i| self.by_code[i].load(Relaxed)))
    }
}

impl RefusedTotals {
    /// `(status label, count)` for every non-zero slot: a code, or a class (`4xx`, `none`)
    /// for codes not counted one by one.
    pub fn labelled(&self) -> impl Iterator<Item = (&'static str, u64)> + '_ {
        LABELS
            .iter()
            .chain(CLASSES.iter())
            .zip(self.0)
            .filter(|(_, n)| *n > 0)
            .map(|(l, n)| (*l, n))
    }

    /// The non-zero counts by status label, as `/status` shows them.
    pub fn by_status(&self) -> std::collections::BTreeMap<String, u64> {
        self.labelled().map(|(s, n)| (s.to_string(), n)).collect()
    }

    pub fn total(&self) -> u64 {
        self.0.iter().sum()
    }

    /// Counts of one class (`4` for 4xx), codes and others together.
    pub fn class(&self, class: u16) -> u64 {
        let codes: u64 = CODES
            .iter()
            .zip(self.0)
            .filter(|(c, _)| **c / 100 == class)
            .map(|(_, n)| n)
            .sum();
        codes + self.0[CODES.len() + usize::from(class) - 1]
    }

    pub fn since(&self, earlier: &RefusedTotals) -> RefusedTotals {
        RefusedTotals(std::array::from_fn(|i| {
            self.0[i].saturating_sub(earlier.0[i])
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_counted_one_by_one_and_others_by_class() {
        let r = Refused::default();
        for s in [401, 401, 429, 418, 599, 0, 308] {
            r.record(s);
        }
        let t = r.totals();
        let got: Vec<_> = t.labelled().collect();
        assert_eq!(
            got,
            [
                ("308", 1),
                ("401", 2),
                ("429", 1),
                ("4xx", 1),
                ("5xx", 1),
                ("none", 1)
            ]
        );
        assert_eq!(
            (t.total(), t.class(4), t.class(5), t.class(3)),
            (7, 4, 1, 1)
        );
        let later = {
            r.record(401);
            r.totals()
        };
        assert_eq!(later.since(&t).labelled().collect::<Vec<_>>(), [("401", 1)]);
    }
}
