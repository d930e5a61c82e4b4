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
    let unix_seconds = time
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    const WEEKDAYS: [&str; 7] = ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"];
    let days = unix_seconds / 86_400;
    let (h, m, s) = (
        (unix_seconds % 86_400) / 3600,
        (unix_seconds % 3600) / 60,
        unix_seconds % 60,
    );
    // Days since 1970-01-01 to a civil date (Howard Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    let weekday = WEEKDAYS[(days % 7) as usize];
    let month = MONTHS[(month - 1) as usize];
    format!("{weekday}, {day} {month} {year} {h:02}:{m:02}:{s:02} +0000")
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
