//! The classic UDP ping as a probe: `PING <seq> <HH:MM:SS>`, answered upper-cased.

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::{Duration, Instant};

use tokio::net::UdpSocket;

use super::{Outcome, Sample};
use crate::clock::UtcTime;

/// A connected socket that probes one UDP ping server; late replies to earlier probes are
/// recognised by their sequence number and skipped.
pub struct UdpProber {
    socket: UdpSocket,
    buf: Vec<u8>,
}

impl UdpProber {
    pub async fn connect(addr: SocketAddr) -> std::io::Result<Self> {
        let local: SocketAddr =
            if addr.is_ipv4() { (Ipv4Addr::UNSPECIFIED, 0).into() } else { (Ipv6Addr::UNSPECIFIED, 0).into() };
        let socket = UdpSocket::bind(local).await?;
        socket.connect(addr).await?;
        Ok(Self { socket, buf: vec![0; 65_536] })
    }

    /// The local address the probes go out from.
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.socket.local_addr()
    }

    /// Sends the classic message for `seq` and waits for its upper-cased echo.
    pub async fn probe(&mut self, seq: u64, timeout: Duration) -> Sample {
        let msg = crate::serve::ping::message(seq, &UtcTime::now());
        self.exchange(&msg, seq, timeout).await
    }

    /// Sends `msg` and waits up to `timeout` for the same bytes upper-cased; other datagrams
    /// (late replies to earlier probes) are skipped.
    pub async fn exchange(&mut self, msg: &str, seq: u64, timeout: Duration) -> Sample {
        let expected = msg.to_ascii_uppercase();
        let start = Instant::now();
        if let Err(e) = self.socket.send(msg.as_bytes()).await {
            return Sample { seq, rtt: None, outcome: Outcome::Failed(describe(&e)) };
        }
        let deadline = tokio::time::Instant::from_std(start + timeout);
        loop {
            match tokio::time::timeout_at(deadline, self.socket.recv(&mut self.buf)).await {
                Err(_) => return Sample { seq, rtt: None, outcome: Outcome::Timeout },
                Ok(Ok(n)) if self.buf[..n] == *expected.as_bytes() => {
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
