//! Validated configuration: the TOML file format, its embedded default, and the value types
//! (durations, port lists, probabilities) shared with the command-line flags.
//!
//! Every value is checked while it is deserialized, so a bad one is reported by the TOML parser
//! with its line, column and field name; what spans fields or tables (two listeners on one
//! address, a health timeout longer than its interval) is checked once more by
//! [`Config::validate`], for files and flags alike.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use serde::{Deserialize, Deserializer, de};

pub use crate::balance::{Affinity, Strategy};

/// The configuration `netpulse up` runs when given no file: the classic lab on 127.0.0.1.
pub const DEFAULT_CONFIG: &str = include_str!("../examples/netpulse.toml");

/// A problem with a configuration file or a flag value; always reported as bad usage.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config {path}")]
    Read { path: String, source: std::io::Error },
    #[error("invalid {path}: {message}")]
    Invalid { path: String, message: String },
}

/// The whole file.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Mock backends to start.
    #[serde(default)]
    pub serve: ServeConfig,
    /// Balancers to start.
    #[serde(default)]
    pub balance: BalanceConfig,
    /// The monitor `up` runs over the balancers' backends (and any extra targets).
    pub monitor: Option<MonitorConfig>,
    /// Where the monitor's history is recorded, and for how long.
    #[serde(default)]
    pub history: HistoryConfig,
    /// What survives a restart.
    #[serde(default)]
    pub state: StateConfig,
}

/// `[state]`: what survives a restart.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StateConfig {
    /// Each balancer's rotation continues after a restart where it stopped (on by default).
    #[serde(default = "yes")]
    pub rotation: bool,
    /// Where it is kept (default: `$XDG_DATA_HOME/netpulse/rotation/`).
    pub dir: Option<std::path::PathBuf>,
}

impl Default for StateConfig {
    fn default() -> Self {
        Self { rotation: true, dir: None }
    }
}

/// `[history]`: the monitor's intervals remembered in an SQLite file (on by default).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HistoryConfig {
    #[serde(default = "yes")]
    pub enabled: bool,
    /// The file (default: `$XDG_DATA_HOME/netpulse/history.db`).
    pub path: Option<std::path::PathBuf>,
    /// How long every interval is kept as it was, one row per target and minute, and one per
    /// target and hour (and the events).
    #[serde(default = "default_keep_raw")]
    pub keep_raw: Dur,
    #[serde(default = "default_keep_minutes")]
    pub keep_minutes: Dur,
    #[serde(default = "default_keep_hours")]
    pub keep_hours: Dur,
}

impl Default for HistoryConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            path: None,
            keep_raw: default_keep_raw(),
            keep_minutes: default_keep_minutes(),
            keep_hours: default_keep_hours(),
        }
    }
}

fn default_keep_raw() -> Dur {
    Dur(crate::history::Retention::default().raw)
}
fn default_keep_minutes() -> Dur {
    Dur(crate::history::Retention::default().minutes)
}
fn default_keep_hours() -> Dur {
    Dur(crate::history::Retention::default().hours)
}

impl HistoryConfig {
    fn check(&self) -> Result<(), String> {
        let (raw, minutes, hours) = (self.keep_raw.0, self.keep_minutes.0, self.keep_hours.0);
        if raw < Duration::from_secs(60) {
            return Err(format!("history: keep_raw {} is too short; keep at least \"1m\"", self.keep_raw));
        }
        if minutes < raw.max(Duration::from_secs(3600)) {
            return Err(format!(
                "history: keep_minutes {} must be at least keep_raw {} and at least \"1h\"",
                self.keep_minutes, self.keep_raw
            ));
        }
        if hours < minutes {
            return Err(format!(
                "history: keep_hours {} must be at least keep_minutes {}",
                self.keep_hours, self.keep_minutes
            ));
        }
        if self.path.as_ref().is_some_and(|p| p.as_os_str().is_empty()) {
            return Err("history: path is empty; give a file, or set enabled = false".into());
        }
        Ok(())
    }

    /// Where a run records: off with `--no-history` or `enabled = false`; else `flag` (from
    /// `--history FILE`), the configured path, or the default one (`None` where there is no home
    /// directory to put it in).
    pub fn destination(&self, flag: Option<&std::path::Path>, off: bool) -> Option<crate::history::Destination> {
        use crate::history::{Destination, Retention};
        if off || (!self.enabled && flag.is_none()) {
            return Some(Destination::Off);
        }
        let retention = Retention { raw: self.keep_raw.0, minutes: self.keep_minutes.0, hours: self.keep_hours.0 };
        let path = flag
            .map(std::path::Path::to_path_buf)
            .or_else(|| self.path.clone())
            .or_else(crate::history::default_path)?;
        Some(Destination::File(path, retention))
    }
}

/// `[monitor]`: what `netpulse up` watches and where it publishes metrics.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MonitorConfig {
    #[serde(default = "default_monitor_interval")]
    pub interval: ProbeInterval,
    /// Targets beyond the balancers' backends, written as on the command line.
    #[serde(default)]
    pub targets: Vec<TargetSpec>,
    /// Serve Prometheus `/metrics` here.
    pub metrics: Option<Addr>,
    /// Whether the probes decide which backends are in rotation (three failed probes take one
    /// out, two good ones bring it back).
    #[serde(default = "yes")]
    pub health: bool,
}

fn default_monitor_interval() -> ProbeInterval {
    ProbeInterval(Duration::from_secs(1))
}

/// A monitor target, checked when the file is read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TargetSpec(pub crate::probe::Target);

impl<'de> Deserialize<'de> for TargetSpec {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d)?.parse().map(TargetSpec).map_err(de::Error::custom)
    }
}

/// `[serve]`: mock backends.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServeConfig {
    pub http: Option<ServeHttpConfig>,
    pub udp: Option<ServeUdpConfig>,
}

/// `[serve.http]`: HTTP backends that answer with their port.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServeHttpConfig {
    #[serde(default = "loopback")]
    pub bind: IpAddr,
    pub ports: PortList,
}

/// `[serve.udp]`: classic UDP ping servers.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServeUdpConfig {
    #[serde(default = "loopback")]
    pub bind: IpAddr,
    pub ports: PortList,
    #[serde(default)]
    pub loss: Probability,
    pub seed: Option<u64>,
    /// Delay before each reply.
    #[serde(default = "no_delay")]
    pub delay: Dur,
}

fn no_delay() -> Dur {
    Dur(Duration::ZERO)
}

