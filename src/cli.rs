//! Command-line definitions: raw input, parsed by clap. Values that have a shape (durations,
//! port ranges, addresses, the probe interval) are parsed here with the same types the config
//! file uses, so they are checked once; each flag set becomes config through one `From` or
//! `TryFrom` at the bottom of this file.

use std::net::IpAddr;
use std::path::PathBuf;

use clap::builder::TypedValueParser as _;
use clap::{Args, Parser, Subcommand};

use crate::config::{
    self, Addr, Affinity, BackendSpec, Backends, CheckKind, Dur, HashKey, HealthCheckConfig, HttpBalancerConfig,
    PortList, Probability, ProbeInterval, ServeHttpConfig, ServeUdpConfig, StatusSpec, Strategy, UdpBalancerConfig,
};

/// The environment variables netpulse reads, for `--help`.
const ENVIRONMENT: &str = "Environment:
  RUST_LOG=warn           diagnostics on stderr at this level and above (default: info)
  NO_COLOR=1              no colours in the terminal dashboard
  NETPULSE_IO_URING=off   every balancer write a system call of its own, not batched through
                          io_uring (default: on where the kernel's io_uring can send)
  XDG_DATA_HOME=DIR       where history and the rotation are kept (default: ~/.local/share)";

/// Monitor network performance and load-balance HTTP and UDP, in one binary.
#[derive(Debug, Parser)]
#[command(name = "netpulse", version, propagate_version = true, after_help = ENVIRONMENT)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Start everything from one config (with no file: the classic lab on 127.0.0.1)
    #[command(after_help = ENVIRONMENT)]
    Up(UpArgs),
    /// Run mock backends: HTTP servers that name their port, or classic UDP ping servers
    #[command(subcommand)]
    Serve(ServeCommand),
    /// Run a balancer from flags, or the balancers of a config file
    #[command(after_help = ENVIRONMENT)]
    Balance(BalanceArgs),
    /// Ping a classic UDP ping server (or a balancer in front of some)
    UdpPing(UdpPingArgs),
    /// ICMP echo to a host, like ping (or time TCP connects with --tcp PORT)
    Ping(PingArgs),
    /// Live view of interfaces and targets (HOST, tcp://H:P, udp://H:P, http://H[:P]/PATH)
    Monitor(MonitorArgs),
    /// One-shot connectivity verdict: exit 0 connected, 1 degraded, 2 disconnected
    Status(StatusArgs),
    /// What happened while you were away: uptime, loss, RTT percentiles, outages, events
    History(HistoryArgs),
    /// Make a running `up` read its config again (as SIGHUP does), over its admin API
    Reload(ControlArgs),
    /// Drain, disable or enable a backend of a running `up`, or set its weight
    #[command(subcommand)]
    Backend(BackendCommand),
}

/// Where the running `up` is asked: its admin API, on the metrics address.
#[derive(Debug, Args)]
pub struct ControlArgs {
    /// The metrics address of the running `up` (default: [monitor] metrics of --config, else
    /// the embedded default's)
    #[arg(long, value_name = "ADDR")]
    pub metrics: Option<Addr>,
    /// The config the running `up` was started with, to find its metrics address
    #[arg(long, short = 'c', value_name = "FILE")]
    pub config: Option<PathBuf>,
}

#[derive(Debug, Subcommand)]
pub enum BackendCommand {
    /// Take no new requests, clients or flows; those under way finish
    Drain(BackendTarget),
    /// Take nothing (out of rotation until enabled)
    Disable(BackendTarget),
    /// Take requests again, as its health allows
    Enable(BackendTarget),
    /// Set its weight (1 to 1000), used by the weighted strategies
    Weight(BackendWeight),
}

#[derive(Debug, Args)]
pub struct BackendTarget {
    /// The balancer's name (`name =` in the config; "http" or "udp" by default)
    pub balancer: String,
    /// The backend: IP:PORT, or NAME:PORT as configured
    pub backend: String,
    #[command(flatten)]
    pub at: ControlArgs,
}

#[derive(Debug, Args)]
pub struct BackendWeight {
    /// The balancer's name
    pub balancer: String,
    /// The backend: IP:PORT, or NAME:PORT as configured
    pub backend: String,
    /// The new weight, 1 to 1000
    #[arg(value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub weight: u32,
    #[command(flatten)]
    pub at: ControlArgs,
}

