//! The HTTP workers' queued writes (`src/sys/queued.rs`: small writes made together in one
//! io_uring call) and the UDP balancer's send ring where io_uring is there but not as we need
//! it: every request must still be served, the usual way. Real processes and raw sockets on 127.0.44.0/24; the kernel's io_uring
//! is made to look older with a preloaded C shim (built with `cc`).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::path::PathBuf;
use std::process::Command;
use std::thread;
use std::time::Duration;

use common::*;

/// A preloaded shim over the `syscall` through which the io-uring crate reaches io_uring; each of
/// its two faults is off unless its variable is set, and says on stderr when it acts.
///
/// `LAST_OP=N`: every io_uring the process sets up allows only operations 0..=N, as an older
/// kernel's would: 16 (`IORING_OP_CONNECT`) is Linux 5.4 (no `IORING_OP_SEND`, which came in
/// 5.6), 8 stops short of `IORING_OP_SENDMSG` (5.3), as on 5.1–5.2. `IORING_REGISTER_PROBE` (5.6)
/// fails too, as on those kernels. io_uring's own restrictions do it (`IORING_SETUP_R_DISABLED`,
/// `IORING_REGISTER_RESTRICTIONS`).
///
/// `FAIL_ENTER=N`: the Nth `io_uring_enter` that submits something fails with `ENOMEM` without
/// entering the kernel (so nothing it held was taken), as a ring may fail under memory pressure.
///
/// `SETUP_ERRNO=N`: every `io_uring_setup` fails with errno N, as `kernel.io_uring_disabled=2`
/// or a container's seccomp filter makes it fail with `EPERM` (1).
const SHIM: &str = r#"
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <sys/syscall.h>
#include <linux/io_uring.h>

static void say(const char *what) {
    if (write(2, what, strlen(what)) < 0) {}
}

long syscall(long n, ...) {
    static long (*real)(long, ...);
    static int submits;
    if (!real) real = (long (*)(long, ...))dlsym(RTLD_NEXT, "syscall");
    va_list ap;
    va_start(ap, n);
    long a[6];
    for (int i = 0; i < 6; i++) a[i] = va_arg(ap, long);
    va_end(ap);
    const char *nth = getenv("FAIL_ENTER"), *last_op = getenv("LAST_OP"), *setup_errno = getenv("SETUP_ERRNO");
    if (n == SYS_io_uring_setup && setup_errno) {
        say("test shim: io_uring_setup fails\n");
        errno = atoi(setup_errno);
        return -1;
    }
    if (n == SYS_io_uring_enter && a[1] > 0 && nth && __atomic_add_fetch(&submits, 1, __ATOMIC_SEQ_CST) == atoi(nth)) {
        say("test shim: io_uring_enter fails with ENOMEM\n");
        errno = ENOMEM;
        return -1;
    }
    if (n != SYS_io_uring_setup || !last_op) return real(n, a[0], a[1], a[2], a[3], a[4], a[5]);
    struct io_uring_params *p = (struct io_uring_params *)a[1];
    p->flags |= IORING_SETUP_R_DISABLED;
    long fd = real(n, a[0], a[1]);
    if (fd < 0) return fd;
    int last = atoi(last_op);
    struct io_uring_restriction r[IORING_OP_CONNECT + 1];
    memset(r, 0, sizeof r);
    for (int i = 0; i <= last && i <= IORING_OP_CONNECT; i++) {
        r[i].opcode = IORING_RESTRICTION_SQE_OP;
        r[i].sqe_op = i;
    }
    if (real(SYS_io_uring_register, fd, IORING_REGISTER_RESTRICTIONS, r, last + 1) < 0) return -1;
    if (real(SYS_io_uring_register, fd, IORING_REGISTER_ENABLE_RINGS, 0, 0) < 0) return -1;
    p->flags &= ~IORING_SETUP_R_DISABLED;
    say("test shim: an io_uring of an older kernel, without IORING_OP_SEND\n");
    return fd;
}
"#;

