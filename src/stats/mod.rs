//! Statistics over probe samples: loss, min/avg/max/mdev (printed the way ping prints them),
//! RFC 3550 jitter and percentiles over a sliding window.

pub mod loghist;
pub mod traffic;

use std::time::Duration;

/// Running totals for a series of probes; O(1) memory.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RttSummary {
    pub transmitted: u64,
    pub received: u64,
    min: f64,
    max: f64,
    sum: f64,
    sum_sq: f64,
}

impl RttSummary {
    pub fn new() -> Self {
        Self::default()
    }

    /// Counts a probe that was sent.
    pub fn sent(&mut self) {
        self.transmitted += 1;
    }

    /// Counts a reply with its round-trip time.
    pub fn reply(&mut self, rtt: Duration) {
        self.reply_ms(rtt.as_secs_f64() * 1000.0);
    }

    /// Counts a reply with its round-trip time in milliseconds.
    pub fn reply_ms(&mut self, ms: f64) {
        if self.received == 0 || ms < self.min {
            self.min = ms;
        }
        if ms > self.max {
            self.max = ms;
        }
        self.received += 1;
        self.sum += ms;
        self.sum_sq += ms * ms;
    }

    /// Lost share in percent (0 when nothing was sent).
    pub fn loss_pct(&self) -> f64 {
        if self.transmitted == 0 {
            return 0.0;
        }
        let lost = self.transmitted.saturating_sub(self.received);
        lost as f64 * 100.0 / self.transmitted as f64
    }

    /// (min, avg, max, mdev) in milliseconds; mdev is the population standard deviation.
    pub fn rtt_ms(&self) -> Option<(f64, f64, f64, f64)> {
        if self.received == 0 {
            return None;
        }
        let n = self.received as f64;
        let avg = self.sum / n;
        let var = (self.sum_sq / n - avg * avg).max(0.0);
        Some((self.min, avg, self.max, var.sqrt()))
    }

    /// `N packets transmitted, N received, X% packet loss, time Nms`
    pub fn counts_line(&self, elapsed: Duration) -> String {
        format!(
            "{} packets transmitted, {} received, {}% packet loss, time {}ms",
            self.transmitted,
            self.received,
            format_g(self.loss_pct()),
            elapsed.as_millis()
        )
    }

    /// ping's closing block: a blank line, `--- LABEL TOOL statistics ---`, the counts and,
    /// when anything answered, the RTT line.
    pub fn write_report(
        &self,
        out: &mut impl std::io::Write,
        label: &str,
        tool: &str,
        elapsed: Duration,
    ) -> std::io::Result<()> {
        writeln!(out, "\n--- {label} {tool} statistics ---\n{}", self.counts_line(elapsed))?;
        match self.rtt_line() {
            Some(line) => writeln!(out, "{line}"),
            None => Ok(()),
        }
    }

    /// `rtt min/avg/max/mdev = a/b/c/d ms`, or `None` with no replies (ping omits the line).
    pub fn rtt_line(&self) -> Option<String> {
        self.rtt_ms()
            .map(|(min, avg, max, mdev)| format!("rtt min/avg/max/mdev = {min:.3}/{avg:.3}/{max:.3}/{mdev:.3} ms"))
    }
}

/// Formats like C's `%g` (six significant digits, no trailing zeros), as iputils prints loss.
pub fn format_g(x: f64) -> String {
    if x == 0.0 || !x.is_finite() {
        return if x.is_finite() { "0".into() } else { x.to_string() };
    }
    let digits = 6i32;
    let exp = x.abs().log10().floor() as i32;
    if !(-5..digits).contains(&exp) {
        return format!("{x:e}");
    }
    let decimals = (digits - 1 - exp).max(0) as usize;
    let s = format!("{x:.decimals$}");
    if s.contains('.') { s.trim_end_matches('0').trim_end_matches('.').to_string() } else { s }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn summary_matches_ping() {
        let mut s = RttSummary::new();
        for ms in [1.0, 2.0, 3.0, 4.0] {
            s.sent();
            s.reply(Duration::from_secs_f64(ms / 1000.0));
        }
        s.sent();
        let (min, avg, max, mdev) = s.rtt_ms().unwrap();
        assert_eq!((min, max), (1.0, 4.0));
        assert!((avg - 2.5).abs() < 1e-9);
        assert!((mdev - 1.118_034).abs() < 1e-6, "population sd, not sample sd: {mdev}");
        assert_eq!(
            s.counts_line(Duration::from_millis(4005)),
            "5 packets transmitted, 4 received, 20% packet loss, time 4005ms"
        );
        assert_eq!(s.rtt_line().unwrap(), "rtt min/avg/max/mdev = 1.000/2.500/4.000/1.118 ms");
    }

    #[test]
    fn no_replies_has_no_rtt_line_and_full_loss() {
        let mut s = RttSummary::new();
        s.sent();
        s.sent();
        assert_eq!(s.rtt_line(), None);
        assert_eq!(s.loss_pct(), 100.0);
        assert_eq!(RttSummary::new().loss_pct(), 0.0);
    }

    #[test]
    fn loss_prints_like_percent_g() {
        assert_eq!(format_g(30.0), "30");
        assert_eq!(format_g(100.0), "100");
        assert_eq!(format_g(0.0), "0");
        assert_eq!(format_g(100.0 / 3.0), "33.3333");
        assert_eq!(format_g(200.0 / 3.0), "66.6667");
        assert_eq!(format_g(12.5), "12.5");
    }
}

