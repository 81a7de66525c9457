//! What the load-aware strategies know of each backend, shared by every worker of a balancer:
//! requests in flight (least-connections, p2c) and a peak-sensitive moving average of observed
//! latency (p2c), as finagle's and linkerd's PeakEWMA keep it. Plain atomics: a worker never
//! waits for another; two updates racing may lose one sample, as a counter never would.
//!
//! Time is passed in; the average is kept as nanoseconds since the first time seen.

use std::cell::Cell;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicI64, AtomicU32, AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};

/// How fast the average forgets: a sample's weight halves in about 7 s (linkerd's 10 s decay).
pub const DECAY: Duration = Duration::from_secs(10);

/// The cost of a backend with requests in flight but no latency seen yet (finagle's penalty):
/// larger than any measured one, so concurrent requests do not all pile onto a newcomer.
const PENALTY_NS: f64 = 1e12;

/// Per backend: requests in flight and the latency average.
#[derive(Debug)]
pub(crate) struct Load {
    in_flight: Box<[AtomicU32]>,
    /// The average, as `f64` bits, in nanoseconds...
    cost: Box<[AtomicU64]>,
    /// ...as of this many nanoseconds after `epoch`.
    stamp: Box<[AtomicU64]>,
    epoch: OnceLock<Instant>,
    /// nginx's current weights for smooth weighted round robin among the backends that tie
    /// (least-connections), in thousandths of a weight.
    current: Box<[AtomicI64]>,
}

impl Load {
    pub(crate) fn new(backends: usize) -> Self {
        Self {
            in_flight: (0..backends).map(|_| AtomicU32::new(0)).collect(),
            cost: (0..backends).map(|_| AtomicU64::new(0f64.to_bits())).collect(),
            stamp: (0..backends).map(|_| AtomicU64::new(0)).collect(),
            epoch: OnceLock::new(),
            current: (0..backends).map(|_| AtomicI64::new(0)).collect(),
        }
    }

    /// One step of nginx's smooth weighted round robin over `(index, weight)` (the backends
    /// that tie): each one's current weight grows by its weight, the largest is taken and pays
    /// the total. The sum of the current weights never changes, so racing workers cannot make
    /// them drift; they may only both take the same backend once.
    pub(crate) fn smooth_among(&self, backends: impl Iterator<Item = (usize, f64)>) -> Option<usize> {
        let mut total = 0i64;
        let mut best: Option<(usize, i64)> = None;
        for (i, w) in backends {
            let Some(current) = self.current.get(i) else { continue };
            let w = (w * 1000.0).round().clamp(1.0, 1e12) as i64;
            let now = current.fetch_add(w, Relaxed) + w;
            total += w;
            if best.is_none_or(|(_, b)| now > b) {
                best = Some((i, now));
            }
        }
        let (i, _) = best?;
        self.current[i].fetch_sub(total, Relaxed);
        Some(i)
    }

    /// A request went to backend `index`.
    pub(crate) fn start(&self, index: usize) {
        if let Some(n) = self.in_flight.get(index) {
            n.fetch_add(1, Relaxed);
        }
    }

    /// `count` requests to backend `index` ended (never below zero).
    pub(crate) fn end(&self, index: usize, count: u32) {
        if let Some(n) = self.in_flight.get(index) {
            let _ = n.fetch_update(Relaxed, Relaxed, |v| Some(v.saturating_sub(count)));
        }
    }

    /// Requests in flight to backend `index`.
    pub(crate) fn in_flight(&self, index: usize) -> u32 {
        self.in_flight.get(index).map_or(0, |n| n.load(Relaxed))
    }

    fn nanos(&self, now: Instant) -> u64 {
        let epoch = *self.epoch.get_or_init(|| now);
        u64::try_from(now.saturating_duration_since(epoch).as_nanos()).unwrap_or(u64::MAX)
    }

    /// Backend `index` took `latency` to answer at `now`. Peak-sensitive: a slower sample
    /// raises the average to it at once; a faster one pulls it down by the time since the last.
    pub(crate) fn observe(&self, index: usize, latency: Duration, now: Instant) {
        let (Some(cost), Some(stamp)) = (self.cost.get(index), self.stamp.get(index)) else { return };
        let t = self.nanos(now);
        let rtt = latency.as_nanos() as f64;
        let prev = f64::from_bits(cost.load(Relaxed));
        let w = decay(t.saturating_sub(stamp.load(Relaxed)));
        let next = if rtt > prev { rtt } else { prev * w + rtt * (1.0 - w) };
        cost.store(next.to_bits(), Relaxed);
        stamp.store(t, Relaxed);
    }

