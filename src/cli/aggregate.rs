//! `prism aggregate backfill | run`: AWS's aggregated events (5-minute summaries of data
//! events) computed from the lake.

use std::process::ExitCode;

use chrono::NaiveDate;
use clap::{Args, Subcommand};

use super::args::{check_range, parse_date};
use prism::aggregate::{self, AggregateOptions, AggregateSummary, Mode};

#[derive(Subcommand)]
pub enum AggregateCommand {
    /// Summarise history in one pass (default: all the data events).
    #[command(after_help = "\
Examples:
  prism aggregate backfill --lake ./lake
  prism aggregate backfill --lake ./lake --from 2024-01-01 --to 2024-01-31
  prism sql --lake ./lake -c \"SELECT * FROM aggregated_events WHERE template = 'RESOURCE_ACCESS' ORDER BY windowstart DESC LIMIT 20\"

Writes the `aggregated_events` table and AWS-format files under
<out>/AWSLogs/<account>/CloudTrail-Aggregated/<region>/ (<out> defaults to the lake), for the
templates `prism event-config put` configured. Record IDs derive from the record, so re-running
adds nothing twice.")]
    Backfill {
        #[command(flatten)]
        common: CommonArgs,
        /// First day of events (YYYY-MM-DD, UTC).
        #[arg(long, value_parser = parse_date)]
        from: Option<NaiveDate>,
        /// Last day of events (inclusive).
        #[arg(long, value_parser = parse_date)]
        to: Option<NaiveDate>,
    },
    /// Summarise the windows after the last one emitted (for cron or after each ingest).
    #[command(after_help = "\
Example:
  prism ingest s3://trail/AWSLogs/ --lake ./lake && prism aggregate run --lake ./lake

A window once emitted is not computed again: an event that arrives later for it is in no
record, as with AWS, which summarises what was delivered. --settle-minutes (default 10) holds
back the newest windows until later files can no longer add to them.")]
    Run {
        #[command(flatten)]
        common: CommonArgs,
    },
}

#[derive(Args)]
pub struct CommonArgs {
    #[arg(long)]
    lake: String,
    /// Where the AWS-format files go (a folder or s3:// URL); default: the lake.
    #[arg(long)]
    out: Option<String>,
    /// Minutes before the newest data event that are not summarised yet.
    #[arg(long, default_value_t = 10)]
    settle_minutes: i64,
    /// Events counted at once at most, which bounds memory (about 100 bytes per event at
    /// worst): a day and region holding more is counted in as many passes over its files.
    #[arg(long, default_value_t = aggregate::EVENTS_PER_PASS, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    max_events_per_pass: u64,
    /// Print the summary as JSON.
    #[arg(long)]
    json: bool,
}

pub async fn run(cmd: AggregateCommand) -> anyhow::Result<ExitCode> {
    let (common, mode) = match cmd {
        AggregateCommand::Backfill { common, from, to } => {
            check_range(from, to)?;
            (common, Mode::Backfill { from, to })
        }
        AggregateCommand::Run { common } => (common, Mode::Incremental),
    };
    let mut opts = AggregateOptions::new(common.lake, mode);
    opts.out = common.out;
    opts.settle_minutes = common.settle_minutes;
    opts.events_per_pass = common.max_events_per_pass;
    let summary = aggregate::run(&opts).await?;
    if common.json {
        println!("{}", serde_json::to_string_pretty(&summary)?);
    } else {
        print(&summary);
    }
    Ok(ExitCode::SUCCESS)
}

fn print(s: &AggregateSummary) {
    if s.templates.is_empty() {
        println!("Aggregated events are not configured on this lake; nothing to do. Configure them with:");
        println!("  prism event-config put --lake LAKE --aggregation-configurations '[{{\"EventCategory\":\"Data\",\"Templates\":[\"API_ACTIVITY\"]}}]'");
        return;
    }
    println!("Aggregated events ({})", s.templates.join(", "));
    match (&s.from, &s.to) {
        (Some(f), Some(t)) => println!("  summarised: {f} to {t}, {} account/regions, {} windows with data events", s.account_regions, s.windows),
        _ => println!("  summarised: nothing new (no data events past the last window, less --settle-minutes)"),
    }
    println!("  written:    {} new records ({} stored before), {} files", s.records_written, s.records_existing, s.files);
    if s.records_stored_meanwhile > 0 {
        println!("  meanwhile:  {} records stored by another run at the same time (kept once)", s.records_stored_meanwhile);
    }
    if !s.skipped_accounts.is_empty() {
        let names = prism::sql::output::for_terminal(&s.skipped_accounts.join(", ")).into_owned();
        println!("  skipped:    {} account/regions whose names cannot name a folder: {names}", s.skipped_accounts.len());
    }
    println!("  time:       {:.2} s", s.seconds);
}