/// Probes lost in a row that take a target down (one refused probe does at once).
pub const LOST_BEFORE_DOWN: usize = 3;

/// The last `capacity` samples of one target, summarised on demand.
#[derive(Debug, Clone)]
pub struct Window {
    samples: std::collections::VecDeque<crate::probe::Sample>,
    capacity: usize,
    /// RFC 3550 interarrival jitter in ms, updated on every reply (not windowed).
    jitter_ms: f64,
    last_rtt_ms: Option<f64>,
}

/// What a window says about a target.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct WindowSummary {
    pub sent: u64,
    pub received: u64,
    pub loss_pct: f64,
    pub rtt_min_ms: Option<f64>,
    pub rtt_avg_ms: Option<f64>,
    pub rtt_max_ms: Option<f64>,
    pub rtt_mdev_ms: Option<f64>,
    pub jitter_ms: Option<f64>,
    pub rtt_p50_ms: Option<f64>,
    pub rtt_p95_ms: Option<f64>,
    pub rtt_p99_ms: Option<f64>,
    /// The latest answered probe's round-trip time.
    pub rtt_last_ms: Option<f64>,
    /// Whether the latest probe found the target up.
    pub up: bool,
}

impl Window {
    pub fn new(capacity: usize) -> Self {
        Self {
            samples: std::collections::VecDeque::with_capacity(capacity.min(4096)),
            capacity: capacity.max(1),
            jitter_ms: 0.0,
            last_rtt_ms: None,
        }
    }

    /// The newest probe's sample (by sequence number).
    pub fn newest(&self) -> Option<&crate::probe::Sample> {
        self.samples.iter().max_by_key(|s| s.seq)
    }

    pub fn push(&mut self, s: crate::probe::Sample) {
        if let Some(rtt) = s.rtt {
            let ms = rtt.as_secs_f64() * 1000.0;
            // RFC 3550 §6.4.1: J += (|D| - J) / 16, D the change in transit time between
            // consecutive packets; for a round trip that is the change in RTT.
            if let Some(prev) = self.last_rtt_ms {
                self.jitter_ms += ((ms - prev).abs() - self.jitter_ms) / 16.0;
            }
            self.last_rtt_ms = Some(ms);
        }
        if self.samples.len() == self.capacity {
            self.samples.pop_front();
        }
        self.samples.push_back(s);
    }

    /// Whether the target is up: its newest probe (by sequence, not the one that settled last:
    /// a timeout settles late) answered; or it was only lost and one of the last
    /// [`LOST_BEFORE_DOWN`] answered — a lossy link is lossy, not down. A refusal or a bad
    /// status is down at once.
    fn up(&self) -> bool {
        let Some(newest) = self.newest() else { return false };
        if newest.up() {
            return true;
        }
        if !matches!(newest.outcome, crate::probe::Outcome::Timeout) {
            return false;
        }
        let mut recent: Vec<&crate::probe::Sample> = self.samples.iter().collect();
        recent.sort_unstable_by_key(|s| std::cmp::Reverse(s.seq));
        recent.iter().take(LOST_BEFORE_DOWN).any(|s| s.up())
    }

    pub fn summary(&self) -> WindowSummary {
        let mut rtts: Vec<f64> = self.samples.iter().filter_map(|s| s.rtt).map(|d| d.as_secs_f64() * 1000.0).collect();
        let sent = self.samples.len() as u64;
        let received = rtts.len() as u64;
        let mut summary = RttSummary { transmitted: sent, ..RttSummary::default() };
        for &ms in &rtts {
            summary.reply_ms(ms);
        }
        let (min, avg, max, mdev) =
            summary.rtt_ms().map_or((None, None, None, None), |(a, b, c, d)| (Some(a), Some(b), Some(c), Some(d)));
        rtts.sort_by(f64::total_cmp);
        WindowSummary {
            sent,
            received,
            loss_pct: summary.loss_pct(),
            rtt_min_ms: min,
            rtt_avg_ms: avg,
            rtt_max_ms: max,
            rtt_mdev_ms: mdev,
            jitter_ms: self.last_rtt_ms.map(|_| self.jitter_ms),
            rtt_p50_ms: percentile(&rtts, 50.0),
            rtt_p95_ms: percentile(&rtts, 95.0),
            rtt_p99_ms: percentile(&rtts, 99.0),
            rtt_last_ms: self.last_rtt_ms,
            up: self.up(),
        }
    }
}

