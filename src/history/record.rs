//! What is stored per series and interval, its byte form, and the aggregate that rollups and
//! queries merge ([`Agg`]: exact counts and sums, a mergeable RTT histogram).

use serde::Serialize;

use crate::stats::loghist::{LogHistogram, put_varint, take_varint};

/// One interval of one series.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Record {
    Target(TargetInterval),
    Counters(CounterInterval),
}

/// One interval of a target: its probes.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct TargetInterval {
    /// Time this interval covers (since the previous report).
    pub span_ms: u64,
    /// The target was reported down at the end of the interval.
    pub down: bool,
    /// Probes settled, answered (up, with a round-trip time), and lost (no answer in time).
    pub sent: u64,
    pub received: u64,
    pub lost: u64,
    /// The answered probes' round-trip times in microseconds (fewer than `received` when
    /// intervals were merged because the writer fell behind).
    pub rtts_us: Vec<u64>,
}

/// One interval of an interface or a balancer backend: how much each counter grew.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct CounterInterval {
    pub span_ms: u64,
    /// The link was down / the backend out of rotation at the end of the interval.
    pub down: bool,
    pub deltas: Vec<u64>,
}

const DOWN: u8 = 1;
const COUNTERS: u8 = 2;
/// The span is the time since the previous interval of the chunk (not written).
const SPAN_IS_GAP: u8 = 4;
/// Every probe was answered with its RTT kept: sent = received = the RTTs, none lost.
const ALL_ANSWERED: u8 = 8;

impl Record {
    /// Appends the byte form: a flags byte, the span (varint) unless it is `gap`, then the
    /// target's counts and RTTs (µs) or the counters' deltas, as varints. In a chunk, an
    /// interval with one answered probe takes 5 or 6 bytes with its time.
    pub(crate) fn encode(&self, out: &mut Vec<u8>, gap: Option<u64>) {
        let (span_ms, down, mut flags) = match self {
            Self::Target(t) => (t.span_ms, t.down, 0),
            Self::Counters(c) => (c.span_ms, c.down, COUNTERS),
        };
        if down {
            flags |= DOWN;
        }
        if gap == Some(span_ms) {
            flags |= SPAN_IS_GAP;
        }
        let all = matches!(self, Self::Target(t)
            if t.lost == 0 && t.sent == t.received && t.received == t.rtts_us.len() as u64);
        if all {
            flags |= ALL_ANSWERED;
        }
        out.push(flags);
        if flags & SPAN_IS_GAP == 0 {
            put_varint(out, span_ms);
        }
        match self {
            Self::Target(t) => {
                if !all {
                    put_varint(out, t.sent);
                    put_varint(out, t.received);
                    put_varint(out, t.lost);
                }
                put_varint(out, t.rtts_us.len() as u64);
                for &r in &t.rtts_us {
                    put_varint(out, r);
                }
            }
            Self::Counters(c) => {
                put_varint(out, c.deltas.len() as u64);
                for &d in &c.deltas {
                    put_varint(out, d);
                }
            }
        }
    }

    /// Reads one record from the front of `bytes` (`gap` as given to [`Record::encode`]).
    pub(crate) fn decode(bytes: &mut &[u8], gap: Option<u64>) -> Option<Self> {
        let (&flags, rest) = bytes.split_first()?;
        *bytes = rest;
        let span_ms = if flags & SPAN_IS_GAP != 0 { gap? } else { take_varint(bytes)? };
        let down = flags & DOWN != 0;
        let list = |bytes: &mut &[u8]| -> Option<Vec<u64>> {
            let n = take_varint(bytes)?;
            if n > bytes.len() as u64 {
                return None;
            }
            (0..n).map(|_| take_varint(bytes)).collect()
        };
        if flags & COUNTERS != 0 {
            return Some(Self::Counters(CounterInterval { span_ms, down, deltas: list(bytes)? }));
        }
        let counts = if flags & ALL_ANSWERED != 0 {
            None
        } else {
            Some((take_varint(bytes)?, take_varint(bytes)?, take_varint(bytes)?))
        };
        let rtts_us = list(bytes)?;
        let n = rtts_us.len() as u64;
        let (sent, received, lost) = counts.unwrap_or((n, n, 0));
        Some(Self::Target(TargetInterval { span_ms, down, sent, received, lost, rtts_us }))
    }
}

