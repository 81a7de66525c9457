//! The command line as a user meets it: `up`, config files, and bad input.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, UdpSocket};
use std::path::PathBuf;
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use common::{Proc, addr, get, run, wait_until};

const QUICK: Duration = Duration::from_secs(5);

fn temp_config(name: &str, text: &str) -> PathBuf {
    let path = std::env::temp_dir().join(format!("netpulse-test-{}-{name}.toml", std::process::id()));
    std::fs::write(&path, text).unwrap();
    path
}

/// `examples/netpulse.toml` with every address moved from 127.0.0.1 to `ip`, as a temp file.
fn example_config_on(ip: &str) -> PathBuf {
    let example = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/examples/netpulse.toml")).unwrap();
    assert!(example.contains("127.0.0.1"), "the example no longer uses 127.0.0.1: rewrite what it uses");
    temp_config(&format!("example-{ip}"), &example.replace("127.0.0.1", ip))
}

/// What `up` prints for the documented default lab (README: HTTP backends on :8001-8004 behind a
/// balancer on :8000, UDP ping servers on :2526-2528 behind a balancer on :8888, a monitor of
/// every backend with metrics on :9100), on `ip`; `writes` is how its writes go out.
fn documented_default_banner(ip: &str, data: &std::path::Path, writes: &str) -> String {
    let http = (8001..=8004).map(|p| format!("{ip}:{p}")).collect::<Vec<_>>().join(", ");
    let udp = (2526..=2528).map(|p| format!("{ip}:{p}")).collect::<Vec<_>>().join(", ");
    let history = data.join("netpulse/history.db").display().to_string();
    let rotation = data.join("netpulse/rotation").display().to_string();
    format!(
        "netpulse is up:\n\
         \x20 http backends  {http}\n\
         \x20 udp servers    {udp} (simulated loss 0%)\n\
         \x20 http balancer  \"web\" on {ip}:8000 -> {http} (round-robin)\n\
         \x20                health: GET / expecting 200-399, fall 3, rise 2, probed by the monitor every 1s\n\
         \x20 udp balancer   \"ping\" on {ip}:8888 -> {udp} (round-robin per datagram)\n\
         \x20                health: classic ping, fall 3, rise 2, probed by the monitor every 1s\n\
         \x20 monitor        7 targets every 1s\n\
         \x20 metrics        http://{ip}:9100/metrics\n\
         \x20 dashboard      http://{ip}:9100/ (JSON: /api/v1/)\n\
         \x20 history        {history} (kept: intervals 2d, minutes 30d, hours 365d)\n\
         \x20 rotation kept  {rotation}\n\
         \x20 writes         {writes}\n\
         try:\n\
         \x20 curl http://{ip}:8000/\n\
         \x20 netpulse udp-ping {ip} 8888\n\
         Ctrl-C stops it.\n"
    )
}

