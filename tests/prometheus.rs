//! Prometheus beyond one machine: the shipped `examples/prometheus.yml`, its rules and the
//! Grafana dashboard `examples/grafana/netpulse.json`, run against a real Prometheus (Debian
//! package `prometheus`) scraping a real `netpulse up`: PromQL over our series answers what the
//! test did, the alerts fire for what it broke and for nothing else, and every query of the
//! dashboard names series and labels that netpulse exports and returns data.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::thread;
use std::time::Duration;

use common::{Proc, addr, get, label_names, udp_client, wait_until};
use serde_json::Value;

const EXAMPLES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/examples");
const IP: &str = "127.0.19.1";
/// Where a monitored target refuses every probe.
const DEAD_TARGET: &str = "tcp://127.0.19.2:9";
/// A backend of "web" with nothing listening.
const DEAD_BACKEND: &str = "127.0.19.1:8103";
/// The backend of "app": answers after [`APP_DELAY`], with 500 for `/fail`.
const APP_BACKEND: &str = "127.0.19.1:8111";
const APP_DELAY: Duration = Duration::from_millis(60);
const PROMETHEUS: &str = "127.0.19.1:9090";
const METRICS: &str = "127.0.19.1:9100";
/// How long anything here may take to show up: the monitor probes every second, Prometheus
/// scrapes and evaluates every second.
const PATIENCE: Duration = Duration::from_secs(20);

/// Runs a Prometheus tool in `dir`: whether it succeeded, and what it said; panics saying what
/// to install when it is missing.
fn tool(dir: &str, name: &str, args: &[&str]) -> (bool, String) {
    let out = Command::new(name).args(args).current_dir(dir).output().unwrap_or_else(|e| {
        panic!("cannot run {name} ({e}): this test needs Prometheus; install it (Debian: apt-get install prometheus)")
    });
    let said = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    (out.status.success(), said)
}

#[test]
fn promtool_accepts_the_example_config_and_rules_and_the_rules_unit_tests_pass() {
    for args in [
        ["check", "config", "prometheus.yml"],
        ["check", "rules", "netpulse.rules.yml"],
        ["test", "rules", "netpulse.rules.test.yml"],
    ] {
        let (ok, said) = tool(EXAMPLES, "promtool", &args);
        assert!(ok, "promtool {} failed:\n{said}", args.join(" "));
        assert!(said.contains("SUCCESS"), "promtool {}:\n{said}", args.join(" "));
    }
}

/// An HTTP backend that answers after `delay`: 500 for `/fail`, 200 for anything else.
fn slow_backend(at: &str, delay: Duration) {
    let l = TcpListener::bind(at).unwrap();
    thread::spawn(move || {
        for s in l.incoming() {
            let Ok(mut s) = s else { continue };
            thread::spawn(move || {
                let mut r = BufReader::new(s.try_clone().unwrap());
                loop {
                    let mut first = String::new();
                    if r.read_line(&mut first).unwrap_or(0) == 0 {
                        return;
                    }
                    let mut line = String::new();
                    while r.read_line(&mut line).unwrap_or(0) > 2 {
                        line.clear();
                    }
                    thread::sleep(delay);
                    let status = if first.starts_with("GET /fail ") { "500 Internal Server Error" } else { "200 OK" };
                    if write!(s, "HTTP/1.1 {status}\r\nContent-Length: 3\r\n\r\nok\n").is_err() {
                        return;
                    }
                }
            });
        }
    });
}

