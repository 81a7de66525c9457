//! The monitor engine: probes every target on its [`Schedule`], reads interface counters, keeps
//! a window of samples per target, and publishes one [`Report`] per interval to its subscribers.
//! It prints nothing and knows no sink: the printer, Prometheus and the balancers' health feed
//! each subscribe.
//!
//! The steps: [`start_probes`] (one thread for all ICMP targets, a task per other target),
//! then [`Aggregate`] takes samples as they come and builds a report on every tick.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{broadcast, mpsc};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use super::report::{ProbePoint, Report, TargetId, TargetReport, verdict};
use super::schedule::{Schedule, run_probes};
use crate::clock::UtcTime;
use crate::iface::{self, RateTracker};
use crate::probe::icmp::{self, IcmpPlan};
use crate::probe::udp::UdpProber;
use crate::probe::{Outcome, ProbeSources, Sample, Target, tcp, web};
use crate::stats::Window;

/// Sample batches that may wait for the aggregator before new ones are dropped.
const SAMPLE_QUEUE: usize = 4096;
/// Samples the ICMP engine hands over at once, at most...
const SAMPLE_BATCH: usize = 512;
/// ...or after this long, whichever comes first.
const SAMPLE_FLUSH: Duration = Duration::from_millis(10);
/// Reports a slow subscriber may fall behind by before it misses some.
const REPORT_QUEUE: usize = 64;
/// Reports between two lookups of the interface each target is reached through.
const ROUTE_REFRESH: u32 = 10;

/// What to watch, and how.
#[derive(Debug, Clone)]
pub struct MonitorPlan {
    pub targets: Vec<Target>,
    pub interval: Duration,
    /// Time to wait for each reply.
    pub timeout: Duration,
    /// Reports to publish; `None` runs until stopped.
    pub count: Option<u64>,
    /// Samples per target that loss, RTT and percentiles are computed over.
    pub window: usize,
    /// Where the UDP probes say which local addresses they send from.
    pub sources: ProbeSources,
}

/// A probe that settled: its target's index, its result, and how long it ran — to its answer,
/// its refusal or its timeout (what blackbox_exporter reports as `probe_duration_seconds`).
#[derive(Debug)]
struct Settled {
    target: usize,
    sample: Sample,
    took: Duration,
    /// When it was sent: when it settled less `took`, taken as it settles (the batch it is in
    /// may reach the aggregate much later).
    sent: Instant,
}

/// A batch of settled probes.
type Samples = Vec<Settled>;

/// The engine, before it runs: subscribe first, then [`Monitor::run`].
#[derive(Debug)]
pub struct Monitor {
    plan: MonitorPlan,
    reports: broadcast::Sender<Arc<Report>>,
}

impl Monitor {
    pub fn new(plan: MonitorPlan) -> Self {
        Self { plan, reports: broadcast::channel(REPORT_QUEUE).0 }
    }

    pub fn plan(&self) -> &MonitorPlan {
        &self.plan
    }

    /// Every report published from now on; the stream ends when the monitor does.
    pub fn subscribe(&self) -> broadcast::Receiver<Arc<Report>> {
        self.reports.subscribe()
    }

