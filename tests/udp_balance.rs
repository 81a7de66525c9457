//! The UDP balancer and the UDP lab end to end: real `netpulse` processes and sockets on loopback.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::net::{SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use common::{Proc, addr, run, udp_client, wait_until};

/// Classic ping servers inside the test: echo upper-cased and record (server index, message).
fn recording_servers(ip: &str, ports: &[u16]) -> Arc<Mutex<Vec<(usize, String)>>> {
    let seen = Arc::new(Mutex::new(Vec::new()));
    for (i, &port) in ports.iter().enumerate() {
        let s = UdpSocket::bind((ip, port)).unwrap();
        let seen = seen.clone();
        thread::spawn(move || {
            let mut buf = vec![0u8; 65_536];
            while let Ok((n, from)) = s.recv_from(&mut buf) {
                seen.lock().unwrap().push((i, String::from_utf8_lossy(&buf[..n]).into_owned()));
                buf[..n].make_ascii_uppercase();
                let _ = s.send_to(&buf[..n], from);
            }
        });
    }
    seen
}

fn seq_of(msg: &str) -> u32 {
    msg.split(' ').nth(1).unwrap().parse().unwrap()
}

#[test]
fn rotation_is_per_datagram_and_continues_across_client_runs() {
    rotation_continues("127.0.2.1", true);
}

/// The same with `NETPULSE_IO_URING=off`: each request goes out with a `sendto` of its own, as
/// on a kernel without io_uring.
#[test]
fn rotation_is_per_datagram_and_continues_across_client_runs_without_io_uring() {
    rotation_continues("127.0.2.21", false);
}

fn rotation_continues(ip: &str, io_uring: bool) {
    let seen = recording_servers(ip, &[2526, 2527, 2528]);
    let mut cmd = common::netpulse();
    let backends = format!("{ip}:2526,{ip}:2527,{ip}:2528");
    cmd.args(["balance", "udp", "--listen", &format!("{ip}:8888"), "--check", "none", "--backend", &backends]);
    if !io_uring {
        cmd.env("NETPULSE_IO_URING", "off");
    }
    let lb = Proc::up_command(cmd);
    let mut order = Vec::new();
    for _run in 0..2 {
        let (code, out) = run(&["udp-ping", ip, "8888", "-c", "4"], Duration::from_secs(10));
        assert_eq!(code, 0, "{out}");
        assert!(out.contains("4 packets transmitted, 4 received, 0% packet loss"), "{out}");
        assert!(out.contains("rtt min/avg/max/mdev = "), "{out}");
        assert_eq!(out.matches(&format!("bytes from {ip}:8888: seq=")).count(), 4, "{out}");
        let mut got = std::mem::take(&mut *seen.lock().unwrap());
        got.sort_by_key(|(_, m)| seq_of(m));
        order.extend(got.into_iter().map(|(server, m)| (seq_of(&m), server)));
    }
    // ping 1 -> server 1, ping 2 -> server 2, ...; the second run resumes where the first stopped.
    assert_eq!(order, vec![(1, 0), (2, 1), (3, 2), (4, 0), (1, 1), (2, 2), (3, 0), (4, 1)]);
    lb.wait_for(&format!("-> {ip}:2527 15B"), Duration::from_secs(2));
    lb.wait_for(&format!("<- {ip}:2527 15B"), Duration::from_secs(2));
}

#[test]
fn the_largest_datagrams_pass_intact_both_ways() {
    let _servers = Proc::up(&["serve", "udp", "--bind", "127.0.2.2", "--ports", "2526-2527", "--quiet"]);
    let _lb = Proc::up(&[
        "balance",
        "udp",
        "--listen",
        "127.0.2.2:8888",
        "--backend",
        "127.0.2.2:2526,127.0.2.2:2527",
        "--quiet",
    ]);
    let c = udp_client("127.0.2.2");
    let mut buf = vec![0u8; 70_000];
    for size in [60_000usize, 65_507, 1, 1024, 1025] {
        let msg: Vec<u8> = (0..size).map(|i| b'a' + (i % 26) as u8).collect();
        c.send_to(&msg, addr("127.0.2.2:8888")).unwrap();
        let (n, from) = c.recv_from(&mut buf).unwrap();
        assert_eq!(from, addr("127.0.2.2:8888"));
        assert_eq!(n, size, "a {size}-byte datagram came back as {n} bytes");
        assert!(buf[..n].iter().zip(&msg).all(|(r, m)| *r == m.to_ascii_uppercase()));
    }
}

