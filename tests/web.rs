//! The web side of the metrics address: the JSON API, the event stream, and the dashboard page in
//! a real headless Chromium (Debian's `chromium`) driven over the DevTools protocol. Addresses:
//! 127.0.15.x.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::thread::sleep as thread_sleep;
use std::time::{Duration, Instant};

use base64::Engine as _;
use common::{Proc, addr, get, udp_client, wait_until};
use serde_json::{Value, json};

const START: Duration = Duration::from_secs(20);

/// A lab on `ip`: three HTTP backends (and a fourth address nobody serves) behind a balancer,
/// two lossy UDP ping servers behind another, a target that refuses, one with a long name that
/// differs from another only at its end, and the dashboard on :19100.
fn lab(ip: &str) -> PathBuf {
    let config = format!(
        r#"
[serve.http]
bind = "{ip}"
ports = "18001-18003"

[serve.udp]
bind = "{ip}"
ports = "12526-12527"
loss = 0.3
seed = 7

[[balance.http]]
name = "web"
listen = "{ip}:18000"
backends = ["{ip}:18001", "{ip}:18002", "{ip}:18003", "{ip}:18009"]
access_log = false

[[balance.udp]]
name = "ping"
listen = "{ip}:18888"
backends = ["{ip}:12526", "{ip}:12527"]
access_log = false

[monitor]
interval = "200ms"
targets = ["tcp://{ip}:9", "http://{ip}:18001/a/rather/long/path/to/a/status/page/that/differs/only/at/the/end"]
metrics = "{ip}:19100"
"#
    );
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("web-{ip}"));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("lab.toml");
    std::fs::write(&path, config).unwrap();
    path
}

fn up(config: &Path) -> Proc {
    let mut cmd = common::netpulse();
    cmd.args(["up", "--config"]).arg(config);
    Proc::up_command(cmd)
}

/// Some HTTP requests and UDP pings through the balancers.
fn traffic(ip: &str) {
    for _ in 0..24 {
        let r = get(addr(&format!("{ip}:18000")), "/");
        assert!(r.status == 200 || r.status >= 500, "{r:?}");
    }
    let s = udp_client(ip);
    s.set_read_timeout(Some(Duration::from_millis(100))).unwrap();
    for i in 0..10 {
        s.send_to(format!("PING {i} 00:00:00").as_bytes(), format!("{ip}:18888")).unwrap();
        let _ = s.recv(&mut [0u8; 64]);
    }
}

/// `GET path` from the dashboard on `ip`, naming it as a browser would (`Host: IP:PORT`).
fn web_get(ip: &str, path: &str) -> common::Resp {
    let at = format!("{ip}:19100");
    common::Http::connect(addr(&at)).raw(format!("GET {path} HTTP/1.1\r\nHost: {at}\r\n\r\n").as_bytes())
}

fn api(ip: &str, path: &str) -> Value {
    let r = web_get(ip, path);
    assert_eq!(r.status, 200, "{path}: {r:?}");
    assert_eq!(r.header("content-type"), Some("application/json"), "{path}");
    serde_json::from_str(&r.body).unwrap_or_else(|e| panic!("{path}: {e}: {}", r.body))
}

#[test]
fn the_api_serves_targets_interfaces_and_balancers_with_their_history_and_refuses_writes() {
    let ip = "127.0.15.2";
    let _up = up(&lab(ip));
    traffic(ip);
    // The backend nobody serves leaves the rotation, and says why.
    let balancers = wait_until("the unserved backend to be down", START, || {
        let v = api(ip, "/api/v1/balancers");
        let down = v["balancers"][0]["backends"][3]["state"] == "down";
        (down && v["t"].as_array().unwrap().len() >= 3).then_some(v)
    });
    let web = &balancers["balancers"][0];
    assert_eq!((web["name"].as_str(), web["proto"].as_str()), (Some("web"), Some("http")));
    assert_eq!(web["listen"], format!("{ip}:18000"));
    let dead = &web["backends"][3];
    assert_eq!(dead["addr"], format!("{ip}:18009"));
    assert!(dead["why"].as_str().unwrap().contains("out of rotation"), "{dead}");
    assert!(dead["since"].as_str().unwrap().ends_with('Z'), "{dead}");
    for (i, b) in web["backends"].as_array().unwrap().iter().enumerate() {
        for field in ["requests", "responses", "errors", "retried", "bytes_sent", "bytes_received", "latency"] {
            assert!(b["http"].get(field).is_some(), "backend {i} has no {field}: {b}");
        }
        assert!(b["http"]["errors"].get("connect_refused").is_some(), "{b}");
        let recent = &web["recent"][i];
        for field in ["requests_per_s", "error_pct", "share_pct", "p50_ms", "p99_ms"] {
            assert!(recent.get(field).is_some(), "backend {i} has no recent {field}: {recent}");
        }
        let rows = web["history"][i]["requests_per_s"].as_array().unwrap().len();
        assert_eq!(rows, balancers["t"].as_array().unwrap().len(), "one row per report");
    }
    let ping = &balancers["balancers"][1];
    assert_eq!((ping["name"].as_str(), ping["proto"].as_str()), (Some("ping"), Some("udp")));
    assert!(ping["udp"]["drops"].get("no_backend").is_some(), "{ping}");
    assert!(ping["backends"][0]["udp"].get("unanswered").is_some(), "{ping}");

    let targets = api(ip, "/api/v1/targets");
    let names: Vec<&str> =
        targets["targets"].as_array().unwrap().iter().map(|t| t["target"].as_str().unwrap()).collect();
    for want in [format!("http://{ip}:18001/"), format!("udp://{ip}:12527"), format!("tcp://{ip}:9")] {
        assert!(names.contains(&want.as_str()), "{want} in {names:?}");
    }
    assert_eq!(targets["connectivity"], "degraded", "tcp://{ip}:9 refuses");
    assert_eq!(targets["interval_ms"], 200);
    let refusing =
        targets["targets"].as_array().unwrap().iter().find(|t| t["target"] == format!("tcp://{ip}:9")).unwrap();
    assert_eq!(refusing["up"], false);
    assert_eq!(refusing["loss_1m_pct"], 100.0);
    let failed = refusing["history"]["failed"].as_array().unwrap();
    assert!(failed.iter().any(|n| n.as_u64() > Some(0)), "a refusal is a failed probe: {refusing}");
    assert_eq!(failed.len(), targets["t"].as_array().unwrap().len());
    let short = api(ip, "/api/v1/targets?history=2");
    assert_eq!(short["t"].as_array().unwrap().len(), 2);
    assert_eq!(short["targets"][0]["history"]["rtt_med_ms"].as_array().unwrap().len(), 2);

    let interfaces = api(ip, "/api/v1/interfaces");
    let lo = interfaces["interfaces"].as_array().unwrap().iter().find(|i| i["name"] == "lo").unwrap();
    assert!(lo["rx_bytes"].as_u64().unwrap() > 0, "{lo}");
    assert!(!lo["history"]["rx_bytes_per_sec"].as_array().unwrap().is_empty(), "{lo}");

    let metrics = get(addr(&format!("{ip}:19100")), "/metrics");
    assert_eq!(metrics.header("content-type"), Some("text/plain; version=0.0.4; charset=utf-8"));
    assert!(metrics.body.contains("probe_success{"), "{}", metrics.body);

    let page = web_get(ip, "/");
    assert!(page.body.contains("<title>netpulse</title>"), "{}", page.body);

    // Read-only: writes are refused, whatever the path.
    for path in ["/", "/metrics", "/api/v1/targets", "/api/v1/balancers", "/api/v1/events"] {
        let mut c = common::Http::connect(addr(&format!("{ip}:19100")));
        let r = c.raw(format!("POST {path} HTTP/1.1\r\nHost: {ip}\r\nContent-Length: 2\r\n\r\n{{}}").as_bytes());
        assert_eq!(r.status, 405, "POST {path}");
        assert_eq!(r.header("allow"), Some("GET,HEAD"), "POST {path}");
    }
    assert_eq!(web_get(ip, "/api/v2/targets").status, 404);
    // A name that could be anyone's (DNS rebinding) gets one line, not the data.
    let mut c = common::Http::connect(addr(&format!("{ip}:19100")));
    let r = c.raw(b"GET /api/v1/targets HTTP/1.1\r\nHost: evil\r\n\r\n");
    assert_eq!(r.status, 421, "{r:?}");
    assert_eq!(
        r.body,
        format!(
            "netpulse: Host \"evil\" is not served here, only an IP address or localhost (a name could be another \
             site's: DNS rebinding); open http://{ip}:19100/ instead\n"
        )
    );
    let by_name = c.raw(b"GET /api/v1/targets?history=%32 HTTP/1.1\r\nHost: localhost:19100\r\n\r\n");
    assert_eq!(by_name.status, 200, "{by_name:?}");
    let v: Value = serde_json::from_str(&by_name.body).unwrap();
    assert_eq!(v["t"].as_array().unwrap().len(), 2, "?history=%32 is ?history=2");
}

