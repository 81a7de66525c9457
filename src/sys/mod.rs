//! The system calls netpulse makes beyond std, socket2 and mio. Control messages (TTL / hop
//! limit, `SO_TIMESTAMPNS`), `ppoll` and interface addresses go through `nix`'s safe wrappers;
//! hand-written are only the `recvmmsg`/`sendmmsg` [`Batch`] of the UDP balancer's hot path (32
//! datagrams per system call, no allocation per datagram), its io_uring [`SendRing`] (a batch's
//! datagrams to many flow sockets in one call), the HTTP workers' [`queued`] sends (a worker's
//! small writes made together, in one io_uring call, when it runs out of work) and
//! `ICMP_FILTER`, for which `nix` has no option.
//! Those are the crate's only `unsafe`; each block says why it is sound.

pub(crate) mod queued;

/// Whether io_uring may be used (where the kernel allows it), by the HTTP workers' queued sends
/// and the UDP balancer's send ring: yes unless `NETPULSE_IO_URING` says `off` (or `0`, `no`,
/// `false`), the way out should a kernel's io_uring misbehave. A value that is none of those
/// nor `on` (`1`, `yes`, `true`) is an error, said once when a command starts
/// ([`io_uring_setting`]), so here it cannot occur.
pub(crate) fn io_uring_wanted() -> bool {
    io_uring_setting().unwrap_or(true)
}

/// `NETPULSE_IO_URING` read: whether io_uring may be used, or what is wrong with the value.
pub(crate) fn io_uring_setting() -> Result<bool, String> {
    let Some(value) = std::env::var_os("NETPULSE_IO_URING") else {
        return Ok(true);
    };
    match value.to_string_lossy().to_ascii_lowercase().as_str() {
        "" | "on" | "1" | "yes" | "true" => Ok(true),
        "off" | "0" | "no" | "false" => Ok(false),
        other => Err(format!("NETPULSE_IO_URING={other:?} is neither on nor off (unset it, or set it to off)")),
    }
}

/// How the balancers' writes go out here, for the start banner: through io_uring (the HTTP
/// workers' small writes and the UDP batches), or each with a `sendto` and why.
pub(crate) fn io_uring_use() -> String {
    if !io_uring_wanted() {
        return "sendto, one system call per write (NETPULSE_IO_URING=off)".into();
    }
    match ring_that_knows(2, &[io_uring::opcode::Send::CODE, io_uring::opcode::SendMsg::CODE]) {
        Ok(_) => "io_uring, small writes batched, one system call per turn of the event loop (NETPULSE_IO_URING=off: a sendto each)".into(),
        Err(e) => format!("sendto, one system call per write ({e})"),
    }
}

use std::io::{self, IoSliceMut};
use std::mem::{size_of, zeroed};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
use std::os::fd::{AsRawFd, BorrowedFd, RawFd};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use nix::errno::Errno;
use nix::poll::{PollFd, PollFlags, ppoll};
use nix::sys::socket::{ControlMessageOwned, MsgFlags, SockaddrStorage, recvmsg, setsockopt, sockopt};
use nix::sys::time::TimeSpec;

/// A batch of datagram slots for `recvmmsg`/`sendmmsg`, allocated once and reused. Slots must
/// hold the largest datagram the socket can receive, or the kernel truncates it.
///
/// The headers point into the batch's own heap buffers, which never move or grow after
/// construction, so the batch itself may move freely.
pub(crate) struct Batch {
    data: Vec<u8>,
    slot: usize,
    iov: Vec<libc::iovec>,
    addrs: Vec<libc::sockaddr_storage>,
    hdrs: Vec<libc::mmsghdr>,
    lens: Vec<usize>,
    filled: usize,
}

// SAFETY: the raw pointers inside point only into the batch's own heap buffers, which move
// with it; nothing is shared with another thread.
#[allow(unsafe_code)]
unsafe impl Send for Batch {}

