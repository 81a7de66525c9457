//! The one rotation of a balancer, shared by all of its clients and workers, never reset.

use std::sync::atomic::{AtomicUsize, Ordering};

use super::BackendSet;

/// One rotation over the backends, shared by every client of a balancer and never reset.
///
/// Pick `k` goes to backend `k mod n` when all are healthy; an unhealthy backend's turn passes
/// to the next healthy one after it, so the others keep their relative order.
#[derive(Debug, Default)]
pub struct RoundRobin {
    next: AtomicUsize,
}

impl RoundRobin {
    pub fn new() -> Self {
        Self::default()
    }

    /// The index of the backend for the next request, or `None` if no backend is healthy.
    pub fn pick(&self, set: &BackendSet) -> Option<usize> {
        let n = set.len();
        if n == 0 {
            return None;
        }
        let turn = self.next.fetch_add(1, Ordering::Relaxed) % n;
        (0..n).map(|step| (turn + step) % n).find(|&i| set.backends()[i].healthy)
    }
}
