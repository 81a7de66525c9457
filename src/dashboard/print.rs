//! The line printer, a sink: each report as a plain-text table (redrawn in place on a terminal)
//! or as one JSON object per line, for `netpulse monitor`.

use std::fmt::Write as _;
use std::io::{self, IsTerminal, Write};
use std::sync::Arc;

use tokio::sync::broadcast;

use crate::monitor::report::Report;

/// How the monitor prints.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    Table,
    Json,
}

/// Prints every report from `reports` until the monitor ends. Blocks (writes to a terminal or
/// pipe may): run it on a thread of its own. A closed pipe ends it with `BrokenPipe`, which the
/// command treats as a quiet exit.
pub fn print_reports(
    mut reports: broadcast::Receiver<Arc<Report>>,
    format: Format,
    out: &mut impl Write,
) -> io::Result<()> {
    let tty = std::io::stdout().is_terminal() && format == Format::Table;
    loop {
        match reports.blocking_recv() {
            Ok(report) => print(&report, format, tty, out)?,
            Err(broadcast::error::RecvError::Lagged(n)) => {
                tracing::warn!("the printer fell behind; {n} reports not shown");
            }
            Err(broadcast::error::RecvError::Closed) => return Ok(()),
        }
    }
}

fn print(report: &Report, format: Format, tty: bool, out: &mut impl Write) -> std::io::Result<()> {
    match format {
        Format::Json => {
            // One write per report: stdout's line buffering is slow for megabyte lines.
            let mut line = serde_json::to_vec(report).map_err(std::io::Error::other)?;
            line.push(b'\n');
            out.write_all(&line)?;
        }
        Format::Table => {
            if tty {
                write!(out, "\x1b[H\x1b[2J")?;
            }
            out.write_all(table(report).as_bytes())?;
        }
    }
    out.flush()
}

fn rate(bytes_per_sec: f64) -> String {
    let bits = bytes_per_sec * 8.0;
    match bits {
        b if b >= 1e9 => format!("{:.2} Gbit/s", b / 1e9),
        b if b >= 1e6 => format!("{:.2} Mbit/s", b / 1e6),
        b if b >= 1e3 => format!("{:.1} kbit/s", b / 1e3),
        b => format!("{b:.0} bit/s"),
    }
}

/// A byte count as people read it: `1.2 GB`, `350 kB`, `17 B` (powers of 1000, as `ls -h --si`).
pub fn bytes(n: u64) -> String {
    let units = ["B", "kB", "MB", "GB", "TB", "PB"];
    let mut v = n as f64;
    let mut unit = 0;
    while v >= 1000.0 && unit < units.len() - 1 {
        v /= 1000.0;
        unit += 1;
    }
    match unit {
        0 => format!("{n} B"),
        _ if v < 10.0 => format!("{v:.1} {}", units[unit]),
        _ => format!("{v:.0} {}", units[unit]),
    }
}

fn ms(v: Option<f64>) -> String {
    v.map_or_else(|| "-".into(), |v| format!("{v:.2}"))
}

/// Loss with at most one decimal (`0%`, `28.6%`, `100%`).
fn loss(pct: f64) -> String {
    let rounded = (pct * 10.0).round() / 10.0;
    if rounded.fract() == 0.0 { format!("{rounded:.0}%") } else { format!("{rounded:.1}%") }
}

fn verdict(c: crate::monitor::report::Connectivity) -> &'static str {
    use crate::monitor::report::Connectivity::*;
    match c {
        Connected => "connected",
        Degraded => "degraded",
        Disconnected => "disconnected",
    }
}

/// The report as a plain-text table that fits 80 columns (a long target name runs on at the
/// end of its line); times in milliseconds, sizes in B/kB/MB, rates in bit/s.
pub fn table(r: &Report) -> String {
    let mut t = String::new();
    let _ = writeln!(t, "netpulse monitor  {}  connectivity: {}", r.time, verdict(r.connectivity));
    let _ = writeln!(
        t,
        "{:<12} {:<4} {:>12} {:>12} {:>9} {:>9} {:>7} {:>7}",
        "INTERFACE", "LINK", "RX", "TX", "RX TOTAL", "TX TOTAL", "ERRS", "DROPS"
    );
    for i in &r.interfaces {
        let c = &i.counters;
        let _ = writeln!(
            t,
            "{:<12} {:<4} {:>12} {:>12} {:>9} {:>9} {:>7} {:>7}",
            i.name,
            if i.up { "up" } else { "down" },
            rate(i.rx_bytes_per_sec),
            rate(i.tx_bytes_per_sec),
            bytes(c.rx_bytes),
            bytes(c.tx_bytes),
            c.rx_errors + c.tx_errors,
            c.rx_dropped + c.tx_dropped
        );
    }
    if !r.targets.is_empty() {
        let _ = writeln!(
            t,
            "\n{:<4} {:<5} {:>5} {:>5} {:>6} {:>7} {:>7} {:>7} {:>7} {:>7}  TARGET",
            "UP", "PROBE", "SENT", "RECV", "LOSS", "LAST ms", "AVG ms", "P95 ms", "MDEV ms", "JIT ms"
        );
        for x in &r.targets {
            let s = &x.summary;
            let _ = writeln!(
                t,
                "{:<4} {:<5} {:>5} {:>5} {:>6} {:>7} {:>7} {:>7} {:>7} {:>7}  {}",
                if s.up { "up" } else { "down" },
                x.probe,
                s.sent,
                s.received,
                loss(s.loss_pct),
                ms(s.rtt_last_ms),
                ms(s.rtt_avg_ms),
                ms(s.rtt_p95_ms),
                ms(s.rtt_mdev_ms),
                ms(s.jitter_ms),
                x.target
            );
        }
    }
    t.push('\n');
    t
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_rates_and_loss_read_as_people_write_them() {
        assert_eq!(bytes(17), "17 B");
        assert_eq!(bytes(1_234), "1.2 kB");
        assert_eq!(bytes(350_000), "350 kB");
        assert_eq!(bytes(57_693_817_836), "58 GB");
        assert_eq!(rate(125.0), "1.0 kbit/s");
        assert_eq!(loss(200.0 / 7.0), "28.6%");
        assert_eq!(loss(0.0), "0%");
        assert_eq!(loss(100.0), "100%");
    }

    #[test]
    fn the_table_fits_80_columns() {
        let mut r = Report::empty();
        r.interfaces.push(crate::iface::InterfaceStats {
            name: "enp0s31f6".into(),
            up: true,
            operstate: "up".into(),
            counters: crate::iface::Counters { rx_bytes: 57_693_817_836, ..Default::default() },
            rx_bytes_per_sec: 1.5e8,
            tx_bytes_per_sec: 2.0e3,
        });
        let text = table(&r);
        assert!(text.lines().all(|l| l.chars().count() <= 80), "{text}");
        assert!(text.contains("connectivity: connected") && text.contains("58 GB"), "{text}");
    }
}
