//! `netpulse history`: what the monitor recorded over a range — per target uptime, loss, RTT
//! percentiles, jitter and outages (start, end, duration, loss during) — as a table, JSON or
//! CSV; the events with `--events`; a chart per target with `--plot`. Times are UTC, RFC 3339,
//! as everywhere else in netpulse.

use std::fmt::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Result;
use serde::Serialize;

use super::{UsageError, say};
use crate::cli::{HistoryArgs, HistoryFormat};
use crate::history::plot::{self, human_duration, human_step};
use crate::history::query::{CounterSummary, EventRow, Point, TargetInfo};
use crate::history::{Reader, Summary, now_ms, rfc3339};

/// Steps a default step is chosen from, in seconds.
const STEPS: [i64; 19] =
    [1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 10_800, 21_600, 43_200, 86_400, 604_800];
/// Points a default series has at most (json, csv).
const DEFAULT_POINTS: i64 = 300;
/// Points any series may have.
const MAX_POINTS: i64 = 100_000;

pub(super) fn run(args: &HistoryArgs) -> Result<ExitCode> {
    let path: PathBuf = match args.history.clone().or_else(crate::history::default_path) {
        Some(p) => p,
        None => return Err(UsageError("no home directory to find the history in; give --history FILE".into()).into()),
    };
    let now = now_ms();
    let from = args.since.at(now);
    let to = args.until.map_or(now, |u| u.at(now));
    if from >= to {
        return Err(UsageError(format!(
            "--since {} is not before --until {}; give a range that runs forward",
            rfc3339(from),
            rfc3339(to)
        ))
        .into());
    }
    let reader = Reader::open(&path)?;
    let recorded = reader.targets()?;
    let targets = pick(&recorded, &args.targets, &path)?;
    let step = step(args, to - from)?;
    let out = match args.format {
        HistoryFormat::Table => table(&reader, &targets, args, &path, (from, to), step)?,
        HistoryFormat::Json => json(&reader, &targets, args, &path, (from, to), step)?,
        HistoryFormat::Csv => csv(&reader, &targets, args, (from, to), step)?,
    };
    say(&out)?;
    Ok(ExitCode::SUCCESS)
}

/// The targets asked for (all when none is named); a name never recorded is bad usage.
fn pick(recorded: &[TargetInfo], wanted: &[String], path: &std::path::Path) -> Result<Vec<TargetInfo>> {
    if wanted.is_empty() {
        return Ok(recorded.to_vec());
    }
    wanted
        .iter()
        .map(|w| {
            recorded.iter().find(|t| &t.target == w).cloned().ok_or_else(|| {
                let known: Vec<&str> = recorded.iter().map(|t| t.target.as_str()).collect();
                let known = if known.is_empty() { "none yet".to_string() } else { known.join(", ") };
                UsageError(format!("no history of target {w} in {}; recorded targets: {known}", path.display())).into()
            })
        })
        .collect()
}

/// The step of the series: `--step`, else the smallest usual step that gives at most
/// `DEFAULT_POINTS` points (a plot: one per column of the terminal).
fn step(args: &HistoryArgs, range: i64) -> Result<i64> {
    let most = if args.plot { plot::columns(terminal_width()) as i64 } else { DEFAULT_POINTS };
    let fitting = STEPS.iter().map(|s| s * 1000).find(|s| range / s <= most).unwrap_or(STEPS[STEPS.len() - 1] * 1000);
    let step = match args.step {
        Some(s) => {
            let s = i64::try_from(s.0.as_millis()).unwrap_or(i64::MAX);
            if s < 1000 {
                return Err(UsageError("--step must be at least 1s".into()).into());
            }
            if range / s > MAX_POINTS {
                return Err(UsageError(format!(
                    "--step {} gives {} points over this range; use at least {}",
                    human_step(s),
                    range / s,
                    human_step(range / MAX_POINTS + 1)
                ))
                .into());
            }
            // A plot needs one column per step: a finer step is widened to fit the terminal.
            if args.plot { s.max(fitting) } else { s }
        }
        None => fitting,
    };
    Ok(step)
}

fn min_outage(args: &HistoryArgs) -> i64 {
    i64::try_from(args.min_outage.0.as_millis()).unwrap_or(i64::MAX)
}

fn terminal_width() -> usize {
    terminal_size::terminal_size()
        .map(|(w, _)| usize::from(w.0))
        .or_else(|| std::env::var("COLUMNS").ok().and_then(|c| c.parse().ok()))
        .unwrap_or(80)
}

