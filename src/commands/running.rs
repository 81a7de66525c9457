//! What `up` (and `balance`, `serve`) runs once started, and how it changes while it runs.
//!
//! Each balancer runs as a *generation* — its sockets, worker threads, live backend set and
//! statistics — with its health checks beside it. A reload (SIGHUP, `netpulse reload`, the
//! admin API) reads the config again; an invalid file changes nothing. For each balancer that
//! changed, the next generation is bound first (for all of them, before anything changes: a
//! busy address refuses the whole reload), then started, then the running one is retired: it
//! takes no more clients and finishes what is under way (see [`crate::proxy::reload`] for what
//! it hands over). An operator's drain, disable, enable and weight (the admin API), and backends'
//! host names resolved again every `dns_refresh`, go through the same place, one at a time:
//! the [`Supervisor`] owns all of it, and everything reaches it as a message.

use std::net::{SocketAddr, TcpListener, UdpSocket};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use arc_swap::ArcSwap;
use axum::http::StatusCode;
use tokio::sync::{broadcast, mpsc};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use super::up::{Checks, fit_descriptors_saying};
use crate::balance::{Admin as Mark, BackendSet};
use crate::config::{BackendSpec, Backends, Config, HealthCheckConfig, HttpBalancerConfig, UdpBalancerConfig};
use crate::dashboard::web::admin::{Action, Asked, Command, Refusal, Reply};
use crate::health::HealthFeed;
use crate::history::writer::{Note, Notes};
use crate::log::Log;
use crate::monitor::engine::Monitor;
use crate::monitor::report::Report;
use crate::net::DRAIN_TIMEOUT;
use crate::probe::ProbeSources;
use crate::proxy::http::HttpBalancer;
use crate::proxy::reload::{Takeover, carry};
use crate::proxy::udp::{UdpBalancer, UdpStats};
use crate::stats::traffic::{BalancerStats, Balancers};

/// Reads the config again, with the command's flags over it, as the run started from it.
pub(super) type Loader = Arc<dyn Fn() -> Result<Config> + Send + Sync>;

/// The monitor's reports, for checks that follow them.
pub(super) type Reports = broadcast::Receiver<Arc<Report>>;

/// A balancer's health checks, before they run.
pub(super) enum Health {
    /// Probes of `[monitor]`: the feed follows the monitor's reports.
    Main(HealthFeed),
    /// A monitor of its own checks it.
    Own(Monitor, HealthFeed),
}

/// What `up` bound, for the supervisor to run.
pub(super) struct Running {
    pub http: Vec<(HttpBalancer, HttpBalancerConfig)>,
    pub udp: Vec<(UdpBalancer, UdpBalancerConfig)>,
    /// Each balancer's checks by name, with the monitor's reports for those that follow it.
    pub health: Vec<(String, Health, Option<Reports>)>,
    /// The list the sinks read.
    pub balancers: Balancers,
    /// Where reloads are recorded in the history.
    pub notes: Option<Notes>,
    /// The rotations saved across restarts, which follow a balancer's next generation.
    pub rotations: crate::state::Rotations,
}

/// One balancer's configuration, either kind.
#[derive(Debug, Clone, PartialEq)]
enum Settings {
    Http(HttpBalancerConfig),
    Udp(UdpBalancerConfig),
}

impl Settings {
    fn name(&self) -> &str {
        match self {
            Self::Http(c) => &c.name,
            Self::Udp(c) => &c.name,
        }
    }

    fn proto(&self) -> &'static str {
        match self {
            Self::Http(_) => "http",
            Self::Udp(_) => "udp",
        }
    }

    fn listen(&self) -> SocketAddr {
        match self {
            Self::Http(c) => c.listen.0,
            Self::Udp(c) => c.listen.0,
        }
    }

    fn backends(&self) -> &Backends {
        match self {
            Self::Http(c) => &c.backends,
            Self::Udp(c) => &c.backends,
        }
    }

    fn strategy(&self) -> crate::balance::Strategy {
        match self {
            Self::Http(c) => c.strategy,
            Self::Udp(c) => c.strategy,
        }
    }

    fn health(&self) -> &HealthCheckConfig {
        match self {
            Self::Http(c) => &c.health,
            Self::Udp(c) => &c.health,
        }
    }

    fn workers(&self) -> Option<usize> {
        match self {
            Self::Http(c) => c.workers,
            Self::Udp(c) => c.workers,
        }
    }

    /// `proto "name"`, as the lines say it.
    fn who(&self) -> String {
        format!("{} \"{}\"", self.proto(), self.name())
    }

    /// The balancers of a config, HTTP first, in order.
    fn all(config: &Config) -> Vec<Settings> {
        let http = config.balance.http.iter().cloned().map(Settings::Http);
        http.chain(config.balance.udp.iter().cloned().map(Settings::Udp)).collect()
    }

    fn same_balancer(&self, other: &Settings) -> bool {
        self.proto() == other.proto() && self.name() == other.name()
    }
}

