//! The HTTP/1.1 reverse proxy: one strategy's choice per request (by default one rotation shared
//! by all clients), pooled keep-alive connections to the backends, bodies streamed both ways,
//! and errors that say who caused them.
//!
//! Each client connection is one task that reads a request head, asks `balance` for a backend,
//! and relays the exchange byte for byte (re-framing only what HTTP requires), so a request
//! costs about one read and one write on each side. Heads are parsed and rewritten by [`super::h1`].

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use bytes::BufMut;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;

use super::backends::Backends;
use super::h1::{self, Chunked, Framing, HeadError, RequestHead};
use super::reload::Takeover;
use crate::balance::{BackendSet, OutlierRules, Strategy};
use crate::clock::UtcTime;
use crate::config::{HashKey, HttpBalancerConfig};
use crate::log::Log;
use crate::stats::traffic::{BalancerStats, HttpBackendCells, HttpError, HttpWorkerCells, Proto, plural};
use tokio_util::sync::{CancellationToken, WaitForCancellationFuture};
use tokio_util::task::TaskTracker;

use crate::net::{self, BindError, DRAIN_TIMEOUT, HEADER_READ_TIMEOUT};

/// How long an idle pooled backend connection may be reused.
const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a client may stay idle between requests on a keep-alive connection.
const CLIENT_IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// Once stopping, how long an idle connection waits for a request that may already be on the
/// wire before it is closed.
const STOP_GRACE: Duration = Duration::from_millis(500);
/// Read buffer per direction per connection; it grows only to hold a large head.
const BUF_SIZE: usize = 16 * 1024;

/// A bound, ready-to-run HTTP balancer.
pub struct HttpBalancer {
    /// One listening socket per worker (SO_REUSEPORT).
    listeners: Vec<std::net::TcpListener>,
    max_connections: usize,
    proxy: Arc<Proxy>,
}

/// The state every connection shares.
struct Proxy {
    name: String,
    /// What the workers count, for the sinks to read.
    stats: Arc<BalancerStats>,
    /// Health may change, order never does: index `i` is always backend `i` of the config.
    backends: Backends,
    /// What a request is hashed by, under `strategy = "hash"` only.
    hash_key: Option<HashKey>,
    /// Other backends a failed request may be retried on.
    retries: u32,
    /// Time for a whole request head to arrive, from its first byte.
    head_timeout: Duration,
    /// Running out of descriptors is said at most once a second (taken only then).
    resource_warn: Mutex<crate::log::Throttled>,
    max_idle: usize,
    connect_timeout: Duration,
    timeout: Duration,
    log: Log,
    /// Whether workers queue their small writes and make them in one io_uring call when they
    /// run out of work (`crate::sys::queued`), where the kernel allows it.
    queued_sends: bool,
}

/// What one worker thread owns: its keep-alive pools (one per backend) and its counters.
struct Worker {
    pools: Box<[Pool]>,
    cells: Arc<HttpWorkerCells>,
}

impl Worker {
    fn backend(&self, index: usize) -> Option<&HttpBackendCells> {
        self.cells.backends.get(index)
    }
}

/// A connection to a backend; counted as open (in its backend's gauge) until dropped.
struct Upstream {
    stream: TcpStream,
    cells: Arc<HttpWorkerCells>,
    index: usize,
}

impl Upstream {
    fn new(stream: TcpStream, cells: &Arc<HttpWorkerCells>, index: usize) -> Self {
        if let Some(b) = cells.backends.get(index) {
            b.connections.up();
        }
        Self { stream, cells: cells.clone(), index }
    }
}

impl Drop for Upstream {
    fn drop(&mut self) {
        if let Some(b) = self.cells.backends.get(self.index) {
            b.connections.down();
        }
    }
}

impl std::ops::Deref for Upstream {
    type Target = TcpStream;
    fn deref(&self) -> &TcpStream {
        &self.stream
    }
}

impl std::ops::DerefMut for Upstream {
    fn deref_mut(&mut self) -> &mut TcpStream {
        &mut self.stream
    }
}

/// Idle keep-alive connections to one backend, most recent last.
struct Pool {
    idle: Mutex<Vec<(Upstream, Instant)>>,
    max_idle: usize,
}

impl Pool {
    fn new(max_idle: usize) -> Self {
        Self { idle: Mutex::new(Vec::new()), max_idle }
    }

    /// The most recent idle connection still fit for a request at `now`.
    fn take(&self, gauge: Option<&HttpBackendCells>, now: Instant) -> Option<Upstream> {
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        let mut found = None;
        while let Some((conn, since)) = idle.pop() {
            // An idle connection must have nothing to say: bytes here (a late response, a 408)
            // would be taken for the next request's answer, and EOF means the backend closed it.
            let quiet = matches!(conn.try_read(&mut [0u8; 1]), Err(e) if e.kind() == io::ErrorKind::WouldBlock);
            if quiet && now.saturating_duration_since(since) < POOL_IDLE_TIMEOUT {
                found = Some(conn);
                break;
            }
        }
        if let Some(g) = gauge {
            g.idle.set(idle.len() as i64);
        }
        found
    }

    /// Closes the idle connections the backend closed (or that sat too long), so a dead
    /// backend does not keep sockets in CLOSE_WAIT until its next request; all of them when
    /// the backend is no longer `enabled` (an operator drains or disables it).
    fn sweep(&self, gauge: Option<&HttpBackendCells>, enabled: bool) {
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        idle.retain(|(conn, since)| {
            if !enabled {
                return false;
            }
            let quiet = matches!(conn.try_read(&mut [0u8; 1]), Err(e) if e.kind() == io::ErrorKind::WouldBlock);
            quiet && since.elapsed() < POOL_IDLE_TIMEOUT
        });
        if let Some(g) = gauge {
            g.idle.set(idle.len() as i64);
        }
    }

    /// Keeps `conn` for the next request, idle since `since`: when the exchange it served
    /// began, which spares a reading of the clock per request (its idle time counts from a
    /// little early, and one that served a response longer than the idle limit is not reused).
    fn put(&self, conn: Upstream, gauge: Option<&HttpBackendCells>, since: Instant) {
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        if idle.len() < self.max_idle {
            idle.push((conn, since));
        }
        if let Some(g) = gauge {
            g.idle.set(idle.len() as i64);
        }
    }
}

/// Why an exchange failed, and so which status the client gets.
#[derive(Debug, thiserror::Error)]
enum ProxyError {
    #[error("no healthy backend")]
    NoBackend,
    #[error("backend {0} did not accept a connection within {1:?}")]
    ConnectTimeout(SocketAddr, Duration),
    #[error("backend {0} could not be reached: {1}")]
    Connect(SocketAddr, io::Error),
    #[error("backend {0} did not respond within {1:?}")]
    Timeout(SocketAddr, Duration),
    #[error("backend {0} failed: {1}")]
    Backend(SocketAddr, String),
    #[error("backend {0} failed: {1}")]
    Reset(SocketAddr, io::Error),
    #[error("malformed request body: {0}")]
    BadBody(&'static str),
    #[error("client went away: {0}")]
    Client(io::Error),
    #[error("out of resources here, not the backend's fault: {0}")]
    Resources(io::Error),
    #[error("the request body paused longer than {0:?}")]
    ClientTimeout(Duration),
}

impl ProxyError {
    /// A backend's failure as the statistics count it (`None`: not the backend's).
    fn cause(&self) -> Option<HttpError> {
        match self {
            Self::ConnectTimeout(..) => Some(HttpError::ConnectTimeout),
            Self::Connect(_, e) if e.kind() == io::ErrorKind::ConnectionRefused => Some(HttpError::ConnectRefused),
            Self::Connect(..) => Some(HttpError::ConnectFailed),
            Self::Timeout(..) => Some(HttpError::ResponseTimeout),
            Self::Reset(..) => Some(HttpError::Reset),
            Self::Backend(..) => Some(HttpError::Broken),
            Self::NoBackend | Self::BadBody(_) | Self::Client(_) | Self::Resources(_) | Self::ClientTimeout(_) => None,
        }
    }

