//! `netpulse monitor`: probes every target on a schedule, reads interface counters, and prints
//! a table (refreshing on a terminal) or one JSON object per interval.

use std::fmt::Write as _;
use std::io::{IsTerminal, Write};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use serde::Serialize;
use tokio::sync::mpsc;

use crate::clock::UtcTime;
use crate::iface::{self, InterfaceStats, RateTracker};
use crate::probe::icmp::{self, IcmpPlan};
use crate::probe::udp::UdpProber;
use crate::probe::{Outcome, Sample, Target, tcp, web};
use crate::stats::{Window, WindowSummary};

/// Sample batches that may wait for the aggregator before new ones are dropped.
const SAMPLE_QUEUE: usize = 4096;
/// Samples the ICMP engine hands over at once, at most...
const SAMPLE_BATCH: usize = 512;
/// ...or after this long, whichever comes first.
const SAMPLE_FLUSH: Duration = Duration::from_millis(10);

/// How the monitor prints.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    Table,
    Json,
}

/// What `netpulse monitor` was asked to do.
#[derive(Debug, Clone)]
pub struct MonitorOptions {
    pub targets: Vec<Target>,
    pub interval: Duration,
    pub timeout: Duration,
    /// Reports to print; `None` runs until Ctrl-C.
    pub count: Option<u64>,
    pub format: Format,
    /// Samples per target that loss, RTT and percentiles are computed over.
    pub window: usize,
    /// Where to publish each report for `/metrics`.
    pub exporter: Option<crate::metrics::Exporter>,
    /// Print reports (off when `up` runs the monitor for its metrics only).
    pub print: bool,
    /// Stop when this says so, instead of on Ctrl-C.
    pub shutdown: Option<tokio_util::sync::CancellationToken>,
    /// Balancers whose backends' health follows the probes (under `up`).
    pub health: Option<Arc<crate::monitor::health::HealthFeed>>,
}

/// One report.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub time: String,
    pub interfaces: Vec<InterfaceStats>,
    pub targets: Vec<TargetReport>,
    pub connectivity: Connectivity,
}

/// One target's line of a report.
#[derive(Debug, Clone, Serialize)]
pub struct TargetReport {
    pub target: String,
    pub probe: &'static str,
    #[serde(flatten)]
    pub summary: WindowSummary,
}

/// The verdict users act on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Connectivity {
    Connected,
    Degraded,
    Disconnected,
}

/// Connected when every target is up (or, with no targets, some non-loopback interface is
/// up); degraded when only some are; disconnected when none is.
pub fn verdict(interfaces: &[InterfaceStats], targets: &[TargetReport]) -> Connectivity {
    if targets.is_empty() {
        let any_link = interfaces.iter().any(|i| i.up && i.name != "lo");
        return if any_link { Connectivity::Connected } else { Connectivity::Disconnected };
    }
    let up = targets.iter().filter(|t| t.summary.up).count();
    match up {
        0 => Connectivity::Disconnected,
        n if n == targets.len() => Connectivity::Connected,
        _ => Connectivity::Degraded,
    }
}

