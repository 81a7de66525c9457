//! Balancer statistics: what each worker counts on the data path, and the snapshot sinks read.
//!
//! Every worker thread owns its cells and is their only writer, so counting is a plain load and
//! store of a cache line no other core writes (no lock, no contended atomic read-modify-write);
//! a reader sums the workers' cells when it takes a [`BalancerSnapshot`]. A snapshot may see one
//! worker's counts a few nanoseconds older than another's, never a torn value.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use arc_swap::ArcSwap;
use serde::Serialize;

use crate::balance::{Admin, BackendSet};

/// A count written by one thread only.
#[derive(Debug, Default)]
pub struct Counter(AtomicU64);

impl Counter {
    /// Adds `n`. Only the owning worker may call this: it is a load and a store, not an atomic
    /// add, which is what makes it cost next to nothing.
    #[inline]
    pub fn add(&self, n: u64) {
        self.0.store(self.0.load(Relaxed).wrapping_add(n), Relaxed);
    }

    #[inline]
    pub fn inc(&self) {
        self.add(1);
    }

    pub fn get(&self) -> u64 {
        self.0.load(Relaxed)
    }
}

/// A level (connections open) written by one thread only; may go below zero in one worker
/// when another opened what this one closes, which summing evens out.
#[derive(Debug, Default)]
pub struct Gauge(AtomicI64);

impl Gauge {
    #[inline]
    pub fn up(&self) {
        self.0.store(self.0.load(Relaxed) + 1, Relaxed);
    }

    #[inline]
    pub fn down(&self) {
        self.0.store(self.0.load(Relaxed) - 1, Relaxed);
    }

    #[inline]
    pub fn set(&self, v: i64) {
        self.0.store(v, Relaxed);
    }

    pub fn get(&self) -> i64 {
        self.0.load(Relaxed)
    }
}

/// Upper bounds of the latency buckets in milliseconds (steps of about 1.5x, so a percentile
/// read from them is within about 20 %); a last bucket takes the rest (+Inf).
pub const LATENCY_BOUNDS_MS: [f64; 33] = [
    0.1, 0.15, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 7.5, 10.0, 15.0, 20.0, 30.0, 50.0, 75.0, 100.0, 150.0,
    200.0, 300.0, 500.0, 750.0, 1000.0, 1500.0, 2000.0, 3000.0, 5000.0, 7500.0, 10000.0, 30000.0, 60000.0,
];
const BUCKETS: usize = LATENCY_BOUNDS_MS.len() + 1;
/// The bounds in microseconds, for the hot path's comparison.
const BOUNDS_US: [u64; 33] = {
    let mut us = [0u64; 33];
    let mut i = 0;
    while i < 33 {
        us[i] = (LATENCY_BOUNDS_MS[i] * 1000.0) as u64;
        i += 1;
    }
    us
};

/// A latency histogram one worker records into.
#[derive(Debug)]
pub struct LatencyCells {
    buckets: [Counter; BUCKETS],
    sum_us: Counter,
}

impl Default for LatencyCells {
    fn default() -> Self {
        Self { buckets: std::array::from_fn(|_| Counter::default()), sum_us: Counter::default() }
    }
}

impl LatencyCells {
    #[inline]
    pub fn record(&self, d: Duration) {
        let us = u64::try_from(d.as_micros()).unwrap_or(u64::MAX);
        let i = BOUNDS_US.partition_point(|&b| b < us);
        self.buckets[i].inc();
        self.sum_us.add(us);
    }

    fn add_to(&self, h: &mut Histogram) {
        for (c, b) in h.counts.iter_mut().zip(&self.buckets) {
            *c += b.get();
        }
        h.sum_ms += self.sum_us.get() as f64 / 1000.0;
    }
}

/// A latency distribution: counts per bucket of [`LATENCY_BOUNDS_MS`] (not cumulative; the
/// last is above the last bound). Histograms merge by adding counts.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Histogram {
    /// The buckets' upper bounds ([`LATENCY_BOUNDS_MS`]); the last count is above them all.
    pub bounds_ms: &'static [f64],
    pub counts: Vec<u64>,
    pub sum_ms: f64,
}

impl Default for Histogram {
    fn default() -> Self {
        Self { bounds_ms: &LATENCY_BOUNDS_MS, counts: vec![0; BUCKETS], sum_ms: 0.0 }
    }
}

impl Histogram {
    pub fn count(&self) -> u64 {
        self.counts.iter().sum()
    }

    pub fn merge(&mut self, other: &Histogram) {
        for (a, b) in self.counts.iter_mut().zip(&other.counts) {
            *a += b;
        }
        self.sum_ms += other.sum_ms;
    }

    /// The counts since `earlier` (a snapshot of the same cells taken before).
    pub fn since(&self, earlier: &Histogram) -> Histogram {
        Histogram {
            bounds_ms: self.bounds_ms,
            counts: self.counts.iter().zip(&earlier.counts).map(|(a, b)| a.saturating_sub(*b)).collect(),
            sum_ms: (self.sum_ms - earlier.sum_ms).max(0.0),
        }
    }

