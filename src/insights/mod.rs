//! Insights: unusual API call and error rates, found in the lake's rollups, written as
//! CloudTrail Insights records to the `insights` table and as AWS-format files.
//!
//! - the model ([`crate::model`], shared with the SQL functions in [`crate::sql::udf`]);
//! - [`detect`]: the Start/End state machine;
//! - [`records`]: statistics, attributions and the AWS record shape;
//! - this module: selectors, the backfill and incremental runs, tables and files;
//! - [`quality`]: scoring found Insights against a generator's `labels.json`;
//! - [`cost`]: what AWS would charge to analyse the lake's events.

pub mod cost;
pub mod detect;
pub mod quality;
pub mod records;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use arrow::array::{Array, AsArray, RecordBatch};
use chrono::{DateTime, NaiveDate, Utc};
use datafusion::error::DataFusionError;
use datafusion::prelude::{SessionContext, col, lit};
use serde::Serialize;

use crate::lake::{Lake, LakeError};
use crate::model;
use detect::{DetectorParams, Direction, State, Transition};
pub use records::Category;
use records::{InsightRecord, SeriesKey};

pub use crate::schema::tables::{INSIGHT_RUNS as RUNS_TABLE, INSIGHTS as INSIGHTS_TABLE};
pub const CALL_RATE: &str = "ApiCallRateInsight";
pub const ERROR_RATE: &str = "ApiErrorRateInsight";
const VALID_TYPES: [&str; 2] = [CALL_RATE, ERROR_RATE];

pub const MICROS_PER_MINUTE: i64 = 60_000_000;

/// Per-minute counts of each series of one account and region.
pub type Series = HashMap<SeriesKey, Vec<(i64, i64)>>;

/// Account-regions whose minutes to read span at most this are read in one query.
const BATCH_SPAN_MINUTES: i64 = 14 * 1440;

#[derive(Debug, thiserror::Error)]
pub enum InsightsError {
    #[error(transparent)]
    Lake(#[from] LakeError),
    #[error(transparent)]
    Sql(#[from] crate::sql::SqlError),
    #[error(transparent)]
    Maintain(#[from] crate::maintain::MaintainError),
    #[error("{context}")]
    Query {
        context: String,
        #[source]
        source: DataFusionError,
    },
    /// Mirrors AWS's `InvalidInsightSelectorsException`.
    #[error(
        "InvalidInsightSelectorsException: {0}. Valid InsightType values: ApiCallRateInsight, ApiErrorRateInsight; for example [{{\"InsightType\":\"ApiCallRateInsight\"}}]"
    )]
    InvalidSelectors(String),
    /// Mirrors AWS's `InsightNotEnabledException`.
    #[error("InsightNotEnabledException: the lake {0} does not have Insights enabled; enable them with `prism selectors put`")]
    NotEnabled(String),
    #[error("Insights on management events cannot be enabled on {0}: its settings say the trail does not log management events")]
    ManagementEventsOff(String),
    /// Mirrors AWS's refusal of data Insights on a trail without data events.
    #[error(
        "InvalidParameterException: Insights for data events can only be enabled for trails that log data events. (The lake {0} holds no data events, and its settings do not say the trail logs them.)"
    )]
    DataEventsOff(String),
    /// The lake's data is not as the code expects (a column missing or of another type).
    #[error("{0}")]
    Data(String),
    #[error("{context}")]
    Read {
        context: String,
        #[source]
        source: LakeError,
    },
    #[error("{context}")]
    Arrow {
        context: String,
        #[source]
        source: arrow::error::ArrowError,
    },
    #[error("{context}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
    #[error("`{path}` is not a labels file")]
    Labels {
        path: String,
        #[source]
        source: serde_json::Error,
    },
    #[error("label time `{time}`")]
    LabelTime {
        time: String,
        #[source]
        source: chrono::ParseError,
    },
}

type Result<T, E = InsightsError> = std::result::Result<T, E>;

fn query(context: impl Into<String>) -> impl FnOnce(DataFusionError) -> InsightsError {
    let context = context.into();
    move |source| InsightsError::Query { context, source }
}

// ---------------------------------------------------------------------------------------------
// Selectors (spec section 5)

/// One Insights selector: a type and the event categories it analyses (AWS's
/// `{"InsightType": …, "EventCategories": […]}`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Selector {
    pub insight_type: String,
    pub categories: Vec<Category>,
}

impl Selector {
    /// Types on management events only (what the console's settings and `backfill` enable).
    pub fn management(types: &[&str]) -> Vec<Selector> {
        types.iter().map(|t| Selector { insight_type: (*t).to_owned(), categories: vec![Category::Management] }).collect()
    }
}

