//! The dashboard's live model: what the terminal shows, built from the monitor's reports and
//! the balancers' snapshots — a ring of probes per target, of rates per interface, the last
//! [`RECENT`] of snapshots per balancer (req/s, error share, latency quantiles and each
//! backend's share of the traffic are [`traffic::recent`] between the newest and the one about
//! [`RECENT`] older, as on the web page) — and the viewer's place in it (focus, selection,
//! pause, help). No terminal here: `render` draws it, `mod.rs` feeds it.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use crossterm::event::{KeyCode, KeyEvent, KeyEventKind, KeyModifiers};

use crate::iface::InterfaceStats;
use crate::log::{LineKind, PaneLine};
use crate::monitor::report::{Connectivity, Report, TargetReport};
use crate::probe::ProbeKind;
use crate::stats::WindowSummary;
use crate::stats::traffic::{self, BackendState, BalancerSnapshot, Proto, Recent};

/// Probes kept per target (ten minutes at the default interval): what the chart spans.
pub const PROBE_HISTORY: usize = 600;
/// Rate samples kept per interface.
pub const RATE_HISTORY: usize = 300;
/// What "loss 1m" is taken over.
pub const MINUTE: Duration = Duration::from_secs(60);
/// What the balancers' figures (req/s, error %, share, p50/p99) are taken over: the snapshot
/// about this much older than the newest, as the web page takes them.
pub const RECENT: Duration = Duration::from_secs(10);
/// Balancer snapshots kept at most (the span at a 100 ms interval, and its start).
const SNAPSHOTS: usize = 101;
/// Log lines the model copies from the pane (what the log panel can scroll back through).
pub const LOG_LINES: usize = 500;

/// A ring of the newest values, counting every value ever pushed (so a value's place in time
/// is stable: the chart buckets by it).
#[derive(Debug, Clone)]
pub struct Ring<T> {
    values: VecDeque<T>,
    capacity: usize,
    pushed: u64,
}

impl<T> Ring<T> {
    pub fn new(capacity: usize) -> Self {
        Self { values: VecDeque::with_capacity(capacity.min(64)), capacity: capacity.max(1), pushed: 0 }
    }

    pub fn push(&mut self, v: T) {
        if self.values.len() == self.capacity {
            self.values.pop_front();
        }
        self.values.push_back(v);
        self.pushed += 1;
    }

    pub fn len(&self) -> usize {
        self.values.len()
    }

    pub fn is_empty(&self) -> bool {
        self.values.is_empty()
    }

    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Values pushed since the start (the newest has number `pushed() - 1`).
    pub fn pushed(&self) -> u64 {
        self.pushed
    }

    /// Oldest first.
    pub fn iter(&self) -> impl DoubleEndedIterator<Item = &T> + ExactSizeIterator {
        self.values.iter()
    }

    /// The newest `n` values, oldest first.
    pub fn last(&self, n: usize) -> impl Iterator<Item = &T> {
        self.values.iter().skip(self.values.len().saturating_sub(n))
    }
}

/// One probe as the dashboard draws it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Point {
    /// The round-trip time of an answered probe; `None`: no answer (lost, or refused).
    pub rtt_ms: Option<f32>,
    /// Whether it found the target up (an HTTP 503 answers, but not up).
    pub up: bool,
}

impl Point {
    pub fn lost(&self) -> bool {
        self.rtt_ms.is_none()
    }
}

/// A target's line and history.
#[derive(Debug, Clone)]
pub struct TargetView {
    pub name: String,
    pub kind: ProbeKind,
    pub summary: WindowSummary,
    pub points: Ring<Point>,
}

impl TargetView {
    /// The share of the newest `n` probes without an answer, in percent (ping's loss).
    pub fn loss_pct_last(&self, n: usize) -> Option<f64> {
        let (mut all, mut lost) = (0u32, 0u32);
        for p in self.points.last(n) {
            all += 1;
            lost += u32::from(p.lost());
        }
        (all > 0).then(|| f64::from(lost) * 100.0 / f64::from(all))
    }
}