    /// The `q` quantile (0..=1) in milliseconds, interpolated linearly inside its bucket (as
    /// Prometheus' `histogram_quantile` does); `None` when empty. Above the last bound it
    /// answers the last bound.
    pub fn quantile(&self, q: f64) -> Option<f64> {
        let total = self.count();
        if total == 0 {
            return None;
        }
        let rank = q.clamp(0.0, 1.0) * total as f64;
        let mut seen = 0u64;
        for (i, &n) in self.counts.iter().enumerate() {
            if n > 0 && (seen + n) as f64 >= rank {
                let Some(&upper) = LATENCY_BOUNDS_MS.get(i) else {
                    return LATENCY_BOUNDS_MS.last().copied();
                };
                let lower = if i == 0 { 0.0 } else { LATENCY_BOUNDS_MS[i - 1] };
                let within = ((rank - seen as f64) / n as f64).clamp(0.0, 1.0);
                return Some(lower + (upper - lower) * within);
            }
            seen += n;
        }
        LATENCY_BOUNDS_MS.last().copied()
    }
}

/// Why the proxy could not get an answer from a backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HttpError {
    ConnectRefused,
    ConnectTimeout,
    /// Connecting failed some other way (unreachable, …).
    ConnectFailed,
    ResponseTimeout,
    /// The backend reset the connection.
    Reset,
    /// It closed without a complete response, or sent one we could not parse.
    Broken,
}

impl HttpError {
    pub const ALL: [HttpError; 6] = [
        Self::ConnectRefused,
        Self::ConnectTimeout,
        Self::ConnectFailed,
        Self::ResponseTimeout,
        Self::Reset,
        Self::Broken,
    ];

    /// The label value (`cause`) in metrics and the JSON API.
    pub fn name(self) -> &'static str {
        match self {
            Self::ConnectRefused => "connect_refused",
            Self::ConnectTimeout => "connect_timeout",
            Self::ConnectFailed => "connect_failed",
            Self::ResponseTimeout => "response_timeout",
            Self::Reset => "reset",
            Self::Broken => "broken_response",
        }
    }
}

/// One HTTP worker's counts for one backend.
#[derive(Debug, Default)]
pub struct HttpBackendCells {
    /// Attempts sent to this backend (a retried request counts at each backend it tried).
    pub requests: Counter,
    /// Responses it gave, by class: 1xx (final heads only, so none in practice) to 5xx.
    pub responses: [Counter; 5],
    pub errors: [Counter; HttpError::ALL.len()],
    /// Attempts at this backend that failed and were retried on another.
    pub retried: Counter,
    /// Request bytes sent to it (heads and bodies).
    pub bytes_sent: Counter,
    /// Response bytes relayed from it (heads and bodies).
    pub bytes_received: Counter,
    /// Upstream connections open to it now, busy or pooled.
    pub connections: Gauge,
    /// Of those, idle in the keep-alive pool.
    pub idle: Gauge,
    /// Time from sending the request to the response head.
    pub latency: LatencyCells,
}

impl HttpBackendCells {
    #[inline]
    pub fn response(&self, status: u16) {
        if let Some(c) = self.responses.get(usize::from(status / 100).wrapping_sub(1)) {
            c.inc();
        }
    }

    #[inline]
    pub fn error(&self, e: HttpError) {
        self.errors[e as usize].inc();
    }
}

/// One HTTP worker's counts.
#[derive(Debug, Default)]
pub struct HttpWorkerCells {
    /// Client connections open now, and accepted in all.
    pub clients: Gauge,
    pub clients_accepted: Counter,
    /// Requests from clients, and the statuses they got (ours included: 502, 503, 504, 400…).
    pub requests: Counter,
    pub responses: [Counter; 5],
    /// Requests no backend could take.
    pub no_backend: Counter,
    /// Requests we refused before any backend saw them (malformed, too large, too slow).
    pub refused: Counter,
    /// Clients that left before their answer was complete.
    pub client_aborts: Counter,
    /// Requests sent again to another backend.
    pub retries: Counter,
    pub backends: Box<[HttpBackendCells]>,
}

impl HttpWorkerCells {
    fn new(backends: usize) -> Self {
        Self { backends: (0..backends).map(|_| HttpBackendCells::default()).collect(), ..Self::default() }
    }

    #[inline]
    pub fn response(&self, status: u16) {
        if let Some(c) = self.responses.get(usize::from(status / 100).wrapping_sub(1)) {
            c.inc();
        }
    }
}

/// Why the UDP balancer dropped a datagram.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UdpDrop {
    /// No backend in rotation.
    NoBackend,
    /// No socket for the client's flow (out of descriptors).
    NoFlow,
    /// Sending to the backend failed (its socket buffer full, unreachable).
    SendFailed,
    /// Sending the reply to the client failed.
    ReplyFailed,
    /// A datagram to a flow socket that did not come from a backend.
    Stranger,
}

impl UdpDrop {
    pub const ALL: [UdpDrop; 5] = [Self::NoBackend, Self::NoFlow, Self::SendFailed, Self::ReplyFailed, Self::Stranger];

    /// The label value (`reason`) in metrics and the JSON API.
    pub fn name(self) -> &'static str {
        match self {
            Self::NoBackend => "no_backend",
            Self::NoFlow => "no_flow_socket",
            Self::SendFailed => "send_failed",
            Self::ReplyFailed => "reply_failed",
            Self::Stranger => "not_from_backend",
        }
    }
}

/// One UDP worker's counts for one backend.
#[derive(Debug, Default)]
pub struct UdpBackendCells {
    pub datagrams_sent: Counter,
    pub bytes_sent: Counter,
    pub datagrams_received: Counter,
    pub bytes_received: Counter,
    /// Requests still without a reply when their flow closed (or a later request replaced
    /// them): a lost request, or a reply that never came.
    pub unanswered: Counter,
}

