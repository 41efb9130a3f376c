//! `prism backfill`: ingest an archive, then backfill Insights over it, resumably.

use std::io::IsTerminal;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use clap::Args;

use super::EXIT_PARTIAL;
use super::args::parse_sensitivity;
use super::ingest::IngestArgs;

pub const HELP: &str = "\
Examples:
  eval \"$(aws configure export-credentials --format env)\"   # or AWS_ACCESS_KEY_ID/…; AWS_ENDPOINT_URL for S3-compatible stores
  prism backfill s3://org-trail-bucket/AWSLogs/ --lake ./lake --from 2024-01-01 --to 2024-12-31
  prism backfill s3://org-trail-bucket/AWSLogs/ --lake s3://analytics-bucket/prism-lake --out s3://org-trail-bucket/
  prism backfill ./AWSLogs --lake ./lake --no-insights

Runs `prism ingest`, then `prism insights backfill` over the same days (--from/--to, or all the
data). Insights use the lake's selectors; when none are set, both types (ApiCallRateInsight and
ApiErrorRateInsight) are enabled and saved, as `prism selectors put` would. --no-insights only
ingests.

Interrupted at any point (Ctrl-C, kill, a lost connection), the same command resumes: objects
already committed are not downloaded again, and the Insights backfill is idempotent.

With an AWSLogs/ prefix and --from/--to, only the date folders of the range are listed, for
each account and region found (CloudTrail's AWSLogs/[o-…/]<account>/CloudTrail/<region>/YYYY/MM/DD/).
Throttling (503 SlowDown), server errors and broken connections are retried with backoff
(PRISM_S3_MAX_RETRIES, PRISM_S3_RETRY_TIMEOUT; see docs/s3.md).

Exit status: 0 complete; 3 finished, but some objects could not be read (listed by key; the
next run retries them, and Insights wait for a complete archive) or some records were rejected; 1 the run failed; 2 bad arguments.";

#[derive(Args)]
pub struct BackfillArgs {
    #[command(flatten)]
    pub ingest: IngestArgs,
    /// Where the AWS-format Insights files go (a folder or s3:// URL); default: the lake.
    #[arg(long)]
    pub out: Option<String>,
    /// Only ingest; do not run Insights.
    #[arg(long)]
    pub no_insights: bool,
    /// Insights detector sensitivity: 2 finds weaker deviations, 0.5 only stronger ones.
    #[arg(long, default_value_t = 1.0, value_parser = parse_sensitivity)]
    pub sensitivity: f64,
}

pub async fn run(args: BackfillArgs) -> anyhow::Result<ExitCode> {
    let mut opts = prism::backfill::BackfillOptions::new(super::ingest::options(&args.ingest)?);
    opts.out = args.out;
    opts.params = prism::insights::detect::DetectorParams::with_sensitivity(args.sensitivity);
    if args.no_insights {
        opts.insights = prism::backfill::InsightsChoice::Off;
    }
    let progress = Arc::new(prism::backfill::BackfillProgress::default());
    let show_bar = !args.ingest.quiet && std::io::stderr().is_terminal();
    let bar = show_bar.then(|| super::progress::ingest_bar(progress.ingest.clone(), Some(progress.clone())));
    let result = prism::backfill::backfill(&opts, &progress).await;
    if let Some(bar) = bar {
        bar.finish();
    }
    let summary = result.context("backfill failed")?;
    if args.ingest.json {
        println!("{}", serde_json::to_string_pretty(&summary)?);
    } else if !args.ingest.quiet {
        super::ingest::print_summary(&summary.ingest);
        if !summary.enabled_insights.is_empty() {
            println!("Enabled Insights on the lake: {}", summary.enabled_insights.join(", "));
        }
        if let Some(run) = &summary.insights {
            super::insights::print_run(run);
        }
        if let Some(why) = &summary.insights_not_run {
            println!("Insights not run: {why}");
        }
    }
    if !summary.unread.is_empty() {
        eprintln!("INCOMPLETE: {} objects could not be read (run the same command again to retry them):", summary.unread.len());
        for key in &summary.unread {
            eprintln!("  {key}");
        }
    }
    let done = summary.ingest.dry_run || (summary.complete && summary.ingest.is_clean());
    Ok(if done { ExitCode::SUCCESS } else { ExitCode::from(EXIT_PARTIAL) })
}
