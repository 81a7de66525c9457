//! `netpulse up`: everything a config describes — lab servers, balancers, the monitor over the
//! balancers' backends with its sinks (Prometheus, the health feed). Also the start-up path of
//! `serve` and `balance`: bind every socket first (a busy port fails the start and names the
//! address), print what listens where, run until Ctrl-C or SIGTERM, then drain and stop.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::io::IsTerminal as _;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use arc_swap::ArcSwap;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use super::running::{Health, Loader, Running, Supervisor};
use super::{UsageError, hangups, log, say, stop_signals};
use crate::balance::BackendSet;
use crate::balance::HealthRules;
use crate::cli::UpArgs;
use crate::config::{
    CheckKind, Config, Dur, HashKey, HealthCheckConfig, HttpBalancerConfig, MonitorConfig, Strategy, UdpBalancerConfig,
};
use crate::dashboard::tui;
use crate::dashboard::web::Web;
use crate::dashboard::web::admin::Admin;
use crate::health::{HealthFeed, Watched};
use crate::log::Log;
use crate::metrics::Exporter;
use crate::monitor::engine::{Monitor, MonitorPlan};
use crate::monitor::report::TargetId;
use crate::net::{self, DRAIN_TIMEOUT};
use crate::probe::{ProbeKey, ProbeSources, Target, UdpExchange};
use crate::proxy::http::HttpBalancer;
use crate::proxy::udp::UdpBalancer;
use crate::serve::http::HttpServers;
use crate::serve::udp::{Faults, UdpServers};
use crate::stats::traffic::{BalancerStats, Balancers};

pub(super) fn run(args: UpArgs) -> Result<ExitCode> {
    let (no_history, history) = (args.record.no_history, args.record.history.clone());
    let with_flags = move |mut config: Config| {
        if no_history {
            config.history.enabled = false;
        } else if let Some(path) = &history {
            config.history.enabled = true;
            config.history.path = Some(path.clone());
        }
        config
    };
    // A reload reads the file again, with the same flags over it.
    let load: Option<Loader> = args.config.clone().map(|path| {
        let with_flags = with_flags.clone();
        Arc::new(move || Ok(with_flags(Config::load(&path)?))) as Loader
    });
    let config = match &args.config {
        Some(path) => with_flags(Config::load(path)?),
        None => with_flags(Config::embedded_default()),
    };
    let dashboard = (!args.dashboard.no_tui && std::io::stdout().is_terminal()).then(|| tui::Options {
        command: "up",
        interval: config.monitor.as_ref().map(|m| m.interval.0),
        ifaces: args.dashboard.ifaces.clone(),
        color: tui::Options::color_from_env(),
        log_pane: true,
        web: None,
    });
    start_with(config, log(args.quiet), dashboard, load)
}

/// Everything a config asks for, bound but not yet running.
struct Bound {
    http_servers: Option<HttpServers>,
    udp_servers: Option<UdpServers>,
    http: Vec<(HttpBalancer, HttpBalancerConfig)>,
    udp: Vec<(UdpBalancer, UdpBalancerConfig)>,
    monitor: Option<Watch>,
    /// Each balancer's health checks: probes of `[monitor]`, or a monitor of their own.
    health: Vec<(String, Health)>,
    /// Every balancer's statistics, for the sinks.
    balancers: Balancers,
    /// The history file the monitor's reports are recorded into.
    history: Option<crate::history::Store>,
    /// The balancers' rotations, kept across restarts.
    rotations: crate::state::Rotations,
    banner: String,
}

/// The monitor of `[monitor]`, and the sinks that follow it.
struct Watch {
    monitor: Monitor,
    metrics: Option<(Exporter, std::net::TcpListener)>,
}

/// One balancer's active health checks.
pub(super) struct Checks {
    name: String,
    stats: Arc<BalancerStats>,
    set: Arc<ArcSwap<BackendSet>>,
    /// Each backend and the target that checks it.
    targets: Vec<(SocketAddr, Target)>,
    rules: HealthRules,
    interval: Duration,
    timeout: Duration,
    /// Whether they set the backends' weights too (the `measured` strategy).
    measure: bool,
    /// How the banner describes them.
    summary: String,
}