/// Parses a `PutInsightSelectors` list: `[{"InsightType":"ApiCallRateInsight",
/// "EventCategories":["Management","Data"]}, …]`, or the whole request `{"InsightSelectors":[…]}`.
/// Omitted `EventCategories` means `["Management"]`; an empty list turns Insights off.
pub fn parse_selectors(json: &str) -> Result<Vec<Selector>> {
    let invalid = |m: String| InsightsError::InvalidSelectors(m);
    let value: serde_json::Value = serde_json::from_str(json).map_err(|e| invalid(format!("not JSON ({e})")))?;
    let list = match &value {
        serde_json::Value::Array(a) => a,
        serde_json::Value::Object(o) => match o.get("InsightSelectors") {
            Some(serde_json::Value::Array(a)) => a,
            _ => return Err(invalid("expected a list of selectors or {\"InsightSelectors\":[…]}".into())),
        },
        _ => return Err(invalid("expected a list of selectors".into())),
    };
    let mut out: Vec<Selector> = Vec::new();
    for item in list {
        let obj = item.as_object().ok_or_else(|| invalid(format!("selector {item} is not an object")))?;
        if let Some(k) = obj.keys().find(|k| !matches!(k.as_str(), "InsightType" | "EventCategories")) {
            return Err(invalid(format!("unknown selector field `{k}`")));
        }
        let t = obj.get("InsightType").and_then(|v| v.as_str()).ok_or_else(|| invalid(format!("selector {item} lacks InsightType")))?;
        if !VALID_TYPES.contains(&t) {
            return Err(invalid(format!("unknown InsightType `{t}`")));
        }
        let categories = match obj.get("EventCategories") {
            None => vec![Category::Management],
            Some(serde_json::Value::Array(list)) if !list.is_empty() => {
                let mut cs = Vec::new();
                for c in list {
                    let c =
                        c.as_str().and_then(Category::parse).ok_or_else(|| invalid(format!("unknown EventCategories value {c} (valid: Management, Data)")))?;
                    if !cs.contains(&c) {
                        cs.push(c);
                    }
                }
                cs
            }
            Some(other) => return Err(invalid(format!("EventCategories must be a non-empty list of Management and Data, not {other}"))),
        };
        match out.iter_mut().find(|o| o.insight_type == t) {
            // A type named twice analyses the categories of both.
            Some(o) => o.categories.extend(categories.into_iter().filter(|c| !o.categories.contains(c)).collect::<Vec<_>>()),
            None => out.push(Selector { insight_type: t.to_owned(), categories }),
        }
    }
    for o in &mut out {
        o.categories.sort();
    }
    Ok(out)
}

/// The selectors as AWS's `GetInsightSelectors` returns them.
pub fn selectors_response(lake: &url::Url, selectors: &[Selector]) -> serde_json::Value {
    serde_json::json!({
        "TrailARN": lake.to_string(),
        "InsightSelectors": selectors.iter().map(|s| serde_json::json!({
            "InsightType": s.insight_type,
            "EventCategories": s.categories.iter().map(|c| c.as_str()).collect::<Vec<_>>(),
        })).collect::<Vec<_>>(),
    })
}

/// `PutInsightSelectors`: stores the enabled types per category in the lake's settings (the
/// list replaces the old one).
pub async fn put_selectors(lake: &mut Lake, selectors: Vec<Selector>) -> Result<()> {
    let of = |c: Category| -> Vec<String> { selectors.iter().filter(|s| s.categories.contains(&c)).map(|s| s.insight_type.clone()).collect() };
    let (management, data) = (of(Category::Management), of(Category::Data));
    if !management.is_empty() && !lake.config().management_events {
        return Err(InsightsError::ManagementEventsOff(lake.url().to_string()));
    }
    if !data.is_empty() && !logs_data_events(lake).await? {
        return Err(InsightsError::DataEventsOff(lake.url().to_string()));
    }
    let mut config = lake.config().clone();
    config.insight_selectors = management;
    config.data_insight_selectors = data;
    lake.save_config(config).await?;
    Ok(())
}

/// Whether the lake's trail logs data events: as its settings say (`data_events`), or else
/// whether the lake holds any (a data-event row in the rollups).
pub async fn logs_data_events(lake: &Lake) -> Result<bool> {
    if let Some(stated) = lake.config().data_events {
        return Ok(stated);
    }
    let ctx = crate::sql::session(lake).await?;
    let sql = "SELECT 1 FROM rollups WHERE kind = 'minute' AND NOT management LIMIT 1";
    let context = "looking for data events in the rollups";
    let found = ctx.sql(sql).await.map_err(query(context))?.collect().await.map_err(query(context))?;
    Ok(found.iter().any(|b| b.num_rows() > 0))
}

/// The enabled selectors of a lake's settings.
pub fn selectors_of(config: &crate::lake::LakeConfig) -> Vec<Selector> {
    let mut out: Vec<Selector> = Vec::new();
    for (c, types) in [(Category::Management, &config.insight_selectors), (Category::Data, &config.data_insight_selectors)] {
        for t in types {
            match out.iter_mut().find(|s| &s.insight_type == t) {
                Some(s) => s.categories.push(c),
                None => out.push(Selector { insight_type: t.clone(), categories: vec![c] }),
            }
        }
    }
    out
}

