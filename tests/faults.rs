//! Faults from the client side and from the machine: slow heads, descriptor exhaustion, a stop
//! under load, too few connection slots, strangers poking at UDP flows. Real processes on
//! loopback; `ulimit -n` through `sh` to run out of descriptors.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use common::{Proc, addr, get, netpulse, run, wait_until};

/// `netpulse ARGS` started by `sh` with at most `fds` open descriptors.
fn with_fd_limit(fds: u32, args: &[&str]) -> Proc {
    let bin = netpulse().get_program().to_string_lossy().into_owned();
    let mut cmd = Command::new("sh");
    cmd.arg("-c").arg(format!("ulimit -n {fds} && exec \"$0\" \"$@\"")).arg(bin).args(args);
    Proc::up_command(cmd)
}

#[test]
fn a_head_that_trickles_in_is_cut_at_the_deadline_with_408() {
    let _backend = Proc::up(&["serve", "http", "--bind", "127.0.12.1", "--ports", "8001", "--quiet"]);
    let _lb = Proc::up(&[
        "balance",
        "http",
        "--listen",
        "127.0.12.1:8000",
        "--head-timeout",
        "1s",
        "--quiet",
        "--backend",
        "127.0.12.1:8001",
    ]);
    let mut s = TcpStream::connect("127.0.12.1:8000").unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let start = Instant::now();
    s.write_all(b"GET / HTTP/1.1\r\n").unwrap();
    // One byte every 200 ms: each read is quick, the head never ends.
    let trickle = s.try_clone().unwrap();
    thread::spawn(move || {
        let mut t = trickle;
        for _ in 0..40 {
            thread::sleep(Duration::from_millis(200));
            if t.write_all(b"X").is_err() {
                return;
            }
        }
    });
    let mut answer = String::new();
    let _ = s.read_to_string(&mut answer);
    let took = start.elapsed();
    assert!(answer.starts_with("HTTP/1.1 408 Request Timeout\r\n"), "{answer:?}");
    assert!(took >= Duration::from_millis(900) && took < Duration::from_secs(3), "{took:?}");
    // A well-behaved client is still served.
    assert_eq!(get(addr("127.0.12.1:8000"), "/").status, 200);
}

