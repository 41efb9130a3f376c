//! `prism optimize`: compact a lake's small files.

use std::io::IsTerminal;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use anyhow::Context;
use clap::Args;

use prism::maintain::{OptimizeOptions, OptimizeProgress, OptimizeSummary};

pub const HELP: &str = "\
Examples:
  prism optimize --lake ./lake
  prism optimize --lake ./lake --dry-run
  prism optimize --lake s3://bucket/lake --target-size 128

Each partition of `events` gets its small files (each incremental ingest adds one to the
partitions it touches) combined, in the order they were written and sorted by eventtime,
into files of about --target-size; the other tables are compacted likewise. Every table
is swapped to its new files in atomic commits holding exactly the same rows: queries
running meanwhile see the old files or the new ones. A killed run leaves the lake as its
last commit left it; run it again to finish. The replaced files stay on disk, for queries
of older versions, until `prism vacuum` deletes them. Run no other writer on the lake
meanwhile (ingest, backfill, insights).";

#[derive(Args)]
pub struct OptimizeArgs {
    /// The lake: a folder, or s3://bucket/prefix.
    #[arg(long, env = "PRISM_LAKE")]
    pub lake: String,
    /// Size of a compacted file, in MiB; files at least this large are left alone.
    #[arg(long, default_value_t = prism::maintain::DEFAULT_TARGET_BYTES >> 20, value_name = "MIB")]
    pub target_size: u64,
    /// Report what would be rewritten; write nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Print the summary as JSON on stdout.
    #[arg(long)]
    pub json: bool,
    /// No progress bar and no summary text.
    #[arg(long, short)]
    pub quiet: bool,
}

pub async fn run(args: OptimizeArgs) -> anyhow::Result<ExitCode> {
    let mut opts = OptimizeOptions::new(args.lake.clone());
    opts.target_bytes = args.target_size.max(1) << 20;
    opts.dry_run = args.dry_run;
    let progress = Arc::new(OptimizeProgress::default());
    let bar = (!args.quiet && std::io::stderr().is_terminal()).then(|| {
        let progress = progress.clone();
        super::progress::Bar::start("{spinner} [{elapsed_precise}] {wide_bar} {bytes}/{total_bytes} ETA {eta} {msg}", move |bar| {
            bar.set_length(progress.bytes_total.load(Ordering::Relaxed));
            bar.set_position(progress.bytes_done.load(Ordering::Relaxed));
            bar.set_message(format!("events files {}", progress.files_done.load(Ordering::Relaxed)));
        })
    });
    let result = prism::maintain::optimize(&opts, progress).await;
    if let Some(bar) = bar {
        bar.finish();
    }
    let summary = result.context("optimize failed")?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&summary)?);
    } else if !args.quiet {
        print!("{}", summary_text(&summary));
    }
    Ok(ExitCode::SUCCESS)
}

fn mb(bytes: u64) -> f64 {
    bytes as f64 / 1e6
}

fn summary_text(s: &OptimizeSummary) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    let verb = if s.dry_run { "Would optimize" } else { "Optimized" };
    let _ = writeln!(out, "{verb} {} (files under {} MiB combined) in {:.1} s", s.lake, s.target_bytes >> 20, s.seconds);
    for t in &s.tables {
        if t.files_removed == 0 {
            let _ = writeln!(out, "  {:<13} {} files, {:.1} MB: nothing to combine", t.table, t.files_before, mb(t.bytes_before));
        } else if s.dry_run {
            let _ = writeln!(
                out,
                "  {:<13} {} files, {:.1} MB: {} files ({:.1} MB) to combine",
                t.table,
                t.files_before,
                mb(t.bytes_before),
                t.files_removed,
                mb(t.bytes_removed)
            );
        } else {
            let rows = if t.rows > 0 { format!(", {} rows", t.rows) } else { String::new() };
            let _ = writeln!(
                out,
                "  {:<13} {} files ({:.1} MB) combined into {} ({:.1} MB){rows} in {} commits; now {} files",
                t.table,
                t.files_removed,
                mb(t.bytes_removed),
                t.files_added,
                mb(t.bytes_added),
                t.commits,
                t.files_before - t.files_removed + t.files_added
            );
        }
    }
    if !s.dry_run && s.tables.iter().any(|t| t.files_removed > 0) {
        let _ = writeln!(out, "The replaced files stay until `prism vacuum --lake {}` (after its retention period).", s.lake);
    }
    out
}
