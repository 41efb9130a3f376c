//! Scheduled queries: `.sql` files whose header comments give a cron schedule, an output path
//! and an optional time window (see [`header`]), run by `prism schedule run --once` from cron or
//! by the long-running `prism schedule serve`.
//!
//! **Due.** A query's *slot* at time `now` is the latest time at or before `now` that its cron
//! schedule (UTC) names. The query is due when it has such a slot and that slot is later than
//! the slot of its last *successful* run in the history (a query that never succeeded is due).
//! So a query missed while the machine was off runs once on the next start, for the latest slot
//! only (its window ends there; earlier missed windows are not back-filled), and a failed run is
//! tried again by the next `run --once`.
//!
//! **State.** The only state is the run history, the Delta table `query_runs` in the lake
//! ([`history`]), queryable like any lake table. Outputs are written atomically by the shared
//! result writer ([`crate::sql::output::write_file_atomic`]).
//!
//! **One scheduler per lake.** A pass and a `serve` loop hold the lake's `schedule` lease
//! ([`crate::lake::lease`]): a second scheduler is refused with who runs it, or with
//! `lease.wait` waits and takes over when the first stops or dies (a hot standby).
//!
//! Library functions take `now` as a parameter, so tests (and `--now`) can move time.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use chrono::{DateTime, Utc};
use datafusion::execution::context::SQLOptions;
use datafusion::prelude::SessionContext;
use tokio_util::sync::CancellationToken;

use crate::lake::lease::{Holder, Lease, LeaseOptions};
use crate::lake::{Lake, LakeError};
use crate::sql::SqlError;
use crate::sql::output::{OutputError, write_file_atomic};

pub mod header;
pub mod history;

pub use header::{HeaderProblem, QueryFile, Schedule, Span, TimeWindow};
pub use history::{History, LastRuns, QueryRun, RUNS_TABLE, RunStatus};

