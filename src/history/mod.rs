//! History (a sink and a reader): every interval of the monitor's reports remembered in an
//! embedded SQLite file — targets' probes, interfaces' and backends' counters, events — with
//! rollups to minutes and hours, retention, and the queries `netpulse history` (and an HTTP API)
//! answer from.
//!
//! Layout of the file (see `store.rs`): each interval is one row of `journal` (every series'
//! record in one blob, so an interval costs one insert whatever the number of targets); when a
//! minute closes, its journal rows are packed into one `raw` chunk per series (the intervals
//! as they were: counts and each RTT) and one `target_rollup`/`counter_rollup` row per series at
//! 60 s; when an hour closes, its minutes are rolled into 3600 s rows. Old rows are deleted in
//! small batches, a few series per interval. Writes happen on a thread of their own, one
//! transaction per interval, in WAL mode.

pub mod plot;
pub mod query;
mod record;
mod store;
pub mod writer;

use std::path::{Path, PathBuf};
use std::time::Duration;

pub use query::{Reader, Summary};
pub use record::Agg;
pub use store::Store;

/// Resolution of the minute and hour rollups, in milliseconds.
pub const MINUTE_MS: i64 = 60_000;
pub const HOUR_MS: i64 = 3_600_000;

/// How long each level is kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retention {
    /// Every interval as it was.
    pub raw: Duration,
    /// One row per series and minute.
    pub minutes: Duration,
    /// One row per series and hour (also how long events are kept).
    pub hours: Duration,
}

impl Default for Retention {
    /// 48 hours, 30 days, a year (365 days).
    fn default() -> Self {
        Self {
            raw: Duration::from_secs(48 * 3600),
            minutes: Duration::from_secs(30 * 86_400),
            hours: Duration::from_secs(365 * 86_400),
        }
    }
}

/// Why the history cannot be used; monitoring goes on without it.
///
/// Each message carries its cause once and the error has no `source()`: printed through an
/// error chain (`{:#}`), a chain would repeat the SQLite message two or three times over.
#[derive(Debug)]
pub enum HistoryError {
    Dir { dir: String, source: std::io::Error },
    Open { path: String, source: rusqlite::Error },
    Io { path: String, source: std::io::Error },
    NotHistory { path: String, source: rusqlite::Error },
    Foreign { path: String },
    Newer { path: String, found: i64, known: i64 },
    Busy { path: String },
    Missing { path: String },
    Read { path: String, source: rusqlite::Error },
}

impl std::fmt::Display for HistoryError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Dir { dir, source } => write!(f, "cannot create the directory {dir}: {source}"),
            Self::Open { path, source } => write!(f, "cannot open {path}: {source}"),
            Self::Io { path, source } => write!(f, "cannot open {path}: {source}"),
            Self::NotHistory { path, source } => write!(
                f,
                "{path} is not a netpulse history file ({source}); move it away or give another file with --history"
            ),
            Self::Foreign { path } => {
                write!(f, "{path} is a database of another program; give netpulse its own file with --history")
            }
            Self::Newer { path, found, known } => {
                write!(f, "{path} was written by a newer netpulse (schema {found}, this one knows {known})")
            }
            Self::Busy { path } => write!(
                f,
                "{path} is being recorded by another netpulse (give this one its own file with --history FILE, or \
                 --no-history)"
            ),
            Self::Missing { path } => {
                write!(f, "no history at {path} yet (netpulse up and netpulse monitor record there)")
            }
            Self::Read { path, source } => write!(f, "reading {path}: {source}"),
        }
    }
}

impl std::error::Error for HistoryError {}

/// The default file: `$XDG_DATA_HOME/netpulse/history.db`, else `~/.local/share/netpulse/history.db`
/// (on macOS `~/Library/Application Support/netpulse/history.db`); `None` without a home.
pub fn default_path() -> Option<PathBuf> {
    let nonempty = |v: std::ffi::OsString| (!v.is_empty()).then(|| PathBuf::from(v));
    let base = if cfg!(target_os = "macos") {
        std::env::var_os("HOME").and_then(nonempty).map(|h| h.join("Library/Application Support"))
    } else {
        std::env::var_os("XDG_DATA_HOME")
            .and_then(nonempty)
            .filter(|p| p.is_absolute())
            .or_else(|| std::env::var_os("HOME").and_then(nonempty).map(|h| h.join(".local/share")))
    };
    base.map(|b| b.join("netpulse").join("history.db"))
}

/// Where the history of a run goes, or that it is off.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Destination {
    Off,
    File(PathBuf, Retention),
}

/// `path` shown to a person.
pub(crate) fn shown(path: &Path) -> String {
    path.display().to_string()
}

/// Milliseconds since the Unix epoch, now.
pub fn now_ms() -> i64 {
    let since = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    i64::try_from(since.as_millis()).unwrap_or(i64::MAX)
}

/// `ms` (since the epoch) as RFC 3339 UTC to the second, e.g. `2026-11-22T03:04:05Z`.
pub fn rfc3339(ms: i64) -> String {
    match jiff::Timestamp::from_millisecond(ms) {
        Ok(t) => t.strftime("%Y-%m-%dT%H:%M:%SZ").to_string(),
        Err(_) => ms.to_string(),
    }
}

/// Parses RFC 3339 into milliseconds since the epoch.
pub fn parse_rfc3339(s: &str) -> Option<i64> {
    s.parse::<jiff::Timestamp>().ok().map(|t| t.as_millisecond())
}

fn floor_to(t: i64, step: i64) -> i64 {
    t.div_euclid(step) * step
}

fn ceil_to(t: i64, step: i64) -> i64 {
    floor_to(t + step - 1, step)
}

/// A time on the command line: `now`, an RFC 3339 time (`2026-11-22T03:00:00Z`), or a
/// duration ago (`24h`, `90m`, `7d`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TimeSpec {
    Ago(Duration),
    At(i64),
}

impl std::str::FromStr for TimeSpec {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let s = s.trim();
        if s == "now" {
            return Ok(Self::Ago(Duration::ZERO));
        }
        if let Some(t) = parse_rfc3339(s) {
            return Ok(Self::At(t));
        }
        crate::config::parse_duration(s).map(Self::Ago).map_err(|_| {
            format!("'{s}' is not a time; give a duration ago (\"24h\", \"90m\", \"7d\") or RFC 3339 (\"2026-11-22T03:00:00Z\")")
        })
    }
}

impl TimeSpec {
    /// The time in ms since the epoch, relative to `now`.
    pub fn at(self, now: i64) -> i64 {
        match self {
            Self::At(t) => t,
            Self::Ago(d) => now.saturating_sub(i64::try_from(d.as_millis()).unwrap_or(i64::MAX)),
        }
    }
}
