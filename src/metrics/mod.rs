//! Prometheus exposition (a sink): the monitor's reports with node_exporter's names for interfaces
//! and blackbox_exporter's for probes, so existing dashboards work, and the balancers' statistics
//! as `netpulse_` series, read at each scrape. Every series is listed in README ("Metrics").

use std::sync::Arc;

use arc_swap::ArcSwap;

use tokio::sync::broadcast;

use crate::monitor::report::Report;
use crate::stats::traffic::{BalancerSnapshot, Balancers};

mod balancers;
mod report;
mod text;

/// Renders a report and the balancers' snapshots in the Prometheus text format (version 0.0.4).
pub fn render(r: &Report, balancers: &[BalancerSnapshot]) -> String {
    page_of(Some(r), balancers)
}

/// The page with a report, or without (before the monitor's first one, or with no monitor):
/// nothing is said about the network then, not even a verdict.
fn page_of(r: Option<&Report>, balancers: &[BalancerSnapshot]) -> String {
    let targets = r.map_or(0, |r| r.targets.len());
    let backends: usize = balancers.iter().map(|b| b.backends.len()).sum();
    let mut page = text::Page::with_capacity(4096 + targets * 1600 + backends * 6000);
    if let Some(r) = r {
        report::write(&mut page, r);
    }
    balancers::write(&mut page, balancers);
    page.finish()
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
        page_of(report.as_ref().as_deref(), &balancers)
    }

    /// Keeps the newest report until the monitor ends (a sink).
    pub async fn follow(self, reports: broadcast::Receiver<Arc<Report>>) {
        crate::monitor::report::each_report(reports, |report| self.update(report)).await
    }
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;
    use std::sync::Arc;
    use std::time::{Duration, Instant};

    use arc_swap::ArcSwap;

    use super::{page_of, render};
    use crate::balance::BackendSet;
    use crate::iface::InterfaceStats;
    use crate::monitor::report::{Connectivity, Report, TargetId, TargetReport};
    use crate::probe::{Outcome, ProbeKind, Sample};
    use crate::stats::Window;
    use crate::stats::traffic::{BalancerSnapshot, BalancerStats, HttpError, Proto, UdpDrop};

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    /// A target whose probes gave `samples` (in order), the newest of which ran `took_ms`.
    fn target(id: usize, name: &str, probe: ProbeKind, samples: &[Sample], took_ms: f64) -> TargetReport {
        let mut w = Window::new(100);
        for s in samples {
            w.push(s.clone());
        }
        let answered: Vec<f64> = samples.iter().filter_map(|s| s.rtt).map(|d| d.as_secs_f64() * 1000.0).collect();
        TargetReport {
            id: TargetId(id),
            target: name.into(),
            probe,
            summary: w.summary(),
            newest: w.newest().cloned(),
            probes: Vec::new(),
            sent_total: samples.len() as u64,
            received_total: answered.len() as u64,
            rtt_sum_ms: answered.iter().sum(),
            duration_ms: Some(took_ms),
        }
    }

    fn reply(seq: u64, ms: u64) -> Sample {
        Sample { seq, rtt: Some(Duration::from_millis(ms)), outcome: Outcome::Reply { bytes: 64, ttl: Some(64) } }
    }

    fn timeout(seq: u64) -> Sample {
        Sample { seq, rtt: None, outcome: Outcome::Timeout }
    }

    fn iface(name: &str, up: bool, operstate: &str) -> InterfaceStats {
        InterfaceStats {
            name: name.into(),
            up,
            operstate: operstate.into(),
            counters: crate::iface::Counters { rx_bytes: 1000, ..Default::default() },
            rx_bytes_per_sec: 12.5,
            tx_bytes_per_sec: 0.0,
        }
    }

    fn report(targets: Vec<TargetReport>) -> Report {
        Report {
            time: String::new(),
            interfaces: vec![iface("lo", true, "unknown"), iface("eth0", true, "up"), iface("eth1", false, "down")],
            targets,
            connectivity: Connectivity::Degraded,
        }
    }

    /// An HTTP balancer "web" on two backends whose second answered twice (in 0.1 and 40 ms)
    /// and whose first refused once, and a UDP balancer "ping".
    fn balancers() -> Vec<BalancerSnapshot> {
        let addrs = [addr("127.0.14.1:8001"), addr("127.0.14.1:8002")];
        let set = Arc::new(ArcSwap::from_pointee(BackendSet::new(&addrs)));
        let web = BalancerStats::new("web", Proto::Http, "round-robin", set);
        web.set_listen(addr("127.0.14.1:8000"));
        let w = web.http_worker();
        for ms in [0.1, 40.0] {
            w.requests.inc();
            w.response(200);
            w.backends[1].requests.inc();
            w.backends[1].response(200);
            w.backends[1].latency.record(Duration::from_secs_f64(ms / 1000.0));
        }
        w.backends[0].requests.inc();
        w.backends[0].error(HttpError::ConnectRefused);
        let set = Arc::new(ArcSwap::from_pointee(BackendSet::new(&[addr("127.0.14.1:2526")])));
        let ping = BalancerStats::new("ping", Proto::Udp, "round-robin", set);
        let u = ping.udp_worker();
        u.requests.add(3);
        u.backends[0].datagrams_sent.add(3);
        u.drops[UdpDrop::NoBackend as usize].inc();
        let now = Instant::now();
        vec![web.snapshot(now), ping.snapshot(now)]
    }

    /// The value of the sample written exactly `series` (name and labels).
    fn value(page: &str, series: &str) -> String {
        page.lines()
            .find_map(|l| l.strip_prefix(series).and_then(|rest| rest.strip_prefix(' ')))
            .unwrap_or_else(|| panic!("no {series} in\n{page}"))
            .to_string()
    }

    /// (family name, type) of every `# TYPE` line, and the family each sample belongs to.
    fn families(page: &str) -> Vec<(String, String, Vec<String>)> {
        let mut out: Vec<(String, String, Vec<String>)> = Vec::new();
        for line in page.lines() {
            if let Some(t) = line.strip_prefix("# TYPE ") {
                let (name, kind) = t.split_once(' ').unwrap();
                out.push((name.into(), kind.into(), Vec::new()));
            } else if !line.starts_with('#') {
                out.last_mut().expect("a sample before any TYPE").2.push(line.into());
            }
        }
        out
    }

    #[test]
    fn latency_is_a_histogram_with_cumulative_buckets_in_seconds() {
        let page = page_of(None, &balancers());
        let l = r#"balancer="web",backend="127.0.14.1:8002""#;
        let bucket =
            |le: &str| value(&page, &format!("netpulse_http_backend_latency_seconds_bucket{{{l},le=\"{le}\"}}"));
        assert_eq!(bucket("0.0001"), "1", "0.1 ms is within the first bound");
        assert_eq!(bucket("0.03"), "1");
        assert_eq!(bucket("0.05"), "2", "40 ms is in (30, 50] ms, and the counts accumulate");
        assert_eq!(bucket("60"), "2");
        assert_eq!(bucket("+Inf"), "2");
        assert_eq!(value(&page, &format!("netpulse_http_backend_latency_seconds_count{{{l}}}")), "2");
        let sum: f64 = value(&page, &format!("netpulse_http_backend_latency_seconds_sum{{{l}}}")).parse().unwrap();
        assert!((sum - 0.0401).abs() < 1e-9, "{sum}");
        let buckets = page.matches(&format!("netpulse_http_backend_latency_seconds_bucket{{{l},")).count();
        assert_eq!(buckets, crate::stats::traffic::LATENCY_BOUNDS_MS.len() + 1, "every bound and +Inf, once");
        // Cumulative: never decreasing.
        let counts: Vec<u64> = page
            .lines()
            .filter(|x| x.starts_with(&format!("netpulse_http_backend_latency_seconds_bucket{{{l},")))
            .map(|x| x.rsplit(' ').next().unwrap().parse().unwrap())
            .collect();
        assert!(counts.windows(2).all(|w| w[0] <= w[1]), "{counts:?}");
    }

    #[test]
    fn balancer_series_have_balancer_and_backend_labels() {
        let page = page_of(None, &balancers());
        let web = |b: &str| format!(r#"balancer="web",backend="127.0.14.1:{b}""#);
        assert_eq!(value(&page, &format!("netpulse_backend_requests_total{{{},proto=\"http\"}}", web("8002"))), "2");
        assert_eq!(value(&page, &format!("netpulse_backend_requests_total{{{},proto=\"http\"}}", web("8001"))), "1");
        assert_eq!(
            value(&page, &format!("netpulse_http_backend_errors_total{{{},cause=\"connect_refused\"}}", web("8001"))),
            "1"
        );
        assert_eq!(
            value(&page, &format!("netpulse_http_backend_responses_total{{{},code=\"2xx\"}}", web("8002"))),
            "2"
        );
        assert_eq!(value(&page, r#"netpulse_http_responses_total{balancer="web",code="2xx"}"#), "2");
        assert_eq!(value(&page, r#"netpulse_http_requests_total{balancer="web"}"#), "2");
        assert_eq!(
            value(&page, r#"netpulse_backend_requests_total{balancer="ping",backend="127.0.14.1:2526",proto="udp"}"#),
            "3"
        );
        assert_eq!(value(&page, r#"netpulse_udp_drops_total{balancer="ping",reason="no_backend"}"#), "1");
        assert_eq!(value(&page, r#"netpulse_udp_requests_total{balancer="ping"}"#), "3");
        assert_eq!(
            value(&page, r#"netpulse_backend_state{balancer="web",backend="127.0.14.1:8001",proto="http",state="up"}"#),
            "1"
        );
        assert_eq!(
            value(
                &page,
                r#"netpulse_balancer_info{balancer="web",proto="http",listen="127.0.14.1:8000",strategy="round-robin"}"#
            ),
            "1"
        );
        // A backend that never changed state has been in it since its balancer started.
        let since: f64 = value(
            &page,
            r#"netpulse_backend_state_change_timestamp_seconds{balancer="web",backend="127.0.14.1:8001",proto="http"}"#,
        )
        .parse()
        .unwrap();
        let started: f64 =
            value(&page, r#"netpulse_balancer_start_time_seconds{balancer="web",proto="http"}"#).parse().unwrap();
        assert_eq!(since, started);
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs_f64();
        assert!((now - started).abs() < 60.0, "{started} is seconds since the epoch");
        // HTTP-only families have no UDP series, and the other way round.
        assert!(!page.contains(r#"netpulse_http_requests_total{balancer="ping""#), "{page}");
        assert!(!page.contains(r#"netpulse_udp_requests_total{balancer="web""#), "{page}");
    }

    #[test]
    fn label_values_are_escaped() {
        let t = target(0, "http://127.0.14.1:80/a\"b\\c", ProbeKind::Http, &[reply(1, 2)], 2.0);
        let page = render(&report(vec![t]), &[]);
        assert!(page.contains(r#"probe_success{target="http://127.0.14.1:80/a\"b\\c",probe="http"} 1"#), "{page}");
    }

    #[test]
    fn quantiles_are_a_summary_not_a_gauge_with_a_quantile_label() {
        let t = target(0, "tcp://127.0.14.1:1", ProbeKind::Tcp, &[reply(1, 2), reply(2, 4), timeout(3)], 1000.0);
        let page = render(&report(vec![t]), &balancers());
        for (name, kind, samples) in families(&page) {
            for s in &samples {
                if s.contains("quantile=\"") {
                    assert_eq!(kind, "summary", "{name}: {s}");
                }
                if s.contains(",le=\"") || s.contains("{le=\"") {
                    assert_eq!(kind, "histogram", "{name}: {s}");
                }
            }
            if kind == "counter" {
                assert!(name.ends_with("_total"), "{name}");
            }
        }
        let l = r#"target="tcp://127.0.14.1:1",probe="tcp""#;
        assert_eq!(value(&page, &format!("netpulse_probe_rtt_seconds{{{l},quantile=\"0.5\"}}")), "0.002");
        assert_eq!(value(&page, &format!("netpulse_probe_rtt_seconds_sum{{{l}}}")), "0.006");
        assert_eq!(value(&page, &format!("netpulse_probe_rtt_seconds_count{{{l}}}")), "2");
        assert_eq!(value(&page, &format!("netpulse_probes_sent_total{{{l}}}")), "3");
        assert_eq!(value(&page, &format!("netpulse_probes_received_total{{{l}}}")), "2");
    }

    #[test]
    fn probe_duration_is_the_newest_probes_own_even_when_it_failed() {
        // Answered in 2 ms, then timed out after a second: blackbox says 1 s, not 2 ms.
        let icmp = target(0, "127.0.14.1", ProbeKind::Icmp, &[reply(1, 2), timeout(2)], 1000.0);
        let refused = Sample { seq: 1, rtt: None, outcome: Outcome::Failed("Connection refused".into()) };
        let tcp = target(1, "tcp://127.0.14.1:9", ProbeKind::Tcp, &[refused], 0.25);
        let page = render(&report(vec![icmp, tcp]), &[]);
        assert_eq!(value(&page, r#"probe_duration_seconds{target="127.0.14.1",probe="icmp"}"#), "1");
        assert_eq!(value(&page, r#"probe_success{target="127.0.14.1",probe="icmp"}"#), "0");
        assert_eq!(value(&page, r#"probe_icmp_duration_seconds{target="127.0.14.1",phase="rtt"}"#), "0");
        assert_eq!(value(&page, r#"probe_duration_seconds{target="tcp://127.0.14.1:9",probe="tcp"}"#), "0.00025");
        let answered = target(0, "127.0.14.1", ProbeKind::Icmp, &[timeout(1), reply(2, 3)], 3.0);
        let page = render(&report(vec![answered]), &[]);
        assert_eq!(value(&page, r#"probe_icmp_duration_seconds{target="127.0.14.1",phase="rtt"}"#), "0.003");
        assert_eq!(value(&page, r#"probe_duration_seconds{target="127.0.14.1",probe="icmp"}"#), "0.003");
    }

    #[test]
    fn node_network_up_is_operstate_up_as_node_exporter_says() {
        let page = render(&report(Vec::new()), &[]);
        assert_eq!(value(&page, r#"node_network_up{device="eth0"}"#), "1");
        assert_eq!(value(&page, r#"node_network_up{device="lo"}"#), "0", "loopback's operstate is unknown");
        assert_eq!(value(&page, r#"node_network_up{device="eth1"}"#), "0");
        assert_eq!(value(&page, r#"node_network_receive_bytes_total{device="eth0"}"#), "1000");
        assert_eq!(value(&page, r#"netpulse_network_receive_bytes_per_second{device="eth0"}"#), "12.5");
        assert!(page.contains("# HELP netpulse_network_transmit_bytes_per_second Bytes transmitted per second"));
        assert_eq!(value(&page, r#"netpulse_connectivity{state="degraded"}"#), "1");
    }

    #[test]
    fn every_family_is_written_once_with_its_samples_together() {
        let t = target(0, "127.0.14.1", ProbeKind::Icmp, &[reply(1, 2)], 2.0);
        let page = render(&report(vec![t]), &balancers());
        let fams = families(&page);
        let mut names: Vec<&str> = fams.iter().map(|f| f.0.as_str()).collect();
        let n = names.len();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), n, "a family appears twice");
        for (name, _, samples) in &fams {
            assert!(!samples.is_empty(), "{name} has a header and no samples");
            for s in samples {
                assert!(s.starts_with(name.as_str()), "{s} is not in {name}");
            }
        }
        // Before the first report, with no balancers: nothing at all (no made-up verdict).
        assert_eq!(page_of(None, &[]), "");
        let page = render(&report(Vec::new()), &[]);
        assert!(!page.contains("netpulse_backend") && !page.contains("netpulse_http"), "{page}");
    }
}
