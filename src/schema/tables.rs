//! Every table of the lake besides `events`: names and schemas, in one place, so that a lake
//! is created with all of them (empty until filled) and the modules that fill them, the SQL
//! catalog and the lake itself agree without depending on each other.

use std::sync::Arc;

use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};

pub const INGEST_LOG: &str = "ingest_log";
pub const ROLLUPS: &str = "rollups";
pub const INSIGHTS: &str = "insights";
pub const INSIGHT_RUNS: &str = "insight_runs";
pub const QUERY_RUNS: &str = "query_runs";
pub const DELIVERIES: &str = "deliveries";
pub const AGGREGATED_EVENTS: &str = "aggregated_events";

/// The tables a lake is created with besides `events`, with their schemas (none partitioned).
pub fn all() -> [(&'static str, SchemaRef); 7] {
    [
        (AGGREGATED_EVENTS, aggregated_events_schema()),
        (INGEST_LOG, ingest_log_schema()),
        (ROLLUPS, rollups_schema()),
        (INSIGHTS, insights_schema()),
        (INSIGHT_RUNS, insight_runs_schema()),
        (QUERY_RUNS, query_runs_schema()),
        (DELIVERIES, deliveries_schema()),
    ]
}

/// Schema of `ingest_log`: `kind` is `file` (one row per ingested file) or `reject` (one row
/// per rejected record or damaged file).
pub fn ingest_log_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("kind", DataType::Utf8, true),
        Field::new("sourcefile", DataType::Utf8, true),
        Field::new("recordindex", DataType::Int64, true),
        Field::new("reason", DataType::Utf8, true),
        Field::new("message", DataType::Utf8, true),
        Field::new("record", DataType::Utf8, true),
        Field::new("filesize", DataType::Int64, true),
        Field::new("records", DataType::Int64, true),
        Field::new("kept", DataType::Int64, true),
        Field::new("duplicates", DataType::Int64, true),
        Field::new("rejected", DataType::Int64, true),
        Field::new("runid", DataType::Utf8, true),
        Field::new("ingestedat", DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())), true),
    ]))
}

/// Schema of `rollups`. `errorcode` is null for calls that succeeded; `useridentityarn` and
/// `useragent` are null on minute rows.
pub fn rollups_schema() -> SchemaRef {
    let ts = DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into()));
    Arc::new(Schema::new(vec![
        Field::new("kind", DataType::Utf8, false),
        Field::new("recipientaccountid", DataType::Utf8, false),
        Field::new("awsregion", DataType::Utf8, false),
        Field::new("period", ts, false),
        Field::new("eventsource", DataType::Utf8, false),
        Field::new("eventname", DataType::Utf8, false),
        Field::new("errorcode", DataType::Utf8, true),
        Field::new("readonly", DataType::Boolean, true),
        Field::new("management", DataType::Boolean, false),
        Field::new("useridentityarn", DataType::Utf8, true),
        Field::new("useragent", DataType::Utf8, true),
        Field::new("calls", DataType::Int64, false),
        Field::new("datafile", DataType::Utf8, true),
    ]))
}

/// Schema of the `insights` table: the record's fields flattened in the CloudTrail Lake style,
/// and the whole record in `eventjson`.
pub fn insights_schema() -> SchemaRef {
    let ts = DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into()));
    Arc::new(Schema::new(vec![
        Field::new("eventid", DataType::Utf8, false),
        Field::new("sharedeventid", DataType::Utf8, false),
        Field::new("eventtime", ts.clone(), false),
        Field::new("awsregion", DataType::Utf8, false),
        Field::new("recipientaccountid", DataType::Utf8, false),
        Field::new("insightstate", DataType::Utf8, false),
        Field::new("insighttype", DataType::Utf8, false),
        Field::new("insighteventsource", DataType::Utf8, false),
        Field::new("insighteventname", DataType::Utf8, false),
        Field::new("insighterrorcode", DataType::Utf8, true),
        Field::new("insightdirection", DataType::Utf8, false),
        Field::new("baselineaverage", DataType::Float64, false),
        Field::new("insightaverage", DataType::Float64, false),
        Field::new("insightduration", DataType::Int64, false),
        Field::new("baselineduration", DataType::Int64, false),
        Field::new("decidedat", ts, false),
        Field::new("eventjson", DataType::Utf8, false),
        Field::new("runid", DataType::Utf8, false),
        // `Management` or `Data`; added after the first lakes, whose rows are migrated to
        // `Management` by the first Insights run (`insights::Tables::open`).
        Field::new("sourceeventcategory", DataType::Utf8, true),
    ]))
}