/// Where `up` and `monitor` record their history.
#[derive(Debug, Args)]
pub struct HistoryFlags {
    /// Record history into this SQLite file (default: [history] path, else
    /// $XDG_DATA_HOME/netpulse/history.db)
    #[arg(long, value_name = "FILE")]
    pub history: Option<PathBuf>,
    /// Record no history
    #[arg(long, conflicts_with = "history")]
    pub no_history: bool,
}

#[derive(Debug, Args)]
pub struct HistoryArgs {
    /// Targets as the monitor names them, e.g. udp://127.0.0.1:2526 (default: every target recorded in the range)
    pub targets: Vec<String>,
    /// Start of the range: a duration ago (24h, 90m, 7d, 2w, 1y), a local time ("2026-11-22 03:00") or
    /// RFC 3339 (2026-11-22T03:00:00Z)
    #[arg(long, default_value = "24h", value_name = "TIME")]
    pub since: crate::history::TimeSpec,
    /// End of the range, written as --since is (default: now)
    #[arg(long, value_name = "TIME")]
    pub until: Option<crate::history::TimeSpec>,
    /// Step of the series (json, csv, --plot), on whole multiples of it (1m: whole minutes, UTC);
    /// default: one that fits the range
    #[arg(long, value_name = "DUR")]
    pub step: Option<Dur>,
    /// table (per target: summary and outages), json (with the series) or csv (the series)
    #[arg(long, value_enum, default_value = "table")]
    pub format: HistoryFormat,
    /// List the events too: targets down and up, backends out and in, links, verdicts, starts and stops
    #[arg(long)]
    pub events: bool,
    /// Draw each target's median RTT and its loss in the terminal
    #[arg(long)]
    pub plot: bool,
    /// List outages at least this long (shorter ones, a lost probe or two, are only counted)
    #[arg(long, default_value = "3s", value_name = "DUR")]
    pub min_outage: Dur,
    /// The history file (default: $XDG_DATA_HOME/netpulse/history.db)
    #[arg(long, value_name = "FILE")]
    pub history: Option<PathBuf>,
}

/// How `netpulse history` prints.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum HistoryFormat {
    Table,
    Json,
    Csv,
}

#[derive(Debug, Args)]
pub struct StatusArgs {
    /// Targets that must be reachable (default: public resolvers on TCP 53/443); repeatable
    #[arg(long = "target", short = 't', value_name = "TARGET")]
    pub targets: Vec<String>,
    /// Name to resolve for the DNS check
    #[arg(long, default_value = crate::monitor::status::DEFAULT_NAME, value_name = "NAME")]
    pub resolve: String,
    /// Time allowed for each check
    #[arg(long, default_value = "2s", value_name = "DUR")]
    pub timeout: Dur,
}

#[derive(Debug, Args)]
pub struct MonitorArgs {
    /// Targets: HOST (ICMP), tcp://HOST:PORT, udp://HOST:PORT (classic UDP ping), http://HOST[:PORT]/PATH
    pub targets: Vec<String>,
    /// Time between probes of a target, and between reports (at least 10ms)
    #[arg(long, default_value = "1s", value_name = "DUR")]
    pub interval: ProbeInterval,
    /// Time to wait for each reply (default: the interval, at most 1s)
    #[arg(long, value_name = "DUR")]
    pub timeout: Option<Dur>,
    /// Print one report and exit
    #[arg(long, conflicts_with = "count")]
    pub once: bool,
    /// Print this many reports and exit
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    pub count: Option<u64>,
    /// table (refreshing on a terminal) or json (one object per line)
    #[arg(long, value_enum, default_value = "table")]
    pub format: crate::dashboard::print::Format,
    /// Serve Prometheus metrics on this address (e.g. 127.0.0.1:9100), at /metrics
    #[arg(long, value_name = "ADDR")]
    pub metrics: Option<Addr>,
    /// Serve the web dashboard (/), the JSON API (/api/v1/) and /metrics on this address
    #[arg(long, value_name = "ADDR", conflicts_with = "metrics")]
    pub web: Option<Addr>,
    /// Samples per target that loss, RTT, jitter and percentiles cover
    #[arg(long, default_value_t = 100, value_name = "N",
          value_parser = clap::value_parser!(u32).range(1..=100_000).map(|n| n as usize))]
    pub window: usize,
    #[command(flatten)]
    pub dashboard: DashboardArgs,
    #[command(flatten)]
    pub record: HistoryFlags,
}

