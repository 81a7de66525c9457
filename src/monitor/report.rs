//! What the monitor publishes once per interval: interfaces, every target's window statistics,
//! and the connectivity verdict. Sinks read it; none of them writes it.

use std::sync::Arc;

use serde::Serialize;
use tokio::sync::broadcast;

use crate::iface::InterfaceStats;
use crate::probe::{ProbeKind, Sample};
use crate::stats::WindowSummary;

/// One report.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub time: String,
    pub interfaces: Vec<InterfaceStats>,
    pub targets: Vec<TargetReport>,
    pub connectivity: Connectivity,
}

impl Report {
    /// A report of nothing (before the first one), stamped now.
    pub fn empty() -> Self {
        Self {
            time: crate::clock::UtcTime::now().rfc3339(),
            interfaces: Vec::new(),
            targets: Vec::new(),
            connectivity: Connectivity::Connected,
        }
    }

    /// The line of target `id`.
    pub fn target(&self, id: TargetId) -> Option<&TargetReport> {
        // Targets are reported in plan order, so the id is the index.
        self.targets.get(id.0).filter(|t| t.id == id).or_else(|| self.targets.iter().find(|t| t.id == id))
    }
}

/// A target of the monitor, by its place in the plan: how sinks find a target's results
/// without matching its printed name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct TargetId(pub usize);

/// One target's line of a report.
#[derive(Debug, Clone, Serialize)]
pub struct TargetReport {
    #[serde(skip)]
    pub id: TargetId,
    /// The target as the user wrote it.
    pub target: String,
    pub probe: ProbeKind,
    #[serde(flatten)]
    pub summary: WindowSummary,
    /// The newest probe's result, for sinks that judge each probe (the health feed).
    #[serde(skip)]
    pub newest: Option<Sample>,
    /// The probes that settled since the last report, in the order they did (what charts
    /// draw: a lost probe is a point with no RTT).
    pub probes: Vec<ProbePoint>,
    /// Probes settled and answered since the monitor started (counters, for `rate()`); an
    /// answer is a probe with a round-trip time, as the window counts it.
    pub sent_total: u64,
    pub received_total: u64,
    /// The sum of those answers' round-trip times (with `received_total`, an average over
    /// any range).
    pub rtt_sum_ms: f64,
    /// How long the newest probe ran, answered or not: to its answer, its refusal or its
    /// timeout (blackbox_exporter's `probe_duration_seconds`); `None` before the first.
    pub duration_ms: Option<f64>,
}

impl TargetReport {
    /// A target's line made from its window alone (no probes since a last report, no totals).
    pub fn from_window(id: TargetId, target: &str, probe: ProbeKind, window: &crate::stats::Window) -> Self {
        Self {
            id,
            target: target.to_string(),
            probe,
            summary: window.summary(),
            newest: window.newest().cloned(),
            probes: Vec::new(),
            sent_total: 0,
            received_total: 0,
            rtt_sum_ms: 0.0,
            duration_ms: None,
        }
    }
}

/// Calls `f` with every report until the monitor ends. A subscriber that falls behind skips
/// the reports it missed: every sink wants the newest, not a backlog.
pub async fn each_report(mut reports: broadcast::Receiver<Arc<Report>>, mut f: impl FnMut(Arc<Report>)) {
    loop {
        match reports.recv().await {
            Ok(report) => f(report),
            Err(broadcast::error::RecvError::Lagged(_)) => {}
            Err(broadcast::error::RecvError::Closed) => return,
        }
    }
}

/// One probe as sinks draw it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ProbePoint {
    pub seq: u64,
    /// Round-trip time of an answered probe.
    pub rtt_ms: Option<f64>,
    /// Whether it found the target up.
    pub up: bool,
    /// Nothing came back in time (lost), as opposed to a refusal or a bad status.
    pub lost: bool,
    /// When it was sent, on the monotonic clock (`None` where not known): what the history
    /// dates an outage from.
    #[serde(skip)]
    pub sent: Option<std::time::Instant>,
}

impl From<&Sample> for ProbePoint {
    fn from(s: &Sample) -> Self {
        Self {
            seq: s.seq,
            rtt_ms: s.rtt.map(|d| d.as_secs_f64() * 1000.0),
            up: s.up(),
            lost: matches!(s.outcome, crate::probe::Outcome::Timeout),
            sent: None,
        }
    }
}

/// The verdict users act on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Connectivity {
    Connected,
    Degraded,
    Disconnected,
}

/// Connected when every target is up (or, with no targets, some non-loopback interface is
/// up); degraded when only some are; disconnected when none is.
pub fn verdict(interfaces: &[InterfaceStats], targets: &[TargetReport]) -> Connectivity {
    if targets.is_empty() {
        let any_link = interfaces.iter().any(|i| i.up && i.name != "lo");
        return if any_link { Connectivity::Connected } else { Connectivity::Disconnected };
    }
    let up = targets.iter().filter(|t| t.summary.up).count();
    match up {
        0 => Connectivity::Disconnected,
        n if n == targets.len() => Connectivity::Connected,
        _ => Connectivity::Degraded,
    }
}