/// Sends `a-1`, `b-1`, `a-2`, ... from two clients; returns which server got each client's datagrams
/// and checks every reply went to the client that sent the request.
fn two_clients(ip: &str, lb: SocketAddr, seen: &Arc<Mutex<Vec<(usize, String)>>>) -> (Vec<usize>, Vec<usize>) {
    let (a, b) = (udp_client(ip), udp_client(ip));
    let mut buf = [0u8; 64];
    for i in 0..6 {
        for (c, tag) in [(&a, "a"), (&b, "b")] {
            let msg = format!("{tag}-{i}");
            c.send_to(msg.as_bytes(), lb).unwrap();
            let n = c.recv(&mut buf).unwrap();
            assert_eq!(&buf[..n], msg.to_uppercase().as_bytes(), "reply went to the wrong client");
        }
    }
    let got = seen.lock().unwrap();
    let servers = |tag: &str| got.iter().filter(|(_, m)| m.starts_with(tag)).map(|(s, _)| *s).collect::<Vec<_>>();
    (servers("a-"), servers("b-"))
}

#[test]
fn client_affinity_pins_each_client_and_default_mode_rotates() {
    let seen = recording_servers("127.0.2.3", &[2526, 2527, 2528]);
    let backends = "127.0.2.3:2526,127.0.2.3:2527,127.0.2.3:2528";
    let pinned = Proc::up(&[
        "balance",
        "udp",
        "--listen",
        "127.0.2.3:8888",
        "--backend",
        backends,
        "--affinity",
        "client",
        "--quiet",
    ]);
    // `--affinity client` is hash on the source: each client stays on the server its address
    // and port hash to (which one depends on the port the OS gave it).
    let (a, b) = two_clients("127.0.2.3", addr("127.0.2.3:8888"), &seen);
    assert_eq!(a, vec![a[0]; 6], "client a moved between servers");
    assert_eq!(b, vec![b[0]; 6], "client b moved between servers");
    drop(pinned);

    seen.lock().unwrap().clear();
    let _rotating = Proc::up(&["balance", "udp", "--listen", "127.0.2.3:8889", "--backend", backends, "--quiet"]);
    let (a, b) = two_clients("127.0.2.3", addr("127.0.2.3:8889"), &seen);
    assert_eq!(a, vec![0, 2, 1, 0, 2, 1]);
    assert_eq!(b, vec![1, 0, 2, 1, 0, 2]);
}

#[test]
fn a_silent_backend_blocks_nobody() {
    let _silent = UdpSocket::bind("127.0.2.4:2526").unwrap(); // receives, never answers
    let _servers = Proc::up(&["serve", "udp", "--bind", "127.0.2.4", "--ports", "2527", "--quiet"]);
    let _lb = Proc::up(&[
        "balance",
        "udp",
        "--listen",
        "127.0.2.4:8888",
        "--backend",
        "127.0.2.4:2526,127.0.2.4:2527",
        "--quiet",
    ]);
    let t = Instant::now();
    let (code, out) = run(&["udp-ping", "127.0.2.4", "8888", "-c", "6", "--timeout", "200ms"], Duration::from_secs(10));
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("6 packets transmitted, 3 received, 50% packet loss"), "{out}");
    assert_eq!(out.matches("Request timed out").count(), 3, "{out}");
    // Three timeouts of 200 ms each, the answered pings immediate: nothing waited on the silent one.
    assert!(t.elapsed() < Duration::from_secs(3), "{:?}", t.elapsed());

    // Many clients at once, each with a flow of its own: the rotation alternates over all their
    // datagrams, so exactly half (those sent to the echo server) come back, to their senders.
    let clients: Vec<UdpSocket> = (0..50).map(|_| udp_client("127.0.2.4")).collect();
    for (i, c) in clients.iter().enumerate() {
        for k in 0..2 {
            c.send_to(format!("c{i}-{k}").as_bytes(), addr("127.0.2.4:8888")).unwrap();
        }
        c.set_nonblocking(true).unwrap();
    }
    let mut buf = [0u8; 16];
    let mut answered = 0;
    wait_until("50 replies, one to each client", Duration::from_secs(3), || {
        for (i, c) in clients.iter().enumerate() {
            while let Ok(n) = c.recv(&mut buf) {
                assert!(buf[..n].starts_with(format!("C{i}-").as_bytes()), "client {i} got another's reply");
                answered += 1;
            }
        }
        (answered >= 50).then_some(())
    });
    // Give any extra reply time to arrive: there must be none.
    thread::sleep(Duration::from_millis(300));
    let late: usize = clients.iter().map(|c| std::iter::from_fn(|| c.recv(&mut buf).ok()).count()).sum();
    assert_eq!((answered, late), (50, 0));
}

