//! One file per command. Each turns its parsed flags into a validated config or plan (through
//! the one `From`/`TryFrom` per flag set in `cli`) and runs it; `up`, `serve` and `balance` share
//! `up`'s start-up path, so they bind, report and stop the same way.

mod balance;
mod control;
mod history;
mod monitor;
mod ping;
mod running;
mod serve;
mod status;
mod udp_ping;
mod up;

use std::io::{self, Write};
use std::process::ExitCode;

use crate::cli::{Cli, Command};
use crate::config::ConfigError;
use crate::log::Log;

/// Bad usage that clap could not see, or a command that cannot run at all (exit code 2, like
/// a bad flag).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub(crate) struct UsageError(pub(crate) String);

/// Runs the command and maps the outcome to an exit code: 0 success, 1 failure, 2 bad usage.
/// A closed stdout (`netpulse ping ... | head`) ends the command quietly with 0, as ripgrep does.
pub fn run(cli: Cli) -> ExitCode {
    diagnostics();
    if let Err(why) = crate::sys::io_uring_setting() {
        let _ = writeln!(io::stderr(), "netpulse: {why}");
        return ExitCode::from(2);
    }
    match dispatch(cli) {
        Ok(code) => code,
        Err(e) if is_broken_pipe(&e) => ExitCode::SUCCESS,
        Err(e) => {
            let _ = writeln!(io::stderr(), "netpulse: {e:#}");
            let usage = e.downcast_ref::<ConfigError>().is_some() || e.downcast_ref::<UsageError>().is_some();
            ExitCode::from(if usage { 2 } else { 1 })
        }
    }
}

fn dispatch(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Up(args) => up::run(args),
        Command::Serve(cmd) => serve::run(cmd),
        Command::Balance(args) => balance::run(args),
        Command::UdpPing(args) => udp_ping::run(&args),
        Command::Ping(args) => ping::run(args),
        Command::Monitor(args) => monitor::run(args),
        Command::Status(args) => status::run(args),
        Command::History(args) => history::run(&args),
        Command::Reload(args) => control::reload(&args),
        Command::Backend(cmd) => control::backend(cmd),
    }
}

/// Diagnostics (health changes, stop summaries, accept errors) go to stderr through `tracing`,
/// with a timestamp and a level, filtered by `RUST_LOG` (default: `info`). The access log and
/// command output are stdout's; the final error line is printed plainly by [`run`]. While a
/// dashboard owns the terminal, both go to its log pane (see [`crate::log::Pane`]).
fn diagnostics() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(crate::log::Diagnostics)
        .with_target(false)
        .with_ansi(io::IsTerminal::is_terminal(&io::stderr()))
        // A stderr that is gone (the terminal closed) must not turn a log line into a panic:
        // tracing-subscriber would report the failed write with `eprintln!`, which panics.
        .log_internal_errors(false)
        .try_init();
}

fn is_broken_pipe(e: &anyhow::Error) -> bool {
    e.chain().any(|c| c.downcast_ref::<io::Error>().is_some_and(|e| e.kind() == io::ErrorKind::BrokenPipe))
}

/// The access log of a command: stdout, or nothing with `--quiet`.
fn log(quiet: bool) -> Log {
    if quiet { Log::disabled() } else { Log::stdout() }
}

/// Writes `text` to stdout and flushes it (an error, not a panic, when stdout is closed).
fn say(text: &str) -> io::Result<()> {
    let mut out = io::stdout().lock();
    out.write_all(text.as_bytes())?;
    out.flush()
}

/// Resolves `host` as the probes do (IPv4 preferred); failing to is bad usage.
fn resolve(host: &str, port: u16) -> anyhow::Result<std::net::SocketAddr> {
    crate::probe::resolve(host, port).map_err(|e| UsageError(e.to_string()).into())
}

/// Ctrl-C or SIGTERM. SIGHUP (which nginx and HAProxy users send to reload) does not stop
/// anything: commands without a config to reload log it and go on (`up` reloads: see
/// [`stop_signals`] and [`hangups`]).
///
/// The signals are listened for from the call on (call it inside the runtime), not from the
/// first poll: a command creates it before saying it is up, so that a signal sent right after
/// stops it cleanly instead of killing it.
fn shutdown_signal() -> impl std::future::Future<Output = ()> {
    let (stop, hup) = (stop_signals(), hangups());
    async move {
        let hup = async {
            let Some(mut s) = hup else { return std::future::pending::<()>().await };
            while s.recv().await.is_some() {
                tracing::warn!("SIGHUP: this command has no config to reload; still running as started");
            }
        };
        tokio::select! {
            _ = stop => {}
            _ = hup => {}
        }
    }
}

/// Ctrl-C or SIGTERM alone (the caller handles SIGHUP), listened for from the call on.
fn stop_signals() -> impl std::future::Future<Output = ()> {
    use tokio::signal::unix::{SignalKind, signal};
    let (int, term) = (signal(SignalKind::interrupt()).ok(), signal(SignalKind::terminate()).ok());
    let wait = |s: Option<tokio::signal::unix::Signal>| async move {
        match s {
            Some(mut s) => s.recv().await.is_some(),
            None => std::future::pending::<bool>().await,
        }
    };
    async move {
        tokio::select! {
            _ = wait(int) => {}
            _ = wait(term) => {}
        }
    }
}

/// SIGHUP, which asks a running `up` (or `balance`, `serve`) to read its config again, as nginx
/// and HAProxy users send it. Listened for from the call on, like [`shutdown_signal`]: from then
/// on the signal no longer ends the process.
fn hangups() -> Option<tokio::signal::unix::Signal> {
    tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok()
}
