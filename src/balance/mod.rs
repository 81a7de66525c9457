//! Every balancing decision, pure (no sockets; the time is passed in): which backend gets the
//! next request ([`Picker`]: the rotation, per-client affinity, skipping what a retry already
//! tried), whether a backend is in rotation at all ([`health`]: fall/rise, loss-aware, fail
//! open), and whether the data path's own failures eject it for a while ([`outlier`]: passive
//! ejection as Envoy does). Everything is keyed by the backend's `SocketAddr`.
//!
//! A proxy keeps its [`BackendSet`] in an `ArcSwap` so health checks and ejections replace it
//! whole while the data path reads it without a lock; a pick only ever sees a snapshot.

pub mod health;
pub mod measured;
pub mod outlier;
mod rotation;

use std::net::SocketAddr;
use std::time::Instant;

pub use health::{Check, HealthRules, HealthState, Transition};
pub use outlier::{Ejection, OutlierRules, Outliers};
pub use rotation::RoundRobin;

/// Whether a client's requests stay with one backend.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum Affinity {
    /// Every request (UDP: every datagram) goes to the next backend in the rotation (the
    /// classic lab).
    #[default]
    None,
    /// A client address is pinned to the backend its first datagram went to.
    Client,
}

/// How a balancer chooses among the backends that may take a request.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Deserialize, serde::Serialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum Strategy {
    /// One rotation shared by all clients, never reset (the classic lab).
    #[default]
    RoundRobin,
    /// Smooth weighted round robin, as nginx does it: weights 5/1/1 give a a b a c a a.
    Weighted,
    /// The backend with the fewest requests in flight relative to its weight.
    LeastConnections,
    /// Power of two random choices over a peak EWMA of latency and requests in flight.
    P2c,
    /// Maglev consistent hashing of a key (client IP, a header, the UDP source).
    Hash,
    /// Weights from the monitor's own probes of each backend: loss and round trip.
    Measured,
}

/// What an operator asked of a backend at run time.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Admin {
    /// Takes requests as its health and strategy allow.
    #[default]
    Enabled,
    /// Takes no new clients or requests; what is under way finishes.
    Draining,
    /// Takes nothing.
    Disabled,
}

/// One backend as the strategies see it.
#[derive(Debug, Clone, PartialEq)]
pub struct Backend {
    pub addr: SocketAddr,
    /// Whether the backend is in rotation by its health checks.
    pub healthy: bool,
    /// Ejected by its own failures on the data path until then.
    pub ejected_until: Option<Instant>,
    /// The configured (or operator-set) weight, at least 1.
    pub weight: u32,
    /// The factor the `measured` strategy applies to the weight (1 until measured), in (0, 1].
    pub measured: f64,
    /// What an operator asked of it.
    pub admin: Admin,
}

impl Backend {
    /// A healthy, enabled backend of weight 1.
    pub fn new(addr: SocketAddr) -> Self {
        Backend { addr, healthy: true, ejected_until: None, weight: 1, measured: 1.0, admin: Admin::Enabled }
    }

    /// Whether the backend may take a request at `now`.
    pub fn available(&self, now: Instant) -> bool {
        self.admin == Admin::Enabled && self.healthy && self.ejected_until.is_none_or(|t| now >= t)
    }

    /// The weight the weighted strategies use: the configured weight times the measured factor.
    pub fn effective_weight(&self) -> f64 {
        f64::from(self.weight) * self.measured
    }
}

/// The backends of one balancer, in configuration order.
#[derive(Debug, Clone, PartialEq)]
pub struct BackendSet {
    backends: Vec<Backend>,
}

impl BackendSet {
    /// All backends healthy.
    pub fn new(addrs: &[SocketAddr]) -> Self {
        Self { backends: addrs.iter().map(|&addr| Backend::new(addr)).collect() }
    }