#[test]
fn the_flow_table_is_bounded_and_evicts_the_least_recent_client() {
    // A backend that holds its replies until it has seen three requests, then answers each
    // sender: by then the balancer has had to open a flow for each of the three clients.
    let backend = UdpSocket::bind("127.0.2.10:2526").unwrap();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let s = seen.clone();
    thread::spawn(move || {
        let mut buf = [0u8; 64];
        let mut held = Vec::new();
        while held.len() < 3 {
            let (n, from) = backend.recv_from(&mut buf).unwrap();
            s.lock().unwrap().push(String::from_utf8_lossy(&buf[..n]).into_owned());
            held.push((buf[..n].to_ascii_uppercase(), from));
        }
        for (reply, to) in held {
            backend.send_to(&reply, to).unwrap();
        }
    });
    let mut lb = Proc::up(&[
        "balance",
        "udp",
        "--listen",
        "127.0.2.10:8888",
        "--check",
        "none",
        "--backend",
        "127.0.2.10:2526",
        "--max-flows",
        "2",
        "--workers",
        "1",
        "--quiet",
    ]);
    let [a, b, c] = [(); 3].map(|()| udp_client("127.0.2.10"));
    // One at a time, each once the previous one reached the backend: A's flow is the least
    // recently used when C's needs a place, and the table holds two.
    for (n, (client, msg)) in [(&a, "a"), (&b, "b"), (&c, "c")].into_iter().enumerate() {
        client.send_to(msg.as_bytes(), addr("127.0.2.10:8888")).unwrap();
        wait_until(format_args!("{msg:?} to reach the backend"), Duration::from_secs(2), || {
            (seen.lock().unwrap().len() > n).then_some(())
        });
    }
    let mut buf = [0u8; 16];
    for (client, reply) in [(&c, "C"), (&b, "B")] {
        let n = client.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], reply.as_bytes());
    }
    // A's flow was closed to make room for C's, so the reply to it has nowhere to go.
    a.set_read_timeout(Some(Duration::from_millis(500))).unwrap();
    let late = a.recv(&mut buf).map(|n| String::from_utf8_lossy(&buf[..n]).into_owned());
    assert!(late.is_err(), "the evicted client still got {late:?}: the flow table is not bounded");
    let status = lb.signal_and_wait("TERM", Duration::from_secs(5));
    assert!(status.success(), "{status:?}");
    let out = lb.output();
    assert!(
        out.contains("udp balancer \"udp\" stopped: 3 requests, 2 replies, 0 dropped, 3 flows opened, 1 evicted\n"),
        "{out}"
    );
}

#[test]
fn clients_whose_flow_was_evicted_get_a_new_one_and_their_replies() {
    let _servers = Proc::up(&["serve", "udp", "--bind", "127.0.2.5", "--ports", "2526", "--quiet"]);
    let _lb = Proc::up(&[
        "balance",
        "udp",
        "--listen",
        "127.0.2.5:8888",
        "--backend",
        "127.0.2.5:2526",
        "--max-flows",
        "2",
        "--quiet",
    ]);
    let clients: Vec<UdpSocket> = (0..5).map(|_| udp_client("127.0.2.5")).collect();
    let mut buf = [0u8; 16];
    for round in 0..3 {
        for (i, c) in clients.iter().enumerate() {
            let msg = format!("c{i} r{round}");
            c.send_to(msg.as_bytes(), addr("127.0.2.5:8888")).unwrap();
            let n = c.recv(&mut buf).unwrap();
            assert_eq!(&buf[..n], msg.to_uppercase().as_bytes());
        }
    }
}