#[allow(unsafe_code)]
impl Batch {
    /// `slots` datagrams of up to `slot` bytes each.
    pub(crate) fn new(slots: usize, slot: usize) -> Self {
        let mut data = vec![0u8; slots * slot];
        let mut iov: Vec<libc::iovec> = (0..slots)
            .map(|i| libc::iovec {
                // SAFETY: offset `i * slot` lies within `data`, which holds `slots * slot` bytes.
                iov_base: unsafe { data.as_mut_ptr().add(i * slot) }.cast(),
                iov_len: slot,
            })
            .collect();
        // SAFETY: sockaddr_storage and mmsghdr are plain C structs for which all-zero is valid.
        let mut addrs: Vec<libc::sockaddr_storage> = (0..slots).map(|_| unsafe { zeroed() }).collect();
        let hdrs = (0..slots)
            .map(|i| {
                // SAFETY: as above.
                let mut h: libc::mmsghdr = unsafe { zeroed() };
                h.msg_hdr.msg_name = (&mut addrs[i] as *mut libc::sockaddr_storage).cast();
                h.msg_hdr.msg_namelen = size_of::<libc::sockaddr_storage>() as u32;
                h.msg_hdr.msg_iov = &mut iov[i];
                h.msg_hdr.msg_iovlen = 1;
                h
            })
            .collect();
        Self { data, slot, iov, addrs, hdrs, lens: vec![0; slots], filled: 0 }
    }

    pub(crate) fn capacity(&self) -> usize {
        self.hdrs.len()
    }

    /// Datagrams held.
    pub(crate) fn len(&self) -> usize {
        self.filled
    }

    pub(crate) fn is_full(&self) -> bool {
        self.filled == self.capacity()
    }

    pub(crate) fn clear(&mut self) {
        self.filled = 0;
    }

    /// Receives as many datagrams as are queued on `fd` (without waiting) into the free slots.
    /// Returns how many arrived; `Ok(0)` when none were waiting.
    pub(crate) fn recv(&mut self, fd: BorrowedFd<'_>) -> io::Result<usize> {
        let start = self.filled;
        let want = self.capacity() - start;
        if want == 0 {
            return Ok(0);
        }
        for i in start..self.capacity() {
            self.iov[i].iov_len = self.slot;
            self.hdrs[i].msg_hdr.msg_namelen = size_of::<libc::sockaddr_storage>() as u32;
        }
        // SAFETY: headers `start..capacity` point at valid iovecs and address slots owned by
        // `self`; the kernel writes at most `iov_len` bytes and `msg_namelen` address bytes.
        let n = unsafe {
            libc::recvmmsg(
                fd.as_raw_fd(),
                self.hdrs.as_mut_ptr().add(start),
                want as u32,
                libc::MSG_DONTWAIT,
                std::ptr::null_mut(),
            )
        };
        if n < 0 {
            let e = io::Error::last_os_error();
            return match e.kind() {
                io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted => Ok(0),
                _ => Err(e),
            };
        }
        let n = n as usize;
        for i in start..start + n {
            self.lens[i] = self.hdrs[i].msg_len as usize;
        }
        self.filled += n;
        Ok(n)
    }

    /// The bytes of datagram `i`.
    pub(crate) fn payload(&self, i: usize) -> &[u8] {
        let at = i * self.slot;
        &self.data[at..at + self.lens[i]]
    }

    /// The peer address of datagram `i`: its source after `recv`, its destination for `send`.
    pub(crate) fn addr(&self, i: usize) -> Option<SocketAddr> {
        from_storage(&self.addrs[i], self.hdrs[i].msg_hdr.msg_namelen)
    }

    /// Sets the destination of datagram `i`.
    pub(crate) fn set_addr(&mut self, i: usize, addr: SocketAddr) {
        self.hdrs[i].msg_hdr.msg_namelen = to_storage(addr, &mut self.addrs[i]);
    }

    /// Keeps the first `len` datagrams held, forgets the others.
    pub(crate) fn truncate(&mut self, len: usize) {
        self.filled = self.filled.min(len);
    }

    /// Sends every datagram held to its address on `fd` with as few `sendmmsg` calls as the
    /// kernel allows, then empties the batch. Returns how many could not be sent (a full socket
    /// buffer or a per-datagram error drops that datagram, as UDP does).
    pub(crate) fn send(&mut self, fd: BorrowedFd<'_>) -> usize {
        let total = self.filled;
        let mut at = 0;
        let mut failed = 0;
        for i in 0..total {
            self.iov[i].iov_len = self.lens[i];
        }
        while at < total {
            // SAFETY: headers `at..total` point at valid iovecs (lengths set above) and
            // addresses (set by `set_addr` or `recv`) owned by `self`.
            let n = unsafe {
                libc::sendmmsg(fd.as_raw_fd(), self.hdrs.as_mut_ptr().add(at), (total - at) as u32, libc::MSG_DONTWAIT)
            };
            if n > 0 {
                at += n as usize;
                continue;
            }
            let e = io::Error::last_os_error();
            match e.kind() {
                io::ErrorKind::Interrupted => {}
                io::ErrorKind::WouldBlock => {
                    failed += total - at;
                    break;
                }
                _ => {
                    failed += 1;
                    at += 1;
                }
            }
        }
        self.filled = 0;
        failed
    }

