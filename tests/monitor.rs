//! `ping`, `monitor` and their output, against real sockets on loopback.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::io::{Read, Write};
use std::time::Duration;

use common::{Proc, run};

const QUICK: Duration = Duration::from_secs(10);

#[test]
fn ping_prints_replies_and_the_summary_like_iputils() {
    let (code, out) = run(&["ping", "127.0.7.1", "-c", "3", "-i", "0.05", "-s", "100"], QUICK);
    assert_eq!(code, 0, "{out}");
    assert!(out.starts_with("PING 127.0.7.1 (127.0.7.1) 100(128) bytes of data.\n"), "{out}");
    assert_eq!(out.matches("108 bytes from 127.0.7.1: icmp_seq=").count(), 3, "{out}");
    assert!(out.contains("icmp_seq=3 ttl=64 time="), "{out}");
    assert!(
        out.contains("--- 127.0.7.1 ping statistics ---\n3 packets transmitted, 3 received, 0% packet loss, time "),
        "{out}"
    );
    assert!(out.contains("rtt min/avg/max/mdev = "), "{out}");

    let (code, out) = run(&["ping", "::1", "-c", "1", "-q"], QUICK);
    assert_eq!(code, 0, "{out}");
    assert!(out.starts_with("PING ::1 (::1) 56 data bytes") && !out.contains("bytes from"), "{out}");
    assert!(out.contains("1 packets transmitted, 1 received, 0% packet loss"), "{out}");
}

#[test]
fn tcp_ping_times_connects_and_counts_refusals_as_loss() {
    let listener = std::net::TcpListener::bind("127.0.7.2:7000").unwrap();
    let (code, out) = run(&["ping", "127.0.7.2", "--tcp", "7000", "-c", "2", "-i", "0.05"], QUICK);
    assert_eq!(code, 0, "{out}");
    assert_eq!(out.matches("connected to 127.0.7.2:7000: seq=").count(), 2, "{out}");
    drop(listener);
    let (code, out) = run(&["ping", "127.0.7.2", "--tcp", "7001", "-c", "2", "-i", "0.05"], QUICK);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("Connection refused") && out.contains("2 packets transmitted, 0 received, 100% packet loss"),
        "{out}"
    );
}

#[test]
fn ping_usage_errors() {
    let (code, out) = run(&["ping", "no-such-host..invalid", "-c", "1"], QUICK);
    assert_eq!(code, 2, "{out}");
    assert!(out.contains("cannot resolve host 'no-such-host..invalid'"), "{out}");
    let (code, out) = run(&["ping", "127.0.0.1", "-s", "70000"], QUICK);
    assert_eq!(code, 2, "{out}");
    assert!(out.contains("70000"), "{out}");
    let (code, out) = run(&["ping", "127.0.0.1", "-i", "0"], QUICK);
    assert_eq!(code, 2, "{out}");
    assert!(out.contains("too short"), "{out}");
}

#[test]
fn monitor_json_has_every_field_for_every_kind_of_target() {
    let _lab = Proc::up(&["serve", "http", "--bind", "127.0.7.3", "--ports", "8001", "-q"]);
    let _udp = Proc::up(&["serve", "udp", "--bind", "127.0.7.3", "--ports", "2526", "-q"]);
    let targets =
        ["127.0.7.3", "tcp://127.0.7.3:8001", "udp://127.0.7.3:2526", "http://127.0.7.3:8001/x", "tcp://127.0.7.3:9"];
    let mut args = vec!["monitor", "--interval", "100ms", "--count", "3", "--format", "json"];
    args.extend(targets);
    let (code, out) = run(&args, QUICK);
    assert_eq!(code, 0, "{out}");
    let reports: Vec<serde_json::Value> = out.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(reports.len(), 3, "{out}");
    let last = &reports[2];
    let lo = last["interfaces"].as_array().unwrap().iter().find(|i| i["name"] == "lo").unwrap();
    for f in [
        "up",
        "rx_bytes",
        "tx_bytes",
        "rx_packets",
        "tx_packets",
        "rx_errors",
        "tx_errors",
        "rx_dropped",
        "tx_dropped",
        "rx_bytes_per_sec",
        "tx_bytes_per_sec",
    ] {
        assert!(!lo[f].is_null(), "interface field {f} missing: {lo}");
    }
    let t = last["targets"].as_array().unwrap();
    assert_eq!(t.len(), 5);
    let kinds: Vec<&str> = t.iter().map(|x| x["probe"].as_str().unwrap()).collect();
    assert_eq!(kinds, ["icmp", "tcp", "udp", "http", "tcp"]);
    for x in &t[..4] {
        for f in [
            "target",
            "probe",
            "up",
            "sent",
            "received",
            "loss_pct",
            "rtt_min_ms",
            "rtt_avg_ms",
            "rtt_max_ms",
            "rtt_mdev_ms",
            "jitter_ms",
            "rtt_p50_ms",
            "rtt_p95_ms",
            "rtt_p99_ms",
        ] {
            assert!(!x[f].is_null(), "target field {f} missing: {x}");
        }
        assert_eq!(
            (x["up"].as_bool(), x["sent"].as_u64(), x["received"].as_u64()),
            (Some(true), Some(3), Some(3)),
            "{x}"
        );
    }
    assert_eq!(
        (t[4]["up"].as_bool(), t[4]["received"].as_u64(), t[4]["loss_pct"].as_f64()),
        (Some(false), Some(0), Some(100.0))
    );
    assert_eq!(last["connectivity"], "degraded");
}