/// `[balance]`: `[[balance.http]]` and `[[balance.udp]]` tables.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BalanceConfig {
    #[serde(default)]
    pub http: Vec<HttpBalancerConfig>,
    #[serde(default)]
    pub udp: Vec<UdpBalancerConfig>,
    /// How often backends written as `NAME:PORT` are resolved again (default 30s; a changed
    /// address is swapped in, a failure keeps the last one).
    pub dns_refresh: Option<Dur>,
}

/// Default time between two resolutions of a backend's host name.
pub const DNS_REFRESH: Duration = Duration::from_secs(30);

/// One HTTP reverse proxy.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpBalancerConfig {
    #[serde(default = "default_http_name")]
    pub name: String,
    pub listen: Addr,
    pub backends: Backends,
    /// How a backend is chosen for each request.
    #[serde(default)]
    pub strategy: Strategy,
    /// What `strategy = "hash"` hashes: `"client-ip"` (the default) or `"header:NAME"`.
    pub hash_key: Option<HashKey>,
    /// Time allowed to open a connection to a backend (502 when exceeded).
    #[serde(default = "default_connect_timeout")]
    pub connect_timeout: Dur,
    /// Time allowed for a backend to start its response (504 when exceeded).
    #[serde(default = "default_http_timeout")]
    pub timeout: Dur,
    /// Time for a client's whole request head to arrive, from its first byte (408 when
    /// exceeded), however slowly it trickles in.
    #[serde(default = "default_head_timeout")]
    pub head_timeout: Dur,
    /// Client connections served at once; further clients wait to be accepted.
    #[serde(default = "default_max_connections")]
    pub max_connections: usize,
    /// Idle keep-alive connections kept per backend and worker.
    #[serde(default = "default_pool_idle")]
    pub pool_max_idle: usize,
    /// Other backends a request may be retried on when its backend fails, where that is safe.
    #[serde(default = "default_retries")]
    pub retries: u32,
    /// Failures in a row (refused, reset, timed out, 5xx) that eject a backend; 0 never does.
    #[serde(default = "default_eject_after")]
    pub eject_after: u32,
    /// How long the first ejection lasts (each one in a row lasts longer, up to 5 minutes).
    #[serde(default = "default_eject_for")]
    pub eject_for: Dur,
    /// Active health checks of the backends (`[balance.http.health]`).
    #[serde(default)]
    pub health: HealthCheckConfig,
    /// Threads serving this balancer (default: one per core).
    pub workers: Option<usize>,
    #[serde(default = "yes")]
    pub access_log: bool,
}

/// One UDP balancer.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UdpBalancerConfig {
    #[serde(default = "default_udp_name")]
    pub name: String,
    pub listen: Addr,
    pub backends: Backends,
    /// How a backend is chosen for each datagram.
    #[serde(default)]
    pub strategy: Strategy,
    /// What `strategy = "hash"` hashes: `"source"` (the client's address and port, the default)
    /// or `"client-ip"`.
    pub hash_key: Option<HashKey>,
    /// `"client"`: the older name of `strategy = "hash"` on the source (kept as an alias).
    #[serde(default)]
    pub affinity: Affinity,
    /// Client flows (each with its own upstream socket) held at once; the least recently used
    /// one is evicted to admit a new client.
    #[serde(default = "default_max_flows")]
    pub max_flows: usize,
    /// A flow with no traffic for this long is closed.
    #[serde(default = "default_flow_idle")]
    pub flow_idle_timeout: Dur,
    /// Threads relaying for this balancer (default: one per core).
    pub workers: Option<usize>,
    #[serde(default = "yes")]
    pub access_log: bool,
    /// Active health checks of the backends (`[balance.udp.health]`).
    #[serde(default)]
    pub health: HealthCheckConfig,
}

/// What `strategy = "hash"` hashes to choose a backend.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HashKey {
    /// The client's IP address (HTTP's default; for UDP, every port of a host together).
    ClientIp,
    /// The value of a request header (HTTP); a request without it takes the next turn of the
    /// rotation, as HAProxy's `balance hdr()` does.
    Header(String),
    /// The client's address and port (UDP's default: one flow, one backend).
    Source,
}

impl HashKey {
    /// The words the banner and the statistics use: `client-ip`, `header:NAME`, `source`.
    pub fn describe(&self) -> String {
        match self {
            HashKey::ClientIp => "client-ip".into(),
            HashKey::Header(name) => format!("header:{name}"),
            HashKey::Source => "source".into(),
        }
    }
}

impl FromStr for HashKey {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.trim() {
            "client-ip" => Ok(HashKey::ClientIp),
            "source" => Ok(HashKey::Source),
            other => match other.strip_prefix("header:") {
                // A field name is an HTTP token (RFC 9110 §5.1).
                Some(name)
                    if !name.is_empty()
                        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)) =>
                {
                    Ok(HashKey::Header(name.to_string()))
                }
                _ => Err(format!("hash key '{s}' is not one of client-ip, source, header:NAME (e.g. header:X-User)")),
            },
        }
    }
}

impl<'de> Deserialize<'de> for HashKey {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d)?.parse().map_err(de::Error::custom)
    }
}

impl HttpBalancerConfig {
    /// What `strategy = "hash"` hashes (the client IP unless told).
    pub fn hash_key(&self) -> HashKey {
        self.hash_key.clone().unwrap_or(HashKey::ClientIp)
    }

    /// The strategy as the banner and the statistics name it (`hash` with its key).
    pub fn strategy_name(&self) -> String {
        strategy_name(self.strategy, &self.hash_key())
    }
}

impl UdpBalancerConfig {
    /// What `strategy = "hash"` hashes (the source address and port unless told).
    pub fn hash_key(&self) -> HashKey {
        self.hash_key.clone().unwrap_or(HashKey::Source)
    }

    /// The strategy as the banner and the statistics name it (`hash` with its key).
    pub fn strategy_name(&self) -> String {
        strategy_name(self.strategy, &self.hash_key())
    }

    /// `affinity = "client"` is `strategy = "hash"` (on the source unless told): applied once,
    /// where a file is parsed or flags become config, so `strategy` always says what runs.
    pub fn resolve_affinity(&mut self) {
        if self.affinity == Affinity::Client && self.strategy == Strategy::RoundRobin {
            self.strategy = Strategy::Hash;
        }
    }
}