/// A target over any stretch of time: exact counts and sums, and the RTT distribution. Merging
/// two is exact (the histogram adds counts), so a month of minutes gives the same loss as the
/// month's intervals, and percentiles come from merged counts.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Agg {
    /// Time covered by data, and of it, time the target was down.
    pub span_ms: u64,
    pub down_ms: u64,
    pub sent: u64,
    pub received: u64,
    pub lost: u64,
    pub rtt_min_us: Option<u64>,
    pub rtt_max_us: u64,
    pub rtt_sum_us: u64,
    /// Sum of squared RTTs (µs²), for the standard deviation.
    pub rtt_sumsq: f64,
    /// Sum and count of |ΔRTT| between consecutive answered probes (mean: the jitter that RFC
    /// 3550's estimator smooths).
    pub jitter_sum_us: u64,
    pub jitter_n: u64,
    #[serde(skip)]
    pub hist: LogHistogram,
}

impl Agg {
    /// Adds one interval; `last_rtt` carries the previous RTT across intervals for the jitter.
    pub(crate) fn add_interval(&mut self, t: &TargetInterval, last_rtt: &mut Option<u64>) {
        self.span_ms += t.span_ms;
        if t.down {
            self.down_ms += t.span_ms;
        }
        self.sent += t.sent;
        self.received += t.received;
        self.lost += t.lost;
        for &r in &t.rtts_us {
            self.rtt_min_us = Some(self.rtt_min_us.map_or(r, |m| m.min(r)));
            self.rtt_max_us = self.rtt_max_us.max(r);
            self.rtt_sum_us += r;
            self.rtt_sumsq += (r as f64) * (r as f64);
            self.hist.record_us(r);
            if let Some(prev) = last_rtt.replace(r) {
                self.jitter_sum_us += prev.abs_diff(r);
                self.jitter_n += 1;
            }
        }
    }

    pub fn merge(&mut self, o: &Agg) {
        self.span_ms += o.span_ms;
        self.down_ms += o.down_ms;
        self.sent += o.sent;
        self.received += o.received;
        self.lost += o.lost;
        self.rtt_min_us = match (self.rtt_min_us, o.rtt_min_us) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        self.rtt_max_us = self.rtt_max_us.max(o.rtt_max_us);
        self.rtt_sum_us += o.rtt_sum_us;
        self.rtt_sumsq += o.rtt_sumsq;
        self.jitter_sum_us += o.jitter_sum_us;
        self.jitter_n += o.jitter_n;
        self.hist.merge(&o.hist);
    }

    /// Whether anything was recorded.
    pub fn is_empty(&self) -> bool {
        self.span_ms == 0 && self.sent == 0
    }

    /// Lost share in percent, as ping counts it: not answered of sent.
    pub fn loss_pct(&self) -> Option<f64> {
        (self.sent > 0).then(|| self.sent.saturating_sub(self.received) as f64 * 100.0 / self.sent as f64)
    }

    /// Share of the recorded time the target was up, in percent.
    pub fn uptime_pct(&self) -> Option<f64> {
        (self.span_ms > 0).then(|| (self.span_ms - self.down_ms.min(self.span_ms)) as f64 * 100.0 / self.span_ms as f64)
    }

    /// The RTT samples the sums cover (answered probes whose RTT was kept).
    pub fn rtt_count(&self) -> u64 {
        self.hist.count()
    }

    pub fn rtt_avg_ms(&self) -> Option<f64> {
        let n = self.rtt_count();
        (n > 0).then(|| self.rtt_sum_us as f64 / n as f64 / 1000.0)
    }

    /// Population standard deviation (ping's mdev) in ms.
    pub fn rtt_mdev_ms(&self) -> Option<f64> {
        let n = self.rtt_count() as f64;
        if n == 0.0 {
            return None;
        }
        let avg = self.rtt_sum_us as f64 / n;
        Some((self.rtt_sumsq / n - avg * avg).max(0.0).sqrt() / 1000.0)
    }

    pub fn rtt_min_ms(&self) -> Option<f64> {
        self.rtt_min_us.map(|v| v as f64 / 1000.0)
    }

    pub fn rtt_max_ms(&self) -> Option<f64> {
        self.rtt_min_us.map(|_| self.rtt_max_us as f64 / 1000.0)
    }

    /// The `q` quantile in ms, from the merged histogram, kept within the exact min and max.
    pub fn quantile_ms(&self, q: f64) -> Option<f64> {
        let v = self.hist.quantile_us(q)?;
        let (lo, hi) = (self.rtt_min_us? as f64, self.rtt_max_us as f64);
        Some(v.clamp(lo, hi) / 1000.0)
    }

    pub fn jitter_ms(&self) -> Option<f64> {
        (self.jitter_n > 0).then(|| self.jitter_sum_us as f64 / self.jitter_n as f64 / 1000.0)
    }
}

