//! Every balancing decision, pure (no sockets; the time is passed in): which backend gets the
//! next request ([`Picker`], by the balancer's [`Strategy`]: round robin, smooth weighted round
//! robin, least connections, power of two choices over PeakEWMA, Maglev hashing, or weights
//! measured by the monitor — each skipping what a retry already tried), whether a backend is in
//! rotation at all ([`health`]: fall/rise, loss-aware, fail open), and whether the data path's
//! own failures eject it for a while ([`outlier`]: passive ejection as Envoy does). Everything
//! is keyed by the backend's `SocketAddr`.
//!
//! A proxy keeps its [`BackendSet`] in an `ArcSwap` so health checks, ejections and weight
//! changes replace it whole while the data path reads it without a lock; a pick only ever sees
//! a snapshot. What a strategy can work out ahead (nginx's smooth order for one period, the
//! Maglev table) is computed when the set is built or changed, never per pick.

pub mod health;
mod load;
mod maglev;
pub mod measured;
pub mod outlier;
mod rotation;
mod weighted;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

pub use health::{Check, HealthRules, HealthState, Transition};
pub use load::DECAY;
pub use maglev::{hash_ip, hash_source, hash_value};
pub use outlier::{Ejection, OutlierRules, Outliers};
pub use rotation::RoundRobin;

use maglev::Maglev;
use weighted::Schedule;

/// Whether a UDP client's datagrams stay with one backend: the older name of `strategy =
/// "hash"` on the client's address and port, kept as an alias.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum Affinity {
    /// Every datagram goes to the backend the strategy picks (the classic lab: the next turn).
    #[default]
    None,
    /// The same as `strategy = "hash"` with `hash_key = "source"`: a client address and port
    /// always goes to the same backend while that backend may take it.
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

impl Strategy {
    /// The name a config and the flags use.
    pub fn name(self) -> &'static str {
        match self {
            Strategy::RoundRobin => "round-robin",
            Strategy::Weighted => "weighted",
            Strategy::LeastConnections => "least-connections",
            Strategy::P2c => "p2c",
            Strategy::Hash => "hash",
            Strategy::Measured => "measured",
        }
    }

    /// Whether the data path reports requests in flight (and their latency) to the [`Picker`]:
    /// only for the strategies that use them, so the others never touch a shared counter.
    pub fn tracks_load(self) -> bool {
        matches!(self, Strategy::LeastConnections | Strategy::P2c)
    }

    /// Whether picks follow the smooth weighted order worked out per set.
    fn smooth(self) -> bool {
        matches!(self, Strategy::Weighted | Strategy::Measured)
    }
}

impl std::fmt::Display for Strategy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
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

    /// Whether it was in rotation at `at` by every flag; an ejection counts until its end is
    /// known to have passed (`at` unknown: it counts).
    fn in_rotation_at(&self, at: Option<Instant>) -> bool {
        self.admin == Admin::Enabled && self.healthy && self.ejected_until.is_none_or(|t| at.is_some_and(|a| a >= t))
    }
}

/// The backends of one balancer, in configuration order, with its strategy and what that
/// strategy worked out ahead for them.
#[derive(Debug, Clone)]
pub struct BackendSet {
    backends: Vec<Backend>,
    strategy: Strategy,
    plan: Plan,
}

impl PartialEq for BackendSet {
    /// The same backends in the same states under the same strategy (the plan follows from them).
    fn eq(&self, other: &Self) -> bool {
        self.backends == other.backends && self.strategy == other.strategy
    }
}

/// What a strategy computes once per set: nginx's smooth order over the backends in rotation
/// (weighted, measured), or the Maglev table (hash).
#[derive(Debug, Clone, Default)]
struct Plan {
    /// The time the ejections were judged at (`None`: every ejection counts).
    at: Option<Instant>,
    /// The smooth order, made of `(index, weight)` of the backends in rotation.
    schedule: Option<Arc<Made<(usize, f64), Schedule>>>,
    /// The Maglev table, made of `(address, weight)` of every backend.
    maglev: Option<Arc<Made<(SocketAddr, u32), Maglev>>>,
    /// When an ejection the smooth order left out ends: the order is stale from then.
    expires: Option<Instant>,
}

/// Something a plan made (`None`: nothing to make it of), with what it was made of, so that an
/// unchanged input keeps it.
#[derive(Debug)]
struct Made<I, T> {
    from: Vec<I>,
    made: Option<T>,
}