fn strategy_name(strategy: Strategy, key: &HashKey) -> String {
    match strategy {
        Strategy::Hash => format!("hash ({})", key.describe()),
        s => s.name().to_string(),
    }
}

/// What a health check does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum CheckKind {
    /// HTTP balancers: `GET path`, up when the status is in `status`.
    Http,
    /// HTTP balancers: a TCP connect.
    Tcp,
    /// UDP balancers: the classic ping (`PING <seq> <HH:MM:SS>`, answered upper-cased), or the
    /// `send`/`expect` exchange when `send` is given.
    Ping,
    /// No active checks (passive ejection still applies to HTTP).
    None,
}

/// A balancer's active health checks; under `up` with `[monitor]`, the monitor's probes at its
/// interval do the checking.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HealthCheckConfig {
    /// `http`, `tcp` or `none` for HTTP balancers (default `http`); `ping` or `none` for UDP
    /// ones (default `ping`).
    pub check: Option<CheckKind>,
    #[serde(default = "default_check_interval")]
    pub interval: ProbeInterval,
    /// Time a check may take (at most the interval).
    #[serde(default = "default_check_timeout")]
    pub timeout: Dur,
    /// Failed checks in a row that take a backend out.
    #[serde(default = "default_fall")]
    pub fall: u32,
    /// Good checks in a row that bring it back.
    #[serde(default = "default_rise")]
    pub rise: u32,
    /// HTTP checks: the path requested.
    #[serde(default = "default_check_path")]
    pub path: String,
    /// HTTP checks: the statuses that pass.
    #[serde(default = "default_check_status")]
    pub status: StatusSpec,
    /// UDP checks: bytes to send instead of the classic ping...
    pub send: Option<String>,
    /// ...and what the reply must start with (any reply if empty).
    #[serde(default)]
    pub expect: String,
}

impl Default for HealthCheckConfig {
    /// Every second, fall 3, rise 2; HTTP: `GET /`, 2xx or 3xx passes; UDP: the classic ping.
    fn default() -> Self {
        Self {
            check: None,
            interval: default_check_interval(),
            timeout: default_check_timeout(),
            fall: default_fall(),
            rise: default_rise(),
            path: default_check_path(),
            status: default_check_status(),
            send: None,
            expect: String::new(),
        }
    }
}

impl HealthCheckConfig {
    /// What the check does for an HTTP (`http`) or UDP balancer.
    pub fn kind(&self, http: bool) -> CheckKind {
        self.check.unwrap_or(if http { CheckKind::Http } else { CheckKind::Ping })
    }

    /// Checks that depend on the kind of balancer (`what` names it in errors).
    fn check(&self, what: &str, http: bool) -> Result<(), String> {
        let allowed: &[CheckKind] = if http {
            &[CheckKind::Http, CheckKind::Tcp, CheckKind::None]
        } else {
            &[CheckKind::Ping, CheckKind::None]
        };
        if !allowed.contains(&self.kind(http)) {
            let names = if http { "http, tcp or none" } else { "ping or none" };
            return Err(format!("{what}: health check must be {names}"));
        }
        if self.fall == 0 || self.rise == 0 {
            return Err(format!("{what}: health fall and rise must be at least 1"));
        }
        if self.timeout.0.is_zero() || self.timeout.0 > self.interval.0 {
            return Err(format!(
                "{what}: health timeout {} must be longer than 0 and at most the interval {}",
                self.timeout, self.interval
            ));
        }
        if !self.path.starts_with('/')
            || self.path.bytes().any(|b| b.is_ascii_whitespace() || b.is_ascii_control() || b == b'#' || b >= 0x7f)
        {
            return Err(format!(
                "{what}: health path {:?} must start with / and be printable ASCII without spaces or '#'",
                self.path
            ));
        }
        if http && (self.send.is_some() || !self.expect.is_empty()) {
            return Err(format!("{what}: health send/expect are for UDP balancers; HTTP checks use path and status"));
        }
        Ok(())
    }

    /// The fall/rise rules of these checks; lost UDP checks are tolerated by measured loss.
    pub fn rules(&self, udp: bool) -> crate::balance::HealthRules {
        crate::balance::HealthRules { fall: self.fall, rise: self.rise, tolerate_loss: udp }
    }
}

fn default_check_interval() -> ProbeInterval {
    ProbeInterval(Duration::from_secs(1))
}
fn default_check_timeout() -> Dur {
    Dur(Duration::from_secs(1))
}
fn default_fall() -> u32 {
    crate::balance::HealthRules::default().fall
}
fn default_rise() -> u32 {
    crate::balance::HealthRules::default().rise
}
fn default_check_path() -> String {
    "/".into()
}
fn default_check_status() -> StatusSpec {
    StatusSpec(crate::probe::StatusRange::OK)
}

/// HTTP statuses that pass a check: `"200-399"` or `200`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StatusSpec(pub crate::probe::StatusRange);

impl<'de> Deserialize<'de> for StatusSpec {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Code(i64),
            Spec(String),
        }
        let text = match Raw::deserialize(d)? {
            Raw::Code(c) => c.to_string(),
            Raw::Spec(s) => s,
        };
        text.parse().map(StatusSpec).map_err(de::Error::custom)
    }
}

fn loopback() -> IpAddr {
    IpAddr::V4(Ipv4Addr::LOCALHOST)
}
fn yes() -> bool {
    true
}
fn default_http_name() -> String {
    "http".into()
}
fn default_udp_name() -> String {
    "udp".into()
}
/// Default connect timeout to an HTTP backend.
pub fn default_connect_timeout() -> Dur {
    Dur(Duration::from_secs(1))
}
/// Default time for an HTTP backend to begin its response.
pub fn default_http_timeout() -> Dur {
    Dur(Duration::from_secs(30))
}
/// Default bound on concurrent client connections per HTTP balancer.
pub fn default_max_connections() -> usize {
    10_000
}
/// Default idle connections pooled per HTTP backend.
pub fn default_pool_idle() -> usize {
    256
}
/// Default time for a whole request head (nginx's and HAProxy's usual 30 s).
pub fn default_head_timeout() -> Dur {
    Dur(Duration::from_secs(30))
}
/// Default retries of a failed HTTP request on other backends.
pub fn default_retries() -> u32 {
    2
}
/// Default failures in a row that eject a backend.
pub fn default_eject_after() -> u32 {
    crate::balance::OutlierRules::default().failures
}
/// Default length of a first ejection.
pub fn default_eject_for() -> Dur {
    Dur(crate::balance::OutlierRules::default().base)
}
/// Default bound on UDP flows per balancer.
pub fn default_max_flows() -> usize {
    4096
}
/// Default idle timeout of a UDP flow.
pub fn default_flow_idle() -> Dur {
    Dur(Duration::from_secs(30))
}

