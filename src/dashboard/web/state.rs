//! What the web dashboard knows between two reports: a short history per target, interface and
//! backend (so a page that loads draws its charts at once), the balancer snapshots of the last
//! few reports (for rates), and the JSON views the API and the event stream serve. Pure: it is
//! fed reports and snapshots with the time they were taken, and opens no socket.
//!
//! Every view has the same shape: the section's times `t` (Unix seconds, one per report) and
//! per item its newest figures plus `history`, columns aligned with `t`. An event is that shape
//! with one row, so the page appends what the stream brings to what the API gave it.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Instant;

use serde::Serialize;
use serde::ser::Serializer;

use crate::iface::InterfaceStats;
use crate::monitor::report::{Connectivity, Report, TargetReport};
use crate::stats::traffic::{self, BalancerSnapshot};

/// Reports a chart goes back (five minutes at the default interval)...
pub const HISTORY: usize = 300;
/// ...unless the targets are so many that their rows would take more than this many (16 bytes
/// each: 24 MB), when each keeps fewer (150 at 10,000 targets), and never fewer than a minute's.
const TARGET_ROWS: usize = 1_500_000;

/// Rows kept per target when watching `n` of them.
fn rows_for(n: usize) -> usize {
    (TARGET_ROWS / n.max(1)).clamp(60, HISTORY)
}
/// Reports the balancers' recent figures (req/s, error %, p50/p99, share) are taken over.
pub const RECENT: usize = 10;
/// The span of the targets' `loss_1m_pct`.
const MINUTE: f64 = 60.0;

/// The dashboard's memory, fed one report at a time.
#[derive(Debug, Default)]
pub struct State {
    interval_ms: u64,
    /// Rows kept ([`HISTORY`], or fewer for many targets).
    keep: usize,
    times: VecDeque<f64>,
    report: Option<Arc<Report>>,
    targets: Vec<TargetSeries>,
    interfaces: Vec<IfaceSeries>,
    /// One per balancer, in the order of the snapshots.
    balancers: Vec<Vec<BackendSeries>>,
    /// The snapshots of the last [`RECENT`] + 1 reports, oldest first, with when they were taken.
    snapshots: VecDeque<(Instant, f64, Arc<[BalancerSnapshot]>)>,
    /// Reports taken, kept across a new plan (see [`State::seq`]).
    seq: u64,
}

/// One target's probes, one row per report: round trips in milliseconds (NaN for none, which
/// serialises as `null`) and counts of probes (saturating at 255 in one interval).
#[derive(Debug, Default)]
struct TargetSeries {
    target: String,
    med: VecDeque<f32>,
    min: VecDeque<f32>,
    max: VecDeque<f32>,
    sent: VecDeque<u8>,
    answered: VecDeque<u8>,
    lost: VecDeque<u8>,
    failed: VecDeque<u8>,
}

#[derive(Debug, Default)]
struct IfaceSeries {
    name: String,
    rx: VecDeque<Option<f64>>,
    tx: VecDeque<Option<f64>>,
}

#[derive(Debug, Default)]
struct BackendSeries {
    requests: VecDeque<Option<f64>>,
    errors: VecDeque<Option<f64>>,
}

fn push_capped<T>(q: &mut VecDeque<T>, v: T, keep: usize) {
    while q.len() >= keep {
        q.pop_front();
    }
    q.push_back(v);
}

/// The median, minimum and maximum of some values (`None` for none).
fn med_min_max(mut v: Vec<f64>) -> (Option<f64>, Option<f64>, Option<f64>) {
    if v.is_empty() {
        return (None, None, None);
    }
    v.sort_by(f64::total_cmp);
    let n = v.len();
    let med = if n % 2 == 1 { v[n / 2] } else { (v[n / 2 - 1] + v[n / 2]) / 2.0 };
    (Some(med), v.first().copied(), v.last().copied())
}