#[test]
fn simulated_loss_is_reproducible_with_a_seed() {
    let pattern = |ip: &str| {
        let _s =
            Proc::up(&["serve", "udp", "--bind", ip, "--ports", "2526", "--loss", "0.5", "--seed", "7", "--quiet"]);
        let (code, out) = run(&["udp-ping", ip, "2526", "-c", "16", "--timeout", "100ms"], Duration::from_secs(10));
        let lines: Vec<String> = out
            .lines()
            .filter_map(|l| {
                if l.starts_with("Request timed out") {
                    Some("lost".into())
                } else if l.contains("bytes from") {
                    Some("ok".into())
                } else {
                    None
                }
            })
            .collect();
        (code, lines, out)
    };
    let (code1, first, out) = pattern("127.0.2.6");
    let (_, second, _) = pattern("127.0.2.7");
    assert_eq!(first.len(), 16, "{out}");
    assert_eq!(first, second, "same seed, same losses");
    let lost = first.iter().filter(|l| *l == "lost").count();
    assert!((2..=14).contains(&lost), "0.5 loss over 16 pings lost {lost}: {out}");
    assert_eq!(code1, 0);
}

#[test]
fn udp_ping_exits_1_when_nothing_answers() {
    let _silent = UdpSocket::bind("127.0.2.8:2526").unwrap();
    let (code, out) = run(&["udp-ping", "127.0.2.8", "2526", "-c", "2", "--timeout", "100ms"], Duration::from_secs(5));
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("2 packets transmitted, 0 received, 100% packet loss"), "{out}");
    assert!(!out.contains("rtt min"), "{out}");
    // Nothing bound at all: the port is reported unreachable, still exit 1, still a summary.
    let (code, out) = run(&["udp-ping", "127.0.2.8", "2599", "-c", "2", "--timeout", "100ms"], Duration::from_secs(5));
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("port unreachable") && out.contains("100% packet loss"), "{out}");
}

/// Whether some socket is bound to the IPv4 `addr`, by the kernel's table of UDP sockets (so
/// that checking takes nothing from whoever binds it).
fn udp_bound(addr: SocketAddr) -> bool {
    let SocketAddr::V4(a) = addr else { panic!("{addr} is not IPv4") };
    // /proc/net/udp writes the address as the u32 in memory order, then the port, in hex.
    let local = format!("{:08X}:{:04X}", u32::from_ne_bytes(a.ip().octets()), a.port());
    let table = std::fs::read_to_string("/proc/net/udp").unwrap();
    table.lines().skip(1).any(|l| l.split_whitespace().nth(1) == Some(local.as_str()))
}

/// The classic lab's `server.py`, verbatim but for the address and a fixed seed.
const CLASSIC_SERVER: &str = "import random, socket, sys
random.seed(1)
serverSocket = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
serverSocket.bind((sys.argv[1], int(sys.argv[2])))
while True:
    rand = random.randint(0, 10)
    message, address = serverSocket.recvfrom(1024)
    message = message.upper()
    if rand < 4:
        continue
    serverSocket.sendto(message, address)
";

#[test]
fn interoperates_with_the_classic_python_server_directly_and_behind_the_balancer() {
    let mut servers: Vec<std::process::Child> = (2526..=2527)
        .map(|p| {
            std::process::Command::new("python3")
                .args(["-c", CLASSIC_SERVER, "127.0.2.9", &p.to_string()])
                .spawn()
                .expect("python3 (the classic lab servers are Python)")
        })
        .collect();
    for port in [2526, 2527] {
        wait_until(format_args!("python3 to bind 127.0.2.9:{port}"), Duration::from_secs(5), || {
            udp_bound(addr(&format!("127.0.2.9:{port}"))).then_some(())
        });
    }
    let _lb =
        Proc::up(&["balance", "udp", "--listen", "127.0.2.9:8888", "--backend", "127.0.2.9:2526,127.0.2.9:2527", "-q"]);
    for port in ["2526", "8888"] {
        let (code, out) =
            run(&["udp-ping", "127.0.2.9", port, "-c", "30", "--timeout", "200ms"], Duration::from_secs(20));
        assert_eq!(code, 0, "{out}");
        let counts = out.lines().find(|l| l.contains("packets transmitted")).unwrap();
        let received: u32 = counts.split(", ").nth(1).unwrap().split(' ').next().unwrap().parse().unwrap();
        // The classic server drops 4 in 11 (36%): 30 pings get about 19 answers.
        assert!((10..=28).contains(&received), "{out}");
        assert!(out.contains("reply=\"PING 1 ") || out.contains("Request timed out: seq=1"), "{out}");
    }
    for s in &mut servers {
        let _ = s.kill();
        let _ = s.wait();
    }
}

// Strategies (`--strategy`), per datagram, each through a running balancer on 127.0.27.x.

/// What the recording servers got: (server index, message).
type Seen = Arc<Mutex<Vec<(usize, String)>>>;