impl Checks {
    pub(super) fn http(b: &HttpBalancer, c: &HttpBalancerConfig) -> Option<Self> {
        let h = &c.health;
        let (target, summary): (fn(SocketAddr, &HealthCheckConfig) -> Target, String) = match h.kind(true) {
            CheckKind::Http => {
                (|a, h| Target::http_check(a, &h.path, h.status.0), format!("GET {} expecting {}", h.path, h.status.0))
            }
            CheckKind::Tcp => (|a, _| Target::tcp_backend(a), "tcp connect".into()),
            _ => return None,
        };
        let targets = b.backend_addrs().into_iter().map(|a| (a, target(a, h))).collect();
        let measure = c.strategy == Strategy::Measured;
        Some(Self { measure, ..Self::new(b.stats(), b.backends(), targets, h, false, summary) })
    }

    pub(super) fn udp(b: &UdpBalancer, c: &UdpBalancerConfig) -> Option<Self> {
        let h = &c.health;
        if h.kind(false) != CheckKind::Ping {
            return None;
        }
        let exchange = h
            .send
            .as_ref()
            .map(|send| UdpExchange { send: send.clone().into_bytes(), expect: h.expect.clone().into_bytes() });
        let summary = if exchange.is_some() { "udp exchange".to_string() } else { "classic ping".to_string() };
        let targets = b
            .backend_addrs()
            .into_iter()
            .map(|a| (a, Target::Udp { host: a.to_string(), addr: a, exchange: exchange.clone() }))
            .collect();
        let measure = c.strategy == Strategy::Measured;
        Some(Self { measure, ..Self::new(b.stats(), b.backends(), targets, h, true, summary) })
    }

    fn new(
        stats: Arc<BalancerStats>,
        set: Arc<ArcSwap<BackendSet>>,
        targets: Vec<(SocketAddr, Target)>,
        h: &HealthCheckConfig,
        udp: bool,
        what: String,
    ) -> Self {
        let summary = format!("{what}, fall {}, rise {}", h.fall, h.rise);
        Self {
            name: stats.name().to_string(),
            stats,
            set,
            targets,
            rules: h.rules(udp),
            interval: h.interval.0,
            timeout: h.timeout.0,
            measure: false,
            summary,
        }
    }

    /// A monitor of its own that checks these backends, and the feed that applies the results.
    pub(super) fn checker(self, sources: &ProbeSources) -> (Monitor, HealthFeed) {
        let mut targets = Targets::default();
        let probes = self.targets.into_iter().map(|(a, t)| (a, targets.add(t))).collect();
        let plan = MonitorPlan {
            targets: targets.list,
            interval: self.interval,
            timeout: self.timeout,
            count: None,
            window: 10,
            sources: sources.clone(),
        };
        let measure = self.measure.then_some(self.interval);
        let feed = HealthFeed::new(vec![(
            Watched { name: self.name, set: self.set, probes, stats: Some(self.stats), measure },
            self.rules,
        )]);
        (Monitor::new(plan), feed)
    }
}

/// Binds everything `config` asks for, prints what listens where, and runs it until Ctrl-C or
/// SIGTERM.
pub(super) fn start(config: Config, log: Log) -> Result<ExitCode> {
    start_with(config, log, None, None)
}

/// [`start`], reloading with `load` on SIGHUP (and the admin API's reload).
pub(super) fn start_reloadable(config: Config, log: Log, load: Loader) -> Result<ExitCode> {
    start_with(config, log, None, Some(load))
}

