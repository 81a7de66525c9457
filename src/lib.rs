//! netpulse: watch a network and balance load across it, in one binary.
//!
//! The binary is a thin shell over [`run`]; every command is a file in `commands/`. Modules are
//! rooms, each with a `//!` line saying its role; dependencies point one way (a module uses
//! only those before it): `sys`, `clock`, `balance` -> `iface`, `probe` -> `stats`, `config`
//! -> `log`, `net` -> `proxy`, `serve`, `monitor` -> sinks (`dashboard`, `metrics`, `health`, `history`)
//! -> `cli` -> `commands`.

pub mod balance;
pub mod cli;
pub mod clock;
mod commands;
pub mod config;
pub mod dashboard;
pub mod health;
pub mod history;
pub mod iface;
pub mod log;
pub mod metrics;
pub mod monitor;
pub mod net;
pub mod probe;
pub mod proxy;
pub mod serve;
pub mod state;
pub mod stats;
mod sys;

pub use commands::run;
