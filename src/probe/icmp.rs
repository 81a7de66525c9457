//! ICMP echo for one target or ten thousand: one socket per address family, probes paced evenly
//! across the interval, replies matched by (address, sequence), RTT from the kernel's receive
//! timestamp. Runs on a thread of its own (the socket calls block).
//!
//! An unprivileged echo socket (`SOCK_DGRAM`, `IPPROTO_ICMP`) is used where
//! `net.ipv4.ping_group_range` allows it; otherwise a raw socket (root or CAP_NET_RAW).

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, VecDeque};
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::os::fd::{AsFd, BorrowedFd};
use std::time::{Duration, Instant, SystemTime};

use socket2::{Domain, Protocol, SockAddr, Socket, Type};

use super::{Outcome, ProbeError, Sample};
use crate::sys;

const ECHO_REQUEST_V4: u8 = 8;
const ECHO_REPLY_V4: u8 = 0;
const ECHO_REQUEST_V6: u8 = 128;
const ECHO_REPLY_V6: u8 = 129;
/// Bytes of an ICMP echo header.
pub const HEADER: usize = 8;
/// The largest payload accepted (`-s`): an IPv4 datagram's limit less the IP and ICMP headers.
pub const MAX_PAYLOAD: usize = 65_507 - HEADER;

/// An ICMP socket of one address family.
pub struct IcmpSocket {
    socket: Socket,
    v6: bool,
    /// Raw sockets see every ICMP packet (and the IPv4 header); echo sockets only their own.
    raw: bool,
    ident: u16,
    /// Written into every payload so a raw socket ignores other programs' replies.
    cookie: [u8; 8],
}

/// A matched echo reply.
#[derive(Debug, Clone, Copy)]
pub struct EchoReply {
    pub from: IpAddr,
    pub seq: u16,
    /// ICMP bytes (header and payload), as ping reports them.
    pub bytes: usize,
    pub ttl: Option<u8>,
    pub kernel_time: Option<SystemTime>,
}