    /// Runs until `count` reports are published or `stop` (after which one last report goes
    /// out). Fails only when probing cannot start (e.g. no permission for ICMP).
    pub async fn run(self, stop: CancellationToken) -> anyhow::Result<()> {
        let plan = &self.plan;
        let start = Instant::now();
        let probes_stop = CancellationToken::new();
        let (tx, mut rx) = mpsc::channel::<Samples>(SAMPLE_QUEUE);
        let mut producers = start_probes(plan, start, tx, &probes_stop)?;
        let mut aggregate = Aggregate::new(plan).await;
        let mut published = 0u64;
        let mut tick = tokio::time::interval_at((start + plan.interval).into(), plan.interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut producers_done = false;
        let mut stopping = false;
        loop {
            // The last report waits until the last round of probes has settled, and is not
            // published before its turn (rates need time to be measured over).
            let last = plan.count.is_some_and(|c| published + 1 >= c);
            if last && producers_done {
                let turns = u32::try_from(plan.count.unwrap_or(1)).unwrap_or(u32::MAX);
                tokio::select! {
                    _ = tokio::time::sleep_until((start + plan.interval.saturating_mul(turns)).into()) => {}
                    _ = stop.cancelled(), if !stopping => stopping = true,
                }
            } else {
                tokio::select! {
                    got = rx.recv(), if !producers_done => {
                        match got {
                            Some(batch) => aggregate.absorb(batch),
                            None => producers_done = true,
                        }
                        continue;
                    }
                    _ = tick.tick(), if !last => {}
                    _ = stop.cancelled(), if !stopping => stopping = true,
                }
            }
            let report = aggregate.report(plan).await;
            // No subscriber is not an error: the report is simply not needed.
            let _ = self.reports.send(Arc::new(report));
            published += 1;
            if stopping || (last && producers_done) {
                break;
            }
        }
        probes_stop.cancel();
        stop_probes(&mut producers).await
    }
}

/// Starts every target's probes: the ICMP ones share one engine thread, the others get a task
/// each. Samples arrive on `tx`, tagged with the target's index.
fn start_probes(
    plan: &MonitorPlan,
    start: Instant,
    tx: mpsc::Sender<Samples>,
    stop: &CancellationToken,
) -> anyhow::Result<JoinSet<anyhow::Result<()>>> {
    let mut producers = JoinSet::new();
    let icmp_targets: Vec<(usize, IpAddr)> = plan
        .targets
        .iter()
        .enumerate()
        .filter_map(|(i, t)| if let Target::Icmp { ip, .. } = t { Some((i, *ip)) } else { None })
        .collect();
    if !icmp_targets.is_empty() {
        start_icmp(plan, &icmp_targets, tx.clone(), stop.clone(), &mut producers)?;
    }
    let n = plan.targets.len();
    for (i, target) in plan.targets.iter().enumerate() {
        if matches!(target, Target::Icmp { .. }) {
            continue;
        }
        let schedule = Schedule::new(start.into(), plan.interval, i, n);
        let (target, tx, stop, sources) = (target.clone(), tx.clone(), stop.clone(), plan.sources.clone());
        let (count, timeout) = (plan.count, plan.timeout);
        producers.spawn(async move {
            let udp = match &target {
                Target::Udp { addr, .. } => Some(UdpProber::connect(*addr).await),
                _ => None,
            };
            if let Some(Ok(p)) = &udp {
                p.register(&sources);
            }
            let emit = |(sample, took): (Sample, Duration)| {
                let sent = Instant::now().checked_sub(took).unwrap_or_else(Instant::now);
                let _ = tx.try_send(vec![Settled { target: i, sample, took, sent }]);
            };
            let probe = |seq: u64| {
                let (target, udp) = (&target, &udp);
                async move {
                    let started = Instant::now();
                    let sample = match (target, udp) {
                        (Target::Tcp { addr, .. }, _) => tcp::probe(*addr, seq, timeout).await,
                        (Target::Http { addr, host_header, path, expect, .. }, _) => {
                            web::probe(*addr, host_header, path, *expect, seq, timeout).await
                        }
                        (Target::Udp { exchange: Some(x), .. }, Some(Ok(p))) => {
                            p.exchange_bytes(&x.send, &x.expect, seq, timeout).await
                        }
                        (_, Some(Ok(p))) => p.probe(seq, timeout).await,
                        (_, Some(Err(e))) => Sample { seq, rtt: None, outcome: Outcome::Failed(e.to_string()) },
                        (Target::Udp { .. } | Target::Icmp { .. }, None) => unreachable_probe(seq),
                    };
                    (sample, started.elapsed())
                }
            };
            run_probes(schedule, count, &stop, probe, emit).await;
            Ok(())
        });
    }
    Ok(producers)
}

/// ICMP targets are probed by the ICMP engine, UDP ones always have a prober: never reached.
fn unreachable_probe(seq: u64) -> Sample {
    Sample { seq, rtt: None, outcome: Outcome::Failed("no prober for this target".into()) }
}

/// The ICMP engine on a thread of its own (its socket calls block). Samples travel in batches:
/// one wake-up of the aggregator per batch, not per probe; a batch also goes out when it is old,
/// checked on every turn of the engine's loop.
fn start_icmp(
    plan: &MonitorPlan,
    targets: &[(usize, IpAddr)],
    tx: mpsc::Sender<Samples>,
    stop: CancellationToken,
    producers: &mut JoinSet<anyhow::Result<()>>,
) -> anyhow::Result<()> {
    let icmp_plan = IcmpPlan {
        targets: targets.iter().map(|t| t.1).collect(),
        interval: plan.interval,
        timeout: plan.timeout,
        size: 56,
        count: plan.count,
    };
    // Opened here, so that a permission problem ends the monitor with its message.
    let sockets = icmp::open_for(&icmp_plan.targets)?;
    let index: Vec<usize> = targets.iter().map(|t| t.0).collect();
    let timeout = plan.timeout;
    let engine = std::thread::Builder::new().name("icmp".into()).spawn(move || {
        let batch = std::cell::RefCell::new((Vec::with_capacity(SAMPLE_BATCH), Instant::now()));
        let flush = |force: bool| {
            let mut b = batch.borrow_mut();
            if !b.0.is_empty() && (force || b.0.len() >= SAMPLE_BATCH || b.1.elapsed() >= SAMPLE_FLUSH) {
                let full = std::mem::replace(&mut b.0, Vec::with_capacity(SAMPLE_BATCH));
                let _ = tx.try_send(full);
                b.1 = Instant::now();
            }
        };
        let r = icmp::run_on(
            sockets,
            &icmp_plan,
            || {
                flush(false);
                stop.is_cancelled()
            },
            |k, sample| {
                // An echo settles when its reply comes, when its timeout ends, or at once when
                // it could not be sent.
                let took = match sample.outcome {
                    Outcome::Timeout => timeout,
                    _ => sample.rtt.unwrap_or_default(),
                };
                let sent = Instant::now().checked_sub(took).unwrap_or_else(Instant::now);
                batch.borrow_mut().0.push(Settled { target: index[k], sample, took, sent });
                flush(false);
            },
        );
        flush(true);
        r
    })?;
    producers.spawn_blocking(move || match engine.join() {
        Ok(r) => r.map_err(anyhow::Error::from),
        Err(_) => Err(anyhow::anyhow!("the ICMP prober crashed")),
    });
    Ok(())
}

/// Waits for the probes to end (the ICMP engine sees its stop within 100 ms); its error, if any,
/// is the monitor's.
async fn stop_probes(producers: &mut JoinSet<anyhow::Result<()>>) -> anyhow::Result<()> {
    while let Some(r) = producers.join_next().await {
        match r {
            Ok(result) => result?,
            Err(e) if e.is_cancelled() => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

/// One target's counts since the monitor started.
#[derive(Debug, Clone, Copy, Default)]
struct Totals {
    sent: u64,
    /// Probes answered (with a round-trip time), and the sum of those times.
    received: u64,
    rtt_sum_ms: f64,
    /// The newest probe (by sequence number) and how long it ran.
    newest: Option<(u64, Duration)>,
}

/// Everything the reports are made of: a window of samples per target, interface rates, and
/// which interface each target is reached through.
struct Aggregate {
    windows: Vec<Window>,
    /// Per target, the samples since the last report (with when each was sent), and the
    /// totals since the start.
    fresh: Vec<Vec<(Sample, Instant)>>,
    totals: Vec<Totals>,
    rates: RateTracker,
    egress: Vec<Option<String>>,
    reports: u32,
}

impl Aggregate {
    async fn new(plan: &MonitorPlan) -> Self {
        let mut rates = RateTracker::new();
        rates.update(read_interfaces().await, Instant::now());
        let windows = plan.targets.iter().map(|_| Window::new(plan.window)).collect();
        let n = plan.targets.len();
        Self {
            windows,
            fresh: vec![Vec::new(); n],
            totals: vec![Totals::default(); n],
            rates,
            egress: Vec::new(),
            reports: 0,
        }
    }

    fn absorb(&mut self, batch: Samples) {
        for Settled { target: i, sample: s, took, sent } in batch {
            if let Some(w) = self.windows.get_mut(i) {
                let t = &mut self.totals[i];
                t.sent += 1;
                // Answered is what the window counts as received (an HTTP status outside the
                // expected range too: it is down, not lost), so that loss from these counters
                // and the window's loss agree.
                if let Some(rtt) = s.rtt {
                    t.received += 1;
                    t.rtt_sum_ms += rtt.as_secs_f64() * 1000.0;
                }
                // Timeouts settle late: the newest probe is the one with the highest sequence.
                if t.newest.is_none_or(|(seq, _)| s.seq >= seq) {
                    t.newest = Some((s.seq, took));
                }
                self.fresh[i].push((s.clone(), sent));
                w.push(s);
            }
        }
    }

    async fn report(&mut self, plan: &MonitorPlan) -> Report {
        let interfaces = self.rates.update(read_interfaces().await, Instant::now());
        self.refresh_routes(&plan.targets).await;
        let targets: Vec<TargetReport> = plan
            .targets
            .iter()
            .zip(&self.windows)
            .zip(self.fresh.iter_mut().zip(&self.totals))
            .enumerate()
            .map(|(i, ((t, w), (fresh, totals)))| {
                let mut summary = w.summary();
                // A target behind a link that is down is down now, before its probes time out.
                let via = self.egress.get(i).and_then(Option::as_ref);
                if via.is_some_and(|via| interfaces.iter().any(|x| &x.name == via && !x.up)) {
                    summary.up = false;
                }
                TargetReport {
                    id: TargetId(i),
                    target: t.to_string(),
                    probe: t.kind(),
                    summary,
                    newest: w.newest().cloned(),
                    probes: std::mem::take(fresh)
                        .iter()
                        .map(|(s, sent)| ProbePoint { sent: Some(*sent), ..ProbePoint::from(s) })
                        .collect(),
                    sent_total: totals.sent,
                    received_total: totals.received,
                    rtt_sum_ms: totals.rtt_sum_ms,
                    duration_ms: totals.newest.map(|(_, took)| took.as_secs_f64() * 1000.0),
                }
            })
            .collect();
        let connectivity = verdict(&interfaces, &targets);
        Report { time: UtcTime::now().rfc3339(), interfaces, targets, connectivity }
    }

    /// Routes change rarely and cost a few system calls per target to look up: every few reports.
    async fn refresh_routes(&mut self, targets: &[Target]) {
        if self.reports % ROUTE_REFRESH == 0 || self.egress.len() != targets.len() {
            let ips: Vec<IpAddr> = targets.iter().map(|t| t.addr().ip()).collect();
            self.egress = tokio::task::spawn_blocking(move || {
                let addrs = iface::addresses().unwrap_or_default();
                ips.iter().map(|ip| iface::egress(*ip, &addrs)).collect()
            })
            .await
            .unwrap_or_default();
        }
        self.reports = self.reports.wrapping_add(1);
    }
}

async fn read_interfaces() -> Vec<iface::Snapshot> {
    tokio::task::spawn_blocking(iface::read).await.ok().and_then(Result::ok).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settled(seq: u64, rtt_ms: Option<u64>, took_ms: u64) -> Settled {
        let outcome = if rtt_ms.is_some() { Outcome::Connected } else { Outcome::Timeout };
        Settled {
            target: 0,
            sample: Sample { seq, rtt: rtt_ms.map(Duration::from_millis), outcome },
            took: Duration::from_millis(took_ms),
            sent: Instant::now(),
        }
    }

    #[test]
    fn the_probe_duration_is_the_newest_probes_even_when_an_older_one_settles_after_it() {
        let mut a = Aggregate {
            windows: vec![Window::new(10)],
            fresh: vec![Vec::new()],
            totals: vec![Totals::default()],
            rates: RateTracker::new(),
            egress: Vec::new(),
            reports: 0,
        };
        a.absorb(vec![settled(1, Some(2), 2)]);
        assert_eq!(a.totals[0].newest, Some((1, Duration::from_millis(2))));
        // Probe 3 answers while probe 2 is still waiting; probe 2 then times out after 1 s.
        a.absorb(vec![settled(3, Some(4), 4), settled(2, None, 1000)]);
        let t = a.totals[0];
        assert_eq!(t.newest, Some((3, Duration::from_millis(4))));
        assert_eq!((t.sent, t.received), (3, 2));
        assert!((t.rtt_sum_ms - 6.0).abs() < 1e-9, "{}", t.rtt_sum_ms);
        // A failure after them: its own duration, not the last round trip.
        a.absorb(vec![settled(4, None, 1000)]);
        assert_eq!(a.totals[0].newest, Some((4, Duration::from_secs(1))));
    }
}
