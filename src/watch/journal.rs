//! The `deliveries` table: what each sink acknowledged, so that a restart sends what was not
//! acknowledged and nothing that was.
//!
//! A sink's first use writes a `registered` row and a `before` row for every Insight record
//! already in the lake: alerts are for records found after a sink is added, not for the
//! history a backfill wrote. A record is journaled `delivered` only after its sink
//! acknowledged it, so a crash between the two sends it again: delivery is at least once.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use arrow::array::{Array, AsArray, Int64Builder, RecordBatch, StringBuilder, TimestampMicrosecondBuilder};

use crate::lake::{Lake, LakeError};
use crate::schema::tables::{DELIVERIES, INSIGHTS, deliveries_schema, insights_schema};

/// One journal row.
#[derive(Debug, Clone)]
pub struct Row {
    pub sink: String,
    pub target: String,
    /// `registered`, `before` or `delivered`.
    pub status: &'static str,
    pub event_id: Option<String>,
    pub shared_id: Option<String>,
    pub state: Option<String>,
    pub attempts: Option<i64>,
    pub response: Option<String>,
}

pub struct Journal {
    table: deltalake::DeltaTable,
}

impl Journal {
    pub async fn open(lake: &Lake) -> Result<Journal, LakeError> {
        Ok(Journal { table: lake.table(DELIVERIES, deliveries_schema(), &[]).await? })
    }

    /// Per registered sink, the records it has handled (delivered, or there before it).
    pub async fn handled(&self) -> Result<HashMap<String, HashSet<String>>, LakeError> {
        let mut out: HashMap<String, HashSet<String>> = HashMap::new();
        for b in crate::lake::read_table_columns(&self.table, &["sink", "eventid"], None).await? {
            let (sink, id) = (text(&b, "sink"), text(&b, "eventid"));
            for i in 0..b.num_rows() {
                let handled = out.entry(sink.value(i).to_owned()).or_default();
                if id.is_valid(i) {
                    handled.insert(id.value(i).to_owned());
                }
            }
        }
        Ok(out)
    }

    /// Appends rows in one commit.
    pub async fn append(&mut self, rows: &[Row]) -> Result<(), LakeError> {
        if rows.is_empty() {
            return Ok(());
        }
        self.table = crate::lake::append(&self.table, vec![batch(rows)?], DELIVERIES).await?;
        Ok(())
    }
}

/// Every Insight record in the lake as (eventID, sharedEventID, state, record JSON), in the
/// order alerts go out: by event time, a Start before the End of the same minute.
pub async fn insight_records(lake: &Lake) -> Result<Vec<(String, String, String, String)>, LakeError> {
    let table = lake.table(INSIGHTS, insights_schema(), &[]).await?;
    let mut rows: Vec<(i64, String, String, String, String)> = Vec::new();
    for b in crate::lake::read_table_columns(&table, &["eventid", "sharedeventid", "insightstate", "eventtime", "eventjson"], None).await? {
        let (id, shared, state, json) = (text(&b, "eventid"), text(&b, "sharedeventid"), text(&b, "insightstate"), text(&b, "eventjson"));
        let time = b.column_by_name("eventtime").ok_or_else(|| LakeError::Config { path: INSIGHTS.into(), reason: "column eventtime missing".into() })?;
        let time =
            arrow::compute::cast(time, &arrow::datatypes::DataType::Int64).map_err(|source| LakeError::Arrow { context: "reading insights".into(), source })?;
        let time = time.as_primitive::<arrow::datatypes::Int64Type>();
        for i in 0..b.num_rows() {
            rows.push((time.value(i), state.value(i).to_owned(), id.value(i).to_owned(), shared.value(i).to_owned(), json.value(i).to_owned()));
        }
    }
    // "End" sorts before "Start": a Start first at one time, as it happened first.
    rows.sort_by(|a, b| (a.0, a.1 != "Start", &a.2).cmp(&(b.0, b.1 != "Start", &b.2)));
    Ok(rows.into_iter().map(|(_, state, id, shared, json)| (id, shared, state, json)).collect())
}

/// A column by name (reads give the file's column order, not the order asked for), as text;
/// nulls when missing.
fn text(b: &RecordBatch, name: &str) -> arrow::array::StringArray {
    match b.column_by_name(name) {
        Some(c) => crate::insights::utf8(c),
        None => arrow::array::StringArray::new_null(b.num_rows()),
    }
}

fn batch(rows: &[Row]) -> Result<RecordBatch, LakeError> {
    let (mut sink, mut target, mut status, mut id, mut shared, mut state, mut response) = (
        StringBuilder::new(),
        StringBuilder::new(),
        StringBuilder::new(),
        StringBuilder::new(),
        StringBuilder::new(),
        StringBuilder::new(),
        StringBuilder::new(),
    );
    let mut attempts = Int64Builder::new();
    let mut at = TimestampMicrosecondBuilder::new().with_timezone("UTC");
    let now = chrono::Utc::now().timestamp_micros();
    for r in rows {
        sink.append_value(&r.sink);
        target.append_value(&r.target);
        status.append_value(r.status);
        id.append_option(r.event_id.as_deref());
        shared.append_option(r.shared_id.as_deref());
        state.append_option(r.state.as_deref());
        attempts.append_option(r.attempts);
        response.append_option(r.response.as_deref());
        at.append_value(now);
    }
    let columns: Vec<Arc<dyn Array>> = vec![
        Arc::new(sink.finish()),
        Arc::new(target.finish()),
        Arc::new(status.finish()),
        Arc::new(id.finish()),
        Arc::new(shared.finish()),
        Arc::new(state.finish()),
        Arc::new(attempts.finish()),
        Arc::new(response.finish()),
        Arc::new(at.finish()),
    ];
    RecordBatch::try_new(deliveries_schema(), columns).map_err(|source| LakeError::Arrow { context: "building deliveries rows".into(), source })
}