/// One UDP worker's counts.
#[derive(Debug, Default)]
pub struct UdpWorkerCells {
    pub requests: Counter,
    pub replies: Counter,
    pub drops: [Counter; UdpDrop::ALL.len()],
    pub flows: Gauge,
    pub flows_opened: Counter,
    pub flows_evicted: Counter,
    pub flows_expired: Counter,
    pub backends: Box<[UdpBackendCells]>,
}

impl UdpWorkerCells {
    fn new(backends: usize) -> Self {
        Self { backends: (0..backends).map(|_| UdpBackendCells::default()).collect(), ..Self::default() }
    }

    #[inline]
    pub fn dropped(&self, why: UdpDrop) {
        self.drops[why as usize].inc();
    }
}

/// HTTP or UDP.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Proto {
    Http,
    Udp,
}

impl std::fmt::Display for Proto {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Http => "http",
            Self::Udp => "udp",
        })
    }
}

/// Each worker's cells with the backends they count for, in the order of its cells (a reload
/// may give the next workers another list).
#[derive(Debug)]
enum Workers {
    Http(Vec<(Layout, Arc<HttpWorkerCells>)>),
    Udp(Vec<(Layout, Arc<UdpWorkerCells>)>),
}

/// The backends a worker's cells stand for, by index.
type Layout = Arc<[SocketAddr]>;

/// What workers that stopped had counted, per backend: kept so a reload does not reset the
/// counters of the backends that stay (their gauges, all back to zero, are not kept).
#[derive(Debug, Default)]
struct Retired {
    http: HttpTotals,
    http_backends: HashMap<SocketAddr, HttpBackendCounts>,
    udp: UdpTotals,
    udp_backends: HashMap<SocketAddr, UdpBackendCounts>,
}

/// The last health change of a backend, as the feed or an ejection noted it.
#[derive(Debug, Clone)]
struct Change {
    at: SystemTime,
    why: String,
}

/// One balancer's statistics: its workers' cells, its live backend set and the notes on
/// their health. Cheap to clone the `Arc` of; snapshots are taken by sinks.
#[derive(Debug)]
pub struct BalancerStats {
    name: String,
    proto: Proto,
    listen: Mutex<Option<SocketAddr>>,
    strategy: Mutex<String>,
    /// The live set of the balancer's running generation (a reload may swap in another).
    set: ArcSwap<ArcSwap<BackendSet>>,
    started: SystemTime,
    workers: Mutex<(Workers, Retired)>,
    changes: Mutex<HashMap<SocketAddr, Change>>,
    /// Why each backend weighs what it does (the `measured` strategy says so each report).
    weights: Mutex<HashMap<SocketAddr, String>>,
}

