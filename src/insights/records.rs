//! Insights records in the AWS shape (spec section 3), their statistics and attributions, and
//! the `insights` / `insight_runs` tables.

use std::collections::HashMap;
use std::ops::Not;
use std::sync::Arc;

use arrow::array::{Array, ArrayRef, AsArray, Float64Array, Int64Array, RecordBatch, StringArray, TimestampMicrosecondArray};

use datafusion::prelude::{Expr, SessionContext, col, lit};
use datafusion::scalar::ScalarValue;
use serde_json::{Value, json};

use super::detect::{Direction, Open, Transition};
use super::{CALL_RATE, ERROR_RATE, INSIGHTS_TABLE, InsightsError, MICROS_PER_MINUTE, Result, query};
use crate::model::Baseline;
pub use crate::rollup::Category;
use crate::schema::Granularity;

/// Namespace of Insight IDs (fixed, so IDs are stable across versions and machines).
const ID_NAMESPACE: uuid::Uuid = uuid::Uuid::from_u128(0x2d0c_8a4e_5b7f_4c19_a6e3_91f0_7d25_b8c4);
/// Values kept per attribute, as AWS does.
const TOP: usize = 5;

/// One analysed series: an API (and error code, for error rate) of one account and region,
/// on management or data events.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SeriesKey {
    pub insight_type: String,
    pub source: String,
    pub name: String,
    pub error: Option<String>,
    pub category: Category,
}

impl SeriesKey {
    /// A series of management events.
    pub fn new(insight_type: &str, source: &str, name: &str, error: Option<&str>) -> Self {
        Self::of(Category::Management, insight_type, source, name, error)
    }

    pub fn of(category: Category, insight_type: &str, source: &str, name: &str, error: Option<&str>) -> Self {
        SeriesKey { insight_type: insight_type.to_owned(), source: source.to_owned(), name: name.to_owned(), error: error.map(str::to_owned), category }
    }

    /// Whether an event belongs to the series (its account, region and time aside): management
    /// call rate counts writes, data call rate reads and writes (spec section 6), error rate
    /// the calls failing with its code.
    pub(crate) fn counts(&self, e: &crate::rollup::EventView<'_>) -> bool {
        e.category == Some(self.category)
            && e.source == self.source
            && e.name == self.name
            && match (&self.error, self.insight_type.as_str()) {
                (Some(code), ERROR_RATE) => e.error == Some(code.as_str()),
                _ => self.category == Category::Data || e.readonly == Some(false),
            }
    }
}

/// What [`build`] needs to know about the series a transition happened in.
pub struct SeriesContext<'a> {
    pub account: &'a str,
    pub region: &'a str,
    pub key: &'a SeriesKey,
    pub values: &'a [f64],
    pub baselines: &'a [Baseline],
    /// Minute (since the epoch) of index 0.
    pub lo: i64,
    pub granularity: Granularity,
    /// The events table and its files by (region, period), for attributions.
    pub events: &'a deltalake::DeltaTable,
    pub files: &'a HashMap<(String, String), Vec<String>>,
    /// The trail's name, for `insightSource` on data Insights.
    pub trail: &'a str,
}

/// One Start or End record.
#[derive(Debug, Clone, PartialEq)]
pub struct InsightRecord {
    pub event_id: String,
    pub shared_id: String,
    pub state: &'static str,
    /// eventTime, in minutes since the epoch.
    pub minute: i64,
    /// The minute the detector decided (detection for Start, close for End): where a later
    /// run resumes.
    pub decided: i64,
    pub key_account: String,
    pub region: String,
    pub key: SeriesKey,
    pub direction: Direction,
    pub baseline_average: f64,
    pub insight_average: f64,
    pub insight_duration: i64,
    pub baseline_duration: i64,
    pub json: Value,
}

fn round6(x: f64) -> f64 {
    (x * 1e6).round() / 1e6
}

