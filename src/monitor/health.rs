//! Health from measurements: after each monitor report, every balancer's backend set is
//! replaced (whole, so the data path never waits) with the health its probes found.

use std::sync::Arc;

use arc_swap::ArcSwap;

use crate::balance::BackendSet;
use crate::monitor::live::Report;

/// One balancer's backends and the monitor target that probes each of them.
#[derive(Debug)]
pub struct Watched {
    pub name: String,
    pub set: Arc<ArcSwap<BackendSet>>,
    /// The target name (as reports print it) of each backend, in the set's order.
    pub targets: Vec<String>,
}

/// Feeds monitor reports into balancers.
#[derive(Debug, Default)]
pub struct HealthFeed {
    pub balancers: Vec<Watched>,
}

impl HealthFeed {
    /// Marks each backend up or down as its newest probe found it. If every backend of a
    /// balancer would be down, all stay in rotation (fail open): a balancer that refuses
    /// everything helps nobody, and the probes may be what is wrong.
    pub fn apply(&self, report: &Report) {
        for w in &self.balancers {
            let current = w.set.load();
            let found: Vec<Option<bool>> = w
                .targets
                .iter()
                .map(|t| report.targets.iter().find(|r| &r.target == t).map(|r| r.summary.up))
                .collect();
            let all_down = found.iter().all(|f| *f == Some(false));
            let mut next = (**current).clone();
            for (b, up) in current.backends().iter().zip(&found) {
                if let Some(up) = *up {
                    next.set_health(b.addr, up || all_down);
                }
            }
            if next != **current {
                for (old, new) in current.backends().iter().zip(next.backends()) {
                    if old.healthy != new.healthy {
                        let state = if new.healthy { "back in rotation" } else { "down, out of rotation" };
                        eprintln!("netpulse: {}: backend {} is {state}", w.name, new.addr);
                    }
                }
                if all_down {
                    eprintln!("netpulse: {}: every backend fails its probe; keeping all in rotation", w.name);
                }
                w.set.store(Arc::new(next));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::monitor::live::{Connectivity, TargetReport};
    use crate::stats::Window;

    fn report(ups: &[(&str, bool)]) -> Report {
        let targets = ups
            .iter()
            .map(|(t, up)| {
                let mut summary = Window::new(1).summary();
                summary.up = *up;
                TargetReport { target: (*t).to_string(), probe: "http", summary }
            })
            .collect();
        Report { time: String::new(), interfaces: vec![], targets, connectivity: Connectivity::Connected }
    }

    #[test]
    fn probes_take_backends_out_of_rotation_and_back() {
        let addrs: Vec<std::net::SocketAddr> = vec!["127.0.0.1:1".parse().unwrap(), "127.0.0.1:2".parse().unwrap()];
        let set = Arc::new(ArcSwap::from_pointee(BackendSet::new(&addrs)));
        let feed = HealthFeed {
            balancers: vec![Watched { name: "web".into(), set: set.clone(), targets: vec!["a".into(), "b".into()] }],
        };
        feed.apply(&report(&[("a", true), ("b", false)]));
        let healthy: Vec<bool> = set.load().backends().iter().map(|b| b.healthy).collect();
        assert_eq!(healthy, vec![true, false]);
        feed.apply(&report(&[("a", false), ("b", false)]));
        let healthy: Vec<bool> = set.load().backends().iter().map(|b| b.healthy).collect();
        assert_eq!(healthy, vec![true, true], "all down: fail open");
        feed.apply(&report(&[("a", true), ("b", true)]));
        assert!(set.load().backends().iter().all(|b| b.healthy));
        // A backend no report mentions keeps its state.
        feed.apply(&report(&[("a", false)]));
        let healthy: Vec<bool> = set.load().backends().iter().map(|b| b.healthy).collect();
        assert_eq!(healthy, vec![false, true]);
    }
}
