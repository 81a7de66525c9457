//! `netpulse history`: what the monitor recorded over a range — per target uptime, loss, RTT
//! percentiles, jitter and outages (start, end, duration, loss during) — as a table, JSON or
//! CSV; the events with `--events`; a chart per target with `--plot`. Times are UTC, RFC 3339,
//! as everywhere else in netpulse.

use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Result;
use serde::ser::{Error as _, SerializeSeq as _};
use serde::{Serialize, Serializer};

use super::UsageError;
use crate::cli::{HistoryArgs, HistoryFormat};
use crate::history::plot::{self, human_duration, human_step};
use crate::history::query::{CounterSummary, EventRow, Grid, Point, TargetInfo, fitting_step, usual_step};
use crate::history::{HistoryError, Reader, Summary, now_ms, rfc3339};

/// Points a default series has at most (json, csv).
const DEFAULT_POINTS: u64 = 300;
/// Rows of series (one step of one target each) printed at most: more is refused before
/// anything is read, with the coarser step that fits.
pub(crate) const MAX_ROWS: u64 = 1_000_000;

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
    let targets = pick(&reader, &recorded, &args.targets, &path, (from, to))?;
    // Series are printed per target in json and csv (not for --events in csv).
    let series = match args.format {
        HistoryFormat::Json => targets.len() as u64,
        HistoryFormat::Csv if !args.events => targets.len() as u64,
        _ => 1,
    };
    let step = step(args, (from, to), series)?;
    // Rows go out as they are read: a long series never sits in memory, and a closed pipe
    // (`| head`) stops the reading.
    let mut out = BufWriter::with_capacity(1 << 16, io::stdout().lock());
    let range = Range { from, to, step, recorded: recorded.len() };
    match args.format {
        HistoryFormat::Table => table(&mut out, &reader, &targets, args, &path, &range)?,
        HistoryFormat::Json => json(&mut out, &reader, &targets, args, &path, &range)?,
        HistoryFormat::Csv => csv(&mut out, &reader, &targets, args, &range)?,
    }
    out.flush()?;
    Ok(ExitCode::SUCCESS)
}

/// What is asked about: [from, to) in steps of `step` ms; `recorded` targets in the file.
struct Range {
    from: i64,
    to: i64,
    step: i64,
    recorded: usize,
}

impl Range {
    fn grid(&self) -> Grid {
        Grid::aligned(self.from, self.to, self.step)
    }
}