#[test]
fn the_event_stream_sends_one_framed_report_per_interval() {
    let ip = "127.0.15.3";
    let _up = up(&lab(ip));
    let s = TcpStream::connect(format!("{ip}:19100")).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    (&s).write_all(
        format!("GET /api/v1/events HTTP/1.1\r\nHost: {ip}\r\nAccept: text/event-stream\r\n\r\n").as_bytes(),
    )
    .unwrap();
    let mut r = BufReader::new(s);
    let mut head = String::new();
    while !head.ends_with("\r\n\r\n") {
        r.read_line(&mut head).unwrap();
    }
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(head.to_lowercase().contains("content-type: text/event-stream"), "{head}");
    assert!(head.to_lowercase().contains("cache-control: no-cache"), "{head}");
    // The body is chunked; read until three whole events are in (the first block is the hello).
    let mut body = String::new();
    let started = Instant::now();
    while body.matches("event: report\n").count() < 3 {
        assert!(started.elapsed() < START, "no events in {body:?}");
        let mut size = String::new();
        r.read_line(&mut size).unwrap();
        let n = usize::from_str_radix(size.trim(), 16).unwrap();
        let mut chunk = vec![0u8; n + 2];
        r.read_exact(&mut chunk).unwrap();
        body.push_str(std::str::from_utf8(&chunk[..n]).unwrap());
    }
    assert!(body.starts_with("retry: 1000\n: netpulse"), "{body}");
    let events: Vec<Value> = body
        .split("\n\n")
        .filter_map(|e| e.strip_prefix("event: report\ndata: "))
        .take(3)
        .map(|data| serde_json::from_str(data).unwrap())
        .collect();
    let times: Vec<f64> = events.iter().map(|e| e["targets"]["t"][0].as_f64().unwrap()).collect();
    assert!(times.windows(2).all(|w| w[1] > w[0]), "one event per report, in order: {times:?}");
    for e in &events {
        assert_eq!(e["targets"]["t"].as_array().unwrap().len(), 1, "an event carries one row");
        assert_eq!(e["targets"]["targets"].as_array().unwrap().len(), 8, "{e}");
        let t = &e["targets"]["targets"][0];
        assert!(t.get("probes").is_some() && t.get("rtt_p95_ms").is_some() && t.get("sent_total").is_some(), "{t}");
        assert_eq!(t["history"]["sent"].as_array().unwrap().len(), 1, "{t}");
        assert_eq!(e["balancers"]["balancers"].as_array().unwrap().len(), 2, "{e}");
        assert!(e["interfaces"]["interfaces"].as_array().unwrap().iter().any(|i| i["name"] == "lo"), "{e}");
    }
}

#[test]
fn a_udp_backend_that_never_answers_shows_its_no_reply_share_while_a_client_sends() {
    let ip = "127.0.15.8";
    // One classic ping server, and a backend address nobody listens on; nothing takes the
    // silent one out of the rotation, so every other datagram goes there.
    let config = format!(
        r#"
[serve.udp]
bind = "{ip}"
ports = "12526"

[[balance.udp]]
name = "ping"
listen = "{ip}:18888"
backends = ["{ip}:12526", "{ip}:12529"]
access_log = false

[balance.udp.health]
check = "none"

[monitor]
interval = "200ms"
metrics = "{ip}:19100"
health = false
"#
    );
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("web-{ip}"));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("lab.toml"), config).unwrap();
    let _up = up(&dir.join("lab.toml"));
    let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let client = {
        let (done, ip) = (done.clone(), ip.to_string());
        std::thread::spawn(move || {
            let s = udp_client(&ip);
            s.set_read_timeout(Some(Duration::from_millis(20))).unwrap();
            let mut seq = 0;
            while !done.load(std::sync::atomic::Ordering::Relaxed) {
                seq += 1;
                s.send_to(format!("PING {seq} 00:00:00").as_bytes(), format!("{ip}:18888")).unwrap();
                let _ = s.recv(&mut [0u8; 64]);
            }
        })
    };
    let ping = wait_until("both backends to have sent datagrams in the recent span", START, || {
        let v = api(ip, "/api/v1/balancers");
        let ping = v["balancers"][0].clone();
        let recent = ping["recent"].as_array()?;
        let sending = recent.len() == 2 && recent.iter().all(|r| r["requests_per_s"].as_f64() > Some(5.0));
        (sending && v["recent_s"].as_f64() >= Some(1.0)).then_some(ping)
    });
    done.store(true, std::sync::atomic::Ordering::Relaxed);
    client.join().unwrap();
    let (answering, silent) = (&ping["recent"][0], &ping["recent"][1]);
    assert!(silent["error_pct"].as_f64().unwrap() > 90.0, "nothing answers there: {silent}");
    assert!(answering["error_pct"].as_f64().unwrap() < 10.0, "it answers: {answering}");
    let history = ping["history"][1]["errors_per_s"].as_array().unwrap();
    assert!(history.iter().any(|v| v.as_f64() > Some(1.0)), "the chart's dashed line: {history:?}");
    // The page calls that column "No reply" for a UDP balancer.
    let page = web_get(ip, "/assets/app.js").body;
    assert!(page.contains(r#"udp ? "No reply" : "Errors""#), "the UDP column's heading");
}

/// `netpulse monitor --web IP:19100` at 200 ms over `n` classic UDP ping servers on `ip` (one
/// report of 300 targets is about 170 kB of JSON).
fn monitor_many(ip: &str, n: u16) -> (Proc, Proc) {
    let ports = format!("20000-{}", 20000 + n - 1);
    let servers = Proc::up(&["serve", "udp", "--bind", ip, "--ports", &ports, "-q"]);
    let mut args: Vec<String> = ["monitor", "--web", &format!("{ip}:19100"), "--format", "json", "--interval", "200ms"]
        .map(String::from)
        .to_vec();
    args.extend((20000..20000 + n).map(|p| format!("udp://{ip}:{p}")));
    let mut cmd = common::netpulse();
    cmd.args(&args);
    let monitor = Proc::spawn_command(cmd);
    common::wait_tcp(addr(&format!("{ip}:19100")));
    (servers, monitor)
}

/// The process's resident memory, in MiB.
fn rss_mib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kb: u64 =
        status.lines().find_map(|l| l.strip_prefix("VmRSS:")).unwrap().trim().trim_end_matches(" kB").parse().unwrap();
    kb / 1024
}