/// The terminal dashboard's flags (`up`, `monitor`).
#[derive(Debug, Args)]
pub struct DashboardArgs {
    /// Print lines instead of drawing the dashboard, even on a terminal
    #[arg(long)]
    pub no_tui: bool,
    /// Show only this interface in the dashboard (repeatable; default: all)
    #[arg(long = "iface", value_name = "NAME")]
    pub ifaces: Vec<String>,
}

#[derive(Debug, Args)]
pub struct PingArgs {
    /// Host name or IP (IPv4 or IPv6)
    pub host: String,
    /// Stop after this many probes (default: until Ctrl-C)
    #[arg(short = 'c', long, value_parser = clap::value_parser!(u64).range(1..))]
    pub count: Option<u64>,
    /// Seconds between probes
    #[arg(short = 'i', long, default_value = "1", value_name = "SECS")]
    pub interval: Dur,
    /// Seconds to wait for each reply
    #[arg(short = 'W', long, default_value = "2", value_name = "SECS")]
    pub timeout: Dur,
    /// Payload bytes per echo request
    #[arg(short = 's', long, default_value_t = 56, value_name = "BYTES",
          value_parser = clap::value_parser!(u32).range(0..=(crate::probe::icmp::MAX_PAYLOAD as i64)).map(|n| n as usize))]
    pub size: usize,
    /// Only the summary
    #[arg(short = 'q', long)]
    pub quiet: bool,
    /// Time TCP connects to this port instead of ICMP echo
    #[arg(long, value_name = "PORT", value_parser = clap::value_parser!(u16).range(1..))]
    pub tcp: Option<u16>,
}

#[derive(Debug, Args)]
pub struct UpArgs {
    /// TOML config; see examples/netpulse.toml (omit for the embedded default)
    #[arg(long, short = 'c', value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// No access-log lines
    #[arg(long, short = 'q')]
    pub quiet: bool,
    #[command(flatten)]
    pub dashboard: DashboardArgs,
    #[command(flatten)]
    pub record: HistoryFlags,
}

#[derive(Debug, Subcommand)]
pub enum ServeCommand {
    /// HTTP/1.1 backends answering "Handled by server on port N"
    Http(ServeHttpArgs),
    /// UDP ping servers replying with the datagram upper-cased
    Udp(ServeUdpArgs),
    /// ICMP echo responder with injected delay and loss (switch the kernel's echo off first)
    Icmp(ServeIcmpArgs),
}

#[derive(Debug, Args)]
pub struct ServeIcmpArgs {
    /// Delay before each reply
    #[arg(long, default_value = "0ms", value_name = "DUR")]
    pub delay: Dur,
    /// Probability of not answering, from 0 to 1
    #[arg(long, default_value = "0", value_name = "P")]
    pub loss: Probability,
    /// Seed for the simulated loss
    #[arg(long, value_name = "N")]
    pub seed: Option<u64>,
    /// No line per echo request
    #[arg(long, short = 'q')]
    pub quiet: bool,
}

#[derive(Debug, Args)]
pub struct ServeHttpArgs {
    /// Ports: a range (8001-8004), a list (8001,8003) or repeated
    #[arg(long = "ports", visible_alias = "port", short = 'p', required = true, value_name = "PORTS")]
    pub ports: Vec<PortList>,
    /// Address to listen on
    #[arg(long, default_value = "127.0.0.1")]
    pub bind: IpAddr,
    /// No line per request
    #[arg(long, short = 'q')]
    pub quiet: bool,
}

#[derive(Debug, Args)]
pub struct ServeUdpArgs {
    /// Ports: a range (2526-2528), a list (2526,2528) or repeated
    #[arg(long = "ports", visible_alias = "port", short = 'p', required = true, value_name = "PORTS")]
    pub ports: Vec<PortList>,
    /// Address to listen on
    #[arg(long, default_value = "127.0.0.1")]
    pub bind: IpAddr,
    /// Probability of dropping a request, from 0 to 1 (the classic lab: 0.36)
    #[arg(long, default_value = "0", value_name = "P")]
    pub loss: Probability,
    /// Seed for the simulated loss, to make it reproducible
    #[arg(long, value_name = "N")]
    pub seed: Option<u64>,
    /// Delay before each reply (a slow server or a long path)
    #[arg(long, default_value = "0ms", value_name = "DUR")]
    pub delay: Dur,
    /// No line per datagram
    #[arg(long, short = 'q')]
    pub quiet: bool,
}

