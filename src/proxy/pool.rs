//! The fast path's pool of idle upstream connections, per peer, with no task per connection and
//! no system call to check one out.
//!
//! Pingora's pool (pingora-core 0.9.1 `connectors::TransportConnector`) wraps each released
//! connection in an `Arc<Mutex<_>>`, a oneshot and an `Arc<Notify>`, puts it in an LRU and a
//! `DashMap`, and spawns a task that watches it while it is idle; taking it back waits for that
//! task and checks the socket with `getpeername`. Here an idle connection is a `Vec` entry in
//! one map per process (below: why not one per thread). Whether the upstream closed it (or
//! sent bytes nobody asked for) while it sat idle is asked of the runtime's readiness when it
//! is taken: a read polled once with a no-op waker is `Pending` on a healthy idle connection,
//! with no system call when the runtime already knows nothing arrived. A list never grows
//! past `PER_PEER`; entries past their peer's idle timeout are dropped as the list is used,
//! and `sweep` (every 10 s, on the stats sampler's tick) drops expired and dead connections
//! and forgotten peers.
//!
//! One pool for the process, behind a mutex held for a map lookup and a `Vec` push or pop
//! (uncontended with `threads = 1`). Not thread-local: the runtime moves a request's task
//! between worker threads, so a connection taken on one thread is often given back on another,
//! and thread-local lists drift apart (a test's 50 sequential requests opened 6 connections
//! over 2 threads instead of 1 or 2).

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::pin::Pin;
use std::sync::{LazyLock, Mutex};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use pingora::protocols::Stream;
use tokio::io::ReadBuf;

/// The most idle connections kept per peer (the oldest goes first).
pub(super) const PER_PEER: usize = 64;

struct Idle {
    stream: Stream,
    /// When it went idle, and how long its peer allows it to stay idle.
    since: Instant,
    limit: Option<Duration>,
}

impl Idle {
    fn expired(&self, now: Instant) -> bool {
        self.limit
            .is_some_and(|limit| now.duration_since(self.since) >= limit)
    }
}

/// The keys are the peers' reuse hashes (already hashes: used as they are).
#[derive(Default)]
struct KeyHasher(u64);

impl Hasher for KeyHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(b);
        }
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

type Lists = HashMap<u64, Vec<Idle>, BuildHasherDefault<KeyHasher>>;

/// An idle connection to the peer whose reuse hash is `key` that is still open and quiet, if
/// the pool has one.
pub(super) fn take(key: u64) -> Option<Stream> {
    IDLE.take(key)
}

/// Keeps `stream` (whose last response was read whole) for the next request to the peer whose
/// reuse hash is `key`, for at most `limit` (the peer's idle timeout).
pub(super) fn give_back(key: u64, limit: Option<Duration>, stream: Stream) {
    IDLE.give_back(key, limit, stream);
}

/// Drops what can no longer be used: connections past their idle timeout, connections the
/// upstream closed or wrote on while idle, and peers left with none (a reload that changed an
/// upstream's addresses leaves its old peers behind). Run by the stats sampler every 10 s, so an
/// idle connection outlives its `idle-timeout` by at most that, and a closed one holds its
/// descriptor no longer, even when no request comes for its peer again.
pub fn sweep() {
    IDLE.sweep();
}

/// The process's pool, which the requests use.
static IDLE: LazyLock<Pool> = LazyLock::new(Pool::default);

/// A pool of idle connections: the requests' (`IDLE`), or one of its own, for a user that must
/// never hold a lock the requests take (the shadow worker, kept off the CPU while it runs).
#[derive(Default)]
pub(super) struct Pool {
    lists: Mutex<Lists>,
}

impl Pool {
    fn lists(&self) -> std::sync::MutexGuard<'_, Lists> {
        // A panic while holding the lock cannot leave a list half-changed: go on with it.
        self.lists
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// An idle connection to the peer whose reuse hash is `key` that is still open and quiet.
    pub(super) fn take(&self, key: u64) -> Option<Stream> {
        let now = Instant::now();
        loop {
            // The most recently used first: the likeliest to be open, and its socket warm. The
            // check is made outside the lock.
            let mut idle = self.lists().get_mut(&key)?.pop()?;
            if !idle.expired(now) && quiet(&mut idle.stream) {
                return Some(idle.stream);
            }
        }
    }

    /// `give_back`, to this pool.
    pub(super) fn give_back(&self, key: u64, limit: Option<Duration>, stream: Stream) {
        let now = Instant::now();
        let idle = Idle {
            stream,
            since: now,
            limit,
        };
        let mut stale = Vec::new();
        {
            let mut lists = self.lists();
            let list = lists.entry(key).or_default();
            // The oldest are at the front: drop those past their idle timeout, and the oldest
            // when the list is full.
            let live = list
                .iter()
                .position(|i| !i.expired(now))
                .unwrap_or(list.len());
            stale.extend(list.drain(..live));
            if list.len() >= PER_PEER {
                stale.push(list.remove(0));
            }
            list.push(idle);
        }
        // Closed outside the lock.
        drop(stale);
    }

    /// `sweep`, of this pool.
    pub(super) fn sweep(&self) {
        let now = Instant::now();
        let mut stale = Vec::new();
        {
            let mut lists = self.lists();
            lists.retain(|_, list| {
                let mut i = 0;
                while i < list.len() {
                    if list[i].expired(now) || !quiet(&mut list[i].stream) {
                        stale.push(list.remove(i));
                    } else {
                        i += 1;
                    }
                }
                !list.is_empty()
            });
        }
        // Closed outside the lock.
        drop(stale);
    }
}

/// How many idle connections the pool keeps for `peer` (for tests).
#[cfg(test)]
fn idle_count(peer: &impl pingora::upstreams::peer::Peer) -> usize {
    IDLE.lists().get(&peer.reuse_hash()).map_or(0, Vec::len)
}

/// Whether an idle connection is still open and nothing arrived on it: a read polled once,
/// without a task to wake, must find nothing to read. End of stream (the upstream closed it),
/// an error, or bytes nobody asked for (a late or unsolicited response) all mean it cannot
/// carry another request.
fn quiet(stream: &mut Stream) -> bool {
    let mut byte = [0u8; 1];
    let mut buf = ReadBuf::new(&mut byte);
    let mut cx = Context::from_waker(Waker::noop());
    matches!(
        Pin::new(&mut **stream).poll_read(&mut cx, &mut buf),
        Poll::Pending
    )
}

#[cfg(test)]
mod tests;
