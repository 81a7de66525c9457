//! The terminal dashboard (ratatui + crossterm), a sink: it follows the monitor's reports and
//! reads the balancers' snapshots, and draws them on the terminal it takes over (the alternate
//! screen, raw mode) until `q`, Ctrl-C or the command stops — and on exit or on a panic of its
//! own threads gives the terminal back as it found it (a panic elsewhere goes to its log pane).
//!
//! One thread owns the terminal and the [`State`]; it sleeps on a channel and draws when
//! something arrives (a report, a key, a resize, the balancers' tick when no monitor ticks) —
//! never in a loop of its own. Feeding it: a thread that waits on the reports, one that waits on
//! the keyboard. While it runs, access-log lines and diagnostics go to its log pane
//! ([`crate::log::Pane`]); the diagnostics are printed again once the terminal is back.

pub mod render;
pub mod state;

use std::io::{self, Stdout, Write};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};
use std::sync::{Arc, Once};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant, SystemTime};

use crossterm::event::{self, Event};
use crossterm::terminal::{EnterAlternateScreen, LeaveAlternateScreen, disable_raw_mode, enable_raw_mode};
use crossterm::{cursor, execute};
use ratatui::Terminal;
use ratatui::backend::CrosstermBackend;
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;

pub use state::{Options, State};

use crate::log::{LineKind, pane};
use crate::monitor::report::Report;
use crate::stats::traffic::Balancers;

/// Messages the drawing thread waits for.
enum Msg {
    Report(Arc<Report>),
    Input(Event),
    /// Time to read the balancers (when no report comes often enough to).
    Tick,
    /// The reports ended (the monitor stopped), or the command asks the dashboard to go.
    Stop,
}

/// How often balancers are read when no report comes at least this often.
const TICK: Duration = Duration::from_secs(1);
/// How long the keyboard thread waits before looking whether it should stop.
const INPUT_POLL: Duration = Duration::from_millis(250);
/// Messages that may wait for the drawing thread.
const QUEUE: usize = 1024;
/// What the names of the dashboard's threads start with.
const THREADS: &str = "netpulse-tui";

/// Whether this process has the terminal in raw mode on the alternate screen.
static ACTIVE: AtomicBool = AtomicBool::new(false);

/// A running dashboard. [`Dashboard::close`] (or dropping it) ends it and gives the terminal
/// back.
pub struct Dashboard {
    tx: SyncSender<Msg>,
    thread: Option<JoinHandle<io::Result<()>>>,
    quit: CancellationToken,
}

impl Dashboard {
    /// Takes the terminal and starts drawing `reports` (if there is a monitor) and
    /// `balancers`; `banner` (what listens where) heads the log pane, and stays on top of it
    /// until traffic comes.
    pub fn start(
        options: Options,
        reports: Option<broadcast::Receiver<Arc<Report>>>,
        balancers: Balancers,
        banner: &str,
    ) -> io::Result<Self> {
        install_panic_hook();
        pane().start();
        let terminal = match enter() {
            Ok(t) => t,
            Err(e) => {
                leave();
                replay();
                return Err(e);
            }
        };
        match Self::spawn_all(options, reports, balancers, terminal, banner) {
            Ok(d) => Ok(d),
            Err(e) => {
                leave();
                replay();
                Err(e)
            }
        }
    }

    fn spawn_all(
        options: Options,
        reports: Option<broadcast::Receiver<Arc<Report>>>,
        balancers: Balancers,
        terminal: Terminal<CrosstermBackend<Stdout>>,
        banner: &str,
    ) -> io::Result<Self> {
        let (tx, rx) = sync_channel(QUEUE);
        let has_reports = reports.is_some();
        if let Some(reports) = reports {
            let tx = tx.clone();
            spawn("netpulse-tui-reports", move || forward_reports(reports, tx))?;
        }
        let input_stop = Arc::new(AtomicBool::new(false));
        {
            let (tx, stop) = (tx.clone(), input_stop.clone());
            spawn("netpulse-tui-keys", move || read_input(tx, stop))?;
        }
        let slow_reports = options.interval.is_none_or(|i| i > TICK);
        if !balancers.is_empty() && (!has_reports || slow_reports) {
            let tx = tx.clone();
            spawn("netpulse-tui-tick", move || {
                while tx.send(Msg::Tick).is_ok() {
                    thread::sleep(TICK);
                }
            })?;
        }
        let quit = CancellationToken::new();
        let mut state = State::new(&options);
        state.set_banner(banner);
        let q = quit.clone();
        let thread = thread::Builder::new().name("netpulse-tui".into()).spawn(move || {
            let _restore = Restore { input_stop, quit: q };
            run(terminal, &rx, state, &balancers)
        })?;
        Ok(Self { tx, thread: Some(thread), quit })
    }

