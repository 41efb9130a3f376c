//! The run history: the Delta table `query_runs` under the lake root, one row per run.
//!
//! It is the scheduler's only state: whether a query is due is read from it, so what
//! `SELECT * FROM query_runs` shows is exactly what the scheduler acts on.

use std::collections::HashMap;
use std::sync::Arc;

use arrow::array::{Array, AsArray, Int64Array, RecordBatch, StringArray, TimestampMicrosecondArray};
use arrow::datatypes::{Int64Type, TimestampMicrosecondType};
use chrono::{DateTime, Utc};
use deltalake::DeltaTable;

use super::ScheduleError;
use crate::lake::{self, Lake, LakeError, read_table_columns};
use crate::maintain;

/// The table's name, and so its name in SQL.
pub use crate::schema::tables::QUERY_RUNS as RUNS_TABLE;
use crate::schema::tables::query_runs_schema as runs_schema;

/// Number of data files at which the history is compacted into one.
pub const COMPACT_AT_FILES: usize = 32;

/// Outcome of one run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum RunStatus {
    Ok,
    Error,
}

impl RunStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            RunStatus::Ok => "ok",
            RunStatus::Error => "error",
        }
    }
}

/// One run of one query: a row of `query_runs`.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct QueryRun {
    pub query: String,
    pub file: String,
    pub schedule: String,
    /// The cron slot the run stands for (the latest due slot when it started).
    pub slot: DateTime<Utc>,
    pub window_start: Option<DateTime<Utc>>,
    pub window_end: Option<DateTime<Utc>>,
    pub started_at: DateTime<Utc>,
    pub duration_ms: u64,
    pub status: RunStatus,
    /// Rows written; `None` when the run failed.
    pub rows: Option<u64>,
    /// The file written; `None` when the run failed.
    pub output: Option<String>,
    pub error: Option<String>,
    /// Shared by the runs of one `schedule run` (or one loop of `schedule serve`).
    pub run_id: String,
}

/// What the history says of one query.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize)]
pub struct LastRuns {
    /// The slot of the latest successful run: the query is due when a later slot has come.
    pub last_ok_slot: Option<DateTime<Utc>>,
    /// The most recent run, successful or not (by start time).
    pub last: Option<QueryRun>,
}

/// The open history table and what it holds, per query name.
pub struct History {
    table: DeltaTable,
    by_query: HashMap<String, LastRuns>,
}

impl History {
    /// Opens `query_runs` in `lake` (creating it when missing) and reads it.
    pub async fn open(lake: &Lake) -> Result<History, LakeError> {
        let table = lake.table(RUNS_TABLE, runs_schema(), &[]).await?;
        let mut history = History { table, by_query: HashMap::new() };
        for run in read_runs(&history.table).await? {
            history.note(run);
        }
        Ok(history)
    }

    pub fn get(&self, query: &str) -> Option<&LastRuns> {
        self.by_query.get(query)
    }

    /// Appends one run in one commit, and updates what [`History::get`] says. Every
    /// [`COMPACT_AT_FILES`] runs the table is compacted, so reading it stays cheap however long
    /// the scheduler runs (one small file per run would grow without bound).
    pub async fn record(&mut self, run: &QueryRun) -> Result<(), ScheduleError> {
        let batch = runs_batch(std::slice::from_ref(run))?;
        self.table = lake::append(&self.table, vec![batch], "the run history (query_runs)").await?;
        if self.files() >= COMPACT_AT_FILES {
            self.table = maintain::compact_table(self.table.clone(), RUNS_TABLE, maintain::DEFAULT_TARGET_BYTES).await?;
        }
        self.note(run.clone());
        Ok(())
    }

    /// Active data files of the table.
    pub fn files(&self) -> usize {
        self.table.snapshot().map(|s| s.log_data().num_files()).unwrap_or(0)
    }

    fn note(&mut self, run: QueryRun) {
        let entry = self.by_query.entry(run.query.clone()).or_default();
        if run.status == RunStatus::Ok && entry.last_ok_slot.is_none_or(|s| s < run.slot) {
            entry.last_ok_slot = Some(run.slot);
        }
        if entry.last.as_ref().is_none_or(|l| l.started_at <= run.started_at) {
            entry.last = Some(run);
        }
    }
}

fn micros(t: DateTime<Utc>) -> i64 {
    t.timestamp_micros()
}

