//! The one rotation of a balancer, shared by all of its clients and workers, never reset.

use std::sync::atomic::{AtomicUsize, Ordering};

use super::{Backend, BackendSet};

/// One rotation over the backends, shared by every client of a balancer and never reset.
///
/// Pick `k` goes to backend `k mod n` when all may take it. When some may not (out of rotation,
/// ejected, or already tried for this request), turn `k` goes to the `k mod m`-th of the `m`
/// that may, so their load is spread evenly (each gets 1/m) instead of a missing backend's
/// share falling on its neighbour.
#[derive(Debug, Default)]
pub struct RoundRobin {
    next: AtomicUsize,
}

impl RoundRobin {
    pub fn new() -> Self {
        Self::default()
    }

    /// The index of the backend for the next request among those `may` accepts, or `None` if
    /// there is none.
    pub fn pick_where(&self, set: &BackendSet, may: impl Fn(usize, &Backend) -> bool) -> Option<usize> {
        let backends = set.backends();
        let m = backends.iter().enumerate().filter(|(i, b)| may(*i, b)).count();
        if m == 0 {
            return None;
        }
        let turn = self.next.fetch_add(1, Ordering::Relaxed) % m;
        backends.iter().enumerate().filter(|(i, b)| may(*i, b)).nth(turn).map(|(i, _)| i)
    }

    /// Takes the next turn: a number that grows by one per call, shared by every worker (the
    /// smooth weighted order is indexed by it).
    pub(crate) fn turn(&self) -> usize {
        self.next.fetch_add(1, Ordering::Relaxed)
    }

    /// The index of the backend for the next request among the healthy ones.
    pub fn pick(&self, set: &BackendSet) -> Option<usize> {
        self.pick_where(set, |_, b| b.healthy)
    }
}
