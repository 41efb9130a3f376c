//! Aggregated events (AWS since November 2025, spec section 7): exact 5-minute summaries of the
//! lake's data events, per template, written to the `aggregated_events` table and as AWS-format
//! files under `AWSLogs/<account>/CloudTrail-Aggregated/<region>/YYYY/MM/DD/`.
//!
//! A template names the primary dimension of its records: `API_ACTIVITY` the API
//! (`eventName`), `RESOURCE_ACCESS` the resource (`resourceARN`), `USER_ACTIONS` the principal
//! (`userIdentity`). One record per template, account, region, event source, primary value and
//! window holds the window's count and, in `details`, that count broken down by each other
//! dimension. Everything is counted in one scan of the events per hour of windows, with
//! `GROUPING SETS` over the pairs of dimensions.
//!
//! Runs are idempotent and incremental like Insights: record IDs derive from the record's key,
//! so a re-run stores nothing twice; `aggregate run` goes on from the last window it emitted
//! per account and region, up to the newest data event less `--settle-minutes`. A window once
//! emitted is never recomputed: a late event for it is not in any record (as AWS, which
//! summarises what has been delivered).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::Instant;

use arrow::array::{Array, ArrayRef, AsArray, Int64Array, RecordBatch, StringArray, TimestampMicrosecondArray};
use chrono::{DateTime, NaiveDate, Utc};
use datafusion::error::DataFusionError;
use datafusion::prelude::SessionContext;
use serde::Serialize;
use serde_json::{Value, json};

use crate::lake::{Lake, LakeError};
use crate::schema::tables::AGGREGATED_EVENTS;

/// The templates AWS offers, with their primary dimension.
pub const TEMPLATES: [(&str, Dim); 3] = [("API_ACTIVITY", Dim::EventName), ("RESOURCE_ACCESS", Dim::Resource), ("USER_ACTIONS", Dim::User)];

/// Values listed per detail dimension of a record, the most frequent first (AWS documents no
/// cap; a window's source IPs can run to hundreds). The primary count is always exact.
pub const TOP_VALUES: usize = 50;

const WINDOW_MINUTES: i64 = 5;
/// Windows counted per query. Every pair of dimensions is counted, and source IPs make those
/// counts nearly as many as the events: an hour's bound memory (a day's of 3.2M data events
/// took 2.9 GiB).
const CHUNK_MINUTES: i64 = 60;
const MICROS_PER_MINUTE: i64 = 60_000_000;
/// Namespace of aggregated records' IDs (fixed: IDs are stable across versions and machines).
const ID_NAMESPACE: uuid::Uuid = uuid::Uuid::from_u128(0x7a61_3c0e_91d4_4b8f_a2c5_0e6d_4f19_b3a7);

/// A dimension of a summary.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Dim {
    EventName,
    Resource,
    User,
    Agent,
    Ip,
    Error,
}

impl Dim {
    pub const ALL: [Dim; 6] = [Dim::EventName, Dim::Resource, Dim::User, Dim::Agent, Dim::Ip, Dim::Error];

    /// As AWS names it in `summary`.
    pub fn name(self) -> &'static str {
        match self {
            Dim::EventName => "eventName",
            Dim::Resource => "resourceARN",
            Dim::User => "userIdentity",
            Dim::Agent => "userAgent",
            Dim::Ip => "sourceIPAddress",
            Dim::Error => "errorCode",
        }
    }

    /// Its column in the counting query.
    fn column(self) -> &'static str {
        match self {
            Dim::EventName => "e",
            Dim::Resource => "r",
            Dim::User => "u",
            Dim::Agent => "a",
            Dim::Ip => "i",
            Dim::Error => "x",
        }
    }
}

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
}