/// The enabled (category, type) pairs of a lake's settings: what a run analyses.
pub fn enabled(config: &crate::lake::LakeConfig) -> Enabled {
    selectors_of(config).into_iter().flat_map(|s| s.categories.into_iter().map(move |c| (c, s.insight_type.clone()))).collect()
}

/// (category, Insights type) pairs.
pub type Enabled = HashSet<(Category, String)>;

/// `GetInsightSelectors`: the enabled selectors, or `InsightNotEnabledException`.
pub fn get_selectors(lake: &url::Url, config: &crate::lake::LakeConfig) -> Result<Vec<Selector>> {
    let selectors = selectors_of(config);
    if selectors.is_empty() {
        return Err(InsightsError::NotEnabled(lake.to_string()));
    }
    Ok(selectors)
}

// ---------------------------------------------------------------------------------------------
// Runs

/// Which minutes a run analyses.
#[derive(Debug, Clone, PartialEq)]
pub enum Mode {
    /// Every minute in the range (default: all the data), from a fresh state.
    Backfill { from: Option<NaiveDate>, to: Option<NaiveDate> },
    /// The minutes after the last run's, carrying open Insights over; up to `until` if given.
    Incremental { until: Option<DateTime<Utc>> },
}

#[derive(Debug, Clone)]
pub struct RunOptions {
    pub lake: String,
    pub mode: Mode,
    /// Where the AWS-format files go (`AWSLogs/…` under it); default: the lake itself.
    pub out: Option<String>,
    pub params: DetectorParams,
    /// Minutes before the newest data left for a later run, since their events may still be
    /// arriving (CloudTrail delivers within about 5 minutes, some files later).
    pub settle_minutes: i64,
}

impl RunOptions {
    pub fn new(lake: impl Into<String>, mode: Mode) -> Self {
        RunOptions { lake: lake.into(), mode, out: None, params: DetectorParams::default(), settle_minutes: 10 }
    }
}

/// Live counters for a progress display.
#[derive(Debug, Default)]
pub struct InsightsProgress {
    pub series_total: AtomicU64,
    pub series_done: AtomicU64,
    pub minutes: AtomicU64,
    pub found: AtomicU64,
}

/// What a run did.
#[derive(Debug, Default, Clone, Serialize)]
pub struct RunSummary {
    pub run_id: String,
    /// Enabled types; empty means Insights are off and nothing was done.
    pub insight_types: Vec<String>,
    pub account_regions: u64,
    pub series: u64,
    /// Series-minutes scored.
    pub minutes: u64,
    pub starts: u64,
    pub ends: u64,
    /// Records new to the lake (re-runs find the same records and add none).
    pub records_written: u64,
    /// Records new when this run read the table, but stored by another run before it
    /// committed (runs at once on one lake).
    pub records_stored_meanwhile: u64,
    pub files_written: u64,
    /// Insights still open at the end of the analysed data (their End comes later).
    pub open: u64,
    /// Events counted into rollups before the run (new since the last run).
    pub rolled_up_events: u64,
    /// Accounts whose ID is not a safe path name, skipped.
    pub skipped_accounts: Vec<String>,
    pub analysed_from: Option<String>,
    pub analysed_to: Option<String>,
    pub seconds: f64,
}

/// Runs Insights over the lake: backfill or incremental.
pub async fn run(opts: &RunOptions, progress: &InsightsProgress) -> Result<RunSummary> {
    run_with(opts, progress, &mut Default::default()).await
}