#[derive(Debug, Args)]
#[command(args_conflicts_with_subcommands = true, subcommand_negates_reqs = true)]
pub struct BalanceArgs {
    /// Run the balancers of this config file (its [serve] section is ignored)
    #[arg(long, short = 'c', value_name = "FILE", required = true)]
    pub config: Option<PathBuf>,
    /// No access-log lines
    #[arg(long, short = 'q')]
    pub quiet: bool,
    #[command(subcommand)]
    pub kind: Option<BalanceKind>,
}

#[derive(Debug, Subcommand)]
pub enum BalanceKind {
    /// HTTP/1.1 reverse proxy
    #[command(after_help = ENVIRONMENT)]
    Http(BalanceHttpArgs),
    /// UDP datagram balancer
    #[command(after_help = ENVIRONMENT)]
    Udp(BalanceUdpArgs),
}

#[derive(Debug, Args)]
pub struct BalanceHttpArgs {
    /// Address to listen on, e.g. 127.0.0.1:8000
    #[arg(long, short = 'l', value_name = "ADDR")]
    pub listen: Addr,
    /// Backend address, with an optional weight (ADDR=5); repeat it or separate with commas
    #[arg(long = "backend", short = 'b', required = true, value_delimiter = ',', value_name = "ADDR[=WEIGHT]")]
    pub backends: Vec<BackendSpec>,
    /// How each request's backend is chosen
    #[arg(long, value_enum, default_value = "round-robin", value_name = "STRATEGY")]
    pub strategy: Strategy,
    /// What --strategy hash hashes: client-ip (default) or header:NAME
    #[arg(long, value_name = "KEY")]
    pub hash_key: Option<HashKey>,
    /// Time to connect to a backend before answering 504
    #[arg(long, default_value_t = config::default_connect_timeout(), value_name = "DUR")]
    pub connect_timeout: Dur,
    /// Time for a backend to start its response before answering 504
    #[arg(long, default_value_t = config::default_http_timeout(), value_name = "DUR")]
    pub timeout: Dur,
    /// Time for a client's whole request head to arrive before answering 408
    #[arg(long, default_value_t = config::default_head_timeout(), value_name = "DUR")]
    pub head_timeout: Dur,
    /// Client connections served at once (split between the workers)
    #[arg(long, default_value_t = config::default_max_connections(), value_name = "N",
          value_parser = clap::value_parser!(u32).range(1..).map(|n| n as usize))]
    pub max_connections: usize,
    /// Other backends a failed request may be retried on (when nothing was sent, or the request
    /// is idempotent and its body in hand)
    #[arg(long, default_value_t = config::default_retries(), value_name = "N",
          value_parser = clap::value_parser!(u32).range(0..=16))]
    pub retries: u32,
    /// Failures in a row that eject a backend for a while (0: never)
    #[arg(long, default_value_t = config::default_eject_after(), value_name = "N")]
    pub eject_after: u32,
    /// How long a first ejection lasts (each one in a row lasts longer, up to 5m)
    #[arg(long, default_value_t = config::default_eject_for(), value_name = "DUR")]
    pub eject_for: Dur,
    /// Worker threads (default: one per core)
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u16).range(1..).map(usize::from))]
    pub workers: Option<usize>,
    /// No access-log lines
    #[arg(long, short = 'q')]
    pub quiet: bool,
    /// Health check: http (GET --check-path), tcp (connect) or none
    #[arg(long, value_enum, default_value = "http", value_name = "KIND")]
    pub check: CheckKind,
    /// Path an HTTP health check requests
    #[arg(long, default_value = "/", value_name = "PATH")]
    pub check_path: String,
    /// Statuses that pass an HTTP health check
    #[arg(long, default_value = "200-399", value_name = "RANGE")]
    pub check_status: crate::probe::StatusRange,
    #[command(flatten)]
    pub health: HealthArgs,
}

