//! Whether a backend is in rotation, from the results of its health checks: like HAProxy's
//! `fall 3 rise 2`, a backend leaves after `fall` failed checks in a row and returns after `rise`
//! good ones, so a single lost probe moves no traffic. If every backend is down, all stay in
//! rotation (fail open): a balancer that refuses everything helps nobody, and the checks may be
//! what is wrong. Pure: the caller says what a check found; nothing here probes or keeps time.

use std::net::SocketAddr;

use super::BackendSet;

/// Consecutive results that flip a backend's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HealthRules {
    /// Failed checks in a row that take a backend out of rotation.
    pub fall: u32,
    /// Good checks in a row that bring it back.
    pub rise: u32,
}

impl Default for HealthRules {
    /// HAProxy's defaults.
    fn default() -> Self {
        Self { fall: 3, rise: 2 }
    }
}

/// A change a check result caused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transition {
    /// The backend failed `fall` checks in a row: out of rotation (unless failing open).
    Down(SocketAddr),
    /// The backend passed `rise` checks in a row: back in rotation.
    Up(SocketAddr),
    /// Every backend is down: all are kept in rotation.
    FailOpen,
    /// Some backend is up again after failing open: only the healthy ones are in rotation.
    FailOpenEnded,
}

#[derive(Debug, Clone)]
struct Tracked {
    addr: SocketAddr,
    up: bool,
    /// The current run of failed (or good) results; one of them is always zero.
    fails: u32,
    oks: u32,
}

/// The health of one balancer's backends, in configuration order.
#[derive(Debug, Clone)]
pub struct HealthState {
    rules: HealthRules,
    backends: Vec<Tracked>,
}

impl HealthState {
    /// Every backend starts in rotation.
    pub fn new(addrs: &[SocketAddr], rules: HealthRules) -> Self {
        let backends = addrs.iter().map(|&addr| Tracked { addr, up: true, fails: 0, oks: 0 }).collect();
        Self { rules, backends }
    }

    /// Records one check result for `addr`; returns what changed, in order (a backend flipping,
    /// then fail-open starting or ending). Unknown addresses change nothing.
    pub fn observe(&mut self, addr: SocketAddr, passed: bool) -> Vec<Transition> {
        let failing_open = self.failing_open();
        let rules = self.rules;
        let mut changes = Vec::new();
        for b in self.backends.iter_mut().filter(|b| b.addr == addr) {
            if passed {
                (b.fails, b.oks) = (0, b.oks.saturating_add(1));
                if !b.up && b.oks >= rules.rise {
                    b.up = true;
                    changes.push(Transition::Up(addr));
                }
            } else {
                (b.fails, b.oks) = (b.fails.saturating_add(1), 0);
                if b.up && b.fails >= rules.fall {
                    b.up = false;
                    changes.push(Transition::Down(addr));
                }
            }
        }
        match (failing_open, self.failing_open()) {
            (false, true) => changes.push(Transition::FailOpen),
            (true, false) => changes.push(Transition::FailOpenEnded),
            _ => {}
        }
        changes
    }

    /// Whether every backend is down (and so all are kept in rotation).
    pub fn failing_open(&self) -> bool {
        !self.backends.is_empty() && self.backends.iter().all(|b| !b.up)
    }

    /// Whether `addr` passed its checks (regardless of failing open).
    pub fn is_up(&self, addr: SocketAddr) -> bool {
        self.backends.iter().any(|b| b.addr == addr && b.up)
    }