/// `netpulse up`'s config: "web" (two lab backends and a dead one), "app" (the slow backend),
/// "ping" (two UDP ping servers), a monitor every second of them all and of a refusing target.
fn netpulse_config(dir: &Path) -> PathBuf {
    let text = format!(
        r#"
[serve.http]
bind = "{IP}"
ports = "8101-8102"

[serve.udp]
bind = "{IP}"
ports = "2601-2602"

[[balance.http]]
name = "web"
listen = "{IP}:8100"
backends = ["{IP}:8101", "{IP}:8102", "{DEAD_BACKEND}"]
access_log = false

[[balance.http]]
name = "app"
listen = "{IP}:8110"
backends = ["{APP_BACKEND}"]
access_log = false

[[balance.udp]]
name = "ping"
listen = "{IP}:2600"
backends = ["{IP}:2601", "{IP}:2602"]
access_log = false

[monitor]
interval = "1s"
targets = ["{DEAD_TARGET}"]
metrics = "{METRICS}"
"#
    );
    let path = dir.join("netpulse.toml");
    std::fs::write(&path, text).unwrap();
    path
}

/// `text` with `from` (which must be there exactly once) replaced.
fn replace_once(text: &str, from: &str, to: &str, file: &str) -> String {
    assert_eq!(text.matches(from).count(), 1, "{file} no longer has `{from}` once; update tests/prometheus.rs");
    text.replacen(from, to, 1)
}

/// The shipped config and rules, in `dir`, with the test's address and intervals of a second;
/// the alerts' `for:` is 0s, so that they fire at once (`netpulse.rules.test.yml` pins what
/// the real durations do).
fn prometheus_config(dir: &Path) -> PathBuf {
    let file = "examples/prometheus.yml";
    let mut config = std::fs::read_to_string(format!("{EXAMPLES}/prometheus.yml")).unwrap();
    for (from, to) in [
        ("  scrape_interval: 15s", "  scrape_interval: 1s"),
        ("  evaluation_interval: 15s", "  evaluation_interval: 1s"),
        ("    scrape_interval: 5s", "    scrape_interval: 1s"),
        ("    scrape_timeout: 4s", "    scrape_timeout: 1s"),
        ("\"127.0.0.1:9100\"", &format!("\"{METRICS}\"")),
    ] {
        config = replace_once(&config, from, to, file);
    }
    let rules = std::fs::read_to_string(format!("{EXAMPLES}/netpulse.rules.yml")).unwrap();
    let fors = rules.lines().filter(|l| l.trim_start().starts_with("for: ")).count();
    assert!(fors >= 3, "the example rules have {fors} `for:`");
    let rules: String = rules
        .lines()
        .map(|l| match l.split_once("for: ") {
            Some((indent, _)) if indent.trim().is_empty() => format!("{indent}for: 0s\n"),
            _ => format!("{l}\n"),
        })
        .collect();
    std::fs::write(dir.join("netpulse.rules.yml"), rules).unwrap();
    let path = dir.join("prometheus.yml");
    std::fs::write(&path, config).unwrap();
    path
}

