//! HTTP request time: from connect to the response head, with the status.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::{Outcome, Sample, StatusRange};

/// The User-Agent of health probes; the lab's HTTP servers do not log requests carrying it.
pub const USER_AGENT: &str = "netpulse-monitor";

/// GETs `path` from `addr` (plain HTTP/1.1, `Connection: close`) and times the response head;
/// a status outside `expect` is [`Outcome::Status`].
pub async fn probe(
    addr: SocketAddr,
    host: &str,
    path: &str,
    expect: StatusRange,
    seq: u64,
    timeout: Duration,
) -> Sample {
    let start = Instant::now();
    let exchange = async {
        let mut s = tokio::net::TcpStream::connect(addr).await?;
        let req =
            format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: {USER_AGENT}\r\nConnection: close\r\n\r\n");
        s.write_all(req.as_bytes()).await?;
        let mut buf = Vec::with_capacity(4096);
        let mut chunk = [0u8; 4096];
        loop {
            if !buf.is_empty() {
                let mut headers = [httparse::EMPTY_HEADER; 64];
                let mut resp = httparse::Response::new(&mut headers);
                match resp.parse(&buf) {
                    // An interim answer (103 Early Hints, 100 Continue) is not the status: skip it.
                    Ok(httparse::Status::Complete(n))
                        if resp.code.is_some_and(|c| (100..200).contains(&c) && c != 101) =>
                    {
                        buf.drain(..n);
                        continue;
                    }
                    Ok(httparse::Status::Complete(_)) => return Ok(resp.code.unwrap_or(0)),
                    Ok(httparse::Status::Partial) if buf.len() < 64 * 1024 => {}
                    Ok(httparse::Status::Partial) => {
                        return Err(std::io::Error::new(std::io::ErrorKind::InvalidData, "response head too large"));
                    }
                    Err(e) => return Err(std::io::Error::new(std::io::ErrorKind::InvalidData, e.to_string())),
                }
            }
            let n = s.read(&mut chunk).await?;
            if n == 0 {
                return Err(std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "closed before a response"));
            }
            buf.extend_from_slice(&chunk[..n]);
        }
    };
    match tokio::time::timeout(timeout, exchange).await {
        Ok(Ok(code)) => {
            let outcome = if expect.contains(code) { Outcome::Http(code) } else { Outcome::Status(code) };
            Sample { seq, rtt: Some(start.elapsed()), outcome }
        }
        Ok(Err(e)) => Sample { seq, rtt: None, outcome: super::failure(&e) },
        Err(_) => Sample { seq, rtt: None, outcome: Outcome::Timeout },
    }
}