/// A balancer's listening sockets (clones kept to hand to its next generation).
enum Sockets {
    Tcp(Vec<TcpListener>),
    Udp(Vec<UdpSocket>),
}

impl Sockets {
    fn len(&self) -> usize {
        match self {
            Self::Tcp(s) => s.len(),
            Self::Udp(s) => s.len(),
        }
    }
}

/// A balancer bound but not yet running.
enum Bound {
    Http(HttpBalancer),
    Udp(UdpBalancer),
}

impl Bound {
    fn stats(&self) -> Arc<BalancerStats> {
        match self {
            Self::Http(b) => b.stats(),
            Self::Udp(b) => b.stats(),
        }
    }

    fn picker(&self) -> Arc<crate::balance::Picker> {
        match self {
            Self::Http(b) => b.picker(),
            Self::Udp(b) => b.picker(),
        }
    }

    fn set(&self) -> Arc<ArcSwap<BackendSet>> {
        match self {
            Self::Http(b) => b.backends(),
            Self::Udp(b) => b.backends(),
        }
    }

    fn sockets(&self) -> std::io::Result<Sockets> {
        Ok(match self {
            Self::Http(b) => Sockets::Tcp(b.share_sockets()?),
            Self::Udp(b) => Sockets::Udp(b.share_sockets()?),
        })
    }

    /// Its checks as configured (`None`: it has none).
    fn checks(&self, settings: &Settings) -> Option<Checks> {
        match (self, settings) {
            (Self::Http(b), Settings::Http(c)) => Checks::http(b, c),
            (Self::Udp(b), Settings::Udp(c)) => Checks::udp(b, c),
            _ => None,
        }
    }
}

/// One running balancer: its settings, its current generation and its checks.
struct Balancer {
    settings: Settings,
    stats: Arc<BalancerStats>,
    /// Its picker: what a next generation takes over (the rotation, the load counts).
    picker: Arc<crate::balance::Picker>,
    set: Arc<ArcSwap<BackendSet>>,
    sockets: Sockets,
    generation: u64,
    /// Cancelled to retire the generation.
    retire: CancellationToken,
    /// Cancelled to stop its health checks (`None`: it has none).
    health: Option<CancellationToken>,
}

impl Balancer {
    /// Closes the clones of its listening sockets (before it is retired: once its workers close
    /// theirs, nothing may keep the sockets open).
    fn close_sockets(&mut self) {
        self.sockets = match self.sockets {
            Sockets::Tcp(_) => Sockets::Tcp(Vec::new()),
            Sockets::Udp(_) => Sockets::Udp(Vec::new()),
        };
    }
}

/// A next generation, bound, waiting for the reload to commit.
struct Next {
    settings: Settings,
    bound: Bound,
    sockets: Sockets,
    /// Its place among the running balancers (`None`: an added one).
    replaces: Option<usize>,
    /// Whether it shares the running generation's live set (same backends, same order).
    shared: bool,
    /// Whether its checks start anew (new backends, or new check settings).
    new_checks: bool,
}

/// Runs the balancers and changes them while they run.
pub(super) struct Supervisor {
    balancers: Vec<Balancer>,
    config: Config,
    load: Option<Loader>,
    log: Log,
    list: Balancers,
    notes: Option<Notes>,
    rotations: crate::state::Rotations,
    sources: ProbeSources,
    stop: CancellationToken,
    /// Stops every generation's workers: cancelled once the process stops, after the clones of
    /// the listening sockets are closed (a socket left open by a clone would take connections
    /// that nobody accepts any more).
    halt: CancellationToken,
    /// Each generation's workers, joined: its number and how it ended.
    joins: JoinSet<(u64, Result<()>)>,
    generations: u64,
    /// Names that failed to resolve again, so a failure is said once until it resolves.
    unresolved: std::collections::HashSet<String>,
}

