//! Thin wrappers over the Linux system calls the UDP data path batches with: `epoll`,
//! `recvmmsg` and `sendmmsg`. This is the only module allowed `unsafe`; each block says why it
//! is sound.
#![allow(unsafe_code)]

use std::io;
use std::mem::{size_of, zeroed};
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

/// A level-triggered epoll instance.
#[derive(Debug)]
pub(crate) struct Epoll {
    fd: OwnedFd,
    events: Vec<libc::epoll_event>,
}

impl Epoll {
    pub(crate) fn new(max_events: usize) -> io::Result<Self> {
        // SAFETY: plain system call; the returned descriptor is checked before it is owned.
        let fd = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `fd` is a fresh descriptor that nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        let events = vec![libc::epoll_event { events: 0, u64: 0 }; max_events.max(1)];
        Ok(Self { fd, events })
    }

    /// Watches `fd` for readability, reporting `token`.
    pub(crate) fn add(&self, fd: RawFd, token: u64) -> io::Result<()> {
        let mut ev = libc::epoll_event { events: libc::EPOLLIN as u32, u64: token };
        // SAFETY: `ev` is a valid epoll_event for the duration of the call.
        let r = unsafe { libc::epoll_ctl(self.fd.as_raw_fd(), libc::EPOLL_CTL_ADD, fd, &mut ev) };
        if r < 0 { Err(io::Error::last_os_error()) } else { Ok(()) }
    }

    /// Stops watching `fd`.
    pub(crate) fn delete(&self, fd: RawFd) -> io::Result<()> {
        let mut ev = libc::epoll_event { events: 0, u64: 0 };
        // SAFETY: as in `add`; the event argument is ignored for DEL but must be non-null on old kernels.
        let r = unsafe { libc::epoll_ctl(self.fd.as_raw_fd(), libc::EPOLL_CTL_DEL, fd, &mut ev) };
        if r < 0 { Err(io::Error::last_os_error()) } else { Ok(()) }
    }

    /// Waits up to `timeout_ms` and puts the ready tokens in `ready` (cleared first; reused so
    /// that waiting allocates nothing).
    pub(crate) fn wait_into(&mut self, timeout_ms: i32, ready: &mut Vec<u64>) -> io::Result<()> {
        ready.clear();
        // SAFETY: the buffer holds `events.len()` writable epoll_event slots.
        let n = unsafe {
            libc::epoll_wait(self.fd.as_raw_fd(), self.events.as_mut_ptr(), self.events.len() as i32, timeout_ms)
        };
        if n < 0 {
            let e = io::Error::last_os_error();
            return if e.kind() == io::ErrorKind::Interrupted { Ok(()) } else { Err(e) };
        }
        ready.extend(self.events[..n as usize].iter().map(|e| e.u64));
        Ok(())
    }
}

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
unsafe impl Send for Batch {}

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
    pub(crate) fn recv(&mut self, fd: RawFd) -> io::Result<usize> {
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
            libc::recvmmsg(fd, self.hdrs.as_mut_ptr().add(start), want as u32, libc::MSG_DONTWAIT, std::ptr::null_mut())
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

    /// Drops datagram `i` from the batch (the last one takes its place).
    pub(crate) fn swap_remove(&mut self, i: usize) {
        let last = self.filled - 1;
        if i != last {
            let (a, b) = (i * self.slot, last * self.slot);
            let len = self.lens[last];
            self.data.copy_within(b..b + len, a);
            self.lens[i] = len;
            self.addrs[i] = self.addrs[last];
            self.hdrs[i].msg_hdr.msg_namelen = self.hdrs[last].msg_hdr.msg_namelen;
        }
        self.filled = last;
    }

    /// Sends every datagram held to its address on `fd` with as few `sendmmsg` calls as the
    /// kernel allows, then empties the batch. Returns how many could not be sent (a full socket
    /// buffer or a per-datagram error drops that datagram, as UDP does).
    pub(crate) fn send(&mut self, fd: RawFd) -> usize {
        let total = self.filled;
        let mut at = 0;
        let mut failed = 0;
        for i in 0..total {
            self.iov[i].iov_len = self.lens[i];
        }
        while at < total {
            // SAFETY: headers `at..total` point at valid iovecs (lengths set above) and
            // addresses (set by `set_addr` or `recv`) owned by `self`.
            let n =
                unsafe { libc::sendmmsg(fd, self.hdrs.as_mut_ptr().add(at), (total - at) as u32, libc::MSG_DONTWAIT) };
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
}

/// Writes `addr` into `storage`; returns the address length.
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::UdpSocket;

    #[test]
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
            got += batch.recv(server.as_raw_fd()).unwrap();
        }
        assert_eq!(batch.len(), 5);
        for i in 0..5 {
            assert_eq!(batch.payload(i), &vec![i as u8; 100 + i][..]);
            assert_eq!(batch.addr(i), Some(client.local_addr().unwrap()));
        }
        batch.swap_remove(1);
        assert_eq!(batch.len(), 4);
        assert_eq!(batch.payload(1), &[4u8; 104][..]);
        assert_eq!(batch.send(server.as_raw_fd()), 0);
        let mut buf = [0u8; 2048];
        let mut lens: Vec<usize> = (0..4).map(|_| client.recv(&mut buf).unwrap()).collect();
        lens.sort_unstable();
        assert_eq!(lens, vec![100, 102, 103, 104]);
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
    pub kernel_time: Option<std::time::SystemTime>,
}