impl BalancerStats {
    pub fn new(name: &str, proto: Proto, strategy: &str, set: Arc<ArcSwap<BackendSet>>) -> Self {
        let workers = match proto {
            Proto::Http => Workers::Http(Vec::new()),
            Proto::Udp => Workers::Udp(Vec::new()),
        };
        Self {
            name: name.to_string(),
            proto,
            listen: Mutex::new(None),
            strategy: Mutex::new(strategy.to_string()),
            set: ArcSwap::new(set),
            started: SystemTime::now(),
            workers: Mutex::new((workers, Retired::default())),
            changes: Mutex::new(HashMap::new()),
            weights: Mutex::new(HashMap::new()),
        }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn proto(&self) -> Proto {
        self.proto
    }

    /// The address clients reach the balancer at (known once bound).
    pub fn set_listen(&self, addr: SocketAddr) {
        *self.listen.lock().unwrap_or_else(|p| p.into_inner()) = Some(addr);
    }

    /// The strategy as the sinks show it (a reload may change it).
    pub fn set_strategy(&self, strategy: &str) {
        *self.strategy.lock().unwrap_or_else(|p| p.into_inner()) = strategy.to_string();
    }

    /// Reads the backends of `set` from now on: a reload's next generation of the balancer
    /// counts into the same statistics, so the counters of the backends that stay go on.
    pub fn follow(&self, set: Arc<ArcSwap<BackendSet>>) {
        self.set.store(set);
    }

    /// The backends the next worker's cells stand for.
    fn layout(&self) -> Layout {
        self.set.load().load().backends().iter().map(|b| b.addr).collect()
    }

    /// Cells for one more HTTP worker (each worker takes its own at start).
    pub fn http_worker(&self) -> Arc<HttpWorkerCells> {
        let layout = self.layout();
        let cells = Arc::new(HttpWorkerCells::new(layout.len()));
        if let (Workers::Http(w), _) = &mut *self.workers.lock().unwrap_or_else(|p| p.into_inner()) {
            w.push((layout, cells.clone()));
        }
        cells
    }

    /// Cells for one more UDP worker.
    pub fn udp_worker(&self) -> Arc<UdpWorkerCells> {
        let layout = self.layout();
        let cells = Arc::new(UdpWorkerCells::new(layout.len()));
        if let (Workers::Udp(w), _) = &mut *self.workers.lock().unwrap_or_else(|p| p.into_inner()) {
            w.push((layout, cells.clone()));
        }
        cells
    }

    /// Notes why backend `addr` changed state (left or rejoined the rotation, was ejected).
    pub fn note(&self, addr: SocketAddr, why: impl Into<String>) {
        let change = Change { at: SystemTime::now(), why: why.into() };
        self.changes.lock().unwrap_or_else(|p| p.into_inner()).insert(addr, change);
    }

    /// Says why backend `addr` weighs what it does now (replacing what was said before), e.g.
    /// `weight 0.18: rtt 4.2 ms (3.8× the median), loss 12%`.
    pub fn explain_weight(&self, addr: SocketAddr, why: impl Into<String>) {
        self.weights.lock().unwrap_or_else(|p| p.into_inner()).insert(addr, why.into());
    }

    /// Everything counted so far, summed over the workers, with each backend's state at `now`.
    pub fn snapshot(&self, now: Instant) -> BalancerSnapshot {
        let set = self.set.load().load_full();
        let changes = self.changes.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let weights = self.weights.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let wall = SystemTime::now();
        let mut backends: Vec<BackendSnapshot> = set
            .backends()
            .iter()
            .map(|b| {
                let state = if b.admin == Admin::Disabled {
                    BackendState::Disabled
                } else if b.admin == Admin::Draining {
                    BackendState::Draining
                } else if !b.healthy {
                    BackendState::Down
                } else if !b.available(now) {
                    BackendState::Ejected
                } else {
                    BackendState::Up
                };
                let mut change = changes.get(&b.addr).cloned();
                // An ejection that is over ended by itself (no event marks it): it is the change.
                if let Some(until) = b.ejected_until.filter(|&t| t <= now) {
                    let ended = wall - (now - until);
                    if b.healthy && change.as_ref().is_none_or(|c| c.at < ended) {
                        change = Some(Change { at: ended, why: "back in rotation: its ejection ended".into() });
                    }
                }
                BackendSnapshot {
                    addr: b.addr,
                    state,
                    since: crate::clock::UtcTime::from_system(change.as_ref().map_or(self.started, |c| c.at)).rfc3339(),
                    why: change.map(|c| c.why),
                    ejected_for_ms: b
                        .ejected_until
                        .filter(|&t| t > now)
                        .map(|t| u64::try_from((t - now).as_millis()).unwrap_or(u64::MAX)),
                    weight: b.weight,
                    measured: b.measured,
                    effective_weight: b.effective_weight(),
                    // A reason from the probes says something only while they set the weight.
                    weight_why: (set.strategy() == crate::balance::Strategy::Measured)
                        .then(|| weights.get(&b.addr).cloned())
                        .flatten(),
                    http: None,
                    udp: None,
                }
            })
            .collect();
        let addrs: Vec<SocketAddr> = backends.iter().map(|b| b.addr).collect();
        let mut workers = self.workers.lock().unwrap_or_else(|p| p.into_inner());
        let (workers, retired) = &mut *workers;
        let (http, udp) = match workers {
            Workers::Http(w) => {
                retire_http(w, retired);
                let (totals, per) = sum_http(w, retired, &addrs);
                for (b, c) in backends.iter_mut().zip(per) {
                    b.http = Some(c);
                }
                (Some(totals), None)
            }
            Workers::Udp(w) => {
                retire_udp(w, retired);
                let (totals, per) = sum_udp(w, retired, &addrs);
                for (b, c) in backends.iter_mut().zip(per) {
                    b.udp = Some(c);
                }
                (None, Some(totals))
            }
        };
        BalancerSnapshot {
            name: self.name.clone(),
            proto: self.proto,
            listen: *self.listen.lock().unwrap_or_else(|p| p.into_inner()),
            strategy: self.strategy.lock().unwrap_or_else(|p| p.into_inner()).clone(),
            started: crate::clock::UtcTime::from_system(self.started).rfc3339(),
            http,
            udp,
            backends,
        }
    }
}

fn classes(cells: &[Counter; 5], into: &mut Classes) {
    into.c1xx += cells[0].get();
    into.c2xx += cells[1].get();
    into.c3xx += cells[2].get();
    into.c4xx += cells[3].get();
    into.c5xx += cells[4].get();
}

/// Where each of a worker's cells goes among `addrs` (the backends shown), by its layout.
fn places(layout: &[SocketAddr], addrs: &[SocketAddr]) -> Vec<Option<usize>> {
    if layout == addrs {
        return (0..addrs.len()).map(Some).collect();
    }
    layout.iter().map(|a| addrs.iter().position(|b| b == a)).collect()
}

/// Folds the counts of the HTTP workers that stopped (nobody else holds their cells, so they
/// can no longer change) into `retired`, and lets their cells go.
fn retire_http(workers: &mut Vec<(Layout, Arc<HttpWorkerCells>)>, retired: &mut Retired) {
    workers.retain(|(layout, w)| {
        if Arc::strong_count(w) > 1 {
            return true;
        }
        let (t, per) = sum_http(&[(layout.clone(), w.clone())], &Retired::default(), layout);
        add_http_totals(&mut retired.http, &t);
        for (addr, c) in layout.iter().zip(per) {
            add_http_backend(retired.http_backends.entry(*addr).or_default(), &c);
        }
        false
    });
}

fn add_http_totals(into: &mut HttpTotals, t: &HttpTotals) {
    into.clients_accepted += t.clients_accepted;
    into.requests += t.requests;
    add_classes(&mut into.responses, &t.responses);
    into.no_backend += t.no_backend;
    into.refused += t.refused;
    into.client_aborts += t.client_aborts;
    into.retries += t.retries;
}

fn add_classes(into: &mut Classes, c: &Classes) {
    into.c1xx += c.c1xx;
    into.c2xx += c.c2xx;
    into.c3xx += c.c3xx;
    into.c4xx += c.c4xx;
    into.c5xx += c.c5xx;
}

fn add_http_backend(into: &mut HttpBackendCounts, c: &HttpBackendCounts) {
    into.requests += c.requests;
    add_classes(&mut into.responses, &c.responses);
    for (k, v) in &c.errors {
        *into.errors.entry(k).or_default() += v;
    }
    into.retried += c.retried;
    into.bytes_sent += c.bytes_sent;
    into.bytes_received += c.bytes_received;
    into.latency.merge(&c.latency);
}

fn sum_http(
    workers: &[(Layout, Arc<HttpWorkerCells>)],
    retired: &Retired,
    addrs: &[SocketAddr],
) -> (HttpTotals, Vec<HttpBackendCounts>) {
    let mut t = HttpTotals::default();
    add_http_totals(&mut t, &retired.http);
    let mut per: Vec<HttpBackendCounts> = addrs
        .iter()
        .map(|a| {
            let mut p = HttpBackendCounts::default();
            if let Some(r) = retired.http_backends.get(a) {
                add_http_backend(&mut p, r);
            }
            p
        })
        .collect();
    for (layout, w) in workers {
        t.clients_active += w.clients.get();
        t.clients_accepted += w.clients_accepted.get();
        t.requests += w.requests.get();
        classes(&w.responses, &mut t.responses);
        t.no_backend += w.no_backend.get();
        t.refused += w.refused.get();
        t.client_aborts += w.client_aborts.get();
        t.retries += w.retries.get();
        for (place, c) in places(layout, addrs).into_iter().zip(w.backends.iter()) {
            let Some(p) = place.and_then(|i| per.get_mut(i)) else { continue };
            p.requests += c.requests.get();
            classes(&c.responses, &mut p.responses);
            for (e, cell) in HttpError::ALL.iter().zip(&c.errors) {
                *p.errors.entry(e.name()).or_default() += cell.get();
            }
            p.retried += c.retried.get();
            p.bytes_sent += c.bytes_sent.get();
            p.bytes_received += c.bytes_received.get();
            p.connections += c.connections.get();
            p.idle += c.idle.get();
            c.latency.add_to(&mut p.latency);
        }
    }
    t.clients_active = t.clients_active.max(0);
    for p in &mut per {
        for e in HttpError::ALL {
            p.errors.entry(e.name()).or_default();
        }
        p.connections = p.connections.max(0);
        p.idle = p.idle.max(0);
    }
    (t, per)
}

/// [`retire_http`] for UDP workers.
fn retire_udp(workers: &mut Vec<(Layout, Arc<UdpWorkerCells>)>, retired: &mut Retired) {
    workers.retain(|(layout, w)| {
        if Arc::strong_count(w) > 1 {
            return true;
        }
        let (t, per) = sum_udp(&[(layout.clone(), w.clone())], &Retired::default(), layout);
        add_udp_totals(&mut retired.udp, &t);
        for (addr, c) in layout.iter().zip(per) {
            add_udp_backend(retired.udp_backends.entry(*addr).or_default(), &c);
        }
        false
    });
}

fn add_udp_totals(into: &mut UdpTotals, t: &UdpTotals) {
    into.requests += t.requests;
    into.replies += t.replies;
    for (k, v) in &t.drops {
        *into.drops.entry(k).or_default() += v;
    }
    into.flows_opened += t.flows_opened;
    into.flows_evicted += t.flows_evicted;
    into.flows_expired += t.flows_expired;
}

fn add_udp_backend(into: &mut UdpBackendCounts, c: &UdpBackendCounts) {
    into.datagrams_sent += c.datagrams_sent;
    into.bytes_sent += c.bytes_sent;
    into.datagrams_received += c.datagrams_received;
    into.bytes_received += c.bytes_received;
    into.unanswered += c.unanswered;
}

fn sum_udp(
    workers: &[(Layout, Arc<UdpWorkerCells>)],
    retired: &Retired,
    addrs: &[SocketAddr],
) -> (UdpTotals, Vec<UdpBackendCounts>) {
    let mut t = UdpTotals::default();
    for d in UdpDrop::ALL {
        t.drops.insert(d.name(), 0);
    }
    add_udp_totals(&mut t, &retired.udp);
    let mut per: Vec<UdpBackendCounts> = addrs
        .iter()
        .map(|a| {
            let mut p = UdpBackendCounts::default();
            if let Some(r) = retired.udp_backends.get(a) {
                add_udp_backend(&mut p, r);
            }
            p
        })
        .collect();
    for (layout, w) in workers {
        t.requests += w.requests.get();
        t.replies += w.replies.get();
        for (d, cell) in UdpDrop::ALL.iter().zip(&w.drops) {
            *t.drops.entry(d.name()).or_default() += cell.get();
        }
        t.flows_open += w.flows.get();
        t.flows_opened += w.flows_opened.get();
        t.flows_evicted += w.flows_evicted.get();
        t.flows_expired += w.flows_expired.get();
        for (place, c) in places(layout, addrs).into_iter().zip(w.backends.iter()) {
            let Some(p) = place.and_then(|i| per.get_mut(i)) else { continue };
            p.datagrams_sent += c.datagrams_sent.get();
            p.bytes_sent += c.bytes_sent.get();
            p.datagrams_received += c.datagrams_received.get();
            p.bytes_received += c.bytes_received.get();
            p.unanswered += c.unanswered.get();
        }
    }
    t.flows_open = t.flows_open.max(0);
    (t, per)
}

/// Responses by status class.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Classes {
    #[serde(rename = "1xx")]
    pub c1xx: u64,
    #[serde(rename = "2xx")]
    pub c2xx: u64,
    #[serde(rename = "3xx")]
    pub c3xx: u64,
    #[serde(rename = "4xx")]
    pub c4xx: u64,
    #[serde(rename = "5xx")]
    pub c5xx: u64,
}

