//! `prism vacuum`: delete files no version of the lake needs.

use std::process::ExitCode;

use anyhow::Context;
use clap::Args;

use prism::maintain::{VacuumOptions, VacuumSummary};

use super::args::parse_span;

/// A span, or `0` for no retention at all.
fn parse_retention(s: &str) -> Result<chrono::TimeDelta, String> {
    if s.trim() == "0" { Ok(chrono::TimeDelta::zero()) } else { parse_span(s).map(|s| s.delta()) }
}

pub const HELP: &str = "\
Examples:
  prism vacuum --lake ./lake --dry-run
  prism vacuum --lake ./lake
  prism vacuum --lake ./lake --retention 1h

Deletes the data files of every table that the lake's current version does not use: files
replaced by `prism optimize`, and files a killed run wrote but never committed (in a local
lake also the half-written staging files, `<name>#<n>`, it left in a table or under
`AWSLogs/`). Only files that left the table (or were written) longer ago than --retention
go, so a query reading an older version, or a writer about to commit, keeps its files. With a short retention, run it
when no other command is writing to the lake: a running ingest's uncommitted files would be
deleted and its commit would then name missing files.";

#[derive(Args)]
pub struct VacuumArgs {
    /// The lake: a folder, or s3://bucket/prefix.
    #[arg(long, env = "PRISM_LAKE")]
    pub lake: String,
    /// Keep files removed or written more recently than this (15m, 1h, 1d, 1w; 0 keeps none).
    #[arg(long, default_value = "1w", value_parser = parse_retention)]
    pub retention: chrono::TimeDelta,
    /// List what would be deleted; delete nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Print the summary as JSON on stdout.
    #[arg(long)]
    pub json: bool,
    /// No summary text.
    #[arg(long, short)]
    pub quiet: bool,
}

pub async fn run(args: VacuumArgs) -> anyhow::Result<ExitCode> {
    let opts = VacuumOptions { lake: args.lake.clone(), retention: args.retention, dry_run: args.dry_run };
    let summary = prism::maintain::vacuum(&opts).await.context("vacuum failed")?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&summary)?);
    } else if !args.quiet {
        print!("{}", summary_text(&summary));
    }
    Ok(ExitCode::SUCCESS)
}

fn summary_text(s: &VacuumSummary) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    let verb = if s.dry_run { "would delete" } else { "deleted" };
    let total: u64 = s.tables.iter().map(|t| t.files_deleted).sum::<u64>() + s.unfinished_uploads.files_deleted;
    let _ = writeln!(out, "Vacuum of {} (retention {} h): {verb} {total} files in {:.1} s", s.lake, s.retention_hours, s.seconds);
    let unfinished = &s.unfinished_uploads;
    let sections = s.tables.iter().map(|t| (t.table.as_str(), t.files_deleted, &t.examples));
    for (name, deleted, examples) in sections.chain([("unfinished", unfinished.files_deleted, &unfinished.examples)]).filter(|section| section.1 > 0) {
        let _ = writeln!(out, "  {name:<13} {deleted} files");
        if s.dry_run {
            for e in examples {
                let _ = writeln!(out, "    {}", prism::sql::output::for_terminal(e));
            }
        }
    }
    out
}