    /// Cancelled when the dashboard ends on its own — the user quits (`q`, Ctrl-C), the
    /// terminal is gone: the command should stop as on SIGINT.
    pub fn quit_requested(&self) -> CancellationToken {
        self.quit.clone()
    }

    /// Ends the dashboard and waits until the terminal is given back.
    pub fn close(mut self) -> io::Result<()> {
        self.finish()
    }

    fn finish(&mut self) -> io::Result<()> {
        let _ = self.tx.try_send(Msg::Stop);
        match self.thread.take().map(JoinHandle::join) {
            None | Some(Ok(Ok(()))) => Ok(()),
            Some(Ok(Err(e))) => Err(e),
            Some(Err(_)) => Err(io::Error::other("the dashboard crashed")),
        }
    }
}

impl Drop for Dashboard {
    fn drop(&mut self) {
        let _ = self.finish();
    }
}

fn spawn(name: &str, f: impl FnOnce() + Send + 'static) -> io::Result<()> {
    thread::Builder::new().name(name.into()).spawn(f).map(drop)
}

/// Raw mode, the alternate screen, no cursor.
fn enter() -> io::Result<Terminal<CrosstermBackend<Stdout>>> {
    enable_raw_mode()?;
    ACTIVE.store(true, Ordering::SeqCst);
    let mut out = io::stdout();
    execute!(out, EnterAlternateScreen, cursor::Hide)?;
    let mut terminal = Terminal::new(CrosstermBackend::new(out))?;
    terminal.clear()?;
    Ok(terminal)
}

/// Gives the terminal back (once, whoever calls first: the dashboard or the panic hook).
fn leave() {
    if ACTIVE.swap(false, Ordering::SeqCst) {
        let mut out = io::stdout();
        let _ = execute!(out, LeaveAlternateScreen, cursor::Show);
        let _ = disable_raw_mode();
        let _ = out.flush();
    }
}

/// Stops capturing and prints the diagnostics the pane held (health changes, warnings) where
/// they would have gone, so that none is lost with the screen.
fn replay() {
    let r = pane().stop();
    let mut err = io::stderr().lock();
    if r.dropped > 0 {
        let lines =
            crate::stats::traffic::plural(r.dropped, "earlier diagnostic line was", "earlier diagnostic lines were");
        let _ = writeln!(err, "netpulse: {lines} shown in the dashboard only");
    }
    for line in r.diagnostics {
        let _ = writeln!(err, "{line}");
    }
}

/// When the drawing thread ends, however it ends (asked to, `q`, the terminal gone, a panic):
/// restores the terminal, replays the pane, and tells the command to stop — nobody watches a
/// dashboard that is not drawn (if the command was already stopping, that changes nothing).
struct Restore {
    input_stop: Arc<AtomicBool>,
    quit: CancellationToken,
}

impl Drop for Restore {
    fn drop(&mut self) {
        self.input_stop.store(true, Ordering::SeqCst);
        leave();
        replay();
        self.quit.cancel();
    }
}

/// A panic on one of the dashboard's threads (named `netpulse-tui…`) gives the terminal back
/// before the message is printed (else it would be lost on the alternate screen, and the shell
/// left in raw mode), and so ends the dashboard and the command. A panic on any other thread
/// ends that thread only — a task, a balancer's worker — as it does without the dashboard: the
/// process serves on, the dashboard keeps the terminal and shows the message in its log pane
/// (printed again when it exits).
fn install_panic_hook() {
    static HOOK: Once = Once::new();
    HOOK.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            let thread = thread::current();
            let name = thread.name().unwrap_or("<unnamed>");
            if ACTIVE.load(Ordering::SeqCst) && !name.starts_with(THREADS) {
                for line in format!("thread '{name}' {info}").lines() {
                    pane().diagnostic(LineKind::Error, line);
                }
                return;
            }
            leave();
            previous(info);
        }));
    });
}

