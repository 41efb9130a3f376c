//! AWS's own aggregated events (`CloudTrail-Aggregated/` files, spec section 7), imported into
//! `aggregated_events` with `origin` `aws`, beside the summaries `prism aggregate` computes
//! (`origin` `prism`). They are summaries, not events: they never enter `events`.
//!
//! Each record is checked on its own (one that is not an aggregated event, or lacks what a row
//! needs, is rejected with its reason while the rest of its file is kept), stored once by its
//! `eventId`, and each file is journaled after its rows are committed, as event files are: a
//! killed run reads the file again and finds its rows already stored.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::Ordering;

use arrow::array::{ArrayRef, AsArray, Int64Array, RecordBatch, StringArray, TimestampMicrosecondArray};
use chrono::DateTime;
use serde_json::Value;

use super::{FileResult, IngestError, IngestProgress, IngestSummary, ReadBytes, journal, rejection, walk_records};
use crate::lake::Lake;
use crate::schema::tables::{AGGREGATED_EVENTS, aggregated_events_schema};
use crate::source::SourceObject;

/// Files read between two commits: AWS delivers one small file per account, region and few
/// minutes, so a year of a region is ~100,000 files.
const FILES_PER_COMMIT: usize = 2_000;

/// One `aggregated_events` row.
#[derive(Debug, Clone, PartialEq)]
struct Row {
    id: String,
    account: String,
    region: String,
    source: String,
    template: Option<&'static str>,
    dimension: String,
    value: String,
    start: i64,
    end: i64,
    count: i64,
    json: String,
}

/// Imports `objects` (all [`Content::Aggregated`](crate::source::Content)) into
/// `aggregated_events` and journals them.
pub(super) async fn import(
    lake: &mut Lake,
    objects: &[SourceObject],
    run_id: &str,
    summary: &mut IngestSummary,
    progress: &Arc<IngestProgress>,
) -> Result<(), IngestError> {
    let mut table = lake.table(AGGREGATED_EVENTS, aggregated_events_schema(), &[]).await?;
    let mut stored: HashSet<String> = HashSet::new();
    for b in crate::lake::read_table_columns(&table, &["eventid"], None).await? {
        if let Some(ids) = b.column(0).as_string_opt::<i32>() {
            stored.extend(ids.iter().flatten().map(str::to_owned));
        }
    }
    let shared = Arc::new(objects.to_vec());
    for start in (0..objects.len()).step_by(FILES_PER_COMMIT) {
        let end = (start + FILES_PER_COMMIT).min(objects.len());
        let (files, progress2) = (shared.clone(), progress.clone());
        let parsed = tokio::task::spawn_blocking(move || (start..end).map(|i| read_file(i, &files[i], &progress2)).collect::<Vec<_>>())
            .await
            .map_err(|e| IngestError::Worker(e.to_string()))?;
        let mut rows = Vec::new();
        let mut finished = Vec::new();
        let mut dups: HashMap<String, u64> = HashMap::new();
        for (result, file_rows) in parsed {
            for (row, i) in file_rows {
                if stored.insert(row.id.clone()) {
                    rows.push((row, i));
                } else {
                    *dups.entry(objects[result.file].location.clone()).or_default() += 1;
                }
            }
            finished.push(result);
        }
        if !rows.is_empty() {
            table = crate::lake::append(&table, vec![to_batch(&rows, objects, run_id)?], AGGREGATED_EVENTS).await?;
            summary.aggregated.records_written += rows.len() as u64;
        }
        summary.aggregated.duplicates += dups.values().sum::<u64>();
        journal(lake, objects, &mut finished, &mut dups, run_id, summary, true).await?;
    }
    Ok(())
}

/// Reads one file's records into rows; the rest of the result is as for event files.
fn read_file(file: usize, obj: &SourceObject, progress: &IngestProgress) -> (FileResult, Vec<(Row, usize)>) {
    let mut result = FileResult::new(file);
    let mut rows = Vec::new();
    let mut bytes_read = ReadBytes::default();
    // Never stopped early: the files are few and small.
    let _ = walk_records(obj, None, Vec::new(), bytes_read.counters(), &mut result, |index, bytes, whole, result| {
        if !whole {
            return None; // few records: found by the scan, then parsed
        }
        match parse(bytes) {
            Ok(row) => rows.push((row, file)),
            Err((reason, message)) => result.rejects.push(rejection(obj, Some(index as u64), reason, message, Some(bytes))),
        }
        Some((bytes.len(), std::ops::ControlFlow::Continue(())))
    });
    bytes_read.report(progress);
    progress.files_done.fetch_add(1, Ordering::Relaxed);
    (result, rows)
}