#[test]
fn monitor_table_and_usage_errors() {
    let (code, out) = run(&["monitor", "127.0.7.4", "--once"], QUICK);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("connectivity: connected") && out.contains("INTERFACE") && out.contains("\nlo "), "{out}");
    assert!(out.contains("127.0.7.4") && out.contains("icmp") && out.contains("    1     1     0%"), "{out}");
    let (code, out) = run(&["monitor", "ftp://x"], QUICK);
    assert_eq!(code, 2, "{out}");
    assert!(out.contains("unknown scheme"), "{out}");
    let (code, out) = run(&["monitor", "tcp://127.0.0.1"], QUICK);
    assert_eq!(code, 2, "{out}");
    assert!(out.contains("needs a port"), "{out}");
    let (code, out) = run(&["monitor", "127.0.0.1", "127.0.0.1"], QUICK);
    assert_eq!(code, 2, "{out}");
    assert!(out.contains("listed twice"), "{out}");
    // Two names for one address would share ICMP replies: refused too.
    let (code, out) = run(&["monitor", "127.0.0.1", "localhost"], QUICK);
    assert_eq!(code, 2, "{out}");
    assert!(out.contains("localhost is listed twice (or is an address already listed)"), "{out}");
}

#[test]
fn metrics_use_node_and_blackbox_exporter_names() {
    let m = Proc::spawn(&[
        "monitor",
        "127.0.7.5",
        "tcp://127.0.7.5:9",
        "--interval",
        "100ms",
        "--count",
        "30",
        "--metrics",
        "127.0.7.5:9100",
        "--format",
        "json",
    ]);
    m.wait_for("\"connectivity\"", QUICK);
    // At a 100 ms interval the first report may go out before the first echo reply is handed
    // over (the ICMP engine batches them): wait for a report with it.
    let page = common::wait_until("a page with the echo answered", QUICK, || {
        let mut s = std::net::TcpStream::connect("127.0.7.5:9100").unwrap();
        s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").unwrap();
        let mut page = String::new();
        s.read_to_string(&mut page).unwrap();
        page.contains("probe_success{target=\"127.0.7.5\",probe=\"icmp\"} 1\n").then_some(page)
    });
    assert!(page.starts_with("HTTP/1.1 200"), "{page}");
    assert!(page.contains("text/plain; version=0.0.4"), "{page}");
    assert!(page.contains("# TYPE node_network_receive_bytes_total counter\n"), "{page}");
    assert!(page.contains("node_network_receive_bytes_total{device=\"lo\"} "), "{page}");
    // node_exporter's meaning: operstate "up"; loopback's is "unknown".
    assert!(page.contains("node_network_up{device=\"lo\"} 0\n"), "{page}");
    assert!(page.contains("probe_success{target=\"127.0.7.5\",probe=\"icmp\"} 1\n"), "{page}");
    assert!(page.contains("probe_success{target=\"tcp://127.0.7.5:9\",probe=\"tcp\"} 0\n"), "{page}");
    assert!(page.contains("probe_icmp_duration_seconds{target=\"127.0.7.5\",phase=\"rtt\"} 0.0"), "{page}");
    assert!(page.contains("netpulse_probe_loss_ratio{target=\"tcp://127.0.7.5:9\",probe=\"tcp\"} 1\n"), "{page}");
    assert!(page.contains("netpulse_connectivity{state=\"degraded\"} 1\n"), "{page}");
}

/// Runs `netpulse ARGS` with stdout read by a reader that stops after `lines` lines and closes
/// the pipe, like `| head -n LINES`; returns the exit code, the lines read and stderr.
fn run_into_head(args: &[&str], lines: usize) -> (i32, Vec<String>, String) {
    use std::io::BufRead;
    let mut child = common::netpulse()
        .args(args)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut head = Vec::new();
    {
        let mut out = std::io::BufReader::new(child.stdout.take().unwrap());
        for _ in 0..lines {
            let mut l = String::new();
            out.read_line(&mut l).unwrap();
            head.push(l);
        }
    } // the pipe closes here
    let mut err = String::new();
    child.stderr.take().unwrap().read_to_string(&mut err).unwrap();
    let status = child.wait().unwrap();
    (status.code().unwrap_or(-1), head, err)
}

#[test]
fn a_closed_stdout_ends_ping_and_monitor_quietly_with_exit_0() {
    // `netpulse ping ... | head -2`: ping notices at its next line and stops, saying nothing.
    let (code, head, err) = run_into_head(&["ping", "127.0.7.6", "-c", "50", "-i", "0.02"], 2);
    assert!(head[0].starts_with("PING 127.0.7.6"), "{head:?}");
    assert_eq!((code, err.as_str()), (0, ""), "{head:?}");
    let (code, head, err) = run_into_head(&["monitor", "127.0.7.6", "--interval", "20ms", "--format", "json"], 1);
    assert!(head[0].starts_with('{'), "{head:?}");
    assert_eq!((code, err.as_str()), (0, ""), "{head:?}");
}
