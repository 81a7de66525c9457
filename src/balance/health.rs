//! Whether a backend is in rotation, from the results of its health checks: like HAProxy's
//! `fall 3 rise 2`, a backend leaves after `fall` failed checks in a row and returns after `rise`
//! good ones, so a single lost probe moves no traffic.
//!
//! A lossy backend is not a dead one. Where checks can be lost (UDP: `tolerate_loss`), a check
//! that got no answer is weaker evidence than one that was refused: a backend whose checks were
//! already lost at a rate `p` before the current run needs a run of lost checks long enough to
//! happen by chance less than once in a million (`p^k < 1e-6`), at most [`MAX_FALL`]. With little
//! history, `p` is estimated as (lost + 1) / (checks + 2), so a new backend is not judged on its
//! first few checks. So the classic lab's servers, losing 36 % of pings by design, stay in (14
//! lost in a row needed), while a backend that answered its last 20 checks and then goes silent
//! leaves after `fall`, and one that refuses (port unreachable) always leaves after `fall`.
//!
//! If every backend is down, all stay in rotation (fail open): a balancer that refuses
//! everything helps nobody, and the checks may be what is wrong. Pure: the caller says what a
//! check found; nothing here probes or keeps time.

use std::net::SocketAddr;

use super::BackendSet;

/// The longest run of failed checks a lossy backend may need before it leaves.
pub const MAX_FALL: u32 = 20;
/// Checks of history a loss rate is estimated from (at most), and needs (at least).
const HISTORY: u32 = 128;
const MIN_HISTORY: u32 = 20;

/// Consecutive results that flip a backend's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HealthRules {
    /// Failed checks in a row that take a backend out of rotation.
    pub fall: u32,
    /// Good checks in a row that bring it back.
    pub rise: u32,
    /// Whether a backend that was already lossy needs a longer run of failures (see above).
    pub tolerate_loss: bool,
}

impl Default for HealthRules {
    /// HAProxy's defaults, loss-aware.
    fn default() -> Self {
        Self { fall: 3, rise: 2, tolerate_loss: true }
    }
}

impl HealthRules {
    /// The run of failures that takes a backend out, given the share `p` of its checks that
    /// failed before this run.
    pub fn fall_at_loss(&self, p: f64) -> u32 {
        if !self.tolerate_loss || p <= 0.0 || p.is_nan() {
            return self.fall;
        }
        if p >= 1.0 {
            return MAX_FALL.max(self.fall);
        }
        let need = (1e-6f64.ln() / p.ln()).ceil();
        (need.min(f64::from(MAX_FALL)) as u32).clamp(self.fall, MAX_FALL.max(self.fall))
    }
}

/// What one health check found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Check {
    /// The backend answered as expected.
    Passed,
    /// No answer in time (possibly a lost datagram).
    Lost,
    /// The backend refused, reset, or answered wrongly.
    Failed,
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
    /// The last results, newest in bit 0, a failure a 1; and how many there are (≤ 128).
    history: u128,
    seen: u32,
}