/// Runs the monitor until `count` reports are printed or Ctrl-C.
pub async fn run(opts: MonitorOptions, out: &mut (impl Write + Send)) -> anyhow::Result<()> {
    let start = Instant::now();
    let (tx, mut rx) = mpsc::channel::<Vec<(usize, Sample)>>(SAMPLE_QUEUE);
    let stop = Arc::new(AtomicBool::new(false));
    let mut producers = tokio::task::JoinSet::new();
    let n = opts.targets.len().max(1) as u32;

    // ICMP targets share one engine thread; the others get a task each.
    let icmp_targets: Vec<(usize, std::net::IpAddr)> = opts
        .targets
        .iter()
        .enumerate()
        .filter_map(|(i, t)| if let Target::Icmp { ip, .. } = t { Some((i, *ip)) } else { None })
        .collect();
    if !icmp_targets.is_empty() {
        let plan = IcmpPlan {
            targets: icmp_targets.iter().map(|t| t.1).collect(),
            interval: opts.interval,
            timeout: opts.timeout,
            size: 56,
            count: opts.count,
        };
        // Open the sockets here, so that a permission problem ends the monitor with its message.
        let sockets = icmp::open_for(&plan.targets)?;
        let (tx, stop) = (tx.clone(), stop.clone());
        let index: Vec<usize> = icmp_targets.iter().map(|t| t.0).collect();
        let engine = std::thread::Builder::new().name("icmp".into()).spawn(move || {
            // Samples travel in batches: one wake-up of the aggregator per batch, not per probe;
            // a batch also goes out when it is old, checked on every turn of the engine's loop.
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
                &plan,
                || {
                    flush(false);
                    stop.load(Ordering::Relaxed)
                },
                |k, s| {
                    batch.borrow_mut().0.push((index[k], s));
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
    }
    for (i, target) in opts.targets.iter().enumerate() {
        if matches!(target, Target::Icmp { .. }) {
            continue;
        }
        let (target, tx, stop) = (target.clone(), tx.clone(), stop.clone());
        let (interval, timeout, count, quiet) = (opts.interval, opts.timeout, opts.count, !opts.print);
        let offset = interval / n * i as u32;
        producers.spawn(async move {
            let mut udp = match &target {
                Target::Udp { addr, .. } => Some(UdpProber::connect(*addr).await),
                _ => None,
            };
            if let (true, Some(Ok(p))) = (quiet, &udp) {
                if let Ok(local) = p.local_addr() {
                    crate::serve::udp::quiet_peer(local);
                }
            }
            let mut seq = 0;
            while count.is_none_or(|c| seq < c) && !stop.load(Ordering::Relaxed) {
                tokio::time::sleep_until((start + offset + interval * seq as u32).into()).await;
                seq += 1;
                let sample = match (&target, &mut udp) {
                    (Target::Tcp { addr, .. }, _) => tcp::probe(*addr, seq, timeout).await,
                    (Target::Http { addr, host_header, path, .. }, _) => {
                        web::probe(*addr, host_header, path, seq, timeout).await
                    }
                    (Target::Udp { .. }, Some(Ok(p))) => p.probe(seq, timeout).await,
                    (_, Some(Err(e))) => Sample { seq, rtt: None, outcome: Outcome::Failed(e.to_string()) },
                    _ => continue,
                };
                let _ = tx.try_send(vec![(i, sample)]);
            }
            Ok(())
        });
    }
    drop(tx);

    let mut windows: Vec<Window> = opts.targets.iter().map(|_| Window::new(opts.window)).collect();
    let mut rates = RateTracker::new();
    let mut routes = Routes { egress: Vec::new(), age: 0 };
    rates.update(read_interfaces().await, Instant::now());
    let tty = std::io::stdout().is_terminal() && opts.format == Format::Table;
    let mut printed = 0u64;
    let mut tick = tokio::time::interval_at((start + opts.interval).into(), opts.interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // Stops on Ctrl-C, or on the caller's shutdown signal when it runs inside `up`.
    let shutdown = opts.shutdown.clone();
    let ctrl_c = async move {
        match shutdown {
            Some(token) => token.cancelled().await,
            None => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    };
    tokio::pin!(ctrl_c);
    let mut producers_done = false;
    loop {
        // The last report waits until the last round of probes has settled, and is not printed
        // before its turn (rates need time to be measured over).
        let last = opts.count.is_some_and(|c| printed + 1 >= c);
        if last && producers_done {
            let turn = opts.interval.saturating_mul(opts.count.unwrap_or(1).min(u64::from(u32::MAX)) as u32);
            tokio::select! {
                _ = tokio::time::sleep_until((start + turn).into()) => {}
                _ = &mut ctrl_c => { stop.store(true, Ordering::Relaxed); }
            }
        } else {
            tokio::select! {
                got = rx.recv(), if !producers_done => {
                    match got {
                        Some(batch) => batch.into_iter().for_each(|(i, s)| windows[i].push(s)),
                        None => producers_done = true,
                    }
                    continue;
                }
                _ = tick.tick(), if !last => {}
                _ = &mut ctrl_c => { stop.store(true, Ordering::Relaxed); }
            }
        }
        let report = build(&opts.targets, &windows, &mut rates, &mut routes).await;
        if let Some(e) = &opts.exporter {
            e.update(&report);
        }
        if let Some(h) = &opts.health {
            h.apply(&report);
        }
        if opts.print {
            print(&report, opts.format, tty, out)?;
        }
        printed += 1;
        if stop.load(Ordering::Relaxed) || (last && producers_done) {
            break;
        }
    }
    stop.store(true, Ordering::Relaxed);
    // Probe tasks may be asleep until their next turn (a long interval): end them now. The
    // ICMP engine sees `stop` within 100 ms; its error, if any, is reported.
    producers.abort_all();
    while let Some(r) = producers.join_next().await {
        match r {
            Ok(result) => result?,
            Err(e) if e.is_cancelled() => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

async fn read_interfaces() -> Vec<iface::Snapshot> {
    tokio::task::spawn_blocking(iface::read).await.ok().and_then(Result::ok).unwrap_or_default()
}

/// Which interface each target is reached through, refreshed every few reports (routes change
/// rarely; looking them up costs a few system calls per target).
struct Routes {
    egress: Vec<Option<String>>,
    age: u32,
}

const ROUTE_REFRESH: u32 = 10;

impl Routes {
    async fn refresh(&mut self, targets: &[Target]) {
        if self.age % ROUTE_REFRESH == 0 || self.egress.len() != targets.len() {
            let ips: Vec<std::net::IpAddr> = targets.iter().map(target_ip).collect();
            self.egress = tokio::task::spawn_blocking(move || {
                let addrs = iface::addresses().unwrap_or_default();
                ips.iter().map(|ip| iface::egress(*ip, &addrs)).collect()
            })
            .await
            .unwrap_or_default();
        }
        self.age = self.age.wrapping_add(1);
    }
}

fn target_ip(t: &Target) -> std::net::IpAddr {
    match t {
        Target::Icmp { ip, .. } => *ip,
        Target::Tcp { addr, .. } | Target::Udp { addr, .. } | Target::Http { addr, .. } => addr.ip(),
    }
}

async fn build(targets: &[Target], windows: &[Window], rates: &mut RateTracker, routes: &mut Routes) -> Report {
    let interfaces = rates.update(read_interfaces().await, Instant::now());
    routes.refresh(targets).await;
    let targets: Vec<TargetReport> = targets
        .iter()
        .zip(windows)
        .zip(&routes.egress)
        .map(|((t, w), via)| {
            let mut summary = w.summary();
            // A target behind a link that is down is down now, before its probes time out.
            if via.as_ref().is_some_and(|via| interfaces.iter().any(|i| &i.name == via && !i.up)) {
                summary.up = false;
            }
            TargetReport { target: t.to_string(), probe: t.kind(), summary }
        })
        .collect();
    let connectivity = verdict(&interfaces, &targets);
    Report { time: UtcTime::now().rfc3339(), interfaces, targets, connectivity }
}

fn print(report: &Report, format: Format, tty: bool, out: &mut impl Write) -> std::io::Result<()> {
    match format {
        Format::Json => {
            // One write per report: stdout's line buffering is slow for megabyte lines.
            let mut line = serde_json::to_vec(report).map_err(std::io::Error::other)?;
            line.push(b'\n');
            out.write_all(&line)?;
        }
        Format::Table => {
            if tty {
                write!(out, "\x1b[H\x1b[2J")?;
            }
            out.write_all(table(report).as_bytes())?;
        }
    }
    out.flush()
}

fn rate(bytes_per_sec: f64) -> String {
    let bits = bytes_per_sec * 8.0;
    match bits {
        b if b >= 1e9 => format!("{:.2} Gbit/s", b / 1e9),
        b if b >= 1e6 => format!("{:.2} Mbit/s", b / 1e6),
        b if b >= 1e3 => format!("{:.1} kbit/s", b / 1e3),
        b => format!("{b:.0} bit/s"),
    }
}

fn ms(v: Option<f64>) -> String {
    v.map_or_else(|| "-".into(), |v| format!("{v:.3}"))
}

/// The report as a plain-text table.
pub fn table(r: &Report) -> String {
    let mut t = String::new();
    let _ = writeln!(t, "netpulse monitor  {}  connectivity: {:?}", r.time, r.connectivity);
    let _ = writeln!(
        t,
        "{:<12} {:<4} {:>14} {:>14} {:>14} {:>14} {:>6} {:>6}",
        "INTERFACE", "UP", "RX", "TX", "RX BYTES", "TX BYTES", "ERRS", "DROPS"
    );
    for i in &r.interfaces {
        let c = &i.counters;
        let _ = writeln!(
            t,
            "{:<12} {:<4} {:>14} {:>14} {:>14} {:>14} {:>6} {:>6}",
            i.name,
            if i.up { "up" } else { "down" },
            rate(i.rx_bytes_per_sec),
            rate(i.tx_bytes_per_sec),
            c.rx_bytes,
            c.tx_bytes,
            c.rx_errors + c.tx_errors,
            c.rx_dropped + c.tx_dropped
        );
    }
    if !r.targets.is_empty() {
        let _ = writeln!(
            t,
            "\n{:<28} {:<5} {:<4} {:>5} {:>5} {:>7} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9}",
            "TARGET",
            "PROBE",
            "UP",
            "SENT",
            "RECV",
            "LOSS",
            "MIN ms",
            "AVG ms",
            "MAX ms",
            "MDEV ms",
            "JITTER",
            "P95 ms"
        );
        for x in &r.targets {
            let s = &x.summary;
            let _ = writeln!(
                t,
                "{:<28} {:<5} {:<4} {:>5} {:>5} {:>6}% {:>9} {:>9} {:>9} {:>9} {:>9} {:>9}",
                x.target,
                x.probe,
                if s.up { "up" } else { "down" },
                s.sent,
                s.received,
                crate::stats::format_g(s.loss_pct),
                ms(s.rtt_min_ms),
                ms(s.rtt_avg_ms),
                ms(s.rtt_max_ms),
                ms(s.rtt_mdev_ms),
                ms(s.jitter_ms),
                ms(s.rtt_p95_ms)
            );
        }
    }
    t.push('\n');
    t
}
