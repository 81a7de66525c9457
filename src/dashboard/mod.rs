//! Sinks that show the monitor's reports to a person: the line printer (a table, or JSON lines)
//! and the event lines (what changed) under `up`.

pub mod events;
pub mod print;
