//! `prism insights cost`: what AWS would have charged to analyse the lake's events, per event
//! category and Insights type (spec sections 4 and 6), for comparison with running Prism.

use arrow::array::AsArray;
use chrono::NaiveDate;
use serde::Serialize;

use super::{CALL_RATE, Category, ERROR_RATE, InsightsError, Result};
use crate::lake::Lake;

/// AWS's price per 100,000 events analysed per Insights type: management events, then data
/// events (USD, as of November 2025).
pub const PRICE_PER_100K: [(Category, f64); 2] = [(Category::Management, 0.35), (Category::Data, 0.03)];

/// One line of the bill.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct CostLine {
    pub category: &'static str,
    pub insight_type: &'static str,
    /// Events that type analyses: management call rate, write management events; management
    /// error rate, all management events; data events, all of them for both types.
    pub events_analysed: u64,
    pub usd_per_100k: f64,
    pub usd: f64,
    /// Whether the lake has the type enabled on this category.
    pub enabled: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct Cost {
    pub from: Option<String>,
    pub to: Option<String>,
    pub lines: Vec<CostLine>,
    pub total_usd: f64,
    /// The same for the enabled types only.
    pub enabled_usd: f64,
}

/// Counts the lake's events by category (from the rollups, not the events) in the delivery-free
/// range `[from, to]` of event days, and prices each Insights type on them.
pub async fn cost(lake: &str, from: Option<NaiveDate>, to: Option<NaiveDate>) -> Result<Cost> {
    let lake = Lake::open(lake).await?;
    let ctx = super::session(&lake).await?;
    let mut conds = vec!["kind = 'minute'".to_owned()];
    if let Some(f) = from {
        conds.push(format!("period >= TIMESTAMP '{f}T00:00:00Z'"));
    }
    if let Some(t) = to.and_then(|t| t.succ_opt()) {
        conds.push(format!("period < TIMESTAMP '{t}T00:00:00Z'"));
    }
    let sql = format!(
        "SELECT management, coalesce(sum(calls), 0), coalesce(sum(CASE WHEN readonly = false THEN calls ELSE 0 END), 0) \
         FROM rollups WHERE {} GROUP BY management",
        conds.join(" AND ")
    );
    let q = |e| InsightsError::Query { context: "counting the events analysed".into(), source: e };
    let batches = ctx.sql(&sql).await.map_err(q)?.collect().await.map_err(q)?;
    // (all, writes) per category.
    let mut counts = [(0u64, 0u64); 2];
    for b in &batches {
        let management = b.column(0).as_boolean();
        let all = b.column(1).as_primitive::<arrow::datatypes::Int64Type>();
        let writes = b.column(2).as_primitive::<arrow::datatypes::Int64Type>();
        for i in 0..b.num_rows() {
            let c = Category::of_rollup(management.value(i)) as usize;
            counts[c].0 += all.value(i).max(0) as u64;
            counts[c].1 += writes.value(i).max(0) as u64;
        }
    }
    let enabled = super::enabled(lake.config());
    let mut lines = Vec::new();
    for (category, price) in PRICE_PER_100K {
        let (all, writes) = counts[category as usize];
        for t in [CALL_RATE, ERROR_RATE] {
            let events_analysed = if category == Category::Management && t == CALL_RATE { writes } else { all };
            let usd = (events_analysed as f64 / 100_000.0 * price * 100.0).round() / 100.0;
            lines.push(CostLine {
                category: category.as_str(),
                insight_type: t,
                events_analysed,
                usd_per_100k: price,
                usd,
                enabled: enabled.contains(&(category, t.to_owned())),
            });
        }
    }
    let total_usd = (lines.iter().map(|l| l.usd).sum::<f64>() * 100.0).round() / 100.0;
    let enabled_usd = (lines.iter().filter(|l| l.enabled).map(|l| l.usd).sum::<f64>() * 100.0).round() / 100.0;
    Ok(Cost { from: from.map(|d| d.to_string()), to: to.map(|d| d.to_string()), lines, total_usd, enabled_usd })
}