impl TargetSeries {
    fn new(target: &str) -> Self {
        Self { target: target.to_string(), ..Self::default() }
    }

    fn push(&mut self, t: &TargetReport, keep: usize) {
        let (med, min, max) = med_min_max(t.probes.iter().filter_map(|p| p.rtt_ms).collect());
        let ms = |v: Option<f64>| v.map_or(f32::NAN, |v| v as f32);
        let count = |f: fn(&crate::monitor::report::ProbePoint) -> bool| {
            u8::try_from(t.probes.iter().filter(|p| f(p)).count()).unwrap_or(u8::MAX)
        };
        push_capped(&mut self.med, ms(med), keep);
        push_capped(&mut self.min, ms(min), keep);
        push_capped(&mut self.max, ms(max), keep);
        push_capped(&mut self.sent, count(|_| true), keep);
        push_capped(&mut self.answered, count(|p| p.rtt_ms.is_some()), keep);
        push_capped(&mut self.lost, count(|p| p.lost), keep);
        push_capped(&mut self.failed, count(|p| !p.up && !p.lost), keep);
    }

    /// The share of probes without an answer over the rows since `since` (a time in `times`).
    fn loss_pct_since(&self, times: &VecDeque<f64>, since: f64) -> Option<f64> {
        let rows = times.iter().rev().take_while(|&&t| t > since).count();
        let sum = |q: &VecDeque<u8>| q.iter().rev().take(rows).map(|&n| u64::from(n)).sum::<u64>();
        let (sent, answered) = (sum(&self.sent), sum(&self.answered));
        (sent > 0).then(|| sent.saturating_sub(answered) as f64 * 100.0 / sent as f64)
    }
}

impl State {
    pub fn new(interval_ms: u64) -> Self {
        Self { interval_ms, keep: HISTORY, ..Self::default() }
    }

    /// Takes one report and the balancers' snapshots taken with it, at monotonic `now` and Unix
    /// time `t` (seconds); returns its number (counting from 1), for [`State::seq`].
    pub fn push(&mut self, report: Arc<Report>, balancers: Vec<BalancerSnapshot>, now: Instant, t: f64) -> u64 {
        let same_targets = self.targets.len() == report.targets.len()
            && self.targets.iter().zip(&report.targets).all(|(s, r)| s.target == r.target);
        if !same_targets {
            // A new plan: the old rows describe other targets.
            *self = Self { seq: self.seq, ..Self::new(self.interval_ms) };
            self.keep = rows_for(report.targets.len());
            self.targets = report.targets.iter().map(|r| TargetSeries::new(&r.target)).collect();
        }
        let keep = self.keep;
        // The rows before this one that a new series is padded with.
        let rows = self.times.len().min(keep - 1);
        push_capped(&mut self.times, t, keep);
        for (s, r) in self.targets.iter_mut().zip(&report.targets) {
            s.push(r, keep);
        }
        let mut old = std::mem::take(&mut self.interfaces);
        for i in &report.interfaces {
            let mut s = match old.iter().position(|s| s.name == i.name) {
                Some(at) => old.swap_remove(at),
                None => {
                    let mut s = IfaceSeries { name: i.name.clone(), ..IfaceSeries::default() };
                    for _ in 0..rows {
                        push_capped(&mut s.rx, None, keep);
                        push_capped(&mut s.tx, None, keep);
                    }
                    s
                }
            };
            push_capped(&mut s.rx, Some(i.rx_bytes_per_sec), keep);
            push_capped(&mut s.tx, Some(i.tx_bytes_per_sec), keep);
            self.interfaces.push(s);
        }
        self.push_balancers(balancers, now, t, rows);
        self.report = Some(report);
        self.seq += 1;
        self.seq
    }

    /// How many reports were taken (a new one makes every view of the last one stale).
    pub fn seq(&self) -> u64 {
        self.seq
    }

    /// The event that tells a page about the newest report: the three views with its row only.
    pub fn event(&self) -> Event {
        Event { targets: self.targets(1), interfaces: self.interfaces(1), balancers: self.balancers(None, 1) }
    }

