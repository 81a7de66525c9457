//! The health feed, a sink: under `up`, the monitor's probes of a balancer's backends are its
//! health checks. Each report's result for a backend goes into that balancer's
//! [`HealthState`] (the rules live in `balance`); when the rotation changes, the backend set is
//! replaced whole, so the data path never waits.

use std::net::SocketAddr;
use std::sync::Arc;

use arc_swap::ArcSwap;
use tokio::sync::broadcast;

use crate::balance::{BackendSet, HealthRules, HealthState, Transition};
use crate::monitor::report::{Report, TargetId};

/// One balancer whose backends follow the probes.
#[derive(Debug)]
pub struct Watched {
    pub name: String,
    pub set: Arc<ArcSwap<BackendSet>>,
    /// Each backend and the monitor target that probes it.
    pub probes: Vec<(SocketAddr, TargetId)>,
}

/// Feeds reports into balancers.
#[derive(Debug)]
pub struct HealthFeed {
    balancers: Vec<(Watched, HealthState)>,
}

impl HealthFeed {
    pub fn new(balancers: Vec<Watched>, rules: HealthRules) -> Self {
        let balancers = balancers
            .into_iter()
            .map(|w| {
                let addrs: Vec<SocketAddr> = w.set.load().backends().iter().map(|b| b.addr).collect();
                let state = HealthState::new(&addrs, rules);
                (w, state)
            })
            .collect();
        Self { balancers }
    }

    /// Applies every report until the monitor ends.
    pub async fn follow(mut self, mut reports: broadcast::Receiver<Arc<Report>>) {
        loop {
            match reports.recv().await {
                Ok(report) => self.apply(&report),
                // A missed report is a missed round of checks; the next one counts.
                Err(broadcast::error::RecvError::Lagged(_)) => {}
                Err(broadcast::error::RecvError::Closed) => return,
            }
        }
    }

    /// Records each backend's newest probe result; swaps the set of every balancer whose
    /// rotation changed, and says why on stderr.
    pub fn apply(&mut self, report: &Report) {
        for (w, state) in &mut self.balancers {
            let mut changes = Vec::new();
            for &(addr, id) in &w.probes {
                if let Some(t) = report.target(id) {
                    changes.extend(state.observe(addr, t.summary.up));
                }
            }
            if changes.is_empty() {
                continue;
            }
            for change in &changes {
                match change {
                    Transition::Down(a) => tracing::warn!("{}: backend {a} is down, out of rotation", w.name),
                    Transition::Up(a) => tracing::info!("{}: backend {a} is back in rotation", w.name),
                    Transition::FailOpen => {
                        tracing::warn!("{}: every backend fails its probe; keeping all in rotation", w.name)
                    }
                    Transition::FailOpenEnded => {
                        tracing::info!("{}: a backend passes its probes again; only healthy ones in rotation", w.name)
                    }
                }
            }
            w.set.store(Arc::new(state.rotation()));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::monitor::report::{Connectivity, TargetReport};
    use crate::probe::ProbeKind;
    use crate::stats::Window;

    fn report(ups: &[(usize, bool)]) -> Report {
        let targets = ups
            .iter()
            .map(|&(id, up)| {
                let mut summary = Window::new(1).summary();
                summary.up = up;
                TargetReport { id: TargetId(id), target: format!("t{id}"), probe: ProbeKind::Http, summary }
            })
            .collect();
        Report { time: String::new(), interfaces: vec![], targets, connectivity: Connectivity::Connected }
    }

    #[test]
    fn probes_take_backends_out_of_rotation_and_back_by_target_id() {
        let addrs: Vec<SocketAddr> = vec!["127.0.0.1:1".parse().unwrap(), "127.0.0.1:2".parse().unwrap()];
        let set = Arc::new(ArcSwap::from_pointee(BackendSet::new(&addrs)));
        // The backends are probed by targets 5 and 7; target 6 is somebody else's.
        let watched = Watched {
            name: "web".into(),
            set: set.clone(),
            probes: vec![(addrs[0], TargetId(5)), (addrs[1], TargetId(7))],
        };
        let mut feed = HealthFeed::new(vec![watched], HealthRules::default());
        let healthy = || set.load().backends().iter().map(|b| b.healthy).collect::<Vec<bool>>();
        for _ in 0..3 {
            feed.apply(&report(&[(5, true), (6, false), (7, false)]));
        }
        assert_eq!(healthy(), vec![true, false]);
        for _ in 0..2 {
            feed.apply(&report(&[(5, true), (6, false), (7, true)]));
        }
        assert_eq!(healthy(), vec![true, true]);
        // Everything failing: all stay in rotation (fail open).
        for _ in 0..3 {
            feed.apply(&report(&[(5, false), (7, false)]));
        }
        assert_eq!(healthy(), vec![true, true], "all down: fail open");
        // A backend no report mentions keeps its state.
        feed.apply(&report(&[(5, true)]));
        feed.apply(&report(&[(5, true)]));
        assert_eq!(healthy(), vec![true, false]);
    }
}