    /// An I/O error from `backend` while relaying (`what` says which step).
    fn io(backend: SocketAddr, what: &str, e: io::Error) -> Self {
        if matches!(e.kind(), io::ErrorKind::ConnectionReset | io::ErrorKind::BrokenPipe) {
            Self::Reset(backend, e)
        } else if what.is_empty() {
            Self::Backend(backend, e.to_string())
        } else {
            Self::Backend(backend, format!("{what}: {e}"))
        }
    }

    fn status(&self) -> u16 {
        match self {
            Self::NoBackend | Self::Resources(_) => 503,
            Self::ConnectTimeout(..) | Self::Timeout(..) => 504,
            Self::Connect(..) | Self::Backend(..) | Self::Reset(..) => 502,
            Self::BadBody(_) => 400,
            Self::ClientTimeout(_) => 408,
            // Nobody to answer; logged as 499 like nginx does.
            Self::Client(_) => 499,
        }
    }
}

/// How an exchange ended, for the access log and the connection's fate.
struct Outcome {
    backend: Option<SocketAddr>,
    status: u16,
    /// Whether the client connection can carry another request.
    keep_client: bool,
    /// The backend broke off its response after the head went out (counts against it).
    cut_short: bool,
    /// The client left before the whole response reached it (not the backend's fault).
    client_left: bool,
    /// The attempts that failed before this one: backend and why (for the access log).
    retried: Vec<(SocketAddr, String)>,
    /// Time from sending the request to the response head, when one came.
    head_after: Option<Duration>,
    /// Response bytes relayed from the backend.
    received: u64,
}

impl Outcome {
    /// An exchange that ended with `status` and nothing else to say (no backend answer relayed).
    fn answer(backend: Option<SocketAddr>, status: u16, keep_client: bool) -> Self {
        Self {
            backend,
            status,
            keep_client,
            cut_short: false,
            client_left: false,
            retried: Vec::new(),
            head_after: None,
            received: 0,
        }
    }
}

impl HttpBalancer {
    /// Binds the listening socket; nothing is served until [`HttpBalancer::spawn`].
    pub fn bind(config: &HttpBalancerConfig, log: Log) -> Result<Self, BindError> {
        Self::bind_with(config, log, None)
    }

    /// [`HttpBalancer::bind`], or with a [`Takeover`] the next generation of a running balancer.
    pub fn bind_with(
        config: &HttpBalancerConfig,
        log: Log,
        takeover: Option<Takeover<std::net::TcpListener>>,
    ) -> Result<Self, BindError> {
        let owner = format!("http balancer \"{}\"", config.name);
        let workers = config.workers.unwrap_or_else(default_workers);
        let (sockets, previous, shared, picker) = match takeover {
            Some(t) => (t.sockets, Some(t.stats), t.set, t.picker),
            None => (None, None, None, None),
        };
        let listeners = match sockets {
            Some(l) => l,
            None => net::bind_tcp_shared(config.listen.0, &owner, workers)?,
        };
        let outliers = OutlierRules {
            failures: config.eject_after,
            base: config.eject_for.0,
            max: OutlierRules::default().max.max(config.eject_for.0),
            ..OutlierRules::default()
        };
        let set =
            BackendSet::weighted(&config.backends.addrs(), &config.backends.weights()).with_strategy(config.strategy);
        let (backends, stats) = super::reload::backends_and_stats(
            &config.name,
            set,
            outliers,
            (Proto::Http, &config.strategy_name()),
            (shared, picker, previous),
        );
        if let Ok(at) = listeners[0].local_addr() {
            stats.set_listen(at);
        }
        backends.note_in(stats.clone());
        let proxy = Arc::new(Proxy {
            name: config.name.clone(),
            stats,
            backends,
            hash_key: (config.strategy == Strategy::Hash).then(|| config.hash_key()),
            retries: config.retries,
            head_timeout: config.head_timeout.0,
            resource_warn: Mutex::new(crate::log::Throttled::default()),
            max_idle: config.pool_max_idle,
            connect_timeout: config.connect_timeout.0,
            timeout: config.timeout.0,
            log: if config.access_log { log } else { Log::disabled() },
            queued_sends: crate::sys::io_uring_wanted(),
        });
        Ok(Self { listeners, max_connections: config.max_connections, proxy })
    }

    /// The address actually bound (useful with port 0).
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.listeners[0].local_addr()
    }

    /// Clones of its listening sockets, for a next generation to take over.
    pub fn share_sockets(&self) -> io::Result<Vec<std::net::TcpListener>> {
        super::reload::share(&self.listeners, std::net::TcpListener::try_clone)
    }

    pub fn name(&self) -> &str {
        &self.proxy.name
    }

    /// Its statistics, live.
    pub fn stats(&self) -> Arc<BalancerStats> {
        self.proxy.stats.clone()
    }

    /// The live backend set, for health checkers to replace (same backends, same order).
    pub fn backends(&self) -> Arc<ArcSwap<BackendSet>> {
        self.proxy.backends.set()
    }

    /// The picker, whose rotation position is saved across restarts.
    pub fn picker(&self) -> Arc<crate::balance::Picker> {
        self.proxy.backends.picker()
    }

    /// The backends' addresses, in configuration order.
    pub fn backend_addrs(&self) -> Vec<SocketAddr> {
        self.proxy.backends.addrs()
    }

    /// Serves on `workers` threads, each with a single-threaded runtime and pools of its own
    /// (thread per core, as nginx does), until `shutdown`; then stops accepting and lets
    /// requests in flight finish for up to [`DRAIN_TIMEOUT`]. Idle keep-alive connections close.
    pub fn spawn(self, shutdown: CancellationToken) -> io::Result<Vec<thread::JoinHandle<io::Result<()>>>> {
        // Each worker has its share of the connections (at least one): a worker never waits
        // for another's connection to end, which would leave its own queue unserved.
        let share = self.max_connections.div_ceil(self.listeners.len()).clamp(1, Semaphore::MAX_PERMITS);
        self.listeners
            .into_iter()
            .enumerate()
            .map(|(i, listener)| {
                let permits = Arc::new(Semaphore::new(share));
                let (proxy, shutdown) = (self.proxy.clone(), shutdown.clone());
                thread::Builder::new().name(format!("http-{}-{i}", self.proxy.name)).spawn(move || {
                    let mut rt = tokio::runtime::Builder::new_current_thread();
                    // Small writes wait for the worker to run out of work, then go out together.
                    if proxy.queued_sends && crate::sys::queued::install(256) {
                        rt.on_thread_park(|| {
                            crate::sys::queued::flush();
                        });
                    }
                    let rt = rt.enable_all().build()?;
                    rt.block_on(proxy.accept_loop(listener, permits, shutdown))
                })
            })
            .collect()
    }
}

