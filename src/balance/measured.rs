//! The `measured` strategy's weights, from the monitor's own probes of each backend: a
//! factor in (0, 1] per backend that the weighted rotation multiplies the configured weight by
//! ([`super::Backend::effective_weight`]). No peer does this: nginx's `least_time` and
//! linkerd's PeakEWMA time the real requests only, so a backend nobody is sending to is never
//! re-measured and a lossy path shows only as slow requests. Here the probes go out whatever
//! the traffic, so the weights follow the network, and each one says why in words.
//!
//! The score of a backend is
//!
//! ```text
//! 2^(−loss / 5 %) / (rtt + 1 ms)
//! ```
//!
//! and its factor is its score over the best backend's, never below [`FLOOR`], rounded to
//! hundredths (so the weight explained is the weight used):
//!
//! - `rtt` is an EWMA, with a half-life of [`RTT_HALF_LIFE`] of wall time at the probe
//!   interval, of the median of the answers of the last [`RTT_SPAN`] (at least 3). The median
//!   first, because the round trips a prober sees on a busy host are heavy-tailed: on the lab
//!   machine (load 8 on 2 cores) a backend answering in 3.4 ms at the median averaged 11.5 ms,
//!   its slowest 5 % above 60 ms, all of it the prober's and the relays' waits for a CPU; an
//!   average of that says more about the host than about the backend. Late answers up to half
//!   of the span move nothing; a lasting change shows within about 8 s, and a backend that is
//!   fast again weighs most of its share within about 15 s. Shares follow 1/RTT: a backend
//!   twice as far away gets half the traffic. The millisecond added to every RTT is the
//!   resolution of the comparison: differences well below it (loopback, a LAN) move nothing.
//! - `loss` is the share of the probes over the last [`LOSS_SPAN`] that got no answer (lost,
//!   refused or failed). Every 5 points of loss halve the weight (1 % costs 13 %, 10 % three
//!   quarters, 20 % fifteen sixteenths): a request that hits a lost packet waits a
//!   retransmission timeout, which dwarfs any RTT difference, so loss must weigh more than
//!   the `(1 − loss)²` a first sketch used (with it a backend losing 20 % kept two thirds of
//!   its weight).
//! - The floor keeps a backend that is recovering in the rotation, so it is still tried (by
//!   the users' requests as well as the probes) and its weight climbs back as it proves
//!   itself: a kind of slow start.
//! - A backend without any probe result yet gets 1: nothing is starved at the start.
//!
//! Pure: the caller feeds probe results and reads factors; no clock, no sockets.

use std::collections::VecDeque;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::time::Duration;

/// The least factor a backend gets, however bad its probes.
pub const FLOOR: f64 = 0.05;
/// The time over which a change of RTT counts half in the EWMA.
pub const RTT_HALF_LIFE: Duration = Duration::from_secs(2);
/// The span of answers whose median goes into the EWMA.
pub const RTT_SPAN: Duration = Duration::from_secs(3);
/// Answers the median is taken of, at least and at most (whatever the interval).
const MIN_RTT_ANSWERS: usize = 3;
const MAX_RTT_ANSWERS: usize = 64;
/// The span of probes whose loss counts.
pub const LOSS_SPAN: Duration = Duration::from_secs(60);
/// What is added to every RTT before comparing them, in ms.
const RTT_SLACK_MS: f64 = 1.0;
/// Loss that halves the weight.
const LOSS_HALVING: f64 = 0.05;
/// Probes the loss is counted over, at least and at most (whatever the interval).
const MIN_LOSS_PROBES: usize = 10;
const MAX_LOSS_PROBES: usize = 3600;

/// What the probes of one backend found recently: the RTT EWMA of its answers and the share of
/// probes without one (each `None` until there is something to say).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Measure {
    pub rtt_ms: Option<f64>,
    pub loss: Option<f64>,
}

/// A backend's factor, and why in words.
#[derive(Debug, Clone, PartialEq)]
pub struct Factor {
    /// In [`FLOOR`]..=1, a multiple of 0.01.
    pub factor: f64,
    /// `rtt 4.2 ms (3.8× the median), loss 12%`, `best (rtt 1.1 ms, no loss)`, `not measured yet`.
    pub why: String,
}

