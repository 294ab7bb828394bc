//! Times in the metadata replies: Unix seconds and RFC 3339 text in UTC.

/// Seconds in one day, which has no leap second in Unix time.
const SECONDS_PER_DAY: u64 = 86_400;

/// Formats `unix_seconds` as RFC 3339 in UTC, such as `2025-12-05T03:40:00Z`.
pub fn rfc3339_utc(unix_seconds: u64) -> String {
    let (year, month, day) = civil_date(unix_seconds / SECONDS_PER_DAY);
    let second_of_day = unix_seconds % SECONDS_PER_DAY;
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        second_of_day / 3600,
        second_of_day % 3600 / 60,
        second_of_day % 60
    )
}

/// Returns the proleptic Gregorian year, month (1 to 12) and day (1 to 31) of the day `days`
/// after 1970-01-01. The calendar repeats every 400 years (146097 days), and counting years
/// from March 1 puts the leap day at the end of the counted year.
fn civil_date(days: u64) -> (u64, u64, u64) {
    const DAYS_PER_ERA: u64 = 146_097;
    // Days from 0000-03-01 to 1970-01-01.
    const EPOCH_SHIFT_DAYS: u64 = 719_468;
    let shifted = days + EPOCH_SHIFT_DAYS;
    let era = shifted / DAYS_PER_ERA;
    let day_of_era = shifted % DAYS_PER_ERA;
    let year_of_era = (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    // Months counted from March: 0 is March, 11 is February.
    let month_from_march = (5 * day_of_year + 2) / 153;
    let day = day_of_year - (153 * month_from_march + 2) / 5 + 1;
    let month = if month_from_march < 10 { month_from_march + 3 } else { month_from_march - 9 };
    let year = year_of_era + era * 400 + u64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_known_dates() {
        assert_eq!(rfc3339_utc(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339_utc(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(rfc3339_utc(1_764_906_000), "2025-12-05T03:40:00Z");
        assert_eq!(rfc3339_utc(4_102_444_799), "2099-12-31T23:59:59Z");
    }
}