/// [`SHIM`] built into a shared library named `name` (one per test: they run at once); its path.
fn shim(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("netpulse-queued-writes-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (src, lib) = (dir.join(format!("{name}.c")), dir.join(format!("{name}.so")));
    std::fs::write(&src, SHIM).unwrap();
    let built = Command::new("cc")
        .args(["-shared", "-fPIC", "-o"])
        .arg(&lib)
        .arg(&src)
        .arg("-ldl")
        .status()
        .expect("cc (Debian packages gcc, libc6-dev, linux-libc-dev)");
    assert!(built.success(), "the shim did not build");
    lib
}

/// `n` bytes a shifted copy or a lost write would show.
fn body(n: usize) -> Vec<u8> {
    (0..n).map(|i| b'a' + (i * 7 % 26) as u8).collect()
}

/// A keep-alive backend on `at`: `GET /N` is answered with [`body`]`(N)`, a POST with its body.
fn backend(at: &str) {
    let l = TcpListener::bind(at).unwrap();
    thread::spawn(move || {
        for s in l.incoming().flatten() {
            thread::spawn(move || {
                let mut r = BufReader::new(s);
                loop {
                    let mut line = String::new();
                    if r.read_line(&mut line).unwrap_or(0) == 0 {
                        return;
                    }
                    let mut length = 0;
                    loop {
                        let mut h = String::new();
                        if r.read_line(&mut h).unwrap_or(0) == 0 {
                            return;
                        }
                        if h == "\r\n" {
                            break;
                        }
                        if let Some(v) = h.to_ascii_lowercase().strip_prefix("content-length:") {
                            length = v.trim().parse().unwrap();
                        }
                    }
                    let answer = if line.starts_with("POST") {
                        let mut b = vec![0; length];
                        if r.read_exact(&mut b).is_err() {
                            return;
                        }
                        b
                    } else {
                        body(line.split(' ').nth(1).and_then(|p| p[1..].parse().ok()).unwrap_or(0))
                    };
                    let mut out = format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n", answer.len()).into_bytes();
                    out.extend_from_slice(&answer);
                    if r.get_mut().write_all(&out).is_err() {
                        return;
                    }
                }
            });
        }
    });
}

/// Linux 5.1 to 5.5 (Ubuntu 20.04's 5.4, Amazon Linux 2's 5.4) set io_uring rings up but know no
/// `IORING_OP_SEND`: a balancer that queued its writes there would fail every request (its
/// sends end in an error, the backend is blamed, the client gets nothing). It must see that
/// when it starts and write the usual way: small and large answers, a POST, on one connection.
#[test]
fn on_a_kernel_whose_io_uring_cannot_send_requests_are_served_the_usual_way() {
    let shim = shim("old_kernel");
    backend("127.0.44.101:8001");
    let mut cmd = netpulse();
    cmd.args(["balance", "http", "--listen", "127.0.44.101:8000", "--backend", "127.0.44.101:8001"])
        .args(["--quiet", "--check", "none", "--workers", "2"])
        .env("LD_PRELOAD", &shim)
        .env("LAST_OP", "16");
    let p = Proc::up_command(cmd);
    // The shim took (a machine without io_uring at all would prove nothing here).
    p.wait_for("test shim: an io_uring of an older kernel", Duration::from_secs(10));
    // And the start says so.
    p.wait_for(
        "  writes         sendto, one system call per write (an io_uring that cannot say what it knows (before Linux 5.6): ",
        Duration::from_secs(10),
    );
    let front = addr("127.0.44.101:8000");
    let mut c = Http::connect(front);
    for n in [2, 16 * 1024 - 64, 100_000, 5] {
        let r = c.get(&format!("/{n}"));
        assert_eq!(r.status, 200, "GET /{n}: {r:?}\n{}", p.output());
        assert_eq!(r.body.as_bytes(), body(n), "GET /{n}: the body");
    }
    let r = c.raw(b"POST /echo HTTP/1.1\r\nHost: test\r\nContent-Length: 5\r\n\r\nhello");
    assert_eq!((r.status, r.body.as_str()), (200, "hello"), "{}", p.output());
    // A connection of its own still finds the backend in the rotation (not ejected for our error).
    assert_eq!(get(front, "/3").body.as_bytes(), body(3));
}

/// A ring that fails while writes wait in it: those writes go out the usual way, and the
/// worker writes the usual way from then on. Every request is answered, whole, in order, with
/// no retry to hide a lost write: the failure hits a response on its way to the client (the
/// 2nd call: the 1st carries the first request to the backend), or a request on its way to the
/// backend (the 3rd).
#[test]
fn when_the_ring_fails_the_writes_waiting_in_it_go_out_the_usual_way() {
    let shim = shim("failing_enter");
    for (ip, nth) in [("127.0.44.102", "2"), ("127.0.44.103", "3")] {
        backend(&format!("{ip}:8001"));
        let mut cmd = netpulse();
        cmd.args(["balance", "http", "--listen", &format!("{ip}:8000"), "--backend", &format!("{ip}:8001")])
            .args(["--quiet", "--check", "none", "--workers", "1", "--retries", "0"])
            .env("LD_PRELOAD", &shim)
            .env("FAIL_ENTER", nth);
        let p = Proc::up_command(cmd);
        let front = addr(&format!("{ip}:8000"));
        let mut c = Http::connect(front);
        for i in 0..20 {
            let n = 1 + i * 97;
            let r = c.get(&format!("/{n}"));
            assert_eq!(r.status, 200, "call {nth} failed; GET /{n}: {r:?}\n{}", p.output());
            assert_eq!(r.body.as_bytes(), body(n), "call {nth} failed; GET /{n}: the body");
        }
        p.wait_for("test shim: io_uring_enter fails with ENOMEM", Duration::from_secs(5));
        assert_eq!(get(front, "/3").body.as_bytes(), body(3));
    }
}

/// A UDP echo (upper-cased) on `ip`:2526 behind `netpulse balance udp` on `ip`:8888, the shim
/// `name` preloaded with its fault `fault` (variable, value).
fn udp_balancer_over_shim(name: &str, ip: &str, fault: (&str, &str)) -> Proc {
    let shim = shim(name);
    let echo = std::net::UdpSocket::bind(format!("{ip}:2526")).unwrap();
    thread::spawn(move || {
        let mut buf = [0u8; 2048];
        while let Ok((n, from)) = echo.recv_from(&mut buf) {
            buf[..n].make_ascii_uppercase();
            let _ = echo.send_to(&buf[..n], from);
        }
    });
    let mut cmd = netpulse();
    cmd.args(["balance", "udp", "--listen", &format!("{ip}:8888"), "--backend", &format!("{ip}:2526")])
        .args(["--quiet", "--check", "none"])
        .env("LD_PRELOAD", &shim)
        .env(fault.0, fault.1);
    Proc::up_command(cmd)
}

/// `count` pings through the balancer on `ip`:8888, every one answered.
fn every_ping_answered(ip: &str, count: u32, p: &Proc) {
    let (code, out) = run(&["udp-ping", ip, "8888", "-c", &count.to_string()], Duration::from_secs(20));
    assert_eq!(code, 0, "{out}\n{}", p.output());
    let summary = format!("{count} packets transmitted, {count} received, 0% packet loss");
    assert!(out.contains(&summary), "{out}\n{}", p.output());
}

/// On a kernel whose io_uring cannot send datagrams (Linux 5.1–5.2: no `IORING_OP_SENDMSG`)
/// and cannot say so (the probe came in 5.6), the UDP balancer sends each datagram with
/// `sendto`, and every ping is answered (through the ring, every one would be dropped).
#[test]
fn on_a_kernel_whose_io_uring_cannot_say_what_it_knows_the_udp_balancer_relays_every_datagram() {
    let p = udp_balancer_over_shim("old_kernel_udp", "127.0.44.104", ("LAST_OP", "8"));
    p.wait_for("test shim: an io_uring of an older kernel", Duration::from_secs(10));
    every_ping_answered("127.0.44.104", 10, &p);
}

/// Where io_uring is not permitted (`kernel.io_uring_disabled=2`, a container's seccomp filter:
/// `io_uring_setup` fails with `EPERM`), the start banner says so and names what forbids it, and
/// the UDP balancer relays every datagram with `sendto`.
#[test]
fn where_io_uring_is_not_permitted_the_banner_names_why_and_every_datagram_is_relayed() {
    let p = udp_balancer_over_shim("not_permitted", "127.0.44.105", ("SETUP_ERRNO", "1"));
    p.wait_for(
        "  writes         sendto, one system call per write (io_uring not permitted here \
         (sysctl kernel.io_uring_disabled, or a seccomp filter such as a container's): ",
        Duration::from_secs(10),
    );
    every_ping_answered("127.0.44.105", 5, &p);
}