#[test]
fn up_with_the_example_config_answers_on_every_port_and_stops_on_sigterm() {
    // The example (the embedded default) moved to an address of its own, so that a lab a
    // developer has running on 127.0.0.1 neither breaks this test nor gets its traffic.
    let path = example_config_on("127.0.9.2");
    let mut up = Proc::up(&["up", "--config", path.to_str().unwrap()]);
    let banner = up.output();
    for text in [
        "127.0.9.2:8000",
        "127.0.9.2:8888",
        "127.0.9.2:8004",
        "127.0.9.2:2528",
        "curl http://127.0.9.2:8000/",
        "netpulse udp-ping 127.0.9.2 8888",
    ] {
        assert!(banner.contains(text), "banner lacks {text}: {banner}");
    }
    for port in 8001..=8004 {
        assert_eq!(get(addr(&format!("127.0.9.2:{port}")), "/").body, format!("Handled by server on port {port}\n"));
    }
    let ports: Vec<String> = (0..4).map(|_| get(addr("127.0.9.2:8000"), "/").body).collect();
    assert_eq!(ports.iter().collect::<std::collections::HashSet<_>>().len(), 4, "{ports:?}");
    for port in ["2526", "2527", "2528", "8888"] {
        let (code, out) = run(&["udp-ping", "127.0.9.2", port, "-c", "3"], QUICK);
        assert_eq!(code, 0, "{out}");
        assert!(out.contains("3 received, 0% packet loss"), "{out}");
    }
    // The monitor watches every backend and publishes it for Prometheus.
    let page = wait_until("the metrics to list udp://127.0.9.2:2528", Duration::from_secs(5), || {
        let r = get(addr("127.0.9.2:9100"), "/metrics");
        r.body.contains("udp://127.0.9.2:2528").then_some(r.body)
    });
    for t in ["http://127.0.9.2:8001/", "http://127.0.9.2:8004/", "udp://127.0.9.2:2526", "udp://127.0.9.2:2528"] {
        assert!(
            page.contains(&format!("probe_success{{target=\"{t}\",probe=\"{}\"}} 1", &t[..t.find(':').unwrap()])),
            "{t}: {page}"
        );
    }
    // The lab's output shows the user's traffic, not the monitor's probes: one direct request and
    // one through the balancer reached 8001; three direct pings and one balanced reached 2526.
    // (Their source address is 127.0.0.1, the one the kernel picks for any 127/8 destination.)
    let out = up.output();
    assert_eq!(out.matches("[8001] GET / from").count(), 2, "{out}");
    assert_eq!(out.matches("[2526] 127.0.0.1:").count(), 4, "{out}");
    let status = up.signal_and_wait("TERM", Duration::from_secs(5));
    assert!(status.success(), "{status:?}");
}

#[test]
fn up_with_no_config_starts_the_embedded_default_on_127_0_0_1() {
    // The default's fixed ports may belong to a lab a developer has running: then say so and
    // leave it alone.
    let tcp = [8000, 8001, 8002, 8003, 8004, 9100].map(|p| TcpListener::bind(("127.0.0.1", p)).is_err());
    let udp = [2526, 2527, 2528, 8888].map(|p| UdpSocket::bind(("127.0.0.1", p)).is_err());
    if tcp.contains(&true) || udp.contains(&true) {
        eprintln!("note: skipped: a port of the default lab on 127.0.0.1 is taken (is a lab running?)");
        return;
    }
    let data = common::data_home();
    let mut cmd = common::netpulse();
    cmd.arg("up").env("XDG_DATA_HOME", &data);
    let mut up = Proc::up_command(cmd);
    let out = up.output();
    // Through io_uring where this kernel can (and lets us), else with sendto, saying why.
    let writes = out.lines().find_map(|l| l.strip_prefix("  writes         ")).unwrap_or_default();
    assert!(
        writes.starts_with("io_uring, small writes batched, one system call per turn of the event loop")
            || writes.starts_with("sendto, one system call per write ("),
        "{out}"
    );
    assert!(out.contains(&documented_default_banner("127.0.0.1", &data, writes)), "{out}");
    let r = get(addr("127.0.0.1:8000"), "/");
    assert_eq!((r.status, r.body.as_str()), (200, "Handled by server on port 8001\n"));
    let status = up.signal_and_wait("TERM", Duration::from_secs(5));
    assert!(status.success(), "{status:?}");
}

#[test]
fn in_flight_requests_finish_when_stopping() {
    // A backend that takes 600 ms to answer; it says when a request has arrived.
    let slow = TcpListener::bind("127.0.3.1:8001").unwrap();
    let (arrived, arrival) = mpsc::channel();
    thread::spawn(move || {
        for s in slow.incoming() {
            let Ok(mut s) = s else { continue };
            let mut line = String::new();
            let mut r = BufReader::new(s.try_clone().unwrap());
            while r.read_line(&mut line).unwrap_or(0) > 2 {
                line.clear();
            }
            let _ = arrived.send(());
            thread::sleep(Duration::from_millis(600));
            let _ = s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nslow\n");
        }
    });
    // (No health checks: their requests would queue at this one-at-a-time backend.)
    let path = temp_config(
        "drain",
        "[[balance.http]]\nlisten = \"127.0.3.1:8000\"\nbackends = [\"127.0.3.1:8001\"]\nhealth = { check = \"none\" }\n",
    );
    let mut up = Proc::up(&["up", "--config", path.to_str().unwrap()]);
    let client = thread::spawn(|| get(addr("127.0.3.1:8000"), "/"));
    arrival.recv_timeout(QUICK).expect("the request reaches the backend");
    let t = Instant::now();
    let status = up.signal_and_wait("TERM", Duration::from_secs(5));
    let r = client.join().unwrap();
    assert_eq!((r.status, r.body.as_str()), (200, "slow\n"));
    assert!(status.success());
    assert!(t.elapsed() < Duration::from_secs(3));
    // And the listener is closed: new clients are refused.
    assert!(std::net::TcpStream::connect("127.0.3.1:8000").is_err());
}

