//! The `measured` strategy's lab (issue 10, item 3), run by hand with examples/measured.toml and
//! examples/lab/measured-lab.sh and here with the very same files: three hosts in network
//! namespaces (10.199.35-37.2), each with an HTTP backend and a UDP ping server, one host
//! answering 20 ms late and one losing 20 % (of its HTTP probes; of its UDP datagrams), faults
//! injected in user space; for each protocol a round-robin and a `measured` balancer on
//! 127.0.28.1 over the three. Run as root with iproute2 and python3.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use common::{Http, Proc, addr, wait_until};

const SCRIPT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/lab/measured-lab.sh");
const CONFIG: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/measured.toml");
/// The backends by their ports: fast, lossy, slow (HTTP; the UDP ones are 2526-2528).
const FAST: u16 = 8001;
const LOSSY: u16 = 8002;
const SLOW: u16 = 8003;
const UDP: [u16; 3] = [2526, 2527, 2528];

/// The lab's hosts and backends, as the script builds them; torn down on drop.
struct Lab {
    run: PathBuf,
}

impl Lab {
    fn up() -> Lab {
        let run = common::data_home().join("lab");
        let lab = Lab { run };
        let out = lab.script("up");
        assert!(out.contains("measured-lab is up"), "{out}");
        lab
    }

    /// Runs `measured-lab.sh WHAT`; its output.
    fn script(&self, what: &str) -> String {
        let out = Command::new("sh")
            .arg(SCRIPT)
            .arg(what)
            .env("NETPULSE", env!("CARGO_BIN_EXE_netpulse"))
            .env("RUN", &self.run)
            .output()
            .expect("sh");
        let text = String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "measured-lab.sh {what} failed (root, iproute2 and python3 needed): {text}");
        text
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        let _ = Command::new("sh").arg(SCRIPT).arg("down").env("RUN", &self.run).output();
    }
}

/// examples/measured.toml with the balancers and the monitor on 127.0.28.1 instead of 127.0.0.1.
fn config(dir: &Path) -> PathBuf {
    let text = std::fs::read_to_string(CONFIG).unwrap().replace("127.0.0.1", "127.0.28.1");
    assert!(text.contains("listen = \"127.0.28.1:8080\""), "{text}");
    let path = dir.join("measured.toml");
    std::fs::write(&path, text).unwrap();
    path
}

/// Which backend answered each request, and when, per balancer.
type Answers = Arc<Mutex<Vec<(Instant, &'static str, u16)>>>;

/// A client that sends a request every 20 ms on a keep-alive connection to `balancer` and notes
/// which backend answered, until `stop`. (The lab is kept light: on a busy machine, its own load
/// would slow the relays and so every probe's round trip, which is what `measured` compares.)
fn load(
    at: SocketAddr,
    balancer: &'static str,
    answers: &Answers,
    stop: &Arc<AtomicBool>,
) -> Vec<thread::JoinHandle<()>> {
    (0..1)
        .map(|_| {
            let (answers, stop) = (answers.clone(), stop.clone());
            thread::spawn(move || {
                let mut http = Http::connect(at);
                while !stop.load(Ordering::Relaxed) {
                    let r = http.get("/");
                    assert_eq!(r.status, 200, "{balancer}: {r:?}");
                    let port = r.body.trim().rsplit(' ').next().and_then(|p| p.parse().ok()).unwrap_or(0);
                    answers.lock().unwrap().push((Instant::now(), balancer, port));
                    thread::sleep(Duration::from_millis(20));
                }
            })
        })
        .collect()
}

/// Datagrams to 127.0.28.1:`port` (the classic ping, one every 10 ms; replies read by a
/// thread of their own, so that a lost one holds nothing up) until `stop`.
fn udp_load(port: u16, stop: &Arc<AtomicBool>) -> Vec<thread::JoinHandle<()>> {
    let socket = std::net::UdpSocket::bind("127.0.28.1:0").unwrap();
    socket.connect(("127.0.28.1", port)).unwrap();
    socket.set_read_timeout(Some(Duration::from_millis(100))).unwrap();
    let reader = socket.try_clone().unwrap();
    let (s1, s2) = (stop.clone(), stop.clone());
    let send = thread::spawn(move || {
        let mut seq = 0u64;
        while !s1.load(Ordering::Relaxed) {
            seq += 1;
            let _ = socket.send(format!("PING {seq} 00:00:00").as_bytes());
            thread::sleep(Duration::from_millis(10));
        }
    });
    let read = thread::spawn(move || {
        let mut buf = [0u8; 64];
        while !s2.load(Ordering::Relaxed) {
            let _ = reader.recv(&mut buf);
        }
    });
    vec![send, read]
}

/// Datagrams sent to each backend of UDP balancer `name` so far, by port.
fn udp_counts(api: SocketAddr, name: &str) -> BTreeMap<u16, u64> {
    backends(api, name).into_iter().map(|(p, b)| (p, b["udp"]["datagrams_sent"].as_u64().unwrap())).collect()
}

/// Each backend's share of the datagrams between two counts of the same balancer, and how many.
fn udp_shares(then: &BTreeMap<u16, u64>, now: &BTreeMap<u16, u64>) -> (BTreeMap<u16, f64>, u64) {
    let sent: BTreeMap<u16, u64> = now.iter().map(|(p, n)| (*p, n - then.get(p).copied().unwrap_or(0))).collect();
    let total: u64 = sent.values().sum();
    (sent.into_iter().map(|(p, n)| (p, n as f64 / total.max(1) as f64)).collect(), total)
}

/// Each backend's share of `balancer`'s answers between `from` and `to`, and how many there were.
fn shares(answers: &Answers, balancer: &str, from: Instant, to: Instant) -> (BTreeMap<u16, f64>, usize) {
    let answers = answers.lock().unwrap();
    let mut counts: BTreeMap<u16, usize> = [(FAST, 0), (LOSSY, 0), (SLOW, 0)].into();
    let mut total = 0;
    for &(at, b, port) in answers.iter() {
        if b == balancer && at >= from && at < to {
            *counts.entry(port).or_default() += 1;
            total += 1;
        }
    }
    (counts.into_iter().map(|(p, n)| (p, n as f64 / total.max(1) as f64)).collect(), total)
}

/// A page of the web server (which wants an address for a Host).
fn api_get(api: SocketAddr, path: &str) -> String {
    Http::connect(api).raw(format!("GET {path} HTTP/1.1\r\nHost: {api}\r\n\r\n").as_bytes()).body
}

/// The backends of balancer `name` in `/api/v1/balancers`, by port.
fn backends(api: SocketAddr, name: &str) -> BTreeMap<u16, serde_json::Value> {
    let body = api_get(api, "/api/v1/balancers");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap_or_else(|e| panic!("{e}: {body}"));
    let list = v["balancers"].as_array().unwrap_or_else(|| panic!("{body}")).clone();
    let b = list.iter().find(|b| b["name"] == name).unwrap_or_else(|| panic!("no {name}: {body}"));
    b["backends"]
        .as_array()
        .unwrap()
        .iter()
        .map(|be| (be["addr"].as_str().unwrap().parse::<SocketAddr>().unwrap().port(), be.clone()))
        .collect()
}

/// Text made only when shown: what a [`wait_until`] that gives up says.
struct Lazy<F: Fn() -> String>(F);

impl<F: Fn() -> String> std::fmt::Display for Lazy<F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&(self.0)())
    }
}

