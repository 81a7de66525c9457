//! The health feed, a sink: under `up`, the monitor's probes of a balancer's backends are its
//! health checks. Each report's result for a backend goes into that balancer's
//! [`HealthState`] (the rules live in `balance`); when the rotation changes, the backend set is
//! replaced whole, so the data path never waits. Under the `measured` strategy the same probes'
//! round trips and losses also set each backend's weight ([`Measured`]), recomputed each
//! report, swapped in the same way and explained in the balancer's statistics.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use tokio::sync::broadcast;

use crate::balance::measured::Measured;
use crate::balance::{BackendSet, Check, HealthRules, HealthState, Transition};
use crate::monitor::report::{Report, TargetId, TargetReport};
use crate::probe::{Outcome, Sample};
use crate::stats::traffic::BalancerStats;

/// One balancer whose backends follow the probes.
#[derive(Debug)]
pub struct Watched {
    pub name: String,
    pub set: Arc<ArcSwap<BackendSet>>,
    /// Each backend and the monitor target that probes it.
    pub probes: Vec<(SocketAddr, TargetId)>,
    /// Where changes are noted for the sinks (the balancer's statistics).
    pub stats: Option<Arc<BalancerStats>>,
    /// Under the `measured` strategy, how often the backends are probed: their probes then set
    /// their weights too.
    pub measure: Option<Duration>,
}

/// One balancer as the feed follows it.
#[derive(Debug)]
struct Follow {
    watched: Watched,
    health: HealthState,
    measured: Option<Weights>,
}

/// A `measured` balancer's probe results, and the factors last logged per backend.
#[derive(Debug)]
struct Weights {
    probes: Measured,
    logged: HashMap<SocketAddr, f64>,
}

/// Feeds reports into balancers.
#[derive(Debug)]
pub struct HealthFeed {
    balancers: Vec<Follow>,
    /// Per target, the newest probe already judged (sequence number, verdict), so a probe that
    /// two reports show is counted once.
    judged: HashMap<TargetId, (u64, bool)>,
}

/// What a probe says about a backend as a health check: no answer is `Lost` (a datagram may
/// be), a refusal, reset or 5xx is `Failed`; a probe we could not make (out of descriptors
/// here) says nothing.
pub fn check_of(sample: &Sample) -> Option<Check> {
    match sample.outcome {
        _ if sample.up() => Some(Check::Passed),
        Outcome::Local(_) => None,
        Outcome::Timeout => Some(Check::Lost),
        _ => Some(Check::Failed),
    }
}

/// What the newest probe of a target found, in words.
fn why_down(t: &TargetReport) -> String {
    match t.newest.as_ref().map(|s| &s.outcome) {
        Some(Outcome::Timeout) => "no answer in time".into(),
        Some(Outcome::Failed(e)) => e.clone(),
        Some(Outcome::Status(code)) => format!("answered {code}"),
        _ if !t.summary.up => "its link is down".into(),
        _ => "failed".into(),
    }
}

/// The check a report's line stands for, unless it was judged already. A target the monitor
/// reports down although its probe passed (its link is down) has failed.
fn new_check(judged: &mut HashMap<TargetId, (u64, bool)>, t: &TargetReport) -> Option<Check> {
    let newest = t.newest.as_ref()?;
    let key = (newest.seq, t.summary.up);
    if judged.insert(t.id, key) == Some(key) {
        return None;
    }
    Some(match check_of(newest)? {
        Check::Passed if !t.summary.up => Check::Failed,
        c => c,
    })
}

impl HealthFeed {
    /// `rules` gives each balancer its fall/rise (and whether lost checks are tolerated).
    pub fn new(balancers: Vec<(Watched, HealthRules)>) -> Self {
        let balancers = balancers
            .into_iter()
            .map(|(watched, rules)| {
                let addrs: Vec<SocketAddr> = watched.set.load().backends().iter().map(|b| b.addr).collect();
                let health = HealthState::starting_from(&watched.set.load(), rules);
                let measured = watched
                    .measure
                    .map(|interval| Weights { probes: Measured::new(&addrs, interval), logged: HashMap::new() });
                Follow { watched, health, measured }
            })
            .collect();
        Self { balancers, judged: HashMap::new() }
    }

