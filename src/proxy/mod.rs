//! Data paths: they move requests and datagrams, and ask `balance` where each one goes.

mod h1;
pub mod http;
pub mod udp;