impl Factor {
    /// The whole explanation of a backend's weight, e.g. `weight 0.18: rtt 4.2 ms (3.8× the
    /// median), loss 12%`, or `weight 0.9 (5 × 0.18): …` for a configured weight of 5.
    pub fn explain(&self, configured: u32) -> String {
        let effective = f64::from(configured) * self.factor;
        let mut s = format!("weight {}", number(effective));
        if configured != 1 && self.factor != 1.0 {
            let _ = write!(s, " ({configured} × {})", number(self.factor));
        }
        if self.factor <= FLOOR {
            s.push_str(", the floor");
        }
        let _ = write!(s, ": {}", self.why);
        s
    }
}

/// The factors of backends measured as `measures` (in the same order); see the module's text.
pub fn factors(measures: &[Measure]) -> Vec<Factor> {
    let rtts: Vec<f64> =
        measures.iter().filter_map(|m| m.rtt_ms).filter(|r| r.is_finite()).map(|r| r.max(0.0)).collect();
    let median = median(&rtts);
    // A backend that never answered is scored at the median RTT: its loss says it all.
    let score = |m: &Measure| -> Option<f64> {
        let loss = m.loss?.clamp(0.0, 1.0);
        let loss = if loss.is_nan() { 1.0 } else { loss };
        let rtt = m.rtt_ms.filter(|r| r.is_finite()).map(|r| r.max(0.0)).or(median).unwrap_or(0.0);
        Some(if loss >= 1.0 { 0.0 } else { (-loss / LOSS_HALVING).exp2() / (rtt + RTT_SLACK_MS) })
    };
    let scores: Vec<Option<f64>> = measures.iter().map(score).collect();
    let best = scores.iter().flatten().copied().fold(0.0f64, f64::max);
    measures
        .iter()
        .zip(&scores)
        .map(|(m, score)| match *score {
            None => Factor { factor: 1.0, why: "not measured yet".into() },
            Some(_) if best <= 0.0 => Factor { factor: 1.0, why: "no backend answers its probes".into() },
            Some(s) => {
                let factor = ((s / best * 100.0).round() / 100.0).clamp(FLOOR, 1.0);
                let why = if s >= best { format!("best ({})", figures(m, None)) } else { figures(m, median) };
                Factor { factor, why }
            }
        })
        .collect()
}

/// `rtt 4.2 ms (3.8× the median), loss 12%`; the comparison only when `median` is given and
/// the backend is slower than it by 5 % or more.
fn figures(m: &Measure, median: Option<f64>) -> String {
    let loss = m.loss.unwrap_or(0.0);
    let loss = if loss <= 0.0 { "no loss".to_string() } else { format!("loss {}%", number(loss * 100.0)) };
    match m.rtt_ms {
        None => format!("no answer, {loss}"),
        Some(rtt) => {
            let ratio = median.filter(|&md| md > 0.0).map(|md| rtt / md).filter(|r| *r >= 1.05);
            match ratio {
                Some(r) => format!("rtt {} ms ({}× the median), {loss}", number(rtt), number(r)),
                None => format!("rtt {} ms, {loss}", number(rtt)),
            }
        }
    }
}

/// Two significant digits, at most two decimals: `0.18`, `4.2`, `20`, `1`, `0.05`.
fn number(v: f64) -> String {
    let decimals = if v >= 10.0 {
        0
    } else if v >= 1.0 {
        1
    } else {
        2
    };
    let s = format!("{v:.decimals$}");
    if s.contains('.') { s.trim_end_matches('0').trim_end_matches('.').to_string() } else { s }
}

/// The low median: of an even number, the lower of the middle two (so that of two backends, the
/// slower is compared with the faster, not with their average).
fn median(values: &[f64]) -> Option<f64> {
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    v.get(v.len().saturating_sub(1) / 2).copied()
}

/// One backend's recent probes: the RTT EWMA, the last answers, and the outcomes over the loss
/// span.
#[derive(Debug, Clone)]
struct Track {
    addr: SocketAddr,
    rtt_ms: Option<f64>,
    /// The round trips of the last answers, newest last.
    answers: VecDeque<f64>,
    /// Newest last; `true` for a probe without an answer.
    outcomes: VecDeque<bool>,
    unanswered: usize,
}

