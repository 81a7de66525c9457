//! `netpulse balance http|udp` (a balancer from flags) and `netpulse balance --config FILE`
//! (just the balancers of a file).

use std::process::ExitCode;

use std::sync::Arc;

use anyhow::{Context, Result};

use super::running::Loader;
use super::{UsageError, log};
use crate::cli::{BalanceArgs, BalanceKind};
use crate::config::{BalanceConfig, Config};

pub(super) fn run(args: BalanceArgs) -> Result<ExitCode> {
    let quiet = args.quiet;
    let balance = match args.kind {
        None => {
            let path = args.config.context("give --config FILE, or `balance http` / `balance udp` with flags")?;
            let config = balancers_of(&path)?;
            // SIGHUP reads the file again: its balancers, the rest ignored as at start.
            let load: Loader = Arc::new(move || balancers_of(&path));
            return super::up::start_reloadable(config, log(quiet), load);
        }
        Some(BalanceKind::Http(a)) => BalanceConfig { http: vec![a.into()], ..BalanceConfig::default() },
        Some(BalanceKind::Udp(a)) => BalanceConfig { udp: vec![a.into()], ..BalanceConfig::default() },
    };
    let config = Config { balance, ..Config::default() };
    // Flag-built configs get the same cross-table checks a file got when it was loaded.
    config.validate("flags")?;
    super::up::start(config, log(quiet))
}

/// The balancers of a file and what survives their restarts (`[state]`); its other sections
/// are ignored.
fn balancers_of(path: &std::path::Path) -> Result<Config> {
    let config = Config::load(path)?;
    if config.balance.http.is_empty() && config.balance.udp.is_empty() {
        return Err(UsageError(format!("{} has no [[balance.http]] or [[balance.udp]] table", path.display())).into());
    }
    Ok(Config { balance: config.balance, state: config.state, ..Config::default() })
}