/// Every few seconds: closes pooled connections their backend closed; and when many of this
/// worker's connections have closed since the most it had
/// (at least [`TRIM_AFTER`], and at least half of them), gives the memory they used back to the
/// OS, so a burst of clients does not leave the process large.
async fn keep_tidy(
    permits: Arc<Semaphore>,
    most: Arc<AtomicUsize>,
    worker: Arc<Worker>,
    backends: Arc<ArcSwap<BackendSet>>,
    shutdown: CancellationToken,
) {
    let slots = permits.available_permits();
    loop {
        tokio::select! {
            _ = tokio::time::sleep(TRIM_EVERY) => {}
            _ = shutdown.cancelled() => return,
        }
        let set = backends.load();
        for (i, pool) in worker.pools.iter().enumerate() {
            let enabled = set.get(i).is_none_or(|b| b.admin == crate::balance::Admin::Enabled);
            pool.sweep(worker.backend(i), enabled);
        }
        let open = slots.saturating_sub(permits.available_permits());
        let peak = most.load(Ordering::Relaxed);
        if peak.saturating_sub(open) >= TRIM_AFTER && open <= peak / 2 {
            crate::sys::release_free_memory();
            most.store(open, Ordering::Relaxed);
        }
    }
}

/// How often a worker looks whether memory can go back...
const TRIM_EVERY: Duration = Duration::from_secs(2);
/// ...and how many connections must have closed for it to bother.
const TRIM_AFTER: usize = 256;

/// Threads a balancer uses by default: one per core.
fn default_workers() -> usize {
    thread::available_parallelism().map_or(1, usize::from)
}

impl Proxy {
    /// One worker: accepts from the shared listening socket and serves its connections.
    async fn accept_loop(
        self: Arc<Self>,
        listener: std::net::TcpListener,
        permits: Arc<Semaphore>,
        shutdown: CancellationToken,
    ) -> io::Result<()> {
        let listener = TcpListener::from_std(listener)?;
        let pools = (0..self.backends.len()).map(|_| Pool::new(self.max_idle)).collect();
        let pools = Arc::new(Worker { pools, cells: self.stats.http_worker() });
        let stop = shutdown.cancelled();
        tokio::pin!(stop);
        let owner = format!("http balancer \"{}\"", self.name);
        let connections = TaskTracker::new();
        // The most connections open at once since memory was last given back.
        let most = Arc::new(AtomicUsize::new(0));
        let slots = permits.available_permits();
        let trim = tokio::spawn(keep_tidy(
            permits.clone(),
            most.clone(),
            pools.clone(),
            self.backends.set(),
            shutdown.clone(),
        ));
        let mut warn = crate::log::Throttled::default();
        while let Some((stream, peer, permit)) =
            net::accept_limited(&listener, &permits, &mut stop, &owner, &mut warn).await
        {
            most.fetch_max(slots - permits.available_permits(), Ordering::Relaxed);
            let (proxy, pools, rx) = (self.clone(), pools.clone(), shutdown.clone());
            pools.cells.clients_accepted.inc();
            connections.spawn(async move {
                proxy.serve_client(&pools, stream, peer, rx).await;
                drop(permit);
            });
        }
        // Stopping: clients the kernel already accepted for us get their request served (with
        // `Connection: close`), not a reset; then the listening socket closes.
        for (stream, peer) in net::accept_backlog(listener) {
            let (proxy, pools, rx) = (self.clone(), pools.clone(), shutdown.clone());
            pools.cells.clients_accepted.inc();
            connections.spawn(async move { proxy.serve_client(&pools, stream, peer, rx).await });
        }
        // This worker's runtime ends with it: wait for its connections to finish first.
        connections.close();
        // At least the time a backend has to start its answer: a generation a reload retires
        // lets its requests finish (a stopping process gives up after DRAIN_TIMEOUT anyway).
        let grace = DRAIN_TIMEOUT.max(self.timeout);
        if tokio::time::timeout(grace, connections.wait()).await.is_err() {
            tracing::warn!(
                "http balancer \"{}\": {} still under way after {grace:?} of stopping; closed",
                self.name,
                plural(connections.len() as u64, "connection", "connections")
            );
        }
        trim.abort();
        Ok(())
    }
}

/// Buffers an idle connection gave back, kept per worker thread for the next request, so that
/// giving memory back on idle costs no `malloc`/`free` per request; bounded, the rest is freed.
mod spare {
    use std::cell::RefCell;

    /// Buffers kept per worker and kind (16 KiB read buffers: at most 4 MiB).
    const KEEP: usize = 256;
    /// Larger ones (a big head made them grow) are freed, not kept.
    const LARGEST: usize = 64 * 1024;

    thread_local! {
        pub(super) static READ: RefCell<Vec<Vec<u8>>> = const { RefCell::new(Vec::new()) };
        pub(super) static WRITE: RefCell<Vec<Vec<u8>>> = const { RefCell::new(Vec::new()) };
    }

    type Pool = std::thread::LocalKey<RefCell<Vec<Vec<u8>>>>;

    /// An empty buffer with room for `size` bytes.
    pub(super) fn take(pool: &'static Pool, size: usize) -> Vec<u8> {
        pool.with(|p| p.borrow_mut().pop()).unwrap_or_else(|| Vec::with_capacity(size))
    }

    pub(super) fn give(pool: &'static Pool, mut buf: Vec<u8>) {
        if buf.capacity() == 0 || buf.capacity() > LARGEST {
            return;
        }
        buf.clear();
        pool.with(|p| {
            let mut p = p.borrow_mut();
            if p.len() < KEEP {
                p.push(buf);
            }
        });
    }
}

/// Takes one off a gauge when dropped (a connection that ends however it ends).
struct Decrement<'a>(&'a crate::stats::traffic::Gauge);

impl Drop for Decrement<'_> {
    fn drop(&mut self) {
        self.0.down();
    }
}

/// Room first taken for a request's outgoing head and a response's head.
const WRITE_SIZE: usize = 1024;

/// A read buffer: bytes `start..` of `data` are unread. Its memory is taken on the first read
/// and given back by [`Buf::release`] when the connection goes idle, so an idle keep-alive
/// connection holds no buffer (as nginx frees its buffers on keep-alive).
struct Buf {
    data: Vec<u8>,
    start: usize,
}

impl Buf {
    fn new() -> Self {
        Self { data: Vec::new(), start: 0 }
    }

    fn bytes(&self) -> &[u8] {
        &self.data[self.start..]
    }

    fn is_empty(&self) -> bool {
        self.start == self.data.len()
    }

    fn consume(&mut self, n: usize) {
        self.start += n;
        if self.start >= self.data.len() {
            self.clear();
        }
    }

    fn clear(&mut self) {
        self.start = 0;
        self.data.clear();
    }

    /// Gives the memory back if nothing is unread.
    fn release(&mut self) {
        if self.is_empty() {
            spare::give(&spare::READ, std::mem::take(&mut self.data));
            self.start = 0;
        }
    }

    /// Reads more from `s`, making room first (allocating, compacting, or growing to hold a
    /// large head). The read goes into spare capacity: nothing is zeroed first.
    async fn fill(&mut self, s: &mut TcpStream) -> io::Result<usize> {
        let spare = self.make_room()?;
        let before = self.data.len();
        s.read_buf(&mut (&mut self.data).limit(spare)).await?;
        Ok(self.data.len() - before)
    }

    /// Room for the next read: how many bytes.
    fn make_room(&mut self) -> io::Result<usize> {
        if self.data.capacity() == 0 {
            self.data = spare::take(&spare::READ, BUF_SIZE);
        }
        if self.data.len() == self.data.capacity() {
            if self.start > 0 {
                self.data.drain(..self.start);
                self.start = 0;
            } else if self.data.capacity() < h1::MAX_HEAD + BUF_SIZE {
                self.data.reserve_exact(self.data.capacity());
            } else {
                return Err(io::Error::other("buffer full"));
            }
        }
        Ok(self.data.capacity() - self.data.len())
    }
}

