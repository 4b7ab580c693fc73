//! Reading `time`: RFC 3339 as `strict` requires it, and the other forms `compatible` mode
//! accepts (what the reference service's model, pydantic, reads as a datetime). Pure functions
//! of the text: validation decides what a result means for the event.
//!
//! [`parse_time`] is RFC 3339 `date-time` and nothing else; such a time is kept verbatim.
//!
//! [`parse_lenient`] turns each other form into one UTC instant, written back as RFC 3339 with
//! `Z`, and names the [`Rule`]s it needed. Accepted (anything RFC 3339 never gets there):
//! - `YYYY-MM-DD` followed by `T`, `t`, a space or `_` and `HH:MM[:SS[.fraction]]`, then `Z`,
//!   `z`, `±HH:MM`, `±HHMM`, `±HH` (ASCII or Unicode minus) or nothing (= UTC);
//! - `YYYY-MM-DD` alone (midnight UTC);
//! - a JSON number or a numeric string: Unix seconds; beyond ±2·10¹⁰ milliseconds (as the
//!   reference reads them), between 1600-01-01 and 9999-12-31.
//!
//! # Why not `speedate`
//! `speedate` is the parser behind pydantic, i.e. the reference's. Measured (speedate 0.17.0,
//! `DateTime::parse_str_with_config`, fractions beyond microseconds truncated) against this
//! module's unit-test cases, it reads 7 of 35 otherwise:
//! - it refuses a date alone (`2026-04-22`: pydantic reads dates itself, not through this
//!   function), a `±HH` offset (`2026-04-22T01:00:00-02`) and a leap second
//!   (`2016-12-31T23:59:60`);
//! - it keeps microseconds only (`…14:00:00.123456789` becomes `.123456`), so the rewritten
//!   time would not be the instant sent;
//! - it accepts `1.` and two times whose UTC instant leaves years 1–9999
//!   (`0001-01-01T00:30+0100`, `9999-12-31T23:30-0100`), which cannot be written back as
//!   4-digit RFC 3339.
//!
//! On the fuzz generator's ten time forms (200 000 values) it differs on about half: the
//! nanoseconds, and the Unicode minus (`−02`), which it refuses. It also does not say which form
//! it read (no offset, a space, no seconds…), which each event reports as a [`Rule`], so a scan
//! of the text would remain. And it is slower here: 190–600 ns per naive or space-separated
//! time (parse and conversion to chrono) against 33–45 ns for [`parse_lenient`] (release build,
//! one core of a loaded 2-core machine, so the spread).

use chrono::{
    DateTime, Datelike, FixedOffset, NaiveDate, NaiveDateTime, NaiveTime, TimeDelta, Utc,
};
use serde_json::Number;

use super::rules::{Normalizations, Rule};

/// Seconds (or milliseconds) watershed of the reference's parser.
const MS_WATERSHED: f64 = 2e10;
/// 1600-01-01T00:00:00Z and 9999-12-31T23:59:59Z in Unix seconds.
const MIN_UNIX: i64 = -11_676_096_000;
const MAX_UNIX: i64 = 253_402_300_799;

/// Reads an optional `.fraction` of a second starting at `b[i]`: the nanoseconds (digits beyond
/// nine truncated) and the index after it. A `.` without digits is `None`.
fn fraction(b: &[u8], mut i: usize) -> Option<(u32, usize)> {
    let mut nanos = 0u32;
    if b.get(i) != Some(&b'.') {
        return Some((nanos, i));
    }
    i += 1;
    let start = i;
    while i < b.len() && b[i].is_ascii_digit() {
        if i - start < 9 {
            nanos = nanos * 10 + u32::from(b[i] - b'0');
        }
        i += 1;
    }
    let digits = i - start;
    if digits == 0 {
        return None;
    }
    for _ in digits..9 {
        nanos *= 10;
    }
    Some((nanos, i))
}