    fn push_balancers(&mut self, balancers: Vec<BalancerSnapshot>, now: Instant, t: f64, rows: usize) {
        let keep = self.keep;
        let previous = self.snapshots.back().map(|(_, t, s)| (*t, s.clone()));
        if self.balancers.len() != balancers.len() {
            self.balancers = balancers.iter().map(|_| Vec::new()).collect();
        }
        for (i, b) in balancers.iter().enumerate() {
            let series = &mut self.balancers[i];
            if series.len() != b.backends.len() {
                *series = b
                    .backends
                    .iter()
                    .map(|_| {
                        let mut s = BackendSeries::default();
                        for _ in 0..rows {
                            push_capped(&mut s.requests, None, keep);
                            push_capped(&mut s.errors, None, keep);
                        }
                        s
                    })
                    .collect();
            }
            let before = previous.as_ref().and_then(|(pt, p)| Some((t - pt, p.get(i).filter(|p| p.name == b.name)?)));
            for (j, s) in series.iter_mut().enumerate() {
                let point = before.and_then(|(secs, p)| {
                    let (n, e) = (traffic::counts(&b.backends[j]), traffic::counts(p.backends.get(j)?));
                    (secs > 0.0).then(|| {
                        (
                            n.requests.saturating_sub(e.requests) as f64 / secs,
                            n.errors.saturating_sub(e.errors) as f64 / secs,
                        )
                    })
                });
                push_capped(&mut s.requests, point.map(|p| p.0), keep);
                push_capped(&mut s.errors, point.map(|p| p.1), keep);
            }
        }
        if self.snapshots.len() > RECENT {
            self.snapshots.pop_front();
        }
        self.snapshots.push_back((now, t, balancers.into()));
    }

    /// `/api/v1/targets`, with the last `rows` rows of history: a copy (the lock is held while
    /// the columns are copied, not while they are serialised).
    pub fn targets(&self, rows: usize) -> TargetsView {
        let latest = self.times.back().copied().unwrap_or(0.0);
        let targets = match &self.report {
            Some(r) => r
                .targets
                .iter()
                .zip(&self.targets)
                .map(|(_, s)| TargetExtra {
                    loss_1m_pct: s.loss_pct_since(&self.times, latest - MINUTE),
                    history: TargetColumns {
                        rtt_med_ms: tail(&s.med, rows),
                        rtt_min_ms: tail(&s.min, rows),
                        rtt_max_ms: tail(&s.max, rows),
                        sent: tail(&s.sent, rows),
                        lost: tail(&s.lost, rows),
                        failed: tail(&s.failed, rows),
                    },
                })
                .collect(),
            None => Vec::new(),
        };
        TargetsView { report: self.report.clone(), interval_ms: self.interval_ms, t: tail(&self.times, rows), targets }
    }

    /// `/api/v1/interfaces` (a copy, as [`State::targets`]).
    pub fn interfaces(&self, rows: usize) -> InterfacesView {
        let history = match &self.report {
            Some(r) => r
                .interfaces
                .iter()
                .zip(&self.interfaces)
                .map(|(_, s)| IfaceColumns { rx_bytes_per_sec: tail(&s.rx, rows), tx_bytes_per_sec: tail(&s.tx, rows) })
                .collect(),
            None => Vec::new(),
        };
        InterfacesView { report: self.report.clone(), t: tail(&self.times, rows), history }
    }