/// [`run`] with what a long-running caller keeps between runs (`prism watch`): the open lake
/// and the rollups (opening them reads which events files they count, a read of the whole
/// table); each is opened here when `None`.
pub async fn run_with(opts: &RunOptions, progress: &InsightsProgress, kept: &mut crate::ingest::Kept) -> Result<RunSummary> {
    let started = Instant::now();
    let lake = match &mut kept.lake {
        Some(l) => l,
        None => kept.lake.insert(Lake::open(&opts.lake).await?),
    };
    let lake: &Lake = lake;
    let rollups = &mut kept.rollups;
    let run_id = uuid::Uuid::new_v4().to_string();
    let types = enabled(lake.config());
    let mut named: Vec<(Category, &String)> = types.iter().map(|(c, t)| (*c, t)).collect();
    named.sort();
    let insight_types = named
        .into_iter()
        .map(|(c, t)| match c {
            Category::Management => t.clone(),
            _ => format!("{t} ({})", c.as_str()),
        })
        .collect();
    let mut summary = RunSummary { run_id: run_id.clone(), insight_types, ..Default::default() };
    if summary.insight_types.is_empty() {
        return Ok(summary);
    }
    let rollups = match rollups {
        Some(r) => r,
        None => rollups.insert(crate::rollup::Rollups::open(lake).await?),
    };
    summary.rolled_up_events = rollups.catch_up(lake).await?.events;
    crate::maintain::tidy_rollups(rollups).await?;
    tracing::debug!(elapsed = ?started.elapsed(), "rollups caught up");
    let mut tables = Tables::open(lake).await?;
    let ctx = crate::sql::session(lake).await?;
    let out = crate::lake::OutputStore::new(opts.out.as_deref(), lake)?;
    let p = &opts.params;

    tracing::debug!(elapsed = ?started.elapsed(), "session ready");
    let bounds = account_region_bounds(&ctx, "").await?;
    let mut event_files: HashMap<(String, String), Vec<String>> = HashMap::new();
    for f in crate::lake::partition_files(lake.events()) {
        event_files.entry((f.region, f.period)).or_default().push(f.path);
    }
    tracing::debug!(elapsed = ?started.elapsed(), "bounds read");
    let watermarks = if matches!(opts.mode, Mode::Incremental { .. }) { tables.watermarks(&ctx).await? } else { HashMap::new() };
    let mut new_records: Vec<InsightRecord> = Vec::new();
    let mut run_rows: Vec<records::RunRow> = Vec::new();
    let mut work: Vec<(String, String, i64, i64, i64)> = Vec::new();
    for ((account, region), (first, last)) in &bounds {
        if !crate::schema::is_safe_name(account) || !crate::schema::is_safe_name(region) {
            summary.skipped_accounts.push(format!("{account}/{region}"));
            continue;
        }
        let horizon = last + 1 - opts.settle_minutes.max(0);
        let (start, end) = match &opts.mode {
            Mode::Backfill { from, to } => {
                (from.map(day_minute).unwrap_or(*first).max(*first), to.map(|d| day_minute(d) + 1440).unwrap_or(horizon).min(horizon))
            }
            Mode::Incremental { until } => (
                watermarks.get(&(account.clone(), region.clone())).copied().unwrap_or(*first).max(*first),
                until.map(|u| u.timestamp().div_euclid(60)).unwrap_or(horizon).min(horizon),
            ),
        };
        if start < end {
            work.push((account.clone(), region.clone(), *first, start, end));
        }
    }
    let mut stored = if work.is_empty() { HashMap::new() } else { records::stored(&ctx).await? };
    // Per account and region: its stored records, open Insights and first minute to read.
    let mut plans = Vec::new();
    for (account, region, first, start, end) in work {
        let stored = stored.remove(&(account.clone(), region.clone())).unwrap_or_default();
        let states = match opts.mode {
            Mode::Incremental { .. } => open_states(&stored),
            Mode::Backfill { .. } => HashMap::new(),
        };
        let lo = states
            .values()
            .filter_map(|s| s.open.map(|o| o.start as i64))
            .chain(std::iter::once(start))
            .min()
            .unwrap_or(start)
            .saturating_sub(p.lookback() as i64)
            .max(first);
        plans.push((account, region, first, start, end, stored, states, lo));
    }
    // Short ranges (the steady state of `insights run` and `prism watch`) are read in one
    // query; long ones (backfills) one account and region at a time, to bound memory.
    let short: Vec<(String, String, i64, i64)> =
        plans.iter().filter(|p| p.4 - p.7 <= BATCH_SPAN_MINUTES).map(|p| (p.0.clone(), p.1.clone(), p.7, p.4)).collect();
    let mut preloaded = load_series_many(&ctx, &short, &types, None).await?;
    for (account, region, first, start, end, stored, states, lo) in plans {
        let series = match preloaded.remove(&(account.clone(), region.clone())) {
            Some(s) => s,
            None => load_series(&ctx, &account, &region, lo, end, &types, None).await?,
        };
        tracing::debug!(elapsed = ?started.elapsed(), %account, %region, series = series.len(), "series loaded");
        let mut keys: Vec<SeriesKey> = series.keys().cloned().collect();
        for k in states.keys() {
            if !series.contains_key(k) && types.contains(&(k.category, k.insight_type.clone())) {
                keys.push(k.clone());
            }
        }
        keys.sort();
        summary.account_regions += 1;
        progress.series_total.fetch_add(keys.len() as u64, Ordering::Relaxed);
        let existing: HashSet<&str> = stored.iter().map(|r| r.event_id.as_str()).collect();
        let len = (end - lo) as usize;
        let (mut starts, mut ends) = (0u64, 0u64);
        for key in keys {
            let values = dense(series.get(&key).map_or(&[][..], Vec::as_slice), lo, len);
            let baselines = model::baselines(&values, &p.baseline);
            // Minute indexes below are relative to `lo`.
            let mut state = match states.get(&key) {
                Some(s) => State {
                    open: s.open.map(|o| detect::Open { start: (o.start as i64 - lo) as usize, detected: (o.detected as i64 - lo) as usize, ..o }),
                    not_before: (s.not_before as i64 - lo).max(0) as usize,
                },
                // A fresh backfill starts at its range; an incremental run continues the
                // history, so an Insight may date back to before this run's first minute.
                None => match opts.mode {
                    Mode::Backfill { .. } => State { open: None, not_before: (start - lo) as usize },
                    Mode::Incremental { .. } => State { open: None, not_before: (first - lo).max(0) as usize },
                },
            };
            let drops = key.insight_type == CALL_RATE;
            let range = (start - lo) as usize..len;
            let transitions = detect::run(&values, &baselines, range, (first - lo) as isize, drops, p, &mut state);
            summary.series += 1;
            summary.minutes += (end - start) as u64;
            progress.series_done.fetch_add(1, Ordering::Relaxed);
            progress.minutes.fetch_add((end - start) as u64, Ordering::Relaxed);
            let series_ctx = records::SeriesContext {
                account: &account,
                region: &region,
                key: &key,
                values: &values,
                baselines: &baselines,
                lo,
                granularity: lake.config().granularity,
                trail: lake.config().trail(),
                events: lake.events(),
                files: &event_files,
            };
            // One events read per Insight serves its Start and End.
            let mut cache = records::AttributionCache::default();
            for t in &transitions {
                if let Transition::Ended { open, end, .. } = t {
                    cache.spans.insert(lo + open.start as i64, lo + *end as i64);
                }
            }
            for t in transitions {
                let rec = records::build(&ctx, &series_ctx, t, &mut cache).await?;
                match t {
                    Transition::Started(_) => starts += 1,
                    Transition::Ended { .. } => ends += 1,
                }
                progress.found.fetch_add(matches!(t, Transition::Started(_)) as u64, Ordering::Relaxed);
                if !existing.contains(rec.event_id.as_str()) {
                    new_records.push(rec);
                }
            }
            summary.open += state.open.is_some() as u64;
        }
        tracing::debug!(elapsed = ?started.elapsed(), %account, %region, starts, ends, "analysed");
        summary.starts += starts;
        summary.ends += ends;
        summary.analysed_from = min_opt(summary.analysed_from.take(), minute_rfc3339(start));
        summary.analysed_to = max_opt(summary.analysed_to.take(), minute_rfc3339(end));
        run_rows.push(records::RunRow {
            run_id: run_id.clone(),
            mode: match opts.mode {
                Mode::Backfill { .. } => "backfill",
                Mode::Incremental { .. } => "run",
            },
            account,
            region,
            from_minute: start,
            to_minute: end,
            starts,
            ends,
        });
    }
    // Files first, then the table, then the watermark: a crash at any point re-runs to the same
    // records (same IDs, same file names) and stores each once.
    summary.files_written = write_files(&out, &new_records).await?;
    summary.records_written = tables.append_records(&new_records, &run_id).await?;
    summary.records_stored_meanwhile = new_records.len() as u64 - summary.records_written;
    tables.append_runs(&run_rows, started.elapsed().as_secs_f64()).await?;
    summary.seconds = started.elapsed().as_secs_f64();
    Ok(summary)
}

