//! What a balancer's next generation takes over from the running one when a reload changes
//! it: the listening sockets while the address stays (the very same sockets, so nothing
//! waiting in their queues is lost and no port is ever unbound), the statistics (counters go
//! on), and — while the backend list stays the same — the live backend set itself, so health,
//! ejections and an operator's marks go on untouched. A changed list gets a set of its own,
//! which [`carry`] fills with what the running one knew of the backends that stay.

use std::net::SocketAddr;
use std::sync::Arc;

use arc_swap::ArcSwap;

use crate::balance::BackendSet;
use crate::stats::traffic::BalancerStats;

/// Handed to a balancer's `bind_with` to make it the next generation of a running one.
#[derive(Debug)]
pub struct Takeover<S> {
    /// The running generation's sockets (clones of them), to serve instead of binding anew.
    pub sockets: Option<Vec<S>>,
    /// The running generation's statistics, to count on into.
    pub stats: Arc<BalancerStats>,
    /// The running generation's live set, to share (only for the same backends in the same order).
    pub set: Option<Arc<ArcSwap<BackendSet>>>,
    /// The running generation's picker: shared with the same backends (its rotation and load
    /// counts go on), otherwise its rotation continues in the new one.
    pub picker: Option<Arc<crate::balance::Picker>>,
}

/// A balancer's backends and statistics, new or taking over from the running generation what a
/// [`Takeover`] hands on: its live set (same backends), its picker and its statistics.
pub fn backends_and_stats(
    name: &str,
    set: BackendSet,
    rules: crate::balance::OutlierRules,
    (proto, strategy): (crate::stats::traffic::Proto, &str),
    (shared, picker, previous): TakenOver,
) -> (super::backends::Backends, Arc<BalancerStats>) {
    let mut backends = super::backends::Backends::new(name, set, rules);
    let same_backends = shared.is_some();
    if let Some(set) = shared {
        backends.share(set);
    }
    if let Some(picker) = picker {
        backends.take_over(picker, same_backends);
    }
    let stats = match previous {
        Some(stats) => {
            stats.follow(backends.set());
            stats.set_strategy(strategy);
            stats
        }
        None => Arc::new(BalancerStats::new(name, proto, strategy, backends.set())),
    };
    (backends, stats)
}

/// What a next generation takes over besides its sockets: the live set, the picker, the
/// statistics.
pub type TakenOver =
    (Option<Arc<ArcSwap<BackendSet>>>, Option<Arc<crate::balance::Picker>>, Option<Arc<BalancerStats>>);

/// Clones of `sockets` (the same sockets, new descriptors) for the next generation.
pub fn share<S>(sockets: &[S], clone: impl Fn(&S) -> std::io::Result<S>) -> std::io::Result<Vec<S>> {
    sockets.iter().map(clone).collect()
}

/// `next` with what `current` knows of each backend both have: its health, its ejection, an
/// operator's drain or disable, and its weight where `operator_weight` says an operator set it.
pub fn carry(current: &BackendSet, next: &BackendSet, operator_weight: impl Fn(SocketAddr) -> bool) -> BackendSet {
    let mut out = next.clone();
    for b in current.backends() {
        if !next.contains(b.addr) {
            continue;
        }
        out.set_health(b.addr, b.healthy);
        out.set_ejected(b.addr, b.ejected_until);
        out.set_admin(b.addr, b.admin);
        if operator_weight(b.addr) {
            out.set_weight(b.addr, b.weight);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::balance::Admin;

    fn addr(port: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], port))
    }

    #[test]
    fn a_reload_keeps_what_is_known_of_the_backends_that_stay_and_only_of_those() {
        let mut current = BackendSet::weighted(&[addr(1), addr(2), addr(3)], &[1, 2, 3]);
        current.set_health(addr(1), false);
        current.set_admin(addr(2), Admin::Draining);
        current.set_weight(addr(2), 7);
        current.set_admin(addr(3), Admin::Disabled);
        let next = BackendSet::weighted(&[addr(2), addr(1), addr(4)], &[5, 5, 5]);
        let out = carry(&current, &next, |a| a == addr(2));
        let got: Vec<(u16, bool, Admin, u32)> =
            out.backends().iter().map(|b| (b.addr.port(), b.healthy, b.admin, b.weight)).collect();
        assert_eq!(
            got,
            vec![(2, true, Admin::Draining, 7), (1, false, Admin::Enabled, 5), (4, true, Admin::Enabled, 5)],
            "the new order and weights, with the old states; a backend that left takes its state along"
        );
    }
}