/// An interface's line and history.
#[derive(Debug, Clone)]
pub struct IfaceView {
    pub name: String,
    pub up: bool,
    pub rx_bytes_per_sec: f64,
    pub tx_bytes_per_sec: f64,
    pub errors: u64,
    pub drops: u64,
    /// Received plus sent bytes per second, one per report.
    pub rates: Ring<f64>,
}

/// What one backend did over the last [`RECENT`] (the span of the web page's figures).
#[derive(Debug, Clone, PartialEq)]
pub struct BackendView {
    pub addr: SocketAddr,
    pub state: BackendState,
    /// Seconds since its state last changed (or since the balancer started).
    pub for_secs: Option<u64>,
    pub why: Option<String>,
    pub ejected_for_ms: Option<u64>,
    /// The weight its strategy gives it now (configured × measured), and why (under
    /// `measured`).
    pub weight: f64,
    pub weight_why: Option<String>,
    /// The span's figures ([`traffic::recent`]: req/s, error %, share, p50/p99, bytes/s);
    /// `None` until two snapshots are apart.
    pub recent: Option<Recent>,
    /// Sent to it since the balancer started.
    pub total: u64,
}

/// A balancer's lines.
#[derive(Debug, Clone)]
pub struct BalancerView {
    pub name: String,
    pub proto: Proto,
    pub listen: Option<SocketAddr>,
    pub strategy: String,
    /// Client requests (HTTP) or datagrams (UDP) per second over the span.
    pub rate: Option<f64>,
    /// Over the span: answers of class 5xx (ours included) to clients (HTTP), client datagrams
    /// without a reply (UDP, drops included), as a share of requests.
    pub err_pct: Option<f64>,
    /// Client connections open (HTTP) or flows open (UDP).
    pub open: i64,
    pub total: u64,
    pub backends: Vec<BackendView>,
    /// The seconds the figures cover (up to [`RECENT`]; less just after the start).
    pub span_secs: Option<f64>,
    /// Snapshots of the last [`RECENT`] and the newest one older than that, oldest first.
    snapshots: VecDeque<(Instant, Arc<BalancerSnapshot>)>,
}

/// The client side of a balancer's totals: (requests, of them failed).
fn client_counts(s: &BalancerSnapshot) -> (u64, u64) {
    match (&s.http, &s.udp) {
        (Some(h), _) => (h.requests, h.responses.c5xx),
        (None, Some(u)) => (u.requests, u.requests.saturating_sub(u.replies)),
        (None, None) => (0, 0),
    }
}

impl BalancerView {
    fn new(s: &BalancerSnapshot) -> Self {
        Self {
            name: s.name.clone(),
            proto: s.proto,
            listen: s.listen,
            strategy: s.strategy.clone(),
            rate: None,
            err_pct: None,
            open: 0,
            total: 0,
            backends: Vec::new(),
            span_secs: None,
            snapshots: VecDeque::new(),
        }
    }

