//! Prometheus exposition of the monitor's reports (a sink), with node_exporter's names for interfaces
//! and blackbox_exporter's for probes, so existing dashboards work; the rest is `netpulse_`.

use std::fmt::Write as _;
use std::sync::Arc;

use arc_swap::ArcSwap;
use bytes::Bytes;
use http::{Response, StatusCode, header};
use http_body_util::Full;

use tokio::sync::broadcast;

use crate::monitor::report::{Connectivity, Report};
use crate::probe::ProbeKind;
use crate::stats::traffic::{BalancerSnapshot, Balancers};
use tokio_util::sync::CancellationToken;

use crate::net::{self, BindError};

/// Escapes a label value (backslash, double quote, newline).
fn label(v: &str) -> String {
    v.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

fn family(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
}

/// Renders one report in the Prometheus text format (version 0.0.4).
pub fn render(r: &Report, _balancers: &[BalancerSnapshot]) -> String {
    let mut o = String::with_capacity(4096 + r.targets.len() * 1024);
    type Counter = fn(&crate::iface::Counters) -> u64;
    let counters: [(&str, Counter); 8] = [
        ("receive_bytes", |c| c.rx_bytes),
        ("transmit_bytes", |c| c.tx_bytes),
        ("receive_packets", |c| c.rx_packets),
        ("transmit_packets", |c| c.tx_packets),
        ("receive_errs", |c| c.rx_errors),
        ("transmit_errs", |c| c.tx_errors),
        ("receive_drop", |c| c.rx_dropped),
        ("transmit_drop", |c| c.tx_dropped),
    ];
    for (stat, get) in counters {
        let name = format!("node_network_{stat}_total");
        family(&mut o, &name, "counter", &format!("Network device statistic {stat}."));
        for i in &r.interfaces {
            let _ = writeln!(o, "{name}{{device=\"{}\"}} {}", label(&i.name), get(&i.counters));
        }
    }
    family(&mut o, "node_network_up", "gauge", "Value is 1 if operstate is 'up', 0 otherwise.");
    for i in &r.interfaces {
        let _ = writeln!(o, "node_network_up{{device=\"{}\"}} {}", label(&i.name), u8::from(i.up));
    }
    type Rate = fn(&crate::iface::InterfaceStats) -> f64;
    let rates: [(&str, Rate); 2] = [("receive", |i| i.rx_bytes_per_sec), ("transmit", |i| i.tx_bytes_per_sec)];
    for (dir, get) in rates {
        let name = format!("netpulse_network_{dir}_bytes_per_second");
        family(&mut o, &name, "gauge", &format!("Bytes per second {dir}d over the last interval."));
        for i in &r.interfaces {
            let _ = writeln!(o, "{name}{{device=\"{}\"}} {}", label(&i.name), get(i));
        }
    }
    let seconds = |ms: Option<f64>| ms.map_or(f64::NAN, |v| v / 1000.0);
    type Field = fn(&crate::stats::WindowSummary) -> f64;
    let probes: [(&str, &str, &str, Field); 5] = [
        ("probe_success", "gauge", "Whether the latest probe succeeded.", |s| f64::from(u8::from(s.up))),
        ("probe_duration_seconds", "gauge", "Round-trip time of the latest answered probe.", |s| {
            s.rtt_last_ms.map_or(f64::NAN, |v| v / 1000.0)
        }),
        ("netpulse_probe_loss_ratio", "gauge", "Share of probes lost over the window.", |s| s.loss_pct / 100.0),
        ("netpulse_probe_jitter_seconds", "gauge", "RFC 3550 interarrival jitter of the round-trip time.", |s| {
            s.jitter_ms.map_or(f64::NAN, |v| v / 1000.0)
        }),
        (
            "netpulse_probe_rtt_mdev_seconds",
            "gauge",
            "Standard deviation of the round-trip time over the window.",
            |s| s.rtt_mdev_ms.map_or(f64::NAN, |v| v / 1000.0),
        ),
    ];
    for (name, kind, help, get) in probes {
        family(&mut o, name, kind, help);
        for t in &r.targets {
            let _ = writeln!(o, "{name}{{target=\"{}\",probe=\"{}\"}} {}", label(&t.target), t.probe, get(&t.summary));
        }
    }
    family(&mut o, "probe_icmp_duration_seconds", "gauge", "Duration of the ICMP round trip by phase.");
    for t in r.targets.iter().filter(|t| t.probe == ProbeKind::Icmp) {
        let _ = writeln!(
            o,
            "probe_icmp_duration_seconds{{target=\"{}\",phase=\"rtt\"}} {}",
            label(&t.target),
            seconds(t.summary.rtt_last_ms)
        );
    }
    family(&mut o, "netpulse_probe_rtt_seconds", "gauge", "Round-trip time quantiles over the window.");
    for t in &r.targets {
        let s = &t.summary;
        for (q, v) in [("0.5", s.rtt_p50_ms), ("0.95", s.rtt_p95_ms), ("0.99", s.rtt_p99_ms)] {
            let _ = writeln!(
                o,
                "netpulse_probe_rtt_seconds{{target=\"{}\",probe=\"{}\",quantile=\"{q}\"}} {}",
                label(&t.target),
                t.probe,
                seconds(v)
            );
        }
    }
    family(&mut o, "netpulse_connectivity", "gauge", "The connectivity verdict, one series per state.");
    for (state, c) in [
        ("connected", Connectivity::Connected),
        ("degraded", Connectivity::Degraded),
        ("disconnected", Connectivity::Disconnected),
    ] {
        let _ = writeln!(o, "netpulse_connectivity{{state=\"{state}\"}} {}", u8::from(r.connectivity == c));
    }
    o
}

/// What `/metrics` shows: the newest report (swapped whole, so scrapes never wait for the
/// monitor) and the balancers' statistics, read at each scrape.
#[derive(Debug, Clone)]
pub struct Exporter {
    report: Arc<ArcSwap<Option<Arc<Report>>>>,
    balancers: Balancers,
}

impl Exporter {
    pub fn new(balancers: Balancers) -> Self {
        Self { report: Arc::new(ArcSwap::from_pointee(None)), balancers }
    }

    pub fn update(&self, report: Arc<Report>) {
        self.report.store(Arc::new(Some(report)));
    }

    /// The page a scrape gets now.
    pub fn page(&self) -> String {
        let report = self.report.load_full();
        let now = std::time::Instant::now();
        let balancers: Vec<BalancerSnapshot> = self.balancers.iter().map(|b| b.snapshot(now)).collect();
        match report.as_ref() {
            Some(r) => render(r, &balancers),
            None => render(&Report::empty(), &balancers),
        }
    }

    /// Keeps the newest report until the monitor ends (a sink).
    pub async fn follow(self, mut reports: broadcast::Receiver<Arc<Report>>) {
        loop {
            match reports.recv().await {
                Ok(report) => self.update(report),
                // Only the newest report matters for a scrape.
                Err(broadcast::error::RecvError::Lagged(_)) => {}
                Err(broadcast::error::RecvError::Closed) => return,
            }
        }
    }

    /// Binds `addr` for `/metrics`.
    pub fn bind(addr: std::net::SocketAddr) -> Result<std::net::TcpListener, BindError> {
        net::bind_tcp(addr, "metrics endpoint")
    }

    /// Serves `/metrics` until `shutdown`.
    pub async fn serve(self, listener: std::net::TcpListener, shutdown: CancellationToken) -> std::io::Result<()> {
        net::serve_http(listener, 256, shutdown, move |req, _| {
            let page = self.page();
            async move {
                let mut resp = if req.uri().path() == "/metrics" {
                    Response::new(Full::new(Bytes::from(page.as_bytes().to_vec())))
                } else {
                    let mut r = Response::new(Full::new(Bytes::from_static(b"not found: try /metrics\n")));
                    *r.status_mut() = StatusCode::NOT_FOUND;
                    r
                };
                resp.headers_mut().insert(
                    header::CONTENT_TYPE,
                    header::HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
                );
                resp
            }
        })
        .await
    }
}
