//! Hot reload: SIGHUP (and `netpulse reload`) read the config again and apply it while requests
//! run — backends, weights, timeouts, health settings, a listen address, balancers added and
//! removed — and an invalid file changes nothing. Backends written as host names are resolved at
//! start, on reload and every `dns_refresh`, in a network namespace with hosts of its own.
//! Addresses: 127.0.29.1-.8 here, network namespaces 50-52 (10.199.5N.0/24).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::io::{BufRead as _, BufReader, Read as _, Write as _};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::thread;
use std::time::Duration;

use common::{Proc, addr, get, run, wait_until};

/// A directory for one test's config files.
fn dir(name: &str) -> PathBuf {
    let d = common::data_home().join(name);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn write(path: &Path, text: &str) {
    std::fs::write(path, text).unwrap();
}

fn hup(p: &Proc) {
    assert!(Command::new("kill").args(["-HUP", &p.pid().to_string()]).status().unwrap().success());
}

/// How many lines of the output contain `text`.
fn count(p: &Proc, text: &str) -> usize {
    p.output().lines().filter(|l| l.contains(text)).count()
}

/// Sends SIGHUP and waits for the `n`-th line saying `text`.
fn reload_and_wait(p: &Proc, n: usize, text: &str) {
    hup(p);
    wait_until(format_args!("reload {n} to say {text:?}; output:\n{}", p.printed()), Duration::from_secs(20), || {
        (count(p, text) >= n).then_some(())
    });
}

/// `/api/v1/balancers`: each backend of balancer `name` as (address, state, requests).
fn backends(metrics: SocketAddr, name: &str) -> Vec<(String, String, u64)> {
    let request = format!("GET /api/v1/balancers HTTP/1.1\r\nHost: {metrics}\r\n\r\n");
    let body = common::Http::connect(metrics).raw(request.as_bytes()).body;
    let json: serde_json::Value = serde_json::from_str(&body).unwrap();
    let b =
        json["balancers"].as_array().unwrap().iter().find(|b| b["name"] == name).unwrap_or_else(|| panic!("{body}"));
    b["backends"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| {
            let requests = x["http"]["requests"].as_u64().or_else(|| x["udp"]["datagrams_sent"].as_u64()).unwrap_or(0);
            (x["addr"].as_str().unwrap().to_string(), x["state"].as_str().unwrap().to_string(), requests)
        })
        .collect()
}

/// The port a backend named itself by.
fn port_of(body: &str) -> u16 {
    body.trim().rsplit(' ').next().and_then(|p| p.parse().ok()).unwrap_or_else(|| panic!("{body:?}"))
}

const HTTP_A: &str = r#"
[serve.http]
bind = "127.0.29.1"
ports = "29101-29104"
[[balance.http]]
name = "web"
listen = "127.0.29.1:29100"
backends = ["127.0.29.1:29101", "127.0.29.1:29102", "127.0.29.1:29103"]
workers = 2
access_log = false
[monitor]
metrics = "127.0.29.1:29190"
[history]
enabled = false
"#;

/// Another backend list (29101 out, 29104 in), weights, a timeout and the health checks' timing.
const HTTP_B: &str = r#"
[serve.http]
bind = "127.0.29.1"
ports = "29101-29104"
[[balance.http]]
name = "web"
listen = "127.0.29.1:29100"
backends = ["127.0.29.1:29102", { addr = "127.0.29.1:29103", weight = 3 }, "127.0.29.1:29104"]
workers = 2
access_log = false
timeout = "5s"
retries = 1
health = { interval = "500ms", timeout = "400ms", fall = 2 }
[monitor]
metrics = "127.0.29.1:29190"
[history]
enabled = false
"#;

#[test]
fn ten_reloads_under_load_lose_not_one_request() {
    let d = dir("under-load");
    let config = d.join("netpulse.toml");
    write(&config, HTTP_A);
    let mut p = Proc::up(&["up", "--config", config.to_str().unwrap(), "--no-tui", "-q"]);
    let (front, metrics) = (addr("127.0.29.1:29100"), addr("127.0.29.1:29190"));
    assert_eq!(get(front, "/").status, 200);
    let wrk = Command::new("wrk")
        .args(["-t2", "-c64", "-d12s", "--latency", &format!("http://{front}/")])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("wrk (Debian package wrk)");
    // Let wrk open its connections, then reload ten times, alternating the files.
    wait_until("requests to flow", Duration::from_secs(10), || {
        (backends(metrics, "web").iter().map(|b| b.2).sum::<u64>() > 1000).then_some(())
    });
    for n in 1..=10 {
        write(&config, if n % 2 == 1 { HTTP_B } else { HTTP_A });
        reload_and_wait(&p, n, "reloaded: http \"web\":");
        thread::sleep(Duration::from_millis(300));
    }
    let out = wrk.wait_with_output().unwrap();
    let report = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{report}{}", String::from_utf8_lossy(&out.stderr));
    let requests: u64 = report
        .lines()
        .find(|l| l.contains("requests in"))
        .and_then(|l| l.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("{report}"));
    assert!(requests > 1000, "{report}");
    println!("{report}");
    assert!(!report.contains("Socket errors"), "a connection failed during the reloads:\n{report}");
    assert!(!report.contains("Non-2xx"), "a request failed during the reloads:\n{report}");
    // The last file (A) runs: 29101 back, 29104 gone; counters of those that stayed went on.
    let now = backends(metrics, "web");
    let addrs: Vec<&str> = now.iter().map(|b| b.0.as_str()).collect();
    assert_eq!(addrs, ["127.0.29.1:29101", "127.0.29.1:29102", "127.0.29.1:29103"]);
    let stayed = now.iter().find(|b| b.0 == "127.0.29.1:29102").unwrap().2;
    assert!(stayed > requests / 4, "29102 served {stayed} of {requests}: its counts were reset by a reload");
    let out = p.output();
    assert!(out.contains("backends +127.0.29.1:29104 -127.0.29.1:29101"), "{out}");
    assert!(out.contains("weight 127.0.29.1:29103 1 -> 3") || out.contains("backends +127.0.29.1:29104"), "{out}");
    assert!(out.contains("timeout 30s -> 5s") && out.contains("health.interval 1s -> 500ms"), "{out}");
    assert_eq!(p.signal_and_wait("TERM", Duration::from_secs(20)).code(), Some(0), "{}", p.output());
}

#[test]
fn an_invalid_file_is_refused_in_one_line_and_the_running_config_stays() {
    let d = dir("invalid");
    let config = d.join("netpulse.toml");
    let text = r#"
[serve.http]
bind = "127.0.29.2"
ports = "29201-29202"
[[balance.http]]
listen = "127.0.29.2:29200"
backends = ["127.0.29.2:29201", "127.0.29.2:29202"]
"#;
    write(&config, text);
    let mut p = Proc::up(&["up", "--config", config.to_str().unwrap(), "--no-tui", "-q", "--no-history"]);
    let front = addr("127.0.29.2:29200");
    write(&config, &text.replace("backends = [", "backends = [\"127.0.29.2:0\", "));
    reload_and_wait(&p, 1, "reload refused");
    let out = p.output();
    let refused: Vec<&str> = out.lines().filter(|l| l.contains("reload refused")).collect();
    assert_eq!(refused.len(), 1, "{out}");
    assert!(refused[0].contains("line 7") && refused[0].contains("port 0"), "{out}");
    assert!(refused[0].ends_with("still running the previous config"), "{out}");
    // Both backends still answer, in turn; the process did not die of the signal.
    let ports: Vec<u16> = (0..4).map(|_| port_of(&get(front, "/").body)).collect();
    assert_eq!(ports, [29201, 29202, 29201, 29202]);
    // A balancer added on an address something else holds: the whole reload is refused, with
    // the address named, and nothing changes.
    let _holder = TcpListener::bind("127.0.29.2:29205").unwrap();
    let busy = format!(
        "{text}[[balance.http]]\nname = \"x\"\nlisten = \"127.0.29.2:29205\"\nbackends = [\"127.0.29.2:29201\"]\n"
    );
    write(&config, &busy.replace("127.0.29.2:29202\"]", "127.0.29.2:29202\", \"127.0.29.2:29203\"]"));
    reload_and_wait(&p, 2, "reload refused");
    assert!(p.output().contains("cannot listen on tcp 127.0.29.2:29205"), "{}", p.output());
    let ports: Vec<u16> = (0..3).map(|_| port_of(&get(front, "/").body)).collect();
    assert!(!ports.contains(&29203), "the refused file's backend is in: {ports:?}");
    assert_eq!(p.signal_and_wait("TERM", Duration::from_secs(20)).code(), Some(0));
}

/// A backend that answers `GET /slow` after `delay` and anything else at once, naming `name`.
fn slow_backend(listen: &str, delay: Duration) -> SocketAddr {
    let l = TcpListener::bind(listen).unwrap();
    let at = l.local_addr().unwrap();
    thread::spawn(move || {
        for s in l.incoming().flatten() {
            thread::spawn(move || {
                let mut reader = BufReader::new(s.try_clone().unwrap());
                let mut s = s;
                loop {
                    let mut line = String::new();
                    if reader.read_line(&mut line).unwrap_or(0) == 0 {
                        return;
                    }
                    loop {
                        let mut h = String::new();
                        if reader.read_line(&mut h).unwrap_or(0) == 0 || h == "\r\n" {
                            break;
                        }
                    }
                    if line.starts_with("GET /slow") {
                        thread::sleep(delay);
                    }
                    let body = format!("answered {}", line.split(' ').nth(1).unwrap_or("?"));
                    let resp = format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{body}", body.len());
                    if s.write_all(resp.as_bytes()).is_err() {
                        return;
                    }
                }
            });
        }
    });
    at
}

#[test]
fn a_new_listen_address_answers_and_the_old_one_closes_after_its_requests_finish() {
    let backend = slow_backend("127.0.29.3:29301", Duration::from_millis(1500));
    let d = dir("listen");
    let config = d.join("netpulse.toml");
    let text = |listen: &str, udp: &str, port: u16| {
        format!(
            "[[balance.http]]\nname = \"web\"\nlisten = \"{listen}\"\nbackends = [\"{backend}\"]\nworkers = 1\n\
             health = {{ check = \"tcp\" }}\n[[balance.udp]]\nname = \"{udp}\"\nlisten = \"127.0.29.3:{port}\"\n\
             backends = [\"127.0.29.3:29311\"]\nworkers = 1\n"
        )
    };
    write(&config, &text("127.0.29.3:29300", "gone", 29310));
    let mut p = Proc::up(&["up", "--config", config.to_str().unwrap(), "--no-tui", "-q", "--no-history"]);
    let (old, new) = (addr("127.0.29.3:29300"), addr("127.0.29.3:29320"));
    // A slow request under way on the old address when the reload comes.
    let mut slow = TcpStream::connect(old).unwrap();
    slow.write_all(b"GET /slow HTTP/1.1\r\nHost: t\r\n\r\n").unwrap();
    thread::sleep(Duration::from_millis(300));
    write(&config, &text("127.0.29.3:29320", "added", 29330));
    reload_and_wait(&p, 1, "reloaded: http \"web\": listen 127.0.29.3:29300 -> 127.0.29.3:29320");
    // The new address answers at once...
    assert_eq!(get(new, "/").body, "answered /");
    // ...the request under way on the old one finishes...
    slow.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut answer = String::new();
    let mut buf = [0u8; 512];
    while !answer.contains("answered /slow") {
        let n = slow.read(&mut buf).unwrap();
        assert!(n > 0, "the old address cut the request under way: {answer:?}");
        answer.push_str(&String::from_utf8_lossy(&buf[..n]));
    }
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    // ...and then the old address closes.
    wait_until("the old address to close", Duration::from_secs(15), || {
        TcpStream::connect_timeout(&old, Duration::from_millis(200)).is_err().then_some(())
    });
    let out = p.output();
    assert!(out.contains("reloaded: udp \"gone\": removed"), "{out}");
    assert!(out.contains("reloaded: udp \"added\": added, on 127.0.29.3:29330 -> 127.0.29.3:29311"), "{out}");
    assert_eq!(p.signal_and_wait("TERM", Duration::from_secs(20)).code(), Some(0));
}

#[test]
fn reload_asks_the_running_up_and_says_when_nothing_runs() {
    let d = dir("cli");
    let config = d.join("netpulse.toml");
    let history = d.join("history.db");
    let text = |port: u16| {
        format!(
            "[serve.http]\nbind = \"127.0.29.4\"\nports = \"29401-29402\"\n[[balance.http]]\nlisten = \"127.0.29.4:29400\"\n\
             backends = [\"127.0.29.4:{port}\"]\nworkers = 1\n[monitor]\nmetrics = \"127.0.29.4:29490\"\n[history]\npath = \"{}\"\n",
            history.display()
        )
    };
    write(&config, &text(29401));
    let p = Proc::up(&["up", "--config", config.to_str().unwrap(), "--no-tui", "-q"]);
    write(&config, &text(29402));
    let (code, out) = run(&["reload", "--config", config.to_str().unwrap()], Duration::from_secs(30));
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("reloaded: http \"http\": backends +127.0.29.4:29402 -127.0.29.4:29401"), "{out}");
    assert_eq!(port_of(&get(addr("127.0.29.4:29400"), "/").body), 29402);
    write(&config, "[[balance.http]]\nlisten = \"nowhere\"\n");
    let (code, out) = run(&["reload", "--metrics", "127.0.29.4:29490"], Duration::from_secs(30));
    assert_eq!(code, 1, "{out}");
    assert!(out.starts_with("netpulse: reload refused: invalid config") && out.lines().count() == 1, "{out}");
    let mut p = p;
    assert_eq!(p.signal_and_wait("TERM", Duration::from_secs(20)).code(), Some(0));
    let (code, out) = run(&["reload", "--metrics", "127.0.29.4:29490"], Duration::from_secs(30));
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("nothing answers at 127.0.29.4:29490"), "{out}");
    // The reload is in the history's events.
    let (code, out) = run(&["history", "--events", "--history", history.to_str().unwrap()], Duration::from_secs(30));
    assert_eq!(code, 0, "{out}");
    assert!(
        out.lines()
            .any(|l| l.contains(" reload ") && l.contains("reloaded: http \"http\": backends +127.0.29.4:29402")),
        "{out}"
    );
    // Without a config file there is nothing to read again.
    let mut p = Proc::up(&[
        "balance",
        "http",
        "--listen",
        "127.0.29.4:29403",
        "--backend",
        "127.0.29.4:29401",
        "--check",
        "none",
        "-q",
    ]);
    hup(&p);
    p.wait_for("nothing to reload", Duration::from_secs(10));
    assert_eq!(p.signal_and_wait("TERM", Duration::from_secs(20)).code(), Some(0));
}

