//! Event time parsing and the time buckets that name lake partitions.

use std::fmt;
use std::str::FromStr;

use chrono::{DateTime, Datelike, NaiveDate, Timelike, Utc};

const MICROS_PER_SEC: i64 = 1_000_000;

/// Parses a CloudTrail `eventTime` into microseconds since the epoch, UTC.
///
/// CloudTrail writes `2023-07-10T12:07:31Z`; that shape takes a fast path. Any other RFC 3339
/// form (fractional seconds, offsets) is accepted too and converted to UTC.
pub fn parse_event_time(s: &str) -> Option<i64> {
    let b = s.as_bytes();
    if b.len() == 20 && b[4] == b'-' && b[7] == b'-' && b[10] == b'T' && b[13] == b':' && b[16] == b':' && b[19] == b'Z' {
        let num = |r: std::ops::Range<usize>| -> Option<u32> {
            let mut v = 0u32;
            for &c in &b[r] {
                if !c.is_ascii_digit() {
                    return None;
                }
                v = v * 10 + u32::from(c - b'0');
            }
            Some(v)
        };
        let date = NaiveDate::from_ymd_opt(num(0..4)? as i32, num(5..7)?, num(8..10)?)?;
        let (h, m, sec) = (num(11..13)?, num(14..16)?, num(17..19)?);
        if h > 23 || m > 59 || sec > 60 {
            return None;
        }
        let days = i64::from(date.num_days_from_ce() - 719_163);
        let secs = days * 86_400 + i64::from(h) * 3600 + i64::from(m) * 60 + i64::from(sec);
        return Some(secs * MICROS_PER_SEC);
    }
    // chrono's RFC 3339 parser also takes a space for the `T` (RFC 3339, section 5.6, allows it).
    DateTime::parse_from_rfc3339(s).ok().map(|t| t.with_timezone(&Utc).timestamp_micros())
}

/// Reads an `eventTime` written without a zone, as exports from SIEMs and log shippers do
/// (`2024-06-01 12:34:56`, `2024-06-01 12:34:56.000000000`, `2024-06-01T12:34:56`), as UTC:
/// CloudTrail's times are all UTC, and these exports print them without the `Z`. The caller
/// counts such values apart (a zone-less value could also be a local time). A space between
/// date and time with a zone (`2024-06-01 12:34:56Z`, which RFC 3339 allows) is read exactly.
pub fn parse_zoneless_time(s: &str) -> Option<i64> {
    if s.len() > 40 {
        return None;
    }
    for format in ["%Y-%m-%d %H:%M:%S%.f", "%Y-%m-%dT%H:%M:%S%.f"] {
        if let Ok(t) = chrono::NaiveDateTime::parse_from_str(s, format) {
            return Some(t.and_utc().timestamp_micros());
        }
    }
    None
}

/// How finely the lake's partitions divide time. Chosen when a lake is created and recorded in
/// it: minute partitions make many small files, day partitions few large ones (docs/lake.md).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Granularity {
    Minute,
    Hour,
    #[default]
    Day,
}

impl Granularity {
    /// Length of one bucket in microseconds.
    pub fn micros(self) -> i64 {
        MICROS_PER_SEC
            * match self {
                Granularity::Minute => 60,
                Granularity::Hour => 3600,
                Granularity::Day => 86_400,
            }
    }

    /// Start of the bucket holding `micros`.
    pub fn floor(self, micros: i64) -> i64 {
        micros.div_euclid(self.micros()) * self.micros()
    }

    /// The partition value for a bucket: `20240601T1234Z` (minute), `20240601T12Z` (hour),
    /// `20240601` (day). Digits and `T`/`Z` only, so it is a safe path segment everywhere and
    /// sorts in time order.
    pub fn bucket_name(self, micros: i64) -> String {
        let t = DateTime::<Utc>::from_timestamp_micros(self.floor(micros)).unwrap_or_default();
        match self {
            Granularity::Minute => format!("{:04}{:02}{:02}T{:02}{:02}Z", t.year(), t.month(), t.day(), t.hour(), t.minute()),
            Granularity::Hour => format!("{:04}{:02}{:02}T{:02}Z", t.year(), t.month(), t.day(), t.hour()),
            Granularity::Day => format!("{:04}{:02}{:02}", t.year(), t.month(), t.day()),
        }
    }
}

impl fmt::Display for Granularity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Granularity::Minute => "minute",
            Granularity::Hour => "hour",
            Granularity::Day => "day",
        })
    }
}

impl FromStr for Granularity {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "minute" => Ok(Granularity::Minute),
            "hour" => Ok(Granularity::Hour),
            "day" => Ok(Granularity::Day),
            other => Err(format!("unknown granularity `{other}`: expected minute, hour or day")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fast_path_matches_chrono() {
        for s in ["2023-07-10T12:07:31Z", "1970-01-01T00:00:00Z", "2024-02-29T23:59:59Z", "1969-12-31T23:59:59Z"] {
            let slow = DateTime::parse_from_rfc3339(s).unwrap().timestamp_micros();
            assert_eq!(parse_event_time(s), Some(slow), "{s}");
        }
    }

    #[test]
    fn other_rfc3339_forms_and_garbage() {
        assert_eq!(parse_event_time("2023-07-10T14:07:31.250+02:00"), Some(parse_event_time("2023-07-10T12:07:31Z").unwrap() + 250_000));
        for bad in ["ThisIsAWrongEventTime", "", "2023-13-10T12:07:31Z", "2023-07-10T25:07:31Z", "2023-07-10 12:07:31"] {
            assert_eq!(parse_event_time(bad), None, "{bad}");
        }
        assert_eq!(parse_event_time("2023-07-10 12:07:31Z"), parse_event_time("2023-07-10T12:07:31Z"));
    }

    #[test]
    fn zoneless_times_read_as_utc() {
        let utc = parse_event_time("2024-06-01T12:34:56Z").unwrap();
        for s in ["2024-06-01 12:34:56", "2024-06-01 12:34:56.000000000", "2024-06-01T12:34:56", "2024-06-01T12:34:56.000"] {
            assert_eq!(parse_zoneless_time(s), Some(utc), "{s}");
        }
        assert_eq!(parse_zoneless_time("2024-06-01 12:34:56.250"), Some(utc + 250_000));
        for bad in ["2024-06-01", "12:34:56", "2024-06-01 25:00:00", "2024-06-01T12:34:56Z", "yesterday", "2024-06-01 12:34:56 PM"] {
            assert_eq!(parse_zoneless_time(bad), None, "{bad}");
        }
    }

    #[test]
    fn bucket_names() {
        let t = parse_event_time("2024-06-01T12:34:56Z").unwrap();
        assert_eq!(Granularity::Minute.bucket_name(t), "20240601T1234Z");
        assert_eq!(Granularity::Hour.bucket_name(t), "20240601T12Z");
        assert_eq!(Granularity::Day.bucket_name(t), "20240601");
        let before_epoch = parse_event_time("1969-12-31T23:59:30Z").unwrap();
        assert_eq!(Granularity::Minute.bucket_name(before_epoch), "19691231T2359Z");
    }
}
