//! A balancer's backends as its data path uses them: the set it reads without a lock (replaced
//! whole by health checks and ejections), the one [`Picker`], and the record of the data path's
//! own failures that ejects a backend for a while. The rules are `balance`'s; this only applies
//! them, and says so on stderr.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use arc_swap::ArcSwap;

use crate::balance::{Affinity, BackendSet, OutlierRules, Outliers, Picker};

/// The live backends of one balancer, shared by its workers.
#[derive(Debug)]
pub struct Backends {
    name: String,
    set: Arc<ArcSwap<BackendSet>>,
    picker: Picker,
    outliers: Mutex<Outliers>,
    /// Per backend: whether its last request failed. A success takes the lock only then, so the
    /// common path is one load of a flag that stays in every core's cache.
    failing: Box<[AtomicBool]>,
    /// Where an ejection is noted for the sinks (set once the balancer's stats exist).
    stats: std::sync::OnceLock<Arc<crate::stats::traffic::BalancerStats>>,
}

impl Backends {
    pub fn new(name: &str, addrs: &[SocketAddr], affinity: Affinity, rules: OutlierRules) -> Self {
        Self {
            name: name.to_string(),
            set: Arc::new(ArcSwap::from_pointee(BackendSet::new(addrs))),
            picker: Picker::new(affinity),
            outliers: Mutex::new(Outliers::new(addrs, rules)),
            failing: addrs.iter().map(|_| AtomicBool::new(false)).collect(),
            stats: std::sync::OnceLock::new(),
        }
    }

    /// Reads and updates `set` instead of a set of its own: a reload's next generation shares
    /// the running one's live set when the backends are the same, in the same order.
    pub fn share(&mut self, set: Arc<ArcSwap<BackendSet>>) {
        self.set = set;
    }

    /// Where ejections are noted for the sinks.
    pub fn note_in(&self, stats: Arc<crate::stats::traffic::BalancerStats>) {
        let _ = self.stats.set(stats);
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

    /// The set as it is now, for a batch of picks (no reference count is taken).
    pub fn snapshot(&self) -> arc_swap::Guard<Arc<BackendSet>> {
        self.set.load()
    }

    /// The backend in `set` (a [`Backends::snapshot`]) for a client whose requests last went to
    /// `pinned` (see [`Picker::pick`]).
    pub fn pick_in(&self, set: &BackendSet, pinned: Option<SocketAddr>, now: Instant) -> Option<SocketAddr> {
        self.picker.pick(set, pinned, now)
    }

    /// The next turn of the rotation, skipping backends this request already `tried`: the
    /// backend's index (its place in the configuration) and address.
    pub fn pick_index(&self, now: Instant, tried: &[usize]) -> Option<(usize, SocketAddr)> {
        let set = self.set.load();
        self.picker.pick_index(&set, now, tried).and_then(|i| set.get(i).map(|b| (i, b.addr)))
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