    /// Datagrams received into free slots join the batch:
    /// `slots`, in increasing order, move down to follow the datagrams held, in that order (the
    /// other free slots, empty or dropped, are forgotten). Slots not above those held, out of
    /// order or beyond the batch are ignored.
    pub(crate) fn keep_received(&mut self, slots: &[usize]) {
        let mut last = None;
        for &from in slots {
            if from < self.filled || from >= self.capacity() || last.is_some_and(|l| from <= l) {
                continue;
            }
            last = Some(from);
            let to = self.filled;
            if from != to {
                let len = self.lens[from];
                self.data.copy_within(from * self.slot..from * self.slot + len, to * self.slot);
                self.lens[to] = len;
                self.addrs[to] = self.addrs[from];
                self.hdrs[to].msg_hdr.msg_namelen = self.hdrs[from].msg_hdr.msg_namelen;
            }
            self.filled += 1;
        }
    }
}

#[allow(unsafe_code)]
impl Batch {
    /// Makes datagram `i` ready to be sent to `to` on its own; its `sendmsg` header, which points
    /// into the batch and stays valid while the batch is neither changed nor dropped.
    fn prepare_send(&mut self, i: usize, to: SocketAddr) -> *const libc::msghdr {
        self.set_addr(i, to);
        self.iov[i].iov_len = self.lens[i];
        &self.hdrs[i].msg_hdr
    }
}

/// Sends datagrams of a [`Batch`], each on a socket of its own (a UDP flow's), with one system
/// call for all of them (io_uring) where `sendto` takes one each, and so one return to user
/// space, where a backend woken by a send may take the CPU, instead of one per datagram.
pub(crate) struct SendRing {
    ring: io_uring::IoUring,
}

impl SendRing {
    /// A ring for up to `entries` sends at once; an error where [`ring_that_knows`] finds no
    /// `IORING_OP_SENDMSG` (then the balancer sends with `sendto`).
    pub(crate) fn new(entries: u32) -> io::Result<Self> {
        Ok(Self { ring: ring_that_knows(entries, &[io_uring::opcode::SendMsg::CODE])? })
    }

    /// Sends datagram `slot` of `batch` to `to` on `fd`, for every `(fd, slot, to)` of `sends`,
    /// without waiting for room in a socket buffer. Per send, in order, into `results`: the bytes
    /// sent or the negated errno. An error means the ring failed, not a send: it must not be used again
    /// (entries it did not take would go out with the next call).
    #[allow(unsafe_code)]
    pub(crate) fn send(
        &mut self,
        batch: &mut Batch,
        sends: &[(RawFd, usize, SocketAddr)],
        results: &mut Vec<i32>,
    ) -> io::Result<()> {
        results.clear();
        results.resize(sends.len(), -libc::EIO);
        let room = self.ring.params().sq_entries() as usize;
        for (chunk, part) in sends.chunks(room).enumerate() {
            for (k, &(fd, slot, to)) in part.iter().enumerate() {
                let hdr = batch.prepare_send(slot, to);
                let sqe = io_uring::opcode::SendMsg::new(io_uring::types::Fd(fd), hdr)
                    .flags(libc::MSG_DONTWAIT as u32)
                    .build()
                    .user_data((chunk * room + k) as u64);
                // SAFETY: the header and the address, iovec and bytes it points to live in
                // `batch`, which stays borrowed, unchanged, until every send pushed here has
                // completed: MSG_DONTWAIT sends complete during the submitting call (io_uring
                // neither arms a poll nor hands them to a worker), and the loop below waits for
                // each completion before returning. The queue has room: it holds `room` entries
                // and is empty (every earlier chunk was submitted).
                if unsafe { self.ring.submission().push(&sqe) }.is_err() {
                    return Err(io::Error::other("io_uring submission queue full"));
                }
            }
            let mut left = part.len();
            while left > 0 {
                match self.ring.submit_and_wait(left) {
                    Ok(_) => {}
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => return Err(e),
                }
                for cqe in self.ring.completion() {
                    if let Some(r) = results.get_mut(cqe.user_data() as usize) {
                        *r = cqe.result();
                    }
                    left = left.saturating_sub(1);
                }
            }
        }
        Ok(())
    }
}

