//! The history writer, a sink: a thread of its own that follows the monitor's reports and, for
//! each one, writes one transaction — the interval's records, its events, the oldest closed
//! minute packed and the oldest closed hour rolled up (one of each per interval, so a backlog is
//! worked off over the next intervals and no write waits on all of it), a few series pruned.
//!
//! The queue between the monitor and the writer is the monitor's broadcast channel: the monitor
//! never waits for it. A writer that falls behind (a slow disk) misses reports; the next report
//! it reads carries cumulative probe totals, so the missed intervals' counts (and loss) are kept
//! exactly, only their RTT samples are lost, and a warning says so. A write that fails (disk
//! full, file gone read-only) is rolled back and warned about once; monitoring goes on and the
//! writer tries again at the next interval. A file SQLite finds damaged (a corrupt page, not a
//! database) is warned about once and not written again in this run: trying again could only
//! fail again, or make it worse.
//!
//! Time: an interval's span is measured on the monotonic clock, its stamp is the wall clock's
//! time. A step of the wall clock against the monotonic one by more than two intervals (at least
//! 1 s, at most 10 s) — NTP or `date -s` stepping it, a machine waking from sleep — is warned
//! about and recorded as a `clock` event. Stamps never go back: after a step back they go on from
//! the last one at the monotonic clock's pace until the wall clock catches up. Old rows are
//! pruned and hours rolled up by a time that does not follow a step forward, so a clock set a
//! year ahead by mistake deletes nothing.
//!
//! Outages are the writer's word, judged probe by probe: a target is in an outage from the first
//! of [`FALL`] probes in a row that failed (lost, refused, answered wrongly), dated from when
//! that probe was sent, to when the next answered one was sent. A blackout of three probes is an
//! outage even when it begins and ends between two reports; a lost probe or two on a lossy link
//! is loss.

use std::collections::HashMap;
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use tokio::sync::broadcast;

use super::plot::human_duration;
use super::record::{CounterInterval, Record, TargetInterval, encode_interval};
use super::store::{Store, is_damaged};
use super::{MINUTE_MS, floor_to, now_ms, parse_rfc3339, rfc3339, shown};
use crate::dashboard::events::why_down;
use crate::monitor::report::{Connectivity, ProbePoint, Report};
use crate::stats::traffic::{BackendState, BalancerSnapshot, Balancers};

/// Counters of an interface, in the order they are stored.
pub const INTERFACE_FIELDS: [&str; 8] =
    ["rx_bytes", "tx_bytes", "rx_packets", "tx_packets", "rx_errors", "tx_errors", "rx_dropped", "tx_dropped"];
/// Counters of an HTTP balancer's backend.
pub const HTTP_BACKEND_FIELDS: [&str; 10] = [
    "requests",
    "responses_1xx",
    "responses_2xx",
    "responses_3xx",
    "responses_4xx",
    "responses_5xx",
    "errors",
    "retried",
    "bytes_sent",
    "bytes_received",
];
/// Counters of a UDP balancer's backend.
pub const UDP_BACKEND_FIELDS: [&str; 5] =
    ["datagrams_sent", "bytes_sent", "datagrams_received", "bytes_received", "unanswered"];

/// Probes in a row that must fail before a target is in an outage (HAProxy's `fall 3`, and
/// the monitor's own [`crate::stats::LOST_BEFORE_DOWN`]): a lost probe or two on a lossy link
/// is loss, not an outage. The outage then starts when the first of them was sent.
pub const FALL: u32 = 3;
/// At most one "falling behind" warning per this long.
const LAG_WARNING_EVERY: Duration = Duration::from_secs(60);
/// The least and the most the wall clock may move against the monotonic clock between two
/// intervals before it counts as a step (within them: two intervals).
const STEP_LEAST_MS: i64 = 1000;
const STEP_MOST_MS: i64 = 10_000;
/// Minutes packed at most when the writer stops (the rest waits for the next run).
const PACK_AT_STOP: usize = 100_000;

/// Where the writer reads the time: the monotonic clock times intervals and probes, the wall
/// clock stamps them. A trait so that tests step the wall clock without touching the system's.
pub trait Clock: Send {
    fn mono(&self) -> Instant;
    /// Milliseconds since the Unix epoch.
    fn wall_ms(&self) -> i64;
}

/// The system's clocks.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn mono(&self) -> Instant {
        Instant::now()
    }
    fn wall_ms(&self) -> i64 {
        now_ms()
    }
}

/// Clocks set by hand: synthetic reports replayed at their own times, and tests.
#[doc(hidden)]
#[derive(Debug, Clone)]
pub struct ManualClock(Arc<Mutex<(Instant, i64)>>);

impl ManualClock {
    /// Clocks reading `wall_ms` on the wall clock, and now on the monotonic one.
    pub fn new(wall_ms: i64) -> Self {
        Self(Arc::new(Mutex::new((Instant::now(), wall_ms))))
    }

    fn with<T>(&self, f: impl FnOnce(&mut (Instant, i64)) -> T) -> T {
        f(&mut self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner))
    }

    /// Time passes: both clocks move on by `ms`.
    pub fn advance(&self, ms: u64) {
        self.with(|c| {
            c.0 += Duration::from_millis(ms);
            c.1 += i64::try_from(ms).unwrap_or(i64::MAX);
        });
    }

    /// Time passes until the wall clock reads `wall_ms` (an earlier time moves neither clock).
    pub fn go_to(&self, wall_ms: i64) {
        let now = self.with(|c| c.1);
        self.advance(u64::try_from(wall_ms - now).unwrap_or(0));
    }

    /// The wall clock is stepped by `ms` (back when negative); the monotonic clock does not move.
    pub fn step_wall(&self, ms: i64) {
        self.with(|c| c.1 += ms);
    }
}

impl Clock for ManualClock {
    fn mono(&self) -> Instant {
        self.with(|c| c.0)
    }
    fn wall_ms(&self) -> i64 {
        self.with(|c| c.1)
    }
}

/// The running writer.
pub struct Recorder {
    thread: JoinHandle<()>,
    done: mpsc::Receiver<()>,
    notes: Notes,
}

/// An event that no report shows (a reload of the config), written with the next interval.
#[derive(Debug, Clone)]
pub struct Note {
    /// When it happened, in milliseconds since the epoch.
    pub t: i64,
    pub kind: &'static str,
    pub subject: String,
    pub detail: String,
}

/// Where [`Note`]s are sent to be recorded.
pub type Notes = mpsc::Sender<Note>;

impl Recorder {
    /// Starts the writer thread on `store`, following `reports` (subscribe before the monitor
    /// runs) and reading `balancers`' counters at each report. It ends when the reports do.
    pub fn start(
        store: Store,
        reports: broadcast::Receiver<Arc<Report>>,
        balancers: Balancers,
    ) -> std::io::Result<Self> {
        let (tx, done) = mpsc::channel();
        let (notes, noted) = mpsc::channel();
        let thread = std::thread::Builder::new().name("history".into()).spawn(move || {
            run(store, reports, balancers, noted);
            let _ = tx.send(());
        })?;
        Ok(Self { thread, done, notes })
    }

    /// Where to send events no report shows, to be recorded with the next interval.
    pub fn notes(&self) -> Notes {
        self.notes.clone()
    }

