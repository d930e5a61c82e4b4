//! The date format of message headers (RFC 5322 §3.3), for `Received:`, `Date:` and
//! delivery reports. Pure formatting: the caller supplies the time.

/// `Tue, 24 Nov 2026 20:00:00 +0000`: `time` in UTC, to the second (a time before 1970
/// reads as the epoch).
///
/// ```
/// use std::time::{Duration, UNIX_EPOCH};
/// assert_eq!(smtp_proto::rfc5322_date(UNIX_EPOCH), "Thu, 1 Jan 1970 00:00:00 +0000");
/// let then = UNIX_EPOCH + Duration::from_secs(1_795_550_400);
/// assert_eq!(smtp_proto::rfc5322_date(then), "Tue, 24 Nov 2026 20:00:00 +0000");
/// ```
pub fn rfc5322_date(time: std::time::SystemTime) -> String {
    let t = Civil::of(time);
    format!(
        "{}, {} {} {} {:02}:{:02}:{:02} +0000",
        t.weekday, t.day, t.month, t.year, t.hour, t.minute, t.second
    )
}

/// `Tue Nov 24 20:00:00 2026`: `time` in UTC in C's `asctime` form, as the `From ` line
/// of an mbox carries it.
///
/// ```
/// use std::time::{Duration, UNIX_EPOCH};
/// assert_eq!(smtp_proto::asctime_date(UNIX_EPOCH), "Thu Jan  1 00:00:00 1970");
/// let then = UNIX_EPOCH + Duration::from_secs(1_795_550_400);
/// assert_eq!(smtp_proto::asctime_date(then), "Tue Nov 24 20:00:00 2026");
/// ```
pub fn asctime_date(time: std::time::SystemTime) -> String {
    let t = Civil::of(time);
    format!(
        "{} {} {:>2} {:02}:{:02}:{:02} {}",
        t.weekday, t.month, t.day, t.hour, t.minute, t.second, t.year
    )
}

/// A time in UTC as calendar fields.
struct Civil {
    weekday: &'static str,
    day: i64,
    month: &'static str,
    year: i64,
    hour: u64,
    minute: u64,
    second: u64,
}

impl Civil {
    /// `time` (a time before 1970 reads as the epoch).
    fn of(time: std::time::SystemTime) -> Self {
        const MONTHS: [&str; 12] = [
            "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
        ];
        const WEEKDAYS: [&str; 7] = ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"];
        let unix_seconds = time
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let days = unix_seconds / 86_400;
        // Days since 1970-01-01 to a civil date (Howard Hinnant's algorithm).
        let z = days as i64 + 719_468;
        let era = z.div_euclid(146_097);
        let doe = z.rem_euclid(146_097);
        let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
        let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
        let mp = (5 * doy + 2) / 153;
        let day = doy - (153 * mp + 2) / 5 + 1;
        let month = if mp < 10 { mp + 3 } else { mp - 9 };
        Self {
            weekday: WEEKDAYS[(days % 7) as usize],
            day,
            month: MONTHS[(month - 1) as usize],
            year: yoe + era * 400 + i64::from(month <= 2),
            hour: (unix_seconds % 86_400) / 3600,
            minute: (unix_seconds % 3600) / 60,
            second: unix_seconds % 60,
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn leap_day() {
        assert_eq!(
            super::rfc5322_date(
                std::time::UNIX_EPOCH + std::time::Duration::from_secs(951_782_400)
            ),
            "Tue, 29 Feb 2000 00:00:00 +0000"
        );
    }
}
