//! Runtime control of a running `up`: drain, disable, enable and weigh a backend over the admin
//! API and with `netpulse backend`, seen in `/api/v1/balancers`, `/metrics` and in where the
//! requests go, kept across a reload; and the admin API refusing other hosts and requests a
//! cross-site page could make. Addresses: 127.0.29.5-.7 here, network namespace 51.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::net::SocketAddr;
use std::process::Command;
use std::time::Duration;

use common::{Http, Proc, Resp, addr, get, run, wait_until};

/// A request to the server at `at`, named as a browser would (`Host: IP:PORT`).
fn call(at: SocketAddr, method: &str, path: &str, headers: &str, body: &str) -> Resp {
    let request =
        format!("{method} {path} HTTP/1.1\r\nHost: {at}\r\n{headers}Content-Length: {}\r\n\r\n{body}", body.len());
    Http::connect(at).raw(request.as_bytes())
}

const JSON: &str = "Content-Type: application/json\r\n";

/// Each backend of the first balancer as (port, state, why, requests).
fn backends(metrics: SocketAddr) -> Vec<(u16, String, String, u64)> {
    let body = call(metrics, "GET", "/api/v1/balancers", "", "").body;
    let json: serde_json::Value = serde_json::from_str(&body).unwrap();
    json["balancers"][0]["backends"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| {
            let port = b["addr"].as_str().unwrap().rsplit(':').next().unwrap().parse().unwrap();
            let why = b["why"].as_str().unwrap_or_default().to_string();
            (port, b["state"].as_str().unwrap().to_string(), why, b["http"]["requests"].as_u64().unwrap_or(0))
        })
        .collect()
}

/// The ports that answered `n` requests, in order.
fn ports(front: SocketAddr, n: usize) -> Vec<u16> {
    (0..n).map(|_| get(front, "/").body.trim().rsplit(' ').next().unwrap().parse().unwrap()).collect()
}

fn state_of(metrics: SocketAddr, port: u16) -> (String, String) {
    let b = backends(metrics).into_iter().find(|b| b.0 == port).unwrap();
    (b.1, b.2)
}

fn config(backends: &str, timeout: &str) -> String {
    format!(
        "[serve.http]\nbind = \"127.0.29.5\"\nports = \"29601-29604\"\n[[balance.http]]\nname = \"web\"\n\
         listen = \"127.0.29.5:29600\"\nbackends = [{backends}]\nworkers = 1\naccess_log = false\ntimeout = \"{timeout}\"\n\
         [monitor]\nmetrics = \"127.0.29.5:29690\"\n[history]\nenabled = false\n"
    )
}

