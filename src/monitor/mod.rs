//! Schedules probes and owns their statistics: the `ping`, `monitor` and `status` commands.

pub mod health;
pub mod live;
pub mod ping;
pub mod status;