/// A temporary directory, removed when dropped.
struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> TempDir {
        let dir = std::env::temp_dir().join(format!("netpulse-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A real Prometheus on [`PROMETHEUS`], storing into a temporary directory; killed when dropped
/// (the field order drops the process before its directory).
struct Prometheus {
    proc: Proc,
    _dir: TempDir,
}

impl Prometheus {
    fn start(config: &Path, dir: TempDir) -> Prometheus {
        tool(".", "prometheus", &["--version"]);
        let mut cmd = Command::new("prometheus");
        cmd.arg(format!("--config.file={}", config.display()))
            .arg(format!("--storage.tsdb.path={}", dir.0.join("data").display()))
            .arg(format!("--web.listen-address={PROMETHEUS}"))
            .arg("--log.level=warn");
        let p = Prometheus { proc: Proc::spawn_command(cmd), _dir: dir };
        let at = addr(PROMETHEUS);
        wait_until(format_args!("Prometheus to be ready; it said:\n{}", p.proc.printed()), PATIENCE, || {
            TcpStream::connect_timeout(&at, Duration::from_millis(200)).ok()?;
            (get(at, "/-/ready").status == 200).then_some(())
        });
        p
    }

    /// `GET path` from the HTTP API: its `data`, or the error it gave.
    fn api(&self, path: &str) -> Result<Value, String> {
        let r = get(addr(PROMETHEUS), path);
        let v: Value = serde_json::from_str(&r.body).map_err(|e| format!("{e}: {}", r.body))?;
        match v["status"].as_str() {
            Some("success") => Ok(v["data"].clone()),
            _ => Err(format!("{} {}: {}", r.status, v["errorType"], v["error"])),
        }
    }

    /// An instant PromQL query: each sample's labels and value.
    fn query(&self, expr: &str) -> Result<Vec<Sample>, String> {
        let data = self.api(&format!("/api/v1/query?query={}", percent_encode(expr)))?;
        let result = data["result"].as_array().ok_or_else(|| format!("not a vector: {data}"))?;
        Ok(result
            .iter()
            .map(|s| Sample {
                labels: s["metric"]
                    .as_object()
                    .unwrap()
                    .iter()
                    .map(|(k, v)| (k.clone(), v.as_str().unwrap().to_string()))
                    .collect(),
                value: s["value"][1].as_str().unwrap().parse().unwrap(),
            })
            .collect())
    }

    /// `expr`'s samples, as `label`'s value → sample value.
    fn by(&self, expr: &str, label: &str) -> BTreeMap<String, f64> {
        let samples = self.query(expr).unwrap_or_else(|e| panic!("{expr}: {e}"));
        let out: BTreeMap<String, f64> =
            samples.iter().map(|s| (s.labels.get(label).cloned().unwrap_or_default(), s.value)).collect();
        assert_eq!(out.len(), samples.len(), "{expr}: {label} does not tell its samples apart: {samples:?}");
        out
    }

    /// Waits until `expr` gives, per `label`, what `expected` says (within 1e-9).
    fn wait_for(&self, expr: &str, label: &str, expected: &BTreeMap<String, f64>) {
        let close = |got: &BTreeMap<String, f64>| {
            got.len() == expected.len()
                && got
                    .iter()
                    .zip(expected)
                    .all(|((k, v), (ek, ev))| k == ek && ((v - ev).abs() < 1e-9 || v.is_nan() && ev.is_nan()))
        };
        wait_until(
            format_args!(
                "`{expr}` by {label} to be {expected:?}; it was {}",
                Got(&|| format!("{:?}", self.by(expr, label)))
            ),
            PATIENCE,
            || close(&self.by(expr, label)).then_some(()),
        );
    }
}

/// Formats what a closure gives, when displayed (for the message of a wait that gives up).
struct Got<'a>(&'a dyn Fn() -> String);

impl std::fmt::Display for Got<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&(self.0)())
    }
}

#[derive(Debug)]
struct Sample {
    labels: BTreeMap<String, String>,
    value: f64,
}

fn percent_encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

fn map<const N: usize>(pairs: [(&str, f64); N]) -> BTreeMap<String, f64> {
    pairs.into_iter().map(|(k, v)| (k.to_string(), v)).collect()
}