/// Like [`recording_servers`], but each server stops (closing its socket, so that datagrams to
/// it are refused) once its flag is set.
fn stoppable_servers(ip: &str, ports: &[u16]) -> (Seen, Vec<Arc<AtomicBool>>) {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let mut stops = Vec::new();
    for (i, &port) in ports.iter().enumerate() {
        let s = UdpSocket::bind((ip, port)).unwrap();
        s.set_read_timeout(Some(Duration::from_millis(20))).unwrap();
        let (seen, stop) = (seen.clone(), Arc::new(AtomicBool::new(false)));
        stops.push(stop.clone());
        thread::spawn(move || {
            let mut buf = vec![0u8; 65_536];
            while !stop.load(Ordering::Relaxed) {
                let Ok((n, from)) = s.recv_from(&mut buf) else { continue };
                seen.lock().unwrap().push((i, String::from_utf8_lossy(&buf[..n]).into_owned()));
                buf[..n].make_ascii_uppercase();
                let _ = s.send_to(&buf[..n], from);
            }
        });
    }
    (seen, stops)
}

/// Sends `{tag}-c{i}-{k}` from each client in turn, `rounds` times, each reply awaited and
/// checked to be the client's own; returns the server that got each client's datagrams.
fn each_client(
    clients: &[UdpSocket],
    lb: SocketAddr,
    tag: &str,
    rounds: usize,
    seen: &Mutex<Vec<(usize, String)>>,
) -> Vec<Vec<usize>> {
    let mut buf = [0u8; 64];
    for k in 0..rounds {
        for (i, c) in clients.iter().enumerate() {
            let msg = format!("{tag}-c{i}-{k}");
            c.send_to(msg.as_bytes(), lb).unwrap();
            let n = c.recv(&mut buf).unwrap_or_else(|e| panic!("{msg}: no reply: {e}"));
            assert_eq!(&buf[..n], msg.to_uppercase().as_bytes(), "a reply went to the wrong client");
        }
    }
    let got = seen.lock().unwrap();
    (0..clients.len())
        .map(|i| {
            let prefix = format!("{tag}-c{i}-");
            got.iter().filter(|(_, m)| m.starts_with(&prefix)).map(|(s, _)| *s).collect()
        })
        .collect()
}

#[test]
fn every_strategy_relays_each_reply_to_its_client() {
    let ip = "127.0.27.10";
    let seen = recording_servers(ip, &[2526, 2527, 2528]);
    let clients: Vec<UdpSocket> = (0..5).map(|_| udp_client(ip)).collect();
    let backends = format!("{ip}:2526=3,{ip}:2527,{ip}:2528");
    for (n, strategy) in
        ["round-robin", "weighted", "least-connections", "p2c", "hash", "measured"].into_iter().enumerate()
    {
        let listen = format!("{ip}:{}", 8880 + n);
        let lb = Proc::up(&[
            "balance",
            "udp",
            "--listen",
            &listen,
            "--strategy",
            strategy,
            "--check",
            "none",
            "-q",
            "--backend",
            &backends,
        ]);
        let per_client = each_client(&clients, addr(&listen), strategy, 10, &seen);
        let mut count = [0usize; 3];
        per_client.iter().flatten().for_each(|&s| count[s] += 1);
        assert_eq!(count.iter().sum::<usize>(), 50, "{strategy}: every datagram reached one server");
        match strategy {
            // Round robin honours weights as nginx's does. One client at a time, so
            // least-connections always ties and shares by weight.
            "round-robin" | "weighted" | "least-connections" | "measured" => {
                assert_eq!(count, [30, 10, 10], "{strategy}")
            }
            // Hash on the source: each client always on one server.
            "hash" => {
                for (i, servers) in per_client.iter().enumerate() {
                    assert!(servers.iter().all(|&s| s == servers[0]), "client {i} moved: {servers:?}");
                }
                assert!(lb.output().contains("(hash of the source, pinned per client)"), "{}", lb.output());
            }
            _ => {}
        }
    }
}

