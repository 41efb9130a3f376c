//! Scores found Insights against a generator's `labels.json`: recall, precision and false
//! Insights per 100 API-days (docs/insights.md, "Detector quality").

use std::collections::HashSet;
use std::path::Path;

use arrow::array::{Array, AsArray};
use chrono::DateTime;
use datafusion::prelude::SessionContext;
use serde::Serialize;

use super::{InsightsError, Result};
use crate::generate::{Label, Labels};
use crate::lake::Lake;

/// Minutes of slack either side of a label when matching an Insight to it.
const SLACK_MINUTES: i64 = 5;

/// One Insight as found (Start and, when closed, End).
#[derive(Debug, Clone, Serialize)]
pub struct Found {
    /// `Management` or `Data`.
    pub category: String,
    pub account: String,
    pub region: String,
    pub insight_type: String,
    pub event_source: String,
    pub event_name: String,
    pub error_code: Option<String>,
    pub direction: String,
    pub start: String,
    pub end: Option<String>,
    pub baseline_average: f64,
    pub insight_average: f64,
    /// The label it matches, if any.
    pub label: Option<u32>,
    /// Unmatched, at the time of a labelled scheduled job.
    pub scheduled_job: bool,
    #[serde(skip)]
    start_minute: i64,
    #[serde(skip)]
    end_minute: i64,
}

/// The scores.
#[derive(Debug, Clone, Serialize)]
pub struct Quality {
    pub labels: usize,
    /// Labels the targets count: spikes of 5× or more and drops, lasting 3 minutes or more,
    /// and error bursts of 3 minutes or more.
    pub eligible: usize,
    pub eligible_found: usize,
    pub recall: f64,
    /// Over all labels, eligible or not.
    pub all_found: usize,
    pub insights: usize,
    pub true_insights: usize,
    pub precision: f64,
    pub false_insights: usize,
    pub scheduled_job_flags: usize,
    pub api_days: f64,
    pub false_per_100_api_days: f64,
    /// The same scores for each event category with labels or Insights.
    pub by_category: Vec<CategoryQuality>,
    pub missed: Vec<Label>,
    pub found: Vec<Found>,
}

/// The scores of one event category.
#[derive(Debug, Clone, Serialize)]
pub struct CategoryQuality {
    pub category: String,
    pub labels: usize,
    pub eligible: usize,
    pub eligible_found: usize,
    pub recall: f64,
    pub insights: usize,
    pub true_insights: usize,
    pub precision: f64,
    pub false_insights: usize,
    pub api_days: f64,
    pub false_per_100_api_days: f64,
}

fn minute(s: &str) -> Result<i64> {
    DateTime::parse_from_rfc3339(s).map(|t| t.timestamp().div_euclid(60)).map_err(|source| InsightsError::LabelTime { time: s.to_owned(), source })
}

/// Whether a label counts toward the recall target.
/// Spikes of 5× or more and error bursts lasting 3 minutes or more; drops that silence at least
/// [`crate::generate::MIN_DROP_CALLS`] expected calls (a tiny archive's quiet APIs cannot
/// make a silence that differs from chance).
pub fn eligible(l: &Label) -> Result<bool> {
    let minutes = minute(&l.end)? - minute(&l.start)?;
    let loud_enough = match l.kind.as_str() {
        "spike" => l.magnitude >= 5.0,
        "drop" => l.expected_calls.is_none_or(|c| c >= crate::generate::MIN_DROP_CALLS),
        _ => true,
    };
    Ok(minutes >= 3 && loud_enough)
}

