//! Data paths: they move requests and datagrams, and ask `balance` where each one goes.

pub mod backends;
mod h1;
pub mod http;
pub mod reload;
pub mod udp;
