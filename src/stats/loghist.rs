//! A compact, mergeable round-trip-time distribution: log buckets of 1/8 octave (each about 9 %
//! wide, so a percentile read from them is within 4.5 % of the true sample), from 1 µs to an
//! hour, stored sparsely. Histograms of any number of intervals merge by adding counts, so
//! percentiles over a day or a month come from the merged counts, never from averaged
//! percentiles.

use serde::Serialize;

/// Buckets per doubling of the round-trip time.
const PER_OCTAVE: f64 = 8.0;
/// The last bucket index (bucket 255 starts at 2^(255/8) µs, about 66 minutes).
const LAST: u8 = u8::MAX;

/// Counts per bucket, only the non-empty ones, sorted by bucket.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct LogHistogram {
    buckets: Vec<(u8, u64)>,
}

/// The bucket of a round-trip time in microseconds: `floor(8 * log2(us))`; below 1 µs is bucket 0.
pub fn bucket_of(us: u64) -> u8 {
    if us <= 1 {
        return 0;
    }
    let i = ((us as f64).log2() * PER_OCTAVE).floor();
    if i >= f64::from(LAST) { LAST } else { i as u8 }
}

/// The value a bucket stands for in microseconds: its geometric middle.
pub fn bucket_middle_us(i: u8) -> f64 {
    ((f64::from(i) + 0.5) / PER_OCTAVE).exp2()
}

impl LogHistogram {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn is_empty(&self) -> bool {
        self.buckets.is_empty()
    }

    /// Samples counted.
    pub fn count(&self) -> u64 {
        self.buckets.iter().map(|b| b.1).sum()
    }

    /// Counts one round-trip time in microseconds.
    pub fn record_us(&mut self, us: u64) {
        self.add(bucket_of(us), 1);
    }

    fn add(&mut self, bucket: u8, n: u64) {
        if n == 0 {
            return;
        }
        match self.buckets.binary_search_by_key(&bucket, |b| b.0) {
            Ok(i) => self.buckets[i].1 += n,
            Err(i) => self.buckets.insert(i, (bucket, n)),
        }
    }

    /// Adds `other`'s counts to these.
    pub fn merge(&mut self, other: &LogHistogram) {
        if self.buckets.is_empty() {
            self.buckets.clone_from(&other.buckets);
            return;
        }
        let mut out = Vec::with_capacity(self.buckets.len() + other.buckets.len());
        let (mut a, mut b) = (self.buckets.iter().peekable(), other.buckets.iter().peekable());
        loop {
            match (a.peek(), b.peek()) {
                (Some(x), Some(y)) if x.0 == y.0 => {
                    out.push((x.0, x.1 + y.1));
                    a.next();
                    b.next();
                }
                (Some(x), Some(y)) if x.0 < y.0 => {
                    out.push(**x);
                    a.next();
                }
                (_, Some(y)) => {
                    out.push(**y);
                    b.next();
                }
                (Some(x), None) => {
                    out.push(**x);
                    a.next();
                }
                (None, None) => break,
            }
        }
        self.buckets = out;
    }

    /// The nearest-rank `q` quantile (0..=1) in microseconds: the middle of the bucket that
    /// holds the sample of that rank; `None` when empty.
    pub fn quantile_us(&self, q: f64) -> Option<f64> {
        let total = self.count();
        if total == 0 {
            return None;
        }
        let rank = ((q.clamp(0.0, 1.0) * total as f64).ceil() as u64).clamp(1, total);
        let mut seen = 0;
        for &(i, n) in &self.buckets {
            seen += n;
            if seen >= rank {
                return Some(bucket_middle_us(i));
            }
        }
        self.buckets.last().map(|b| bucket_middle_us(b.0))
    }

    /// The stored form: for each non-empty bucket, its index byte then its count as a LEB128
    /// varint. One sample takes two bytes.
    pub fn encode(&self, out: &mut Vec<u8>) {
        for &(i, n) in &self.buckets {
            out.push(i);
            put_varint(out, n);
        }
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        let mut v = Vec::with_capacity(self.buckets.len() * 2);
        self.encode(&mut v);
        v
    }

    /// Reads [`LogHistogram::encode`]'s form; `None` if it is not that.
    pub fn decode(mut bytes: &[u8]) -> Option<Self> {
        let mut h = Self::new();
        while let Some((&i, rest)) = bytes.split_first() {
            bytes = rest;
            let n = take_varint(&mut bytes)?;
            if h.buckets.last().is_some_and(|b| b.0 >= i) {
                return None;
            }
            h.buckets.push((i, n));
        }
        Some(h)
    }
}

