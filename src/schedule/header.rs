//! The header of a scheduled query: `-- key: value` comment lines at the top of a `.sql` file.
//!
//! ```sql
//! -- name: access_denied_hot_spots
//! -- schedule: 0 * * * *
//! -- output: results/{name}/{date}.csv
//! -- window: 1h
//! SELECT … FROM events WHERE eventtime >= {start} AND eventtime < {end} …
//! ```
//!
//! The header is the run of comment (and blank) lines before the first line of SQL. A header
//! line is `-- key: value` with a lower-case key; other comment lines (`-- What it finds: …`,
//! `-- Note: …`) are prose. Everything is checked when the folder is read, so a bad file is
//! reported with its line before anything runs, and the other files still run.

use std::path::{Path, PathBuf};

use chrono::{DateTime, TimeDelta, Utc};
use croner::Cron;
use croner::parser::{CronParser, Seconds, Year};

use crate::sql::OutputFormat;

/// Keys a header may hold. `description` is documentation only.
pub const KEYS: &[&str] = &["name", "schedule", "output", "window", "delay", "description"];

/// The output template used when a scheduled query has no `-- output:` line.
pub const DEFAULT_OUTPUT: &str = "{name}/{date}.csv";

pub use crate::sql::window::{SQL_END, SQL_START, Span, TimeWindow, sql_timestamp};

/// A problem with one file, reported with its line (1-based) when there is one.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct HeaderProblem {
    pub file: PathBuf,
    pub line: Option<usize>,
    pub message: String,
}

impl std::fmt::Display for HeaderProblem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.line {
            Some(line) => write!(f, "{}:{line}: {}", self.file.display(), self.message),
            None => write!(f, "{}: {}", self.file.display(), self.message),
        }
    }
}

/// A cron schedule: five fields (minute hour day-of-month month day-of-week), evaluated in UTC.
#[derive(Debug, Clone)]
pub struct Schedule {
    text: String,
    cron: Cron,
}

impl Schedule {
    pub fn parse(text: &str) -> Result<Schedule, String> {
        let not_cron =
            |why: &dyn std::fmt::Display| format!("`{text}` is not a cron schedule (5 fields: minute hour day month weekday, e.g. `0 * * * *`): {why}");
        // croner reads an empty list item (`,`, `5,`, `1,,2`) as nothing: a field of `,`
        // matches no minute, and finding a slot then searched for 30 s (found by the
        // schedule_header fuzz target).
        if let Some(field) = text.split_whitespace().find(|f| f.split(',').any(str::is_empty)) {
            return Err(not_cron(&format!("`{field}` has an empty item in its list")));
        }
        let parser = CronParser::builder().seconds(Seconds::Disallowed).year(Year::Disallowed).build();
        let cron = parser.parse(text).map_err(|e| not_cron(&e))?;
        // A schedule that never fires (`0 0 30 2 *`: February has no 30th) is a mistake.
        let epoch = DateTime::<Utc>::UNIX_EPOCH;
        if cron.find_next_occurrence(&epoch, false).is_err() {
            return Err(format!("`{text}` never fires: no date matches its day, month and weekday"));
        }
        Ok(Schedule { text: text.to_owned(), cron })
    }

    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// The latest slot at or before `now`, if the schedule has one.
    pub fn latest_slot(&self, now: DateTime<Utc>) -> Option<DateTime<Utc>> {
        self.cron.find_previous_occurrence(&now, true).ok()
    }

    /// The first slot strictly after `now`.
    pub fn next_slot(&self, now: DateTime<Utc>) -> Option<DateTime<Utc>> {
        self.cron.find_next_occurrence(&now, false).ok()
    }
}

/// A timestamp that is safe in a file name and sorts in time order: `20240601T1200Z`.
pub fn compact_timestamp(t: DateTime<Utc>) -> String {
    t.format("%Y%m%dT%H%MZ").to_string()
}

/// An output path template: `{name}`, `{date}`, `{start}`, `{end}`; the format comes from the
/// extension.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutputTemplate {
    pub template: String,
    pub format: OutputFormat,
}

const OUTPUT_PLACEHOLDERS: &[&str] = &["name", "date", "start", "end"];

impl OutputTemplate {
    pub fn parse(text: &str) -> Result<OutputTemplate, String> {
        let mut rest = text;
        while let Some(open) = rest.find('{') {
            let after = &rest[open + 1..];
            let Some(close) = after.find('}') else {
                return Err(format!("`{text}` has a `{{` without its `}}`"));
            };
            let key = &after[..close];
            if !OUTPUT_PLACEHOLDERS.contains(&key) {
                return Err(format!("`{{{key}}}` in `{text}` is not a placeholder; use {{name}}, {{date}}, {{start}} or {{end}}"));
            }
            rest = &after[close + 1..];
        }
        let format = OutputFormat::from_path(Path::new(text)).map_err(|e| e.to_string())?;
        Ok(OutputTemplate { template: text.to_owned(), format })
    }