/// Builds the record of one transition, with statistics and attributions.
pub async fn build(ctx: &SessionContext, s: &SeriesContext<'_>, t: Transition, cache: &mut AttributionCache) -> Result<InsightRecord> {
    let (open, state, at, decided, until): (Open, &'static str, usize, usize, usize) = match t {
        Transition::Started(o) => (o, "Start", o.start, o.detected, o.detected + 1),
        Transition::Ended { open, end, closed_at } => (open, "End", end, closed_at, end),
    };
    let start = open.start;
    let baseline = s.baselines[start];
    let insight_average = match state {
        // On Start, the rate at the start of the unusual activity (spec section 3).
        "Start" => s.values[start],
        _ => s.values[start..until].iter().sum::<f64>() / (until - start) as f64,
    };
    let insight_duration = (until - start) as i64;
    let baseline_duration = baseline.history as i64;
    let start_minute = s.lo + start as i64;
    let k = s.key;
    // Management series keep the IDs of the versions before data Insights.
    let category = match k.category {
        Category::Management => "",
        Category::Data => "|Data",
    };
    let shared = uuid::Uuid::new_v5(
        &ID_NAMESPACE,
        format!("{}|{}|{}|{}|{}|{}|{start_minute}{category}", s.account, s.region, k.insight_type, k.source, k.name, k.error.as_deref().unwrap_or(""))
            .as_bytes(),
    );
    let event_id = uuid::Uuid::new_v5(&ID_NAMESPACE, format!("{shared}|{state}").as_bytes()).to_string();
    let minute = s.lo + at as i64;
    let attributions = cache.attributions(ctx, s, start_minute, s.lo + until as i64, baseline_duration).await?;
    let mut details = serde_json::Map::new();
    details.insert("state".into(), json!(state));
    details.insert("eventSource".into(), json!(k.source));
    details.insert("eventName".into(), json!(k.name));
    details.insert("insightType".into(), json!(k.insight_type));
    if let Some(e) = &k.error {
        details.insert("errorCode".into(), json!(e));
    }
    details.insert("sourceEventCategory".into(), json!(k.category.as_str()));
    if k.category == Category::Data {
        details.insert("insightSource".into(), json!(trail_arn(s.region, s.account, s.trail)));
    }
    details.insert(
        "insightContext".into(),
        json!({
            "statistics": {
                "baseline": {"average": round6(baseline.mean)},
                "insight": {"average": round6(insight_average)},
                "insightDuration": insight_duration,
                "baselineDuration": baseline_duration,
            },
            "attributions": attributions,
        }),
    );
    let record = json!({
        "eventVersion": "1.09",
        "eventTime": super::minute_rfc3339(minute),
        "awsRegion": s.region,
        "eventID": event_id,
        "eventType": "AwsCloudTrailInsight",
        "recipientAccountId": s.account,
        "sharedEventID": shared.to_string(),
        "insightDetails": Value::Object(details),
        "eventCategory": "Insight",
    });
    Ok(InsightRecord {
        event_id,
        shared_id: shared.to_string(),
        state,
        minute,
        decided: s.lo + decided as i64,
        key_account: s.account.to_owned(),
        region: s.region.to_owned(),
        key: k.clone(),
        direction: open.direction,
        baseline_average: round6(baseline.mean),
        insight_average: round6(insight_average),
        insight_duration,
        baseline_duration,
        json: record,
    })
}

/// `arn:aws:cloudtrail:<region>:<account>:trail/<name>`, as data Insights name their trail.
pub fn trail_arn(region: &str, account: &str, trail: &str) -> String {
    format!("arn:aws:cloudtrail:{region}:{account}:trail/{trail}")
}

fn ts(minute: i64) -> Expr {
    lit(ScalarValue::TimestampMicrosecond(Some(minute * MICROS_PER_MINUTE), Some("UTC".into())))
}

/// The rollup rows of one series in one account and region.
fn rollup_rows(s: &SeriesContext<'_>) -> Expr {
    let management = match s.key.category {
        Category::Management => col("management"),
        Category::Data => col("management").not(),
    };
    api_rows(s.account, s.region, s.key).and(management)
}

/// The events of one series in one account and region, as [`SeriesKey::counts`] decides (the
/// same rules as [`crate::rollup::visit`]'s, in SQL). The console's Events tab reads an
/// Insight's events with it.
pub fn series_rows(account: &str, region: &str, k: &SeriesKey) -> Expr {
    use datafusion::functions::core::expr_fn::coalesce;
    let category = coalesce(vec![col("eventcategory"), lit("")]);
    let management = coalesce(vec![col("managementevent"), category.clone().eq(lit("Management")).or(category.clone().eq(lit("")))]);
    let of_category = match k.category {
        Category::Management => management,
        Category::Data => management.not().and(category.clone().eq(lit("Data")).or(category.eq(lit("")))),
    };
    api_rows(account, region, k).and(of_category)
}