/// A percentage to two decimals that never rounds to 100 % or 0 % when it is not (99.999 %
/// uptime is not 100 %).
fn pct(v: Option<f64>) -> String {
    let show = |v: f64| {
        let r = (v * 100.0).round() / 100.0;
        let r = if r >= 100.0 && v < 100.0 {
            99.99
        } else if r <= 0.0 && v > 0.0 {
            0.01
        } else {
            r
        };
        format!("{}%", crate::stats::format_g(r))
    };
    v.map_or_else(|| "-".into(), show)
}

fn ms(v: Option<f64>) -> String {
    v.map_or_else(|| "-".into(), |v| format!("{v:.3}"))
}

fn table(
    reader: &Reader,
    targets: &[TargetInfo],
    args: &HistoryArgs,
    path: &std::path::Path,
    (from, to): (i64, i64),
    step: i64,
) -> Result<String> {
    let mut o = String::new();
    let _ = writeln!(o, "{} to {} (UTC), from {}", rfc3339(from), rfc3339(to), path.display());
    if targets.is_empty() {
        let _ = writeln!(o, "no target recorded yet");
    }
    let width = targets.iter().map(|t| t.target.len()).max().unwrap_or(6).max(6);
    if !targets.is_empty() {
        let _ = writeln!(
            o,
            "\n{:width$}  {:5}  {:>8}  {:>8}  {:>8}  {:>9}  {:>9}  {:>9}  {:>9}",
            "target", "probe", "uptime", "loss", "probes", "p50 ms", "p95 ms", "p99 ms", "jitter ms"
        );
    }
    for t in targets {
        let s = reader.summary(t, from, to, min_outage(args))?;
        if s.sent == 0 && s.recorded_s == 0.0 {
            let _ = writeln!(o, "{:width$}  {:5}  nothing recorded in this range", s.target, s.probe);
            continue;
        }
        let _ = writeln!(
            o,
            "{:width$}  {:5}  {:>8}  {:>8}  {:>8}  {:>9}  {:>9}  {:>9}  {:>9}",
            s.target,
            s.probe,
            pct(s.uptime_pct),
            pct(s.loss_pct),
            s.sent,
            ms(s.rtt_p50_ms),
            ms(s.rtt_p95_ms),
            ms(s.rtt_p99_ms),
            ms(s.jitter_ms)
        );
        for x in &s.outages {
            let end = if x.ongoing { format!("{} (still down)", x.end) } else { x.end.clone() };
            let loss = match x.loss_pct {
                Some(l) => format!("loss {} of {} probes", pct(Some(l)), x.sent),
                None => "no probes recorded".into(),
            };
            let stopped = if x.ended_by == "stop" { ", until netpulse stopped" } else { "" };
            let _ = writeln!(
                o,
                "  outage {} to {end}  {}  {loss}{stopped}  ({})",
                x.start,
                human_duration(x.duration_s),
                x.why
            );
        }
        if s.short_outages > 0 {
            let _ = writeln!(
                o,
                "  and {} time(s) down for less than {} (see --min-outage)",
                s.short_outages,
                human_step(min_outage(args))
            );
        }
    }
    // Interfaces and backends, unless the question was about some targets.
    if args.targets.is_empty() {
        counters_table(&mut o, &reader.counters(from, to)?);
    }
    if args.plot {
        for t in targets {
            let steps = reader.steps(t.id, from, to, step, step)?;
            let _ = write!(o, "\n{}", plot::chart(&t.target, &steps, step));
        }
    }
    if args.events {
        let events = reader.events(from, to, &args.targets)?;
        let _ = writeln!(o, "\nevents ({}):", events.len());
        for e in events {
            let what =
                if e.detail.contains(&e.subject) { e.detail.clone() } else { format!("{}: {}", e.subject, e.detail) };
            let _ = writeln!(o, "  {}  {:12} {what}", e.time, e.kind);
        }
    }
    Ok(o)
}

/// Bytes as a person reads them: `512 B`, `1.5 KiB`, `3.2 GiB`.
fn bytes(n: u64) -> String {
    let units = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut i = 0;
    while v >= 1024.0 && i + 1 < units.len() {
        v /= 1024.0;
        i += 1;
    }
    if i == 0 { format!("{n} B") } else { format!("{v:.1} {}", units[i]) }
}

