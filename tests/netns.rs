//! Accuracy tests against hosts made in network namespaces (veth pairs; the tests run as root):
//! injected ICMP and UDP delay and loss, exact byte counts and shaped rates across a veth, and a
//! link going down. Only the namespaces' own addresses (10.199.x.0/24) and loopback are used.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::io::{BufRead, BufReader};
use std::net::UdpSocket;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use common::{Proc, run, wait_until};

/// These tests measure timing and rates: run them one at a time so that one's load (the shaped
/// UDP blast, say) does not skew another's measurement.
static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|p| p.into_inner())
}

/// A host in a network namespace, joined to this one by a veth pair:
/// here 10.199.N.1 on `nph{N}`, there 10.199.N.2 on `npn{N}`. Removed on drop.
struct Host {
    ns: String,
    here: String,
    there: String,
    n: u8,
}

fn sh(cmd: &str) {
    let out = Command::new("sh").arg("-c").arg(cmd).output().expect("sh");
    assert!(
        out.status.success(),
        "`{cmd}` failed (these tests need root and iproute2): {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

impl Host {
    fn new(n: u8, kernel_echo: bool) -> Host {
        let h = Host { ns: format!("netpulse-t{n}"), here: format!("nph{n}"), there: format!("npn{n}"), n };
        let _ = Command::new("ip").args(["netns", "del", &h.ns]).output(); // left over from a killed run
        let _ = Command::new("ip").args(["link", "del", &h.here]).output();
        let (ns, here, there) = (&h.ns, &h.here, &h.there);
        sh(&format!("ip netns add {ns}"));
        sh(&format!("ip link add {here} type veth peer name {there} && ip link set {there} netns {ns}"));
        // No IPv6 on the pair: its neighbour discovery would add packets to the byte counts.
        sh(&format!(
            "echo 1 > /proc/sys/net/ipv6/conf/{here}/disable_ipv6; ip addr add 10.199.{n}.1/24 dev {here} && ip link set {here} up"
        ));
        let ignore = if kernel_echo { 0 } else { 1 };
        sh(&format!(
            "ip netns exec {ns} sh -c 'echo 1 > /proc/sys/net/ipv6/conf/{there}/disable_ipv6; \
             echo {ignore} > /proc/sys/net/ipv4/icmp_echo_ignore_all; \
             ip addr add 10.199.{n}.2/24 dev {there} && ip link set {there} up && ip link set lo up'"
        ));
        h
    }

    fn ip(&self) -> String {
        format!("10.199.{}.2", self.n)
    }

    /// A command run inside the namespace.
    fn exec(&self, program: &str, args: &[&str]) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.ns, program]).args(args).env("XDG_DATA_HOME", common::data_home());
        c
    }
}

impl Drop for Host {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.ns]).output();
        let _ = Command::new("ip").args(["link", "del", &self.here]).output();
    }
}

