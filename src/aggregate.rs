//! Aggregated events (AWS since November 2025, spec section 7): exact 5-minute summaries of the
//! lake's data events, per template, written to the `aggregated_events` table and as AWS-format
//! files under `AWSLogs/<account>/CloudTrail-Aggregated/<region>/YYYY/MM/DD/`.
//!
//! A template names the primary dimension of its records: `API_ACTIVITY` the API
//! (`eventName`), `RESOURCE_ACCESS` the resource (`resourceARN`), `USER_ACTIONS` the principal
//! (`userIdentity`). One record per template, account, region, event source, primary value and
//! window holds the window's count and, in `details`, that count broken down by each other
//! dimension. The events are counted in one pass over the lake's files, a day and region at a
//! time, by the same reader that counts the rollups ([`crate::rollup::visit`]): it decides
//! which events are data events, their account and their caller, once for every consumer.
//!
//! Runs are idempotent and incremental like Insights: record IDs derive from the record's key,
//! so a re-run, or runs at once, store nothing twice; `aggregate run` goes on from the last window it emitted
//! per account and region, up to the newest data event less `--settle-minutes`. A window once
//! emitted is never recomputed: a late event for it is not in any record (as AWS, which
//! summarises what has been delivered).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::Instant;

use arrow::array::{ArrayRef, Int64Array, RecordBatch, StringArray, TimestampMicrosecondArray};
use chrono::{DateTime, NaiveDate, Utc};
use datafusion::error::DataFusionError;
use datafusion::prelude::SessionContext;
use serde::Serialize;
use serde_json::{Value, json};

use crate::lake::{Lake, LakeError};
pub use crate::schema::aggregated::{Dim, TEMPLATES};
use crate::schema::tables::AGGREGATED_EVENTS;

/// Values listed per detail dimension of a record, the most frequent first (AWS documents no
/// cap; a window's source IPs can run to hundreds). The primary count is always exact.
pub const TOP_VALUES: usize = 50;

const WINDOW_MINUTES: i64 = 5;
/// Events counted per pass at most by default: a day and region holding more is read in as
/// many passes, each counting a slice of the day. The counts of a window's values by each other
/// dimension (source IPs make them nearly as many as the events) must fit in memory.
pub const EVENTS_PER_PASS: u64 = 4_000_000;
/// Events files read at once (decoding is most of the work).
const PARALLEL_FILES: usize = 2;
const MICROS_PER_MINUTE: i64 = 60_000_000;
/// Namespace of aggregated records' IDs (fixed: IDs are stable across versions and machines).
const ID_NAMESPACE: uuid::Uuid = uuid::Uuid::from_u128(0x7a61_3c0e_91d4_4b8f_a2c5_0e6d_4f19_b3a7);

