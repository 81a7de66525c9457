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

/// A time on the command line: `now`, a duration ago (`24h`, `90m`, `7d`, `2w`, `1y` = 365
/// days), an RFC 3339 time (`2026-11-22T03:00:00Z`), or a local time (`2026-11-22 03:00`,
/// `2026-11-22 03:00:30`, `2026-11-22T03:00`, or a date alone for its midnight).
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
        if let Some(t) = parse_rfc3339(s).or_else(|| parse_local(s)) {
            return Ok(Self::At(t));
        }
        ago(s).map(Self::Ago).ok_or_else(|| {
            format!(
                "'{s}' is not a time; give a duration ago (\"24h\", \"7d\", \"2w\", \"1y\"), a local time \
                 (\"2026-11-22 03:00\") or RFC 3339 (\"2026-11-22T03:00:00Z\")"
            )
        })
    }
}

/// A duration ago: what `config::parse_duration` reads, and weeks (`w`) and years (`y`, 365 days).
fn ago(s: &str) -> Option<Duration> {
    let unit = |suffix: char, secs: f64| -> Option<Duration> {
        let n: f64 = s.strip_suffix(suffix)?.trim().parse().ok()?;
        let total = n * secs;
        (n.is_finite() && n >= 0.0 && total <= 1e9).then(|| Duration::from_secs_f64(total))
    };
    unit('w', 7.0 * 86_400.0).or_else(|| unit('y', 365.0 * 86_400.0)).or_else(|| crate::config::parse_duration(s).ok())
}

/// A date and time without an offset, read in the local time zone (`TZ`, else
/// `/etc/localtime`): `2026-11-22 03:00`, `2026-11-22 03:00:30`, `2026-11-22T03:00`, or
/// `2026-11-22` (its midnight). A time a clock change skips or repeats is taken as the clock
/// read before the change.
pub fn parse_local(s: &str) -> Option<i64> {
    use jiff::civil::{Date, DateTime};
    // Digits and separators only: no offset, no zone annotation (those are RFC 3339's).
    let plain = s.len() >= 10 && s.bytes().all(|b| b.is_ascii_digit() || matches!(b, b'-' | b':' | b' ' | b'T' | b'.'));
    if !plain {
        return None;
    }
    let dt = if s.len() == 10 {
        s.parse::<Date>().ok()?.to_datetime(jiff::civil::Time::midnight())
    } else {
        s.parse::<DateTime>().ok()?
    };
    let zone = jiff::tz::TimeZone::try_system().unwrap_or(jiff::tz::TimeZone::UTC);
    Some(zone.to_timestamp(dt).ok()?.as_millisecond())
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_are_read_as_durations_ago_weeks_years_and_absolute_times() {
        let now = 1_000 * 86_400_000;
        let at = |s: &str| s.parse::<TimeSpec>().map(|t| t.at(now));
        assert_eq!(at("24h"), Ok(now - 86_400_000));
        assert_eq!(at("2w"), Ok(now - 14 * 86_400_000));
        assert_eq!(at("1y"), Ok(now - 365 * 86_400_000));
        assert_eq!(at("1.5w"), Ok(now - 252 * 3_600_000));
        assert_eq!(at("now"), Ok(now));
        assert_eq!(at("2026-11-22T03:00:00Z"), Ok(1_795_316_400_000));
        assert_eq!(at("2026-11-22T05:00:00+02:00"), Ok(1_795_316_400_000));
        for bad in ["yesterday", "2x", "-1w", "1e99y", "2026-13-01 00:00", "2026-11-22 25:00"] {
            let e = at(bad).unwrap_err();
            assert!(e.contains("is not a time") && e.contains("2w"), "{bad}: {e}");
        }
    }

    #[test]
    fn a_local_time_has_the_forms_people_type() {
        // Whatever the zone of the machine, the forms agree with each other.
        let minute = parse_local("2026-11-22 03:00");
        assert!(minute.is_some());
        assert_eq!(parse_local("2026-11-22T03:00"), minute);
        assert_eq!(parse_local("2026-11-22 03:00:00"), minute);
        assert_eq!(parse_local("2026-11-22 03:00:30"), minute.map(|t| t + 30_000));
        assert_eq!(parse_local("2026-11-22"), minute.map(|t| t - 3 * 3_600_000));
        for not_local in ["2026-11-22T03:00Z", "2026-11-22 03:00+01:00", "24h", "2026-11-22 03:00[Europe/Paris]"] {
            assert_eq!(parse_local(not_local), None, "{not_local}");
        }
    }
}
