//! The UDP ping client: sends `PING <seq> <HH:MM:SS>`, expects the same bytes upper-cased, and
//! prints a ping-style summary. Works against the classic Python servers and our balancer.

use std::io::{self, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

use crate::clock::UtcTime;
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
    let local: IpAddr = if plan.target.is_ipv4() { Ipv4Addr::UNSPECIFIED.into() } else { Ipv6Addr::UNSPECIFIED.into() };
    let socket = UdpSocket::bind(SocketAddr::new(local, 0))?;
    // Connected: only the target's replies are read, and a closed port is reported.
    socket.connect(plan.target)?;
    let mut summary = RttSummary::new();
    let mut buf = vec![0u8; 65_536];
    writeln!(out, "UDP PING {}: {} pings, timeout {:?}", plan.label, plan.count, plan.timeout)?;
    let start = Instant::now();
    let mut next_send = start;
    for seq in 1..=plan.count {
        let now = Instant::now();
        if next_send > now {
            std::thread::sleep(next_send - now);
        }
        let msg = message(seq, &UtcTime::now());
        let expected = msg.to_ascii_uppercase();
        let sent_at = Instant::now();
        next_send = sent_at + plan.interval;
        summary.sent();
        if let Err(e) = socket.send(msg.as_bytes()) {
            writeln!(out, "seq={seq}: send failed: {}", describe(&e))?;
            continue;
        }
        let deadline = sent_at + plan.timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                writeln!(out, "Request timed out: seq={seq}")?;
                break;
            }
            socket.set_read_timeout(Some(left))?;
            match socket.recv(&mut buf) {
                Ok(n) if buf[..n] == *expected.as_bytes() => {
                    let rtt = sent_at.elapsed();
                    summary.reply(rtt);
                    writeln!(
                        out,
                        "{n} bytes from {}: seq={seq} time={:.3} ms reply=\"{}\"",
                        plan.target,
                        rtt.as_secs_f64() * 1000.0,
                        super::printable(&buf[..n])
                    )?;
                    break;
                }
                // A late reply to an earlier ping, or a stranger's datagram: not ours, keep waiting.
                Ok(n) => writeln!(
                    out,
                    "ignored {n} bytes: \"{}\" (not the reply to seq={seq})",
                    super::printable(&buf[..n])
                )?,
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut | io::ErrorKind::Interrupted
                    ) => {}
                Err(e) => {
                    writeln!(out, "seq={seq}: {}", describe(&e))?;
                    // Do not spin on a port that keeps refusing: wait out the rest of the timeout.
                    std::thread::sleep(deadline.saturating_duration_since(Instant::now()));
                    break;
                }
            }
        }
    }
    summary.write_report(out, &plan.label, "udp-ping", start.elapsed())?;
    Ok(summary)
}

fn describe(e: &io::Error) -> String {
    if e.kind() == io::ErrorKind::ConnectionRefused {
        "port unreachable (nothing listens there)".into()
    } else {
        e.to_string()
    }
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