/// The rows of one series' API (and error code, or writes) in one account and region, for
/// events and rollups alike (their columns share these names).
fn api_rows(account: &str, region: &str, k: &SeriesKey) -> Expr {
    let base = col("recipientaccountid")
        .eq(lit(account))
        .and(col("awsregion").eq(lit(region)))
        .and(col("eventsource").eq(lit(k.source.as_str())))
        .and(col("eventname").eq(lit(k.name.as_str())));
    match (&k.error, k.insight_type.as_str(), k.category) {
        (Some(e), ERROR_RATE, _) => base.and(col("errorcode").eq(lit(e.as_str()))),
        (_, _, Category::Data) => base,
        _ => base.and(col("readonly").eq(lit(false))),
    }
}

/// Attribute counts of one series, fetched once per Insight and reused by its Start and End.
/// The minutes fetched so far (`until`), and each event's minute and attributes.
type FetchedEvents = (i64, Vec<(i64, [String; 3])>);

#[derive(Default)]
pub struct AttributionCache {
    /// Per Insight start: the minutes fetched so far (`until`) and each event's attributes.
    events: HashMap<i64, FetchedEvents>,
    /// Per Insight start: baseline counts per attribute value.
    baselines: HashMap<i64, [HashMap<String, f64>; 3]>,
    /// Per Insight start: the furthest minute a record of this run will need.
    pub spans: HashMap<i64, i64>,
}

impl AttributionCache {
    /// Top callers, agents and (call rate) error codes during the Insight and its baseline.
    /// Insight values are per minute of `[start, until)`, from the events; baseline values are
    /// per minute of the baseline, from the hourly rollups over the whole hours before the start.
    async fn attributions(&mut self, ctx: &SessionContext, s: &SeriesContext<'_>, start: i64, until: i64, baseline_minutes: i64) -> Result<Value> {
        let context = format!("attributing an Insight on {}/{} {}", s.account, s.region, s.key.name);
        let mut names = vec!["userIdentityArn", "userAgent"];
        if s.key.insight_type == CALL_RATE {
            names.push("errorCode");
        }
        let fetched = self.events.get(&start).map(|e| e.0).unwrap_or(start);
        if fetched < until {
            let upto = self.spans.get(&start).copied().unwrap_or(until).max(until);
            let rows = insight_events(s, fetched, upto, &context).await?;
            let entry = self.events.entry(start).or_insert_with(|| (start, Vec::new()));
            entry.0 = upto;
            entry.1.extend(rows);
        }
        let mut insight: [HashMap<String, f64>; 3] = Default::default();
        for (minute, attrs) in self.events.get(&start).map(|e| e.1.as_slice()).unwrap_or_default() {
            if *minute < until {
                for (a, v) in attrs.iter().enumerate() {
                    *insight[a].entry(v.clone()).or_default() += 1.0;
                }
            }
        }
        if let std::collections::hash_map::Entry::Vacant(slot) = self.baselines.entry(start) {
            slot.insert(baseline_counts(ctx, s, start, baseline_minutes, &context).await?);
        }
        let baseline = &self.baselines[&start];
        let top = |counts: &HashMap<String, f64>, minutes: i64| -> Value {
            let mut v: Vec<(&String, f64)> = counts.iter().map(|(k, n)| (k, n / minutes.max(1) as f64)).collect();
            v.sort_by(|a, b| b.1.total_cmp(&a.1).then_with(|| a.0.cmp(b.0)));
            Value::Array(v.into_iter().take(TOP).map(|(value, avg)| json!({"value": value, "average": round6(avg)})).collect())
        };
        let out: Vec<Value> = names
            .iter()
            .enumerate()
            .map(|(a, name)| json!({"attribute": name, "insight": top(&insight[a], until - start), "baseline": top(&baseline[a], baseline_minutes)}))
            .collect();
        Ok(Value::Array(out))
    }
}

