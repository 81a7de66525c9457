//! Closed-loop UDP load for benchmarks: `FLOWS` clients, each with its own socket, each sending
//! one datagram and waiting for the reply before sending the next. Prints datagrams/s and losses.
//!
//! `cargo run --release --example udp_load -- 127.0.0.1:8888 [FLOWS=32] [SECS=5] [BYTES=64]`

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tokio::net::UdpSocket;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let usage = "usage: udp_load ADDR [FLOWS] [SECS] [BYTES]";
    let target: SocketAddr = args.first().ok_or(usage)?.parse()?;
    let flows: usize = args.get(1).map_or(Ok(32), |s| s.parse())?;
    let secs: f64 = args.get(2).map_or(Ok(5.0), |s| s.parse())?;
    let bytes: usize = args.get(3).map_or(Ok(64), |s| s.parse())?;
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let done = Arc::new(AtomicU64::new(0));
    let lost = Arc::new(AtomicU64::new(0));
    let elapsed = rt.block_on(async {
        let deadline = Instant::now() + Duration::from_secs_f64(secs);
        let mut tasks = Vec::new();
        for _ in 0..flows {
            let (done, lost) = (done.clone(), lost.clone());
            tasks.push(tokio::spawn(async move {
                let local = if target.is_ipv4() { "0.0.0.0:0" } else { "[::]:0" };
                let s = UdpSocket::bind(local).await?;
                s.connect(target).await?;
                let msg = vec![b'p'; bytes];
                let mut buf = vec![0u8; 65_536];
                while Instant::now() < deadline {
                    s.send(&msg).await?;
                    match tokio::time::timeout(Duration::from_millis(200), s.recv(&mut buf)).await {
                        Ok(Ok(_)) => done.fetch_add(1, Ordering::Relaxed),
                        _ => lost.fetch_add(1, Ordering::Relaxed),
                    };
                }
                Ok::<_, std::io::Error>(())
            }));
        }
        let start = Instant::now();
        for t in tasks {
            t.await??;
        }
        Ok::<_, Box<dyn std::error::Error>>(start.elapsed())
    })?;
    let n = done.load(Ordering::Relaxed);
    println!(
        "datagrams/s {:.0} replies {} lost {} flows {flows} bytes {bytes}",
        n as f64 / elapsed.as_secs_f64(),
        n,
        lost.load(Ordering::Relaxed)
    );
    Ok(())
}