/// An interface or backend over a stretch of time: counters summed.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct CounterAgg {
    pub span_ms: u64,
    pub down_ms: u64,
    pub sums: Vec<u64>,
}

impl CounterAgg {
    pub(crate) fn add_interval(&mut self, c: &CounterInterval) {
        self.span_ms += c.span_ms;
        if c.down {
            self.down_ms += c.span_ms;
        }
        self.add_sums(&c.deltas);
    }

    pub(crate) fn merge(&mut self, o: &CounterAgg) {
        self.span_ms += o.span_ms;
        self.down_ms += o.down_ms;
        self.add_sums(&o.sums);
    }

    fn add_sums(&mut self, v: &[u64]) {
        if self.sums.len() < v.len() {
            self.sums.resize(v.len(), 0);
        }
        for (s, d) in self.sums.iter_mut().zip(v) {
            *s = s.saturating_add(*d);
        }
    }
}

/// A raw chunk: the intervals of one series in one minute, each as the time since the previous
/// one (the first: since the chunk's time) and its record, whose span is that gap when equal.
#[cfg(test)]
pub(crate) fn encode_chunk(t0: i64, intervals: &[(i64, &Record)]) -> Vec<u8> {
    let mut out = Vec::with_capacity(intervals.len() * 6);
    let mut prev = t0;
    for (i, (t, r)) in intervals.iter().enumerate() {
        let gap = u64::try_from(t - prev).unwrap_or(0);
        put_varint(&mut out, gap);
        r.encode(&mut out, (i > 0).then_some(gap));
        prev = *t;
    }
    out
}

/// A raw chunk built an interval at a time (what [`encode_chunk`] makes of them all at once),
/// so that packing holds a minute's bytes per series, never its decoded records.
#[derive(Debug, Clone)]
pub(crate) struct ChunkWriter {
    t0: i64,
    prev: i64,
    bytes: Vec<u8>,
}

impl ChunkWriter {
    /// A chunk whose time (its first interval's) is `t0`.
    pub(crate) fn new(t0: i64) -> Self {
        Self { t0, prev: t0, bytes: Vec::new() }
    }

    pub(crate) fn t0(&self) -> i64 {
        self.t0
    }

    pub(crate) fn push(&mut self, t: i64, r: &Record) {
        let gap = u64::try_from(t - self.prev).unwrap_or(0);
        let first = self.bytes.is_empty();
        put_varint(&mut self.bytes, gap);
        r.encode(&mut self.bytes, (!first).then_some(gap));
        self.prev = t;
    }

    pub(crate) fn bytes(&self) -> &[u8] {
        &self.bytes
    }
}

/// The intervals of a chunk with their end times; stops at the first byte that does not parse.
pub(crate) fn decode_chunk(t0: i64, mut bytes: &[u8]) -> Vec<(i64, Record)> {
    let mut out = Vec::new();
    let mut t = t0;
    while !bytes.is_empty() {
        let Some(gap) = take_varint(&mut bytes) else { break };
        let Some(r) = Record::decode(&mut bytes, (!out.is_empty()).then_some(gap)) else { break };
        t = t.saturating_add(i64::try_from(gap).unwrap_or(0));
        out.push((t, r));
    }
    out
}

/// A journal row's body: every series' record of one interval, as (series id, record).
pub(crate) fn encode_interval(records: &[(i64, Record)]) -> Vec<u8> {
    let mut out = Vec::with_capacity(records.len() * 10);
    put_varint(&mut out, records.len() as u64);
    for (id, r) in records {
        put_varint(&mut out, u64::try_from(*id).unwrap_or(0));
        r.encode(&mut out, None);
    }
    out
}

/// Calls `f` with each (series id, record) of a journal row's body, one record decoded at a time.
pub(crate) fn for_each_in_interval(mut bytes: &[u8], mut f: impl FnMut(i64, Record)) {
    let Some(n) = take_varint(&mut bytes) else { return };
    for _ in 0..n {
        let Some(id) = take_varint(&mut bytes) else { break };
        let Some(r) = Record::decode(&mut bytes, None) else { break };
        f(i64::try_from(id).unwrap_or(0), r);
    }
}

#[cfg(test)]
pub(crate) fn decode_interval(mut bytes: &[u8]) -> Vec<(i64, Record)> {
    let Some(n) = take_varint(&mut bytes) else { return Vec::new() };
    let mut out = Vec::with_capacity(n.min(1 << 20) as usize);
    for _ in 0..n {
        let Some(id) = take_varint(&mut bytes) else { break };
        let Some(r) = Record::decode(&mut bytes, None) else { break };
        out.push((i64::try_from(id).unwrap_or(0), r));
    }
    out
}