/// A network namespace with hosts and resolver of its own (`ip netns exec` puts
/// /etc/netns/NAME/{hosts,resolv.conf} over /etc's), joined to this one by a veth pair:
/// here 10.199.N.1, there 10.199.N.2. Its resolver is its own loopback, where nothing answers,
/// so no name is ever looked up outside. Removed on drop.
struct Ns {
    name: String,
    etc: PathBuf,
    n: u8,
}

fn sh(cmd: &str) {
    let out = Command::new("sh").arg("-c").arg(cmd).output().unwrap();
    assert!(
        out.status.success(),
        "`{cmd}` failed (these tests need root and iproute2): {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

impl Ns {
    fn new(n: u8, hosts: &str) -> Ns {
        let name = format!("netpulse-t{n}");
        let etc = PathBuf::from(format!("/etc/netns/{name}"));
        let _ = Command::new("ip").args(["netns", "del", &name]).output();
        let _ = Command::new("ip").args(["link", "del", &format!("nph{n}")]).output();
        std::fs::create_dir_all(&etc).unwrap();
        write(&etc.join("hosts"), hosts);
        write(&etc.join("resolv.conf"), "nameserver 127.0.0.1\noptions timeout:1 attempts:1\n");
        sh(&format!("ip netns add {name}"));
        sh(&format!("ip link add nph{n} type veth peer name npn{n} && ip link set npn{n} netns {name}"));
        sh(&format!("ip addr add 10.199.{n}.1/24 dev nph{n} && ip link set nph{n} up"));
        sh(&format!(
            "ip netns exec {name} sh -c 'ip addr add 10.199.{n}.2/24 dev npn{n} && ip link set npn{n} up && ip link set lo up'"
        ));
        Ns { name, etc, n }
    }

    /// Rewrites its hosts file in place (the bind mount follows the file, not its name).
    fn hosts(&self, text: &str) {
        let mut f = std::fs::OpenOptions::new().write(true).truncate(true).open(self.etc.join("hosts")).unwrap();
        f.write_all(text.as_bytes()).unwrap();
    }

    fn netpulse(&self, args: &[&str]) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.name, env!("CARGO_BIN_EXE_netpulse")]).args(args);
        c.env("XDG_DATA_HOME", common::data_home());
        c
    }

    fn ip(&self) -> String {
        format!("10.199.{}.2", self.n)
    }
}