#[test]
fn out_of_descriptors_the_balancer_survives_and_serves_again() {
    let _backend = Proc::up(&["serve", "http", "--bind", "127.0.12.2", "--ports", "8001", "--quiet"]);
    let lb = with_fd_limit(
        48,
        &[
            "balance",
            "http",
            "--listen",
            "127.0.12.2:8000",
            "--workers",
            "1",
            "--check",
            "none",
            "--quiet",
            "--backend",
            "127.0.12.2:8001",
        ],
    );
    let front = addr("127.0.12.2:8000");
    // Many clients at once, each holding its connection: more than the descriptors allow.
    let mut held = Vec::new();
    let mut answered = std::collections::BTreeMap::new();
    for _ in 0..60 {
        let Ok(mut s) = TcpStream::connect(front) else { continue };
        s.set_read_timeout(Some(Duration::from_millis(300))).unwrap();
        let _ = s.write_all(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n");
        let mut line = String::new();
        let _ = BufReader::new(s.try_clone().unwrap()).read_line(&mut line);
        let status = line.split(' ').nth(1).unwrap_or("none").to_string();
        *answered.entry(status).or_insert(0) += 1;
        held.push(s);
    }
    // Some were served, the rest waited or were told 503; nobody got a 502 for our shortage.
    assert!(answered.get("200").copied().unwrap_or(0) > 5, "{answered:?}");
    assert!(!answered.contains_key("502"), "{answered:?}");
    drop(held);
    // Descriptors come back: the balancer serves again, and said what happened once a second
    // at most.
    wait_until(lb.printed(), Duration::from_secs(5), || (get(front, "/").status == 200).then_some(()));
    let out = lb.output();
    assert!(out.contains("Too many open files"), "{out}");
    assert!(out.matches("accept: Too many open files").count() <= 10, "not throttled:\n{out}");
}

#[test]
fn udp_sources_beyond_the_descriptor_limit_do_not_end_the_balancer() {
    let _servers = Proc::up(&["serve", "udp", "--bind", "127.0.12.3", "--ports", "2526", "--quiet"]);
    let lb = with_fd_limit(
        64,
        &[
            "balance",
            "udp",
            "--listen",
            "127.0.12.3:8888",
            "--workers",
            "1",
            "--check",
            "none",
            "--quiet",
            "--backend",
            "127.0.12.3:2526",
        ],
    );
    // 150 sources, each wanting a flow (and so a descriptor) of its own: more than 64.
    let mut replies = 0;
    let sources: Vec<UdpSocket> = (0..150).map(|_| UdpSocket::bind("127.0.12.3:0").unwrap()).collect();
    for s in &sources {
        s.send_to(b"ping", "127.0.12.3:8888").unwrap();
    }
    for s in &sources {
        s.set_read_timeout(Some(Duration::from_millis(50))).unwrap();
        let mut buf = [0u8; 16];
        if s.recv(&mut buf).is_ok() {
            replies += 1;
        }
    }
    // Sent all at once, the newest ~50 fit (older flows gave their socket to newer ones, and
    // their late replies reach nobody); what matters is that the process lives on.
    assert!(replies > 30, "only {replies} of 150 answered");
    // Still alive, still relaying.
    let (code, out) = run(&["udp-ping", "127.0.12.3", "8888", "-c", "3"], Duration::from_secs(10));
    assert_eq!(code, 0, "{out}\n{}", lb.output());
    assert!(out.contains("3 received"), "{out}");
}

#[test]
fn fewer_connection_slots_than_workers_leave_nobody_hanging() {
    let _backend = Proc::up(&["serve", "http", "--bind", "127.0.12.4", "--ports", "8001", "--quiet"]);
    let _lb = Proc::up(&[
        "balance",
        "http",
        "--listen",
        "127.0.12.4:8000",
        "--workers",
        "2",
        "--max-connections",
        "1",
        "--quiet",
        "--backend",
        "127.0.12.4:8001",
    ]);
    for i in 0..8 {
        let t = Instant::now();
        let r = get(addr("127.0.12.4:8000"), "/");
        assert_eq!(r.status, 200, "request {i}");
        assert!(t.elapsed() < Duration::from_secs(2), "request {i} waited {:?}", t.elapsed());
    }
}

/// Sends GETs on keep-alive connections until told to stop; counts answers, and requests sent
/// that got no answer (lost). A `Connection: close` answer ends that client politely.
fn steady_client(front: SocketAddr, stop: Arc<AtomicBool>, ok: Arc<AtomicU64>, lost: Arc<AtomicU64>) {
    while !stop.load(Ordering::Relaxed) {
        let Ok(s) = TcpStream::connect(front) else { return };
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut w = s.try_clone().unwrap();
        let mut r = BufReader::new(s);
        loop {
            if w.write_all(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n").is_err() {
                lost.fetch_add(1, Ordering::Relaxed);
                return;
            }
            let mut status = String::new();
            if r.read_line(&mut status).unwrap_or(0) == 0 {
                lost.fetch_add(1, Ordering::Relaxed);
                return;
            }
            let (mut len, mut close) = (0usize, false);
            loop {
                let mut h = String::new();
                r.read_line(&mut h).unwrap();
                let h = h.trim_end().to_ascii_lowercase();
                if h.is_empty() {
                    break;
                }
                if let Some(v) = h.strip_prefix("content-length:") {
                    len = v.trim().parse().unwrap();
                }
                close |= h == "connection: close";
            }
            let mut body = vec![0u8; len];
            r.read_exact(&mut body).unwrap();
            assert!(status.contains(" 200 "), "{status}");
            ok.fetch_add(1, Ordering::Relaxed);
            if close {
                break;
            }
            if stop.load(Ordering::Relaxed) {
                return;
            }
        }
    }
}

#[test]
fn sigterm_under_load_loses_no_request() {
    let _backend = Proc::up(&["serve", "http", "--bind", "127.0.12.5", "--ports", "8001-8002", "--quiet"]);
    let mut lb = Proc::up(&[
        "balance",
        "http",
        "--listen",
        "127.0.12.5:8000",
        "--quiet",
        "--backend",
        "127.0.12.5:8001,127.0.12.5:8002",
    ]);
    let front = addr("127.0.12.5:8000");
    let stop = Arc::new(AtomicBool::new(false));
    let (ok, lost) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let clients: Vec<_> = (0..16)
        .map(|_| {
            let (stop, ok, lost) = (stop.clone(), ok.clone(), lost.clone());
            thread::spawn(move || steady_client(front, stop, ok, lost))
        })
        .collect();
    thread::sleep(Duration::from_millis(500));
    let status = lb.signal_and_wait("TERM", Duration::from_secs(5));
    stop.store(true, Ordering::Relaxed);
    for c in clients {
        c.join().unwrap();
    }
    assert!(status.success(), "{status:?}");
    assert!(ok.load(Ordering::Relaxed) > 100, "{} answered", ok.load(Ordering::Relaxed));
    assert_eq!(lost.load(Ordering::Relaxed), 0, "requests lost at the stop");
}

#[test]
fn datagrams_from_strangers_do_not_keep_a_udp_flow_alive() {
    // A backend that answers and tells us which address each request came from.
    let backend = UdpSocket::bind("127.0.12.6:2526").unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    thread::spawn(move || {
        let mut buf = [0u8; 64];
        while let Ok((n, from)) = backend.recv_from(&mut buf) {
            let _ = tx.send(from);
            let _ = backend.send_to(&buf[..n], from);
        }
    });
    let _lb = Proc::up(&[
        "balance",
        "udp",
        "--listen",
        "127.0.12.6:8888",
        "--flow-idle-timeout",
        "400ms",
        "--check",
        "none",
        "--quiet",
        "--backend",
        "127.0.12.6:2526",
    ]);
    let client = UdpSocket::bind("127.0.12.6:0").unwrap();
    client.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    let mut buf = [0u8; 64];
    client.send_to(b"one", "127.0.12.6:8888").unwrap();
    client.recv(&mut buf).unwrap();
    let flow = rx.recv_timeout(Duration::from_secs(2)).unwrap();
    // The flow's socket is bound to the address that reaches the backend, not to every one.
    assert_eq!(flow.ip().to_string(), "127.0.0.1", "{flow}");
    // A stranger keeps writing to the flow's socket for longer than its idle timeout.
    let stranger = UdpSocket::bind("127.0.12.7:0").unwrap();
    for _ in 0..10 {
        stranger.send_to(b"junk", flow).unwrap();
        thread::sleep(Duration::from_millis(100));
    }
    client.send_to(b"two", "127.0.12.6:8888").unwrap();
    client.recv(&mut buf).unwrap();
    let second = rx.recv_timeout(Duration::from_secs(2)).unwrap();
    assert_ne!(second, flow, "the stranger kept the idle flow alive");
}

#[test]
fn up_raises_the_descriptor_limit_and_warns_when_the_config_needs_more() {
    let lb = with_fd_limit(
        256,
        &[
            "balance",
            "udp",
            "--listen",
            "127.0.12.8:8888",
            "--max-flows",
            "100000",
            "--check",
            "none",
            "--backend",
            "127.0.12.8:2526",
        ],
    );
    // `ulimit -n` set both limits, so there is nothing to raise to: the warning names the fix.
    let out = lb.output();
    assert!(out.contains("open descriptors") && out.contains("ulimit -n"), "{out}");
}

#[test]
fn max_connections_are_lowered_to_fit_the_descriptor_limit() {
    let lb = with_fd_limit(
        512,
        &["balance", "http", "--listen", "127.0.12.9:8000", "--check", "none", "--backend", "127.0.12.9:8001"],
    );
    let out = lb.output();
    assert!(out.contains("max_connections 10000 lowered to") && out.contains("descriptor limit 512"), "{out}");
}