/// Opens the event stream and returns the socket once the response head is in (or the status
/// line of a refusal).
fn open_stream(ip: &str) -> Result<TcpStream, String> {
    let s = TcpStream::connect(format!("{ip}:19100")).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    (&s).write_all(format!("GET /api/v1/events HTTP/1.1\r\nHost: {ip}:19100\r\n\r\n").as_bytes()).unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        match (&s).read(&mut byte) {
            Ok(1) => head.push(byte[0]),
            other => return Err(format!("{other:?} after {:?}", String::from_utf8_lossy(&head))),
        }
    }
    let head = String::from_utf8_lossy(&head).into_owned();
    if head.starts_with("HTTP/1.1 200") { Ok(s) } else { Err(head.lines().next().unwrap_or_default().to_string()) }
}

#[test]
fn streams_that_never_read_are_cut_so_the_next_page_gets_one_and_memory_stays_bounded() {
    let ip = "127.0.15.6";
    let (_servers, monitor) = monitor_many(ip, 300);
    wait_until("a few reports", START, || (api(ip, "/api/v1/targets")["t"].as_array()?.len() >= 5).then_some(()));
    let before = rss_mib(monitor.pid());
    // Every stream place taken by a client that never reads, and more waiting behind them.
    let stalled: Vec<TcpStream> = (0..140)
        .map(|_| {
            let s = TcpStream::connect(format!("{ip}:19100")).unwrap();
            (&s).write_all(format!("GET /api/v1/events HTTP/1.1\r\nHost: {ip}:19100\r\n\r\n").as_bytes()).unwrap();
            s
        })
        .collect();
    // While they are held, the API still answers (the page loads from it, and polls).
    assert_eq!(api(ip, "/api/v1/targets?history=1")["targets"].as_array().unwrap().len(), 300);
    let started = Instant::now();
    let mut peak = before;
    let stream = wait_until("a new stream to be accepted", Duration::from_secs(60), || {
        peak = peak.max(rss_mib(monitor.pid()));
        thread_sleep(Duration::from_millis(250));
        open_stream(ip).ok()
    });
    let took = started.elapsed();
    // It gets reports.
    let mut r = BufReader::new(stream);
    let mut line = String::new();
    while !line.starts_with("event: report") {
        line.clear();
        r.read_line(&mut line).unwrap();
    }
    // The ones that never read were cut: reset, or closed once what they were sent is read.
    let mut cut = 0;
    for mut s in stalled {
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut sink = vec![0u8; 1 << 16];
        loop {
            match s.read(&mut sink) {
                Ok(0) | Err(_) => {
                    cut += 1;
                    break;
                }
                Ok(_) => {}
            }
        }
    }
    assert_eq!(cut, 140);
    for _ in 0..20 {
        peak = peak.max(rss_mib(monitor.pid()));
        thread_sleep(Duration::from_millis(100));
    }
    println!(
        "stalled streams cut after {took:?}; resident memory {before} MiB before, at most {peak} MiB while they were held"
    );
    assert!(peak <= before + 24, "memory grew from {before} MiB to {peak} MiB");
}

// ---- a headless Chromium, driven over the DevTools protocol ---------------------------------------

/// A headless Chromium with one page, killed when dropped.
struct Browser {
    child: Child,
    ws: tungstenite::WebSocket<TcpStream>,
    session: String,
    next: u64,
    /// Console messages and uncaught exceptions of the page, for failure messages.
    log: Vec<String>,
}

impl Browser {
    fn start(width: u32, height: u32) -> Browser {
        let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("chromium-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let spawned = Command::new("chromium")
            .args(["--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--no-first-run"])
            .args(["--disable-background-networking", "--disable-extensions", "--remote-debugging-port=0"])
            .arg(format!("--user-data-dir={}", dir.display()))
            .arg("about:blank")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn();
        let mut child = match spawned {
            Ok(c) => c,
            Err(e) => {
                panic!("cannot start chromium ({e}): these tests need Debian's `chromium` (apt-get install chromium)")
            }
        };
        // "DevTools listening on ws://127.0.0.1:PORT/devtools/browser/ID"
        let mut stderr = BufReader::new(child.stderr.take().unwrap());
        let url = loop {
            let mut line = String::new();
            if stderr.read_line(&mut line).unwrap() == 0 {
                let _ = child.kill();
                panic!("chromium exited before listening for DevTools");
            }
            if let Some(at) = line.find("ws://") {
                break line[at..].trim().to_string();
            }
        };
        std::thread::spawn(move || std::io::copy(&mut stderr, &mut std::io::sink()));
        let host = url.trim_start_matches("ws://").split('/').next().unwrap().to_string();
        let stream = TcpStream::connect(&host).unwrap();
        stream.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        let (ws, _) = tungstenite::client(url.as_str(), stream).unwrap();
        let mut b = Browser { child, ws, session: String::new(), next: 0, log: Vec::new() };
        let target = b.call("Target.createTarget", json!({"url": "about:blank"}));
        let attached = b.call("Target.attachToTarget", json!({"targetId": target["targetId"], "flatten": true}));
        b.session = attached["sessionId"].as_str().unwrap().to_string();
        b.call("Runtime.enable", json!({}));
        b.call("Page.enable", json!({}));
        b.call(
            "Emulation.setDeviceMetricsOverride",
            json!({"width": width, "height": height, "deviceScaleFactor": 1, "mobile": false}),
        );
        b
    }

    /// Sends one command (to the page once attached) and waits for its answer.
    fn call(&mut self, method: &str, params: Value) -> Value {
        self.try_call(method, params).unwrap_or_else(|e| panic!("DevTools {method}: {e}"))
    }

    fn try_call(&mut self, method: &str, params: Value) -> Result<Value, String> {
        self.next += 1;
        let id = self.next;
        let mut msg = json!({"id": id, "method": method, "params": params});
        if !self.session.is_empty() {
            msg["sessionId"] = json!(self.session);
        }
        self.ws.send(tungstenite::Message::text(msg.to_string())).unwrap();
        loop {
            let m = self.ws.read().unwrap_or_else(|e| panic!("DevTools {method}: {e}"));
            let tungstenite::Message::Text(text) = m else { continue };
            let v: Value = serde_json::from_str(text.as_str()).unwrap();
            if v["id"] == id {
                return match v.get("error") {
                    Some(e) => Err(e.to_string()),
                    None => Ok(v["result"].clone()),
                };
            }
            match v["method"].as_str() {
                Some("Runtime.consoleAPICalled") => {
                    let args: Vec<String> =
                        v["params"]["args"].as_array().into_iter().flatten().map(|a| a["value"].to_string()).collect();
                    self.log.push(format!("console.{}: {}", v["params"]["type"], args.join(" ")));
                }
                Some("Runtime.exceptionThrown") => {
                    self.log.push(format!("exception: {}", v["params"]["exceptionDetails"]));
                }
                _ => {}
            }
        }
    }

    fn navigate(&mut self, url: &str) {
        self.call("Page.navigate", json!({"url": url}));
    }

    /// Evaluates `js` in the page and returns its value; `None` while the page cannot tell (it
    /// is loading: no document yet, or the context went away with a navigation).
    fn eval(&mut self, js: &str) -> Option<Value> {
        let args = json!({"expression": js, "returnByValue": true, "awaitPromise": true});
        let r = self.try_call("Runtime.evaluate", args).ok()?;
        if let Some(e) = r.get("exceptionDetails") {
            self.log.push(format!("evaluating the test's script: {e}"));
            return None;
        }
        Some(r["result"]["value"].clone())
    }

    /// What a person would see now (see [`LOOK`]), once the page has loaded.
    fn look(&mut self) -> Option<Value> {
        self.eval(LOOK).filter(|v| v["stats"].is_object())
    }

    fn screenshot(&mut self, path: &Path) {
        let shot = self.call("Page.captureScreenshot", json!({"format": "png"}));
        let png = base64::engine::general_purpose::STANDARD.decode(shot["data"].as_str().unwrap()).unwrap();
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, png).unwrap();
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// What a person would see, read from the page by the test itself (not by the page's own code):
/// its text, and for every canvas how many pixels are drawn in a colour (not the grey of grids
/// and labels: series, bands, loss marks, sparkline bars).
const LOOK: &str = r#"(() => {
  if (!document.body || !document.getElementById("stream")) return null;
  const canvases = [...document.querySelectorAll("canvas")].map((c) => {
    const d = c.getContext("2d").getImageData(0, 0, c.width, c.height).data;
    let colored = 0, red = 0;
    for (let i = 0; i < d.length; i += 4) {
      const hi = Math.max(d[i], d[i + 1], d[i + 2]), lo = Math.min(d[i], d[i + 1], d[i + 2]);
      if (d[i + 3] > 0 && hi - lo > 60) colored++;
      if (d[i + 3] > 200 && d[i] > 200 && d[i + 1] < 120 && d[i + 2] < 120) red++;
    }
    const owner = c.closest("[data-target],[data-iface],[data-balancer],figure");
    const name = owner ? (owner.dataset.target || owner.dataset.iface || owner.dataset.balancer || owner.querySelector("b")?.textContent || "chart") : "?";
    return { name, chart: c.closest(".chart")?.id || null, width: c.width, colored, red };
  });
  const np = window.netpulse || {};
  return { text: document.body.innerText, canvases, stats: np.stats || null,
           stream: document.getElementById("stream").textContent };
})()"#;

