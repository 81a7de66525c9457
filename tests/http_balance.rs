//! The HTTP balancer end to end: real `netpulse` processes and sockets on loopback.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::thread;
use std::time::{Duration, Instant};

use common::{Http, Proc, addr, get, wait_until};

fn port_of(body: &str) -> u16 {
    body.trim().rsplit(' ').next().and_then(|p| p.parse().ok()).unwrap_or_else(|| panic!("no port in {body:?}"))
}

#[test]
fn rotation_is_strict_over_fresh_and_keep_alive_connections() {
    let _backends = Proc::up(&["serve", "http", "--bind", "127.0.1.1", "--ports", "8001-8004"]);
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
    lb.wait_for("\"GET /again\" -> 127.0.1.1:8002 200", Duration::from_secs(2));
}

#[test]
fn without_retries_a_killed_backend_gives_a_fast_502_and_the_others_keep_serving() {
    let _live = Proc::up(&["serve", "http", "--bind", "127.0.1.2", "--ports", "8001-8002", "--quiet"]);
    let mut doomed = Proc::up(&["serve", "http", "--bind", "127.0.1.2", "--ports", "8003", "--quiet"]);
    let _lb = Proc::up(&[
        "balance",
        "http",
        "--listen",
        "127.0.1.2:8000",
        "--quiet",
        "--retries",
        "0",
        "--eject-after",
        "0",
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
fn without_retries_a_hanging_backend_gives_504_after_the_timeout() {
    let hang = TcpListener::bind("127.0.1.3:8001").unwrap();
    thread::spawn(move || {
        let mut held = Vec::new();
        for s in hang.incoming() {
            held.push(s); // accept, read nothing, answer nothing
        }
    });
    let _backend = Proc::up(&["serve", "http", "--bind", "127.0.1.3", "--ports", "8002", "--quiet"]);
    let _lb = Proc::up(&[
        "balance",
        "http",
        "--listen",
        "127.0.1.3:8000",
        "--timeout",
        "300ms",
        "--retries",
        "0",
        "--quiet",
        "--backend",
        "127.0.1.3:8001,127.0.1.3:8002",
    ]);
    let t = Instant::now();
    let r = get(addr("127.0.1.3:8000"), "/");
    assert_eq!(r.status, 504, "{r:?}");
    assert!(r.body.contains("127.0.1.3:8001") && r.body.contains("did not respond"), "{}", r.body);
    let took = t.elapsed();
    assert!(took >= Duration::from_millis(300) && took < Duration::from_secs(3), "{took:?}");
    // The rotation carries on to the healthy backend.
    assert_eq!(get(addr("127.0.1.3:8000"), "/").status, 200);
}

#[test]
fn a_malformed_request_gets_400() {
    let _backend = Proc::up(&["serve", "http", "--bind", "127.0.1.4", "--ports", "8001", "--quiet"]);
    let _lb = Proc::up(&["balance", "http", "--listen", "127.0.1.4:8000", "--backend", "127.0.1.4:8001", "--quiet"]);
    let r = Http::connect(addr("127.0.1.4:8000")).raw(b"GARBAGE\r\n\r\n");
    assert_eq!(r.status, 400);
    let r = Http::connect(addr("127.0.1.4:8000")).raw(b"GET / HTTP/1.1\r\nHost: x\r\nContent-Length: nope\r\n\r\n");
    assert_eq!(r.status, 400);
    let r = Http::connect(addr("127.0.1.4:8000"))
        .raw(b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n");
    assert_eq!(r.status, 400);
    assert!(r.body.contains("malformed request body"), "{}", r.body);
    // A bare LF inside chunk framing could end the body early for a lenient backend and
    // smuggle the rest in as a second request: refused.
    let r = Http::connect(addr("127.0.1.4:8000"))
        .raw(b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n0;\n\r\nGET /admin HTTP/1.1\r\nHost: x\r\n\r\n");
    assert_eq!(r.status, 400, "{r:?}");
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
                .find_map(|h| h.to_ascii_lowercase().strip_prefix("content-length:").map(|v| v.trim().parse().unwrap()))
                .unwrap_or(0);
            let mut body = vec![0u8; len];
            r.read_exact(&mut body).unwrap();
            if head.iter().any(|h| h.eq_ignore_ascii_case("transfer-encoding: chunked")) {
                loop {
                    let mut size = String::new();
                    r.read_line(&mut size).unwrap();
                    let n = usize::from_str_radix(size.trim().split(';').next().unwrap(), 16).unwrap();
                    let mut chunk = vec![0u8; n + 2];
                    r.read_exact(&mut chunk).unwrap();
                    body.extend_from_slice(&chunk[..n]);
                    if n == 0 {
                        break;
                    }
                }
            }
            let len = body.len();
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
    let _lb = Proc::up(&["balance", "http", "--listen", "127.0.1.5:8000", "--backend", "127.0.1.5:8001", "--quiet"]);
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
    assert!(seen.contains(&format!("body-bytes: {}\nbody-sum: {sum}", body.len())), "{seen}");
    let client_ip = c.local_addr().ip();
    assert!(seen.contains(&format!("x-forwarded-for: 203.0.113.9, {client_ip}")), "{seen}");
    assert!(!seen.contains("x-private"), "a header named by Connection leaked: {seen}");
    // The backend's hop-by-hop headers stay with the backend; the client connection lives on.
    assert!(r.header("keep-alive").is_none() && r.header("connection").is_none(), "{r:?}");
    assert_eq!(c.get("/second").status, 200);
}

/// A scripted backend: for each request it reads the head (and a Content-Length body), then
/// writes whatever `reply` returns for the request head; closes when `reply` says so.
fn scripted_backend(at: &str, reply: impl Fn(&str) -> (Vec<u8>, bool) + Send + Sync + 'static) {
    let l = TcpListener::bind(at).unwrap();
    let reply = std::sync::Arc::new(reply);
    thread::spawn(move || {
        for s in l.incoming() {
            let Ok(s) = s else { continue };
            let reply = reply.clone();
            thread::spawn(move || {
                let mut r = BufReader::new(s);
                loop {
                    let mut head = String::new();
                    loop {
                        let mut line = String::new();
                        if r.read_line(&mut line).unwrap_or(0) == 0 {
                            return;
                        }
                        head.push_str(&line);
                        if line == "\r\n" {
                            break;
                        }
                    }
                    let len: usize = head
                        .lines()
                        .find_map(|h| {
                            h.to_ascii_lowercase().strip_prefix("content-length:").map(|v| v.trim().parse().unwrap())
                        })
                        .unwrap_or(0);
                    let mut body = vec![0u8; len];
                    r.read_exact(&mut body).unwrap();
                    let (bytes, close) = reply(&head);
                    if r.get_mut().write_all(&bytes).is_err() || close {
                        return;
                    }
                }
            });
        }
    });
}

#[test]
fn chunked_responses_pass_through_and_are_decoded_for_http10_clients() {
    scripted_backend("127.0.1.6:8001", |_| {
        (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n".to_vec(), false)
    });
    let _lb = Proc::up(&["balance", "http", "--listen", "127.0.1.6:8000", "--backend", "127.0.1.6:8001", "--quiet"]);
    let mut c = Http::connect(addr("127.0.1.6:8000"));
    for _ in 0..3 {
        let r = c.get("/");
        assert_eq!((r.status, r.body.as_str()), (200, "hello world"));
        assert_eq!(r.header("transfer-encoding"), Some("chunked"));
    }
    // HTTP/1.0 cannot read chunked: the body is decoded and the connection closed after it.
    let mut old = std::net::TcpStream::connect("127.0.1.6:8000").unwrap();
    old.write_all(b"GET / HTTP/1.0\r\n\r\n").unwrap();
    let mut all = String::new();
    old.read_to_string(&mut all).unwrap();
    assert!(all.starts_with("HTTP/1.1 200 OK\r\n"), "{all}");
    assert!(all.ends_with("\r\n\r\nhello world"), "{all}");
    assert!(!all.to_ascii_lowercase().contains("chunked"), "{all}");
}

#[test]
fn chunked_uploads_expect_continue_head_and_pipelining() {
    echo_backend("127.0.1.7:8001");
    let _lb = Proc::up(&["balance", "http", "--listen", "127.0.1.7:8000", "--backend", "127.0.1.7:8001", "--quiet"]);
    // A chunked upload arrives chunked, whole, and the connection carries on.
    let mut c = Http::connect(addr("127.0.1.7:8000"));
    let r = c
        .raw(b"POST /up HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2;x=y\r\nde\r\n0\r\n\r\n");
    assert_eq!(r.status, 200);
    let seen = r.body.to_ascii_lowercase();
    assert!(seen.contains("transfer-encoding: chunked") && seen.contains("body-bytes: 5\nbody-sum: 495"), "{seen}");
    let r = c.raw(b"PUT /c HTTP/1.1\r\nHost: h\r\nContent-Length: 4\r\nExpect: 100-continue\r\n\r\nabcd");
    // 100 Continue comes first from the proxy itself, then the real response.
    assert_eq!(r.status, 100);
    let r = c.read_response();
    assert_eq!(r.status, 200);
    assert!(r.body.contains("body-bytes: 4") && !r.body.to_ascii_lowercase().contains("expect"), "{}", r.body);

    // Two requests in one write (pipelining) get two responses, in order.
    let mut p = Http::connect(addr("127.0.1.7:8000"));
    let first = p.raw(b"GET /one HTTP/1.1\r\nHost: h\r\n\r\nGET /two HTTP/1.1\r\nHost: h\r\n\r\n");
    let second = p.read_response();
    assert!(first.body.starts_with("GET /one") && second.body.starts_with("GET /two"), "{first:?} {second:?}");
}

#[test]
fn head_requests_and_big_streamed_bodies() {
    let _backends = Proc::up(&["serve", "http", "--bind", "127.0.1.8", "--ports", "8001", "--quiet"]);
    let big = 8 * 1024 * 1024;
    scripted_backend("127.0.1.8:8002", move |head| {
        let body = vec![b'x'; big];
        let mut resp = format!("HTTP/1.1 200 OK\r\nContent-Length: {big}\r\n\r\n").into_bytes();
        if !head.starts_with("HEAD") {
            resp.extend_from_slice(&body);
        }
        (resp, false)
    });
    let _lb = Proc::up(&["balance", "http", "--listen", "127.0.1.8:8000", "--backend", "127.0.1.8:8002", "--quiet"]);
    let mut c = Http::connect(addr("127.0.1.8:8000"));
    let r = c.head("/");
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-length"), Some(&*big.to_string()));
    // A HEAD response has no body: the next response on the connection must parse cleanly.
    let r = c.get("/");
    assert_eq!(r.status, 200);
    assert_eq!(r.body.len(), big);
    assert!(r.body.bytes().all(|b| b == b'x'));
}

#[test]
fn a_backend_closing_idle_keep_alive_connections_is_retried_transparently() {
    // Answers one request per connection, then closes it without saying so.
    scripted_backend("127.0.1.9:8001", |_| (b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nok\n".to_vec(), true));
    let _lb = Proc::up(&["balance", "http", "--listen", "127.0.1.9:8000", "--backend", "127.0.1.9:8001", "--quiet"]);
    let mut c = Http::connect(addr("127.0.1.9:8000"));
    for i in 0..20 {
        let r = c.get("/");
        assert_eq!((r.status, r.body.as_str()), (200, "ok\n"), "request {i}");
        thread::sleep(Duration::from_millis(5));
    }
}

#[test]
fn under_up_the_monitor_takes_a_dead_backend_out_of_rotation_and_back() {
    let path = std::env::temp_dir().join(format!("netpulse-test-{}-health.toml", std::process::id()));
    std::fs::write(
        &path,
        "[serve.http]\nbind = \"127.0.1.10\"\nports = \"8001\"\n\n\
         [[balance.http]]\nname = \"web\"\nlisten = \"127.0.1.10:8000\"\nbackends = [\"127.0.1.10:8001\", \"127.0.1.10:8002\"]\naccess_log = false\n\n\
         [monitor]\ninterval = \"100ms\"\n",
    )
    .unwrap();
    let up = Proc::up(&["up", "--config", path.to_str().unwrap(), "-q"]);
    let mut other = Proc::up(&["serve", "http", "--bind", "127.0.1.10", "--ports", "8002", "-q"]);
    let front = addr("127.0.1.10:8000");
    let ports = |n: usize| {
        (0..n)
            .map(|_| get(front, "/"))
            .map(|r| if r.status == 200 { port_of(&r.body) } else { r.status })
            .collect::<Vec<u16>>()
    };
    // 8002 started after `up`; once its probes pass it is in rotation.
    wait_until(format_args!("8002 in rotation: {}", up.printed()), Duration::from_secs(3), || {
        ports(2).contains(&8002).then_some(())
    });

    let down_msg = "backend 127.0.1.10:8002 is down, out of rotation";
    let before = up.output().matches(down_msg).count();
    other.kill();
    wait_until(format_args!("8002 taken out: {}", up.printed()), Duration::from_secs(3), || {
        (up.output().matches(down_msg).count() > before).then_some(())
    });
    // No 502s any more: every request goes to the backend that answers its probes.
    assert_eq!(ports(6), vec![8001; 6]);

    let back_msg = "backend 127.0.1.10:8002 is back in rotation";
    let before = up.output().matches(back_msg).count();
    let _back = Proc::up(&["serve", "http", "--bind", "127.0.1.10", "--ports", "8002", "-q"]);
    wait_until(format_args!("8002 back in rotation: {}", up.printed()), Duration::from_secs(3), || {
        (up.output().matches(back_msg).count() > before).then_some(())
    });
    let seen = ports(4);
    assert!(seen.contains(&8001) && seen.contains(&8002), "{seen:?}");
}

// Stricter HTTP at the edges nginx and HAProxy guard: each case through a running balancer.

/// A balancer on `ip:8000` in front of one backend on `ip:8001`.
fn balancer_on(ip: &str, quiet: bool) -> Proc {
    let (listen, backend) = (format!("{ip}:8000"), format!("{ip}:8001"));
    let mut args = vec!["balance", "http", "--listen", &listen, "--backend", &backend];
    if quiet {
        args.push("--quiet");
    }
    Proc::up(&args)
}

/// Sends `request` on a fresh connection and reads until the balancer closes it.
fn exchange_until_close(front: &str, request: &[u8]) -> String {
    let mut s = std::net::TcpStream::connect(front).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(request).unwrap();
    let mut all = Vec::new();
    s.read_to_end(&mut all).unwrap();
    String::from_utf8_lossy(&all).into_owned()
}

#[test]
fn a_request_with_two_host_headers_none_on_http11_or_one_with_spaces_gets_400() {
    echo_backend("127.0.6.1:8001");
    let _lb = balancer_on("127.0.6.1", true);
    let front = addr("127.0.6.1:8000");
    for (request, why) in [
        (&b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n"[..], "more than one Host field"),
        (b"GET / HTTP/1.1\r\nAccept: */*\r\n\r\n", "HTTP/1.1 request without a Host field"),
        (b"GET / HTTP/1.1\r\nHost: a b\r\n\r\n", "invalid Host field"),
    ] {
        let r = Http::connect(front).raw(request);
        assert_eq!(r.status, 400, "{:?}: {r:?}", String::from_utf8_lossy(request));
        assert!(r.body.contains(why), "{r:?}");
    }
    // HTTP/1.0 may leave Host out: the backend's address is sent for it, as before.
    let all = exchange_until_close("127.0.6.1:8000", b"GET /old HTTP/1.0\r\n\r\n");
    assert!(all.starts_with("HTTP/1.1 200 OK\r\n"), "{all}");
    assert!(all.contains("\r\n\r\nGET /old HTTP/1.1\n") && all.contains("\nHost: 127.0.6.1:8001\n"), "{all}");
}

#[test]
fn an_absolute_form_target_reaches_the_backend_in_origin_form_with_the_uris_host() {
    echo_backend("127.0.6.2:8001");
    let _lb = balancer_on("127.0.6.2", true);
    let r = Http::connect(addr("127.0.6.2:8000"))
        .raw(b"GET http://example.test/x?y=1 HTTP/1.1\r\nHost: other.test\r\nAccept: */*\r\n\r\n");
    assert_eq!(r.status, 200, "{r:?}");
    assert!(r.body.starts_with("GET /x?y=1 HTTP/1.1\nHost: example.test\n"), "{}", r.body);
    assert!(!r.body.contains("other.test"), "the URI's authority replaces Host: {}", r.body);
}

#[test]
fn a_chunk_extension_off_the_grammar_or_a_malformed_trailer_gets_400() {
    echo_backend("127.0.6.3:8001");
    let _lb = balancer_on("127.0.6.3", true);
    let front = addr("127.0.6.3:8000");
    let head = "POST /up HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n";
    for body in ["5 xyz\r\nhello\r\n0\r\n\r\n", "5 6\r\nhello\r\n0\r\n\r\n", "5\r\nhello\r\n0\r\nNo colon here\r\n\r\n"]
    {
        let r = Http::connect(front).raw(format!("{head}{body}").as_bytes());
        assert_eq!(r.status, 400, "{body:?}: {r:?}");
        assert!(r.body.contains("malformed request body"), "{r:?}");
    }
    // Extensions by the grammar pass.
    let r = Http::connect(front).raw(format!("{head}5;name=value\r\nhello\r\n0\r\n\r\n").as_bytes());
    assert_eq!(r.status, 200, "{r:?}");
    assert!(r.body.contains("body-bytes: 5\n"), "{}", r.body);
}

#[test]
fn transfer_encoding_with_an_empty_element_gets_400() {
    echo_backend("127.0.6.4:8001");
    let _lb = balancer_on("127.0.6.4", true);
    for te in [", chunked", "chunked,", "", "gzip"] {
        let request = format!("POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: {te}\r\n\r\n0\r\n\r\n");
        let r = Http::connect(addr("127.0.6.4:8000")).raw(request.as_bytes());
        assert_eq!(r.status, 400, "{te:?}: {r:?}");
    }
}

#[test]
fn a_backend_status_000_reaches_the_client_as_three_digits() {
    scripted_backend("127.0.6.5:8001", |_| (b"HTTP/1.1 000 Odd\r\nContent-Length: 2\r\n\r\nok".to_vec(), false));
    let _lb = balancer_on("127.0.6.5", true);
    let all = exchange_until_close("127.0.6.5:8000", b"GET / HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n");
    assert!(all.starts_with("HTTP/1.1 000 Odd\r\n"), "{all}");
    assert!(all.ends_with("\r\n\r\nok"), "{all}");
}

#[test]
fn an_http_1_2_request_is_served_as_http_1_1() {
    echo_backend("127.0.6.6:8001");
    let _lb = balancer_on("127.0.6.6", true);
    let mut c = Http::connect(addr("127.0.6.6:8000"));
    let r = c.raw(b"GET /v HTTP/1.2\r\nHost: h\r\n\r\n");
    assert_eq!(r.status, 200, "{r:?}");
    assert!(r.body.starts_with("GET /v HTTP/1.1\n"), "{}", r.body);
    // Persistent by default, as HTTP/1.1 is.
    assert_eq!(c.get("/again").status, 200);
}

#[test]
fn a_quote_in_the_request_target_is_escaped_in_the_access_log() {
    let _backend = Proc::up(&["serve", "http", "--bind", "127.0.6.7", "--ports", "8001", "--quiet"]);
    let lb = balancer_on("127.0.6.7", false);
    let r = Http::connect(addr("127.0.6.7:8000")).raw(b"GET /a\"b HTTP/1.1\r\nHost: h\r\n\r\n");
    assert_eq!(r.status, 200, "{r:?}");
    lb.wait_for(r#" "GET /a\x22b" -> 127.0.6.7:8001 200 "#, Duration::from_secs(2));
}

#[test]
fn the_balancer_prints_its_totals_on_stop() {
    let _live = Proc::up(&["serve", "http", "--bind", "127.0.17.1", "--ports", "8001-8002", "--quiet"]);
    // The third backend refuses: its turns are retried on the next one, and it is ejected
    // after its second failure.
    let mut lb = Proc::up(&[
        "balance",
        "http",
        "--listen",
        "127.0.17.1:8000",
        "--check",
        "none",
        "--quiet",
        "--backend",
        "127.0.17.1:8001,127.0.17.1:8002,127.0.17.1:8003",
    ]);
    for _ in 0..6 {
        assert_eq!(get(addr("127.0.17.1:8000"), "/").status, 200);
    }
    assert!(lb.signal_and_wait("TERM", Duration::from_secs(10)).success());
    let out = lb.output();
    assert!(
        out.contains(
            "http balancer \"http\" stopped: 6 requests (6 2xx), 2 retried, 2 backend errors, 0 with no backend, 6 connections"
        ),
        "{out}"
    );
}

/// A backend that accepts and answers `reply` to every request on every connection.
fn raw_backend(at: &str, reply: fn(&mut std::net::TcpStream)) {
    let listener = TcpListener::bind(at).unwrap();
    thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { return };
            thread::spawn(move || {
                let mut head = [0u8; 4096];
                let _ = conn.read(&mut head);
                reply(&mut conn);
            });
        }
    });
}

#[test]
fn retries_count_only_attempts_made_and_a_client_that_leaves_is_not_a_2xx() {
    // Two backends that never answer: one request, one retry (there is no third backend).
    raw_backend("127.0.17.4:8001", |_| thread::sleep(Duration::from_secs(5)));
    raw_backend("127.0.17.4:8002", |_| thread::sleep(Duration::from_secs(5)));
    // One that streams a body far larger than the client will read.
    raw_backend("127.0.17.4:8003", |c| {
        let _ = c.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 1000000000\r\n\r\n");
        let chunk = vec![b'x'; 64 * 1024];
        while c.write_all(&chunk).is_ok() {}
    });
    let mut slow = Proc::up(&[
        "balance",
        "http",
        "--listen",
        "127.0.17.4:8000",
        "--check",
        "none",
        "--quiet",
        "--timeout",
        "300ms",
        "--eject-after",
        "0",
        "--backend",
        "127.0.17.4:8001,127.0.17.4:8002",
    ]);
    assert_eq!(get(addr("127.0.17.4:8000"), "/").status, 504);
    assert!(slow.signal_and_wait("TERM", Duration::from_secs(10)).success());
    let out = slow.output();
    assert!(out.contains("stopped: 1 request (1 5xx), 1 retried, 2 backend errors"), "{out}");

    let mut big = Proc::up(&[
        "balance",
        "http",
        "--listen",
        "127.0.17.5:8000",
        "--check",
        "none",
        "--quiet",
        "--backend",
        "127.0.17.4:8003",
    ]);
    let mut client = std::net::TcpStream::connect("127.0.17.5:8000").unwrap();
    client.write_all(b"GET /big HTTP/1.1\r\nHost: t\r\n\r\n").unwrap();
    let mut got = vec![0u8; 256 * 1024];
    client.read_exact(&mut got).unwrap();
    drop(client);
    assert!(big.signal_and_wait("TERM", Duration::from_secs(10)).success());
    let out = big.output();
    assert!(out.contains("stopped: 1 request (1 left early), 0 retried, 0 backend errors"), "{out}");
}

#[test]
fn pooled_connections_to_a_backend_that_went_away_are_closed() {
    let mut backend = Proc::up(&["serve", "http", "--bind", "127.0.17.6", "--ports", "8001", "--quiet"]);
    let _lb = Proc::up(&[
        "balance",
        "http",
        "--listen",
        "127.0.17.6:8000",
        "--check",
        "none",
        "--quiet",
        "--backend",
        "127.0.17.6:8001",
    ]);
    assert_eq!(get(addr("127.0.17.6:8000"), "/").status, 200);
    backend.kill();
    // The pooled connection got the backend's FIN: it must not sit in CLOSE_WAIT until the next
    // request (with no traffic, that could be forever).
    let close_wait = || {
        let out = std::process::Command::new("ss")
            .args(["-Htn", "state", "close-wait", "dst", "127.0.17.6:8001"])
            .output()
            .expect("ss (iproute2)");
        String::from_utf8_lossy(&out.stdout).lines().count()
    };
    wait_until("the pooled connection to close", Duration::from_secs(10), || (close_wait() == 0).then_some(()));
}

// Strategies (`--strategy`), each through a running balancer on 127.0.27.x.

/// A backend on `at` that answers like `serve http` ("Handled by server on port N") after
/// `delay`, on as many connections at once as clients open.
fn slow_backend(at: &str, delay: Duration) {
    let port = addr(at).port();
    scripted_backend(at, move |_| {
        thread::sleep(delay);
        let body = format!("Handled by server on port {port}\n");
        (format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{body}", body.len()).into_bytes(), false)
    });
}

/// `clients` keep-alive connections to `front` at once, each making `each` GETs with `headers`;
/// the port of the backend that answered each request, per client.
fn ports_from(front: &str, clients: usize, each: usize, headers: &'static str) -> Vec<Vec<u16>> {
    let front = addr(front);
    let threads: Vec<_> = (0..clients)
        .map(|_| {
            thread::spawn(move || {
                let mut c = Http::connect(front);
                (0..each)
                    .map(|_| {
                        let r = c.raw(format!("GET / HTTP/1.1\r\nHost: t\r\n{headers}\r\n").as_bytes());
                        assert_eq!(r.status, 200, "{r:?}");
                        port_of(&r.body)
                    })
                    .collect::<Vec<u16>>()
            })
        })
        .collect();
    threads.into_iter().map(|t| t.join().unwrap()).collect()
}

fn share(ports: &[Vec<u16>], port: u16) -> usize {
    ports.iter().flatten().filter(|&&p| p == port).count()
}

#[test]
fn weighted_five_one_one_gives_five_sevenths_spread_not_in_bursts() {
    let _backends = Proc::up(&["serve", "http", "--bind", "127.0.27.1", "--ports", "8001-8003", "--quiet"]);
    let lb = Proc::up(&[
        "balance",
        "http",
        "--listen",
        "127.0.27.1:8000",
        "--strategy",
        "weighted",
        "--check",
        "none",
        "--quiet",
        "--backend",
        "127.0.27.1:8001=5,127.0.27.1:8002,127.0.27.1:8003=1",
    ]);
    assert!(lb.output().contains("(weighted)"), "{}", lb.output());
    let seq = ports_from("127.0.27.1:8000", 1, 700, "").remove(0);
    // nginx's smooth order: a a b a c a a.
    assert_eq!(seq[..7], [8001, 8001, 8002, 8001, 8003, 8001, 8001]);
    for (port, want) in [(8001, 500.0), (8002, 100.0), (8003, 100.0)] {
        let got = seq.iter().filter(|&&p| p == port).count() as f64;
        assert!((got - want).abs() <= 0.05 * 700.0, "{port}: {got} of 700");
    }
    // Spread, not in bursts: b and c never twice in a row; a at most four in a row (two at the
    // end of one period, two at the start of the next), never all five of its turns at once.
    let runs: Vec<(u16, usize)> = seq.chunk_by(|a, b| a == b).map(|r| (r[0], r.len())).collect();
    assert!(runs.iter().all(|&(p, n)| if p == 8001 { n <= 4 } else { n == 1 }), "{runs:?}");
}

#[test]
fn least_connections_sends_around_a_backend_held_busy_by_slow_requests() {
    // 8001 takes a second over every request; 8002 and 8003 answer at once.
    slow_backend("127.0.27.2:8001", Duration::from_secs(1));
    slow_backend("127.0.27.2:8002", Duration::ZERO);
    slow_backend("127.0.27.2:8003", Duration::ZERO);
    let _lb = Proc::up(&[
        "balance",
        "http",
        "--listen",
        "127.0.27.2:8000",
        "--strategy",
        "least-connections",
        "--check",
        "none",
        "--quiet",
        "--backend",
        "127.0.27.2:8001,127.0.27.2:8002,127.0.27.2:8003",
    ]);
    // Two clients at once until 300 requests are answered: while 8001 holds one of them, the
    // other one's requests find 8002 and 8003 idle and go there (round robin would send a third
    // of them to 8001, each waiting a second).
    let done = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let clients: Vec<_> = (0..2)
        .map(|_| {
            let done = done.clone();
            thread::spawn(move || {
                let mut c = Http::connect(addr("127.0.27.2:8000"));
                let mut ports = Vec::new();
                while done.fetch_add(1, std::sync::atomic::Ordering::Relaxed) < 300 {
                    ports.push(port_of(&c.get("/").body));
                }
                ports
            })
        })
        .collect();
    let ports: Vec<Vec<u16>> = clients.into_iter().map(|t| t.join().unwrap()).collect();
    let (total, slow) = (ports.iter().map(Vec::len).sum::<usize>(), share(&ports, 8001));
    assert!(slow * 10 < total, "the busy backend got {slow} of {total}");
    assert!(share(&ports, 8002) > total / 3 && share(&ports, 8003) > total / 3, "{ports:?}");
}

#[test]
fn p2c_gives_a_backend_that_answers_50ms_late_a_clearly_smaller_share() {
    slow_backend("127.0.27.3:8001", Duration::ZERO);
    slow_backend("127.0.27.3:8002", Duration::from_millis(50));
    slow_backend("127.0.27.3:8003", Duration::ZERO);
    let _lb = Proc::up(&[
        "balance",
        "http",
        "--listen",
        "127.0.27.3:8000",
        "--strategy",
        "p2c",
        "--check",
        "none",
        "--quiet",
        "--backend",
        "127.0.27.3:8001,127.0.27.3:8002,127.0.27.3:8003",
    ]);
    let ports = ports_from("127.0.27.3:8000", 2, 150, "");
    let late = share(&ports, 8002);
    // Round robin would give it 100 of 300; its first answer already marks it slow.
    assert!(late <= 15, "the late backend got {late} of 300");
    // The two fast ones share the rest (not evenly: each pick compares two noisy averages).
    assert!(share(&ports, 8001) > 60 && share(&ports, 8003) > 60, "{ports:?}");
}

#[test]
fn hash_on_a_header_keeps_each_user_on_one_backend_and_moves_only_a_dead_backends_users() {
    let _two = Proc::up(&["serve", "http", "--bind", "127.0.27.4", "--ports", "8001-8002", "--quiet"]);
    let mut third = Proc::up(&["serve", "http", "--bind", "127.0.27.4", "--ports", "8003", "--quiet"]);
    let lb = Proc::up(&[
        "balance",
        "http",
        "--listen",
        "127.0.27.4:8000",
        "--strategy",
        "hash",
        "--hash-key",
        "header:X-User",
        "--check",
        "none",
        "--quiet",
        "--backend",
        "127.0.27.4:8001,127.0.27.4:8002,127.0.27.4:8003",
    ]);
    assert!(lb.output().contains("(hash of header:X-User)"), "{}", lb.output());
    let front = addr("127.0.27.4:8000");
    let mut c = Http::connect(front);
    let homes = |c: &mut Http| -> Vec<u16> {
        (0..60)
            .map(|user| {
                let picks: Vec<u16> = (0..3)
                    .map(|_| {
                        let r = c.raw(format!("GET / HTTP/1.1\r\nHost: t\r\nX-User: u{user}\r\n\r\n").as_bytes());
                        port_of(&r.body)
                    })
                    .collect();
                assert!(picks.iter().all(|&p| p == picks[0]), "user {user} moved: {picks:?}");
                picks[0]
            })
            .collect()
    };
    let before = homes(&mut c);
    for port in [8001, 8002, 8003] {
        let n = before.iter().filter(|&&p| p == port).count();
        assert!((8..=35).contains(&n), "{port} is home to {n} of 60 users: {before:?}");
    }
    // Without the header a request takes the next turn of the rotation.
    let turns: std::collections::BTreeSet<u16> = (0..3).map(|_| port_of(&c.get("/").body)).collect();
    assert_eq!(turns.len(), 3, "{turns:?}");

    third.kill();
    // Its users are retried on the next backend of the table (then it is ejected, and they go
    // there directly); everyone else stays where they were.
    let after = homes(&mut c);
    for (user, (&b, &a)) in before.iter().zip(&after).enumerate() {
        if b == 8003 {
            assert_ne!(a, 8003, "user {user}");
        } else {
            assert_eq!(a, b, "user {user} moved although its backend is alive");
        }
    }
}