    /// `/api/v1/balancers`: `live` are snapshots taken now (at `now`, Unix time `t`), or `None`
    /// for those of the newest report.
    pub fn balancers(&self, live: Option<(Vec<BalancerSnapshot>, Instant)>, rows: usize) -> BalancersView {
        let (snapshots, at): (Arc<[BalancerSnapshot]>, Option<Instant>) = match live {
            Some((s, now)) => (s.into(), Some(now)),
            None => match self.snapshots.back() {
                Some((now, _, s)) => (s.clone(), Some(*now)),
                None => (Arc::from(Vec::new()), None),
            },
        };
        // The recent figures are taken against the oldest snapshot kept that is not this one.
        let oldest = self.snapshots.iter().find(|(then, _, _)| at.is_some_and(|at| *then < at));
        let secs = match (oldest, at) {
            (Some((then, _, _)), Some(at)) => (at - *then).as_secs_f64(),
            _ => 0.0,
        };
        let balancers = snapshots
            .iter()
            .enumerate()
            .map(|(i, b)| {
                let then = oldest.and_then(|(_, _, s)| s.get(i)).filter(|s| s.name == b.name);
                let history = self
                    .balancers
                    .get(i)
                    .map(|series| {
                        series
                            .iter()
                            .map(|s| BackendColumns {
                                requests_per_s: tail(&s.requests, rows),
                                errors_per_s: tail(&s.errors, rows),
                            })
                            .collect()
                    })
                    .unwrap_or_default();
                (traffic::recent(b, then, secs), history)
            })
            .collect();
        BalancersView { t: tail(&self.times, rows), recent_s: secs, snapshots, balancers }
    }
}

/// The last `rows` items of a queue.
fn tail<T: Copy>(q: &VecDeque<T>, rows: usize) -> Vec<T> {
    let n = rows.min(q.len());
    q.range(q.len() - n..).copied().collect()
}

/// `/api/v1/targets`: the newest report's targets, each with its loss over the last minute and
/// its history. Owns what it shows (the report is shared), so it is serialised without the lock.
#[derive(Debug)]
pub struct TargetsView {
    report: Option<Arc<Report>>,
    interval_ms: u64,
    /// When each row of the histories was reported (Unix seconds).
    t: Vec<f64>,
    /// One per target of the report, in its order.
    targets: Vec<TargetExtra>,
}

#[derive(Debug)]
struct TargetExtra {
    loss_1m_pct: Option<f64>,
    history: TargetColumns,
}

impl Serialize for TargetsView {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        /// A target as the report has it, with its loss over the last minute and its history.
        #[derive(Serialize)]
        struct Target<'a> {
            #[serde(flatten)]
            report: &'a TargetReport,
            loss_1m_pct: Option<f64>,
            history: &'a TargetColumns,
        }
        #[derive(Serialize)]
        struct View<'a> {
            /// The newest report's time (RFC 3339); absent before the first report.
            time: Option<&'a str>,
            interval_ms: u64,
            connectivity: Option<Connectivity>,
            t: &'a [f64],
            targets: Vec<Target<'a>>,
        }
        let report = self.report.as_deref();
        let items = report.map_or(&[][..], |r| &r.targets[..]);
        View {
            time: report.map(|r| r.time.as_str()),
            interval_ms: self.interval_ms,
            connectivity: report.map(|r| r.connectivity),
            t: &self.t,
            targets: items
                .iter()
                .zip(&self.targets)
                .map(|(report, x)| Target { report, loss_1m_pct: x.loss_1m_pct, history: &x.history })
                .collect(),
        }
        .serialize(s)
    }
}

/// Per report: the median, fastest and slowest round trip of the probes that settled in it,
/// how many were sent, lost (no answer in time) and failed (refused, a bad status).
#[derive(Debug, Serialize)]
pub struct TargetColumns {
    pub rtt_med_ms: Vec<f32>,
    pub rtt_min_ms: Vec<f32>,
    pub rtt_max_ms: Vec<f32>,
    pub sent: Vec<u8>,
    pub lost: Vec<u8>,
    pub failed: Vec<u8>,
}

/// `/api/v1/interfaces`: the newest report's interfaces, each with its history.
#[derive(Debug)]
pub struct InterfacesView {
    report: Option<Arc<Report>>,
    t: Vec<f64>,
    /// One per interface of the report, in its order.
    history: Vec<IfaceColumns>,
}