#[test]
fn balance_config_runs_only_the_balancers_of_a_file() {
    let text = "[serve.http]\nbind = \"127.0.3.2\"\nports = \"8001\"\n\n\
        [[balance.http]]\nname = \"front\"\nlisten = \"127.0.3.2:8000\"\nbackends = [\"127.0.3.2:8001\"]\n\n\
        [[balance.udp]]\nlisten = \"127.0.3.2:8888\"\nbackends = [\"127.0.3.2:2526\"]\naffinity = \"client\"\n";
    let path = temp_config("balance", text);
    let lb = Proc::up(&["balance", "--config", path.to_str().unwrap()]);
    let out = lb.output();
    assert!(out.contains("\"front\" on 127.0.3.2:8000") && out.contains("pinned per client"), "{out}");
    assert!(!out.contains("http backends"), "serve section should be ignored: {out}");
    // No backend runs, so the balancer answers 502 itself.
    assert_eq!(get(addr("127.0.3.2:8000"), "/").status, 502);
    // The same file with `up` starts the backend too.
    drop(lb);
    let _up = Proc::up(&["up", "--config", path.to_str().unwrap()]);
    assert_eq!(get(addr("127.0.3.2:8000"), "/").body, "Handled by server on port 8001\n");
}

#[test]
fn bad_flags_are_usage_errors() {
    let (code, out) =
        run(&["balance", "http", "--listen", "127.0.0.1:8000", "--backend", "127.0.0.1:8001", "--bogus"], QUICK);
    assert_eq!(code, 2, "{out}");
    assert!(out.contains("--bogus"), "{out}");

    let (code, out) = run(&["serve", "http", "--ports", "8004-8001"], QUICK);
    assert_eq!(code, 2, "{out}");
    assert!(out.contains("8004-8001") && out.contains("write 8001-8004"), "{out}");

    let (code, out) = run(&["balance", "http", "--listen", "localhost:80", "--backend", "127.0.0.1:8001"], QUICK);
    assert_eq!(code, 2, "{out}");
    assert!(out.contains("IP:PORT"), "{out}");

    let (code, out) = run(&["serve", "udp", "--ports", "2526", "--loss", "1.5"], QUICK);
    assert_eq!(code, 2, "{out}");
    assert!(out.contains("probability"), "{out}");

    let (code, out) = run(&["udp-ping", "no-such-host..invalid", "8888", "-c", "1"], QUICK);
    assert_eq!(code, 2, "{out}");
    assert!(out.contains("cannot resolve host 'no-such-host..invalid'"), "{out}");

    let (code, out) = run(&["udp-ping", "127.0.0.1", "8888", "--timeout", "soon"], QUICK);
    assert_eq!(code, 2, "{out}");
    assert!(out.contains("duration"), "{out}");

    let (code, out) =
        run(&["balance", "udp", "--listen", "127.0.0.1:8888", "--backend", "127.0.0.1:2526,[::1]:2527"], QUICK);
    assert_eq!(code, 2, "{out}");
    assert!(out.contains("invalid flags") && out.contains("mix IPv4 and IPv6"), "{out}");

    let (code, out) = run(&["balance"], QUICK);
    assert_eq!(code, 2, "{out}");
    assert!(out.contains("--config"), "{out}");
    assert!(!out.contains("panicked"), "{out}");

    // The io_uring switch takes on or off; anything else is said, not read as "on".
    let mut cmd = common::netpulse();
    cmd.args(["balance", "http", "--listen", "127.0.0.1:8000", "--backend", "127.0.0.1:8001"])
        .env("NETPULSE_IO_URING", "disabled");
    let out = cmd.output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("NETPULSE_IO_URING=\"disabled\" is neither on nor off"), "{err}");
}