/// The hash key of a request under `strategy = "hash"`: its client's IP, or the value of the
/// named header in its `head` (`None` without one: the request takes the next turn).
fn request_key(key: &HashKey, head: &[u8], peer: SocketAddr) -> Option<u64> {
    match key {
        HashKey::ClientIp | HashKey::Source => Some(crate::balance::hash_ip(peer.ip())),
        HashKey::Header(name) => h1::header_value(head, name).map(|v| crate::balance::hash_value(&v)),
    }
}

/// Writes everything with a deadline, so a peer that stops reading cannot hold a connection
/// (and its permit) forever; a timeout is an `io::ErrorKind::TimedOut` error.
async fn write_within(s: &mut TcpStream, mut bytes: &[u8], limit: Duration) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    if let Some(queued) = crate::sys::queued::send(s.as_raw_fd(), bytes) {
        match queued.await {
            n if n >= 0 => {
                bytes = bytes.get(n as usize..).unwrap_or_default();
                if bytes.is_empty() {
                    return Ok(());
                }
            }
            // No room (then the usual way waits for it, with the deadline), or never made.
            e if e == -libc::EAGAIN || e == crate::sys::queued::NOT_SENT => {}
            e => return Err(io::Error::from_raw_os_error(-e)),
        }
    }
    at_once_or_by(s.write_all(bytes), || Instant::now() + limit)
        .await
        .unwrap_or_else(|| Err(io::ErrorKind::TimedOut.into()))
}

/// Reads with a time limit; a timeout is an `io::ErrorKind::TimedOut` error.
async fn fill_within(buf: &mut Buf, s: &mut TcpStream, limit: Duration) -> io::Result<usize> {
    fill_until(buf, s, || Instant::now() + limit).await
}

/// Reads by a deadline; a timeout is an `io::ErrorKind::TimedOut` error.
async fn fill_until(buf: &mut Buf, s: &mut TcpStream, deadline: impl FnOnce() -> Instant) -> io::Result<usize> {
    at_once_or_by(buf.fill(s), deadline).await.unwrap_or_else(|| Err(io::ErrorKind::TimedOut.into()))
}

/// `fut`'s output, or `None` if it has not ended by the deadline; the deadline is taken (and a
/// timer set) only when `fut` cannot end at once. Most reads and writes of a request end at
/// once (the bytes are there, the socket takes them): they cost no timer and no reading of the
/// clock. The first poll is the runtime's own, so readiness is kept as an await keeps it.
async fn at_once_or_by<F: std::future::Future>(fut: F, deadline: impl FnOnce() -> Instant) -> Option<F::Output> {
    let mut fut = std::pin::pin!(fut);
    if let std::task::Poll::Ready(out) = poll_once(fut.as_mut()).await {
        return Some(out);
    }
    tokio::time::timeout_at(deadline().into(), fut).await.ok()
}

/// Polls `fut` once, in the task's own context (so a pending one is woken as if awaited).
async fn poll_once<F: std::future::Future>(mut fut: Pin<&mut F>) -> std::task::Poll<F::Output> {
    std::future::poll_fn(|cx| std::task::Poll::Ready(fut.as_mut().poll(cx))).await
}

/// A client connection's idle timer: set once, for [`CLIENT_IDLE_TIMEOUT`] after the
/// connection began, and when it fires set again from the end of the last request if there
/// was one since (a timer set per request would cost a registration and a reading of the clock
/// each time).
struct Idle<'a> {
    sleep: Pin<&'a mut tokio::time::Sleep>,
    /// When the last request ended (or the connection began), on the runtime's clock.
    last: tokio::time::Instant,
}

/// Waits, holding no buffer, until the client sends something: `false` if it leaves, idles
/// out, or we are stopping and nothing comes within [`STOP_GRACE`] (a request already on the
/// wire when the stop began is still served).
async fn wait_for_request(
    c: &mut Conn,
    idle: &mut Idle<'_>,
    mut stop: Pin<&mut WaitForCancellationFuture<'_>>,
    shutdown: &CancellationToken,
) -> bool {
    let grace = async { matches!(tokio::time::timeout(STOP_GRACE, c.client.readable()).await, Ok(Ok(()))) };
    if shutdown.is_cancelled() {
        return grace.await;
    }
    loop {
        tokio::select! {
            biased;
            r = c.client.readable() => return r.is_ok(),
            () = idle.sleep.as_mut() => {
                let until = idle.last + CLIENT_IDLE_TIMEOUT;
                if until <= tokio::time::Instant::now() {
                    return false;
                }
                idle.sleep.as_mut().reset(until);
            }
            () = stop.as_mut() => break,
        }
    }
    grace.await
}

/// A client connection and its scratch space (buffers taken while a request is served).
struct Conn {
    client: TcpStream,
    peer: SocketAddr,
    cbuf: Buf,
    bbuf: Buf,
    /// The response head (and body bytes) on their way to the client.
    out: Vec<u8>,
    /// The request as it goes to the backend (head and the body bytes in hand), kept whole
    /// until the exchange ends so that a retry sends exactly the same bytes.
    req: Vec<u8>,
    /// The timer for the backends' answers.
    alarm: Alarm,
}

impl Conn {
    /// A new client connection: no buffer is taken until its first request.
    fn new(client: TcpStream, peer: SocketAddr) -> Self {
        Self { client, peer, cbuf: Buf::new(), bbuf: Buf::new(), out: Vec::new(), req: Vec::new(), alarm: Alarm(None) }
    }
}

/// A connection's timer for the backends' answers: set when the first one is waited for, then
/// moved only when it fires before the deadline of the answer now waited for (each request's
/// deadline is later than the last one's), so that a request sets no timer of its own.
struct Alarm(Option<Pin<Box<tokio::time::Sleep>>>);

impl Alarm {
    /// `fut`'s output, or `None` if `deadline` passes first.
    async fn within<F: std::future::Future>(&mut self, deadline: Instant, fut: F) -> Option<F::Output> {
        let mut fut = std::pin::pin!(fut);
        if let std::task::Poll::Ready(out) = poll_once(fut.as_mut()).await {
            return Some(out);
        }
        let deadline = tokio::time::Instant::from_std(deadline);
        let sleep = match &mut self.0 {
            Some(sleep) => {
                if sleep.deadline() > deadline {
                    sleep.as_mut().reset(deadline);
                }
                sleep
            }
            None => self.0.insert(Box::pin(tokio::time::sleep_until(deadline))),
        };
        loop {
            tokio::select! {
                biased;
                out = fut.as_mut() => return Some(out),
                () = sleep.as_mut() => {
                    if tokio::time::Instant::now() >= deadline {
                        return None;
                    }
                    sleep.as_mut().reset(deadline);
                }
            }
        }
    }
}

