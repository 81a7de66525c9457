//! Passive ejection (outlier detection, as Envoy does it): a backend whose requests fail on the
//! data path — refused or timed-out connects, resets, response timeouts, 5xx answers — several
//! times in a row is taken out for a while, so the next request does not pay for the last one's
//! lesson. The time grows with each ejection in a row (base × n, capped); at most a share of the
//! backends is ejected at once, and never the last one that may take requests. Pure: the caller
//! says what happened and when.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

/// When and for how long backends are ejected.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct OutlierRules {
    /// Failures in a row that eject a backend (0: never eject).
    pub failures: u32,
    /// The first ejection's length; the n-th in a row lasts n times as long...
    pub base: Duration,
    /// ...but never longer than this.
    pub max: Duration,
    /// The largest share of the backends ejected at once (at least one may always be).
    pub max_share: f64,
}

impl Default for OutlierRules {
    /// Two failures in a row eject for 10 s (nginx's `fail_timeout`), growing to 5 minutes;
    /// at most half of the backends at once.
    fn default() -> Self {
        Self { failures: 2, base: Duration::from_secs(10), max: Duration::from_secs(300), max_share: 0.5 }
    }
}

/// An ejection that just started.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ejection {
    pub addr: SocketAddr,
    pub until: Instant,
    pub length: Duration,
    /// Ejections of this backend in a row, this one included.
    pub count: u32,
}

#[derive(Debug, Clone)]
struct Track {
    addr: SocketAddr,
    failures: u32,
    ejections: u32,
    until: Option<Instant>,
}

/// The data path's record of one balancer's backends.
#[derive(Debug, Clone)]
pub struct Outliers {
    rules: OutlierRules,
    backends: Vec<Track>,
}

impl Outliers {
    pub fn new(addrs: &[SocketAddr], rules: OutlierRules) -> Self {
        let backends = addrs.iter().map(|&addr| Track { addr, failures: 0, ejections: 0, until: None }).collect();
        Self { rules, backends }
    }

    /// A request to `addr` succeeded: its run of failures ends.
    pub fn success(&mut self, addr: SocketAddr) {
        for b in self.backends.iter_mut().filter(|b| b.addr == addr) {
            b.failures = 0;
        }
    }

    /// A request to `addr` failed at `now`, while `available` backends (this one included) could
    /// take requests; returns the ejection this causes, if any.
    pub fn failure(&mut self, addr: SocketAddr, now: Instant, available: usize) -> Option<Ejection> {
        let rules = self.rules;
        let ejected_now = self.backends.iter().filter(|b| b.until.is_some_and(|t| now < t)).count();
        let cap = ((self.backends.len() as f64 * rules.max_share).floor() as usize).max(1);
        let b = self.backends.iter_mut().find(|b| b.addr == addr)?;
        if b.until.is_some_and(|t| now < t) {
            return None; // already out: a request that was in flight when it was ejected
        }
        b.failures = b.failures.saturating_add(1);
        if rules.failures == 0 || b.failures < rules.failures || available <= 1 || ejected_now >= cap {
            return None;
        }
        // A backend that stayed in for a full `max` since its last ejection starts over.
        if b.until.is_some_and(|t| now >= t + rules.max) {
            b.ejections = 0;
        }
        b.ejections = b.ejections.saturating_add(1);
        let length = rules.base.saturating_mul(b.ejections).min(rules.max);
        let until = now + length;
        b.until = Some(until);
        b.failures = 0;
        Some(Ejection { addr, until, length, count: b.ejections })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn addr(port: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], port))
    }

    fn rules() -> OutlierRules {
        OutlierRules { failures: 2, base: Duration::from_secs(10), max: Duration::from_secs(30), max_share: 0.5 }
    }

    #[test]
    fn failures_in_a_row_eject_and_a_success_between_them_does_not() {
        let mut o = Outliers::new(&[addr(1), addr(2), addr(3), addr(4)], rules());
        let t = Instant::now();
        assert_eq!(o.failure(addr(1), t, 4), None);
        o.success(addr(1));
        assert_eq!(o.failure(addr(1), t, 4), None);
        let e = o.failure(addr(1), t, 4).unwrap();
        assert_eq!((e.addr, e.length, e.count), (addr(1), Duration::from_secs(10), 1));
    }

    #[test]
    fn each_ejection_in_a_row_lasts_longer_up_to_the_cap() {
        let mut o = Outliers::new(&[addr(1), addr(2)], rules());
        let mut t = Instant::now();
        let mut lengths = Vec::new();
        for _ in 0..4 {
            o.failure(addr(1), t, 2);
            let e = o.failure(addr(1), t, 2).unwrap();
            lengths.push(e.length.as_secs());
            t = e.until; // back in, and failing again at once
        }
        assert_eq!(lengths, vec![10, 20, 30, 30]);
        // After staying in for `max`, it starts over.
        t += Duration::from_secs(30);
        o.failure(addr(1), t, 2);
        assert_eq!(o.failure(addr(1), t, 2).unwrap().length.as_secs(), 10);
    }

    #[test]
    fn at_most_half_are_ejected_and_never_the_last_available_one() {
        let mut o = Outliers::new(&[addr(1), addr(2), addr(3), addr(4)], rules());
        let t = Instant::now();
        let mut ejected = 0;
        for p in 1..=4 {
            o.failure(addr(p), t, 4);
            ejected += usize::from(o.failure(addr(p), t, 4).is_some());
        }
        assert_eq!(ejected, 2, "half of four");
        let mut o = Outliers::new(&[addr(1), addr(2)], rules());
        o.failure(addr(1), t, 1);
        assert_eq!(o.failure(addr(1), t, 1), None, "the only available backend stays");
    }

    proptest! {
        /// Whatever happens, the ejected share never exceeds the cap.
        #[test]
        fn the_cap_holds(events in proptest::collection::vec((1..7u16, any::<bool>(), 0..40u64), 0..300)) {
            let addrs: Vec<SocketAddr> = (1..7).map(addr).collect();
            let mut o = Outliers::new(&addrs, rules());
            let start = Instant::now();
            let mut now = start;
            for (p, ok, dt) in events {
                now += Duration::from_secs(dt);
                if ok { o.success(addr(p)); } else { o.failure(addr(p), now, 6); }
                let out = o.backends.iter().filter(|b| b.until.is_some_and(|t| now < t)).count();
                prop_assert!(out <= 3, "{} of 6 ejected", out);
            }
        }
    }
}