impl Classes {
    /// `(class, count)` pairs, e.g. `("2xx", 10)`.
    pub fn pairs(&self) -> [(&'static str, u64); 5] {
        [("1xx", self.c1xx), ("2xx", self.c2xx), ("3xx", self.c3xx), ("4xx", self.c4xx), ("5xx", self.c5xx)]
    }

    pub fn total(&self) -> u64 {
        self.c1xx + self.c2xx + self.c3xx + self.c4xx + self.c5xx
    }
}

/// An HTTP balancer's own counts (what its clients saw).
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct HttpTotals {
    pub clients_active: i64,
    pub clients_accepted: u64,
    pub requests: u64,
    pub responses: Classes,
    pub no_backend: u64,
    pub refused: u64,
    pub client_aborts: u64,
    pub retries: u64,
}

/// What one backend of an HTTP balancer did.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct HttpBackendCounts {
    pub requests: u64,
    pub responses: Classes,
    /// Failed attempts by cause (every cause present, zero or not).
    pub errors: std::collections::BTreeMap<&'static str, u64>,
    pub retried: u64,
    pub bytes_sent: u64,
    pub bytes_received: u64,
    pub connections: i64,
    pub idle: i64,
    /// Time to the response head.
    pub latency: Histogram,
}

impl HttpBackendCounts {
    pub fn errors_total(&self) -> u64 {
        self.errors.values().sum()
    }
}

