//! Stage 4, account: a request's last step, whichever way it ended (served, refused, failed,
//! cut off by the end of a grace period): its route side's counters, and its access-log line
//! when there is a log.

use std::net::IpAddr;
use std::time::{Duration, Instant, SystemTime};

use super::Request;
use crate::split::Side;
use crate::telemetry::{AccessEvent, AccessLogger, Rfc3339};

/// How a request ended.
pub struct Finished<'a> {
    pub status: u16,
    pub method: &'a str,
    pub path: &'a str,
    pub client: Option<IpAddr>,
    /// Body bytes read and sent.
    pub bytes: (usize, usize),
    pub error: Option<String>,
}

impl Request {
    /// Counts the request on its route side and writes its access-log line.
    pub fn account(&self, access: Option<&AccessLogger>, done: Finished<'_>) {
        let now = Instant::now();
        if let Some(side) = self.side() {
            self.route_stats()
                .side(side)
                .record(done.status, now - self.start);
        }
        let Some(access) = access.filter(|a| a.enabled()) else {
            return;
        };
        access.log(&AccessEvent {
            time: Rfc3339(SystemTime::now()),
            request_id: self.request_id_str(),
            client: done.client,
            method: done.method,
            path: done.path,
            route: self.route_id(),
            side: self.side().map(Side::as_str),
            upstream: self.upstream().map(|u| u.config.name.as_str()),
            status: done.status,
            duration_ms: ms(now - self.start),
            upstream_ms: self.upstream_start.map(|s| ms(now - s)),
            bytes_in: done.bytes.0,
            bytes_out: done.bytes.1,
            error: done.error,
        });
    }
}

fn ms(d: Duration) -> f64 {
    (d.as_secs_f64() * 1000.0 * 1000.0).round() / 1000.0
}