impl Supervisor {
    /// Starts what `up` bound: every balancer's workers and checks.
    pub(super) fn start(
        running: Running,
        config: Config,
        load: Option<Loader>,
        log: Log,
        stop: CancellationToken,
    ) -> Result<Self> {
        let mut s = Supervisor {
            balancers: Vec::new(),
            config,
            load,
            log,
            list: running.balancers,
            notes: running.notes,
            rotations: running.rotations,
            sources: ProbeSources::default(),
            stop,
            halt: CancellationToken::new(),
            joins: JoinSet::new(),
            generations: 0,
            unresolved: Default::default(),
        };
        let mut health = running.health;
        let bound = running
            .http
            .into_iter()
            .map(|(b, c)| (Bound::Http(b), Settings::Http(c)))
            .chain(running.udp.into_iter().map(|(b, c)| (Bound::Udp(b), Settings::Udp(c))));
        for (b, settings) in bound {
            let checks = health.iter().position(|(name, ..)| name == settings.name()).map(|i| health.remove(i));
            let sockets = b.sockets().with_context(|| format!("cannot start {}", settings.who()))?;
            let health = checks.map(|(_, h, reports)| s.start_checks(h, reports));
            let balancer = s.spawn(b, settings, sockets, health)?;
            s.balancers.push(balancer);
        }
        Ok(s)
    }

    /// Starts a generation's workers.
    fn spawn(
        &mut self,
        b: Bound,
        settings: Settings,
        sockets: Sockets,
        health: Option<CancellationToken>,
    ) -> Result<Balancer> {
        self.generations += 1;
        let generation = self.generations;
        let (stats, set, picker) = (b.stats(), b.set(), b.picker());
        let who = format!("{} balancer \"{}\"", settings.proto(), settings.name());
        let retire = match b {
            Bound::Http(b) => {
                // Retiring an HTTP generation is stopping it: it finishes what is under way.
                let retire = self.halt.child_token();
                let threads = b.spawn(retire.clone()).with_context(|| format!("cannot start {who}"))?;
                self.joins.spawn_blocking(move || {
                    let mut result = Ok(());
                    for t in threads {
                        let r = match t.join() {
                            Ok(r) => r.with_context(|| who.clone()),
                            Err(_) => Err(anyhow::anyhow!("{who} crashed")),
                        };
                        result = result.and(r);
                    }
                    (generation, result)
                });
                retire
            }
            Bound::Udp(b) => {
                let retire = CancellationToken::new();
                let threads = b
                    .spawn_retirable(self.halt.clone(), retire.clone())
                    .with_context(|| format!("cannot start {who}"))?;
                let (stop, retired) = (self.stop.clone(), retire.clone());
                self.joins.spawn_blocking(move || {
                    let mut total = UdpStats::default();
                    let mut result = Ok(());
                    for t in threads {
                        match t.join() {
                            Ok(Ok(stats)) => total.add(&stats),
                            Ok(Err(e)) => result = result.and(Err(anyhow::Error::from(e).context(who.clone()))),
                            Err(_) => result = result.and(Err(anyhow::anyhow!("{who} crashed"))),
                        }
                    }
                    // A retired generation's counts go on in the next one's statistics.
                    if result.is_ok() && (stop.is_cancelled() || !retired.is_cancelled()) {
                        tracing::info!("{who} stopped: {total}");
                    }
                    (generation, result)
                });
                retire
            }
        };
        Ok(Balancer { settings, stats, set, picker, sockets, generation, retire, health })
    }

    /// Starts health checks; cancelling the token stops them.
    fn start_checks(&self, health: Health, reports: Option<Reports>) -> CancellationToken {
        let token = self.stop.child_token();
        match health {
            Health::Main(feed) => {
                if let Some(reports) = reports {
                    let token = token.clone();
                    tokio::spawn(async move {
                        tokio::select! {
                            () = feed.follow(reports) => {}
                            () = token.cancelled() => {}
                        }
                    });
                }
            }
            Health::Own(monitor, feed) => {
                tokio::spawn(feed.follow(monitor.subscribe()));
                let token = token.clone();
                tokio::spawn(async move {
                    if let Err(e) = monitor.run(token).await {
                        tracing::error!("health checks stopped: {e:#}");
                    }
                });
            }
        }
        token
    }