/// Errors that stop a whole pass (a single query's failure is recorded, not raised).
#[derive(Debug, thiserror::Error)]
pub enum ScheduleError {
    #[error("reading the queries folder `{path}`")]
    Folder {
        path: String,
        #[source]
        source: std::io::Error,
    },
    // Boxed: the lake's errors are large, and this error is returned on every path.
    #[error(transparent)]
    Lake(Box<LakeError>),
    #[error("building the SQL session")]
    Session(#[source] Box<SqlError>),
    #[error("compacting the run history (query_runs)")]
    Compact(#[source] Box<crate::maintain::MaintainError>),
}

impl From<crate::maintain::MaintainError> for ScheduleError {
    fn from(e: crate::maintain::MaintainError) -> Self {
        ScheduleError::Compact(Box::new(e))
    }
}

impl From<LakeError> for ScheduleError {
    fn from(e: LakeError) -> Self {
        ScheduleError::Lake(Box::new(e))
    }
}

impl From<SqlError> for ScheduleError {
    fn from(e: SqlError) -> Self {
        ScheduleError::Session(Box::new(e))
    }
}

/// Why one query's run failed; stored as text in the history.
#[derive(Debug, thiserror::Error)]
enum QueryError {
    #[error(transparent)]
    Sql(#[from] datafusion::error::DataFusionError),
    #[error(transparent)]
    Output(#[from] OutputError),
    #[error("the output writer stopped")]
    Writer(#[from] tokio::task::JoinError),
}

/// The `.sql` files of a folder: the usable ones, and the problems of the others.
#[derive(Debug, Clone, Default)]
pub struct Catalogue {
    pub queries: Vec<QueryFile>,
    pub problems: Vec<HeaderProblem>,
}

/// Reads every `*.sql` file directly in `dir` (not in subfolders), in file-name order. A file
/// with a bad header, or whose name is already taken by an earlier file, is reported and left
/// out; the others are kept.
pub fn load_queries(dir: &Path) -> Result<Catalogue, ScheduleError> {
    let folder = |source| ScheduleError::Folder { path: dir.display().to_string(), source };
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(folder)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_file() && p.extension().is_some_and(|e| e.eq_ignore_ascii_case("sql")))
        .collect();
    files.sort();
    let mut catalogue = Catalogue::default();
    let mut names: HashMap<String, PathBuf> = HashMap::new();
    for file in files {
        let text = match std::fs::read_to_string(&file) {
            Ok(t) => t,
            Err(e) => {
                catalogue.problems.push(HeaderProblem { file, line: None, message: format!("cannot read: {e}") });
                continue;
            }
        };
        match header::parse_query_file(&file, &text) {
            Ok(q) => {
                if let Some(first) = names.get(&q.name) {
                    let message = format!("the name `{}` is already used by {}; this file is skipped", q.name, first.display());
                    catalogue.problems.push(HeaderProblem { file, line: None, message });
                    continue;
                }
                names.insert(q.name.clone(), file);
                catalogue.queries.push(q);
            }
            Err(problems) => catalogue.problems.extend(problems),
        }
    }
    Ok(catalogue)
}

/// The slot a query is due for at `now`, if it is due: its latest slot at or before `now`, when
/// that is later than the slot of its last successful run.
pub fn due_slot(schedule: &Schedule, last_ok_slot: Option<DateTime<Utc>>, now: DateTime<Utc>) -> Option<DateTime<Utc>> {
    let slot = schedule.latest_slot(now)?;
    match last_ok_slot {
        Some(done) if done >= slot => None,
        _ => Some(slot),
    }
}

/// Where one query stands at a given time (what `prism schedule list` shows).
#[derive(Debug, Clone, serde::Serialize)]
pub struct QueryStatus {
    pub name: String,
    pub file: String,
    /// `None`: not scheduled.
    pub schedule: Option<String>,
    pub window: Option<String>,
    pub delay: Option<String>,
    pub output: String,
    pub description: Option<String>,
    /// The slot it is due for now; `None` when not due (or not scheduled, or no history known).
    pub due: Option<DateTime<Utc>>,
    /// The first slot after now.
    pub next_slot: Option<DateTime<Utc>>,
    /// The slot of the last successful run.
    pub last_ok_slot: Option<DateTime<Utc>>,
    /// The most recent run, successful or not.
    pub last_run: Option<QueryRun>,
}

/// The status of every query at `now`. Without a history (no lake given), nothing is known to
/// have run, so every scheduled query with a slot is due.
pub fn statuses(catalogue: &Catalogue, history: Option<&History>, now: DateTime<Utc>) -> Vec<QueryStatus> {
    catalogue
        .queries
        .iter()
        .map(|q| {
            let last = history.and_then(|h| h.get(&q.name)).cloned().unwrap_or_default();
            QueryStatus {
                name: q.name.clone(),
                file: q.file.display().to_string(),
                schedule: q.schedule.as_ref().map(|s| s.as_str().to_owned()),
                window: q.window.map(|w| w.to_string()),
                delay: q.delay.map(|d| d.to_string()),
                output: q.output.template.clone(),
                description: q.description.clone(),
                due: q.schedule.as_ref().and_then(|s| due_slot(s, last.last_ok_slot, now)),
                next_slot: q.schedule.as_ref().and_then(|s| s.next_slot(now)),
                last_ok_slot: last.last_ok_slot,
                last_run: last.last,
            }
        })
        .collect()
}

/// Settings of a pass.
#[derive(Debug, Clone)]
pub struct RunOptions {
    /// Relative output paths are relative to this folder (the CLI's `--out`, default `.`).
    pub out_dir: PathBuf,
    /// Whether to wait for a scheduler already running on the lake, and the lease's time to live.
    pub lease: LeaseOptions,
}

impl RunOptions {
    pub fn new(out_dir: impl Into<PathBuf>) -> RunOptions {
        RunOptions { out_dir: out_dir.into(), lease: LeaseOptions::default() }
    }
}

/// The lake's scheduler lease, for `command`; None if `stop` came while waiting for it.
async fn take_lease(
    lake: &Lake,
    command: &str,
    options: &RunOptions,
    stop: &CancellationToken,
    on_event: &mut impl FnMut(ServeEvent<'_>),
) -> Result<Option<Lease>, ScheduleError> {
    tokio::select! {
        lease = lake.lease("schedule", command, options.lease, |h| on_event(ServeEvent::Waiting(h))) => Ok(Some(lease?)),
        () = stop.cancelled() => Ok(None),
    }
}

/// A scheduled query that was not due.
#[derive(Debug, Clone, serde::Serialize)]
pub struct NotDue {
    pub name: String,
    pub last_ok_slot: Option<DateTime<Utc>>,
    pub next_slot: Option<DateTime<Utc>>,
}

/// What one pass did.
#[derive(Debug, Clone, serde::Serialize)]
pub struct RunSummary {
    pub now: DateTime<Utc>,
    pub run_id: String,
    /// Runs in the order they ran.
    pub runs: Vec<QueryRun>,
    pub not_due: Vec<NotDue>,
    /// Names of the queries without a schedule.
    pub unscheduled: Vec<String>,
    /// Files left out for bad headers.
    pub problems: Vec<HeaderProblem>,
    /// Due queries not run because a stop was asked for (they stay due).
    pub not_run: Vec<String>,
}

impl RunSummary {
    pub fn failed(&self) -> usize {
        self.runs.iter().filter(|r| r.status == RunStatus::Error).count()
    }

    /// Every due query ran and succeeded, and every file was readable.
    pub fn is_clean(&self) -> bool {
        self.failed() == 0 && self.problems.is_empty() && self.not_run.is_empty()
    }
}

/// Runs every query of `catalogue` that is due at `now`, one after another, recording each run
/// in the history as soon as it ends. A failing query is recorded and the others still run.
/// `stop` is checked between queries: the running query always finishes and is recorded.
/// `on_event` sees each run as it is recorded ([`ServeEvent::Run`]), and the scheduler waited
/// on, if another one holds the lake ([`ServeEvent::Waiting`]).
pub async fn run_due(
    lake: &Lake,
    catalogue: &Catalogue,
    now: DateTime<Utc>,
    options: &RunOptions,
    stop: &CancellationToken,
    mut on_event: impl FnMut(ServeEvent<'_>),
) -> Result<RunSummary, ScheduleError> {
    let Some(lease) = take_lease(lake, "prism schedule run", options, stop, &mut on_event).await? else {
        let names = catalogue.queries.iter().filter(|q| q.schedule.is_some()).map(|q| q.name.clone()).collect();
        return Ok(RunSummary {
            now,
            run_id: String::new(),
            runs: Vec::new(),
            not_due: Vec::new(),
            unscheduled: Vec::new(),
            problems: Vec::new(),
            not_run: names,
        });
    };
    let summary = run_pass(lake, catalogue, now, options, &|| stop.is_cancelled() || lease.is_lost(), &|_, _| true, |r| on_event(ServeEvent::Run(r))).await;
    end_lease(lease, summary).await
}

/// Releases `lease` after `result`; a lost lease is the error.
async fn end_lease<T>(lease: Lease, result: Result<T, ScheduleError>) -> Result<T, ScheduleError> {
    if lease.is_lost() {
        return Err(lease.lost_error().into());
    }
    let released = lease.release().await;
    let value = result?;
    released?;
    Ok(value)
}

/// [`run_due`], running only the due queries `wanted` accepts (serve uses it not to repeat a
/// failed slot), and none once `halted` (a stop, or the lease lost).
async fn run_pass(
    lake: &Lake,
    catalogue: &Catalogue,
    now: DateTime<Utc>,
    options: &RunOptions,
    halted: &dyn Fn() -> bool,
    wanted: &dyn Fn(&QueryFile, DateTime<Utc>) -> bool,
    mut on_run: impl FnMut(&QueryRun),
) -> Result<RunSummary, ScheduleError> {
    let mut history = History::open(lake).await?;
    let run_id = uuid::Uuid::new_v4().to_string();
    let mut summary = RunSummary {
        now,
        run_id: run_id.clone(),
        runs: Vec::new(),
        not_due: Vec::new(),
        unscheduled: Vec::new(),
        problems: catalogue.problems.clone(),
        not_run: Vec::new(),
    };
    let mut due = Vec::new();
    for (q, status) in catalogue.queries.iter().zip(statuses(catalogue, Some(&history), now)) {
        match (&q.schedule, status.due) {
            (None, _) => summary.unscheduled.push(q.name.clone()),
            (Some(_), Some(slot)) if wanted(q, slot) => due.push((q, slot)),
            (Some(_), _) => summary.not_due.push(NotDue { name: q.name.clone(), last_ok_slot: status.last_ok_slot, next_slot: status.next_slot }),
        }
    }
    if due.is_empty() {
        return Ok(summary);
    }
    let ctx = crate::sql::session(lake).await?;
    for (q, slot) in due {
        if halted() {
            summary.not_run.push(q.name.clone());
            continue;
        }
        let run = run_query(&ctx, q, slot, options, &run_id).await;
        history.record(&run).await?;
        on_run(&run);
        summary.runs.push(run);
    }
    Ok(summary)
}

/// Runs one query for `slot` and writes its output; never fails, the error is in the result.
pub async fn run_query(ctx: &SessionContext, q: &QueryFile, slot: DateTime<Utc>, options: &RunOptions, run_id: &str) -> QueryRun {
    let started_at = Utc::now();
    let clock = Instant::now();
    let window = q.window_at(slot);
    let sql = q.render_sql(window);
    let rendered = q.output.render(&q.name, slot, window);
    let path = if options.out_dir == Path::new(".") { rendered } else { options.out_dir.join(rendered) };
    let format = q.output.format;
    let result: Result<u64, QueryError> = async {
        // Scheduled queries only read: no DDL, DML or SET statements.
        let read_only = SQLOptions::new().with_allow_ddl(false).with_allow_dml(false).with_allow_statements(false);
        let df = ctx.sql_with_options(&sql, read_only).await?;
        let schema = Arc::new(df.schema().as_arrow().clone());
        let batches = df.collect().await?;
        let rows = batches.iter().map(|b| b.num_rows() as u64).sum();
        let target = path.clone();
        tokio::task::spawn_blocking(move || write_file_atomic(&target, format, &schema, &batches)).await??;
        Ok(rows)
    }
    .await;
    let (status, rows, output, error) = match result {
        Ok(rows) => (RunStatus::Ok, Some(rows), Some(path.display().to_string()), None),
        Err(e) => (RunStatus::Error, None, None, Some(crate::error::report(&e))),
    };
    QueryRun {
        query: q.name.clone(),
        file: q.file.display().to_string(),
        schedule: q.schedule.as_ref().map(|s| s.as_str().to_owned()).unwrap_or_default(),
        slot,
        window_start: window.map(|w| w.start),
        window_end: window.map(|w| w.end),
        started_at,
        duration_ms: clock.elapsed().as_millis() as u64,
        status,
        rows,
        output,
        error,
        run_id: run_id.to_owned(),
    }
}

/// Settings of `serve`.
#[derive(Debug, Clone)]
pub struct ServeOptions {
    /// The lake location, opened again each pass so new data and tables are seen.
    pub lake: String,
    pub queries: PathBuf,
    pub run: RunOptions,
    /// The longest sleep between passes: how soon edits to the folder are picked up.
    pub poll: std::time::Duration,
}

/// What `serve` reports as it goes.
#[derive(Debug)]
pub enum ServeEvent<'a> {
    /// The folder's problems, when they differ from the previous pass's.
    Problems(&'a [HeaderProblem]),
    /// A query ran.
    Run(&'a QueryRun),
    /// A pass failed as a whole (lake or folder unreadable); serve tries again next pass.
    PassFailed(&'a ScheduleError),
    /// Nothing to do until this time (or the next poll, or a stop).
    Sleeping(DateTime<Utc>),
    /// Another scheduler holds the lake; waiting for it to stop (with `lease.wait`).
    Waiting(&'a Holder),
}

/// Totals of a `serve` session.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct ServeSummary {
    pub passes: u64,
    pub runs: u64,
    pub failed: u64,
}

/// Loops until `stop`: reads the folder, runs what is due, and sleeps until the next slot of
/// any query (at most `poll`, so added or edited files are seen). A slot whose run failed is
/// not tried again by this loop until the file changes or the next slot comes, so a broken query
/// does not run on every poll. The first pass's errors are returned (a wrong lake or folder
/// fails fast); later ones are reported and retried. The lake's scheduler lease is held
/// throughout; losing it ends the loop with an error.
pub async fn serve(
    options: &ServeOptions,
    clock: impl Fn() -> DateTime<Utc>,
    stop: &CancellationToken,
    mut on_event: impl FnMut(ServeEvent<'_>),
) -> Result<ServeSummary, ScheduleError> {
    let Some(lease) = take_lease(&Lake::open(&options.lake).await?, "prism schedule serve", &options.run, stop, &mut on_event).await? else {
        return Ok(ServeSummary::default());
    };
    let totals = serve_leased(options, clock, stop, &lease, on_event).await;
    end_lease(lease, totals).await
}

async fn serve_leased(
    options: &ServeOptions,
    clock: impl Fn() -> DateTime<Utc>,
    stop: &CancellationToken,
    lease: &Lease,
    mut on_event: impl FnMut(ServeEvent<'_>),
) -> Result<ServeSummary, ScheduleError> {
    let mut totals = ServeSummary::default();
    // The slot (and file text) of each query's last failed run in this loop.
    let mut failed: HashMap<String, (DateTime<Utc>, String)> = HashMap::new();
    let mut shown_problems: Option<Vec<HeaderProblem>> = None;
    while !stop.is_cancelled() && !lease.is_lost() {
        let pass = async {
            let catalogue = load_queries(&options.queries)?;
            if shown_problems.as_ref() != Some(&catalogue.problems) {
                on_event(ServeEvent::Problems(&catalogue.problems));
                shown_problems = Some(catalogue.problems.clone());
            }
            let lake = Lake::open(&options.lake).await?;
            let not_failed = |q: &QueryFile, slot| failed.get(&q.name) != Some(&(slot, q.sql.clone()));
            let summary =
                run_pass(&lake, &catalogue, clock(), &options.run, &|| stop.is_cancelled() || lease.is_lost(), &not_failed, |r| on_event(ServeEvent::Run(r)))
                    .await?;
            Ok::<_, ScheduleError>((catalogue, summary))
        }
        .await;
        totals.passes += 1;
        let catalogue = match pass {
            Ok((catalogue, summary)) => {
                for run in &summary.runs {
                    totals.runs += 1;
                    if run.status == RunStatus::Error {
                        totals.failed += 1;
                        let sql = catalogue.queries.iter().find(|q| q.name == run.query).map(|q| q.sql.clone());
                        failed.insert(run.query.clone(), (run.slot, sql.unwrap_or_default()));
                    } else {
                        failed.remove(&run.query);
                    }
                }
                catalogue
            }
            Err(e) if totals.passes == 1 => return Err(e),
            Err(e) => {
                on_event(ServeEvent::PassFailed(&e));
                Catalogue::default()
            }
        };
        let now = clock();
        let poll = chrono::TimeDelta::from_std(options.poll).unwrap_or(chrono::TimeDelta::MAX);
        let wake = catalogue.queries.iter().filter_map(|q| q.schedule.as_ref()?.next_slot(now)).min().map_or(now + poll, |next| next.min(now + poll));
        on_event(ServeEvent::Sleeping(wake));
        let pause = (wake - now).to_std().unwrap_or_default();
        let lost = lease.lost();
        tokio::select! {
            () = tokio::time::sleep(pause) => {}
            () = stop.cancelled() => {}
            () = lost.cancelled() => {}
        }
    }
    Ok(totals)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    #[test]
    fn due_means_a_later_slot_than_the_last_success() {
        let hourly = Schedule::parse("0 * * * *").unwrap();
        let now = t("2024-06-01T12:30:00Z");
        assert_eq!(due_slot(&hourly, None, now), Some(t("2024-06-01T12:00:00Z")), "never ran: due");
        assert_eq!(due_slot(&hourly, Some(t("2024-06-01T12:00:00Z")), now), None, "ran for this slot");
        assert_eq!(due_slot(&hourly, Some(t("2024-06-01T11:00:00Z")), now), Some(t("2024-06-01T12:00:00Z")));
        // Off for two days: due once, for the latest slot only.
        assert_eq!(due_slot(&hourly, Some(t("2024-05-30T09:00:00Z")), now), Some(t("2024-06-01T12:00:00Z")));
        // A slot is due at its exact time.
        assert_eq!(due_slot(&hourly, Some(t("2024-06-01T11:00:00Z")), t("2024-06-01T12:00:00Z")), Some(t("2024-06-01T12:00:00Z")));
        assert_eq!(due_slot(&hourly, Some(t("2024-06-01T12:00:00Z")), t("2024-06-01T12:59:59Z")), None);
    }

    #[test]
    fn folder_keeps_good_files_and_reports_bad_ones() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("a.sql"), "-- name: one\n-- schedule: 0 * * * *\nSELECT 1").unwrap();
        std::fs::write(dir.path().join("b.sql"), "-- schedule: 0 0 * * 9\nSELECT 1").unwrap();
        std::fs::write(dir.path().join("c.sql"), "-- name: one\nSELECT 2").unwrap();
        std::fs::write(dir.path().join("d.sql"), "SELECT 3").unwrap();
        std::fs::write(dir.path().join("notes.txt"), "-- schedule: nonsense").unwrap();
        let c = load_queries(dir.path()).unwrap();
        let names: Vec<&str> = c.queries.iter().map(|q| q.name.as_str()).collect();
        assert_eq!(names, ["one", "d"]);
        assert_eq!(c.problems.len(), 2, "{:?}", c.problems);
        let first = c.problems[0].to_string();
        assert!(first.contains("b.sql:1: `0 0 * * 9` is not a cron schedule"), "{first}");
        assert!(c.problems[1].to_string().contains("c.sql: the name `one` is already used by"));
        assert!(load_queries(&dir.path().join("missing")).is_err());
    }
}