/// A value from a record, shown in a message: as JSON (quoted, control characters escaped, so
/// it cannot act on a terminal), cut to 80 characters.
fn shown(v: Option<&Value>) -> String {
    let text = v.map(Value::to_string).unwrap_or_else(|| "missing".into());
    match text.char_indices().nth(80) {
        Some((at, _)) => format!("{}…", &text[..at]),
        None => text,
    }
}

/// Checks one record and makes its row; the error is a reason code and a message.
fn parse(bytes: &[u8]) -> Result<Row, (&'static str, String)> {
    let record: Value = serde_json::from_slice(bytes).map_err(|e| ("invalid_json", e.to_string()))?;
    let at = |path: &[&str]| path.iter().try_fold(&record, |v, k| v.get(k));
    let text = |path: &[&str]| match at(path) {
        Some(Value::String(s)) if !s.is_empty() => Ok(s.clone()),
        other => Err(("missing_field", format!("{} must be a non-empty string, is {}", path.join("."), shown(other)))),
    };
    if at(&["eventCategory"]).and_then(Value::as_str) != Some("Aggregated") {
        return Err(("not_aggregated", format!("eventCategory is {}, not \"Aggregated\"", shown(at(&["eventCategory"])))));
    }
    let account = text(&["accountId"])?;
    if account.len() != 12 || !account.bytes().all(|b| b.is_ascii_digit()) {
        return Err(("invalid_value", format!("accountId {} is not a 12-digit account ID", shown(at(&["accountId"])))));
    }
    let region = text(&["awsRegion"])?;
    if !crate::schema::is_safe_name(&region) {
        return Err(("invalid_region", format!("awsRegion {} is not a region name", shown(at(&["awsRegion"])))));
    }
    let time = |field: &str| {
        let path = ["timeWindow", field];
        let value = text(&path)?;
        DateTime::parse_from_rfc3339(&value)
            .map(|t| t.timestamp_micros())
            .map_err(|e| ("invalid_value", format!("timeWindow.{field} {} is not an RFC 3339 time ({e})", shown(at(&path)))))
    };
    let (start, end) = (time("windowStart")?, time("windowEnd")?);
    if end <= start {
        return Err(("invalid_value", "timeWindow.windowEnd is not after windowStart".into()));
    }
    let dimension = text(&["summary", "primaryDimension", "dimension"])?;
    let stats = at(&["summary", "primaryDimension", "statistics"]).and_then(Value::as_array);
    // One record per primary value (spec section 7): a list of several would need a row each.
    let [stat] = stats.map(Vec::as_slice).unwrap_or_default() else {
        return Err((
            "invalid_value",
            format!("summary.primaryDimension.statistics must hold one value, holds {}", stats.map(|s| s.len().to_string()).unwrap_or_else(|| "none".into())),
        ));
    };
    let value = match stat.get("name") {
        Some(Value::String(s)) => s.clone(),
        other => return Err(("missing_field", format!("summary.primaryDimension.statistics[0].name must be a string, is {}", shown(other)))),
    };
    let count = stat.get("value").and_then(Value::as_i64).filter(|n| *n >= 0);
    let count = count.ok_or_else(|| ("invalid_value", format!("the primary count {} is not a count", shown(stat.get("value")))))?;
    let template = crate::schema::aggregated::template_of(&dimension);
    Ok(Row {
        id: text(&["eventId"])?,
        account,
        region,
        source: text(&["eventSource"])?,
        template,
        dimension,
        value,
        start,
        end,
        count,
        json: record.to_string(),
    })
}