    /// The backends as the data path should see them: the healthy ones in rotation, or all of
    /// them when failing open.
    pub fn rotation(&self) -> BackendSet {
        let addrs: Vec<SocketAddr> = self.backends.iter().map(|b| b.addr).collect();
        let mut set = BackendSet::new(&addrs);
        if !self.failing_open() {
            for b in &self.backends {
                set.set_health(b.addr, b.up);
            }
        }
        set
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn addr(port: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], port))
    }

    fn in_rotation(h: &HealthState) -> Vec<bool> {
        h.rotation().backends().iter().map(|b| b.healthy).collect()
    }

    #[test]
    fn three_failures_take_a_backend_out_and_two_successes_bring_it_back() {
        let mut h = HealthState::new(&[addr(1), addr(2)], HealthRules::default());
        // One or two lost probes move nothing; the third takes it out.
        assert_eq!(h.observe(addr(2), false), vec![]);
        assert_eq!(h.observe(addr(2), false), vec![]);
        assert_eq!(in_rotation(&h), vec![true, true]);
        assert_eq!(h.observe(addr(2), false), vec![Transition::Down(addr(2))]);
        assert_eq!(in_rotation(&h), vec![true, false]);
        // A success in between restarts the count.
        assert_eq!(h.observe(addr(2), true), vec![]);
        assert_eq!(h.observe(addr(2), false), vec![]);
        assert_eq!(h.observe(addr(2), true), vec![]);
        assert_eq!(h.observe(addr(2), true), vec![Transition::Up(addr(2))]);
        assert_eq!(in_rotation(&h), vec![true, true]);
    }

    #[test]
    fn when_every_backend_fails_all_stay_in_rotation() {
        let mut h = HealthState::new(&[addr(1), addr(2)], HealthRules { fall: 1, rise: 1 });
        assert_eq!(h.observe(addr(1), false), vec![Transition::Down(addr(1))]);
        assert_eq!(in_rotation(&h), vec![false, true]);
        assert_eq!(h.observe(addr(2), false), vec![Transition::Down(addr(2)), Transition::FailOpen]);
        assert_eq!(in_rotation(&h), vec![true, true], "fail open");
        assert!(!h.is_up(addr(1)) && !h.is_up(addr(2)));
        assert_eq!(h.observe(addr(2), true), vec![Transition::Up(addr(2)), Transition::FailOpenEnded]);
        assert_eq!(in_rotation(&h), vec![false, true]);
    }

    #[test]
    fn unknown_addresses_change_nothing() {
        let mut h = HealthState::new(&[addr(1)], HealthRules { fall: 1, rise: 1 });
        assert_eq!(h.observe(addr(9), false), vec![]);
        assert_eq!(in_rotation(&h), vec![true]);
    }

    proptest! {
        /// Whatever the results, a backend is out of rotation exactly when its last `fall`
        /// results failed and no `rise` successes followed — unless all are out (fail open).
        #[test]
        fn rotation_follows_the_last_results(
            results in proptest::collection::vec((0..4u16, any::<bool>()), 0..200),
            fall in 1..5u32,
            rise in 1..5u32,
        ) {
            let addrs: Vec<SocketAddr> = (0..4).map(addr).collect();
            let mut h = HealthState::new(&addrs, HealthRules { fall, rise });
            let mut history: Vec<Vec<bool>> = vec![Vec::new(); 4];
            for (b, ok) in results {
                h.observe(addr(b), ok);
                history[b as usize].push(ok);
            }
            // Replay each backend's history with the rules to find its state.
            let expect_up: Vec<bool> = history.iter().map(|hist| {
                let (mut up, mut fails, mut oks) = (true, 0, 0);
                for &ok in hist {
                    if ok { fails = 0; oks += 1; if oks >= rise { up = true; } }
                    else { oks = 0; fails += 1; if fails >= fall { up = false; } }
                }
                up
            }).collect();
            let all_down = expect_up.iter().all(|u| !u);
            let rotation = in_rotation(&h);
            for i in 0..4 {
                prop_assert_eq!(h.is_up(addr(i as u16)), expect_up[i]);
                prop_assert_eq!(rotation[i], expect_up[i] || all_down);
            }
            prop_assert!(rotation.iter().any(|&r| r), "never an empty rotation");
        }
    }
}