    pub fn uses_window(&self) -> bool {
        self.template.contains("{start}") || self.template.contains("{end}")
    }

    /// The path for one run. `{date}` is the day of the window's end, or of the slot when the
    /// query has no window.
    pub fn render(&self, name: &str, slot: DateTime<Utc>, window: Option<TimeWindow>) -> PathBuf {
        let day = window.map_or(slot, |w| w.end);
        let mut s = self.template.replace("{name}", name).replace("{date}", &day.format("%Y-%m-%d").to_string());
        if let Some(w) = window {
            s = s.replace("{start}", &compact_timestamp(w.start)).replace("{end}", &compact_timestamp(w.end));
        }
        PathBuf::from(s)
    }
}

/// A parsed query file.
#[derive(Debug, Clone)]
pub struct QueryFile {
    pub name: String,
    pub file: PathBuf,
    /// `None`: the file has no `-- schedule:` line and is not scheduled.
    pub schedule: Option<Schedule>,
    pub output: OutputTemplate,
    pub window: Option<Span>,
    /// How long before the slot the window ends (CloudTrail delivers up to ~15 minutes late).
    pub delay: Option<Span>,
    pub description: Option<String>,
    /// The whole file: header comments are valid SQL comments.
    pub sql: String,
}

impl QueryFile {
    /// The window a run at `slot` covers: it ends `delay` before the slot and lasts `window`.
    pub fn window_at(&self, slot: DateTime<Utc>) -> Option<TimeWindow> {
        let end = slot - self.delay.map_or(TimeDelta::zero(), |d| d.delta());
        self.window.map(|w| TimeWindow { start: end - w.delta(), end })
    }

    /// The SQL of a run: `{start}` and `{end}` become `TIMESTAMP '…Z'` literals.
    pub fn render_sql(&self, window: Option<TimeWindow>) -> String {
        match window {
            Some(w) => w.fill(&self.sql),
            None => self.sql.clone(),
        }
    }
}

/// Parses one file's text. On any problem the file is not usable and every problem is returned.
pub fn parse_query_file(file: &Path, text: &str) -> Result<QueryFile, Vec<HeaderProblem>> {
    let mut problems = Vec::new();
    let mut problem = |line: usize, message: String| {
        problems.push(HeaderProblem { file: file.to_owned(), line: Some(line), message });
    };
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let mut name = None;
    let mut schedule = None;
    let mut output = None;
    let mut window = None;
    let mut delay = None;
    let mut description: Option<String> = None;
    let mut seen: Vec<(&str, usize)> = Vec::new();
    let mut output_line = 0;
    for (i, line) in text.lines().enumerate() {
        let n = i + 1;
        let trimmed = line.trim();
        if trimmed.is_empty() {
            continue;
        }
        let Some(comment) = trimmed.strip_prefix("--") else {
            break;
        };
        let Some((key, value)) = header_line(comment) else {
            continue;
        };
        if let Some((_, first)) = seen.iter().find(|(k, _)| *k == key) {
            problem(n, format!("`{key}:` is given twice (first on line {first})"));
            continue;
        }
        seen.push((key, n));
        if value.is_empty() && key != "description" {
            problem(n, format!("`{key}:` has no value"));
            continue;
        }
        match key {
            "name" => {
                if value.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.')) && !value.starts_with('.') {
                    name = Some(value.to_owned());
                } else {
                    problem(n, format!("name `{value}` may hold only letters, digits, `_`, `-` and `.` (it is used in paths)"));
                }
            }
            "schedule" => match Schedule::parse(value) {
                Ok(s) => schedule = Some(s),
                Err(e) => problem(n, e),
            },
            "output" => {
                output_line = n;
                match OutputTemplate::parse(value) {
                    Ok(o) => output = Some(o),
                    Err(e) => problem(n, format!("output: {e}")),
                }
            }
            "window" => match Span::parse(value) {
                Ok(w) => window = Some(w),
                Err(e) => problem(n, format!("window: {e}")),
            },
            "delay" => match Span::parse(value) {
                Ok(d) => delay = Some(d),
                Err(e) => problem(n, format!("delay: {e}")),
            },
            "description" => description = Some(value.to_owned()),
            other => {
                problem(n, format!("unknown header key `{other}:` (known: {}); a prose comment should not start with a lower-case `word:`", KEYS.join(", ")))
            }
        }
    }
    let output = output.unwrap_or_else(|| OutputTemplate { template: DEFAULT_OUTPUT.to_owned(), format: OutputFormat::Csv });
    let line_of = |key: &str| seen.iter().find(|(k, _)| *k == key).map(|(_, l)| *l);
    // A bad `window:` line is reported already; these are for a header without one.
    if line_of("window").is_none() {
        for placeholder in [SQL_START, SQL_END] {
            if let Some(line) = text.lines().position(|l| l.contains(placeholder)) {
                problem(line + 1, format!("the SQL uses {placeholder} but the header has no `-- window:` line to fill it"));
            }
        }
        if output.uses_window() {
            problem(output_line, "output uses {start} or {end} but the header has no `-- window:` line".to_owned());
        }
        if let Some(line) = line_of("delay") {
            problem(line, "`delay:` shifts the window, but the header has no `-- window:` line".to_owned());
        }
    }
    if !problems.is_empty() {
        return Err(problems);
    }
    let name = name.unwrap_or_else(|| file.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default());
    Ok(QueryFile { name, file: file.to_owned(), schedule, output, window, delay, description, sql: text.to_owned() })
}

