//! Sinks that show the monitor's reports to a person: the line printer (a table, or JSON lines),
//! the event lines (what changed) under `up`, the terminal dashboard, and the web dashboard with
//! its JSON API and event stream.

pub mod events;
pub mod print;
pub mod tui;
pub mod web;