impl BackendSet {
    /// All backends healthy.
    pub fn new(addrs: &[SocketAddr]) -> Self {
        Self {
            backends: addrs.iter().map(|&addr| Backend::new(addr)).collect(),
            strategy: Strategy::default(),
            plan: Plan::default(),
        }
    }

    /// All backends healthy, with these weights (as many as `addrs`; missing ones are 1).
    pub fn weighted(addrs: &[SocketAddr], weights: &[u32]) -> Self {
        let mut set = Self::new(addrs);
        for (b, &w) in set.backends.iter_mut().zip(weights) {
            b.weight = w.max(1);
        }
        set.replan();
        set
    }

    /// The same backends, chosen among by `strategy`.
    pub fn with_strategy(mut self, strategy: Strategy) -> Self {
        if strategy != Strategy::Measured {
            // Only `measured` weighs by the probes: a factor it set must not outlive it.
            for b in &mut self.backends {
                b.measured = 1.0;
            }
        }
        self.strategy = strategy;
        self.replan();
        self
    }

    /// How a backend is chosen.
    pub fn strategy(&self) -> Strategy {
        self.strategy
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
        self.edit(addr, |b| b.healthy = healthy);
    }

    /// Ejects a backend until `until` (`None` lets it back); unknown addresses are ignored.
    pub fn set_ejected(&mut self, addr: SocketAddr, until: Option<Instant>) {
        self.edit(addr, |b| b.ejected_until = until);
    }

    /// Sets a backend's configured weight (at least 1); unknown addresses are ignored.
    pub fn set_weight(&mut self, addr: SocketAddr, weight: u32) {
        self.edit(addr, |b| b.weight = weight.max(1));
    }

    /// Sets the factor `measured` applies to a backend's weight, kept in (0, 1] (not a finite
    /// positive number: 1); unknown addresses are ignored.
    pub fn set_measured(&mut self, addr: SocketAddr, factor: f64) {
        self.edit(addr, |b| b.measured = measured_factor(factor));
    }

    /// The same backends with the measured factors of `factors` (one recomputation for all).
    pub fn with_measured(&self, factors: &[(SocketAddr, f64)]) -> BackendSet {
        let mut next = self.clone();
        for b in &mut next.backends {
            if let Some(&(_, f)) = factors.iter().find(|(a, _)| *a == b.addr) {
                b.measured = measured_factor(f);
            }
        }
        next.replan();
        next
    }

    /// Sets what an operator asked of a backend; unknown addresses are ignored.
    pub fn set_admin(&mut self, addr: SocketAddr, admin: Admin) {
        self.edit(addr, |b| b.admin = admin);
    }

    fn edit(&mut self, addr: SocketAddr, change: impl Fn(&mut Backend)) {
        let mut changed = false;
        for b in self.backends.iter_mut().filter(|b| b.addr == addr) {
            let before = b.clone();
            change(b);
            changed |= *b != before;
        }
        if changed {
            self.replan();
        }
    }

    /// The same backends with the health flags of `health` (ejections kept).
    pub fn with_health_of(&self, health: &BackendSet) -> BackendSet {
        let mut next = self.clone();
        for h in health.backends() {
            for b in next.backends.iter_mut().filter(|b| b.addr == h.addr) {
                b.healthy = h.healthy;
            }
        }
        next.replan();
        next
    }

    /// When the smooth order goes stale because an ejection it left out ends (see
    /// [`BackendSet::refreshed`]); `None` while it cannot.
    pub fn plan_expires(&self) -> Option<Instant> {
        self.plan.expires
    }

    /// The same set with its plan worked out for `now`: the data path swaps it in once an
    /// ejection has ended ([`BackendSet::plan_expires`]), so that the backend is back in the
    /// smooth order. (Picks are right either way; this keeps the shares right.)
    pub fn refreshed(&self, now: Instant) -> BackendSet {
        let mut next = self.clone();
        next.plan.at = Some(now);
        next.replan();
        next
    }

