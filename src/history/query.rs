//! Reading the history: a target's aggregate over any range, its per-step series, its outages,
//! and the events. Each part of a range is read from the coarsest level the step allows that
//! holds it (hours, minutes, raw intervals), from finer levels where the coarse one is not
//! complete yet, and from coarser ones where the finer were pruned. Percentiles always come
//! from merged histograms.

use std::path::{Path, PathBuf};

use rusqlite::{Connection, OptionalExtension, params};
use serde::Serialize;

use super::record::{Agg, CounterAgg, Record};
use super::store::{self, read_counter_rollups, read_journal, read_raw, read_target_rollups, rolled_until};
use super::{HOUR_MS, HistoryError, MINUTE_MS, ceil_to, floor_to, rfc3339, shown};

/// Where a part of a range is read from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Source {
    Journal,
    Raw,
    Minutes,
    Hours,
}

/// How far back each level of one series reaches.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Bounds {
    /// The oldest journal row (intervals not packed yet).
    pub journal: Option<i64>,
    /// The oldest raw chunk and minute row of the series.
    pub raw: Option<i64>,
    pub minutes: Option<i64>,
    /// Minute rows older than this may have been pruned (`None`: none ever were, so the
    /// minutes hold all that the hours hold).
    pub minutes_pruned: Option<i64>,
    /// Hour rows are complete up to here.
    pub rolled: i64,
}

/// The parts of [from, to) and the level each is read from, for a step of `step` ms.
pub(crate) fn plan(from: i64, to: i64, step: i64, b: &Bounds) -> Vec<(Source, i64, i64)> {
    let mut out = Vec::new();
    let mut push = |s: Source, a: i64, z: i64| {
        let (a, z) = (a.max(from), z.min(to));
        if a < z {
            out.push((s, a, z));
        }
    };
    let j = b.journal.unwrap_or(i64::MAX);
    push(Source::Journal, j, to);
    let mut upper = to.min(j);
    let first = if step >= HOUR_MS {
        Source::Hours
    } else if step >= MINUTE_MS {
        Source::Minutes
    } else {
        Source::Raw
    };
    if first == Source::Hours {
        // Hours not rolled up yet are read from their minutes.
        let r = b.rolled.min(upper);
        push(Source::Minutes, r, upper);
        upper = r;
    }
    let levels = [Source::Raw, Source::Minutes, Source::Hours];
    for &level in levels.iter().skip_while(|&&l| l != first) {
        let lower = match level {
            Source::Raw => b.raw.map_or(upper, |t| floor_to(t, MINUTE_MS)),
            // Minute rows are whole from the oldest one on, and from the pruning's cutoff
            // (pruning takes the oldest first); all of them when none was ever pruned. A range
            // that starts inside the hour where they become whole, or later, is read from the
            // minutes alone: an hour row holds its whole hour, so it cannot be cut where the
            // range starts (whatever was pruned before is lost to such a range either way).
            // Older ranges take the hours, and never inside an hour: the hour row holding the
            // cut would count again what the minutes already read.
            Source::Minutes => b.minutes.map_or(upper, |t| {
                let whole = b.minutes_pruned.map_or(i64::MIN, |p| p.max(t));
                if whole == i64::MIN || from > floor_to(whole, HOUR_MS) {
                    from
                } else {
                    ceil_to(whole, HOUR_MS).min(b.rolled).min(floor_to(upper, HOUR_MS))
                }
            }),
            _ => i64::MIN,
        }
        .min(upper);
        push(level, lower, upper);
        upper = lower;
    }
    out
}

/// A target that has been recorded.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TargetInfo {
    #[serde(skip)]
    pub id: i64,
    pub target: String,
    pub probe: String,
}

/// One step of a series, as the JSON API and `--format json|csv` give it. Times in ms are
/// rounded to the microsecond, percentages to a thousandth.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Point {
    /// Start of the step (RFC 3339 UTC) and in ms since the epoch: a multiple of the step, so
    /// minutes start on whole minutes and hours on whole hours.
    pub time: String,
    pub t_ms: i64,
    /// The range cuts this step (the first and the last of a range that does not start or end
    /// on the step): its figures cover only the part inside the range.
    pub partial: bool,
    pub sent: u64,
    pub received: u64,
    /// Probes that got no answer in time (the others not received failed: refused, unreachable).
    pub lost: u64,
    pub loss_pct: Option<f64>,
    /// Share of the recorded time in the step the target was up.
    pub uptime_pct: Option<f64>,
    pub rtt_min_ms: Option<f64>,
    pub rtt_avg_ms: Option<f64>,
    pub rtt_max_ms: Option<f64>,
    pub rtt_p50_ms: Option<f64>,
    pub rtt_p95_ms: Option<f64>,
    pub rtt_p99_ms: Option<f64>,
    pub jitter_ms: Option<f64>,
}

/// `v` to three decimals (a microsecond of a time in ms).
fn thousandths(v: Option<f64>) -> Option<f64> {
    v.map(|v| (v * 1000.0).round() / 1000.0)
}

impl Point {
    pub fn new(slot: Slot, a: &Agg) -> Self {
        Self {
            time: rfc3339(slot.start),
            t_ms: slot.start,
            partial: slot.partial(),
            sent: a.sent,
            received: a.received,
            lost: a.lost,
            loss_pct: thousandths(a.loss_pct()),
            uptime_pct: thousandths(a.uptime_pct()),
            rtt_min_ms: thousandths(a.rtt_min_ms()),
            rtt_avg_ms: thousandths(a.rtt_avg_ms()),
            rtt_max_ms: thousandths(a.rtt_max_ms()),
            rtt_p50_ms: thousandths(a.quantile_ms(0.50)),
            rtt_p95_ms: thousandths(a.quantile_ms(0.95)),
            rtt_p99_ms: thousandths(a.quantile_ms(0.99)),
            jitter_ms: thousandths(a.jitter_ms()),
        }
    }
}

