//! The classic UDP ping, wire format and probe: the message is `PING <seq> <HH:MM:SS>` (UTC), the
//! reply the same bytes upper-cased. `udp-ping`, the monitor's `udp://` targets and the lab
//! servers all speak it through here.

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::{Duration, Instant};

use tokio::net::UdpSocket;

use super::{Outcome, ProbeSources, Sample};
use crate::clock::UtcTime;

/// The message for sequence number `seq`.
pub fn message(seq: u64, now: &UtcTime) -> String {
    format!("PING {seq} {}", now.hms())
}

/// The reply a server sends to `request`: the same bytes upper-cased.
pub fn reply_to(request: &mut [u8]) {
    request.make_ascii_uppercase();
}

/// A connected socket that probes one UDP ping server; late replies to earlier probes are
/// recognised by their sequence number and skipped.
pub struct UdpProber {
    socket: UdpSocket,
}

impl UdpProber {
    pub async fn connect(addr: SocketAddr) -> std::io::Result<Self> {
        let local: SocketAddr =
            if addr.is_ipv4() { (Ipv4Addr::UNSPECIFIED, 0).into() } else { (Ipv6Addr::UNSPECIFIED, 0).into() };
        let socket = UdpSocket::bind(local).await?;
        socket.connect(addr).await?;
        Ok(Self { socket })
    }

    /// Tells `sources` the local address the probes go out from.
    pub fn register(&self, sources: &ProbeSources) {
        if let Ok(local) = self.socket.local_addr() {
            sources.add(local);
        }
    }

    /// Sends the classic message for `seq` and waits for its upper-cased echo.
    pub async fn probe(&self, seq: u64, timeout: Duration) -> Sample {
        let msg = message(seq, &UtcTime::now());
        self.exchange(&msg, seq, timeout).await
    }

    /// Sends `msg` and waits up to `timeout` for the same bytes upper-cased; other datagrams
    /// (late replies to earlier probes) are skipped.
    pub async fn exchange(&self, msg: &str, seq: u64, timeout: Duration) -> Sample {
        let expected = msg.to_ascii_uppercase();
        self.exchange_matching(msg.as_bytes(), |r| r == expected.as_bytes(), seq, timeout).await
    }

    /// Sends `send` and waits up to `timeout` for a reply that starts with `expect` (any reply
    /// when `expect` is empty).
    pub async fn exchange_bytes(&self, send: &[u8], expect: &[u8], seq: u64, timeout: Duration) -> Sample {
        self.exchange_matching(send, |r| r.starts_with(expect), seq, timeout).await
    }

    async fn exchange_matching(
        &self,
        send: &[u8],
        matches: impl Fn(&[u8]) -> bool,
        seq: u64,
        timeout: Duration,
    ) -> Sample {
        let mut buf = vec![0; 65_536];
        let start = Instant::now();
        if let Err(e) = self.socket.send(send).await {
            return Sample { seq, rtt: None, outcome: Outcome::Failed(describe(&e)) };
        }
        let deadline = tokio::time::Instant::from_std(start + timeout);
        loop {
            match tokio::time::timeout_at(deadline, self.socket.recv(&mut buf)).await {
                Err(_) => return Sample { seq, rtt: None, outcome: Outcome::Timeout },
                Ok(Ok(n)) if matches(&buf[..n]) => {
                    return Sample { seq, rtt: Some(start.elapsed()), outcome: Outcome::Reply { bytes: n, ttl: None } };
                }
                Ok(Ok(_)) => {} // a late reply to an earlier probe
                Ok(Err(e)) => {
                    // Refused (nothing listens): report it, but only once the timeout is spent,
                    // so a closed port is not probed faster than an open one.
                    tokio::time::sleep_until(deadline).await;
                    return Sample { seq, rtt: None, outcome: Outcome::Failed(describe(&e)) };
                }
            }
        }
    }
}

/// An ICMP port-unreachable surfaces as "connection refused" on a connected UDP socket.
fn describe(e: &std::io::Error) -> String {
    if e.kind() == std::io::ErrorKind::ConnectionRefused {
        "port unreachable (nothing listens there)".into()
    } else {
        e.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn message_is_the_classic_format_and_the_reply_its_upper_case() {
        let t = UtcTime::from_system(std::time::UNIX_EPOCH + Duration::from_secs(1_795_316_645));
        assert_eq!(message(7, &t), "PING 7 03:04:05");
        let mut m = b"ping 7 03:04:05".to_vec();
        reply_to(&mut m);
        assert_eq!(m, b"PING 7 03:04:05");
    }
}