fn runs_batch(runs: &[QueryRun]) -> Result<RecordBatch, LakeError> {
    let ts = |v: Vec<Option<i64>>| Arc::new(TimestampMicrosecondArray::from(v).with_timezone("UTC"));
    let strings = |f: &dyn Fn(&QueryRun) -> Option<&str>| Arc::new(runs.iter().map(f).collect::<StringArray>());
    let columns: Vec<Arc<dyn Array>> = vec![
        strings(&|r| Some(&r.query)),
        strings(&|r| Some(&r.file)),
        strings(&|r| Some(&r.schedule)),
        ts(runs.iter().map(|r| Some(micros(r.slot))).collect()),
        ts(runs.iter().map(|r| r.window_start.map(micros)).collect()),
        ts(runs.iter().map(|r| r.window_end.map(micros)).collect()),
        ts(runs.iter().map(|r| Some(micros(r.started_at))).collect()),
        Arc::new(runs.iter().map(|r| Some(r.duration_ms as i64)).collect::<Int64Array>()),
        strings(&|r| Some(r.status.as_str())),
        Arc::new(runs.iter().map(|r| r.rows.map(|n| n as i64)).collect::<Int64Array>()),
        strings(&|r| r.output.as_deref()),
        strings(&|r| r.error.as_deref()),
        strings(&|r| Some(&r.run_id)),
    ];
    RecordBatch::try_new(runs_schema(), columns).map_err(|source| LakeError::Arrow { context: "building query_runs rows".into(), source })
}

/// Every row of the table.
async fn read_runs(table: &DeltaTable) -> Result<Vec<QueryRun>, LakeError> {
    let schema = runs_schema();
    let names: Vec<&str> = schema.fields().iter().map(|f| f.name().as_str()).collect();
    let mut out = Vec::new();
    for batch in read_table_columns(table, &names, None).await? {
        // Cast to the declared types, so a file written by another Delta writer (with string
        // views or other time units) reads the same.
        let column = |name: &str| -> Option<Arc<dyn Array>> {
            let field = schema.field_with_name(name).ok()?;
            arrow::compute::cast(batch.column_by_name(name)?, field.data_type()).ok()
        };
        let cols: HashMap<&str, Arc<dyn Array>> = names.iter().filter_map(|n| Some((*n, column(n)?))).collect();
        let text = |name: &str, i: usize| {
            let c = cols.get(name)?.as_string_opt::<i32>()?;
            c.is_valid(i).then(|| c.value(i).to_owned())
        };
        let time = |name: &str, i: usize| {
            let c = cols.get(name)?.as_primitive_opt::<TimestampMicrosecondType>()?;
            c.is_valid(i).then(|| DateTime::from_timestamp_micros(c.value(i))).flatten()
        };
        let int = |name: &str, i: usize| {
            let c = cols.get(name)?.as_primitive_opt::<Int64Type>()?;
            c.is_valid(i).then(|| c.value(i).max(0) as u64)
        };
        for i in 0..batch.num_rows() {
            // A row without a query or slot cannot say anything about dueness.
            let (Some(query), Some(slot)) = (text("query", i), time("slot", i)) else {
                continue;
            };
            out.push(QueryRun {
                query,
                file: text("file", i).unwrap_or_default(),
                schedule: text("schedule", i).unwrap_or_default(),
                slot,
                window_start: time("windowstart", i),
                window_end: time("windowend", i),
                started_at: time("startedat", i).unwrap_or(slot),
                duration_ms: int("durationms", i).unwrap_or(0),
                status: if text("status", i).as_deref() == Some("ok") { RunStatus::Ok } else { RunStatus::Error },
                rows: int("rows", i),
                output: text("output", i),
                error: text("error", i),
                run_id: text("runid", i).unwrap_or_default(),
            });
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeDelta;

    fn run(query: &str, slot: DateTime<Utc>, status: RunStatus) -> QueryRun {
        QueryRun {
            query: query.to_owned(),
            file: format!("q/{query}.sql"),
            schedule: "0 * * * *".to_owned(),
            slot,
            window_start: Some(slot - TimeDelta::hours(1)),
            window_end: Some(slot),
            started_at: slot + TimeDelta::seconds(5),
            duration_ms: 12,
            status,
            rows: (status == RunStatus::Ok).then_some(3),
            output: (status == RunStatus::Ok).then(|| format!("{query}.csv")),
            error: (status == RunStatus::Error).then(|| "boom".to_owned()),
            run_id: "r1".to_owned(),
        }
    }

    #[tokio::test]
    async fn history_round_trips_and_stays_compact() {
        let dir = tempfile::tempdir().unwrap();
        let lake = Lake::open_or_create(dir.path().to_str().unwrap(), None).await.unwrap();
        let mut history = History::open(&lake).await.unwrap();
        assert!(history.get("hourly").is_none());
        let t0 = DateTime::parse_from_rfc3339("2024-06-01T00:00:00Z").unwrap().with_timezone(&Utc);
        let n = COMPACT_AT_FILES as i64 + 5;
        for i in 0..n {
            history.record(&run("hourly", t0 + TimeDelta::hours(i), RunStatus::Ok)).await.unwrap();
        }
        // A later failure does not move the last successful slot.
        let failed = run("hourly", t0 + TimeDelta::hours(n), RunStatus::Error);
        history.record(&failed).await.unwrap();
        assert!(history.files() < COMPACT_AT_FILES, "{} files", history.files());

        let reread = History::open(&lake).await.unwrap();
        let last = reread.get("hourly").unwrap();
        assert_eq!(last.last_ok_slot, Some(t0 + TimeDelta::hours(n - 1)));
        assert_eq!(last.last.as_ref(), Some(&failed));
        assert_eq!(read_runs(&reread.table).await.unwrap().len() as i64, n + 1);
    }
}
