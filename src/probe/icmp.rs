//! ICMP echo for one target or ten thousand: one socket per address family, probes paced evenly
//! across the interval, replies matched by (address, sequence), RTT from the kernel's receive
//! timestamp. Runs on a thread of its own (the socket calls block).
//!
//! The loop is named steps — a `Schedule` of which target is due when, `send_due`, a wait,
//! `receive_replies`, `settle_timeouts` — over an `EchoNetwork`, so the pacing and the order of
//! settling are tested without sockets.
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
/// The longest wait between two looks at `stop()`.
const MAX_WAIT: Duration = Duration::from_millis(100);

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
    stop: impl FnMut() -> bool,
    on_sample: impl FnMut(usize, Sample),
) -> Result<(), ProbeError> {
    let net = SocketNetwork {
        v4,
        v6,
        size: plan.size,
        scratch: Vec::with_capacity(plan.size + HEADER),
        buf: vec![0u8; (plan.size + HEADER + 128).max(2048)],
        ready: 0,
    };
    run_with(net, plan, stop, on_sample)
}

/// What the probe loop needs from the OS: the ICMP sockets ([`SocketNetwork`]), or a script in
/// tests.
trait EchoNetwork {
    /// Sends echo request `seq` to `to`; `None` when there is no socket for its family.
    fn send(&mut self, to: IpAddr, seq: u16) -> Option<io::Result<()>>;
    /// Waits until a reply may be queued, or `timeout` passes.
    fn wait(&mut self, timeout: Duration) -> io::Result<()>;
    /// Hands over every one of our echo replies queued now.
    fn replies(&mut self, each: &mut dyn FnMut(EchoReply));
}

/// The real network: one ICMP socket per address family.
struct SocketNetwork {
    v4: Option<IcmpSocket>,
    v6: Option<IcmpSocket>,
    /// Payload bytes per request.
    size: usize,
    scratch: Vec<u8>,
    buf: Vec<u8>,
    /// Which sockets the last wait found readable, in (IPv4, IPv6) order of those open.
    ready: u64,
}

impl EchoNetwork for SocketNetwork {
    fn send(&mut self, to: IpAddr, seq: u16) -> Option<io::Result<()>> {
        let socket = if to.is_ipv4() { self.v4.as_ref() } else { self.v6.as_ref() };
        socket.map(|s| s.send(to, seq, self.size, &mut self.scratch))
    }

    fn wait(&mut self, timeout: Duration) -> io::Result<()> {
        self.ready = match (&self.v4, &self.v6) {
            (Some(v4), Some(v6)) => sys::poll_readable(&[v4.fd(), v6.fd()], timeout),
            (Some(one), None) | (None, Some(one)) => sys::poll_readable(&[one.fd()], timeout),
            (None, None) => sys::poll_readable(&[], timeout),
        }?;
        Ok(())
    }

    fn replies(&mut self, each: &mut dyn FnMut(EchoReply)) {
        let (ready, buf) = (self.ready, &mut self.buf);
        for (i, socket) in self.v4.iter().chain(self.v6.iter()).enumerate() {
            if ready & (1 << i) == 0 {
                continue;
            }
            loop {
                match socket.recv(buf) {
                    Ok(Some(r)) => each(r),
                    Ok(None) => {}
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    // An ICMP error queued on the socket (e.g. host unreachable): keep going.
                    Err(_) => break,
                }
            }
        }
    }
}

/// The probe loop: send what is due, wait, read the replies, then settle the timeouts.
fn run_with(
    mut net: impl EchoNetwork,
    plan: &IcmpPlan,
    mut stop: impl FnMut() -> bool,
    mut on_sample: impl FnMut(usize, Sample),
) -> Result<(), ProbeError> {
    if plan.interval < Duration::from_millis(1) {
        return Err(ProbeError::Socket(io::Error::new(io::ErrorKind::InvalidInput, "probe interval under 1 ms")));
    }
    let mut schedule = Schedule::new(plan.targets.len(), plan.interval, plan.count, Instant::now());
    let mut inflight = Inflight::default();
    loop {
        let now = Instant::now();
        send_due(&mut net, plan, &mut schedule, &mut inflight, now, &mut on_sample);
        let finished = plan.count.is_some() && inflight.is_empty() && schedule.exhausted();
        if finished || stop() {
            return Ok(());
        }
        let wake = [schedule.next_due(), inflight.next_expiry()].into_iter().flatten().min().unwrap_or(now + MAX_WAIT);
        net.wait(wake.saturating_duration_since(Instant::now()).min(MAX_WAIT)).map_err(ProbeError::Socket)?;
        receive_replies(&mut net, plan.timeout, &mut inflight, &mut on_sample);
        // Timeouts are settled after reading, so a reply that was already queued counts.
        settle_timeouts(&mut inflight, Instant::now(), &mut on_sample);
    }
}