/// `key: value` when the comment is a header line: a lower-case word, a colon, the value.
fn header_line(comment: &str) -> Option<(&str, &str)> {
    let comment = comment.trim_start();
    let (key, value) = comment.split_once(':')?;
    let is_key = key.starts_with(|c: char| c.is_ascii_lowercase()) && key.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
    is_key.then(|| (key, value.trim()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn t(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    fn parse(text: &str) -> Result<QueryFile, Vec<HeaderProblem>> {
        parse_query_file(Path::new("q/hot.sql"), text)
    }

    fn lines(problems: Vec<HeaderProblem>) -> Vec<(Option<usize>, String)> {
        problems.into_iter().map(|p| (p.line, p.message)).collect()
    }

    #[test]
    fn full_header() {
        let q = parse(
            "-- name: access_denied\n-- What it finds: denied calls, by identity.\n-- schedule: 0 * * * *\n\
             -- output: results/{name}/{date}.parquet\n-- window: 1h\n\nSELECT 1 WHERE {start} < {end}\n-- later: not a header\n",
        )
        .unwrap();
        assert_eq!(q.name, "access_denied");
        assert_eq!(q.schedule.as_ref().unwrap().as_str(), "0 * * * *");
        assert_eq!(q.output.format, OutputFormat::Parquet);
        assert_eq!(q.window.unwrap().delta(), TimeDelta::hours(1));
        assert!(q.delay.is_none());
    }

    #[test]
    fn defaults_name_from_file_stem_and_unscheduled_without_schedule() {
        let q = parse("-- What it finds: something\nSELECT 1").unwrap();
        assert_eq!(q.name, "hot");
        assert!(q.schedule.is_none());
        assert_eq!(q.output.template, DEFAULT_OUTPUT);
        assert_eq!(q.output.format, OutputFormat::Csv);
    }

    #[test]
    fn bad_headers_are_reported_with_their_lines() {
        let problems = lines(
            parse(
                "-- name: ok\n-- schedul: 0 * * * *\n-- schedule: 61 * * * *\n-- output: out/{name}.txt\n\
                 -- window: 1 hour\n-- name: again\nSELECT 1",
            )
            .unwrap_err(),
        );
        assert_eq!(problems.len(), 5, "{problems:?}");
        assert_eq!(problems[0].0, Some(2));
        assert!(problems[0].1.contains("unknown header key `schedul:`"));
        assert_eq!(problems[1].0, Some(3));
        assert!(problems[1].1.contains("not a cron schedule"));
        assert_eq!(problems[2].0, Some(4));
        assert!(problems[2].1.contains("extension"));
        assert_eq!(problems[3].0, Some(5));
        assert!(problems[3].1.contains("window: `1 hour`"));
        assert_eq!(problems[4].0, Some(6));
        assert!(problems[4].1.contains("given twice (first on line 1)"));
    }

    #[test]
    fn cron_must_have_five_fields() {
        assert!(Schedule::parse("0 * * * *").is_ok());
        assert!(Schedule::parse("*/15 8-18 * * mon-fri").is_ok());
        assert!(Schedule::parse("@daily").is_ok());
        assert!(Schedule::parse("0 0 * * * *").is_err(), "six fields (seconds) are refused");
        assert!(Schedule::parse("0 * * *").is_err());
        assert!(Schedule::parse("every hour").is_err());
        // Found by the schedule_header fuzz target: a field of `,` matched no minute and
        // finding a slot searched for 30 s. Empty list items and schedules that never fire are
        // refused, with the reason.
        for bad in [",  * * * 2", "5, * * * *", "1,,2 * * * *"] {
            let e = Schedule::parse(bad).unwrap_err();
            assert!(e.contains("empty item"), "{bad}: {e}");
        }
        assert!(Schedule::parse("0 0 30 2 *").unwrap_err().contains("never fires"));
        assert!(Schedule::parse("0 0 29 2 *").is_ok(), "leap days exist");
    }

    #[test]
    fn placeholders_need_a_window() {
        let p = lines(parse("-- schedule: 0 * * * *\nSELECT *\nFROM events WHERE eventtime >= {start}").unwrap_err());
        assert_eq!(p, vec![(Some(3), "the SQL uses {start} but the header has no `-- window:` line to fill it".to_owned())]);
        let p = lines(parse("-- output: r/{start}.csv\nSELECT 1").unwrap_err());
        assert_eq!(p[0].0, Some(1));
        let p = lines(parse("-- output: r/{when}.csv\nSELECT 1").unwrap_err());
        assert!(p[0].1.contains("`{when}` in `r/{when}.csv` is not a placeholder"), "{p:?}");
        let p = lines(parse("-- delay: 15m\nSELECT 1").unwrap_err());
        assert!(p[0].1.contains("no `-- window:`"));
    }

    #[test]
    fn prose_and_names() {
        assert!(parse("-- Note: capitalised prose is fine\n-- see http://example.com\nSELECT 1").is_ok());
        let p = lines(parse("-- name: ../etc\nSELECT 1").unwrap_err());
        assert!(p[0].1.contains("used in paths"));
        assert!(lines(parse("-- schedule:\nSELECT 1").unwrap_err())[0].1.contains("has no value"));
    }

    #[test]
    fn spans() {
        assert_eq!(Span::parse("15m").unwrap().delta(), TimeDelta::minutes(15));
        assert_eq!(Span::parse("1h30m").unwrap().delta(), TimeDelta::minutes(90));
        assert_eq!(Span::parse("1d").unwrap().delta(), TimeDelta::days(1));
        assert_eq!(Span::parse("2w").unwrap().to_string(), "2w");
        assert_eq!(Span::parse("90m").unwrap().to_string(), "1h30m");
        for bad in ["", "1", "h", "0m", "1s", "1 h", "-1h", "99999999999999999999d", "3653d", "522w"] {
            assert!(Span::parse(bad).is_err(), "{bad}");
        }
        assert_eq!(Span::parse("3652d").unwrap().to_string(), "521w5d");
        // Found by fuzzing: a window of thousands of years overflowed the date it was taken from.
        let huge = "-- window: 51509980998h\n-- schedule: * * * * 5\nSELECT 1 WHERE {start} < {end}";
        assert!(lines(parse(huge).unwrap_err())[0].1.contains("longer than 10 years"));
    }

    #[test]
    fn window_substitution_and_output_paths() {
        let q = parse(
            "-- schedule: 0 * * * *\n-- window: 1h\n-- delay: 15m\n-- output: r/{name}/{date}/{start}_{end}.json\n\
             SELECT count(*) FROM events WHERE eventtime >= {start} AND eventtime < {end}",
        )
        .unwrap();
        let slot = Utc.with_ymd_and_hms(2024, 6, 1, 0, 0, 0).unwrap();
        let w = q.window_at(slot).unwrap();
        assert_eq!(w, TimeWindow { start: t("2024-05-31T22:45:00Z"), end: t("2024-05-31T23:45:00Z") });
        assert!(q.render_sql(Some(w)).ends_with("WHERE eventtime >= TIMESTAMP '2024-05-31T22:45:00Z' AND eventtime < TIMESTAMP '2024-05-31T23:45:00Z'"));
        assert_eq!(q.output.render(&q.name, slot, Some(w)), PathBuf::from("r/hot/2024-05-31/20240531T2245Z_20240531T2345Z.json"));
        let plain = parse("-- output: {name}-{date}.ndjson\nSELECT 1").unwrap();
        assert_eq!(plain.output.render("x", slot, None), PathBuf::from("x-2024-06-01.ndjson"));
        assert_eq!(plain.render_sql(None), plain.sql);
    }

    #[test]
    fn slots_are_utc_and_inclusive() {
        let s = Schedule::parse("0 * * * *").unwrap();
        assert_eq!(s.latest_slot(t("2024-06-01T12:00:00Z")), Some(t("2024-06-01T12:00:00Z")));
        assert_eq!(s.latest_slot(t("2024-06-01T12:59:59Z")), Some(t("2024-06-01T12:00:00Z")));
        assert_eq!(s.next_slot(t("2024-06-01T12:00:00Z")), Some(t("2024-06-01T13:00:00Z")));
        let daily = Schedule::parse("30 2 * * *").unwrap();
        assert_eq!(daily.latest_slot(t("2024-06-01T02:29:00Z")), Some(t("2024-05-31T02:30:00Z")));
    }
}