    /// All backends healthy, with these weights (as many as `addrs`; missing ones are 1).
    pub fn weighted(addrs: &[SocketAddr], weights: &[u32]) -> Self {
        let mut set = Self::new(addrs);
        for (b, &w) in set.backends.iter_mut().zip(weights) {
            b.weight = w.max(1);
        }
        set
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

    /// Ejects a backend until `until` (`None` lets it back); unknown addresses are ignored.
    pub fn set_ejected(&mut self, addr: SocketAddr, until: Option<Instant>) {
        for b in self.backends.iter_mut().filter(|b| b.addr == addr) {
            b.ejected_until = until;
        }
    }

    /// The same backends with the health flags of `health` (ejections kept).
    pub fn with_health_of(&self, health: &BackendSet) -> BackendSet {
        let mut next = self.clone();
        for b in health.backends() {
            next.set_health(b.addr, b.healthy);
        }
        next
    }

    /// The place of backend `addr` in the configuration.
    pub fn index_of(&self, addr: SocketAddr) -> Option<usize> {
        self.backends.iter().position(|b| b.addr == addr)
    }

    /// Whether `addr` is one of the backends (used to accept replies only from them).
    pub fn contains(&self, addr: SocketAddr) -> bool {
        self.backends.iter().any(|b| b.addr == addr)
    }

    /// Whether `addr` is a backend in rotation.
    pub fn is_healthy(&self, addr: SocketAddr) -> bool {
        self.backends.iter().any(|b| b.addr == addr && b.healthy)
    }

    /// Whether `addr` is a backend that may take a request at `now`.
    pub fn is_available(&self, addr: SocketAddr, now: Instant) -> bool {
        self.backends.iter().any(|b| b.addr == addr && b.available(now))
    }

    /// How many backends may take a request at `now`.
    pub fn available_count(&self, now: Instant) -> usize {
        self.backends.iter().filter(|b| b.available(now)).count()
    }

    pub fn len(&self) -> usize {
        self.backends.len()
    }

    pub fn is_empty(&self) -> bool {
        self.backends.is_empty()
    }
}

/// How one balancer chooses: the shared rotation, and whether a client stays with its backend.
#[derive(Debug, Default)]
pub struct Picker {
    rotation: RoundRobin,
    affinity: Affinity,
}

impl Picker {
    pub fn new(affinity: Affinity) -> Self {
        Self { rotation: RoundRobin::new(), affinity }
    }

    /// The backend at `now` for the next request of a client whose requests last went to
    /// `pinned` (`None` for a new client), or `None` if no backend may take it.
    ///
    /// Without affinity every request takes the next turn of the rotation. With client affinity
    /// a client keeps its backend while that backend may take requests; a new client, or one
    /// whose backend left, takes the next turn, and that becomes its backend.
    pub fn pick(&self, set: &BackendSet, pinned: Option<SocketAddr>, now: Instant) -> Option<SocketAddr> {
        match (self.affinity, pinned) {
            (Affinity::Client, Some(b)) if set.is_available(b, now) => Some(b),
            _ => self.rotation.pick_where(set, |_, b| b.available(now)).and_then(|i| set.get(i)).map(|b| b.addr),
        }
    }

