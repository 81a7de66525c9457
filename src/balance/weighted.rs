//! Smooth weighted round robin as nginx does it (`ngx_http_upstream_get_peer`), computed once
//! per backend set as the whole sequence of one period, so that a pick is one shared counter and
//! one array read: lock-free, exact, and the same order nginx gives (5/1/1: a a b a c a a).

/// The longest period a schedule has: weights are scaled down (and rounded, each at least 1)
/// until one period fits, so a table is at most 16 KiB whatever the weights.
pub(crate) const MAX_PERIOD: u32 = 4096;

/// One period of smooth weighted round robin over some backends: entry `k` is the index (in the
/// backend set) of the `k`-th pick, and each backend occurs as often as its weight.
#[derive(Clone, PartialEq, Eq)]
pub(crate) struct Schedule {
    order: Box<[u32]>,
}

impl std::fmt::Debug for Schedule {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Schedule({} picks per period)", self.order.len())
    }
}

impl Schedule {
    /// The schedule over `(index, weight)` pairs (weights > 0 and finite; others are left out),
    /// or `None` when no backend is left.
    pub(crate) fn new(weights: &[(usize, f64)]) -> Option<Self> {
        let members: Vec<(usize, f64)> = weights.iter().copied().filter(|(_, w)| w.is_finite() && *w > 0.0).collect();
        if members.is_empty() {
            return None;
        }
        let quanta = quantise(&members.iter().map(|(_, w)| *w).collect::<Vec<_>>());
        let total: i64 = quanta.iter().map(|&q| i64::from(q)).sum();
        // nginx: every pick adds each weight to its backend's current value, takes the largest
        // (the first of equals), and takes the total off the one taken. After `total` picks every
        // current value is back at 0: that is one period.
        let mut current = vec![0i64; members.len()];
        let mut order = Vec::with_capacity(total as usize);
        for _ in 0..total {
            for (c, &q) in current.iter_mut().zip(&quanta) {
                *c += i64::from(q);
            }
            let best = first_largest(&current);
            current[best] -= total;
            order.push(members[best].0 as u32);
        }
        Some(Self { order: order.into_boxed_slice() })
    }

    /// Picks in one period.
    pub(crate) fn period(&self) -> usize {
        self.order.len()
    }

    /// The backend index of turn `turn` (any number: it wraps).
    pub(crate) fn at(&self, turn: usize) -> usize {
        self.order[turn % self.order.len()] as usize
    }
}

/// The index of the largest value, the first of equals.
fn first_largest(values: &[i64]) -> usize {
    let mut best = 0;
    for (i, &v) in values.iter().enumerate() {
        if v > values[best] {
            best = i;
        }
    }
    best
}

/// Whole-number weights of the same proportions, as small as they can be exactly (divided by
/// their greatest common divisor), or scaled and rounded (each at least 1) when that exact
/// period would be longer than [`MAX_PERIOD`] or the weights are not whole (measured factors).
pub(crate) fn quantise(weights: &[f64]) -> Vec<u32> {
    let whole = weights.iter().all(|w| w.fract() == 0.0 && *w >= 1.0 && *w <= f64::from(u32::MAX));
    if whole {
        let ints: Vec<u32> = weights.iter().map(|&w| w as u32).collect();
        let g = ints.iter().copied().fold(0, gcd);
        let reduced: Vec<u32> = ints.iter().map(|&w| w / g.max(1)).collect();
        if reduced.iter().map(|&w| u64::from(w)).sum::<u64>() <= u64::from(MAX_PERIOD) {
            return reduced;
        }
    }
    let sum: f64 = weights.iter().sum();
    let scale = f64::from(MAX_PERIOD) / sum;
    weights.iter().map(|w| ((w * scale).round() as u32).max(1)).collect()
}