/// One balancer's probe results per backend, and the factors they give.
#[derive(Debug, Clone)]
pub struct Measured {
    /// The EWMA's weight of a new answer.
    alpha: f64,
    /// Answers the median is taken of.
    answers: usize,
    /// Probes the loss is counted over.
    span: usize,
    backends: Vec<Track>,
}

impl Measured {
    /// Backends probed every `interval` (which sets how many probes make the EWMA's half-life
    /// and the loss span).
    pub fn new(addrs: &[SocketAddr], interval: Duration) -> Self {
        let interval = interval.max(Duration::from_millis(1)).as_secs_f64();
        let alpha = 1.0 - (-interval / RTT_HALF_LIFE.as_secs_f64()).exp2();
        let per = |span: Duration| (span.as_secs_f64() / interval).round() as usize;
        let answers = per(RTT_SPAN).clamp(MIN_RTT_ANSWERS, MAX_RTT_ANSWERS);
        let span = per(LOSS_SPAN).clamp(MIN_LOSS_PROBES, MAX_LOSS_PROBES);
        let backends = addrs
            .iter()
            .map(|&addr| Track {
                addr,
                rtt_ms: None,
                answers: VecDeque::with_capacity(answers),
                outcomes: VecDeque::with_capacity(span),
                unanswered: 0,
            })
            .collect();
        Self { alpha, answers, span, backends }
    }

    /// Records a probe of `addr` answered in `rtt_ms`, or not answered (`None`). Unknown
    /// addresses and RTTs that are not a number are ignored.
    pub fn observe(&mut self, addr: SocketAddr, rtt_ms: Option<f64>) {
        if rtt_ms.is_some_and(|r| !r.is_finite()) {
            return;
        }
        let (alpha, answers, span) = (self.alpha, self.answers, self.span);
        for b in self.backends.iter_mut().filter(|b| b.addr == addr) {
            if let Some(r) = rtt_ms {
                if b.answers.len() == answers {
                    b.answers.pop_front();
                }
                b.answers.push_back(r.max(0.0));
                let m = median(b.answers.make_contiguous()).unwrap_or(r);
                b.rtt_ms = Some(b.rtt_ms.map_or(m, |e| e + alpha * (m - e)));
            }
            if b.outcomes.len() == span && b.outcomes.pop_front() == Some(true) {
                b.unanswered -= 1;
            }
            b.outcomes.push_back(rtt_ms.is_none());
            b.unanswered += usize::from(rtt_ms.is_none());
        }
    }

    /// What each backend's probes found, in order.
    pub fn measures(&self) -> Vec<(SocketAddr, Measure)> {
        self.backends
            .iter()
            .map(|b| {
                let loss = (!b.outcomes.is_empty()).then(|| b.unanswered as f64 / b.outcomes.len() as f64);
                (b.addr, Measure { rtt_ms: b.rtt_ms, loss })
            })
            .collect()
    }