/// How the page is laid out: tables that scroll sideways, headings out of their table's view,
/// whether each chart is under its table, the target names' cells, the health cells' tooltips.
const LAYOUT: &str = r##"(() => {
  const scrolls = [...document.querySelectorAll(".scroll")];
  const over = scrolls.filter((e) => e.scrollWidth > e.clientWidth + 1)
    .map((e) => e.closest("[data-balancer]")?.dataset.balancer || e.querySelector("table").id);
  const hidden = [...document.querySelectorAll(".scroll th")].filter((th) => {
    const r = th.getBoundingClientRect(), box = th.closest(".scroll").getBoundingClientRect();
    return r.width === 0 || r.right > box.right + 1;
  }).map((th) => th.textContent);
  const stacked = [...document.querySelectorAll(".split")].filter((s) => s.offsetParent)
    .map((s) => s.children[1].getBoundingClientRect().top >= s.children[0].getBoundingClientRect().bottom - 1);
  const names = [...document.querySelectorAll("#targets td.name")]
    .map((td) => ({ name: td.textContent, width: td.clientWidth, clipped: td.scrollWidth > td.clientWidth + 1 }));
  const why = [...document.querySelectorAll("td.health")].map((td) => td.title);
  return { width: innerWidth, over, hidden, stacked, names, why, text: document.body.innerText };
})()"##;

/// What says whether the page's data is live: the verdict badge, the page's stale mark, and how
/// the panels are drawn.
const STALE: &str = r#"(() => {
  const v = document.getElementById("verdict");
  return { badge: v.textContent, badgeColor: getComputedStyle(v).color, stale: document.body.classList.contains("stale"),
           opacity: getComputedStyle(document.querySelector("main")).opacity };
})()"#;

fn artifacts() -> PathBuf {
    Path::new(env!("CARGO_TARGET_TMPDIR")).parent().unwrap().join("test-artifacts")
}

fn updates(look: &Value) -> u64 {
    look["stats"]["updates"].as_u64().unwrap_or(0)
}

/// Every canvas on the page has drawn something in colour.
fn all_drawn(look: &Value) -> bool {
    let canvases = look["canvases"].as_array().unwrap();
    !canvases.is_empty() && canvases.iter().all(|c| c["colored"].as_u64() > Some(0))
}

