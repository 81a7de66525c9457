//! A terminal chart of a target's history: the median RTT per step as columns of Unicode
//! blocks (eight levels per row), a row of loss shades under it, and the time axis.

use std::fmt::Write as _;

use super::record::Agg;
use super::rfc3339;

/// Rows of the RTT chart.
const HEIGHT: usize = 8;
const BLOCKS: [char; 9] = [' ', '▁', '▂', '▃', '▄', '▅', '▆', '▇', '█'];
/// Width of the axis labels on the left.
const LABEL: usize = 10;

/// The loss of a step as a shade: none, some, a lot, most, all; `·` where nothing was recorded.
fn loss_shade(a: &Agg) -> char {
    match a.loss_pct() {
        None => '·',
        Some(l) if l <= 0.0 => ' ',
        Some(l) if l < 10.0 => '░',
        Some(l) if l < 50.0 => '▒',
        Some(l) if l < 100.0 => '▓',
        Some(_) => '█',
    }
}

/// Columns a chart of `width` characters has for data.
pub fn columns(width: usize) -> usize {
    width.saturating_sub(LABEL + 2).max(10)
}

/// The chart of `steps` (one column each), `step_ms` apart.
pub fn chart(title: &str, steps: &[(i64, Agg)], step_ms: i64) -> String {
    let values: Vec<Option<f64>> = steps.iter().map(|(_, a)| a.quantile_ms(0.5)).collect();
    let top = values.iter().flatten().copied().fold(0.0f64, f64::max);
    let mut out = String::new();
    let _ = writeln!(out, "{title}: median RTT (ms) per {}; loss below", human_step(step_ms));
    let eighths: Vec<usize> = values
        .iter()
        .map(|v| match v {
            // Any answered step shows at least a sliver.
            Some(v) if top > 0.0 => ((v / top * (HEIGHT * 8) as f64).round() as usize).clamp(1, HEIGHT * 8),
            Some(_) => 1,
            None => 0,
        })
        .collect();
    for row in (0..HEIGHT).rev() {
        let label = match row {
            r if r == HEIGHT - 1 => format!("{top:>LABEL$.3}"),
            0 => format!("{:>LABEL$.3}", 0.0),
            _ => " ".repeat(LABEL),
        };
        out.push_str(&label);
        out.push_str(if row == HEIGHT - 1 || row == 0 { " ┤" } else { " │" });
        for &e in &eighths {
            let filled = e.saturating_sub(row * 8).min(8);
            out.push(BLOCKS[filled]);
        }
        out.push('\n');
    }
    let _ = write!(out, "{:>LABEL$} │", "loss");
    out.extend(steps.iter().map(|(_, a)| loss_shade(a)));
    out.push('\n');
    let _ = writeln!(out, "{:>LABEL$} └{}", "", "─".repeat(steps.len()));
    if let (Some(first), Some(last)) = (steps.first(), steps.last()) {
        let (a, z) = (rfc3339(first.0), rfc3339(last.0 + step_ms));
        let gap = (steps.len() + 1).saturating_sub(a.len() + z.len()).max(1);
        let _ = writeln!(out, "{:>LABEL$}  {a}{}{z}", "", " ".repeat(gap));
    }
    let _ = writeln!(out, "{:>LABEL$}  loss: ' ' none  ░ <10%  ▒ <50%  ▓ <100%  █ all  · no data", "");
    out
}

/// `1m`, `2h30m`, `10s`.
pub fn human_step(ms: i64) -> String {
    human_duration(ms as f64 / 1000.0)
}

/// A duration in seconds as `1d2h`, `1h30m`, `2m5s`, `12s`, `0.5s`.
pub fn human_duration(secs: f64) -> String {
    if secs < 60.0 {
        return if secs.fract() == 0.0 { format!("{secs:.0}s") } else { format!("{secs:.1}s") };
    }
    let s = secs.round() as i64;
    let (d, h, m, s) = (s / 86_400, s % 86_400 / 3600, s % 3600 / 60, s % 60);
    let mut out = String::new();
    for (n, unit) in [(d, "d"), (h, "h"), (m, "m"), (s, "s")] {
        if n > 0 {
            let _ = write!(out, "{n}{unit}");
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::history::record::TargetInterval;

    fn agg(rtt_us: Option<u64>, lost: u64) -> Agg {
        let mut a = Agg::default();
        let rtts: Vec<u64> = rtt_us.into_iter().collect();
        let t = TargetInterval {
            span_ms: 1000,
            down: false,
            sent: rtts.len() as u64 + lost,
            received: rtts.len() as u64,
            lost,
            rtts_us: rtts,
        };
        a.add_interval(&t, &mut None);
        a
    }

    #[test]
    fn columns_rise_with_the_rtt_and_loss_is_shaded() {
        let steps =
            vec![(0, agg(Some(1000), 0)), (1000, agg(Some(8000), 0)), (2000, agg(None, 1)), (3000, Agg::default())];
        let c = chart("t", &steps, 1000);
        let lines: Vec<&str> = c.lines().collect();
        assert!(lines[1].ends_with("┤ █  "), "{c}");
        assert!(lines[8].ends_with("┤██  "), "{c}");
        assert!(lines[9].ends_with("│  █·"), "{c}");
        assert!(lines[1].trim_start().starts_with("8.0"), "{c}");
    }

    #[test]
    fn durations_read_like_people_write_them() {
        assert_eq!(human_duration(90.0), "1m30s");
        assert_eq!(human_duration(3600.0), "1h");
        assert_eq!(human_duration(86_400.0 + 7200.0), "1d2h");
        assert_eq!(human_duration(12.0), "12s");
        assert_eq!(human_duration(0.5), "0.5s");
    }
}
