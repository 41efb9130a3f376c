//! `prism insights backfill | run | evaluate | graph`: find unusual API call and error rates.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use chrono::{DateTime, NaiveDate, Utc};

use super::args::{check_range, parse_date, parse_sensitivity, parse_time};
use clap::{Args, Subcommand};

use prism::insights::detect::DetectorParams;
use prism::insights::{self, Mode, RunOptions, RunSummary};

#[derive(Subcommand)]
pub enum InsightsCommand {
    /// Analyse history in one pass (default: all the data) and write Insights.
    #[command(after_help = "\
Examples:
  prism insights backfill --lake ./lake
  prism insights backfill --lake ./lake --from 2024-01-01 --to 2024-06-30 --out s3://bucket/

Writes the `insights` table and AWS-format files under <out>/AWSLogs/<account>/CloudTrail-Insight/
(<out> defaults to the lake). Records have IDs derived from the Insight, so re-running adds
nothing new. The minutes analysed are recorded in `insight_runs`; `prism insights run` goes on
from there.")]
    Backfill {
        #[command(flatten)]
        common: RunArgs,
        /// First day analysed (UTC); default: the first day with data.
        #[arg(long, value_parser = parse_date)]
        from: Option<NaiveDate>,
        /// Last day analysed (UTC, inclusive); default: up to the newest data.
        #[arg(long, value_parser = parse_date)]
        to: Option<NaiveDate>,
    },
    /// Analyse only the minutes not analysed yet, carrying open Insights over.
    #[command(after_help = "\
Examples:
  prism ingest s3://trail-bucket/AWSLogs/ --lake ./lake && prism insights run --lake ./lake   # from cron

The newest --settle-minutes of data are left for the next run, since their events may still be
arriving. An Insight still open at the end has a Start and no End yet; its End comes in a later
run.")]
    Run {
        #[command(flatten)]
        common: RunArgs,
        /// Analyse up to this time only (RFC 3339), e.g. to process history in chunks.
        #[arg(long, value_parser = parse_time)]
        until: Option<DateTime<Utc>>,
    },
    /// Score the lake's Insights against a generator's labels.json: recall, precision, false rate.
    #[command(after_help = "\
Example:
  prism generate --out ./sample --days 14 && prism ingest ./sample --lake ./lake
  prism selectors put --lake ./lake --insight-selectors '[{\"InsightType\":\"ApiCallRateInsight\"},{\"InsightType\":\"ApiErrorRateInsight\"}]'
  prism insights backfill --lake ./lake && prism insights evaluate --lake ./lake --labels ./sample/labels.json")]
    Evaluate {
        #[arg(long)]
        lake: String,
        #[arg(long)]
        labels: PathBuf,
        /// Print the full report as JSON.
        #[arg(long)]
        json: bool,
    },
    /// What AWS would charge to analyse the lake's events, per event category and Insights
    /// type ($0.35 per 100,000 management events and $0.03 per 100,000 data events analysed,
    /// per type).
    #[command(after_help = "\
Examples:
  prism insights cost --lake ./lake
  prism insights cost --lake ./lake --from 2024-01-01 --to 2024-01-31 --json

Events analysed, as AWS counts them: call rate on management events analyses the write
management events, error rate all management events, and both types on data events all data
events. Counted from the lake's rollups (by the events' own days), so it is quick on any lake.
The `enabled` column marks the types the lake's selectors enable; Prism itself charges nothing.")]
    Cost {
        #[arg(long)]
        lake: String,
        /// First day of events counted (YYYY-MM-DD, UTC).
        #[arg(long, value_parser = parse_date)]
        from: Option<NaiveDate>,
        /// Last day of events counted (inclusive).
        #[arg(long, value_parser = parse_date)]
        to: Option<NaiveDate>,
        /// Print the bill as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Draw one Insight's chart (the console's details graph) as an SVG or PNG file.
    #[command(after_help = "\
Examples:
  prism insights graph 5f1c…-… --lake ./lake -o insight.svg
  prism insights graph 5f1c…-… --lake ./lake --zoom day -o day.png
  prism sql --lake ./lake -c \"SELECT DISTINCT sharedeventid FROM insights\"     # the IDs

The chart shows the API's calls (or that error code's errors) per minute, the detector's
expected level (dashed) and every Insight of that API in the window as a band, from the
per-minute rollups. It is the same drawing as the console's details page.")]
    Graph {
        /// The Insight's sharedEventID.
        shared_event_id: String,
        #[arg(long)]
        lake: String,
        /// Output file: .svg, or .png (drawn at twice the size with the machine's fonts); `-`
        /// writes SVG to stdout.
        #[arg(short, long, default_value = "insight.svg")]
        output: PathBuf,
        /// The window: insight (an hour either side of it), day or week.
        #[arg(long, default_value = "insight")]
        zoom: String,
    },
}