/// Sends every probe due within the next [`SLICE`] of `now`: still spread over the interval,
/// but with one wake-up per slice instead of one per probe.
fn send_due(
    net: &mut impl EchoNetwork,
    plan: &IcmpPlan,
    schedule: &mut Schedule,
    inflight: &mut Inflight,
    now: Instant,
    on_sample: &mut impl FnMut(usize, Sample),
) {
    while let Some((target, seq)) = schedule.pop_due(now + SLICE, now) {
        let ip = plan.targets[target];
        let wire_seq = seq as u16; // ping's icmp_seq wraps at 65536 too
        let sent_wall = SystemTime::now();
        let sent = Instant::now();
        match net.send(ip, wire_seq) {
            Some(Ok(())) => inflight.add(ip, wire_seq, Pending { target, seq, sent, sent_wall }, plan.timeout),
            Some(Err(e)) => on_sample(target, Sample { seq, rtt: None, outcome: Outcome::Failed(e.to_string()) }),
            None => {}
        }
    }
}

/// Matches every queued reply to its probe: a reply, or a timeout if it came too late.
fn receive_replies(
    net: &mut impl EchoNetwork,
    timeout: Duration,
    inflight: &mut Inflight,
    on_sample: &mut impl FnMut(usize, Sample),
) {
    net.replies(&mut |r| {
        let Some(p) = inflight.answer(r.from, r.seq) else { return };
        // The kernel's receive time decides; without it, our own clock.
        let rtt = r.kernel_time.and_then(|k| k.duration_since(p.sent_wall).ok()).unwrap_or_else(|| p.sent.elapsed());
        let sample = if rtt <= timeout {
            Sample { seq: p.seq, rtt: Some(rtt), outcome: Outcome::Reply { bytes: r.bytes, ttl: r.ttl } }
        } else {
            Sample { seq: p.seq, rtt: None, outcome: Outcome::Timeout }
        };
        on_sample(p.target, sample);
    });
}

/// Reports a timeout for every probe still unanswered at its deadline.
fn settle_timeouts(inflight: &mut Inflight, now: Instant, on_sample: &mut impl FnMut(usize, Sample)) {
    while let Some(p) = inflight.pop_expired(now) {
        on_sample(p.target, Sample { seq: p.seq, rtt: None, outcome: Outcome::Timeout });
    }
}

/// Which target is due when: target `i` of `n` first goes at `start + i/n` of the interval,
/// then once per interval on its own grid.
struct Schedule {
    /// (due, target), soonest first.
    due: BinaryHeap<Reverse<(Instant, usize)>>,
    /// Probes sent per target.
    sent: Vec<u64>,
    interval: Duration,
    count: Option<u64>,
}

impl Schedule {
    fn new(targets: usize, interval: Duration, count: Option<u64>, start: Instant) -> Self {
        let n = targets.max(1) as u32;
        let due = (0..targets).map(|i| Reverse((start + interval / n * i as u32, i))).collect();
        Self { due, sent: vec![0; targets], interval, count }
    }

    /// The next target due by `horizon` with the sequence number of its probe (from 1), moved
    /// on to its next turn; targets that have had `count` probes leave the schedule. `now`
    /// keeps a target on its own grid after a stall, so that late targets do not all bunch up
    /// in one slice from then on.
    fn pop_due(&mut self, horizon: Instant, now: Instant) -> Option<(usize, u64)> {
        while let Some(&Reverse((at, t))) = self.due.peek() {
            if at > horizon {
                return None;
            }
            self.due.pop();
            if self.count.is_some_and(|c| self.sent[t] >= c) {
                continue;
            }
            self.sent[t] += 1;
            let late = now.saturating_duration_since(at).as_nanos() / self.interval.as_nanos().max(1);
            self.due.push(Reverse((at + self.interval * (late.min(u128::from(u32::MAX)) as u32 + 1), t)));
            return Some((t, self.sent[t]));
        }
        None
    }

    fn next_due(&self) -> Option<Instant> {
        self.due.peek().map(|Reverse((at, _))| *at)
    }

    /// Whether every target still scheduled has had `count` probes.
    fn exhausted(&self) -> bool {
        self.due.iter().all(|Reverse((_, t))| self.count.is_some_and(|c| self.sent[*t] >= c))
    }
}

/// One probe in flight.
struct Pending {
    target: usize,
    seq: u64,
    sent: Instant,
    sent_wall: SystemTime,
}

/// The probes awaiting a reply, by (address, wire sequence), with their deadlines.
#[derive(Default)]
struct Inflight {
    pending: HashMap<(IpAddr, u16), Pending>,
    /// Deadlines in send order, which is deadline order since every probe has the same timeout.
    expiry: VecDeque<(Instant, IpAddr, u16)>,
}

impl Inflight {
    fn add(&mut self, ip: IpAddr, wire_seq: u16, p: Pending, timeout: Duration) {
        self.expiry.push_back((p.sent + timeout, ip, wire_seq));
        self.pending.insert((ip, wire_seq), p);
    }

    /// The probe a reply answers, if it is still waiting.
    fn answer(&mut self, from: IpAddr, wire_seq: u16) -> Option<Pending> {
        self.pending.remove(&(from, wire_seq))
    }