    /// Runs until the process stops: reloads on SIGHUP and on the admin API's word, carries
    /// out the admin API's commands, resolves host names again. Fails when a running
    /// generation's workers fail (which stops the process, as at start).
    pub(super) async fn run(
        mut self,
        mut hup: Option<tokio::signal::unix::Signal>,
        mut commands: Option<mpsc::Receiver<Asked>>,
    ) -> Result<()> {
        let mut refresh = self.dns_refresh();
        let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + refresh, refresh);
        let failure = loop {
            tokio::select! {
                biased;
                () = self.stop.cancelled() => break None,
                Some(()) = async { hup.as_mut()?.recv().await } => {
                    let _ = self.reload("SIGHUP").await;
                }
                Some((command, reply)) = async { commands.as_mut()?.recv().await } => {
                    let answer = match command {
                        Command::Reload => self.reload("the admin API").await,
                        Command::Backend { balancer, backend, action } => self.mark(&balancer, &backend, action),
                    };
                    let _ = reply.send(answer);
                }
                _ = tick.tick() => self.resolve_again().await,
                Some(done) = self.joins.join_next() => {
                    let (generation, result) = match done {
                        Ok(done) => done,
                        Err(e) => break Some(anyhow::anyhow!("a balancer crashed: {e}")),
                    };
                    let current = self.balancers.iter().any(|b| b.generation == generation);
                    // Stopping, the workers end as they should.
                    if self.stop.is_cancelled() {
                        break result.err();
                    }
                    match result {
                        Err(e) if current => break Some(e),
                        Ok(()) if current => break Some(anyhow::anyhow!("a balancer stopped unexpectedly")),
                        Err(e) => tracing::warn!("a replaced generation stopped with an error: {e:#}"),
                        Ok(()) => {}
                    }
                }
            }
            if self.dns_refresh() != refresh {
                refresh = self.dns_refresh();
                tick = tokio::time::interval_at(tokio::time::Instant::now() + refresh, refresh);
            }
        };
        // Stopping: every generation stops with the process (its sockets' clones closed first);
        // wait for them to finish.
        self.stop.cancel();
        for b in &mut self.balancers {
            b.close_sockets();
        }
        self.halt.cancel();
        let mut failure = failure;
        let drained = tokio::time::timeout(DRAIN_TIMEOUT + Duration::from_secs(1), async {
            while let Some(done) = self.joins.join_next().await {
                if let Ok((_, Err(e))) = done {
                    failure.get_or_insert(e);
                }
            }
        })
        .await;
        if drained.is_err() {
            tracing::warn!("some requests were still running after {DRAIN_TIMEOUT:?}; stopped anyway");
        }
        failure.map_or(Ok(()), Err)
    }

    fn dns_refresh(&self) -> Duration {
        self.config.balance.dns_refresh.map_or(crate::config::DNS_REFRESH, |d| d.0)
    }

    /// Reads the config again and applies it; `why` names who asked.
    async fn reload(&mut self, why: &str) -> Reply {
        let Some(load) = self.load.clone() else {
            let message = "nothing to reload: netpulse was started without a config file (give --config FILE)";
            tracing::warn!("{why}: {message}; still running as started");
            return Err(Refusal::new(StatusCode::CONFLICT, message));
        };
        let next = match tokio::task::spawn_blocking(move || load()).await {
            Ok(Ok(next)) => next,
            Ok(Err(e)) => return Err(refused(StatusCode::BAD_REQUEST, format!("{e:#}"))),
            Err(e) => {
                return Err(refused(StatusCode::INTERNAL_SERVER_ERROR, format!("reading the config failed: {e}")));
            }
        };
        let lines = self.apply(next, "reloaded")?;
        if let Some(notes) = &self.notes {
            let t = i64::try_from(
                std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_millis(),
            )
            .unwrap_or(i64::MAX);
            let note = Note { t, kind: "reload", subject: "config".into(), detail: lines.join("; ") };
            let _ = notes.send(note);
        }
        Ok(lines.join("\n"))
    }

    /// Applies `next` (a valid config): binds every changed or added balancer's next generation,
    /// then starts them and retires what they replace, and the removed ones. Says what changed,
    /// one line per balancer, each starting with `verb`.
    fn apply(&mut self, mut next: Config, verb: &str) -> Result<Vec<String>, Refusal> {
        fit_descriptors_saying(&mut next, crate::net::raise_descriptor_limit(), false);
        let mut lines = self.kept_until_restart(&mut next);
        let wanted = Settings::all(&next);
        // Bind first, all of them: a failure leaves everything as it runs.
        let mut prepared = Vec::new();
        for settings in &wanted {
            let running = self.balancers.iter().position(|b| b.settings.same_balancer(settings));
            if running.is_some_and(|i| self.balancers[i].settings == *settings) {
                continue;
            }
            match self.prepare(running, settings.clone()) {
                Ok(n) => prepared.push(n),
                Err(e) => return Err(refused(StatusCode::CONFLICT, format!("{e:#}"))),
            }
        }
        // Then start and retire.
        for n in prepared {
            let before = n.replaces.map(|i| self.balancers[i].settings.clone());
            let who = n.settings.who();
            let after = n.settings.clone();
            match self.commit(n) {
                Ok(()) => lines.push(format!("{verb}: {who}: {}", describe(before.as_ref(), &after))),
                Err(e) => {
                    tracing::error!("{verb}: {who}: {e:#}");
                    lines.push(format!("{verb}: {who}: failed to start ({e:#}); the rest applies"));
                }
            }
        }
        let (keep, removed): (Vec<Balancer>, Vec<Balancer>) = std::mem::take(&mut self.balancers)
            .into_iter()
            .partition(|b| wanted.iter().any(|w| w.same_balancer(&b.settings)));
        for mut b in removed {
            self.rotations.forget(&b.picker);
            b.close_sockets();
            b.retire.cancel();
            if let Some(h) = &b.health {
                h.cancel();
            }
            lines.push(format!("{verb}: {}: removed; it finishes what is under way and stops", b.settings.who()));
        }
        // In the order of the file, as the sinks list them.
        let mut keep = keep;
        keep.sort_by_key(|b| wanted.iter().position(|w| w.same_balancer(&b.settings)));
        self.balancers = keep;
        self.list.replace(self.balancers.iter().map(|b| b.stats.clone()).collect());
        let mut config = next;
        config.balance.http = self.settings_of(|s| if let Settings::Http(c) = s { Some(c.clone()) } else { None });
        config.balance.udp = self.settings_of(|s| if let Settings::Udp(c) = s { Some(c.clone()) } else { None });
        self.config = config;
        if lines.is_empty() {
            lines.push(format!("{verb}: no changes"));
        }
        for l in &lines {
            tracing::info!("{l}");
        }
        Ok(lines)
    }

    fn settings_of<T>(&self, f: impl Fn(&Settings) -> Option<T>) -> Vec<T> {
        self.balancers.iter().filter_map(|b| f(&b.settings)).collect()
    }

    /// Lines for what `next` changes that only a restart applies, which keeps running as it
    /// started: `[serve]`, `[monitor]`, `[history]`, a balancer's worker count (set back in
    /// `next` to the running one).
    fn kept_until_restart(&self, next: &mut Config) -> Vec<String> {
        let mut lines = Vec::new();
        let restart = |what: &str| format!("reload: {what} changed; a restart applies it (running as started)");
        if next.serve != self.config.serve {
            lines.push(restart("[serve]"));
        }
        if next.monitor != self.config.monitor {
            lines.push(restart("[monitor]"));
        }
        if next.history != self.config.history {
            lines.push(restart("[history]"));
        }
        if next.state != self.config.state {
            lines.push(restart("[state]"));
        }
        next.state = self.config.state.clone();
        next.serve = self.config.serve.clone();
        next.monitor = self.config.monitor.clone();
        next.history = self.config.history.clone();
        let mut fix = |settings: Vec<&mut Option<usize>>, names: Vec<String>| {
            for (workers, who) in settings.into_iter().zip(names) {
                let Some(b) = self.balancers.iter().find(|b| b.settings.who() == who) else { continue };
                if *workers != b.settings.workers() {
                    lines.push(format!(
                        "reload: {who}: workers {} -> {} applies at a restart (running with {})",
                        shown_workers(b.settings.workers()),
                        shown_workers(*workers),
                        b.sockets.len()
                    ));
                    *workers = b.settings.workers();
                }
            }
        };
        let names: Vec<String> = next.balance.http.iter().map(|c| format!("http \"{}\"", c.name)).collect();
        fix(next.balance.http.iter_mut().map(|c| &mut c.workers).collect(), names);
        let names: Vec<String> = next.balance.udp.iter().map(|c| format!("udp \"{}\"", c.name)).collect();
        fix(next.balance.udp.iter_mut().map(|c| &mut c.workers).collect(), names);
        lines
    }

    /// Binds the next generation of balancer `running` (or a new balancer) as `settings` says.
    fn prepare(&self, running: Option<usize>, settings: Settings) -> Result<Next> {
        let who = settings.who();
        let Some(i) = running else {
            let bound = match &settings {
                Settings::Http(c) => Bound::Http(HttpBalancer::bind(c, self.log.clone())?),
                Settings::Udp(c) => Bound::Udp(UdpBalancer::bind(c, self.log.clone())?),
            };
            let sockets = bound.sockets().with_context(|| format!("cannot start {who}"))?;
            return Ok(Next { settings, bound, sockets, replaces: None, shared: false, new_checks: true });
        };
        let old = &self.balancers[i];
        let same_listen = old.settings.listen() == settings.listen();
        let shared = old.settings.backends().addrs() == settings.backends().addrs();
        let set = shared.then(|| old.set.clone());
        let stats = old.stats.clone();
        let picker = Some(old.picker.clone());
        let bound = match (&settings, &old.sockets) {
            (Settings::Http(c), Sockets::Tcp(s)) => {
                let sockets = if same_listen { Some(share(s, TcpListener::try_clone)?) } else { None };
                Bound::Http(HttpBalancer::bind_with(
                    c,
                    self.log.clone(),
                    Some(Takeover { sockets, stats, set, picker }),
                )?)
            }
            (Settings::Udp(c), Sockets::Udp(s)) => {
                let sockets = if same_listen { Some(share(s, UdpSocket::try_clone)?) } else { None };
                Bound::Udp(UdpBalancer::bind_with(c, self.log.clone(), Some(Takeover { sockets, stats, set, picker }))?)
            }
            _ => anyhow::bail!("{who}: a balancer cannot change its protocol"),
        };
        if !shared {
            // A set of its own, with what the running one knew of the backends that stay.
            let (before, after) = (old.settings.backends(), settings.backends());
            let live = old.set.load();
            let operator = |a: SocketAddr| {
                let live = live.backends().iter().find(|b| b.addr == a).map(|b| b.weight);
                weight_of(before, a).is_some_and(|w| live != Some(w) && weight_of(after, a) == Some(w))
            };
            let set = bound.set();
            let carried = carry(&live, &set.load(), operator);
            set.store(Arc::new(carried));
        }
        let sockets = bound.sockets().with_context(|| format!("cannot start {who}"))?;
        // `measured` weighs by the checks' probes: a change to or from it needs checks that do.
        let measured = |s: &Settings| s.strategy() == crate::balance::Strategy::Measured;
        let new_checks =
            !shared || old.settings.health() != settings.health() || measured(&old.settings) != measured(&settings);
        Ok(Next { settings, bound, sockets, replaces: Some(i), shared, new_checks })
    }

    /// Starts a prepared generation and retires the one it replaces.
    fn commit(&mut self, n: Next) -> Result<()> {
        let Next { settings, bound, sockets, replaces, shared, new_checks } = n;
        if let (true, Some(i)) = (shared, replaces) {
            // The file's new weights on the shared set; an operator's stay where the file
            // did not change that backend's weight.
            let old = &self.balancers[i];
            let changed: Vec<(SocketAddr, u32)> = settings
                .backends()
                .0
                .iter()
                .filter(|b| weight_of(old.settings.backends(), b.addr) != Some(b.weight))
                .map(|b| (b.addr, b.weight))
                .collect();
            let strategy = settings.strategy();
            if !changed.is_empty() || old.set.load().strategy() != strategy {
                old.set.rcu(|s| {
                    let mut next = (**s).clone();
                    for &(a, w) in &changed {
                        next.set_weight(a, w);
                    }
                    if next.strategy() != strategy {
                        next = next.with_strategy(strategy);
                    }
                    next
                });
            }
        }
        let mut health = replaces.and_then(|i| self.balancers[i].health.clone());
        if new_checks {
            if let Some(h) = health.take() {
                h.cancel();
            }
            if let Some(checks) = bound.checks(&settings) {
                let (monitor, feed) = checks.checker(&self.sources);
                health = Some(self.start_checks(Health::Own(monitor, feed), None));
            }
        }
        let started = self.spawn(bound, settings, sockets, health.clone());
        let started = match started {
            Ok(b) => b,
            Err(e) => {
                if new_checks {
                    if let Some(h) = health {
                        h.cancel();
                    }
                }
                return Err(e);
            }
        };
        match replaces {
            Some(i) => {
                let mut old = std::mem::replace(&mut self.balancers[i], started);
                let new = &self.balancers[i];
                if !Arc::ptr_eq(&old.picker, &new.picker) || old.settings.listen() != new.settings.listen() {
                    self.rotations.follow(
                        &old.picker,
                        new.settings.listen(),
                        new.settings.backends().addrs(),
                        new.picker.clone(),
                    );
                }
                old.close_sockets();
                old.retire.cancel();
            }
            None => {
                let (proto, name) = (started.settings.proto(), started.settings.name().to_string());
                let (listen, backends) = (started.settings.listen(), started.settings.backends().addrs());
                self.rotations.add(proto, &name, listen, backends, started.picker.clone());
                self.balancers.push(started);
            }
        }
        Ok(())
    }

    /// Carries out an operator's `action` on `backend` of `balancer`.
    fn mark(&mut self, balancer: &str, backend: &str, action: Action) -> Reply {
        let Some(b) = self.balancers.iter().find(|b| b.settings.name() == balancer) else {
            let names: Vec<&str> = self.balancers.iter().map(|b| b.settings.name()).collect();
            let message = format!("no balancer is named \"{balancer}\" (balancers: {})", names.join(", "));
            return Err(Refusal::new(StatusCode::NOT_FOUND, message));
        };
        let specs = &b.settings.backends().0;
        let Some(addr) = find_backend(specs, backend) else {
            let listed: Vec<String> = specs.iter().map(shown_backend).collect();
            let message =
                format!("{} has no backend {backend} (its backends: {})", b.settings.who(), listed.join(", "));
            return Err(Refusal::new(StatusCode::NOT_FOUND, message));
        };
        let (what, why) = match action {
            Action::Drain => ("draining".to_string(), "drained by operator".to_string()),
            Action::Disable => ("disabled".to_string(), "disabled by operator".to_string()),
            Action::Enable => ("enabled".to_string(), "enabled by operator".to_string()),
            Action::Weight(w) => (format!("weight {w}"), format!("weight set to {w} by operator")),
        };
        b.set.rcu(|s| {
            let mut next = (**s).clone();
            match action {
                Action::Drain => next.set_admin(addr, Mark::Draining),
                Action::Disable => next.set_admin(addr, Mark::Disabled),
                Action::Enable => next.set_admin(addr, Mark::Enabled),
                Action::Weight(w) => next.set_weight(addr, w),
            }
            next
        });
        b.stats.note(addr, why);
        let line = format!("{}: backend {addr} {what} (by operator)", b.settings.who());
        tracing::info!("{line}");
        Ok(line)
    }

    /// Resolves the backends written as host names again; a changed address is applied as a
    /// reload of its balancer, a failure keeps the last address (said once until it resolves).
    async fn resolve_again(&mut self) {
        let named: Vec<BackendSpec> = Settings::all(&self.config)
            .iter()
            .flat_map(|s| s.backends().0.iter().filter(|b| b.host.is_some()).cloned().collect::<Vec<_>>())
            .collect();
        if named.is_empty() {
            return;
        }
        let Ok(found) =
            tokio::task::spawn_blocking(move || named.into_iter().map(|b| (b.resolve_again(), b)).collect::<Vec<_>>())
                .await
        else {
            return;
        };
        let mut next = self.config.clone();
        let mut changed = false;
        for (result, spec) in found {
            let host = spec.host.clone().unwrap_or_default();
            match result {
                Some(Ok(addr)) => {
                    if self.unresolved.remove(&host) {
                        tracing::info!("backend {host} resolves again ({addr})");
                    }
                    if addr != spec.addr {
                        tracing::info!("backend {host} now resolves to {addr} (was {})", spec.addr);
                        for b in next
                            .balance
                            .http
                            .iter_mut()
                            .map(|c| &mut c.backends)
                            .chain(next.balance.udp.iter_mut().map(|c| &mut c.backends))
                        {
                            for s in b.0.iter_mut().filter(|s| s.host.as_deref() == Some(&host)) {
                                s.addr = addr;
                            }
                        }
                        changed = true;
                    }
                }
                Some(Err(e)) if self.unresolved.insert(host.clone()) => {
                    tracing::warn!("{e}; keeping {} until it resolves", spec.addr);
                }
                Some(Err(_)) => {}
                None => {}
            }
        }
        if !changed {
            return;
        }
        if let Err(e) = next.validate("backends resolved again") {
            tracing::warn!("{e}; keeping the addresses they had");
            return;
        }
        let _ = self.apply(next, "resolved again");
    }
}