#[test]
fn the_dashboard_shows_every_target_and_backend_live_and_reconnects_after_a_restart() {
    let ip = "127.0.15.4";
    let config = lab(ip);
    let mut lab_proc = up(&config);
    traffic(ip);
    let names: Vec<String> = api(ip, "/api/v1/targets")["targets"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["target"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(names.len(), 8, "four HTTP and two UDP backends, and two more targets: {names:?}");
    let backends: Vec<String> =
        (18001..=18003).chain([18009]).chain(12526..=12527).map(|p| format!("{ip}:{p}")).collect();

    let mut b = Browser::start(1400, 1900);
    b.navigate(&format!("http://{ip}:19100/"));
    let look = wait_until("the page to show live data and draw every chart", START, || {
        let look = b.look()?;
        (updates(&look) >= 3 && all_drawn(&look) && look["canvases"].as_array().unwrap().len() >= 12).then_some(look)
    });
    let text = look["text"].as_str().unwrap();
    for n in names.iter().chain(&backends) {
        assert!(text.contains(n.as_str()), "{n} is not on the page:\n{text}");
    }
    assert!(text.contains("degraded"), "the verdict is in the header:\n{text}");
    let header = text.lines().find(|l| l.contains("down: ")).unwrap_or_else(|| panic!("no `down:` in\n{text}"));
    assert!(
        header.contains("tcp://127.0.15.4:9") && header.contains(":18009/"),
        "the header names what is down: {header}"
    );
    assert!(text.contains("web · http on 127.0.15.4:18000") && text.contains("ping · udp on"), "{text}");
    assert!(text.contains("out of rotation"), "a backend's health says why:\n{text}");
    assert!(text.contains("Mbit/s") && text.contains(" ms"), "rates and times have units:\n{text}");
    // Sparklines (one per target and interface), the RTT, interface and two balancer charts.
    let charts: Vec<&Value> =
        look["canvases"].as_array().unwrap().iter().filter(|c| c["width"].as_u64() > Some(200)).collect();
    assert_eq!(charts.len(), 4, "{look}");
    assert!(b.log.iter().all(|l| !l.starts_with("exception")), "{:?}", b.log);
    // Clicking a lossy target charts it, its lost probes in red.
    let lossy = format!("udp://{ip}:12526");
    b.eval(&format!("document.querySelector('tr[data-target=\"{lossy}\"]').click()")).unwrap();
    wait_until("the lossy target's chart to mark its lost probes", START, || {
        let look = b.look()?;
        let chart = look["canvases"].as_array()?.iter().find(|c| c["chart"] == "target-chart")?.clone();
        let titled = look["text"].as_str()?.contains(&format!("{lossy} round trip per interval"));
        (titled && chart["red"].as_u64() > Some(0) && chart["colored"].as_u64() > chart["red"].as_u64()).then_some(())
    });
    b.screenshot(&artifacts().join("web.png"));

    // Readable at 1400 px: tables and charts side by side, no table scrolls sideways, every
    // heading in view, a backend's whole reason on hover; at 1024 px the charts go under.
    for (width, side_by_side) in [(1400, true), (1024, false)] {
        b.call(
            "Emulation.setDeviceMetricsOverride",
            json!({"width": width, "height": 1900, "deviceScaleFactor": 1, "mobile": false}),
        );
        let layout = wait_until(format!("the layout at {width} px"), START, || {
            b.eval(LAYOUT).filter(|l| l["width"] == width && l["names"].as_array().is_some_and(|n| !n.is_empty()))
        });
        assert_eq!(layout["over"], json!([]), "tables that scroll sideways at {width} px: {layout}");
        assert_eq!(layout["hidden"], json!([]), "headings out of view at {width} px: {layout}");
        let splits = layout["stacked"].as_array().unwrap();
        assert!(splits.len() >= 4 && splits.iter().all(|s| s == &json!(!side_by_side)), "{width} px: {layout}");
        for n in layout["names"].as_array().unwrap() {
            assert!(n["width"].as_f64().unwrap() >= 150.0 && n["clipped"] == false, "a name cut at {width} px: {n}");
        }
        assert!(layout["text"].as_str().unwrap().contains("Conns (idle)"), "{layout}");
        let why = layout["why"].as_array().unwrap();
        assert!(why.iter().any(|w| w.as_str().unwrap().starts_with("out of rotation (")), "{why:?}");
        b.screenshot(&artifacts().join(format!("web-{width}.png")));
    }
    let text = b.look().unwrap()["text"].as_str().unwrap().to_string();
    assert!(text.contains("No reply") && text.contains("Datagrams/s"), "the UDP balancer's headings:\n{text}");

    // The server goes away: the page says so, and greys out what it shows until it is back.
    lab_proc.signal_and_wait("TERM", START);
    wait_until("the page to say it is reconnecting", START, || {
        (b.look()?["stream"].as_str() == Some("reconnecting…")).then_some(())
    });
    let stale = b.eval(STALE).unwrap();
    assert_eq!(stale["badge"], "no data — reconnecting", "{stale}");
    assert_eq!(stale["stale"], true, "{stale}");
    assert!(stale["opacity"].as_str().unwrap().parse::<f64>().unwrap() < 0.6, "the panels are dimmed: {stale}");
    assert!(!stale["badgeColor"].as_str().unwrap().contains("26, 127, 55"), "not green: {stale}");
    b.screenshot(&artifacts().join("web-stale.png"));
    let before = updates(&b.look().unwrap());
    let _lab_again = up(&config);
    let look = wait_until("new reports after the restart", START, || {
        let look = b.look()?;
        (look["stream"].as_str() == Some("live") && updates(&look) >= before + 3 && all_drawn(&look)).then_some(look)
    });
    let text = look["text"].as_str().unwrap();
    for n in names.iter().chain(&backends) {
        assert!(text.contains(n.as_str()), "{n} is not on the page after the restart:\n{text}");
    }
    let fresh = b.eval(STALE).unwrap();
    assert_eq!((fresh["badge"].as_str(), fresh["stale"].as_bool()), (Some("degraded"), Some(false)), "{fresh}");
    assert!(b.log.iter().all(|l| !l.starts_with("exception")), "{:?}", b.log);
    b.screenshot(&artifacts().join("web-after-restart.png"));
}

#[test]
fn the_page_shows_the_api_and_polls_it_while_every_stream_place_is_taken_then_goes_live() {
    let ip = "127.0.15.7";
    let _lab = up(&lab(ip));
    traffic(ip);
    // Every stream place held by a client that reads (so none is cut).
    let held: Vec<(TcpStream, std::thread::JoinHandle<()>)> = (0..128)
        .map(|i| {
            let s = open_stream(ip).unwrap_or_else(|e| panic!("stream {i}: {e}"));
            s.set_read_timeout(None).unwrap();
            let mut reader = s.try_clone().unwrap();
            let t = std::thread::spawn(move || {
                let mut sink = [0u8; 1 << 14];
                while matches!(reader.read(&mut sink), Ok(n) if n > 0) {}
            });
            (s, t)
        })
        .collect();
    assert_eq!(open_stream(ip).unwrap_err(), "HTTP/1.1 503 Service Unavailable");

    let mut b = Browser::start(1400, 1900);
    b.navigate(&format!("http://{ip}:19100/"));
    let look = wait_until("the page to show the API's data and poll it", START, || {
        let look = b.look()?;
        let polls = look["stats"]["polls"].as_u64()?;
        (look["stream"] == "polling (event stream busy)" && polls >= 3 && all_drawn(&look)).then_some(look)
    });
    let text = look["text"].as_str().unwrap();
    for n in [format!("tcp://{ip}:9"), format!("udp://{ip}:12527"), format!("{ip}:18009")] {
        assert!(text.contains(&n), "{n} is not on the page:\n{text}");
    }
    assert_eq!(look["stats"]["stale"], false, "polled data is fresh");
    assert!(text.contains("degraded"), "{text}");
    b.screenshot(&artifacts().join("web-polling.png"));

    // The places come free: the page tries the stream again and follows it.
    for (s, t) in held {
        s.shutdown(std::net::Shutdown::Both).unwrap();
        t.join().unwrap();
    }
    let before = updates(&b.look().unwrap());
    wait_until("the page to follow the stream again", START, || {
        let look = b.look()?;
        (look["stream"] == "live" && updates(&look) >= before + 3).then_some(())
    });
    assert!(b.log.iter().all(|l| !l.starts_with("exception")), "{:?}", b.log);
}

/// The figure of BENCHMARKS.md on the API's cost to the monitor:
/// `cargo test --release --test web -- --ignored --nocapture measure_report_jitter`
/// (`NETPULSE=path/to/netpulse` measures another build). 1,000 `udp://` targets at 1 s; once
/// the history is full (300 reports, about 10 MB of `/api/v1/targets`), 60 s with no client and 60 s
/// with six clients fetching `/api/v1/targets` in a loop; how far each report's time strays
/// from a second after the one before.
#[test]
#[ignore = "a measurement of about 7 minutes: run it with --ignored --nocapture"]
fn measure_report_jitter_with_six_clients_looping_on_the_api() {
    let ip = "127.0.15.11";
    let _servers = Proc::up(&["serve", "udp", "--bind", ip, "--ports", "20000-20999", "-q"]);
    let bin = std::env::var("NETPULSE").unwrap_or_else(|_| env!("CARGO_BIN_EXE_netpulse").to_string());
    let mut cmd = Command::new(&bin);
    cmd.args(["monitor", "--web", &format!("{ip}:19100"), "--format", "json"]);
    cmd.args((20000..21000).map(|p| format!("udp://{ip}:{p}")));
    let mut monitor = cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::null()).spawn().unwrap();
    // Each report's time, in ms since the epoch, read from the start of its line.
    let times = std::sync::Arc::new(std::sync::Mutex::new(Vec::<i64>::new()));
    let reader = {
        let (times, out) = (times.clone(), monitor.stdout.take().unwrap());
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines() {
                let Ok(line) = line else { break };
                let Some(t) = line.strip_prefix(r#"{"time":""#).and_then(|l| l.get(..24)) else { continue };
                // 2026-11-30T01:19:06.443Z
                let (secs, ms) = (&t[11..19], &t[20..23]);
                let hms: Vec<i64> = secs.split(':').map(|v| v.parse().unwrap()).collect();
                let day: i64 = t[8..10].parse().unwrap();
                let ms_of_day =
                    ((day * 24 + hms[0]) * 60 + hms[1]) * 60_000 + hms[2] * 1000 + ms.parse::<i64>().unwrap();
                times.lock().unwrap().push(ms_of_day);
            }
        })
    };
    common::wait_tcp(addr(&format!("{ip}:19100")));
    wait_until("300 reports of history", Duration::from_secs(400), || {
        thread_sleep(Duration::from_secs(1));
        (times.lock().unwrap().len() >= HISTORY_ROWS + 2).then_some(())
    });
    let strays = |from: usize| {
        let t = times.lock().unwrap();
        let mut d: Vec<i64> = t[from..].windows(2).map(|w| (w[1] - w[0] - 1000).abs()).collect();
        d.sort_unstable();
        (d.len(), d[d.len() / 2], d[d.len() * 99 / 100], d[d.len() - 1])
    };
    let quiet_from = times.lock().unwrap().len();
    thread_sleep(Duration::from_secs(60));
    let quiet = strays(quiet_from);
    let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let busy_from = times.lock().unwrap().len();
    let clients: Vec<_> = (0..6)
        .map(|_| {
            let done = done.clone();
            std::thread::spawn(move || {
                let mut took = Vec::new();
                let mut size = 0;
                while !done.load(std::sync::atomic::Ordering::Relaxed) {
                    let started = Instant::now();
                    let r = web_get(ip, "/api/v1/targets");
                    took.push(started.elapsed());
                    assert_eq!(r.status, 200);
                    size = r.body.len();
                }
                (took, size)
            })
        })
        .collect();
    thread_sleep(Duration::from_secs(60));
    done.store(true, std::sync::atomic::Ordering::Relaxed);
    let busy = strays(busy_from);
    let mut took: Vec<Duration> = Vec::new();
    let mut size = 0;
    for c in clients {
        let (t, s) = c.join().unwrap();
        took.extend(t);
        size = s;
    }
    took.sort_unstable();
    let _ = monitor.kill();
    let _ = monitor.wait();
    reader.join().unwrap();
    println!(
        "1,000 targets at 1 s; a report's time strays from a second after the one before by (median / p99 / max):\n  \
         no client:                               {} / {} / {} ms ({} reports)\n  \
         6 clients looping on /api/v1/targets:    {} / {} / {} ms ({} reports)\n  \
         the clients: {} requests of {:.1} MB, {:.0} / {:.0} ms (median / max)",
        quiet.1,
        quiet.2,
        quiet.3,
        quiet.0,
        busy.1,
        busy.2,
        busy.3,
        busy.0,
        took.len(),
        size as f64 / 1e6,
        took[took.len() / 2].as_secs_f64() * 1000.0,
        took[took.len() - 1].as_secs_f64() * 1000.0,
    );
}

