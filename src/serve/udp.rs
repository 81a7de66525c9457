//! Classic UDP ping servers: reply with the datagram upper-cased, dropping a share of requests
//! to simulate loss (reproducibly with a seed) and delaying replies to simulate a long path.

use std::collections::VecDeque;
use std::io;
use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::os::fd::AsFd;
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::log::Log;
use tokio_util::sync::CancellationToken;

use crate::net::{self, BindError};
use crate::probe::ProbeSources;

/// How often a server checks the stop signal while idle.
const POLL: Duration = Duration::from_millis(100);

/// A small, fast, reproducible generator (SplitMix64); statistical quality is ample for loss.
#[derive(Debug, Clone)]
pub struct SplitMix64(u64);

impl SplitMix64 {
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1).
    pub fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// UDP ping servers on a set of ports, bound and ready to run.
pub struct UdpServers {
    sockets: Vec<UdpSocket>,
    faults: Faults,
    seed: u64,
    log: Log,
    /// This process's own probes (the monitor under `up`): answered, not logged, so the lab's
    /// output shows the user's traffic.
    quiet: ProbeSources,
}

impl UdpServers {
    /// Binds every port first; `seed` of `None` picks one from the clock. Pings from `quiet`
    /// addresses are answered without a log line.
    pub fn bind(
        ip: IpAddr,
        ports: &[u16],
        faults: Faults,
        seed: Option<u64>,
        log: Log,
        quiet: ProbeSources,
    ) -> Result<Self, BindError> {
        let sockets = ports
            .iter()
            .map(|&p| net::bind_udp(SocketAddr::new(ip, p), "udp ping server"))
            .collect::<Result<_, _>>()?;
        let seed =
            seed.unwrap_or_else(|| SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64));
        Ok(Self { sockets, faults, seed, log, quiet })
    }

    pub fn addrs(&self) -> Vec<SocketAddr> {
        self.sockets.iter().filter_map(|s| s.local_addr().ok()).collect()
    }

    /// Serves each port on a thread of its own until `shutdown`.
    pub fn spawn(self, shutdown: CancellationToken) -> io::Result<Vec<thread::JoinHandle<io::Result<()>>>> {
        self.sockets
            .into_iter()
            .map(|socket| {
                let port = socket.local_addr()?.port();
                // Each port draws from its own stream, so one port's traffic does not change another's.
                let rng = SplitMix64::new(self.seed ^ u64::from(port).wrapping_mul(0xA24B_AED4_963E_E407));
                let (faults, log, stop) = (self.faults, self.log.clone(), shutdown.clone());
                let quiet = self.quiet.clone();
                thread::Builder::new()
                    .name(format!("udp-server-{port}"))
                    .spawn(move || serve(socket, port, faults, rng, log, &quiet, stop))
            })
            .collect()
    }
}

/// How a server misbehaves: drop a share of requests, answer the rest late.
#[derive(Debug, Clone, Copy, Default)]
pub struct Faults {
    pub loss: f64,
    pub delay: Duration,
}

/// Replies waiting for their delay to pass, at most this many (older ones are sent early).
const MAX_DELAYED: usize = 4096;

fn serve(
    socket: UdpSocket,
    port: u16,
    faults: Faults,
    mut rng: SplitMix64,
    log: Log,
    quiet: &ProbeSources,
    stop: CancellationToken,
) -> io::Result<()> {
    socket.set_nonblocking(true)?;
    let mut buf = vec![0u8; 65_536];
    let mut delayed: VecDeque<(Instant, SocketAddr, Vec<u8>)> = VecDeque::new();
    while !stop.is_cancelled() {
        let now = Instant::now();
        while delayed.front().is_some_and(|(due, _, _)| *due <= now) || delayed.len() > MAX_DELAYED {
            if let Some((_, peer, reply)) = delayed.pop_front() {
                let _ = socket.send_to(&reply, peer);
            }
        }
        // ppoll keeps sub-millisecond timing; SO_RCVTIMEO would round waits to the kernel tick.
        let wait = delayed.front().map_or(POLL, |(due, _, _)| due.saturating_duration_since(now).min(POLL));
        if crate::sys::poll_readable(&[socket.as_fd()], wait)? == 0 {
            continue;
        }
        let (n, peer) = match socket.recv_from(&mut buf) {
            Ok(x) => x,
            Err(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted) => continue,
            // A queued ICMP error from an earlier reply; keep serving.
            Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => continue,
            Err(e) => return Err(e),
        };
        let received = Instant::now();
        let message = &mut buf[..n];
        let drop = faults.loss > 0.0 && rng.next_f64() < faults.loss;
        if log.enabled() && !quiet.contains(peer) {
            let fate = if drop { "dropped (simulated loss)" } else { "replied" };
            log.line(format!("[{port}] {peer} \"{}\" {fate}", super::printable(message)));
        }
        if drop {
            continue;
        }
        crate::probe::udp::reply_to(message);
        if faults.delay.is_zero() {
            // A full buffer loses the reply, as UDP may; the client counts it as loss.
            let _ = socket.send_to(message, peer);
        } else {
            delayed.push_back((received + faults.delay, peer, message.to_vec()));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loss_rate_is_close_to_the_probability_and_reproducible() {
        let mut a = SplitMix64::new(7);
        let mut b = SplitMix64::new(7);
        let n = 100_000;
        let drops = (0..n).filter(|_| a.next_f64() < 0.36).count();
        // 0.36 * 100000 = 36000; 5 standard deviations of the binomial are about 760.
        assert!((35_240..=36_760).contains(&drops), "{drops}");
        let mut a = SplitMix64::new(7);
        assert!((0..1000).all(|_| a.next_u64() == b.next_u64()));
    }
}