impl Drop for Ns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.name]).output();
        let _ = Command::new("ip").args(["link", "del", &format!("nph{}", self.n)]).output();
        let _ = std::fs::remove_dir_all(&self.etc);
    }
}

#[test]
fn host_name_backends_resolve_at_start_and_again_and_a_name_that_does_not_is_an_error() {
    let ns = Ns::new(50, "127.0.0.1 localhost\n127.0.0.1 web1.test\n");
    let d = dir("names");
    let config = d.join("netpulse.toml");
    let ip = ns.ip();
    write(
        &config,
        &format!(
            "[serve.http]\nbind = \"127.0.0.1\"\nports = \"29501-29502\"\n[balance]\ndns_refresh = \"1s\"\n\
             [[balance.http]]\nname = \"web\"\nlisten = \"{ip}:29500\"\nbackends = [\"web1.test:29501\", \"localhost:29502\"]\n\
             workers = 1\n[monitor]\nmetrics = \"{ip}:29590\"\n[history]\nenabled = false\n"
        ),
    );
    let _p = Proc::up_command(ns.netpulse(&["up", "--config", config.to_str().unwrap(), "--no-tui", "-q"]));
    let (front, metrics) = (addr(&format!("{ip}:29500")), addr(&format!("{ip}:29590")));
    let ports: Vec<u16> = (0..2).map(|_| port_of(&get(front, "/").body)).collect();
    assert_eq!(ports, [29501, 29502]);
    let now: Vec<String> = backends(metrics, "web").into_iter().map(|b| b.0).collect();
    assert_eq!(now, ["127.0.0.1:29501", "127.0.0.1:29502"]);
    // The name moves to another address (where another server answers): swapped in, said so.
    let _other = Proc::up_command(ns.netpulse(&["serve", "http", "--bind", "127.0.0.3", "--ports", "29501", "-q"]));
    ns.hosts("127.0.0.1 localhost\n127.0.0.3 web1.test\n");
    wait_until("the new address to be swapped in", Duration::from_secs(15), || {
        backends(metrics, "web").iter().any(|b| b.0 == "127.0.0.3:29501").then_some(())
    });
    assert!(_p.output().contains("backend web1.test:29501 now resolves to 127.0.0.3:29501 (was 127.0.0.1:29501)"));
    // The name stops resolving: said once, the last address kept, requests still served.
    ns.hosts("127.0.0.1 localhost\n");
    _p.wait_for("cannot resolve backend web1.test", Duration::from_secs(15));
    thread::sleep(Duration::from_millis(2500));
    assert_eq!(count(&_p, "cannot resolve backend web1.test"), 1, "{}", _p.output());
    assert!(backends(metrics, "web").iter().any(|b| b.0 == "127.0.0.3:29501"));
    let ports: Vec<u16> = (0..2).map(|_| port_of(&get(front, "/").body)).collect();
    assert_eq!(ports, [29501, 29502]);
    // At start, a name that does not resolve is the config's error.
    write(&config, "[[balance.http]]\nlisten = \"127.0.0.1:29503\"\nbackends = [\"nosuch.test:29501\"]\n");
    let mut bad = Proc::spawn_command(ns.netpulse(&["up", "--config", config.to_str().unwrap(), "--no-tui"]));
    let status = bad.wait(Duration::from_secs(20));
    let out = bad.output();
    assert_eq!(status.code(), Some(2), "{out}");
    assert_eq!(out.lines().count(), 1, "{out}");
    assert!(out.contains("line 3") && out.contains("cannot resolve backend nosuch.test"), "{out}");
}

