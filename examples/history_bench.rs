//! The history writer and reader under synthetic load (no probes are sent): reports for N
//! targets are made on one thread and written by the history writer's own code on another,
//! whose CPU time is measured (`RUSAGE_THREAD`), as fast as it goes, with report times one
//! interval apart; then the file's size, and how long queries take.
//!
//! ```sh
//! cargo run --release --example history_bench -- write 10000 600 /tmp/h.db   # 10,000 targets, 10 min at 1 s
//! cargo run --release --example history_bench -- memory 2000 180 /tmp/m.db 100  # the writer's peak memory
//! cargo run --release --example history_bench -- size 100 86400 /tmp/d.db    # a whole day, bytes per target
//! cargo run --release --example history_bench -- query 100 30 /tmp/q.db      # 30 days of minutes, query one target
//! ```
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::mpsc;
use std::time::{Duration, Instant, UNIX_EPOCH};

use netpulse::history::{self, Reader, Retention, Store};
use netpulse::monitor::report::{Connectivity, ProbePoint, Report, TargetId, TargetReport};
use netpulse::probe::{Outcome, ProbeKind, Sample};
use netpulse::stats::Window;

/// CPU time (user + system) of the calling thread.
fn thread_cpu() -> Duration {
    use nix::sys::resource::{UsageWho, getrusage};
    let u = getrusage(UsageWho::RUSAGE_THREAD).unwrap();
    let d = |t: nix::sys::time::TimeVal| Duration::new(t.tv_sec() as u64, t.tv_usec() as u32 * 1000);
    d(u.user_time()) + d(u.system_time())
}

/// A tiny deterministic generator (xorshift), so runs are comparable.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// Synthetic reports: `targets` targets, each with a base RTT of 0.2-40 ms, ±10 % noise and
/// 0.5 % loss, `probes` probes per report, reports `every` apart from `t0`.
struct Reports {
    template: Vec<TargetReport>,
    base_ms: Vec<f64>,
    totals: Vec<(u64, u64)>,
    rng: Rng,
    t: u64,
    every: u64,
    probes: usize,
    seq: u64,
}

impl Reports {
    fn new(targets: usize, t0: u64, every: Duration, probes: usize) -> Self {
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        let sample =
            Sample { seq: 0, rtt: Some(Duration::from_millis(1)), outcome: Outcome::Reply { bytes: 64, ttl: None } };
        let mut w = Window::new(1);
        w.push(sample.clone());
        let template = (0..targets)
            .map(|i| {
                let name = format!("127.{}.{}.{}", 1 + i / 65_536, i / 256 % 256, i % 256);
                TargetReport::from_window(TargetId(i), &name, ProbeKind::Icmp, &w)
            })
            .collect();
        let base_ms = (0..targets).map(|_| 0.2 + 40.0 * rng.unit() * rng.unit()).collect();
        Self {
            template,
            base_ms,
            totals: vec![(0, 0); targets],
            rng,
            t: t0,
            every: every.as_millis() as u64,
            probes,
            seq: 0,
        }
    }

    fn next_report(&mut self) -> Report {
        self.t += self.every;
        let mut targets = self.template.clone();
        for (i, t) in targets.iter_mut().enumerate() {
            for _ in 0..self.probes {
                self.seq += 1;
                let lost = self.rng.unit() < 0.005;
                let rtt_ms = (!lost).then(|| self.base_ms[i] * (0.9 + 0.2 * self.rng.unit()));
                t.probes.push(ProbePoint { seq: self.seq, rtt_ms, up: !lost, lost, sent: None });
                self.totals[i].0 += 1;
                self.totals[i].1 += u64::from(!lost);
            }
            t.summary.up = t.probes.last().is_some_and(|p| p.up);
            (t.sent_total, t.received_total) = self.totals[i];
        }
        let time = netpulse::clock::UtcTime::from_system(UNIX_EPOCH + Duration::from_millis(self.t)).rfc3339();
        Report { time, interfaces: Vec::new(), targets, connectivity: Connectivity::Connected }
    }
}

/// Writes `n` reports made by `reports` on another thread; returns the writer's CPU time and
/// wall time.
fn write(path: &std::path::Path, keep: Retention, mut reports: Reports, n: u64) -> (Duration, Duration) {
    let store = Store::open(path, keep).unwrap();
    let (tx, rx) = mpsc::sync_channel::<Report>(4);
    let maker = std::thread::spawn(move || {
        for _ in 0..n {
            if tx.send(reports.next_report()).is_err() {
                return;
            }
        }
    });
    let (cpu, wall) = (thread_cpu(), Instant::now());
    history::writer::replay(store, rx);
    let took = (thread_cpu() - cpu, wall.elapsed());
    maker.join().unwrap();
    took
}

/// The file's size with its WAL (checkpointed on close, so normally none).
fn size(path: &std::path::Path) -> u64 {
    let wal = path.with_extension("db-wal");
    std::fs::metadata(path).map(|m| m.len()).unwrap_or(0) + std::fs::metadata(wal).map(|m| m.len()).unwrap_or(0)
}

/// A field of /proc/self/status in kB (0 where there is none).
fn status_kb(field: &str) -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let line = status.lines().find(|l| l.starts_with(field)).unwrap_or_default();
    line.split_whitespace().nth(1).and_then(|v| v.parse().ok()).unwrap_or(0)
}

