//! `prism ingest`: read CloudTrail archives into the lake.

use std::io::{IsTerminal, Write};
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use chrono::NaiveDate;
use clap::Args;

use prism::ingest::{IngestOptions, IngestProgress, IngestSummary};
use prism::schema::Granularity;
use prism::source::DateRange;

use super::EXIT_PARTIAL;
use super::args::{check_range, parse_date};

pub const HELP: &str = "\
Examples:
  prism ingest ./AWSLogs --lake ./lake
  prism ingest s3://my-trail-bucket/AWSLogs/ --lake ./lake --from 2024-06-01 --to 2024-06-30
  prism ingest exports/*.ndjson.gz --lake ./lake --json > summary.json

Sources are files or folders (read recursively) or s3://bucket/prefix. Files may be .json or
.json.gz holding {\"Records\":[...]}, a bare JSON array, or one record per line.
CloudTrail-Digest, CloudTrail-Insight and other services' files are skipped and counted.

Exit status: 0 all read cleanly; 3 finished, but some records were rejected or some files
were damaged (see the summary and the `rejects` table); 1 the run failed; 2 bad arguments.";

#[derive(Args)]
pub struct IngestArgs {
    /// Files, folders or s3://bucket/prefix URLs to read.
    #[arg(required = true, value_name = "SOURCE")]
    pub sources: Vec<String>,
    /// The lake: a folder, or s3://bucket/prefix. Created when missing.
    #[arg(long, env = "PRISM_LAKE")]
    pub lake: String,
    /// First delivery day to read (YYYY-MM-DD), by the archive's date folders.
    #[arg(long, value_parser = parse_date)]
    pub from: Option<NaiveDate>,
    /// Last day to read (YYYY-MM-DD). The following day's folder is read too, for late deliveries.
    #[arg(long, value_parser = parse_date)]
    pub to: Option<NaiveDate>,
    /// Time partitioning of a new lake: day (the default: fewest files, fastest ingest and
    /// queries; time filters still prune to row groups and pages), hour, or minute (a file per
    /// minute: slower, larger). Fixed once the lake exists.
    #[arg(long, value_parser = clap::value_parser!(Granularity))]
    pub granularity: Option<Granularity>,
    /// Memory for events buffered before they are written, in MiB. The next buffer fills while
    /// one is written, so peak memory grows by twice what this adds. A partition's file stays
    /// open from one buffer to the next, so the buffer's size hardly changes how many files
    /// the lake gets.
    #[arg(long, default_value_t = 128, value_name = "MIB")]
    pub buffer_mb: usize,
    /// Files parsed at once (default: the number of CPUs).
    #[arg(long)]
    pub jobs: Option<usize>,
    /// S3 objects downloaded at once, ahead of the parsers (at most 64 MiB of them held).
    /// Raise it for a distant bucket: each object costs a round trip.
    #[arg(long, default_value_t = prism::ingest::DEFAULT_DOWNLOADS, value_name = "N")]
    pub downloads: usize,
    /// Print the summary as JSON on stdout.
    #[arg(long)]
    pub json: bool,
    /// No progress bar and no summary text (errors still go to stderr).
    #[arg(long, short)]
    pub quiet: bool,
    /// List the sources and compare with the lake's journal, then stop: how many objects and
    /// bytes a run would read, and how long the listing took. Nothing is read or written.
    #[arg(long)]
    pub dry_run: bool,
}

/// The library's options for these arguments (shared with `backfill`).
pub fn options(args: &IngestArgs) -> anyhow::Result<IngestOptions> {
    check_range(args.from, args.to)?;
    let mut opts = IngestOptions::new(args.sources.clone(), args.lake.clone());
    opts.range = DateRange { from: args.from, to: args.to };
    opts.granularity = args.granularity;
    opts.buffer_bytes = args.buffer_mb.max(1) << 20;
    if let Some(j) = args.jobs {
        opts.parallelism = j.max(1);
    }
    opts.downloads = args.downloads.max(1);
    opts.dry_run = args.dry_run;
    Ok(opts)
}

pub async fn run(args: IngestArgs) -> anyhow::Result<ExitCode> {
    let opts = options(&args)?;
    let progress = Arc::new(IngestProgress::default());
    let show_bar = !args.quiet && std::io::stderr().is_terminal();
    let bar = show_bar.then(|| super::progress::ingest_bar(progress.clone(), None));
    let result = prism::ingest(&opts, progress).await;
    if let Some(bar) = bar {
        bar.finish();
    }
    let summary = result.context("ingest failed")?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&summary)?);
    } else if !args.quiet {
        print_summary(&summary);
    }
    Ok(if summary.is_clean() && summary.files_to_retry == 0 { ExitCode::SUCCESS } else { ExitCode::from(EXIT_PARTIAL) })
}

/// The summary as text on stdout (shared with `backfill`).
pub fn print_summary(s: &IngestSummary) {
    let mut out = String::new();
    use std::fmt::Write as _;
    if s.dry_run {
        let _ = writeln!(out, "Dry run for {} ({} partitions): nothing read or written", s.lake, s.granularity);
        let _ = writeln!(
            out,
            "  files: {} listed in {:.1} s, {} already ingested, {} skipped, {} to read ({:.1} MB)",
            s.files_listed,
            s.list_seconds,
            s.files_already_ingested,
            s.files_skipped,
            s.files_to_read,
            s.bytes_to_read as f64 / 1e6
        );
        for (reason, n) in &s.skipped_by_reason {
            let _ = writeln!(out, "         skipped {n}: {reason}");
        }
        print!("{out}");
        return;
    }
    let _ = writeln!(out, "Ingested into {} ({} partitions)", s.lake, s.granularity);
    let _ = writeln!(
        out,
        "  files:   {} listed, {} read, {} already ingested, {} skipped",
        s.files_listed, s.files_read, s.files_already_ingested, s.files_skipped
    );
    for (reason, n) in &s.skipped_by_reason {
        let _ = writeln!(out, "           skipped {n}: {reason}");
    }
    if s.files_damaged > 0 {
        let _ = writeln!(out, "           {} damaged (kept what was readable)", s.files_damaged);
    }
    if s.files_to_retry > 0 {
        let _ = writeln!(out, "           {} could not be read and will be retried next run", s.files_to_retry);
    }
    let _ = writeln!(
        out,
        "  records: {} read, {} written, {} duplicates dropped, {} rejected",
        s.records_read, s.records_written, s.duplicates_dropped, s.records_rejected
    );
    for (reason, n) in &s.rejected_by_reason {
        let _ = writeln!(out, "           {reason}: {n}");
    }
    if s.eventtime_without_zone > 0 {
        let _ = writeln!(out, "           {} kept with an eventTime without a zone, read as UTC (docs/ingest.md#event-times)", s.eventtime_without_zone);
    }
    let a = &s.aggregated;
    if a.files > 0 {
        let _ = writeln!(
            out,
            "  aggregated (AWS's summaries, into aggregated_events): {} files, {} records read, {} written, {} duplicates dropped, {} rejected",
            a.files, a.records_read, a.records_written, a.duplicates, a.records_rejected
        );
        for (reason, n) in &a.rejected_by_reason {
            let _ = writeln!(out, "           {reason}: {n}");
        }
    }
    let _ = writeln!(out, "  output:  {} Parquet files in {} commits", s.files_written, s.commits);
    if s.commit_conflicts > 0 {
        let _ = writeln!(out, "           {} commits reconciled with other writers' first", s.commit_conflicts);
    }
    let _ = writeln!(
        out,
        "  time:    {:.2} s, {:.0} events/s, {:.1} MB/s of JSON",
        s.seconds,
        s.events_per_second,
        if s.seconds > 0.0 { s.json_bytes as f64 / 1e6 / s.seconds } else { 0.0 }
    );
    if !s.problems.is_empty() {
        let _ = writeln!(out, "Problems (also in the `rejects` table):");
        for p in &s.problems {
            let at = p.record_index.map(|i| format!(" record {i}")).unwrap_or_default();
            let _ = writeln!(out, "  {}{at}: {}: {}", p.source, p.reason, p.message);
        }
        if s.problems_not_shown > 0 {
            let _ = writeln!(out, "  … and {} more", s.problems_not_shown);
        }
    }
    let _ = std::io::stdout().write_all(out.as_bytes());
}