    /// Takes a new snapshot taken at `at` (monotonic) and `now` (wall clock, for "since").
    fn update(&mut self, s: &BalancerSnapshot, at: Instant, now: SystemTime) {
        self.listen = s.listen;
        self.snapshots.push_back((at, Arc::new(s.clone())));
        // Keep the newest snapshot that is at least RECENT old (the span's start) and those
        // after it; at most SNAPSHOTS (a fast interval thins nothing: 10 s at 100 ms is 101).
        while self.snapshots.len() > SNAPSHOTS
            || self.snapshots.get(1).is_some_and(|(t, _)| at.duration_since(*t) >= RECENT)
        {
            self.snapshots.pop_front();
        }
        // Of the first two, the one nearer RECENT before this (reports that come late or early
        // make the span a little longer or shorter, as the web page's ten reports are).
        let near = |t: &Instant| at.duration_since(*t).abs_diff(RECENT);
        let then = match (self.snapshots.front(), self.snapshots.get(1)) {
            (Some(a), Some(b)) if near(&b.0) < near(&a.0) && b.0 < at => Some(b),
            (first, _) => first.filter(|(t, _)| *t < at),
        };
        let secs = then.map(|(t, _)| at.duration_since(*t).as_secs_f64());
        self.span_secs = secs;
        let earlier = then.map(|(_, e)| &**e).filter(|e| e.name == s.name);
        let recent = secs.map(|secs| traffic::recent(s, earlier, secs));
        let (requests, failed) = client_counts(s);
        let before = earlier.map(client_counts);
        self.rate = before.zip(secs).map(|((r, _), secs)| requests.saturating_sub(r) as f64 / secs);
        self.err_pct = before.and_then(|(r, f)| pct(failed.saturating_sub(f), requests.saturating_sub(r)));
        (self.open, self.total) = match (&s.http, &s.udp) {
            (Some(h), _) => (h.clients_active, h.requests),
            (None, Some(u)) => (u.flows_open, u.requests),
            (None, None) => (0, 0),
        };
        let started = parse_time(&s.started);
        self.backends = s
            .backends
            .iter()
            .enumerate()
            .map(|(i, b)| {
                let since = parse_time(&b.since).or(started);
                BackendView {
                    addr: b.addr,
                    state: b.state,
                    for_secs: since.and_then(|t| now.duration_since(t).ok()).map(|d| d.as_secs()),
                    why: b.why.clone(),
                    ejected_for_ms: b.ejected_for_ms,
                    weight: b.effective_weight,
                    weight_why: b.weight_why.clone(),
                    recent: recent.as_ref().and_then(|r| r.get(i)).cloned(),
                    total: traffic::counts(b).requests,
                }
            })
            .collect();
    }
}

fn pct(part: u64, whole: u64) -> Option<f64> {
    (whole > 0).then(|| (part.min(whole)) as f64 * 100.0 / whole as f64)
}

fn parse_time(rfc3339: &str) -> Option<SystemTime> {
    let ms = rfc3339.parse::<jiff::Timestamp>().ok()?.as_millisecond();
    SystemTime::UNIX_EPOCH.checked_add(Duration::from_millis(u64::try_from(ms).ok()?))
}

/// The panels, in the order Tab visits them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Panel {
    Targets,
    Balancers,
    Interfaces,
    Log,
}

impl Panel {
    pub fn name(self) -> &'static str {
        match self {
            Panel::Targets => "targets",
            Panel::Balancers => "balancers",
            Panel::Interfaces => "interfaces",
            Panel::Log => "log",
        }
    }
}

/// What a key asks of the event loop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Nothing changed.
    None,
    Redraw,
    Quit,
}

/// How the dashboard was asked to run.
#[derive(Debug, Clone)]
pub struct Options {
    /// The command it belongs to, for the header: "up" or "monitor".
    pub command: &'static str,
    /// The monitor's interval, when there is a monitor.
    pub interval: Option<Duration>,
    /// Interfaces to show (`--iface`); empty: all.
    pub ifaces: Vec<String>,
    /// Colours, unless `NO_COLOR` is set.
    pub color: bool,
    /// Whether the log pane is shown even while empty (under `up`).
    pub log_pane: bool,
    /// Where the web dashboard (and `/metrics`) listens, for the header.
    pub web: Option<SocketAddr>,
}

impl Options {
    /// Colours unless `NO_COLOR` is set to something (no-color.org).
    pub fn color_from_env() -> bool {
        std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty())
    }
}

/// What the dashboard shows: everything taken from reports, snapshots and the log.
#[derive(Debug, Clone, Default)]
pub struct View {
    /// The newest report's time and verdict (none before the first report).
    pub time: Option<String>,
    pub connectivity: Option<Connectivity>,
    pub targets: Vec<TargetView>,
    pub interfaces: Vec<IfaceView>,
    pub balancers: Vec<BalancerView>,
    pub log: Vec<PaneLine>,
    /// Whether traffic came (an access-log line, or a balancer counted a request): until then
    /// the banner stays on top of the log pane.
    pub traffic_seen: bool,
    /// Reports taken.
    pub reports: u64,
}

