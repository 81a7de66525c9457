//! `GET /api/v1/history`: the recorded series of targets over a range, as `netpulse history
//! --format json` gives them (the same points), for the page's time ranges. Read from the file
//! the monitor records into, read-only, on a blocking thread; a step chosen so a range has at
//! most [`POINTS_PER_TARGET`] points per target when none is asked for.

use std::path::Path;

use serde::Serialize;

use crate::history::query::{Grid, Point, fitting_step, usual_step};
use crate::history::{HistoryError, Reader, TimeSpec, rfc3339};

/// Points per target a range gets when no step is asked for.
pub const POINTS_PER_TARGET: u64 = 1000;
/// Points in one answer at most (all targets): about 20 MB of JSON.
pub const MAX_POINTS: u64 = 100_000;
/// Targets in one answer at most; the rest are counted in `omitted`.
pub const MAX_TARGETS: usize = 1000;

/// What was asked: `target` (repeatable; none: every target recorded in the range), `since`
/// (default 24h), `until` (default now) and `step` (default: one that fits).
#[derive(Debug, Clone, PartialEq)]
pub struct Query {
    pub targets: Vec<String>,
    pub since: TimeSpec,
    pub until: Option<TimeSpec>,
    pub step: Option<i64>,
}

impl Query {
    /// Reads the query string (already split and percent-decoded into pairs). A bad value is
    /// one line naming the parameter and what it takes.
    pub fn parse(pairs: impl IntoIterator<Item = (String, String)>) -> Result<Self, String> {
        let mut q = Query {
            targets: Vec::new(),
            since: TimeSpec::Ago(std::time::Duration::from_secs(86_400)),
            until: None,
            step: None,
        };
        for (key, value) in pairs {
            let value = value.trim();
            match key.as_str() {
                "target" => q.targets.push(value.to_string()),
                "since" => q.since = value.parse().map_err(|e| format!("since={value}: {e}"))?,
                "until" => q.until = Some(value.parse().map_err(|e| format!("until={value}: {e}"))?),
                "step" => {
                    let d = crate::config::parse_duration(value).map_err(|e| format!("step={value}: {e}"))?;
                    if d.as_millis() < 1000 {
                        return Err(format!("step={value} is too fine; give at least 1s"));
                    }
                    q.step = Some(i64::try_from(d.as_millis()).unwrap_or(i64::MAX));
                }
                other => return Err(format!("unknown parameter {other:?}; give target, since, until or step")),
            }
        }
        if q.targets.len() > MAX_TARGETS {
            return Err(format!("{} targets asked for; at most {MAX_TARGETS} at once", q.targets.len()));
        }
        Ok(q)
    }
}

/// The answer: whether history is on, the range and step, and each target's points.
#[derive(Debug, Serialize)]
pub struct Answer {
    /// `on`, or `off` (the monitor records none: `--no-history`, `enabled = false`, or a file
    /// it could not use); then nothing else is said.
    pub history: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub since: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub until: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub step_s: Option<f64>,
    pub targets: Vec<TargetSeries>,
    /// Targets recorded in the range but left out (more than [`MAX_TARGETS`]).
    #[serde(skip_serializing_if = "is_zero")]
    pub omitted: usize,
    /// Targets asked for by name that were never recorded.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub not_recorded: Vec<String>,
}

fn is_zero(n: &usize) -> bool {
    *n == 0
}

impl Answer {
    pub fn off() -> Self {
        Answer {
            history: "off",
            since: None,
            until: None,
            step_s: None,
            targets: Vec::new(),
            omitted: 0,
            not_recorded: Vec::new(),
        }
    }
}

/// One target's series.
#[derive(Debug, Serialize)]
pub struct TargetSeries {
    pub target: String,
    pub probe: String,
    pub series: Vec<Point>,
}

/// Why there is no answer.
#[derive(Debug)]
pub enum Refusal {
    /// The query cannot be answered as asked (400).
    Bad(String),
    /// The file cannot be read (503).
    Unreadable(HistoryError),
}

