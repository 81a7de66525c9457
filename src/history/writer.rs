//! The history writer, a sink: a thread of its own that follows the monitor's reports and, for
//! each one, writes one transaction — the interval's records, its events — and, when a minute
//! or an hour has closed, packs and rolls it up, then prunes a few series.
//!
//! The queue between the monitor and the writer is the monitor's broadcast channel: the monitor
//! never waits for it. A writer that falls behind (a slow disk) misses reports; the next report
//! it reads carries cumulative probe totals, so the missed intervals' counts (and loss) are kept
//! exactly, only their RTT samples are lost, and a warning says so. A write that fails (disk
//! full, file gone read-only) is rolled back and warned about once; monitoring goes on and the
//! writer tries again at the next interval.
//!
//! Outages are the writer's word, not each report's: a target is in an outage once
//! [`DOWN_AFTER`] reports in a row found it down (dated from the first), so a lossy link's lost
//! probes show as loss, and the events of a year stay few.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use tokio::sync::broadcast;

use super::record::{CounterInterval, Record, TargetInterval, encode_interval};
use super::store::Store;
use super::{HOUR_MS, MINUTE_MS, floor_to, now_ms, parse_rfc3339, shown};
use crate::dashboard::events::why_down;
use crate::monitor::report::{Connectivity, Report};
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