/// Says why a reload was refused (the config's own message), and that nothing changed.
fn refused(status: StatusCode, message: String) -> Refusal {
    tracing::error!("reload refused: {message}; still running the previous config");
    Refusal::new(status, format!("reload refused: {message}; still running the previous config"))
}

fn share<S>(sockets: &[S], clone: impl Fn(&S) -> std::io::Result<S>) -> Result<Vec<S>> {
    crate::proxy::reload::share(sockets, clone).context("cannot share the listening sockets")
}

fn weight_of(backends: &Backends, addr: SocketAddr) -> Option<u32> {
    backends.0.iter().find(|b| b.addr == addr).map(|b| b.weight)
}

/// The backend written `written`: its address, or the `NAME:PORT` it was configured as.
fn find_backend(specs: &[BackendSpec], written: &str) -> Option<SocketAddr> {
    let addr = written.trim().parse::<SocketAddr>().ok();
    specs.iter().find(|b| Some(b.addr) == addr || b.host.as_deref() == Some(written.trim())).map(|b| b.addr)
}

fn shown_backend(b: &BackendSpec) -> String {
    match &b.host {
        Some(host) => format!("{host} ({})", b.addr),
        None => b.addr.to_string(),
    }
}

fn shown_workers(w: Option<usize>) -> String {
    w.map_or_else(|| "one per core".to_string(), |n| n.to_string())
}