/// The record of series `want` in a journal body, without decoding the others' RTTs into vectors.
pub(crate) fn find_in_interval(mut bytes: &[u8], want: i64) -> Option<Record> {
    let n = take_varint(&mut bytes)?;
    for _ in 0..n {
        let id = i64::try_from(take_varint(&mut bytes)?).ok()?;
        let r = Record::decode(&mut bytes, None)?;
        if id == want {
            return Some(r);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn probe(span: u64, rtts: &[u64], lost: u64) -> TargetInterval {
        TargetInterval {
            span_ms: span,
            down: rtts.is_empty(),
            sent: rtts.len() as u64 + lost,
            received: rtts.len() as u64,
            lost,
            rtts_us: rtts.to_vec(),
        }
    }

    #[test]
    fn records_and_chunks_round_trip() {
        let a = Record::Target(probe(1000, &[80, 95], 1));
        let b = Record::Counters(CounterInterval { span_ms: 1000, down: true, deltas: vec![1, 0, 300_000] });
        let body = encode_interval(&[(3, a.clone()), (7, b.clone())]);
        assert_eq!(decode_interval(&body), vec![(3, a.clone()), (7, b.clone())]);
        assert_eq!(find_in_interval(&body, 7), Some(b.clone()));
        assert_eq!(find_in_interval(&body, 4), None);
        let chunk = encode_chunk(1_000, &[(1_500, &a), (2_500, &b)]);
        assert_eq!(decode_chunk(1_000, &chunk), vec![(1_500, a.clone()), (2_500, b.clone())]);
        assert!(decode_chunk(0, &[0x80]).is_empty(), "garbage stops decoding, no panic");
        let mut w = ChunkWriter::new(1_500);
        w.push(1_500, &a);
        w.push(2_500, &b);
        assert_eq!(
            w.bytes(),
            encode_chunk(1_500, &[(1_500, &a), (2_500, &b)]),
            "built a record at a time, the same bytes"
        );
        let mut seen = Vec::new();
        for_each_in_interval(&body, |id, r| seen.push((id, r)));
        assert_eq!(seen, decode_interval(&body));
    }

    #[test]
    fn an_interval_with_one_answered_probe_takes_a_few_bytes() {
        let one = Record::Target(TargetInterval { down: false, ..probe(1000, &[812], 0) });
        let lost = Record::Target(probe(1000, &[], 1));
        let minute: Vec<(i64, &Record)> = (0..60).map(|i| (i * 1000, if i == 7 { &lost } else { &one })).collect();
        let chunk = encode_chunk(0, &minute);
        assert!(chunk.len() <= 60 * 6 + 6, "{} bytes for a minute: six an interval", chunk.len());
        let back = decode_chunk(0, &chunk);
        assert_eq!(back.len(), 60);
        assert!(back.iter().zip(&minute).all(|(a, b)| a.0 == b.0 && &a.1 == b.1), "round trip");
        assert_eq!(back[0].1, one, "the first interval keeps its own span");
    }

    #[test]
    fn merged_aggregates_equal_one_over_everything() {
        let intervals = [probe(1000, &[1000, 3000], 0), probe(1000, &[], 2), probe(1000, &[2000], 0)];
        let mut whole = Agg::default();
        let mut last = None;
        for i in &intervals {
            whole.add_interval(i, &mut last);
        }
        assert_eq!((whole.sent, whole.received, whole.span_ms, whole.down_ms), (5, 3, 3000, 1000));
        assert_eq!(whole.loss_pct(), Some(40.0));
        assert!((whole.uptime_pct().unwrap() - 200.0 / 3.0).abs() < 1e-9);
        assert_eq!(whole.rtt_avg_ms(), Some(2.0));
        assert!((whole.rtt_mdev_ms().unwrap() - (2.0f64 / 3.0).sqrt()).abs() < 1e-9);
        assert_eq!(whole.jitter_ms(), Some(1.5), "|3000-1000| and |2000-3000| over two pairs");
        let (mut a, mut b) = (Agg::default(), Agg::default());
        let mut l = None;
        a.add_interval(&intervals[0], &mut l);
        a.add_interval(&intervals[1], &mut l);
        b.add_interval(&intervals[2], &mut l);
        a.merge(&b);
        assert_eq!(a, whole);
        assert_eq!(whole.quantile_ms(1.0).map(|v| (v * 1000.0).round()), Some(3000.0), "clamped to the max");
    }
}