    /// Works out what the strategy needs ahead; what did not change is kept, not recomputed.
    fn replan(&mut self) {
        let at = self.plan.at;
        self.plan.expires = None;
        // Round robin honours weights as nginx's and HAProxy's do: with any weight other than 1
        // it takes the smooth weighted order (with all 1 that order is the plain rotation).
        let weighted_rr = self.strategy == Strategy::RoundRobin && self.backends.iter().any(|b| b.weight != 1);
        if self.strategy.smooth() || weighted_rr {
            let members: Vec<(usize, f64)> = self
                .backends
                .iter()
                .enumerate()
                .filter(|(_, b)| b.in_rotation_at(at))
                .map(|(i, b)| (i, b.effective_weight()))
                .collect();
            if self.plan.schedule.as_ref().is_none_or(|s| s.from != members) {
                let made = Schedule::new(&members);
                self.plan.schedule = Some(Arc::new(Made { from: members, made }));
            }
            // Backends left out for an ejection come back into the order when it ends.
            self.plan.expires = self
                .backends
                .iter()
                .filter(|b| b.admin == Admin::Enabled && b.healthy)
                .filter_map(|b| b.ejected_until.filter(|&t| at.is_none_or(|a| a < t)))
                .min();
        } else {
            self.plan.schedule = None;
        }
        if self.strategy == Strategy::Hash {
            let members: Vec<(SocketAddr, u32)> = self.backends.iter().map(|b| (b.addr, b.weight)).collect();
            if self.plan.maglev.as_ref().is_none_or(|m| m.from != members) {
                let made = Maglev::new(&members);
                self.plan.maglev = Some(Arc::new(Made { from: members, made }));
            }
        } else {
            self.plan.maglev = None;
        }
    }

    fn schedule(&self) -> Option<&Schedule> {
        self.plan.schedule.as_ref().and_then(|s| s.made.as_ref())
    }