impl Tracked {
    /// The share of failed checks before the current run of failures; smoothed towards 1/2
    /// while there are fewer than [`MIN_HISTORY`] of them.
    fn loss_before_run(&self) -> f64 {
        let run = self.fails.min(self.seen);
        let prior = self.seen - run;
        let older = if run >= HISTORY { 0 } else { self.history >> run };
        let failed = f64::from(older.count_ones());
        if prior < MIN_HISTORY { (failed + 1.0) / (f64::from(prior) + 2.0) } else { failed / f64::from(prior) }
    }
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
        let backends =
            addrs.iter().map(|&addr| Tracked { addr, up: true, fails: 0, oks: 0, history: 0, seen: 0 }).collect();
        Self { rules, backends }
    }

    /// Every backend starts where `set` has it: in rotation or not (checks that start anew on
    /// a reload go on from what the previous ones found).
    pub fn starting_from(set: &BackendSet, rules: HealthRules) -> Self {
        let mut state = Self::new(&set.backends().iter().map(|b| b.addr).collect::<Vec<_>>(), rules);
        for (t, b) in state.backends.iter_mut().zip(set.backends()) {
            t.up = b.healthy;
        }
        state
    }

    /// Records one check result for `addr`; returns what changed, in order (a backend flipping,
    /// then fail-open starting or ending). Unknown addresses change nothing.
    pub fn observe(&mut self, addr: SocketAddr, check: Check) -> Vec<Transition> {
        let passed = check == Check::Passed;
        let failing_open = self.failing_open();
        let rules = self.rules;
        let mut changes = Vec::new();
        for b in self.backends.iter_mut().filter(|b| b.addr == addr) {
            b.history = (b.history << 1) | u128::from(!passed);
            b.seen = (b.seen + 1).min(HISTORY);
            if passed {
                (b.fails, b.oks) = (0, b.oks.saturating_add(1));
                if !b.up && b.oks >= rules.rise {
                    b.up = true;
                    changes.push(Transition::Up(addr));
                }
            } else {
                (b.fails, b.oks) = (b.fails.saturating_add(1), 0);
                let fall = if check == Check::Lost && rules.tolerate_loss {
                    rules.fall_at_loss(b.loss_before_run())
                } else {
                    rules.fall
                };
                if b.up && b.fails >= fall {
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
        assert_eq!(h.observe(addr(2), Check::Failed), vec![]);
        assert_eq!(h.observe(addr(2), Check::Failed), vec![]);
        assert_eq!(in_rotation(&h), vec![true, true]);
        assert_eq!(h.observe(addr(2), Check::Failed), vec![Transition::Down(addr(2))]);
        assert_eq!(in_rotation(&h), vec![true, false]);
        // A success in between restarts the count.
        assert_eq!(h.observe(addr(2), Check::Passed), vec![]);
        assert_eq!(h.observe(addr(2), Check::Failed), vec![]);
        assert_eq!(h.observe(addr(2), Check::Passed), vec![]);
        assert_eq!(h.observe(addr(2), Check::Passed), vec![Transition::Up(addr(2))]);
        assert_eq!(in_rotation(&h), vec![true, true]);
    }

    #[test]
    fn when_every_backend_fails_all_stay_in_rotation() {
        let mut h = HealthState::new(&[addr(1), addr(2)], HealthRules { fall: 1, rise: 1, tolerate_loss: true });
        assert_eq!(h.observe(addr(1), Check::Failed), vec![Transition::Down(addr(1))]);
        assert_eq!(in_rotation(&h), vec![false, true]);
        assert_eq!(h.observe(addr(2), Check::Failed), vec![Transition::Down(addr(2)), Transition::FailOpen]);
        assert_eq!(in_rotation(&h), vec![true, true], "fail open");
        assert!(!h.is_up(addr(1)) && !h.is_up(addr(2)));
        assert_eq!(h.observe(addr(2), Check::Passed), vec![Transition::Up(addr(2)), Transition::FailOpenEnded]);
        assert_eq!(in_rotation(&h), vec![false, true]);
    }

    #[test]
    fn unknown_addresses_change_nothing() {
        let mut h = HealthState::new(&[addr(1)], HealthRules { fall: 1, rise: 1, tolerate_loss: true });
        assert_eq!(h.observe(addr(9), Check::Failed), vec![]);
        assert_eq!(in_rotation(&h), vec![true]);
    }

    /// The classic lab: 36 % of pings lost by design. Simulated over 10 minutes of 1 s checks
    /// for three servers (seeded), none leaves; then one stops answering and leaves.
    #[test]
    fn a_lossy_backend_stays_in_and_a_dead_one_leaves() {
        // A seeded xorshift: enough randomness for a loss pattern, nothing imported.
        let mut state = 0x9E37_79B9_7F4A_7C15u64;
        let mut rand = || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state >> 11) as f64 / (1u64 << 53) as f64
        };
        let addrs = [addr(1), addr(2), addr(3)];
        let mut h = HealthState::new(&addrs, HealthRules::default());
        for _ in 0..600 {
            for a in addrs {
                let check = if rand() >= 0.36 { Check::Passed } else { Check::Lost };
                let changes = h.observe(a, check);
                assert_eq!(changes, vec![], "a lossy server flapped");
            }
        }
        let mut run = 0;
        while h.is_up(addr(1)) {
            h.observe(addr(1), Check::Lost);
            run += 1;
        }
        // It leaves after the run its measured loss (about 0.36) calls for: 0.36^14 < 1e-6 < 0.36^13.
        assert_eq!(HealthRules::default().fall_at_loss(0.36), 14);
        assert!((13..=16).contains(&run), "left after {run} lost checks");
        // A backend that answered everything leaves after `fall`.
        let mut h = HealthState::new(&addrs, HealthRules::default());
        for _ in 0..50 {
            h.observe(addr(2), Check::Passed);
        }
        for i in 1..=3 {
            let changes = h.observe(addr(2), Check::Lost);
            assert_eq!(changes.is_empty(), i < 3, "silent, check {i}");
        }
        // One that refuses leaves after `fall`, even from the start.
        for i in 1..=3 {
            let changes = h.observe(addr(3), Check::Failed);
            assert_eq!(changes.is_empty(), i < 3, "refused, check {i}");
        }
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
            let mut h = HealthState::new(&addrs, HealthRules { fall, rise, tolerate_loss: false });
            let mut history: Vec<Vec<bool>> = vec![Vec::new(); 4];
            for (b, ok) in results {
                h.observe(addr(b), if ok { Check::Passed } else { Check::Failed });
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