impl Proxy {
    async fn serve_client(&self, w: &Worker, client: TcpStream, peer: SocketAddr, shutdown: CancellationToken) {
        let mut c = Conn::new(client, peer);
        let cells = &w.cells;
        cells.clients.up();
        let _open = Decrement(&cells.clients);
        // One idle timer and one stop watch for the connection's life, not one per request.
        let mut idle =
            Idle { sleep: std::pin::pin!(tokio::time::sleep(CLIENT_IDLE_TIMEOUT)), last: tokio::time::Instant::now() };
        let mut stop = std::pin::pin!(shutdown.cancelled());
        loop {
            let head = match self.read_request_head(w, &mut c, (&mut idle, stop.as_mut(), &shutdown)).await {
                Some(h) => h,
                None => return,
            };
            let start = self.log.enabled().then(Instant::now);
            let key = self.hash_key.as_ref().and_then(|k| request_key(k, &c.cbuf.bytes()[..head.len], peer));
            c.cbuf.consume(head.len);
            cells.requests.inc();
            let outcome = self.exchange(w, &mut c, &head, key, &shutdown).await;
            if outcome.status == 499 || outcome.client_left {
                cells.client_aborts.inc();
            } else {
                cells.response(outcome.status);
            }
            if self.log.enabled() {
                let to = outcome.backend.map_or_else(|| "-".to_string(), |b| b.to_string());
                let mut line = format!(
                    "{} http {} {peer} \"{}\" -> {to} {:03} {:.3}ms",
                    UtcTime::now().rfc3339(),
                    self.name,
                    head.line,
                    outcome.status,
                    start.map_or(0.0, |s| s.elapsed().as_secs_f64() * 1000.0)
                );
                for (b, why) in &outcome.retried {
                    line.push_str(&format!(" (retried after {b}: {why})"));
                }
                self.log.line(line);
            }
            // The answer said whether the connection stays (`Connection: close` once stopping);
            // one that said so may already carry the next request, which `wait_for_request`
            // still takes during the stop's grace period.
            if !outcome.keep_client {
                let _ = c.client.shutdown().await;
                return;
            }
            // Idle until the next request: hold no buffers.
            idle.last = tokio::time::Instant::now();
            c.cbuf.release();
            c.bbuf.release();
            spare::give(&spare::WRITE, std::mem::take(&mut c.out));
            spare::give(&spare::WRITE, std::mem::take(&mut c.req));
        }
    }

    /// Waits for a complete request head; `None` closes the connection (the client left, idled
    /// out, sent garbage — answered with 400 / 431 —, took longer than `head_timeout` for the
    /// whole head — 408 —, or we are stopping and it sent nothing within the grace period).
    async fn read_request_head(
        &self,
        w: &Worker,
        c: &mut Conn,
        (idle, mut stop, shutdown): (&mut Idle<'_>, Pin<&mut WaitForCancellationFuture<'_>>, &CancellationToken),
    ) -> Option<RequestHead> {
        if c.cbuf.is_empty() && !wait_for_request(c, idle, stop.as_mut(), shutdown).await {
            return None;
        }
        if c.req.capacity() == 0 {
            c.req = spare::take(&spare::WRITE, WRITE_SIZE);
            c.out = spare::take(&spare::WRITE, WRITE_SIZE);
        }
        // The whole head must arrive by a deadline, however it trickles in (slowloris): from
        // when it is first waited for (most heads come whole in one read, and wait for nothing).
        // Once stopping, the rest of it has the grace an idle client has, not the whole
        // head_timeout: one slow client must not hold a stop or a reload.
        let mut deadline = None;
        let mut stopping = shutdown.is_cancelled();
        if stopping {
            deadline = Some(Instant::now() + STOP_GRACE);
        }
        loop {
            if !c.cbuf.is_empty() {
                match h1::parse_request(c.cbuf.bytes(), c.peer.ip(), self.log.enabled(), &mut c.req) {
                    Ok(Some(head)) => return Some(head),
                    Ok(None) => {}
                    Err(e) => {
                        let status = if e == HeadError::TooLarge { 431 } else { 400 };
                        w.cells.requests.inc();
                        w.cells.refused.inc();
                        w.cells.response(status);
                        self.refuse(c, status, &e.to_string()).await;
                        return None;
                    }
                }
            }
            let head_timeout = self.head_timeout;
            let by = || *deadline.get_or_insert_with(|| Instant::now() + head_timeout);
            let filled = tokio::select! {
                biased;
                r = fill_until(&mut c.cbuf, &mut c.client, by) => Some(r),
                () = stop.as_mut(), if !stopping => None,
            };
            let Some(filled) = filled else {
                stopping = true;
                let end = Instant::now() + STOP_GRACE;
                deadline = Some(deadline.map_or(end, |d| d.min(end)));
                continue;
            };
            match filled {
                Ok(0) => return None,
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::TimedOut && !c.cbuf.is_empty() => {
                    w.cells.requests.inc();
                    w.cells.refused.inc();
                    w.cells.response(408);
                    let why = if stopping {
                        format!("the request head was not complete {STOP_GRACE:?} after the stop began")
                    } else {
                        format!("the request head did not arrive within {:?}", self.head_timeout)
                    };
                    self.refuse(c, 408, &why).await;
                    return None;
                }
                Err(_) => return None,
            }
        }
    }

    /// Answers a request we refuse with `status` and logs why.
    async fn refuse(&self, c: &mut Conn, status: u16, why: &str) {
        let _ = write_within(&mut c.client, &error_page(status, why, true), HEADER_READ_TIMEOUT).await;
        if self.log.enabled() {
            // The access-log line's shape, with no request line and no backend.
            let now = UtcTime::now().rfc3339();
            self.log.line(format!("{now} http {} {} \"-\" -> - {status:03} 0.000ms ({why})", self.name, c.peer));
        }
    }

    /// Relays one request and its response, on another backend when its backend fails and a
    /// retry is safe; answers errors itself when nothing was sent to the client yet.
    async fn exchange(
        &self,
        w: &Worker,
        c: &mut Conn,
        head: &RequestHead,
        key: Option<u64>,
        shutdown: &CancellationToken,
    ) -> Outcome {
        if head.expect_continue && !head.http10 {
            if let Err(e) = write_within(&mut c.client, b"HTTP/1.1 100 Continue\r\n\r\n", self.timeout).await {
                return self.fail(c, head, None, ProxyError::Client(e), true).await;
            }
        }
        // The outgoing request: the rewritten head, a `Host` line when the client sent none
        // (it names the backend, so it is rewritten for each one), the blank line, then the
        // body bytes already read.
        let host_at = c.req.len();
        c.req.extend_from_slice(b"\r\n");
        let body = match BodyInHand::take(c, head) {
            Ok(body) => body,
            Err(e) => {
                w.cells.refused.inc();
                return self.fail(c, head, None, e, true).await;
            }
        };
        let mut tried: Vec<usize> = Vec::new();
        let mut retried: Vec<(SocketAddr, String)> = Vec::new();
        let mut host_len = 0;
        let mut last: Option<(SocketAddr, ProxyError, bool)> = None;
        loop {
            // One reading of the clock per attempt: the pick, its pooled connection's age.
            let now = Instant::now();
            let Some((index, backend)) = self.backends.pick(key, now, &tried) else { break };
            // In flight until this attempt ends, however it ends (counted by the load-aware
            // strategies only); it learns the time to the response head, or what a failure cost.
            let mut in_flight = self.backends.track(index);
            let attempt = self.backends.tracks_load().then_some(now);
            // Another attempt after a failure: a retry, counted now that there is a backend for it.
            if let Some(&before) = tried.last() {
                w.cells.retries.inc();
                if let Some(b) = w.backend(before) {
                    b.retried.inc();
                }
            }
            if !head.has_host {
                let line = format!("Host: {backend}\r\n");
                c.req.splice(host_at..host_at + host_len, line.bytes());
                host_len = line.len();
            }
            let forwarded = self.forward(w, c, head, (index, backend, now), &body, shutdown).await;
            match (&forwarded, attempt) {
                (Ok(outcome), Some(t)) => in_flight.answered(outcome.head_after.unwrap_or_else(|| t.elapsed())),
                // A failure costs at least a connect timeout, so a backend that refuses at once
                // does not look like the fastest.
                (Err(_), Some(t)) => in_flight.answered(t.elapsed().max(self.connect_timeout)),
                (_, None) => {}
            }
            drop(in_flight);
            match forwarded {
                Ok(mut outcome) => {
                    outcome.retried = retried;
                    if let Some(b) = w.backend(index) {
                        // A response cut short is the backend's failure, not an answer.
                        if outcome.cut_short {
                            b.error(HttpError::Broken);
                        } else {
                            b.response(outcome.status);
                        }
                        b.bytes_received.add(outcome.received);
                        if let Some(d) = outcome.head_after {
                            b.latency.record(d);
                        }
                    }
                    if outcome.cut_short {
                        self.backends.failed(index, Instant::now(), "broke off its response");
                    } else if outcome.status >= 500 {
                        self.backends.failed(index, Instant::now(), &format!("answered {}", outcome.status));
                    } else {
                        self.backends.succeeded(index);
                    }
                    return outcome;
                }
                Err(f) => {
                    if let (Some(cause), Some(b)) = (f.error.cause(), w.backend(index)) {
                        b.error(cause);
                    }
                    if f.blame_backend {
                        self.backends.failed(index, Instant::now(), &f.error.to_string());
                    }
                    let again = f.retry && tried.len() < self.retries as usize;
                    // Every failure is noted; the last one becomes the answer (popped below).
                    retried.push((backend, f.error.to_string()));
                    last = Some((backend, f.error, f.body_unread));
                    if !again {
                        break;
                    }
                    tracing::debug!("{}: {backend} failed; trying another backend", self.name);
                    tried.push(index);
                }
            }
        }
        let mut outcome = match last {
            Some((backend, e, body_unread)) => self.fail(c, head, Some(backend), e, body_unread).await,
            None => {
                w.cells.no_backend.inc();
                self.fail(c, head, None, ProxyError::NoBackend, !body.whole).await
            }
        };
        // The last failure is the answer itself; the ones before it were retried.
        retried.pop();
        outcome.retried = retried;
        outcome
    }