impl Serialize for InterfacesView {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        #[derive(Serialize)]
        struct Interface<'a> {
            #[serde(flatten)]
            stats: &'a InterfaceStats,
            history: &'a IfaceColumns,
        }
        #[derive(Serialize)]
        struct View<'a> {
            time: Option<&'a str>,
            t: &'a [f64],
            interfaces: Vec<Interface<'a>>,
        }
        let report = self.report.as_deref();
        let items = report.map_or(&[][..], |r| &r.interfaces[..]);
        View {
            time: report.map(|r| r.time.as_str()),
            t: &self.t,
            interfaces: items.iter().zip(&self.history).map(|(stats, history)| Interface { stats, history }).collect(),
        }
        .serialize(s)
    }
}

#[derive(Debug, Serialize)]
pub struct IfaceColumns {
    pub rx_bytes_per_sec: Vec<Option<f64>>,
    pub tx_bytes_per_sec: Vec<Option<f64>>,
}

/// The balancers: each snapshot with, per backend, its recent figures and history.
#[derive(Debug)]
pub struct BalancersView {
    t: Vec<f64>,
    /// The span the recent figures cover, in seconds.
    recent_s: f64,
    snapshots: Arc<[BalancerSnapshot]>,
    balancers: Vec<(Vec<traffic::Recent>, Vec<BackendColumns>)>,
}

/// Per report: requests and errors per second (see [`traffic::Counts`] for what counts).
#[derive(Debug, Serialize)]
pub struct BackendColumns {
    pub requests_per_s: Vec<Option<f64>>,
    pub errors_per_s: Vec<Option<f64>>,
}

impl Serialize for BalancersView {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        #[derive(Serialize)]
        struct Balancer<'a> {
            #[serde(flatten)]
            snapshot: &'a BalancerSnapshot,
            recent: &'a [traffic::Recent],
            history: &'a [BackendColumns],
        }
        #[derive(Serialize)]
        struct View<'a> {
            t: &'a [f64],
            recent_s: f64,
            balancers: Vec<Balancer<'a>>,
        }
        View {
            t: &self.t,
            recent_s: self.recent_s,
            balancers: self
                .snapshots
                .iter()
                .zip(&self.balancers)
                .map(|(snapshot, (recent, history))| Balancer { snapshot, recent, history })
                .collect(),
        }
        .serialize(s)
    }
}

/// One report as the event stream sends it: the three views with the newest row only.
#[derive(Debug, Serialize)]
pub struct Event {
    pub targets: TargetsView,
    pub interfaces: InterfacesView,
    pub balancers: BalancersView,
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use std::net::SocketAddr;
    use std::time::Duration;

    use arc_swap::ArcSwap;
    use serde_json::{Value, json};

    use super::*;
    use crate::balance::BackendSet;
    use crate::monitor::report::{ProbePoint, TargetId};
    use crate::probe::ProbeKind;
    use crate::stats::WindowSummary;
    use crate::stats::traffic::{BalancerStats, Proto};

    fn target(name: &str, probes: Vec<ProbePoint>) -> TargetReport {
        TargetReport {
            id: TargetId(0),
            target: name.into(),
            probe: ProbeKind::Tcp,
            summary: WindowSummary {
                sent: 0,
                received: 0,
                loss_pct: 0.0,
                rtt_min_ms: None,
                rtt_avg_ms: None,
                rtt_max_ms: None,
                rtt_mdev_ms: None,
                jitter_ms: None,
                rtt_p50_ms: None,
                rtt_p95_ms: None,
                rtt_p99_ms: None,
                rtt_last_ms: None,
                up: true,
            },
            newest: None,
            probes,
            sent_total: 0,
            received_total: 0,
            rtt_sum_ms: 0.0,
            duration_ms: None,
        }
    }