/// Rows of history the dashboard keeps (its `HISTORY`).
const HISTORY_ROWS: usize = 300;

/// README's picture of the dashboard, `docs/web-dashboard.png`:
/// `cargo test --release --test web -- --ignored readme_screenshot`. The classic lab on
/// 127.0.15.10 (the UDP servers losing 20 %, and a TCP target nobody serves), HTTP requests and
/// UDP pings through the balancers for 20 s, then the page laid out at 1400 px (tables and charts
/// side by side), a lossy target charted, its targets and balancers scaled to 1280 px.
#[test]
#[ignore = "writes docs/web-dashboard.png: run it with --ignored readme_screenshot"]
fn readme_screenshot() {
    let ip = "127.0.15.10";
    let config = format!(
        r#"
[serve.http]
bind = "{ip}"
ports = "8001-8004"

[serve.udp]
bind = "{ip}"
ports = "2526-2528"
loss = 0.2
seed = 1

[[balance.http]]
name = "web"
listen = "{ip}:8000"
backends = ["{ip}:8001", "{ip}:8002", "{ip}:8003", "{ip}:8004"]
access_log = false

[[balance.udp]]
name = "ping"
listen = "{ip}:8888"
backends = ["{ip}:2526", "{ip}:2527", "{ip}:2528"]
access_log = false

[monitor]
interval = "500ms"
targets = ["tcp://{ip}:9"]
metrics = "{ip}:9100"
"#
    );
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("web-{ip}"));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("lab.toml"), config).unwrap();
    let _up = up(&dir.join("lab.toml"));
    let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    // About 100 requests and 25 pings a second.
    let http = {
        let done = done.clone();
        std::thread::spawn(move || {
            while !done.load(std::sync::atomic::Ordering::Relaxed) {
                assert_eq!(get(addr(&format!("{ip}:8000")), "/").status, 200);
                thread_sleep(Duration::from_millis(10));
            }
        })
    };
    let udp = {
        let done = done.clone();
        std::thread::spawn(move || {
            let s = udp_client(ip);
            s.set_nonblocking(true).unwrap();
            let mut seq = 0;
            while !done.load(std::sync::atomic::Ordering::Relaxed) {
                seq += 1;
                s.send_to(format!("PING {seq} 12:00:00").as_bytes(), format!("{ip}:8888")).unwrap();
                thread_sleep(Duration::from_millis(40));
                while s.recv(&mut [0u8; 64]).is_ok() {}
            }
        })
    };
    thread_sleep(Duration::from_secs(20));
    let (width, picture) = (1400, 1280.0);
    // Tall enough for every row: sparklines are drawn only when in view.
    let mut b = Browser::start(width, 3200);
    b.navigate(&format!("http://{ip}:9100/"));
    let started = Instant::now();
    loop {
        let look = b.look();
        if let Some(look) = &look {
            if updates(look) >= 3 && all_drawn(look) {
                break;
            }
        }
        if started.elapsed() > START {
            let look = look.unwrap_or_default();
            let blank: Vec<&Value> =
                look["canvases"].as_array().into_iter().flatten().filter(|c| c["colored"] == 0).collect();
            panic!(
                "the page drew no live data: {} updates, stream {}, blank canvases {blank:?}",
                updates(&look),
                look["stream"]
            );
        }
        thread_sleep(Duration::from_millis(50));
    }
    b.eval(&format!("document.querySelector('tr[data-target=\"udp://{ip}:2527\"]').click()")).unwrap();
    thread_sleep(Duration::from_secs(2));
    // Down to the interfaces (this machine's, not the lab's): the picture stays under 250 kB.
    let height = b.eval("Math.floor(document.getElementById('interfaces-panel').getBoundingClientRect().top)").unwrap();
    let height = height.as_u64().unwrap();
    b.call(
        "Emulation.setDeviceMetricsOverride",
        json!({"width": width, "height": height, "deviceScaleFactor": 1, "mobile": false}),
    );
    thread_sleep(Duration::from_secs(1));
    let look = b.look().unwrap();
    let text = look["text"].as_str().unwrap();
    assert!(text.contains("degraded") && text.contains(&format!("tcp://{ip}:9")), "{text}");
    done.store(true, std::sync::atomic::Ordering::Relaxed);
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/web-dashboard.png");
    let scale = picture / f64::from(width);
    let clip = json!({"x": 0, "y": 0, "width": width, "height": height, "scale": scale});
    let shot = b.call("Page.captureScreenshot", json!({"format": "png", "clip": clip}));
    let png = base64::engine::general_purpose::STANDARD.decode(shot["data"].as_str().unwrap()).unwrap();
    std::fs::write(&path, png).unwrap();
    http.join().unwrap();
    udp.join().unwrap();
    let size = std::fs::metadata(&path).unwrap().len();
    println!("{}: {picture} x {:.0}, {} kB", path.display(), height as f64 * scale, size / 1000);
    assert!(size <= 250_000, "{size} bytes: README's picture should stay under 250 kB");
}