    /// Sends the request to `backend` (once more on a fresh connection if a pooled one turns
    /// out dead before answering) and streams the response back.
    #[allow(clippy::too_many_arguments)]
    async fn forward(
        &self,
        w: &Worker,
        c: &mut Conn,
        head: &RequestHead,
        (index, backend, now): (usize, SocketAddr, Instant),
        body: &BodyInHand,
        shutdown: &CancellationToken,
    ) -> Result<Outcome, Failure> {
        let pool = w.pools.get(index);
        let cells = w.backend(index);
        let mut pooled = pool.and_then(|p| p.take(cells, now));
        // Only a request that may be sent twice is sent again after the backend may have seen
        // part of it.
        let replayable = body.whole && head.idempotent;
        // One attempt, however many connections it takes (a dead pooled one is replaced).
        if let Some(b) = cells {
            b.requests.inc();
        }
        loop {
            let reused = pooled.is_some();
            let mut upstream = match pooled.take() {
                Some(s) => s,
                // Nothing was sent: always safe to try another backend.
                None => match self.connect(backend).await {
                    Ok(s) => Upstream::new(s, &w.cells, index),
                    Err(e) => {
                        let ours = matches!(e, ProxyError::Resources(_));
                        return Err(Failure { error: e, retry: !ours, blame_backend: !ours, body_unread: !body.whole });
                    }
                },
            };
            if let Some(b) = cells {
                b.bytes_sent.add(c.req.len() as u64);
            }
            if let Err(e) = write_within(&mut upstream, &c.req, self.timeout).await {
                if reused && replayable {
                    continue;
                }
                let error = self.write_error(backend, e);
                return Err(Failure { error, retry: replayable, blame_backend: true, body_unread: !body.whole });
            }
            let mut chunked = body.chunked.clone();
            if !body.whole {
                let sent =
                    self.stream_request_body(c, &mut upstream, head.framing, body.left, &mut chunked, backend, cells);
                match sent.await {
                    Ok(()) => {}
                    // The backend stopped taking the body: it may have answered already (413,
                    // 401 before reading an upload), and that answer is the client's.
                    Err((e @ (ProxyError::Backend(..) | ProxyError::Reset(..)), unread)) => {
                        c.bbuf.clear();
                        if let Ok((outcome, _)) = self.relay_response(c, &mut upstream, head, backend, true).await {
                            return Ok(outcome);
                        }
                        return Err(Failure { error: e, retry: false, blame_backend: true, body_unread: unread });
                    }
                    // It stopped reading without closing: if it said something first (a 413 it
                    // will not take back), that is the answer; otherwise it timed out.
                    Err((e @ ProxyError::Timeout(..), unread)) => {
                        let said = tokio::time::timeout(Duration::from_millis(10), upstream.readable()).await;
                        if matches!(said, Ok(Ok(()))) {
                            c.bbuf.clear();
                            if let Ok((outcome, _)) = self.relay_response(c, &mut upstream, head, backend, true).await {
                                return Ok(outcome);
                            }
                        }
                        return Err(Failure { error: e, retry: false, blame_backend: true, body_unread: unread });
                    }
                    Err((error, unread)) => {
                        return Err(Failure { error, retry: false, blame_backend: false, body_unread: unread });
                    }
                }
            }
            c.bbuf.clear();
            let close = shutdown.is_cancelled();
            match self.relay_response(c, &mut upstream, head, backend, close).await {
                Ok((outcome, reusable)) => {
                    if reusable {
                        if let Some(pool) = pool {
                            pool.put(upstream, cells, now);
                        }
                    }
                    return Ok(outcome);
                }
                // A pooled connection the backend had already closed: replay on a fresh one.
                Err(Relay::NoResponse(_)) if reused && replayable => continue,
                // Reset or closed without a word, or no answer in time: another backend may
                // take it if it can be sent twice (nginx's `proxy_next_upstream error timeout`).
                Err(Relay::NoResponse(e)) => {
                    return Err(Failure { error: e, retry: replayable, blame_backend: true, body_unread: !body.whole });
                }
                Err(Relay::BeforeHead(e)) => {
                    let timeout = matches!(e, ProxyError::Timeout(..));
                    let blame_backend = !matches!(e, ProxyError::Client(_));
                    return Err(Failure {
                        error: e,
                        retry: timeout && replayable,
                        blame_backend,
                        body_unread: !body.whole,
                    });
                }
                // The client already has the head: it can only be closed. Whose fault it was
                // decides whether the backend is blamed; the log keeps the status it sent.
                Err(Relay::AfterHead { backend_failed, so_far }) => {
                    return Ok(Outcome {
                        keep_client: false,
                        cut_short: backend_failed,
                        client_left: !backend_failed,
                        ..so_far
                    });
                }
            }
        }
    }

    /// A failed write to `backend`: a timeout is a 504 (it stopped reading), the rest a 502.
    fn write_error(&self, backend: SocketAddr, e: io::Error) -> ProxyError {
        if e.kind() == io::ErrorKind::TimedOut {
            ProxyError::Timeout(backend, self.timeout)
        } else {
            ProxyError::io(backend, "write", e)
        }
    }

    async fn connect(&self, backend: SocketAddr) -> Result<TcpStream, ProxyError> {
        match tokio::time::timeout(self.connect_timeout, TcpStream::connect(backend)).await {
            Err(_) => Err(ProxyError::ConnectTimeout(backend, self.connect_timeout)),
            Ok(Err(e)) if out_of_resources(&e) => Err(ProxyError::Resources(e)),
            Ok(Err(e)) => Err(ProxyError::Connect(backend, e)),
            Ok(Ok(s)) => {
                let _ = s.set_nodelay(true);
                Ok(s)
            }
        }
    }

