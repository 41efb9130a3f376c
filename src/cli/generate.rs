//! `prism generate`: a realistic archive with labelled anomalies.

use std::process::ExitCode;

use chrono::NaiveDate;
use clap::Args;

use super::args::parse_date;

pub const HELP: &str = "\
Example:
  prism generate --out ./sample --accounts 2 --regions us-east-1,eu-west-1 --days 10 \\
      --events-per-day 200000 --anomalies 12 --seed 7
  prism generate --out ./sample --days 14 --events-per-day 20000 \
      --data-events-per-day 200000          # with data events (and data-event anomalies)

Writes ./sample/AWSLogs/<account>/CloudTrail/<region>/YYYY/MM/DD/*.json.gz, one file per account
and region every 5 minutes, and ./sample/labels.json: each anomaly's account, region, API,
insight type, event category, error code, start and end minute and magnitude, and the scheduled
jobs (normal bursts). Anomalies start after a 7-day baseline, so they need --days 8 or more.
The same --seed gives byte-identical output.";

#[derive(Args)]
pub struct GenerateArgs {
    /// Folder to write (created if missing).
    #[arg(long)]
    pub out: std::path::PathBuf,
    /// Number of AWS accounts.
    #[arg(long, default_value_t = 2)]
    pub accounts: u32,
    /// Regions, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "us-east-1,eu-west-1")]
    pub regions: Vec<String>,
    /// Days of history.
    #[arg(long, default_value_t = 10)]
    pub days: u32,
    /// Average events per day for each account and region.
    #[arg(long, default_value_t = 100_000)]
    pub events_per_day: u64,
    /// Anomalies to inject (spikes, drops to zero, error bursts); with data events, half of
    /// them are data-event ones (bulk GetObject by a new identity, a DeleteObject burst, an
    /// AccessDenied burst on a bucket, a busy Invoke going silent).
    #[arg(long, default_value_t = 12)]
    pub anomalies: u32,
    /// Average data events per day for each account and region (S3 GetObject, HeadObject,
    /// PutObject and DeleteObject on four buckets, Lambda Invoke, DynamoDB GetItem, PutItem and
    /// Query), with their own round-the-clock rhythm. 0, the default, writes none, as a trail
    /// without data event selectors.
    #[arg(long, default_value_t = 0)]
    pub data_events_per_day: u64,
    /// Random seed.
    #[arg(long, default_value_t = 7)]
    pub seed: u64,
    /// First day (YYYY-MM-DD, UTC).
    #[arg(long, value_parser = parse_date, default_value = "2024-01-01")]
    pub start: NaiveDate,
    /// Share of events delivered twice.
    #[arg(long, default_value_t = 0.001)]
    pub duplicate_rate: f64,
    /// Share of events delivered late (in the next file).
    #[arg(long, default_value_t = 0.01)]
    pub late_rate: f64,
    /// Print the summary as JSON.
    #[arg(long)]
    pub json: bool,
}

pub async fn run(args: GenerateArgs) -> anyhow::Result<ExitCode> {
    let mut opts = prism::generate::GenerateOptions::new(args.out);
    opts.accounts = args.accounts;
    opts.regions = args.regions;
    opts.days = args.days;
    opts.events_per_day = args.events_per_day;
    opts.anomalies = args.anomalies;
    opts.data_events_per_day = args.data_events_per_day;
    opts.seed = args.seed;
    opts.start = args.start;
    opts.duplicate_rate = args.duplicate_rate;
    opts.late_rate = args.late_rate;
    let summary = tokio::task::spawn_blocking(move || prism::generate::generate(&opts)).await??;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&summary)?);
    } else {
        println!(
            "Generated {} events ({} delivered twice) in {} files, {:.1} MB of JSON, {} anomalies labelled; {:.2} s, {:.0} events/s",
            summary.events,
            summary.duplicates,
            summary.files,
            summary.bytes as f64 / 1e6,
            summary.anomalies,
            summary.seconds,
            summary.events_per_second
        );
    }
    Ok(ExitCode::SUCCESS)
}