/// [`start`], with the terminal dashboard when `dashboard` says how, reloading with `load`.
fn start_with(config: Config, log: Log, dashboard: Option<tui::Options>, load: Option<Loader>) -> Result<ExitCode> {
    // Hosts the mock backends, the monitor and signal handling; balancers run on threads of
    // their own.
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("netpulse-worker")
        .build()
        .context("cannot start the async runtime")?;
    let mut config = config;
    fit_descriptors(&mut config, net::raise_descriptor_limit());
    let bound = rt.block_on(async { bind(&config, &log) })?;
    let (stop, hup) = {
        let _runtime = rt.enter();
        (stop_signals(), hangups())
    };
    say(&bound.banner)?;
    let dashboard = match dashboard {
        Some(mut options) => {
            let reports = bound.monitor.as_ref().map(|w| w.monitor.subscribe());
            options.web =
                bound.monitor.as_ref().and_then(|w| w.metrics.as_ref()).and_then(|(_, l)| l.local_addr().ok());
            // The dashboard's key line says how to stop.
            let banner = bound.banner.strip_suffix("Ctrl-C stops it.\n").unwrap_or(&bound.banner);
            let d = tui::Dashboard::start(options, reports, bound.balancers.clone(), banner)
                .context("cannot start the dashboard (--no-tui prints lines instead)")?;
            Some(d)
        }
        None => None,
    };
    let reload = Reload { config, load, log, hup };
    rt.block_on(serve(bound, stop, dashboard, reload))?;
    Ok(ExitCode::SUCCESS)
}

/// What a reload needs: the config running, how to read it again, and the signal that asks.
struct Reload {
    config: Config,
    load: Option<Loader>,
    log: Log,
    hup: Option<tokio::signal::unix::Signal>,
}

/// Fits a config to the descriptor limit, as HAProxy derives its maxconn: each HTTP client
/// connection may hold one to a backend too (a pooled idle one is one a client is not using, so
/// pools add nothing beyond that), and each UDP flow has a socket. When the limits would need more, HTTP balancers get fewer
/// connections (said on stderr); when even that cannot fit, a warning names the fix. Running
/// out anyway drops one connection or datagram at a time, never the process.
pub(super) fn fit_descriptors(config: &mut Config, limit: u64) {
    fit_descriptors_saying(config, limit, true);
}

/// [`fit_descriptors`], saying what it lowered only when `say` (a reload lowers quietly what
/// the start already said it lowered).
pub(super) fn fit_descriptors_saying(config: &mut Config, limit: u64, say: bool) {
    let limit = usize::try_from(limit).unwrap_or(usize::MAX);
    // Listening sockets, the runtime's own, the log, health checks (less under a tiny limit).
    let spare = 64.min(limit / 4);
    let udp: usize = config.balance.udp.iter().map(|b| b.max_flows).sum();
    // With the mock HTTP backends in this process, a proxied connection holds a third one.
    let per = if config.serve.http.is_some() { 3 } else { 2 };
    let http: usize = config.balance.http.iter().map(|b| per * b.max_connections).sum();
    if http + udp + spare <= limit {
        return;
    }
    let room = limit.saturating_sub(udp + spare);
    let share = (room / per / config.balance.http.len().max(1)).max(1);
    for b in &mut config.balance.http {
        if b.max_connections > share && say {
            tracing::info!(
                "http balancer \"{}\": max_connections {} lowered to {share} to fit the descriptor limit {limit} \
                 (raise it with `ulimit -n` to allow more)",
                b.name,
                b.max_connections
            );
        }
        b.max_connections = b.max_connections.min(share);
    }
    let need = config.balance.http.iter().map(|b| per * b.max_connections).sum::<usize>() + udp + spare;
    if need > limit && say {
        tracing::warn!(
            "the config may need {need} open descriptors at its limits (UDP flows {udp}) but the limit is \
             {limit}: raise it (`ulimit -n {need}`, or LimitNOFILE={need} in a systemd unit) or lower max_flows; \
             until then a flow or connection past the limit is dropped"
        );
    }
}

fn list(addrs: &[SocketAddr]) -> String {
    addrs.iter().map(ToString::to_string).collect::<Vec<_>>().join(", ")
}

