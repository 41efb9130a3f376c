//! Time windows of queries: the `{start}` and `{end}` placeholders that scheduled queries (and
//! `prism sql --window/--start/--end`) fill with timestamp literals, and durations like `1h`.

use chrono::{DateTime, TimeDelta, Utc};

/// Placeholders of the SQL text, replaced by timestamp literals.
pub const SQL_START: &str = "{start}";
pub const SQL_END: &str = "{end}";

/// A duration written as whole numbers of units: `15m`, `1h`, `1d`, `1w`, `1h30m`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Span(TimeDelta);

impl Span {
    /// Ten years of 365¼ days.
    const LONGEST: TimeDelta = TimeDelta::days(3652);

    pub fn parse(text: &str) -> Result<Span, String> {
        let bad = || format!("`{text}` is not a duration like 15m, 1h, 1d, 1w or 1h30m (units m, h, d, w)");
        let mut total = TimeDelta::zero();
        let mut digits = String::new();
        for c in text.chars() {
            if c.is_ascii_digit() {
                digits.push(c);
                continue;
            }
            let n: i64 = digits.parse().map_err(|_| bad())?;
            digits.clear();
            let unit = match c {
                'm' => TimeDelta::try_minutes(n),
                'h' => TimeDelta::try_hours(n),
                'd' => TimeDelta::try_days(n),
                'w' => TimeDelta::try_weeks(n),
                _ => None,
            };
            total = unit.and_then(|u| total.checked_add(&u)).ok_or_else(bad)?;
        }
        if !digits.is_empty() || total <= TimeDelta::zero() {
            return Err(bad());
        }
        // Windows and retentions are subtracted from dates; thousands of years would leave
        // chrono's range (a fuzzer found `5000000000h`), and no trail is that old.
        if total > Self::LONGEST {
            return Err(format!("`{text}` is longer than 10 years, the longest duration accepted"));
        }
        Ok(Span(total))
    }

    pub fn delta(&self) -> TimeDelta {
        self.0
    }
}

impl std::fmt::Display for Span {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut minutes = self.0.num_minutes();
        for (unit, size) in [("w", 7 * 24 * 60), ("d", 24 * 60), ("h", 60), ("m", 1)] {
            if minutes >= size {
                write!(f, "{}{unit}", minutes / size)?;
                minutes %= size;
            }
        }
        Ok(())
    }
}

/// The time range a query covers: `[start, end)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TimeWindow {
    pub start: DateTime<Utc>,
    pub end: DateTime<Utc>,
}

/// `2024-06-01T12:00:00Z` as a SQL literal that compares with `eventtime` (a UTC timestamp).
pub fn sql_timestamp(t: DateTime<Utc>) -> String {
    format!("TIMESTAMP '{}'", t.format("%Y-%m-%dT%H:%M:%SZ"))
}

/// Whether `sql` uses `{start}` or `{end}` outside comment lines (a scheduled query's header
/// may mention them in its description).
pub fn uses_window(sql: &str) -> bool {
    sql.lines().filter(|l| !l.trim_start().starts_with("--")).any(|l| l.contains(SQL_START) || l.contains(SQL_END))
}

impl TimeWindow {
    /// `sql` with `{start}` and `{end}` replaced by `TIMESTAMP '…Z'` literals.
    pub fn fill(&self, sql: &str) -> String {
        sql.replace(SQL_START, &sql_timestamp(self.start)).replace(SQL_END, &sql_timestamp(self.end))
    }

    /// The window from `prism sql`'s flags: `--start` and `--end`; or `--window` ending at
    /// `--end` (default: `now`, to the minute) or starting at `--start`.
    pub fn from_flags(start: Option<DateTime<Utc>>, end: Option<DateTime<Utc>>, span: Option<Span>, now: DateTime<Utc>) -> Result<Option<TimeWindow>, String> {
        let minute = |t: DateTime<Utc>| t - TimeDelta::seconds(t.timestamp().rem_euclid(60)) - TimeDelta::nanoseconds(t.timestamp_subsec_nanos().into());
        let window = match (start, end, span) {
            (None, None, None) => return Ok(None),
            (Some(_), Some(_), Some(_)) => return Err("give two of --start, --end and --window, not all three".into()),
            (Some(start), Some(end), None) => TimeWindow { start, end },
            (Some(start), None, Some(w)) => TimeWindow { start, end: start + w.delta() },
            (None, end, Some(w)) => {
                let end = end.unwrap_or_else(|| minute(now));
                TimeWindow { start: end - w.delta(), end }
            }
            (Some(_), None, None) => return Err("--start needs --end or --window".into()),
            (None, Some(_), None) => return Err("--end needs --start or --window".into()),
        };
        if window.start >= window.end {
            return Err(format!("the window is empty: --start {} is not before --end {}", window.start.to_rfc3339(), window.end.to_rfc3339()));
        }
        Ok(Some(window))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    #[test]
    fn flags_make_a_window() {
        let now = t("2024-06-01T12:34:56.789Z");
        let hour = Span::parse("1h").ok();
        let w = |s, e, span| TimeWindow::from_flags(s, e, span, now);
        assert_eq!(w(None, None, None), Ok(None));
        let ending_now = w(None, None, hour).unwrap().unwrap();
        assert_eq!((ending_now.start, ending_now.end), (t("2024-06-01T11:34:00Z"), t("2024-06-01T12:34:00Z")));
        let from_start = w(Some(t("2024-06-01T00:00:00Z")), None, hour).unwrap().unwrap();
        assert_eq!(from_start.end, t("2024-06-01T01:00:00Z"));
        let explicit = w(Some(t("2024-06-01T00:00:00Z")), Some(t("2024-06-02T00:00:00Z")), None).unwrap().unwrap();
        assert_eq!(explicit.fill("x >= {start} AND x < {end}"), "x >= TIMESTAMP '2024-06-01T00:00:00Z' AND x < TIMESTAMP '2024-06-02T00:00:00Z'");
        assert!(w(Some(now), None, None).unwrap_err().contains("--start needs"));
        assert!(w(Some(now), Some(now), None).unwrap_err().contains("empty"));
        assert!(w(Some(now), Some(now), hour).is_err());
    }

    #[test]
    fn placeholders_in_comments_do_not_count() {
        assert!(uses_window("SELECT 1 WHERE eventtime >= {start}"));
        assert!(uses_window("-- window: 1h\nSELECT {end}"));
        assert!(!uses_window("-- fills {start} and {end}\nSELECT 1"));
    }
}