#[derive(Debug, thiserror::Error)]
pub enum AggregateError {
    #[error(transparent)]
    Lake(#[from] LakeError),
    #[error(transparent)]
    Sql(#[from] crate::sql::SqlError),
    /// Mirrors AWS's refusals of `PutEventConfiguration`.
    #[error("InvalidParameterException: {0}")]
    InvalidParameter(String),
    #[error(transparent)]
    Bounds(Box<crate::insights::InsightsError>),
    #[error("{context}")]
    Query {
        context: String,
        #[source]
        source: DataFusionError,
    },
    #[error("{context}")]
    Arrow {
        context: String,
        #[source]
        source: arrow::error::ArrowError,
    },
}

type Result<T, E = AggregateError> = std::result::Result<T, E>;

fn query(context: impl Into<String>) -> impl FnOnce(DataFusionError) -> AggregateError {
    let context = context.into();
    move |source| AggregateError::Query { context, source }
}

// ---------------------------------------------------------------------------------------------
// Configuration: PutEventConfiguration / GetEventConfiguration

/// Parses `PutEventConfiguration`'s aggregation list (`[{"EventCategory":"Data","Templates":[…]}]`,
/// or the whole request `{"AggregationConfigurations":[…]}`) into the templates; an empty list
/// turns aggregation off.
pub fn parse_event_config(text: &str) -> Result<Vec<String>> {
    let bad = |m: String| AggregateError::InvalidParameter(m);
    let value: Value = serde_json::from_str(text).map_err(|e| bad(format!("not JSON ({e})")))?;
    let list = match &value {
        Value::Array(a) => a,
        Value::Object(o) => match o.get("AggregationConfigurations") {
            Some(Value::Array(a)) => a,
            _ => return Err(bad("expected a list of aggregation configurations or {\"AggregationConfigurations\":[…]}".into())),
        },
        _ => return Err(bad("expected a list of aggregation configurations".into())),
    };
    if list.len() > 1 {
        return Err(bad("at most one aggregation configuration is allowed".into()));
    }
    let Some(config) = list.first() else { return Ok(Vec::new()) };
    let obj = config.as_object().ok_or_else(|| bad(format!("aggregation configuration {config} is not an object")))?;
    if let Some(k) = obj.keys().find(|k| !matches!(k.as_str(), "EventCategory" | "Templates")) {
        return Err(bad(format!("unknown field `{k}` in an aggregation configuration")));
    }
    if obj.get("EventCategory").and_then(Value::as_str) != Some("Data") {
        return Err(bad("EventCategory must be Data: only data events are aggregated".into()));
    }
    let templates = obj.get("Templates").and_then(Value::as_array).ok_or_else(|| bad("Templates must be a list of 1 to 50 templates".into()))?;
    if templates.is_empty() || templates.len() > 50 {
        return Err(bad("Templates must be a list of 1 to 50 templates".into()));
    }
    let mut out: Vec<String> = Vec::new();
    for t in templates {
        let name = t.as_str().filter(|n| TEMPLATES.iter().any(|(v, _)| v == n));
        let name = name.ok_or_else(|| bad(format!("unknown template {t}; valid templates: API_ACTIVITY, RESOURCE_ACCESS, USER_ACTIONS")))?;
        if !out.iter().any(|o| o == name) {
            out.push(name.to_owned());
        }
    }
    Ok(out)
}

/// `GetEventConfiguration`'s answer.
pub fn event_config_response(lake: &url::Url, templates: &[String]) -> Value {
    let configs: Vec<Value> = if templates.is_empty() { Vec::new() } else { vec![json!({"EventCategory": "Data", "Templates": templates})] };
    json!({"TrailARN": lake.to_string(), "AggregationConfigurations": configs})
}

/// `PutEventConfiguration`: stores the templates in the lake's settings.
pub async fn put_event_config(lake: &mut Lake, templates: Vec<String>) -> Result<()> {
    let mut config = lake.config().clone();
    config.aggregation_templates = templates;
    lake.save_config(config).await?;
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Runs

/// Which windows a run summarises.
#[derive(Debug, Clone, PartialEq)]
pub enum Mode {
    /// Every window of the data events between these event days (all by default).
    Backfill { from: Option<NaiveDate>, to: Option<NaiveDate> },
    /// The windows after the last one emitted.
    Incremental,
}

pub struct AggregateOptions {
    pub lake: String,
    pub mode: Mode,
    /// Windows end this many minutes before the newest data event of their account and region
    /// (later files may still hold events of the last minutes).
    pub settle_minutes: i64,
    /// Where the AWS-format files go (a folder or `s3://` URL); default the lake.
    pub out: Option<String>,
    /// See [`EVENTS_PER_PASS`].
    pub events_per_pass: u64,
}

impl AggregateOptions {
    pub fn new(lake: impl Into<String>, mode: Mode) -> Self {
        AggregateOptions { lake: lake.into(), mode, settle_minutes: 10, out: None, events_per_pass: EVENTS_PER_PASS }
    }
}

#[derive(Debug, Default, Clone, Serialize)]
pub struct AggregateSummary {
    /// The configured templates; empty: aggregation is off and nothing was done.
    pub templates: Vec<String>,
    pub account_regions: usize,
    pub windows: u64,
    pub records_written: u64,
    /// Records computed again and found stored (a re-run, or a crash's retry).
    pub records_existing: u64,
    /// Records another run at once stored first (their files are the same).
    pub records_stored_meanwhile: u64,
    pub files: u64,
    /// Accounts and regions whose names are not safe path segments, left out (their records
    /// would name folders).
    pub skipped_accounts: Vec<String>,
    pub from: Option<String>,
    pub to: Option<String>,
    pub seconds: f64,
}

/// One computed record and its table row's fields.
struct Record {
    id: String,
    account: String,
    region: String,
    source: String,
    template: &'static str,
    primary: Dim,
    value: String,
    window: i64,
    count: i64,
    /// The AWS-format record, as JSON text.
    json: String,
}

/// An aggregated-event record in AWS's shape and key order (spec section 7).
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct AwsRecord<'a> {
    event_version: &'static str,
    account_id: &'a str,
    event_id: &'a str,
    event_category: &'static str,
    event_type: &'static str,
    aws_region: &'a str,
    event_source: &'a str,
    time_window: TimeWindow<'a>,
    summary: Summary<'a>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct TimeWindow<'a> {
    window_start: &'a str,
    window_end: &'a str,
    window_size: &'static str,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Summary<'a> {
    primary_dimension: Detail<'a>,
    details: Vec<Detail<'a>>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Detail<'a> {
    dimension: &'static str,
    statistics: Vec<Stat<'a>>,
    aggregation_type: &'static str,
}

#[derive(Serialize)]
struct Stat<'a> {
    name: &'a str,
    value: i64,
}

/// Runs a backfill or an incremental aggregation.
pub async fn run(opts: &AggregateOptions) -> Result<AggregateSummary> {
    let started = Instant::now();
    let lake = Lake::open(&opts.lake).await?;
    let mut summary = AggregateSummary { templates: lake.config().aggregation_templates.clone(), ..Default::default() };
    if summary.templates.is_empty() {
        return Ok(summary);
    }
    let templates: Vec<(&'static str, Dim)> = TEMPLATES.into_iter().filter(|(t, _)| summary.templates.iter().any(|s| s == t)).collect();
    let mut table = lake.table(AGGREGATED_EVENTS, crate::schema::tables::aggregated_events_schema(), &[]).await?;
    let ctx = crate::sql::session(&lake).await?;
    let bounds = crate::insights::account_region_bounds(&ctx, "AND NOT management").await.map_err(|e| AggregateError::Bounds(Box::new(e)))?;
    let marks = if opts.mode == Mode::Incremental { watermarks(&ctx).await? } else { HashMap::new() };
    // Per account and region: the windows [lo, hi) to summarise, in minutes.
    let mut ranges: BTreeMap<(String, String), (i64, i64)> = BTreeMap::new();
    for (pair, (first, last)) in bounds {
        if !crate::schema::is_safe_name(&pair.0) || !crate::schema::is_safe_name(&pair.1) {
            summary.skipped_accounts.push(format!("{}/{}", pair.0, pair.1));
            continue;
        }
        let horizon = floor_window(last + 1 - opts.settle_minutes.max(0));
        let (lo, hi) = match &opts.mode {
            Mode::Backfill { from, to } => (
                floor_window(from.map(crate::insights::day_minute).unwrap_or(first).max(first)),
                to.map(|d| crate::insights::day_minute(d) + 1440).unwrap_or(horizon).min(horizon),
            ),
            Mode::Incremental => (marks.get(&pair).copied().unwrap_or(floor_window(first)).max(floor_window(first)), horizon),
        };
        if lo < hi {
            ranges.insert(pair, (lo, hi));
        }
    }
    summary.account_regions = ranges.len();
    let (Some(lo), Some(hi)) = (ranges.values().map(|r| r.0).min(), ranges.values().map(|r| r.1).max()) else {
        summary.seconds = started.elapsed().as_secs_f64();
        return Ok(summary);
    };
    summary.from = Some(crate::insights::minute_rfc3339(lo));
    summary.to = Some(crate::insights::minute_rfc3339(hi));
    let out = crate::lake::OutputStore::new(opts.out.as_deref(), &lake)?;
    let run_id = uuid::Uuid::new_v4().to_string();
    let primaries: Vec<Dim> = templates.iter().map(|t| t.1).collect();
    // The events files by day and region, for the days and regions the ranges reach. Events
    // are partitioned by their time, so a day's files hold only that day's events.
    let regions: HashSet<&str> = ranges.keys().map(|(_, r)| r.as_str()).collect();
    let mut days: BTreeMap<i64, BTreeMap<String, Vec<crate::lake::PartitionFile>>> = BTreeMap::new();
    for f in crate::lake::partition_files(lake.events()) {
        let day = period_day(&f.period)
            .ok_or_else(|| LakeError::Config { path: f.path.clone(), reason: format!("the events file's partition eventperiod={} is not a time", f.period) })?;
        if day < hi && day + 1440 > lo && regions.contains(f.region.as_str()) {
            days.entry(day).or_default().entry(f.region.clone()).or_default().push(f);
        }
    }
    for (day, by_region) in days {
        let mut records = Vec::new();
        for (region, files) in by_region {
            // The windows this region's ranges reach on this day.
            let (mut r_lo, mut r_hi) = (i64::MAX, i64::MIN);
            for ((_, r), (a, b)) in &ranges {
                if *r == region {
                    (r_lo, r_hi) = (r_lo.min(*a), r_hi.max(*b));
                }
            }
            let (r_lo, r_hi) = (r_lo.max(day), r_hi.min(day + 1440));
            // Passes of at most `events_per_pass` events (by the log's counts), each a slice of the day.
            let per_pass = opts.events_per_pass.max(1);
            let events: u64 = files.iter().map(|f| f.rows.unwrap_or(per_pass)).sum();
            let passes = events.div_ceil(per_pass).max(1) as i64;
            let slice = ((r_hi - r_lo) / passes).div_euclid(WINDOW_MINUTES).max(1) * WINDOW_MINUTES;
            let mut at = r_lo;
            while at < r_hi {
                let until = if at + slice >= r_hi || at + 2 * slice > r_hi { r_hi } else { at + slice };
                let counts = count(lake.events(), &files, at, until, &primaries).await?;
                for w in counts.windows(&region) {
                    let Some((lo, hi)) = ranges.get(&(w.account.to_owned(), region.clone())) else { continue };
                    if w.start < *lo || w.start >= *hi {
                        continue;
                    }
                    summary.windows += 1;
                    for (template, primary) in &templates {
                        records.extend(w.records(template, *primary));
                    }
                }
                at = until;
            }
        }
        let existing = stored_ids(&ctx, day, day + 1440).await?;
        let before = records.len();
        records.retain(|r| !existing.contains(&r.id));
        summary.records_existing += (before - records.len()) as u64;
        if !records.is_empty() {
            // Files first: a crash before the commit rewrites the same files at the retry.
            summary.files += write_files(&out, &records).await?;
            // Runs at once compute the same records: each is stored by one of them.
            let stored = crate::lake::append_new_keys(&mut table, to_batch(&records, &run_id)?, "eventid", AGGREGATED_EVENTS).await?;
            summary.records_written += stored;
            summary.records_stored_meanwhile += records.len() as u64 - stored;
        }
    }
    summary.seconds = started.elapsed().as_secs_f64();
    Ok(summary)
}

fn floor_window(minute: i64) -> i64 {
    minute.div_euclid(WINDOW_MINUTES) * WINDOW_MINUTES
}

fn ts(minute: i64) -> String {
    format!("TIMESTAMP '{}'", crate::insights::minute_rfc3339(minute))
}

/// The minute after the last window emitted, per account and region.
async fn watermarks(ctx: &SessionContext) -> Result<HashMap<(String, String), i64>> {
    let sql = format!("SELECT accountid, awsregion, max(windowend) FROM {AGGREGATED_EVENTS} WHERE origin = 'prism' GROUP BY 1, 2");
    let rows = crate::insights::minutes_by_account_region(ctx, &sql).await.map_err(query("reading aggregated_events"))?;
    Ok(rows.into_iter().map(|(pair, m)| (pair, m[0])).collect())
}

/// The IDs of the records stored for windows starting in `[lo, hi)`.
async fn stored_ids(ctx: &SessionContext, lo: i64, hi: i64) -> Result<HashSet<String>> {
    let sql = format!("SELECT eventid FROM {AGGREGATED_EVENTS} WHERE windowstart >= {} AND windowstart < {}", ts(lo), ts(hi));
    let batches = ctx.sql(&sql).await.map_err(query("reading aggregated_events"))?.collect().await.map_err(query("reading aggregated_events"))?;
    Ok(batches.iter().flat_map(|b| crate::insights::utf8(b.column(0)).iter().flatten().map(str::to_owned).collect::<Vec<_>>()).collect())
}

/// The minute a partition value's day starts (`20240601`, `20240601T12Z`, `20240601T1234Z`).
fn period_day(period: &str) -> Option<i64> {
    let day = NaiveDate::parse_from_str(period.get(..8)?, "%Y%m%d").ok()?;
    Some(crate::insights::day_minute(day))
}

/// The columns counting reads: the rollups' (who, what, which category) and the resource and
/// source IP.
fn columns() -> Vec<&'static str> {
    crate::rollup::PROJECTION.iter().copied().chain(["resources", "sourceipaddress"]).collect()
}

/// Strings of one count, numbered.
#[derive(Default)]
struct Interner {
    ids: foldhash::HashMap<Box<str>, u32>,
    names: Vec<Box<str>>,
}

impl Interner {
    fn id(&mut self, s: &str) -> u32 {
        if let Some(id) = self.ids.get(s) {
            return *id;
        }
        let id = self.names.len() as u32;
        self.names.push(s.into());
        self.ids.insert(s.into(), id);
        id
    }
}

/// No value in a dimension (absent or empty): such an event is in no record of a template whose
/// primary dimension it is, and in no detail of that dimension.
const NONE: u32 = u32::MAX;

/// A primary value's count in a window and its count by each other dimension's values.
#[derive(Default)]
struct Tally {
    count: i64,
    details: foldhash::HashMap<(u8, u32), i64>,
}

/// One window's counts (account, event source, window start minute), per primary dimension.
type WindowCounts = Vec<foldhash::HashMap<u32, Tally>>;

/// The counts of a region's data events in a stretch of time.
struct Counts {
    primaries: Vec<Dim>,
    strings: Interner,
    windows: foldhash::HashMap<(u32, u32, i64), WindowCounts>,
}

/// Counts the data events of `files` in windows starting in `[lo, hi)` (minutes), by the
/// `primaries` and each other dimension. Files are decoded [`PARALLEL_FILES`] at a time while
/// the one before is counted.
async fn count(events: &deltalake::DeltaTable, files: &[crate::lake::PartitionFile], lo: i64, hi: i64, primaries: &[Dim]) -> Result<Counts> {
    use futures::StreamExt;
    let mut counts = Counts { primaries: primaries.to_vec(), strings: Interner::default(), windows: Default::default() };
    let reads = files.iter().map(|f| {
        let (table, path) = (events.clone(), f.path.clone());
        tokio::spawn(async move { crate::lake::read_files_columns(&table, std::slice::from_ref(&path), &columns()).await })
    });
    let mut reads = futures::stream::iter(reads).buffered(PARALLEL_FILES);
    while let Some(read) = reads.next().await {
        let batches = read.map_err(|e| AggregateError::Lake(LakeError::Config { path: "events".into(), reason: format!("a reader stopped: {e}") }))??;
        for b in &batches {
            counts.add(b, lo * MICROS_PER_MINUTE, hi * MICROS_PER_MINUTE)?;
        }
    }
    Ok(counts)
}

impl Counts {
    fn add(&mut self, b: &RecordBatch, lo: i64, hi: i64) -> Result<()> {
        let Counts { primaries, strings, windows } = self;
        crate::rollup::visit(b, |e| {
            if e.category != Some(crate::rollup::Category::Data) || e.time < lo || e.time >= hi {
                return;
            }
            let mut id = |v: Option<&str>| match v {
                Some(s) if !s.is_empty() => strings.id(s),
                _ => NONE,
            };
            let values = [id(Some(e.name)), id(e.resource), id(e.caller), id(e.agent), id(e.ip), id(e.error)];
            let key = (strings.id(e.account), strings.id(e.source), e.time.div_euclid(WINDOW_MINUTES * MICROS_PER_MINUTE) * WINDOW_MINUTES);
            let window = windows.entry(key).or_insert_with(|| primaries.iter().map(|_| Default::default()).collect());
            for (p, by_value) in primaries.iter().zip(window.iter_mut()) {
                let value = values[*p as usize];
                if value == NONE {
                    continue;
                }
                let tally = by_value.entry(value).or_default();
                tally.count += 1;
                for (d, other) in values.iter().enumerate() {
                    if d != *p as usize && *other != NONE {
                        *tally.details.entry((d as u8, *other)).or_default() += 1;
                    }
                }
            }
        })?;
        Ok(())
    }

    /// The windows counted, in (account, event source, start) order.
    fn windows<'a>(&'a self, region: &'a str) -> Vec<Window<'a>> {
        let name = |id: u32| &*self.strings.names[id as usize];
        let mut out: Vec<Window> = self
            .windows
            .iter()
            .map(|((account, source, start), counts)| Window {
                counts: self,
                account: name(*account),
                source: name(*source),
                start: *start,
                by_primary: counts,
                region,
            })
            .collect();
        out.sort_by(|a, b| (a.account, a.source, a.start).cmp(&(b.account, b.source, b.start)));
        out
    }
}

/// One window's counts, with its names.
struct Window<'a> {
    counts: &'a Counts,
    account: &'a str,
    region: &'a str,
    source: &'a str,
    start: i64,
    by_primary: &'a WindowCounts,
}

impl Window<'_> {
    /// The records of one template: one per value of its primary dimension, in value order.
    fn records(&self, template: &'static str, primary: Dim) -> Vec<Record> {
        let name = |id: u32| &*self.counts.strings.names[id as usize];
        let Some(by_value) = self.counts.primaries.iter().position(|p| *p == primary).map(|i| &self.by_primary[i]) else { return Vec::new() };
        let mut values: Vec<(&str, &Tally)> = by_value.iter().map(|(v, t)| (name(*v), t)).collect();
        values.sort_by(|a, b| a.0.cmp(b.0));
        let (account, region, source, window) = (self.account, self.region, self.source, self.start);
        let start = crate::insights::minute_rfc3339(window);
        let end = crate::insights::minute_rfc3339(window + WINDOW_MINUTES);
        let mut out = Vec::with_capacity(values.len());
        for (value, tally) in values {
            let mut by_dim: BTreeMap<u8, Vec<(&str, i64)>> = BTreeMap::new();
            for ((d, v), n) in &tally.details {
                by_dim.entry(*d).or_default().push((name(*v), *n));
            }
            let details: Vec<Detail> = by_dim
                .into_iter()
                .map(|(d, mut stats)| {
                    stats.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(b.0)));
                    stats.truncate(TOP_VALUES);
                    let statistics = stats.into_iter().map(|(name, value)| Stat { name, value }).collect();
                    Detail { dimension: Dim::ALL[d as usize].name(), statistics, aggregation_type: "Count" }
                })
                .collect();
            let id = uuid::Uuid::new_v5(&ID_NAMESPACE, format!("{account}|{region}|{template}|{source}|{value}|{window}").as_bytes()).to_string();
            let record = AwsRecord {
                event_version: "1.0",
                account_id: account,
                event_id: &id,
                event_category: "Aggregated",
                event_type: "AwsAggregatedEvent",
                aws_region: region,
                event_source: source,
                time_window: TimeWindow { window_start: &start, window_end: &end, window_size: "PT5M" },
                summary: Summary {
                    primary_dimension: Detail {
                        dimension: primary.name(),
                        statistics: vec![Stat { name: value, value: tally.count }],
                        aggregation_type: "Count",
                    },
                    details,
                },
            };
            // Serialized once, for the table and the files: a record's text is a few KB, its
            // tree of JSON values several times that, and a day holds tens of thousands.
            let record = serde_json::to_string(&record).unwrap_or_default();
            out.push(Record {
                id,
                account: account.to_owned(),
                region: region.to_owned(),
                source: source.to_owned(),
                template,
                primary,
                value: value.to_owned(),
                window,
                count: tally.count,
                json: record,
            });
        }
        out
    }
}