fn bind(config: &Config, log: &Log) -> Result<Bound> {
    let mut banner = String::from("netpulse is up:\n");
    let mut tries = Vec::new();
    let sources = ProbeSources::default();
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
            let faults = Faults { loss: u.loss.0, delay: u.delay.0 };
            let s = UdpServers::bind(u.bind, &u.ports.0, faults, u.seed, log.clone(), sources.clone())?;
            let addrs = s.addrs();
            let _ = writeln!(banner, "  udp servers    {} (simulated loss {}%)", list(&addrs), u.loss.0 * 100.0);
            tries.push(format!("netpulse udp-ping {} {}", addrs[0].ip(), addrs[0].port()));
            Some(s)
        }
        None => None,
    };
    let mut http = Vec::new();
    let mut checks = Vec::new();
    for c in &config.balance.http {
        let b = HttpBalancer::bind(c, log.clone())?;
        let at = b.local_addr()?;
        let how = match c.strategy {
            Strategy::Hash => format!("hash of {}", c.hash_key().describe()),
            s => s.name().to_string(),
        };
        let _ = writeln!(banner, "  http balancer  \"{}\" on {at} -> {} ({how})", c.name, list(&c.backends.addrs()));
        let check = Checks::http(&b, c);
        check_line(&mut banner, check.as_ref(), config.monitor.as_ref());
        unmeasured(&c.name, c.strategy, check.as_ref());
        checks.extend(check);
        tries.insert(0, format!("curl http://{at}/"));
        http.push((b, c.clone()));
    }
    let mut udp = Vec::new();
    for c in &config.balance.udp {
        let b = UdpBalancer::bind(c, log.clone())?;
        let at = b.local_addr()?;
        let how = match (c.strategy, c.hash_key()) {
            (Strategy::Hash, HashKey::Source) => "hash of the source, pinned per client".to_string(),
            (Strategy::Hash, key) => format!("hash of {}, pinned per client", key.describe()),
            (s, _) => format!("{s} per datagram"),
        };
        let _ = writeln!(banner, "  udp balancer   \"{}\" on {at} -> {} ({how})", c.name, list(&c.backends.addrs()));
        let check = Checks::udp(&b, c);
        check_line(&mut banner, check.as_ref(), config.monitor.as_ref());
        unmeasured(&c.name, c.strategy, check.as_ref());
        checks.extend(check);
        tries.insert(0, format!("netpulse udp-ping {} {}", at.ip(), at.port()));
        udp.push((b, c.clone()));
    }
    if tries.is_empty() {
        return Err(UsageError("nothing to run: the config has no [serve] or [balance] section".into()).into());
    }
    // Under `[monitor]` with `health` on, its probes are the checks; otherwise each balancer
    // checks its backends with a monitor of its own.
    let mut health = Vec::new();
    if !config.monitor.as_ref().is_some_and(|m| m.health) {
        health = std::mem::take(&mut checks)
            .into_iter()
            .map(|c| {
                let name = c.name.clone();
                let (monitor, feed) = c.checker(&sources);
                (name, Health::Own(monitor, feed))
            })
            .collect();
    }
    let (rotations, kept_in) = keep_rotations(&config.state, &http, &udp);
    let balancers: Balancers = http.iter().map(|(b, _)| b.stats()).chain(udp.iter().map(|(b, _)| b.stats())).collect();
    let mut history = None;
    let monitor = match &config.monitor {
        Some(m) => {
            let (w, feeds) = watch(m, &balancers, &http, &udp, checks, sources)?;
            health.extend(feeds);
            let _ =
                writeln!(banner, "  monitor        {} targets every {}", w.monitor.plan().targets.len(), m.interval);
            if let Some(addr) = m.metrics {
                let _ = writeln!(banner, "  metrics        http://{}/metrics", addr.0);
                let _ = writeln!(banner, "  dashboard      http://{}/ (JSON: /api/v1/)", addr.0);
                tries.push(format!("curl http://{}/metrics", addr.0));
            }
            let (store, line) = open_history(&config.history);
            let _ = writeln!(banner, "  history        {line}");
            history = store;
            Some(w)
        }
        None => None,
    };
    tries.sort_by_key(|t| !t.starts_with("curl"));
    tries.dedup_by(|a, b| a.split(' ').next() == b.split(' ').next());
    if let Some(dir) = kept_in {
        let _ = writeln!(banner, "  rotation kept  {}", dir.display());
    }
    if !http.is_empty() || !udp.is_empty() {
        let _ = writeln!(banner, "  writes         {}", crate::sys::io_uring_use());
    }
    banner.push_str("try:\n");
    for t in tries {
        let _ = writeln!(banner, "  {t}");
    }
    banner.push_str("Ctrl-C stops it.\n");
    Ok(Bound { http_servers, udp_servers, http, udp, monitor, health, balancers, history, rotations, banner })
}

