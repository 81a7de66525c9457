//! The HTTP proxy's per-connection timers (issue 11's fast paths: one timer for the backends'
//! answers, reads and writes that end at once set none) still end what they must: a backend that
//! answers late then not at all, a body that stalls, a client that stops reading, a head left
//! half-sent when the balancer stops. Real processes and raw sockets on 127.0.46.0/24.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::Duration;

use common::*;

/// A backend on `at` serving each connection with `serve` on its own thread.
fn backend(at: &str, serve: impl Fn(TcpStream) + Send + Copy + 'static) {
    let l = TcpListener::bind(at).unwrap();
    thread::spawn(move || {
        for s in l.incoming().flatten() {
            thread::spawn(move || serve(s));
        }
    });
}

/// Reads a request head; `None` at EOF.
fn read_head(s: &mut TcpStream) -> Option<String> {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        match s.read(&mut byte) {
            Ok(1) => head.push(byte[0]),
            _ => return None,
        }
    }
    Some(String::from_utf8_lossy(&head).into_owned())
}

fn balancer(listen: &str, backend: &str, extra: &[&str]) -> Proc {
    balancer_with(listen, backend, extra, true)
}

/// [`balancer`], with io_uring allowed or not (`NETPULSE_IO_URING=off`: every write is a
/// `sendto` of its own, as on a kernel without io_uring).
fn balancer_with(listen: &str, backend: &str, extra: &[&str], io_uring: bool) -> Proc {
    let mut cmd = netpulse();
    cmd.args(["balance", "http", "--listen", listen, "--backend", backend, "--quiet", "--retries", "0"]).args(extra);
    if !io_uring {
        cmd.env("NETPULSE_IO_URING", "off");
    }
    Proc::up_command(cmd)
}

/// The connection's one answer timer, left set by a request answered just in time, still ends
/// the next request's wait with a 504 (and the one after is served again), on one connection.
#[test]
fn on_one_connection_late_answers_and_silent_backends_alternate_200_and_504() {
    backend("127.0.46.2:8001", |mut s| {
        while let Some(head) = read_head(&mut s) {
            if head.starts_with("GET /silent") {
                thread::sleep(Duration::from_secs(3600));
            }
            thread::sleep(Duration::from_millis(300)); // most of the timeout
            if s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok").is_err() {
                return;
            }
        }
    });
    let _lb = balancer("127.0.46.2:8000", "127.0.46.2:8001", &["--timeout", "500ms"]);
    let mut c = Http::connect(addr("127.0.46.2:8000"));
    let mut statuses = Vec::new();
    for path in ["/late", "/silent", "/late", "/silent", "/late"] {
        let r = c.get(path);
        statuses.push(r.status);
        if r.header("connection").is_some_and(|v| v.eq_ignore_ascii_case("close")) {
            c = Http::connect(addr("127.0.46.2:8000"));
        }
    }
    assert_eq!(statuses, [200, 504, 200, 504, 200]);
}

/// A backend that sends the head and part of the body, then nothing: the client gets what
/// came and then the connection ends (it is not held open with a response that never ends).
#[test]
fn a_body_that_stalls_ends_the_client_connection_short() {
    backend("127.0.46.3:8001", |mut s| {
        if read_head(&mut s).is_some() {
            let _ = s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n0123456789");
            thread::sleep(Duration::from_secs(3600));
        }
    });
    let _lb = balancer("127.0.46.3:8000", "127.0.46.3:8001", &["--timeout", "500ms"]);
    let mut s = TcpStream::connect("127.0.46.3:8000").unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    let mut got = Vec::new();
    let end = s.read_to_end(&mut got);
    assert!(end.is_ok(), "the connection was not ended: {end:?}");
    let text = String::from_utf8_lossy(&got);
    assert!(text.starts_with("HTTP/1.1 200 OK\r\n") && text.ends_with("\r\n\r\n0123456789"), "{text:?}");
}

/// A client that asks for a large response and stops reading: the balancer gives up on it,
/// and so lets go of the backend connection that was feeding it; with its writes queued for
/// io_uring and without.
#[test]
fn a_client_that_stops_reading_lets_the_backend_connection_go() {
    static LET_GO: AtomicBool = AtomicBool::new(false);
    client_stops_reading("127.0.46.4", true, &LET_GO);
}

#[test]
fn a_client_that_stops_reading_lets_the_backend_connection_go_without_io_uring() {
    static LET_GO: AtomicBool = AtomicBool::new(false);
    client_stops_reading("127.0.46.6", false, &LET_GO);
}

fn client_stops_reading(ip: &str, io_uring: bool, let_go: &'static AtomicBool) {
    backend(&format!("{ip}:8001"), move |mut s| {
        let Some(head) = read_head(&mut s) else { return };
        let huge = 1u64 << 40;
        let chunk = vec![b'x'; 64 * 1024];
        let mut ok = s.write_all(format!("HTTP/1.1 200 OK\r\nContent-Length: {huge}\r\n\r\n").as_bytes()).is_ok();
        while ok {
            ok = s.write_all(&chunk).is_ok();
        }
        if head.starts_with("GET /huge") {
            let_go.store(true, Ordering::SeqCst);
        }
    });
    let _lb = balancer_with(&format!("{ip}:8000"), &format!("{ip}:8001"), &["--timeout", "500ms"], io_uring);
    let mut s = TcpStream::connect(format!("{ip}:8000")).unwrap();
    s.write_all(b"GET /huge HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    let mut first = [0u8; 12];
    s.read_exact(&mut first).unwrap();
    assert_eq!(&first, b"HTTP/1.1 200");
    // Reads nothing more.
    wait_until("the backend connection to be let go", Duration::from_secs(20), || {
        let_go.load(Ordering::SeqCst).then_some(())
    });
    drop(s);
}

/// SIGTERM while a client has sent half a head and then nothing: the balancer gives the rest a
/// short grace, answers 408 and exits, not a whole head timeout (30 s) later.
#[test]
fn a_half_sent_head_does_not_hold_a_stop() {
    let _backend = Proc::up(&["serve", "http", "--bind", "127.0.46.5", "--ports", "8001", "--quiet"]);
    let mut lb = balancer("127.0.46.5:8000", "127.0.46.5:8001", &[]);
    let mut s = TcpStream::connect("127.0.46.5:8000").unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n").unwrap();
    thread::sleep(Duration::from_millis(300));
    let status = lb.signal_and_wait("TERM", Duration::from_secs(15));
    assert_eq!(status.code(), Some(0), "{}", lb.output());
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut rest = Vec::new();
    s.read_to_end(&mut rest).unwrap();
    let rest = String::from_utf8_lossy(&rest);
    assert!(rest.starts_with("HTTP/1.1 408"), "{rest}");
    assert!(rest.contains("after the stop began"), "{rest}");
}