    /// Waits up to `limit` for the writer to write its last interval and close the file.
    pub fn finish(self, limit: Duration) {
        match self.done.recv_timeout(limit) {
            Ok(()) | Err(mpsc::RecvTimeoutError::Disconnected) => {
                let _ = self.thread.join();
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {
                tracing::warn!("history: the last interval was still being written after {limit:?}; stopped anyway");
            }
        }
    }
}

fn run(store: Store, mut reports: broadcast::Receiver<Arc<Report>>, balancers: Balancers, notes: mpsc::Receiver<Note>) {
    let mut w = Writer::new(store, balancers, Box::new(SystemClock));
    w.notes = Some(notes);
    w.start();
    let mut missed = 0u64;
    let mut warned: Option<Instant> = None;
    loop {
        match reports.blocking_recv() {
            Ok(report) => w.interval(&report),
            Err(broadcast::error::RecvError::Lagged(n)) => {
                missed += n;
                if !w.damaged && warned.is_none_or(|t| t.elapsed() >= LAG_WARNING_EVERY) {
                    tracing::warn!(
                        "history: writing {} is slower than the monitor; {missed} interval(s) merged into the next \
                         (their probe counts are kept, their round-trip times are not)",
                        shown(&w.store.path)
                    );
                    warned = Some(Instant::now());
                    missed = 0;
                }
            }
            Err(broadcast::error::RecvError::Closed) => break,
        }
    }
    w.stop();
}

/// Writes `reports` one after another as the writer thread does, on this thread, at the times
/// the reports carry (a clock that follows them), then stops: for benchmarks and tests that
/// feed the writer synthetic reports.
#[doc(hidden)]
pub fn replay(store: Store, reports: impl IntoIterator<Item = Report>) {
    let mut reports = reports.into_iter().peekable();
    let time = |r: &Report| parse_rfc3339(&r.time);
    let first = reports.peek().and_then(time).unwrap_or_else(now_ms);
    let clock = ManualClock::new(first - 1000);
    let mut w = Writer::new(store, Balancers::default(), Box::new(clock.clone()));
    w.start();
    for r in reports {
        if let Some(t) = time(&r) {
            clock.go_to(t);
        }
        w.interval(&r);
    }
    w.stop();
}

/// The writer's time line at the last interval written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Timeline {
    /// The monotonic clock then, and the interval's stamp (ms since the epoch).
    mono: Instant,
    t: i64,
    /// What old rows are pruned and hours rolled up by: the stamps' time, except that it does
    /// not follow the wall clock's steps forward (it goes on at the monotonic clock's pace).
    settled: i64,
}

impl Timeline {
    fn new(mono: Instant, wall: i64) -> Self {
        Self { mono, t: wall, settled: wall }
    }

    /// The next interval, at `mono` on the monotonic clock and `wall` on the wall clock: its
    /// time line, and its span in ms (monotonic; 0 when `mono` is not after the last one).
    fn next(&self, mono: Instant, wall: i64) -> (Self, u64) {
        let span = ms_between(self.mono, mono);
        let mono = mono.max(self.mono);
        // The wall clock's time, unless that would not be after the last stamp (a step back):
        // then on from the last stamp by the span.
        let t = if wall > self.t { wall } else { self.t.saturating_add(span.max(1)) };
        let settled = if t <= self.settled.saturating_add(span).saturating_add(step_tolerance(span)) {
            t.max(self.settled)
        } else {
            self.settled.saturating_add(span)
        };
        (Self { mono, t, settled }, u64::try_from(span).unwrap_or(0))
    }
}

/// How far the wall clock may move against the monotonic one over `span_ms` before it is a
/// step: two intervals, at least a second, at most ten.
fn step_tolerance(span_ms: i64) -> i64 {
    span_ms.saturating_mul(2).clamp(STEP_LEAST_MS, STEP_MOST_MS)
}

/// Milliseconds from `a` to `b` on the monotonic clock (0 when `b` is not after `a`).
fn ms_between(a: Instant, b: Instant) -> i64 {
    i64::try_from(b.saturating_duration_since(a).as_millis()).unwrap_or(i64::MAX)
}

/// The part of the writer's memory an interval changes, kept to put back when its transaction
/// fails after it began (a full disk): otherwise the file would miss what the memory moved past.
struct Memory {
    judges: HashMap<i64, Judge>,
    verdict: Option<Connectivity>,
    totals: HashMap<i64, (u64, u64)>,
    counters: HashMap<i64, Vec<u64>>,
    links: HashMap<String, bool>,
    backends: HashMap<String, BackendState>,
}

/// The writer's memory between reports: what the previous one said, to turn cumulative
/// counters into deltas and states into events.
struct Writer {
    store: Store,
    balancers: Balancers,
    clock: Box<dyn Clock>,
    /// The time line at the last interval written.
    line: Timeline,
    /// Both clocks at the last interval seen (written or not): a step of the wall clock is told
    /// against them, once.
    seen: (Instant, i64),
    /// Per target series: its probes judged so far, whether it is in an outage.
    judges: HashMap<i64, Judge>,
    verdict: Option<Connectivity>,
    /// Per target series: the cumulative probe totals of the previous report.
    totals: HashMap<i64, (u64, u64)>,
    /// Per counter series: the previous cumulative values.
    counters: HashMap<i64, Vec<u64>>,
    links: HashMap<String, bool>,
    backends: HashMap<String, BackendState>,
    /// Events noticed outside an interval's records (a clock step), written with the next
    /// interval that is: (kind, subject, detail).
    pending: Vec<(&'static str, String, String)>,
    /// The first write error, while writes fail.
    failing: Option<String>,
    /// Events from outside the reports, written with the next interval.
    notes: Option<mpsc::Receiver<Note>>,
    /// The file is damaged: nothing more is written to it in this run.
    damaged: bool,
    /// The stamp of this run's `start` event: no probe is placed before it (one sent before
    /// the writer was made would begin an outage that the start, read back, ends at once).
    started: i64,
}

impl Writer {
    fn new(store: Store, balancers: Balancers, clock: Box<dyn Clock>) -> Self {
        let (mono, wall) = (clock.mono(), clock.wall_ms());
        Self {
            store,
            balancers,
            clock,
            line: Timeline::new(mono, wall),
            started: wall,
            seen: (mono, wall),
            judges: HashMap::new(),
            verdict: None,
            totals: HashMap::new(),
            counters: HashMap::new(),
            links: HashMap::new(),
            backends: HashMap::new(),
            pending: Vec::new(),
            failing: None,
            notes: None,
            damaged: false,
        }
    }

    /// Runs `f` in one transaction; a failure is rolled back and warned about once. A damaged
    /// file ends the writing for this run (one warning).
    fn write(&mut self, what: &str, f: impl FnOnce(&mut Self) -> rusqlite::Result<()>) -> bool {
        if self.damaged {
            return false;
        }
        if !self.store.still_there() {
            // Written on, a deleted file would take every interval with it, and a new file at
            // the path would let a second writer in unawares.
            self.damaged = true;
            tracing::warn!(
                "history: {} was deleted or replaced while netpulse recorded into it; nothing more is recorded in \
                 this run, monitoring goes on (a restart records into a new file there)",
                shown(&self.store.path)
            );
            return false;
        }
        let result = self
            .store
            .conn
            .execute_batch("BEGIN IMMEDIATE")
            .and_then(|()| f(self))
            .and_then(|()| self.store.conn.execute_batch("COMMIT"));
        match result {
            Ok(()) => {
                if self.failing.take().is_some() {
                    tracing::info!("history: recording into {} again", shown(&self.store.path));
                }
                true
            }
            Err(e) => {
                let _ = self.store.conn.execute_batch("ROLLBACK");
                self.store.forget_ids();
                if is_damaged(&e) {
                    self.damaged = true;
                    tracing::warn!(
                        "history: {} is damaged ({e}, found while {what}); nothing more is recorded into it in this \
                         run, monitoring goes on. netpulse history reads what is left of it; move it away to start a \
                         new one",
                        shown(&self.store.path)
                    );
                } else if self.failing.is_none() {
                    tracing::warn!(
                        "history: cannot write {} ({what}): {e}; monitoring goes on, intervals are not recorded until \
                         it can",
                        shown(&self.store.path)
                    );
                    self.failing = Some(e.to_string());
                }
                false
            }
        }
    }

