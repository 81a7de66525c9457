//! Access and event lines, written by one thread so that the data paths never block on stdout.
//!
//! A data path hands a finished line to [`Log::line`]; if the writer has fallen behind by more
//! than [`QUEUE_LINES`] lines, the line is counted as dropped instead of stalling traffic, and the
//! count is reported once the queue drains.

use std::io::{BufWriter, Write};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, TrySendError, sync_channel};
use std::thread;

/// Lines that may wait for the writer before new ones are dropped.
pub const QUEUE_LINES: usize = 16_384;

/// A cheap, cloneable handle; a disabled log formats nothing.
#[derive(Clone)]
pub struct Log {
    tx: Option<SyncSender<String>>,
    dropped: Arc<AtomicU64>,
}

impl Log {
    /// A log that writes to stdout from a background thread.
    pub fn stdout() -> Self {
        let (tx, rx) = sync_channel(QUEUE_LINES);
        let dropped = Arc::new(AtomicU64::new(0));
        let d = dropped.clone();
        // If the thread cannot be spawned the log is simply off; traffic matters more.
        let spawned = thread::Builder::new().name("netpulse-log".into()).spawn(move || write_lines(rx, d));
        Self { tx: spawned.ok().map(|_| tx), dropped }
    }

    /// A log that discards everything (`--quiet`).
    pub fn disabled() -> Self {
        Self { tx: None, dropped: Arc::new(AtomicU64::new(0)) }
    }

    /// Whether lines are wanted; callers skip formatting when not.
    pub fn enabled(&self) -> bool {
        self.tx.is_some()
    }

    /// Queues one line (without its newline).
    pub fn line(&self, line: String) {
        if let Some(tx) = &self.tx {
            match tx.try_send(line) {
                Ok(()) => {}
                Err(TrySendError::Full(_)) => {
                    self.dropped.fetch_add(1, Ordering::Relaxed);
                }
                Err(TrySendError::Disconnected(_)) => {}
            }
        }
    }
}

fn write_lines(rx: Receiver<String>, dropped: Arc<AtomicU64>) {
    // Buffer a batch, then write it under the stdout lock only briefly, so other printers
    // (the start-up banner, errors) are never locked out.
    let mut out = BufWriter::with_capacity(64 * 1024, std::io::stdout());
    while let Ok(first) = rx.recv() {
        let mut ok = writeln!(out, "{first}").is_ok();
        while let Ok(more) = rx.try_recv() {
            ok &= writeln!(out, "{more}").is_ok();
        }
        let lost = dropped.swap(0, Ordering::Relaxed);
        if lost > 0 {
            ok &= writeln!(out, "netpulse: log fell behind, {lost} lines dropped").is_ok();
        }
        if !(ok && out.flush().is_ok()) {
            // stdout is gone (closed pipe): keep draining so senders never see a full queue.
            while rx.recv().is_ok() {}
            return;
        }
    }
}

/// A warning that may repeat at a high rate (a full descriptor table hit by every datagram):
/// logged at most once per [`Throttled::EVERY`], with how many were held back since.
#[derive(Debug, Default)]
pub struct Throttled {
    last: Option<std::time::Instant>,
    held_back: u64,
}

impl Throttled {
    pub const EVERY: std::time::Duration = std::time::Duration::from_secs(1);

    /// Logs `message()` as a warning unless one was logged less than a second before `now`.
    pub fn warn(&mut self, now: std::time::Instant, message: impl FnOnce() -> String) {
        if self.last.is_some_and(|t| now.duration_since(t) < Self::EVERY) {
            self.held_back += 1;
            return;
        }
        let held = std::mem::take(&mut self.held_back);
        let more = if held > 0 { format!(" ({held} more like it since the last warning)") } else { String::new() };
        tracing::warn!("{}{more}", message());
        self.last = Some(now);
    }
}