/// The whole model: the live view, a frozen copy of it while paused (what is drawn then; the
/// live one goes on taking reports, so nothing is missed and memory stays bounded), and the
/// viewer's place.
#[derive(Debug)]
pub struct State {
    pub command: &'static str,
    pub interval: Option<Duration>,
    pub live: View,
    frozen: Option<View>,
    pub log_pane: bool,
    pub focus: Panel,
    pub selected_target: usize,
    pub selected_iface: usize,
    /// Counted over every backend of every balancer, in order.
    pub selected_backend: usize,
    /// Lines scrolled back from the newest in the log (0: following).
    pub log_back: usize,
    pub help: bool,
    pub color: bool,
    /// Where the web dashboard listens.
    pub web: Option<SocketAddr>,
    /// What listens where and how to try it (the lines `up` printed before the dashboard).
    pub banner: Vec<String>,
    iface_filter: Vec<String>,
}

impl State {
    pub fn new(o: &Options) -> Self {
        Self {
            command: o.command,
            interval: o.interval,
            live: View::default(),
            frozen: None,
            log_pane: o.log_pane,
            focus: Panel::Targets,
            selected_target: 0,
            selected_iface: 0,
            selected_backend: 0,
            log_back: 0,
            help: false,
            color: o.color,
            web: o.web,
            banner: Vec::new(),
            iface_filter: o.ifaces.clone(),
        }
    }

    /// The banner: shown on top of the log pane until the first access-log line, then the
    /// log's first lines.
    pub fn set_banner(&mut self, banner: &str) {
        self.banner = banner.lines().map(str::to_string).collect();
        self.clamp();
    }

    /// Whether the banner is held on top of the log pane (no traffic came yet).
    pub fn banner_pinned(&self) -> bool {
        !self.banner.is_empty() && !self.view().traffic_seen
    }

    /// Lines of the log pane: the banner, then the log.
    pub fn log_len(&self) -> usize {
        self.banner.len() + self.view().log.len()
    }

    /// The log pane's line `i` (the banner's lines first).
    pub fn log_line(&self, i: usize) -> Option<(LineKind, &str)> {
        match i.checked_sub(self.banner.len()) {
            None => self.banner.get(i).map(|l| (LineKind::Info, l.as_str())),
            Some(j) => self.view().log.get(j).map(|l| (l.kind, l.text.as_str())),
        }
    }

    /// What to draw: the live view, or the frozen one while paused.
    pub fn view(&self) -> &View {
        self.frozen.as_ref().unwrap_or(&self.live)
    }

    pub fn paused(&self) -> bool {
        self.frozen.is_some()
    }

    /// Reports taken since the pause (shown while paused: how far behind the view is).
    pub fn behind(&self) -> u64 {
        self.frozen.as_ref().map_or(0, |f| self.live.reports - f.reports)
    }

    /// Probes per minute at the monitor's interval (what "loss 1m" is taken over).
    pub fn probes_per_minute(&self) -> usize {
        let interval = self.interval.unwrap_or(Duration::from_secs(1)).max(Duration::from_millis(1));
        (MINUTE.as_secs_f64() / interval.as_secs_f64()).ceil().max(1.0) as usize
    }

