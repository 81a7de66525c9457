//! Load-balancing strategies: pure choices over a backend set, no sockets and no clocks.
//!
//! A proxy keeps its [`BackendSet`] in an `ArcSwap` so a health checker can replace it whole
//! while the data path reads it without a lock; the strategy only ever sees a snapshot.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};

/// One backend as the strategies see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Backend {
    pub addr: SocketAddr,
    /// Whether the backend may receive traffic (health checks clear this).
    pub healthy: bool,
}

/// The backends of one balancer, in configuration order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackendSet {
    backends: Vec<Backend>,
}

impl BackendSet {
    /// All backends healthy.
    pub fn new(addrs: &[SocketAddr]) -> Self {
        Self { backends: addrs.iter().map(|&addr| Backend { addr, healthy: true }).collect() }
    }

    /// The backends in order.
    pub fn backends(&self) -> &[Backend] {
        &self.backends
    }

    /// The backend at `index`.
    pub fn get(&self, index: usize) -> Option<&Backend> {
        self.backends.get(index)
    }

    /// Marks a backend healthy or not; unknown addresses are ignored.
    pub fn set_health(&mut self, addr: SocketAddr, healthy: bool) {
        for b in self.backends.iter_mut().filter(|b| b.addr == addr) {
            b.healthy = healthy;
        }
    }

    /// Whether `addr` is one of the backends (used to accept replies only from them).
    pub fn contains(&self, addr: SocketAddr) -> bool {
        self.backends.iter().any(|b| b.addr == addr)
    }

    pub fn len(&self) -> usize {
        self.backends.len()
    }

    pub fn is_empty(&self) -> bool {
        self.backends.is_empty()
    }
}

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
        (0..n).map(|step| (turn + step) % n).find(|&i| set.backends[i].healthy)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(n: u16) -> BackendSet {
        let addrs: Vec<SocketAddr> = (1..=n).map(|p| SocketAddr::from(([127, 0, 0, 1], p))).collect();
        BackendSet::new(&addrs)
    }

    #[test]
    fn rotation_is_strict_and_wraps() {
        let rr = RoundRobin::new();
        let s = set(3);
        let picks: Vec<usize> = (0..7).map(|_| rr.pick(&s).unwrap()).collect();
        assert_eq!(picks, vec![0, 1, 2, 0, 1, 2, 0]);
    }

    #[test]
    fn unhealthy_backends_are_skipped_and_never_picked() {
        let rr = RoundRobin::new();
        let mut s = set(4);
        s.set_health(SocketAddr::from(([127, 0, 0, 1], 2)), false);
        let picks: Vec<usize> = (0..8).map(|_| rr.pick(&s).unwrap()).collect();
        assert_eq!(picks, vec![0, 2, 2, 3, 0, 2, 2, 3]);
        assert!(!picks.contains(&1));
    }

    #[test]
    fn no_healthy_backend_is_none() {
        let rr = RoundRobin::new();
        let mut s = set(2);
        for b in s.clone().backends() {
            s.set_health(b.addr, false);
        }
        assert_eq!(rr.pick(&s), None);
        assert_eq!(rr.pick(&BackendSet::new(&[])), None);
    }

    #[test]
    fn every_healthy_backend_gets_an_equal_share() {
        // Property over many set sizes and health patterns: over n full turns each healthy
        // backend's share differs from the fair share by at most the number of unhealthy ones.
        for n in 1..=8u16 {
            for mask in 0u32..(1 << n) {
                let mut s = set(n);
                for i in 0..n {
                    if mask & (1 << i) != 0 {
                        s.set_health(SocketAddr::from(([127, 0, 0, 1], i + 1)), false);
                    }
                }
                let rr = RoundRobin::new();
                let mut counts = vec![0usize; n as usize];
                for _ in 0..(n as usize * 10) {
                    match rr.pick(&s) {
                        Some(i) => counts[i] += 1,
                        None => assert_eq!(mask.count_ones(), u32::from(n)),
                    }
                }
                for (i, c) in counts.iter().enumerate() {
                    if mask & (1 << i) != 0 {
                        assert_eq!(*c, 0, "unhealthy backend {i} was picked");
                    } else {
                        assert!(*c >= 10, "n={n} mask={mask:b} counts={counts:?}");
                    }
                }
            }
        }
    }
}
