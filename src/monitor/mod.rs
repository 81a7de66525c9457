//! The monitor: schedules probes, owns their statistics and publishes a [`report::Report`] per
//! interval ([`engine`]); `ping` and `status` are its one-shot forms. It never imports a sink.

pub mod engine;
pub mod ping;
pub mod report;
pub mod schedule;
pub mod status;