/// The scale figure of BENCHMARKS.md: `cargo test --release --test web -- --ignored --nocapture`.
#[test]
#[ignore = "a measurement: run it with --ignored --nocapture"]
fn measure_the_page_with_1000_targets() {
    let ip = "127.0.15.5";
    let _servers = Proc::up(&["serve", "udp", "--bind", ip, "--ports", "20000-20999", "-q"]);
    let mut args: Vec<String> =
        ["monitor", "--web", &format!("{ip}:19100"), "--format", "json"].map(String::from).to_vec();
    args.extend((20000..21000).map(|p| format!("udp://{ip}:{p}")));
    let mut cmd = common::netpulse();
    cmd.args(&args);
    let _monitor = Proc::spawn_command(cmd);
    common::wait_tcp(addr(&format!("{ip}:19100")));
    let mut b = Browser::start(1400, 1000);
    b.navigate(&format!("http://{ip}:19100/"));
    let look = wait_until("30 updates of 1,000 targets", Duration::from_secs(120), || {
        let look = b.look()?;
        (updates(&look) >= 30).then_some(look)
    });
    let r = &look["stats"]["renderMs"];
    let avg = r["sum"].as_f64().unwrap() / r["n"].as_f64().unwrap();
    println!(
        "1,000 targets: an update takes {avg:.1} ms on average, {:.1} ms at most, from the event's arrival to a \
         laid-out page ({} updates; the last: parse {:.1} ms, script {:.1} ms, style and layout {:.1} ms)",
        r["max"].as_f64().unwrap(),
        r["n"],
        look["stats"]["parseMs"].as_f64().unwrap_or(f64::NAN),
        r["jsMs"].as_f64().unwrap_or(f64::NAN),
        r["layoutMs"].as_f64().unwrap_or(f64::NAN),
    );
    // The first one builds the thousand rows; the rest only change them.
    let each: Vec<f64> = r["each"].as_array().unwrap().iter().map(|v| v.as_f64().unwrap()).collect();
    let rest = &each[1..];
    println!(
        "  the first (it builds the rows): {:.0} ms; the {} after it: {:.1} ms on average, {:.0} ms at most",
        each[0],
        rest.len(),
        rest.iter().sum::<f64>() / rest.len() as f64,
        rest.iter().copied().fold(0.0, f64::max)
    );
    b.screenshot(&artifacts().join("web-1000.png"));
}

// ---- the recorded history: /api/v1/history and the page's time ranges (127.0.26.x) --------------

/// `netpulse up` on the lab `config`, recording its history into `file`.
fn up_recording(config: &Path, file: &Path) -> Proc {
    let mut cmd = common::netpulse();
    cmd.args(["up", "--config"]).arg(config).arg("--history").arg(file);
    Proc::up_command(cmd)
}

/// A fresh history file for the lab on `ip`.
fn history_file(ip: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("web-history-{ip}"));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir.join("h.db")
}

/// The time `secs` seconds ago, to the second, as RFC 3339.
fn seconds_ago(secs: i64) -> String {
    jiff::Timestamp::from_second(jiff::Timestamp::now().as_second() - secs).unwrap().to_string()
}

/// Waits until the history has `n` probes of `target` from the last five minutes.
fn wait_recorded(ip: &str, target: &str, n: u64) {
    wait_until(format!("{n} recorded probes of {target}"), START, || {
        let v = api(ip, &format!("/api/v1/history?since=5m&target={target}"));
        let series = v["targets"][0]["series"].as_array()?.clone();
        (series.iter().map(|p| p["sent"].as_u64().unwrap_or(0)).sum::<u64>() >= n).then_some(())
    });
}

#[test]
fn the_history_api_answers_the_points_netpulse_history_prints_and_bad_queries_get_one_line() {
    let ip = "127.0.26.30";
    let file = history_file(ip);
    let _up = up_recording(&lab(ip), &file);
    traffic(ip);
    let lossy = format!("udp://{ip}:12526");
    wait_recorded(ip, &lossy, 20);
    // An hour that ended a few seconds ago, asked of the API (no step: it picks one) and of
    // the command with that step: the same points. (Asked again until the writer has settled
    // the last intervals: an interval is written just after its report.)
    let (api_doc, cli_doc) = wait_until("the API and the command to agree", START, || {
        let (since, until) = (seconds_ago(3605), seconds_ago(5));
        let v = api(ip, &format!("/api/v1/history?target={lossy}&since={since}&until={until}"));
        let step = format!("{}s", v["step_s"].as_f64()?);
        let out = common::netpulse()
            .args(["history", "--history", file.to_str().unwrap(), &lossy, "--since", &since, "--until", &until])
            .args(["--step", &step, "--format", "json"])
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let cli: Value = serde_json::from_slice(&out.stdout).unwrap();
        // (And until the range holds a few seconds of probes.)
        let sent: u64 = v["targets"][0]["series"].as_array()?.iter().map(|p| p["sent"].as_u64().unwrap_or(0)).sum();
        (cli["targets"][0]["series"] == v["targets"][0]["series"] && sent >= 20).then_some((v, cli))
    });
    assert_eq!(api_doc["history"], "on");
    assert_eq!(api_doc["step_s"], 5.0, "an hour in at most a thousand points: 5 s steps");
    for k in ["since", "until", "step_s"] {
        assert_eq!(api_doc[k], cli_doc[k], "{k}");
    }
    let points = api_doc["targets"][0]["series"].as_array().unwrap();
    assert!((720..=721).contains(&points.len()), "{} points", points.len());
    assert!(points.iter().all(|p| p["t_ms"].as_i64().unwrap() % 5000 == 0), "steps on the 5 s grid");
    let lost: u64 = points.iter().map(|p| p["lost"].as_u64().unwrap()).sum();
    let answered = points.iter().filter(|p| p["rtt_p50_ms"].is_f64()).count();
    assert!(lost > 0 && answered > 0, "the lossy target's lost probes and answers are in it");

    // Every target recorded in the range, the live ones, each in at most a thousand points.
    let all = api(ip, "/api/v1/history?since=1h");
    let mut recorded: Vec<&str> =
        all["targets"].as_array().unwrap().iter().map(|t| t["target"].as_str().unwrap()).collect();
    let live = api(ip, "/api/v1/targets?history=0");
    let mut monitored: Vec<&str> =
        live["targets"].as_array().unwrap().iter().map(|t| t["target"].as_str().unwrap()).collect();
    recorded.sort_unstable();
    monitored.sort_unstable();
    assert_eq!(recorded, monitored);
    assert!(all["targets"].as_array().unwrap().iter().all(|t| t["series"].as_array().unwrap().len() <= 1001));
    let week = api(ip, "/api/v1/history?since=7d");
    assert_eq!(week["step_s"], 900.0, "a week in 15 min steps (672 and the ends)");
    let unknown = api(ip, &format!("/api/v1/history?target=udp://{ip}:1&since=1h"));
    assert_eq!(
        (unknown["targets"].clone(), unknown["not_recorded"].clone()),
        (json!([]), json!([format!("udp://{ip}:1")]))
    );

    // A bad query: 400 and one line of JSON that names the parameter.
    for (query, says) in [
        ("since=yesterday", "since=yesterday: 'yesterday' is not a time"),
        ("since=1h&until=2h", "is not before until"),
        ("step=10ms", "step=10ms is too fine"),
        ("step=1s&since=30d", "for 8 target(s): more than 100000 in one answer; ask for step=300s or coarser"),
        ("tagret=x", "unknown parameter \"tagret\""),
        ("since=%zz", "broken %-escape"),
        // No step: even the coarsest one over two thousand years is more than one answer holds.
        ("since=0001-01-01", "at its coarsest step for 8 target(s): more than 100000 in one answer"),
    ] {
        let r = web_get(ip, &format!("/api/v1/history?{query}"));
        assert_eq!((r.status, r.header("content-type")), (400, Some("application/json")), "{query}: {r:?}");
        assert_eq!(r.body.lines().count(), 1, "{query}: {}", r.body);
        let v: Value = serde_json::from_str(&r.body).unwrap();
        assert!(v["error"].as_str().unwrap().contains(says), "{query}: {}", r.body);
    }
}