impl AggregateOptions {
    pub fn new(lake: impl Into<String>, mode: Mode) -> Self {
        AggregateOptions { lake: lake.into(), mode, settle_minutes: 10, out: None }
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
    pub files: u64,
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
    json: Value,
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
    // CHUNK_MINUTES of windows at a time: their counts fit in memory whatever the lake.
    let mut day = lo;
    while day < hi {
        let end = (day.div_euclid(CHUNK_MINUTES) + 1) * CHUNK_MINUTES;
        let end = end.min(hi);
        let primaries: Vec<Dim> = templates.iter().map(|t| t.1).collect();
        let counts = count(&ctx, day, end, &primaries).await?;
        let mut records = Vec::new();
        for (key, c) in &counts {
            let Some((lo, hi)) = ranges.get(&(key.0.clone(), key.1.clone())) else { continue };
            if key.3 < *lo || key.3 >= *hi {
                continue;
            }
            summary.windows += 1;
            for (template, primary) in &templates {
                records.extend(build(key, c, template, *primary));
            }
        }
        let existing = stored_ids(&ctx, day, end).await?;
        let before = records.len();
        records.retain(|r| !existing.contains(&r.id));
        summary.records_existing += (before - records.len()) as u64;
        if !records.is_empty() {
            // Files first: a crash before the commit rewrites the same files at the retry.
            summary.files += write_files(&out, &records).await?;
            table = crate::lake::append(&table, vec![to_batch(&records, &run_id)?], AGGREGATED_EVENTS).await?;
            summary.records_written += records.len() as u64;
        }
        day = end;
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

/// (account, region, event source, window start minute).
type WindowKey = (String, String, String, i64);

/// A window's counts per pair of dimensions' values.
#[derive(Default)]
struct Counts {
    pairs: HashMap<(Dim, Dim), HashMap<(String, String), i64>>,
}

/// The data events' resource: for S3, the bucket (its second resource, after the object); else
/// the first resource.
const RESOURCE: &str = "CASE WHEN get_field(array_element(resources, 1), 'type') = 'AWS::S3::Object' AND array_length(resources) >= 2 \
     THEN get_field(array_element(resources, 2), 'arn') ELSE get_field(array_element(resources, 1), 'arn') END";

/// Counts the data events of windows `[lo, hi)` by the pairs of dimensions the templates need
/// (each primary with every other), in one scan (GROUPING SETS). Values are '' where an event has none (a call that succeeded has
/// no error code), and NULL in the columns a grouping set leaves out.
async fn count(ctx: &SessionContext, lo: i64, hi: i64, primaries: &[Dim]) -> Result<BTreeMap<WindowKey, Counts>> {
    let base = "acct, region, src, w";
    // Only what the templates need: each primary dimension, and its pairs with the others.
    let mut pairs: Vec<(Dim, Dim)> = Vec::new();
    for p in primaries {
        for d in Dim::ALL.into_iter().filter(|d| d != p) {
            let pair = if *p < d { (*p, d) } else { (d, *p) };
            if !pairs.contains(&pair) {
                pairs.push(pair);
            }
        }
    }
    // A primary value's count is the sum of any of its pairs (every event has a value, '' at
    // least, in every dimension), so no set of one dimension is needed.
    let sets: Vec<String> = pairs.iter().map(|(a, b)| format!("({base}, {}, {})", a.column(), b.column())).collect();
    let sql = format!(
        "WITH d AS (SELECT recipientaccountid AS acct, awsregion AS region, coalesce(eventsource, '') AS src, \
           CAST(to_unixtime(eventtime) AS BIGINT) / 300 AS w, \
           coalesce(eventname, '') AS e, coalesce({RESOURCE}, '') AS r, \
           coalesce(useridentity['arn'], useridentity['invokedby'], '') AS u, coalesce(useragent, '') AS a, \
           coalesce(sourceipaddress, '') AS i, coalesce(errorcode, '') AS x \
         FROM events WHERE eventtime >= {} AND eventtime < {} \
           AND NOT coalesce(managementevent, coalesce(eventcategory, '') IN ('Management', '')) \
           AND coalesce(eventcategory, '') IN ('Data', '')) \
         SELECT acct, region, src, w, e, r, u, a, i, x, count(*) FROM d GROUP BY GROUPING SETS ({})",
        ts(lo),
        ts(hi),
        sets.join(", ")
    );
    let context = format!("counting the data events from {}", crate::insights::minute_rfc3339(lo));
    let batches = ctx.sql(&sql).await.map_err(query(&context))?.collect().await.map_err(query(&context))?;
    let mut out: BTreeMap<WindowKey, Counts> = BTreeMap::new();
    for b in &batches {
        let text: Vec<StringArray> = (0..10).filter(|i| *i != 3).map(|i| crate::insights::utf8(b.column(i))).collect();
        let int = |i: usize| {
            b.column(i).as_primitive_opt::<arrow::datatypes::Int64Type>().ok_or_else(|| AggregateError::Query {
                context: context.clone(),
                source: DataFusionError::Internal(format!("column {i} of the counts is not an integer")),
            })
        };
        let (window, n) = (int(3)?, int(10)?);
        for row in 0..b.num_rows() {
            // Windows are numbered by 5 minutes since the epoch.
            let key = (text[0].value(row).to_owned(), text[1].value(row).to_owned(), text[2].value(row).to_owned(), window.value(row) * WINDOW_MINUTES);
            // The dimensions of this row's grouping set, with their values.
            let dims: Vec<(Dim, &str)> =
                Dim::ALL.iter().enumerate().filter(|(j, _)| text[3 + j].is_valid(row)).map(|(j, d)| (*d, text[3 + j].value(row))).collect();
            if let [(a, va), (b, vb)] = dims[..] {
                out.entry(key).or_default().pairs.entry((a, b)).or_default().insert((va.to_owned(), vb.to_owned()), n.value(row));
            }
        }
    }
    Ok(out)
}

/// The records of one template in one window: one per value of its primary dimension (events
/// without one, such as a call with no resource, are in no record of that template).
fn build(key: &WindowKey, c: &Counts, template: &'static str, primary: Dim) -> Vec<Record> {
    let (account, region, source, window) = key;
    let start = crate::insights::minute_rfc3339(*window);
    let end = crate::insights::minute_rfc3339(window + WINDOW_MINUTES);
    let mut out = Vec::new();
    // The primary values and their counts, summed over one of their pairs.
    let Some(other) = Dim::ALL.into_iter().find(|d| *d != primary) else { return out };
    let (pair, primary_first) = if primary < other { ((primary, other), true) } else { ((other, primary), false) };
    let mut values: BTreeMap<&String, i64> = BTreeMap::new();
    for ((a, b), n) in c.pairs.get(&pair).into_iter().flatten() {
        let p = if primary_first { a } else { b };
        if !p.is_empty() {
            *values.entry(p).or_default() += n;
        }
    }
    for (value, count) in values {
        let mut details = Vec::new();
        for d in Dim::ALL.into_iter().filter(|d| *d != primary) {
            let (pair, primary_first) = if primary < d { ((primary, d), true) } else { ((d, primary), false) };
            let Some(counts) = c.pairs.get(&pair) else { continue };
            let mut stats: Vec<(&str, i64)> = counts
                .iter()
                .filter_map(|((a, b), n)| {
                    let (p, other) = if primary_first { (a, b) } else { (b, a) };
                    (p == value && !other.is_empty()).then_some((other.as_str(), *n))
                })
                .collect();
            if stats.is_empty() {
                continue;
            }
            stats.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(b.0)));
            stats.truncate(TOP_VALUES);
            details.push(json!({"dimension": d.name(), "statistics": stats.iter().map(|(name, n)| json!({"name": name, "value": n})).collect::<Vec<_>>(), "aggregationType": "Count"}));
        }
        let id = uuid::Uuid::new_v5(&ID_NAMESPACE, format!("{account}|{region}|{template}|{source}|{value}|{window}").as_bytes()).to_string();
        let record = json!({
            "eventVersion": "1.0",
            "accountId": account,
            "eventId": id,
            "eventCategory": "Aggregated",
            "eventType": "AwsAggregatedEvent",
            "awsRegion": region,
            "eventSource": source,
            "timeWindow": {"windowStart": start, "windowEnd": end, "windowSize": "PT5M"},
            "summary": {
                "primaryDimension": {"dimension": primary.name(), "statistics": [{"name": value, "value": count}], "aggregationType": "Count"},
                "details": details,
            },
        });
        out.push(Record {
            id,
            account: account.clone(),
            region: region.clone(),
            source: source.clone(),
            template,
            primary,
            value: value.clone(),
            window: *window,
            count,
            json: record,
        });
    }
    out
}

fn to_batch(recs: &[Record], run_id: &str) -> Result<RecordBatch> {
    let strings = |f: &dyn Fn(&Record) -> Option<String>| -> ArrayRef { Arc::new(recs.iter().map(f).collect::<StringArray>()) };
    let times = |f: &dyn Fn(&Record) -> i64| -> ArrayRef {
        Arc::new(TimestampMicrosecondArray::from_iter_values(recs.iter().map(|r| f(r) * MICROS_PER_MINUTE)).with_timezone("UTC"))
    };
    let columns: Vec<ArrayRef> = vec![
        strings(&|r| Some(r.id.clone())),
        strings(&|r| Some(r.account.clone())),
        strings(&|r| Some(r.region.clone())),
        strings(&|r| Some(r.source.clone())),
        strings(&|r| Some(r.template.to_owned())),
        strings(&|r| Some(r.primary.name().to_owned())),
        strings(&|r| Some(r.value.clone())),
        times(&|r| r.window),
        times(&|r| r.window + WINDOW_MINUTES),
        Arc::new(recs.iter().map(|r| r.count).collect::<Int64Array>()),
        strings(&|_| Some("prism".to_owned())),
        strings(&|_| None),
        strings(&|r| Some(r.json.to_string())),
        strings(&|_| Some(run_id.to_owned())),
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
        let records: Vec<&Value> = group.iter().map(|r| &r.json).collect();
        out.put_records("Aggregated", account, region, at, &ids, &records).await?;
        files += 1;
    }
    Ok(files)
}
