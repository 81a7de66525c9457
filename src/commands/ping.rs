//! `netpulse ping`: ICMP echo (or timed TCP connects) with ping's lines and summary. Exit 0 if
//! any reply came, 1 if none or if the run failed, 2 if it cannot run at all (bad usage, no
//! permission for ICMP: iputils' convention).

use std::process::ExitCode;

use anyhow::Result;

use super::UsageError;
use crate::cli::PingArgs;
use crate::monitor::ping::{self, PingError, PingOptions};

pub(super) fn run(args: PingArgs) -> Result<ExitCode> {
    let opts = PingOptions::try_from(&args).map_err(UsageError)?;
    match ping::run(&opts, &mut std::io::stdout().lock()) {
        Ok(summary) => Ok(if summary.received > 0 { ExitCode::SUCCESS } else { ExitCode::from(1) }),
        Err(PingError::Probe(e)) => Err(UsageError(e.to_string()).into()),
        // A closed stdout ends quietly (see `commands::run`); other failures are exit 1.
        Err(PingError::Io(e)) => Err(anyhow::Error::new(e).context("ping")),
    }
}
