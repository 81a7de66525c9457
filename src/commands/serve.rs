//! `netpulse serve http|udp|icmp`: the lab servers on their own.

use std::process::ExitCode;

use anyhow::{Context, Result};
use tokio_util::sync::CancellationToken;

use super::{UsageError, log, say, shutdown_signal};
use crate::cli::{ServeCommand, ServeIcmpArgs};
use crate::config::{Config, ServeConfig};
use crate::serve::icmp;

pub(super) fn run(cmd: ServeCommand) -> Result<ExitCode> {
    let (serve, quiet) = match cmd {
        ServeCommand::Http(a) => {
            let quiet = a.quiet;
            (ServeConfig { http: Some(a.try_into().map_err(UsageError)?), udp: None }, quiet)
        }
        ServeCommand::Udp(a) => {
            let quiet = a.quiet;
            (ServeConfig { http: None, udp: Some(a.try_into().map_err(UsageError)?) }, quiet)
        }
        ServeCommand::Icmp(a) => return serve_icmp(&a),
    };
    super::up::start(Config { serve, ..Config::default() }, log(quiet))
}

fn serve_icmp(a: &ServeIcmpArgs) -> Result<ExitCode> {
    let socket = icmp::open().context("cannot open a raw ICMP socket (run as root or with CAP_NET_RAW)")?;
    if icmp::kernel_echo_enabled() {
        tracing::warn!(
            "the kernel answers echo requests here too; \
             set net.ipv4.icmp_echo_ignore_all=1 (e.g. inside a network namespace)"
        );
    }
    let seed = a.seed.unwrap_or_else(|| std::process::id().into());
    let faults = icmp::EchoFaults { delay: a.delay.0, loss: a.loss.0, seed };
    say(&format!(
        "netpulse is up:\n  icmp echo responder (delay {}, loss {}%)\nCtrl-C stops it.\n",
        a.delay,
        a.loss.0 * 100.0
    ))?;
    let stop = CancellationToken::new();
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let log = log(a.quiet);
    let worker = std::thread::spawn({
        let stop = stop.clone();
        move || icmp::serve(socket, faults, log, stop)
    });
    rt.block_on(async { shutdown_signal().await });
    stop.cancel();
    worker.join().map_err(|_| anyhow::anyhow!("icmp responder crashed"))??;
    Ok(ExitCode::SUCCESS)
}
