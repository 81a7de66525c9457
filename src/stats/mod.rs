//! Statistics over round-trip samples: loss and min/avg/max/mdev, printed the way ping prints them.

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
        let ms = rtt.as_secs_f64() * 1000.0;
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