#[test]
fn an_operator_drains_disables_enables_and_weighs_a_backend_over_the_api_and_the_cli() {
    let dir = common::data_home();
    let file = dir.join("netpulse.toml");
    let three = "\"127.0.29.5:29601\", \"127.0.29.5:29602\", \"127.0.29.5:29603\"";
    std::fs::write(&file, config(three, "30s")).unwrap();
    let p = Proc::up(&["up", "--config", file.to_str().unwrap(), "--no-tui", "-q"]);
    let (front, metrics) = (addr("127.0.29.5:29600"), addr("127.0.29.5:29690"));
    let at = ["--metrics", "127.0.29.5:29690"];
    let backend = |args: &[&str]| run(&[&["backend"], args, &at[..]].concat(), Duration::from_secs(20));

    // Drain with the CLI: no new request goes there.
    let (code, out) = backend(&["drain", "web", "127.0.29.5:29602"]);
    assert_eq!((code, out.as_str()), (0, "http \"web\": backend 127.0.29.5:29602 draining (by operator)\n"));
    assert!(!ports(front, 12).contains(&29602));
    assert_eq!(state_of(metrics, 29602), ("draining".into(), "drained by operator".into()));
    // Disable with the API: only 29601 is left.
    let path = "/api/v1/admin/balancers/web/backends/127.0.29.5:29603/disable";
    let r = call(metrics, "POST", path, JSON, "");
    assert_eq!(r.status, 200, "{r:?}");
    assert!(r.body.contains("backend 127.0.29.5:29603 disabled (by operator)"), "{}", r.body);
    assert_eq!(ports(front, 6), [29601; 6]);
    assert_eq!(state_of(metrics, 29603), ("disabled".into(), "disabled by operator".into()));
    let page = call(metrics, "GET", "/metrics", "", "").body;
    assert!(
        page.lines().any(|l| l.starts_with("netpulse_backend_state{")
            && l.contains("backend=\"127.0.29.5:29603\"")
            && l.contains("state=\"disabled\"")
            && l.ends_with(" 1")),
        "{page}"
    );
    // Reloads keep an operator's marks: one changing only a timeout, one adding a backend.
    std::fs::write(&file, config(three, "10s")).unwrap();
    assert!(Command::new("kill").args(["-HUP", &p.pid().to_string()]).status().unwrap().success());
    p.wait_for("timeout 30s -> 10s", Duration::from_secs(20));
    assert_eq!(state_of(metrics, 29602).0, "draining");
    assert_eq!(state_of(metrics, 29603).0, "disabled");
    let four = format!("{three}, \"127.0.29.5:29604\"");
    std::fs::write(&file, config(&four, "10s")).unwrap();
    let (code, out) = run(&["reload", "--metrics", "127.0.29.5:29690"], Duration::from_secs(30));
    assert_eq!((code, out.as_str()), (0, "reloaded: http \"web\": backends +127.0.29.5:29604\n"));
    assert_eq!(state_of(metrics, 29602).0, "draining");
    assert_eq!(state_of(metrics, 29603).0, "disabled");
    let mut seen = ports(front, 6);
    seen.sort_unstable();
    assert_eq!(seen, [29601, 29601, 29601, 29604, 29604, 29604]);
    // Enable both again (CLI and API): all four take turns.
    assert_eq!(backend(&["enable", "web", "127.0.29.5:29602"]).0, 0);
    let r = call(metrics, "POST", "/api/v1/admin/balancers/web/backends/127.0.29.5:29603/enable", JSON, "{}");
    assert_eq!(r.status, 200, "{r:?}");
    let mut seen = ports(front, 8);
    seen.sort_unstable();
    seen.dedup();
    assert_eq!(seen, [29601, 29602, 29603, 29604]);
    assert_eq!(state_of(metrics, 29602), ("up".into(), "enabled by operator".into()));
    // A weight, with the CLI and the API.
    let (code, out) = backend(&["weight", "web", "127.0.29.5:29601", "7"]);
    assert_eq!((code, out.as_str()), (0, "http \"web\": backend 127.0.29.5:29601 weight 7 (by operator)\n"));
    let r = call(metrics, "PUT", "/api/v1/admin/balancers/web/backends/127.0.29.5:29604/weight", JSON, "3");
    assert!(r.body.contains("weight 3"), "{r:?}");
    // What does not exist is one clear line, exit 1.
    let (code, out) = backend(&["drain", "nosuch", "127.0.29.5:29601"]);
    assert_eq!((code, out.as_str()), (1, "netpulse: no balancer is named \"nosuch\" (balancers: web)\n"));
    let (code, out) = backend(&["disable", "web", "127.0.29.5:1"]);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.starts_with("netpulse: http \"web\" has no backend 127.0.29.5:1 (its backends: 127.0.29.5:29601,"),
        "{out}"
    );
    let (code, out) = backend(&["weight", "web", "127.0.29.5:29601", "0"]);
    assert_eq!(code, 2, "clap refuses a weight of 0: {out}");
    drop(p);
    let (code, out) = backend(&["drain", "web", "127.0.29.5:29601"]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("nothing answers at 127.0.29.5:29690") && out.lines().count() == 1, "{out}");
}

