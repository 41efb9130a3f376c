//! What the console shows, read from the lake: Insights (a Start joined with its End), one
//! Insight's chart series and bands, and its events. The pages and the JSON API both call these,
//! so they always agree; `prism insights graph` draws the same series.
//!
//! Every value that comes from a request reaches DataFusion as a literal or a bound parameter,
//! never as SQL text.

use std::collections::HashMap;

use arrow::array::{Array, AsArray, RecordBatch};
use arrow::datatypes::{Float64Type, Int64Type, TimestampMicrosecondType};
use chrono::{DateTime, Utc};
use datafusion::prelude::{SessionContext, col, lit};
use datafusion::scalar::ScalarValue;
use serde::Serialize;

use super::{Result, ServeError};
use crate::insights::records::SeriesKey;
use crate::insights::{self, CALL_RATE, ERROR_RATE, MICROS_PER_MINUTE};
use crate::model;

/// Filters of the Insights list; every field optional. Times are RFC 3339 or `YYYY-MM-DD`.
#[derive(Debug, Clone, Default, serde::Deserialize, Serialize)]
#[serde(default)]
pub struct InsightFilter {
    pub from: Option<String>,
    pub to: Option<String>,
    /// `ApiCallRateInsight` or `ApiErrorRateInsight`.
    #[serde(rename = "type")]
    pub insight_type: Option<String>,
    /// The source event category (`Management` or `Data`).
    pub category: Option<String>,
    pub eventsource: Option<String>,
    pub eventname: Option<String>,
    pub errorcode: Option<String>,
    pub account: Option<String>,
    pub region: Option<String>,
    /// `spike` or `drop`.
    pub direction: Option<String>,
    /// 1-based.
    pub page: Option<usize>,
    #[serde(rename = "perPage")]
    pub per_page: Option<usize>,
}

pub const DEFAULT_PER_PAGE: usize = 50;
const MAX_PER_PAGE: usize = 500;
/// The most rows a page may skip: past the end of any real table, so a later page is simply
/// empty. Page numbers come from URLs, and DataFusion's planner overflows on offsets near 2^63.
const MAX_OFFSET: usize = 1 << 40;

/// One Insight as the list shows it: its Start, and its End when it has one. Field names are
/// the `insights` table's columns where one exists.
#[derive(Debug, Clone, Serialize)]
pub struct InsightSummary {
    pub sharedeventid: String,
    pub recipientaccountid: String,
    pub awsregion: String,
    pub insighttype: String,
    pub sourceeventcategory: String,
    pub insighteventsource: String,
    pub insighteventname: String,
    pub insighterrorcode: Option<String>,
    pub insightdirection: String,
    /// The Insight's first minute (the Start record's eventTime), RFC 3339.
    pub starttime: String,
    /// The End record's eventTime; absent while the Insight is open.
    pub endtime: Option<String>,
    pub open: bool,
    /// Minutes from start to end (to the last analysed minute while open).
    pub insightduration: i64,
    pub baselineaverage: f64,
    /// The End's average over the whole Insight, or the Start's first-minute rate while open.
    pub insightaverage: f64,
    /// The caller with the most calls during the Insight (its userIdentityArn attribution).
    pub topidentity: Option<String>,
    #[serde(skip)]
    pub start_minute: i64,
    #[serde(skip)]
    pub end_minute: Option<i64>,
}

impl InsightSummary {
    pub fn key(&self) -> SeriesKey {
        let category = insights::Category::parse(&self.sourceeventcategory).unwrap_or_default();
        SeriesKey::of(category, &self.insighttype, &self.insighteventsource, &self.insighteventname, self.insighterrorcode.as_deref())
    }

    /// The Insight's end minute (exclusive): its End's, or the last analysed minute while open.
    pub fn end(&self, marks: &Marks) -> i64 {
        let mark = marks.get(&(self.recipientaccountid.clone(), self.awsregion.clone())).copied();
        self.end_minute.or(mark).unwrap_or(self.start_minute + 1).max(self.start_minute + 1)
    }