impl Config {
    /// Parses and validates TOML text; `origin` names it in errors ("config PATH").
    pub fn parse(text: &str, origin: &str) -> Result<Self, ConfigError> {
        let mut config: Config = toml::from_str(text)
            .map_err(|e| ConfigError::Invalid { path: origin.to_string(), message: describe_toml_error(&e, text) })?;
        config.balance.udp.iter_mut().for_each(UdpBalancerConfig::resolve_affinity);
        config.validate(origin)?;
        Ok(config)
    }

    /// Reads and validates a file.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let shown = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read { path: shown.clone(), source })?;
        Self::parse(&text, &format!("config {shown}"))
    }

    /// The embedded default (the classic lab).
    pub fn embedded_default() -> Self {
        // The default is part of the binary and covered by a unit test; failing here is a bug.
        Self::parse(DEFAULT_CONFIG, "embedded default config").expect("embedded default config is valid")
    }

    /// Checks that span several tables (also for configs built from flags).
    pub fn validate(&self, origin: &str) -> Result<(), ConfigError> {
        self.check().map_err(|message| ConfigError::Invalid { path: origin.to_string(), message })
    }

    fn check(&self) -> Result<(), String> {
        self.history.check()?;
        if self.balance.dns_refresh.is_some_and(|d| d.0 < Duration::from_secs(1)) {
            return Err("balance: dns_refresh must be at least \"1s\"".into());
        }
        let mut seen: Vec<(SocketAddr, &str)> = Vec::new();
        let tcp = self.balance.http.iter().map(|b| (b.listen.0, b.name.as_str(), "tcp"));
        let udp = self.balance.udp.iter().map(|b| (b.listen.0, b.name.as_str(), "udp"));
        let mut by_proto: Vec<(SocketAddr, &str, &str)> = tcp.chain(udp).collect();
        if let Some(h) = &self.serve.http {
            by_proto.extend(h.ports.0.iter().map(|&p| (SocketAddr::new(h.bind, p), "serve.http", "tcp")));
        }
        if let Some(u) = &self.serve.udp {
            by_proto.extend(u.ports.0.iter().map(|&p| (SocketAddr::new(u.bind, p), "serve.udp", "udp")));
        }
        if let Some(m) = self.monitor.as_ref().and_then(|m| m.metrics) {
            by_proto.push((m.0, "monitor.metrics", "tcp"));
        }
        // Names label every statistic and metric: one balancer each, printable.
        let names: Vec<(&str, &str)> = self
            .balance
            .http
            .iter()
            .map(|b| ("http", b.name.as_str()))
            .chain(self.balance.udp.iter().map(|b| ("udp", b.name.as_str())))
            .collect();
        for (i, (kind, name)) in names.iter().enumerate() {
            if name.is_empty() || name.chars().any(char::is_control) {
                return Err(format!(
                    "balance.{kind} name {name:?}: give a name of printable characters (it labels logs and metrics)"
                ));
            }
            if names[..i].iter().any(|(_, other)| other == name) {
                return Err(format!(
                    "two balancers are named \"{name}\": give each its own `name =` (it labels logs and metrics)"
                ));
            }
        }
        let backends = self
            .balance
            .http
            .iter()
            .map(|b| ("http", &b.name, &b.backends.0))
            .chain(self.balance.udp.iter().map(|b| ("udp", &b.name, &b.backends.0)));
        for (kind, name, list) in backends {
            if let Some((_, a)) = list.iter().enumerate().find(|(i, a)| list[..*i].iter().any(|b| b.addr == a.addr)) {
                let a = a.addr;
                return Err(format!("balance.{kind} \"{name}\": backend {a} is listed twice; list each backend once"));
            }
        }
        for proto in ["tcp", "udp"] {
            seen.clear();
            for &(addr, who, _) in by_proto.iter().filter(|x| x.2 == proto) {
                if let Some((_, other)) = seen.iter().find(|(a, _)| *a == addr) {
                    return Err(format!("{who} and {other} both listen on {proto} {addr}; give each its own address"));
                }
                seen.push((addr, who));
            }
        }
        for b in &self.balance.udp {
            let v4 = b.backends.0[0].addr.is_ipv4();
            if b.backends.0.iter().any(|a| a.addr.is_ipv4() != v4) {
                return Err(format!(
                    "balance.udp \"{}\": backends mix IPv4 and IPv6; use one family per balancer",
                    b.name
                ));
            }
            if b.workers.is_some_and(|w| !(1..=1024).contains(&w)) {
                return Err(format!("balance.udp \"{}\": workers must be from 1 to 1024", b.name));
            }
            if b.max_flows == 0 {
                return Err(format!("balance.udp \"{}\": max_flows must be at least 1", b.name));
            }
        }
        for b in &self.balance.http {
            if b.max_connections == 0 {
                return Err(format!("balance.http \"{}\": max_connections must be at least 1", b.name));
            }
            if b.retries > 16 {
                return Err(format!("balance.http \"{}\": retries must be from 0 to 16", b.name));
            }
            for (field, d) in
                [("connect_timeout", b.connect_timeout), ("timeout", b.timeout), ("head_timeout", b.head_timeout)]
            {
                if d.0.is_zero() {
                    return Err(format!("balance.http \"{}\": {field} must be longer than 0s", b.name));
                }
            }
            if b.workers.is_some_and(|w| !(1..=1024).contains(&w)) {
                return Err(format!("balance.http \"{}\": workers must be from 1 to 1024", b.name));
            }
            if b.eject_for.0.is_zero() {
                return Err(format!("balance.http \"{}\": eject_for must be longer than 0s", b.name));
            }
            b.health.check(&format!("balance.http \"{}\"", b.name), true)?;
            check_hash_key(&format!("balance.http \"{}\"", b.name), b.strategy, b.hash_key.as_ref(), true)?;
        }
        for b in &self.balance.udp {
            b.health.check(&format!("balance.udp \"{}\"", b.name), false)?;
            let what = format!("balance.udp \"{}\"", b.name);
            if b.affinity == Affinity::Client && b.strategy != Strategy::Hash {
                return Err(format!(
                    "{what}: affinity = \"client\" is strategy = \"hash\" on the source; it cannot go with strategy = \"{}\" (drop one)",
                    b.strategy
                ));
            }
            check_hash_key(&what, b.strategy, b.hash_key.as_ref(), false)?;
            if b.flow_idle_timeout.0.is_zero() {
                return Err(format!("balance.udp \"{}\": flow_idle_timeout must be longer than 0s", b.name));
            }
        }
        Ok(())
    }
}