/// One step of a series: where it starts on the grid, and the part of it inside the range.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Slot {
    /// The step's start on the grid (ms since the epoch).
    pub start: i64,
    /// The part read: [from, to), within [start, start + step).
    pub from: i64,
    pub to: i64,
    pub step: i64,
}

impl Slot {
    /// The range cuts it.
    pub fn partial(&self) -> bool {
        self.from > self.start || self.to < self.start + self.step
    }
}

/// The steps of a range: slots `step` long from `origin`, the first and last clipped to
/// [from, to).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Grid {
    origin: i64,
    step: i64,
    from: i64,
    to: i64,
}

impl Grid {
    /// Steps on multiples of `step` since the epoch (UTC), as Prometheus and RRD align them: a
    /// minute step starts on whole minutes, an hour step on whole hours, a day on midnight UTC.
    pub fn aligned(from: i64, to: i64, step: i64) -> Self {
        let step = step.max(1);
        Self { origin: floor_to(from, step), step, from, to: to.max(from) }
    }

    /// Steps from `from` itself, whatever the clock says.
    pub fn from_start(from: i64, to: i64, step: i64) -> Self {
        Self { origin: from, step: step.max(1), from, to: to.max(from) }
    }

    /// The whole range as one step.
    pub fn whole(from: i64, to: i64) -> Self {
        let to = to.max(from);
        Self { origin: from, step: (to - from).max(1), from, to }
    }

    pub fn step(&self) -> i64 {
        self.step
    }

    /// How many steps (the partial ones too).
    pub fn len(&self) -> u64 {
        if self.to <= self.from {
            return 0;
        }
        let end =
            self.origin.saturating_add((self.to - self.origin).saturating_add(self.step - 1) / self.step * self.step);
        u64::try_from((end - self.origin) / self.step).unwrap_or(0)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Step `i`.
    pub fn slot(&self, i: u64) -> Slot {
        let start = self.origin + i64::try_from(i).unwrap_or(i64::MAX / 2) * self.step;
        Slot { start, from: start.max(self.from), to: (start + self.step).min(self.to), step: self.step }
    }

    /// The step holding `t`, if inside the range.
    fn index(&self, t: i64) -> Option<u64> {
        (self.from..self.to).contains(&t).then(|| u64::try_from((t - self.origin) / self.step).ok()).flatten()
    }
}

/// The level a step is read from: the coarsest one whose rows never straddle two steps (hour
/// rows for whole hours, minute rows for whole minutes, else the intervals themselves).
fn level_for(step: i64) -> i64 {
    if step % HOUR_MS == 0 {
        HOUR_MS
    } else if step % MINUTE_MS == 0 {
        MINUTE_MS
    } else {
        1000
    }
}

/// The usual steps, in seconds: a step is chosen from these when none is given.
pub const USUAL_STEPS_S: [i64; 19] =
    [1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 10_800, 21_600, 43_200, 86_400, 604_800];

/// The smallest usual step of at least `than` ms that gives at most `most`
/// points over [from, to) (the partial ends count), if one does.
pub fn usual_step(from: i64, to: i64, than: i64, most: u64) -> Option<i64> {
    USUAL_STEPS_S.iter().map(|s| s * 1000).find(|&s| s >= than && Grid::aligned(from, to, s).len() <= most)
}

/// The smallest usual step that gives at most `most` points over [from, to) (a week if none does).
pub fn fitting_step(from: i64, to: i64, most: u64) -> i64 {
    usual_step(from, to, 0, most).unwrap_or(USUAL_STEPS_S[USUAL_STEPS_S.len() - 1] * 1000)
}

/// Steps read at once by [`Reader::each_point`]: what a long series holds in memory.
const CHUNK: u64 = 4096;

/// A target over a whole range: what one shows an ISP.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Summary {
    pub target: String,
    pub probe: String,
    /// Share of the recorded time it was not in an outage.
    pub uptime_pct: Option<f64>,
    pub loss_pct: Option<f64>,
    pub sent: u64,
    pub received: u64,
    pub rtt_min_ms: Option<f64>,
    pub rtt_avg_ms: Option<f64>,
    pub rtt_max_ms: Option<f64>,
    pub rtt_mdev_ms: Option<f64>,
    pub rtt_p50_ms: Option<f64>,
    pub rtt_p95_ms: Option<f64>,
    pub rtt_p99_ms: Option<f64>,
    pub jitter_ms: Option<f64>,
    /// Time covered by recordings in the range.
    pub recorded_s: f64,
    pub outages: Vec<Outage>,
    /// Times it was down for less than the shortest outage asked for (not listed).
    pub short_outages: usize,
}

/// A stretch of time a target was down: from the report that found it down to the one that
/// found it back (or to netpulse stopping).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Outage {
    pub start: String,
    pub end: String,
    #[serde(skip)]
    pub start_ms: i64,
    #[serde(skip)]
    pub end_ms: i64,
    pub duration_s: f64,
    /// Still down at the end of the range (or when the recording stopped, see `ended_by`).
    pub ongoing: bool,
    /// What ended it: "up", "stop" (netpulse stopped) or "" while ongoing.
    pub ended_by: String,
    /// Why it went down (the newest probe's outcome then).
    pub why: String,
    pub sent: u64,
    pub received: u64,
    pub loss_pct: Option<f64>,
}