/// A UDP balancer's own counts.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct UdpTotals {
    pub requests: u64,
    pub replies: u64,
    /// Dropped datagrams by reason (every reason present).
    pub drops: std::collections::BTreeMap<&'static str, u64>,
    pub flows_open: i64,
    pub flows_opened: u64,
    pub flows_evicted: u64,
    pub flows_expired: u64,
}

impl UdpTotals {
    pub fn dropped(&self) -> u64 {
        self.drops.values().sum()
    }
}

impl std::fmt::Display for UdpTotals {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}, {}, {} dropped, {} opened, {} evicted",
            plural(self.requests, "request", "requests"),
            plural(self.replies, "reply", "replies"),
            self.dropped(),
            plural(self.flows_opened, "flow", "flows"),
            self.flows_evicted
        )
    }
}

/// What one backend of a UDP balancer did.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct UdpBackendCounts {
    pub datagrams_sent: u64,
    pub bytes_sent: u64,
    pub datagrams_received: u64,
    pub bytes_received: u64,
    pub unanswered: u64,
}

/// Whether a backend takes traffic.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum BackendState {
    /// In rotation.
    Up,
    /// Out of rotation by its health checks.
    Down,
    /// Out for a while after failing on the data path.
    Ejected,
    /// Taking no new requests by an operator's word; those under way finish.
    Draining,
    /// Taken out by an operator.
    Disabled,
}

/// One backend in a snapshot.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct BackendSnapshot {
    pub addr: SocketAddr,
    pub state: BackendState,
    /// When its state last changed (the balancer's start while it never did), and why.
    pub since: String,
    pub why: Option<String>,
    /// Time left of an ejection.
    pub ejected_for_ms: Option<u64>,
    /// The configured (or operator-set) weight.
    pub weight: u32,
    /// The factor the `measured` strategy applies to it, from the probes (1 otherwise).
    pub measured: f64,
    /// The weight the strategy uses now: `weight` × `measured`.
    pub effective_weight: f64,
    /// Why it weighs that (under `measured`: the probes' RTT and loss), e.g. `weight 0.18: rtt
    /// 4.2 ms (3.8× the median), loss 12%`.
    pub weight_why: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub http: Option<HttpBackendCounts>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub udp: Option<UdpBackendCounts>,
}

/// One balancer's statistics at one moment.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct BalancerSnapshot {
    pub name: String,
    pub proto: Proto,
    pub listen: Option<SocketAddr>,
    pub strategy: String,
    pub started: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub http: Option<HttpTotals>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub udp: Option<UdpTotals>,
    pub backends: Vec<BackendSnapshot>,
}

impl BalancerSnapshot {
    /// The HTTP balancer's closing line: `N requests (2xx …), …`.
    pub fn http_line(&self) -> Option<String> {
        let t = self.http.as_ref()?;
        let mut classes: Vec<String> =
            t.responses.pairs().iter().filter(|(_, n)| *n > 0).map(|(c, n)| format!("{n} {c}")).collect();
        if t.client_aborts > 0 {
            classes.push(format!("{} left early", t.client_aborts));
        }
        let errors: u64 = self.backends.iter().filter_map(|b| b.http.as_ref()).map(|h| h.errors_total()).sum();
        Some(format!(
            "{} ({}), {} retried, {}, {} with no backend, {}",
            plural(t.requests, "request", "requests"),
            if classes.is_empty() { "none answered".to_string() } else { classes.join(", ") },
            t.retries,
            plural(errors, "backend error", "backend errors"),
            t.no_backend,
            plural(t.clients_accepted, "connection", "connections")
        ))
    }
}

/// `1 request`, `2 requests`.
pub fn plural(n: u64, one: &str, many: &str) -> String {
    if n == 1 { format!("1 {one}") } else { format!("{n} {many}") }
}

