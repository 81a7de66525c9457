//! `netpulse udp-ping`: the classic UDP pinger client. Sends `PING <seq> <HH:MM:SS>`, expects
//! the same bytes upper-cased, prints a line per reply or timeout and ping's summary. The
//! exchange is the monitor's udp:// probe ([`UdpProber`]); it works against the classic Python
//! servers and against our balancer.

use std::io::{self, Write};
use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};

use super::resolve;
use crate::cli::UdpPingArgs;
use crate::clock::UtcTime;
use crate::probe::Outcome;
use crate::probe::udp::{UdpProber, message};
use crate::stats::RttSummary;

/// What `netpulse udp-ping` was asked to do.
#[derive(Debug, Clone)]
struct UdpPingPlan {
    target: SocketAddr,
    /// Shown in the header and summary: the host as the user wrote it, with the port.
    label: String,
    count: u64,
    timeout: Duration,
    /// Least time between two sends; zero sends the next ping once the last one is settled.
    interval: Duration,
}

impl TryFrom<&UdpPingArgs> for UdpPingPlan {
    type Error = anyhow::Error;
    /// Resolves the host (IPv4 preferred); failing to is bad usage.
    fn try_from(a: &UdpPingArgs) -> Result<Self> {
        let target = resolve(&a.host, a.port)?;
        Ok(Self {
            target,
            label: host_port(&a.host, a.port),
            count: a.count,
            timeout: a.timeout.0,
            interval: a.interval.0,
        })
    }
}

/// `host:port`, with an IPv6 address in brackets (`[::1]:2526`).
fn host_port(host: &str, port: u16) -> String {
    if host.contains(':') && !host.starts_with('[') { format!("[{host}]:{port}") } else { format!("{host}:{port}") }
}

pub(super) fn run(args: &UdpPingArgs) -> Result<ExitCode> {
    let plan = UdpPingPlan::try_from(args)?;
    let summary = ping(&plan, &mut io::stdout().lock()).context("udp-ping")?;
    Ok(if summary.received > 0 { ExitCode::SUCCESS } else { ExitCode::from(1) })
}

/// Runs the pings, printing a line per reply or timeout and the summary; returns the summary.
fn ping(plan: &UdpPingPlan, out: &mut impl Write) -> io::Result<RttSummary> {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let prober = rt.block_on(UdpProber::connect(plan.target))?;
    let mut summary = RttSummary::new();
    let pings = if plan.count == 1 { "ping" } else { "pings" };
    writeln!(out, "UDP PING {}: {} {pings}, timeout {:?}", plan.label, plan.count, plan.timeout)?;
    let start = Instant::now();
    let mut next_send = start;
    for seq in 1..=plan.count {
        let now = Instant::now();
        if next_send > now {
            std::thread::sleep(next_send - now);
        }
        next_send = Instant::now() + plan.interval;
        let msg = message(seq, &UtcTime::now());
        let sample = rt.block_on(prober.exchange(&msg, seq, plan.timeout));
        summary.sent();
        match (&sample.outcome, sample.rtt) {
            (Outcome::Reply { bytes, .. }, Some(rtt)) => {
                summary.reply(rtt);
                let ms = rtt.as_secs_f64() * 1000.0;
                let reply = msg.to_ascii_uppercase();
                writeln!(out, "{bytes} bytes from {}: seq={seq} time={ms:.3} ms reply=\"{reply}\"", plan.target)?;
            }
            (Outcome::Timeout, _) => writeln!(out, "Request timed out: seq={seq}")?,
            (Outcome::Failed(e), _) => writeln!(out, "seq={seq}: {e}")?,
            (other, _) => writeln!(out, "seq={seq}: {other:?}")?,
        }
    }
    summary.write_report(out, &plan.label, "udp-ping", start.elapsed())?;
    Ok(summary)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ipv6_hosts_are_bracketed_in_the_label() {
        assert_eq!(host_port("::1", 2526), "[::1]:2526");
        assert_eq!(host_port("[::1]", 2526), "[::1]:2526");
        assert_eq!(host_port("127.0.0.1", 8888), "127.0.0.1:8888");
        assert_eq!(host_port("localhost", 8888), "localhost:8888");
    }
}