    /// Takes one report into the model.
    pub fn absorb(&mut self, r: &Report) {
        self.live.reports += 1;
        self.live.time = Some(r.time.clone());
        self.live.connectivity = Some(r.connectivity);
        let same = self.live.targets.len() == r.targets.len()
            && self.live.targets.iter().zip(&r.targets).all(|(v, t)| v.name == t.target);
        if !same {
            // Another set of targets: keep the history of those still there.
            let mut old = std::mem::take(&mut self.live.targets);
            self.live.targets = r
                .targets
                .iter()
                .map(|t| match old.iter().position(|v| v.name == t.target) {
                    Some(at) => old.swap_remove(at),
                    None => new_target(t),
                })
                .collect();
        }
        for (v, t) in self.live.targets.iter_mut().zip(&r.targets) {
            v.summary = t.summary.clone();
            for p in &t.probes {
                v.points.push(Point { rtt_ms: p.rtt_ms.map(|ms| ms as f32), up: p.up });
            }
        }
        let shown: Vec<&InterfaceStats> = r
            .interfaces
            .iter()
            .filter(|i| self.iface_filter.is_empty() || self.iface_filter.contains(&i.name))
            .collect();
        let same = self.live.interfaces.len() == shown.len()
            && self.live.interfaces.iter().zip(&shown).all(|(v, i)| v.name == i.name);
        if !same {
            let mut old = std::mem::take(&mut self.live.interfaces);
            self.live.interfaces = shown
                .iter()
                .map(|i| match old.iter().position(|v| v.name == i.name) {
                    Some(at) => old.swap_remove(at),
                    None => IfaceView {
                        name: i.name.clone(),
                        up: i.up,
                        rx_bytes_per_sec: 0.0,
                        tx_bytes_per_sec: 0.0,
                        errors: 0,
                        drops: 0,
                        rates: Ring::new(RATE_HISTORY),
                    },
                })
                .collect();
        }
        for (v, i) in self.live.interfaces.iter_mut().zip(&shown) {
            v.up = i.up;
            v.rx_bytes_per_sec = i.rx_bytes_per_sec;
            v.tx_bytes_per_sec = i.tx_bytes_per_sec;
            v.errors = i.counters.rx_errors + i.counters.tx_errors;
            v.drops = i.counters.rx_dropped + i.counters.tx_dropped;
            v.rates.push(i.rx_bytes_per_sec + i.tx_bytes_per_sec);
        }
        self.clamp();
    }

    /// Takes the balancers' snapshots, taken at `at` (monotonic) and `now` (wall clock).
    pub fn take_balancers(&mut self, snapshots: &[BalancerSnapshot], at: Instant, now: SystemTime) {
        if self.live.balancers.len() != snapshots.len()
            || self.live.balancers.iter().zip(snapshots).any(|(v, s)| v.name != s.name || v.proto != s.proto)
        {
            self.live.balancers = snapshots.iter().map(BalancerView::new).collect();
        }
        for (v, s) in self.live.balancers.iter_mut().zip(snapshots) {
            v.update(s, at, now);
        }
        self.live.traffic_seen |= snapshots.iter().any(|s| client_counts(s).0 > 0);
        self.clamp();
    }

    /// The log lines to show (the pane's newest).
    pub fn set_log(&mut self, lines: Vec<PaneLine>) {
        self.live.traffic_seen |= lines.iter().any(|l| l.kind == LineKind::Access);
        self.live.log = lines;
        self.clamp();
    }

    /// The panels shown, in Tab order.
    pub fn panels(&self) -> Vec<Panel> {
        let mut p = vec![Panel::Targets];
        if !self.view().balancers.is_empty() {
            p.push(Panel::Balancers);
        }
        p.push(Panel::Interfaces);
        if self.shows_log() {
            p.push(Panel::Log);
        }
        p
    }

    pub fn shows_log(&self) -> bool {
        self.log_pane || self.log_len() > 0
    }

    pub fn backends_len(&self) -> usize {
        self.view().balancers.iter().map(|b| b.backends.len()).sum()
    }

    /// The selected target, if any.
    pub fn target(&self) -> Option<&TargetView> {
        self.view().targets.get(self.selected_target)
    }

    fn clamp(&mut self) {
        self.selected_target = self.selected_target.min(self.view().targets.len().saturating_sub(1));
        self.selected_iface = self.selected_iface.min(self.view().interfaces.len().saturating_sub(1));
        self.selected_backend = self.selected_backend.min(self.backends_len().saturating_sub(1));
        self.log_back = self.log_back.min(self.log_len().saturating_sub(1));
        if !self.panels().contains(&self.focus) {
            self.focus = Panel::Targets;
        }
    }

    /// Moves the selection of the focused panel by `by` rows (the log: scrolls back by `-by`).
    fn step(&mut self, by: isize) {
        let step = |i: usize, len: usize| i.saturating_add_signed(by).min(len.saturating_sub(1));
        match self.focus {
            Panel::Targets => self.selected_target = step(self.selected_target, self.view().targets.len()),
            Panel::Interfaces => self.selected_iface = step(self.selected_iface, self.view().interfaces.len()),
            Panel::Balancers => self.selected_backend = step(self.selected_backend, self.backends_len()),
            Panel::Log => {
                self.log_back = self.log_back.saturating_add_signed(-by).min(self.log_len().saturating_sub(1))
            }
        }
    }

