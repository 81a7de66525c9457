//! Active health checks in `netpulse balance`: a backend that fails its check leaves the
//! rotation and its share goes to the others; a lossy UDP server is not a dead one.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::thread;
use std::time::{Duration, Instant};

use common::{Proc, addr, get, run, wait_until};

fn port_of(body: &str) -> u16 {
    body.trim().rsplit(' ').next().and_then(|p| p.parse().ok()).unwrap_or(0)
}

/// An HTTP backend that answers `/health` with 503 and everything else with 200 naming `port`.
fn sick_backend(at: &str, port: u16) {
    let l = TcpListener::bind(at).unwrap();
    thread::spawn(move || {
        for s in l.incoming() {
            let Ok(mut s) = s else { continue };
            thread::spawn(move || {
                let mut r = BufReader::new(s.try_clone().unwrap());
                let mut first = String::new();
                r.read_line(&mut first).unwrap_or(0);
                let mut line = String::new();
                while r.read_line(&mut line).unwrap_or(0) > 2 {
                    line.clear();
                }
                let (status, body) = if first.contains("/health") {
                    ("503 Service Unavailable", "sick\n".to_string())
                } else {
                    ("200 OK", format!("Handled by server on port {port}\n"))
                };
                let _ =
                    write!(s, "HTTP/1.1 {status}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}", body.len());
            });
        }
    });
}

#[test]
fn a_backend_failing_its_http_check_leaves_and_the_others_share_its_load() {
    sick_backend("127.0.10.1:8001", 8001);
    let _good = Proc::up(&["serve", "http", "--bind", "127.0.10.1", "--ports", "8002-8003", "--quiet"]);
    let lb = Proc::up(&[
        "balance",
        "http",
        "--listen",
        "127.0.10.1:8000",
        "--check-path",
        "/health",
        "--check-interval",
        "100ms",
        "--check-timeout",
        "100ms",
        "--quiet",
        "--backend",
        "127.0.10.1:8001,127.0.10.1:8002,127.0.10.1:8003",
    ]);
    assert!(
        lb.output().contains("health: GET /health expecting 200-399, fall 3, rise 2, every 100ms"),
        "{}",
        lb.output()
    );
    let t = Instant::now();
    lb.wait_for("backend 127.0.10.1:8001 is down, out of rotation", Duration::from_secs(3));
    assert!(t.elapsed() < Duration::from_secs(2), "took {:?}", t.elapsed());
    // Its share is spread evenly: 8002 and 8003 take turns.
    let ports: Vec<u16> = (0..6).map(|_| port_of(&get(addr("127.0.10.1:8000"), "/").body)).collect();
    assert!(!ports.contains(&8001), "{ports:?}");
    assert_eq!(ports.iter().filter(|&&p| p == 8002).count(), 3, "{ports:?}");
}

#[test]
fn a_killed_backend_leaves_within_three_intervals_and_returns_when_it_answers_again() {
    let _stay = Proc::up(&["serve", "http", "--bind", "127.0.10.2", "--ports", "8001", "--quiet"]);
    let mut doomed = Proc::up(&["serve", "http", "--bind", "127.0.10.2", "--ports", "8002", "--quiet"]);
    let lb = Proc::up(&[
        "balance",
        "http",
        "--listen",
        "127.0.10.2:8000",
        "--check",
        "tcp",
        "--check-interval",
        "200ms",
        "--check-timeout",
        "200ms",
        "--quiet",
        "--backend",
        "127.0.10.2:8001,127.0.10.2:8002",
    ]);
    thread::sleep(Duration::from_millis(300));
    doomed.kill();
    let t = Instant::now();
    lb.wait_for("backend 127.0.10.2:8002 is down, out of rotation", Duration::from_secs(3));
    // Three failed checks 200 ms apart, and one interval of slack for the first.
    assert!(t.elapsed() < Duration::from_millis(1000), "took {:?}", t.elapsed());
    let _back = Proc::up(&["serve", "http", "--bind", "127.0.10.2", "--ports", "8002", "--quiet"]);
    lb.wait_for("backend 127.0.10.2:8002 is back in rotation", Duration::from_secs(3));
}

#[test]
fn the_lossy_classic_lab_stays_in_rotation_while_a_dead_server_leaves() {
    // Three classic servers dropping 36 % of pings, and a fourth that answers every one. 600
    // checks each, as in ten minutes at the default interval of one second.
    let _lossy = Proc::up(&[
        "serve",
        "udp",
        "--bind",
        "127.0.10.3",
        "--ports",
        "2526-2528",
        "--loss",
        "0.36",
        "--seed",
        "7",
        "--quiet",
    ]);
    let mut steady = Proc::up(&["serve", "udp", "--bind", "127.0.10.3", "--ports", "2529", "--quiet"]);
    let lb = Proc::up(&[
        "balance",
        "udp",
        "--listen",
        "127.0.10.3:8888",
        "--check-interval",
        "20ms",
        "--check-timeout",
        "20ms",
        "--quiet",
        "--backend",
        "127.0.10.3:2526,127.0.10.3:2527,127.0.10.3:2528,127.0.10.3:2529",
    ]);
    thread::sleep(Duration::from_secs(12));
    let out = lb.output();
    assert!(!out.contains("out of rotation"), "a lossy server flapped:\n{out}");
    // Each lossy server still answers through the balancer, about 64 % of the time.
    let (_, ping) = run(&["udp-ping", "127.0.10.3", "8888", "-c", "40", "-W", "200ms"], Duration::from_secs(20));
    assert!(ping.contains("40 packets transmitted"), "{ping}");
    // A dead server (port unreachable) leaves after three checks.
    steady.kill();
    let t = Instant::now();
    wait_until(lb.printed(), Duration::from_secs(3), || {
        lb.output().contains("backend 127.0.10.3:2529 is down, out of rotation").then_some(())
    });
    assert!(t.elapsed() < Duration::from_millis(1000), "took {:?}", t.elapsed());
    let out = lb.output();
    assert_eq!(out.matches("out of rotation").count(), 1, "only the dead one left:\n{out}");
}

