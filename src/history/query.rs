//! Reading the history: a target's aggregate over any range, its per-step series, its outages,
//! and the events. Each part of a range is read from the coarsest level the step allows that
//! holds it (hours, minutes, raw intervals), from finer levels where the coarse one is not
//! complete yet, and from coarser ones where the finer were pruned. Percentiles always come
//! from merged histograms.

use std::path::{Path, PathBuf};

use rusqlite::{Connection, params};
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
            // Older than the oldest full hour of minutes, the hours take over.
            // And never inside an hour: the hour row holding the cut would count again
            // what the finer level already read.
            Source::Minutes => {
                b.minutes.map_or(upper, |t| ceil_to(t, HOUR_MS).min(b.rolled).min(floor_to(upper, HOUR_MS)))
            }
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

/// One step of a series, as the JSON API and `--format json|csv` give it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Point {
    /// Start of the step (RFC 3339 UTC) and in ms since the epoch.
    pub time: String,
    pub t_ms: i64,
    pub sent: u64,
    pub received: u64,
    pub loss_pct: Option<f64>,
    pub rtt_min_ms: Option<f64>,
    pub rtt_avg_ms: Option<f64>,
    pub rtt_max_ms: Option<f64>,
    pub rtt_p50_ms: Option<f64>,
    pub rtt_p95_ms: Option<f64>,
    pub rtt_p99_ms: Option<f64>,
    pub jitter_ms: Option<f64>,
}

impl Point {
    pub fn new(t: i64, a: &Agg) -> Self {
        Self {
            time: rfc3339(t),
            t_ms: t,
            sent: a.sent,
            received: a.received,
            loss_pct: a.loss_pct(),
            rtt_min_ms: a.rtt_min_ms(),
            rtt_avg_ms: a.rtt_avg_ms(),
            rtt_max_ms: a.rtt_max_ms(),
            rtt_p50_ms: a.quantile_ms(0.50),
            rtt_p95_ms: a.quantile_ms(0.95),
            rtt_p99_ms: a.quantile_ms(0.99),
            jitter_ms: a.jitter_ms(),
        }
    }
}

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
            rolled: rolled_until(&self.conn)?.unwrap_or(i64::MIN),
        })
    }

    /// The target's aggregates over [from, to) in steps of `step` ms (at most `max_points`),
    /// reading levels as fine as `level_step` needs. Steps with no data are empty aggregates.
    pub fn steps(
        &self,
        series: i64,
        from: i64,
        to: i64,
        step: i64,
        level_step: i64,
    ) -> Result<Vec<(i64, Agg)>, HistoryError> {
        let step = step.max(1);
        let n = usize::try_from((to - from + step - 1) / step).unwrap_or(0);
        let mut out: Vec<(i64, Agg)> = (0..n).map(|i| (from + i as i64 * step, Agg::default())).collect();
        if self.empty || n == 0 {
            return Ok(out);
        }
        let slot = |t: i64| usize::try_from((t - from) / step).ok().filter(|&i| i < n);
        let run = |out: &mut Vec<(i64, Agg)>| -> rusqlite::Result<()> {
            let b = self.bounds(series, "target_rollup")?;
            let mut records: Vec<(i64, Record)> = Vec::new();
            for (source, a, z) in plan(from, to, level_step, &b) {
                match source {
                    Source::Journal => records.extend(read_journal(&self.conn, series, a, z)?),
                    Source::Raw => records.extend(read_raw(&self.conn, series, a, z)?),
                    Source::Minutes | Source::Hours => {
                        let res = if source == Source::Minutes { 60 } else { 3600 };
                        for (t, agg) in read_target_rollups(&self.conn, res, series, a, z)? {
                            if let Some(i) = slot(t) {
                                out[i].1.merge(&agg);
                            }
                        }
                    }
                }
            }
            records.sort_by_key(|r| r.0);
            let mut last_rtt = None;
            for (t, r) in records {
                if let (Some(i), Record::Target(ti)) = (slot(t), &r) {
                    out[i].1.add_interval(ti, &mut last_rtt);
                }
            }
            Ok(())
        };
        run(&mut out).map_err(|e| self.err(e))?;
        Ok(out)
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
        // A hundredth of the range is fine enough a level: edges land within 1 %.
        let steps = self.steps(series, from, to, (to - from).max(1), (to - from) / 100)?;
        Ok(steps.into_iter().next().map(|s| s.1).unwrap_or_default())
    }

    /// The per-step series of a target, JSON-able (for `--format json` and an HTTP API).
    pub fn series(&self, series: i64, from: i64, to: i64, step: i64) -> Result<Vec<Point>, HistoryError> {
        Ok(self.steps(series, from, to, step, step)?.iter().map(|(t, a)| Point::new(*t, a)).collect())
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
        let b = Bounds { journal: Some(now - 20_000), raw: Some(now - 48 * H), minutes: Some(0), rolled: 100 * H };
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
        // Recording began 1m15s before an hour that has since been rolled up.
        let now = 100 * H + 10 * M;
        let b = Bounds {
            journal: Some(now - 20_000),
            raw: Some(100 * H - 75_000),
            minutes: Some(100 * H - 2 * M),
            rolled: 100 * H,
        };
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
        let b = Bounds { journal: None, raw: None, minutes: None, rolled: 5 * H };
        assert_eq!(plan(0, 6 * H, M, &b), vec![(Source::Hours, 0, 6 * H)]);
        let b = Bounds { journal: Some(5 * H + 10), raw: None, minutes: None, rolled: 5 * H };
        assert_eq!(
            plan(5 * H, 6 * H, 1000, &b),
            vec![(Source::Journal, 5 * H + 10, 6 * H), (Source::Hours, 5 * H, 5 * H + 10)]
        );
    }
}