/// A hash key fits the balancer's protocol and is given only to `strategy = "hash"`.
fn check_hash_key(what: &str, strategy: Strategy, key: Option<&HashKey>, http: bool) -> Result<(), String> {
    let Some(key) = key else { return Ok(()) };
    if strategy != Strategy::Hash {
        return Err(format!(
            "{what}: hash_key applies to strategy = \"hash\", not \"{strategy}\"; drop it or set the strategy"
        ));
    }
    match (key, http) {
        (HashKey::Source, true) => Err(format!(
            "{what}: hash_key \"source\" is for UDP balancers; HTTP hashes \"client-ip\" or \"header:NAME\""
        )),
        (HashKey::Header(_), false) => {
            Err(format!("{what}: a UDP datagram has no headers; hash \"source\" or \"client-ip\""))
        }
        _ => Ok(()),
    }
}

/// Shortens the TOML parser's multi-line report to `line N, column M: message (near `text`)`.
fn describe_toml_error(e: &toml::de::Error, text: &str) -> String {
    let message = e.message().trim_end_matches('\n');
    match e.span() {
        Some(span) => {
            let before = &text[..span.start.min(text.len())];
            let line = before.matches('\n').count() + 1;
            let column = before.len() - before.rfind('\n').map_or(0, |i| i + 1) + 1;
            let near = text[span.start.min(text.len())..span.end.min(text.len())].trim();
            let near: String = near.chars().take(60).collect();
            if near.is_empty() {
                format!("line {line}, column {column}: {message}")
            } else {
                format!("line {line}, column {column}: {message} (at `{near}`)")
            }
        }
        None => message.to_string(),
    }
}

/// A duration written like `"1s"`, `"250ms"`, `"1.5s"`, `"2m"`, `"100us"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Dur(pub Duration);

impl FromStr for Dur {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        parse_duration(s).map(Dur)
    }
}

impl fmt::Display for Dur {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ms = self.0.as_secs_f64() * 1000.0;
        if ms >= 1000.0 { write!(f, "{}s", ms / 1000.0) } else { write!(f, "{ms}ms") }
    }
}

impl<'de> Deserialize<'de> for Dur {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(de::Error::custom)
    }
}

/// Parses a duration with a unit (`ns`, `us`, `ms`, `s`, `m`, `h`, `d`); a bare number is seconds.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let t = s.trim();
    let split = t.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let value: f64 =
        num.parse().map_err(|_| format!("'{s}' is not a duration; write it like \"1s\", \"250ms\" or \"1.5s\""))?;
    let scale = match unit.trim() {
        "ns" => 1e-9,
        "us" | "µs" => 1e-6,
        "ms" => 1e-3,
        "" | "s" => 1.0,
        "m" => 60.0,
        "h" => 3600.0,
        "d" => 86_400.0,
        other => {
            return Err(format!("'{s}' has unknown unit '{other}'; use ns, us, ms, s, m, h or d"));
        }
    };
    let secs = value * scale;
    if !secs.is_finite() || secs > 1e9 {
        return Err(format!("'{s}' is too long a duration"));
    }
    Ok(Duration::from_secs_f64(secs))
}

/// The time between two probes of a target, and between two reports: at least 10 ms (the
/// monitor's bound, checked here once for flags and files alike).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProbeInterval(pub Duration);

impl ProbeInterval {
    pub const MIN: Duration = Duration::from_millis(10);
}

impl FromStr for ProbeInterval {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let d = parse_duration(s)?;
        if d < Self::MIN {
            return Err(format!("interval {} is too short; use at least 10ms", Dur(d)));
        }
        Ok(ProbeInterval(d))
    }
}

impl fmt::Display for ProbeInterval {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        Dur(self.0).fmt(f)
    }
}

impl<'de> Deserialize<'de> for ProbeInterval {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d)?.parse().map_err(de::Error::custom)
    }
}

/// A list of ports from specs like `8001-8004`, `8001,8003` or `8001` (repeatable).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PortList(pub Vec<u16>);

impl FromStr for PortList {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let mut ports = Vec::new();
        for part in s.split(',').map(str::trim) {
            ports.extend(parse_port_range(part)?);
        }
        Ok(PortList(ports))
    }
}

impl<'de> Deserialize<'de> for PortList {
    /// Accepts `"8001-8004"`, `8001`, or an array of either.
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum One {
            Port(i64),
            Spec(String),
        }
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            One(One),
            Many(Vec<One>),
        }
        let parts = match Raw::deserialize(d)? {
            Raw::One(one) => vec![one],
            Raw::Many(many) => many,
        };
        let mut ports = Vec::new();
        for part in parts {
            let spec = match part {
                One::Port(p) => p.to_string(),
                One::Spec(s) => s,
            };
            ports.extend(spec.parse::<PortList>().map_err(de::Error::custom)?.0);
        }
        PortList::checked(ports).map_err(de::Error::custom)
    }
}

impl PortList {
    /// Rejects an empty list and repeated ports.
    pub fn checked(ports: Vec<u16>) -> Result<Self, String> {
        if ports.is_empty() {
            return Err("no ports given; write them like \"8001-8004\"".into());
        }
        let mut sorted = ports.clone();
        sorted.sort_unstable();
        if let Some(w) = sorted.windows(2).find(|w| w[0] == w[1]) {
            return Err(format!("port {} is listed twice", w[0]));
        }
        Ok(PortList(ports))
    }
}

/// `8001` or `8001-8004` (inclusive; the start must not exceed the end; port 0 is refused).
pub fn parse_port_range(s: &str) -> Result<Vec<u16>, String> {
    let port = |p: &str| -> Result<u16, String> {
        match p.trim().parse::<u16>() {
            Ok(0) | Err(_) => Err(format!("'{}' is not a port (1-65535)", p.trim())),
            Ok(n) => Ok(n),
        }
    };
    match s.split_once('-') {
        None => Ok(vec![port(s)?]),
        Some((a, b)) => {
            let (lo, hi) = (port(a)?, port(b)?);
            if lo > hi {
                return Err(format!("port range {s} runs backwards; write {hi}-{lo}"));
            }
            Ok((lo..=hi).collect())
        }
    }
}

