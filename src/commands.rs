//! Runs a parsed command line: every long-running command becomes a [`Config`] and goes through
//! one start-up path, so `up`, `serve` and `balance` bind, report and stop the same way.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::cli::{BalanceArgs, BalanceKind, Cli, Command, ServeCommand, UdpPingArgs};
use crate::config::{
    Backends, BalanceConfig, Config, ConfigError, HttpBalancerConfig, PortList, ServeConfig, ServeHttpConfig,
    ServeUdpConfig, UdpBalancerConfig,
};
use crate::log::Log;
use crate::net::DRAIN_TIMEOUT;
use crate::proxy::http::HttpBalancer;
use crate::proxy::udp::UdpBalancer;
use crate::serve::http::HttpServers;
use crate::serve::ping::{self, PingPlan};
use crate::serve::udp::UdpServers;

/// Bad usage that clap could not see, or a command that cannot run at all (exit code 2, like
/// a bad flag).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct UsageError(String);

/// Runs the command and maps the outcome to an exit code: 0 success, 1 failure, 2 bad usage.
pub fn run(cli: Cli) -> ExitCode {
    match dispatch(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("netpulse: {e:#}");
            let usage = e.downcast_ref::<ConfigError>().is_some() || e.downcast_ref::<UsageError>().is_some();
            ExitCode::from(if usage { 2 } else { 1 })
        }
    }
}

fn dispatch(cli: Cli) -> Result<ExitCode> {
    match cli.command {
        Command::Up(args) => {
            let config = match &args.config {
                Some(path) => Config::load(path)?,
                None => Config::embedded_default(),
            };
            start(config, log(args.quiet))
        }
        Command::Serve(ServeCommand::Http(a)) => {
            let serve = ServeConfig { http: Some(ServeHttpConfig { bind: a.bind, ports: ports(a.ports)? }), udp: None };
            start(Config { serve, ..Config::default() }, log(a.quiet))
        }
        Command::Serve(ServeCommand::Udp(a)) => {
            let udp =
                ServeUdpConfig { bind: a.bind, ports: ports(a.ports)?, loss: a.loss, seed: a.seed, delay: a.delay };
            let serve = ServeConfig { http: None, udp: Some(udp) };
            start(Config { serve, ..Config::default() }, log(a.quiet))
        }
        Command::Serve(ServeCommand::Icmp(a)) => serve_icmp(&a),
        Command::Balance(args) => balance(args),
        Command::UdpPing(args) => udp_ping(&args),
        Command::Ping(args) => ping(&args),
        Command::Monitor(args) => monitor(args),
        Command::Status(args) => status(args),
    }
}

fn log(quiet: bool) -> Log {
    if quiet { Log::disabled() } else { Log::stdout() }
}

/// Joins repeated `--ports` values into one checked list.
fn ports(lists: Vec<PortList>) -> Result<PortList> {
    PortList::checked(lists.into_iter().flat_map(|l| l.0).collect()).map_err(|e| UsageError(e).into())
}

fn balance(args: BalanceArgs) -> Result<ExitCode> {
    let (balance, quiet) = match args.kind {
        None => {
            let path = args.config.context("give --config FILE, or `balance http` / `balance udp` with flags")?;
            let config = Config::load(&path)?;
            if config.balance.http.is_empty() && config.balance.udp.is_empty() {
                return Err(
                    UsageError(format!("{} has no [[balance.http]] or [[balance.udp]] table", path.display())).into()
                );
            }
            (config.balance, args.quiet)
        }
        Some(BalanceKind::Http(a)) => {
            let http = HttpBalancerConfig {
                name: "http".into(),
                listen: a.listen,
                backends: Backends(a.backends.iter().map(|b| b.0).collect()),
                connect_timeout: a.connect_timeout,
                timeout: a.timeout,
                max_connections: a.max_connections,
                pool_max_idle: crate::config::default_pool_idle(),
                workers: a.workers,
                access_log: true,
            };
            (BalanceConfig { http: vec![http], udp: vec![] }, a.quiet)
        }
        Some(BalanceKind::Udp(a)) => {
            let udp = UdpBalancerConfig {
                name: "udp".into(),
                listen: a.listen,
                backends: Backends(a.backends.iter().map(|b| b.0).collect()),
                affinity: a.affinity,
                max_flows: a.max_flows,
                flow_idle_timeout: a.flow_idle_timeout,
                workers: a.workers,
                access_log: true,
            };
            (BalanceConfig { http: vec![], udp: vec![udp] }, a.quiet)
        }
    };
    let config = Config { serve: ServeConfig::default(), balance, monitor: None };
    // Flag-built configs get the same cross-table checks as files.
    config.validate("flags")?;
    start(config, log(quiet))
}

