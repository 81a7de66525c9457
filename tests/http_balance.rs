//! The HTTP balancer end to end: real `netpulse` processes and sockets on loopback.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::thread;
use std::time::{Duration, Instant};

use common::{Http, Proc, addr, get};

fn port_of(body: &str) -> u16 {
    body.trim()
        .rsplit(' ')
        .next()
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("no port in {body:?}"))
}

#[test]
fn rotation_is_strict_over_fresh_and_keep_alive_connections() {
    let _backends = Proc::up(&[
        "serve",
        "http",
        "--bind",
        "127.0.1.1",
        "--ports",
        "8001-8004",
    ]);
    let lb = Proc::up(&[
        "balance",
        "http",
        "--listen",
        "127.0.1.1:8000",
        "--backend",
        "127.0.1.1:8001",
        "--backend",
        "127.0.1.1:8002",
        "--backend",
        "127.0.1.1:8003,127.0.1.1:8004",
    ]);
    let front = addr("127.0.1.1:8000");
    let fresh: Vec<u16> = (0..5)
        .map(|_| {
            let r = get(front, "/");
            assert_eq!(r.status, 200);
            port_of(&r.body)
        })
        .collect();
    assert_eq!(fresh, vec![8001, 8002, 8003, 8004, 8001]);

    // One keep-alive connection continues the same rotation; it is not per connection.
    let mut conn = Http::connect(front);
    let kept: Vec<u16> = (0..5).map(|_| port_of(&conn.get("/again").body)).collect();
    assert_eq!(kept, vec![8002, 8003, 8004, 8001, 8002]);
    assert_eq!(get(front, "/").body, "Handled by server on port 8003\n");

    // One access-log line per request, naming the backend and the status.
    lb.wait_for(
        "\"GET /again\" -> 127.0.1.1:8002 200",
        Duration::from_secs(2),
    );
}

#[test]
fn a_killed_backend_gives_a_fast_502_and_the_others_keep_serving() {
    let _live = Proc::up(&[
        "serve",
        "http",
        "--bind",
        "127.0.1.2",
        "--ports",
        "8001-8002",
        "--quiet",
    ]);
    let mut doomed = Proc::up(&[
        "serve",
        "http",
        "--bind",
        "127.0.1.2",
        "--ports",
        "8003",
        "--quiet",
    ]);
    let _lb = Proc::up(&[
        "balance",
        "http",
        "--listen",
        "127.0.1.2:8000",
        "--quiet",
        "--backend",
        "127.0.1.2:8001,127.0.1.2:8002,127.0.1.2:8003",
    ]);
    let front = addr("127.0.1.2:8000");
    // Warm the pool so the dead backend's connection is a pooled one, the harder case.
    let mut conn = Http::connect(front);
    for want in [8001, 8002, 8003] {
        assert_eq!(port_of(&conn.get("/").body), want);
    }
    doomed.kill();
    let mut seen = Vec::new();
    for _ in 0..6 {
        let t = Instant::now();
        let r = conn.get("/");
        let took = t.elapsed();
        if r.status == 502 {
            assert!(took < Duration::from_secs(1), "502 took {took:?}");
            assert!(r.body.contains("127.0.1.2:8003"), "{}", r.body);
            seen.push(0);
        } else {
            assert_eq!(r.status, 200);
            seen.push(port_of(&r.body));
        }
    }
    assert_eq!(seen, vec![8001, 8002, 0, 8001, 8002, 0]);
}

#[test]
fn a_hanging_backend_gives_504_after_the_timeout() {
    let hang = TcpListener::bind("127.0.1.3:8001").unwrap();
    thread::spawn(move || {
        let mut held = Vec::new();
        for s in hang.incoming() {
            held.push(s); // accept, read nothing, answer nothing
        }
    });
    let _backend = Proc::up(&[
        "serve",
        "http",
        "--bind",
        "127.0.1.3",
        "--ports",
        "8002",
        "--quiet",
    ]);
    let _lb = Proc::up(&[
        "balance",
        "http",
        "--listen",
        "127.0.1.3:8000",
        "--timeout",
        "300ms",
        "--quiet",
        "--backend",
        "127.0.1.3:8001,127.0.1.3:8002",
    ]);
    let t = Instant::now();
    let r = get(addr("127.0.1.3:8000"), "/");
    assert_eq!(r.status, 504, "{r:?}");
    assert!(
        r.body.contains("127.0.1.3:8001") && r.body.contains("did not respond"),
        "{}",
        r.body
    );
    let took = t.elapsed();
    assert!(
        took >= Duration::from_millis(300) && took < Duration::from_secs(3),
        "{took:?}"
    );
    // The rotation carries on to the healthy backend.
    assert_eq!(get(addr("127.0.1.3:8000"), "/").status, 200);
}

