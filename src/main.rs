//! The `netpulse` binary: parse the command line, run it, turn the outcome into an exit code.

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let cli = netpulse::cli::Cli::parse();
    netpulse::run(cli)
}