fn udp_ping(args: &UdpPingArgs) -> Result<ExitCode> {
    let target = resolve(&args.host, args.port)?;
    let label = format!("{}:{}", args.host, args.port);
    let plan = PingPlan { target, label, count: args.count, timeout: args.timeout.0, interval: args.interval.0 };
    let summary = ping::run(&plan, &mut std::io::stdout().lock()).context("udp-ping")?;
    Ok(if summary.received > 0 { ExitCode::SUCCESS } else { ExitCode::from(1) })
}

fn serve_icmp(a: &crate::cli::ServeIcmpArgs) -> Result<ExitCode> {
    use crate::serve::icmp;
    let socket = icmp::open().context("cannot open a raw ICMP socket (run as root or with CAP_NET_RAW)")?;
    if icmp::kernel_echo_enabled() {
        eprintln!(
            "netpulse: warning: the kernel answers echo requests here too; \
             set net.ipv4.icmp_echo_ignore_all=1 (e.g. inside a network namespace)"
        );
    }
    let seed = a.seed.unwrap_or_else(|| std::process::id().into());
    let faults = icmp::EchoFaults { delay: a.delay.0, loss: a.loss.0, seed };
    println!(
        "netpulse is up:\n  icmp echo responder (delay {}, loss {}%)\nCtrl-C stops it.",
        a.delay,
        a.loss.0 * 100.0
    );
    let stop = CancellationToken::new();
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let log = log(a.quiet);
    let worker = std::thread::spawn({
        let stop = stop.clone();
        move || icmp::serve(socket, faults, log, stop)
    });
    rt.block_on(shutdown_signal());
    stop.cancel();
    worker.join().map_err(|_| anyhow::anyhow!("icmp responder crashed"))??;
    Ok(ExitCode::SUCCESS)
}

fn status(args: crate::cli::StatusArgs) -> Result<ExitCode> {
    use crate::monitor::{live::Connectivity, status};
    let given: Vec<&str> = if args.targets.is_empty() {
        status::DEFAULT_TARGETS.to_vec()
    } else {
        args.targets.iter().map(String::as_str).collect()
    };
    let targets = given.iter().map(|t| t.parse().map_err(UsageError)).collect::<Result<Vec<_>, _>>()?;
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let (checks, verdict) = rt.block_on(status::run(targets, args.resolve, args.timeout.0));
    print!("{}", status::render(&checks, verdict));
    Ok(ExitCode::from(match verdict {
        Connectivity::Connected => 0,
        Connectivity::Degraded => 1,
        Connectivity::Disconnected => 2,
    }))
}