/// Restores each balancer's rotation where the last run left it (`[state] rotation`), and where
/// it is kept (for the banner).
fn keep_rotations(
    state: &crate::config::StateConfig,
    http: &[(HttpBalancer, HttpBalancerConfig)],
    udp: &[(UdpBalancer, UdpBalancerConfig)],
) -> (crate::state::Rotations, Option<std::path::PathBuf>) {
    use crate::state::Kept;
    let dir = match (&state.dir, state.rotation) {
        (_, false) => return Default::default(),
        (Some(d), true) => d.clone(),
        (None, true) => match crate::state::default_dir() {
            Some(d) => d,
            None => return Default::default(),
        },
    };
    let mut kept = Vec::new();
    for (b, _) in http {
        if let Ok(at) = b.local_addr() {
            kept.extend(Kept::restore(&dir, "http", b.name(), at, b.backend_addrs(), b.picker()));
        }
    }
    for (b, _) in udp {
        if let Ok(at) = b.local_addr() {
            kept.extend(Kept::restore(&dir, "udp", b.name(), at, b.backend_addrs(), b.picker()));
        }
    }
    let shown = (!kept.is_empty()).then(|| dir.clone());
    (crate::state::Rotations::new(dir, kept), shown)
}

/// Opens the history file `[history]` names, and the banner's words on it. A file that cannot
/// be used is one warning; everything else runs without history.
pub(super) fn open_history(h: &crate::config::HistoryConfig) -> (Option<crate::history::Store>, String) {
    use crate::history::{Destination, Store};
    match h.destination(None, false) {
        Some(Destination::Off) => (None, "off".into()),
        None => {
            tracing::warn!("history: no home directory to keep it in; give --history FILE (running without history)");
            (None, "off (no home directory; give --history FILE)".into())
        }
        Some(Destination::File(path, keep)) => match Store::open(&path, keep) {
            Ok(store) => {
                let line = format!(
                    "{} (kept: intervals {}, minutes {}, hours {})",
                    path.display(),
                    crate::history::plot::human_duration(keep.raw.as_secs_f64()),
                    crate::history::plot::human_duration(keep.minutes.as_secs_f64()),
                    crate::history::plot::human_duration(keep.hours.as_secs_f64())
                );
                (Some(store), line)
            }
            Err(e) => {
                tracing::warn!("history: {e}; running without history");
                (None, format!("off (cannot use {})", path.display()))
            }
        },
    }
}

/// The banner's line on a balancer's health checks.
fn check_line(banner: &mut String, check: Option<&Checks>, monitor: Option<&MonitorConfig>) {
    let line = match (check, monitor) {
        (None, _) => "no active health checks (passive ejection only)".to_string(),
        (Some(c), Some(m)) if m.health => format!("health: {}, probed by the monitor every {}", c.summary, m.interval),
        (Some(c), _) => format!("health: {}, every {}", c.summary, Dur(c.interval)),
    };
    let line = match check {
        Some(c) if c.measure => format!("{line}; their RTT and loss set the weights"),
        _ => line,
    };
    let _ = writeln!(banner, "                 {line}");
}

/// Warns that a `measured` balancer without active checks has nothing to measure.
fn unmeasured(name: &str, strategy: Strategy, check: Option<&Checks>) {
    if strategy == Strategy::Measured && check.is_none() {
        tracing::warn!(
            "balancer \"{name}\": strategy \"measured\" weighs backends by their health checks' probes, but \
             its checks are off (check = \"none\"): every backend keeps its configured weight"
        );
    }
}