    /// Notes where the last run ended if it did not stop (killed or crashed), a clock that is
    /// behind the file, and the start. What the last run left in the journal is packed by the
    /// intervals, a minute each.
    fn start(&mut self) {
        let t = self.line.t;
        self.write("closing what the last run left", |w| {
            // Intervals left in the journal mean the last run ended without its stop (killed
            // or crashed): its stop is noted at its last interval, so its outages end there.
            let last: Option<i64> = w.store.conn.query_row("SELECT max(t) FROM journal", [], |r| r.get(0))?;
            if let Some(last) = last {
                w.store.event(last, "stop", "netpulse", "recording ended without a stop (killed or crashed)")?;
            }
            let newest: Option<i64> = w.store.conn.query_row("SELECT max(t) FROM events", [], |r| r.get(0))?;
            if let Some(newest) = newest.filter(|&n| n > t + STEP_MOST_MS) {
                let detail = format!(
                    "the file holds records up to {}, {} after this clock's time {}: the wall clock went back while \
                     netpulse was stopped (or was ahead then)",
                    rfc3339(newest),
                    human_duration((newest - t) as f64 / 1000.0),
                    rfc3339(t)
                );
                tracing::warn!(
                    "history: {detail}; new intervals are stamped by this clock, before them ({})",
                    shown(&w.store.path)
                );
                w.store.event(t, "clock", "wall clock", &detail)?;
            }
            Ok(())
        });
        self.write("starting", |w| {
            w.store.event(t, "start", "netpulse", &format!("netpulse {} started recording", env!("CARGO_PKG_VERSION")))
        });
    }

    /// Notes the stop and packs the journal, so the file is complete without it.
    fn stop(&mut self) {
        let (mono, wall) = (self.clock.mono(), self.clock.wall_ms());
        self.notice_step(mono, wall);
        let t = self.line.next(mono, wall).0.t;
        let notes: Vec<Note> = self.notes.as_ref().map(|n| n.try_iter().collect()).unwrap_or_default();
        self.write("stopping", |w| {
            for n in &notes {
                w.store.event(n.t.min(t), n.kind, &n.subject, &n.detail)?;
            }
            let pending = std::mem::take(&mut w.pending);
            for (kind, subject, detail) in &pending {
                w.store.event(t, kind, subject, detail)?;
            }
            w.store.event(t, "stop", "netpulse", "netpulse stopped recording")
        });
        for _ in 0..PACK_AT_STOP {
            let mut more = false;
            if !self.write("packing", |w| {
                more = w.store.pack(i64::MAX)?;
                Ok(())
            }) || !more
            {
                break;
            }
        }
    }

    /// Tells a step of the wall clock against the monotonic one since the last interval seen:
    /// one warning line, and a `clock` event written with the next interval.
    fn notice_step(&mut self, mono: Instant, wall: i64) {
        let (m0, w0) = std::mem::replace(&mut self.seen, (mono, wall));
        let span = ms_between(m0, mono);
        let expected = w0.saturating_add(span);
        let step = wall.saturating_sub(expected);
        if step.abs() <= step_tolerance(span) {
            return;
        }
        let by = human_duration(step.unsigned_abs() as f64 / 1000.0);
        let (detail, then) = if step > 0 {
            (
                format!(
                    "the wall clock jumped forward by {by} (from {} to {}: it was stepped, or the machine slept)",
                    rfc3339(expected),
                    rfc3339(wall)
                ),
                "old rows are pruned by the time before the jump".to_string(),
            )
        } else {
            (
                format!("the wall clock jumped back by {by} (from {} to {})", rfc3339(expected), rfc3339(wall)),
                format!(
                    "intervals are stamped on from {} until it catches up, so rows stay in order",
                    rfc3339(self.line.t)
                ),
            )
        };
        tracing::warn!("history: {detail}; spans are timed by the monotonic clock, {then}");
        self.pending.push(("clock", "wall clock".to_string(), detail));
    }

    fn interval(&mut self, report: &Report) {
        let (mono, wall) = (self.clock.mono(), self.clock.wall_ms());
        self.notice_step(mono, wall);
        if self.damaged {
            return;
        }
        // The interval is stamped when the newest of its probes was sent, not when the report
        // came (a report holds the probes that settled in the interval before it, and comes
        // after its interfaces were read): so a record holds the probes sent up to its stamp,
        // and an outage dated from its first failed probe holds only its own records.
        let sent = report.targets.iter().flat_map(|t| &t.probes).filter_map(|p| p.sent).filter(|s| *s <= mono).max();
        let at = sent.unwrap_or(mono);
        let (line, span) = self.line.next(at, wall - ms_between(at, mono));
        // Probes are placed on the line from its own anchor: when the newest probe was sent
        // before the last stamp (a report of probes that were in flight at the last one), the
        // stamp moves on from the last one, and the probes stay where they were sent.
        let t = line.t;
        let anchor = if at > self.line.mono { (line.t, at) } else { (self.line.t, self.line.mono) };
        let snapshots: Vec<BalancerSnapshot> = self.balancers.iter().map(|b| b.snapshot(Instant::now())).collect();
        let before = self.memory();
        let notes: Vec<Note> = self.notes.as_ref().map(|n| n.try_iter().collect()).unwrap_or_default();
        let written = self.write("writing an interval", |w| {
            for n in &notes {
                w.store.event(n.t.min(t), n.kind, &n.subject, &n.detail)?;
            }
            let mut records = Vec::with_capacity(report.targets.len() + report.interfaces.len());
            let mut early = Vec::new();
            let mut events = w.targets(report, (t, anchor, span), &mut records, &mut early)?;
            let now = |(kind, subject, detail)| (t, kind, subject, detail);
            events.extend(w.interfaces(report, span, &mut records)?.into_iter().map(now));
            events.extend(w.balancer_backends(&snapshots, span, &mut records)?.into_iter().map(now));
            events.extend(w.pending.iter().cloned().map(now));
            // Parts of records cut off before an outage began or ended, in rows of their own
            // (all after the previous interval's stamp and before this one's).
            let mut by_stamp: std::collections::BTreeMap<i64, Vec<(i64, Record)>> = std::collections::BTreeMap::new();
            for (at, id, r) in early {
                by_stamp.entry(at).or_default().push((id, r));
            }
            for (at, part) in by_stamp {
                w.store.append(at, &encode_interval(&part))?;
            }
            if !records.is_empty() {
                w.store.append(t, &encode_interval(&records))?;
            }
            for (at, kind, subject, detail) in events {
                w.store.event(at, kind, &subject, &detail)?;
            }
            // The oldest closed minute and hour, if any: one each per interval, so that a
            // backlog is worked off over the next intervals.
            w.store.pack(floor_to(t, MINUTE_MS))?;
            w.store.roll_hours(line.settled)?;
            w.store.prune(line.settled)
        });
        if written {
            self.line = line;
            self.pending.clear();
        } else {
            // Nothing of it reached the file: the next interval starts from the same memory, so
            // its deltas and state changes include this one's (merged, as a missed report is).
            self.restore(before);
        }
    }

    /// What an interval changes in the writer's memory.
    fn memory(&self) -> Memory {
        Memory {
            judges: self.judges.clone(),
            verdict: self.verdict,
            totals: self.totals.clone(),
            counters: self.counters.clone(),
            links: self.links.clone(),
            backends: self.backends.clone(),
        }
    }

    fn restore(&mut self, m: Memory) {
        self.judges = m.judges;
        self.verdict = m.verdict;
        self.totals = m.totals;
        self.counters = m.counters;
        self.links = m.links;
        self.backends = m.backends;
    }