    /// Applies every report until the monitor ends.
    pub async fn follow(mut self, reports: broadcast::Receiver<Arc<Report>>) {
        // A missed report is a missed round of checks; the next one counts.
        crate::monitor::report::each_report(reports, |report| self.apply(&report)).await
    }

    /// Records each backend's newest probe result; swaps the set of every balancer whose
    /// rotation changed, and says why on stderr. Under `measured`, also takes every probe since
    /// the last report into the backends' weights and swaps those in.
    pub fn apply(&mut self, report: &Report) {
        let mut checks: HashMap<TargetId, Option<Check>> = HashMap::new();
        for Follow { watched: w, health, measured } in &mut self.balancers {
            let mut changes = Vec::new();
            for &(addr, id) in &w.probes {
                let Some(t) = report.target(id) else { continue };
                // A target two balancers share is judged once per report, for both.
                let check = *checks.entry(id).or_insert_with(|| new_check(&mut self.judged, t));
                if let Some(check) = check {
                    changes.extend(health.observe(addr, check));
                }
                if let Some(m) = measured.as_mut() {
                    // Each probe is in the report after it settled, and in that one only.
                    for p in &t.probes {
                        m.probes.observe(addr, p.rtt_ms);
                    }
                }
            }
            if !changes.is_empty() {
                // The rotation first, then the word: once a change is said, it holds.
                let rotation = health.rotation();
                w.set.rcu(|current| current.with_health_of(&rotation));
                announce(w, report, &changes);
            }
            if let Some(m) = measured {
                weigh(w, m);
            }
        }
    }
}

/// Says on stderr (and in the balancer's statistics) why backends left or joined the rotation.
fn announce(w: &Watched, report: &Report, changes: &[Transition]) {
    for change in changes {
        match change {
            Transition::Down(a) => {
                let why = w
                    .probes
                    .iter()
                    .find(|(b, _)| b == a)
                    .and_then(|(_, id)| report.target(*id))
                    .map_or_else(String::new, |t| format!(" (last check: {})", why_down(t)));
                if let Some(stats) = &w.stats {
                    stats.note(*a, format!("out of rotation{why}"));
                }
                tracing::warn!("{}: backend {a} is down, out of rotation{why}", w.name)
            }
            Transition::Up(a) => {
                if let Some(stats) = &w.stats {
                    stats.note(*a, "back in rotation: passes its checks");
                }
                tracing::info!("{}: backend {a} is back in rotation", w.name)
            }
            Transition::FailOpen => {
                tracing::warn!("{}: every backend fails its probe; keeping all in rotation", w.name)
            }
            Transition::FailOpenEnded => {
                tracing::info!("{}: a backend passes its probes again; only healthy ones in rotation", w.name)
            }
        }
    }
}

