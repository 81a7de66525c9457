//! The UDP balancer: one event loop on a thread of its own, batching with `recvmmsg` on the
//! listening socket and `sendmmsg` for the replies, with a bounded table of client flows.
//!
//! Each client address gets a flow: an upstream socket of its own, so a backend's reply — which
//! arrives on that socket — can be sent back to exactly that client. Datagrams rotate over the
//! backends one by one (or stay with one backend per client under `affinity = "client"`). No
//! datagram allocates or takes a lock; a silent backend costs a table entry, never a wait.

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, UdpSocket};
use std::os::fd::{AsFd, AsRawFd};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;

use crate::balance::{BackendSet, Picker};
use crate::clock::UtcTime;
use crate::config::{Affinity, UdpBalancerConfig};
use crate::log::Log;
use tokio_util::sync::CancellationToken;

use crate::net::{self, BindError};
use crate::sys::{Batch, Epoll};

/// Datagrams moved per system call at most.
const BATCH: usize = 32;
/// A slot holds the largest UDP payload (65,507 bytes over IPv4, 65,527 over IPv6).
const SLOT: usize = 65_536;
/// How often idle flows are swept and the stop signal is checked.
const TICK: Duration = Duration::from_millis(100);
/// The epoll token of the listening socket; flow `i` is `i + 1`.
const LISTENER: u64 = 0;

/// A bound, ready-to-run UDP balancer.
pub struct UdpBalancer {
    /// One listening socket per worker (SO_REUSEPORT); a client address always hashes to the
    /// same one, so its flow lives on one thread.
    sockets: Vec<UdpSocket>,
    shared: Arc<Shared>,
}

/// What the workers of one balancer share: the backends and the one rotation.
struct Shared {
    name: String,
    backends: Arc<ArcSwap<BackendSet>>,
    /// The one rotation (and affinity rule) of the balancer.
    picker: Picker,
    affinity: Affinity,
    /// Flow-table bound of each worker (the configured bound split between them).
    max_flows: usize,
    idle_timeout: Duration,
    log: Log,
}

/// Counters a worker keeps while it runs; returned when it stops.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct UdpStats {
    pub requests: u64,
    pub replies: u64,
    /// Datagrams dropped: no healthy backend, a full socket buffer, or a reply from a stranger.
    pub dropped: u64,
    pub flows_opened: u64,
    pub flows_evicted: u64,
}

impl std::fmt::Display for UdpStats {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} requests, {} replies, {} dropped, {} flows opened, {} evicted",
            self.requests, self.replies, self.dropped, self.flows_opened, self.flows_evicted
        )
    }
}

struct Flow {
    client: SocketAddr,
    socket: UdpSocket,
    /// Where this client's datagrams last went (kept under client affinity).
    backend: Option<SocketAddr>,
    last_seen: Instant,
}

impl UdpBalancer {
    /// Binds the listening sockets; nothing is relayed until [`UdpBalancer::spawn`].
    pub fn bind(config: &UdpBalancerConfig, log: Log) -> Result<Self, BindError> {
        let owner = format!("udp balancer \"{}\"", config.name);
        let workers = config.workers.unwrap_or_else(|| thread::available_parallelism().map_or(1, usize::from));
        let sockets = net::bind_udp_shared(config.listen.0, &owner, workers)?;
        for s in &sockets {
            s.set_nonblocking(true).map_err(|source| BindError {
                proto: "udp",
                addr: config.listen.0,
                owner: owner.clone(),
                source,
            })?;
        }
        let shared = Shared {
            name: config.name.clone(),
            backends: Arc::new(ArcSwap::from_pointee(BackendSet::new(&config.backends.0))),
            picker: Picker::new(config.affinity),
            affinity: config.affinity,
            max_flows: config.max_flows.div_ceil(sockets.len()),
            idle_timeout: config.flow_idle_timeout.0,
            log: if config.access_log { log } else { Log::disabled() },
        };
        Ok(Self { sockets, shared: Arc::new(shared) })
    }

    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.sockets[0].local_addr()
    }

    pub fn name(&self) -> &str {
        &self.shared.name
    }

    /// The live backend set, for health checkers to replace.
    pub fn backends(&self) -> Arc<ArcSwap<BackendSet>> {
        self.shared.backends.clone()
    }

    /// Runs one event loop per listening socket, each on a thread of its own, until `shutdown`.
    pub fn spawn(self, shutdown: CancellationToken) -> io::Result<Vec<thread::JoinHandle<io::Result<UdpStats>>>> {
        self.sockets
            .into_iter()
            .enumerate()
            .map(|(i, socket)| {
                let (shared, stop) = (self.shared.clone(), shutdown.clone());
                thread::Builder::new()
                    .name(format!("udp-{}-{i}", shared.name))
                    .spawn(move || Relay::new(shared, socket)?.run(stop))
            })
            .collect()
    }
}

