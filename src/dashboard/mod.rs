//! Sinks that show the monitor's reports to a person: the line printer (a table, or JSON
//! lines) and the terminal dashboard.

pub mod print;
pub mod tui;