fn start_time() -> u64 {
    // Report times start now (the writer never goes back in time), on a minute.
    (history::now_ms() as u64 / 60_000 + 1) * 60_000
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let arg = |i: usize, default: &str| args.get(i).cloned().unwrap_or_else(|| default.to_string());
    let mode = arg(0, "write");
    let targets: usize = arg(1, "10000").parse().unwrap();
    let path = std::path::PathBuf::from(arg(3, "/tmp/netpulse-history-bench.db"));
    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", path.display()));
    }
    match mode.as_str() {
        "write" => {
            // Steady state: raw intervals kept 5 minutes, so chunks are also deleted as they
            // would be after 48 hours.
            let seconds: u64 = arg(2, "600").parse().unwrap();
            let keep = Retention { raw: Duration::from_secs(300), ..Retention::default() };
            let (cpu, wall) =
                write(&path, keep, Reports::new(targets, start_time(), Duration::from_secs(1), 1), seconds);
            let per = cpu / seconds as u32;
            println!(
                "write: {targets} targets, {seconds} intervals of 1 s: writer CPU {:.2} s ({:.2} ms per interval = {:.2} % \
                 of a core at 1 s), wall {:.2} s; file {} bytes",
                cpu.as_secs_f64(),
                per.as_secs_f64() * 1000.0,
                per.as_secs_f64() * 100.0,
                wall.as_secs_f64(),
                size(&path)
            );
        }
        "memory" => {
            // The writer's memory: TARGETS targets every INTERVAL ms (default 100) for SECONDS
            // of report time, as fast as it goes. First the reports alone (made and dropped as
            // the writer takes them: 4 wait at most), for their own peak; then, the peak reset
            // (VmHWM, /proc/self/clear_refs), the writer on them: its peak above theirs.
            let seconds: u64 = arg(2, "180").parse().unwrap();
            let every: u64 = arg(4, "100").parse().unwrap();
            let n = seconds * 1000 / every;
            let reports = || Reports::new(targets, start_time(), Duration::from_millis(every), 1);
            let (tx, rx) = mpsc::sync_channel::<Report>(4);
            let mut maker = reports();
            let made = std::thread::spawn(move || (0..n).try_for_each(|_| tx.send(maker.next_report())));
            rx.into_iter().for_each(drop);
            let _ = made.join();
            let base = status_kb("VmHWM");
            std::fs::write("/proc/self/clear_refs", "5").unwrap();
            let (cpu, _) = write(&path, Retention::default(), reports(), n);
            let peak = status_kb("VmHWM");
            println!(
                "memory: {targets} targets every {every} ms for {seconds} s ({n} reports, writer CPU {:.1} s): peak \
                 resident {} MB with the reports alone, {} MB with the writer: the writer's {} MB ({:.1} kB per target)",
                cpu.as_secs_f64(),
                base / 1024,
                peak / 1024,
                peak.saturating_sub(base) / 1024,
                peak.saturating_sub(base) as f64 / targets as f64
            );
        }
        "size" => {
            let seconds: u64 = arg(2, "86400").parse().unwrap();
            let (cpu, _) = write(
                &path,
                Retention::default(),
                Reports::new(targets, start_time(), Duration::from_secs(1), 1),
                seconds,
            );
            let bytes = size(&path);
            println!(
                "size: {targets} targets, {seconds} intervals of 1 s (writer CPU {:.1} s): file {bytes} bytes = {:.0} bytes \
                 per target per day",
                cpu.as_secs_f64(),
                bytes as f64 / targets as f64 * 86_400.0 / seconds as f64
            );
        }
        "query" => {
            // One report a minute with the minute's 60 probes: the minute rows are what 60 reports
            // would have made; raw chunks older than 48 hours are pruned as usual.
            let days: u64 = arg(2, "30").parse().unwrap();
            let t0 = start_time();
            let minutes = days * 1440;
            let (cpu, _) =
                write(&path, Retention::default(), Reports::new(targets, t0, Duration::from_secs(60), 60), minutes);
            let (from, to) = (t0 as i64, (t0 + minutes * 60_000) as i64 + 60_000);
            let reader = Reader::open(&path).unwrap();
            let target = reader.targets().unwrap().remove(0);
            let mut times = Vec::new();
            let mut points = 0;
            for _ in 0..11 {
                let t = Instant::now();
                points = reader.series(target.id, from, to, 60_000).unwrap().len();
                times.push(t.elapsed());
            }
            times.sort();
            let mut sums = Vec::new();
            for _ in 0..11 {
                let t = Instant::now();
                let s = reader.summary(&target, from, to, 3000).unwrap();
                assert!(s.sent > 0);
                sums.push(t.elapsed());
            }
            sums.sort();
            println!(
                "query: {targets} targets x {days} days of minutes (filled with writer CPU {:.0} s, file {} bytes); one \
                 target, {points} one-minute steps: median {:.1} ms (min {:.1}, max {:.1}); its summary over the range \
                 (p50/p95/p99, outages): median {:.1} ms",
                cpu.as_secs_f64(),
                size(&path),
                times[5].as_secs_f64() * 1000.0,
                times[0].as_secs_f64() * 1000.0,
                times[10].as_secs_f64() * 1000.0,
                sums[5].as_secs_f64() * 1000.0
            );
        }
        other => {
            eprintln!("history_bench: unknown mode {other}; use write, memory, size or query");
            std::process::exit(2);
        }
    }
}