/// Answers `q` from the file at `path`, `now` being ms since the epoch. Blocking: call it on
/// a blocking thread.
pub fn answer(path: &Path, q: &Query, now: i64) -> Result<Answer, Refusal> {
    let from = q.since.at(now);
    let to = q.until.map_or(now, |u| u.at(now));
    if from >= to {
        return Err(Refusal::Bad(format!(
            "since {} is not before until {}; give a range that runs forward",
            rfc3339(from),
            rfc3339(to)
        )));
    }
    let reader = Reader::open(path).map_err(Refusal::Unreadable)?;
    let recorded = reader.targets().map_err(Refusal::Unreadable)?;
    let mut not_recorded = Vec::new();
    let mut omitted = 0;
    let mut chosen = Vec::new();
    if q.targets.is_empty() {
        for t in &recorded {
            if reader.has_data(t.id, from, to).map_err(Refusal::Unreadable)? {
                if chosen.len() < MAX_TARGETS {
                    chosen.push(t.clone());
                } else {
                    omitted += 1;
                }
            }
        }
    } else {
        for name in &q.targets {
            match recorded.iter().find(|t| &t.target == name) {
                Some(t) if !chosen.contains(t) => chosen.push(t.clone()),
                Some(_) => {}
                None => not_recorded.push(name.clone()),
            }
        }
    }
    let n = chosen.len().max(1) as u64;
    let most = POINTS_PER_TARGET.min(MAX_POINTS / n).max(1);
    let step = match q.step {
        // Even the coarsest usual step may not fit a range of centuries: the cap holds anyway.
        None => {
            let step = fitting_step(from, to, most);
            let points = Grid::aligned(from, to, step).len();
            if points.saturating_mul(n) > MAX_POINTS {
                return Err(Refusal::Bad(format!(
                    "this range gives {points} points per target at its coarsest step for {n} target(s): more \
                     than {MAX_POINTS} in one answer; ask for a shorter range or fewer targets"
                )));
            }
            step
        }
        Some(step) => {
            let points = Grid::aligned(from, to, step).len();
            if points.saturating_mul(n) > MAX_POINTS {
                let coarser = usual_step(from, to, step + 1, MAX_POINTS / n)
                    .map_or_else(String::new, |s| format!("step={}s or coarser, or ", s / 1000));
                return Err(Refusal::Bad(format!(
                    "step={}s gives {points} points per target over this range for {n} target(s): more than \
                     {MAX_POINTS} in one answer; ask for {coarser}fewer targets or a shorter range",
                    step as f64 / 1000.0
                )));
            }
            step
        }
    };
    let grid = Grid::aligned(from, to, step);
    let mut targets = Vec::with_capacity(chosen.len());
    for t in chosen {
        let series = reader.series_on(t.id, &grid).map_err(Refusal::Unreadable)?;
        targets.push(TargetSeries { target: t.target, probe: t.probe, series });
    }
    Ok(Answer {
        history: "on",
        since: Some(rfc3339(from)),
        until: Some(rfc3339(to)),
        step_s: Some(step as f64 / 1000.0),
        targets,
        omitted,
        not_recorded,
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn parse(q: &str) -> Result<Query, String> {
        Query::parse(q.split('&').filter(|p| !p.is_empty()).map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (k.to_string(), v.to_string())
        }))
    }

    #[test]
    fn a_query_names_targets_a_range_and_a_step() {
        let q = parse("target=udp://a:1&target=tcp://b:2&since=7d&until=2026-11-22T03:00:00Z&step=1m").unwrap();
        assert_eq!(q.targets, ["udp://a:1", "tcp://b:2"]);
        assert_eq!(q.since, TimeSpec::Ago(std::time::Duration::from_secs(7 * 86_400)));
        assert_eq!(q.until, Some(TimeSpec::At(1_795_316_400_000)));
        assert_eq!(q.step, Some(60_000));
        let q = parse("").unwrap();
        assert_eq!((q.targets.len(), q.since, q.until, q.step), (0, "24h".parse().unwrap(), None, None));
        assert_eq!(parse("since=2w").unwrap().since, "14d".parse().unwrap());
    }

    #[test]
    fn a_bad_parameter_is_one_line_that_names_it() {
        for (q, says) in [
            ("since=yesterday", "since=yesterday: 'yesterday' is not a time"),
            ("until=soon", "until=soon:"),
            ("step=5ms", "step=5ms is too fine"),
            ("step=x", "step=x:"),
            ("targets=a", "unknown parameter \"targets\""),
        ] {
            let e = parse(q).unwrap_err();
            assert!(e.starts_with(says) && !e.contains('\n'), "{q}: {e}");
        }
    }

    #[test]
    fn a_range_that_runs_backwards_is_refused_before_the_file_is_read_and_a_missing_file_is_unreadable() {
        let nowhere = Path::new("/nonexistent/netpulse/h.db");
        let q = parse("since=1h&until=2h").unwrap();
        assert!(matches!(answer(nowhere, &q, 10_000_000_000), Err(Refusal::Bad(e)) if e.contains("is not before")));
        let q = parse("since=30d").unwrap();
        assert!(matches!(answer(nowhere, &q, 10_000_000_000), Err(Refusal::Unreadable(HistoryError::Missing { .. }))));
    }

    #[test]
    fn history_off_says_so_and_nothing_more() {
        let v = serde_json::to_value(Answer::off()).unwrap();
        assert_eq!(v, serde_json::json!({"history": "off", "targets": []}));
    }
}