/// Reports in a row that must find a target down before it counts as an outage (HAProxy's
/// `fall 3`): a lost probe or two on a lossy link is loss, not an outage. The outage then starts
/// at the first of those reports.
pub const DOWN_AFTER: u32 = 3;
/// At most one "falling behind" warning per this long.
const LAG_WARNING_EVERY: Duration = Duration::from_secs(60);

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
    let mut w = Writer::new(store, balancers);
    w.notes = Some(notes);
    w.start();
    let mut missed = 0u64;
    let mut warned: Option<Instant> = None;
    loop {
        match reports.blocking_recv() {
            Ok(report) => w.interval(&report),
            Err(broadcast::error::RecvError::Lagged(n)) => {
                missed += n;
                if warned.is_none_or(|t| t.elapsed() >= LAG_WARNING_EVERY) {
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

/// Writes `reports` one after another as the writer thread does, on this thread, then stops:
/// for benchmarks and tests that feed the writer synthetic reports.
#[doc(hidden)]
pub fn replay(store: Store, reports: impl IntoIterator<Item = Report>) {
    let mut w = Writer::new(store, Balancers::default());
    w.start();
    for r in reports {
        w.interval(&r);
    }
    w.stop();
}

/// The part of the writer's memory an interval changes, kept to put back when its transaction
/// fails after it began (a full disk): otherwise the file would miss what the memory moved past.
struct Memory {
    states: HashMap<i64, Outage>,
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
    /// Per target: its run of down reports (and when and why it began), whether it is in an
    /// outage.
    states: HashMap<i64, Outage>,
    verdict: Option<Connectivity>,
    prev_t: i64,
    /// Per target series: the cumulative probe totals of the previous report.
    totals: HashMap<i64, (u64, u64)>,
    /// Per counter series: the previous cumulative values.
    counters: HashMap<i64, Vec<u64>>,
    links: HashMap<String, bool>,
    backends: HashMap<String, BackendState>,
    /// The first write error, while writes fail.
    failing: Option<String>,
    /// Events from outside the reports, written with the next interval.
    notes: Option<mpsc::Receiver<Note>>,
}

impl Writer {
    fn new(store: Store, balancers: Balancers) -> Self {
        Self {
            store,
            balancers,
            states: HashMap::new(),
            verdict: None,
            prev_t: now_ms(),
            totals: HashMap::new(),
            counters: HashMap::new(),
            links: HashMap::new(),
            backends: HashMap::new(),
            failing: None,
            notes: None,
        }
    }

    /// Runs `f` in one transaction; a failure is rolled back and warned about once.
    fn write(&mut self, what: &str, f: impl FnOnce(&mut Self) -> rusqlite::Result<()>) -> bool {
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
                if self.failing.is_none() {
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

    /// Packs what a previous run left in the journal (a crash, or `kill -9`), rolls up the
    /// hours that closed meanwhile, and notes the start.
    fn start(&mut self) {
        let t = now_ms();
        // Intervals left in the journal mean the last run ended without its stop (killed or
        // crashed): its stop is noted at its last interval, so its outages end there.
        self.write("closing what the last run left", |w| {
            let last: Option<i64> = w.store.conn.query_row("SELECT max(t) FROM journal", [], |r| r.get(0))?;
            match last {
                Some(last) => {
                    w.store.event(last, "stop", "netpulse", "recording ended without a stop (killed or crashed)")
                }
                None => Ok(()),
            }
        });
        for _ in 0..10_000 {
            let mut more = false;
            if !self.write("packing what the last run left", |w| {
                more = w.store.pack(i64::MAX)?;
                Ok(())
            }) || !more
            {
                break;
            }
        }
        self.write("starting", |w| {
            w.store.roll_hours(t)?;
            w.store.event(t, "start", "netpulse", &format!("netpulse {} started recording", env!("CARGO_PKG_VERSION")))
        });
    }

    /// Notes the stop and packs the journal, so the file is complete without it.
    fn stop(&mut self) {
        let t = now_ms().max(self.prev_t + 1);
        let notes: Vec<Note> = self.notes.as_ref().map(|n| n.try_iter().collect()).unwrap_or_default();
        self.write("stopping", |w| {
            for n in &notes {
                w.store.event(n.t.min(t), n.kind, &n.subject, &n.detail)?;
            }
            w.store.event(t, "stop", "netpulse", "netpulse stopped recording")
        });
        for _ in 0..10_000 {
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

    fn interval(&mut self, report: &Report) {
        let t = parse_rfc3339(&report.time).unwrap_or_else(now_ms).max(self.prev_t + 1);
        let span = u64::try_from(t - self.prev_t).unwrap_or(0);
        let snapshots: Vec<BalancerSnapshot> = self.balancers.iter().map(|b| b.snapshot(Instant::now())).collect();
        let (prev_minute, prev_hour) = (floor_to(self.prev_t, MINUTE_MS), floor_to(self.prev_t, HOUR_MS));
        let before = self.memory();
        let notes: Vec<Note> = self.notes.as_ref().map(|n| n.try_iter().collect()).unwrap_or_default();
        let written = self.write("an interval", |w| {
            for n in &notes {
                w.store.event(n.t.min(t), n.kind, &n.subject, &n.detail)?;
            }
            let mut records = Vec::with_capacity(report.targets.len() + report.interfaces.len());
            let mut events = w.targets(report, t, span, &mut records)?;
            let now = |(kind, subject, detail)| (t, kind, subject, detail);
            events.extend(w.interfaces(report, span, &mut records)?.into_iter().map(now));
            events.extend(w.balancer_backends(&snapshots, span, &mut records)?.into_iter().map(now));
            if !records.is_empty() {
                w.store.append(t, &encode_interval(&records))?;
            }
            for (at, kind, subject, detail) in events {
                w.store.event(at, kind, &subject, &detail)?;
            }
            if floor_to(t, MINUTE_MS) != prev_minute {
                w.store.pack(floor_to(t, MINUTE_MS))?;
            }
            if floor_to(t, HOUR_MS) != prev_hour {
                w.store.roll_hours(t)?;
            }
            w.store.prune(t)
        });
        if written {
            self.prev_t = t;
        } else {
            // Nothing of it reached the file: the next interval starts from the same memory, so
            // its deltas and state changes include this one's (merged, as a missed report is).
            self.restore(before);
        }
    }

    /// What an interval changes in the writer's memory.
    fn memory(&self) -> Memory {
        Memory {
            states: self.states.clone(),
            verdict: self.verdict,
            totals: self.totals.clone(),
            counters: self.counters.clone(),
            links: self.links.clone(),
            backends: self.backends.clone(),
        }
    }

    fn restore(&mut self, m: Memory) {
        self.states = m.states;
        self.verdict = m.verdict;
        self.totals = m.totals;
        self.counters = m.counters;
        self.links = m.links;
        self.backends = m.backends;
    }

    /// The targets' records, and their outages beginning and ending (and the verdict changing)
    /// as events.
    fn targets(
        &mut self,
        report: &Report,
        now: i64,
        span: u64,
        out: &mut Vec<(i64, Record)>,
    ) -> rusqlite::Result<Vec<Timed>> {
        let mut events = Vec::new();
        let mut changed_at: Option<i64> = None;
        for t in &report.targets {
            // A target with no probe settled yet has nothing to say.
            if t.newest.is_none() && t.probes.is_empty() {
                continue;
            }
            let id = self.store.series_id("target", &t.target, t.probe.as_str(), "")?;
            let mut rec = TargetInterval { span_ms: span, down: !t.summary.up, ..TargetInterval::default() };
            for p in &t.probes {
                rec.sent += 1;
                rec.lost += u64::from(p.lost);
                if let (true, Some(ms)) = (p.up, p.rtt_ms) {
                    rec.received += 1;
                    rec.rtts_us.push((ms * 1000.0).round().max(0.0) as u64);
                }
            }
            // Reports this writer missed: the cumulative totals still count their probes.
            if let Some(&(sent, received)) = self.totals.get(&id) {
                let (ds, dr) = (t.sent_total.saturating_sub(sent), t.received_total.saturating_sub(received));
                if ds > rec.sent {
                    rec.sent = ds;
                    rec.received = rec.received.max(dr);
                }
            }
            self.totals.insert(id, (t.sent_total, t.received_total));
            out.push((id, Record::Target(rec)));
            let state = self.states.entry(id).or_default();
            if t.summary.up {
                state.run = 0;
                if std::mem::take(&mut state.down) {
                    let rtt = t.summary.rtt_last_ms.map(|ms| format!(" ({ms:.3} ms)")).unwrap_or_default();
                    events.push((now, "target_up", t.target.clone(), format!("target {} is up again{rtt}", t.target)));
                    changed_at = Some(changed_at.map_or(now, |c| c.min(now)));
                }
            } else {
                state.run += 1;
                if state.run == 1 {
                    state.began = Some((now, why_down(t)));
                }
                if state.run >= DOWN_AFTER && !state.down {
                    state.down = true;
                    let (at, why) = state.began.clone().unwrap_or((now, why_down(t)));
                    events.push((at, "target_down", t.target.clone(), why));
                    changed_at = Some(changed_at.map_or(at, |c| c.min(at)));
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
                probed.iter().filter(|(id, _)| self.states.get(id).is_some_and(|s| s.down)).map(|p| p.1).collect();
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

/// A target's run of down reports.
#[derive(Debug, Default, Clone)]
struct Outage {
    run: u32,
    /// When and why the run began.
    began: Option<(i64, String)>,
    /// In an outage (the run reached [`DOWN_AFTER`]).
    down: bool,
}

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
    use crate::history::{Reader, Retention};
    use crate::monitor::report::{Connectivity, TargetId, TargetReport};
    use crate::probe::{Outcome, ProbeKind, Sample};
    use crate::stats::Window;

    /// A report at `t` ms of one target whose one probe answered in `rtt_us` (or was lost).
    fn report(t: i64, seq: u64, rtt_us: Option<u64>, totals: (u64, u64)) -> Report {
        let rtt = rtt_us.map(std::time::Duration::from_micros);
        let sample = Sample {
            seq,
            rtt,
            outcome: if rtt.is_some() { Outcome::Reply { bytes: 64, ttl: None } } else { Outcome::Timeout },
        };
        let mut w = Window::new(1);
        w.push(sample.clone());
        let target = TargetReport {
            probes: vec![(&sample).into()],
            sent_total: totals.0,
            received_total: totals.1,
            ..TargetReport::from_window(TargetId(0), "udp://127.0.18.9:1", ProbeKind::Udp, &w)
        };
        let time = crate::clock::UtcTime::from_system(
            std::time::UNIX_EPOCH + std::time::Duration::from_millis(u64::try_from(t).unwrap_or(0)),
        )
        .rfc3339();
        Report { time, interfaces: vec![], targets: vec![target], connectivity: Connectivity::Connected }
    }

    #[test]
    fn an_interval_whose_write_fails_after_it_began_is_merged_into_the_next() {
        let dir = std::env::temp_dir().join(format!("netpulse-unit-fail-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let path = dir.join("h.db");
        let mut w =
            Writer::new(Store::open(&path, Retention::default()).unwrap(), crate::stats::traffic::Balancers::default());
        let t0 = now_ms() + 1000;
        w.interval(&report(t0, 1, Some(900), (1, 1)));
        // The journal goes away under the writer: the next interval's transaction fails midway
        // (as on a full disk) and is rolled back.
        let other = rusqlite::Connection::open(&path).unwrap();
        other.execute_batch("ALTER TABLE journal RENAME TO journal_away").unwrap();
        w.interval(&report(t0 + 1000, 2, None, (2, 1)));
        assert!(w.failing.is_some(), "the write failed");
        other.execute_batch("ALTER TABLE journal_away RENAME TO journal").unwrap();
        w.interval(&report(t0 + 2000, 3, Some(1000), (3, 2)));
        w.stop();
        let r = Reader::open(&path).unwrap();
        let target = r.targets().unwrap().remove(0);
        let a = r.aggregate(target.id, t0 - 10_000, t0 + 10_000).unwrap();
        assert_eq!((a.sent, a.received), (3, 2), "the failed interval's probes counted with the next");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn intervals_the_writer_missed_keep_their_probe_counts() {
        let dir = std::env::temp_dir().join(format!("netpulse-unit-lag-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let path = dir.join("h.db");
        let mut w =
            Writer::new(Store::open(&path, Retention::default()).unwrap(), crate::stats::traffic::Balancers::default());
        let t0 = now_ms() + 1000;
        w.interval(&report(t0, 1, Some(900), (1, 1)));
        // Reports 2 and 3 (one lost probe, one answered) never reached the writer.
        w.interval(&report(t0 + 3000, 4, Some(1100), (4, 3)));
        w.stop();
        let r = Reader::open(&path).unwrap();
        let target = r.targets().unwrap().remove(0);
        let a = r.aggregate(target.id, t0 - 10_000, t0 + 10_000).unwrap();
        assert_eq!((a.sent, a.received), (4, 3), "counts from the cumulative totals");
        assert_eq!(a.loss_pct(), Some(25.0));
        assert_eq!(a.rtt_count(), 2, "only the RTTs the writer saw");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn rollups_are_exact_percentiles_merge_and_old_rows_are_pruned() {
        let dir = std::env::temp_dir().join(format!("netpulse-unit-history-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let path = dir.join("h.db");
        let keep = Retention {
            raw: std::time::Duration::from_secs(3600),
            minutes: std::time::Duration::from_secs(7200),
            hours: std::time::Duration::from_secs(86_400),
        };
        let store = Store::open(&path, keep).unwrap();
        let mut w = Writer::new(store, crate::stats::traffic::Balancers::default());
        // 2.5 hours of 1 s intervals, starting on an hour; every 7th probe lost.
        let t0 = floor_to(now_ms(), HOUR_MS) - 3 * HOUR_MS;
        w.prev_t = t0 - 1000;
        // The file was made "now"; these intervals are from before, so its hours are rolled from t0.
        w.store.conn.execute("UPDATE meta SET value = ?1 WHERE key = 'rolled_until'", [t0]).unwrap();
        let n = 9000u64;
        let (mut sent, mut received, mut rtts) = (0, 0, Vec::new());
        for k in 0..n {
            let rtt = (k % 7 != 3).then_some(1000 + (k % 10) * 1000);
            rtts.extend(rtt);
            sent += 1;
            received += u64::from(rtt.is_some());
            w.interval(&report(t0 + k as i64 * 1000, k + 1, rtt, (sent, received)));
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
        let _ = std::fs::remove_dir_all(&dir);
    }
}
