//! A balancer's backends as its data path uses them: the set it reads without a lock (replaced
//! whole by health checks, ejections and weight changes), the one [`Picker`] with its strategy's
//! state, and the record of the data path's own failures that ejects a backend for a while. The
//! rules are `balance`'s; this only applies them, and says so on stderr.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;

use crate::balance::{BackendSet, OutlierRules, Outliers, Picker};

/// The live backends of one balancer, shared by its workers.
#[derive(Debug)]
pub struct Backends {
    name: String,
    set: Arc<ArcSwap<BackendSet>>,
    picker: Arc<Picker>,
    /// Whether the strategy counts requests in flight (fixed for the life of these backends).
    tracks: bool,
    outliers: Mutex<Outliers>,
    /// Per backend: whether its last request failed. A success takes the lock only then, so the
    /// common path is one load of a flag that stays in every core's cache.
    failing: Box<[AtomicBool]>,
    /// Where an ejection is noted for the sinks (set once the balancer's stats exist).
    stats: std::sync::OnceLock<Arc<crate::stats::traffic::BalancerStats>>,
}

impl Backends {
    /// The backends of `set` (its strategy, weights and order), all in rotation until their
    /// checks say otherwise.
    pub fn new(name: &str, set: BackendSet, rules: OutlierRules) -> Self {
        let addrs: Vec<SocketAddr> = set.backends().iter().map(|b| b.addr).collect();
        Self {
            name: name.to_string(),
            picker: Arc::new(Picker::new(addrs.len())),
            tracks: set.strategy().tracks_load(),
            outliers: Mutex::new(Outliers::new(&addrs, rules)),
            failing: addrs.iter().map(|_| AtomicBool::new(false)).collect(),
            set: Arc::new(ArcSwap::from_pointee(set)),
            stats: std::sync::OnceLock::new(),
        }
    }

    /// Reads and updates `set` instead of a set of its own: a reload's next generation shares
    /// the running one's live set when the backends are the same, in the same order.
    pub fn share(&mut self, set: Arc<ArcSwap<BackendSet>>) {
        self.set = set;
    }

    /// Takes over the running generation's picker: the very same one while the backends are the
    /// same (the rotation and the load counts go on), else only its place in the rotation.
    pub fn take_over(&mut self, picker: Arc<Picker>, same_backends: bool) {
        if same_backends {
            self.picker = picker;
        } else {
            self.picker.resume_at(picker.position());
        }
    }

    /// Where ejections are noted for the sinks.
    pub fn note_in(&self, stats: Arc<crate::stats::traffic::BalancerStats>) {
        let _ = self.stats.set(stats);
    }

    /// The picker, whose rotation position is saved across restarts.
    pub fn picker(&self) -> Arc<Picker> {
        self.picker.clone()
    }

    /// The live set, for health checkers to update (they change only the health flags).
    pub fn set(&self) -> Arc<ArcSwap<BackendSet>> {
        self.set.clone()
    }

    /// The backends' addresses, in configuration order.
    pub fn addrs(&self) -> Vec<SocketAddr> {
        self.set.load().backends().iter().map(|b| b.addr).collect()
    }

    pub fn len(&self) -> usize {
        self.failing.len()
    }

    pub fn is_empty(&self) -> bool {
        self.failing.is_empty()
    }

    /// The set as it is at `now`, for a batch of picks (no reference count is taken). When an
    /// ejection its strategy's plan left out has ended, the set is first replaced by one planned
    /// for `now` (once, by whichever worker sees it first), so that backend gets its share again.
    pub fn snapshot(&self, now: Instant) -> arc_swap::Guard<Arc<BackendSet>> {
        let set = self.set.load();
        if set.plan_expires().is_none_or(|t| now < t) {
            return set;
        }
        drop(set);
        self.set.rcu(|current| {
            if current.plan_expires().is_some_and(|t| now >= t) {
                Arc::new(current.refreshed(now))
            } else {
                current.clone()
            }
        });
        self.set.load()
    }