    /// Each backend's factor, in order.
    pub fn factors(&self) -> Vec<(SocketAddr, Factor)> {
        let measures = self.measures();
        let m: Vec<Measure> = measures.iter().map(|(_, m)| *m).collect();
        measures.iter().map(|(a, _)| *a).zip(factors(&m)).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn m(rtt_ms: f64, loss: f64) -> Measure {
        Measure { rtt_ms: Some(rtt_ms), loss: Some(loss) }
    }

    fn addr(port: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], port))
    }

    #[test]
    fn the_lab_a_slow_and_a_lossy_backend_get_small_weights_and_say_why() {
        // The lab: one answers in 0.6 ms, one 20 ms later, one loses 20 % of its probes.
        let f = factors(&[m(0.6, 0.0), m(20.6, 0.0), m(0.6, 0.2)]);
        assert_eq!(f[0], Factor { factor: 1.0, why: "best (rtt 0.6 ms, no loss)".into() });
        assert_eq!(f[1].factor, 0.07);
        assert_eq!(f[1].why, "rtt 21 ms (34× the median), no loss");
        assert_eq!(f[2].factor, 0.06);
        assert_eq!(f[2].why, "rtt 0.6 ms, loss 20%");
        let total: f64 = f.iter().map(|f| f.factor).sum();
        assert!(f[1].factor / total < 0.15 && f[2].factor / total < 0.20, "{f:?}");
        assert_eq!(f[1].explain(1), "weight 0.07: rtt 21 ms (34× the median), no loss");
        assert_eq!(f[1].explain(5), "weight 0.35 (5 × 0.07): rtt 21 ms (34× the median), no loss");
        assert_eq!(f[0].explain(5), "weight 5: best (rtt 0.6 ms, no loss)");
        let floor = factors(&[m(0.5, 0.0), m(0.5, 0.5)]);
        assert_eq!(floor[1].explain(1), "weight 0.05, the floor: rtt 0.5 ms, loss 50%");
    }

    #[test]
    fn the_issue_s_example_reads_as_the_issue_writes_it() {
        let f = factors(&[m(1.1, 0.0), m(1.0, 0.0), m(4.2, 0.12)]);
        let why = f[2].explain(1);
        assert_eq!(why, "weight 0.07: rtt 4.2 ms (3.8× the median), loss 12%");
        assert_eq!(f[1].explain(1), "weight 1: best (rtt 1 ms, no loss)");
    }

    #[test]
    fn nothing_measured_is_weight_1_and_nothing_answering_is_weight_1_for_all() {
        let f = factors(&[Measure::default(), m(3.0, 0.0)]);
        assert_eq!(f[0], Factor { factor: 1.0, why: "not measured yet".into() });
        assert_eq!(f[1].factor, 1.0);
        let dead = Measure { rtt_ms: None, loss: Some(1.0) };
        let f = factors(&[dead, dead]);
        assert!(f.iter().all(|f| f.factor == 1.0 && f.why == "no backend answers its probes"), "{f:?}");
        // One answers, one never did: the floor, scored at the median RTT.
        let f = factors(&[m(2.0, 0.0), Measure { rtt_ms: None, loss: Some(0.5) }]);
        assert_eq!((f[0].factor, f[1].factor), (1.0, FLOOR));
        assert_eq!(f[1].why, "no answer, loss 50%");
    }

    #[test]
    fn of_two_backends_the_slower_is_compared_with_the_faster() {
        let f = factors(&[m(1.0, 0.0), m(20.0, 0.0)]);
        assert_eq!(f[1].why, "rtt 20 ms (20× the median), no loss");
    }

    #[test]
    fn sub_millisecond_differences_move_little_and_distance_moves_in_proportion() {
        let f = factors(&[m(0.1, 0.0), m(0.3, 0.0)]);
        assert!(f[1].factor >= 0.8, "{f:?}");
        let f = factors(&[m(30.0, 0.0), m(60.0, 0.0)]);
        assert_eq!(f[1].factor, 0.51, "twice as far, about half the traffic");
    }

    #[test]
    fn the_ewma_follows_a_change_within_seconds_and_loss_counts_over_the_span() {
        let a = [addr(1), addr(2)];
        let mut t = Measured::new(&a, Duration::from_secs(1));
        for _ in 0..30 {
            t.observe(a[0], Some(0.5));
            t.observe(a[1], Some(20.5));
        }
        assert_eq!(t.factors()[1].1.factor, 0.07);
        // The delay goes: within 15 probes (15 s at 1 s), its factor is back above 0.8.
        let mut back = None;
        for i in 1..=30 {
            t.observe(a[0], Some(0.5));
            t.observe(a[1], Some(0.5));
            if back.is_none() && t.factors()[1].1.factor >= 0.8 {
                back = Some(i);
            }
        }
        assert!(back.is_some_and(|i| i <= 15), "back after {back:?} probes");
        // A late answer moves nothing; a lasting change shows within 8 probes.
        t.observe(a[0], Some(0.5));
        t.observe(a[1], Some(200.0));
        assert_eq!(t.factors()[1].1.factor, 1.0, "{:?}", t.factors());
        let mut slow = None;
        for i in 1..=10 {
            t.observe(a[0], Some(0.5));
            t.observe(a[1], Some(20.5));
            if slow.is_none() && t.factors()[1].1.factor <= 0.1 {
                slow = Some(i);
            }
        }
        assert!(slow.is_some_and(|i| i <= 8), "slow after {slow:?} probes");
        // At 250 ms, the same in wall time: four times the probes.
        let fast = Measured::new(&a, Duration::from_millis(250));
        assert_eq!(fast.span, 240);
        assert!((fast.alpha - (1.0 - 0.5f64.powf(0.125))).abs() < 1e-12);
        assert_eq!((fast.answers, t.answers), (12, 3));
        // Loss over the last minute of probes: 12 lost of 60, then they age out.
        for i in 0..60 {
            t.observe(a[1], if i % 5 == 0 { None } else { Some(0.5) });
        }
        assert_eq!(t.measures()[1].1.loss, Some(0.2));
        for _ in 0..60 {
            t.observe(a[1], Some(0.5));
        }
        assert_eq!(t.measures()[1].1.loss, Some(0.0));
        t.observe(addr(9), None);
        t.observe(a[0], Some(f64::NAN));
        assert_eq!(t.measures()[0].1.loss, Some(0.0), "unknown backends and NaN change nothing");
    }

    fn measure() -> impl Strategy<Value = Measure> {
        let rtt = prop_oneof![Just(0.0), 0.0..500.0f64, Just(f64::INFINITY), Just(f64::NAN)];
        let loss = prop_oneof![Just(0.0), Just(1.0), 0.0..=1.0f64];
        (proptest::option::of(rtt), proptest::option::of(loss)).prop_map(|(rtt_ms, loss)| Measure { rtt_ms, loss })
    }

    proptest! {
        /// Whatever was measured (RTT 0, all lost, one backend, nothing yet): every factor is
        /// finite, floored, at most 1 and a multiple of 0.01; the best measured backend is 1.
        #[test]
        fn factors_are_finite_floored_and_normalised(ms in proptest::collection::vec(measure(), 1..8)) {
            let f = factors(&ms);
            prop_assert_eq!(f.len(), ms.len());
            for x in &f {
                prop_assert!(x.factor.is_finite() && (FLOOR..=1.0).contains(&x.factor), "{:?}", f);
                prop_assert!(((x.factor * 100.0).round() - x.factor * 100.0).abs() < 1e-9);
                prop_assert!(!x.why.is_empty());
            }
            prop_assert!(f.iter().any(|x| x.factor == 1.0), "the best is 1: {:?} {:?}", ms, f);
            if ms.len() == 1 {
                prop_assert_eq!(f[0].factor, 1.0);
            }
        }

        /// Slower or lossier never weighs more: making one backend worse never raises its
        /// factor, and never lowers another's.
        #[test]
        fn worse_never_weighs_more(
            ms in proptest::collection::vec((0.0..100.0f64, 0.0..=1.0f64), 1..6),
            which in 0usize..6,
            slower in 0.0..100.0f64,
            lossier in 0.0..=1.0f64,
        ) {
            let which = which % ms.len();
            let before: Vec<Measure> = ms.iter().map(|&(r, l)| m(r, l)).collect();
            let mut after = before.clone();
            let (r, l) = ms[which];
            after[which] = m(r + slower, (l + lossier).min(1.0));
            let (fb, fa) = (factors(&before), factors(&after));
            prop_assert!(fa[which].factor <= fb[which].factor, "{:?} -> {:?}", fb, fa);
            for i in (0..ms.len()).filter(|&i| i != which) {
                prop_assert!(fa[i].factor >= fb[i].factor, "{:?} -> {:?}", fb, fa);
            }
        }

        /// Fed any probe results, a tracker's loss is the share unanswered among the last
        /// `span` probes, and its factors are valid.
        #[test]
        fn a_tracker_counts_loss_over_its_span(results in proptest::collection::vec(proptest::option::of(0.0..50.0f64), 0..300)) {
            let a = [addr(1)];
            let mut t = Measured::new(&a, Duration::from_secs(1));
            for r in &results {
                t.observe(a[0], *r);
            }
            let last: Vec<&Option<f64>> = results.iter().rev().take(60).collect();
            let expect = (!last.is_empty()).then(|| last.iter().filter(|r| r.is_none()).count() as f64 / last.len() as f64);
            prop_assert_eq!(t.measures()[0].1.loss, expect);
            let f = t.factors();
            prop_assert!(f[0].1.factor == 1.0);
        }
    }
}
