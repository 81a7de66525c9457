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

fn ms(v: Option<f64>) -> String {
    v.map_or_else(|| "-".into(), |v| format!("{v:.3}"))
}

/// The report as a plain-text table.
pub fn table(r: &Report) -> String {
    let mut t = String::new();
    let _ = writeln!(t, "netpulse monitor  {}  connectivity: {:?}", r.time, r.connectivity);
    let _ = writeln!(
        t,
        "{:<12} {:<4} {:>14} {:>14} {:>14} {:>14} {:>6} {:>6}",
        "INTERFACE", "UP", "RX", "TX", "RX BYTES", "TX BYTES", "ERRS", "DROPS"
    );
    for i in &r.interfaces {
        let c = &i.counters;
        let _ = writeln!(
            t,
            "{:<12} {:<4} {:>14} {:>14} {:>14} {:>14} {:>6} {:>6}",
            i.name,
            if i.up { "up" } else { "down" },
            rate(i.rx_bytes_per_sec),
            rate(i.tx_bytes_per_sec),
            c.rx_bytes,
            c.tx_bytes,
            c.rx_errors + c.tx_errors,
            c.rx_dropped + c.tx_dropped
        );
    }
    if !r.targets.is_empty() {
        let _ = writeln!(
            t,
            "\n{:<28} {:<5} {:<4} {:>5} {:>5} {:>7} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9}",
            "TARGET",
            "PROBE",
            "UP",
            "SENT",
            "RECV",
            "LOSS",
            "MIN ms",
            "AVG ms",
            "MAX ms",
            "MDEV ms",
            "JITTER",
            "P95 ms"
        );
        for x in &r.targets {
            let s = &x.summary;
            let _ = writeln!(
                t,
                "{:<28} {:<5} {:<4} {:>5} {:>5} {:>6}% {:>9} {:>9} {:>9} {:>9} {:>9} {:>9}",
                x.target,
                x.probe,
                if s.up { "up" } else { "down" },
                s.sent,
                s.received,
                crate::stats::format_g(s.loss_pct),
                ms(s.rtt_min_ms),
                ms(s.rtt_avg_ms),
                ms(s.rtt_max_ms),
                ms(s.rtt_mdev_ms),
                ms(s.jitter_ms),
                ms(s.rtt_p95_ms)
            );
        }
    }
    t.push('\n');
    t
}
