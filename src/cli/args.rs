//! Parsers and checks of argument values shared by several commands. Each returns a message
//! that names the value and shows a valid one, which clap prints with exit status 2.

use chrono::{DateTime, NaiveDate, Utc};

/// A day, `YYYY-MM-DD`.
pub fn parse_date(s: &str) -> Result<NaiveDate, String> {
    NaiveDate::parse_from_str(s, "%Y-%m-%d").map_err(|_| format!("`{s}` is not a date like 2024-06-30"))
}

/// An instant, RFC 3339 (`2024-06-01T12:00:00Z`, or with an offset).
pub fn parse_time(s: &str) -> Result<DateTime<Utc>, String> {
    DateTime::parse_from_rfc3339(s).map(|t| t.with_timezone(&Utc)).map_err(|_| format!("`{s}` is not an RFC 3339 time like 2024-06-01T12:00:00Z"))
}

/// A duration like `15m`, `1h`, `1d`, `1w` or `1h30m`.
pub fn parse_span(s: &str) -> Result<prism::sql::window::Span, String> {
    prism::sql::window::Span::parse(s)
}

/// A duration in seconds: `30`, `30s`, `500ms`, `2m`.
pub fn parse_duration(s: &str) -> Result<std::time::Duration, String> {
    let bad = || format!("`{s}` is not a duration like 30s, 500ms or 2m");
    let t = s.trim();
    let (number, scale) = if let Some(n) = t.strip_suffix("ms") {
        (n, 0.001)
    } else if let Some(n) = t.strip_suffix('s') {
        (n, 1.0)
    } else if let Some(n) = t.strip_suffix('m') {
        (n, 60.0)
    } else {
        (t, 1.0)
    };
    match number.trim().parse::<f64>() {
        Ok(v) if v.is_finite() && v > 0.0 && v * scale < 86_400.0 => Ok(std::time::Duration::from_secs_f64(v * scale)),
        _ => Err(bad()),
    }
}

/// The detector's sensitivity: a positive, finite factor.
pub fn parse_sensitivity(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(v) if v.is_finite() && v > 0.0 => Ok(v),
        _ => Err(format!("`{s}` is not a positive number, like 0.5, 1 or 2")),
    }
}

/// `--from` must not be after `--to`.
pub fn check_range(from: Option<NaiveDate>, to: Option<NaiveDate>) -> anyhow::Result<()> {
    match (from, to) {
        (Some(f), Some(t)) if f > t => anyhow::bail!("--from {f} is after --to {t}"),
        _ => Ok(()),
    }
}