/// Parse an RFC 3339 `date-time` strictly: `YYYY-MM-DDThh:mm:ss[.frac](Z|±hh:mm)`.
///
/// `T` and `Z` may be lowercase (RFC 3339 §5.6 note); a space separator or a missing offset is
/// rejected. A leap second (`:60`) is accepted. Fractions beyond nanoseconds are truncated.
pub fn parse_time(s: &str) -> Option<DateTime<FixedOffset>> {
    let b = s.as_bytes();
    if b.len() < 20 {
        return None;
    }
    let num = |from: usize, len: usize| -> Option<u32> {
        let digits = b.get(from..from + len)?;
        digits.iter().try_fold(0u32, |acc, c| {
            c.is_ascii_digit().then(|| acc * 10 + u32::from(c - b'0'))
        })
    };
    let year = num(0, 4)?;
    let month = num(5, 2)?;
    let day = num(8, 2)?;
    let hour = num(11, 2)?;
    let minute = num(14, 2)?;
    let mut second = num(17, 2)?;
    if b[4] != b'-'
        || b[7] != b'-'
        || !matches!(b[10], b'T' | b't')
        || b[13] != b':'
        || b[16] != b':'
    {
        return None;
    }
    let (mut nanos, i) = fraction(b, 19)?;
    let offset_secs: i32 = match b.get(i)? {
        b'Z' | b'z' if i + 1 == b.len() => 0,
        sign @ (b'+' | b'-') if i + 6 == b.len() && b[i + 3] == b':' => {
            let oh = num(i + 1, 2)?;
            let om = num(i + 4, 2)?;
            if oh > 23 || om > 59 {
                return None;
            }
            let secs = i32::try_from(oh * 3600 + om * 60).ok()?;
            if *sign == b'-' { -secs } else { secs }
        }
        _ => return None,
    };
    if second == 60 {
        // chrono represents a leap second as :59 with nanoseconds >= 1e9.
        second = 59;
        nanos += 1_000_000_000;
    }
    let date = NaiveDate::from_ymd_opt(i32::try_from(year).ok()?, month, day)?;
    let time = NaiveTime::from_hms_nano_opt(hour, minute, second, nanos)?;
    let offset = FixedOffset::east_opt(offset_secs)?;
    NaiveDateTime::new(date, time)
        .and_local_timezone(offset)
        .single()
}

/// A lenient `time` string, or `None` when even the reference would refuse it.
pub(crate) fn parse_lenient(s: &str) -> Option<(DateTime<Utc>, Normalizations)> {
    let mut rules = Normalizations::default();
    if let Some(t) = parse_numeric_str(s) {
        rules.add(Rule::TimeUnixSeconds);
        return Some((t, rules));
    }
    let b = s.as_bytes();
    let digits = |from: usize, len: usize| -> Option<u32> {
        let d = b.get(from..from + len)?;
        d.iter().try_fold(0u32, |acc, c| {
            c.is_ascii_digit().then(|| acc * 10 + u32::from(c - b'0'))
        })
    };
    let (year, month, day) = (digits(0, 4)?, digits(5, 2)?, digits(8, 2)?);
    if b.get(4) != Some(&b'-') || b.get(7) != Some(&b'-') {
        return None;
    }
    let date = NaiveDate::from_ymd_opt(i32::try_from(year).ok()?, month, day)?;
    if year == 0 {
        return None;
    }
    if b.len() == 10 {
        rules.add(Rule::TimeDateOnly);
        return Some((date.and_time(NaiveTime::MIN).and_utc(), rules));
    }
    match b[10] {
        b'T' | b't' => {}
        b' ' | b'_' => rules.add(Rule::TimeSpaceSeparator),
        _ => return None,
    }
    let hour = digits(11, 2)?;
    if b.get(13) != Some(&b':') {
        return None;
    }
    let minute = digits(14, 2)?;
    let mut i = 16;
    let mut second = 0;
    let mut nanos = 0u32;
    if b.get(i) == Some(&b':') {
        second = digits(17, 2)?;
        (nanos, i) = fraction(b, 19)?;
    } else {
        rules.add(Rule::TimeOtherFormat);
    }
    let offset_secs = offset(&s[i..], &mut rules)?;
    if second == 60 {
        // A leap second, as RFC 3339 allows: chrono keeps it as :59 + 1e9 ns.
        second = 59;
        nanos += 1_000_000_000;
    }
    let time = NaiveTime::from_hms_nano_opt(hour, minute, second, nanos)?;
    let local = NaiveDateTime::new(date, time);
    let utc = local.checked_sub_signed(TimeDelta::seconds(i64::from(offset_secs)))?;
    // Years 1..=9999, as Python's datetime: the rewritten value must stay 4-digit RFC 3339.
    if !(1..=9999).contains(&local.year()) || !(1..=9999).contains(&utc.year()) {
        return None;
    }
    Some((utc.and_utc(), rules))
}

