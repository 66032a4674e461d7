//! Rate limits per route and key: a token bucket per key (client IP, a header, a cookie or a
//! verified JWT claim), `burst` deep, refilled at `requests` per `per`. Buckets live in shards,
//! each behind its own lock, so requests for different keys rarely meet; idle full buckets are
//! swept. Counts are per strangle instance: N replicas allow N times the rate.
//!
//! Addresses are keyed by network (`ipv4-prefix`, default /32; `ipv6-prefix`, default /64: one
//! IPv6 client usually holds a whole /64), and the number of buckets is capped (`max-keys`):
//! past it the least recently used bucket of a shard is evicted and counted, so a flood of
//! distinct header values cannot grow memory without bound.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::split::StickyKey;

/// The validated `rate-limit = { ... }` of a route.
#[derive(Debug, Clone, PartialEq)]
pub struct RateLimit {
    pub requests: u32,
    pub per: Duration,
    pub burst: u32,
    pub key: StickyKey,
    pub ipv4_prefix: u8,
    pub ipv6_prefix: u8,
    /// The most buckets kept; past it the least recently used is evicted.
    pub max_keys: usize,
}

const SHARDS: usize = 64;

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    last: Instant,
}

/// Refused: try again after this long.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Limited {
    pub retry_after: Duration,
}

#[derive(Debug)]
pub struct RateLimiter {
    pub config: RateLimit,
    /// Tokens per second.
    rate: f64,
    shards: Vec<Mutex<HashMap<u64, Bucket>>>,
    /// Buckets evicted to stay under `max-keys`.
    pub evicted: AtomicU64,
}

impl RateLimiter {
    pub fn new(config: RateLimit) -> RateLimiter {
        let rate = f64::from(config.requests) / config.per.as_secs_f64().max(1e-3);
        RateLimiter {
            config,
            rate,
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
            evicted: AtomicU64::new(0),
        }
    }

    /// The key hash of a client address: its network under the configured prefix.
    pub fn ip_key(&self, ip: IpAddr) -> u64 {
        use xxhash_rust::xxh3::xxh3_64;
        match crate::net::unmap(ip) {
            v4 @ IpAddr::V4(_) => match crate::net::mask(v4, self.config.ipv4_prefix) {
                IpAddr::V4(a) => xxh3_64(&a.octets()),
                IpAddr::V6(a) => xxh3_64(&a.octets()),
            },
            v6 => match crate::net::mask(v6, self.config.ipv6_prefix) {
                IpAddr::V4(a) => xxh3_64(&a.octets()),
                IpAddr::V6(a) => xxh3_64(&a.octets()),
            },
        }
    }

    /// Takes one token for `key` (a hash of the key's value), or says how long to wait.
    pub fn check(&self, key: u64, now: Instant) -> Result<u32, Limited> {
        let burst = f64::from(self.config.burst);
        let mut shard = self.shards[(key as usize) % SHARDS]
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        // Each shard holds its share, so all of them together never exceed `max-keys`.
        let cap = (self.config.max_keys / SHARDS).max(1);
        if shard.len() >= cap && !shard.contains_key(&key) {
            // Full: the bucket idle longest goes (its client starts over with a full bucket).
            if let Some(oldest) = shard.iter().min_by_key(|(_, b)| b.last).map(|(k, _)| *k) {
                shard.remove(&oldest);
                self.evicted.fetch_add(1, Ordering::Relaxed);
            }
        }
        let bucket = shard.entry(key).or_insert(Bucket {
            tokens: burst,
            last: now,
        });
        let elapsed = now.saturating_duration_since(bucket.last).as_secs_f64();
        bucket.tokens = (bucket.tokens + elapsed * self.rate).min(burst);
        bucket.last = now;
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            Ok(bucket.tokens as u32)
        } else {
            let wait = (1.0 - bucket.tokens) / self.rate;
            Err(Limited {
                retry_after: Duration::from_secs_f64(wait),
            })
        }
    }

    /// Forgets buckets that have refilled completely: they would start full anyway.
    pub fn sweep(&self, now: Instant) {
        let full_after = f64::from(self.config.burst) / self.rate;
        for shard in &self.shards {
            let mut shard = shard.lock().unwrap_or_else(|e| e.into_inner());
            shard.retain(|_, b| now.saturating_duration_since(b.last).as_secs_f64() < full_after);
        }
    }

    pub fn keys(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.lock().map_or(0, |m| m.len()))
            .sum()
    }

    /// `RateLimit-Policy` (draft-ietf-httpapi-ratelimit-headers): quota and window.
    pub fn policy_header(&self, name: &str) -> String {
        format!(
            "\"{name}\";q={};w={}",
            self.config.burst,
            self.config.per.as_secs().max(1)
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limiter(requests: u32, per_ms: u64, burst: u32) -> RateLimiter {
        RateLimiter::new(RateLimit {
            requests,
            per: Duration::from_millis(per_ms),
            burst,
            key: StickyKey::Ip,
            ipv4_prefix: 32,
            ipv6_prefix: 64,
            max_keys: 1024,
        })
    }

    #[test]
    fn ipv6_clients_share_their_64_and_keys_are_capped() {
        let l = limiter(10, 1000, 1);
        let a = l.ip_key("2001:db8:1:2::1".parse().unwrap());
        let b = l.ip_key("2001:db8:1:2:ffff::9".parse().unwrap());
        let c = l.ip_key("2001:db8:1:3::1".parse().unwrap());
        assert_eq!(a, b);
        assert_ne!(a, c);
        assert_ne!(
            l.ip_key("1.2.3.4".parse().unwrap()),
            l.ip_key("1.2.3.5".parse().unwrap())
        );
        assert_eq!(
            l.ip_key("::ffff:1.2.3.4".parse().unwrap()),
            l.ip_key("1.2.3.4".parse().unwrap())
        );
        let t0 = Instant::now();
        for k in 0..10_000u64 {
            let _ = l.check(
                k.wrapping_mul(0x9E37_79B9_7F4A_7C15),
                t0 + Duration::from_micros(k),
            );
        }
        assert!(l.keys() <= 1024, "{} buckets", l.keys());
        assert!(l.evicted.load(Ordering::Relaxed) >= 10_000 - 1024);
    }

    #[test]
    fn a_burst_then_the_steady_rate() {
        let l = limiter(10, 1000, 5);
        let t0 = Instant::now();
        for _ in 0..5 {
            assert!(l.check(1, t0).is_ok());
        }
        let refused = l.check(1, t0).unwrap_err();
        assert!(
            (refused.retry_after.as_secs_f64() - 0.1).abs() < 0.01,
            "{refused:?}"
        );
        // Another key has its own bucket.
        assert!(l.check(2, t0).is_ok());
        // 100 ms later one token is back.
        assert!(l.check(1, t0 + Duration::from_millis(101)).is_ok());
        assert!(l.check(1, t0 + Duration::from_millis(102)).is_err());
    }

    #[test]
    fn full_buckets_are_swept() {
        let l = limiter(10, 1000, 5);
        let t0 = Instant::now();
        l.check(1, t0).unwrap();
        l.check(2, t0).unwrap();
        l.sweep(t0 + Duration::from_millis(100));
        assert_eq!(l.keys(), 2);
        l.sweep(t0 + Duration::from_secs(1));
        assert_eq!(l.keys(), 0);
    }
}