impl IcmpSocket {
    /// Opens an echo socket, or a raw one if echo sockets are not allowed.
    pub fn open(v6: bool) -> Result<Self, ProbeError> {
        let (domain, proto) = if v6 { (Domain::IPV6, Protocol::ICMPV6) } else { (Domain::IPV4, Protocol::ICMPV4) };
        let (socket, raw) = match Socket::new(domain, Type::DGRAM, Some(proto)) {
            Ok(s) => (s, false),
            Err(dgram) => match Socket::new(domain, Type::RAW, Some(proto)) {
                Ok(s) => (s, true),
                Err(e) if matches!(e.kind(), io::ErrorKind::PermissionDenied) => {
                    return Err(ProbeError::NotPermitted(dgram));
                }
                Err(e) => return Err(ProbeError::Socket(e)),
            },
        };
        socket.set_nonblocking(true).map_err(ProbeError::Socket)?;
        // Room for a burst of replies when probing many targets.
        let _ = socket.set_recv_buffer_size(4 << 20);
        let _ = socket.set_send_buffer_size(1 << 20);
        sys::enable_ttl_and_timestamps(socket.as_fd(), v6).map_err(ProbeError::Socket)?;
        if raw && !v6 {
            // Best effort: without it we just read and discard more packets.
            let _ = sys::only_echo_replies(socket.as_fd());
        }
        let nanos = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64);
        let cookie = (nanos ^ u64::from(std::process::id()).rotate_left(32)).to_le_bytes();
        let ident = (std::process::id() as u16) ^ (nanos as u16);
        Ok(Self { socket, v6, raw, ident, cookie })
    }

    pub(crate) fn fd(&self) -> BorrowedFd<'_> {
        self.socket.as_fd()
    }

    /// Builds an echo request with `size` payload bytes into `buf`.
    fn build(&self, seq: u16, size: usize, buf: &mut Vec<u8>) {
        buf.clear();
        buf.push(if self.v6 { ECHO_REQUEST_V6 } else { ECHO_REQUEST_V4 });
        buf.push(0);
        buf.extend_from_slice(&[0, 0]);
        buf.extend_from_slice(&self.ident.to_be_bytes());
        buf.extend_from_slice(&seq.to_be_bytes());
        buf.extend((0..size).map(|i| if i < 8 { self.cookie[i] } else { i as u8 }));
        if !self.v6 {
            // ICMPv6 checksums include a pseudo-header and are filled in by the kernel.
            let sum = checksum(buf);
            buf[2..4].copy_from_slice(&sum.to_be_bytes());
        }
    }

    /// Sends echo request `seq` with `size` payload bytes.
    pub fn send(&self, to: IpAddr, seq: u16, size: usize, scratch: &mut Vec<u8>) -> io::Result<()> {
        self.build(seq, size, scratch);
        self.socket.send_to(scratch, &SockAddr::from(SocketAddr::new(to, 0))).map(drop)
    }

    /// Reads one packet without waiting: `Ok(Some)` for one of our echo replies, `Ok(None)`
    /// for anything else, `Err(WouldBlock)` when nothing is queued.
    pub fn recv(&self, buf: &mut [u8]) -> io::Result<Option<EchoReply>> {
        let meta = sys::recv_meta(self.socket.as_fd(), buf)?;
        let mut packet = &buf[..meta.len];
        let mut ttl = meta.ttl;
        if self.raw && !self.v6 {
            // A raw IPv4 socket hands over the IP header too.
            let ihl = usize::from(packet.first().map_or(0, |b| b & 0x0f)) * 4;
            if ihl < 20 || packet.len() < ihl {
                return Ok(None);
            }
            ttl = ttl.or(Some(packet[8]));
            packet = &packet[ihl..];
        }
        if packet.len() < HEADER {
            return Ok(None);
        }
        let reply = if self.v6 { ECHO_REPLY_V6 } else { ECHO_REPLY_V4 };
        if packet[0] != reply || packet[1] != 0 {
            return Ok(None);
        }
        if self.raw {
            let ident = u16::from_be_bytes([packet[4], packet[5]]);
            let payload = &packet[HEADER..];
            let cookie_len = payload.len().min(8);
            if ident != self.ident || payload[..cookie_len] != self.cookie[..cookie_len] {
                return Ok(None);
            }
        }
        let Some(from) = meta.from.map(|a| a.ip()) else { return Ok(None) };
        Ok(Some(EchoReply {
            from,
            seq: u16::from_be_bytes([packet[6], packet[7]]),
            bytes: packet.len(),
            ttl,
            kernel_time: meta.kernel_time,
        }))
    }
}

