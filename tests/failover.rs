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

use common::{Http, Proc, addr, get, wait_until};

fn port_of(body: &str) -> u16 {
    body.trim().rsplit(' ').next().and_then(|p| p.parse().ok()).unwrap_or(0)
}

/// A backend that accepts, reads each request head, and closes without answering.
fn closing_backend(at: &str) {
    canned_backend(at, b"", Duration::ZERO);
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

/// A backend that answers each connection with `reply` after reading the request head (not
/// its body), then keeps the connection `open_for`, reading nothing more; it records request
/// lines in `seen`.
fn canned_backend(at: &str, reply: &'static [u8], open_for: Duration) -> Arc<std::sync::Mutex<Vec<String>>> {
    let l = TcpListener::bind(at).unwrap();
    let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
    let record = seen.clone();
    thread::spawn(move || {
        for s in l.incoming() {
            let Ok(s) = s else { continue };
            let record = record.clone();
            thread::spawn(move || {
                let mut w = s.try_clone().unwrap();
                let mut r = BufReader::new(s);
                let mut first = String::new();
                r.read_line(&mut first).unwrap_or(0);
                record.lock().unwrap().push(first.trim_end().to_string());
                let mut line = String::new();
                while r.read_line(&mut line).unwrap_or(0) > 2 {
                    line.clear();
                }
                let _ = std::io::Write::write_all(&mut w, reply);
                thread::sleep(open_for);
            });
        }
    });
    seen
}

#[test]
fn a_retry_after_an_early_hint_sends_the_same_request_to_the_next_backend() {
    // Regression: the 1xx was parsed into the buffer holding the request, and the retry sent
    // the hint's bytes (and an HTTP/1.0 request without Host panicked the connection's task).
    canned_backend("127.0.8.5:8001", b"HTTP/1.1 103 Early Hints\r\nLink: </s.css>\r\n\r\n", Duration::from_secs(5));
    let good = canned_backend(
        "127.0.8.5:8002",
        b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nConnection: close\r\n\r\nok\n",
        Duration::ZERO,
    );
    let _lb = Proc::up(&[
        "balance",
        "http",
        "--listen",
        "127.0.8.5:8000",
        "--timeout",
        "300ms",
        "--eject-after",
        "0",
        "--check",
        "none",
        "--quiet",
        "--backend",
        "127.0.8.5:8001,127.0.8.5:8002",
    ]);
    let front = addr("127.0.8.5:8000");
    let r = Http::connect(front).raw(b"GET /page HTTP/1.1\r\nHost: example\r\nConnection: close\r\n\r\n");
    assert_eq!(r.status, 103, "the hint is relayed first");
    // (The final answer follows on the same connection.)
    let r = get(front, "/other"); // turn 2: the good backend directly
    assert_eq!(r.status, 200);
    let r = Http::connect(front).raw(b"GET /old HTTP/1.0\r\n\r\n"); // turn 3: the hinting one, HTTP/1.0
    assert_eq!(r.status, 200, "{r:?}");
    // The first request's retry goes out when its 300 ms are up, about when turn 3's does.
    let seen = wait_until("both retries at the next backend", Duration::from_secs(5), || {
        let seen = good.lock().unwrap().clone();
        let both = ["GET /page HTTP/1.1", "GET /old HTTP/1.1"].iter().all(|r| seen.iter().any(|l| l == r));
        both.then_some(seen)
    });
    assert!(seen.iter().all(|l| l.starts_with("GET /")), "the next backend got something else: {seen:?}");
}

#[test]
fn a_client_leaving_mid_download_does_not_eject_the_backend() {
    static BIG: std::sync::OnceLock<Vec<u8>> = std::sync::OnceLock::new();
    let body = BIG.get_or_init(|| {
        let mut r = format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n", 4 << 20).into_bytes();
        r.extend(std::iter::repeat_n(b'x', 4 << 20));
        r
    });
    canned_backend("127.0.8.6:8001", body, Duration::from_millis(200));
    canned_backend("127.0.8.6:8002", body, Duration::from_millis(200));
    let lb = Proc::up(&[
        "balance",
        "http",
        "--listen",
        "127.0.8.6:8000",
        "--eject-after",
        "1",
        "--check",
        "none",
        "--backend",
        "127.0.8.6:8001,127.0.8.6:8002",
    ]);
    for _ in 0..4 {
        let mut s = std::net::TcpStream::connect("127.0.8.6:8000").unwrap();
        std::io::Write::write_all(&mut s, b"GET /big HTTP/1.1\r\nHost: t\r\n\r\n").unwrap();
        let mut some = [0u8; 1000];
        let _ = std::io::Read::read(&mut s, &mut some);
        drop(s); // gone after the first kilobyte
        thread::sleep(Duration::from_millis(100));
    }
    thread::sleep(Duration::from_millis(300));
    let out = lb.output();
    assert!(!out.contains("ejected"), "{out}");
    assert!(out.contains("-> 127.0.8.6:8001 200"), "logged with the backend's status: {out}");
}

#[test]
fn an_early_answer_to_an_upload_reaches_the_client_and_a_stalled_upload_is_a_504() {
    canned_backend(
        "127.0.8.7:8001",
        b"HTTP/1.1 413 Payload Too Large\r\nContent-Length: 4\r\nConnection: close\r\n\r\nbig\n",
        Duration::ZERO,
    );
    hanging_backend("127.0.8.7:8002");
    // Answers 413 and keeps the connection open without reading: the upload's write times out.
    canned_backend(
        "127.0.8.7:8003",
        b"HTTP/1.1 413 Payload Too Large\r\nContent-Length: 4\r\nConnection: close\r\n\r\nbig\n",
        Duration::from_secs(5),
    );
    let _lb = Proc::up(&[
        "balance",
        "http",
        "--listen",
        "127.0.8.7:8000",
        "--timeout",
        "500ms",
        "--eject-after",
        "0",
        "--check",
        "none",
        "--quiet",
        "--backend",
        "127.0.8.7:8001,127.0.8.7:8002,127.0.8.7:8003",
    ]);
    let upload = || {
        let mut s = std::net::TcpStream::connect("127.0.8.7:8000").unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let size = 8 << 20;
        std::io::Write::write_all(
            &mut s,
            format!("PUT /up HTTP/1.1\r\nHost: t\r\nContent-Length: {size}\r\n\r\n").as_bytes(),
        )
        .unwrap();
        let writer = s.try_clone().unwrap();
        thread::spawn(move || {
            let mut w = writer;
            let chunk = vec![b'u'; 64 * 1024];
            for _ in 0..(size / chunk.len()) {
                if std::io::Write::write_all(&mut w, &chunk).is_err() {
                    return;
                }
            }
        });
        let mut line = String::new();
        BufReader::new(s).read_line(&mut line).unwrap();
        line
    };
    // The backend refused the upload before reading it: its answer, not a 502.
    assert!(upload().starts_with("HTTP/1.1 413"), "early answer lost");
    // The other backend never reads: the write times out, which is the backend's timeout (504).
    assert!(upload().starts_with("HTTP/1.1 504"), "stalled upload");
    // One that answered before it stopped reading: its answer, once the write gives up.
    assert!(upload().starts_with("HTTP/1.1 413"), "early answer of a backend that stopped reading");
}

#[test]
fn retried_attempts_are_in_the_access_log() {
    closing_backend("127.0.8.8:8001");
    let _backend = Proc::up(&["serve", "http", "--bind", "127.0.8.8", "--ports", "8002", "--quiet"]);
    let lb = Proc::up(&[
        "balance",
        "http",
        "--listen",
        "127.0.8.8:8000",
        "--eject-after",
        "0",
        "--check",
        "none",
        "--backend",
        "127.0.8.8:8001,127.0.8.8:8002",
    ]);
    assert_eq!(get(addr("127.0.8.8:8000"), "/").status, 200);
    lb.wait_for("-> 127.0.8.8:8002 200", Duration::from_secs(2));
    assert!(
        lb.output().contains("(retried after 127.0.8.8:8001: backend 127.0.8.8:8001 failed: closed"),
        "{}",
        lb.output()
    );
}

#[test]
fn sighup_does_not_stop_the_balancer() {
    let _backend = Proc::up(&["serve", "http", "--bind", "127.0.8.9", "--ports", "8001", "--quiet"]);
    let mut lb = Proc::up(&["balance", "http", "--listen", "127.0.8.9:8000", "--quiet", "--backend", "127.0.8.9:8001"]);
    assert!(std::process::Command::new("kill").args(["-HUP", &lb.pid().to_string()]).status().unwrap().success());
    lb.wait_for("SIGHUP: nothing to reload: netpulse was started without a config file", Duration::from_secs(3));
    assert_eq!(get(addr("127.0.8.9:8000"), "/").status, 200);
    assert!(lb.signal_and_wait("TERM", Duration::from_secs(5)).success());
}