/// The nearest-rank percentile of sorted values.
pub fn percentile(sorted: &[f64], p: f64) -> Option<f64> {
    if sorted.is_empty() {
        return None;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    Some(sorted[rank.clamp(1, sorted.len()) - 1])
}

#[cfg(test)]
mod window_tests {
    use super::*;
    use crate::probe::{Outcome, Sample};

    fn reply(seq: u64, ms: f64) -> Sample {
        Sample {
            seq,
            rtt: Some(Duration::from_secs_f64(ms / 1000.0)),
            outcome: Outcome::Reply { bytes: 64, ttl: None },
        }
    }

    #[test]
    fn window_summarises_loss_rtt_and_percentiles() {
        let mut w = Window::new(100);
        for i in 1..=100u64 {
            if i % 10 == 0 {
                w.push(Sample { seq: i, rtt: None, outcome: Outcome::Timeout });
            } else {
                w.push(reply(i, i as f64));
            }
        }
        let s = w.summary();
        assert_eq!((s.sent, s.received), (100, 90));
        assert!((s.loss_pct - 10.0).abs() < 1e-9);
        assert_eq!((s.rtt_min_ms, s.rtt_max_ms), (Some(1.0), Some(99.0)));
        assert_eq!(s.rtt_p50_ms, Some(49.0)); // 45th of the 90 replies (1..=99 without multiples of 10)
        assert_eq!(s.rtt_p99_ms, Some(99.0));
        assert!(s.up, "the last probe timed out, but the two before it answered: lossy, not down");
        // The window slides: 100 more replies push every loss out.
        for i in 101..=200u64 {
            w.push(reply(i, 5.0));
        }
        let s = w.summary();
        assert_eq!((s.sent, s.received, s.loss_pct), (100, 100, 0.0));
        assert_eq!(s.rtt_mdev_ms, Some(0.0));
        assert!(s.up);
    }

    #[test]
    fn a_target_is_down_after_three_lost_probes_or_one_refusal() {
        let mut w = Window::new(10);
        w.push(reply(1, 1.0));
        for seq in 2..=3 {
            w.push(Sample { seq, rtt: None, outcome: Outcome::Timeout });
            assert!(w.summary().up, "{seq}: lost, but probe 1 answered within the last three");
        }
        w.push(Sample { seq: 4, rtt: None, outcome: Outcome::Timeout });
        assert!(!w.summary().up, "three lost in a row");
        w.push(reply(5, 1.0));
        w.push(Sample { seq: 6, rtt: None, outcome: Outcome::Failed("Connection refused".into()) });
        assert!(!w.summary().up, "a refusal is an answer: down at once");
    }

    #[test]
    fn the_newest_probe_decides_up_even_when_an_older_one_settles_later() {
        let mut w = Window::new(10);
        w.push(reply(2, 1.0));
        w.push(Sample { seq: 1, rtt: None, outcome: Outcome::Timeout }); // probe 1 timed out after 2 answered
        assert!(w.summary().up);
    }

    #[test]
    fn jitter_follows_rfc3550() {
        let mut w = Window::new(10);
        w.push(reply(1, 10.0));
        assert_eq!(w.summary().jitter_ms, Some(0.0));
        w.push(reply(2, 26.0));
        assert_eq!(w.summary().jitter_ms, Some(1.0)); // (16 - 0) / 16
        w.push(reply(3, 10.0));
        assert_eq!(w.summary().jitter_ms, Some(1.9375)); // 1 + (16 - 1) / 16
        // Constant delay converges to zero jitter.
        let mut c = Window::new(10);
        for i in 0..50 {
            c.push(reply(i, 20.0));
        }
        assert_eq!(c.summary().jitter_ms, Some(0.0));
        assert_eq!(Window::new(5).summary().jitter_ms, None);
    }

    #[test]
    fn percentiles_use_nearest_rank() {
        let v: Vec<f64> = (1..=20).map(f64::from).collect();
        assert_eq!(percentile(&v, 50.0), Some(10.0));
        assert_eq!(percentile(&v, 95.0), Some(19.0));
        assert_eq!(percentile(&v, 99.0), Some(20.0));
        assert_eq!(percentile(&[], 50.0), None);
        assert_eq!(percentile(&[3.0], 99.0), Some(3.0));
    }
}