/// The targets a monitor plan is built from, each probed once, with its id.
#[derive(Default)]
struct Targets {
    list: Vec<Target>,
    ids: HashMap<ProbeKey, TargetId>,
}

impl Targets {
    fn add(&mut self, t: Target) -> TargetId {
        *self.ids.entry(t.probe_key()).or_insert_with(|| {
            self.list.push(t);
            TargetId(self.list.len() - 1)
        })
    }

    /// Adds `t` unless some target of the same kind already probes `addr`.
    fn add_unless_checked(&mut self, addr: SocketAddr, t: Target) {
        if !self.list.iter().any(|x| x.addr() == addr && x.kind() == t.kind()) {
            self.add(t);
        }
    }
}

/// The monitor over every balancer's backends plus the extra targets of `[monitor]`. With
/// `health` on, the backends are probed by their balancer's checks (`checks`) and those probes
/// decide the rotation; backends without checks (and all of them with `health` off) get the
/// plain probes: HTTP `GET /`, the classic UDP ping.
fn watch(
    m: &MonitorConfig,
    balancers: &Balancers,
    http: &[(HttpBalancer, HttpBalancerConfig)],
    udp: &[(UdpBalancer, UdpBalancerConfig)],
    checks: Vec<Checks>,
    sources: ProbeSources,
) -> Result<(Watch, Vec<(String, Health)>)> {
    let mut targets = Targets::default();
    let mut health = Vec::new();
    for c in checks {
        let probes = c.targets.into_iter().map(|(a, t)| (a, targets.add(t))).collect();
        let name = c.name.clone();
        let measure = c.measure.then_some(m.interval.0);
        let watched = Watched { name: c.name, set: c.set, probes, stats: Some(c.stats), measure };
        health.push((name, Health::Main(HealthFeed::new(vec![(watched, c.rules)]))));
    }
    for (b, _) in http {
        for a in b.backend_addrs() {
            targets.add_unless_checked(a, Target::http_backend(a));
        }
    }
    for (b, _) in udp {
        for a in b.backend_addrs() {
            targets.add_unless_checked(a, Target::udp_backend(a));
        }
    }
    for t in &m.targets {
        targets.add(t.0.clone());
    }
    let plan = MonitorPlan {
        targets: targets.list,
        interval: m.interval.0,
        timeout: m.interval.0.min(Duration::from_secs(1)),
        count: None,
        window: 100,
        sources,
    };
    let metrics = match m.metrics {
        Some(addr) => Some((Exporter::new(balancers.clone()), Web::bind(addr.0)?)),
        None => None,
    };
    Ok((Watch { monitor: Monitor::new(plan), metrics }, health))
}