    /// A probe whose deadline has passed by `now` and that is still unanswered.
    fn pop_expired(&mut self, now: Instant) -> Option<Pending> {
        while let Some(&(at, ip, wire_seq)) = self.expiry.front() {
            if at > now {
                return None;
            }
            self.expiry.pop_front();
            if let Some(p) = self.pending.remove(&(ip, wire_seq)) {
                return Some(p);
            }
        }
        None
    }

    fn next_expiry(&self) -> Option<Instant> {
        self.expiry.front().map(|e| e.0)
    }

    fn is_empty(&self) -> bool {
        self.pending.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ten_thousand_targets_are_spread_evenly_over_one_second_without_bursts() {
        let (t0, second) = (Instant::now(), Duration::from_secs(1));
        let mut schedule = Schedule::new(10_000, second, None, t0);
        let mut seen = vec![0u32; 10_000];
        let mut per_slice = Vec::new();
        // The probe loop's view: one wake-up per millisecond slice, for two intervals.
        for ms in 0..2000 {
            let now = t0 + SLICE * ms;
            let due: Vec<(usize, u64)> = std::iter::from_fn(|| schedule.pop_due(now + SLICE, now)).collect();
            for &(t, seq) in &due {
                seen[t] += 1;
                assert_eq!(u64::from(seen[t]), seq, "each target counts its own probes");
            }
            per_slice.push(due.len());
        }
        // Every target twice; the last slice (ending at exactly 2 s) also takes target 0's third.
        assert_eq!(seen[0], 3);
        assert!(seen[1..].iter().all(|&n| n == 2));
        // 10 probes per millisecond, 100 µs apart; only the first slice, which starts with a
        // probe due at its very beginning, takes one more.
        assert_eq!(per_slice[0], 11);
        assert!(per_slice[1..].iter().all(|&n| n == 10), "{per_slice:?}");
    }

    #[test]
    fn after_a_stall_targets_keep_their_own_place_in_the_interval() {
        let (t0, interval) = (Instant::now(), Duration::from_millis(100));
        let mut schedule = Schedule::new(4, interval, Some(3), t0);
        // Woken 2.5 intervals late: the four overdue probes go now...
        let late = t0 + Duration::from_millis(250);
        let burst: Vec<(usize, u64)> = std::iter::from_fn(|| schedule.pop_due(late + SLICE, late)).collect();
        assert_eq!(burst, vec![(0, 1), (1, 1), (2, 1), (3, 1)]);
        // ...and the next ones are 25 ms apart again, each target at its own offset in the
        // interval (target 3, due at 75 ms, comes first: 275 ms is its first turn after 250).
        let next: Vec<Instant> = std::iter::from_fn(|| {
            let at = schedule.next_due()?;
            schedule.pop_due(at, at).map(|_| at)
        })
        .take(4)
        .collect();
        let offsets: Vec<u128> = next.iter().map(|at| at.duration_since(t0).as_millis()).collect();
        assert_eq!(offsets, vec![275, 300, 325, 350]);
        assert!(!schedule.exhausted());
    }

    /// A network whose replies arrive while the prober is stalled past their deadline.
    struct StalledNetwork {
        stall: Duration,
        sent: Vec<(IpAddr, u16, SystemTime)>,
        queued: Vec<EchoReply>,
    }

    impl EchoNetwork for StalledNetwork {
        fn send(&mut self, to: IpAddr, seq: u16) -> Option<io::Result<()>> {
            self.sent.push((to, seq, SystemTime::now()));
            Some(Ok(()))
        }

        fn wait(&mut self, _timeout: Duration) -> io::Result<()> {
            std::thread::sleep(self.stall);
            // The kernel received each reply 2 ms after its request; it has waited since.
            for &(from, seq, at) in &self.sent {
                let kernel_time = Some(at + Duration::from_millis(2));
                self.queued.push(EchoReply { from, seq, bytes: 64, ttl: Some(64), kernel_time });
            }
            self.sent.clear();
            Ok(())
        }

        fn replies(&mut self, each: &mut dyn FnMut(EchoReply)) {
            self.queued.drain(..).for_each(each);
        }
    }

    #[test]
    fn a_reply_queued_before_its_deadline_counts_even_when_read_after_it() {
        let plan = IcmpPlan {
            targets: vec!["127.0.44.5".parse().unwrap()],
            interval: Duration::from_secs(1),
            timeout: Duration::from_millis(10),
            size: 56,
            count: Some(1),
        };
        let net = StalledNetwork { stall: Duration::from_millis(30), sent: Vec::new(), queued: Vec::new() };
        let mut got = Vec::new();
        run_with(net, &plan, || false, |t, s| got.push((t, s))).unwrap();
        assert_eq!(got.len(), 1, "{got:?}");
        let (target, sample) = &got[0];
        assert_eq!((*target, sample.seq), (0, 1));
        assert!(matches!(sample.outcome, Outcome::Reply { bytes: 64, ttl: Some(64) }), "{sample:?}");
        assert!(sample.rtt.is_some_and(|rtt| rtt >= Duration::from_millis(2) && rtt < Duration::from_millis(10)));
    }

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
