//! Sinks that show the monitor's reports to a person: the line printer (a table, or JSON lines).

pub mod print;