/// Starts `cmd` and kills it on drop.
struct Bg(std::process::Child);
impl Drop for Bg {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
fn background(mut cmd: Command) -> Bg {
    Bg(cmd.stdout(Stdio::null()).stderr(Stdio::null()).spawn().expect("spawn"))
}

fn summary_numbers(out: &str) -> (u64, u64, [f64; 4]) {
    let counts = out.lines().find(|l| l.contains("packets transmitted")).unwrap_or_else(|| panic!("{out}"));
    let nums: Vec<u64> = counts.split(|c: char| !c.is_ascii_digit()).filter_map(|s| s.parse().ok()).collect();
    let rtt = out.lines().find(|l| l.starts_with("rtt ")).unwrap_or_else(|| panic!("{out}"));
    let v: Vec<f64> =
        rtt.split('=').nth(1).unwrap().trim().trim_end_matches(" ms").split('/').map(|x| x.parse().unwrap()).collect();
    (nums[0], nums[1], [v[0], v[1], v[2], v[3]])
}

/// Whether `received` of `sent` is within 4 standard deviations of a binomial with loss `p`.
fn loss_within_binomial(sent: u64, received: u64, p: f64) -> bool {
    let n = sent as f64;
    let expected_lost = n * p;
    let sd = (n * p * (1.0 - p)).sqrt();
    ((sent - received) as f64 - expected_lost).abs() <= 4.0 * sd
}

#[test]
fn icmp_rtt_and_loss_match_the_injected_delay_and_loss() {
    let _serial = serial();
    let host = Host::new(1, false);
    let _responder = Proc::up_command(host.exec(
        env!("CARGO_BIN_EXE_netpulse"),
        &["serve", "icmp", "--delay", "20ms", "--loss", "0.2", "--seed", "3", "-q"],
    ));
    let (code, out) = run(&["ping", &host.ip(), "-c", "100", "-i", "0.02", "-W", "1", "-q"], Duration::from_secs(20));
    assert_eq!(code, 0, "{out}");
    let (sent, received, [min, avg, max, _mdev]) = summary_numbers(&out);
    assert_eq!(sent, 100);
    assert!(loss_within_binomial(sent, received, 0.2), "{received}/{sent} received with 20% loss injected: {out}");
    // The responder holds each reply 20 ms from the kernel's receive time; what is added on top
    // is the veth round trip and two wake-ups (tens of µs each). 1.5 ms on the mean absorbs
    // scheduling on a busy 2-core machine; the minimum can never be below the delay.
    assert!(min >= 20.0, "min {min} below the injected 20 ms: {out}");
    assert!(avg <= 21.5, "avg {avg} more than 1.5 ms above the injected 20 ms: {out}");
    assert!(max < 40.0, "max {max}: {out}");
}

#[test]
fn udp_targets_measure_the_injected_delay_and_loss() {
    let _serial = serial();
    let _server = Proc::up(&[
        "serve",
        "udp",
        "--bind",
        "127.0.5.1",
        "--ports",
        "2526",
        "--delay",
        "15ms",
        "--loss",
        "0.25",
        "--seed",
        "9",
        "-q",
    ]);
    let (code, out) = run(
        &[
            "monitor",
            "udp://127.0.5.1:2526",
            "--interval",
            "40ms",
            "--timeout",
            "200ms",
            "--count",
            "80",
            "--window",
            "1000",
            "--format",
            "json",
        ],
        Duration::from_secs(20),
    );
    assert_eq!(code, 0, "{out}");
    let last = out.lines().rfind(|l| l.starts_with('{')).unwrap();
    let v: serde_json::Value = serde_json::from_str(last).unwrap();
    let t = &v["targets"][0];
    assert_eq!(t["probe"], "udp");
    let (sent, received) = (t["sent"].as_u64().unwrap(), t["received"].as_u64().unwrap());
    assert_eq!(sent, 80);
    assert!(loss_within_binomial(sent, received, 0.25), "{t}");
    let (min, avg) = (t["rtt_min_ms"].as_f64().unwrap(), t["rtt_avg_ms"].as_f64().unwrap());
    assert!(min >= 15.0 && avg <= 17.0, "injected 15 ms, measured min {min} avg {avg}");
    let loss = t["loss_pct"].as_f64().unwrap();
    assert!((loss - (sent - received) as f64 * 100.0 / sent as f64).abs() < 1e-9);
}

fn iface_counter(json_line: &str, name: &str, field: &str) -> (u64, f64, bool) {
    let v: serde_json::Value = serde_json::from_str(json_line).unwrap();
    let i = v["interfaces"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["name"] == name)
        .unwrap_or_else(|| panic!("{name} missing: {json_line}"));
    (i[field].as_u64().unwrap(), i["rx_bytes_per_sec"].as_f64().unwrap(), i["up"].as_bool().unwrap())
}

fn once(iface: &str) -> String {
    let (code, out) = run(&["monitor", "--once", "--format", "json", "--interval", "100ms"], Duration::from_secs(5));
    assert_eq!(code, 0, "{out}");
    let line = out.lines().find(|l| l.starts_with('{')).unwrap().to_string();
    assert!(line.contains(iface), "{line}");
    line
}

const SEND_UDP: &str = "import socket,sys,time
s=socket.socket(socket.AF_INET,socket.SOCK_DGRAM)
n,size,secs=int(sys.argv[2]),int(sys.argv[3]),float(sys.argv[4])
end=time.time()+secs
i=0
while i<n or time.time()<end:
    s.sendto(b'x'*size,(sys.argv[1],9999)); i+=1
";

#[test]
fn byte_counts_are_exact_and_shaped_rates_are_measured() {
    let _serial = serial();
    let host = Host::new(2, true);
    let sink = UdpSocket::bind("10.199.2.1:9999").unwrap();
    thread::spawn(move || {
        let mut b = [0u8; 2048];
        while sink.recv(&mut b).is_ok() {}
    });
    // Resolve the neighbour first, so that no ARP packet lands inside the measured window.
    let status = host
        .exec(env!("CARGO_BIN_EXE_netpulse"), &["ping", "10.199.2.1", "-c", "2", "-i", "0.1", "-q"])
        .status()
        .unwrap();
    assert!(status.success());
    let before = iface_counter(&once(&host.here), &host.here, "rx_bytes").0;
    let packets_before = iface_counter(&once(&host.here), &host.here, "rx_packets").0;
    assert!(host.exec("python3", &["-c", SEND_UDP, "10.199.2.1", "1000", "1000", "0"]).status().unwrap().success());
    let line = wait_until("the interface counters to count 1000 packets", Duration::from_secs(5), || {
        let line = once(&host.here);
        (iface_counter(&line, &host.here, "rx_packets").0 - packets_before >= 1000).then_some(line)
    });
    let after = iface_counter(&line, &host.here, "rx_bytes").0;
    let packets = iface_counter(&line, &host.here, "rx_packets").0 - packets_before;
    // 1000 frames of 1000 bytes of payload + 8 UDP + 20 IPv4 + 14 Ethernet header.
    assert_eq!(packets, 1000);
    assert_eq!(after - before, 1000 * (1000 + 8 + 20 + 14));

    // Shape the namespace's sending side to 8 Mbit/s and measure the rate arriving here.
    sh(&format!(
        "ip netns exec {} tc qdisc add dev {} root tbf rate 8mbit burst 16kb latency 50ms",
        host.ns, host.there
    ));
    let _load = background(host.exec("python3", &["-c", SEND_UDP, "10.199.2.1", "0", "1000", "6"]));
    thread::sleep(Duration::from_millis(500));
    let (code, out) =
        run(&["monitor", "--format", "json", "--interval", "1s", "--count", "3"], Duration::from_secs(10));
    assert_eq!(code, 0, "{out}");
    let reports: Vec<&str> = out.lines().filter(|l| l.starts_with('{')).collect();
    assert_eq!(reports.len(), 3);
    for line in &reports[1..] {
        let rate = iface_counter(line, &host.here, "rx_bytes").1;
        // tbf counts the whole frame: 8 Mbit/s is 1,000,000 bytes/s of frames.
        assert!((rate - 1_000_000.0).abs() < 50_000.0, "measured {rate} B/s through an 8 Mbit/s shaper");
    }
}

#[test]
fn a_link_going_down_is_reported_within_an_interval() {
    let _serial = serial();
    let host = Host::new(3, true);
    let mut child = common::netpulse()
        .args(["monitor", &host.ip(), "--interval", "300ms", "--count", "12", "--format", "json"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let lines: Arc<Mutex<Vec<(Instant, String)>>> = Arc::default();
    let reader = BufReader::new(child.stdout.take().unwrap());
    let l = lines.clone();
    thread::spawn(move || {
        for line in reader.lines().map_while(Result::ok) {
            l.lock().unwrap().push((Instant::now(), line));
        }
    });
    wait_until("three reports", Duration::from_secs(5), || (lines.lock().unwrap().len() >= 3).then_some(()));
    {
        let seen = lines.lock().unwrap();
        let v: serde_json::Value = serde_json::from_str(&seen[2].1).unwrap();
        assert_eq!(v["targets"][0]["up"], true, "{}", seen[2].1);
        assert_eq!(v["connectivity"], "connected");
    }
    let down_at = Instant::now();
    sh(&format!("ip netns exec {} ip link set {} down", host.ns, host.there));
    let _ = child.wait();
    let seen = lines.lock().unwrap();
    let first_down = seen
        .iter()
        .filter(|(at, _)| *at > down_at)
        .find(|(_, l)| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            v["targets"][0]["up"] == false && v["connectivity"] == "disconnected"
        })
        .unwrap_or_else(|| panic!("never reported down: {seen:?}"));
    let after = first_down.0 - down_at;
    // The next report sees the link down and the target behind it: within one interval (300 ms),
    // plus 100 ms for reading counters and scheduling on a busy machine.
    assert!(after <= Duration::from_millis(400), "reported down {after:?} after the link went down");
    let v: serde_json::Value = serde_json::from_str(&first_down.1).unwrap();
    let here = v["interfaces"].as_array().unwrap().iter().find(|i| i["name"] == host.here.as_str()).unwrap();
    assert_eq!(here["up"], false, "the host side of the veth has no carrier");
}

#[test]
fn status_gives_a_verdict_and_no_internet_is_disconnected() {
    let _serial = serial();
    let host = Host::new(5, true);
    let status = |args: &[&str]| {
        let out = host
            .exec(env!("CARGO_BIN_EXE_netpulse"), &[&["status", "--timeout", "1s"], args].concat())
            .output()
            .unwrap();
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr),
        )
    };
    // No default route, so nothing public is reachable (and no packet leaves): a verdict, not an error.
    let (code, out) = status(&[]);
    assert_eq!(code, 2, "{out}");
    assert!(out.contains("route      FAIL  no default route") && out.contains("verdict: disconnected"), "{out}");
    assert!(out.contains("reach      FAIL  tcp://1.1.1.1:53"), "{out}");