#[derive(Args)]
pub struct RunArgs {
    #[arg(long)]
    lake: String,
    /// Where the AWS-format Insights files go (a folder or s3:// URL); default: the lake.
    #[arg(long)]
    out: Option<String>,
    /// Detector sensitivity: 2 finds weaker deviations, 0.5 only stronger ones.
    #[arg(long, default_value_t = 1.0, value_parser = parse_sensitivity)]
    sensitivity: f64,
    /// Newest minutes of data left for a later run.
    #[arg(long, default_value_t = 10)]
    settle_minutes: i64,
    /// Print the summary as JSON.
    #[arg(long)]
    json: bool,
    /// No progress bar and no summary.
    #[arg(long)]
    quiet: bool,
}

pub async fn run(cmd: InsightsCommand) -> anyhow::Result<ExitCode> {
    let (common, mode) = match cmd {
        InsightsCommand::Backfill { common, from, to } => {
            check_range(from, to)?;
            (common, Mode::Backfill { from, to })
        }
        InsightsCommand::Run { common, until } => (common, Mode::Incremental { until }),
        InsightsCommand::Evaluate { lake, labels, json } => return evaluate(&lake, &labels, json).await,
        InsightsCommand::Cost { lake, from, to, json } => {
            check_range(from, to)?;
            return cost(&lake, from, to, json).await;
        }
        InsightsCommand::Graph { shared_event_id, lake, output, zoom } => return graph(&lake, &shared_event_id, &zoom, &output).await,
    };
    let mut opts = RunOptions::new(common.lake, mode);
    opts.out = common.out;
    opts.params = DetectorParams::with_sensitivity(common.sensitivity);
    opts.settle_minutes = common.settle_minutes;
    let summary = run_with_progress(&opts, !common.quiet).await?;
    if common.json {
        println!("{}", serde_json::to_string_pretty(&summary)?);
    } else if !common.quiet {
        print_run(&summary);
    }
    Ok(ExitCode::SUCCESS)
}

async fn cost(lake: &str, from: Option<NaiveDate>, to: Option<NaiveDate>, json: bool) -> anyhow::Result<ExitCode> {
    let c = insights::cost::cost(lake, from, to).await?;
    if json {
        println!("{}", serde_json::to_string_pretty(&c)?);
        return Ok(ExitCode::SUCCESS);
    }
    let range = match (&c.from, &c.to) {
        (None, None) => "all the lake's events".to_owned(),
        (f, t) => format!("events from {} to {}", f.as_deref().unwrap_or("the first day"), t.as_deref().unwrap_or("the last day")),
    };
    println!("What AWS CloudTrail Insights would charge for {range}:");
    println!("  {:<10} {:<20} {:>16} {:>10} {:>10}  enabled", "category", "type", "events analysed", "$/100k", "USD");
    for l in &c.lines {
        println!(
            "  {:<10} {:<20} {:>16} {:>10.2} {:>10.2}  {}",
            l.category,
            l.insight_type,
            l.events_analysed,
            l.usd_per_100k,
            l.usd,
            if l.enabled { "yes" } else { "no" }
        );
    }
    println!("  total {:.2} USD for every type on every category; {:.2} USD for the enabled ones. Prism: 0.", c.total_usd, c.enabled_usd);
    Ok(ExitCode::SUCCESS)
}

/// Runs Insights with a progress bar on a terminal.
pub async fn run_with_progress(opts: &RunOptions, show: bool) -> anyhow::Result<RunSummary> {
    let progress = Arc::new(insights::InsightsProgress::default());
    let bar = (show && std::io::stderr().is_terminal()).then(|| {
        let progress = progress.clone();
        super::progress::Bar::start("{spinner} [{elapsed_precise}] {wide_bar} series {pos}/{len} {msg}", move |bar| {
            bar.set_length(progress.series_total.load(Ordering::Relaxed));
            bar.set_position(progress.series_done.load(Ordering::Relaxed));
            bar.set_message(format!("· {} minutes scored · {} Insights", progress.minutes.load(Ordering::Relaxed), progress.found.load(Ordering::Relaxed)));
        })
    });
    let result = insights::run(opts, &progress).await;
    drop(bar);
    Ok(result?)
}