/// An interface or a balancer's backend over a range: its counters summed.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CounterSummary {
    /// `interface`, `http_backend` or `udp_backend`.
    pub kind: String,
    /// The interface, or `balancer/address`.
    pub name: String,
    /// Time recorded in the range, and of it, time the link was down or the backend out of
    /// rotation.
    pub recorded_s: f64,
    pub down_s: f64,
    /// How much each counter grew (bytes, packets, requests by class, ...).
    pub counts: std::collections::BTreeMap<String, u64>,
}

/// A target's outages over a range.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Outages {
    /// Those at least as long as asked (or still going on).
    pub list: Vec<Outage>,
    /// How many were shorter.
    pub shorter: usize,
    /// Time down in all of them, within the range.
    pub down_ms: i64,
}

/// An outage as read from the events: start, end, still going, what ended it, why it began.
type Span = (i64, i64, bool, String, String);

/// One event.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct EventRow {
    pub time: String,
    #[serde(skip)]
    pub t_ms: i64,
    pub kind: String,
    pub subject: String,
    pub detail: String,
}

/// A reader of a history file (any number may read while the writer writes).
pub struct Reader {
    pub(crate) conn: Connection,
    path: PathBuf,
    /// A file made but with no schema yet.
    empty: bool,
}

impl Reader {
    pub fn open(path: &Path) -> Result<Self, HistoryError> {
        let conn = store::open_reader(path)?;
        // Whatever the mode the file could be opened in, this connection never writes.
        conn.pragma_update(None, "query_only", true)
            .map_err(|source| HistoryError::Open { path: shown(path), source })?;
        let version: i64 = conn.query_row("PRAGMA user_version", [], |r| r.get(0)).unwrap_or(0);
        Ok(Self { conn, path: path.to_path_buf(), empty: version == 0 })
    }

    fn err(&self, source: rusqlite::Error) -> HistoryError {
        HistoryError::Read { path: shown(&self.path), source }
    }

    /// Every target recorded, in the order first seen.
    pub fn targets(&self) -> Result<Vec<TargetInfo>, HistoryError> {
        if self.empty {
            return Ok(Vec::new());
        }
        let run = || -> rusqlite::Result<Vec<TargetInfo>> {
            let mut q = self.conn.prepare("SELECT id, name, detail FROM series WHERE kind = 'target' ORDER BY id")?;
            q.query_map([], |r| Ok(TargetInfo { id: r.get(0)?, target: r.get(1)?, probe: r.get(2)? }))?.collect()
        };
        run().map_err(|e| self.err(e))
    }

    /// How far back each level of `series` reaches (`rollups`: the table of its kind).
    fn bounds(&self, series: i64, rollups: &str) -> rusqlite::Result<Bounds> {
        let min = |sql: &str| -> rusqlite::Result<Option<i64>> {
            self.conn.prepare_cached(sql)?.query_row(params![series], |r| r.get(0))
        };
        Ok(Bounds {
            journal: self.conn.query_row("SELECT min(t) FROM journal", [], |r| r.get(0))?,
            raw: min("SELECT min(t) FROM raw WHERE series = ?1")?,
            minutes: min(&format!("SELECT min(t) FROM {rollups} WHERE res = 60 AND series = ?1"))?,
            minutes_pruned: store::minutes_pruned_until(&self.conn)?,
            rolled: rolled_until(&self.conn)?.unwrap_or(i64::MIN),
        })
    }

    /// Reads steps `first..first + out.len()` of `grid` into `out`: whole steps from the level
    /// `level` allows (hours, minutes or intervals), the partial ones at the ends from the
    /// finest level there is (intervals), so a cut step counts only what lies inside the range.
    /// `last_rtt` carries the previous RTT from one call to the next (for the jitter).
    #[allow(clippy::too_many_arguments)]
    fn fill(
        &self,
        series: i64,
        b: &Bounds,
        grid: &Grid,
        first: u64,
        out: &mut [Agg],
        level: i64,
        last_rtt: &mut Option<u64>,
    ) -> rusqlite::Result<()> {
        let n = out.len() as u64;
        if n == 0 {
            return Ok(());
        }
        let mut reads: Vec<(i64, i64, i64)> = Vec::with_capacity(3);
        let (head, tail) = (grid.slot(first), grid.slot(first + n - 1));
        let (mut a, mut z) = (head.from, tail.to);
        if head.partial() {
            reads.push((head.from, head.to, 1000));
            a = head.to;
        }
        if tail.partial() && (n > 1 || !head.partial()) {
            reads.push((tail.from, tail.to, 1000));
            z = tail.from;
        }
        if a < z {
            reads.push((a, z, level));
        }
        let index = |t: i64| grid.index(t).and_then(|i| i.checked_sub(first)).filter(|&i| i < n).map(|i| i as usize);
        let mut records: Vec<(i64, Record)> = Vec::new();
        for (ra, rz, level) in reads {
            for (source, a, z) in plan(ra, rz, level, b) {
                match source {
                    Source::Journal => records.extend(read_journal(&self.conn, series, a, z)?),
                    Source::Raw => records.extend(read_raw(&self.conn, series, a, z)?),
                    Source::Minutes | Source::Hours => {
                        let res = if source == Source::Minutes { 60 } else { 3600 };
                        for (t, agg) in read_target_rollups(&self.conn, res, series, a, z)? {
                            if let Some(i) = index(t) {
                                out[i].merge(&agg);
                            }
                        }
                    }
                }
            }
        }
        records.sort_by_key(|r| r.0);
        for (t, r) in records {
            if let (Some(i), Record::Target(ti)) = (index(t), &r) {
                out[i].add_interval(ti, last_rtt);
            }
        }
        Ok(())
    }