fn gcd(a: u32, b: u32) -> u32 {
    if b == 0 { a } else { gcd(b, a % b) }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn sequence(weights: &[f64], n: usize) -> Vec<usize> {
        let pairs: Vec<(usize, f64)> = weights.iter().copied().enumerate().collect();
        let s = Schedule::new(&pairs).unwrap();
        (0..n).map(|t| s.at(t)).collect()
    }

    #[test]
    fn five_one_one_is_nginxs_order() {
        // a a b a c a a, period after period (nginx's `ngx_http_upstream_get_peer` gives this).
        assert_eq!(sequence(&[5.0, 1.0, 1.0], 14), vec![0, 0, 1, 0, 2, 0, 0, 0, 0, 1, 0, 2, 0, 0]);
    }

    #[test]
    fn equal_weights_are_plain_rotation() {
        assert_eq!(sequence(&[3.0, 3.0, 3.0], 6), vec![0, 1, 2, 0, 1, 2]);
    }

    #[test]
    fn weights_are_reduced_or_scaled_to_a_short_period() {
        assert_eq!(quantise(&[1000.0, 500.0]), vec![2, 1]);
        let big = quantise(&[1000.0, 999.0, 997.0, 991.0, 983.0]);
        assert!(big.iter().sum::<u32>() <= MAX_PERIOD + 5, "{big:?}");
        let measured = quantise(&[1.0, 0.18, 0.05]);
        let r = f64::from(measured[0]) / f64::from(measured[1]);
        assert!((r - 1.0 / 0.18).abs() < 0.05, "{measured:?}");
        assert!(measured.iter().all(|&q| q >= 1));
    }

    #[test]
    fn zero_or_odd_weights_are_left_out() {
        let s = Schedule::new(&[(0, 0.0), (1, 2.0), (2, f64::NAN)]).unwrap();
        assert_eq!((0..4).map(|t| s.at(t)).collect::<Vec<_>>(), vec![1, 1, 1, 1]);
        assert!(Schedule::new(&[(0, 0.0)]).is_none());
    }

    proptest! {
        /// One period gives each backend exactly its (whole) weight; at every prefix each
        /// backend's count is within two picks of its exact share (nginx's order is usually
        /// within one; with many unequal weights it strays a little past it, e.g. weights
        /// 26/9/... at pick 28); and so in any window of the repeating sequence, across periods
        /// too, within four (spread, never a burst: plain weighted round robin would put a
        /// weight-5 backend's five turns in a row).
        #[test]
        fn a_period_is_exact_and_every_window_is_smooth(weights in proptest::collection::vec(1u32..40, 1..8)) {
            let w: Vec<f64> = weights.iter().map(|&w| f64::from(w)).collect();
            let q = quantise(&w);
            let total = q.iter().sum::<u32>() as usize;
            let seq = sequence(&w, 2 * total);
            let mut counts = vec![0u32; w.len()];
            for (t, &i) in seq[..total].iter().enumerate() {
                counts[i] += 1;
                for (j, &c) in counts.iter().enumerate() {
                    let exact = (t as f64 + 1.0) * f64::from(q[j]) / total as f64;
                    prop_assert!((f64::from(c) - exact).abs() < 2.0, "t={t} j={j} {c} vs {exact} {seq:?}");
                }
            }
            prop_assert_eq!(&counts, &q);
            for (j, &qj) in q.iter().enumerate() {
                // before[k]: picks of j among the first k of two periods.
                let before: Vec<usize> = std::iter::once(0)
                    .chain(seq.iter().scan(0, |n, &i| { *n += usize::from(i == j); Some(*n) }))
                    .collect();
                for start in 0..total {
                    for len in 1..=total {
                        let got = (before[start + len] - before[start]) as f64;
                        let exact = len as f64 * f64::from(qj) / total as f64;
                        prop_assert!((got - exact).abs() < 4.0, "backend {j}: {got} in {len} from {start}: {seq:?}");
                    }
                }
            }
        }
    }
}