#[test]
fn a_busy_port_is_named_and_nothing_half_starts() {
    let _taken = TcpListener::bind("127.0.3.3:8002").unwrap();
    let (code, out) = run(&["serve", "http", "--bind", "127.0.3.3", "--ports", "8001-8003"], QUICK);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("cannot listen on tcp 127.0.3.3:8002") && out.contains("in use"), "{out}");
    assert!(!out.contains("netpulse is up"), "{out}");

    // Our own multi-worker balancers share their port among their workers only: a second
    // balancer on the same address is refused, not silently handed half the traffic.
    for kind in ["http", "udp"] {
        let args = ["balance", kind, "--listen", "127.0.3.3:9000", "--backend", "127.0.3.3:1", "--workers", "2", "-q"];
        let _first = Proc::up(&args);
        let (code, out) = run(&args, QUICK);
        assert_eq!(code, 1, "{out}");
        assert!(out.contains("127.0.3.3:9000") && out.contains("in use"), "{out}");
    }

    let _taken = UdpSocket::bind("127.0.3.3:8888").unwrap();
    let (code, out) = run(&["balance", "udp", "--listen", "127.0.3.3:8888", "--backend", "127.0.3.3:2526"], QUICK);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("udp 127.0.3.3:8888") && out.contains("udp balancer"), "{out}");
}

#[test]
fn config_errors_name_the_file_line_and_field() {
    let path = temp_config(
        "typo",
        "[[balance.udp]]\nlisten = \"127.0.0.1:8888\"\nbackends = [\"127.0.0.1:2526\"]\nafinity = \"client\"\n",
    );
    let (code, out) = run(&["up", "--config", path.to_str().unwrap()], QUICK);
    assert_eq!(code, 2, "{out}");
    assert!(out.contains(path.to_str().unwrap()) && out.contains("line 4") && out.contains("afinity"), "{out}");

    let path = temp_config(
        "dur",
        "[[balance.http]]\nlisten = \"127.0.0.1:8000\"\nbackends = [\"127.0.0.1:8001\"]\n\ntimeout = 30\n",
    );
    let (code, out) = run(&["balance", "--config", path.to_str().unwrap()], QUICK);
    assert_eq!(code, 2, "{out}");
    assert!(out.contains("line 5"), "{out}");

    let path = temp_config("syntax", "[serve.http\nports = 1\n");
    let (code, out) = run(&["up", "--config", path.to_str().unwrap()], QUICK);
    assert_eq!(code, 2, "{out}");
    assert!(out.contains("line 1"), "{out}");

    let (code, out) = run(&["up", "--config", "/nonexistent/netpulse.toml"], QUICK);
    assert_eq!(code, 2, "{out}");
    assert!(out.contains("cannot read config /nonexistent/netpulse.toml") && out.contains("No such file"), "{out}");

    let path = temp_config("empty", "# nothing\n");
    let (code, out) = run(&["up", "--config", path.to_str().unwrap()], QUICK);
    assert_eq!(code, 2, "{out}");
    assert!(out.contains("nothing to run"), "{out}");
}

#[test]
fn the_example_config_runs_the_documented_default_lab() {
    // The embedded default is the example file (config.rs includes it; the test with no
    // --config checks the same banner); what it runs is the lab the README documents.
    let path = example_config_on("127.0.9.1");
    let data = common::data_home();
    let mut cmd = common::netpulse();
    cmd.args(["up", "--config", path.to_str().unwrap(), "--quiet"])
        .env("XDG_DATA_HOME", &data)
        .env("NETPULSE_IO_URING", "off");
    let mut up = Proc::up_command(cmd);
    let out = up.output();
    let writes = "sendto, one system call per write (NETPULSE_IO_URING=off)";
    assert!(out.contains(&documented_default_banner("127.0.9.1", &data, writes)), "{out}");
    let status = up.signal_and_wait("TERM", Duration::from_secs(5));
    assert!(status.success(), "{status:?}: {}", up.output());
    // And `--help` lists every command of the design.
    let (code, out) = run(&["--help"], QUICK);
    assert_eq!(code, 0);
    for cmd in ["up", "serve", "balance", "udp-ping"] {
        assert!(out.contains(cmd), "{out}");
    }
}