/// One worker's event loop state; lives on its thread only.
struct Relay {
    shared: Arc<Shared>,
    socket: UdpSocket,
    epoll: Epoll,
    flows: Vec<Option<Flow>>,
    free: Vec<usize>,
    by_client: HashMap<SocketAddr, usize>,
    requests: Batch,
    replies: Batch,
    stats: UdpStats,
    now: Instant,
}

impl Relay {
    fn new(shared: Arc<Shared>, socket: UdpSocket) -> io::Result<Self> {
        let epoll = Epoll::new(256)?;
        epoll.add(socket.as_raw_fd(), LISTENER)?;
        Ok(Self {
            epoll,
            socket,
            flows: Vec::new(),
            free: Vec::new(),
            by_client: HashMap::new(),
            requests: Batch::new(BATCH, SLOT),
            replies: Batch::new(BATCH, SLOT),
            stats: UdpStats::default(),
            now: Instant::now(),
            shared,
        })
    }

    fn run(mut self, shutdown: CancellationToken) -> io::Result<UdpStats> {
        let mut ready = Vec::with_capacity(256);
        let mut last_sweep = Instant::now();
        let tick_ms = TICK.as_millis() as i32;
        while !shutdown.is_cancelled() {
            self.epoll.wait_into(tick_ms, &mut ready)?;
            self.now = Instant::now();
            for &token in &ready {
                if token == LISTENER {
                    self.on_requests()?;
                } else {
                    self.on_replies((token - 1) as usize)?;
                }
            }
            self.flush_replies();
            if self.now.duration_since(last_sweep) >= TICK {
                self.sweep_idle();
                last_sweep = self.now;
            }
        }
        Ok(self.stats)
    }

    /// Reads a batch from clients and sends each datagram on to its backend.
    fn on_requests(&mut self) -> io::Result<()> {
        self.requests.clear();
        self.requests.recv(self.socket.as_fd())?;
        let set = self.shared.backends.load();
        for i in 0..self.requests.len() {
            let Some(client) = self.requests.addr(i) else {
                continue;
            };
            let slot = self.flow_for(client, &set)?;
            let Some(flow) = self.flows[slot].as_mut() else {
                continue;
            };
            flow.last_seen = self.now;
            let backend = self.shared.picker.pick(&set, flow.backend);
            if self.shared.affinity == Affinity::Client {
                flow.backend = backend;
            }
            let payload = self.requests.payload(i);
            let sent = match backend {
                Some(b) => flow.socket.send_to(payload, b).is_ok(),
                None => false,
            };
            self.stats.requests += 1;
            if !sent {
                self.stats.dropped += 1;
            }
            if self.shared.log.enabled() {
                let to = backend.map_or_else(|| "- (no healthy backend)".to_string(), |b| b.to_string());
                let fate = if sent { "" } else { " dropped" };
                self.shared.log.line(format!(
                    "{} udp {} {client} -> {to} {}B{fate}",
                    UtcTime::now().rfc3339(),
                    self.shared.name,
                    payload.len()
                ));
            }
        }
        Ok(())
    }