/// An io_uring for `entries` operations at once, where the kernel can say that it knows every
/// operation of `ops`: an error where it has no io_uring, forbids it (`kernel.io_uring_disabled`,
/// seccomp), cannot say (the probe came in Linux 5.6) or does not know one (Linux 5.1–5.5 set
/// rings up without `IORING_OP_SEND`, 5.1–5.2 without `IORING_OP_SENDMSG`: every such operation
/// would fail).
pub(crate) fn ring_that_knows(entries: u32, ops: &[u8]) -> io::Result<io_uring::IoUring> {
    let ring = io_uring::IoUring::new(entries).map_err(|e| {
        // There, but forbidden: say by what, so that an operator knows what to change.
        let why = match e.raw_os_error() {
            Some(libc::EPERM) => {
                "io_uring not permitted here (sysctl kernel.io_uring_disabled, or a seccomp filter such as a container's)"
            }
            _ => "no io_uring",
        };
        io::Error::new(e.kind(), format!("{why}: {e}"))
    })?;
    let mut probe = io_uring::Probe::new();
    ring.submitter().register_probe(&mut probe).map_err(|e| {
        io::Error::new(e.kind(), format!("an io_uring that cannot say what it knows (before Linux 5.6): {e}"))
    })?;
    if let Some(&op) = ops.iter().find(|&&op| !probe.is_supported(op)) {
        let name = match op {
            io_uring::opcode::Send::CODE => "IORING_OP_SEND",
            io_uring::opcode::SendMsg::CODE => "IORING_OP_SENDMSG",
            _ => "an operation we need",
        };
        return Err(io::Error::new(io::ErrorKind::Unsupported, format!("an io_uring without {name}")));
    }
    Ok(ring)
}

/// Writes `addr` into `storage`; returns the address length.
#[allow(unsafe_code)]
fn to_storage(addr: SocketAddr, storage: &mut libc::sockaddr_storage) -> u32 {
    match addr {
        SocketAddr::V4(a) => {
            let sin = libc::sockaddr_in {
                sin_family: libc::AF_INET as libc::sa_family_t,
                sin_port: a.port().to_be(),
                sin_addr: libc::in_addr { s_addr: u32::from_ne_bytes(a.ip().octets()) },
                sin_zero: [0; 8],
            };
            // SAFETY: sockaddr_storage is large and aligned enough for any sockaddr type.
            unsafe { std::ptr::write((storage as *mut libc::sockaddr_storage).cast(), sin) };
            size_of::<libc::sockaddr_in>() as u32
        }
        SocketAddr::V6(a) => {
            let sin6 = libc::sockaddr_in6 {
                sin6_family: libc::AF_INET6 as libc::sa_family_t,
                sin6_port: a.port().to_be(),
                sin6_flowinfo: a.flowinfo(),
                sin6_addr: libc::in6_addr { s6_addr: a.ip().octets() },
                sin6_scope_id: a.scope_id(),
            };
            // SAFETY: as above.
            unsafe { std::ptr::write((storage as *mut libc::sockaddr_storage).cast(), sin6) };
            size_of::<libc::sockaddr_in6>() as u32
        }
    }
}

/// Reads an IPv4 or IPv6 address out of `storage`.
#[allow(unsafe_code)]
fn from_storage(storage: &libc::sockaddr_storage, len: u32) -> Option<SocketAddr> {
    match i32::from(storage.ss_family) {
        libc::AF_INET if len as usize >= size_of::<libc::sockaddr_in>() => {
            // SAFETY: the family says the storage holds a sockaddr_in, and it is long enough.
            let sin: libc::sockaddr_in = unsafe { std::ptr::read((storage as *const libc::sockaddr_storage).cast()) };
            let ip = Ipv4Addr::from(sin.sin_addr.s_addr.to_ne_bytes());
            Some(SocketAddr::V4(SocketAddrV4::new(ip, u16::from_be(sin.sin_port))))
        }
        libc::AF_INET6 if len as usize >= size_of::<libc::sockaddr_in6>() => {
            // SAFETY: as above, for sockaddr_in6.
            let sin6: libc::sockaddr_in6 = unsafe { std::ptr::read((storage as *const libc::sockaddr_storage).cast()) };
            let ip = Ipv6Addr::from(sin6.sin6_addr.s6_addr);
            Some(SocketAddr::V6(SocketAddrV6::new(
                ip,
                u16::from_be(sin6.sin6_port),
                sin6.sin6_flowinfo,
                sin6.sin6_scope_id,
            )))
        }
        _ => None,
    }
}

