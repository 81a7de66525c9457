//! `netpulse status`: a one-shot connectivity verdict; exit 0 connected, 1 degraded,
//! 2 disconnected.

use std::process::ExitCode;

use anyhow::Result;

use super::{UsageError, say};
use crate::cli::StatusArgs;
use crate::monitor::report::Connectivity;
use crate::monitor::status;

pub(super) fn run(args: StatusArgs) -> Result<ExitCode> {
    let plan = status::StatusPlan::try_from(args).map_err(UsageError)?;
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let (checks, verdict) = rt.block_on(status::run(plan));
    say(&status::render(&checks, verdict))?;
    Ok(ExitCode::from(match verdict {
        Connectivity::Connected => 0,
        Connectivity::Degraded => 1,
        Connectivity::Disconnected => 2,
    }))
}
