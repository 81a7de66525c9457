//! The UDP ping client: sends `PING <seq> <HH:MM:SS>`, expects the same bytes upper-cased, and
//! prints a ping-style summary. Works against the classic Python servers and our balancer. The
//! exchange itself is the monitor's udp:// probe ([`crate::probe::udp::UdpProber`]).

use std::io::{self, Write};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use crate::clock::UtcTime;
use crate::probe::Outcome;
use crate::probe::udp::UdpProber;
use crate::stats::RttSummary;

/// What `netpulse udp-ping` was asked to do.
#[derive(Debug, Clone)]
pub struct PingPlan {
    pub target: SocketAddr,
    /// Shown in the header and summary (the host as the user wrote it, with the port).
    pub label: String,
    pub count: u64,
    pub timeout: Duration,
    /// Least time between two sends; zero sends the next ping as soon as the last one is settled.
    pub interval: Duration,
}

/// The message for sequence number `seq`.
pub fn message(seq: u64, now: &UtcTime) -> String {
    format!("PING {seq} {}", now.hms())
}

/// Runs the pings, printing a line per reply or timeout and the summary; returns the summary.
pub fn run(plan: &PingPlan, out: &mut impl Write) -> io::Result<RttSummary> {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let mut prober = rt.block_on(UdpProber::connect(plan.target))?;
    let mut summary = RttSummary::new();
    writeln!(out, "UDP PING {}: {} pings, timeout {:?}", plan.label, plan.count, plan.timeout)?;
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
    fn message_is_the_classic_format() {
        let t = UtcTime { year: 2026, month: 11, day: 22, hour: 3, minute: 4, second: 5, millis: 0 };
        assert_eq!(message(7, &t), "PING 7 03:04:05");
    }
}
