//! Calendar months in UTC: the unit of `audit_events` partitioning (pure).

use std::fmt;

use chrono::{DateTime, Datelike, NaiveDate, TimeZone, Utc};

/// One UTC calendar month; partition `audit_events_YYYY_MM` holds `[start, next().start)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Month {
    /// Months since year 0 (`year * 12 + month0`), so arithmetic is plain addition.
    index: i64,
}

impl Month {
    pub fn new(year: i32, month: u32) -> Option<Month> {
        (1..=12).contains(&month).then(|| Month {
            index: i64::from(year) * 12 + i64::from(month) - 1,
        })
    }

    /// The month containing `t`.
    pub fn of(t: DateTime<Utc>) -> Month {
        Month {
            index: i64::from(t.year()) * 12 + i64::from(t.month0()),
        }
    }

    pub fn year(self) -> i32 {
        // Bounded by chrono's year range, so the conversion cannot fail in practice.
        i32::try_from(self.index.div_euclid(12)).unwrap_or(i32::MAX)
    }

    /// 1..=12
    pub fn month(self) -> u32 {
        // rem_euclid(12) is 0..=11.
        u32::try_from(self.index.rem_euclid(12)).unwrap_or(0) + 1
    }

    /// `n` months later (earlier when negative).
    pub fn plus(self, n: i64) -> Month {
        Month {
            index: self.index + n,
        }
    }

    /// First instant of the month (UTC); `None` outside chrono's range.
    pub fn start(self) -> Option<DateTime<Utc>> {
        let date = NaiveDate::from_ymd_opt(self.year(), self.month(), 1)?;
        Some(Utc.from_utc_datetime(&date.and_hms_opt(0, 0, 0)?))
    }

    /// `audit_events_YYYY_MM`.
    pub fn table_name(self) -> String {
        format!("audit_events_{:04}_{:02}", self.year(), self.month())
    }
}

impl fmt::Display for Month {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:04}-{:02}", self.year(), self.month())
    }
}

/// Start of the oldest month still kept: rows before it are past retention, partitions whose
/// upper bound is at or before it are dropped. `None` when retention is `0` (keep forever).
pub fn retention_cutoff(now: DateTime<Utc>, retention_months: u32) -> Option<DateTime<Utc>> {
    if retention_months == 0 {
        return None;
    }
    Month::of(now).plus(-i64::from(retention_months)).start()
}

/// The months kept created ahead: the current one and `pre_create - 1` following.
pub fn months_ahead(now: DateTime<Utc>, pre_create: u32) -> Vec<Month> {
    let first = Month::of(now);
    (0..i64::from(pre_create.max(1)))
        .map(|i| first.plus(i))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(y: i32, m: u32, d: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(y, m, d, 12, 0, 0).unwrap()
    }

    #[test]
    fn months_roll_over_years_both_ways() {
        let nov = Month::of(t(2026, 11, 22));
        assert_eq!(nov.table_name(), "audit_events_2026_11");
        assert_eq!(nov.plus(2).table_name(), "audit_events_2027_01");
        assert_eq!(nov.plus(-11).table_name(), "audit_events_2025_12");
        assert_eq!(
            nov.plus(1).start(),
            Some(Utc.with_ymd_and_hms(2026, 12, 1, 0, 0, 0).unwrap())
        );
        assert_eq!(Month::new(2026, 13), None);
        assert_eq!(Month::new(2027, 1), Some(nov.plus(2)));
    }

    #[test]
    fn retention_cutoff_is_start_of_month_n_back() {
        let now = t(2026, 11, 22);
        assert_eq!(
            retention_cutoff(now, 84),
            Some(Utc.with_ymd_and_hms(2019, 11, 1, 0, 0, 0).unwrap())
        );
        assert_eq!(
            retention_cutoff(now, 1),
            Some(Utc.with_ymd_and_hms(2026, 10, 1, 0, 0, 0).unwrap())
        );
        assert_eq!(retention_cutoff(now, 0), None);
    }

    #[test]
    fn pre_create_counts_the_current_month() {
        let names: Vec<_> = months_ahead(t(2026, 12, 31), 3)
            .into_iter()
            .map(Month::table_name)
            .collect();
        assert_eq!(
            names,
            [
                "audit_events_2026_12",
                "audit_events_2027_01",
                "audit_events_2027_02"
            ]
        );
    }
}