    // With a default route and reachable targets: connected.
    let listener = std::net::TcpListener::bind("10.199.5.1:7000").unwrap();
    sh(&format!("ip netns exec {} ip route add default via 10.199.5.1", host.ns));
    let (code, out) = status(&["--target", "tcp://10.199.5.1:7000", "--resolve", "localhost"]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains(&format!("interface  ok    {} 10.199.5.2", host.there)), "{out}");
    assert!(
        out.contains(&format!("route      ok    IPv4 via {}", host.there)) && out.contains("verdict: connected"),
        "{out}"
    );

    // One of two targets down: degraded.
    let (code, out) = status(&["-t", "tcp://10.199.5.1:7000", "-t", "tcp://10.199.5.1:7001", "--resolve", "localhost"]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("reach      FAIL  tcp://10.199.5.1:7001") && out.contains("verdict: degraded"), "{out}");
    drop(listener);
}

#[test]
fn unprivileged_ping_uses_echo_sockets_or_says_what_to_change() {
    let _serial = serial();
    let np = env!("CARGO_BIN_EXE_netpulse");
    let drop_raw = ["--bounding-set", "-net_raw", "--inh-caps", "-net_raw", np, "ping", "-c", "2", "-i", "0.05"];
    // Without CAP_NET_RAW and with echo sockets not allowed: exit 2 and the exact fix.
    let host = Host::new(6, true);
    sh(&format!("ip netns exec {} sh -c 'echo 1 0 > /proc/sys/net/ipv4/ping_group_range'", host.ns));
    let out = host.exec("setpriv", &[&drop_raw[..], &["127.0.0.1"]].concat()).output().unwrap();
    let text = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{text}");
    assert!(text.contains("net.ipv4.ping_group_range") && text.contains("CAP_NET_RAW"), "{text}");
    assert!(out.stdout.is_empty(), "nothing is printed before the error");

    // Once the namespace allows echo sockets, the same unprivileged ping works, IPv4 and IPv6.
    sh(&format!("ip netns exec {} sh -c 'echo 0 2147483647 > /proc/sys/net/ipv4/ping_group_range'", host.ns));
    for target in ["127.0.0.1", "::1"] {
        let out = host.exec("setpriv", &[&drop_raw[..], &[target]].concat()).output().unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert_eq!(out.status.code(), Some(0), "{text}{}", String::from_utf8_lossy(&out.stderr));
        assert!(text.contains("2 packets transmitted, 2 received, 0% packet loss"), "{text}");
    }
}