#[test]
fn a_udp_balancer_reloads_without_losing_a_reply() {
    let d = dir("udp");
    let config = d.join("netpulse.toml");
    let text = |backends: &str| {
        format!(
            "[serve.udp]\nbind = \"127.0.29.8\"\nports = \"29801-29803\"\n[[balance.udp]]\nname = \"ping\"\n\
             listen = \"127.0.29.8:29800\"\nbackends = [{backends}]\nworkers = 1\naccess_log = false\n\
             [monitor]\nmetrics = \"127.0.29.8:29890\"\n[history]\nenabled = false\n"
        )
    };
    let (a, b) = ("\"127.0.29.8:29801\", \"127.0.29.8:29802\"", "\"127.0.29.8:29802\", \"127.0.29.8:29803\"");
    write(&config, &text(a));
    let mut p = Proc::up(&["up", "--config", config.to_str().unwrap(), "--no-tui", "-q"]);
    let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let client = {
        let done = done.clone();
        thread::spawn(move || {
            let s = common::udp_client("127.0.29.8");
            let (mut answered, mut lost) = (0u32, Vec::new());
            let mut seq = 0u32;
            while !done.load(std::sync::atomic::Ordering::Relaxed) {
                seq += 1;
                let ping = format!("PING {seq} 00:00:00");
                s.send_to(ping.as_bytes(), "127.0.29.8:29800").unwrap();
                let mut buf = [0u8; 64];
                match s.recv_from(&mut buf) {
                    Ok((n, _)) if buf[..n] == *ping.to_uppercase().as_bytes() => answered += 1,
                    _ => lost.push(seq),
                }
            }
            (answered, lost)
        })
    };
    for n in 1..=6 {
        write(&config, &text(if n % 2 == 1 { b } else { a }));
        reload_and_wait(&p, n, "reloaded: udp \"ping\": backends");
        thread::sleep(Duration::from_millis(200));
    }
    done.store(true, std::sync::atomic::Ordering::Relaxed);
    let (answered, lost) = client.join().unwrap();
    assert!(answered > 100, "{answered} answered");
    assert!(lost.is_empty(), "pings without a reply across the reloads: {lost:?}");
    let now: Vec<String> = backends(addr("127.0.29.8:29890"), "ping").into_iter().map(|b| b.0).collect();
    assert_eq!(now, ["127.0.29.8:29801", "127.0.29.8:29802"]);
    assert_eq!(p.signal_and_wait("TERM", Duration::from_secs(20)).code(), Some(0));
    assert!(p.output().contains("udp balancer \"ping\" stopped:"), "{}", p.output());
}