/// What `recv_meta` learned about one received packet.
#[derive(Debug, Clone, Copy)]
pub(crate) struct RecvMeta {
    pub len: usize,
    pub from: Option<SocketAddr>,
    /// IPv4 TTL or IPv6 hop limit, when the socket asked for it.
    pub ttl: Option<u8>,
    /// The kernel's receive time (`SO_TIMESTAMPNS`), when the socket asked for it.
    pub kernel_time: Option<SystemTime>,
}

/// On a raw IPv4 ICMP socket, has the kernel deliver only echo replies (not every ICMP packet
/// the host receives, which on loopback includes our own requests). Hand-written: neither `nix`
/// nor `socket2` has an `ICMP_FILTER` option.
#[allow(unsafe_code)]
pub(crate) fn only_echo_replies(fd: BorrowedFd<'_>) -> io::Result<()> {
    const ICMP_FILTER: i32 = 1;
    // The filter is a bitmask of ICMP types to drop: all but type 0.
    let blocked: u32 = !1;
    // SAFETY: passes a pointer to a live u32 and its exact size, on a descriptor borrowed for
    // the duration of the call.
    let r = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_RAW,
            ICMP_FILTER,
            (&blocked as *const u32).cast(),
            size_of::<u32>() as libc::socklen_t,
        )
    };
    if r < 0 { Err(io::Error::last_os_error()) } else { Ok(()) }
}

