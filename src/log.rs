//! Access and event lines, written by one thread so that the data paths never block on stdout.
//!
//! A data path hands a finished line to [`Log::line`]; if the writer has fallen behind by more
//! than [`QUEUE_LINES`] lines, the line is counted as dropped instead of stalling traffic, and the
//! count is reported once the queue drains.
//!
//! While a dashboard owns the terminal, access-log lines and diagnostics go to its [`Pane`]
//! instead of over the screen; the diagnostics are printed again when it gives the terminal back.

use std::collections::VecDeque;
use std::io::{self, BufWriter, Write};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, TrySendError, sync_channel};
use std::sync::{Arc, Mutex, OnceLock};
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
    let mut batch = Vec::new();
    while let Ok(first) = rx.recv() {
        batch.push(first);
        while let Ok(more) = rx.try_recv() {
            batch.push(more);
        }
        let lost = dropped.swap(0, Ordering::Relaxed);
        if lost > 0 {
            batch.push(format!("netpulse: log fell behind, {lost} lines dropped"));
        }
        if pane().take_access(&mut batch) {
            continue;
        }
        let mut ok = true;
        for line in batch.drain(..) {
            ok &= writeln!(out, "{line}").is_ok();
        }
        if !(ok && out.flush().is_ok()) {
            // stdout is gone (closed pipe): keep draining so senders never see a full queue.
            while rx.recv().is_ok() {}
            return;
        }
    }
}

/// Lines the pane keeps for the dashboard to show.
pub const PANE_LINES: usize = 1000;
/// Diagnostics kept to print again when the dashboard ends (the newest ones).
pub const REPLAY_LINES: usize = 200;

/// What a line of the pane is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum LineKind {
    /// An access-log line (a request or datagram).
    Access,
    Debug,
    Info,
    Warn,
    Error,
}

/// One line of the pane.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PaneLine {
    pub kind: LineKind,
    pub text: String,
}

/// The log pane: while a dashboard captures (between [`Pane::start`] and [`Pane::stop`]),
/// access-log lines and diagnostics are kept here, the newest [`PANE_LINES`], instead of being
/// written over the dashboard. One per process, like the terminal it stands in for.
#[derive(Debug, Default)]
pub struct Pane {
    capturing: AtomicBool,
    inner: Mutex<PaneInner>,
}

#[derive(Debug, Default)]
struct PaneInner {
    lines: VecDeque<PaneLine>,
    /// Diagnostics to print again on stop, and how many older ones did not fit.
    replay: VecDeque<String>,
    replay_dropped: u64,
    /// Lines taken since the start, for a dashboard to see whether any came.
    taken: u64,
}

/// What the pane held back while it captured, to print once the terminal is given back.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Replay {
    pub diagnostics: Vec<String>,
    /// Older diagnostics that did not fit in [`REPLAY_LINES`].
    pub dropped: u64,
}

/// The process's pane.
pub fn pane() -> &'static Pane {
    static PANE: OnceLock<Pane> = OnceLock::new();
    PANE.get_or_init(Pane::default)
}

impl Pane {
    fn lock(&self) -> std::sync::MutexGuard<'_, PaneInner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn capturing(&self) -> bool {
        self.capturing.load(Ordering::Relaxed)
    }

    /// Starts capturing, from an empty pane.
    pub fn start(&self) {
        let mut inner = self.lock();
        *inner = PaneInner::default();
        self.capturing.store(true, Ordering::Relaxed);
    }

    /// Stops capturing; returns the diagnostics to print again. Lines that come later go to
    /// stdout and stderr as before (none falls between: both sides take the same lock).
    pub fn stop(&self) -> Replay {
        let mut inner = self.lock();
        self.capturing.store(false, Ordering::Relaxed);
        let diagnostics = std::mem::take(&mut inner.replay).into();
        Replay { diagnostics, dropped: std::mem::take(&mut inner.replay_dropped) }
    }

    /// Adds a line (the dashboard's own notes, e.g. the start-up banner), when capturing.
    pub fn note(&self, kind: LineKind, text: &str) {
        let mut inner = self.lock();
        if self.capturing() {
            inner.push(kind, text.to_string());
        }
    }

    /// Takes a batch of access-log lines while capturing (emptying `batch`); `false` when not
    /// capturing, and the caller writes them itself.
    fn take_access(&self, batch: &mut Vec<String>) -> bool {
        let mut inner = self.lock();
        if !self.capturing() {
            return false;
        }
        for line in batch.drain(..) {
            inner.push(LineKind::Access, line);
        }
        true
    }

    /// A diagnostic line: kept while capturing (and printed again on stop), else written to
    /// stderr.
    pub fn diagnostic(&self, kind: LineKind, text: &str) {
        let mut inner = self.lock();
        if !self.capturing() {
            drop(inner);
            let _ = writeln!(io::stderr(), "{text}");
            return;
        }
        if inner.replay.len() == REPLAY_LINES {
            inner.replay.pop_front();
            inner.replay_dropped += 1;
        }
        inner.replay.push_back(text.to_string());
        inner.push(kind, text.to_string());
    }

    /// The newest `n` lines, oldest first.
    pub fn tail(&self, n: usize) -> Vec<PaneLine> {
        let inner = self.lock();
        inner.lines.iter().skip(inner.lines.len().saturating_sub(n)).cloned().collect()
    }

    /// Lines taken since [`Pane::start`].
    pub fn taken(&self) -> u64 {
        self.lock().taken
    }
}