#[test]
fn a_udp_check_can_send_its_own_payload_and_expect_its_own_reply() {
    let _servers = Proc::up(&["serve", "udp", "--bind", "127.0.10.4", "--ports", "2526-2527", "--quiet"]);
    let args = |expect: &'static str, port: &'static str| {
        vec![
            "balance",
            "udp",
            "--listen",
            port,
            "--check-send",
            "hello",
            "--check-expect",
            expect,
            "--check-interval",
            "50ms",
            "--check-timeout",
            "50ms",
            "--quiet",
            "--backend",
            "127.0.10.4:2526,127.0.10.4:2527",
        ]
    };
    // The servers upper-case what they get: HELLO passes, anything else fails every check.
    let good = Proc::up(&args("HELLO", "127.0.10.4:8888"));
    let bad = Proc::up(&args("NOPE", "127.0.10.4:8889"));
    assert!(good.output().contains("health: udp exchange"), "{}", good.output());
    bad.wait_for("every backend fails its probe; keeping all in rotation", Duration::from_secs(3));
    thread::sleep(Duration::from_millis(300));
    assert!(!good.output().contains("out of rotation"), "{}", good.output());
}

#[test]
fn health_flags_and_tables_are_checked() {
    let quick = Duration::from_secs(5);
    let (code, out) = run(
        &["balance", "http", "--listen", "127.0.10.5:8000", "--backend", "127.0.10.5:1", "--check-timeout", "2s"],
        quick,
    );
    assert_eq!(code, 2, "{out}");
    assert!(out.contains("health timeout 2s must be longer than 0 and at most the interval 1s"), "{out}");
    let (code, out) =
        run(&["balance", "udp", "--listen", "127.0.10.5:8000", "--backend", "127.0.10.5:1", "--check", "http"], quick);
    assert_eq!(code, 2, "{out}");
    assert!(out.contains("health check must be ping or none"), "{out}");
    let (code, out) = run(
        &["balance", "http", "--listen", "127.0.10.5:8000", "--backend", "127.0.10.5:1", "--check-status", "2xx"],
        quick,
    );
    assert_eq!(code, 2, "{out}");
    assert!(out.contains("200-399"), "{out}");
}

#[test]
fn two_balancers_sharing_a_backend_keep_their_own_checks() {
    // Regression: targets were merged by their printed name, so "bad"'s exchange was replaced
    // by "good"'s classic ping and it never saw its check fail.
    let text = "[serve.udp]\nbind = \"127.0.10.6\"\nports = \"2526\"\n\n\
        [[balance.udp]]\nname = \"good\"\nlisten = \"127.0.10.6:8888\"\nbackends = [\"127.0.10.6:2526\"]\naccess_log = false\n\n\
        [[balance.udp]]\nname = \"bad\"\nlisten = \"127.0.10.6:8889\"\nbackends = [\"127.0.10.6:2526\"]\naccess_log = false\n\
        health = { send = \"hello\", expect = \"NOPE\" }\n\n\
        [monitor]\ninterval = \"50ms\"\n";
    let path = std::env::temp_dir().join(format!("netpulse-test-{}-shared.toml", std::process::id()));
    std::fs::write(&path, text).unwrap();
    let up = Proc::up(&["up", "--config", path.to_str().unwrap(), "-q"]);
    assert!(up.output().contains("monitor        2 targets"), "{}", up.output());
    up.wait_for("bad: backend 127.0.10.6:2526 is down, out of rotation", Duration::from_secs(3));
    thread::sleep(Duration::from_millis(300));
    assert!(!up.output().contains("good: backend"), "{}", up.output());
}

#[test]
fn an_early_hint_before_the_status_does_not_fail_an_http_check() {
    let l = TcpListener::bind("127.0.10.7:8001").unwrap();
    thread::spawn(move || {
        for s in l.incoming() {
            let Ok(mut s) = s else { continue };
            let mut r = BufReader::new(s.try_clone().unwrap());
            let mut line = String::new();
            while r.read_line(&mut line).unwrap_or(0) > 2 {
                line.clear();
            }
            let _ = s.write_all(
                b"HTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
            );
        }
    });
    let lb = Proc::up(&[
        "balance",
        "http",
        "--listen",
        "127.0.10.7:8000",
        "--check-interval",
        "100ms",
        "--check-timeout",
        "100ms",
        "--backend",
        "127.0.10.7:8001,127.0.10.7:8002",
    ]);
    // 8002 is not there and leaves; 8001 answers 200 after its hint and stays.
    lb.wait_for("backend 127.0.10.7:8002 is down", Duration::from_secs(3));
    thread::sleep(Duration::from_millis(300));
    assert!(!lb.output().contains("127.0.10.7:8001 is down"), "{}", lb.output());
}