fn counters_table(o: &mut String, list: &[CounterSummary]) {
    let get = |c: &CounterSummary, k: &str| c.counts.get(k).copied().unwrap_or(0);
    let width = list.iter().map(|c| c.name.len()).max().unwrap_or(0).max(9);
    let backends: Vec<&CounterSummary> = list.iter().filter(|c| c.kind != "interface").collect();
    if !backends.is_empty() {
        let _ = writeln!(
            o,
            "\n{:width$}  {:>10}  {:>10}  {:>10}  {:>10}  {:>10}  {:>12}",
            "backend", "requests", "5xx", "errors", "sent", "received", "out of rotation"
        );
        for c in backends {
            let (requests, sent, received) = if c.kind == "udp_backend" {
                (get(c, "datagrams_sent"), get(c, "bytes_sent"), get(c, "bytes_received"))
            } else {
                (get(c, "requests"), get(c, "bytes_sent"), get(c, "bytes_received"))
            };
            let errors = if c.kind == "udp_backend" { get(c, "unanswered") } else { get(c, "errors") };
            let _ = writeln!(
                o,
                "{:width$}  {:>10}  {:>10}  {:>10}  {:>10}  {:>10}  {:>12}",
                c.name,
                requests,
                get(c, "responses_5xx"),
                errors,
                bytes(sent),
                bytes(received),
                human_duration(c.down_s)
            );
        }
    }
    let links: Vec<&CounterSummary> = list.iter().filter(|c| c.kind == "interface").collect();
    if !links.is_empty() {
        let _ = writeln!(
            o,
            "\n{:width$}  {:>10}  {:>10}  {:>10}  {:>10}  {:>12}",
            "interface", "received", "sent", "errors", "drops", "down"
        );
        for c in links {
            let _ = writeln!(
                o,
                "{:width$}  {:>10}  {:>10}  {:>10}  {:>10}  {:>12}",
                c.name,
                bytes(get(c, "rx_bytes")),
                bytes(get(c, "tx_bytes")),
                get(c, "rx_errors") + get(c, "tx_errors"),
                get(c, "rx_dropped") + get(c, "tx_dropped"),
                if c.down_s > 0.0 { human_duration(c.down_s) } else { "-".into() }
            );
        }
    }
}

#[derive(Serialize)]
struct TargetJson {
    #[serde(flatten)]
    summary: Summary,
    series: Vec<Point>,
}

#[derive(Serialize)]
struct HistoryJson {
    file: String,
    since: String,
    until: String,
    step_s: f64,
    targets: Vec<TargetJson>,
    /// Interfaces and balancer backends: their counters summed over the range.
    counters: Vec<CounterSummary>,
    #[serde(skip_serializing_if = "Option::is_none")]
    events: Option<Vec<EventRow>>,
}

fn json(
    reader: &Reader,
    targets: &[TargetInfo],
    args: &HistoryArgs,
    path: &std::path::Path,
    (from, to): (i64, i64),
    step: i64,
) -> Result<String> {
    let mut list = Vec::new();
    for t in targets {
        list.push(TargetJson {
            summary: reader.summary(t, from, to, min_outage(args))?,
            series: reader.series(t.id, from, to, step)?,
        });
    }
    let doc = HistoryJson {
        file: path.display().to_string(),
        since: rfc3339(from),
        until: rfc3339(to),
        step_s: step as f64 / 1000.0,
        targets: list,
        counters: if args.targets.is_empty() { reader.counters(from, to)? } else { Vec::new() },
        events: if args.events { Some(reader.events(from, to, &args.targets)?) } else { None },
    };
    Ok(serde_json::to_string_pretty(&doc)? + "\n")
}

/// A CSV field, quoted when it has to be (RFC 4180).
fn field(s: &str) -> String {
    if s.contains([',', '"', '\n', '\r']) { format!("\"{}\"", s.replace('"', "\"\"")) } else { s.to_string() }
}

fn num(v: Option<f64>) -> String {
    v.map_or_else(String::new, |v| format!("{v:.3}"))
}

fn csv(
    reader: &Reader,
    targets: &[TargetInfo],
    args: &HistoryArgs,
    (from, to): (i64, i64),
    step: i64,
) -> Result<String> {
    let mut o = String::new();
    if args.events {
        o.push_str("time,kind,subject,detail\n");
        for e in reader.events(from, to, &args.targets)? {
            let _ = writeln!(o, "{},{},{},{}", e.time, field(&e.kind), field(&e.subject), field(&e.detail));
        }
        return Ok(o);
    }
    o.push_str(
        "target,time,sent,received,loss_pct,rtt_min_ms,rtt_avg_ms,rtt_max_ms,rtt_p50_ms,rtt_p95_ms,rtt_p99_ms,jitter_ms\n",
    );
    for t in targets {
        for p in reader.series(t.id, from, to, step)? {
            let _ = writeln!(
                o,
                "{},{},{},{},{},{},{},{},{},{},{},{}",
                field(&t.target),
                p.time,
                p.sent,
                p.received,
                num(p.loss_pct),
                num(p.rtt_min_ms),
                num(p.rtt_avg_ms),
                num(p.rtt_max_ms),
                num(p.rtt_p50_ms),
                num(p.rtt_p95_ms),
                num(p.rtt_p99_ms),
                num(p.jitter_ms)
            );
        }
    }
    Ok(o)
}