/// Gives memory the allocator holds but no longer uses back to the OS. glibc keeps what
/// thousands of closed connections freed (measured: +230 % RSS after 5,000 closed); this
/// returns it. Hand-written: `libc::malloc_trim` has no safe wrapper.
#[allow(unsafe_code)]
pub(crate) fn release_free_memory() {
    // SAFETY: malloc_trim takes a byte count and touches only the allocator's own state.
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Asks the kernel to report each packet's TTL (hop limit) and receive timestamp.
pub(crate) fn enable_ttl_and_timestamps(fd: BorrowedFd<'_>, v6: bool) -> io::Result<()> {
    if v6 {
        setsockopt(&fd, sockopt::Ipv6RecvHopLimit, &true)?;
    } else {
        setsockopt(&fd, sockopt::Ipv4RecvTtl, &true)?;
    }
    setsockopt(&fd, sockopt::ReceiveTimestampns, &true)?;
    Ok(())
}

/// Room for the control messages `recv_meta` asks for (a TTL and a timespec need 48 bytes),
/// aligned for `cmsghdr` as the kernel and `nix` expect.
#[repr(C, align(8))]
struct ControlBuf([u8; 128]);

/// `recvmsg` without waiting, with the TTL and kernel timestamp control messages decoded.
pub(crate) fn recv_meta(fd: BorrowedFd<'_>, buf: &mut [u8]) -> io::Result<RecvMeta> {
    let mut control = ControlBuf([0; 128]);
    let mut iov = [IoSliceMut::new(buf)];
    let msg = recvmsg::<SockaddrStorage>(fd.as_raw_fd(), &mut iov, Some(&mut control.0), MsgFlags::MSG_DONTWAIT)?;
    let mut meta = RecvMeta { len: msg.bytes, from: msg.address.and_then(socket_addr), ttl: None, kernel_time: None };
    // A truncated control buffer (it is sized for what we ask) is read as "no metadata".
    for c in msg.cmsgs().into_iter().flatten() {
        match c {
            ControlMessageOwned::Ipv4Ttl(v) | ControlMessageOwned::Ipv6HopLimit(v) => meta.ttl = u8::try_from(v).ok(),
            ControlMessageOwned::ScmTimestampns(ts) => meta.kernel_time = system_time(ts),
            _ => {}
        }
    }
    Ok(meta)
}

/// A kernel timestamp as wall-clock time; `None` before the epoch or out of range.
fn system_time(ts: TimeSpec) -> Option<SystemTime> {
    let (Ok(secs), Ok(nanos)) = (u64::try_from(ts.tv_sec()), u32::try_from(ts.tv_nsec())) else {
        return None;
    };
    UNIX_EPOCH.checked_add(Duration::new(secs, nanos.min(999_999_999)))
}

/// An IPv4 or IPv6 socket address out of `nix`'s storage.
fn socket_addr(a: SockaddrStorage) -> Option<SocketAddr> {
    match (a.as_sockaddr_in(), a.as_sockaddr_in6()) {
        (Some(v4), _) => Some(SocketAddr::V4(SocketAddrV4::from(*v4))),
        (_, Some(v6)) => Some(SocketAddr::V6(SocketAddrV6::from(*v6))),
        _ => None,
    }
}

/// Waits until one of `fds` is readable or `timeout` passes; bit `i` of the result is set when
/// `fds[i]` is readable (or has an error or hang-up to report).
pub(crate) fn poll_readable(fds: &[BorrowedFd<'_>], timeout: Duration) -> io::Result<u64> {
    let mut p: Vec<PollFd<'_>> = fds.iter().map(|&fd| PollFd::new(fd, PollFlags::POLLIN)).collect();
    // ppoll takes nanoseconds, so probes and delayed replies keep sub-millisecond timing
    // (poll's milliseconds would not).
    let ts = TimeSpec::from_duration(timeout.min(Duration::from_secs(i32::MAX as u64)));
    match ppoll(&mut p, Some(ts), None) {
        Ok(_) => {}
        Err(Errno::EINTR) => return Ok(0),
        Err(e) => return Err(e.into()),
    }
    // Any returned event counts, as with raw revents != 0 (`None` means flags nix does not know).
    Ok(p.iter().enumerate().filter(|(_, p)| p.any().unwrap_or(true)).fold(0, |m, (i, _)| m | 1 << i))
}

/// Every (interface name, address) pair the OS reports (`getifaddrs`).
pub(crate) fn interface_addrs() -> io::Result<Vec<(String, IpAddr)>> {
    Ok(nix::ifaddrs::getifaddrs()?
        .filter_map(|ifa| {
            let ip = ifa.address.and_then(socket_addr)?.ip();
            Some((ifa.interface_name, ip))
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::UdpSocket;
    use std::os::fd::AsFd;
    use std::time::Instant;

    #[test]
    #[allow(unsafe_code)]
    fn addresses_round_trip_through_storage() {
        for a in ["127.0.0.1:8888", "[::1]:2526", "[fe80::1%2]:53"] {
            let addr: SocketAddr = a.parse().unwrap();
            // SAFETY: all-zero is a valid sockaddr_storage.
            let mut st: libc::sockaddr_storage = unsafe { zeroed() };
            let len = to_storage(addr, &mut st);
            assert_eq!(from_storage(&st, len), Some(addr));
        }
    }

    #[test]
    fn batch_receives_many_and_sends_them_back() {
        let server = UdpSocket::bind("127.0.0.1:0").unwrap();
        let client = UdpSocket::bind("127.0.0.1:0").unwrap();
        client.set_read_timeout(Some(std::time::Duration::from_secs(2))).unwrap();
        for i in 0..5u8 {
            client.send_to(&vec![i; 100 + i as usize], server.local_addr().unwrap()).unwrap();
        }
        let mut batch = Batch::new(8, 2048);
        let mut got = 0;
        while got < 5 {
            got += batch.recv(server.as_fd()).unwrap();
        }
        assert_eq!(batch.len(), 5);
        for i in 0..5 {
            assert_eq!(batch.payload(i), &vec![i as u8; 100 + i][..]);
            assert_eq!(batch.addr(i), Some(client.local_addr().unwrap()));
        }
        // Dropping the second keeps the others in their order.
        batch.truncate(1);
        batch.keep_received(&[2, 3, 4]);
        assert_eq!(batch.len(), 4);
        assert_eq!(batch.payload(1), &[2u8; 102][..]);
        assert_eq!(batch.payload(3), &[4u8; 104][..]);
        assert_eq!(batch.addr(3), Some(client.local_addr().unwrap()));
        assert_eq!(batch.send(server.as_fd()), 0);
        let mut buf = [0u8; 2048];
        let lens: Vec<usize> = (0..4).map(|_| client.recv(&mut buf).unwrap()).collect();
        assert_eq!(lens, vec![100, 102, 103, 104]);
    }

    #[test]
    fn the_send_ring_sends_each_datagram_on_its_own_socket_and_reports_each_failure() {
        let Ok(mut ring) = SendRing::new(4) else {
            eprintln!("no io_uring here; the balancer sends with sendto");
            return;
        };
        let server = UdpSocket::bind("127.0.44.10:0").unwrap();
        server.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        let to = server.local_addr().unwrap();
        let client = UdpSocket::bind("127.0.44.10:0").unwrap();
        for i in 0..6u8 {
            client.send_to(&[i; 10], client.local_addr().unwrap()).unwrap();
        }
        let mut batch = Batch::new(8, 2048);
        while batch.len() < 6 {
            batch.recv(client.as_fd()).unwrap();
        }
        // Six sends on three sockets, more than the ring holds at once; one to an IPv6 address
        // from an IPv4 socket, which fails alone.
        let flows: Vec<UdpSocket> = (0..3).map(|_| UdpSocket::bind("127.0.44.10:0").unwrap()).collect();
        let v6: SocketAddr = "[::1]:9".parse().unwrap();
        let sends: Vec<(RawFd, usize, SocketAddr)> =
            (0..6).map(|i| (flows[i % 3].as_raw_fd(), i, if i == 4 { v6 } else { to })).collect();
        let mut results = Vec::new();
        ring.send(&mut batch, &sends, &mut results).unwrap();
        assert_eq!(results.iter().map(|&r| r >= 0).collect::<Vec<_>>(), [true, true, true, true, false, true]);
        let mut buf = [0u8; 64];
        let mut got: Vec<(u8, SocketAddr)> = (0..5)
            .map(|_| {
                let (n, from) = server.recv_from(&mut buf).unwrap();
                assert_eq!(n, 10);
                (buf[0], from)
            })
            .collect();
        got.sort();
        let expect: Vec<(u8, SocketAddr)> =
            [0, 1, 2, 3, 5].iter().map(|&i| (i, flows[usize::from(i) % 3].local_addr().unwrap())).collect();
        assert_eq!(got, expect);
    }

    #[test]
    fn recv_meta_reports_sender_ttl_and_kernel_time() {
        let server = UdpSocket::bind("127.0.44.9:0").unwrap();
        let client = UdpSocket::bind("127.0.44.9:0").unwrap();
        enable_ttl_and_timestamps(server.as_fd(), false).unwrap();
        let mut buf = [0u8; 64];
        let nothing = recv_meta(server.as_fd(), &mut buf).unwrap_err();
        assert_eq!(nothing.kind(), io::ErrorKind::WouldBlock);
        let before = SystemTime::now();
        client.send_to(b"hello", server.local_addr().unwrap()).unwrap();
        assert_eq!(poll_readable(&[server.as_fd()], Duration::from_secs(2)).unwrap(), 1);
        let meta = recv_meta(server.as_fd(), &mut buf).unwrap();
        assert_eq!((meta.len, &buf[..5]), (5, &b"hello"[..]));
        assert_eq!(meta.from, Some(client.local_addr().unwrap()));
        assert_eq!(meta.ttl, Some(64), "the default TTL, unchanged on loopback");
        let kernel = meta.kernel_time.unwrap();
        assert!(kernel >= before - Duration::from_millis(1) && kernel <= SystemTime::now());
    }

    #[test]
    fn poll_readable_says_which_socket_and_waits_below_a_millisecond() {
        let a = UdpSocket::bind("127.0.44.9:0").unwrap();
        let b = UdpSocket::bind("127.0.44.9:0").unwrap();
        let started = Instant::now();
        assert_eq!(poll_readable(&[a.as_fd(), b.as_fd()], Duration::from_micros(300)).unwrap(), 0);
        let waited = started.elapsed();
        assert!(waited >= Duration::from_micros(300) && waited < Duration::from_millis(20), "{waited:?}");
        a.send_to(b"x", b.local_addr().unwrap()).unwrap();
        assert_eq!(poll_readable(&[a.as_fd(), b.as_fd()], Duration::from_secs(2)).unwrap(), 0b10);
    }

    #[test]
    fn interface_addrs_include_loopback() {
        let addrs = interface_addrs().unwrap();
        assert!(addrs.contains(&("lo".to_string(), IpAddr::V4(Ipv4Addr::LOCALHOST))), "{addrs:?}");
    }
}
