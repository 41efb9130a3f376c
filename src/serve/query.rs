//! The SQL page's queries: one statement, read-only, under a time limit and a row cap.
//!
//! Read-only is DataFusion's own check ([`SQLOptions`]): no DDL (`CREATE`, `DROP`), no DML
//! (`INSERT`, `COPY … TO`), no statements (`SET`, transactions). The lake session has no URL
//! tables, so a query cannot read files outside the lake either.

use std::sync::Arc;

use arrow::array::RecordBatch;
use arrow::datatypes::SchemaRef;
use datafusion::execution::SessionState;
use datafusion::execution::context::SQLOptions;
use datafusion::logical_expr::LogicalPlan;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::{AppState, Result, ServeError};
use crate::sql::exec::{StatementError, split_statements};

/// A query's result, cut at the row cap.
pub struct Answer {
    pub schema: SchemaRef,
    pub batches: Vec<RecordBatch>,
    /// Rows beyond the cap were left out.
    pub truncated: bool,
    pub rows: usize,
    pub millis: u128,
}

/// Runs one read-only statement within the server's time limit (parsing and planning
/// included). Errors name the statement's line and column, with a caret.
pub async fn run(st: &AppState, sql: &str, max_rows: usize) -> Result<Answer> {
    let timeout = st.opts.query_timeout;
    let statements: Vec<_> = split_statements(sql).into_iter().filter(|s| !s.text.trim().is_empty()).collect();
    let statement = match statements.as_slice() {
        [one] => one,
        [] => return Err(ServeError::BadRequest("no SQL statement given".into())),
        _ => return Err(ServeError::BadRequest(format!("{} statements given; the SQL page runs one at a time", statements.len()))),
    };
    let started = std::time::Instant::now();
    let deadline = tokio::time::Instant::now() + timeout;
    let located = |e: &datafusion::error::DataFusionError| StatementError::new("", sql, statement, e).to_string();
    let planner = tokio::time::timeout_at(deadline, st.planners.clone().acquire_owned()).await.map_err(|_| ServeError::Busy(timeout))?;
    let planner = planner.map_err(|e| ServeError::Data(format!("the query planners are gone: {e}")))?;
    let planning = plan(st.ctx.state(), statement.text.clone(), planner);
    let plan =
        tokio::time::timeout_at(deadline, planning).await.map_err(|_| ServeError::Timeout(timeout))??.map_err(|e| ServeError::BadRequest(located(&e)))?;
    let read_only = SQLOptions::new().with_allow_ddl(false).with_allow_dml(false).with_allow_statements(false);
    if let Err(e) = read_only.verify_plan(&plan) {
        return Err(ServeError::Refused(format!("the console's SQL is read-only: {}", crate::error::report(&e))));
    }
    let df = st.ctx.execute_logical_plan(plan).await.map_err(|e| ServeError::BadRequest(located(&e)))?;
    let schema = df.schema().inner().clone();
    let df = df.limit(0, Some(max_rows.saturating_add(1))).map_err(|e| ServeError::BadRequest(located(&e)))?;
    let mut batches = match tokio::time::timeout_at(deadline, df.collect()).await {
        Ok(r) => r.map_err(|e| ServeError::BadRequest(located(&e)))?,
        Err(_) => return Err(ServeError::Timeout(timeout)),
    };
    let mut rows = 0;
    let mut truncated = false;
    for b in batches.iter_mut() {
        if rows + b.num_rows() > max_rows {
            *b = b.slice(0, max_rows - rows);
            truncated = true;
        }
        rows += b.num_rows();
    }
    batches.retain(|b| b.num_rows() > 0);
    Ok(Answer { schema, batches, truncated, rows, millis: started.elapsed().as_millis() })
}

/// Parses and plans on a blocking thread, not an async worker: sqlparser can spend seconds on
/// some inputs of under a kilobyte (it backtracks), and no timer interrupts work running on a
/// worker, so one such query would stall every request. The caller stops waiting at its
/// deadline, but the thread runs on to the end of the parse holding its planner permit, so at
/// most [`planners`] such parses burn CPU at once and later queries wait for a free one.
async fn plan(state: SessionState, text: String, permit: OwnedSemaphorePermit) -> Result<datafusion::error::Result<LogicalPlan>> {
    let handle = tokio::runtime::Handle::current();
    let planning = tokio::task::spawn_blocking(move || {
        let _permit = permit;
        handle.block_on(state.create_logical_plan(&text))
    });
    planning.await.map_err(|e| ServeError::Data(format!("planning the query failed: {e}")))
}

/// The planners a server has: one per core.
pub fn planners() -> Arc<Semaphore> {
    Arc::new(Semaphore::new(std::thread::available_parallelism().map_or(2, |n| n.get())))
}