/// Timing of active health checks, shared by both balancers.
#[derive(Debug, Args)]
pub struct HealthArgs {
    /// Time between health checks of a backend (at least 10ms)
    #[arg(long, default_value = "1s", value_name = "DUR")]
    pub check_interval: ProbeInterval,
    /// Time a health check may take (at most the interval)
    #[arg(long, default_value = "1s", value_name = "DUR")]
    pub check_timeout: Dur,
    /// Failed checks in a row that take a backend out of rotation
    #[arg(long, default_value_t = 3, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    pub fall: u32,
    /// Good checks in a row that bring it back
    #[arg(long, default_value_t = 2, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    pub rise: u32,
}

#[derive(Debug, Args)]
pub struct BalanceUdpArgs {
    /// Address to listen on, e.g. 127.0.0.1:8888
    #[arg(long, short = 'l', value_name = "ADDR")]
    pub listen: Addr,
    /// Backend address, with an optional weight (ADDR=5); repeat it or separate with commas
    #[arg(long = "backend", short = 'b', required = true, value_delimiter = ',', value_name = "ADDR[=WEIGHT]")]
    pub backends: Vec<BackendSpec>,
    /// How each datagram's backend is chosen
    #[arg(long, value_enum, default_value = "round-robin", value_name = "STRATEGY")]
    pub strategy: Strategy,
    /// What --strategy hash hashes: source (client IP and port, default) or client-ip
    #[arg(long, value_name = "KEY")]
    pub hash_key: Option<HashKey>,
    /// client: the same as --strategy hash (pins each client address to one backend)
    #[arg(long, value_enum, default_value = "none")]
    pub affinity: Affinity,
    /// Client flows held at once (least recently used one evicted)
    #[arg(long, default_value_t = config::default_max_flows(), value_name = "N",
          value_parser = clap::value_parser!(u32).range(1..).map(|n| n as usize))]
    pub max_flows: usize,
    /// A flow idle this long is closed
    #[arg(long, default_value_t = config::default_flow_idle(), value_name = "DUR")]
    pub flow_idle_timeout: Dur,
    /// Worker threads (default: one per core)
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u16).range(1..).map(usize::from))]
    pub workers: Option<usize>,
    /// No access-log lines
    #[arg(long, short = 'q')]
    pub quiet: bool,
    /// Health check: ping (the classic UDP ping, or --check-send) or none
    #[arg(long, value_enum, default_value = "ping", value_name = "KIND")]
    pub check: CheckKind,
    /// Send these bytes as the health check instead of the classic ping...
    #[arg(long, value_name = "TEXT")]
    pub check_send: Option<String>,
    /// ...and pass when the reply starts with these (default: any reply)
    #[arg(long, default_value = "", value_name = "TEXT", requires = "check_send")]
    pub check_expect: String,
    #[command(flatten)]
    pub health: HealthArgs,
}

#[derive(Debug, Args)]
pub struct UdpPingArgs {
    /// Server or balancer host name or IP
    pub host: String,
    /// Its UDP port
    #[arg(value_parser = clap::value_parser!(u16).range(1..))]
    pub port: u16,
    /// Pings to send
    #[arg(short = 'c', long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..))]
    pub count: u64,
    /// Time to wait for each reply (e.g. 1s, 250ms)
    #[arg(short = 'W', long, default_value = "1s", value_name = "DUR")]
    pub timeout: Dur,
    /// Least time between sends in seconds (default: next ping once the last is answered or timed out)
    #[arg(short = 'i', long, default_value = "0", value_name = "SECS")]
    pub interval: Dur,
}

/// Joins repeated `--ports` values into one checked list.
fn joined(lists: Vec<PortList>) -> Result<PortList, String> {
    PortList::checked(lists.into_iter().flat_map(|l| l.0).collect())
}

impl TryFrom<ServeHttpArgs> for ServeHttpConfig {
    type Error = String;
    fn try_from(a: ServeHttpArgs) -> Result<Self, String> {
        Ok(ServeHttpConfig { bind: a.bind, ports: joined(a.ports)? })
    }
}

impl TryFrom<ServeUdpArgs> for ServeUdpConfig {
    type Error = String;
    fn try_from(a: ServeUdpArgs) -> Result<Self, String> {
        Ok(ServeUdpConfig { bind: a.bind, ports: joined(a.ports)?, loss: a.loss, seed: a.seed, delay: a.delay })
    }
}