    /// A key: what it changes, and what the loop should do.
    pub fn key(&mut self, k: KeyEvent) -> Action {
        if k.kind == KeyEventKind::Release {
            return Action::None;
        }
        let ctrl = k.modifiers.contains(KeyModifiers::CONTROL);
        match k.code {
            KeyCode::Char('c') if ctrl => return Action::Quit,
            KeyCode::Char('q') => return Action::Quit,
            _ => {}
        }
        if self.help {
            // Any other key closes the help first.
            self.help = false;
            return Action::Redraw;
        }
        const PAGE: isize = 10;
        match k.code {
            KeyCode::Char('?') => self.help = true,
            KeyCode::Char('p') | KeyCode::Char(' ') => {
                self.frozen = match self.frozen {
                    Some(_) => None,
                    None => Some(self.live.clone()),
                };
                self.clamp();
            }
            KeyCode::Tab | KeyCode::BackTab => {
                let panels = self.panels();
                let at = panels.iter().position(|p| *p == self.focus).unwrap_or(0);
                let next = if k.code == KeyCode::Tab { at + 1 } else { at + panels.len() - 1 };
                self.focus = panels[next % panels.len()];
            }
            KeyCode::Up | KeyCode::Char('k') => self.step(-1),
            KeyCode::Down | KeyCode::Char('j') => self.step(1),
            KeyCode::PageUp => self.step(-PAGE),
            KeyCode::PageDown => self.step(PAGE),
            KeyCode::Home | KeyCode::Char('g') => self.step(isize::MIN / 2),
            KeyCode::End | KeyCode::Char('G') => self.step(isize::MAX / 2),
            _ => return Action::None,
        }
        Action::Redraw
    }
}