    /// The next turn of the rotation at `now` as an index into `set` (the HTTP proxy keeps a
    /// connection pool per index), skipping the backends this request already `tried`.
    pub fn pick_index(&self, set: &BackendSet, now: Instant, tried: &[usize]) -> Option<usize> {
        self.rotation.pick_where(set, |i, b| b.available(now) && !tried.contains(&i))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

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
    fn a_missing_backends_share_is_spread_evenly_not_handed_to_its_neighbour() {
        let rr = RoundRobin::new();
        let mut s = set(4);
        s.set_health(SocketAddr::from(([127, 0, 0, 1], 2)), false);
        let picks: Vec<usize> = (0..9).map(|_| rr.pick(&s).unwrap()).collect();
        assert_eq!(picks, vec![0, 2, 3, 0, 2, 3, 0, 2, 3]);
    }

    #[test]
    fn ejected_backends_are_skipped_until_their_time_is_up() {
        let p = Picker::new(Affinity::None);
        let mut s = set(3);
        let now = Instant::now();
        let later = now + std::time::Duration::from_secs(10);
        s.set_ejected(SocketAddr::from(([127, 0, 0, 1], 1)), Some(later));
        let ports = |at: Instant| (0..4).map(|_| p.pick(&s, None, at).unwrap().port()).collect::<Vec<u16>>();
        assert!(!ports(now).contains(&1));
        assert!(ports(later).contains(&1), "back once the ejection ends");
    }

    #[test]
    fn a_retry_never_goes_to_a_backend_the_request_already_tried() {
        let p = Picker::new(Affinity::None);
        let s = set(3);
        let now = Instant::now();
        for _ in 0..6 {
            let first = p.pick_index(&s, now, &[]).unwrap();
            let second = p.pick_index(&s, now, &[first]).unwrap();
            let third = p.pick_index(&s, now, &[first, second]).unwrap();
            assert!(first != second && second != third && first != third);
            assert_eq!(p.pick_index(&s, now, &[first, second, third]), None);
        }
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
        // Property over every set size up to 8 and every health pattern.
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
                let healthy: Vec<usize> =
                    counts.iter().enumerate().filter(|(i, _)| mask & (1 << i) == 0).map(|(_, c)| *c).collect();
                for (i, c) in counts.iter().enumerate() {
                    if mask & (1 << i) != 0 {
                        assert_eq!(*c, 0, "unhealthy backend {i} was picked");
                    }
                }
                // Even: no healthy backend gets more than one pick more than another.
                if let (Some(lo), Some(hi)) = (healthy.iter().min(), healthy.iter().max()) {
                    assert!(hi - lo <= 1, "n={n} mask={mask:b} counts={counts:?}");
                }
            }
        }
    }

    #[test]
    fn affinity_keeps_a_client_on_its_backend_while_it_is_in_rotation() {
        let p = Picker::new(Affinity::Client);
        let mut s = set(3);
        let a = p.pick(&s, None, Instant::now()).unwrap();
        let b = p.pick(&s, None, Instant::now()).unwrap();
        assert_ne!(a, b, "new clients take turns");
        for _ in 0..5 {
            assert_eq!(p.pick(&s, Some(a), Instant::now()), Some(a));
        }
        // Its backend leaves: the client moves to the next turn of the rotation.
        s.set_health(a, false);
        let moved = p.pick(&s, Some(a), Instant::now()).unwrap();
        assert_ne!(moved, a);
        assert!(s.is_healthy(moved));
    }

    #[test]
    fn without_affinity_every_request_takes_the_next_turn() {
        let p = Picker::new(Affinity::None);
        let s = set(3);
        let first = s.backends()[0].addr;
        let picks: Vec<u16> = (0..6).map(|_| p.pick(&s, Some(first), Instant::now()).unwrap().port()).collect();
        assert_eq!(picks, vec![1, 2, 3, 1, 2, 3]);
    }

    proptest! {
        /// Whatever the health pattern and pins: a pick is always a backend in rotation, and
        /// `None` only when no backend is; a pinned client whose backend is in rotation keeps it.
        #[test]
        fn picks_are_always_in_rotation(
            healthy in proptest::collection::vec(any::<bool>(), 1..8),
            pins in proptest::collection::vec(proptest::option::of(0..10u16), 1..50),
            client in any::<bool>(),
        ) {
            let mut s = set(healthy.len() as u16);
            for (i, &h) in healthy.iter().enumerate() {
                s.set_health(SocketAddr::from(([127, 0, 0, 1], i as u16 + 1)), h);
            }
            let p = Picker::new(if client { Affinity::Client } else { Affinity::None });
            for pin in pins {
                let pinned = pin.map(|port| SocketAddr::from(([127, 0, 0, 1], port)));
                match p.pick(&s, pinned, Instant::now()) {
                    Some(b) => {
                        prop_assert!(s.is_healthy(b));
                        if client && pinned.is_some_and(|a| s.is_healthy(a)) {
                            prop_assert_eq!(Some(b), pinned);
                        }
                    }
                    None => prop_assert!(healthy.iter().all(|h| !h)),
                }
            }
        }
    }
}