fn setsockopt_int(fd: RawFd, level: i32, name: i32, value: i32) -> io::Result<()> {
    // SAFETY: passes a pointer to a live i32 and its exact size.
    let r = unsafe {
        libc::setsockopt(fd, level, name, (&value as *const i32).cast(), size_of::<i32>() as libc::socklen_t)
    };
    if r < 0 { Err(io::Error::last_os_error()) } else { Ok(()) }
}

/// On a raw IPv4 ICMP socket, has the kernel deliver only echo replies (not every ICMP packet
/// the host receives, which on loopback includes our own requests).
pub(crate) fn only_echo_replies(fd: RawFd) -> io::Result<()> {
    const ICMP_FILTER: i32 = 1;
    // The filter is a bitmask of ICMP types to drop: all but type 0.
    let blocked: u32 = !1;
    // SAFETY: passes a pointer to a live u32 and its exact size.
    let r = unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_RAW,
            ICMP_FILTER,
            (&blocked as *const u32).cast(),
            size_of::<u32>() as libc::socklen_t,
        )
    };
    if r < 0 { Err(io::Error::last_os_error()) } else { Ok(()) }
}

/// Asks the kernel to report each packet's TTL (hop limit) and receive timestamp.
pub(crate) fn enable_ttl_and_timestamps(fd: RawFd, v6: bool) -> io::Result<()> {
    if v6 {
        setsockopt_int(fd, libc::IPPROTO_IPV6, libc::IPV6_RECVHOPLIMIT, 1)?;
    } else {
        setsockopt_int(fd, libc::IPPROTO_IP, libc::IP_RECVTTL, 1)?;
    }
    setsockopt_int(fd, libc::SOL_SOCKET, libc::SO_TIMESTAMPNS, 1)
}