    fn maglev(&self) -> Option<&Maglev> {
        self.plan.maglev.as_ref().and_then(|m| m.made.as_ref())
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

/// A measured factor kept in (0, 1].
fn measured_factor(f: f64) -> f64 {
    if f.is_finite() && f > 0.0 { f.min(1.0) } else { 1.0 }
}

/// How one balancer chooses: the shared turn counter (round robin, and where the smooth order
/// stands), and for the load-aware strategies what each backend has in flight and how fast it
/// answered. Which strategy applies is the set's ([`BackendSet::strategy`]).
#[derive(Debug)]
pub struct Picker {
    rotation: RoundRobin,
    load: load::Load,
}

impl Picker {
    /// A picker for a set of `backends` backends (the load-aware state is per backend index).
    pub fn new(backends: usize) -> Self {
        Self { rotation: RoundRobin::new(), load: load::Load::new(backends) }
    }

    /// The one rotation (its position is what a restart resumes from).
    pub fn rotation(&self) -> &RoundRobin {
        &self.rotation
    }

    /// The index in `set` of the backend for the next request at `now`, never one it already
    /// `tried`, or `None` if no backend may take it. `key` is the request's hash key (client
    /// address, header value, UDP source: see [`hash_ip`]); only `hash` uses it, and without
    /// one (e.g. no such header) it takes the next turn of the rotation, as HAProxy does.
    pub fn pick(&self, set: &BackendSet, key: Option<u64>, now: Instant, tried: &[usize]) -> Option<usize> {
        let may = |i: usize, b: &Backend| b.available(now) && !tried.contains(&i);
        match set.strategy {
            Strategy::RoundRobin if set.schedule().is_some() => self.smooth(set, may),
            Strategy::RoundRobin => self.rotation.pick_where(set, may),
            Strategy::Weighted | Strategy::Measured => self.smooth(set, may),
            Strategy::LeastConnections => self.least_connections(set, may),
            Strategy::P2c => self.p2c(set, now, may),
            Strategy::Hash => match (key, set.maglev()) {
                (Some(key), Some(table)) => {
                    // The walk past backends that may not is bounded by one that may.
                    if !set.backends.iter().enumerate().any(|(i, b)| may(i, b)) {
                        return None;
                    }
                    table.lookup(key, |i| set.get(i).is_some_and(|b| may(i, b)))
                }
                _ => self.rotation.pick_where(set, may),
            },
        }
    }

    /// How far the rotation has gone (see [`RoundRobin::position`]), to save it across restarts.
    pub fn position(&self) -> usize {
        self.rotation.position()
    }

    /// Continues a saved rotation: with the same backends, the next pick is the one that would
    /// have followed.
    pub fn resume_at(&self, position: usize) {
        self.rotation.resume_at(position);
    }

    /// The next turn of the rotation at `now` as an index into `set` (the HTTP proxy keeps a
    /// connection pool per index), skipping the backends this request already `tried`.
    pub fn pick_index(&self, set: &BackendSet, now: Instant, tried: &[usize]) -> Option<usize> {
        self.pick(set, None, now, tried)
    }

    /// A request went to backend `index` (counted under the load-aware strategies only).
    pub fn start(&self, set: &BackendSet, index: usize) {
        if set.strategy.tracks_load() {
            self.count(index);
        }
    }

    /// Counts a request to backend `index` as in flight, whatever the strategy: for a caller
    /// that decided once whether it counts, so that a count is ended by the same rule that
    /// started it even when the strategy changes in between (a reload).
    pub fn count(&self, index: usize) {
        self.load.start(index);
    }

    /// Ends `count` requests [`Picker::count`] counted, the last answered after `latency`.
    pub fn uncount(&self, index: usize, count: u32, latency: Option<Duration>, now: Instant) {
        self.load.end(index, count);
        if let Some(l) = latency {
            self.load.observe(index, l, now);
        }
    }

    /// A request to backend `index` ended at `now`, answered after `latency` (the time to the
    /// response head; for a failure, what it cost) if known.
    pub fn end(&self, set: &BackendSet, index: usize, latency: Option<Duration>, now: Instant) {
        self.end_many(set, index, 1, latency, now);
    }

    /// `count` requests to backend `index` ended at `now` (e.g. UDP datagrams given up on), the
    /// last of them answered after `latency` if known.
    pub fn end_many(&self, set: &BackendSet, index: usize, count: u32, latency: Option<Duration>, now: Instant) {
        if set.strategy.tracks_load() {
            self.uncount(index, count, latency, now);
        }
    }

    /// Requests in flight to backend `index` (counted under the load-aware strategies only).
    pub fn in_flight(&self, index: usize) -> u32 {
        self.load.in_flight(index)
    }

    /// Smooth weighted round robin: the next turn of nginx's order, or the next after it that
    /// `may` take the request (a retry; or the set changed since the order was made).
    fn smooth(&self, set: &BackendSet, may: impl Fn(usize, &Backend) -> bool) -> Option<usize> {
        if let Some(s) = set.schedule() {
            let turn = self.rotation.turn();
            let found =
                (0..s.period()).map(|k| s.at(turn.wrapping_add(k))).find(|&i| set.get(i).is_some_and(|b| may(i, b)));
            if found.is_some() {
                return found;
            }
        }
        // Only a backend the order does not hold yet may (its ejection just ended).
        self.rotation.pick_where(set, may)
    }

    /// Least connections, weighted: the fewest requests in flight per unit of weight (nginx's
    /// `least_conn`); among equals, smooth weighted round robin over just those (as nginx breaks
    /// the tie), so that an idle balancer still shares by weight and a tie never falls to the
    /// first backend or to a missing one's neighbour.
    fn least_connections(&self, set: &BackendSet, may: impl Fn(usize, &Backend) -> bool) -> Option<usize> {
        let load = |i: usize| f64::from(self.load.in_flight(i));
        // (index, in flight, weight) of the least loaded so far, and how many are as little.
        let mut best: Option<(usize, f64, f64)> = None;
        let mut equal = 0;
        for (i, b) in set.backends.iter().enumerate().filter(|(i, b)| may(*i, b)) {
            let (l, w) = (load(i), b.effective_weight());
            match best {
                // l / w < bl / bw, without dividing.
                Some((_, bl, bw)) if l * bw > bl * w => {}
                Some((_, bl, bw)) if l * bw == bl * w => equal += 1,
                _ => {
                    best = Some((i, l, w));
                    equal = 1;
                }
            }
        }
        let (first, bl, bw) = best?;
        if equal == 1 {
            return Some(first);
        }
        let tied = set
            .backends
            .iter()
            .enumerate()
            .filter(|(i, b)| may(*i, b) && load(*i) * bw == bl * b.effective_weight())
            .map(|(i, b)| (i, b.effective_weight()));
        Some(self.load.smooth_among(tied).unwrap_or(first))
    }

    /// Power of two choices (Mitzenmacher; finagle's and linkerd's balancer): two distinct
    /// backends at random among those that `may`, the one of lower PeakEWMA cost wins.
    fn p2c(&self, set: &BackendSet, now: Instant, may: impl Fn(usize, &Backend) -> bool) -> Option<usize> {
        let m = set.backends.iter().enumerate().filter(|(i, b)| may(*i, b)).count();
        let nth = |k: usize| set.backends.iter().enumerate().filter(|(i, b)| may(*i, b)).nth(k);
        match m {
            0 => None,
            1 => nth(0).map(|(i, _)| i),
            _ => {
                let r = load::random();
                let a = (r % m as u64) as usize;
                let b = (a + 1 + ((r >> 32) % (m as u64 - 1)) as usize) % m;
                let (ia, ba) = nth(a)?;
                let (ib, bb) = nth(b)?;
                let (ca, cb) =
                    (self.load.cost(ia, ba.effective_weight(), now), self.load.cost(ib, bb.effective_weight(), now));
                Some(if cb < ca { ib } else { ia })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Strategy;
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
        let p = Picker::new(3);
        let mut s = set(3);
        let now = Instant::now();
        let later = now + std::time::Duration::from_secs(10);
        s.set_ejected(SocketAddr::from(([127, 0, 0, 1], 1)), Some(later));
        let ports = |at: Instant| (0..4).map(|_| port(&s, p.pick(&s, None, at, &[]))).collect::<Vec<u16>>();
        assert!(!ports(now).contains(&1));
        assert!(ports(later).contains(&1), "back once the ejection ends");
    }

    #[test]
    fn a_retry_never_goes_to_a_backend_the_request_already_tried() {
        let p = Picker::new(3);
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
    fn round_robin_honours_weights_as_nginx_does_and_leaving_measured_forgets_its_factors() {
        let addrs: Vec<SocketAddr> = (1..=3).map(|p| SocketAddr::from(([127, 0, 0, 1], p))).collect();
        let s = BackendSet::weighted(&addrs, &[5, 1, 1]);
        let p = Picker::new(3);
        let now = Instant::now();
        let picks: Vec<usize> = (0..7).map(|_| p.pick(&s, None, now, &[]).unwrap()).collect();
        assert_eq!(picks, vec![0, 0, 1, 0, 2, 0, 0], "a a b a c a a");
        let m = BackendSet::new(&addrs).with_strategy(Strategy::Measured).with_measured(&[(addrs[0], 0.1)]);
        assert_eq!(m.backends()[0].measured, 0.1);
        let w = m.with_strategy(Strategy::Weighted);
        assert!(w.backends().iter().all(|b| b.measured == 1.0), "no factor outlives measured");
    }

    #[test]
    fn a_resumed_rotation_continues_where_the_saved_one_stopped() {
        let s = set(4);
        let before = Picker::new(4);
        let now = Instant::now();
        let first: Vec<usize> = (0..6).map(|_| before.pick(&s, None, now, &[]).unwrap()).collect();
        let after = Picker::new(4);
        after.resume_at(before.position());
        let next: Vec<usize> = (0..3).map(|_| after.pick(&s, None, now, &[]).unwrap()).collect();
        assert_eq!(first, vec![0, 1, 2, 3, 0, 1]);
        assert_eq!(next, vec![2, 3, 0]);
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
    fn round_robin_ignores_a_key_every_request_takes_the_next_turn() {
        let p = Picker::new(3);
        let s = set(3);
        let picks: Vec<u16> = (0..6).map(|k| port(&s, p.pick(&s, Some(k % 2), Instant::now(), &[]))).collect();
        assert_eq!(picks, vec![1, 2, 3, 1, 2, 3]);
    }

    fn port(s: &BackendSet, pick: Option<usize>) -> u16 {
        pick.and_then(|i| s.get(i)).map_or(0, |b| b.addr.port())
    }

    fn weighted(weights: &[u32], strategy: Strategy) -> BackendSet {
        let addrs: Vec<SocketAddr> =
            (1..=weights.len() as u16).map(|p| SocketAddr::from(([127, 0, 0, 1], p))).collect();
        BackendSet::weighted(&addrs, weights).with_strategy(strategy)
    }

    fn counts(p: &Picker, s: &BackendSet, n: usize, now: Instant) -> Vec<usize> {
        let mut c = vec![0; s.len()];
        for _ in 0..n {
            c[p.pick(s, None, now, &[]).unwrap()] += 1;
        }
        c
    }

    #[test]
    fn weighted_five_one_one_is_spread_as_nginx_spreads_it() {
        let s = weighted(&[5, 1, 1], Strategy::Weighted);
        let p = Picker::new(3);
        let picks: Vec<u16> = (0..14).map(|_| port(&s, p.pick(&s, None, Instant::now(), &[]))).collect();
        assert_eq!(picks, vec![1, 1, 2, 1, 3, 1, 1, 1, 1, 2, 1, 3, 1, 1]);
    }

    #[test]
    fn weighted_a_missing_backends_share_goes_to_the_rest_by_their_weights() {
        let now = Instant::now();
        let mut s = weighted(&[2, 3, 1, 1], Strategy::Weighted);
        s.set_health(s.backends()[1].addr, false);
        assert_eq!(counts(&Picker::new(4), &s, 400, now), vec![200, 0, 100, 100]);
        // Ejected: left out of the order until its ejection ends...
        let mut s = weighted(&[2, 3, 1, 1], Strategy::Weighted);
        let until = now + Duration::from_secs(5);
        s.set_ejected(s.backends()[1].addr, Some(until));
        assert_eq!(s.plan_expires(), Some(until));
        assert_eq!(counts(&Picker::new(4), &s, 400, now), vec![200, 0, 100, 100]);
        // ...then the order is stale, and the one planned for that time (the proxies swap it in
        // at their next pick) gives it its share again.
        assert!(s.plan_expires().is_some_and(|t| until >= t));
        let fresh = s.refreshed(until);
        assert_eq!(fresh.plan_expires(), None);
        assert_eq!(counts(&Picker::new(4), &fresh, 700, until), vec![200, 300, 100, 100]);
    }

    #[test]
    fn measured_factors_scale_the_weights_and_are_kept_in_range() {
        let s = weighted(&[1, 1, 1], Strategy::Measured);
        let a = s.backends().iter().map(|b| b.addr).collect::<Vec<_>>();
        let s = s.with_measured(&[(a[0], 1.0), (a[1], 0.5), (a[2], 0.25)]);
        let c = counts(&Picker::new(3), &s, 7 * 100, Instant::now());
        assert_eq!(c, vec![400, 200, 100]);
        let mut odd = s.clone();
        odd.set_measured(a[0], f64::NAN);
        odd.set_measured(a[1], 7.0);
        odd.set_measured(a[2], -1.0);
        assert!(odd.backends().iter().all(|b| b.measured == 1.0), "{odd:?}");
    }

    #[test]
    fn a_weight_change_replans_and_a_health_flip_keeps_the_hash_table() {
        let mut s = weighted(&[1, 1], Strategy::Weighted);
        let a = s.backends()[0].addr;
        s.set_weight(a, 3);
        assert_eq!(counts(&Picker::new(2), &s, 400, Instant::now()), vec![300, 100]);
        let h = weighted(&[1, 1, 1], Strategy::Hash);
        let mut down = h.clone();
        down.set_health(a, false);
        let (before, after) = (h.plan.maglev.as_ref().unwrap(), down.plan.maglev.as_ref().unwrap());
        assert!(Arc::ptr_eq(before, after), "the table depends on addresses and weights only");
        assert_ne!(h, down);
        assert_eq!(h, h.refreshed(Instant::now()), "equal sets whatever their plans' times");
    }

    #[test]
    fn least_connections_avoids_the_busy_and_shares_by_weight_when_idle() {
        let now = Instant::now();
        let s = weighted(&[2, 1, 1], Strategy::LeastConnections);
        let p = Picker::new(3);
        // Idle: every pick ties, and ties follow the smooth weighted order.
        assert_eq!(counts(&p, &s, 400, now), vec![200, 100, 100]);
        // Backend 2 holds three requests: it gets none until the others hold as many per weight.
        for _ in 0..3 {
            p.start(&s, 1);
        }
        let mut picks = Vec::new();
        for _ in 0..6 {
            let i = p.pick(&s, None, now, &[]).unwrap();
            p.start(&s, i);
            picks.push(i);
        }
        assert!(!picks.contains(&1), "{picks:?}");
        assert_eq!(picks.iter().filter(|&&i| i == 0).count(), 4, "weight 2 takes twice the load: {picks:?}");
        p.end(&s, 1, Some(Duration::from_millis(1)), now);
        assert_eq!(p.in_flight(1), 2);
        // Not counted under a strategy that does not use it.
        let rr = weighted(&[1, 1], Strategy::RoundRobin);
        let q = Picker::new(2);
        q.start(&rr, 0);
        assert_eq!(q.in_flight(0), 0);
    }

    #[test]
    fn p2c_never_picks_the_costliest_and_starves_a_slow_backend() {
        let t0 = Instant::now();
        let s = weighted(&[1, 1, 1], Strategy::P2c);
        let p = Picker::new(3);
        let ms = Duration::from_millis(1);
        for (i, l) in [(0, ms), (1, ms), (2, 50 * ms)] {
            p.start(&s, i);
            p.end(&s, i, Some(l), t0);
        }
        let c = counts(&p, &s, 3000, t0);
        assert_eq!(c[2], 0, "the slowest never wins a pair: {c:?}");
        assert!(c[0] > 1200 && c[1] > 1200, "{c:?}");
        // Two backends: always the cheaper.
        let two = weighted(&[1, 1], Strategy::P2c);
        let q = Picker::new(2);
        q.start(&two, 0);
        q.end(&two, 0, Some(10 * ms), t0);
        q.start(&two, 1);
        q.end(&two, 1, Some(ms), t0);
        assert_eq!(counts(&q, &two, 50, t0), vec![0, 50]);
    }

    #[test]
    fn hash_keeps_a_key_on_its_backend_and_moves_it_only_while_it_is_out() {
        let now = Instant::now();
        let mut s = weighted(&[1, 1, 1], Strategy::Hash);
        let p = Picker::new(3);
        let key = hash_value(b"alice");
        let home = p.pick(&s, Some(key), now, &[]).unwrap();
        for _ in 0..5 {
            assert_eq!(p.pick(&s, Some(key), now, &[]), Some(home));
        }
        let addr = s.backends()[home].addr;
        s.set_health(addr, false);
        let away = p.pick(&s, Some(key), now, &[]).unwrap();
        assert_ne!(away, home);
        assert_eq!(p.pick(&s, Some(key), now, &[]), Some(away), "and stays there while it is out");
        let retry = p.pick(&s, Some(key), now, &[away]).unwrap();
        assert!(retry != away && retry != home);
        s.set_health(addr, true);
        assert_eq!(p.pick(&s, Some(key), now, &[]), Some(home), "back home when it returns");
        // No key (e.g. no such header): the next turn of the rotation.
        let turns: Vec<usize> = (0..3).map(|_| p.pick(&s, None, now, &[]).unwrap()).collect();
        assert_eq!(turns.iter().copied().collect::<std::collections::BTreeSet<_>>().len(), 3);
    }

    const STRATEGIES: [Strategy; 6] = [
        Strategy::RoundRobin,
        Strategy::Weighted,
        Strategy::LeastConnections,
        Strategy::P2c,
        Strategy::Hash,
        Strategy::Measured,
    ];

    proptest! {
        /// Whatever the strategy, weights, health, ejections, operator states, load and retries:
        /// a pick is always a backend that may take the request and was not tried, and `None`
        /// only when there is none.
        #[test]
        fn picks_are_always_available_and_untried(
            strategy in 0usize..6,
            backends in proptest::collection::vec((1u32..6, any::<bool>(), 0u8..4, 0u8..3), 1..8),
            tried in proptest::collection::vec(0usize..8, 0..4),
            keys in proptest::collection::vec(proptest::option::of(any::<u64>()), 1..30),
        ) {
            let t0 = Instant::now();
            let weights: Vec<u32> = backends.iter().map(|b| b.0).collect();
            let mut s = weighted(&weights, STRATEGIES[strategy]);
            for (b, &(_, healthy, ejected, admin)) in s.clone().backends().iter().zip(&backends) {
                s.set_health(b.addr, healthy);
                // 0: never; 1: ended before now; 2: ends later; 3: ends exactly now.
                let until = [None, Some(t0), Some(t0 + Duration::from_secs(9)), Some(t0 + Duration::from_secs(1))];
                s.set_ejected(b.addr, until[usize::from(ejected)]);
                s.set_admin(b.addr, [Admin::Enabled, Admin::Draining, Admin::Disabled][usize::from(admin)]);
            }
            let now = t0 + Duration::from_secs(1);
            let p = Picker::new(s.len());
            for key in keys {
                let may = |i: usize| s.get(i).is_some_and(|b| b.available(now)) && !tried.contains(&i);
                match p.pick(&s, key, now, &tried) {
                    Some(i) => {
                        prop_assert!(may(i), "picked {i} of {s:?}");
                        p.start(&s, i);
                    }
                    None => prop_assert!((0..s.len()).all(|i| !may(i))),
                }
            }
        }
    }
}
