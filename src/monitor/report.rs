//! What the monitor publishes once per interval: interfaces, every target's window statistics,
//! and the connectivity verdict. Sinks read it; none of them writes it.

use serde::Serialize;

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