impl From<BalanceHttpArgs> for HttpBalancerConfig {
    fn from(a: BalanceHttpArgs) -> Self {
        HttpBalancerConfig {
            name: "http".into(),
            listen: a.listen,
            backends: Backends(a.backends.clone()),
            strategy: a.strategy,
            hash_key: a.hash_key,
            connect_timeout: a.connect_timeout,
            timeout: a.timeout,
            head_timeout: a.head_timeout,
            max_connections: a.max_connections,
            pool_max_idle: config::default_pool_idle(),
            retries: a.retries,
            eject_after: a.eject_after,
            eject_for: a.eject_for,
            health: HealthCheckConfig {
                check: Some(a.check),
                path: a.check_path,
                status: StatusSpec(a.check_status),
                ..a.health.into()
            },
            workers: a.workers,
            access_log: !a.quiet,
        }
    }
}

impl From<HealthArgs> for HealthCheckConfig {
    fn from(a: HealthArgs) -> Self {
        HealthCheckConfig {
            interval: a.check_interval,
            timeout: a.check_timeout,
            fall: a.fall,
            rise: a.rise,
            ..HealthCheckConfig::default()
        }
    }
}

impl From<BalanceUdpArgs> for UdpBalancerConfig {
    fn from(a: BalanceUdpArgs) -> Self {
        let mut config = UdpBalancerConfig {
            name: "udp".into(),
            listen: a.listen,
            backends: Backends(a.backends.clone()),
            strategy: a.strategy,
            hash_key: a.hash_key,
            affinity: a.affinity,
            max_flows: a.max_flows,
            flow_idle_timeout: a.flow_idle_timeout,
            workers: a.workers,
            access_log: !a.quiet,
            health: HealthCheckConfig {
                check: Some(a.check),
                send: a.check_send,
                expect: a.check_expect,
                ..a.health.into()
            },
        };
        config.resolve_affinity();
        config
    }
}

impl TryFrom<&MonitorArgs> for crate::monitor::engine::MonitorPlan {
    type Error = String;
    fn try_from(a: &MonitorArgs) -> Result<Self, String> {
        let mut targets = Vec::new();
        let mut seen = std::collections::HashSet::new();
        for t in &a.targets {
            let target: crate::probe::Target = t.parse()?;
            if !seen.insert(target.identity()) {
                return Err(format!("target {t} is listed twice (or is an address already listed)"));
            }
            targets.push(target);
        }
        let interval = a.interval.0;
        Ok(Self {
            targets,
            interval,
            timeout: a.timeout.map_or(interval.min(std::time::Duration::from_secs(1)), |d| d.0),
            count: if a.once { Some(1) } else { a.count },
            window: a.window,
            sources: crate::probe::ProbeSources::default(),
        })
    }
}

impl TryFrom<&PingArgs> for crate::monitor::ping::PingOptions {
    type Error = String;
    /// Resolves the host (IPv4 preferred, as ping does).
    fn try_from(a: &PingArgs) -> Result<Self, String> {
        if a.interval.0 < std::time::Duration::from_millis(1) {
            return Err(format!("interval {} is too short; use at least 1ms", a.interval));
        }
        let ip = crate::probe::resolve(&a.host, 0).map_err(|e| e.to_string())?.ip();
        Ok(Self {
            host: a.host.clone(),
            ip,
            count: a.count,
            interval: a.interval.0,
            timeout: a.timeout.0,
            size: a.size,
            quiet: a.quiet,
            tcp_port: a.tcp,
        })
    }
}

impl TryFrom<StatusArgs> for crate::monitor::status::StatusPlan {
    type Error = String;
    /// With no `--target`, the public resolvers of [`crate::monitor::status::DEFAULT_TARGETS`].
    fn try_from(a: StatusArgs) -> Result<Self, String> {
        let given: Vec<&str> = if a.targets.is_empty() {
            crate::monitor::status::DEFAULT_TARGETS.to_vec()
        } else {
            a.targets.iter().map(String::as_str).collect()
        };
        let targets = given.iter().map(|t| t.parse()).collect::<Result<Vec<_>, _>>()?;
        Ok(Self { targets, resolve: a.resolve, timeout: a.timeout.0 })
    }
}