    /// Streams the rest of a request body from the client to the backend.
    #[allow(clippy::too_many_arguments)]
    async fn stream_request_body(
        &self,
        c: &mut Conn,
        upstream: &mut TcpStream,
        framing: Framing,
        mut left: u64,
        chunked: &mut Chunked,
        backend: SocketAddr,
        cells: Option<&HttpBackendCells>,
    ) -> Result<(), (ProxyError, bool)> {
        // A client that pauses its body longer than the limit is told so (408); one that left
        // is not.
        let pause = self.head_timeout;
        let client_err = |e: io::Error| {
            let error = if e.kind() == io::ErrorKind::TimedOut {
                ProxyError::ClientTimeout(pause)
            } else {
                ProxyError::Client(e)
            };
            (error, true)
        };
        loop {
            let done = match framing {
                Framing::Length(_) => left == 0,
                _ => chunked.is_done(),
            };
            if done {
                return Ok(());
            }
            if c.cbuf.is_empty() {
                match fill_within(&mut c.cbuf, &mut c.client, self.head_timeout).await {
                    Ok(0) => return Err(client_err(io::ErrorKind::UnexpectedEof.into())),
                    Ok(_) => {}
                    Err(e) => return Err(client_err(e)),
                }
            }
            let take = match framing {
                Framing::Length(_) => {
                    let n = (c.cbuf.bytes().len() as u64).min(left) as usize;
                    left -= n as u64;
                    n
                }
                _ => chunked.feed(c.cbuf.bytes(), |_| {}).map_err(|e| (ProxyError::BadBody(e), true))?,
            };
            write_within(upstream, &c.cbuf.bytes()[..take], self.timeout)
                .await
                .map_err(|e| (self.write_error(backend, e), true))?;
            if let Some(b) = cells {
                b.bytes_sent.add(take as u64);
            }
            c.cbuf.consume(take);
        }
    }

    /// Reads the response head (relaying 1xx), then streams head and body to the client.
    /// Returns the outcome and whether the backend connection can be pooled.
    async fn relay_response(
        &self,
        c: &mut Conn,
        upstream: &mut TcpStream,
        head: &RequestHead,
        backend: SocketAddr,
        close: bool,
    ) -> Result<(Outcome, bool), Relay> {
        let asked = Instant::now();
        let deadline = asked + self.timeout;
        let mut received_any = false;
        let resp = loop {
            let parsed = if c.bbuf.is_empty() {
                None
            } else {
                h1::parse_response(c.bbuf.bytes(), head.is_head, !head.http10, &mut c.out)
                    .map_err(|e| Relay::BeforeHead(ProxyError::Backend(backend, e.to_string())))?
            };
            match parsed {
                Some(r) if (100..200).contains(&r.status) => {
                    c.bbuf.consume(r.len);
                    if !head.http10 {
                        c.out.extend_from_slice(b"\r\n");
                        write_within(&mut c.client, &c.out, self.timeout)
                            .await
                            .map_err(|e| Relay::BeforeHead(ProxyError::Client(e)))?;
                    }
                    continue;
                }
                Some(r) => break r,
                None => {}
            }
            let got_nothing = !received_any;
            received_any = true;
            let filled = c.alarm.within(deadline, c.bbuf.fill(upstream)).await;
            match filled.unwrap_or_else(|| Err(io::ErrorKind::TimedOut.into())) {
                Ok(0) if got_nothing => {
                    return Err(Relay::NoResponse(ProxyError::Backend(
                        backend,
                        "closed the connection without responding".into(),
                    )));
                }
                Ok(0) => {
                    return Err(Relay::BeforeHead(ProxyError::Backend(
                        backend,
                        "closed the connection mid-head".into(),
                    )));
                }
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::TimedOut => {
                    return Err(Relay::BeforeHead(ProxyError::Timeout(backend, self.timeout)));
                }
                Err(e) if got_nothing => {
                    return Err(Relay::NoResponse(ProxyError::io(backend, "", e)));
                }
                Err(e) => {
                    return Err(Relay::BeforeHead(ProxyError::io(backend, "", e)));
                }
            }
        };
        let head_after = asked.elapsed();
        c.bbuf.consume(resp.len);
        let dechunk = head.http10 && resp.framing == Framing::Chunked;
        let keep_client = head.keep_alive && resp.framing != Framing::UntilClose && !dechunk && !close;
        if !keep_client {
            c.out.extend_from_slice(b"Connection: close\r\n");
        } else if head.http10 {
            c.out.extend_from_slice(b"Connection: keep-alive\r\n");
        }
        c.out.extend_from_slice(b"\r\n");
        let mut outcome = Outcome {
            backend: Some(backend),
            status: resp.status,
            keep_client,
            cut_short: false,
            client_left: false,
            retried: Vec::new(),
            head_after: Some(head_after),
            received: resp.len as u64,
        };

        // The body: the first bytes travel with the head, the rest as it arrives.
        let mut left = match resp.framing {
            Framing::Length(n) => n,
            _ => 0,
        };
        let mut chunked = Chunked::default();
        let mut first = true;
        loop {
            let (take, done) = match resp.framing {
                Framing::Empty => (0, true),
                Framing::Length(_) => {
                    let n = (c.bbuf.bytes().len() as u64).min(left) as usize;
                    left -= n as u64;
                    (n, left == 0)
                }
                Framing::Chunked => {
                    let input = c.bbuf.bytes();
                    let used = if dechunk {
                        let out = &mut c.out;
                        chunked.feed(input, |r| out.extend_from_slice(&input[r]))
                    } else {
                        chunked.feed(input, |_| {})
                    };
                    let Ok(used) = used else {
                        return Err(Relay::AfterHead { backend_failed: true, so_far: outcome });
                    };
                    (used, chunked.is_done())
                }
                Framing::UntilClose => (c.bbuf.bytes().len(), false),
            };
            if !dechunk {
                c.out.extend_from_slice(&c.bbuf.bytes()[..take]);
            }
            c.bbuf.consume(take);
            outcome.received += take as u64;
            if !c.out.is_empty() || first {
                if write_within(&mut c.client, &c.out, self.timeout).await.is_err() {
                    return Err(Relay::AfterHead { backend_failed: false, so_far: outcome });
                }
                c.out.clear();
                first = false;
            }
            if done {
                // Bytes after the response mean the backend is confused: do not reuse it.
                let reusable = resp.reusable && c.bbuf.is_empty();
                return Ok((outcome, reusable));
            }
            match fill_within(&mut c.bbuf, upstream, self.timeout).await {
                Ok(0) if resp.framing == Framing::UntilClose => return Ok((outcome, false)),
                Ok(0) | Err(_) => return Err(Relay::AfterHead { backend_failed: true, so_far: outcome }),
                Ok(_) => {}
            }
        }
    }

    /// Answers an error the client can still be told about (or just closes if it cannot).
    async fn fail(
        &self,
        c: &mut Conn,
        head: &RequestHead,
        backend: Option<SocketAddr>,
        e: ProxyError,
        body_unread: bool,
    ) -> Outcome {
        let status = e.status();
        if matches!(e, ProxyError::Client(_)) {
            return Outcome::answer(backend, status, false);
        }
        if let ProxyError::Resources(err) = &e {
            let name = &self.name;
            self.resource_warn
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .warn(Instant::now(), || format!("http balancer \"{name}\": no connection to a backend: {err}"));
        }
        // The unread rest of a request body would be taken for the next request: close instead.
        // Out of descriptors, closing this one is what gives one back.
        let keep_client = head.keep_alive && !body_unread && !matches!(e, ProxyError::Resources(_));
        let mut page = error_page(status, &e.to_string(), !keep_client);
        if head.is_head {
            // A HEAD response has no body, whatever its Content-Length says.
            let end = page.windows(4).position(|w| w == b"\r\n\r\n").map_or(page.len(), |i| i + 4);
            page.truncate(end);
        }
        let written = write_within(&mut c.client, &page, self.timeout).await.is_ok();
        Outcome::answer(backend, status, keep_client && written)
    }
}