/// The targets asked for; when none is named, those recorded in the range (a target removed
/// from the config is not listed for ever). A name never recorded is bad usage.
fn pick(
    reader: &Reader,
    recorded: &[TargetInfo],
    wanted: &[String],
    path: &Path,
    (from, to): (i64, i64),
) -> Result<Vec<TargetInfo>> {
    if wanted.is_empty() {
        let mut out = Vec::new();
        for t in recorded {
            if reader.has_data(t.id, from, to)? {
                out.push(t.clone());
            }
        }
        return Ok(out);
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
/// `DEFAULT_POINTS` points (a plot: one per column of the terminal). A step that would print
/// more than [`MAX_ROWS`] rows for `series` series is refused, naming one that fits.
fn step(args: &HistoryArgs, (from, to): (i64, i64), series: u64) -> Result<i64> {
    let most = if args.plot { plot::columns(terminal_width()) as u64 } else { DEFAULT_POINTS };
    let points = |s: i64| Grid::aligned(from, to, s).len();
    let fitting = fitting_step(from, to, most);
    let Some(s) = args.step else {
        // Even the coarsest usual step may not fit a range of centuries: the cap holds anyway.
        let rows = points(fitting).saturating_mul(series.max(1));
        if rows > MAX_ROWS {
            return Err(UsageError(format!(
                "this range gives {rows} rows at its coarsest step, more than the {MAX_ROWS} rows netpulse prints \
                 at once; ask for a shorter range (--since/--until)"
            ))
            .into());
        }
        return Ok(fitting);
    };
    let s = i64::try_from(s.0.as_millis()).unwrap_or(i64::MAX);
    if s < 1000 {
        return Err(UsageError("--step must be at least 1s".into()).into());
    }
    let n = points(s);
    let rows = n.saturating_mul(series.max(1));
    if rows > MAX_ROWS {
        let each = if series > 1 { format!(" for each of {series} targets, {rows} rows:") } else { ",".into() };
        let coarser = usual_step(from, to, s + 1, MAX_ROWS / series.max(1))
            .map_or_else(String::new, |c| format!("use --step {} or coarser, or ", human_step(c)));
        let fewer = if series > 1 { "fewer targets or " } else { "" };
        return Err(UsageError(format!(
            "--step {} gives {n} points over this range{each} more than the {MAX_ROWS} rows netpulse prints at \
             once; {coarser}{fewer}a shorter range",
            human_step(s)
        ))
        .into());
    }
    // A plot needs one column per step: a finer step is widened to fit the terminal.
    Ok(if args.plot { s.max(fitting) } else { s })
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
    o: &mut impl Write,
    reader: &Reader,
    targets: &[TargetInfo],
    args: &HistoryArgs,
    path: &Path,
    range: &Range,
) -> Result<()> {
    let (from, to) = (range.from, range.to);
    writeln!(o, "{} to {} (UTC), from {}", rfc3339(from), rfc3339(to), path.display())?;
    if targets.is_empty() {
        match range.recorded {
            0 => writeln!(o, "no target recorded yet")?,
            n => writeln!(o, "no target recorded in this range ({n} recorded at other times; see --since)")?,
        }
    }
    let width = targets.iter().map(|t| t.target.len()).max().unwrap_or(6).max(6);
    if !targets.is_empty() {
        writeln!(
            o,
            "\n{:width$}  {:5}  {:>8}  {:>8}  {:>8}  {:>9}  {:>9}  {:>9}  {:>9}",
            "target", "probe", "uptime", "loss", "probes", "p50 ms", "p95 ms", "p99 ms", "jitter ms"
        )?;
    }
    for t in targets {
        let s = reader.summary(t, from, to, min_outage(args))?;
        if s.sent == 0 && s.recorded_s == 0.0 {
            writeln!(o, "{:width$}  {:5}  nothing recorded in this range", s.target, s.probe)?;
            continue;
        }
        writeln!(
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
        )?;
        for x in &s.outages {
            let end = if x.ongoing { format!("{} (still down)", x.end) } else { x.end.clone() };
            let loss = match x.loss_pct {
                Some(l) => format!("loss {} of {} probes", pct(Some(l)), x.sent),
                None => "no probes recorded".into(),
            };
            let stopped = if x.ended_by == "stop" { ", until netpulse stopped" } else { "" };
            writeln!(
                o,
                "  outage {} to {end}  {}  {loss}{stopped}  ({})",
                x.start,
                human_duration(x.duration_s),
                x.why
            )?;
        }
        if s.short_outages > 0 {
            writeln!(
                o,
                "  and {} time(s) down for less than {} (see --min-outage)",
                s.short_outages,
                human_step(min_outage(args))
            )?;
        }
    }
    // Interfaces and backends, unless the question was about some targets.
    if args.targets.is_empty() {
        counters_table(o, &reader.counters(from, to)?)?;
    }
    if args.plot {
        for t in targets {
            let steps: Vec<_> =
                reader.steps_on(t.id, &range.grid())?.into_iter().map(|(slot, agg)| (slot.start, agg)).collect();
            write!(o, "\n{}", plot::chart(&t.target, &steps, range.step))?;
        }
    }
    if args.events {
        let events = reader.events(from, to, &args.targets)?;
        writeln!(o, "\nevents ({}):", events.len())?;
        for e in events {
            let what =
                if e.detail.contains(&e.subject) { e.detail.clone() } else { format!("{}: {}", e.subject, e.detail) };
            writeln!(o, "  {}  {:12} {what}", e.time, e.kind)?;
        }
    }
    Ok(())
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

/// The backends of HTTP balancers (requests, 5xx, failed), of UDP balancers (datagrams and
/// those without a reply: a datagram has no status), then the interfaces.
fn counters_table(o: &mut impl Write, list: &[CounterSummary]) -> io::Result<()> {
    let get = |c: &CounterSummary, k: &str| c.counts.get(k).copied().unwrap_or(0);
    let width = list.iter().map(|c| c.name.len()).max().unwrap_or(0).max(12);
    let http: Vec<&CounterSummary> = list.iter().filter(|c| c.kind == "http_backend").collect();
    if !http.is_empty() {
        writeln!(
            o,
            "\n{:width$}  {:>10}  {:>10}  {:>10}  {:>10}  {:>10}  {:>15}",
            "http backend", "requests", "5xx", "failed", "sent", "received", "out of rotation"
        )?;
        for c in http {
            writeln!(
                o,
                "{:width$}  {:>10}  {:>10}  {:>10}  {:>10}  {:>10}  {:>15}",
                c.name,
                get(c, "requests"),
                get(c, "responses_5xx"),
                get(c, "errors"),
                bytes(get(c, "bytes_sent")),
                bytes(get(c, "bytes_received")),
                human_duration(c.down_s)
            )?;
        }
    }
    let udp: Vec<&CounterSummary> = list.iter().filter(|c| c.kind == "udp_backend").collect();
    if !udp.is_empty() {
        writeln!(
            o,
            "\n{:width$}  {:>10}  {:>10}  {:>10}  {:>10}  {:>15}",
            "udp backend", "datagrams", "no reply", "sent", "received", "out of rotation"
        )?;
        for c in udp {
            writeln!(
                o,
                "{:width$}  {:>10}  {:>10}  {:>10}  {:>10}  {:>15}",
                c.name,
                get(c, "datagrams_sent"),
                get(c, "unanswered"),
                bytes(get(c, "bytes_sent")),
                bytes(get(c, "bytes_received")),
                human_duration(c.down_s)
            )?;
        }
    }
    let links: Vec<&CounterSummary> = list.iter().filter(|c| c.kind == "interface").collect();
    if !links.is_empty() {
        writeln!(
            o,
            "\n{:width$}  {:>10}  {:>10}  {:>10}  {:>10}  {:>12}",
            "interface", "received", "sent", "errors", "drops", "down"
        )?;
        for c in links {
            writeln!(
                o,
                "{:width$}  {:>10}  {:>10}  {:>10}  {:>10}  {:>12}",
                c.name,
                bytes(get(c, "rx_bytes")),
                bytes(get(c, "tx_bytes")),
                get(c, "rx_errors") + get(c, "tx_errors"),
                get(c, "rx_dropped") + get(c, "tx_dropped"),
                if c.down_s > 0.0 { human_duration(c.down_s) } else { "-".into() }
            )?;
        }
    }
    Ok(())
}

/// A target's series, serialised as it is read (never held whole).
struct Series<'a> {
    reader: &'a Reader,
    id: i64,
    grid: Grid,
}

/// Why streaming a series stopped: the history could not be read, or the output failed.
enum Halt<E> {
    History(HistoryError),
    Out(E),
}

impl<E> From<HistoryError> for Halt<E> {
    fn from(e: HistoryError) -> Self {
        Self::History(e)
    }
}

impl Serialize for Series<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut seq = s.serialize_seq(usize::try_from(self.grid.len()).ok())?;
        self.reader.each_point(self.id, &self.grid, |p| seq.serialize_element(&p).map_err(Halt::Out)).map_err(|e| {
            match e {
                Halt::Out(e) => e,
                Halt::History(e) => S::Error::custom(e),
            }
        })?;
        seq.end()
    }
}