    /// The target's aggregates over [from, to) in steps of `step` ms from `from` itself (not
    /// aligned), reading levels as fine as `level_step` needs; all at once. Steps with no data
    /// are empty aggregates.
    pub fn steps(
        &self,
        series: i64,
        from: i64,
        to: i64,
        step: i64,
        level_step: i64,
    ) -> Result<Vec<(i64, Agg)>, HistoryError> {
        let grid = Grid::from_start(from, to, step);
        let mut out = Vec::new();
        self.each_step_at(series, &grid, level_step, |slot, agg| {
            out.push((slot.start, agg));
            Ok::<(), HistoryError>(())
        })?;
        Ok(out)
    }

    /// The target's aggregate per step of `grid`, all at once (for a chart: a few hundred steps).
    pub fn steps_on(&self, series: i64, grid: &Grid) -> Result<Vec<(Slot, Agg)>, HistoryError> {
        let mut out = Vec::new();
        self.each_step(series, grid, |slot, agg| {
            out.push((slot, agg));
            Ok::<(), HistoryError>(())
        })?;
        Ok(out)
    }

    /// Calls `f` with each step of `grid` in order, read [`CHUNK`] steps at a time: a series of
    /// any length costs the memory of one chunk. Steps with no data are empty aggregates. An
    /// error of `f` (a closed pipe) ends the reading.
    pub fn each_step<E: From<HistoryError>>(
        &self,
        series: i64,
        grid: &Grid,
        f: impl FnMut(Slot, Agg) -> Result<(), E>,
    ) -> Result<(), E> {
        self.each_step_at(series, grid, level_for(grid.step()), f)
    }

    /// [`Reader::each_step`], whole steps read from the level `level` allows.
    fn each_step_at<E: From<HistoryError>>(
        &self,
        series: i64,
        grid: &Grid,
        level: i64,
        mut f: impl FnMut(Slot, Agg) -> Result<(), E>,
    ) -> Result<(), E> {
        let n = grid.len();
        let b = if self.empty || n == 0 {
            None
        } else {
            Some(self.bounds(series, "target_rollup").map_err(|e| self.err(e))?)
        };
        let mut last_rtt = None;
        let mut first = 0;
        while first < n {
            let len = CHUNK.min(n - first);
            let mut out = vec![Agg::default(); len as usize];
            if let Some(b) = &b {
                self.fill(series, b, grid, first, &mut out, level, &mut last_rtt).map_err(|e| self.err(e))?;
            }
            for (i, agg) in out.into_iter().enumerate() {
                f(grid.slot(first + i as u64), agg)?;
            }
            first += len;
        }
        Ok(())
    }

    /// Calls `f` with each point of the target's series over `grid` (see [`Reader::each_step`]).
    pub fn each_point<E: From<HistoryError>>(
        &self,
        series: i64,
        grid: &Grid,
        mut f: impl FnMut(Point) -> Result<(), E>,
    ) -> Result<(), E> {
        self.each_step(series, grid, |slot, agg| f(Point::new(slot, &agg)))
    }

    /// Whether the target has anything recorded in [from, to): a target that left the config
    /// is listed only for the ranges it was monitored in. Exact where the intervals are still
    /// kept (48 h by default); older, a minute or hour cut by the range's ends is not looked in.
    pub fn has_data(&self, series: i64, from: i64, to: i64) -> Result<bool, HistoryError> {
        if self.empty || from >= to {
            return Ok(false);
        }
        let run = || -> rusqlite::Result<bool> {
            let exists = |sql: &str, a: i64, z: i64| -> rusqlite::Result<bool> {
                Ok(self.conn.prepare_cached(sql)?.query_row(params![series, a, z], |_| Ok(())).optional()?.is_some())
            };
            // A raw chunk begun in the range, or a rollup row inside it, has data in it...
            let rollup = "SELECT 1 FROM target_rollup WHERE res = ?4 AND series = ?1 AND t >= ?2 AND t <= ?3 LIMIT 1";
            let rollup_in = |res: i64| -> rusqlite::Result<bool> {
                let mut q = self.conn.prepare_cached(rollup)?;
                Ok(q.query_row(params![series, from, to - res * 1000, res], |_| Ok(())).optional()?.is_some())
            };
            if exists("SELECT 1 FROM raw WHERE series = ?1 AND t >= ?2 AND t < ?3 LIMIT 1", from, to)?
                || rollup_in(60)?
                || rollup_in(3600)?
            {
                return Ok(true);
            }
            // ...and so may the chunk begun in the minute before, and the journal.
            Ok(!read_raw(&self.conn, series, from, to.min(from + MINUTE_MS))?.is_empty()
                || !read_journal(&self.conn, series, from, to)?.is_empty())
        };
        run().map_err(|e| self.err(e))
    }