/// The offset suffix in seconds east of UTC; none at all is UTC.
fn offset(rest: &str, rules: &mut Normalizations) -> Option<i32> {
    let (sign, digits) = match rest.as_bytes().first() {
        None => {
            rules.add(Rule::TimeNoOffset);
            return Some(0);
        }
        Some(b'Z' | b'z') if rest.len() == 1 => return Some(0),
        Some(b'+') => (1, &rest[1..]),
        Some(b'-') => (-1, &rest[1..]),
        _ => match rest.strip_prefix('\u{2212}') {
            Some(d) => {
                rules.add(Rule::TimeOtherFormat);
                (-1, d)
            }
            None => return None,
        },
    };
    let d = digits.as_bytes();
    let two = |at: usize| -> Option<i32> {
        let p = d.get(at..at + 2)?;
        p.iter().try_fold(0i32, |acc, c| {
            c.is_ascii_digit().then(|| acc * 10 + i32::from(c - b'0'))
        })
    };
    let (h, m) = match d.len() {
        2 => (two(0)?, 0),
        4 => (two(0)?, two(2)?),
        5 if d[2] == b':' => (two(0)?, two(3)?),
        _ => return None,
    };
    if d.len() != 5 {
        rules.add(Rule::TimeOtherFormat);
    }
    if h > 23 || m > 59 {
        return None;
    }
    Some(sign * (h * 3600 + m * 60))
}

/// `-?digits[.digits]` as Unix time.
fn parse_numeric_str(s: &str) -> Option<DateTime<Utc>> {
    let unsigned = s.strip_prefix('-').unwrap_or(s);
    let (int, frac) = match unsigned.split_once('.') {
        Some((i, f)) => (i, Some(f)),
        None => (unsigned, None),
    };
    let all_digits = |p: &str| !p.is_empty() && p.bytes().all(|c| c.is_ascii_digit());
    if !all_digits(int) || frac.is_some_and(|f| !all_digits(f)) {
        return None;
    }
    match frac {
        None => from_unix_int(s.parse().ok()?),
        Some(_) => from_unix_float(s.parse().ok()?),
    }
}

/// A JSON number as Unix time.
pub(crate) fn from_unix_number(n: &Number) -> Option<DateTime<Utc>> {
    match n.as_i64() {
        Some(i) => from_unix_int(i),
        None => from_unix_float(n.as_f64()?),
    }
}

fn from_unix_int(v: i64) -> Option<DateTime<Utc>> {
    let (secs, nanos) = if (v as f64).abs() > MS_WATERSHED {
        (v.div_euclid(1000), (v.rem_euclid(1000) as u32) * 1_000_000)
    } else {
        (v, 0)
    };
    in_range(secs, nanos)
}

fn from_unix_float(v: f64) -> Option<DateTime<Utc>> {
    if !v.is_finite() {
        return None;
    }
    let v = if v.abs() > MS_WATERSHED {
        v / 1000.0
    } else {
        v
    };
    let floor = v.floor();
    // Microsecond precision, as the reference keeps.
    let mut micros = ((v - floor) * 1e6).round() as u32;
    let mut secs = floor as i64;
    if micros >= 1_000_000 {
        micros -= 1_000_000;
        secs += 1;
    }
    in_range(secs, micros * 1000)
}