fn pct(shares: &BTreeMap<u16, f64>) -> String {
    shares.iter().map(|(p, s)| format!("{p} {:.1}%", s * 100.0)).collect::<Vec<_>>().join(", ")
}

#[test]
fn measured_sends_less_to_a_slow_and_a_lossy_backend_and_more_again_once_the_delay_is_gone() {
    let lab = Lab::up();
    let dir = common::data_home();
    let up = Proc::up(&["up", "--config", config(&dir).to_str().unwrap(), "--no-tui"]);
    let (rr, measured, api) = (addr("127.0.28.1:8000"), addr("127.0.28.1:8080"), addr("127.0.28.1:9100"));
    assert!(up.output().contains("their RTT and loss set the weights"), "{}", up.output());
    let started = Instant::now();
    let answers: Answers = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let mut clients = load(rr, "round-robin", &answers, &stop);
    clients.extend(load(measured, "measured", &answers, &stop));
    clients.extend(udp_load(8888, &stop));
    clients.extend(udp_load(8889, &stop));

    // The probes weigh the slow backend down within seconds (its RTT EWMA has a 2 s half-life).
    let factor = |b: &BTreeMap<u16, serde_json::Value>, port: u16| b[&port]["measured"].as_f64().unwrap();
    wait_until(format_args!("the slow backends' weights to fall; {}", up.printed()), Duration::from_secs(30), || {
        let http = factor(&backends(api, "measured"), SLOW);
        let udp = factor(&backends(api, "measured-udp"), UDP[2]);
        (http < 0.2 && udp < 0.2).then_some(())
    });
    // Forty seconds of the lab's probes (160) before counting, so that the lossy backend's
    // loss is measured (over 80 probes its estimate strays ±4.5 points, enough to give it 20 %
    // now and then; over 160, ±3.2); then twenty seconds of traffic.
    thread::sleep(Duration::from_secs(40).saturating_sub(started.elapsed()));
    let from = Instant::now();
    let udp_from = (udp_counts(api, "round-robin-udp"), udp_counts(api, "measured-udp"));
    thread::sleep(Duration::from_secs(20));
    let to = Instant::now();
    let (udp_round, n_udp_round) = udp_shares(&udp_from.0, &udp_counts(api, "round-robin-udp"));
    let (udp_weighed, n_udp_weighed) = udp_shares(&udp_from.1, &udp_counts(api, "measured-udp"));
    let (round, n_round) = shares(&answers, "round-robin", from, to);
    let (weighed, n_weighed) = shares(&answers, "measured", from, to);
    let why = backends(api, "measured");
    let said: Vec<String> = why.iter().map(|(p, b)| format!("{p}: {}", b["weight_why"])).collect();
    println!("round robin over 20 s: {} of {n_round}", pct(&round));
    println!("measured over 20 s: {} of {n_weighed}; {}", pct(&weighed), said.join("; "));
    let udp_why = backends(api, "measured-udp");
    let udp_said: Vec<String> = udp_why.iter().map(|(p, b)| format!("{p}: {}", b["weight_why"])).collect();
    println!("udp round robin over 20 s: {} of {n_udp_round}", pct(&udp_round));
    println!("udp measured over 20 s: {} of {n_udp_weighed}; {}", pct(&udp_weighed), udp_said.join("; "));
    for share in udp_round.values() {
        assert!((share - 1.0 / 3.0).abs() < 0.03, "udp round robin gives each a third: {}", pct(&udp_round));
    }
    assert!(n_udp_weighed > 800, "{n_udp_weighed} datagrams");
    assert!(udp_weighed[&UDP[2]] < 0.15, "the slow UDP server gets less than 15 %: {}", pct(&udp_weighed));
    assert!(udp_weighed[&UDP[1]] < 0.20, "the lossy UDP server gets less than 20 %: {}", pct(&udp_weighed));
    for (port, share) in &round {
        assert!((share - 1.0 / 3.0).abs() < 0.03, "round robin gives each a third: {}", pct(&round));
        assert!(*port != 0, "an answer that named no port");
    }
    assert!(n_weighed > 400, "{n_weighed} requests");
    assert!(weighed[&SLOW] < 0.15, "the slow backend gets less than 15 %: {}", pct(&weighed));
    assert!(weighed[&LOSSY] < 0.20, "the lossy backend gets less than 20 %: {}", pct(&weighed));
    // Each weight says why, in words.
    assert!(why[&FAST]["weight_why"].as_str().unwrap().contains("best (rtt"), "{said:?}");
    let slow = why[&SLOW]["weight_why"].as_str().unwrap();
    assert!(slow.starts_with("weight 0.") && slow.contains("× the median"), "{said:?}");
    assert!(why[&LOSSY]["weight_why"].as_str().unwrap().contains("loss"), "{said:?}");
    let page = api_get(api, "/metrics");
    let gauge = format!("netpulse_backend_measured_factor{{balancer=\"measured\",backend=\"10.199.37.2:{SLOW}\"");
    assert!(page.contains(&gauge), "{gauge} missing");

    // The delay goes: within 30 s, the slow backend gets about what the fast one gets again (over
    // the last 5 s, at least 80 % of the fast one's share), HTTP and UDP alike.
    lab.script("fast");
    let fixed = Instant::now();
    let mut counts: Vec<(Instant, BTreeMap<u16, u64>)> = Vec::new();
    let udp_back = wait_until(
        Lazy(|| format!("the slow UDP server's share to return; {:?}", backends(api, "measured-udp"))),
        Duration::from_secs(30),
        || {
            let now = Instant::now();
            if counts.last().is_none_or(|(t, _)| now - *t >= Duration::from_millis(250)) {
                counts.push((now, udp_counts(api, "measured-udp")));
            }
            let (t, newest) = counts.last()?;
            let (_, then) = counts.iter().rev().find(|(at, _)| *t - *at >= Duration::from_secs(5) && *at >= fixed)?;
            let (s, n) = udp_shares(then, newest);
            (n > 100 && s[&UDP[2]] >= 0.8 * s[&UDP[0]]).then(|| (fixed.elapsed(), s))
        },
    );
    println!("udp share back {:.1} s after the delay went: {}", udp_back.0.as_secs_f64(), pct(&udp_back.1));
    let back = wait_until(
        Lazy(|| {
            let now = Instant::now();
            let last = shares(&answers, "measured", now.checked_sub(Duration::from_secs(5)).unwrap_or(now), now);
            let why = backends(api, "measured").get(&SLOW).map(|b| b["weight_why"].clone());
            format!("the slow backend's share to return; last 5 s: {}; {why:?}", pct(&last.0))
        }),
        Duration::from_secs(30),
        || {
            let now = Instant::now();
            let since = now.checked_sub(Duration::from_secs(5)).filter(|t| *t >= fixed)?;
            let (s, n) = shares(&answers, "measured", since, now);
            (n > 100 && s[&SLOW] >= 0.8 * s[&FAST]).then(|| (fixed.elapsed(), s))
        },
    );
    println!("share back {:.1} s after the delay went: {}", back.0.as_secs_f64(), pct(&back.1));
    stop.store(true, Ordering::Relaxed);
    for c in clients {
        c.join().unwrap();
    }
}