#[test]
fn with_history_off_the_api_says_so() {
    let ip = "127.0.26.31";
    let mut cmd = common::netpulse();
    cmd.args(["up", "--config"]).arg(lab(ip)).arg("--no-history");
    let _up = Proc::up_command(cmd);
    assert_eq!(api(ip, "/api/v1/history?since=1h"), json!({"history": "off", "targets": []}));
}

/// The page's time range as the test reads it: the chart's recorded columns and the sparklines.
const RANGE: &str = r#"(() => {
  const r = window.netpulse && window.netpulse.state.range;
  if (!r) return { live: true };
  const c = r.chart, sum = (a) => a.reduce((x, y) => x + y, 0);
  return { name: r.name, step_s: r.step_s, sparks: r.spark ? r.spark.size : 0,
           chart: c && { target: c.target, n: c.t.length, answered: c.rtt_med_ms.filter((v) => v != null).length,
                         lost: sum(c.lost), first: c.t[0], last: c.t[c.t.length - 1] },
           pressed: document.querySelector('#ranges [aria-pressed="true"]').dataset.range,
           head: document.getElementById("history-head").textContent,
           caption: document.getElementById("chart-what").textContent };
})()"#;

#[test]
fn picking_1_h_draws_the_recorded_hour_with_its_losses_and_live_comes_back() {
    let ip = "127.0.26.32";
    let file = history_file(ip);
    let _up = up_recording(&lab(ip), &file);
    traffic(ip);
    let lossy = format!("udp://{ip}:12526");
    wait_recorded(ip, &lossy, 20);
    let mut b = Browser::start(1400, 1900);
    b.navigate(&format!("http://{ip}:19100/"));
    wait_until("the page to show live data", START, || {
        let look = b.look()?;
        (updates(&look) >= 3 && all_drawn(&look)).then_some(())
    });
    b.eval(&format!("document.querySelector('tr[data-target=\"{lossy}\"]').click()")).unwrap();
    b.eval("document.querySelector('#ranges [data-range=\"1h\"]').click()").unwrap();
    // The chart holds the recorded hour in 5 s steps (the live window holds 300 reports at most),
    // with the lossy target's answers and its lost probes, drawn: the line and the red marks.
    let (range, look) = wait_until("the recorded hour to be charted", START, || {
        let range = b.eval(RANGE)?;
        let chart = range.get("chart")?.clone();
        if chart.is_null() || chart["target"] != lossy.as_str() {
            return None;
        }
        let look = b.look()?;
        let canvas = look["canvases"].as_array()?.iter().find(|c| c["chart"] == "target-chart")?.clone();
        let drawn = canvas["red"].as_u64() > Some(0) && canvas["colored"].as_u64() > canvas["red"].as_u64();
        // The lossy target's sparkline shows its recorded losses in red.
        let spark = look["canvases"].as_array()?.iter().find(|c| c["name"] == lossy.as_str())?.clone();
        // The caption follows the frame after the recorded series came: wait for that frame.
        let captioned = range["caption"].as_str().is_some_and(|c| c.contains("(recorded)") && !c.contains("per step"));
        (drawn && captioned && range["sparks"].as_u64() > Some(0) && spark["red"].as_u64() > Some(0))
            .then_some((range, look))
    });
    let chart = &range["chart"];
    assert_eq!(range["step_s"], 5.0, "{range}");
    assert!((720..=721).contains(&chart["n"].as_u64().unwrap()), "an hour of 5 s steps: {range}");
    let span = chart["last"].as_f64().unwrap() - chart["first"].as_f64().unwrap();
    assert!((3595.0..=3600.0).contains(&span), "from an hour ago to now: {range}");
    assert!(chart["answered"].as_u64() > Some(0) && chart["lost"].as_u64() > Some(0), "{range}");
    assert_eq!(range["pressed"], "1h");
    assert_eq!(range["head"], "Last 1 h");
    assert_eq!(range["caption"], "round trip per 5 s over the last 1 h (recorded)");
    assert_eq!(range["sparks"], 8, "a recorded sparkline per target: {range}");
    assert!(look["text"].as_str().unwrap().contains(&lossy), "the tables stay");
    b.screenshot(&artifacts().join("web-range-1h.png"));

    // Live again: the live window is charted, and follows the reports.
    b.eval("document.querySelector('#ranges [data-range=\"live\"]').click()").unwrap();
    let before = updates(&b.look().unwrap());
    wait_until("the live view to come back", START, || {
        let range = b.eval(RANGE)?;
        let look = b.look()?;
        let live = range["live"] == true && updates(&look) >= before + 2;
        let titled = look["text"].as_str()?.contains(&format!("{lossy} round trip per interval"));
        (live && titled && all_drawn(&look)).then_some(())
    });
    assert!(b.log.iter().all(|l| !l.starts_with("exception")), "{:?}", b.log);
}

/// A `measured` balancer on 127.0.28.50 over a backend and the same kind of backend behind
/// examples/lab/relay.py answering 20 ms late (loopback, no namespace needed).
#[test]
fn the_page_shows_each_backends_measured_weight_and_why() {
    let ip = "127.0.28.50";
    let config = format!(
        r#"
[serve.http]
bind = "{ip}"
ports = "28001-28002"

[[balance.http]]
name = "measured"
listen = "{ip}:28000"
backends = ["{ip}:28001", "{ip}:28003"]
strategy = "measured"
access_log = false

[monitor]
interval = "200ms"
metrics = "{ip}:19100"

[history]
enabled = false
"#
    );
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("web-{ip}"));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("measured.toml"), config).unwrap();
    let relay = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/lab/relay.py");
    /// Killed on drop, pass or fail.
    struct Relay(Child);
    impl Drop for Relay {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let _slow = Relay(
        Command::new("python3")
            .args([relay, &format!("{ip}:28003"), &format!("{ip}:28002"), "--delay", "20"])
            .stdout(Stdio::null())
            .spawn()
            .expect("python3"),
    );
    common::wait_tcp(addr(&format!("{ip}:28003")));
    let _lab = up(&dir.join("measured.toml"));
    wait_until("the slow backend to be weighed down", START, || {
        let b = &api(ip, "/api/v1/balancers")["balancers"][0]["backends"][1];
        (b["measured"].as_f64()? < 0.2).then_some(())
    });
    let mut b = Browser::start(1400, 900);
    b.navigate(&format!("http://{ip}:19100/"));
    const WEIGHTS: &str = r#"(() => [...document.querySelectorAll("td.weight")]
      .map((td) => ({ text: td.innerText, title: td.title })))()"#;
    let cells = wait_until("the page to show the weights", START, || {
        let cells = b.eval(WEIGHTS)?;
        (cells.as_array()?.len() == 2 && cells[1]["title"].as_str()?.contains("× the median")).then_some(cells)
    });
    let text = b.look().unwrap()["text"].as_str().unwrap().to_string();
    assert!(text.contains("Weight"), "a Weight column:\n{text}");
    let (fast, late) = (cells[0]["text"].as_str().unwrap(), cells[1]["text"].as_str().unwrap());
    assert!(fast.starts_with('1') && fast.contains("best (rtt"), "{cells}");
    assert!(late.starts_with("0.") && late.contains("× the median"), "{cells}");
    assert!(cells[1]["title"].as_str().unwrap().starts_with("weight 0."), "the whole reason on hover: {cells}");
    assert!(b.log.iter().all(|l| !l.starts_with("exception")), "{:?}", b.log);
    b.screenshot(&artifacts().join("web-measured.png"));
}
