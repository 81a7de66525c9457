//! Faults injected into real processes on loopback: a backend killed under load, one that hangs,
//! one that resets; the balancer retries where it is safe, ejects the culprit, and loses nothing.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use common::{Http, Proc, addr, get};

fn port_of(body: &str) -> u16 {
    body.trim().rsplit(' ').next().and_then(|p| p.parse().ok()).unwrap_or(0)
}

/// A backend that accepts, reads each request head, and closes without answering.
fn closing_backend(at: &str) {
    let l = TcpListener::bind(at).unwrap();
    thread::spawn(move || {
        for s in l.incoming() {
            let Ok(s) = s else { continue };
            let mut r = BufReader::new(s);
            let mut line = String::new();
            while r.read_line(&mut line).unwrap_or(0) > 2 {
                line.clear();
            }
        }
    });
}

/// A backend that accepts and never answers.
fn hanging_backend(at: &str) {
    let l = TcpListener::bind(at).unwrap();
    thread::spawn(move || {
        let mut held = Vec::new();
        for s in l.incoming() {
            held.push(s);
        }
    });
}

#[test]
fn a_backend_killed_under_concurrent_load_costs_no_request() {
    let _stay = Proc::up(&["serve", "http", "--bind", "127.0.8.1", "--ports", "8001-8002", "--quiet"]);
    let mut doomed = Proc::up(&["serve", "http", "--bind", "127.0.8.1", "--ports", "8003", "--quiet"]);
    let lb = Proc::up(&[
        "balance",
        "http",
        "--listen",
        "127.0.8.1:8000",
        "--quiet",
        "--backend",
        "127.0.8.1:8001,127.0.8.1:8002,127.0.8.1:8003",
    ]);
    let front = addr("127.0.8.1:8000");
    let stop = Arc::new(AtomicBool::new(false));
    let clients: Vec<_> = (0..8)
        .map(|_| {
            let stop = stop.clone();
            thread::spawn(move || {
                let mut conn = Http::connect(front);
                let (mut ok, mut failed, mut ports) = (0, Vec::new(), std::collections::HashSet::new());
                while !stop.load(Ordering::Relaxed) {
                    let r = conn.get("/");
                    if r.status == 200 {
                        ok += 1;
                        ports.insert(port_of(&r.body));
                    } else {
                        failed.push(r.status);
                        conn = Http::connect(front);
                    }
                }
                (ok, failed, ports)
            })
        })
        .collect();
    thread::sleep(Duration::from_millis(400));
    doomed.kill();
    thread::sleep(Duration::from_millis(800));
    stop.store(true, Ordering::Relaxed);
    let mut total = 0;
    for c in clients {
        let (ok, failed, ports) = c.join().unwrap();
        assert!(failed.is_empty(), "failed responses: {failed:?}");
        assert!(ports.contains(&8001) && ports.contains(&8002), "{ports:?}");
        total += ok;
    }
    assert!(total > 100, "only {total} requests");
    let out = lb.output();
    assert!(out.contains("backend 127.0.8.1:8003 ejected for 10s"), "{out}");
}

#[test]
fn a_hanging_backend_costs_one_timeout_then_is_ejected() {
    hanging_backend("127.0.8.2:8001");
    let _backend = Proc::up(&["serve", "http", "--bind", "127.0.8.2", "--ports", "8002", "--quiet"]);
    let lb = Proc::up(&[
        "balance",
        "http",
        "--listen",
        "127.0.8.2:8000",
        "--timeout",
        "300ms",
        "--eject-after",
        "1",
        "--quiet",
        "--backend",
        "127.0.8.2:8001,127.0.8.2:8002",
    ]);
    let front = addr("127.0.8.2:8000");
    // The first request goes to the hanging backend, waits out the timeout, and is retried.
    let t = Instant::now();
    let r = get(front, "/");
    assert_eq!((r.status, port_of(&r.body)), (200, 8002), "{r:?}");
    assert!(t.elapsed() >= Duration::from_millis(300), "{:?}", t.elapsed());
    // Then the hanging backend is out: nobody waits for it any more.
    let t = Instant::now();
    for _ in 0..10 {
        let r = get(front, "/");
        assert_eq!((r.status, port_of(&r.body)), (200, 8002), "{r:?}");
    }
    assert!(t.elapsed() < Duration::from_millis(300), "{:?}", t.elapsed());
    assert!(lb.output().contains("backend 127.0.8.2:8001 ejected"), "{}", lb.output());
}

#[test]
fn a_post_is_not_sent_twice_but_a_refused_connect_is_retried_for_any_method() {
    closing_backend("127.0.8.3:8001");
    let _backend = Proc::up(&["serve", "http", "--bind", "127.0.8.3", "--ports", "8002", "--quiet"]);
    let balancer = |listen: &str, backends: &str| {
        Proc::up(&["balance", "http", "--listen", listen, "--eject-after", "0", "--quiet", "--backend", backends])
    };
    let post = |front, path: &str| {
        let req = format!("POST {path} HTTP/1.1\r\nHost: t\r\nContent-Length: 2\r\n\r\nhi");
        Http::connect(front).raw(req.as_bytes())
    };
    // The first backend closes without answering: the POST may have been processed, so it is
    // not sent again (502); a GET is.
    let _a = balancer("127.0.8.3:8000", "127.0.8.3:8001,127.0.8.3:8002");
    let front = addr("127.0.8.3:8000");
    let r = post(front, "/a");
    assert_eq!(r.status, 502, "{r:?}");
    assert!(r.body.contains("127.0.8.3:8001") && r.body.contains("without responding"), "{}", r.body);
    let statuses: Vec<u16> = (0..6).map(|_| get(front, "/").status).collect();
    assert_eq!(statuses, vec![200; 6]);
    // Nothing listens on the first backend: nothing was sent, so even a POST goes on.
    let _b = balancer("127.0.8.3:9000", "127.0.8.3:8003,127.0.8.3:8002");
    let front = addr("127.0.8.3:9000");
    for path in ["/b", "/c", "/d"] {
        let r = post(front, path);
        assert_eq!((r.status, port_of(&r.body)), (200, 8002), "{r:?}");
    }
}

#[test]
fn when_every_backend_fails_the_client_hears_why_from_the_last_one_tried() {
    let _lb = Proc::up(&[
        "balance",
        "http",
        "--listen",
        "127.0.8.4:8000",
        "--quiet",
        "--backend",
        "127.0.8.4:8001,127.0.8.4:8002",
    ]);
    let t = Instant::now();
    let r = get(addr("127.0.8.4:8000"), "/");
    assert_eq!(r.status, 502, "{r:?}");
    assert!(r.body.contains("could not be reached"), "{}", r.body);
    assert!(t.elapsed() < Duration::from_secs(1));
}