#[derive(Serialize)]
struct TargetJson<'a> {
    #[serde(flatten)]
    summary: Summary,
    series: Series<'a>,
}

#[derive(Serialize)]
struct HistoryJson<'a> {
    file: String,
    since: String,
    until: String,
    step_s: f64,
    targets: Vec<TargetJson<'a>>,
    /// Interfaces and balancer backends: their counters summed over the range.
    counters: Vec<CounterSummary>,
    #[serde(skip_serializing_if = "Option::is_none")]
    events: Option<Vec<EventRow>>,
}

fn json(
    o: &mut impl Write,
    reader: &Reader,
    targets: &[TargetInfo],
    args: &HistoryArgs,
    path: &Path,
    range: &Range,
) -> Result<()> {
    let (from, to) = (range.from, range.to);
    let mut list = Vec::new();
    for t in targets {
        list.push(TargetJson {
            summary: reader.summary(t, from, to, min_outage(args))?,
            series: Series { reader, id: t.id, grid: range.grid() },
        });
    }
    let doc = HistoryJson {
        file: path.display().to_string(),
        since: rfc3339(from),
        until: rfc3339(to),
        step_s: range.step as f64 / 1000.0,
        targets: list,
        counters: if args.targets.is_empty() { reader.counters(from, to)? } else { Vec::new() },
        events: if args.events { Some(reader.events(from, to, &args.targets)?) } else { None },
    };
    // A failed write stays an io::Error (a closed pipe ends quietly).
    serde_json::to_writer_pretty(&mut *o, &doc)
        .map_err(|e| if e.is_io() { io::Error::from(e).into() } else { anyhow::Error::from(e) })?;
    o.write_all(b"\n")?;
    Ok(())
}

/// A CSV field, quoted when it has to be (RFC 4180).
fn field(s: &str) -> String {
    if s.contains([',', '"', '\n', '\r']) { format!("\"{}\"", s.replace('"', "\"\"")) } else { s.to_string() }
}

fn num(v: Option<f64>) -> String {
    v.map_or_else(String::new, |v| format!("{v:.3}"))
}

fn csv(o: &mut impl Write, reader: &Reader, targets: &[TargetInfo], args: &HistoryArgs, range: &Range) -> Result<()> {
    if args.events {
        o.write_all(b"time,kind,subject,detail\n")?;
        for e in reader.events(range.from, range.to, &args.targets)? {
            writeln!(o, "{},{},{},{}", e.time, field(&e.kind), field(&e.subject), field(&e.detail))?;
        }
        return Ok(());
    }
    o.write_all(
        b"target,time,sent,received,loss_pct,rtt_min_ms,rtt_avg_ms,rtt_max_ms,rtt_p50_ms,rtt_p95_ms,rtt_p99_ms,\
          jitter_ms,lost,uptime_pct,partial\n",
    )?;
    let grid = range.grid();
    for t in targets {
        let name = field(&t.target);
        reader.each_point(t.id, &grid, |p: Point| -> Result<()> {
            writeln!(
                o,
                "{name},{},{},{},{},{},{},{},{},{},{},{},{},{},{}",
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
                num(p.jitter_ms),
                p.lost,
                num(p.uptime_pct),
                p.partial
            )?;
            Ok(())
        })?;
    }
    Ok(())
}