    /// The backend in `set` (a [`Backends::snapshot`]) for a request with hash key `key` at
    /// `now`, never one it already `tried` (see [`Picker::pick`]); counted as in flight under
    /// the strategies that count, until [`Backends::end`].
    pub fn pick_in(&self, set: &BackendSet, key: Option<u64>, now: Instant, tried: &[usize]) -> Option<usize> {
        let index = self.picker.pick(set, key, now, tried)?;
        // Counted by this generation's rule (fixed), not the set's strategy (a reload may change
        // it on a shared set): what is counted here is ended by the same rule.
        if self.tracks {
            self.picker.count(index);
        }
        Some(index)
    }

    /// [`Backends::pick_in`] the set as it is now: the backend's index (its place in the
    /// configuration) and address. Every pick is ended by [`Backends::end`] (or the guard of
    /// [`Backends::track`]).
    pub fn pick(&self, key: Option<u64>, now: Instant, tried: &[usize]) -> Option<(usize, SocketAddr)> {
        let set = self.snapshot(now);
        let index = self.pick_in(&set, key, now, tried)?;
        set.get(index).map(|b| (index, b.addr))
    }

    /// The request picked for backend `index` ended at `now` after `latency` (to the response
    /// head or reply; for a failure, what it cost), if known.
    pub fn end(&self, index: usize, latency: Option<Duration>, now: Instant) {
        self.end_many(index, 1, latency, now);
    }

    /// `count` picks of backend `index` ended at `now`, the last after `latency` if known.
    pub fn end_many(&self, index: usize, count: u32, latency: Option<Duration>, now: Instant) {
        if self.tracks && count > 0 {
            self.picker.uncount(index, count, latency, now);
        }
    }

    /// Whether picks count requests in flight (and their latency): only the load-aware
    /// strategies do, so the others never touch a shared counter.
    pub fn tracks_load(&self) -> bool {
        self.tracks
    }

    /// Ends the pick of backend `index` when dropped, however the request ends; [`InFlight::answered`]
    /// gives it the latency first.
    pub fn track(&self, index: usize) -> InFlight<'_> {
        InFlight { backends: self, index, latency: None }
    }

    /// A request to backend `index` succeeded.
    pub fn succeeded(&self, index: usize) {
        let Some(flag) = self.failing.get(index) else { return };
        if flag.load(Ordering::Relaxed) {
            flag.store(false, Ordering::Relaxed);
            let addr = self.set.load().get(index).map(|b| b.addr);
            if let Some(addr) = addr {
                self.outliers.lock().unwrap_or_else(|p| p.into_inner()).success(addr);
            }
        }
    }

    /// A request to backend `index` failed at `now` because of the backend (`why`); ejects it
    /// when the rules say so.
    pub fn failed(&self, index: usize, now: Instant, why: &str) {
        let Some(flag) = self.failing.get(index) else { return };
        flag.store(true, Ordering::Relaxed);
        let set = self.set.load();
        let Some(addr) = set.get(index).map(|b| b.addr) else { return };
        let available = set.available_count(now);
        let ejection = self.outliers.lock().unwrap_or_else(|p| p.into_inner()).failure(addr, now, available);
        if let Some(e) = ejection {
            self.set.rcu(|current| {
                let mut next = (**current).clone();
                next.set_ejected(e.addr, Some(e.until));
                next
            });
            if let Some(stats) = self.stats.get() {
                stats.note(e.addr, format!("ejected for {:?} after failing: {why}", e.length));
            }
            tracing::warn!(
                "{}: backend {} ejected for {:?} (ejection {} in a row) after failing: {why}",
                self.name,
                e.addr,
                e.length,
                e.count
            );
        }
    }
}

/// One picked request on its way: ends it in the [`Picker`] when dropped.
#[derive(Debug)]
pub struct InFlight<'a> {
    backends: &'a Backends,
    index: usize,
    latency: Option<Duration>,
}

impl InFlight<'_> {
    /// The backend's answer (or failure) came after `latency`.
    pub fn answered(&mut self, latency: Duration) {
        self.latency = Some(latency);
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        if self.backends.tracks {
            self.backends.end(self.index, self.latency, Instant::now());
        }
    }
}