#[test]
fn a_malformed_request_gets_400() {
    let _backend = Proc::up(&[
        "serve",
        "http",
        "--bind",
        "127.0.1.4",
        "--ports",
        "8001",
        "--quiet",
    ]);
    let _lb = Proc::up(&[
        "balance",
        "http",
        "--listen",
        "127.0.1.4:8000",
        "--backend",
        "127.0.1.4:8001",
        "--quiet",
    ]);
    let r = Http::connect(addr("127.0.1.4:8000")).raw(b"GARBAGE\r\n\r\n");
    assert_eq!(r.status, 400);
    let r = Http::connect(addr("127.0.1.4:8000"))
        .raw(b"GET / HTTP/1.1\r\nHost: x\r\nContent-Length: nope\r\n\r\n");
    assert_eq!(r.status, 400);
    // And the balancer is still fine.
    assert_eq!(get(addr("127.0.1.4:8000"), "/").status, 200);
}

/// A backend that records the request it got and echoes what a proxy must change.
fn echo_backend(at: &str) {
    let l = TcpListener::bind(at).unwrap();
    thread::spawn(move || {
        for s in l.incoming() {
            let Ok(s) = s else { continue };
            let mut r = BufReader::new(s);
            let mut head = Vec::new();
            loop {
                let mut line = String::new();
                if r.read_line(&mut line).unwrap_or(0) == 0 {
                    return;
                }
                if line == "\r\n" {
                    break;
                }
                head.push(line.trim_end().to_string());
            }
            let len: usize = head
                .iter()
                .find_map(|h| {
                    h.to_ascii_lowercase()
                        .strip_prefix("content-length:")
                        .map(|v| v.trim().parse().unwrap())
                })
                .unwrap_or(0);
            let mut body = vec![0u8; len];
            r.read_exact(&mut body).unwrap();
            let sum: u64 = body.iter().map(|&b| u64::from(b)).sum();
            let text = format!("{}\nbody-bytes: {len}\nbody-sum: {sum}\n", head.join("\n"));
            let resp = format!(
                "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\nX-Hop: a\r\nKeep-Alive: timeout=5\r\n\r\n{text}",
                text.len()
            );
            r.get_mut().write_all(resp.as_bytes()).unwrap();
        }
    });
}

#[test]
fn forwards_bodies_intact_and_rewrites_hop_headers() {
    echo_backend("127.0.1.5:8001");
    let _lb = Proc::up(&[
        "balance",
        "http",
        "--listen",
        "127.0.1.5:8000",
        "--backend",
        "127.0.1.5:8001",
        "--quiet",
    ]);
    let mut c = Http::connect(addr("127.0.1.5:8000"));
    let body: Vec<u8> = (0..1_000_000u32).map(|i| (i % 251) as u8).collect();
    let sum: u64 = body.iter().map(|&b| u64::from(b)).sum();
    let mut req = format!(
        "POST /upload?x=1 HTTP/1.1\r\nHost: example.test\r\nContent-Length: {}\r\nConnection: keep-alive, X-Private\r\nX-Private: secret\r\nX-Forwarded-For: 203.0.113.9\r\n\r\n",
        body.len()
    ).into_bytes();
    req.extend_from_slice(&body);
    let r = c.raw(&req);
    assert_eq!(r.status, 200);
    let seen = r.body.to_ascii_lowercase();
    assert!(seen.starts_with("post /upload?x=1 http/1.1"), "{seen}");
    assert!(seen.contains("host: example.test"), "{seen}");
    assert!(
        seen.contains(&format!("body-bytes: {}\nbody-sum: {sum}", body.len())),
        "{seen}"
    );
    let client_ip = c.local_addr().ip();
    assert!(
        seen.contains(&format!("x-forwarded-for: 203.0.113.9, {client_ip}")),
        "{seen}"
    );
    assert!(
        !seen.contains("x-private"),
        "a header named by Connection leaked: {seen}"
    );
    // The backend's hop-by-hop headers stay with the backend; the client connection lives on.
    assert!(
        r.header("keep-alive").is_none() && r.header("connection").is_none(),
        "{r:?}"
    );
    assert_eq!(c.get("/second").status, 200);
}