fn min_opt(a: Option<String>, b: String) -> Option<String> {
    Some(a.map_or(b.clone(), |a| a.min(b)))
}

fn max_opt(a: Option<String>, b: String) -> Option<String> {
    Some(a.map_or(b.clone(), |a| a.max(b)))
}

/// Minutes since the Unix epoch of a day's midnight (UTC).
pub(crate) fn day_minute(d: NaiveDate) -> i64 {
    d.and_hms_opt(0, 0, 0).map(|t| t.and_utc().timestamp() / 60).unwrap_or(0)
}

pub fn minute_rfc3339(minute: i64) -> String {
    DateTime::<Utc>::from_timestamp(minute * 60, 0).unwrap_or_default().format("%Y-%m-%dT%H:%M:%SZ").to_string()
}

/// First and last minute with any event, per account and region (from the rollups);
/// `filter` narrows the rollup rows (`AND NOT management`: data events only).
pub(crate) async fn account_region_bounds(ctx: &SessionContext, filter: &str) -> Result<BTreeMap<(String, String), (i64, i64)>> {
    let sql = format!("SELECT recipientaccountid, awsregion, min(period), max(period) FROM rollups WHERE kind = 'minute' {filter} GROUP BY 1, 2");
    let rows = minutes_by_account_region(ctx, &sql).await.map_err(query("reading rollups"))?;
    Ok(rows.into_iter().filter_map(|(pair, m)| Some((pair, (*m.first()?, *m.get(1)?)))).collect())
}

