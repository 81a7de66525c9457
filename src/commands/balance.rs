//! `netpulse balance http|udp` (a balancer from flags) and `netpulse balance --config FILE`
//! (just the balancers of a file).

use std::process::ExitCode;

use anyhow::{Context, Result};

use super::{UsageError, log};
use crate::cli::{BalanceArgs, BalanceKind};
use crate::config::{BalanceConfig, Config};

pub(super) fn run(args: BalanceArgs) -> Result<ExitCode> {
    let quiet = args.quiet;
    let from_flags = args.kind.is_some();
    let balance = match args.kind {
        None => {
            let path = args.config.context("give --config FILE, or `balance http` / `balance udp` with flags")?;
            let config = Config::load(&path)?;
            if config.balance.http.is_empty() && config.balance.udp.is_empty() {
                return Err(
                    UsageError(format!("{} has no [[balance.http]] or [[balance.udp]] table", path.display())).into()
                );
            }
            config.balance
        }
        Some(BalanceKind::Http(a)) => BalanceConfig { http: vec![a.into()], udp: vec![] },
        Some(BalanceKind::Udp(a)) => BalanceConfig { http: vec![], udp: vec![a.into()] },
    };
    let config = Config { balance, ..Config::default() };
    // Flag-built configs get the same cross-table checks a file got when it was loaded.
    if from_flags {
        config.validate("flags")?;
    }
    super::up::start(config, log(quiet))
}
