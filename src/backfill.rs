//! `prism backfill`: ingest an archive, then backfill Insights over the same days, in one
//! resumable command.
//!
//! Resuming needs no state of its own: the ingest journals every file it committed (the
//! `ingest_log` table), so a second run lists again and reads only what is not journaled, and
//! an Insights backfill is idempotent (record IDs derive from the Insight, the output files'
//! names from the records). A run killed at any point, rerun, ends where an uninterrupted run
//! would have.

use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};

use serde::Serialize;

use crate::ingest::{self, IngestError, IngestOptions, IngestSummary};
use crate::insights::{self, CALL_RATE, ERROR_RATE, InsightsError, Mode, RunOptions, RunSummary};
use crate::lake::{Lake, LakeError};

#[derive(Debug, thiserror::Error)]
pub enum BackfillError {
    #[error("ingest")]
    Ingest(#[from] IngestError),
    #[error("insights")]
    Insights(#[from] InsightsError),
    #[error(transparent)]
    Lake(#[from] LakeError),
}

/// What a backfill does about Insights.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum InsightsChoice {
    /// The lake's selectors; when none are set, both types are enabled (and saved), since a
    /// backfill is meant to leave the lake with its Insights.
    #[default]
    Default,
    /// Ingest only.
    Off,
}

pub struct BackfillOptions {
    pub ingest: IngestOptions,
    pub insights: InsightsChoice,
    /// Where AWS-format Insights files go (default: the lake).
    pub out: Option<String>,
    pub params: insights::detect::DetectorParams,
    pub settle_minutes: i64,
}

impl BackfillOptions {
    pub fn new(ingest: IngestOptions) -> Self {
        BackfillOptions { ingest, insights: InsightsChoice::Default, out: None, params: Default::default(), settle_minutes: 10 }
    }
}

/// Which step is running, for a progress display.
pub const PHASE_INGEST: u8 = 0;
pub const PHASE_INSIGHTS: u8 = 1;

/// Live counters of both steps, polled by a progress display.
#[derive(Debug, Default)]
pub struct BackfillProgress {
    pub phase: AtomicU8,
    pub ingest: Arc<ingest::IngestProgress>,
    pub insights: insights::InsightsProgress,
}

#[derive(Debug, Default, Serialize)]
pub struct BackfillSummary {
    pub ingest: IngestSummary,
    /// None when Insights were off.
    pub insights: Option<RunSummary>,
    /// Why the Insights step did not run, when it did not.
    pub insights_not_run: Option<String>,
    /// Insights types this run enabled on the lake (none were set).
    pub enabled_insights: Vec<String>,
    /// Objects that could not be read despite retries (the next run tries them again).
    pub unread: Vec<String>,
    /// True when every listed object was read and the Insights ran.
    pub complete: bool,
}

/// Runs the ingest, then the Insights backfill over `--from/--to` (or all the data).
pub async fn backfill(opts: &BackfillOptions, progress: &BackfillProgress) -> Result<BackfillSummary, BackfillError> {
    progress.phase.store(PHASE_INGEST, Ordering::Relaxed);
    let ingest = ingest::ingest(&opts.ingest, progress.ingest.clone()).await?;
    let mut summary = BackfillSummary { unread: ingest.unread.clone(), ingest, ..Default::default() };
    if opts.ingest.dry_run {
        summary.insights_not_run = Some("dry run".into());
        return Ok(summary);
    }
    if opts.insights == InsightsChoice::Off {
        summary.complete = summary.unread.is_empty();
        return Ok(summary);
    }
    if !summary.unread.is_empty() {
        // Insights over a partial archive would record rates that are not the real ones; the
        // next run reads the missing objects and then analyses.
        summary.insights_not_run = Some("some objects could not be read; run the same command again".into());
        return Ok(summary);
    }
    let mut lake = Lake::open(&opts.ingest.lake).await?;
    if insights::selectors_of(lake.config()).is_empty() {
        insights::put_selectors(&mut lake, insights::Selector::management(&[CALL_RATE, ERROR_RATE])).await?;
        summary.enabled_insights = vec![CALL_RATE.to_owned(), ERROR_RATE.to_owned()];
    }
    drop(lake);
    progress.phase.store(PHASE_INSIGHTS, Ordering::Relaxed);
    let range = opts.ingest.range;
    let mut run = RunOptions::new(opts.ingest.lake.clone(), Mode::Backfill { from: range.from, to: range.to });
    run.out = opts.out.clone();
    run.params = opts.params;
    run.settle_minutes = opts.settle_minutes;
    summary.insights = Some(insights::run(&run, &progress.insights).await?);
    summary.complete = true;
    Ok(summary)
}
