//! TCP connect time.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use super::{Outcome, Sample};

/// Connects to `addr` and reports how long the handshake took.
pub async fn probe(addr: SocketAddr, seq: u64, timeout: Duration) -> Sample {
    let start = Instant::now();
    match tokio::time::timeout(timeout, tokio::net::TcpStream::connect(addr)).await {
        Ok(Ok(_stream)) => Sample { seq, rtt: Some(start.elapsed()), outcome: Outcome::Connected },
        Ok(Err(e)) => Sample { seq, rtt: None, outcome: super::failure(&e) },
        Err(_) => Sample { seq, rtt: None, outcome: Outcome::Timeout },
    }
}