/// Runs `SELECT <account>, <region>, <timestamps>… GROUP BY 1, 2` and returns, per account and
/// region, the timestamps as minutes (rows with a null timestamp are left out).
pub(crate) async fn minutes_by_account_region(ctx: &SessionContext, sql: &str) -> Result<BTreeMap<(String, String), Vec<i64>>, DataFusionError> {
    let mut out = BTreeMap::new();
    for b in ctx.sql(sql).await?.collect().await? {
        let (a, r) = (&utf8(b.column(0)), &utf8(b.column(1)));
        let times = (2..b.num_columns())
            .map(|c| {
                b.column(c)
                    .as_primitive_opt::<arrow::datatypes::TimestampMicrosecondType>()
                    .ok_or_else(|| DataFusionError::Internal(format!("column {c} of `{sql}` is not a timestamp")))
            })
            .collect::<Result<Vec<_>, _>>()?;
        for i in 0..b.num_rows() {
            if times.iter().all(|t| t.is_valid(i)) {
                out.insert((a.value(i).to_owned(), r.value(i).to_owned()), times.iter().map(|t| t.value(i).div_euclid(MICROS_PER_MINUTE)).collect());
            }
        }
    }
    Ok(out)
}

/// A series as one value per minute from `lo` (`len` minutes), minutes with no calls as 0.
pub fn dense(points: &[(i64, i64)], lo: i64, len: usize) -> Vec<f64> {
    let mut values = vec![0.0; len];
    for &(minute, calls) in points {
        if let Some(v) = minute.checked_sub(lo).and_then(|i| usize::try_from(i).ok()).and_then(|i| values.get_mut(i)) {
            *v += calls as f64;
        }
    }
    values
}

/// Counts per minute of every analysed series of one account and region, minutes `lo..hi`
/// (of one series only with `only`, as the console's chart reads it).
/// Call rate: write management events per API. Error rate: management events with an error
/// code, per API and code.
pub async fn load_series(ctx: &SessionContext, account: &str, region: &str, lo: i64, hi: i64, types: &Enabled, only: Option<&SeriesKey>) -> Result<Series> {
    let ranges = [(account.to_owned(), region.to_owned(), lo, hi)];
    Ok(load_series_many(ctx, &ranges, types, only).await?.into_values().next().unwrap_or_default())
}

/// Series of several accounts and regions, each over its own minutes `lo..hi`, in one query
/// (an incremental run reads a few days of many accounts and regions: one query's overhead
/// instead of one per account and region). By (account, region), one entry for each range.
pub async fn load_series_many(
    ctx: &SessionContext,
    ranges: &[(String, String, i64, i64)],
    types: &Enabled,
    only: Option<&SeriesKey>,
) -> Result<HashMap<(String, String), Series>> {
    let mut out: HashMap<(String, String), Series> = ranges.iter().map(|r| ((r.0.clone(), r.1.clone()), Series::new())).collect();
    let (Some(lo), Some(hi)) = (ranges.iter().map(|r| r.2).min(), ranges.iter().map(|r| r.3).max()) else {
        return Ok(out);
    };
    let wanted: HashMap<(&str, &str), (i64, i64)> = ranges.iter().map(|(a, r, lo, hi)| ((a.as_str(), r.as_str()), (*lo, *hi))).collect();
    let context = match ranges {
        [(a, r, ..)] => format!("reading the rollups of {a}/{r}"),
        _ => format!("reading the rollups of {} accounts and regions", ranges.len()),
    };
    let ts = |m: i64| lit(datafusion::scalar::ScalarValue::TimestampMicrosecond(Some(m * MICROS_PER_MINUTE), Some("UTC".into())));
    let list = |values: HashSet<&str>| values.into_iter().map(lit).collect::<Vec<_>>();
    let mut filter = col("kind")
        .eq(lit(crate::rollup::MINUTE))
        .and(col("recipientaccountid").in_list(list(ranges.iter().map(|r| r.0.as_str()).collect()), false))
        .and(col("awsregion").in_list(list(ranges.iter().map(|r| r.1.as_str()).collect()), false))
        .and(col("period").gt_eq(ts(lo)))
        .and(col("period").lt(ts(hi)));
    let categories: HashSet<Category> = match only {
        Some(k) => HashSet::from([k.category]),
        None => types.iter().map(|(c, _)| *c).collect(),
    };
    if !categories.contains(&Category::Data) {
        filter = filter.and(col("management"));
    } else if !categories.contains(&Category::Management) {
        filter = filter.and(std::ops::Not::not(col("management")));
    }
    if let Some(k) = only {
        filter = filter.and(col("eventsource").eq(lit(k.source.as_str()))).and(col("eventname").eq(lit(k.name.as_str())));
    }
    // Per category: whether call rate and error rate are wanted.
    let wants = |c: Category| (types.contains(&(c, CALL_RATE.to_owned())), types.contains(&(c, ERROR_RATE.to_owned())));
    let wanted_by = [wants(Category::Management), wants(Category::Data)];
    let df = ctx
        .table("rollups")
        .await
        .map_err(query(&context))?
        .filter(filter)
        .map_err(query(&context))?
        .select_columns(&["recipientaccountid", "awsregion", "period", "eventsource", "eventname", "errorcode", "readonly", "calls", "management"])
        .map_err(query(&context))?;
    let batches = df.collect().await.map_err(query(&context))?;
    for b in batches {
        let (account, region) = (&utf8(b.column(0)), &utf8(b.column(1)));
        let period = b.column(2).as_primitive::<arrow::datatypes::TimestampMicrosecondType>();
        let (source, name, error) = (&utf8(b.column(3)), &utf8(b.column(4)), &utf8(b.column(5)));
        let readonly = b.column(6).as_boolean();
        let calls = b.column(7).as_primitive::<arrow::datatypes::Int64Type>();
        let management = b.column(8).as_boolean();
        for i in 0..b.num_rows() {
            let pair = (account.value(i), region.value(i));
            let minute = period.value(i).div_euclid(MICROS_PER_MINUTE);
            // The query's bounds span every range; each pair keeps its own.
            let Some((lo, hi)) = wanted.get(&pair) else { continue };
            if minute < *lo || minute >= *hi {
                continue;
            }
            let series = out.entry((pair.0.to_owned(), pair.1.to_owned())).or_default();
            let n = calls.value(i);
            let category = Category::of_rollup(management.value(i));
            let (call_rate, error_rate) = wanted_by[category as usize];
            // Management call rate counts writes; data call rate reads and writes (spec 6).
            let counted = category == Category::Data || (readonly.is_valid(i) && !readonly.value(i));
            if counted && call_rate {
                let key = SeriesKey::of(category, CALL_RATE, source.value(i), name.value(i), None);
                series.entry(key).or_default().push((minute, n));
            }
            if error.is_valid(i) && error_rate {
                let key = SeriesKey::of(category, ERROR_RATE, source.value(i), name.value(i), Some(error.value(i)));
                series.entry(key).or_default().push((minute, n));
            }
        }
    }
    Ok(out)
}