    /// The latency average of backend `index` at `now` in nanoseconds (decaying toward 0 while
    /// nothing is observed, so an idle backend is tried again); 0 when never observed.
    pub(crate) fn latency(&self, index: usize, now: Instant) -> f64 {
        let (Some(cost), Some(stamp)) = (self.cost.get(index), self.stamp.get(index)) else { return 0.0 };
        let t = self.nanos(now);
        f64::from_bits(cost.load(Relaxed)) * decay(t.saturating_sub(stamp.load(Relaxed)))
    }

    /// PeakEWMA's cost of sending backend `index` one more request: the latency average times
    /// the requests in flight plus this one, over its `weight`.
    pub(crate) fn cost(&self, index: usize, weight: f64, now: Instant) -> f64 {
        let pending = f64::from(self.in_flight(index));
        let latency = self.latency(index, now);
        let raw = if latency == 0.0 && pending > 0.0 { PENALTY_NS + pending } else { latency * (pending + 1.0) };
        raw / weight.max(f64::MIN_POSITIVE)
    }
}

/// The weight left to a sample `elapsed_ns` old.
fn decay(elapsed_ns: u64) -> f64 {
    (-(elapsed_ns as f64) / DECAY.as_nanos() as f64).exp()
}

thread_local! {
    /// xorshift64* state, seeded per thread from the OS-seeded hasher keys of the standard library.
    static RNG: Cell<u64> = Cell::new({
        use std::hash::{BuildHasher, Hasher};
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u64(0x9e37_79b9_7f4a_7c15);
        h.finish() | 1
    });
}

/// A fast random number for this thread (xorshift64*; not for anything secret).
pub(crate) fn random() -> u64 {
    RNG.with(|s| {
        let mut x = s.get();
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        s.set(x);
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn a_slower_sample_raises_the_average_at_once_a_faster_one_slowly() {
        let l = Load::new(1);
        let t0 = Instant::now();
        l.observe(0, MS, t0);
        assert_eq!(l.latency(0, t0), 1e6);
        l.observe(0, 50 * MS, t0 + 10 * MS);
        assert!(l.latency(0, t0 + 10 * MS) > 49.9e6, "peak: at once");
        // One fast sample 1 s later moves it only a tenth of the way (decay 10 s).
        l.observe(0, MS, t0 + 1010 * MS);
        let after = l.latency(0, t0 + 1010 * MS);
        assert!(after > 40e6 && after < 47e6, "{after}");
        // A fast sample a second for a minute and a half brings it back down.
        for s in 2..100 {
            l.observe(0, MS, t0 + s * 1000 * MS);
        }
        assert!(l.latency(0, t0 + 99_000 * MS) < 1.1e6);
    }

    #[test]
    fn an_idle_backends_average_decays_so_it_is_tried_again() {
        let l = Load::new(1);
        let t0 = Instant::now();
        l.observe(0, 50 * MS, t0);
        assert!(l.latency(0, t0 + Duration::from_secs(10)) < 50e6 * 0.37);
        assert!(l.latency(0, t0 + Duration::from_secs(100)) < 50e6 * 1e-4);
    }

    #[test]
    fn cost_grows_with_requests_in_flight_and_shrinks_with_weight() {
        let l = Load::new(2);
        let t0 = Instant::now();
        assert_eq!(l.cost(0, 1.0, t0), 0.0, "never seen, nothing in flight: try it");
        l.start(0);
        assert!(l.cost(0, 1.0, t0) >= PENALTY_NS, "in flight but never seen: a penalty");
        l.observe(0, MS, t0);
        l.observe(1, MS, t0);
        assert_eq!(l.cost(0, 1.0, t0), 2e6);
        assert_eq!(l.cost(1, 2.0, t0), 0.5e6);
        l.end(0, 1);
        l.end(0, 1);
        assert_eq!(l.in_flight(0), 0, "never below zero");
        assert_eq!(l.cost(7, 1.0, t0), 0.0, "unknown index: nothing known");
    }

    #[test]
    fn ties_are_broken_by_smooth_weighted_round_robin_over_the_tied() {
        let l = Load::new(4);
        let picks: Vec<usize> =
            (0..7).map(|_| l.smooth_among([(0, 5.0), (2, 1.0), (3, 1.0)].into_iter()).unwrap()).collect();
        assert_eq!(picks, vec![0, 0, 2, 0, 3, 0, 0]);
        // Two of them tie now: they alternate, whatever the others' history.
        let picks: Vec<usize> = (0..4).map(|_| l.smooth_among([(2, 1.0), (3, 1.0)].into_iter()).unwrap()).collect();
        assert_eq!(picks.iter().filter(|&&i| i == 2).count(), 2, "{picks:?}");
        assert_eq!(l.smooth_among(std::iter::empty()), None);
    }

    #[test]
    fn random_numbers_differ() {
        let a: Vec<u64> = (0..8).map(|_| random()).collect();
        assert!(a.windows(2).all(|w| w[0] != w[1]));
    }
}