fn to_batch<'a>(recs: &'a [Record], run_id: &'a str) -> Result<RecordBatch> {
    let strings = |f: &dyn Fn(&'a Record) -> Option<&'a str>| -> ArrayRef { Arc::new(recs.iter().map(f).collect::<StringArray>()) };
    let times = |f: &dyn Fn(&Record) -> i64| -> ArrayRef {
        Arc::new(TimestampMicrosecondArray::from_iter_values(recs.iter().map(|r| f(r) * MICROS_PER_MINUTE)).with_timezone("UTC"))
    };
    let columns: Vec<ArrayRef> = vec![
        strings(&|r| Some(&r.id)),
        strings(&|r| Some(&r.account)),
        strings(&|r| Some(&r.region)),
        strings(&|r| Some(&r.source)),
        strings(&|r| Some(r.template)),
        strings(&|r| Some(r.primary.name())),
        strings(&|r| Some(&r.value)),
        times(&|r| r.window),
        times(&|r| r.window + WINDOW_MINUTES),
        Arc::new(recs.iter().map(|r| r.count).collect::<Int64Array>()),
        strings(&|_| Some("prism")),
        strings(&|_| None),
        strings(&|r| Some(&r.json)),
        strings(&|_| Some(run_id)),
    ];
    RecordBatch::try_new(crate::schema::tables::aggregated_events_schema(), columns)
        .map_err(|source| AggregateError::Arrow { context: "building aggregated_events rows".into(), source })
}

/// Writes the records as AWS-format files, one per account, region and hour of windows,
/// dated by the hour's end. Returns the files written.
async fn write_files(out: &crate::lake::OutputStore, recs: &[Record]) -> Result<u64> {
    let mut groups: BTreeMap<(&str, &str, i64), Vec<&Record>> = BTreeMap::new();
    for r in recs {
        groups.entry((&r.account, &r.region, r.window.div_euclid(60))).or_default().push(r);
    }
    let mut files = 0;
    for ((account, region, hour), group) in groups {
        let at = DateTime::<Utc>::from_timestamp((hour + 1) * 3600, 0).unwrap_or_default();
        let ids: Vec<&str> = group.iter().map(|r| r.id.as_str()).collect();
        let records: Vec<&str> = group.iter().map(|r| r.json.as_str()).collect();
        out.put_records("Aggregated", account, region, at, &ids, &records).await?;
        files += 1;
    }
    Ok(files)
}