/// What the figures of a backend are made of, HTTP or UDP alike.
#[derive(Debug, Clone, Copy, Default)]
pub struct Counts<'a> {
    /// HTTP: attempts sent to it; UDP: datagrams.
    pub requests: u64,
    /// HTTP: failed attempts and 5xx answers; UDP: datagrams sent less replies received (a
    /// reply that comes later than the span counts against the span it was sent in).
    pub errors: u64,
    pub bytes_sent: u64,
    pub bytes_received: u64,
    pub latency: Option<&'a Histogram>,
}

/// A backend's cumulative counts in the terms both protocols share.
pub fn counts(b: &BackendSnapshot) -> Counts<'_> {
    if let Some(h) = &b.http {
        Counts {
            requests: h.requests,
            errors: h.errors_total() + h.responses.c5xx,
            bytes_sent: h.bytes_sent,
            bytes_received: h.bytes_received,
            latency: Some(&h.latency),
        }
    } else if let Some(u) = &b.udp {
        Counts {
            requests: u.datagrams_sent,
            errors: u.datagrams_sent.saturating_sub(u.datagrams_received),
            bytes_sent: u.bytes_sent,
            bytes_received: u.bytes_received,
            latency: None,
        }
    } else {
        Counts::default()
    }
}

/// A backend's figures over the recent reports.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Recent {
    pub requests_per_s: f64,
    /// Errors per request (`None` without requests).
    pub error_pct: Option<f64>,
    /// Its share of the balancer's requests (`None` while the balancer had none).
    pub share_pct: Option<f64>,
    /// Latency quantiles of the answers in the span (HTTP only).
    pub p50_ms: Option<f64>,
    pub p99_ms: Option<f64>,
    pub sent_bytes_per_s: f64,
    pub received_bytes_per_s: f64,
}

/// Each backend's [`Recent`] figures between two snapshots of one balancer `secs` apart (the
/// dashboards take them over the same span, so they agree).
pub fn recent(now: &BalancerSnapshot, then: Option<&BalancerSnapshot>, secs: f64) -> Vec<Recent> {
    let deltas: Vec<(Counts<'_>, Counts<'_>)> = now
        .backends
        .iter()
        .enumerate()
        .map(|(i, b)| {
            let earlier = then.and_then(|t| t.backends.get(i)).filter(|e| e.addr == b.addr).map(counts);
            (counts(b), earlier.unwrap_or_default())
        })
        .collect();
    let total: u64 = deltas.iter().map(|(n, e)| n.requests.saturating_sub(e.requests)).sum();
    let rate = |n: u64| if secs > 0.0 { n as f64 / secs } else { 0.0 };
    deltas
        .iter()
        .map(|(n, e)| {
            let requests = n.requests.saturating_sub(e.requests);
            let errors = n.errors.saturating_sub(e.errors);
            let latency = n.latency.map(|h| e.latency.map_or_else(|| h.clone(), |e| h.since(e)));
            Recent {
                requests_per_s: rate(requests),
                error_pct: (requests > 0).then(|| (errors as f64 * 100.0 / requests as f64).min(100.0)),
                share_pct: (total > 0).then(|| requests as f64 * 100.0 / total as f64),
                p50_ms: latency.as_ref().and_then(|h| h.quantile(0.5)),
                p99_ms: latency.as_ref().and_then(|h| h.quantile(0.99)),
                sent_bytes_per_s: rate(n.bytes_sent.saturating_sub(e.bytes_sent)),
                received_bytes_per_s: rate(n.bytes_received.saturating_sub(e.bytes_received)),
            }
        })
        .collect()
}

/// Every balancer of a process, for the sinks to read: a list a reload may replace whole
/// (balancers added or removed); cheap to clone, and each clone sees the replacement.
#[derive(Debug, Clone, Default)]
pub struct Balancers(Arc<ArcSwap<Vec<Arc<BalancerStats>>>>);

impl Balancers {
    /// The balancers now, in order.
    pub fn iter(&self) -> std::vec::IntoIter<Arc<BalancerStats>> {
        self.0.load().iter().cloned().collect::<Vec<_>>().into_iter()
    }

    pub fn is_empty(&self) -> bool {
        self.0.load().is_empty()
    }

    pub fn len(&self) -> usize {
        self.0.load().len()
    }

    /// Replaces the list (what every clone reads from now on).
    pub fn replace(&self, list: Vec<Arc<BalancerStats>>) {
        self.0.store(Arc::new(list));
    }
}