pub fn print_run(s: &RunSummary) {
    if s.insight_types.is_empty() {
        println!("Insights are not enabled on this lake; nothing to do. Enable them with:");
        println!(
            "  prism selectors put --lake LAKE --insight-selectors '[{{\"InsightType\":\"ApiCallRateInsight\"}},{{\"InsightType\":\"ApiErrorRateInsight\"}}]'"
        );
        return;
    }
    println!("Insights ({})", s.insight_types.join(", "));
    match (&s.analysed_from, &s.analysed_to) {
        (Some(f), Some(t)) => println!("  analysed:  {f} to {t}, {} account/regions, {} series, {} series-minutes", s.account_regions, s.series, s.minutes),
        _ => println!("  analysed:  nothing new (all minutes up to the newest data, less --settle-minutes, were analysed before)"),
    }
    println!("  found:     {} started, {} ended, {} still open", s.starts, s.ends, s.open);
    println!("  written:   {} new records, {} files", s.records_written, s.files_written);
    if !s.skipped_accounts.is_empty() {
        let names = prism::sql::output::for_terminal(&s.skipped_accounts.join(", ")).into_owned();
        println!("  skipped:   {} account/regions with unsafe names: {names}", s.skipped_accounts.len());
    }
    println!("  time:      {:.2} s", s.seconds);
}

async fn graph(lake: &str, id: &str, zoom: &str, output: &std::path::Path) -> anyhow::Result<ExitCode> {
    let svg = prism::serve::graph(lake, id, zoom).await?;
    if output.as_os_str() == "-" {
        print!("{svg}");
        return Ok(ExitCode::SUCCESS);
    }
    let body = match output.extension().and_then(|e| e.to_str()).map(str::to_ascii_lowercase).as_deref() {
        Some("svg") => svg.into_bytes(),
        Some("png") => prism::serve::chart::png(&svg)?,
        _ => anyhow::bail!("`{}`: name the file *.svg or *.png (or - for SVG on stdout)", output.display()),
    };
    std::fs::write(output, body).map_err(|e| anyhow::anyhow!("writing {}: {e}", output.display()))?;
    eprintln!("wrote {}", output.display());
    Ok(ExitCode::SUCCESS)
}

async fn evaluate(lake: &str, labels: &std::path::Path, json: bool) -> anyhow::Result<ExitCode> {
    let q = insights::quality::evaluate(lake, labels).await?;
    if json {
        println!("{}", serde_json::to_string_pretty(&q)?);
    } else {
        print_quality(&q);
    }
    Ok(ExitCode::SUCCESS)
}

pub fn print_quality(q: &insights::quality::Quality) {
    println!("Insights found, beside the labels:");
    for f in &q.found {
        let what = match (&f.label, f.scheduled_job) {
            (Some(id), _) => format!("label #{id}"),
            (None, true) => "FALSE (a scheduled job)".to_owned(),
            (None, false) => "FALSE".to_owned(),
        };
        println!(
            "  {} → {}  {}/{} {} {}{} {} baseline {:.3}/min, insight {:.3}/min  [{what}]",
            f.start,
            f.end.as_deref().unwrap_or("(open)"),
            f.account,
            f.region,
            f.insight_type,
            f.event_name,
            f.error_code.as_deref().map(|e| format!(" ({e})")).unwrap_or_default(),
            f.direction,
            f.baseline_average,
            f.insight_average,
        );
    }
    for l in &q.missed {
        println!(
            "  missed label #{} {}{} {}/{} {} {} {}–{} magnitude {}{}",
            l.id,
            l.kind,
            if l.category == "Management" { String::new() } else { format!(" ({})", l.category) },
            l.account,
            l.region,
            l.insight_type,
            l.event_name,
            l.start,
            l.end,
            l.magnitude,
            if insights::quality::eligible(l).unwrap_or(false) { "" } else { " (below the target's size)" }
        );
    }
    println!(
        "Recall {:.2} ({} of {} labels of 5× or more, drops and error bursts, 3 minutes or longer; {} of {} labels in all)",
        q.recall, q.eligible_found, q.eligible, q.all_found, q.labels
    );
    println!("Precision {:.2} ({} of {} Insights match a label)", q.precision, q.true_insights, q.insights);
    println!(
        "False Insights {} over {:.0} API-days: {:.2} per 100 API-days; {} at scheduled jobs",
        q.false_insights, q.api_days, q.false_per_100_api_days, q.scheduled_job_flags
    );
    if q.by_category.len() > 1 {
        for c in &q.by_category {
            println!(
                "  {} events: recall {:.2} ({} of {}), precision {:.2} ({} of {}), {:.2} false per 100 API-days ({} over {:.0})",
                c.category,
                c.recall,
                c.eligible_found,
                c.eligible,
                c.precision,
                c.true_insights,
                c.insights,
                c.false_per_100_api_days,
                c.false_insights,
                c.api_days
            );
        }
    }
}