/// Round robin reloaded to least-connections (same backends, weights 1/1/3) while requests are
/// in flight, and back and forth: every request is ended by the rule that counted it, so once
/// the load stops the counts are back at zero and idle picks follow the weights, 1:1:3.
#[test]
fn a_strategy_change_under_load_leaves_no_request_counted_in_flight() {
    let d = dir("leak");
    let config = |strategy: &str, w: u32| {
        format!(
            r#"
[serve.http]
bind = "127.0.29.9"
ports = "29101-29103"

[[balance.http]]
name = "web"
listen = "127.0.29.9:29100"
backends = ["127.0.29.9:29101", "127.0.29.9:29102", {{ addr = "127.0.29.9:29103", weight = {w} }}]
strategy = "{strategy}"
access_log = false
[balance.http.health]
check = "none"
"#
        )
    };
    let file = d.join("leak.toml");
    write(&file, &config("round-robin", 1));
    let mut cmd = common::netpulse();
    cmd.args(["up", "--no-tui", "--config"]).arg(&file);
    let p = Proc::up_command(cmd);
    let load = Command::new("wrk")
        .args(["-t1", "-c32", "-d4s", "http://127.0.29.9:29100/"])
        .stdout(Stdio::null())
        .spawn()
        .expect("wrk (apt-get install wrk)");
    let mut load = scopeguard(load);
    for (i, (strategy, w)) in
        [("least-connections", 3), ("round-robin", 1), ("least-connections", 3), ("p2c", 3), ("least-connections", 3)]
            .iter()
            .enumerate()
    {
        thread::sleep(Duration::from_millis(500));
        write(&file, &config(strategy, *w));
        reload_and_wait(&p, i + 1, "reloaded");
    }
    let _ = load.0.wait();
    // A request wrk left behind may still be on its way on a loaded machine: a leak never ends,
    // so rounds are tried until one shares by weight (or the wait is up).
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let mut counts = std::collections::HashMap::<u16, usize>::new();
        for _ in 0..30 {
            *counts.entry(port_of(&get(addr("127.0.29.9:29100"), "/").body)).or_default() += 1;
        }
        let got = [29101, 29102, 29103].map(|port| counts.get(&port).copied().unwrap_or(0));
        if got == [6, 6, 18] {
            break;
        }
        let output = p.output();
        assert!(
            std::time::Instant::now() < deadline,
            "idle least-connections shares by weight 1:1:3, got {got:?}; output:\n{output}"
        );
        thread::sleep(Duration::from_millis(200));
    }
}

/// Kills `wrk` if the test fails before it ends.
struct Guard(std::process::Child);
impl Drop for Guard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn scopeguard(c: std::process::Child) -> Guard {
    Guard(c)
}
