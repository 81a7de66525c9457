//! netpulse: watch a network and balance load across it, in one binary.
//!
//! The binary is a thin shell over [`run`]; every command lives in a module of its own
//! (see `DESIGN.md` for the map).

pub mod balance;
pub mod cli;
pub mod clock;
mod commands;
pub mod config;
pub mod iface;
pub mod log;
pub mod metrics;
pub mod monitor;
pub mod net;
pub mod probe;
pub mod proxy;
pub mod serve;
pub mod stats;
mod sys;

pub use commands::run;
