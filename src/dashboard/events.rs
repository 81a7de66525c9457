//! The event lines, a sink: under `up`, what changed between two reports — a target going
//! down or coming back, the connectivity verdict changing — as one log line each, so a person
//! watching the terminal (or a log file) learns of it without scraping `/metrics`.

use std::collections::HashMap;
use std::sync::Arc;

use tokio::sync::broadcast;

use crate::monitor::report::{Connectivity, Report, TargetId, TargetReport};
use crate::probe::Outcome;

/// What changed from one report to the next.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    TargetDown { target: String, why: String },
    TargetUp { target: String, rtt_ms: Option<f64> },
    Verdict { from: Connectivity, to: Connectivity, down: Vec<String> },
}

impl std::fmt::Display for Event {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::TargetDown { target, why } => write!(f, "target {target} is down ({why})"),
            Self::TargetUp { target, rtt_ms: Some(ms) } => write!(f, "target {target} is up again ({ms:.3} ms)"),
            Self::TargetUp { target, rtt_ms: None } => write!(f, "target {target} is up again"),
            Self::Verdict { from, to, down } if down.is_empty() => {
                write!(f, "connectivity: {} (was {})", name(*to), name(*from))
            }
            Self::Verdict { from, to, down } => {
                write!(f, "connectivity: {} (was {}); down: {}", name(*to), name(*from), down.join(", "))
            }
        }
    }
}

fn name(c: Connectivity) -> &'static str {
    match c {
        Connectivity::Connected => "connected",
        Connectivity::Degraded => "degraded",
        Connectivity::Disconnected => "disconnected",
    }
}

/// What a down target's newest probe found, in words.
pub fn why_down(t: &TargetReport) -> String {
    match t.newest.as_ref().map(|s| &s.outcome) {
        Some(Outcome::Timeout) => "no answer in time".into(),
        Some(Outcome::Failed(e)) | Some(Outcome::Local(e)) => e.clone(),
        Some(Outcome::Status(code)) => format!("answered {code}"),
        Some(_) => "its link is down".into(),
        None => "no probe yet".into(),
    }
}

/// Remembers the previous report's states to tell what changed.
#[derive(Debug, Default)]
pub struct Changes {
    up: HashMap<TargetId, bool>,
    verdict: Option<Connectivity>,
}

impl Changes {
    /// The events between the previous report and `r`. The first report sets the baseline and
    /// reports only what is already wrong (targets down, a verdict other than connected).
    pub fn of(&mut self, r: &Report) -> Vec<Event> {
        let mut events = Vec::new();
        for t in &r.targets {
            // A target with no probe settled yet has no state to report.
            if t.newest.is_none() {
                continue;
            }
            let before = self.up.insert(t.id, t.summary.up);
            match (before, t.summary.up) {
                (Some(true) | None, false) => {
                    events.push(Event::TargetDown { target: t.target.clone(), why: why_down(t) })
                }
                (Some(false), true) => {
                    events.push(Event::TargetUp { target: t.target.clone(), rtt_ms: t.summary.rtt_last_ms })
                }
                _ => {}
            }
        }
        // Before every target has been probed once, the verdict is not yet one.
        if r.targets.iter().any(|t| t.newest.is_none()) {
            return events;
        }
        let from = self.verdict.replace(r.connectivity);
        let changed = match from {
            Some(from) => from != r.connectivity,
            None => r.connectivity != Connectivity::Connected,
        };
        if changed {
            let down = r.targets.iter().filter(|t| !t.summary.up && t.newest.is_some()).map(|t| t.target.clone());
            events.push(Event::Verdict {
                from: from.unwrap_or(Connectivity::Connected),
                to: r.connectivity,
                down: down.collect(),
            });
        }
        events
    }
}

/// Logs every change until the monitor ends: down and disconnected as warnings, the rest as
/// information.
pub async fn follow(reports: broadcast::Receiver<Arc<Report>>) {
    let mut changes = Changes::default();
    crate::monitor::report::each_report(reports, |report| {
        for e in changes.of(&report) {
            match &e {
                Event::TargetDown { .. } => tracing::warn!("{e}"),
                Event::Verdict { to, .. } if *to != Connectivity::Connected => tracing::warn!("{e}"),
                _ => tracing::info!("{e}"),
            }
        }
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::probe::{ProbeKind, Sample};
    use crate::stats::Window;

    fn report(states: &[Option<bool>]) -> Report {
        let targets: Vec<TargetReport> = states
            .iter()
            .enumerate()
            .map(|(i, state)| {
                let mut w = Window::new(1);
                if let Some(up) = state {
                    let outcome = if *up { Outcome::Connected } else { Outcome::Failed("Connection refused".into()) };
                    let rtt = up.then(|| std::time::Duration::from_millis(2));
                    w.push(Sample { seq: 1, rtt, outcome });
                }
                TargetReport::from_window(TargetId(i), &format!("tcp://t{i}"), ProbeKind::Tcp, &w)
            })
            .collect();
        let connectivity = crate::monitor::report::verdict(&[], &targets);
        Report { time: String::new(), interfaces: vec![], targets, connectivity }
    }

    #[test]
    fn a_target_going_down_and_back_and_the_verdict_are_said_once_each() {
        let mut c = Changes::default();
        assert_eq!(c.of(&report(&[Some(true), Some(true)])), vec![]);
        let down = c.of(&report(&[Some(true), Some(false)]));
        assert_eq!(down.len(), 2, "{down:?}");
        assert_eq!(down[0].to_string(), "target tcp://t1 is down (Connection refused)");
        assert_eq!(down[1].to_string(), "connectivity: degraded (was connected); down: tcp://t1");
        assert_eq!(c.of(&report(&[Some(true), Some(false)])), vec![], "nothing new");
        let back = c.of(&report(&[Some(true), Some(true)]));
        assert_eq!(back[0].to_string(), "target tcp://t1 is up again (2.000 ms)");
        assert_eq!(back[1].to_string(), "connectivity: connected (was degraded)");
    }

    #[test]
    fn the_first_report_says_only_what_is_wrong_and_the_verdict_waits_for_every_first_probe() {
        let mut c = Changes::default();
        let first = c.of(&report(&[None, Some(false)]));
        assert_eq!(first, vec![Event::TargetDown { target: "tcp://t1".into(), why: "Connection refused".into() }]);
        let second = c.of(&report(&[Some(false), Some(false)]));
        assert_eq!(second.len(), 2, "{second:?}");
        assert!(matches!(second[1], Event::Verdict { to: Connectivity::Disconnected, .. }));
        assert_eq!(Changes::default().of(&report(&[None, Some(true)])), vec![]);
    }
}