async fn serve(
    bound: Bound,
    signalled: impl std::future::Future<Output = ()>,
    dashboard: Option<tui::Dashboard>,
    reload: Reload,
) -> Result<()> {
    // `q` or Ctrl-C in the dashboard (a key in raw mode, not a signal) stops as SIGINT does.
    let quit = dashboard.as_ref().map(tui::Dashboard::quit_requested);
    let quit = async move {
        match quit {
            Some(q) => q.cancelled().await,
            None => std::future::pending().await,
        }
    };
    let stop = CancellationToken::new();
    let saver = tokio::spawn(bound.rotations.clone().keep(stop.clone()));
    let mut tasks: JoinSet<Result<()>> = JoinSet::new();
    let mut recorder = None;
    let (admin, commands) = Admin::channel();
    // The health checks that follow the monitor subscribe before it runs.
    let health: Vec<_> = bound
        .health
        .into_iter()
        .map(|(name, h)| {
            let reports = match (&h, &bound.monitor) {
                (Health::Main(_), Some(w)) => Some(w.monitor.subscribe()),
                _ => None,
            };
            (name, h, reports)
        })
        .collect();
    if let Some(w) = bound.monitor {
        if let Some((exporter, listener)) = w.metrics {
            tokio::spawn(exporter.clone().follow(w.monitor.subscribe()));
            let web = Web::new(exporter, bound.balancers.clone(), w.monitor.plan().interval)
                .with_history(bound.history.as_ref().map(|s| s.path.clone()))
                .with_admin(admin.clone());
            tokio::spawn(web.clone().follow(w.monitor.subscribe()));
            let stop = stop.clone();
            tasks.spawn(async move { web.serve(listener, stop).await.context("metrics and dashboard") });
        }
        tokio::spawn(crate::dashboard::events::follow(w.monitor.subscribe()));
        if let Some(store) = bound.history {
            let balancers = bound.balancers.clone();
            match crate::history::writer::Recorder::start(store, w.monitor.subscribe(), balancers) {
                Ok(r) => recorder = Some(r),
                Err(e) => tracing::warn!("history: cannot start its writer: {e}; running without history"),
            }
        }
        let stop = stop.clone();
        tasks.spawn(async move { w.monitor.run(stop).await.context("monitor") });
    }
    if let Some(s) = bound.http_servers {
        let stop = stop.clone();
        tasks.spawn(async move { s.run(stop).await.context("http backends") });
    }
    let mut threads = Vec::new();
    if let Some(s) = bound.udp_servers {
        for t in s.spawn(stop.clone()).context("cannot start udp servers")? {
            threads.push(("udp server".to_string(), t));
        }
    }
    let running = Running {
        http: bound.http,
        udp: bound.udp,
        health,
        balancers: bound.balancers.clone(),
        notes: recorder.as_ref().map(crate::history::writer::Recorder::notes),
        rotations: bound.rotations.clone(),
    };
    let supervisor = Supervisor::start(running, reload.config, reload.load, reload.log, stop.clone())?;
    let hup = reload.hup;
    tasks.spawn(async move { supervisor.run(hup, Some(commands)).await });
    drop(admin);
    for (name, t) in threads {
        tasks.spawn_blocking(move || match t.join() {
            Ok(r) => r.with_context(|| name.clone()),
            Err(_) => Err(anyhow::anyhow!("{name} crashed")),
        });
    }
    let mut failure = None;
    tokio::select! {
        _ = signalled => {}
        _ = quit => {}
        Some(done) = tasks.join_next() => {
            failure = Some(done.map_err(anyhow::Error::from).and_then(|r| r).err()
                .unwrap_or_else(|| anyhow::anyhow!("a server stopped unexpectedly")));
        }
    }
    stop.cancel();
    // The terminal back first, so that what stopping says is printed on it.
    if let Some(d) = dashboard {
        let closed = tokio::task::spawn_blocking(move || d.close()).await;
        if let Err(e) = closed.map_err(anyhow::Error::from).and_then(|r| r.map_err(anyhow::Error::from)) {
            failure.get_or_insert(e.context("the dashboard failed"));
        }
    }
    let drained = tokio::time::timeout(DRAIN_TIMEOUT + Duration::from_secs(1), async {
        while let Some(done) = tasks.join_next().await {
            if let Ok(Err(e)) = done {
                failure.get_or_insert(e);
            }
        }
    })
    .await;
    if drained.is_err() {
        tracing::warn!("some requests were still running after {DRAIN_TIMEOUT:?}; stopped anyway");
    }
    if saver.await.is_ok() {
        let rotations = bound.rotations.clone();
        let _ = tokio::task::spawn_blocking(move || rotations.finish()).await;
    }
    if let Some(r) = recorder {
        let _ = tokio::task::spawn_blocking(move || r.finish(Duration::from_secs(5))).await;
    }
    // Each HTTP balancer's totals, as the UDP ones print theirs.
    for b in bound.balancers.iter() {
        if let Some(line) = b.snapshot(std::time::Instant::now()).http_line() {
            tracing::info!("http balancer \"{}\" stopped: {line}", b.name());
        }
    }
    failure.map_or(Ok(()), Err)
}