    fn reply(seq: u64, ms: f64) -> ProbePoint {
        ProbePoint { seq, rtt_ms: Some(ms), up: true, lost: false, sent: None }
    }

    fn lost(seq: u64) -> ProbePoint {
        ProbePoint { seq, rtt_ms: None, up: false, lost: true, sent: None }
    }

    fn report(targets: Vec<TargetReport>) -> Arc<Report> {
        let mut r = Report::empty();
        r.targets = targets;
        r.interfaces = vec![InterfaceStats {
            name: "lo".into(),
            up: true,
            operstate: "up".into(),
            counters: Default::default(),
            rx_bytes_per_sec: 1500.0,
            tx_bytes_per_sec: 1500.0,
        }];
        Arc::new(r)
    }

    fn json<T: Serialize>(v: &T) -> Value {
        serde_json::to_value(v).unwrap()
    }

    #[test]
    fn an_interval_becomes_a_row_of_median_min_max_and_lost_probes() {
        let mut s = State::new(1000);
        let t0 = Instant::now();
        let r = report(vec![target("a", vec![reply(1, 3.0), lost(2), reply(3, 1.0), reply(4, 2.0)])]);
        assert_eq!(s.push(r, Vec::new(), t0, 100.0), 1);
        let event = json(&s.event());
        let row = &event["targets"]["targets"][0]["history"];
        assert_eq!(
            row,
            &json!({"rtt_med_ms": [2.0], "rtt_min_ms": [1.0], "rtt_max_ms": [3.0],
                                "sent": [4], "lost": [1], "failed": [0]})
        );
        assert_eq!(event["targets"]["t"], json!([100.0]));
        assert_eq!(event["targets"]["targets"][0]["loss_1m_pct"], json!(25.0));
        // An interval where nothing settled is a gap, and a refusal is a failure, not a loss.
        s.push(report(vec![target("a", vec![])]), Vec::new(), t0, 101.0);
        let refused = ProbePoint { seq: 5, rtt_ms: None, up: false, lost: false, sent: None };
        s.push(report(vec![target("a", vec![refused])]), Vec::new(), t0, 102.0);
        let v = json(&s.targets(HISTORY));
        assert_eq!(v["t"], json!([100.0, 101.0, 102.0]));
        assert_eq!(v["targets"][0]["history"]["rtt_med_ms"], json!([2.0, null, null]));
        assert_eq!(v["targets"][0]["history"]["failed"], json!([0, 0, 1]));
        assert_eq!(v["targets"][0]["loss_1m_pct"], json!(40.0), "2 of 5 probes got no answer");
        // The report's own fields are there as the printer's JSON has them.
        assert_eq!(v["targets"][0]["target"], "a");
        assert_eq!(v["targets"][0]["probes"][0]["seq"], 5);
    }

    #[test]
    fn history_keeps_the_last_rows_and_restarts_for_new_targets() {
        let mut s = State::new(1000);
        let t0 = Instant::now();
        for i in 0..HISTORY + 5 {
            s.push(report(vec![target("a", vec![reply(i as u64, i as f64)])]), Vec::new(), t0, i as f64);
        }
        let v = json(&s.targets(HISTORY));
        let med = v["targets"][0]["history"]["rtt_med_ms"].as_array().unwrap();
        assert_eq!((med.len(), med[0].as_f64()), (HISTORY, Some(5.0)));
        assert_eq!(json(&s.targets(3))["t"], json!([302.0, 303.0, 304.0]));
        let iface = json(&s.interfaces(HISTORY));
        assert_eq!(iface["interfaces"][0]["history"]["rx_bytes_per_sec"].as_array().unwrap().len(), HISTORY);
        assert_eq!(iface["interfaces"][0]["name"], "lo");
        assert_eq!(s.push(report(vec![target("b", vec![])]), Vec::new(), t0, 400.0), HISTORY as u64 + 6, "counted on");
        let v = json(&s.targets(HISTORY));
        assert_eq!((v["t"].clone(), v["targets"][0]["target"].clone()), (json!([400.0]), json!("b")));
    }

