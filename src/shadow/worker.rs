//! The shadow worker's thread: started by the first copy, at the lowest CPU priority there is,
//! with a runtime of its own; and what a copy may take of an upstream's `max-in-flight`.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use super::{Job, Runner, Shadows, QUEUE_JOBS};
use crate::upstream::Shared;

impl Shadows {
    /// Starts the worker on a thread of its own at the lowest CPU priority, with a runtime of
    /// its own (blocking threads included, which inherit the priority).
    pub(super) fn start_worker(
        self: &Arc<Self>,
        runner: &Runner,
        home: tokio::runtime::Handle,
    ) -> std::io::Result<()> {
        let me = Arc::clone(self);
        let (sender, access, still) = (
            Arc::clone(&runner.sender),
            Arc::clone(&runner.access),
            Arc::clone(&runner.still),
        );
        if self.lines.get().is_none() {
            // The worker's access-log lines reach the log through a task on the requests'
            // runtime: the worker never holds the log's lock.
            let (tx, mut rx) = tokio::sync::mpsc::channel::<Vec<u8>>(QUEUE_JOBS);
            let log = Arc::clone(&access);
            home.spawn(async move {
                while let Some(line) = rx.recv().await {
                    if !log.push_lines(&line) {
                        log.count_dropped();
                    }
                }
            });
            let _ = self.lines.set(tx);
        }
        std::thread::Builder::new()
            .name(WORKER.into())
            .spawn(move || {
                lowest_priority();
                // Built here, on its own thread: nothing of it is ever dropped on a request's.
                let runtime = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .thread_name(WORKER)
                    .build()
                {
                    Ok(r) => r,
                    Err(e) => {
                        tracing::error!("the shadow worker's runtime did not start: {e}");
                        me.started.store(false, Ordering::Relaxed);
                        return;
                    }
                };
                sender.attach(home);
                runtime.block_on(async move {
                    let tidy = Arc::clone(&sender);
                    tokio::spawn(async move {
                        loop {
                            tokio::time::sleep(std::time::Duration::from_secs(10)).await;
                            tidy.tidy();
                        }
                    });
                    me.run(sender, access, Box::new(move |j: &Job| still(j)))
                        .await;
                });
            })?;
        Ok(())
    }
}

/// A `max-in-flight` slot of upstream `to` for a copy (or a replay); `Ok(None)` when it has
/// no limit. A copy never waits for one, and takes one only while more than half of them
/// (rounded up) are free: the worker runs only on the CPU the requests leave idle and may hold
/// its slots while they keep it off the CPU, so copies hold at most half of them, rounded down
/// (none with `max-in-flight = 1`), and the rest stay the requests'.
pub fn slot(to: &Shared) -> Result<Option<tokio::sync::OwnedSemaphorePermit>, String> {
    let Some(limiter) = &to.limiter else {
        return Ok(None);
    };
    let max = to.config.max_in_flight.unwrap_or(usize::MAX);
    let busy = || {
        format!(
            "upstream `{}` has too few free max-in-flight slots for a copy",
            to.name()
        )
    };
    if limiter.available_permits() <= max.div_ceil(2) {
        return Err(busy());
    }
    Arc::clone(limiter)
        .try_acquire_owned()
        .map(Some)
        .map_err(|_| busy())
}

/// The name of the worker's threads.
pub const WORKER: &str = "strangle-shadow";

/// Puts this thread (and the threads it starts) at the lowest CPU priority: `SCHED_IDLE` on
/// Linux, the highest nice value elsewhere. Failing that, it runs as it is, said once.
fn lowest_priority() {
    use thread_priority::{ThreadPriority, ThreadSchedulePolicy};
    #[cfg(target_os = "linux")]
    let policy = ThreadSchedulePolicy::Normal(thread_priority::NormalThreadSchedulePolicy::Idle);
    #[cfg(not(target_os = "linux"))]
    let policy = ThreadSchedulePolicy::Normal(thread_priority::NormalThreadSchedulePolicy::Other);
    let me = thread_priority::thread_native_id();
    let set = thread_priority::set_thread_priority_and_policy(me, ThreadPriority::Min, policy);
    // The library sets the policy, then the nice value, which an unprivileged process started
    // at a higher nice value may not lower: what counts is the policy in force.
    if let Err(e) = set {
        if thread_priority::thread_schedule_policy().ok() != Some(policy) {
            tracing::warn!(
                "the shadow worker runs at the requests' CPU priority (lowering it failed: {e:?})"
            );
        }
    }
}
