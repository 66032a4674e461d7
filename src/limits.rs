//! Rate limits per route and key: a token bucket per key (client IP, a header, a cookie or a
//! verified JWT claim), `burst` deep, refilled at `requests` per `per`. Buckets live in shards,
//! each behind its own lock, so requests for different keys rarely meet; idle full buckets are
//! swept. Counts are per strangle instance: N replicas allow N times the rate.
//!
//! Addresses are keyed by network (`ipv4-prefix`, default /32; `ipv6-prefix`, default /64: one
//! IPv6 client usually holds a whole /64), and the number of buckets is capped (`max-keys`):
//! so a flood of distinct keys cannot grow memory without bound. Past the cap, the least
//! recently used bucket of the shard is evicted only if it has refilled completely (forgetting
//! it loses nothing); otherwise the new key shares the shard's overflow bucket, so cycling
//! through more keys than the cap never hands out fresh buckets (it fails closed). Key hashes
//! are seeded per limiter, so which keys share a shard cannot be worked out offline.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::config::RateLimit;

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
    /// Requests of new keys that found their shard full and shared its overflow bucket.
    pub overflowed: AtomicU64,
    seed: u64,
}

/// The key of each shard's overflow bucket (a request's own key is moved off this value).
const OVERFLOW: u64 = u64::MAX;

impl RateLimiter {
    pub fn new(config: RateLimit) -> RateLimiter {
        let rate = f64::from(config.requests) / config.per.as_secs_f64().max(1e-3);
        RateLimiter {
            config,
            rate,
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
            evicted: AtomicU64::new(0),
            overflowed: AtomicU64::new(0),
            seed: rand::random(),
        }
    }

    /// The key hash of a header, cookie or claim value.
    pub fn key(&self, value: &[u8]) -> u64 {
        xxhash_rust::xxh3::xxh3_64_with_seed(value, self.seed)
    }

    /// The key hash of a client address: its network under the configured prefix.
    pub fn ip_key(&self, ip: IpAddr) -> u64 {
        let ip = crate::net::unmap(ip);
        let prefix = match ip {
            IpAddr::V4(_) => self.config.ipv4_prefix,
            IpAddr::V6(_) => self.config.ipv6_prefix,
        };
        match crate::net::mask(ip, prefix) {
            IpAddr::V4(a) => self.key(&a.octets()),
            IpAddr::V6(a) => self.key(&a.octets()),
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
        let mut key = if key == OVERFLOW { OVERFLOW - 1 } else { key };
        if shard.len() >= cap && !shard.contains_key(&key) {
            let full_after = Duration::from_secs_f64(burst / self.rate);
            let oldest = shard
                .iter()
                .filter(|(k, _)| **k != OVERFLOW)
                .min_by_key(|(_, b)| b.last)
                .map(|(k, b)| (*k, b.last));
            match oldest {
                // Refilled: it would start full anyway, so forgetting it loses nothing.
                Some((k, last)) if now.saturating_duration_since(last) >= full_after => {
                    shard.remove(&k);
                    self.evicted.fetch_add(1, Ordering::Relaxed);
                }
                // Every bucket is in use: the newcomer shares the overflow bucket.
                _ => {
                    self.overflowed.fetch_add(1, Ordering::Relaxed);
                    key = OVERFLOW;
                }
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
    use crate::split::StickyKey;

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
        let key = |k: u64| k.wrapping_mul(0x9E37_79B9_7F4A_7C15);
        let passed = (0..10_000u64)
            .filter(|&k| l.check(key(k), t0).is_ok())
            .count();
        // At most one bucket per shard beyond the cap (its overflow bucket).
        assert!(l.keys() <= 1024 + SHARDS, "{} buckets", l.keys());
        // Keys past the cap share overflow buckets: cycling through many keys is no way
        // around the limit.
        assert!(passed <= 1024 + SHARDS, "{passed} passed");
        assert!(l.overflowed.load(Ordering::Relaxed) >= 10_000 - 1024 - SHARDS as u64);
        assert_eq!(l.evicted.load(Ordering::Relaxed), 0);
        // Once the buckets have refilled, new keys take the place of the oldest.
        let later = t0 + Duration::from_secs(1);
        assert!(l.check(key(20_000), later).is_ok());
        assert!(l.evicted.load(Ordering::Relaxed) >= 1);
        assert!(l.keys() <= 1024 + SHARDS);
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