/// A socket address written `IP:PORT` (IPv6 as `[::1]:8000`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Addr(pub SocketAddr);

impl FromStr for Addr {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let addr: SocketAddr = s
            .trim()
            .parse()
            .map_err(|_| format!("'{s}' is not an address; write IP:PORT like 127.0.0.1:8001 or [::1]:8001"))?;
        if addr.port() == 0 {
            return Err(format!("'{s}' has port 0; give a real port"));
        }
        Ok(Addr(addr))
    }
}

impl<'de> Deserialize<'de> for Addr {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d)?.parse().map_err(de::Error::custom)
    }
}

/// One backend as configured: its address and its weight (`"127.0.0.1:8001"`, or
/// `{ addr = "127.0.0.1:8001", weight = 5 }` in a file; `127.0.0.1:8001=5` on the command line).
/// The address may be a host name (`"web1.internal:8080"`), resolved when the config is read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackendSpec {
    pub addr: SocketAddr,
    /// Share of the requests relative to the others under the weighted strategies (1 to 1000).
    pub weight: u32,
    /// The `NAME:PORT` it was written as, when it was a name (resolved to `addr`).
    pub host: Option<String>,
}

impl FromStr for BackendSpec {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let (addr, weight) = match s.trim().rsplit_once('=') {
            Some((a, w)) => (a, parse_weight(w)?),
            None => (s, 1),
        };
        BackendSpec::at(addr, weight)
    }
}

impl BackendSpec {
    /// The backend written `IP:PORT`, or `NAME:PORT` resolved now.
    fn at(written: &str, weight: u32) -> Result<Self, String> {
        let written = written.trim();
        let not_ip = match written.parse::<Addr>() {
            Ok(a) => return Ok(BackendSpec { addr: a.0, weight, host: None }),
            Err(e) => e,
        };
        // Anything that is no host name keeps the message about writing IP:PORT.
        let Some((name, port)) = written.rsplit_once(':').filter(|(name, _)| is_host_name(name)) else {
            return Err(not_ip);
        };
        let port = port.parse::<u16>().ok().filter(|&p| p > 0).ok_or(format!("'{written}' has a bad port '{port}'"))?;
        let host = format!("{name}:{port}");
        // Names that resolved before in this process: a failure later (a reload) keeps the last
        // good address with a warning, as the periodic resolution does, instead of refusing the
        // whole file. At start there is none, so a name that does not resolve is an error.
        static LAST_GOOD: std::sync::Mutex<Vec<(String, SocketAddr)>> = std::sync::Mutex::new(Vec::new());
        let mut known = LAST_GOOD.lock().unwrap_or_else(|p| p.into_inner());
        let addr = match resolve_backend(name, port) {
            Ok(addr) => {
                known.retain(|(h, _)| *h != host);
                known.push((host.clone(), addr));
                addr
            }
            Err(e) => match known.iter().find(|(h, _)| *h == host) {
                Some(&(_, last)) => {
                    tracing::warn!("{e}; keeping its last address {last}");
                    last
                }
                None => return Err(e),
            },
        };
        Ok(BackendSpec { addr, weight, host: Some(host) })
    }

    /// Resolves the name it was written as again (`None` for a backend written as an address).
    pub fn resolve_again(&self) -> Option<Result<SocketAddr, String>> {
        let (name, port) = self.host.as_deref()?.rsplit_once(':')?;
        Some(port.parse().map_err(|_| format!("'{port}' is not a port")).and_then(|p| resolve_backend(name, p)))
    }
}

/// Whether `s` is written like a host name: dot-separated labels of letters, digits and `-`,
/// not all digits (so a mistyped IPv4 address is not looked up).
fn is_host_name(s: &str) -> bool {
    let labels_ok = s.split('.').all(|l| {
        !l.is_empty()
            && l.len() <= 63
            && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
            && !l.starts_with('-')
            && !l.ends_with('-')
    });
    !s.is_empty() && s.len() <= 253 && labels_ok && !s.bytes().all(|b| b.is_ascii_digit() || b == b'.')
}

/// The address of a backend's host name: its first IPv4 address, else its first IPv6 one (as
/// ping and the probes choose).
pub fn resolve_backend(name: &str, port: u16) -> Result<SocketAddr, String> {
    use std::net::ToSocketAddrs as _;
    let addrs: Vec<SocketAddr> = (name, port)
        .to_socket_addrs()
        .map_err(|e| format!("cannot resolve backend {name}: {e}; check the name, or write IP:PORT"))?
        .collect();
    addrs
        .iter()
        .find(|a| a.is_ipv4())
        .or_else(|| addrs.first())
        .copied()
        .ok_or_else(|| format!("cannot resolve backend {name}: it has no address; write IP:PORT"))
}

fn parse_weight(w: &str) -> Result<u32, String> {
    match w.trim().parse::<u32>() {
        Ok(n) if (1..=1000).contains(&n) => Ok(n),
        _ => Err(format!("weight '{w}' is not a whole number from 1 to 1000")),
    }
}

impl<'de> Deserialize<'de> for BackendSpec {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Table {
            addr: String,
            #[serde(default)]
            weight: Option<i64>,
        }
        const SHAPE: &str = "a backend is \"IP:PORT\" (or \"NAME:PORT\") or { addr = \"IP:PORT\", weight = N }";
        match toml::Value::deserialize(d)? {
            toml::Value::String(s) => s.parse().map_err(de::Error::custom),
            toml::Value::Table(t) => {
                let t: Table = toml::Value::Table(t)
                    .try_into()
                    .map_err(|e: toml::de::Error| de::Error::custom(format!("{SHAPE}: {}", e.message())))?;
                let weight = match t.weight {
                    Some(w) => parse_weight(&w.to_string()).map_err(de::Error::custom)?,
                    None => 1,
                };
                BackendSpec::at(&t.addr, weight).map_err(de::Error::custom)
            }
            other => Err(de::Error::custom(format!("{SHAPE}, not {other}"))),
        }
    }
}

/// A non-empty list of backends, in configuration order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Backends(pub Vec<BackendSpec>);

impl Backends {
    /// All with weight 1.
    pub fn of(addrs: &[SocketAddr]) -> Self {
        Backends(addrs.iter().map(|&addr| BackendSpec { addr, weight: 1, host: None }).collect())
    }