fn monitor(args: crate::cli::MonitorArgs) -> Result<ExitCode> {
    if args.interval.0 < Duration::from_millis(10) {
        return Err(UsageError(format!("interval {} is too short; use at least 10ms", args.interval)).into());
    }
    let mut targets = Vec::new();
    let mut seen = std::collections::HashSet::new();
    for t in &args.targets {
        let target: crate::probe::Target = t.parse().map_err(UsageError)?;
        if !seen.insert(target.identity()) {
            return Err(UsageError(format!("target {t} is listed twice (or is an address already listed)")).into());
        }
        targets.push(target);
    }
    let exporter = args.metrics.map(|_| crate::metrics::Exporter::default());
    let opts = crate::monitor::live::MonitorOptions {
        targets,
        interval: args.interval.0,
        timeout: args.timeout.map_or(args.interval.0.min(Duration::from_secs(1)), |d| d.0),
        count: if args.once { Some(1) } else { args.count },
        format: args.format,
        window: args.window,
        exporter: exporter.clone(),
        print: true,
        shutdown: None,
        health: None,
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let stop = CancellationToken::new();
    if let (Some(addr), Some(exporter)) = (args.metrics, exporter) {
        let listener = crate::metrics::Exporter::bind(addr.0)?;
        eprintln!("netpulse: metrics on http://{}/metrics", addr.0);
        let stop = stop.clone();
        rt.spawn(async move { exporter.serve(listener, stop).await });
    }
    let result = rt.block_on(crate::monitor::live::run(opts, &mut std::io::stdout()));
    stop.cancel();
    result?;
    Ok(ExitCode::SUCCESS)
}

fn ping(args: &crate::cli::PingArgs) -> Result<ExitCode> {
    if args.interval.0 < Duration::from_millis(1) {
        return Err(UsageError(format!("interval {} is too short; use at least 1ms", args.interval)).into());
    }
    let ip = resolve(&args.host, 0)?.ip();
    let opts = crate::monitor::ping::PingOptions {
        host: args.host.clone(),
        ip,
        count: args.count,
        interval: args.interval.0,
        timeout: args.timeout.0,
        size: args.size,
        quiet: args.quiet,
        tcp_port: args.tcp,
    };
    // ping's convention: 2 when it cannot run at all (no permission, no socket).
    let summary =
        crate::monitor::ping::run(&opts, &mut std::io::stdout().lock()).map_err(|e| UsageError(e.to_string()))?;
    Ok(if summary.received > 0 { ExitCode::SUCCESS } else { ExitCode::from(1) })
}

/// Resolves `host` as the probes do (IPv4 preferred); failing to is bad usage.
fn resolve(host: &str, port: u16) -> Result<SocketAddr> {
    crate::probe::resolve(host, port).map_err(|e| UsageError(e.to_string()).into())
}

/// Everything a config asks for, bound but not yet running.
struct Bound {
    http_servers: Option<HttpServers>,
    udp_servers: Option<UdpServers>,
    http: Vec<HttpBalancer>,
    udp: Vec<UdpBalancer>,
    monitor: Option<Watch>,
    banner: String,
}

/// The monitor `up` runs, and its metrics endpoint.
struct Watch {
    opts: crate::monitor::live::MonitorOptions,
    metrics: Option<(crate::metrics::Exporter, std::net::TcpListener)>,
}

/// Binds every socket first (so a busy port fails the start with its address), prints what
/// listens where, runs until Ctrl-C or SIGTERM, then stops cleanly.
fn start(config: Config, log: Log) -> Result<ExitCode> {
    // Hosts the mock backends and signal handling; balancers run on threads of their own.
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("netpulse-worker")
        .build()
        .context("cannot start the async runtime")?;
    let bound = rt.block_on(async { bind(&config, &log) })?;
    print!("{}", bound.banner);
    rt.block_on(serve(bound))?;
    Ok(ExitCode::SUCCESS)
}

fn bind(config: &Config, log: &Log) -> Result<Bound> {
    let mut banner = String::from("netpulse is up:\n");
    let mut tries = Vec::new();
    let list = |addrs: &[SocketAddr]| addrs.iter().map(ToString::to_string).collect::<Vec<_>>().join(", ");
    let http_servers = match &config.serve.http {
        Some(h) => {
            let s = HttpServers::bind(h.bind, &h.ports.0, log.clone())?;
            let addrs = s.addrs();
            let _ = writeln!(banner, "  http backends  {}", list(&addrs));
            tries.push(format!("curl http://{}/", addrs[0]));
            Some(s)
        }
        None => None,
    };
    let udp_servers = match &config.serve.udp {
        Some(u) => {
            let faults = crate::serve::udp::Faults { loss: u.loss.0, delay: u.delay.0 };
            let s = UdpServers::bind(u.bind, &u.ports.0, faults, u.seed, log.clone())?;
            let addrs = s.addrs();
            let _ = writeln!(banner, "  udp servers    {} (simulated loss {}%)", list(&addrs), u.loss.0 * 100.0);
            tries.push(format!("netpulse udp-ping {} {}", addrs[0].ip(), addrs[0].port()));
            Some(s)
        }
        None => None,
    };
    let mut http = Vec::new();
    for c in &config.balance.http {
        let b = HttpBalancer::bind(c, log.clone())?;
        let at = b.local_addr()?;
        let _ = writeln!(banner, "  http balancer  \"{}\" on {at} -> {} (round-robin)", c.name, list(&c.backends.0));
        tries.insert(0, format!("curl http://{at}/"));
        http.push(b);
    }
    let mut udp = Vec::new();
    for c in &config.balance.udp {
        let b = UdpBalancer::bind(c, log.clone())?;
        let at = b.local_addr()?;
        let how = match c.affinity {
            crate::config::Affinity::None => "round-robin per datagram",
            crate::config::Affinity::Client => "round-robin, pinned per client",
        };
        let _ = writeln!(banner, "  udp balancer   \"{}\" on {at} -> {} ({how})", c.name, list(&c.backends.0));
        tries.insert(0, format!("netpulse udp-ping {} {}", at.ip(), at.port()));
        udp.push(b);
    }
    if tries.is_empty() {
        return Err(UsageError("nothing to run: the config has no [serve] or [balance] section".into()).into());
    }
    let monitor = match &config.monitor {
        Some(m) => {
            let mut w = watch_config(config, m)?;
            // The balancers' health checks are the monitor's probes of their backends.
            if m.health {
                use crate::monitor::health::{HealthFeed, Watched};
                let mut watched = Vec::new();
                for (b, c) in http.iter().zip(&config.balance.http) {
                    let targets = c.backends.0.iter().map(|a| format!("http://{a}/")).collect();
                    watched.push(Watched { name: c.name.clone(), set: b.backends(), targets });
                }
                for (b, c) in udp.iter().zip(&config.balance.udp) {
                    let targets = c.backends.0.iter().map(|a| format!("udp://{a}")).collect();
                    watched.push(Watched { name: c.name.clone(), set: b.backends(), targets });
                }
                w.opts.health = Some(std::sync::Arc::new(HealthFeed::new(watched)));
            }
            let _ = writeln!(banner, "  monitor        {} targets every {}", w.opts.targets.len(), m.interval);
            if let Some(addr) = m.metrics {
                let _ = writeln!(banner, "  metrics        http://{}/metrics", addr.0);
                tries.push(format!("curl http://{}/metrics", addr.0));
            }
            Some(w)
        }
        None => None,
    };
    tries.sort_by_key(|t| !t.starts_with("curl"));
    tries.dedup_by(|a, b| a.split(' ').next() == b.split(' ').next());
    banner.push_str("try:\n");
    for t in tries {
        let _ = writeln!(banner, "  {t}");
    }
    banner.push_str("Ctrl-C stops it.\n");
    Ok(Bound { http_servers, udp_servers, http, udp, monitor, banner })
}

/// The monitor over every balancer's backends (HTTP ones by request, UDP ones by the classic
/// ping) plus the extra targets of `[monitor]`.
fn watch_config(config: &Config, m: &crate::config::MonitorConfig) -> Result<Watch> {
    use crate::probe::Target;
    let mut targets: Vec<Target> = Vec::new();
    let http = config.balance.http.iter().flat_map(|b| b.backends.0.iter()).map(|a| format!("http://{a}/"));
    let udp = config.balance.udp.iter().flat_map(|b| b.backends.0.iter()).map(|a| format!("udp://{a}"));
    let mut seen = std::collections::HashSet::new();
    for spec in http.chain(udp) {
        let t: Target = spec.parse().map_err(UsageError)?;
        if seen.insert(t.identity()) {
            targets.push(t);
        }
    }
    for t in &m.targets {
        if seen.insert(t.0.identity()) {
            targets.push(t.0.clone());
        }
    }
    let metrics = match m.metrics {
        Some(addr) => Some((crate::metrics::Exporter::default(), crate::metrics::Exporter::bind(addr.0)?)),
        None => None,
    };
    let opts = crate::monitor::live::MonitorOptions {
        targets,
        interval: m.interval.0,
        timeout: m.interval.0.min(Duration::from_secs(1)),
        count: None,
        format: crate::monitor::live::Format::Json,
        window: 100,
        exporter: metrics.as_ref().map(|(e, _)| e.clone()),
        print: false,
        shutdown: None,
        health: None,
    };
    Ok(Watch { opts, metrics })
}

async fn serve(bound: Bound) -> Result<()> {
    let stop = CancellationToken::new();
    let mut tasks: JoinSet<Result<()>> = JoinSet::new();
    if let Some(mut w) = bound.monitor {
        w.opts.shutdown = Some(stop.clone());
        if let Some((exporter, listener)) = w.metrics {
            let rx = stop.clone();
            tasks.spawn(async move { exporter.serve(listener, rx).await.context("metrics endpoint") });
        }
        tasks.spawn(async move { crate::monitor::live::run(w.opts, &mut std::io::sink()).await.context("monitor") });
    }
    if let Some(s) = bound.http_servers {
        let rx = stop.clone();
        tasks.spawn(async move { s.run(rx).await.context("http backends") });
    }
    let mut threads = Vec::new();
    for b in bound.http {
        let name = format!("http balancer \"{}\"", b.name());
        for t in b.spawn(stop.clone()).with_context(|| format!("cannot start {name}"))? {
            threads.push((name.clone(), t));
        }
    }
    if let Some(s) = bound.udp_servers {
        for t in s.spawn(stop.clone()).context("cannot start udp servers")? {
            threads.push(("udp server".to_string(), t));
        }
    }
    for b in bound.udp {
        let name = format!("udp balancer \"{}\"", b.name());
        let handles = b.spawn(stop.clone()).with_context(|| format!("cannot start {name}"))?;
        tasks.spawn_blocking(move || {
            let mut total = crate::proxy::udp::UdpStats::default();
            for t in handles {
                let stats = t.join().map_err(|_| anyhow::anyhow!("{name} crashed"))?.with_context(|| name.clone())?;
                total.requests += stats.requests;
                total.replies += stats.replies;
                total.dropped += stats.dropped;
                total.flows_opened += stats.flows_opened;
                total.flows_evicted += stats.flows_evicted;
            }
            eprintln!("netpulse: {name} stopped: {total}");
            Ok(())
        });
    }
    for (name, t) in threads {
        tasks.spawn_blocking(move || match t.join() {
            Ok(r) => r.with_context(|| name.clone()),
            Err(_) => Err(anyhow::anyhow!("{name} crashed")),
        });
    }
    let mut failure = None;
    tokio::select! {
        _ = shutdown_signal() => {}
        Some(done) = tasks.join_next() => {
            failure = Some(done.map_err(anyhow::Error::from).and_then(|r| r).err()
                .unwrap_or_else(|| anyhow::anyhow!("a server stopped unexpectedly")));
        }
    }
    stop.cancel();
    let drained = tokio::time::timeout(DRAIN_TIMEOUT + Duration::from_secs(1), async {
        while let Some(done) = tasks.join_next().await {
            if let Ok(Err(e)) = done {
                failure.get_or_insert(e);
            }
        }
    })
    .await;
    if drained.is_err() {
        eprintln!("netpulse: some requests were still running after {DRAIN_TIMEOUT:?}; stopped anyway");
    }
    failure.map_or(Ok(()), Err)
}

/// Ctrl-C or SIGTERM.
async fn shutdown_signal() {
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term => {}
    }
}