fn in_range(secs: i64, nanos: u32) -> Option<DateTime<Utc>> {
    if !(MIN_UNIX..=MAX_UNIX).contains(&secs) {
        return None;
    }
    DateTime::from_timestamp(secs, nanos)
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::{SecondsFormat, TimeZone};

    fn utc(s: &str) -> (String, Vec<&'static str>) {
        let (t, rules) = parse_lenient(s).unwrap_or_else(|| panic!("{s:?} refused"));
        (
            t.to_rfc3339_opts(SecondsFormat::AutoSi, true),
            rules.iter().map(Rule::label).collect(),
        )
    }

    #[test]
    fn parse_time_is_strict_rfc3339() {
        let t = parse_time("2026-11-22T21:23:11.5+02:00").unwrap();
        assert_eq!(
            t.with_timezone(&Utc),
            Utc.with_ymd_and_hms(2026, 11, 22, 19, 23, 11).unwrap() + TimeDelta::milliseconds(500)
        );
        assert_eq!(t.offset().local_minus_utc(), 7200);
        assert!(parse_time("2026-11-22t19:23:11z").is_some());
        assert!(parse_time("2016-12-31T23:59:60Z").is_some());
        assert!(parse_time("2026-11-22T19:23:11.123456789123Z").is_some());
        for bad in [
            "2026-11-22T19:23:11",
            "2026-11-22 19:23:11Z",
            "2026-11-22T19:23Z",
            "2026-11-22T19:23:11.Z",
            "2026-11-22T19:23:11+0200",
            "2026-11-22T19:23:11+02",
            "2026-11-22T19:23:11+24:00",
            "2026-02-30T19:23:11Z",
            "2026-11-22T24:00:00Z",
            "2026-11-22T19:60:00Z",
            "2026-11-22T19:23:61Z",
            "2026-11-22T19:23:11ZZ",
            "+2026-11-22T19:23:11Z",
            "2026-11-22",
            "",
            "２０２6-11-22T19:23:11Z",
        ] {
            assert!(parse_time(bad).is_none(), "{bad:?} accepted");
        }
    }

    #[test]
    fn naive_space_date_and_other_forms() {
        assert_eq!(
            utc("2026-04-22T14:00:00"),
            ("2026-04-22T14:00:00Z".into(), vec!["time_no_offset"])
        );
        assert_eq!(
            utc("2026-04-22T14:00:00.123456"),
            ("2026-04-22T14:00:00.123456Z".into(), vec!["time_no_offset"])
        );
        assert_eq!(
            utc("2026-04-22 14:00:00Z"),
            ("2026-04-22T14:00:00Z".into(), vec!["time_space_separator"])
        );
        assert_eq!(
            utc("2026-04-22 14:00:00"),
            (
                "2026-04-22T14:00:00Z".into(),
                vec!["time_no_offset", "time_space_separator"]
            )
        );
        assert_eq!(
            utc("2026-04-22_14:00:00+02:00"),
            ("2026-04-22T12:00:00Z".into(), vec!["time_space_separator"])
        );
        assert_eq!(
            utc("2026-04-22"),
            ("2026-04-22T00:00:00Z".into(), vec!["time_date_only"])
        );
        assert_eq!(
            utc("2026-04-22T14:00"),
            (
                "2026-04-22T14:00:00Z".into(),
                vec!["time_no_offset", "time_other_format"]
            )
        );
        assert_eq!(
            utc("2026-04-22T14:00:00+0530"),
            ("2026-04-22T08:30:00Z".into(), vec!["time_other_format"])
        );
        assert_eq!(
            utc("2026-04-22T01:00:00-02"),
            ("2026-04-22T03:00:00Z".into(), vec!["time_other_format"])
        );
        assert_eq!(
            utc("2026-04-22T01:00:00\u{2212}01:00"),
            ("2026-04-22T02:00:00Z".into(), vec!["time_other_format"])
        );
        assert_eq!(
            utc("2016-12-31T23:59:60"),
            ("2016-12-31T23:59:60Z".into(), vec!["time_no_offset"])
        );
    }

    #[test]
    fn numbers_are_unix_seconds_or_milliseconds() {
        assert_eq!(
            utc("1776866400"),
            ("2026-04-22T14:00:00Z".into(), vec!["time_unix_seconds"])
        );
        assert_eq!(utc("1776866400.25").0, "2026-04-22T14:00:00.250Z");
        assert_eq!(utc("1776866400250").0, "2026-04-22T14:00:00.250Z");
        assert_eq!(utc("-1").0, "1969-12-31T23:59:59Z");
        let n: Number = serde_json::from_str("1776866400").unwrap();
        assert_eq!(
            from_unix_number(&n),
            Some(Utc.with_ymd_and_hms(2026, 4, 22, 14, 0, 0).unwrap())
        );
        let n: Number = serde_json::from_str("1776866400.5").unwrap();
        assert_eq!(from_unix_number(&n).unwrap().timestamp_subsec_millis(), 500);
        let n: Number = serde_json::from_str("18446744073709551615").unwrap();
        assert_eq!(from_unix_number(&n), None, "beyond 9999");
        let n: Number = serde_json::from_str("1e300").unwrap();
        assert_eq!(from_unix_number(&n), None);
    }

    #[test]
    fn what_the_reference_refuses_too() {
        for bad in [
            "",
            "yesterday",
            "2026-04-22T",
            "2026-04-22T14",
            "2026-04-22T14:00:00.",
            "2026-04-22X14:00:00",
            "2026-02-30",
            "2026-04-22T25:00:00",
            "2026-04-22T14:00:00+2400",
            "2026-04-22T14:00:00+1",
            "2026-04-22T14:00:00 UTC",
            "0000-01-01",
            "0001-01-01T00:30+0100",
            "9999-12-31T23:30-0100",
            "1e5",
            "NaN",
            "--1",
            "1.",
            "99999999999999999999999",
        ] {
            assert!(parse_lenient(bad).is_none(), "{bad:?} accepted");
        }
    }
}
