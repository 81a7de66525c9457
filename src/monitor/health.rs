//! Health from measurements: after each monitor report, every balancer's backend set is
//! replaced (whole, so the data path never waits) with the health its probes found. Like
//! HAProxy's `fall 3 rise 2`, a backend leaves after three failed probes in a row and returns
//! after two good ones, so a single lost probe does not move traffic.

use std::sync::{Arc, Mutex};

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

/// Consecutive failed probes that take a backend out of rotation.
pub const FALL: u32 = 3;
/// Consecutive good probes that bring it back.
pub const RISE: u32 = 2;

/// Feeds monitor reports into balancers.
#[derive(Debug, Default)]
pub struct HealthFeed {
    pub balancers: Vec<Watched>,
    /// Per balancer, per backend: the current run of (failed, good) probes.
    runs: Mutex<Vec<Vec<(u32, u32)>>>,
}

impl HealthFeed {
    pub fn new(balancers: Vec<Watched>) -> Self {
        let runs = balancers.iter().map(|w| vec![(0, 0); w.targets.len()]).collect();
        Self { balancers, runs: Mutex::new(runs) }
    }
}

impl HealthFeed {
    /// Marks each backend up or down as its newest probe found it. If every backend of a
    /// balancer would be down, all stay in rotation (fail open): a balancer that refuses
    /// everything helps nobody, and the probes may be what is wrong.
    pub fn apply(&self, report: &Report) {
        let mut runs = self.runs.lock().unwrap_or_else(|p| p.into_inner());
        for (w, run) in self.balancers.iter().zip(runs.iter_mut()) {
            let current = w.set.load();
            // What each backend's runs say now: Some(up) once a run is long enough.
            let verdicts: Vec<Option<bool>> = w
                .targets
                .iter()
                .zip(run.iter_mut())
                .map(|(t, (fails, oks))| {
                    let up = report.targets.iter().find(|r| &r.target == t)?.summary.up;
                    if up {
                        (*fails, *oks) = (0, *oks + 1);
                    } else {
                        (*fails, *oks) = (*fails + 1, 0);
                    }
                    if *fails >= FALL {
                        Some(false)
                    } else if *oks >= RISE {
                        Some(true)
                    } else {
                        None
                    }
                })
                .collect();
            let mut next = (**current).clone();
            for (b, v) in current.backends().iter().zip(&verdicts) {
                if let Some(up) = *v {
                    next.set_health(b.addr, up);
                }
            }
            let all_down = !next.is_empty() && next.backends().iter().all(|b| !b.healthy);
            if all_down {
                for b in current.backends() {
                    next.set_health(b.addr, true);
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
        let feed = HealthFeed::new(vec![Watched {
            name: "web".into(),
            set: set.clone(),
            targets: vec!["a".into(), "b".into()],
        }]);
        let healthy = || set.load().backends().iter().map(|b| b.healthy).collect::<Vec<bool>>();
        // One or two lost probes move nothing; the third takes b out.
        for _ in 0..2 {
            feed.apply(&report(&[("a", true), ("b", false)]));
            assert_eq!(healthy(), vec![true, true]);
        }
        feed.apply(&report(&[("a", true), ("b", false)]));
        assert_eq!(healthy(), vec![true, false]);
        // One good probe is not enough to come back; two are.
        feed.apply(&report(&[("a", true), ("b", true)]));
        assert_eq!(healthy(), vec![true, false]);
        feed.apply(&report(&[("a", true), ("b", true)]));
        assert_eq!(healthy(), vec![true, true]);
        // Everything failing: all stay in rotation (fail open).
        for _ in 0..3 {
            feed.apply(&report(&[("a", false), ("b", false)]));
        }
        assert_eq!(healthy(), vec![true, true], "all down: fail open");
        // A backend no report mentions keeps its state.
        for _ in 0..2 {
            feed.apply(&report(&[("a", true)]));
        }
        assert_eq!(healthy(), vec![true, true]);
    }
}