/// Reads the Insights of the lake at `lake` and scores them against `labels`.
pub async fn evaluate(lake: &str, labels: &Path) -> Result<Quality> {
    let text = std::fs::read_to_string(labels).map_err(|source| InsightsError::Io { context: format!("reading {}", labels.display()), source })?;
    let file: Labels = serde_json::from_str(&text).map_err(|source| InsightsError::Labels { path: labels.display().to_string(), source })?;
    let lake = Lake::open(lake).await?;
    let ctx = super::session(&lake).await?;
    let mut found = read_found(&ctx).await?;
    let mut matched_labels: HashSet<u32> = HashSet::new();
    for f in &mut found {
        for l in &file.anomalies {
            // An error burst on a write API is also a burst of write calls: the call-rate
            // Insight it causes is a true one.
            let same_type = l.insight_type == f.insight_type || (l.kind == "error_burst" && f.insight_type == super::CALL_RATE && f.direction == "spike");
            let same = l.account == f.account
                && l.category == f.category
                && l.region == f.region
                && same_type
                && l.event_source == f.event_source
                && l.event_name == f.event_name
                && (f.insight_type != super::ERROR_RATE || l.error_code == f.error_code);
            if same && f.start_minute < minute(&l.end)? + SLACK_MINUTES && minute(&l.start)? - SLACK_MINUTES < f.end_minute {
                f.label = Some(l.id);
                matched_labels.insert(l.id);
                break;
            }
        }
        if f.label.is_none() {
            let of_day = f.start_minute.rem_euclid(1440);
            f.scheduled_job = file.scheduled_jobs.iter().any(|j| {
                let at = job_minute(&j.at);
                j.event_source == f.event_source
                    && j.event_name == f.event_name
                    && at.is_some_and(|(h, m)| match h {
                        Some(h) => (of_day - (h * 60 + m)).abs() <= SLACK_MINUTES,
                        None => (of_day % 60 - m).abs() <= SLACK_MINUTES,
                    })
            });
        }
    }
    let mut eligible_n = 0;
    let mut eligible_found = 0;
    let mut missed = Vec::new();
    for l in &file.anomalies {
        let e = eligible(l)?;
        eligible_n += e as usize;
        if matched_labels.contains(&l.id) {
            eligible_found += e as usize;
        } else {
            missed.push(l.clone());
        }
    }
    let true_insights = found.iter().filter(|f| f.label.is_some()).count();
    let false_insights = found.len() - true_insights;
    let days_by_category = api_days(&ctx, &super::enabled(lake.config())).await?;
    let api_days: f64 = days_by_category.iter().map(|d| d.1).sum();
    let mut by_category = Vec::new();
    for c in super::Category::ALL {
        let c = c.as_str();
        let labels: Vec<&Label> = file.anomalies.iter().filter(|l| l.category == c).collect();
        let found: Vec<&Found> = found.iter().filter(|f| f.category == c).collect();
        let days = days_by_category.iter().find(|d| d.0 == c).map_or(0.0, |d| d.1);
        if labels.is_empty() && found.is_empty() && days == 0.0 {
            continue;
        }
        let (mut eligible_n, mut eligible_found) = (0, 0);
        for l in &labels {
            let e = eligible(l)?;
            eligible_n += e as usize;
            eligible_found += (e && matched_labels.contains(&l.id)) as usize;
        }
        let true_insights = found.iter().filter(|f| f.label.is_some()).count();
        let false_insights = found.len() - true_insights;
        by_category.push(CategoryQuality {
            category: c.to_owned(),
            labels: labels.len(),
            eligible: eligible_n,
            eligible_found,
            recall: if eligible_n == 0 { 1.0 } else { eligible_found as f64 / eligible_n as f64 },
            insights: found.len(),
            true_insights,
            precision: if found.is_empty() { 1.0 } else { true_insights as f64 / found.len() as f64 },
            false_insights,
            api_days: days,
            false_per_100_api_days: if days > 0.0 { 100.0 * false_insights as f64 / days } else { 0.0 },
        });
    }
    Ok(Quality {
        labels: file.anomalies.len(),
        eligible: eligible_n,
        eligible_found,
        recall: if eligible_n == 0 { 1.0 } else { eligible_found as f64 / eligible_n as f64 },
        all_found: matched_labels.len(),
        insights: found.len(),
        true_insights,
        precision: if found.is_empty() { 1.0 } else { true_insights as f64 / found.len() as f64 },
        false_insights,
        scheduled_job_flags: found.iter().filter(|f| f.scheduled_job).count(),
        api_days,
        false_per_100_api_days: if api_days > 0.0 { 100.0 * false_insights as f64 / api_days } else { 0.0 },
        by_category,
        missed,
        found,
    })
}