/// The attributes (caller, agent, error code) of the series' events in `[from, until)`, read
/// straight from the events files of those minutes' partitions (a query planner over every
/// file of the table costs more than the reading).
async fn insight_events(s: &SeriesContext<'_>, from: i64, until: i64, context: &str) -> Result<Vec<(i64, [String; 3])>> {
    let mut buckets: Vec<String> = (from..until).map(|m| s.granularity.bucket_name(m * MICROS_PER_MINUTE)).collect();
    buckets.dedup();
    let paths: Vec<String> = buckets.into_iter().filter_map(|b| s.files.get(&(s.region.to_owned(), b))).flatten().cloned().collect();
    let batches = crate::lake::read_files_columns(s.events, &paths, crate::rollup::PROJECTION)
        .await
        .map_err(|source| InsightsError::Read { context: context.to_owned(), source })?;
    let k = s.key;
    let (lo, hi) = (from * MICROS_PER_MINUTE, until * MICROS_PER_MINUTE);
    let null = || "null".to_owned();
    let mut out = Vec::new();
    for b in &batches {
        crate::rollup::visit(b, |e| {
            let of_series = e.time >= lo && e.time < hi && e.account == s.account && k.counts(e);
            if of_series {
                let text = |v: Option<&str>| v.map(str::to_owned).unwrap_or_else(null);
                out.push((e.time.div_euclid(MICROS_PER_MINUTE), [text(e.caller), text(e.agent), text(e.error)]));
            }
        })
        .map_err(|source| InsightsError::Read { context: context.to_owned(), source })?;
    }
    Ok(out)
}

/// Calls per attribute value over the whole hours of the baseline, from the hourly rollups.
async fn baseline_counts(ctx: &SessionContext, s: &SeriesContext<'_>, start: i64, baseline_minutes: i64, context: &str) -> Result<[HashMap<String, f64>; 3]> {
    let hour_end = start.div_euclid(60) * 60;
    let hour_start = hour_end - baseline_minutes;
    let batches = ctx
        .table("rollups")
        .await
        .map_err(query(context))?
        .filter(col("kind").eq(lit(crate::rollup::HOUR)).and(col("period").gt_eq(ts(hour_start))).and(col("period").lt(ts(hour_end))).and(rollup_rows(s)))
        .map_err(query(context))?
        .select_columns(&["useridentityarn", "useragent", "errorcode", "calls"])
        .map_err(query(context))?
        .collect()
        .await
        .map_err(query(context))?;
    let mut counts: [HashMap<String, f64>; 3] = Default::default();
    for b in &batches {
        let cols = [super::utf8(b.column(0)), super::utf8(b.column(1)), super::utf8(b.column(2))];
        let calls = b.column(3).as_primitive::<arrow::datatypes::Int64Type>();
        for i in 0..b.num_rows() {
            for (a, c) in cols.iter().enumerate() {
                *counts[a].entry(text(c, i)).or_default() += calls.value(i) as f64;
            }
        }
    }
    Ok(counts)
}

/// An attribute value; a missing one (a successful call's error code) is the string "null".
fn text(a: &StringArray, i: usize) -> String {
    if a.is_valid(i) { a.value(i).to_owned() } else { "null".to_owned() }
}

fn timestamps(minutes: impl Iterator<Item = i64>) -> ArrayRef {
    Arc::new(TimestampMicrosecondArray::from_iter_values(minutes.map(|m| m * MICROS_PER_MINUTE)).with_timezone("UTC"))
}

pub fn to_batch(recs: &[InsightRecord], run_id: &str) -> Result<RecordBatch> {
    let strings = |f: &dyn Fn(&InsightRecord) -> Option<String>| -> ArrayRef { Arc::new(recs.iter().map(f).collect::<StringArray>()) };
    let columns: Vec<ArrayRef> = vec![
        strings(&|r| Some(r.event_id.clone())),
        strings(&|r| Some(r.shared_id.clone())),
        timestamps(recs.iter().map(|r| r.minute)),
        strings(&|r| Some(r.region.clone())),
        strings(&|r| Some(r.key_account.clone())),
        strings(&|r| Some(r.state.to_owned())),
        strings(&|r| Some(r.key.insight_type.clone())),
        strings(&|r| Some(r.key.source.clone())),
        strings(&|r| Some(r.key.name.clone())),
        strings(&|r| r.key.error.clone()),
        strings(&|r| Some(r.direction.as_str().to_owned())),
        Arc::new(recs.iter().map(|r| r.baseline_average).collect::<Float64Array>()),
        Arc::new(recs.iter().map(|r| r.insight_average).collect::<Float64Array>()),
        Arc::new(recs.iter().map(|r| r.insight_duration).collect::<Int64Array>()),
        Arc::new(recs.iter().map(|r| r.baseline_duration).collect::<Int64Array>()),
        timestamps(recs.iter().map(|r| r.decided)),
        strings(&|r| Some(r.json.to_string())),
        strings(&|_| Some(run_id.to_owned())),
        strings(&|r| Some(r.key.category.as_str().to_owned())),
    ];
    RecordBatch::try_new(crate::schema::tables::insights_schema(), columns)
        .map_err(|source| InsightsError::Arrow { context: "building insights rows".into(), source })
}

