//! The monitor's series, from one report: node_exporter's names for interfaces, blackbox_exporter's
//! for probes (so their dashboards work), `netpulse_` for the rest.

use super::text::{Kind, Labels, Page};
use crate::iface::{Counters, InterfaceStats};
use crate::monitor::report::{Connectivity, Report, TargetReport};
use crate::probe::ProbeKind;
use crate::stats::WindowSummary;

fn seconds(ms: Option<f64>) -> f64 {
    ms.map_or(f64::NAN, |v| v / 1000.0)
}

fn device(i: &InterfaceStats) -> Labels {
    Labels::new().with("device", &i.name)
}

fn target(t: &TargetReport) -> Labels {
    Labels::new().with("target", &t.target).with("probe", t.probe)
}

pub(super) fn write(page: &mut Page, r: &Report) {
    interfaces(page, &r.interfaces);
    probes(page, &r.targets);
    let mut f = page.family("netpulse_connectivity", Kind::Gauge, "The connectivity verdict, one series per state.");
    for (state, c) in [
        ("connected", Connectivity::Connected),
        ("degraded", Connectivity::Degraded),
        ("disconnected", Connectivity::Disconnected),
    ] {
        f.sample(&Labels::new().with("state", state), r.connectivity == c);
    }
}

fn interfaces(page: &mut Page, interfaces: &[InterfaceStats]) {
    type Counter = fn(&Counters) -> u64;
    let counters: [(&str, &str, Counter); 8] = [
        ("node_network_receive_bytes_total", "Network device statistic receive_bytes.", |c| c.rx_bytes),
        ("node_network_transmit_bytes_total", "Network device statistic transmit_bytes.", |c| c.tx_bytes),
        ("node_network_receive_packets_total", "Network device statistic receive_packets.", |c| c.rx_packets),
        ("node_network_transmit_packets_total", "Network device statistic transmit_packets.", |c| c.tx_packets),
        ("node_network_receive_errs_total", "Network device statistic receive_errs.", |c| c.rx_errors),
        ("node_network_transmit_errs_total", "Network device statistic transmit_errs.", |c| c.tx_errors),
        ("node_network_receive_drop_total", "Network device statistic receive_drop.", |c| c.rx_dropped),
        ("node_network_transmit_drop_total", "Network device statistic transmit_drop.", |c| c.tx_dropped),
    ];
    for (name, help, get) in counters {
        let mut f = page.family(name, Kind::Counter, help);
        for i in interfaces {
            f.sample(&device(i), get(&i.counters));
        }
    }
    // node_exporter's meaning exactly: the operational state is "up" (loopback, whose state is
    // "unknown", is 0 there too, though it carries traffic).
    let mut f = page.family("node_network_up", Kind::Gauge, "Value is 1 if operstate is 'up', 0 otherwise.");
    for i in interfaces {
        f.sample(&device(i), i.operstate == "up");
    }
    type Rate = fn(&InterfaceStats) -> f64;
    let rates: [(&str, &str, Rate); 2] = [
        ("netpulse_network_receive_bytes_per_second", "Bytes received per second over the last interval.", |i| {
            i.rx_bytes_per_sec
        }),
        ("netpulse_network_transmit_bytes_per_second", "Bytes transmitted per second over the last interval.", |i| {
            i.tx_bytes_per_sec
        }),
    ];
    for (name, help, get) in rates {
        let mut f = page.family(name, Kind::Gauge, help);
        for i in interfaces {
            f.sample(&device(i), get(i));
        }
    }
}

fn probes(page: &mut Page, targets: &[TargetReport]) {
    type Gauge = fn(&TargetReport) -> f64;
    let newest: [(&str, &str, Gauge); 2] = [
        ("probe_success", "Displays whether or not the probe was a success.", |t| {
            f64::from(u8::from(t.summary.up && t.newest.as_ref().is_some_and(crate::probe::Sample::up)))
        }),
        (
            "probe_duration_seconds",
            "Returns how long the probe took to complete in seconds.",
            // Answered, refused or timed out: the newest probe's own duration, as blackbox
            // reports it (NaN only before the first probe settles).
            |t| seconds(t.duration_ms),
        ),
    ];
    for (name, help, get) in newest {
        let mut f = page.family(name, Kind::Gauge, help);
        for t in targets {
            f.sample(&target(t), get(t));
        }
    }
    // blackbox_exporter's per-phase gauge: the newest echo's round trip, 0 when it got no
    // answer (as blackbox leaves a phase that did not happen), never an older probe's.
    let mut f = page.family("probe_icmp_duration_seconds", Kind::Gauge, "Duration of icmp request by phase");
    for t in targets.iter().filter(|t| t.probe == ProbeKind::Icmp) {
        let rtt = t.newest.as_ref().and_then(|s| s.rtt).map_or(0.0, |d| d.as_secs_f64());
        f.sample(&Labels::new().with("target", &t.target).with("phase", "rtt"), rtt);
    }
    type Count = fn(&TargetReport) -> u64;
    let counts: [(&str, &str, Count); 2] = [
        (
            "netpulse_probes_sent_total",
            "Probes sent to the target that have settled (answered, refused or timed out).",
            |t| t.sent_total,
        ),
        ("netpulse_probes_received_total", "Probes the target answered.", |t| t.received_total),
    ];
    for (name, help, get) in counts {
        let mut f = page.family(name, Kind::Counter, help);
        for t in targets {
            f.sample(&target(t), get(t));
        }
    }
    type Field = fn(&WindowSummary) -> f64;
    let window: [(&str, &str, Field); 3] = [
        ("netpulse_probe_loss_ratio", "Share of the probes in the window that got no answer (0 to 1).", |s| {
            s.loss_pct / 100.0
        }),
        ("netpulse_probe_jitter_seconds", "RFC 3550 interarrival jitter of the round-trip time, in seconds.", |s| {
            seconds(s.jitter_ms)
        }),
        (
            "netpulse_probe_rtt_mdev_seconds",
            "Population standard deviation of the round-trip time over the window, in seconds.",
            |s| seconds(s.rtt_mdev_ms),
        ),
    ];
    for (name, help, get) in window {
        let mut f = page.family(name, Kind::Gauge, help);
        for t in targets {
            f.sample(&target(t), get(&t.summary));
        }
    }
    let mut f = page.family(
        "netpulse_probe_rtt_seconds",
        Kind::Summary,
        "Round-trip time of the answered probes: quantiles over the window, sum and count since the start.",
    );
    for t in targets {
        let s = &t.summary;
        let quantiles = [("0.5", s.rtt_p50_ms), ("0.95", s.rtt_p95_ms), ("0.99", s.rtt_p99_ms)];
        let quantiles = quantiles.map(|(q, v)| (q, v.map(|ms| ms / 1000.0)));
        f.summary(&target(t), &quantiles, t.rtt_sum_ms / 1000.0, t.received_total);
    }
}