    /// The targets' records, and their outages beginning and ending (and the verdict changing)
    /// as events. `now`: the interval's stamp; `anchor`: a stamp and its time on the monotonic
    /// clock, to place probes by when they were sent; `span`: the interval's length.
    /// Parts of records cut off before an outage's start or end go to `early` (their stamp,
    /// series, record).
    fn targets(
        &mut self,
        report: &Report,
        (now, (anchor_t, anchor_mono), span): (i64, (i64, Instant), u64),
        out: &mut Vec<(i64, Record)>,
        early: &mut Vec<(i64, i64, Record)>,
    ) -> rusqlite::Result<Vec<Timed>> {
        let mut events = Vec::new();
        let mut changed_at: Option<i64> = None;
        let mut changed = |at: i64| changed_at = Some(changed_at.map_or(at, |c: i64| c.min(at)));
        for t in &report.targets {
            // A target with no probe settled yet has nothing to say.
            if t.newest.is_none() && t.probes.is_empty() {
                continue;
            }
            let id = self.store.series_id("target", &t.target, t.probe.as_str(), "")?;
            // Each probe on the time line: when it was sent (where not known, the interval's
            // probes spread over it), judged in the order they were sent.
            let (n, span_ms) = (t.probes.len() as i64, i64::try_from(span).unwrap_or(i64::MAX));
            let mut probes: Vec<(i64, &ProbePoint)> = t
                .probes
                .iter()
                .enumerate()
                .map(|(i, p)| {
                    let at = match p.sent {
                        Some(sent) => (anchor_t - ms_between(sent, anchor_mono)).max(self.started),
                        None => now - span_ms + span_ms * (i as i64 + 1) / n,
                    };
                    (at, p)
                })
                .collect();
            probes.sort_by_key(|(_, p)| p.seq);
            let why = |p: &ProbePoint| if p.lost { "no answer in time".to_string() } else { why_down(t) };
            let judge = self.judges.entry(id).or_default();
            let was_down = judge.down;
            // Where an outage began or ended.
            let mut cuts = Vec::new();
            for &(at, p) in &probes {
                // A probe older than one already judged (one the monitor reported twice, or
                // one that waited past HOLD_MS) is counted, not judged again.
                if judge.last_seq.is_none_or(|last| p.seq > last) {
                    let why = if p.up { String::new() } else { why(p) };
                    judge.held.insert(p.seq, Held { at, up: p.up, rtt_ms: p.rtt_ms, why });
                }
            }
            // Judged in the order they were sent: the next in line, or, when one never comes,
            // the first held once it has waited HOLD_MS.
            while let Some((&seq, first)) = judge.held.first_key_value() {
                let in_line = judge.last_seq.is_none_or(|last| seq == last + 1);
                if !in_line && first.at > now - HOLD_MS {
                    break;
                }
                let Some((_, p)) = judge.held.pop_first() else { break };
                let at = p.at;
                judge.last_seq = Some(seq);
                if p.up {
                    judge.failing = 0;
                    judge.first = None;
                    if std::mem::take(&mut judge.down) {
                        let rtt = p.rtt_ms.map(|ms| format!(" ({ms:.3} ms)")).unwrap_or_default();
                        events.push((
                            at,
                            "target_up",
                            t.target.clone(),
                            format!("target {} is up again{rtt}", t.target),
                        ));
                        changed(at);
                        cuts.push(at);
                    }
                } else {
                    judge.failing += 1;
                    if judge.failing == 1 {
                        judge.first = Some((at, p.why.clone()));
                    }
                    if judge.failing >= FALL && !judge.down {
                        judge.down = true;
                        let (since, why) = judge.first.clone().unwrap_or_else(|| (at, p.why.clone()));
                        events.push((since, "target_down", t.target.clone(), why));
                        changed(since);
                        cuts.push(since);
                    }
                }
            }
            // The interval's record, cut where an outage began or ended inside it: the part
            // before a cut is stamped just before it, so that an outage's records hold only its
            // own probes (its loss is theirs, not that of an answered probe next to it). A cut
            // before the previous interval's stamp cannot be made (that record is written).
            let prev_t = self.line.t;
            let mut stamps: Vec<i64> = cuts.iter().map(|c| c - 1).filter(|&c| c > prev_t && c < now).collect();
            stamps.sort_unstable();
            stamps.dedup();
            let mut parts: Vec<TargetInterval> = vec![TargetInterval::default(); stamps.len() + 1];
            for &(at, p) in &probes {
                let part = &mut parts[stamps.partition_point(|&c| c < at)];
                part.sent += 1;
                part.lost += u64::from(p.lost);
                if let (true, Some(ms)) = (p.up, p.rtt_ms) {
                    part.received += 1;
                    part.rtts_us.push((ms * 1000.0).round().max(0.0) as u64);
                }
            }
            // Reports this writer missed: the cumulative totals still count their probes.
            if let Some(&(sent, received)) = self.totals.get(&id) {
                let (ds, dr) = (t.sent_total.saturating_sub(sent), t.received_total.saturating_sub(received));
                let seen = probes.len() as u64;
                let answered = parts.iter().map(|p| p.received).sum::<u64>();
                if let Some(last) = parts.last_mut().filter(|_| ds > seen) {
                    last.sent += ds - seen;
                    last.received += dr.saturating_sub(answered);
                }
            }
            self.totals.insert(id, (t.sent_total, t.received_total));
            // Each part's span (the interval's, shared as its stamps are), and whether it was in
            // an outage: as the target was at the previous stamp, then turned over at each cut.
            let before = cuts.iter().filter(|&&c| c - 1 <= prev_t).count();
            let (mut from, mut left, mut down) = (prev_t, span, was_down ^ (before % 2 == 1));
            let last = parts.len() - 1;
            for (i, mut part) in parts.into_iter().enumerate() {
                let at = stamps.get(i).copied().unwrap_or(now);
                part.span_ms = if i == last { left } else { u64::try_from(at - from).unwrap_or(0).min(left) };
                left -= part.span_ms;
                from = at;
                part.down = down;
                if i == last {
                    out.push((id, Record::Target(part)));
                } else {
                    down = !down;
                    early.push((at, id, Record::Target(part)));
                }
            }
        }
        // The verdict, from the targets in an outage, once every target has been probed.
        let probed: Vec<(i64, &str)> = report
            .targets
            .iter()
            .filter(|t| t.newest.is_some())
            .filter_map(|t| Some((self.store.known("target", &t.target)?, t.target.as_str())))
            .collect();
        if !report.targets.is_empty() && probed.len() == report.targets.len() {
            let down: Vec<&str> =
                probed.iter().filter(|(id, _)| self.judges.get(id).is_some_and(|s| s.down)).map(|p| p.1).collect();
            let verdict = match down.len() {
                0 => Connectivity::Connected,
                n if n == probed.len() => Connectivity::Disconnected,
                _ => Connectivity::Degraded,
            };
            let was = self.verdict.replace(verdict);
            if was.unwrap_or(Connectivity::Connected) != verdict {
                let name = |c: Connectivity| match c {
                    Connectivity::Connected => "connected",
                    Connectivity::Degraded => "degraded",
                    Connectivity::Disconnected => "disconnected",
                };
                let from = name(was.unwrap_or(Connectivity::Connected));
                let mut detail = format!("connectivity: {} (was {from})", name(verdict));
                if !down.is_empty() {
                    detail.push_str(&format!("; down: {}", down.join(", ")));
                }
                events.push((changed_at.unwrap_or(now), "verdict", name(verdict).to_string(), detail));
            }
        }
        Ok(events)
    }