/// Sets a `measured` balancer's weights from its probes: swaps the set whole when a factor
/// changed, explains every backend's weight in the statistics, and logs a factor that moved by
/// a quarter or more since it was last logged (so noise near a value does not flood the log).
fn weigh(w: &Watched, m: &mut Weights) {
    let factors = m.probes.factors();
    let pairs: Vec<(SocketAddr, f64)> = factors.iter().map(|(a, f)| (*a, f.factor)).collect();
    // Most reports change no factor (they are in hundredths): then nothing is swapped.
    if w.set.load().backends().iter().any(|b| pairs.iter().any(|&(a, f)| a == b.addr && b.measured != f)) {
        w.set.rcu(|current| current.with_measured(&pairs));
    }
    let set = w.set.load();
    for (addr, f) in &factors {
        let configured = set.backends().iter().find(|b| b.addr == *addr).map_or(1, |b| b.weight);
        let why = f.explain(configured);
        let last = m.logged.entry(*addr).or_insert(1.0);
        if (f.factor - *last).abs() >= 0.25 {
            tracing::info!("{}: backend {addr} {why}", w.name);
            *last = f.factor;
        }
        if let Some(stats) = &w.stats {
            stats.explain_weight(*addr, why);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::balance::measured::FLOOR;
    use crate::monitor::report::{Connectivity, TargetReport};
    use crate::probe::ProbeKind;
    use crate::stats::Window;

    /// A report whose targets' newest probes (number `seq`) passed or were refused.
    fn report(seq: u64, ups: &[(usize, bool)]) -> Report {
        let targets = ups
            .iter()
            .map(|&(id, up)| {
                let outcome = if up { Outcome::Http(200) } else { Outcome::Failed("refused".into()) };
                let sample = Sample { seq, rtt: None, outcome };
                let mut w = Window::new(1);
                w.push(sample);
                TargetReport::from_window(TargetId(id), &format!("t{id}"), ProbeKind::Http, &w)
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
            stats: None,
            measure: None,
        };
        let mut feed = HealthFeed::new(vec![(watched, HealthRules::default())]);
        let healthy = || set.load().backends().iter().map(|b| b.healthy).collect::<Vec<bool>>();
        for seq in 1..=3 {
            feed.apply(&report(seq, &[(5, true), (6, false), (7, false)]));
        }
        assert_eq!(healthy(), vec![true, false]);
        for seq in 4..=5 {
            feed.apply(&report(seq, &[(5, true), (6, false), (7, true)]));
        }
        assert_eq!(healthy(), vec![true, true]);
        // Everything failing: all stay in rotation (fail open).
        for seq in 6..=8 {
            feed.apply(&report(seq, &[(5, false), (7, false)]));
        }
        assert_eq!(healthy(), vec![true, true], "all down: fail open");
        // A backend no report mentions keeps its state.
        feed.apply(&report(9, &[(5, true)]));
        feed.apply(&report(10, &[(5, true)]));
        assert_eq!(healthy(), vec![true, false]);
    }

    #[test]
    fn a_probe_we_could_not_make_says_nothing_about_the_backend() {
        let ours = Sample { seq: 1, rtt: None, outcome: Outcome::Local("Too many open files".into()) };
        assert_eq!(check_of(&ours), None);
        let theirs = Sample { seq: 1, rtt: None, outcome: Outcome::Failed("Connection refused".into()) };
        assert_eq!(check_of(&theirs), Some(Check::Failed));
    }

    #[test]
    fn a_probe_two_reports_show_counts_once() {
        let addrs: Vec<SocketAddr> = vec!["127.0.0.1:1".parse().unwrap(), "127.0.0.1:2".parse().unwrap()];
        let set = Arc::new(ArcSwap::from_pointee(BackendSet::new(&addrs)));
        let watched = Watched {
            name: "web".into(),
            set: set.clone(),
            probes: vec![(addrs[1], TargetId(1))],
            stats: None,
            measure: None,
        };
        let mut feed = HealthFeed::new(vec![(watched, HealthRules::default())]);
        // The same failed probe (seq 1) in three reports: one failure, not three.
        for _ in 0..3 {
            feed.apply(&report(1, &[(1, false)]));
        }
        assert!(set.load().backends()[1].healthy);
        feed.apply(&report(2, &[(1, false)]));
        feed.apply(&report(3, &[(1, false)]));
        assert!(!set.load().backends()[1].healthy);
    }

    /// A report whose targets each settled these probes since the last one (RTT in ms, or
    /// lost), all of them up.
    fn probed(seq: u64, probes: &[(usize, &[Option<f64>])]) -> Report {
        let mut r = report(seq, &probes.iter().map(|&(id, _)| (id, true)).collect::<Vec<_>>());
        for (t, (_, ps)) in r.targets.iter_mut().zip(probes) {
            t.probes = ps
                .iter()
                .enumerate()
                .map(|(i, rtt)| crate::monitor::report::ProbePoint {
                    seq: seq * 100 + i as u64,
                    rtt_ms: *rtt,
                    up: rtt.is_some(),
                    lost: rtt.is_none(),
                    sent: None,
                })
                .collect();
        }
        r
    }

    #[test]
    fn under_measured_the_probes_set_the_weights_and_the_statistics_say_why() {
        use crate::stats::traffic::{BalancerStats, Proto};
        let addrs: Vec<SocketAddr> =
            vec!["127.0.0.1:1".parse().unwrap(), "127.0.0.1:2".parse().unwrap(), "127.0.0.1:3".parse().unwrap()];
        let set = Arc::new(ArcSwap::from_pointee(
            BackendSet::weighted(&addrs, &[1, 1, 4]).with_strategy(crate::balance::Strategy::Measured),
        ));
        let stats = Arc::new(BalancerStats::new("web", Proto::Http, "measured", set.clone()));
        let watched = Watched {
            name: "web".into(),
            set: set.clone(),
            probes: vec![(addrs[0], TargetId(0)), (addrs[1], TargetId(1)), (addrs[2], TargetId(2))],
            stats: Some(stats.clone()),
            measure: Some(Duration::from_secs(1)),
        };
        let mut feed = HealthFeed::new(vec![(watched, HealthRules::default())]);
        let factors = || set.load().backends().iter().map(|b| b.measured).collect::<Vec<f64>>();
        // Before any probe settled: everyone weighs what is configured.
        feed.apply(&report(1, &[(0, true), (1, true), (2, true)]));
        assert_eq!(factors(), vec![1.0, 1.0, 1.0]);
        let snap = stats.snapshot(std::time::Instant::now());
        assert_eq!(snap.backends[2].weight_why.as_deref(), Some("weight 4: not measured yet"));
        // A report of two probes each: 0.5 ms, 20.5 ms, and 0.5 ms with half lost.
        for seq in 2..=20 {
            feed.apply(&probed(
                seq,
                &[(0, &[Some(0.5), Some(0.5)]), (1, &[Some(20.5), Some(20.5)]), (2, &[Some(0.5), None])],
            ));
        }
        assert_eq!(factors(), vec![1.0, 0.07, FLOOR]);
        let snap = stats.snapshot(std::time::Instant::now());
        let b = &snap.backends;
        assert_eq!(b[0].weight_why.as_deref(), Some("weight 1: best (rtt 0.5 ms, no loss)"));
        assert_eq!(b[1].weight_why.as_deref(), Some("weight 0.07: rtt 20 ms (41× the median), no loss"));
        assert_eq!(b[2].weight_why.as_deref(), Some("weight 0.2 (4 × 0.05), the floor: rtt 0.5 ms, loss 50%"));
        assert_eq!((b[2].weight, b[2].measured, b[2].effective_weight), (4, FLOOR, 4.0 * FLOOR));
        // The slow one is fast again: within 16 probes (two a report) it weighs most of its share.
        for seq in 21..=28 {
            feed.apply(&probed(
                seq,
                &[(0, &[Some(0.5), Some(0.5)]), (1, &[Some(0.5), Some(0.5)]), (2, &[Some(0.5), None])],
            ));
        }
        assert!(factors()[1] >= 0.8, "{:?}", factors());
    }

    #[test]
    fn without_measured_the_weights_stay_as_configured() {
        let addrs: Vec<SocketAddr> = vec!["127.0.0.1:1".parse().unwrap(), "127.0.0.1:2".parse().unwrap()];
        let set = Arc::new(ArcSwap::from_pointee(BackendSet::new(&addrs)));
        let watched = Watched {
            name: "web".into(),
            set: set.clone(),
            probes: vec![(addrs[0], TargetId(0)), (addrs[1], TargetId(1))],
            stats: None,
            measure: None,
        };
        let mut feed = HealthFeed::new(vec![(watched, HealthRules::default())]);
        for seq in 1..=10 {
            feed.apply(&probed(seq, &[(0, &[Some(0.5)]), (1, &[Some(50.0)])]));
        }
        assert!(set.load().backends().iter().all(|b| b.measured == 1.0));
    }
}
