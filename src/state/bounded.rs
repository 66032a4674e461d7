//! Blocking work with a time limit, for reads that a hung filesystem can stop for ever.

use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// Runs blocking work on the blocking pool and waits for it at most `limit`. Work that
/// outlives the limit cannot be cancelled (a thread stuck in `read`): it is abandoned, counted
/// in `abandoned` until it returns, and its result dropped.
pub async fn run_bounded<T: Send + 'static>(
    what: &str,
    limit: Duration,
    abandoned: &Arc<AtomicU64>,
    work: impl FnOnce() -> T + Send + 'static,
) -> Result<T, String> {
    const RUNNING: u8 = 0;
    const DONE: u8 = 1;
    const ABANDONED: u8 = 2;
    let state = Arc::new(AtomicU8::new(RUNNING));
    let (worker_state, counter) = (Arc::clone(&state), Arc::clone(abandoned));
    let mut handle = tokio::task::spawn_blocking(move || {
        let out = work();
        if worker_state.swap(DONE, Ordering::AcqRel) == ABANDONED {
            counter.fetch_sub(1, Ordering::Relaxed);
        }
        out
    });
    let joined = match tokio::time::timeout(limit, &mut handle).await {
        Ok(joined) => joined,
        Err(_) => {
            // Counted before it is marked, so the worker's decrement never runs first.
            abandoned.fetch_add(1, Ordering::Relaxed);
            if state
                .compare_exchange(RUNNING, ABANDONED, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
            {
                tracing::warn!("{what} did not finish within {limit:?}; abandoned");
                return Err(format!(
                    "{what} did not finish within {} s (a hung filesystem?); the read was \
                     abandoned and the last good config keeps serving",
                    limit.as_secs()
                ));
            }
            // It finished just as the time ran out: take its result.
            abandoned.fetch_sub(1, Ordering::Relaxed);
            handle.await
        }
    };
    joined.map_err(|e| format!("{what} failed: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn blocking_work_past_its_limit_is_abandoned_counted_and_lets_go() {
        let abandoned = Arc::new(AtomicU64::new(0));
        // Stands in for a read stuck in the kernel: returns only when told to.
        let (release, stuck) = std::sync::mpsc::channel::<()>();
        let started = std::time::Instant::now();
        let err = run_bounded(
            "reading `x`",
            Duration::from_millis(100),
            &abandoned,
            move || stuck.recv().ok(),
        )
        .await
        .unwrap_err();
        assert!(started.elapsed() < Duration::from_secs(5));
        assert!(err.contains("did not finish within"), "{err}");
        assert_eq!(abandoned.load(Ordering::Relaxed), 1);
        // The next one is not held up.
        let ok = run_bounded("reading `x`", Duration::from_secs(5), &abandoned, || 7).await;
        assert_eq!(ok, Ok(7));
        // When the stuck one returns at last, it is no longer counted.
        release.send(()).unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while abandoned.load(Ordering::Relaxed) != 0 {
            assert!(std::time::Instant::now() < deadline, "never uncounted");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}
