//! `prism demo`: the whole product on a generated sample, with no services: generate an
//! archive with labelled anomalies, ingest it, enable Insights, backfill, and score what was
//! found against the labels.

use std::path::{Path, PathBuf};

use crate::insights::{self, Mode, RunOptions, quality::Quality};

#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    #[error("{0} exists and was not made by `prism demo`; choose another --dir or remove it")]
    NotOurs(PathBuf),
    #[error("preparing {path}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error(transparent)]
    Generate(#[from] crate::generate::GenerateError),
    #[error(transparent)]
    Ingest(#[from] crate::ingest::IngestError),
    #[error(transparent)]
    Insights(#[from] insights::InsightsError),
    #[error(transparent)]
    Lake(#[from] crate::lake::LakeError),
    #[error(transparent)]
    Sql(#[from] crate::sql::SqlError),
    #[error("the sample query failed")]
    Query(#[from] datafusion::error::DataFusionError),
    #[error("a worker failed: {0}")]
    Worker(String),
}

#[derive(Debug, Clone)]
pub struct DemoOptions {
    pub dir: PathBuf,
    pub events_per_day: u64,
    pub seed: u64,
    pub days: u32,
    pub accounts: u32,
}

impl DemoOptions {
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        DemoOptions { dir: dir.into(), events_per_day: 20_000, seed: 7, days: 9, accounts: 2 }
    }
}

pub struct DemoReport {
    pub lake: PathBuf,
    pub archive: PathBuf,
    pub quality: Quality,
    pub sample_query: String,
    pub sample_result: String,
}

/// Marks a folder as the demo's own, so a re-run may replace it.
const MARKER: &str = ".prism-demo";

/// The summary query the demo shows (also shipped as `queries/unusual_activity.sql`).
pub const SAMPLE_QUERY: &str = "SELECT insighttype, insighteventname, insightdirection, count(*) AS insights, \
    round(max(insightaverage / greatest(baselineaverage, 0.01)), 1) AS max_ratio \
    FROM insights WHERE insightstate = 'End' GROUP BY 1, 2, 3 ORDER BY insights DESC, insighteventname";

pub async fn run(opts: &DemoOptions, mut step: impl FnMut(String)) -> Result<DemoReport, DemoError> {
    let io = |path: &Path| {
        let path = path.to_owned();
        move |source| DemoError::Io { path, source }
    };
    let dir = &opts.dir;
    if dir.exists() {
        let empty = std::fs::read_dir(dir).map_err(io(dir))?.next().is_none();
        if !empty && !dir.join(MARKER).exists() {
            return Err(DemoError::NotOurs(dir.clone()));
        }
        std::fs::remove_dir_all(dir).map_err(io(dir))?;
    }
    std::fs::create_dir_all(dir).map_err(io(dir))?;
    std::fs::write(dir.join(MARKER), b"made by prism demo; safe to delete\n").map_err(io(dir))?;
    let archive = dir.join("archive");
    let lake_dir = dir.join("lake");

    let mut g = crate::generate::GenerateOptions::new(&archive);
    g.accounts = opts.accounts;
    g.regions = vec!["us-east-1".into()];
    g.days = opts.days;
    g.events_per_day = opts.events_per_day;
    g.seed = opts.seed;
    step(format!("1/4 generating {} days of CloudTrail for {} accounts with {} labelled anomalies in {}", g.days, g.accounts, g.anomalies, archive.display()));
    let generated = tokio::task::spawn_blocking(move || crate::generate::generate(&g)).await.map_err(|e| DemoError::Worker(e.to_string()))??;
    step(format!("    {} events in {} files", generated.events, generated.files));

    step(format!("2/4 ingesting into {}", lake_dir.display()));
    let lake_s = lake_dir.display().to_string();
    let ingest = crate::ingest::IngestOptions::new(vec![archive.display().to_string()], lake_s.clone());
    let summary = crate::ingest(&ingest, Default::default()).await?;
    step(format!("    {} events written, {} duplicates dropped, {:.1} s", summary.records_written, summary.duplicates_dropped, summary.seconds));

    step("3/4 enabling ApiCallRateInsight and ApiErrorRateInsight, backfilling".into());
    let mut lake = crate::Lake::open(&lake_s).await?;
    insights::put_selectors(&mut lake, insights::Selector::management(&[insights::CALL_RATE, insights::ERROR_RATE])).await?;
    let run = insights::run(&RunOptions::new(lake_s.clone(), Mode::Backfill { from: None, to: None }), &Default::default()).await?;
    step(format!("    {} series, {} Insights, {} files, {:.1} s", run.series, run.starts, run.files_written, run.seconds));

    step("4/4 comparing with the labels".into());
    let quality = insights::quality::evaluate(&lake_s, &archive.join("labels.json")).await?;
    let lake = crate::Lake::open(&lake_s).await?;
    let ctx = crate::sql::session(&lake).await?;
    let df = ctx.sql(SAMPLE_QUERY).await?;
    let batches = df.collect().await?;
    let sample_result = datafusion::arrow::util::pretty::pretty_format_batches(&batches).map_err(|e| DemoError::Query(e.into()))?.to_string();
    Ok(DemoReport { lake: lake_dir, archive, quality, sample_query: SAMPLE_QUERY.into(), sample_result })
}