impl FromIterator<Arc<BalancerStats>> for Balancers {
    fn from_iter<I: IntoIterator<Item = Arc<BalancerStats>>>(iter: I) -> Self {
        Balancers(Arc::new(ArcSwap::from_pointee(iter.into_iter().collect())))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_histogram_buckets_by_upper_bound_and_interpolates_quantiles() {
        let cells = LatencyCells::default();
        for ms in [0.05, 0.1, 1.2, 1.4, 40.0] {
            cells.record(Duration::from_secs_f64(ms / 1000.0));
        }
        cells.record(Duration::from_secs(120));
        let mut h = Histogram::default();
        cells.add_to(&mut h);
        assert_eq!(h.count(), 6);
        assert_eq!(h.counts[0], 2, "0.05 and 0.1 ms are within the first bound");
        assert_eq!(h.counts[7], 2, "1.2 and 1.4 ms are in (1, 1.5]");
        assert_eq!(h.counts[BUCKETS - 1], 1, "two minutes is above every bound");
        let p50 = h.quantile(0.5).unwrap();
        assert!((1.0..=1.5).contains(&p50), "{p50}");
        assert_eq!(h.quantile(1.0), Some(60000.0));
        assert_eq!(Histogram::default().quantile(0.5), None);
        let mut twice = h.clone();
        twice.merge(&h);
        assert_eq!(twice.count(), 12);
        assert_eq!(twice.since(&h), h);
    }

    #[test]
    fn an_ejection_that_ended_is_the_backends_last_change() {
        let addrs: Vec<SocketAddr> = vec!["127.0.0.1:1".parse().unwrap()];
        let set = Arc::new(ArcSwap::from_pointee(BackendSet::new(&addrs)));
        let stats = BalancerStats::new("web", Proto::Http, "round-robin", set.clone());
        let now = Instant::now();
        let eject = |until: Instant| {
            set.rcu(|s| {
                let mut next = (**s).clone();
                next.set_ejected(addrs[0], Some(until));
                next
            })
        };
        stats.note(addrs[0], "ejected for 30ms after failing: answered 500");
        eject(now + Duration::from_millis(30));
        let during = stats.snapshot(Instant::now());
        assert_eq!(during.backends[0].state, BackendState::Ejected);
        assert!(during.backends[0].ejected_for_ms.is_some_and(|ms| ms <= 30));
        std::thread::sleep(Duration::from_millis(40));
        let after = stats.snapshot(Instant::now());
        assert_eq!(after.backends[0].state, BackendState::Up);
        assert_eq!(after.backends[0].why.as_deref(), Some("back in rotation: its ejection ended"));
    }

    #[test]
    fn a_reloaded_backend_list_keeps_the_counts_of_the_backends_that_stay() {
        let a: SocketAddr = "127.0.0.1:1".parse().unwrap();
        let b: SocketAddr = "127.0.0.1:2".parse().unwrap();
        let c: SocketAddr = "127.0.0.1:3".parse().unwrap();
        let first = Arc::new(ArcSwap::from_pointee(BackendSet::new(&[a, b])));
        let stats = BalancerStats::new("web", Proto::Http, "round-robin", first);
        let old = stats.http_worker();
        old.requests.add(3);
        old.backends[0].requests.add(1);
        old.backends[1].requests.add(2);
        // The next generation: `a` left, `c` came, `b` stays (now first).
        let mut next = BackendSet::new(&[b, c]);
        next.set_admin(c, Admin::Draining);
        stats.follow(Arc::new(ArcSwap::from_pointee(next)));
        stats.set_strategy("weighted");
        let new = stats.http_worker();
        new.requests.add(5);
        new.backends[0].requests.add(4);
        new.backends[1].requests.add(1);
        let counts = |s: &BalancerSnapshot| -> Vec<(u16, u64)> {
            s.backends.iter().map(|x| (x.addr.port(), x.http.as_ref().unwrap().requests)).collect()
        };
        let during = stats.snapshot(Instant::now());
        assert_eq!(counts(&during), vec![(2, 6), (3, 1)]);
        assert_eq!((during.http.as_ref().unwrap().requests, during.strategy.as_str()), (8, "weighted"));
        assert_eq!(during.backends[1].state, BackendState::Draining);
        // The old generation stops: its counts are kept, its cells let go.
        drop(old);
        let after = stats.snapshot(Instant::now());
        assert_eq!(counts(&after), vec![(2, 6), (3, 1)]);
        assert_eq!(after.http.as_ref().unwrap().requests, 8);
        assert!(matches!(&stats.workers.lock().unwrap().0, Workers::Http(w) if w.len() == 1));
    }

    #[test]
    fn snapshots_sum_the_workers_and_say_each_backends_state() {
        let addrs: Vec<SocketAddr> = vec!["127.0.0.1:1".parse().unwrap(), "127.0.0.1:2".parse().unwrap()];
        let set = Arc::new(ArcSwap::from_pointee(BackendSet::new(&addrs)));
        let stats = BalancerStats::new("web", Proto::Http, "round-robin", set.clone());
        let (a, b) = (stats.http_worker(), stats.http_worker());
        for w in [&a, &b] {
            w.requests.inc();
            w.response(200);
            w.backends[1].requests.inc();
            w.backends[1].response(200);
            w.backends[1].latency.record(Duration::from_millis(2));
            w.clients.up();
        }
        a.clients.down();
        b.backends[0].error(HttpError::ConnectRefused);
        set.rcu(|s| {
            let mut next = (**s).clone();
            next.set_health(addrs[0], false);
            next
        });
        stats.note(addrs[0], "connection refused");
        let s = stats.snapshot(Instant::now());
        let t = s.http.as_ref().unwrap();
        assert_eq!((t.requests, t.responses.c2xx, t.clients_active), (2, 2, 1));
        assert_eq!(s.backends[0].state, BackendState::Down);
        assert_eq!(s.backends[0].why.as_deref(), Some("connection refused"));
        assert_eq!(s.backends[0].http.as_ref().unwrap().errors["connect_refused"], 1);
        let h1 = s.backends[1].http.as_ref().unwrap();
        assert_eq!((h1.requests, h1.responses.c2xx, h1.latency.count()), (2, 2, 2));
        assert_eq!(s.backends[1].state, BackendState::Up);
        assert!(s.http_line().unwrap().starts_with("2 requests (2 2xx)"), "{:?}", s.http_line());
        let json = serde_json::to_value(&s).unwrap();
        assert_eq!(json["backends"][1]["http"]["responses"]["2xx"], 2);
        assert_eq!(json["proto"], "http");
    }
}