#[test]
fn error_lines_name_the_os_error_once() {
    let _taken = TcpListener::bind("127.0.3.4:8001").unwrap();
    let (code, out) = run(&["serve", "http", "--bind", "127.0.3.4", "--ports", "8001"], QUICK);
    assert_eq!(code, 1, "{out}");
    assert_eq!(out.matches("in use").count(), 1, "{out}");
    assert_eq!(out.lines().count(), 1, "one line: {out}");

    let (code, out) = run(&["up", "--config", "/nonexistent/netpulse.toml"], QUICK);
    assert_eq!(code, 2, "{out}");
    assert!(out.contains("cannot read config /nonexistent/netpulse.toml"), "{out}");
    assert_eq!(out.matches("No such file").count(), 1, "{out}");

    // An address this host does not have: refused locally, nothing is sent.
    let (code, out) = run(&["balance", "http", "--listen", "192.0.2.1:8000", "--backend", "127.0.3.4:1"], QUICK);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("cannot listen on tcp 192.0.2.1:8000"), "{out}");
    assert_eq!(out.matches("assign requested address").count(), 1, "{out}");
}

#[test]
fn udp_ping_names_ipv6_servers_in_brackets_and_counts_in_the_singular() {
    let server = UdpSocket::bind("[::1]:0").unwrap();
    let port = server.local_addr().unwrap().port();
    thread::spawn(move || {
        let mut buf = [0u8; 512];
        while let Ok((n, from)) = server.recv_from(&mut buf) {
            let reply = buf[..n].to_ascii_uppercase();
            let _ = server.send_to(&reply, from);
        }
    });
    let (code, out) = run(&["udp-ping", "::1", &port.to_string(), "-c", "1"], QUICK);
    assert_eq!(code, 0, "{out}");
    assert!(out.starts_with(&format!("UDP PING [::1]:{port}: 1 ping, timeout")), "{out}");
    assert!(out.contains(&format!("--- [::1]:{port} udp-ping statistics ---")), "{out}");
}

#[test]
fn readme_shows_the_embedded_default_verbatim() {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    let example = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/examples/netpulse.toml")).unwrap();
    assert!(
        readme.contains(&format!("```toml\n{example}```")),
        "README's config block differs from examples/netpulse.toml"
    );
}

#[test]
fn up_says_when_a_target_goes_down_and_the_verdict_changes() {
    let config = temp_config(
        "events",
        "[serve.http]\nbind = \"127.0.17.3\"\nports = \"8001\"\n\n\
         [monitor]\ninterval = \"100ms\"\ntargets = [\"tcp://127.0.17.3:9\"]\n",
    );
    let up = Proc::up(&["up", "--config", config.to_str().unwrap(), "--quiet"]);
    up.wait_for("target tcp://127.0.17.3:9 is down (Connection refused", QUICK);
    up.wait_for("connectivity: disconnected (was connected); down: tcp://127.0.17.3:9", QUICK);
    // No balancer, no line about how balancers write.
    assert!(!up.output().contains("  writes "), "{}", up.output());
}

/// `--help` names the environment netpulse reads, the io_uring switch among it, and so does the
/// help of each command that runs balancers.
#[test]
fn help_names_the_environment_variables() {
    for args in [&["--help"][..], &["up", "--help"], &["balance", "--help"], &["balance", "http", "--help"]] {
        let (code, out) = run(args, QUICK);
        assert_eq!(code, 0, "{out}");
        for var in ["RUST_LOG", "NO_COLOR", "NETPULSE_IO_URING=off", "XDG_DATA_HOME"] {
            assert!(out.contains(var), "{var} is not in {args:?}:\n{out}");
        }
    }
    let (_, out) = run(&["balance", "udp", "--help"], QUICK);
    assert!(out.contains("NETPULSE_IO_URING=off"), "{out}");
}