/// What a later run needs of a stored record.
#[derive(Debug, Clone)]
pub struct Stored {
    pub event_id: String,
    pub shared_id: String,
    pub state: String,
    pub key: SeriesKey,
    pub direction: Direction,
    /// Start: the Insight's first minute; End: its end.
    pub minute: i64,
    pub decided: i64,
}

/// The stored records, by account and region. One read of the whole table, which holds only
/// Insights (a few a day): cheaper than a query per account and region.
pub async fn stored(ctx: &SessionContext) -> Result<HashMap<(String, String), Vec<Stored>>> {
    let context = format!("reading the {INSIGHTS_TABLE} table");
    let batches = ctx.table(INSIGHTS_TABLE).await.map_err(query(&context))?.collect().await.map_err(query(&context))?;
    let mut out: HashMap<(String, String), Vec<Stored>> = HashMap::new();
    for b in &batches {
        let s = |n: &str| super::string_col(b, n);
        let (account, region) = (s("recipientaccountid")?, s("awsregion")?);
        let (id, shared, state, ty, src, name, err, dir) = (
            s("eventid")?,
            s("sharedeventid")?,
            s("insightstate")?,
            s("insighttype")?,
            s("insighteventsource")?,
            s("insighteventname")?,
            s("insighterrorcode")?,
            s("insightdirection")?,
        );
        let minute = |n: &str| {
            b.column_by_name(n)
                .and_then(|c| c.as_any().downcast_ref::<TimestampMicrosecondArray>())
                .ok_or_else(|| InsightsError::Data(format!("column {n} missing")))
        };
        let (time, decided) = (minute("eventtime")?, minute("decidedat")?);
        // Rows from before the column read as Management.
        let category = b.column_by_name("sourceeventcategory").and_then(|c| c.as_string_opt::<i32>());
        for i in 0..b.num_rows() {
            let category = category.filter(|c| c.is_valid(i)).and_then(|c| Category::parse(c.value(i))).unwrap_or_default();
            out.entry((account.value(i).to_owned(), region.value(i).to_owned())).or_default().push(Stored {
                event_id: id.value(i).to_owned(),
                shared_id: shared.value(i).to_owned(),
                state: state.value(i).to_owned(),
                key: SeriesKey::of(category, ty.value(i), src.value(i), name.value(i), err.is_valid(i).then(|| err.value(i))),
                direction: super::direction_from(dir.value(i)),
                minute: time.value(i).div_euclid(MICROS_PER_MINUTE),
                decided: decided.value(i).div_euclid(MICROS_PER_MINUTE),
            });
        }
    }
    Ok(out)
}

/// One analysed range of one account and region: the `insight_runs` table.
#[derive(Debug, Clone)]
pub struct RunRow {
    pub run_id: String,
    pub mode: &'static str,
    pub account: String,
    pub region: String,
    pub from_minute: i64,
    pub to_minute: i64,
    pub starts: u64,
    pub ends: u64,
}

pub fn runs_batch(rows: &[RunRow], seconds: f64) -> Result<RecordBatch> {
    let now = chrono::Utc::now().timestamp_micros();
    let strings = |f: &dyn Fn(&RunRow) -> String| -> ArrayRef { Arc::new(rows.iter().map(|r| Some(f(r))).collect::<StringArray>()) };
    let columns: Vec<ArrayRef> = vec![
        strings(&|r| r.run_id.clone()),
        strings(&|r| r.mode.to_owned()),
        strings(&|r| r.account.clone()),
        strings(&|r| r.region.clone()),
        timestamps(rows.iter().map(|r| r.from_minute)),
        timestamps(rows.iter().map(|r| r.to_minute)),
        Arc::new(rows.iter().map(|r| r.starts as i64).collect::<Int64Array>()),
        Arc::new(rows.iter().map(|r| r.ends as i64).collect::<Int64Array>()),
        Arc::new(rows.iter().map(|_| seconds).collect::<Float64Array>()),
        Arc::new(TimestampMicrosecondArray::from_iter_values(rows.iter().map(|_| now)).with_timezone("UTC")),
    ];
    RecordBatch::try_new(crate::schema::tables::insight_runs_schema(), columns)
        .map_err(|source| InsightsError::Arrow { context: "building insight_runs rows".into(), source })
}