/// Per series: the open Insight (a Start with no End) and the minute after the last close,
/// from one account and region's stored records.
fn open_states(rows: &[records::Stored]) -> HashMap<SeriesKey, State> {
    let mut by_shared: HashMap<&str, (Option<&records::Stored>, Option<&records::Stored>)> = HashMap::new();
    for r in rows {
        let e = by_shared.entry(r.shared_id.as_str()).or_default();
        if r.state == "Start" { e.0 = Some(r) } else { e.1 = Some(r) }
    }
    let mut out: HashMap<SeriesKey, State> = HashMap::new();
    for (start, end) in by_shared.into_values() {
        match (start, end) {
            (Some(s), None) => {
                let st = out.entry(s.key.clone()).or_default();
                st.open = Some(detect::Open { direction: s.direction, start: s.minute as usize, detected: s.decided as usize });
            }
            (_, Some(e)) => {
                let st = out.entry(e.key.clone()).or_default();
                st.not_before = st.not_before.max(e.decided as usize + 1);
            }
            (None, None) => {}
        }
    }
    out
}

/// The `insights` and `insight_runs` tables.
struct Tables {
    insights: deltalake::DeltaTable,
    runs: deltalake::DeltaTable,
}

impl Tables {
    async fn open(lake: &Lake) -> Result<Tables> {
        let schema = crate::schema::tables::insights_schema();
        let insights = lake.table(INSIGHTS_TABLE, schema.clone(), &[]).await?;
        // Lakes from before data Insights: their rows are management Insights.
        let insights = crate::lake::add_columns(insights, schema, &[("sourceeventcategory", Category::Management.as_str())], INSIGHTS_TABLE).await?;
        Ok(Tables { insights, runs: lake.table(RUNS_TABLE, crate::schema::tables::insight_runs_schema(), &[]).await? })
    }

    /// The minute after the last analysed one, per account and region.
    async fn watermarks(&self, ctx: &SessionContext) -> Result<HashMap<(String, String), i64>> {
        let sql = format!("SELECT recipientaccountid, awsregion, max(analysedto) FROM {RUNS_TABLE} GROUP BY 1, 2");
        let rows = minutes_by_account_region(ctx, &sql).await.map_err(query("reading insight_runs"))?;
        Ok(rows.into_iter().map(|(pair, m)| (pair, m[0])).collect())
    }

    /// Stores `recs` but those another run stored meanwhile (two runs at once find the same
    /// records, with the same IDs); returns how many were stored.
    async fn append_records(&mut self, recs: &[InsightRecord], run_id: &str) -> Result<u64> {
        if recs.is_empty() {
            return Ok(0);
        }
        Ok(crate::lake::append_new_keys(&mut self.insights, records::to_batch(recs, run_id)?, "eventid", INSIGHTS_TABLE).await?)
    }

