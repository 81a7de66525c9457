//! Wall-clock formatting without a time-zone database: UTC civil time for logs and ping messages
//! (the calendar arithmetic is jiff's).

use std::time::SystemTime;

use jiff::Timestamp;
use jiff::tz::Offset;

/// A UTC date and time broken into fields.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UtcTime {
    pub year: i64,
    pub month: u32,
    pub day: u32,
    pub hour: u32,
    pub minute: u32,
    pub second: u32,
    pub millis: u32,
}

impl UtcTime {
    /// The current time.
    pub fn now() -> Self {
        Self::from_system(SystemTime::now())
    }

    /// Converts a system time (clamped to the epoch, and to jiff's range, which ends with the
    /// year 9999) into UTC fields.
    pub fn from_system(t: SystemTime) -> Self {
        let ts = match Timestamp::try_from(t) {
            Ok(ts) => ts.max(Timestamp::UNIX_EPOCH),
            Err(_) if t > SystemTime::UNIX_EPOCH => Timestamp::MAX,
            Err(_) => Timestamp::UNIX_EPOCH,
        };
        let civil = Offset::UTC.to_datetime(ts);
        // jiff's fields are signed but never negative here, so `unsigned_abs` loses nothing.
        Self {
            year: i64::from(civil.year()),
            month: u32::from(civil.month().unsigned_abs()),
            day: u32::from(civil.day().unsigned_abs()),
            hour: u32::from(civil.hour().unsigned_abs()),
            minute: u32::from(civil.minute().unsigned_abs()),
            second: u32::from(civil.second().unsigned_abs()),
            millis: u32::from(civil.millisecond().unsigned_abs()),
        }
    }

    /// `HH:MM:SS`, the time format of the classic UDP ping message.
    pub fn hms(&self) -> String {
        format!("{:02}:{:02}:{:02}", self.hour, self.minute, self.second)
    }

    /// RFC 3339 with milliseconds, e.g. `2026-11-22T03:04:05.678Z`.
    pub fn rfc3339(&self) -> String {
        format!(
            "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:03}Z",
            self.year, self.month, self.day, self.hour, self.minute, self.second, self.millis
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, UNIX_EPOCH};

    #[test]
    fn formats_known_instants() {
        let t = UtcTime::from_system(UNIX_EPOCH + Duration::from_millis(1_795_316_645_123));
        assert_eq!(t.rfc3339(), "2026-11-22T03:04:05.123Z");
        assert_eq!(t.hms(), "03:04:05");
        let leap = UtcTime::from_system(UNIX_EPOCH + Duration::from_secs(951_782_400));
        assert_eq!((leap.year, leap.month, leap.day), (2000, 2, 29));
        assert_eq!(UtcTime::from_system(UNIX_EPOCH).rfc3339(), "1970-01-01T00:00:00.000Z");
    }
}