pub fn insight_runs_schema() -> SchemaRef {
    let ts = DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into()));
    Arc::new(Schema::new(vec![
        Field::new("runid", DataType::Utf8, false),
        Field::new("mode", DataType::Utf8, false),
        Field::new("recipientaccountid", DataType::Utf8, false),
        Field::new("awsregion", DataType::Utf8, false),
        Field::new("analysedfrom", ts.clone(), false),
        Field::new("analysedto", ts.clone(), false),
        Field::new("starts", DataType::Int64, false),
        Field::new("ends", DataType::Int64, false),
        Field::new("seconds", DataType::Float64, false),
        Field::new("finishedat", ts, false),
    ]))
}

/// Columns of `query_runs`. Names are lower case without separators, like `ingest_log`'s.
pub fn query_runs_schema() -> SchemaRef {
    let ts = || DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into()));
    Arc::new(Schema::new(vec![
        Field::new("query", DataType::Utf8, false),
        Field::new("file", DataType::Utf8, true),
        Field::new("schedule", DataType::Utf8, true),
        Field::new("slot", ts(), false),
        Field::new("windowstart", ts(), true),
        Field::new("windowend", ts(), true),
        Field::new("startedat", ts(), true),
        Field::new("durationms", DataType::Int64, true),
        Field::new("status", DataType::Utf8, false),
        Field::new("rows", DataType::Int64, true),
        Field::new("output", DataType::Utf8, true),
        Field::new("error", DataType::Utf8, true),
        Field::new("runid", DataType::Utf8, true),
    ]))
}

/// Schema of `aggregated_events`: AWS's 5-minute summaries of data events (spec section 7), as
/// Prism computes them (`origin` `prism`), the record's fields flattened and the whole record
/// in `eventjson`.
pub fn aggregated_events_schema() -> SchemaRef {
    let ts = || DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into()));
    Arc::new(Schema::new(vec![
        Field::new("eventid", DataType::Utf8, false),
        Field::new("accountid", DataType::Utf8, false),
        Field::new("awsregion", DataType::Utf8, false),
        Field::new("eventsource", DataType::Utf8, false),
        Field::new("template", DataType::Utf8, true),
        Field::new("primarydimension", DataType::Utf8, false),
        Field::new("primaryvalue", DataType::Utf8, false),
        Field::new("windowstart", ts(), false),
        Field::new("windowend", ts(), false),
        Field::new("eventcount", DataType::Int64, false),
        Field::new("origin", DataType::Utf8, false),
        Field::new("sourcefile", DataType::Utf8, true),
        Field::new("eventjson", DataType::Utf8, false),
        Field::new("runid", DataType::Utf8, true),
    ]))
}

/// Schema of `deliveries`, `prism watch`'s journal of alerts: one row per Insight record a sink
/// acknowledged (`delivered`), or that existed before the sink was first used and is not sent
/// to it (`before`), and one `registered` row (no `eventid`) when a sink is first used.
pub fn deliveries_schema() -> SchemaRef {
    let ts = DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into()));
    Arc::new(Schema::new(vec![
        Field::new("sink", DataType::Utf8, false),
        Field::new("target", DataType::Utf8, false),
        Field::new("status", DataType::Utf8, false),
        Field::new("eventid", DataType::Utf8, true),
        Field::new("sharedeventid", DataType::Utf8, true),
        Field::new("insightstate", DataType::Utf8, true),
        Field::new("attempts", DataType::Int64, true),
        Field::new("response", DataType::Utf8, true),
        Field::new("deliveredat", ts, false),
    ]))
}