    /// Every interface and backend recorded, with its counters summed over [from, to); those
    /// with nothing recorded in the range are left out.
    pub fn counters(&self, from: i64, to: i64) -> Result<Vec<CounterSummary>, HistoryError> {
        if self.empty {
            return Ok(Vec::new());
        }
        let run = || -> rusqlite::Result<Vec<CounterSummary>> {
            let series: Vec<(i64, String, String, String)> = {
                let mut q = self.conn.prepare(
                    "SELECT id, kind, name, fields FROM series WHERE kind != 'target' ORDER BY kind DESC, name",
                )?;
                q.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))?
                    .collect::<rusqlite::Result<_>>()?
            };
            let mut out = Vec::new();
            for (id, kind, name, fields) in series {
                let b = self.bounds(id, "counter_rollup")?;
                let mut total = CounterAgg::default();
                for (source, a, z) in plan(from, to, (to - from) / 100, &b) {
                    let records = match source {
                        Source::Journal => read_journal(&self.conn, id, a, z)?,
                        Source::Raw => read_raw(&self.conn, id, a, z)?,
                        Source::Minutes | Source::Hours => {
                            let res = if source == Source::Minutes { 60 } else { 3600 };
                            for (_, c) in read_counter_rollups(&self.conn, res, id, a, z)? {
                                total.merge(&c);
                            }
                            continue;
                        }
                    };
                    for (_, r) in records {
                        if let Record::Counters(c) = r {
                            total.add_interval(&c);
                        }
                    }
                }
                if total.span_ms == 0 {
                    continue;
                }
                let names = fields.split(',').filter(|f| !f.is_empty());
                out.push(CounterSummary {
                    kind,
                    name,
                    recorded_s: total.span_ms as f64 / 1000.0,
                    down_s: total.down_ms as f64 / 1000.0,
                    counts: names.map(String::from).zip(total.sums.iter().copied()).collect(),
                });
            }
            Ok(out)
        };
        run().map_err(|e| self.err(e))
    }

    /// The per-step series of the target named `target` (as the monitor names it), or `None`
    /// when it was never recorded: what an HTTP API serves.
    pub fn series_of(&self, target: &str, from: i64, to: i64, step: i64) -> Result<Option<Vec<Point>>, HistoryError> {
        match self.targets()?.into_iter().find(|t| t.target == target) {
            Some(t) => self.series(t.id, from, to, step).map(Some),
            None => Ok(None),
        }
    }

    /// The target's aggregate over [from, to).
    pub fn aggregate(&self, series: i64, from: i64, to: i64) -> Result<Agg, HistoryError> {
        let grid = Grid::whole(from, to);
        if self.empty || grid.is_empty() {
            return Ok(Agg::default());
        }
        let b = self.bounds(series, "target_rollup").map_err(|e| self.err(e))?;
        // A hundredth of the range is fine enough a level: edges land within 1 %.
        let mut out = [Agg::default()];
        self.fill(series, &b, &grid, 0, &mut out, (to - from) / 100, &mut None).map_err(|e| self.err(e))?;
        let [agg] = out;
        Ok(agg)
    }

    /// The per-step series of a target over [from, to) in steps of `step` ms aligned to the
    /// step (see [`Grid::aligned`]), JSON-able (for `--format json` and an HTTP API).
    pub fn series(&self, series: i64, from: i64, to: i64, step: i64) -> Result<Vec<Point>, HistoryError> {
        self.series_on(series, &Grid::aligned(from, to, step))
    }

    /// The per-step series of a target over `grid`, all at once.
    pub fn series_on(&self, series: i64, grid: &Grid) -> Result<Vec<Point>, HistoryError> {
        let mut out = Vec::with_capacity(usize::try_from(grid.len()).unwrap_or(0).min(CHUNK as usize));
        self.each_point(series, grid, |p| {
            out.push(p);
            Ok::<(), HistoryError>(())
        })?;
        Ok(out)
    }

    /// Events in [from, to], oldest first; only those about `subjects` (and starts and stops)
    /// when some are given.
    pub fn events(&self, from: i64, to: i64, subjects: &[String]) -> Result<Vec<EventRow>, HistoryError> {
        if self.empty {
            return Ok(Vec::new());
        }
        let run = || -> rusqlite::Result<Vec<EventRow>> {
            let mut q = self.conn.prepare_cached(
                "SELECT t, kind, subject, detail FROM events WHERE t >= ?1 AND t <= ?2 ORDER BY t, rowid",
            )?;
            let rows = q.query_map(params![from, to], |r| {
                let t: i64 = r.get(0)?;
                Ok(EventRow { time: rfc3339(t), t_ms: t, kind: r.get(1)?, subject: r.get(2)?, detail: r.get(3)? })
            })?;
            let all: Vec<EventRow> = rows.collect::<rusqlite::Result<_>>()?;
            Ok(all
                .into_iter()
                .filter(|e| {
                    subjects.is_empty() || subjects.contains(&e.subject) || matches!(e.kind.as_str(), "start" | "stop")
                })
                .collect())
        };
        run().map_err(|e| self.err(e))
    }

    /// The time of the newest recording (any series), for outages the recording ended without
    /// a stop (a crash).
    fn newest_data(&self) -> rusqlite::Result<Option<i64>> {
        self.conn.query_row(
            "SELECT max(coalesce((SELECT max(t) FROM journal), 0),
                        coalesce((SELECT max(t) + 60000 FROM raw), 0),
                        coalesce((SELECT max(t) FROM events), 0))",
            [],
            |r| r.get(0),
        )
    }

    /// The target's outages that overlap [from, to), each clipped to it, that lasted at least
    /// `min_ms` (or are still going on); and how many shorter ones there were (a lost probe or
    /// two on a lossy link is loss, not an outage).
    pub fn outages(&self, target: &TargetInfo, from: i64, to: i64, min_ms: i64) -> Result<Outages, HistoryError> {
        if self.empty {
            return Ok(Outages::default());
        }
        let run = || -> rusqlite::Result<Vec<Span>> {
            // The state at `from`: the last word on the target (or a stop) before it.
            let before: Option<(i64, String, String)> = self
                .conn
                .prepare_cached(
                    "SELECT t, kind, detail FROM events
                     WHERE t < ?1 AND ((subject = ?2 AND kind IN ('target_down', 'target_up')) OR kind IN ('stop', 'start'))
                     ORDER BY t DESC, rowid DESC LIMIT 1",
                )?
                .query_row(params![from, target.target], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
                .ok();
            let mut down: Option<(i64, String)> = match before {
                Some((t, kind, why)) if kind == "target_down" => Some((t, why)),
                _ => None,
            };
            let mut q = self.conn.prepare_cached(
                "SELECT t, kind, detail FROM events
                 WHERE t >= ?1 AND t < ?2 AND ((subject = ?3 AND kind IN ('target_down', 'target_up')) OR kind IN ('stop', 'start'))
                 ORDER BY t, rowid",
            )?;
            let rows = q.query_map(params![from, to, target.target], |r| {
                Ok((r.get::<_, i64>(0)?, r.get::<_, String>(1)?, r.get::<_, String>(2)?))
            })?;
            let mut out = Vec::new();
            for row in rows {
                let (t, kind, detail) = row?;
                match (kind.as_str(), &down) {
                    ("target_down", None) => down = Some((t, detail)),
                    ("target_up" | "stop" | "start", Some((s, why))) => {
                        let ended = if kind == "target_up" { "up" } else { "stop" };
                        out.push((*s, t, false, ended.to_string(), why.clone()));
                        down = None;
                    }
                    _ => {}
                }
            }
            if let Some((s, why)) = down {
                let end = self.newest_data()?.unwrap_or(to).min(to).max(s);
                out.push((s, end, true, String::new(), why));
            }
            Ok(out)
        };
        let mut spans = run().map_err(|e| self.err(e))?;
        let down_ms = spans.iter().map(|(s, e, ..)| (e.min(&to) - s.max(&from)).max(0)).sum();
        let before = spans.len();
        spans.retain(|(s, e, ongoing, ..)| *ongoing || e.min(&to) - s.max(&from) >= min_ms);
        let short = before - spans.len();
        let list = spans
            .into_iter()
            .map(|(s, e, ongoing, ended_by, why)| {
                let (s, e) = (s.max(from), e.min(to));
                let agg = self.aggregate(target.id, s, e.max(s + 1))?;
                Ok(Outage {
                    start: rfc3339(s),
                    end: rfc3339(e),
                    start_ms: s,
                    end_ms: e,
                    duration_s: (e - s) as f64 / 1000.0,
                    ongoing,
                    ended_by,
                    why,
                    sent: agg.sent,
                    received: agg.received,
                    loss_pct: agg.loss_pct(),
                })
            })
            .collect::<Result<_, HistoryError>>()?;
        Ok(Outages { list, shorter: short, down_ms })
    }

    /// Everything about one target over [from, to); outages shorter than `min_outage_ms` are
    /// only counted.
    pub fn summary(
        &self,
        target: &TargetInfo,
        from: i64,
        to: i64,
        min_outage_ms: i64,
    ) -> Result<Summary, HistoryError> {
        let a = self.aggregate(target.id, from, to)?;
        let outages = self.outages(target, from, to, min_outage_ms)?;
        // Uptime: the recorded time not in an outage.
        let down = u64::try_from(outages.down_ms).unwrap_or(0).min(a.span_ms);
        let uptime_pct = (a.span_ms > 0).then(|| (a.span_ms - down) as f64 * 100.0 / a.span_ms as f64);
        Ok(Summary {
            target: target.target.clone(),
            probe: target.probe.clone(),
            uptime_pct,
            loss_pct: a.loss_pct(),
            sent: a.sent,
            received: a.received,
            rtt_min_ms: a.rtt_min_ms(),
            rtt_avg_ms: a.rtt_avg_ms(),
            rtt_max_ms: a.rtt_max_ms(),
            rtt_mdev_ms: a.rtt_mdev_ms(),
            rtt_p50_ms: a.quantile_ms(0.50),
            rtt_p95_ms: a.quantile_ms(0.95),
            rtt_p99_ms: a.quantile_ms(0.99),
            jitter_ms: a.jitter_ms(),
            recorded_s: a.span_ms as f64 / 1000.0,
            outages: outages.list,
            short_outages: outages.shorter,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const H: i64 = HOUR_MS;
    const M: i64 = MINUTE_MS;

    #[test]
    fn a_fine_step_reads_raw_then_minutes_then_hours_going_back() {
        let now = 100 * H;
        let b = Bounds {
            journal: Some(now - 30_000),
            raw: Some(now - 48 * H),
            minutes: Some(now - 30 * 24 * H),
            minutes_pruned: Some(now - 30 * 24 * H),
            rolled: 99 * H,
        };
        let p = plan(0, now, 1000, &b);
        assert_eq!(
            p,
            vec![
                (Source::Journal, now - 30_000, now),
                (Source::Raw, now - 48 * H, now - 30_000),
                (Source::Minutes, 0, now - 48 * H),
            ]
        );
        let b = Bounds { minutes: Some(10 * H + 5 * M), ..b };
        let p = plan(0, now, 1000, &b);
        assert_eq!(p[2], (Source::Minutes, 11 * H, now - 48 * H), "minutes from the first whole hour");
        assert_eq!(p[3], (Source::Hours, 0, 11 * H));
    }

    #[test]
    fn an_hourly_step_reads_hours_and_the_minutes_not_rolled_up_yet() {
        let now = 100 * H + 10 * M;
        let b = Bounds {
            journal: Some(now - 20_000),
            raw: Some(now - 48 * H),
            minutes: Some(0),
            minutes_pruned: None,
            rolled: 100 * H,
        };
        assert_eq!(
            plan(0, now, H, &b),
            vec![
                (Source::Journal, now - 20_000, now),
                (Source::Minutes, 100 * H, now - 20_000),
                (Source::Hours, 0, 100 * H),
            ]
        );
    }

    #[test]
    fn a_range_back_past_the_first_raw_minute_never_reads_its_hour_twice() {
        // Raw intervals kept from 1m15s before an hour that has since been rolled up.
        let now = 100 * H + 10 * M;
        let b = Bounds {
            journal: Some(now - 20_000),
            raw: Some(100 * H - 75_000),
            minutes: Some(100 * H - 2 * M),
            minutes_pruned: None,
            rolled: 100 * H,
        };
        // Recording began then: the minutes hold it all.
        assert_eq!(
            plan(now - 90 * M, now, 1000, &b),
            vec![
                (Source::Journal, now - 20_000, now),
                (Source::Raw, 100 * H - 2 * M, now - 20_000),
                (Source::Minutes, now - 90 * M, 100 * H - 2 * M),
            ]
        );
        // The minutes before were pruned: the hours hold them.
        let b = Bounds { minutes_pruned: Some(100 * H - 2 * M), ..b };
        let p = plan(now - 90 * M, now, 1000, &b);
        assert_eq!(
            p,
            vec![
                (Source::Journal, now - 20_000, now),
                (Source::Raw, 100 * H - 2 * M, now - 20_000),
                (Source::Minutes, 99 * H, 100 * H - 2 * M),
                (Source::Hours, now - 90 * M, 99 * H),
            ]
        );
        // No two parts overlap, and together they cover the range once.
        let covered: i64 = p.iter().map(|(_, a, z)| z - a).sum();
        assert_eq!(covered, 90 * M);
    }

    #[test]
    fn a_new_file_reads_what_it_has() {
        let b = Bounds { journal: None, raw: None, minutes: None, minutes_pruned: None, rolled: 5 * H };
        assert_eq!(plan(0, 6 * H, M, &b), vec![(Source::Hours, 0, 6 * H)]);
        let b = Bounds { journal: Some(5 * H + 10), raw: None, minutes: None, minutes_pruned: None, rolled: 5 * H };
        assert_eq!(
            plan(5 * H, 6 * H, 1000, &b),
            vec![(Source::Journal, 5 * H + 10, 6 * H), (Source::Hours, 5 * H, 5 * H + 10)]
        );
    }
}

#[cfg(test)]
mod grid_tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::history::{Retention, Store, now_ms, writer};
    use crate::monitor::report::{Connectivity, Report, TargetId, TargetReport};
    use crate::probe::{Outcome, ProbeKind, Sample};
    use crate::stats::Window;

    const H: i64 = HOUR_MS;
    const M: i64 = MINUTE_MS;

    #[test]
    fn minute_steps_start_on_whole_minutes_and_the_cut_ends_say_so() {
        let g = Grid::aligned(10 * H + 30_000, 10 * H + 3 * M + 15_000, M);
        assert_eq!(g.len(), 4);
        let slots: Vec<Slot> = (0..g.len()).map(|i| g.slot(i)).collect();
        assert_eq!(
            slots.iter().map(|s| s.start).collect::<Vec<_>>(),
            [10 * H, 10 * H + M, 10 * H + 2 * M, 10 * H + 3 * M]
        );
        assert_eq!(slots.iter().map(Slot::partial).collect::<Vec<_>>(), [true, false, false, true]);
        assert_eq!((slots[0].from, slots[0].to), (10 * H + 30_000, 10 * H + M));
        assert_eq!((slots[3].from, slots[3].to), (10 * H + 3 * M, 10 * H + 3 * M + 15_000));
        // The parts cover the range once.
        assert_eq!(slots.iter().map(|s| s.to - s.from).sum::<i64>(), 3 * M - 15_000);
        assert_eq!(g.index(10 * H + 2 * M + 59_999), Some(2));
        assert_eq!((g.index(10 * H + 29_999), g.index(10 * H + 3 * M + 15_000)), (None, None));
    }

    #[test]
    fn hour_steps_start_on_whole_hours_utc_and_a_range_on_the_grid_has_no_partial_step() {
        let g = Grid::aligned(10 * H + 20 * M, 13 * H, H);
        assert_eq!(g.len(), 3);
        assert_eq!((g.slot(0).start, g.slot(0).partial()), (10 * H, true));
        assert_eq!((g.slot(2).start, g.slot(2).partial()), (12 * H, false));
        let g = Grid::aligned(24 * H, 48 * H, H);
        assert_eq!(g.len(), 24);
        assert!((0..24).all(|i| !g.slot(i).partial()));
        // A day starts at midnight UTC.
        assert_eq!(Grid::aligned(24 * H + 5 * H, 72 * H, 24 * H).slot(0).start, 24 * H);
        assert_eq!(Grid::aligned(5, 5, M).len(), 0);
        // The whole range as one step, from its start.
        let w = Grid::whole(10 * H + 7, 12 * H);
        assert_eq!((w.len(), w.slot(0).start, w.slot(0).partial()), (1, 10 * H + 7, false));
    }

    #[test]
    fn whole_steps_read_the_coarsest_level_that_never_straddles_two() {
        assert_eq!((level_for(H), level_for(2 * H), level_for(M), level_for(5 * M)), (H, H, M, M));
        assert_eq!((level_for(90_000), level_for(1000), level_for(15_000)), (1000, 1000, 1000));
    }

    #[test]
    fn the_usual_step_is_the_finest_that_fits() {
        assert_eq!(fitting_step(0, H, 1000), 5000, "720 points");
        assert_eq!(fitting_step(0, 24 * H, 1000), 2 * M);
        assert_eq!(fitting_step(30_000, 30_000 + H, 60), 2 * M, "61 minutes do not fit in 60 points");
        assert_eq!(usual_step(0, H, 5001, 1000), Some(10_000));
        assert_eq!(usual_step(0, 10_000 * 24 * H, 1, 10), None);
    }

    /// A report at `t` of one target whose one probe answered in 1 ms.
    fn report(t: i64, n: u64) -> Report {
        let sample = Sample {
            seq: n,
            rtt: Some(std::time::Duration::from_millis(1)),
            outcome: Outcome::Reply { bytes: 64, ttl: None },
        };
        let mut w = Window::new(1);
        w.push(sample.clone());
        let target = TargetReport {
            probes: vec![(&sample).into()],
            sent_total: n,
            received_total: n,
            ..TargetReport::from_window(TargetId(0), "udp://127.0.26.1:1", ProbeKind::Udp, &w)
        };
        let at = std::time::UNIX_EPOCH + std::time::Duration::from_millis(u64::try_from(t).unwrap());
        let time = crate::clock::UtcTime::from_system(at).rfc3339();
        Report { time, interfaces: vec![], targets: vec![target], connectivity: Connectivity::Connected }
    }

    #[test]
    fn a_series_streamed_in_chunks_counts_every_probe_once_on_any_grid() {
        // Inside one hour (5.5 to 8.8 minutes into the next), whatever the time of day.
        streamed_in_chunks(floor_to(now_ms(), H) + H + 5 * M + 30_000, "inside");
    }

    /// The same across an hour's end: at a 1-minute step the minutes before the boundary
    /// were read from the hour row, whose time is before the range (110 of 170 probes).
    #[test]
    fn a_series_streamed_across_an_hours_end_counts_every_probe_once() {
        streamed_in_chunks(floor_to(now_ms(), H) + H - 90_000, "across");
    }

    /// Review of 94ce174: a file begun in the middle of an hour since rolled up, read at a
    /// 1-minute step from that hour's start (or earlier): every minute row is there, yet the
    /// minutes before the next whole hour come from the hour row, all in the one step of the
    /// hour's first minute (1,800 probes at 12:00, none from 12:30 to 12:59).
    #[test]
    fn a_minute_series_from_a_whole_hour_puts_each_minute_in_its_own_step() {
        let h1 = floor_to(now_ms(), H) + H;
        let t0 = h1 + 30 * M;
        let dir = std::env::temp_dir().join(format!("netpulse-unit-grid-midhour-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let path = dir.join("h.db");
        // 40 minutes of one-second intervals from half past; the hour is rolled up at its end.
        writer::replay(
            Store::open(&path, Retention::default()).unwrap(),
            (1..=2400).map(|n| report(t0 + n as i64 * 1000, n as u64)),
        );
        let r = Reader::open(&path).unwrap();
        let id = r.targets().unwrap()[0].id;
        for from in [h1, h1 - H] {
            let points = r.series_on(id, &Grid::aligned(from, t0 + 40 * M, M)).unwrap();
            let sent: Vec<u64> = points.iter().map(|p| p.sent).collect();
            assert_eq!(sent.iter().sum::<u64>(), 2399, "from {from}: every probe once");
            let at = |t: i64| points.iter().find(|p| p.t_ms == t).map(|p| p.sent);
            assert_eq!(at(h1), Some(0), "from {}: nothing was recorded in the hour's first minute", from - h1);
            assert_eq!(at(t0 + 10 * M), Some(60), "from {}: a minute of probes in 12:40", from - h1);
        }
        let _ = std::fs::remove_dir_all(&dir);
    }

    fn streamed_in_chunks(t0: i64, name: &str) {
        let dir = std::env::temp_dir().join(format!("netpulse-unit-grid-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let path = dir.join("h.db");
        // 200 one-second intervals from the middle of a minute (minutes close and are packed).
        writer::replay(
            Store::open(&path, Retention::default()).unwrap(),
            (1..=200).map(|n| report(t0 + n as i64 * 1000, n as u64)),
        );
        let r = Reader::open(&path).unwrap();
        let id = r.targets().unwrap()[0].id;
        let (from, to) = (t0 + 20_500, t0 + 190_500);
        for step in [1000, 7000, M, 2 * M, H] {
            let grid = Grid::aligned(from, to, step);
            let points = r.series_on(id, &grid).unwrap();
            assert_eq!(points.len() as u64, grid.len());
            assert!(points.iter().all(|p| p.t_ms % step == 0), "step {step}: on the grid");
            assert_eq!(points.iter().map(|p| p.sent).sum::<u64>(), 170, "step {step}: the probes at 21 s to 190 s");
            assert_eq!(points.iter().map(|p| p.received).sum::<u64>(), 170);
            assert_eq!(points.first().map(|p| p.partial), Some(from % step != 0), "step {step}");
        }
        // Read a few steps at a time, the sum is the same.
        let grid = Grid::aligned(from, to, 1000);
        let mut sent = 0;
        let mut n = 0;
        r.each_step(id, &grid, |_, a| {
            sent += a.sent;
            n += 1;
            Ok::<(), HistoryError>(())
        })
        .unwrap();
        assert_eq!((sent, n), (170, grid.len()));
        assert!(r.has_data(id, from, to).unwrap());
        assert!(!r.has_data(id, t0 + 300_000, t0 + 400_000).unwrap(), "after the last interval");
        assert!(!r.has_data(id, t0 - H, t0).unwrap(), "before the first");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