    #[test]
    fn backends_get_rates_share_errors_and_quantiles_of_the_recent_reports() {
        let addrs: Vec<SocketAddr> = vec!["127.0.0.1:1".parse().unwrap(), "127.0.0.1:2".parse().unwrap()];
        let set = Arc::new(ArcSwap::from_pointee(BackendSet::new(&addrs)));
        let stats = BalancerStats::new("web", Proto::Http, "round-robin", set);
        let w = stats.http_worker();
        let mut s = State::new(1000);
        let t0 = Instant::now();
        let r = report(vec![]);
        s.push(r.clone(), vec![stats.snapshot(t0)], t0, 10.0);
        let first = json(&s.event());
        assert_eq!(first["balancers"]["balancers"][0]["history"][0]["requests_per_s"], json!([null]));
        // Two seconds later: 30 requests to the first backend, 10 to the second (2 of them 502s).
        for _ in 0..30 {
            w.backends[0].requests.inc();
            w.backends[0].response(200);
            w.backends[0].latency.record(Duration::from_millis(2));
        }
        for i in 0..10 {
            w.backends[1].requests.inc();
            w.backends[1].response(if i < 2 { 502 } else { 200 });
        }
        w.backends[1].bytes_received.add(4000);
        let t1 = t0 + Duration::from_secs(2);
        s.push(r, vec![stats.snapshot(t1)], t1, 12.0);
        let v = json(&s.event());
        let b = &v["balancers"]["balancers"][0];
        assert_eq!(b["name"], "web");
        assert_eq!(b["backends"][1]["http"]["responses"]["5xx"], 2);
        assert_eq!(b["history"][0]["requests_per_s"], json!([15.0]));
        assert_eq!(b["history"][1]["errors_per_s"], json!([1.0]));
        assert_eq!(b["recent"][0]["share_pct"], json!(75.0));
        assert_eq!(b["recent"][1]["error_pct"], json!(20.0));
        assert_eq!(b["recent"][1]["received_bytes_per_s"], json!(2000.0));
        let p50 = b["recent"][0]["p50_ms"].as_f64().unwrap();
        assert!((1.5..=2.0).contains(&p50), "{p50}");
        assert_eq!(b["recent"][1]["p50_ms"], Value::Null, "no latency recorded for it");
        assert_eq!(v["balancers"]["recent_s"], json!(2.0));
        // The API's view asks for live snapshots: with nothing new, the rates fall.
        let t2 = t1 + Duration::from_secs(2);
        let live = json(&s.balancers(Some((vec![stats.snapshot(t2)], t2)), HISTORY));
        assert_eq!(live["recent_s"], json!(4.0));
        assert_eq!(live["balancers"][0]["recent"][0]["requests_per_s"], json!(7.5));
        assert_eq!(live["balancers"][0]["history"][0]["requests_per_s"], json!([null, 15.0]));
    }

    #[test]
    fn a_new_interface_gets_a_history_padded_to_the_others() {
        let mut s = State::new(1000);
        let t0 = Instant::now();
        s.push(report(vec![]), Vec::new(), t0, 1.0);
        let mut r = (*report(vec![])).clone();
        r.interfaces.push(InterfaceStats { name: "eth0".into(), ..r.interfaces[0].clone() });
        s.push(Arc::new(r), Vec::new(), t0, 2.0);
        let v = json(&s.interfaces(HISTORY));
        assert_eq!(v["interfaces"][1]["name"], "eth0");
        assert_eq!(v["interfaces"][1]["history"]["tx_bytes_per_sec"], json!([null, 1500.0]));
    }

    #[test]
    fn many_targets_keep_fewer_rows_each_but_at_least_a_minute() {
        assert_eq!((rows_for(1), rows_for(5_000), rows_for(10_000), rows_for(1_000_000)), (HISTORY, HISTORY, 150, 60));
    }
}
