//! The access-log writer: a bounded queue filled by the request path, emptied by one thread.
//!
//! A request serialises its line into a per-thread buffer and appends it to the shared queue
//! under a short lock: no allocation, no system call, no wake-up per request (the writer is
//! woken when a batch starts). The writer lets a batch gather for `GATHER` and writes it in one
//! go, so lines appear within about `GATHER` and a busy proxy writes at most 1/`GATHER` times a
//! second (nginx's `buffer=`/`flush=` idea).
//!
//! Whatever the target does, no request and no exit waits for it:
//! - The target is opened at start-up and looked at again on every reload (a changed
//!   `[log] access`, or a file renamed away by logrotate before its SIGHUP, is reopened), by
//!   the writer thread, never on the request path. Files are opened with `O_NONBLOCK`, so a
//!   FIFO without a reader fails to open (ENXIO) instead of blocking: its lines are dropped and
//!   counted, and the open is retried every `RETRY` until a reader comes. A reader that stalls
//!   stalls the writer thread only (EAGAIN, then `poll`).
//! - The queue holds at most `MAX_PENDING` bytes; a line beyond that is dropped, as are the
//!   lines of a batch the target refuses (ENOSPC, EPIPE, EIO...). Every dropped line is counted
//!   in `strangle_access_log_dropped_total` and reported in the process log, the first at once,
//!   then at most once per `REPORT_EVERY` with the count.
//! - A line is never cut in two: when a write stops inside a line, the rest of that line is
//!   kept and written first once the target takes bytes again, so the target holds whole lines
//!   only. A file that ends inside a line when it is opened (a crash, or a cut line that could
//!   not be finished before a reopen) gets a newline first.
//! - `flush`, at exit, waits for the writer at most `FLUSH_WITHIN`: a stuck target costs the
//!   exit that long, never the exit itself.

use std::fs::File;
use std::io::{self, Write};
use std::os::fd::AsFd;
use std::os::unix::fs::{FileExt, MetadataExt, OpenOptionsExt};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use nix::poll::{poll, PollFd, PollFlags, PollTimeout};

use super::export::logs::LogQueue;
use super::AccessEvent;
use crate::config::AccessLog;

const GATHER: Duration = Duration::from_millis(50);
const MAX_PENDING: usize = 16 << 20;
/// How often a target that cannot be opened is tried again.
const RETRY: Duration = Duration::from_secs(1);
/// At most one report of dropped lines per this long.
const REPORT_EVERY: Duration = Duration::from_secs(10);
/// How long the exit waits for the last lines.
const FLUSH_WITHIN: Duration = Duration::from_secs(2);
/// How long a write to a full pipe waits between looks at the queue's commands.
const POLL_MS: u16 = 100;