    async fn append_runs(&mut self, rows: &[records::RunRow], seconds: f64) -> Result<()> {
        if !rows.is_empty() {
            self.runs = crate::lake::append(&self.runs, vec![records::runs_batch(rows, seconds)?], RUNS_TABLE).await?;
        }
        Ok(())
    }
}

/// The lake's session (the one every entry point uses), once the Insights tables exist.
pub async fn session(lake: &Lake) -> Result<SessionContext> {
    Tables::open(lake).await?;
    Ok(crate::sql::session(lake).await?)
}

/// Writes the records as AWS-format files, one per account, region and day of event time,
/// dated by its latest record. Returns the files written.
async fn write_files(out: &crate::lake::OutputStore, recs: &[InsightRecord]) -> Result<u64> {
    let mut groups: BTreeMap<(String, String, i64), Vec<&InsightRecord>> = BTreeMap::new();
    for r in recs {
        groups.entry((r.key_account.clone(), r.region.clone(), r.minute.div_euclid(1440))).or_default().push(r);
    }
    let mut files = 0;
    for ((account, region, _day), mut group) in groups {
        group.sort_by(|a, b| (a.minute, a.state != "Start", &a.event_id).cmp(&(b.minute, b.state != "Start", &b.event_id)));
        let latest = group.iter().map(|r| r.minute).max().unwrap_or(0);
        let at = DateTime::<Utc>::from_timestamp(latest * 60, 0).unwrap_or_default();
        let ids: Vec<&str> = group.iter().map(|r| r.event_id.as_str()).collect();
        let texts: Vec<String> = group.iter().map(|r| r.json.to_string()).collect();
        let records: Vec<&str> = texts.iter().map(String::as_str).collect();
        out.put_records("Insight", &account, &region, at, &ids, &records).await?;
        files += 1;
    }
    Ok(files)
}

pub(crate) fn direction_from(s: &str) -> Direction {
    if s == "drop" { Direction::Drop } else { Direction::Spike }
}

pub(crate) fn string_col(b: &RecordBatch, name: &str) -> Result<arrow::array::StringArray> {
    let c = b.column_by_name(name).ok_or_else(|| InsightsError::Data(format!("column {name} missing")))?;
    Ok(utf8(c))
}

/// A text column as `Utf8` (DataFusion reads Parquet text as `Utf8View`).
pub(crate) fn utf8(a: &arrow::array::ArrayRef) -> arrow::array::StringArray {
    match arrow::compute::cast(a, &arrow::datatypes::DataType::Utf8) {
        Ok(c) => c.as_string::<i32>().clone(),
        Err(_) => arrow::array::StringArray::new_null(a.len()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parsed(json: &str) -> Vec<(String, Vec<&'static str>)> {
        parse_selectors(json).unwrap().into_iter().map(|s| (s.insight_type, s.categories.iter().map(|c| c.as_str()).collect())).collect()
    }

    #[test]
    fn selectors_take_event_categories_as_aws_does() {
        // Omitted means Management; a given list is kept (sorted, without repeats).
        assert_eq!(parsed(r#"[{"InsightType":"ApiCallRateInsight"}]"#), [(CALL_RATE.to_owned(), vec!["Management"])]);
        assert_eq!(
            parsed(r#"{"InsightSelectors":[{"InsightType":"ApiErrorRateInsight","EventCategories":["Data","Management","Data"]}]}"#),
            [(ERROR_RATE.to_owned(), vec!["Management", "Data"])]
        );
        // A type named twice analyses both selectors' categories.
        assert_eq!(
            parsed(r#"[{"InsightType":"ApiCallRateInsight","EventCategories":["Data"]},{"InsightType":"ApiCallRateInsight"}]"#),
            [(CALL_RATE.to_owned(), vec!["Management", "Data"])]
        );
        for bad in [
            r#"[{"InsightType":"ApiCallRateInsight","EventCategories":[]}]"#,
            r#"[{"InsightType":"ApiCallRateInsight","EventCategories":["NetworkActivity"]}]"#,
            r#"[{"InsightType":"ApiCallRateInsight","EventCategories":"Data"}]"#,
        ] {
            let e = parse_selectors(bad).unwrap_err().to_string();
            assert!(e.starts_with("InvalidInsightSelectorsException"), "{bad}: {e}");
        }
        // The settings keep each category's types; reading them back gives the same selectors.
        let config = crate::lake::LakeConfig {
            insight_selectors: vec![CALL_RATE.into()],
            data_insight_selectors: vec![CALL_RATE.into(), ERROR_RATE.into()],
            ..Default::default()
        };
        let back: Vec<(String, Vec<Category>)> = selectors_of(&config).into_iter().map(|s| (s.insight_type, s.categories)).collect();
        assert_eq!(back, [(CALL_RATE.to_owned(), vec![Category::Management, Category::Data]), (ERROR_RATE.to_owned(), vec![Category::Data])]);
        assert_eq!(enabled(&config).len(), 3);
    }
}