    fn interfaces(
        &mut self,
        report: &Report,
        span: u64,
        out: &mut Vec<(i64, Record)>,
    ) -> rusqlite::Result<Vec<(&'static str, String, String)>> {
        let mut events = Vec::new();
        for i in &report.interfaces {
            let c = &i.counters;
            let now = vec![
                c.rx_bytes,
                c.tx_bytes,
                c.rx_packets,
                c.tx_packets,
                c.rx_errors,
                c.tx_errors,
                c.rx_dropped,
                c.tx_dropped,
            ];
            let id = self.store.series_id("interface", &i.name, "", &INTERFACE_FIELDS.join(","))?;
            // Interface counters run since boot: the first report is only the baseline.
            if let Some(prev) = self.counters.insert(id, now.clone()) {
                out.push((
                    id,
                    Record::Counters(CounterInterval { span_ms: span, down: !i.up, deltas: deltas(&prev, &now) }),
                ));
            }
            match self.links.insert(i.name.clone(), i.up) {
                Some(was) if was != i.up => {
                    let (kind, what) = if i.up { ("link_up", "up") } else { ("link_down", "down") };
                    events.push((kind, i.name.clone(), format!("link {} is {what}", i.name)));
                }
                _ => {}
            }
        }
        Ok(events)
    }

    fn balancer_backends(
        &mut self,
        snapshots: &[BalancerSnapshot],
        span: u64,
        out: &mut Vec<(i64, Record)>,
    ) -> rusqlite::Result<Vec<(&'static str, String, String)>> {
        let mut events = Vec::new();
        for s in snapshots {
            for b in &s.backends {
                let name = format!("{}/{}", s.name, b.addr);
                let (kind, fields, now) = if let Some(h) = &b.http {
                    let mut v = vec![h.requests];
                    v.extend(h.responses.pairs().iter().map(|p| p.1));
                    v.extend([h.errors_total(), h.retried, h.bytes_sent, h.bytes_received]);
                    ("http_backend", HTTP_BACKEND_FIELDS.join(","), v)
                } else if let Some(u) = &b.udp {
                    let v = vec![u.datagrams_sent, u.bytes_sent, u.datagrams_received, u.bytes_received, u.unanswered];
                    ("udp_backend", UDP_BACKEND_FIELDS.join(","), v)
                } else {
                    continue;
                };
                let id = self.store.series_id(kind, &name, &s.name, &fields)?;
                // Balancers start with this process: their first counts are this run's.
                let prev = self.counters.insert(id, now.clone()).unwrap_or_else(|| vec![0; now.len()]);
                let down = b.state != BackendState::Up;
                out.push((id, Record::Counters(CounterInterval { span_ms: span, down, deltas: deltas(&prev, &now) })));
                let before = self.backends.insert(name.clone(), b.state).unwrap_or(BackendState::Up);
                if before != b.state {
                    let why = b.why.clone().unwrap_or_default();
                    let (kind, detail) = match b.state {
                        BackendState::Up => ("backend_in", format!("backend {name} is back in rotation")),
                        BackendState::Down => ("backend_out", format!("backend {name} is out of rotation: {why}")),
                        BackendState::Ejected => ("backend_out", format!("backend {name} is ejected: {why}")),
                        BackendState::Draining => ("backend_out", format!("backend {name} is draining: {why}")),
                        BackendState::Disabled => ("backend_out", format!("backend {name} is disabled: {why}")),
                    };
                    events.push((kind, name, detail));
                }
            }
        }
        Ok(events)
    }
}

/// How much each counter grew; a counter that went back was reset (a restart), and counts from 0.
fn deltas(prev: &[u64], now: &[u64]) -> Vec<u64> {
    now.iter().zip(prev.iter().chain(std::iter::repeat(&0))).map(|(&n, &p)| if n >= p { n - p } else { n }).collect()
}

/// An event to write: its time, kind, subject and detail.
type Timed = (i64, &'static str, String, String);

/// A target's probes as the writer judges them.
#[derive(Debug, Default, Clone)]
struct Judge {
    /// The newest probe judged (by sequence).
    last_seq: Option<u64>,
    /// Probes that failed in a row since the last answered one, and when the first was sent
    /// and why it failed.
    failing: u32,
    first: Option<(i64, String)>,
    /// In an outage (`failing` reached [`FALL`]), written as `target_down`.
    down: bool,
    /// Probes that settled before an earlier one (an answer overtaking probes still waiting
    /// for their timeout), held until those come: they are judged in the order they were sent.
    held: std::collections::BTreeMap<u64, Held>,
}

/// A probe waiting for its turn to be judged.
#[derive(Debug, Clone)]
struct Held {
    /// When it was sent (ms since the epoch).
    at: i64,
    up: bool,
    rtt_ms: Option<f64>,
    /// Why it failed, if it did.
    why: String,
}

/// How long a probe waits for an earlier one that never comes (a sample the monitor dropped)
/// before it is judged anyway: longer than any probe's timeout.
const HOLD_MS: i64 = 30_000;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counter_deltas_read_a_counter_that_went_back_as_a_reset() {
        assert_eq!(deltas(&[10, 20], &[15, 5]), vec![5, 5]);
        assert_eq!(deltas(&[], &[3]), vec![3]);
    }
}

#[cfg(test)]
mod store_tests {
    use super::*;
    use crate::history::query::EventRow;
    use crate::history::{HOUR_MS, Reader, Retention};
    use crate::monitor::report::{Connectivity, TargetId, TargetReport};
    use crate::probe::{Outcome, ProbeKind, Sample};
    use crate::stats::Window;

    /// A fresh file of its own for test `name`, removed when dropped.
    struct Scratch(std::path::PathBuf);