    /// Reads what backends sent to flow `slot` and queues it for the flow's client.
    fn on_replies(&mut self, slot: usize) -> io::Result<()> {
        loop {
            if self.replies.is_full() {
                self.flush_replies();
            }
            let Some(flow) = self.flows.get_mut(slot).and_then(Option::as_mut) else {
                return Ok(());
            };
            let before = self.replies.len();
            // An error here is an ICMP report queued on the flow socket: nothing to relay.
            let got = self.replies.recv(flow.socket.as_fd()).unwrap_or_default();
            if got == 0 {
                return Ok(());
            }
            flow.last_seen = self.now;
            let client = flow.client;
            let set = self.shared.backends.load();
            let mut i = before;
            while i < self.replies.len() {
                let from = self.replies.addr(i);
                match from {
                    Some(b) if set.contains(b) => {
                        if self.shared.log.enabled() {
                            self.shared.log.line(format!(
                                "{} udp {} {client} <- {b} {}B",
                                UtcTime::now().rfc3339(),
                                self.shared.name,
                                self.replies.payload(i).len()
                            ));
                        }
                        self.replies.set_addr(i, client);
                        i += 1;
                    }
                    _ => {
                        // Not from a backend: someone probing the upstream port. Drop it.
                        self.stats.dropped += 1;
                        self.replies.swap_remove(i);
                    }
                }
            }
            if !self.replies.is_full() {
                return Ok(());
            }
        }
    }

    fn flush_replies(&mut self) {
        let n = self.replies.len() as u64;
        if n == 0 {
            return;
        }
        let failed = self.replies.send(self.socket.as_fd()) as u64;
        self.stats.replies += n - failed;
        self.stats.dropped += failed;
    }

    /// The flow of `client`, opened (evicting the least recently used one if full) if new.
    fn flow_for(&mut self, client: SocketAddr, set: &BackendSet) -> io::Result<usize> {
        if let Some(&slot) = self.by_client.get(&client) {
            return Ok(slot);
        }
        if self.by_client.len() >= self.shared.max_flows {
            let oldest = self
                .flows
                .iter()
                .enumerate()
                .filter_map(|(i, f)| f.as_ref().map(|f| (i, f.last_seen)))
                .min_by_key(|&(_, seen)| seen)
                .map(|(i, _)| i);
            if let Some(slot) = oldest {
                self.close_flow(slot);
                self.stats.flows_evicted += 1;
            }
        }
        let v4 = set.backends().first().is_none_or(|b| b.addr.is_ipv4());
        let any = if v4 { IpAddr::V4(Ipv4Addr::UNSPECIFIED) } else { IpAddr::V6(Ipv6Addr::UNSPECIFIED) };
        let socket = UdpSocket::bind(SocketAddr::new(any, 0))?;
        socket.set_nonblocking(true)?;
        let slot = self.free.pop().unwrap_or_else(|| {
            self.flows.push(None);
            self.flows.len() - 1
        });
        self.epoll.add(socket.as_raw_fd(), slot as u64 + 1)?;
        self.flows[slot] = Some(Flow { client, socket, backend: None, last_seen: self.now });
        self.by_client.insert(client, slot);
        self.stats.flows_opened += 1;
        Ok(slot)
    }

    fn close_flow(&mut self, slot: usize) {
        if let Some(flow) = self.flows[slot].take() {
            let _ = self.epoll.delete(flow.socket.as_raw_fd());
            self.by_client.remove(&flow.client);
            self.free.push(slot);
        }
    }

    fn sweep_idle(&mut self) {
        let idle = self.shared.idle_timeout;
        let now = self.now;
        let expired: Vec<usize> = self
            .flows
            .iter()
            .enumerate()
            .filter_map(|(i, f)| f.as_ref().filter(|f| now.duration_since(f.last_seen) >= idle).map(|_| i))
            .collect();
        for slot in expired {
            self.close_flow(slot);
        }
    }
}