#[test]
fn hash_on_the_source_moves_only_the_clients_of_a_backend_that_left() {
    let ip = "127.0.27.11";
    let (seen, stops) = stoppable_servers(ip, &[2526, 2527, 2528]);
    let lb = Proc::up(&[
        "balance",
        "udp",
        "--listen",
        "127.0.27.11:8888",
        "--strategy",
        "hash",
        "--check-interval",
        "100ms",
        "--check-timeout",
        "100ms",
        "--fall",
        "1",
        "--backend",
        "127.0.27.11:2526,127.0.27.11:2527,127.0.27.11:2528",
        "-q",
    ]);
    let clients: Vec<UdpSocket> = (0..30).map(|_| udp_client(ip)).collect();
    let lb_addr = addr("127.0.27.11:8888");
    let before: Vec<usize> = each_client(&clients, lb_addr, "one", 2, &seen).into_iter().map(|s| s[0]).collect();
    for server in 0..3 {
        assert!(before.contains(&server), "30 clients and no one on server {server}: {before:?}");
    }
    stops[2].store(true, Ordering::Relaxed);
    lb.wait_for("backend 127.0.27.11:2528 is down, out of rotation", Duration::from_secs(5));
    let after = each_client(&clients, lb_addr, "two", 2, &seen);
    for (i, (&b, servers)) in before.iter().zip(&after).enumerate() {
        assert!(servers.iter().all(|&s| s == servers[0]), "client {i} moved between servers: {servers:?}");
        if b == 2 {
            assert_ne!(servers[0], 2, "client {i}");
        } else {
            assert_eq!(servers[0], b, "client {i} moved although its server is up");
        }
    }
}

#[test]
fn least_connections_over_udp_avoids_a_backend_whose_datagrams_wait_for_replies() {
    let ip = "127.0.27.12";
    // 2526 takes datagrams and never answers; a datagram counts as in flight for the check
    // timeout (1 s) without its reply.
    let silent = UdpSocket::bind((ip, 2526)).unwrap();
    let swallowed = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let s = swallowed.clone();
    thread::spawn(move || {
        let mut buf = [0u8; 64];
        while silent.recv_from(&mut buf).is_ok() {
            s.fetch_add(1, Ordering::Relaxed);
        }
    });
    let seen = recording_servers(ip, &[2527, 2528]);
    let _lb = Proc::up(&[
        "balance",
        "udp",
        "--listen",
        "127.0.27.12:8888",
        "--strategy",
        "least-connections",
        "--check",
        "none",
        "--backend",
        "127.0.27.12:2526,127.0.27.12:2527,127.0.27.12:2528",
        "-q",
    ]);
    let c = udp_client(ip);
    c.set_read_timeout(Some(Duration::from_millis(200))).unwrap();
    let mut buf = [0u8; 64];
    let mut answered = 0;
    let mut replies = std::collections::HashSet::new();
    for k in 0..60 {
        let msg = format!("lc-{k}");
        c.send_to(msg.as_bytes(), addr("127.0.27.12:8888")).unwrap();
        // A reply that came after its wait (a busy machine) is taken with the next one's.
        while let Ok(n) = c.recv(&mut buf) {
            let reply = String::from_utf8_lossy(&buf[..n]).to_string();
            assert!(reply.starts_with("LC-"), "{reply}");
            replies.insert(reply.clone());
            if reply == msg.to_uppercase() {
                break;
            }
        }
    }
    answered += replies.len();
    let lost = swallowed.load(Ordering::Relaxed);
    // Round robin would send it 20; each costs its wait only once it has been given up on.
    assert!(lost <= 3, "the silent backend got {lost} of 60");
    assert_eq!(answered + lost, 60, "every other datagram was answered");
    assert_eq!(seen.lock().unwrap().len(), answered);
}

#[test]
fn p2c_over_udp_gives_a_backend_that_replies_200ms_late_a_clearly_smaller_share() {
    let ip = "127.0.27.13";
    // Late enough to stand out from a busy machine's own delays.
    let _late = Proc::up(&["serve", "udp", "--bind", ip, "--ports", "2527", "--delay", "200ms", "--quiet"]);
    let seen = recording_servers(ip, &[2526, 2528]);
    let _lb = Proc::up(&[
        "balance",
        "udp",
        "--listen",
        "127.0.27.13:8888",
        "--strategy",
        "p2c",
        "--check",
        "none",
        "--backend",
        "127.0.27.13:2526,127.0.27.13:2527,127.0.27.13:2528",
        "-q",
    ]);
    let c = udp_client(ip);
    let mut buf = [0u8; 64];
    for k in 0..150 {
        let msg = format!("p2c-{k}");
        c.send_to(msg.as_bytes(), addr("127.0.27.13:8888")).unwrap();
        let n = c.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], msg.to_uppercase().as_bytes());
    }
    // What the two recording servers did not get went to the late one (round robin: 50).
    let late = 150 - seen.lock().unwrap().len();
    assert!(late <= 10, "the late backend got {late} of 150");
}