/// Appends `v` as an unsigned LEB128 varint.
pub fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

/// Reads an unsigned LEB128 varint from the front of `bytes`; `None` when truncated or too long.
pub fn take_varint(bytes: &mut &[u8]) -> Option<u64> {
    let mut v = 0u64;
    for shift in (0..64).step_by(7) {
        let (&b, rest) = bytes.split_first()?;
        *bytes = rest;
        v |= u64::from(b & 0x7f) << shift;
        if b & 0x80 == 0 {
            return Some(v);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn buckets_are_an_eighth_of_an_octave() {
        assert_eq!(bucket_of(0), 0);
        assert_eq!(bucket_of(1), 0);
        assert_eq!(bucket_of(2), 8);
        assert_eq!(bucket_of(1024), 80);
        assert_eq!(bucket_of(u64::MAX), LAST);
        // 50 µs and 53 µs share a bucket; 50 µs and 60 µs do not.
        assert_eq!(bucket_of(50), bucket_of(53));
        assert_ne!(bucket_of(50), bucket_of(60));
    }

    #[test]
    fn quantiles_use_nearest_rank_on_merged_counts() {
        let mut a = LogHistogram::new();
        for us in 1..=90 {
            a.record_us(us * 1000);
        }
        let mut b = LogHistogram::new();
        for _ in 0..10 {
            b.record_us(500_000);
        }
        a.merge(&b);
        assert_eq!(a.count(), 100);
        let p50 = a.quantile_us(0.5).unwrap();
        assert!((p50 / 50_000.0 - 1.0).abs() < 0.045, "p50 {p50}");
        let p95 = a.quantile_us(0.95).unwrap();
        assert!((p95 / 500_000.0 - 1.0).abs() < 0.045, "p95 {p95}: the 10 slow samples are the top 10 %");
        assert_eq!(LogHistogram::new().quantile_us(0.5), None);
    }

    #[test]
    fn encoding_is_compact_and_round_trips() {
        let mut h = LogHistogram::new();
        h.record_us(80);
        assert_eq!(h.to_bytes().len(), 2, "one sample is two bytes");
        for us in [3, 80, 1_000_000, 70] {
            h.record_us(us);
        }
        assert_eq!(LogHistogram::decode(&h.to_bytes()), Some(h));
        assert_eq!(LogHistogram::decode(&[5]), None, "truncated");
        assert_eq!(LogHistogram::decode(&[5, 1, 4, 1]), None, "out of order");
        assert_eq!(LogHistogram::decode(&[]), Some(LogHistogram::new()));
    }

    proptest! {
        #[test]
        fn merging_equals_recording_everything_in_one(xs in proptest::collection::vec(0u64..10_000_000, 0..200),
                                                      ys in proptest::collection::vec(0u64..10_000_000, 0..200)) {
            let (mut a, mut b, mut all) = (LogHistogram::new(), LogHistogram::new(), LogHistogram::new());
            xs.iter().for_each(|&x| { a.record_us(x); all.record_us(x); });
            ys.iter().for_each(|&y| { b.record_us(y); all.record_us(y); });
            a.merge(&b);
            prop_assert_eq!(&a, &all);
            prop_assert_eq!(LogHistogram::decode(&a.to_bytes()), Some(a));
        }

        #[test]
        fn a_quantile_is_within_five_percent_of_the_exact_one(xs in proptest::collection::vec(2u64..100_000_000, 1..300),
                                                             q in 0.0f64..=1.0) {
            let mut h = LogHistogram::new();
            xs.iter().for_each(|&x| h.record_us(x));
            let mut sorted = xs.clone();
            sorted.sort_unstable();
            let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
            let exact = sorted[rank - 1] as f64;
            let got = h.quantile_us(q).unwrap();
            prop_assert!((got / exact - 1.0).abs() <= 0.045, "q {} exact {} got {}", q, exact, got);
        }

        #[test]
        fn varints_round_trip(v: u64) {
            let mut out = Vec::new();
            put_varint(&mut out, v);
            let mut s = out.as_slice();
            prop_assert_eq!(take_varint(&mut s), Some(v));
            prop_assert!(s.is_empty());
        }
    }
}