    impl Scratch {
        fn new(name: &str) -> Self {
            let dir = std::env::temp_dir().join(format!("netpulse-unit-{name}-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&dir);
            Self(dir)
        }
        fn file(&self) -> std::path::PathBuf {
            self.0.join("h.db")
        }
    }

    impl Drop for Scratch {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    /// A writer on `file` whose clocks read `t0` (ms since the epoch) and are set by hand.
    fn writer(file: &std::path::Path, keep: Retention, t0: i64) -> (Writer, ManualClock) {
        let clock = ManualClock::new(t0);
        let w = Writer::new(
            Store::open(file, keep).unwrap(),
            crate::stats::traffic::Balancers::default(),
            Box::new(clock.clone()),
        );
        (w, clock)
    }

    /// A report of one target with these probes and cumulative totals.
    fn report_of(probes: Vec<ProbePoint>, totals: (u64, u64)) -> Report {
        let newest = probes.iter().max_by_key(|p| p.seq).map(|p| Sample {
            seq: p.seq,
            rtt: p.rtt_ms.map(|ms| Duration::from_micros((ms * 1000.0) as u64)),
            outcome: if p.up { Outcome::Reply { bytes: 64, ttl: None } } else { Outcome::Timeout },
        });
        let mut w = Window::new(1);
        if let Some(s) = newest {
            w.push(s);
        }
        let target = TargetReport {
            probes,
            sent_total: totals.0,
            received_total: totals.1,
            ..TargetReport::from_window(TargetId(0), "udp://127.0.25.9:1", ProbeKind::Udp, &w)
        };
        Report { time: String::new(), interfaces: vec![], targets: vec![target], connectivity: Connectivity::Connected }
    }

    /// A report of one target whose one probe answered in `rtt_us` (or was lost), its time not known.
    fn report(seq: u64, rtt_us: Option<u64>, totals: (u64, u64)) -> Report {
        let rtt_ms = rtt_us.map(|us| us as f64 / 1000.0);
        report_of(vec![ProbePoint { seq, rtt_ms, up: rtt_ms.is_some(), lost: rtt_ms.is_none(), sent: None }], totals)
    }

    fn events(path: &std::path::Path, kind: &str) -> Vec<EventRow> {
        let r = Reader::open(path).unwrap();
        r.events(0, i64::MAX, &[]).unwrap().into_iter().filter(|e| e.kind == kind).collect()
    }

    /// Every interval of the one target, as stored: (stamp, span).
    fn intervals(path: &std::path::Path) -> Vec<(i64, u64)> {
        let r = Reader::open(path).unwrap();
        let id = r.targets().unwrap()[0].id;
        let mut all = crate::history::store::read_raw(&r.conn, id, 0, i64::MAX).unwrap();
        all.extend(crate::history::store::read_journal(&r.conn, id, 0, i64::MAX).unwrap());
        all.into_iter()
            .map(|(t, rec)| match rec {
                Record::Target(ti) => (t, ti.span_ms),
                Record::Counters(c) => (t, c.span_ms),
            })
            .collect()
    }

    #[test]
    fn an_interval_whose_write_fails_after_it_began_is_merged_into_the_next() {
        let dir = Scratch::new("fail");
        let path = dir.file();
        let (mut w, clock) = writer(&path, Retention::default(), now_ms());
        let t0 = clock.wall_ms();
        clock.advance(1000);
        w.interval(&report(1, Some(900), (1, 1)));
        // The journal goes away under the writer: the next interval's transaction fails midway
        // (as on a full disk) and is rolled back.
        let other = rusqlite::Connection::open(&path).unwrap();
        other.execute_batch("ALTER TABLE journal RENAME TO journal_away").unwrap();
        clock.advance(1000);
        w.interval(&report(2, None, (2, 1)));
        assert!(w.failing.is_some(), "the write failed");
        other.execute_batch("ALTER TABLE journal_away RENAME TO journal").unwrap();
        clock.advance(1000);
        w.interval(&report(3, Some(1000), (3, 2)));
        w.stop();
        let r = Reader::open(&path).unwrap();
        let target = r.targets().unwrap().remove(0);
        let a = r.aggregate(target.id, t0 - 10_000, t0 + 10_000).unwrap();
        assert_eq!((a.sent, a.received), (3, 2), "the failed interval's probes counted with the next");
        assert_eq!(a.span_ms, 3000, "and its time");
    }

    #[test]
    fn intervals_the_writer_missed_keep_their_probe_counts() {
        let dir = Scratch::new("lag");
        let path = dir.file();
        let (mut w, clock) = writer(&path, Retention::default(), now_ms());
        let t0 = clock.wall_ms();
        clock.advance(1000);
        w.interval(&report(1, Some(900), (1, 1)));
        // Reports 2 and 3 (one lost probe, one answered) never reached the writer.
        clock.advance(3000);
        w.interval(&report(4, Some(1100), (4, 3)));
        w.stop();
        let r = Reader::open(&path).unwrap();
        let target = r.targets().unwrap().remove(0);
        let a = r.aggregate(target.id, t0 - 10_000, t0 + 10_000).unwrap();
        assert_eq!((a.sent, a.received), (4, 3), "counts from the cumulative totals");
        assert_eq!(a.loss_pct(), Some(25.0));
        assert_eq!(a.rtt_count(), 2, "only the RTTs the writer saw");
    }

    #[test]
    fn rollups_are_exact_percentiles_merge_and_old_rows_are_pruned() {
        let dir = Scratch::new("rollups");
        let path = dir.file();
        let keep = Retention {
            raw: Duration::from_secs(3600),
            minutes: Duration::from_secs(7200),
            hours: Duration::from_secs(86_400),
        };
        // 2.5 hours of 1 s intervals, starting on an hour; every 7th probe lost.
        let t0 = floor_to(now_ms(), HOUR_MS) - 3 * HOUR_MS;
        let (mut w, clock) = writer(&path, keep, t0 - 1000);
        // The file was made "now"; these intervals are from before, so its hours are rolled from t0.
        w.store.conn.execute("UPDATE meta SET value = ?1 WHERE key = 'rolled_until'", [t0]).unwrap();
        let n = 9000u64;
        let (mut sent, mut received, mut rtts) = (0, 0, Vec::new());
        for k in 0..n {
            let rtt = (k % 7 != 3).then_some(1000 + (k % 10) * 1000);
            rtts.extend(rtt);
            sent += 1;
            received += u64::from(rtt.is_some());
            clock.advance(1000);
            w.interval(&report(k + 1, rtt, (sent, received)));
        }
        w.stop();
        let r = Reader::open(&path).unwrap();
        let target = r.targets().unwrap().remove(0);
        let end = t0 + n as i64 * 1000;
        // The whole range, read as hours and minutes (what is left of them), and as fine as is left.
        let coarse = r.steps(target.id, t0, end, end - t0, HOUR_MS).unwrap().remove(0).1;
        assert_eq!((coarse.sent, coarse.received), (sent, received), "counts are exact in every rollup");
        assert_eq!(coarse.loss_pct(), Some((sent - received) as f64 * 100.0 / sent as f64));
        let fine = r.steps(target.id, t0, end, end - t0, 1000).unwrap().remove(0).1;
        assert_eq!((fine.sent, fine.received, fine.rtt_sum_us), (coarse.sent, coarse.received, coarse.rtt_sum_us));
        assert_eq!(fine.hist, coarse.hist, "merged histograms are the same however they were rolled up");
        rtts.sort_unstable();
        for q in [0.5, 0.95, 0.99] {
            let exact = rtts[(q * rtts.len() as f64).ceil() as usize - 1] as f64 / 1000.0;
            let got = coarse.quantile_ms(q).unwrap();
            assert!((got / exact - 1.0).abs() < 0.045, "q{q}: {got} ms, exactly {exact} ms");
        }
        // Raw intervals older than an hour and minutes older than two hours are gone.
        let oldest_raw: i64 = r.conn.query_row("SELECT min(t) FROM raw", [], |x| x.get(0)).unwrap();
        assert!(oldest_raw >= end - HOUR_MS - MINUTE_MS, "raw from {} before the end", end - oldest_raw);
        let oldest_minute: i64 =
            r.conn.query_row("SELECT min(t) FROM target_rollup WHERE res = 60", [], |x| x.get(0)).unwrap();
        assert!(oldest_minute >= end - 2 * HOUR_MS - MINUTE_MS);
        let hours: i64 =
            r.conn.query_row("SELECT count(*) FROM target_rollup WHERE res = 3600", [], |x| x.get(0)).unwrap();
        assert_eq!(hours, 2, "two hours closed and were rolled up");
    }

    #[test]
    fn a_wall_clock_set_a_year_ahead_and_back_prunes_nothing_and_stamps_stay_in_order() {
        let dir = Scratch::new("year");
        let path = dir.file();
        let keep = Retention { raw: Duration::from_secs(3600), ..Retention::default() };
        let t0 = now_ms();
        let (mut w, clock) = writer(&path, keep, t0);
        let mut seq = 0;
        let mut tick = |w: &mut Writer, clock: &ManualClock| {
            clock.advance(1000);
            seq += 1;
            w.interval(&report(seq, Some(1000), (seq, seq)));
        };
        for _ in 0..90 {
            tick(&mut w, &clock);
        }
        const YEAR: i64 = 365 * 86_400_000;
        clock.step_wall(YEAR);
        for _ in 0..90 {
            tick(&mut w, &clock);
        }
        // Set right again: rows go on after the year-ahead ones, at the monotonic clock's pace.
        clock.step_wall(-YEAR);
        for _ in 0..90 {
            tick(&mut w, &clock);
        }
        w.stop();
        let all = intervals(&path);
        assert_eq!(all.len(), 270, "every interval is kept: nothing was pruned by the year-ahead time");
        assert!(all.windows(2).all(|p| p[0].0 < p[1].0), "stamps only go forward");
        assert!(all.iter().all(|i| i.1 == 1000), "every span is the second the monotonic clock measured");
        assert_eq!(all[0].0, t0 + 1000);
        assert_eq!(all[90].0, t0 + 91_000 + YEAR, "stamped by the wall clock after it jumped forward");
        assert_eq!(all[269].0, t0 + 270_000 + YEAR, "and on from there once it went back");
        let steps = events(&path, "clock");
        assert_eq!(steps.len(), 2, "{steps:?}");
        assert!(steps[0].detail.starts_with("the wall clock jumped forward by 365d"), "{}", steps[0].detail);
        assert!(steps[1].detail.starts_with("the wall clock jumped back by 365d"), "{}", steps[1].detail);
        let r = Reader::open(&path).unwrap();
        let target = r.targets().unwrap().remove(0);
        // (From an hour before: an hour row is read whole or not at all.)
        let a = r.aggregate(target.id, t0 - HOUR_MS, t0 + YEAR + HOUR_MS).unwrap();
        assert_eq!((a.sent, a.span_ms), (270, 270_000), "recorded time is the time measured");
    }

    #[test]
    fn a_wall_clock_stepped_back_neither_squeezes_intervals_nor_reorders_them() {
        let dir = Scratch::new("back");
        let path = dir.file();
        let t0 = now_ms();
        let (mut w, clock) = writer(&path, Retention::default(), t0);
        for seq in 1..=5 {
            clock.advance(1000);
            w.interval(&report(seq, Some(1000), (seq, seq)));
        }
        clock.step_wall(-3_600_000);
        for seq in 6..=20 {
            clock.advance(1000);
            w.interval(&report(seq, Some(1000), (seq, seq)));
        }
        // A small step (NTP's) is no jump: stamps follow it.
        clock.step_wall(300);
        clock.advance(1000);
        w.interval(&report(21, Some(1000), (21, 21)));
        w.stop();
        let stamps: Vec<i64> = intervals(&path).iter().map(|i| i.0).collect();
        let expected: Vec<i64> = (1..=20).map(|k| t0 + k * 1000).collect();
        assert_eq!(stamps[..20], expected[..], "a second apart, as measured, after the step back");
        assert_eq!(stamps[20], t0 + 21_000, "still ahead of the wall clock, which is an hour behind");
        assert_eq!(events(&path, "clock").len(), 1, "one step told; 300 ms is not one");
    }

    /// One target probed every second, each probe answered in 1 ms or, from probe `from` on for
    /// `lost` probes, lost (settling when its timeout of 900 ms ends); reports each second.
    /// Returns the probes' sending times (ms since the epoch).
    fn blackout(path: &std::path::Path, from: u64, lost: u64, probes: u64) -> Vec<i64> {
        blackout_timed_out_after(path, from, lost, probes, 900)
    }

    /// [`blackout`] with lost probes settling `timeout` ms after they were sent: past the
    /// report at the end of their second when it is more than 900 ms.
    fn blackout_timed_out_after(path: &std::path::Path, from: u64, lost: u64, probes: u64, timeout: i64) -> Vec<i64> {
        let t0 = now_ms();
        let (mut w, clock) = writer(path, Retention::default(), t0);
        let (mut sent_at, mut settling, mut totals) = (Vec::new(), Vec::new(), (0, 0));
        let mut report_due = |clock: &ManualClock, settling: &mut Vec<(i64, ProbePoint)>, w: &mut Writer| {
            // The report at the end of the second: what settled by then.
            let now = clock.wall_ms();
            let due: Vec<ProbePoint> = settling.extract_if(.., |p| p.0 <= now).map(|p| p.1).collect();
            totals.0 += due.len() as u64;
            totals.1 += due.iter().filter(|p| p.up).count() as u64;
            w.interval(&report_of(due, totals));
        };
        for seq in 1..=probes {
            // Probe `seq` goes out 100 ms into second `seq`.
            clock.advance(100);
            sent_at.push(clock.wall_ms());
            let dark = (from..from + lost).contains(&seq);
            let settle = clock.wall_ms() + if dark { timeout } else { 1 };
            let rtt_ms = (!dark).then_some(1.0);
            settling.push((settle, ProbePoint { seq, rtt_ms, up: !dark, lost: dark, sent: Some(clock.mono()) }));
            clock.advance(900);
            report_due(&clock, &mut settling, &mut w);
        }
        clock.advance(1000);
        report_due(&clock, &mut settling, &mut w);
        w.stop();
        sent_at
    }

    #[test]
    fn a_lost_probe_reported_a_second_late_dates_its_outage_from_when_it_was_sent() {
        // Probes time out after a whole interval: the first lost one (6) is in the report after
        // the one it was in flight at, and still dates the outage.
        let dir = Scratch::new("late-lost");
        let path = dir.file();
        let sent = blackout_timed_out_after(&path, 6, 4, 15, 1000);
        assert_the_outage_of_probes_6_to_9(&path, &sent);
    }

    /// The file holds one outage: from when probe 6 was sent to when probe 10 was, its four
    /// probes all lost.
    fn assert_the_outage_of_probes_6_to_9(path: &std::path::Path, sent: &[i64]) {
        let (down, up) = (events(path, "target_down"), events(path, "target_up"));
        assert_eq!((down.len(), up.len()), (1, 1), "{down:?} {up:?}");
        assert_eq!(down[0].t_ms, sent[5], "from when probe 6, the first lost, was sent");
        assert_eq!(up[0].t_ms, sent[9], "to when probe 10, the first answered again, was sent");
        let r = Reader::open(path).unwrap();
        let target = r.targets().unwrap().remove(0);
        let o = r.outages(&target, sent[0] - 1000, sent[14] + 2000, 0).unwrap();
        assert_eq!(o.list.len(), 1);
        assert_eq!((o.list[0].sent, o.list[0].received), (4, 0), "its four probes, all lost");
        assert_eq!(o.down_ms, 4000, "four seconds down");
    }

    /// Review of 0d9b255: a report whose every probe was sent before the writer's first stamp
    /// (the history thread made its writer a little after the monitor sent its first probe)
    /// is placed by that stamp, before the `start` event; the outage that probe begins is then
    /// ended by that very `start` when read back, and the target, down all along, shows up.
    #[test]
    fn an_outage_from_the_first_probe_sent_before_the_writer_started_is_not_ended_by_the_start() {
        let dir = Scratch::new("before-start");
        let path = dir.file();
        let t0 = now_ms();
        let clock = ManualClock::new(t0);
        // The monitor's first probe goes out (refused at once) 50 ms before the writer exists.
        let p = |seq: u64, clock: &ManualClock| ProbePoint {
            seq,
            rtt_ms: None,
            up: false,
            lost: false,
            sent: Some(clock.mono()),
        };
        let first = p(1, &clock);
        clock.advance(50);
        let mut w = Writer::new(
            Store::open(&path, Retention::default()).unwrap(),
            Balancers::default(),
            Box::new(clock.clone()),
        );
        w.start();
        clock.advance(950);
        w.interval(&report_of(vec![first], (1, 0)));
        for seq in 2..=10 {
            clock.advance(1000);
            w.interval(&report_of(vec![p(seq, &clock)], (seq, 0)));
        }
        clock.advance(1000);
        w.stop();
        let r = Reader::open(&path).unwrap();
        let target = r.targets().unwrap().remove(0);
        let o = r.outages(&target, t0 - 1000, t0 + 20_000, 0).unwrap();
        assert_eq!(o.list.len(), 1, "{:?}", o.list);
        assert_eq!(o.list[0].ended_by, "stop", "{:?}", o.list[0]);
        assert!(o.down_ms >= 10_000, "down from the first probe to the stop: {} ms ({:?})", o.down_ms, o.list);
    }

    /// With a timeout of three intervals, the answer after a blackout of four probes settles
    /// before the last lost ones: they are still judged in the order they were sent (before,
    /// the overtaken ones were skipped and the blackout was loss, not an outage).
    #[test]
    fn a_blackout_shorter_than_the_timeout_is_still_an_outage() {
        let dir = Scratch::new("long-timeout");
        let path = dir.file();
        let sent = blackout_timed_out_after(&path, 6, 4, 15, 3000);
        let (down, up) = (events(&path, "target_down"), events(&path, "target_up"));
        assert_eq!((down.len(), up.len()), (1, 1), "four probes lost in a row: {down:?} {up:?}");
        assert_eq!(down[0].t_ms, sent[5], "from the first lost probe");
        assert_eq!(up[0].t_ms, sent[9], "to the first answered again");
        // (Its lost probes are recorded when they settle, after the answer that ended it: the
        // outage's own counts hold the first of them only. Known, left.)
    }

    #[test]
    fn a_probe_the_monitor_never_reported_holds_the_judging_no_longer_than_the_hold() {
        // Probe 3's sample never reaches the writer; 4, 5 and 6 are lost. They wait for 3, then
        // are judged without it: an outage from probe 4.
        let dir = Scratch::new("gap");
        let path = dir.file();
        let t0 = now_ms();
        let (mut w, clock) = writer(&path, Retention::default(), t0);
        let mut sent = Vec::new();
        for seq in 1..=50u64 {
            clock.advance(1000);
            sent.push(clock.wall_ms());
            if seq == 3 {
                w.interval(&report_of(vec![], (seq, seq)));
                continue;
            }
            let up = !(4..=6).contains(&seq);
            let rtt_ms = up.then_some(1.0);
            let p = ProbePoint { seq, rtt_ms, up, lost: !up, sent: Some(clock.mono()) };
            w.interval(&report_of(vec![p], (seq, seq)));
        }
        w.stop();
        let (down, up) = (events(&path, "target_down"), events(&path, "target_up"));
        assert_eq!((down.len(), up.len()), (1, 1), "{down:?} {up:?}");
        assert_eq!(down[0].t_ms, sent[3], "from probe 4");
        assert_eq!(up[0].t_ms, sent[6], "to probe 7");
    }

    #[test]
    fn an_outage_runs_from_its_first_failed_probe_to_the_next_answered_one() {
        let dir = Scratch::new("outage");
        let path = dir.file();
        let sent = blackout(&path, 6, 4, 15);
        assert_the_outage_of_probes_6_to_9(&path, &sent);
    }

    #[test]
    fn three_lost_probes_in_a_row_are_an_outage_and_two_are_loss() {
        let dir = Scratch::new("short");
        let path = dir.file();
        let sent = blackout(&path, 4, 3, 10);
        let down = events(&path, "target_down");
        assert_eq!(down.len(), 1, "{down:?}");
        assert_eq!(down[0].t_ms, sent[3]);
        assert_eq!(events(&path, "target_up")[0].t_ms, sent[6]);
        drop(dir);
        let dir = Scratch::new("two");
        let path = dir.file();
        blackout(&path, 4, 2, 10);
        assert!(events(&path, "target_down").is_empty(), "two lost probes are loss");
    }

    #[test]
    fn a_blackout_between_two_reports_is_an_outage_too() {
        // Ten probes a report (every 100 ms, reports each second), three lost in the middle of one.
        let dir = Scratch::new("within");
        let path = dir.file();
        let t0 = now_ms();
        let (mut w, clock) = writer(&path, Retention::default(), t0);
        let mut at = Vec::new();
        let (mut seq, mut totals) = (0, (0, 0));
        for _ in 0..3 {
            let mut probes = Vec::new();
            for _ in 0..10 {
                clock.advance(100);
                seq += 1;
                let dark = (14..17).contains(&seq);
                at.push(clock.wall_ms());
                let rtt_ms = (!dark).then_some(0.5);
                probes.push(ProbePoint { seq, rtt_ms, up: !dark, lost: dark, sent: Some(clock.mono()) });
            }
            totals.0 += 10;
            totals.1 += probes.iter().filter(|p| p.up).count() as u64;
            w.interval(&report_of(probes, totals));
        }
        // A probe that times out after the next one answered is loss: 31 settles after 32
        // answered, then 33 and 34 are lost, 35 answers: no three in a row.
        let probe = |seq: u64, up: bool| {
            clock.advance(100);
            let rtt_ms = up.then_some(0.5);
            ProbePoint { seq, rtt_ms, up, lost: !up, sent: Some(clock.mono()) }
        };
        let p32 = probe(32, true);
        w.interval(&report_of(vec![p32], (31, 28)));
        let (p31, p33, p34) = (probe(31, false), probe(33, false), probe(34, false));
        w.interval(&report_of(vec![p31, p33, p34], (34, 28)));
        let p35 = probe(35, true);
        w.interval(&report_of(vec![p35], (35, 29)));
        w.stop();
        let down = events(&path, "target_down");
        assert_eq!(down.len(), 1, "{down:?}");
        assert_eq!(down[0].t_ms, at[13]);
        assert_eq!(events(&path, "target_up")[0].t_ms, at[16]);
    }

    /// `n` one-second intervals of one answered probe left in the journal from `from` (a run
    /// killed while its writer lagged); the series' id.
    fn journal_backlog(w: &mut Writer, from: i64, n: i64) -> i64 {
        let rec = Record::Target(TargetInterval {
            span_ms: 1000,
            sent: 1,
            received: 1,
            rtts_us: vec![800],
            ..TargetInterval::default()
        });
        let id = w.store.series_id("target", "udp://127.0.25.9:1", "udp", "").unwrap();
        for k in 0..n {
            w.store.append(from + k * 1000, &encode_interval(&[(id, rec.clone())])).unwrap();
        }
        id
    }

    #[test]
    fn minutes_packed_after_their_hour_was_rolled_up_are_added_to_its_row() {
        let dir = Scratch::new("late");
        let path = dir.file();
        let h = floor_to(now_ms(), HOUR_MS);
        let (mut w, clock) = writer(&path, Retention::default(), h + 30_000);
        // The file's hours are rolled up to this one; the last three minutes of the hour before
        // are still in the journal (a run killed while its writer lagged).
        let id = journal_backlog(&mut w, h - 180_000, 180);
        w.start();
        for k in 1..=4 {
            clock.advance(1000);
            w.interval(&report(k, Some(900), (k, k)));
        }
        w.stop();
        let r = Reader::open(&path).unwrap();
        let sum = |res: i64, from: i64| -> i64 {
            r.conn
                .query_row(
                    "SELECT coalesce(sum(sent), 0) FROM target_rollup WHERE res = ?1 AND series = ?2 AND t >= ?3 AND t < ?4",
                    rusqlite::params![res, id, from, h],
                    |x| x.get(0),
                )
                .unwrap()
        };
        assert_eq!(sum(60, h - HOUR_MS), 180, "three minute rows");
        assert_eq!(sum(3600, h - HOUR_MS), 180, "and their hour row, made when they were packed");
    }

    #[test]
    fn a_backlog_in_the_journal_is_packed_a_minute_per_interval() {
        let dir = Scratch::new("backlog");
        let path = dir.file();
        let t0 = floor_to(now_ms(), MINUTE_MS);
        let (mut w, clock) = writer(&path, Retention::default(), t0);
        // Ten minutes of intervals left in the journal (a run killed while its writer lagged).
        let id = journal_backlog(&mut w, t0 - 600_000, 600);
        let journal =
            |w: &Writer| -> i64 { w.store.conn.query_row("SELECT count(*) FROM journal", [], |r| r.get(0)).unwrap() };
        w.start();
        assert_eq!(journal(&w), 600, "the start packs nothing itself");
        for k in 1..=3 {
            clock.advance(1000);
            w.interval(&report(k, Some(900), (k, k)));
        }
        assert_eq!(journal(&w), 600 - 3 * 60 + 3, "three intervals, three minutes packed");
        for k in 4..=10 {
            clock.advance(1000);
            w.interval(&report(k, Some(900), (k, k)));
        }
        assert_eq!(journal(&w), 10, "caught up: only this minute's intervals are left");
        w.stop();
        let r = Reader::open(&path).unwrap();
        let a = r.aggregate(id, t0 - 700_000, t0 + 60_000).unwrap();
        assert_eq!(a.sent, 610);
    }
}