impl PaneInner {
    fn push(&mut self, kind: LineKind, text: String) {
        if self.lines.len() == PANE_LINES {
            self.lines.pop_front();
        }
        self.lines.push_back(PaneLine { kind, text });
        self.taken += 1;
    }
}

/// The writer of diagnostics (`tracing`'s): stderr, or the [`Pane`] while it captures.
#[derive(Debug, Clone, Copy, Default)]
pub struct Diagnostics;

/// One diagnostic event on its way out.
#[derive(Debug)]
pub enum DiagnosticWriter {
    Stderr(io::Stderr),
    /// Collected, and handed to the pane when dropped (`tracing` writes an event at once).
    Pane {
        kind: LineKind,
        buf: Vec<u8>,
    },
}

impl Diagnostics {
    fn make(kind: LineKind) -> DiagnosticWriter {
        if pane().capturing() {
            DiagnosticWriter::Pane { kind, buf: Vec::new() }
        } else {
            DiagnosticWriter::Stderr(io::stderr())
        }
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Diagnostics {
    type Writer = DiagnosticWriter;

    fn make_writer(&'a self) -> Self::Writer {
        Self::make(LineKind::Info)
    }

    fn make_writer_for(&'a self, meta: &tracing::Metadata<'_>) -> Self::Writer {
        let kind = match *meta.level() {
            tracing::Level::ERROR => LineKind::Error,
            tracing::Level::WARN => LineKind::Warn,
            tracing::Level::INFO => LineKind::Info,
            _ => LineKind::Debug,
        };
        Self::make(kind)
    }
}

impl Write for DiagnosticWriter {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        match self {
            Self::Stderr(e) => e.write(data),
            Self::Pane { buf, .. } => {
                buf.extend_from_slice(data);
                Ok(data.len())
            }
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self {
            Self::Stderr(e) => e.flush(),
            Self::Pane { .. } => Ok(()),
        }
    }
}

impl Drop for DiagnosticWriter {
    fn drop(&mut self) {
        if let Self::Pane { kind, buf } = self {
            let text = strip_ansi(&String::from_utf8_lossy(buf));
            for line in text.lines().filter(|l| !l.trim().is_empty()) {
                pane().diagnostic(*kind, line);
            }
        }
    }
}

/// `text` without ANSI escape sequences (the colours `tracing` adds for a terminal).
pub fn strip_ansi(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c != '\x1b' {
            out.push(c);
            continue;
        }
        // CSI: ESC [ parameters... final byte in @..~; other escapes: ESC and one character.
        if chars.next() == Some('[') {
            for c in chars.by_ref() {
                if ('@'..='~').contains(&c) {
                    break;
                }
            }
        }
    }
    out
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ansi_colours_are_stripped_from_captured_lines() {
        assert_eq!(strip_ansi("\x1b[2m2026\x1b[0m \x1b[32m INFO\x1b[0m up"), "2026  INFO up");
        assert_eq!(strip_ansi("plain"), "plain");
    }

    #[test]
    fn a_capturing_pane_keeps_the_newest_lines_and_replays_diagnostics() {
        let pane = Pane::default();
        pane.note(LineKind::Info, "not capturing: dropped");
        pane.start();
        let mut batch: Vec<String> = (0..PANE_LINES + 5).map(|i| format!("GET /{i}")).collect();
        assert!(pane.take_access(&mut batch));
        assert!(batch.is_empty());
        pane.diagnostic(LineKind::Warn, "backend 127.0.0.1:1 is down");
        let tail = pane.tail(2);
        assert_eq!(tail[0].text, format!("GET /{}", PANE_LINES + 4));
        assert_eq!(tail[1], PaneLine { kind: LineKind::Warn, text: "backend 127.0.0.1:1 is down".into() });
        assert_eq!(pane.tail(usize::MAX).len(), PANE_LINES);
        let replay = pane.stop();
        assert_eq!(replay.diagnostics, vec!["backend 127.0.0.1:1 is down".to_string()]);
        let mut later = vec!["GET /after".to_string()];
        assert!(!pane.take_access(&mut later), "after stop, lines go to stdout again");
        assert_eq!(later.len(), 1);
    }
}
