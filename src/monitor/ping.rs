//! The pinger behind `netpulse ping`: ICMP echo (or TCP connect) with ping's per-reply lines and
//! summary.

use std::io::{self, Write};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use crate::probe::icmp::{self, IcmpPlan};
use crate::probe::{Outcome, ProbeError, Sample, tcp};
use crate::stats::RttSummary;

/// What `netpulse ping` was asked to do.
#[derive(Debug, Clone)]
pub struct PingOptions {
    /// The host as the user wrote it.
    pub host: String,
    pub ip: IpAddr,
    pub count: Option<u64>,
    pub interval: Duration,
    pub timeout: Duration,
    pub size: usize,
    pub quiet: bool,
    /// Time TCP connects to this port instead of ICMP echo.
    pub tcp_port: Option<u16>,
}

/// ping's time format: three significant decimals below 1 ms, fewer above, none from 100 ms.
pub fn format_ms(rtt: Duration) -> String {
    let ms = rtt.as_secs_f64() * 1000.0;
    match ms {
        m if m >= 100.0 => format!("{m:.0}"),
        m if m >= 10.0 => format!("{m:.1}"),
        m if m >= 1.0 => format!("{m:.2}"),
        m => format!("{m:.3}"),
    }
}

/// Sets the returned flag on Ctrl-C, so a ping without `-c` ends with its summary.
fn interrupted_flag() -> Arc<AtomicBool> {
    let flag = Arc::new(AtomicBool::new(false));
    let f = flag.clone();
    let _ = std::thread::Builder::new().name("ctrl-c".into()).spawn(move || {
        if let Ok(rt) = tokio::runtime::Builder::new_current_thread().enable_all().build() {
            if rt.block_on(tokio::signal::ctrl_c()).is_ok() {
                f.store(true, Ordering::SeqCst);
            }
        }
    });
    flag
}

/// Runs the pings, printing as ping does; returns the summary.
pub fn run(opts: &PingOptions, out: &mut impl Write) -> Result<RttSummary, PingError> {
    let stop = interrupted_flag();
    let mut summary = RttSummary::new();
    let start = Instant::now();
    match opts.tcp_port {
        None => {
            let sockets = icmp::open_for(&[opts.ip])?;
            let header = if opts.ip.is_ipv4() {
                format!("PING {} ({}) {}({}) bytes of data.", opts.host, opts.ip, opts.size, opts.size + 28)
            } else {
                format!("PING {} ({}) {} data bytes", opts.host, opts.ip, opts.size)
            };
            writeln!(out, "{header}")?;
            let plan = IcmpPlan {
                targets: vec![opts.ip],
                interval: opts.interval,
                timeout: opts.timeout,
                size: opts.size,
                count: opts.count,
            };
            // A closed stdout (ping | head) ends the run; the error is reported after it.
            let mut write_err = None;
            let failed = std::cell::Cell::new(false);
            icmp::run_on(
                sockets,
                &plan,
                || stop.load(Ordering::SeqCst) || failed.get(),
                |_, sample| {
                    if let Err(e) = report(opts, &sample, &mut summary, out) {
                        write_err.get_or_insert(e);
                        failed.set(true);
                    }
                },
            )?;
            if let Some(e) = write_err {
                return Err(e.into());
            }
        }
        Some(port) => {
            let addr = SocketAddr::new(opts.ip, port);
            writeln!(out, "TCP PING {} ({addr})", opts.host)?;
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
            let mut next = Instant::now();
            let mut seq = 0;
            while opts.count.is_none_or(|c| seq < c) && !stop.load(Ordering::SeqCst) {
                let now = Instant::now();
                if next > now {
                    std::thread::sleep(next - now);
                }
                next += opts.interval;
                seq += 1;
                let sample = rt.block_on(tcp::probe(addr, seq, opts.timeout));
                report(opts, &sample, &mut summary, out)?;
            }
        }
    }
    summary.write_report(out, &opts.host, "ping", start.elapsed())?;
    Ok(summary)
}

fn report(opts: &PingOptions, s: &Sample, summary: &mut RttSummary, out: &mut impl Write) -> io::Result<()> {
    summary.sent();
    if let Some(rtt) = s.rtt {
        summary.reply(rtt);
    }
    if opts.quiet {
        return Ok(());
    }
    let seq_name = if opts.tcp_port.is_some() { "seq" } else { "icmp_seq" };
    match (&s.outcome, s.rtt) {
        (Outcome::Reply { bytes, ttl }, Some(rtt)) => {
            let ttl = ttl.map(|t| format!(" ttl={t}")).unwrap_or_default();
            writeln!(out, "{bytes} bytes from {}: {seq_name}={}{ttl} time={} ms", opts.ip, s.seq, format_ms(rtt))
        }
        (Outcome::Connected, Some(rtt)) => {
            let port = opts.tcp_port.unwrap_or(0);
            writeln!(
                out,
                "connected to {}: {seq_name}={} time={} ms",
                SocketAddr::new(opts.ip, port),
                s.seq,
                format_ms(rtt)
            )
        }
        (Outcome::Timeout, _) => writeln!(out, "no answer yet for {seq_name}={}", s.seq),
        (Outcome::Failed(e), _) => writeln!(out, "From {}: {seq_name}={} {e}", opts.ip, s.seq),
        (other, _) => writeln!(out, "{seq_name}={}: {other:?}", s.seq),
    }
}

/// Why `netpulse ping` could not run.
#[derive(Debug, thiserror::Error)]
pub enum PingError {
    #[error(transparent)]
    Probe(#[from] ProbeError),
    #[error(transparent)]
    Io(#[from] io::Error),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_print_like_ping() {
        assert_eq!(format_ms(Duration::from_micros(45)), "0.045");
        assert_eq!(format_ms(Duration::from_micros(1_234)), "1.23");
        assert_eq!(format_ms(Duration::from_micros(12_345)), "12.3");
        assert_eq!(format_ms(Duration::from_micros(123_456)), "123");
    }
}