/// The Internet checksum (RFC 1071).
pub(crate) fn checksum(data: &[u8]) -> u16 {
    let mut sum: u32 = data.chunks(2).map(|c| u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)]))).sum();
    while sum >> 16 != 0 {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// What to ping and how often.
#[derive(Debug, Clone)]
pub struct IcmpPlan {
    pub targets: Vec<IpAddr>,
    pub interval: Duration,
    pub timeout: Duration,
    /// Payload bytes per echo request (ping's `-s`, default 56).
    pub size: usize,
    /// Probes per target; `None` runs until stopped.
    pub count: Option<u64>,
}

/// Probes due this close together are sent in one wake-up.
const SLICE: Duration = Duration::from_millis(1);

/// One probe in flight.
struct Pending {
    target: usize,
    seq: u64,
    sent: Instant,
    sent_wall: SystemTime,
}

/// Pings every target of `plan`, spreading the probes evenly over each interval, and calls
/// `on_sample(target index, sample)` for each reply or timeout. Returns when every target has
/// had `count` probes settled, or when `stop()` says so.
pub fn run(
    plan: &IcmpPlan,
    stop: impl FnMut() -> bool,
    on_sample: impl FnMut(usize, Sample),
) -> Result<(), ProbeError> {
    run_on(open_for(&plan.targets)?, plan, stop, on_sample)
}

/// The sockets a set of targets needs: (IPv4, IPv6).
pub type Sockets = (Option<IcmpSocket>, Option<IcmpSocket>);

/// Opens the sockets `targets` need, so that a permission problem shows before anything runs.
pub fn open_for(targets: &[IpAddr]) -> Result<Sockets, ProbeError> {
    let v4 = if targets.iter().any(IpAddr::is_ipv4) { Some(IcmpSocket::open(false)?) } else { None };
    let v6 = if targets.iter().any(IpAddr::is_ipv6) { Some(IcmpSocket::open(true)?) } else { None };
    Ok((v4, v6))
}

/// [`run`] on sockets from [`open_for`].
pub fn run_on(
    (v4, v6): Sockets,
    plan: &IcmpPlan,
    mut stop: impl FnMut() -> bool,
    mut on_sample: impl FnMut(usize, Sample),
) -> Result<(), ProbeError> {
    if plan.interval < Duration::from_millis(1) {
        return Err(ProbeError::Socket(io::Error::new(io::ErrorKind::InvalidInput, "probe interval under 1 ms")));
    }
    let sockets: Vec<&IcmpSocket> = v4.iter().chain(v6.iter()).collect();
    let fds: Vec<_> = sockets.iter().map(|s| s.fd()).collect();

    let n = plan.targets.len().max(1) as u32;
    let start = Instant::now();
    // (due, target) in a min-heap; target i first goes at start + i/n of the interval.
    let mut due: BinaryHeap<Reverse<(Instant, usize)>> =
        (0..plan.targets.len()).map(|i| Reverse((start + plan.interval / n * i as u32, i))).collect();
    let mut sent = vec![0u64; plan.targets.len()];
    let mut pending: HashMap<(IpAddr, u16), Pending> = HashMap::new();
    // Timeouts expire in send order, since the timeout is the same for every probe.
    let mut expiry: VecDeque<(Instant, IpAddr, u16)> = VecDeque::new();
    let mut scratch = Vec::with_capacity(plan.size + HEADER);
    let mut buf = vec![0u8; (plan.size + HEADER + 128).max(2048)];

    loop {
        let now = Instant::now();
        // Probes due within the next slice go out together: still spread over the interval,
        // but with one wake-up per slice instead of one per probe.
        let horizon = now + SLICE;
        while let Some(&Reverse((at, t))) = due.peek() {
            if at > horizon {
                break;
            }
            due.pop();
            if plan.count.is_some_and(|c| sent[t] >= c) {
                continue;
            }
            let ip = plan.targets[t];
            let seq = sent[t] + 1;
            sent[t] = seq;
            let wire_seq = seq as u16; // ping's icmp_seq wraps at 65536 too
            let socket = if ip.is_ipv4() { v4.as_ref() } else { v6.as_ref() };
            let sent_wall = SystemTime::now();
            let sent_at = Instant::now();
            match socket.map(|s| s.send(ip, wire_seq, plan.size, &mut scratch)) {
                Some(Ok(())) => {
                    pending.insert((ip, wire_seq), Pending { target: t, seq, sent: sent_at, sent_wall });
                    expiry.push_back((sent_at + plan.timeout, ip, wire_seq));
                }
                Some(Err(e)) => on_sample(t, Sample { seq, rtt: None, outcome: Outcome::Failed(e.to_string()) }),
                None => {}
            }
            // Keep each target on its own grid even after a stall, so that late targets do not
            // all bunch up in one slice from then on.
            let late = now.saturating_duration_since(at).as_nanos() / plan.interval.as_nanos().max(1);
            due.push(Reverse((at + plan.interval * (late.min(u128::from(u32::MAX)) as u32 + 1), t)));
        }
        let finished = plan.count.is_some()
            && pending.is_empty()
            && due.iter().all(|Reverse((_, t))| plan.count.is_some_and(|c| sent[*t] >= c));
        if finished || stop() {
            return Ok(());
        }
        let next_due = due.peek().map(|Reverse((at, _))| *at);
        let next_expiry = expiry.front().map(|e| e.0);
        let wake = [next_due, next_expiry].into_iter().flatten().min().unwrap_or(now + Duration::from_millis(100));
        let wait = wake.saturating_duration_since(Instant::now()).min(Duration::from_millis(100));
        let ready = sys::poll_readable(&fds, wait).map_err(ProbeError::Socket)?;
        for (i, socket) in sockets.iter().enumerate() {
            if ready & (1 << i) == 0 {
                continue;
            }
            loop {
                match socket.recv(&mut buf) {
                    Ok(Some(r)) => {
                        let Some(p) = pending.remove(&(r.from, r.seq)) else { continue };
                        // The kernel's receive time decides; without it, our own clock.
                        let rtt = r
                            .kernel_time
                            .and_then(|k| k.duration_since(p.sent_wall).ok())
                            .unwrap_or_else(|| p.sent.elapsed());
                        let sample = if rtt <= plan.timeout {
                            Sample {
                                seq: p.seq,
                                rtt: Some(rtt),
                                outcome: Outcome::Reply { bytes: r.bytes, ttl: r.ttl },
                            }
                        } else {
                            Sample { seq: p.seq, rtt: None, outcome: Outcome::Timeout }
                        };
                        on_sample(p.target, sample);
                    }
                    Ok(None) => {}
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    // An ICMP error queued on the socket (e.g. host unreachable): keep going.
                    Err(_) => break,
                }
            }
        }
        // Timeouts are settled after reading, so a reply that was already queued counts.
        let now = Instant::now();
        while let Some(&(at, ip, wire_seq)) = expiry.front() {
            if at > now {
                break;
            }
            expiry.pop_front();
            if let Some(p) = pending.remove(&(ip, wire_seq)) {
                on_sample(p.target, Sample { seq: p.seq, rtt: None, outcome: Outcome::Timeout });
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checksum_matches_rfc1071_examples() {
        // An echo request with id 1, seq 1, no payload: sum of words 0x0800 + 0x0001 + 0x0001.
        assert_eq!(checksum(&[8, 0, 0, 0, 0, 1, 0, 1]), !0x0802);
        // Odd length pads with a zero byte.
        assert_eq!(checksum(&[0xff]), !0xff00);
        let mut p = vec![8, 0, 0, 0, 0x12, 0x34, 0, 7, 1, 2, 3];
        let c = checksum(&p);
        p[2..4].copy_from_slice(&c.to_be_bytes());
        assert_eq!(checksum(&p), 0, "a packet with its checksum sums to zero");
    }

    #[test]
    fn pings_loopback_and_matches_every_reply() {
        let plan = IcmpPlan {
            targets: vec!["127.0.0.1".parse().unwrap(), "127.0.0.2".parse().unwrap()],
            interval: Duration::from_millis(20),
            timeout: Duration::from_secs(1),
            size: 56,
            count: Some(5),
        };
        let mut got = Vec::new();
        run(&plan, || false, |t, s| got.push((t, s))).unwrap();
        assert_eq!(got.len(), 10);
        for t in 0..2 {
            let mut seqs: Vec<u64> = got.iter().filter(|(i, _)| *i == t).map(|(_, s)| s.seq).collect();
            seqs.sort_unstable();
            assert_eq!(seqs, vec![1, 2, 3, 4, 5]);
        }
        for (_, s) in &got {
            assert!(matches!(s.outcome, Outcome::Reply { bytes: 64, .. }), "{s:?}");
            assert!(s.rtt.unwrap() < Duration::from_millis(50));
        }
    }
}