fn new_target(t: &TargetReport) -> TargetView {
    TargetView { name: t.target.clone(), kind: t.probe, summary: t.summary.clone(), points: Ring::new(PROBE_HISTORY) }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::monitor::report::{ProbePoint, TargetId};
    use crate::stats::traffic::{BackendSnapshot, Classes, Histogram, HttpBackendCounts, HttpTotals};

    fn options() -> Options {
        Options {
            command: "up",
            interval: Some(Duration::from_secs(1)),
            ifaces: vec![],
            color: true,
            log_pane: true,
            web: None,
        }
    }

    fn report(points: &[Option<f64>]) -> Report {
        let mut r = Report::empty();
        r.targets.push(TargetReport {
            id: TargetId(0),
            target: "tcp://127.0.16.1:9".into(),
            probe: ProbeKind::Tcp,
            summary: crate::stats::Window::new(10).summary(),
            newest: None,
            probes: points
                .iter()
                .enumerate()
                .map(|(i, p)| ProbePoint { seq: i as u64, rtt_ms: *p, up: p.is_some(), lost: p.is_none(), sent: None })
                .collect(),
            sent_total: 0,
            received_total: 0,
            rtt_sum_ms: 0.0,
            duration_ms: None,
        });
        r
    }

    fn http(name: &str, requests: &[u64], ms: f64) -> BalancerSnapshot {
        let backends = requests
            .iter()
            .enumerate()
            .map(|(i, &n)| {
                let mut latency = Histogram::default();
                let at = crate::stats::traffic::LATENCY_BOUNDS_MS.partition_point(|&b| b < ms);
                latency.counts[at] = n;
                BackendSnapshot {
                    addr: SocketAddr::from(([127, 0, 16, 1], 8001 + i as u16)),
                    state: BackendState::Up,
                    since: String::new(),
                    why: None,
                    ejected_for_ms: None,
                    weight: 1,
                    measured: 1.0,
                    effective_weight: 1.0,
                    weight_why: None,
                    http: Some(HttpBackendCounts {
                        requests: n,
                        responses: Classes { c2xx: n, ..Classes::default() },
                        latency,
                        ..HttpBackendCounts::default()
                    }),
                    udp: None,
                }
            })
            .collect();
        let total = requests.iter().sum();
        BalancerSnapshot {
            name: name.into(),
            proto: Proto::Http,
            listen: None,
            strategy: "round-robin".into(),
            started: "2026-01-01T00:00:00.000Z".into(),
            http: Some(HttpTotals {
                requests: total,
                responses: Classes { c2xx: total, ..Classes::default() },
                ..HttpTotals::default()
            }),
            udp: None,
            backends,
        }
    }

    #[test]
    fn loss_over_the_last_minute_counts_probes_without_an_answer() {
        let mut s = State::new(&options());
        s.absorb(&report(&[Some(1.0); 40]));
        s.absorb(&report(&[None, Some(2.0), None, Some(3.0), Some(1.0), Some(1.0), Some(1.0), Some(1.0), None, None]));
        let t = &s.live.targets[0];
        assert_eq!(t.points.len(), 50);
        assert_eq!(t.loss_pct_last(10), Some(40.0));
        assert_eq!(t.loss_pct_last(s.probes_per_minute()), Some(4.0 * 100.0 / 50.0));
        assert!(t.points.iter().last().is_some_and(Point::lost));
    }

    #[test]
    fn figures_are_taken_over_the_last_ten_seconds_as_on_the_web_page() {
        let mut s = State::new(&options());
        let t0 = Instant::now();
        let now = SystemTime::now();
        s.take_balancers(&[http("web", &[10, 10, 10, 10], 2.0)], t0, now);
        let b = &s.live.balancers[0];
        assert_eq!((b.rate, b.span_secs), (None, None), "one snapshot gives no rate");
        assert!(b.backends.iter().all(|be| be.recent.is_none()));
        s.take_balancers(&[http("web", &[20, 20, 20, 20], 2.0)], t0 + Duration::from_secs(2), now);
        let b = &s.live.balancers[0];
        assert_eq!(b.rate, Some(20.0));
        assert_eq!(b.err_pct, Some(0.0));
        assert_eq!(b.span_secs, Some(2.0), "the span so far");
        for be in &b.backends {
            let r = be.recent.as_ref().unwrap();
            assert_eq!(r.requests_per_s, 5.0);
            assert_eq!(r.share_pct, Some(25.0), "round robin: a quarter each");
            let p50 = r.p50_ms.unwrap();
            assert!((1.5..=2.0).contains(&p50), "{p50}");
            assert!(be.for_secs.is_some(), "since the balancer started");
        }
        // One snapshot a second for 20 s: the last backend stops taking traffic at 15 s.
        let mut counts = [20u64; 4];
        for sec in 3..=20u64 {
            for (i, c) in counts.iter_mut().enumerate() {
                if i < 3 || sec <= 15 {
                    *c += 10;
                }
            }
            s.take_balancers(&[http("web", &counts, 2.0)], t0 + Duration::from_secs(sec), now);
        }
        let b = &s.live.balancers[0];
        assert_eq!(b.span_secs, Some(10.0), "the snapshot ten seconds older than the newest");
        // Over 10..20 s: 100 requests to each of the first three, 50 to the last.
        assert_eq!(b.rate, Some(35.0));
        let web = traffic::recent(&http("web", &counts, 2.0), Some(&http("web", &[100; 4], 2.0)), 10.0);
        let tui: Vec<Recent> = b.backends.iter().map(|be| be.recent.clone().unwrap()).collect();
        assert_eq!(tui, web, "the same figures as the web page's");
        let last = b.backends[3].recent.as_ref().unwrap();
        assert_eq!(last.requests_per_s, 5.0);
        assert_eq!(last.share_pct, Some(50.0 * 100.0 / 350.0));
        assert_eq!(b.backends[3].total, 150);
        assert!(s.live.balancers[0].snapshots.len() <= 11, "ten seconds of snapshots kept");
        // A late snapshot: of the two around ten seconds back, the nearer.
        let mut s = State::new(&options());
        for ms in [0, 900, 10_800] {
            s.take_balancers(&[http("web", &[ms / 100; 4], 2.0)], t0 + Duration::from_millis(ms), now);
        }
        assert_eq!(s.live.balancers[0].span_secs, Some(9.9));
    }

    #[test]
    fn udp_errors_are_datagrams_without_a_reply_in_the_span() {
        let mut s = State::new(&options());
        let t0 = Instant::now();
        let now = SystemTime::now();
        let udp = |sent: u64, received: u64, requests: u64, replies: u64| BalancerSnapshot {
            name: "ping".into(),
            proto: Proto::Udp,
            listen: None,
            strategy: "round-robin".into(),
            started: "2026-01-01T00:00:00.000Z".into(),
            http: None,
            udp: Some(crate::stats::traffic::UdpTotals { requests, replies, ..Default::default() }),
            backends: vec![BackendSnapshot {
                addr: SocketAddr::from(([127, 0, 16, 1], 2526)),
                state: BackendState::Up,
                since: String::new(),
                why: None,
                ejected_for_ms: None,
                weight: 1,
                measured: 1.0,
                effective_weight: 1.0,
                weight_why: None,
                http: None,
                udp: Some(crate::stats::traffic::UdpBackendCounts {
                    datagrams_sent: sent,
                    datagrams_received: received,
                    ..Default::default()
                }),
            }],
        };
        s.take_balancers(&[udp(100, 100, 100, 100)], t0, now);
        s.take_balancers(&[udp(200, 180, 200, 180)], t0 + Duration::from_secs(10), now);
        let b = &s.live.balancers[0];
        assert_eq!(b.err_pct, Some(20.0), "20 of the 100 client datagrams got no reply");
        assert_eq!(b.backends[0].recent.as_ref().unwrap().error_pct, Some(20.0));
    }

    #[test]
    fn keys_move_the_selection_pause_and_quit() {
        let mut s = State::new(&options());
        let mut r = report(&[Some(1.0)]);
        let second = TargetReport { target: "udp://127.0.16.1:2526".into(), ..r.targets[0].clone() };
        r.targets.push(second);
        s.absorb(&r);
        let key = |c| KeyEvent::new(c, KeyModifiers::NONE);
        assert_eq!(s.key(key(KeyCode::Down)), Action::Redraw);
        assert_eq!(s.target().map(|t| t.name.as_str()), Some("udp://127.0.16.1:2526"));
        s.key(key(KeyCode::Char('j')));
        assert_eq!(s.selected_target, 1, "stops at the last target");
        s.key(key(KeyCode::Char('k')));
        assert_eq!(s.selected_target, 0);
        s.key(key(KeyCode::Char('p')));
        assert!(s.paused());
        s.absorb(&report(&[None]));
        assert_eq!(s.behind(), 1);
        assert_eq!(s.view().targets[0].points.len(), 1, "the view is frozen while paused");
        assert_eq!(s.live.targets[0].points.len(), 2, "but nothing is missed");
        assert_eq!(s.key(key(KeyCode::Char('p'))), Action::Redraw);
        assert_eq!(s.view().targets[0].points.len(), 2);
        s.key(key(KeyCode::Tab));
        assert_eq!(s.focus, Panel::Interfaces, "no balancers: Tab skips them");
        s.key(key(KeyCode::Char('?')));
        assert!(s.help);
        assert_eq!(s.key(key(KeyCode::Down)), Action::Redraw);
        assert!(!s.help, "a key closes the help");
        assert_eq!(s.key(KeyEvent::new(KeyCode::Char('c'), KeyModifiers::CONTROL)), Action::Quit);
        assert_eq!(s.key(key(KeyCode::Char('q'))), Action::Quit);
    }

    #[test]
    fn iface_filters_interfaces() {
        let mut s = State::new(&Options { ifaces: vec!["lo".into()], ..options() });
        let mut r = Report::empty();
        for name in ["lo", "eth0"] {
            r.interfaces.push(InterfaceStats {
                name: name.into(),
                up: true,
                operstate: "up".into(),
                counters: Default::default(),
                rx_bytes_per_sec: 1.0,
                tx_bytes_per_sec: 2.0,
            });
        }
        s.absorb(&r);
        assert_eq!(s.live.interfaces.iter().map(|i| i.name.as_str()).collect::<Vec<_>>(), ["lo"]);
        assert_eq!(s.live.interfaces[0].rates.iter().copied().collect::<Vec<_>>(), [3.0]);
    }
}