/// What changed from `before` to `after`, in words: `backends +A -B, weight A 1 -> 5,
/// timeout 30s -> 5s` (or, for an added balancer, where it listens and to what).
fn describe(before: Option<&Settings>, after: &Settings) -> String {
    let Some(before) = before else {
        let list: Vec<String> = after.backends().0.iter().map(shown_backend).collect();
        return format!("added, on {} -> {}", after.listen(), list.join(", "));
    };
    let mut parts = Vec::new();
    if before.listen() != after.listen() {
        parts.push(format!(
            "listen {} -> {} (the old address closes once what is under way there is done)",
            before.listen(),
            after.listen()
        ));
    }
    let (b, a) = (before.backends(), after.backends());
    let added: Vec<String> =
        a.0.iter().filter(|x| weight_of(b, x.addr).is_none()).map(|x| format!("+{}", shown_backend(x))).collect();
    let gone: Vec<String> =
        b.0.iter().filter(|x| weight_of(a, x.addr).is_none()).map(|x| format!("-{}", shown_backend(x))).collect();
    if !added.is_empty() || !gone.is_empty() {
        parts.push(format!("backends {}", added.into_iter().chain(gone).collect::<Vec<_>>().join(" ")));
    } else if b.addrs() != a.addrs() {
        parts.push("backends reordered".into());
    }
    for x in &a.0 {
        if let Some(w) = weight_of(b, x.addr).filter(|&w| w != x.weight) {
            parts.push(format!("weight {} {w} -> {}", x.addr, x.weight));
        }
    }
    let mut field = |name: &str, before: String, after: String| {
        if before != after {
            parts.push(format!("{name} {before} -> {after}"));
        }
    };
    match (before, after) {
        (Settings::Http(b), Settings::Http(a)) => {
            field("strategy", b.strategy_name(), a.strategy_name());
            field("connect_timeout", b.connect_timeout.to_string(), a.connect_timeout.to_string());
            field("timeout", b.timeout.to_string(), a.timeout.to_string());
            field("head_timeout", b.head_timeout.to_string(), a.head_timeout.to_string());
            field("max_connections", b.max_connections.to_string(), a.max_connections.to_string());
            field("pool_max_idle", b.pool_max_idle.to_string(), a.pool_max_idle.to_string());
            field("retries", b.retries.to_string(), a.retries.to_string());
            field("eject_after", b.eject_after.to_string(), a.eject_after.to_string());
            field("eject_for", b.eject_for.to_string(), a.eject_for.to_string());
            field("access_log", b.access_log.to_string(), a.access_log.to_string());
        }
        (Settings::Udp(b), Settings::Udp(a)) => {
            field("strategy", b.strategy_name(), a.strategy_name());
            field("max_flows", b.max_flows.to_string(), a.max_flows.to_string());
            field("flow_idle_timeout", b.flow_idle_timeout.to_string(), a.flow_idle_timeout.to_string());
            field("access_log", b.access_log.to_string(), a.access_log.to_string());
        }
        _ => {}
    }
    let (hb, ha) = (before.health(), after.health());
    if hb != ha {
        let mut h = Vec::new();
        let mut sub = |name: &str, before: String, after: String| {
            if before != after {
                h.push(format!("health.{name} {before} -> {after}"));
            }
        };
        sub("check", format!("{:?}", hb.check).to_lowercase(), format!("{:?}", ha.check).to_lowercase());
        sub("interval", hb.interval.to_string(), ha.interval.to_string());
        sub("timeout", hb.timeout.to_string(), ha.timeout.to_string());
        sub("fall", hb.fall.to_string(), ha.fall.to_string());
        sub("rise", hb.rise.to_string(), ha.rise.to_string());
        sub("path", hb.path.clone(), ha.path.clone());
        sub("status", format!("{:?}", hb.status.0), format!("{:?}", ha.status.0));
        sub("send", format!("{:?}", hb.send), format!("{:?}", ha.send));
        sub("expect", format!("{:?}", hb.expect), format!("{:?}", ha.expect));
        parts.push(h.join(", "));
    }
    if parts.is_empty() {
        parts.push("settings changed".into());
    }
    parts.join(", ")
}
