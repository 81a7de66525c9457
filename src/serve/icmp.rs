//! A user-space ICMP echo responder with injected delay and loss, for labs and accuracy tests
//! (the kernel here has no `netem`). Run it where the kernel's own echo is switched off
//! (`net.ipv4.icmp_echo_ignore_all=1`, e.g. inside a network namespace), or both will answer.

use std::collections::VecDeque;
use std::io;
use std::net::SocketAddr;
use std::os::fd::AsFd;
use std::time::{Duration, Instant, SystemTime};

use socket2::{Domain, Protocol, SockAddr, Socket, Type};

use super::udp::SplitMix64;
use crate::log::Log;
use crate::sys;
use tokio_util::sync::CancellationToken;

/// How the responder misbehaves.
#[derive(Debug, Clone, Copy)]
pub struct EchoFaults {
    pub delay: Duration,
    pub loss: f64,
    pub seed: u64,
}

/// Whether the kernel answers echo requests itself in this network namespace.
pub fn kernel_echo_enabled() -> bool {
    std::fs::read_to_string("/proc/sys/net/ipv4/icmp_echo_ignore_all").map_or(true, |v| v.trim() == "0")
}

/// Opens the raw socket (needs root or CAP_NET_RAW).
pub fn open() -> io::Result<Socket> {
    let s = Socket::new(Domain::IPV4, Type::RAW, Some(Protocol::ICMPV4))?;
    s.set_nonblocking(true)?;
    // The delay counts from the kernel's receive time, not from when this thread woke up.
    sys::enable_ttl_and_timestamps(s.as_fd(), false)?;
    Ok(s)
}

/// Answers IPv4 echo requests until `shutdown`.
pub fn serve(socket: Socket, faults: EchoFaults, log: Log, shutdown: CancellationToken) -> io::Result<()> {
    let mut rng = SplitMix64::new(faults.seed);
    let mut queue: VecDeque<(Instant, SocketAddr, Vec<u8>)> = VecDeque::new();
    let mut buf = vec![0u8; 65_536];
    while !shutdown.is_cancelled() {
        let now = Instant::now();
        while queue.front().is_some_and(|(due, _, _)| *due <= now) {
            if let Some((_, to, reply)) = queue.pop_front() {
                let _ = socket.send_to(&reply, &SockAddr::from(to));
            }
        }
        let wait = queue.front().map_or(Duration::from_millis(100), |(due, _, _)| due.saturating_duration_since(now));
        if sys::poll_readable(&[socket.as_fd()], wait.min(Duration::from_millis(100)))? == 0 {
            continue;
        }
        loop {
            let meta = match sys::recv_meta(socket.as_fd(), &mut buf) {
                Ok(m) => m,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            };
            let now = Instant::now();
            let waited = meta.kernel_time.and_then(|k| SystemTime::now().duration_since(k).ok()).unwrap_or_default();
            let received = now.checked_sub(waited).unwrap_or(now);
            let packet = &buf[..meta.len];
            let ihl = usize::from(packet.first().map_or(0, |b| b & 0x0f)) * 4;
            let (Some(icmp), Some(from)) = (packet.get(ihl..), meta.from) else { continue };
            if icmp.len() < 8 || icmp[0] != 8 || icmp[1] != 0 {
                continue; // not an echo request (our own replies come back here too)
            }
            let seq = u16::from_be_bytes([icmp[6], icmp[7]]);
            let drop = faults.loss > 0.0 && rng.next_f64() < faults.loss;
            if log.enabled() {
                let fate = if drop { "dropped (simulated loss)" } else { "answered" };
                log.line(format!("[icmp] {} echo seq={seq} {}B {fate}", from.ip(), icmp.len()));
            }
            if drop {
                continue;
            }
            let mut reply = icmp.to_vec();
            reply[0] = 0;
            reply[2] = 0;
            reply[3] = 0;
            let sum = crate::probe::icmp::checksum(&reply);
            reply[2..4].copy_from_slice(&sum.to_be_bytes());
            queue.push_back((received + faults.delay, from, reply));
        }
    }
    Ok(())
}