#[test]
fn a_real_prometheus_scraping_up_answers_promql_fires_the_alerts_and_feeds_every_dashboard_panel() {
    let dir = TempDir::new("prometheus");
    slow_backend(APP_BACKEND, APP_DELAY);
    let _up = Proc::up(&["up", "--config", netpulse_config(&dir.0).to_str().unwrap()]);
    let prom = Prometheus::start(&prometheus_config(&dir.0), dir);

    // Prometheus scrapes netpulse, and the relabelling names the instance by its host alone.
    let up = map([(IP, 1.0)]);
    prom.wait_for(r#"up{job="netpulse"}"#, "instance", &up);
    // The dead backend leaves the rotation (three failed probes) before any traffic is sent, so
    // that every counter's first sample in Prometheus is 0.
    let web_up = map([("127.0.19.1:8101", 1.0), ("127.0.19.1:8102", 1.0), (DEAD_BACKEND, 0.0)]);
    prom.wait_for(r#"netpulse_backend_up{balancer="web"}"#, "backend", &web_up);

    // The traffic: 10 requests through "web", 6 datagrams through "ping", 6 requests through
    // "app" of which 2 fail with a 500.
    const WEB: usize = 10;
    for _ in 0..WEB {
        let r = get(addr(&format!("{IP}:8100")), "/");
        assert_eq!(r.status, 200, "{}", r.body);
    }
    let c = udp_client(IP);
    let mut buf = [0u8; 64];
    for seq in 0..6 {
        let msg = format!("PING {seq} 00:00:00");
        c.send_to(msg.as_bytes(), format!("{IP}:2600")).unwrap();
        let (n, _) = c.recv_from(&mut buf).unwrap();
        assert_eq!(&buf[..n], msg.as_bytes());
    }
    for path in ["/", "/fail", "/", "/fail", "/", "/"] {
        let r = get(addr(&format!("{IP}:8110")), path);
        assert_eq!(r.status, if path == "/fail" { 500 } else { 200 }, "{path}: {}", r.body);
    }
    prom.wait_for(
        "netpulse_http_requests_total or netpulse_udp_requests_total",
        "balancer",
        &map([("web", WEB as f64), ("app", 6.0), ("ping", 6.0)]),
    );

    // Loss per target, as README writes it: the refusing target and the dead backend lose
    // everything, the others nothing.
    let loss = map([
        ("http://127.0.19.1:8101/", 0.0),
        ("http://127.0.19.1:8102/", 0.0),
        ("http://127.0.19.1:8103/", 1.0),
        ("http://127.0.19.1:8111/", 0.0),
        ("udp://127.0.19.1:2601", 0.0),
        ("udp://127.0.19.1:2602", 0.0),
        (DEAD_TARGET, 1.0),
    ]);
    prom.wait_for(
        "1 - rate(netpulse_probes_received_total[1m]) / rate(netpulse_probes_sent_total[1m])",
        "target",
        &loss,
    );
    prom.wait_for("target:netpulse_probe_loss:ratio_rate5m", "target", &loss);

    // Requests per backend: round robin split "web"'s evenly between the two in rotation, and
    // "ping"'s between its two servers; the dead backend got none.
    let web = prom.by(r#"sum by (backend) (increase(netpulse_backend_requests_total{balancer="web"}[5m]))"#, "backend");
    assert_eq!(web[DEAD_BACKEND], 0.0, "{web:?}");
    assert!(web["127.0.19.1:8101"] > 0.0 && web["127.0.19.1:8101"] == web["127.0.19.1:8102"], "{web:?}");
    let ping =
        prom.by(r#"sum by (backend) (increase(netpulse_backend_requests_total{balancer="ping"}[5m]))"#, "backend");
    assert!(ping["127.0.19.1:2601"] > 0.0 && ping["127.0.19.1:2601"] == ping["127.0.19.1:2602"], "{ping:?}");
    let share = map([
        ("127.0.19.1:8101", 0.5),
        ("127.0.19.1:8102", 0.5),
        (DEAD_BACKEND, 0.0),
        (APP_BACKEND, 1.0),
        ("127.0.19.1:2601", 0.5),
        ("127.0.19.1:2602", 0.5),
    ]);
    prom.wait_for("backend:netpulse_backend_requests:share_rate5m", "backend", &share);

    // 5xx per backend: "app" answered 2 of its 6 with a 500; the dead backend answered nothing.
    let errors =
        map([("127.0.19.1:8101", 0.0), ("127.0.19.1:8102", 0.0), (DEAD_BACKEND, f64::NAN), (APP_BACKEND, 1.0 / 3.0)]);
    prom.wait_for(r#"backend:netpulse_http_backend_5xx:ratio_rate5m"#, "backend", &errors);

    // Latency from the histogram: every answer of "app" took at least APP_DELAY (60 ms), so its
    // median lies in a bucket above 50 ms.
    let p50 = prom.by(
        r#"histogram_quantile(0.5, sum by (backend, le) (rate(netpulse_http_backend_latency_seconds_bucket{balancer="app"}[5m])))"#,
        "backend",
    );
    assert!(p50[APP_BACKEND] >= 0.05, "{p50:?}");
    let rule = prom.by(r#"backend:netpulse_http_backend_latency_seconds:p50_rate5m{balancer="app"}"#, "backend");
    assert!(rule[APP_BACKEND] >= 0.05, "{rule:?}");

    // The example alerts fire for what the test broke, and for nothing else.
    let expected: BTreeSet<(String, String)> = [
        ("NetpulseTargetDown", DEAD_TARGET),
        ("NetpulseTargetDown", "http://127.0.19.1:8103/"),
        ("NetpulseTargetLoss", DEAD_TARGET),
        ("NetpulseTargetLoss", "http://127.0.19.1:8103/"),
        ("NetpulseBackendDown", DEAD_BACKEND),
        ("NetpulseBackend5xx", APP_BACKEND),
    ]
    .into_iter()
    .map(|(a, b)| (a.to_string(), b.to_string()))
    .collect();
    let firing = || -> (BTreeSet<(String, String)>, Vec<Value>) {
        let alerts = prom.api("/api/v1/alerts").unwrap()["alerts"].as_array().unwrap().clone();
        let set = alerts
            .iter()
            .filter(|a| a["state"] == "firing")
            .map(|a| {
                let l = &a["labels"];
                let what = l["target"].as_str().or(l["backend"].as_str()).unwrap_or("");
                (l["alertname"].as_str().unwrap().to_string(), what.to_string())
            })
            .collect();
        (set, alerts)
    };
    let alerts = wait_until(
        format_args!("the alerts firing to be {expected:?}; they were {}", Got(&|| format!("{:#?}", firing().1))),
        PATIENCE,
        || {
            let (set, alerts) = firing();
            (set == expected).then_some(alerts)
        },
    );
    assert_eq!(alerts.len(), expected.len(), "no other alert is even pending: {alerts:#?}");
    let down = alerts.iter().find(|a| a["labels"]["alertname"] == "NetpulseBackendDown").unwrap();
    assert_eq!(
        down["annotations"]["summary"],
        format!("backend {DEAD_BACKEND} of balancer web is out of rotation (on {IP})"),
        "{down:#?}"
    );
    assert_eq!(down["labels"]["severity"], "warning");

    // Every recording rule and alert evaluates without error.
    let groups = prom.api("/api/v1/rules").unwrap()["groups"].as_array().unwrap().clone();
    let rules: Vec<&Value> = groups.iter().flat_map(|g| g["rules"].as_array().unwrap()).collect();
    assert!(rules.len() >= 10, "{groups:#?}");
    for r in &rules {
        assert_eq!(r["health"], "ok", "{r:#?}");
    }

    // The dashboard and the rules name only what netpulse exports (as a scrape shows it).
    let page = get(addr(METRICS), "/metrics").body;
    let exported = exported(&page);
    let records: BTreeSet<String> =
        rules.iter().filter(|r| r["type"] == "recording").map(|r| r["name"].as_str().unwrap().to_string()).collect();
    for r in &rules {
        let expr = r["query"].as_str().unwrap();
        let problems = check_names(expr, &exported, &records);
        assert!(problems.is_empty(), "rule {}: {expr}\n{problems:#?}", r["name"]);
    }
    check_dashboard(&prom, &exported);
}

/// The series on a `/metrics` page, each with the names of its labels; plus what Prometheus
/// adds to every series it scrapes (`up`, and the `job` and `instance` labels).
fn exported(page: &str) -> BTreeMap<String, BTreeSet<String>> {
    let mut out: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for line in page.lines().filter(|l| !l.starts_with('#') && !l.is_empty()) {
        let name_end = line.find(['{', ' ']).unwrap();
        let labels = line.split_once('{').map_or("", |(_, rest)| rest.rsplit_once('}').unwrap().0);
        out.entry(line[..name_end].to_string()).or_default().extend(label_names(labels));
    }
    out.insert("up".to_string(), BTreeSet::new());
    for labels in out.values_mut() {
        labels.extend(["job".to_string(), "instance".to_string()]);
    }
    out
}

/// What a PromQL expression names: series with the labels each is matched on, labels in
/// `by (…)`, `on (…)` and the like, and Grafana variables (`$x`, `${x}`).
#[derive(Debug, Default)]
struct Names {
    selectors: Vec<(String, Vec<String>)>,
    grouping: Vec<String>,
    variables: Vec<String>,
}

const GROUPING: [&str; 6] = ["by", "without", "on", "ignoring", "group_left", "group_right"];
const KEYWORDS: [&str; 20] = [
    "bool",
    "and",
    "or",
    "unless",
    "offset",
    "sum",
    "min",
    "max",
    "avg",
    "group",
    "stddev",
    "stdvar",
    "count",
    "count_values",
    "bottomk",
    "topk",
    "quantile",
    "atan2",
    "inf",
    "nan",
];

fn names(expr: &str) -> Names {
    let s: Vec<char> = expr.chars().collect();
    let mut n = Names::default();
    let word = |i: &mut usize| -> String {
        let start = *i;
        while *i < s.len() && (s[*i].is_ascii_alphanumeric() || s[*i] == '_' || s[*i] == ':') {
            *i += 1;
        }
        s[start..*i].iter().collect()
    };
    let next_char = |i: usize| s[i..].iter().copied().find(|c| !c.is_whitespace());
    // `$x` or `${x}` at `i` (in a string or not).
    let variable = |i: &mut usize, n: &mut Names| {
        *i += 1;
        let braced = s.get(*i) == Some(&'{');
        *i += usize::from(braced);
        n.variables.push(word(i));
        *i += usize::from(braced);
    };
    // The selector whose braces we are in, if any.
    let mut braces: Option<usize> = None;
    let mut i = 0;
    while i < s.len() {
        let c = s[i];
        if c == '"' || c == '\'' || c == '`' {
            i += 1;
            while i < s.len() && s[i] != c {
                match s[i] {
                    '\\' => i += 2,
                    '$' => variable(&mut i, &mut n),
                    _ => i += 1,
                }
            }
            i += 1;
        } else if c == '$' {
            variable(&mut i, &mut n);
        } else if c.is_ascii_digit() || c == '.' {
            while i < s.len() && (s[i].is_ascii_alphanumeric() || s[i] == '.' || s[i] == '_') {
                i += 1;
            }
        } else if c.is_ascii_alphabetic() || c == '_' {
            let w = word(&mut i);
            if let Some(sel) = braces {
                n.selectors[sel].1.push(w);
            } else if GROUPING.contains(&w.as_str()) {
                if next_char(i) == Some('(') {
                    let close = i + s[i..].iter().position(|&c| c == ')').unwrap();
                    let list: String = s[i..close].iter().collect();
                    let list = list.trim_start().trim_start_matches('(');
                    n.grouping.extend(list.split(',').map(|l| l.trim().to_string()).filter(|l| !l.is_empty()));
                    i = close + 1;
                }
            } else if KEYWORDS.contains(&w.to_ascii_lowercase().as_str()) || next_char(i) == Some('(') {
                // An operator or a function.
            } else {
                n.selectors.push((w, Vec::new()));
            }
        } else if c == '{' {
            if !(i > 0 && (s[i - 1].is_ascii_alphanumeric() || s[i - 1] == '_')) {
                n.selectors.push((String::new(), Vec::new()));
            }
            braces = Some(n.selectors.len() - 1);
            i += 1;
        } else if c == '}' {
            braces = None;
            i += 1;
        } else {
            i += 1;
        }
    }
    n
}

/// What is wrong with the names `expr` uses: series netpulse does not export (nor a recording
/// rule makes), labels they do not have.
fn check_names(expr: &str, exported: &BTreeMap<String, BTreeSet<String>>, records: &BTreeSet<String>) -> Vec<String> {
    let n = names(expr);
    let mut problems = Vec::new();
    let mut all_labels = BTreeSet::new();
    assert!(!n.selectors.is_empty(), "no series found in {expr}");
    for (name, labels) in &n.selectors {
        if records.contains(name) {
            continue;
        }
        let Some(has) = exported.get(name) else {
            problems.push(format!("netpulse exports no series {name:?}"));
            continue;
        };
        all_labels.extend(has.iter().cloned());
        for l in labels.iter().filter(|l| !has.contains(*l)) {
            problems.push(format!("{name} has no label {l:?} (it has {has:?})"));
        }
    }
    for l in n.grouping.iter().filter(|l| !all_labels.is_empty() && !all_labels.contains(*l)) {
        problems.push(format!("no series in it has the label {l:?} it groups by"));
    }
    problems
}

/// `examples/grafana/netpulse.json`: it imports anywhere (its data source is an input and a
/// variable), its panels tile the page, and every query names only what netpulse exports,
/// uses only the dashboard's variables, and returns data from the real Prometheus, with every
/// label its legend shows.
fn check_dashboard(prom: &Prometheus, exported: &BTreeMap<String, BTreeSet<String>>) {
    let text = std::fs::read_to_string(format!("{EXAMPLES}/grafana/netpulse.json")).unwrap();
    let d: Value = serde_json::from_str(&text).expect("the dashboard is JSON");
    assert_eq!(d["__inputs"][0]["name"], "DS_PROMETHEUS");
    assert_eq!(d["__inputs"][0]["pluginId"], "prometheus");
    let vars = d["templating"]["list"].as_array().unwrap();
    let ds = vars.iter().find(|v| v["name"] == "DS_PROMETHEUS").expect("a DS_PROMETHEUS variable");
    assert_eq!((&ds["type"], &ds["query"]), (&Value::from("datasource"), &Value::from("prometheus")));
    let var_names: BTreeSet<&str> = vars.iter().map(|v| v["name"].as_str().unwrap()).collect();
    // Every data source named is that one (Grafana's own annotations aside).
    let mut sources = Vec::new();
    collect(&d["panels"], "datasource", &mut sources);
    collect(&d["templating"], "datasource", &mut sources);
    for s in &sources {
        assert_eq!(s, &serde_json::json!({"type": "prometheus", "uid": "${DS_PROMETHEUS}"}));
    }

    // Panels: unique ids, inside the 24 columns, none overlapping another.
    let panels = d["panels"].as_array().unwrap();
    let ids: BTreeSet<u64> = panels.iter().map(|p| p["id"].as_u64().unwrap()).collect();
    assert_eq!(ids.len(), panels.len(), "panel ids repeat");
    let rect = |p: &Value| -> [u64; 4] { ["x", "y", "w", "h"].map(|k| p["gridPos"][k].as_u64().unwrap()) };
    for (i, a) in panels.iter().enumerate() {
        let [x, y, w, h] = rect(a);
        assert!(x + w <= 24, "{} is wider than the page", a["title"]);
        for b in &panels[i + 1..] {
            let [bx, by, bw, bh] = rect(b);
            let apart = x + w <= bx || bx + bw <= x || y + h <= by || by + bh <= y;
            assert!(apart, "{} and {} overlap", a["title"], b["title"]);
        }
    }

    let no_records = BTreeSet::new();
    let substitute = |expr: &str| -> String {
        let n = names(expr);
        for v in &n.variables {
            assert!(
                v.starts_with("__") && ["__rate_interval", "__interval", "__range"].contains(&v.as_str())
                    || var_names.contains(v.as_str()),
                "{expr} uses ${v}, which the dashboard does not define"
            );
        }
        expr.replace("$__rate_interval", "1m")
            .replace("$__interval", "1s")
            .replace("$__range", "5m")
            .replace("$instance", ".*")
            .replace("$target", ".*")
            .replace("$balancer", ".*")
            .replace("$device", ".*")
    };
    // The variables' queries: `label_values(SELECTOR, LABEL)`.
    for v in vars.iter().filter(|v| v["type"] == "query") {
        let q = v["query"].as_str().unwrap();
        let inner = q.strip_prefix("label_values(").and_then(|q| q.strip_suffix(')')).unwrap();
        let (selector, label) = inner.rsplit_once(',').unwrap();
        let problems = check_names(selector, exported, &no_records);
        assert!(problems.is_empty(), "variable {}: {q}\n{problems:#?}", v["name"]);
        let got = prom.query(&substitute(selector)).unwrap_or_else(|e| panic!("variable {}: {e}", v["name"]));
        assert!(!got.is_empty(), "variable {}: {selector} has no data", v["name"]);
        assert!(got.iter().all(|s| s.labels.contains_key(label.trim())), "variable {}: {got:?}", v["name"]);
    }
    // The panels' queries.
    let mut queries = 0;
    for p in panels.iter().filter(|p| p["type"] != "row") {
        let title = p["title"].as_str().unwrap();
        for t in p["targets"].as_array().unwrap() {
            let expr = t["expr"].as_str().unwrap();
            let problems = check_names(expr, exported, &no_records);
            assert!(problems.is_empty(), "panel {title:?}: {expr}\n{problems:#?}");
            let got = prom.query(&substitute(expr)).unwrap_or_else(|e| panic!("panel {title:?}: {expr}: {e}"));
            assert!(!got.is_empty(), "panel {title:?}: no data for {expr}");
            let legend = t["legendFormat"].as_str().unwrap_or("");
            for label in legend.split("{{").skip(1).map(|s| s.split("}}").next().unwrap().trim()) {
                assert!(
                    got.iter().all(|s| s.labels.contains_key(label)),
                    "panel {title:?}: its legend shows {{{{{label}}}}}, which {expr} does not give: {got:?}"
                );
            }
            queries += 1;
        }
    }
    assert!(queries >= 30, "{queries} queries");
}

/// Every value under the key `key`, anywhere in `v`.
fn collect(v: &Value, key: &str, out: &mut Vec<Value>) {
    match v {
        Value::Object(m) => {
            for (k, x) in m {
                if k == key {
                    out.push(x.clone());
                } else {
                    collect(x, key, out);
                }
            }
        }
        Value::Array(a) => a.iter().for_each(|x| collect(x, key, out)),
        _ => {}
    }
}

#[test]
fn the_promql_reader_finds_series_labels_and_variables() {
    let n = names(
        r#"sum by (instance, backend) (rate(a_total{x="1",y=~"$v"}[$__rate_interval])) / on (instance) group_left
           histogram_quantile(0.99, b_bucket{le!="+Inf"}[5m:1m]) > bool 0 or c offset 5m"#,
    );
    assert_eq!(
        n.selectors,
        [
            ("a_total".to_string(), vec!["x".to_string(), "y".to_string()]),
            ("b_bucket".to_string(), vec!["le".to_string()]),
            ("c".to_string(), vec![]),
        ]
    );
    assert_eq!(n.grouping, ["instance", "backend", "instance"]);
    assert_eq!(n.variables, ["v", "__rate_interval"]);
    let exported = exported("a_total{x=\"1\"} 1\nc 2\n");
    let problems = check_names("sum by (z) (a_total{y=\"2\"}) + d", &exported, &BTreeSet::new());
    assert_eq!(problems.len(), 3, "{problems:#?}");
}