fn forward_reports(mut reports: broadcast::Receiver<Arc<Report>>, tx: SyncSender<Msg>) {
    loop {
        let msg = match reports.blocking_recv() {
            Ok(r) => Msg::Report(r),
            // Reports missed while the screen was slow: the next one carries the state.
            Err(broadcast::error::RecvError::Lagged(_)) => continue,
            Err(broadcast::error::RecvError::Closed) => Msg::Stop,
        };
        let last = matches!(msg, Msg::Stop);
        if tx.send(msg).is_err() || last {
            return;
        }
    }
}

fn read_input(tx: SyncSender<Msg>, stop: Arc<AtomicBool>) {
    while !stop.load(Ordering::SeqCst) {
        match event::poll(INPUT_POLL) {
            Ok(false) => {}
            Ok(true) => match event::read() {
                Ok(e) if !stop.load(Ordering::SeqCst) => {
                    if tx.send(Msg::Input(e)).is_err() {
                        return;
                    }
                }
                _ => return,
            },
            Err(_) => return,
        }
    }
}

/// The drawing thread: waits, takes everything that came, draws once.
fn run(
    mut terminal: Terminal<CrosstermBackend<Stdout>>,
    rx: &Receiver<Msg>,
    mut state: State,
    balancers: &Balancers,
) -> io::Result<()> {
    let mut log_seen = u64::MAX;
    let read_balancers = |state: &mut State| {
        if !balancers.is_empty() {
            let at = Instant::now();
            let snapshots: Vec<_> = balancers.iter().map(|b| b.snapshot(at)).collect();
            state.take_balancers(&snapshots, at, SystemTime::now());
        }
    };
    read_balancers(&mut state);
    let mut dirty = true;
    loop {
        if !ACTIVE.load(Ordering::SeqCst) {
            // A panic gave the terminal back: draw no more.
            return Ok(());
        }
        if dirty {
            let taken = pane().taken();
            if taken != log_seen {
                log_seen = taken;
                state.set_log(pane().tail(state::LOG_LINES));
            }
            terminal.draw(|f| render::draw(f, &state))?;
            dirty = false;
        }
        let Ok(first) = rx.recv() else { return Ok(()) };
        let mut next = Some(first);
        while let Some(msg) = next {
            match msg {
                // While paused the live view still takes everything; the frozen one is drawn
                // (the header says how far behind it is).
                Msg::Report(r) => {
                    state.absorb(&r);
                    read_balancers(&mut state);
                    dirty = true;
                }
                Msg::Tick => {
                    read_balancers(&mut state);
                    dirty |= !state.paused();
                }
                Msg::Input(Event::Key(k)) => match state.key(k) {
                    state::Action::Quit => return Ok(()),
                    state::Action::Redraw => dirty = true,
                    state::Action::None => {}
                },
                Msg::Input(Event::Resize(..)) => dirty = true,
                Msg::Input(_) => {}
                Msg::Stop => return Ok(()),
            }
            next = rx.try_recv().ok();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_panic_of_the_dashboard_gives_the_terminal_back() {
        install_panic_hook();
        pane().start();
        // As if the dashboard had the terminal (without touching the test's).
        ACTIVE.store(true, Ordering::SeqCst);
        let task = thread::Builder::new().name("netpulse-worker".into()).spawn(|| panic!("a bug in a task"));
        assert!(task.unwrap().join().is_err());
        assert!(ACTIVE.load(Ordering::SeqCst), "another thread's panic leaves the terminal to the dashboard");
        let shown = pane().tail(10);
        assert!(
            shown.iter().any(|l| l.kind == LineKind::Error && l.text.contains("thread 'netpulse-worker' panicked")),
            "{shown:?}"
        );
        assert!(shown.iter().any(|l| l.text.contains("a bug in a task")), "{shown:?}");
        let own = thread::Builder::new().name("netpulse-tui-keys".into()).spawn(|| panic!("a bug in the dashboard"));
        assert!(own.unwrap().join().is_err());
        assert!(!ACTIVE.load(Ordering::SeqCst), "the dashboard's own panic gives the terminal back");
        let replay = pane().stop();
        assert!(replay.diagnostics.iter().any(|l| l.contains("a bug in a task")), "printed again at exit");
    }
}