    /// `eventsource:eventname`, and the error code for error rate.
    pub fn api(&self) -> String {
        match &self.insighterrorcode {
            Some(e) => format!("{}:{} ({e})", self.insighteventsource, self.insighteventname),
            None => format!("{}:{}", self.insighteventsource, self.insighteventname),
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct DayCount {
    pub day: String,
    pub count: i64,
}

#[derive(Debug, Clone, Serialize)]
pub struct InsightPage {
    pub total: i64,
    pub page: usize,
    #[serde(rename = "perPage")]
    pub per_page: usize,
    pub items: Vec<InsightSummary>,
    /// Insights per day of their start, over everything the filters match (the page's strip).
    pub days: Vec<DayCount>,
}

/// The Start rows joined with their End (at most one each), as one relation `i`.
const JOINED: &str = "WITH s AS (SELECT * FROM insights WHERE insightstate = 'Start'), \
     e AS (SELECT sharedeventid, eventtime, insightaverage, insightduration, eventjson FROM insights WHERE insightstate = 'End'), \
     i AS (SELECT s.sharedeventid, s.recipientaccountid, s.awsregion, s.insighttype, s.insighteventsource, s.insighteventname, \
           s.insighterrorcode, s.sourceeventcategory, s.insightdirection, s.eventtime AS starttime, e.eventtime AS endtime, s.baselineaverage, \
           coalesce(e.insightaverage, s.insightaverage) AS insightaverage, e.insightduration AS endduration, \
           coalesce(e.eventjson, s.eventjson) AS eventjson \
           FROM s LEFT JOIN e ON s.sharedeventid = e.sharedeventid) ";

const SUMMARY_COLUMNS: &str = "sharedeventid, recipientaccountid, awsregion, insighttype, insighteventsource, insighteventname, \
     insighterrorcode, insightdirection, starttime, endtime, baselineaverage, insightaverage, endduration, eventjson, \
     coalesce(sourceeventcategory, 'Management') AS sourceeventcategory";

/// A time filter value: RFC 3339, or a day (`2024-01-05`, its midnight UTC).
pub fn parse_time(s: &str) -> Result<DateTime<Utc>> {
    let s = s.trim();
    if let Ok(t) = DateTime::parse_from_rfc3339(s) {
        return Ok(t.with_timezone(&Utc));
    }
    if let Ok(d) = chrono::NaiveDate::parse_from_str(s, "%Y-%m-%d")
        && let Some(t) = d.and_hms_opt(0, 0, 0)
    {
        return Ok(t.and_utc());
    }
    Err(ServeError::BadRequest(format!("`{s}` is not a time: use RFC 3339 (2024-01-05T14:00:00Z) or a day (2024-01-05)")))
}

fn ts_param(t: DateTime<Utc>) -> ScalarValue {
    ScalarValue::TimestampMicrosecond(Some(t.timestamp_micros()), Some("UTC".into()))
}

/// The WHERE clause of a filter over `i`, with its parameters (`$1`, `$2`, …).
fn filter_clause(f: &InsightFilter) -> Result<(String, Vec<ScalarValue>)> {
    let mut conds: Vec<String> = Vec::new();
    let mut params: Vec<ScalarValue> = Vec::new();
    let mut push = |cond: &str, v: ScalarValue| {
        params.push(v);
        conds.push(cond.replace('?', &format!("${}", params.len())));
    };
    let text = |v: &Option<String>| v.as_deref().map(str::trim).filter(|s| !s.is_empty()).map(str::to_owned);
    if let Some(from) = text(&f.from) {
        // An Insight that overlaps the range: it ends after `from` (or is open).
        push("(endtime IS NULL OR endtime >= ?)", ts_param(parse_time(&from)?));
    }
    if let Some(to) = text(&f.to) {
        push("starttime < ?", ts_param(parse_time(&to)?));
    }
    if let Some(t) = text(&f.insight_type) {
        if t != CALL_RATE && t != ERROR_RATE {
            return Err(ServeError::BadRequest(format!("unknown Insight type `{t}`: use {CALL_RATE} or {ERROR_RATE}")));
        }
        push("insighttype = ?", ScalarValue::from(t));
    }
    for (value, column) in [
        (&f.eventsource, "insighteventsource"),
        (&f.eventname, "insighteventname"),
        (&f.errorcode, "insighterrorcode"),
        (&f.account, "recipientaccountid"),
        (&f.region, "awsregion"),
    ] {
        if let Some(v) = text(value) {
            push(&format!("{column} = ?"), ScalarValue::from(v));
        }
    }
    if let Some(d) = text(&f.direction) {
        if d != "spike" && d != "drop" {
            return Err(ServeError::BadRequest(format!("unknown direction `{d}`: use spike or drop")));
        }
        push("insightdirection = ?", ScalarValue::from(d));
    }
    if let Some(c) = text(&f.category) {
        let Some(c) = insights::Category::parse(&c) else {
            return Err(ServeError::BadRequest(format!("unknown event category `{c}`: use Management or Data")));
        };
        push("coalesce(sourceeventcategory, 'Management') = ?", ScalarValue::from(c.as_str()));
    }
    let clause = if conds.is_empty() { String::new() } else { format!("WHERE {}", conds.join(" AND ")) };
    Ok((clause, params))
}

async fn run(ctx: &SessionContext, sql: &str, params: Vec<ScalarValue>, what: &str) -> Result<Vec<RecordBatch>> {
    let err = |source| ServeError::Query { context: what.to_owned(), source };
    let df = ctx.sql(sql).await.map_err(err)?;
    let df = if params.is_empty() { df } else { df.with_param_values(params).map_err(err)? };
    df.collect().await.map_err(err)
}

/// One page of Insights, newest first, with the total and the per-day counts.
pub async fn list(ctx: &SessionContext, f: &InsightFilter, marks: &Marks) -> Result<InsightPage> {
    let (clause, params) = filter_clause(f)?;
    let per_page = f.per_page.unwrap_or(DEFAULT_PER_PAGE).clamp(1, MAX_PER_PAGE);
    let page = f.page.unwrap_or(1).max(1);
    let offset = (page - 1).saturating_mul(per_page).min(MAX_OFFSET);
    let sql = format!("{JOINED} SELECT {SUMMARY_COLUMNS} FROM i {clause} ORDER BY starttime DESC, sharedeventid LIMIT {per_page} OFFSET {offset}");
    let batches = run(ctx, &sql, params.clone(), "reading the insights table").await?;
    let items = summaries(&batches, marks)?;
    let sql = format!("{JOINED} SELECT date_trunc('day', starttime) AS day, count(*) FROM i {clause} GROUP BY 1 ORDER BY 1");
    let mut days = Vec::new();
    for b in run(ctx, &sql, params, "counting Insights per day").await? {
        let day = b.column(0).as_primitive::<TimestampMicrosecondType>();
        let n = b.column(1).as_primitive::<Int64Type>();
        for i in 0..b.num_rows() {
            days.push(DayCount { day: micros_rfc3339(day.value(i))[..10].to_owned(), count: n.value(i) });
        }
    }
    let total = days.iter().map(|d| d.count).sum();
    Ok(InsightPage { total, page, per_page, items, days })
}

/// One Insight by its shared event ID, with its records' JSON (Start, then End if any).
pub async fn one(ctx: &SessionContext, shared_id: &str, marks: &Marks) -> Result<(InsightSummary, Vec<serde_json::Value>)> {
    let sql = format!("{JOINED} SELECT {SUMMARY_COLUMNS} FROM i WHERE sharedeventid = $1");
    let batches = run(ctx, &sql, vec![ScalarValue::from(shared_id)], "reading the insights table").await?;
    let summary = summaries(&batches, marks)?.into_iter().next().ok_or_else(|| ServeError::NotFound(format!("no Insight with sharedEventID `{shared_id}`")))?;
    let sql = "SELECT eventjson FROM insights WHERE sharedeventid = $1 ORDER BY insightstate DESC";
    let mut records = Vec::new();
    for b in run(ctx, sql, vec![ScalarValue::from(shared_id)], "reading the insights table").await? {
        let json = insights::utf8(b.column(0));
        for i in 0..b.num_rows() {
            records.push(serde_json::from_str(json.value(i)).unwrap_or(serde_json::Value::Null));
        }
    }
    Ok((summary, records))
}

/// The Insights of one series (account, region, type, API, error code) that overlap minutes
/// `lo..hi`: the chart's bands and the details page's left column (`lo..hi` all of time).
pub async fn of_series(ctx: &SessionContext, s: &InsightSummary, lo: Option<i64>, hi: Option<i64>, marks: &Marks) -> Result<Vec<InsightSummary>> {
    let minute = |m: i64| DateTime::<Utc>::from_timestamp(m.saturating_mul(60), 0).unwrap_or_default();
    let f = InsightFilter {
        from: lo.map(|m| minute(m).to_rfc3339()),
        to: hi.map(|m| minute(m).to_rfc3339()),
        insight_type: Some(s.insighttype.clone()),
        eventsource: Some(s.insighteventsource.clone()),
        eventname: Some(s.insighteventname.clone()),
        account: Some(s.recipientaccountid.clone()),
        region: Some(s.awsregion.clone()),
        ..Default::default()
    };
    let (mut clause, mut params) = filter_clause(&f)?;
    match &s.insighterrorcode {
        Some(e) => {
            params.push(ScalarValue::from(e.as_str()));
            clause.push_str(&format!(" AND insighterrorcode = ${}", params.len()));
        }
        None => clause.push_str(" AND insighterrorcode IS NULL"),
    }
    let sql = format!("{JOINED} SELECT {SUMMARY_COLUMNS} FROM i {clause} ORDER BY starttime DESC, sharedeventid LIMIT 1000");
    summaries(&run(ctx, &sql, params, "reading the insights table").await?, marks)
}

fn micros_rfc3339(us: i64) -> String {
    DateTime::<Utc>::from_timestamp_micros(us).unwrap_or_default().format("%Y-%m-%dT%H:%M:%SZ").to_string()
}

fn summaries(batches: &[RecordBatch], marks: &Marks) -> Result<Vec<InsightSummary>> {
    let mut out = Vec::new();
    for b in batches {
        let s = |i: usize| insights::utf8(b.column(i));
        let (id, account, region, ty, source, name, error, direction) = (s(0), s(1), s(2), s(3), s(4), s(5), s(6), s(7));
        let time = |i: usize| {
            b.column(i)
                .as_primitive_opt::<TimestampMicrosecondType>()
                .ok_or_else(|| ServeError::Data(format!("column {i} of the Insights query is not a timestamp")))
        };
        let (start, end) = (time(8)?, time(9)?);
        let float = |i: usize| {
            b.column(i).as_primitive_opt::<Float64Type>().ok_or_else(|| ServeError::Data(format!("column {i} of the Insights query is not a float")))
        };
        let (baseline, average) = (float(10)?, float(11)?);
        let duration = b.column(12).as_primitive_opt::<Int64Type>().ok_or_else(|| ServeError::Data("insightduration is not an integer".into()))?;
        let (json, category) = (s(13), s(14));
        for i in 0..b.num_rows() {
            let start_minute = start.value(i).div_euclid(MICROS_PER_MINUTE);
            let end_minute = end.is_valid(i).then(|| end.value(i).div_euclid(MICROS_PER_MINUTE));
            let insightduration = match end_minute {
                Some(_) if duration.is_valid(i) => duration.value(i),
                Some(e) => e - start_minute,
                None => marks.get(&(account.value(i).to_owned(), region.value(i).to_owned())).map_or(0, |t| (t - start_minute).max(0)),
            };
            out.push(InsightSummary {
                sharedeventid: id.value(i).to_owned(),
                recipientaccountid: account.value(i).to_owned(),
                awsregion: region.value(i).to_owned(),
                insighttype: ty.value(i).to_owned(),
                sourceeventcategory: category.value(i).to_owned(),
                insighteventsource: source.value(i).to_owned(),
                insighteventname: name.value(i).to_owned(),
                insighterrorcode: error.is_valid(i).then(|| error.value(i).to_owned()),
                insightdirection: direction.value(i).to_owned(),
                starttime: micros_rfc3339(start.value(i)),
                endtime: end.is_valid(i).then(|| micros_rfc3339(end.value(i))),
                open: end.is_null(i),
                insightduration,
                baselineaverage: baseline.value(i),
                insightaverage: average.value(i),
                topidentity: top_identity(json.value(i)),
                start_minute,
                end_minute,
            });
        }
    }
    Ok(out)
}

/// The first `userIdentityArn` value of a record's insight attributions.
fn top_identity(json: &str) -> Option<String> {
    let v: serde_json::Value = serde_json::from_str(json).ok()?;
    let attributions = v.pointer("/insightDetails/insightContext/attributions")?.as_array()?;
    let a = attributions.iter().find(|a| a.get("attribute").and_then(|x| x.as_str()) == Some("userIdentityArn"))?;
    a.pointer("/insight/0/value")?.as_str().map(str::to_owned)
}

/// The minute after the last analysed one per account and region (from `insight_runs`): how
/// far an open Insight is known to last.
pub type Marks = HashMap<(String, String), i64>;

pub async fn marks(ctx: &SessionContext) -> Result<Marks> {
    let sql = "SELECT recipientaccountid, awsregion, max(analysedto) FROM insight_runs GROUP BY 1, 2";
    let mut out = Marks::new();
    for b in run(ctx, sql, vec![], "reading insight_runs").await? {
        let (a, r) = (insights::utf8(b.column(0)), insights::utf8(b.column(1)));
        let Some(to) = b.column(2).as_primitive_opt::<TimestampMicrosecondType>() else { continue };
        for i in 0..b.num_rows() {
            if to.is_valid(i) {
                out.insert((a.value(i).to_owned(), r.value(i).to_owned()), to.value(i).div_euclid(MICROS_PER_MINUTE));
            }
        }
    }
    Ok(out)
}

/// The window a chart shows around an Insight.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Zoom {
    /// From an hour before the start to an hour after the end (the default, as AWS's console).
    #[default]
    Insight,
    /// A day centred on the Insight.
    Day,
    /// A week centred on the Insight.
    Week,
}

impl Zoom {
    pub fn parse(s: &str) -> Result<Zoom> {
        match s {
            "" | "insight" => Ok(Zoom::Insight),
            "day" => Ok(Zoom::Day),
            "week" => Ok(Zoom::Week),
            _ => Err(ServeError::BadRequest(format!("unknown zoom `{s}`: use insight, day or week"))),
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Zoom::Insight => "insight",
            Zoom::Day => "day",
            Zoom::Week => "week",
        }
    }

    /// Minutes `lo..hi` shown for an Insight from `start` to `end`.
    pub fn window(self, start: i64, end: i64) -> (i64, i64) {
        let mid = (start + end) / 2;
        match self {
            Zoom::Insight => (start - 60, end + 60),
            Zoom::Day => (mid - 720, mid + 720),
            Zoom::Week => (mid - 5040, mid + 5040),
        }
    }
}

/// One band of a chart: an Insight of the charted series.
#[derive(Debug, Clone, Serialize)]
pub struct Band {
    pub sharedeventid: String,
    pub starttime: String,
    pub endtime: Option<String>,
    pub insightdirection: String,
    #[serde(skip)]
    pub start: i64,
    /// The band's last minute (exclusive); the window's end while the Insight is open.
    #[serde(skip)]
    pub end: i64,
}

/// A chart's data: the series' count per minute and the detector's expected level, with every
/// Insight of the series in the window.
#[derive(Debug, Clone, Serialize)]
pub struct Series {
    pub title: String,
    /// What a value counts: "calls" or "errors" per minute.
    pub unit: String,
    pub from: String,
    pub to: String,
    #[serde(skip)]
    pub lo: i64,
    pub values: Vec<f64>,
    /// The detector's expectation for each minute (`model::Baseline::expected`).
    pub expected: Vec<f64>,
    pub bands: Vec<Band>,
    /// The Insight the chart is about.
    pub current: String,
}

/// The chart of one Insight at a zoom, from the per-minute rollups (not the events).
pub async fn series(ctx: &SessionContext, s: &InsightSummary, zoom: Zoom, marks: &Marks) -> Result<Series> {
    let end = s.end(marks);
    let (lo, hi) = zoom.window(s.start_minute, end);
    let params = crate::insights::detect::DetectorParams::default();
    let from = lo - params.lookback() as i64;
    let key = s.key();
    let types: insights::Enabled = [(key.category, key.insight_type.clone())].into_iter().collect();
    let loaded =
        insights::load_series(ctx, &s.recipientaccountid, &s.awsregion, from, hi, &types, Some(&key)).await.map_err(|e| ServeError::Insights(Box::new(e)))?;
    let values = insights::dense(loaded.get(&key).map_or(&[][..], Vec::as_slice), from, (hi - from) as usize);
    let baselines = model::baselines(&values, &params.baseline);
    let skip = (lo - from) as usize;
    let bands = of_series(ctx, s, Some(lo), Some(hi), marks)
        .await?
        .into_iter()
        .map(|b| Band {
            start: b.start_minute,
            end: b.end_minute.unwrap_or(hi).max(b.start_minute + 1),
            sharedeventid: b.sharedeventid,
            starttime: b.starttime,
            endtime: b.endtime,
            insightdirection: b.insightdirection,
        })
        .collect();
    Ok(Series {
        title: format!("{} in {} {}: {}", s.api(), s.recipientaccountid, s.awsregion, s.insighttype),
        unit: if key.insight_type == ERROR_RATE { "errors per minute".into() } else { "calls per minute".into() },
        from: insights::minute_rfc3339(lo),
        to: insights::minute_rfc3339(hi),
        lo,
        values: values[skip..].to_vec(),
        expected: baselines[skip..].iter().map(|b| b.expected).collect(),
        bands,
        current: s.sharedeventid.clone(),
    })
}

/// The chart of the Insight `id` at a zoom.
pub async fn chart_series(ctx: &SessionContext, id: &str, zoom: Zoom) -> Result<Series> {
    let marks = marks(ctx).await?;
    let (insight, _) = one(ctx, id, &marks).await?;
    series(ctx, &insight, zoom, &marks).await
}

/// One event of an Insight's Events tab.
#[derive(Debug, Clone, Serialize)]
pub struct EventRow {
    pub eventtime: String,
    pub eventid: String,
    pub useridentityarn: Option<String>,
    pub sourceipaddress: Option<String>,
    pub useragent: Option<String>,
    pub errorcode: Option<String>,
    pub errormessage: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct EventPage {
    pub page: usize,
    #[serde(rename = "perPage")]
    pub per_page: usize,
    pub items: Vec<EventRow>,
    /// Whether a next page has rows.
    pub more: bool,
    /// The same query as SQL, for the SQL page.
    pub sql: String,
}

/// A string as a SQL literal.
fn quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

/// The events an Insight counted, from its start to its end (newest first): its API's
/// management writes or data calls (call rate), or errors of its code (error rate).
pub async fn events(ctx: &SessionContext, s: &InsightSummary, page: usize, per_page: usize, marks: &Marks) -> Result<EventPage> {
    let per_page = per_page.clamp(1, MAX_PER_PAGE);
    let page = page.max(1);
    let end = s.end(marks);
    let ts = |m: i64| lit(ScalarValue::TimestampMicrosecond(Some(m * MICROS_PER_MINUTE), Some("UTC".into())));
    let filter = insights::records::series_rows(&s.recipientaccountid, &s.awsregion, &s.key())
        .and(col("eventtime").gt_eq(ts(s.start_minute)))
        .and(col("eventtime").lt(ts(end)));
    let what = "reading the Insight's events";
    let err = |source| ServeError::Query { context: what.to_owned(), source };
    let df = ctx
        .table("events")
        .await
        .map_err(err)?
        .filter(filter)
        .map_err(err)?
        .select(vec![
            col("eventtime"),
            col("eventid"),
            datafusion::functions::core::expr_fn::get_field(col("useridentity"), "arn").alias("useridentityarn"),
            col("sourceipaddress"),
            col("useragent"),
            col("errorcode"),
            col("errormessage"),
        ])
        .map_err(err)?
        .sort(vec![col("eventtime").sort(false, false), col("eventid").sort(true, false)])
        .map_err(err)?
        .limit((page - 1).saturating_mul(per_page).min(MAX_OFFSET), Some(per_page + 1))
        .map_err(err)?;
    let batches = df.collect().await.map_err(err)?;
    let mut items = Vec::new();
    for b in &batches {
        let time = b.column(0).as_primitive_opt::<TimestampMicrosecondType>().ok_or_else(|| ServeError::Data("eventtime is not a timestamp".into()))?;
        let cols: Vec<_> = (1..7).map(|i| insights::utf8(b.column(i))).collect();
        let get = |c: usize, i: usize| cols[c].is_valid(i).then(|| cols[c].value(i).to_owned());
        for i in 0..b.num_rows() {
            items.push(EventRow {
                eventtime: micros_rfc3339(time.value(i)),
                eventid: get(0, i).unwrap_or_default(),
                useridentityarn: get(1, i),
                sourceipaddress: get(2, i),
                useragent: get(3, i),
                errorcode: get(4, i),
                errormessage: get(5, i),
            });
        }
    }
    let more = items.len() > per_page;
    items.truncate(per_page);
    let data = s.key().category == insights::Category::Data;
    let which = match (&s.insighterrorcode, s.insighttype.as_str()) {
        (Some(e), ERROR_RATE) => format!("errorcode = {}\n  AND ", quote(e)),
        _ if data => String::new(),
        _ => "readonly = false\n  AND ".to_owned(),
    };
    let category = if data {
        "NOT coalesce(managementevent, coalesce(eventcategory, '') IN ('Management', '')) AND coalesce(eventcategory, '') IN ('Data', '')"
    } else {
        "coalesce(managementevent, coalesce(eventcategory, '') IN ('Management', ''))"
    };
    let sql = format!(
        "SELECT eventtime, eventid, useridentity['arn'] AS useridentityarn, sourceipaddress, useragent, errorcode, errormessage\n\
         FROM events\n\
         WHERE recipientaccountid = {} AND awsregion = {}\n  AND eventsource = {} AND eventname = {}\n  AND {which}{category}\n  \
         AND eventtime >= TIMESTAMP '{}' AND eventtime < TIMESTAMP '{}'\n\
         ORDER BY eventtime DESC, eventid",
        quote(&s.recipientaccountid),
        quote(&s.awsregion),
        quote(&s.insighteventsource),
        quote(&s.insighteventname),
        insights::minute_rfc3339(s.start_minute),
        insights::minute_rfc3339(end),
    );
    Ok(EventPage { page, per_page, items, more, sql })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filters_become_parameters_not_sql() {
        let f = InsightFilter { eventname: Some("x' OR '1'='1".into()), direction: Some("spike".into()), ..Default::default() };
        let (clause, params) = filter_clause(&f).unwrap();
        assert_eq!(clause, "WHERE insighteventname = $1 AND insightdirection = $2");
        assert_eq!(params[0], ScalarValue::from("x' OR '1'='1"));
        assert!(filter_clause(&InsightFilter { direction: Some("up".into()), ..Default::default() }).is_err());
        assert!(filter_clause(&InsightFilter { from: Some("yesterday".into()), ..Default::default() }).is_err());
    }

    #[test]
    fn zoom_windows() {
        assert_eq!(Zoom::Insight.window(1000, 1030), (940, 1090));
        assert_eq!(Zoom::Day.window(1000, 1030), (1015 - 720, 1015 + 720));
        assert_eq!(Zoom::parse("week").unwrap(), Zoom::Week);
        assert!(Zoom::parse("year").is_err());
    }

    #[test]
    fn quoting_doubles_quotes() {
        assert_eq!(quote("a'b"), "'a''b'");
    }
}