thread_local! {
    static LINE: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Where access-log lines go. `log` never blocks on the target; see the module comment.
pub struct AccessLogger {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for AccessLogger {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AccessLogger")
            .field("enabled", &self.enabled())
            .field("dropped", &self.dropped())
            .finish()
    }
}

struct Shared {
    /// What the writer's messages call it: "access log", or "EMF output".
    label: &'static str,
    enabled: AtomicBool,
    dropped: AtomicU64,
    queue: Mutex<Queue>,
    /// The writer waits on it for lines or a command.
    wake: Condvar,
    /// `flush` waits on it for the writer to catch up.
    caught_up: Condvar,
    /// A flush gave up on the writer: later ones do not wait again.
    stuck: AtomicBool,
}

#[derive(Default)]
struct Queue {
    /// Whole lines, each ending in `\n`.
    lines: Vec<u8>,
    /// The target after a reload, for the writer to (re)open.
    reopen: Option<AccessLog>,
    flush_asked: u64,
    flush_done: u64,
}

impl Queue {
    fn idle(&self) -> bool {
        self.reopen.is_none() && self.flush_done == self.flush_asked
    }
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Queue> {
        self.queue.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl AccessLogger {
    /// Opens `target` now (start-up) and starts the writer thread. The process does not
    /// daemonise (Pingora forks only with `daemon`), so the thread survives into serving.
    pub fn new(target: AccessLog) -> AccessLogger {
        Self::labelled("access log", target)
    }

    /// A writer of other whole lines (EMF's) to a target of their own, with the same
    /// guarantees; `label` names it in the process log.
    pub fn labelled(label: &'static str, target: AccessLog) -> AccessLogger {
        let shared = Arc::new(Shared {
            label,
            enabled: AtomicBool::new(target != AccessLog::Off),
            dropped: AtomicU64::new(0),
            queue: Mutex::new(Queue::default()),
            wake: Condvar::new(),
            caught_up: Condvar::new(),
            stuck: AtomicBool::new(false),
        });
        let mut writer = Writer {
            shared: Arc::clone(&shared),
            target: AccessLog::Off,
            out: None,
            retry_at: None,
            tail: Vec::new(),
            newline_first: false,
            reporter: Reporter::default(),
        };
        writer.reopen(target);
        if let Err(e) = std::thread::Builder::new()
            .name(label.replace(' ', "-"))
            .spawn(move || writer.run())
        {
            // Lines then pile up to `MAX_PENDING` and are counted as dropped.
            tracing::error!("cannot start the {label} writer: {e}");
        }
        AccessLogger { shared }
    }

    pub fn enabled(&self) -> bool {
        self.shared.enabled.load(Ordering::Relaxed)
    }

    /// `event` as a whole line, for a caller that hands it to `push_lines` through a thread
    /// of its own (`None` while requests are not logged).
    pub fn line(&self, event: &AccessEvent<'_>) -> Option<Vec<u8>> {
        if !self.enabled() {
            return None;
        }
        let mut line = serde_json::to_vec(event).ok()?;
        line.push(b'\n');
        Some(line)
    }

    /// Counts a line dropped before it reached the queue.
    pub fn count_dropped(&self) {
        self.shared.dropped.fetch_add(1, Ordering::Relaxed);
    }

    /// Lines dropped so far: the queue was full or the target refused them.
    pub fn dropped(&self) -> u64 {
        self.shared.dropped.load(Ordering::Relaxed)
    }

    /// Writes `event`'s line, when there is a log, and hands a copy to `otlp`, the OTLP log
    /// exporter's queue, when logs are exported.
    pub fn log(&self, event: &AccessEvent<'_>, otlp: Option<&LogQueue>) {
        let enabled = self.enabled();
        if !enabled && otlp.is_none() {
            return;
        }
        LINE.with_borrow_mut(|line| {
            line.clear();
            if serde_json::to_writer(&mut *line, event).is_err() {
                return;
            }
            if let Some(queue) = otlp {
                queue.push(bytes::Bytes::copy_from_slice(line));
            }
            if enabled {
                line.push(b'\n');
                if !self.push_lines(line) {
                    self.shared.dropped.fetch_add(1, Ordering::Relaxed);
                }
            }
        });
    }

    /// Queues whole lines (each ending in `\n`) written elsewhere, whether or not requests are
    /// logged: EMF lines bound for this writer's target go through it, so that they never
    /// interleave with its lines. `false` when the queue is full: the lines are dropped, and
    /// the caller counts them (as its own).
    pub fn push_lines(&self, lines: &[u8]) -> bool {
        debug_assert!(lines.is_empty() || lines.ends_with(b"\n"));
        let mut queue = self.shared.lock();
        if queue.lines.len() + lines.len() > MAX_PENDING {
            return false;
        }
        let first = queue.lines.is_empty();
        queue.lines.extend_from_slice(lines);
        drop(queue);
        if first {
            self.shared.wake.notify_one();
        }
        true
    }

    /// After a reload: the writer opens `target` if it is not what it has open (another
    /// setting, or a file renamed or deleted since). Returns at once.
    pub fn reopen(&self, target: AccessLog) {
        self.shared
            .enabled
            .store(target != AccessLog::Off, Ordering::Relaxed);
        self.shared.lock().reopen = Some(target);
        self.shared.wake.notify_one();
    }

    /// At exit: waits until the lines logged so far are written, at most `FLUSH_WITHIN`.
    pub fn flush(&self) {
        if self.shared.stuck.load(Ordering::Acquire) {
            return;
        }
        let mut queue = self.shared.lock();
        queue.flush_asked += 1;
        let ticket = queue.flush_asked;
        self.shared.wake.notify_one();
        let (queue, waited) = self
            .shared
            .caught_up
            .wait_timeout_while(queue, FLUSH_WITHIN, |q| q.flush_done < ticket)
            .unwrap_or_else(PoisonError::into_inner);
        if waited.timed_out() {
            let queued = count_lines(&queue.lines);
            drop(queue);
            self.shared.stuck.store(true, Ordering::Release);
            let label = self.shared.label;
            tracing::error!(
                queued,
                "the {label} did not take the last lines within {FLUSH_WITHIN:?}; exiting without them"
            );
        }
    }
}

/// The writer thread's side: the open target and what is owed to it.
struct Writer {
    shared: Arc<Shared>,
    target: AccessLog,
    out: Option<File>,
    /// When to try opening again a target that could not be opened.
    retry_at: Option<Instant>,
    /// The end of a line whose start went out before a write failed: it goes out first.
    tail: Vec<u8>,
    /// The open file ends inside a line.
    newline_first: bool,
    reporter: Reporter,
}

impl Writer {
    fn run(mut self) {
        let mut batch = Vec::new();
        loop {
            let mut queue = self.shared.lock();
            if queue.lines.is_empty() && queue.idle() {
                // Nothing to write: sleep until there is, or until a failed open is due again
                // or dropped lines are due a report.
                let tick = self.retry_at.is_some() || self.reporter.owed(&self.shared);
                queue = if tick {
                    self.shared
                        .wake
                        .wait_timeout(queue, RETRY)
                        .map(|(q, _)| q)
                        .unwrap_or_else(|e| e.into_inner().0)
                } else {
                    self.shared
                        .wake
                        .wait(queue)
                        .unwrap_or_else(PoisonError::into_inner)
                };
            }
            if !queue.lines.is_empty() && queue.idle() {
                // Let the batch gather, unless a flush or a reopen waits for it.
                queue = self
                    .shared
                    .wake
                    .wait_timeout_while(queue, GATHER, |q| q.idle())
                    .map(|(q, _)| q)
                    .unwrap_or_else(|e| e.into_inner().0);
            }
            let reopen = queue.reopen.take();
            let flush = (queue.flush_done < queue.flush_asked).then_some(queue.flush_asked);
            std::mem::swap(&mut queue.lines, &mut batch);
            drop(queue);

            if let Some(target) = reopen {
                self.reopen(target);
            } else if self.retry_at.is_some_and(|at| Instant::now() >= at) {
                self.open();
            }
            if !batch.is_empty() {
                self.write_batch(&batch);
                batch.clear();
                if batch.capacity() > 1 << 20 {
                    // A burst's worth of buffer is not kept for ever.
                    batch = Vec::new();
                }
            }
            self.reporter.report(&self.shared);
            if let Some(ticket) = flush {
                self.shared.lock().flush_done = ticket;
                self.shared.caught_up.notify_all();
            }
        }
    }

    /// Opens `target` unless it is what is open already.
    fn reopen(&mut self, target: AccessLog) {
        if target == self.target && self.out.as_ref().is_some_and(|f| still_there(&target, f)) {
            return;
        }
        if let Some(old) = self.out.take() {
            if !self.tail.is_empty() {
                // One last try to finish the cut line where it started; never wait for it.
                let _ = (&old).write(&self.tail);
            }
        }
        self.tail.clear();
        self.target = target;
        self.open();
    }

    fn open(&mut self) {
        self.retry_at = None;
        self.newline_first = false;
        let path = match &self.target {
            AccessLog::Off => return,
            AccessLog::Stdout => {
                // A separate descriptor for the same stdout: written without Rust's line
                // buffer or its lock, which the process log does not share anyway.
                match io::stdout().as_fd().try_clone_to_owned() {
                    Ok(fd) => self.out = Some(File::from(fd)),
                    Err(e) => {
                        self.reporter.problem(format!("cannot use stdout: {e}"));
                        tracing::error!("{}: cannot use stdout: {e}", self.shared.label);
                    }
                }
                return;
            }
            AccessLog::File(path) => path.clone(),
        };
        match open_file(&path) {
            Ok((file, newline_first)) => {
                self.out = Some(file);
                self.newline_first = newline_first;
                if self.reporter.failing_open {
                    tracing::info!(path = %path.display(), "{} opened", self.shared.label);
                }
                self.reporter.failing_open = false;
            }
            Err(e) => {
                self.retry_at = Some(Instant::now() + RETRY);
                let why = if e.raw_os_error() == Some(nix::libc::ENXIO) {
                    "it is a FIFO with no reader; lines are dropped (and counted) until one opens it"
                        .to_string()
                } else {
                    format!("cannot open it: {e}")
                };
                if !self.reporter.failing_open {
                    tracing::error!(path = %path.display(), "{}: {why}; trying again every {RETRY:?}", self.shared.label);
                }
                self.reporter.failing_open = true;
                self.reporter.problem(format!("{}: {why}", path.display()));
            }
        }
    }

    /// Writes whole lines; a line cut by a failed write is finished before anything else.
    fn write_batch(&mut self, batch: &[u8]) {
        let lines = count_lines(batch);
        let Some(out) = &self.out else {
            if self.target != AccessLog::Off {
                self.reporter.dropped(&self.shared, lines, None);
            }
            return;
        };
        if self.newline_first {
            if let (_, Some(e)) = write_out(out, b"\n", &self.shared, &mut self.reporter) {
                self.reporter.dropped(&self.shared, lines, Some(e));
                return;
            }
            self.newline_first = false;
        }
        if !self.tail.is_empty() {
            let (done, failed) = write_out(out, &self.tail, &self.shared, &mut self.reporter);
            self.tail.drain(..done);
            if let Some(e) = failed {
                self.reporter.dropped(&self.shared, lines, Some(e));
                return;
            }
        }
        let (done, failed) = write_out(out, batch, &self.shared, &mut self.reporter);
        if let Some(e) = failed {
            let rest = &batch[done..];
            let mut lost = count_lines(rest);
            if done > 0 && batch[done - 1] != b'\n' {
                let end = memchr::memchr(b'\n', rest).map_or(rest.len(), |i| i + 1);
                self.tail.extend_from_slice(&rest[..end]);
                lost -= 1;
            }
            self.reporter.dropped(&self.shared, lost, Some(e));
        }
    }
}

/// Writes all of `bytes` unless the target fails: returns how much went out and the error.
/// A full pipe is waited out, but a reload's reopen is not kept waiting behind it.
fn write_out(
    out: &File,
    bytes: &[u8],
    shared: &Shared,
    reporter: &mut Reporter,
) -> (usize, Option<io::Error>) {
    let mut done = 0;
    while done < bytes.len() {
        match (&*out).write(&bytes[done..]) {
            Ok(0) => return (done, Some(io::ErrorKind::WriteZero.into())),
            Ok(n) => done += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                if shared.lock().reopen.is_some() {
                    return (done, Some(e));
                }
                // Lines the full queue drops meanwhile are still reported on time.
                reporter.report(shared);
                let mut fds = [PollFd::new(out.as_fd(), PollFlags::POLLOUT)];
                let _ = poll(&mut fds, PollTimeout::from(POLL_MS));
            }
            Err(e) => return (done, Some(e)),
        }
    }
    (done, None)
}

/// Opens a log file for appending without blocking (a FIFO with no reader is ENXIO). Also
/// says whether the file ends inside a line.
fn open_file(path: &Path) -> io::Result<(File, bool)> {
    // Write-only: a FIFO opened read-write would be its own reader and swallow the log.
    let file = std::fs::OpenOptions::new()
        .append(true)
        .create(true)
        .custom_flags(nix::libc::O_NONBLOCK)
        .open(path)?;
    let meta = file.metadata()?;
    if !meta.is_file() || meta.len() == 0 {
        return Ok((file, false));
    }
    // The last byte, read through a second descriptor of the same file (a write-only log
    // file, or one replaced in between, is taken as ending with a whole line).
    let mut last = [b'\n'];
    if let Ok(reader) = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(nix::libc::O_NONBLOCK)
        .open(path)
    {
        if reader
            .metadata()
            .is_ok_and(|m| m.dev() == meta.dev() && m.ino() == meta.ino())
        {
            let _ = reader.read_at(&mut last, meta.len() - 1);
        }
    }
    Ok((file, last[0] != b'\n'))
}

/// Whether the open file is still the one at the target's path (not renamed away or deleted).
fn still_there(target: &AccessLog, open: &File) -> bool {
    match target {
        AccessLog::File(path) => match (std::fs::metadata(path), open.metadata()) {
            (Ok(now), Ok(ours)) => now.dev() == ours.dev() && now.ino() == ours.ino(),
            _ => false,
        },
        AccessLog::Stdout | AccessLog::Off => true,
    }
}

fn count_lines(bytes: &[u8]) -> usize {
    memchr::memchr_iter(b'\n', bytes).count()
}

/// Counts dropped lines and reports them in the process log at a bounded rate.
#[derive(Default)]
struct Reporter {
    reported: u64,
    last: Option<Instant>,
    /// Why the writer dropped lines last.
    why: String,
    /// Lines the writer dropped since the last report (the rest: the queue was full).
    mine: u64,
    failing_open: bool,
}

impl Reporter {
    fn problem(&mut self, why: String) {
        self.why = why;
    }

    fn dropped(&mut self, shared: &Shared, lines: usize, error: Option<io::Error>) {
        if let Some(e) = error {
            self.why = format!("cannot write: {e}");
        }
        if lines > 0 {
            shared.dropped.fetch_add(lines as u64, Ordering::Relaxed);
            self.mine += lines as u64;
        }
    }

    fn owed(&self, shared: &Shared) -> bool {
        shared.dropped.load(Ordering::Relaxed) > self.reported
    }

    fn report(&mut self, shared: &Shared) {
        let total = shared.dropped.load(Ordering::Relaxed);
        if total == self.reported || self.last.is_some_and(|t| t.elapsed() < REPORT_EVERY) {
            return;
        }
        let lines = total - self.reported;
        let full = lines.saturating_sub(self.mine);
        let why = match (self.mine, full) {
            (0, _) => "the writer fell behind and the queue was full".to_string(),
            (_, 0) => self.why.clone(),
            _ => format!("{} ({full} of them because the queue was full)", self.why),
        };
        tracing::error!(
            lines,
            total,
            "{}: {lines} line(s) dropped: {why}",
            shared.label
        );
        self.reported = total;
        self.mine = 0;
        self.last = Some(Instant::now());
    }
}