    /// The addresses, in order.
    pub fn addrs(&self) -> Vec<SocketAddr> {
        self.0.iter().map(|b| b.addr).collect()
    }

    /// The weights, in order.
    pub fn weights(&self) -> Vec<u32> {
        self.0.iter().map(|b| b.weight).collect()
    }
}

impl<'de> Deserialize<'de> for Backends {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let list = Vec::<BackendSpec>::deserialize(d)?;
        if list.is_empty() {
            return Err(de::Error::custom("at least one backend is required"));
        }
        Ok(Backends(list))
    }
}

/// A probability in [0, 1], e.g. a simulated loss rate.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Probability(pub f64);

impl FromStr for Probability {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.trim().parse::<f64>() {
            Ok(p) if (0.0..=1.0).contains(&p) => Ok(Probability(p)),
            _ => Err(format!("'{s}' is not a probability; give a number from 0 to 1, like 0.36")),
        }
    }
}

impl<'de> Deserialize<'de> for Probability {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let p = f64::deserialize(d)?;
        p.to_string().parse().map_err(de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_with_units() {
        assert_eq!(parse_duration("1s"), Ok(Duration::from_secs(1)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("1.5s"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("100us"), Ok(Duration::from_micros(100)));
        assert_eq!(parse_duration("3"), Ok(Duration::from_secs(3)));
        assert!(parse_duration("fast").unwrap_err().contains("\"250ms\""));
        assert!(parse_duration("5 parsecs").unwrap_err().contains("unknown unit"));
        assert!(parse_duration("-1s").is_err());
    }

    #[test]
    fn port_ranges_and_lists() {
        assert_eq!("8001-8004".parse::<PortList>().unwrap().0, vec![8001, 8002, 8003, 8004]);
        assert_eq!("8001,8003".parse::<PortList>().unwrap().0, vec![8001, 8003]);
        assert_eq!("9".parse::<PortList>().unwrap().0, vec![9]);
        let backwards = "8004-8001".parse::<PortList>().unwrap_err();
        assert!(backwards.contains("8004-8001") && backwards.contains("8001-8004"), "{backwards}");
        assert!("0".parse::<PortList>().is_err());
        assert!("70000".parse::<PortList>().is_err());
        assert!(PortList::checked(vec![1, 2, 1]).unwrap_err().contains("twice"));
    }

    #[test]
    fn embedded_default_is_the_classic_lab() {
        let c = Config::embedded_default();
        let http = &c.balance.http[0];
        assert_eq!(http.listen.0, "127.0.0.1:8000".parse().unwrap());
        let ports: Vec<u16> = http.backends.0.iter().map(|a| a.addr.port()).collect();
        assert_eq!(ports, vec![8001, 8002, 8003, 8004]);
        assert_eq!(c.serve.http.as_ref().unwrap().ports.0, vec![8001, 8002, 8003, 8004]);
        let udp = &c.balance.udp[0];
        assert_eq!(udp.listen.0, "127.0.0.1:8888".parse().unwrap());
        assert_eq!(udp.affinity, Affinity::None);
        assert_eq!(c.serve.udp.as_ref().unwrap().ports.0, vec![2526, 2527, 2528]);
    }

    #[test]
    fn balancer_names_are_unique_and_printable_and_backends_listed_once() {
        let two = "[[balance.http]]\nlisten = \"127.0.0.1:1\"\nbackends = [\"127.0.0.1:2\"]\n\
                   [[balance.http]]\nlisten = \"127.0.0.1:3\"\nbackends = [\"127.0.0.1:2\"]\n";
        let e = Config::parse(two, "t.toml").unwrap_err().to_string();
        assert!(e.contains("two balancers are named \"http\""), "{e}");
        let odd =
            "[[balance.udp]]\nname = \"a\\u001b]2;x\\u0007\"\nlisten = \"127.0.0.1:1\"\nbackends = [\"127.0.0.1:2\"]\n";
        let e = Config::parse(odd, "t.toml").unwrap_err().to_string();
        assert!(e.contains("printable characters"), "{e}");
        let dup = "[[balance.http]]\nlisten = \"127.0.0.1:1\"\nbackends = [\"127.0.0.1:2\", \"127.0.0.1:2\"]\n";
        let e = Config::parse(dup, "t.toml").unwrap_err().to_string();
        assert!(e.contains("backend 127.0.0.1:2 is listed twice"), "{e}");
    }

    #[test]
    fn errors_name_the_line_and_field() {
        let text = "[[balance.http]]\nlisten = \"127.0.0.1:8000\"\nbackends = []\n";
        let e = Config::parse(text, "t.toml").unwrap_err().to_string();
        assert!(e.contains("t.toml") && e.contains("line 3") && e.contains("at least one backend"), "{e}");

        let text = "[[balance.udp]]\nlisten = \"127.0.0.1:8888\"\nbackends = [\"127.0.0.1:1\"]\nafinity = \"client\"\n";
        let e = Config::parse(text, "t.toml").unwrap_err().to_string();
        assert!(e.contains("line 4") && e.contains("afinity"), "{e}");

        let text = "[[balance.http]]\nlisten = \"localhost\"\nbackends = [\"127.0.0.1:1\"]\n";
        let e = Config::parse(text, "t.toml").unwrap_err().to_string();
        assert!(e.contains("line 2") && e.contains("IP:PORT"), "{e}");

        let text = "[[balance.http]]\nlisten = \"127.0.0.1:80\"\nbackends = [\"127.0.0.1:1\"]\ntimeout = \"soon\"\n";
        let e = Config::parse(text, "t.toml").unwrap_err().to_string();
        assert!(e.contains("line 4") && e.contains("duration"), "{e}");

        let text = "[serve.udp]\nports = \"2528-2526\"\n";
        let e = Config::parse(text, "t.toml").unwrap_err().to_string();
        assert!(e.contains("line 2") && e.contains("backwards"), "{e}");

        let text = "[serve.udp]\nports = 2526\nloss = 1.5\n";
        let e = Config::parse(text, "t.toml").unwrap_err().to_string();
        assert!(e.contains("line 3") && e.contains("probability"), "{e}");
    }

    #[test]
    fn monitor_section_is_checked() {
        let e = Config::parse("[monitor]\ninterval = \"1ms\"\n", "t.toml").unwrap_err().to_string();
        assert!(e.contains("at least 10ms"), "{e}");
        let c = Config::parse("[monitor]\nhealth = false\n", "t.toml").unwrap();
        assert!(!c.monitor.unwrap().health);
        assert!(Config::embedded_default().monitor.unwrap().health, "probes drive the rotation by default");
        let e = Config::parse("[monitor]\ntargets = [\"ftp://x\"]\n", "t.toml").unwrap_err().to_string();
        assert!(e.contains("line 2") && e.contains("unknown scheme"), "{e}");
    }

    #[test]
    fn history_is_on_by_default_and_its_retention_is_checked() {
        use crate::history::Destination;
        let h = Config::embedded_default().history;
        assert!(h.enabled && h.path.is_none());
        assert_eq!((h.keep_raw.0, h.keep_hours.0), (Duration::from_secs(48 * 3600), Duration::from_secs(365 * 86_400)));
        for (text, says) in [
            ("keep_raw = \"10s\"", "keep_raw"),
            ("keep_minutes = \"1h\"", "keep_minutes"),
            ("keep_hours = \"7d\"", "keep_hours"),
            ("path = \"\"", "path is empty"),
            ("keep = \"1d\"", "unknown field"),
        ] {
            let e = Config::parse(&format!("[history]\n{text}\n"), "t.toml").unwrap_err().to_string();
            assert!(e.contains(says), "{text}: {e}");
        }
        let c = Config::parse("[history]\nkeep_raw = \"1h\"\nkeep_minutes = \"2d\"\nkeep_hours = \"30d\"\n", "t.toml")
            .unwrap();
        let file = std::path::Path::new("/x/h.db");
        let Some(Destination::File(path, keep)) = c.history.destination(Some(file), false) else { panic!() };
        assert_eq!(
            (path.as_path(), keep.raw, keep.minutes),
            (file, Duration::from_secs(3600), Duration::from_secs(172_800))
        );
        assert_eq!(c.history.destination(Some(file), true), Some(Destination::Off), "--no-history wins");
        let off = Config::parse("[history]\nenabled = false\n", "t.toml").unwrap();
        assert_eq!(off.history.destination(None, false), Some(Destination::Off));
    }

    #[test]
    fn strategies_and_hash_keys_are_checked_and_affinity_client_is_hash_on_the_source() {
        let http = |extra: &str| {
            Config::parse(
                &format!("[[balance.http]]\nlisten = \"127.0.0.1:1\"\nbackends = [\"127.0.0.1:2\"]\n{extra}"),
                "t.toml",
            )
        };
        let udp = |extra: &str| {
            Config::parse(
                &format!("[[balance.udp]]\nlisten = \"127.0.0.1:1\"\nbackends = [\"127.0.0.1:2\"]\n{extra}"),
                "t.toml",
            )
        };
        assert_eq!(http("").unwrap().balance.http[0].strategy, Strategy::RoundRobin);
        let c = http("strategy = \"least-connections\"").unwrap();
        assert_eq!(c.balance.http[0].strategy_name(), "least-connections");
        let c = http("strategy = \"hash\"\nhash_key = \"header:X-User\"").unwrap();
        assert_eq!(c.balance.http[0].hash_key(), HashKey::Header("X-User".into()));
        assert_eq!(c.balance.http[0].strategy_name(), "hash (header:X-User)");
        assert_eq!(http("strategy = \"hash\"").unwrap().balance.http[0].strategy_name(), "hash (client-ip)");
        for (text, says) in [
            ("strategy = \"fastest\"", "unknown variant `fastest`"),
            ("strategy = \"hash\"\nhash_key = \"header:\"", "header:NAME"),
            ("strategy = \"hash\"\nhash_key = \"header:X User\"", "header:NAME"),
            ("strategy = \"hash\"\nhash_key = \"source\"", "for UDP balancers"),
            ("hash_key = \"client-ip\"", "hash_key applies to strategy = \"hash\""),
        ] {
            let e = http(text).unwrap_err().to_string();
            assert!(e.contains(says), "{text}: {e}");
        }
        let c = udp("affinity = \"client\"").unwrap();
        assert_eq!((c.balance.udp[0].strategy, c.balance.udp[0].hash_key()), (Strategy::Hash, HashKey::Source));
        let c = udp("strategy = \"hash\"\nhash_key = \"client-ip\"").unwrap();
        assert_eq!(c.balance.udp[0].strategy_name(), "hash (client-ip)");
        assert_eq!(udp("strategy = \"p2c\"").unwrap().balance.udp[0].strategy, Strategy::P2c);
        for (text, says) in [
            ("affinity = \"client\"\nstrategy = \"weighted\"", "cannot go with strategy = \"weighted\""),
            ("strategy = \"hash\"\nhash_key = \"header:X-User\"", "no headers"),
        ] {
            let e = udp(text).unwrap_err().to_string();
            assert!(e.contains(says), "{text}: {e}");
        }
    }

    #[test]
    fn a_backend_may_be_a_host_name_resolved_when_read() {
        let text = "[[balance.http]]\nlisten = \"127.0.0.1:1\"\nbackends = [\"localhost:8001\", \
                    { addr = \"127.0.0.1:8002\", weight = 2 }]\n";
        let c = Config::parse(text, "t.toml").unwrap();
        let b = &c.balance.http[0].backends.0;
        assert_eq!(b[0].addr, "127.0.0.1:8001".parse().unwrap());
        assert_eq!(b[0].host.as_deref(), Some("localhost:8001"));
        assert_eq!(b[1].host, None);
        assert_eq!(b[0].resolve_again(), Some(Ok("127.0.0.1:8001".parse().unwrap())));
        assert_eq!(b[1].resolve_again(), None);
        assert_eq!("localhost:8003=4".parse::<BackendSpec>().unwrap().weight, 4);
        // Not names: a mistyped address keeps the IP:PORT advice; a bad port says so.
        assert!("127.0.0.300:80".parse::<BackendSpec>().unwrap_err().contains("IP:PORT"));
        assert!("localhost:http".parse::<BackendSpec>().unwrap_err().contains("bad port"));
        assert!("web_1:80".parse::<BackendSpec>().unwrap_err().contains("IP:PORT"));
    }

    #[test]
    fn two_listeners_on_one_address_are_refused() {
        let text = "[serve.http]\nports = \"8001-8002\"\n[[balance.http]]\nlisten = \"127.0.0.1:8002\"\nbackends = [\"127.0.0.1:8001\"]\n";
        let e = Config::parse(text, "t.toml").unwrap_err().to_string();
        assert!(e.contains("127.0.0.1:8002") && e.contains("both listen"), "{e}");
    }
}