/// `HH:MM` (daily) or `*:MM` (hourly).
fn job_minute(at: &str) -> Option<(Option<i64>, i64)> {
    let (h, m) = at.split_once(':')?;
    let m = m.parse().ok()?;
    Some((if h == "*" { None } else { Some(h.parse().ok()?) }, m))
}

async fn read_found(ctx: &SessionContext) -> Result<Vec<Found>> {
    let sql = "SELECT s.recipientaccountid, s.awsregion, s.insighttype, s.insighteventsource, s.insighteventname, \
               s.insighterrorcode, s.insightdirection, s.eventtime, e.eventtime, s.baselineaverage, s.insightaverage, \
               coalesce(s.sourceeventcategory, 'Management') \
               FROM insights s LEFT JOIN insights e ON e.sharedeventid = s.sharedeventid AND e.insightstate = 'End' \
               WHERE s.insightstate = 'Start' ORDER BY s.eventtime, s.insighteventname";
    let q = |e| InsightsError::Query { context: "reading the insights table".into(), source: e };
    let batches = ctx.sql(sql).await.map_err(q)?.collect().await.map_err(q)?;
    let mut out = Vec::new();
    for b in batches {
        let text: Vec<arrow::array::StringArray> = (0..7).map(|i| super::utf8(b.column(i))).collect();
        let s = |i: usize| &text[i];
        let t = |i: usize| b.column(i).as_primitive::<arrow::datatypes::TimestampMicrosecondType>();
        let f = |i: usize| b.column(i).as_primitive::<arrow::datatypes::Float64Type>();
        for r in 0..b.num_rows() {
            let start_minute = t(7).value(r).div_euclid(60_000_000);
            let end_minute = if t(8).is_valid(r) { t(8).value(r).div_euclid(60_000_000) } else { i64::MAX / 2 };
            out.push(Found {
                category: super::utf8(b.column(11)).value(r).to_owned(),
                account: s(0).value(r).to_owned(),
                region: s(1).value(r).to_owned(),
                insight_type: s(2).value(r).to_owned(),
                event_source: s(3).value(r).to_owned(),
                event_name: s(4).value(r).to_owned(),
                error_code: s(5).is_valid(r).then(|| s(5).value(r).to_owned()),
                direction: s(6).value(r).to_owned(),
                start: super::minute_rfc3339(start_minute),
                end: t(8).is_valid(r).then(|| super::minute_rfc3339(end_minute)),
                baseline_average: f(9).value(r),
                insight_average: f(10).value(r),
                label: None,
                scheduled_job: false,
                start_minute,
                end_minute,
            });
        }
    }
    Ok(out)
}

/// API-days of analysed traffic, per event category with Insights enabled: for each account
/// and region, the APIs seen times the days analysed after the warm-up.
async fn api_days(ctx: &SessionContext, enabled: &super::Enabled) -> Result<Vec<(&'static str, f64)>> {
    let mut out = Vec::new();
    for c in super::Category::ALL {
        if !enabled.iter().any(|(e, _)| *e == c) {
            continue;
        }
        let of_category = if c == super::Category::Management { "management" } else { "NOT management" };
        let sql = format!(
            "WITH apis AS (SELECT recipientaccountid, awsregion, count(DISTINCT eventsource || ' ' || eventname) AS n \
             FROM rollups WHERE kind = 'minute' AND {of_category} GROUP BY 1, 2), \
             days AS (SELECT recipientaccountid, awsregion, \
             CAST(max(analysedto) - min(analysedfrom) AS BIGINT) AS span FROM insight_runs GROUP BY 1, 2) \
             SELECT CAST(a.n AS DOUBLE) * CAST(d.span AS DOUBLE) / 86400000000.0 FROM apis a JOIN days d \
             ON a.recipientaccountid = d.recipientaccountid AND a.awsregion = d.awsregion"
        );
        let q = |e| InsightsError::Query { context: "counting API-days".into(), source: e };
        let batches = ctx.sql(&sql).await.map_err(q)?.collect().await.map_err(q)?;
        let mut total = 0.0;
        for b in batches {
            let col = b.column(0).as_primitive::<arrow::datatypes::Float64Type>();
            total += col.iter().flatten().sum::<f64>();
        }
        out.push((c.as_str(), total));
    }
    Ok(out)
}