fn to_batch<'a>(rows: &'a [(Row, usize)], objects: &'a [SourceObject], run_id: &'a str) -> Result<RecordBatch, IngestError> {
    let strings = |f: &dyn Fn(&'a Row, usize) -> Option<&'a str>| -> ArrayRef { Arc::new(rows.iter().map(|(r, i)| f(r, *i)).collect::<StringArray>()) };
    let times =
        |f: &dyn Fn(&Row) -> i64| -> ArrayRef { Arc::new(TimestampMicrosecondArray::from_iter_values(rows.iter().map(|(r, _)| f(r))).with_timezone("UTC")) };
    let columns: Vec<ArrayRef> = vec![
        strings(&|r, _| Some(&r.id)),
        strings(&|r, _| Some(&r.account)),
        strings(&|r, _| Some(&r.region)),
        strings(&|r, _| Some(&r.source)),
        strings(&|r, _| r.template),
        strings(&|r, _| Some(&r.dimension)),
        strings(&|r, _| Some(&r.value)),
        times(&|r| r.start),
        times(&|r| r.end),
        Arc::new(rows.iter().map(|(r, _)| r.count).collect::<Int64Array>()),
        strings(&|_, _| Some("aws")),
        strings(&|_, i| Some(&objects[i].location)),
        strings(&|r, _| Some(&r.json)),
        strings(&|_, _| Some(run_id)),
    ];
    RecordBatch::try_new(aggregated_events_schema(), columns).map_err(|e| IngestError::Worker(format!("building aggregated_events rows: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    const RECORD: &str = r#"{"eventVersion":"1.0","accountId":"111122223333","eventId":"62759c1a-6248-48e1-a6b3-d5fb7e6c4bc0",
 "eventCategory":"Aggregated","eventType":"AwsAggregatedEvent","awsRegion":"us-west-2",
 "eventSource":"s3.amazonaws.com",
 "timeWindow":{"windowStart":"2025-11-17T19:20:00Z","windowEnd":"2025-11-17T19:25:00Z","windowSize":"PT5M"},
 "summary":{
   "primaryDimension":{"dimension":"eventName","statistics":[{"name":"PutObject","value":1000}],"aggregationType":"Count"},
   "details":[{"dimension":"resourceARN","statistics":[{"name":"arn:aws:s3:::bucket-1","value":800}],"aggregationType":"Count"}]}}"#;

    /// The spec's record with one field replaced (`None`: removed).
    fn with(path: &[&str], value: Option<Value>) -> Vec<u8> {
        let mut v: Value = serde_json::from_str(RECORD).unwrap();
        let (last, parents) = path.split_last().unwrap();
        let parent = parents.iter().fold(&mut v, |v, k| &mut v[*k]);
        match value {
            Some(x) => parent[*last] = x,
            None => {
                parent.as_object_mut().unwrap().remove(*last);
            }
        }
        v.to_string().into_bytes()
    }

    #[test]
    fn the_spec_record_becomes_a_row() {
        let row = parse(RECORD.as_bytes()).unwrap();
        assert_eq!(
            (row.id.as_str(), row.account.as_str(), row.region.as_str(), row.source.as_str()),
            ("62759c1a-6248-48e1-a6b3-d5fb7e6c4bc0", "111122223333", "us-west-2", "s3.amazonaws.com")
        );
        assert_eq!((row.template, row.dimension.as_str(), row.value.as_str(), row.count), (Some("API_ACTIVITY"), "eventName", "PutObject", 1000));
        assert_eq!(row.end - row.start, 5 * 60_000_000);
        assert_eq!(row.start, DateTime::parse_from_rfc3339("2025-11-17T19:20:00Z").unwrap().timestamp_micros());
        // The record is kept whole.
        let kept: Value = serde_json::from_str(&row.json).unwrap();
        assert_eq!(kept["summary"]["details"][0]["statistics"][0]["value"], 800);
        // A dimension AWS may add later has no template, and is kept.
        let row = parse(&with(&["summary", "primaryDimension", "dimension"], Some("sourceIPAddress".into()))).unwrap();
        assert_eq!(row.template, None);
    }

    #[test]
    fn records_that_cannot_be_rows_are_rejected_with_their_reason() {
        let reason = |bytes: &[u8]| parse(bytes).map(|_| ()).unwrap_err();
        assert_eq!(reason(b"{\"eventCategory\":").0, "invalid_json");
        assert_eq!(reason(&with(&["eventCategory"], Some("Data".into()))).0, "not_aggregated");
        assert_eq!(reason(&with(&["eventId"], None)).0, "missing_field");
        let (code, message) = reason(&with(&["accountId"], Some("12\u{1b}[31m".into())));
        assert_eq!(code, "invalid_value");
        assert!(!message.contains('\u{1b}') && message.contains("\\u001b"), "{message}");
        assert_eq!(reason(&with(&["awsRegion"], Some("../../etc".into()))).0, "invalid_region");
        assert_eq!(reason(&with(&["timeWindow", "windowEnd"], Some("yesterday".into()))).0, "invalid_value");
        assert_eq!(reason(&with(&["timeWindow", "windowEnd"], Some("2025-11-17T19:20:00Z".into()))).0, "invalid_value");
        assert_eq!(reason(&with(&["summary", "primaryDimension", "statistics"], Some(serde_json::json!([])))).0, "invalid_value");
        let negative = serde_json::json!([{"name": "PutObject", "value": -1}]);
        assert_eq!(reason(&with(&["summary", "primaryDimension", "statistics"], Some(negative))).0, "invalid_value");
        let long = "x".repeat(10_000);
        let (_, message) = reason(&with(&["eventCategory"], Some(long.into())));
        assert!(message.len() < 200, "{message}");
    }
}