/// Whether an error is ours (no descriptors, no memory), not the backend's.
fn out_of_resources(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM))
}

/// The part of a request body read with its head, already appended to the outgoing bytes.
struct BodyInHand {
    /// The whole body is in hand (so the request can be sent again).
    whole: bool,
    /// Bytes of a `Content-Length` body still to come from the client.
    left: u64,
    /// The chunked decoder's state after the bytes in hand.
    chunked: Chunked,
}

impl BodyInHand {
    /// Moves the body bytes read with the head from the client buffer to the outgoing bytes.
    fn take(c: &mut Conn, head: &RequestHead) -> Result<Self, ProxyError> {
        let mut chunked = Chunked::default();
        let mut left = 0;
        let whole = match head.framing {
            Framing::Empty | Framing::UntilClose => true,
            Framing::Length(n) => {
                let have = (c.cbuf.bytes().len() as u64).min(n) as usize;
                c.req.extend_from_slice(&c.cbuf.bytes()[..have]);
                c.cbuf.consume(have);
                left = n - have as u64;
                left == 0
            }
            Framing::Chunked => {
                let used = chunked.feed(c.cbuf.bytes(), |_| {}).map_err(ProxyError::BadBody)?;
                c.req.extend_from_slice(&c.cbuf.bytes()[..used]);
                c.cbuf.consume(used);
                chunked.is_done()
            }
        };
        Ok(Self { whole, left, chunked })
    }
}

/// Why one attempt at a backend failed, and what may follow.
struct Failure {
    error: ProxyError,
    /// Whether another backend may take the request.
    retry: bool,
    /// Whether the backend caused it (counts towards ejecting it).
    blame_backend: bool,
    /// Whether part of the request body is still unread on the client connection.
    body_unread: bool,
}

/// How relaying a response failed.
enum Relay {
    /// Nothing at all came back: safe to replay the request elsewhere.
    NoResponse(ProxyError),
    /// Failed before the client saw anything: the client gets an error page.
    BeforeHead(ProxyError),
    /// Failed after the head went out: the client connection can only be closed.
    AfterHead { backend_failed: bool, so_far: Outcome },
}

/// A complete short response of our own.
fn error_page(status: u16, detail: &str, close: bool) -> Vec<u8> {
    let reason = match status {
        400 => "Bad Request",
        408 => "Request Timeout",
        431 => "Request Header Fields Too Large",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        _ => "Error",
    };
    let body = format!("{status} {reason}: {detail}\n");
    let connection = if close { "Connection: close\r\n" } else { "" };
    format!(
        "HTTP/1.1 {status} {reason}\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: {}\r\n{connection}\r\n{body}",
        body.len()
    )
    .into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A connection on loopback: our end (as `serve_client` has it) and the client's.
    async fn connection() -> (Conn, TcpStream) {
        let listener = TcpListener::bind("127.0.33.1:0").await.unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap()).await.unwrap();
        let (ours, peer) = listener.accept().await.unwrap();
        // A new socket starts out readable to the runtime until a read finds nothing.
        ours.readable().await.unwrap();
        assert_eq!(ours.try_read(&mut [0u8; 1]).unwrap_err().kind(), io::ErrorKind::WouldBlock);
        (Conn::new(ours, peer), client)
    }

    #[tokio::test(start_paused = true)]
    async fn the_answer_timer_ends_each_wait_at_its_own_deadline() {
        let begun = tokio::time::Instant::now();
        let at = |s: u64| (begun + Duration::from_secs(s)).into_std();
        let since = || begun.elapsed().as_secs();
        let never = std::future::pending::<()>;
        let mut alarm = Alarm(None);
        assert_eq!(alarm.within(at(30), never()).await, None);
        assert_eq!(since(), 30, "the first wait ends at its deadline");
        let answer = tokio::time::sleep(Duration::from_secs(10));
        assert_eq!(alarm.within(at(60), answer).await, Some(()));
        assert_eq!(since(), 40, "an answer in time ends the wait");
        // The timer was left at 60 s: it fires early and is moved on to this wait's deadline.
        assert_eq!(alarm.within(at(70), never()).await, None);
        assert_eq!(since(), 70);
        // A deadline earlier than the timer's moves it back (a shorter wait after a longer one).
        let answer = tokio::time::sleep(Duration::from_secs(10));
        assert_eq!(alarm.within(at(300), answer).await, Some(()));
        assert_eq!(since(), 80);
        assert_eq!(alarm.within(at(90), never()).await, None);
        assert_eq!(since(), 90);
    }

    #[tokio::test(start_paused = true)]
    async fn an_idle_client_is_let_go_a_whole_idle_timeout_after_its_last_request() {
        let shutdown = CancellationToken::new();
        let (mut c, mut client) = connection().await;
        let begun = tokio::time::Instant::now();
        let mut idle =
            Idle { sleep: std::pin::pin!(tokio::time::sleep(CLIENT_IDLE_TIMEOUT)), last: tokio::time::Instant::now() };
        let mut stop = std::pin::pin!(shutdown.cancelled());
        // A request comes: the wait ends at once.
        client.write_all(b"GET / HTTP/1.1\r\n").await.unwrap();
        assert!(wait_for_request(&mut c, &mut idle, stop.as_mut(), &shutdown).await);
        assert!(c.cbuf.fill(&mut c.client).await.unwrap() > 0);
        // Its exchange ends 50 s into the connection; then nothing more comes. The timer set
        // for 60 s after the connection began does not let it go: 60 s after that request does.
        tokio::time::advance(Duration::from_secs(50)).await;
        idle.last = tokio::time::Instant::now();
        assert!(!wait_for_request(&mut c, &mut idle, stop.as_mut(), &shutdown).await);
        assert_eq!(begun.elapsed().as_secs(), 110, "let go 60 s after its last request");
        // A stop lets a quiet client go after the grace period, not the idle timeout.
        let (mut c, _client) = connection().await;
        let begun = tokio::time::Instant::now();
        let mut idle =
            Idle { sleep: std::pin::pin!(tokio::time::sleep(CLIENT_IDLE_TIMEOUT)), last: tokio::time::Instant::now() };
        let stopping = shutdown.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(5)).await;
            stopping.cancel();
        });
        assert!(!wait_for_request(&mut c, &mut idle, stop.as_mut(), &shutdown).await);
        assert_eq!(begun.elapsed(), Duration::from_secs(5) + STOP_GRACE);
    }

    #[test]
    fn errors_map_to_the_status_that_names_the_culprit() {
        let b: SocketAddr = "127.0.0.1:1".parse().unwrap();
        assert_eq!(ProxyError::NoBackend.status(), 503);
        assert_eq!(ProxyError::Connect(b, io::ErrorKind::ConnectionRefused.into()).status(), 502);
        assert_eq!(ProxyError::Backend(b, "closed".into()).status(), 502);
        assert_eq!(ProxyError::Timeout(b, Duration::from_secs(1)).status(), 504);
        assert_eq!(ProxyError::ConnectTimeout(b, Duration::from_secs(1)).status(), 504);
    }

    #[test]
    fn error_pages_are_complete_responses() {
        let page = String::from_utf8(error_page(502, "backend 127.0.0.1:1 could not be reached", true)).unwrap();
        let (head, body) = page.split_once("\r\n\r\n").unwrap();
        assert!(head.starts_with("HTTP/1.1 502 Bad Gateway\r\n"));
        assert!(head.contains(&format!("Content-Length: {}", body.len())));
        assert!(head.contains("Connection: close"));
        assert_eq!(body, "502 Bad Gateway: backend 127.0.0.1:1 could not be reached\n");
    }
}