#[test]
fn a_form_or_a_page_of_another_site_cannot_use_the_admin_api() {
    let dir = common::data_home();
    let file = dir.join("netpulse.toml");
    std::fs::write(
        &file,
        "[serve.http]\nbind = \"127.0.29.6\"\nports = 29701\n[[balance.http]]\nlisten = \"127.0.29.6:29700\"\n\
         backends = [\"127.0.29.6:29701\"]\nworkers = 1\n[monitor]\nmetrics = \"127.0.29.6:29790\"\n[history]\nenabled = false\n",
    )
    .unwrap();
    let p = Proc::up(&["up", "--config", file.to_str().unwrap(), "--no-tui", "-q"]);
    let metrics = addr("127.0.29.6:29790");
    let reload = "/api/v1/admin/reload";
    // What a form can send: refused before anything happens.
    for headers in ["", "Content-Type: application/x-www-form-urlencoded\r\n", "Content-Type: text/plain\r\n"] {
        let r = call(metrics, "POST", reload, headers, "a=b");
        assert_eq!(r.status, 415, "{headers:?}: {r:?}");
        assert!(r.body.contains("Content-Type: application/json"), "{}", r.body);
    }
    // A script of another origin would need a preflight first: it is not answered with CORS.
    let r =
        call(metrics, "OPTIONS", reload, "Origin: http://evil.example\r\nAccess-Control-Request-Method: POST\r\n", "");
    assert_ne!(r.status, 200, "{r:?}");
    assert_eq!(r.header("access-control-allow-origin"), None);
    // A name that could be another site's (DNS rebinding) is refused as on every route.
    let r = Http::connect(metrics)
        .raw(b"POST /api/v1/admin/reload HTTP/1.1\r\nHost: evil.example:29790\r\nContent-Type: application/json\r\nContent-Length: 0\r\n\r\n");
    assert_eq!(r.status, 421, "{r:?}");
    assert!(!p.output().contains("reload"), "a refused request reloaded: {}", p.output());
    // The same from this host, in JSON: carried out.
    let r = call(metrics, "POST", reload, JSON, "");
    assert_eq!((r.status, r.body.as_str()), (200, "{\"message\":\"reloaded: no changes\"}"));
}

#[test]
fn the_admin_api_answers_only_this_host_however_widely_it_is_bound() {
    // A host in a namespace: 10.199.51.2 there, 10.199.51.1 here.
    let ns = "netpulse-t51";
    let sh = |cmd: &str| {
        let out = Command::new("sh").arg("-c").arg(cmd).output().unwrap();
        assert!(
            out.status.success(),
            "`{cmd}` failed (needs root and iproute2): {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    let _ = Command::new("ip").args(["netns", "del", ns]).output();
    let _ = Command::new("ip").args(["link", "del", "nph51"]).output();
    sh(&format!("ip netns add {ns}"));
    struct Gone(&'static str);
    impl Drop for Gone {
        fn drop(&mut self) {
            let _ = Command::new("ip").args(["netns", "del", self.0]).output();
            let _ = Command::new("ip").args(["link", "del", "nph51"]).output();
        }
    }
    let _gone = Gone(ns);
    sh(&format!("ip link add nph51 type veth peer name npn51 && ip link set npn51 netns {ns}"));
    sh("ip addr add 10.199.51.1/24 dev nph51 && ip link set nph51 up");
    sh(&format!("ip netns exec {ns} sh -c 'ip addr add 10.199.51.2/24 dev npn51 && ip link set npn51 up'"));
    let dir = common::data_home();
    let file = dir.join("netpulse.toml");
    std::fs::write(
        &file,
        "[serve.http]\nbind = \"127.0.29.7\"\nports = 29801\n[[balance.http]]\nlisten = \"127.0.29.7:29800\"\n\
         backends = [\"127.0.29.7:29801\"]\nworkers = 1\n[monitor]\nmetrics = \"10.199.51.1:29890\"\n[history]\nenabled = false\n",
    )
    .unwrap();
    let p = Proc::up(&["up", "--config", file.to_str().unwrap(), "--no-tui", "-q"]);
    assert!(p.output().contains("readable by anyone who can reach that address"), "{}", p.output());
    // From the other host, with our own CLI.
    let mut c = Command::new("ip");
    c.args(["netns", "exec", ns, env!("CARGO_BIN_EXE_netpulse"), "reload", "--metrics", "10.199.51.1:29890"]);
    let out = c.output().unwrap();
    let said = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(1), "{said}");
    assert_eq!(said, "netpulse: the admin API answers only this host (loopback), not 10.199.51.2\n");
    // From this host too, when it comes from an address that is not loopback.
    let metrics = addr("10.199.51.1:29890");
    let r = call(metrics, "POST", "/api/v1/admin/balancers/http/backends/127.0.29.7:29801/drain", JSON, "");
    assert_eq!(r.status, 403, "{r:?}");
    // The read-only API still answers both.
    wait_until("a report", Duration::from_secs(10), || {
        (call(metrics, "GET", "/api/v1/balancers", "", "").status == 200).then_some(())
    });
    assert!(!p.output().contains("draining") && !p.output().contains("reloaded"), "{}", p.output());
}