/// `recvmsg` without waiting, with the TTL and kernel timestamp control messages decoded.
pub(crate) fn recv_meta(fd: RawFd, buf: &mut [u8]) -> io::Result<RecvMeta> {
    // SAFETY: all-zero is a valid sockaddr_storage, msghdr and iovec.
    let mut addr: libc::sockaddr_storage = unsafe { zeroed() };
    let mut iov = libc::iovec { iov_base: buf.as_mut_ptr().cast(), iov_len: buf.len() };
    let mut control = [0u64; 16]; // 128 bytes, aligned for cmsghdr
    let mut msg: libc::msghdr = unsafe { zeroed() };
    msg.msg_name = (&mut addr as *mut libc::sockaddr_storage).cast();
    msg.msg_namelen = size_of::<libc::sockaddr_storage>() as u32;
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.as_mut_ptr().cast();
    msg.msg_controllen = std::mem::size_of_val(&control);
    // SAFETY: every pointer in `msg` refers to a live local buffer of the stated size.
    let n = unsafe { libc::recvmsg(fd, &mut msg, libc::MSG_DONTWAIT) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    let mut meta =
        RecvMeta { len: n as usize, from: from_storage(&addr, msg.msg_namelen), ttl: None, kernel_time: None };
    // SAFETY: CMSG_* walk the control buffer the kernel filled, bounded by msg_controllen.
    unsafe {
        let mut c = libc::CMSG_FIRSTHDR(&msg);
        while !c.is_null() {
            let (level, kind, data) = ((*c).cmsg_level, (*c).cmsg_type, libc::CMSG_DATA(c));
            let fits = |n: usize| (*c).cmsg_len as usize >= libc::CMSG_LEN(n as u32) as usize;
            if ((level == libc::IPPROTO_IP && kind == libc::IP_TTL)
                || (level == libc::IPPROTO_IPV6 && kind == libc::IPV6_HOPLIMIT))
                && fits(size_of::<i32>())
            {
                let v: i32 = std::ptr::read_unaligned(data.cast());
                meta.ttl = u8::try_from(v).ok();
            } else if level == libc::SOL_SOCKET && kind == libc::SO_TIMESTAMPNS && fits(size_of::<libc::timespec>()) {
                let ts: libc::timespec = std::ptr::read_unaligned(data.cast());
                if let (Ok(secs), Ok(nanos)) = (u64::try_from(ts.tv_sec), u32::try_from(ts.tv_nsec)) {
                    meta.kernel_time =
                        std::time::UNIX_EPOCH.checked_add(std::time::Duration::new(secs, nanos.min(999_999_999)));
                }
            }
            c = libc::CMSG_NXTHDR(&msg, c);
        }
    }
    Ok(meta)
}

/// Waits until one of `fds` is readable or `timeout` passes; bit `i` of the result is set when
/// `fds[i]` is readable.
pub(crate) fn poll_readable(fds: &[RawFd], timeout: std::time::Duration) -> io::Result<u64> {
    let mut p: Vec<libc::pollfd> =
        fds.iter().map(|&fd| libc::pollfd { fd, events: libc::POLLIN, revents: 0 }).collect();
    // ppoll takes nanoseconds, so probes and delayed replies keep sub-millisecond timing.
    let ts = libc::timespec {
        tv_sec: timeout.as_secs().min(i32::MAX as u64) as libc::time_t,
        tv_nsec: timeout.subsec_nanos() as libc::c_long,
    };
    // SAFETY: `p` holds `p.len()` valid pollfd entries; `ts` lives across the call; no sigmask.
    let r = unsafe { libc::ppoll(p.as_mut_ptr(), p.len() as libc::nfds_t, &ts, std::ptr::null()) };
    if r < 0 {
        let e = io::Error::last_os_error();
        return if e.kind() == io::ErrorKind::Interrupted { Ok(0) } else { Err(e) };
    }
    Ok(p.iter().enumerate().filter(|(_, p)| p.revents != 0).fold(0, |m, (i, _)| m | 1 << i))
}

/// Every (interface name, address) pair the OS reports (`getifaddrs`).
pub(crate) fn interface_addrs() -> io::Result<Vec<(String, std::net::IpAddr)>> {
    let mut head: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs fills `head` with a list we free below with freeifaddrs.
    if unsafe { libc::getifaddrs(&mut head) } != 0 {
        return Err(io::Error::last_os_error());
    }
    let mut out = Vec::new();
    let mut cur = head;
    while !cur.is_null() {
        // SAFETY: `cur` is a node of the list getifaddrs returned, not yet freed; its name is a
        // NUL-terminated string and its address, when non-null, a sockaddr of the stated family.
        unsafe {
            let ifa = &*cur;
            if !ifa.ifa_addr.is_null() {
                let family = i32::from((*ifa.ifa_addr).sa_family);
                let len = match family {
                    libc::AF_INET => size_of::<libc::sockaddr_in>(),
                    libc::AF_INET6 => size_of::<libc::sockaddr_in6>(),
                    _ => 0,
                };
                if len > 0 {
                    let mut storage: libc::sockaddr_storage = zeroed();
                    std::ptr::copy_nonoverlapping(
                        ifa.ifa_addr.cast::<u8>(),
                        (&mut storage as *mut libc::sockaddr_storage).cast::<u8>(),
                        len,
                    );
                    if let Some(addr) = from_storage(&storage, len as u32) {
                        let name = std::ffi::CStr::from_ptr(ifa.ifa_name).to_string_lossy().into_owned();
                        out.push((name, addr.ip()));
                    }
                }
            }
            cur = ifa.ifa_next;
        }
    }
    // SAFETY: `head` came from getifaddrs and is freed once.
    unsafe { libc::freeifaddrs(head) };
    Ok(out)
}
