//! `prism demo`: generate a sample, ingest it, backfill Insights and show them beside their labels.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Args;

pub const HELP: &str = "\
Example:
  prism demo                      # about a minute; prints where the lake is
  prism sql --lake /tmp/prism-demo/lake -c \"SELECT * FROM insights\"

Runs on the local machine only: no services, no credentials.";

#[derive(Args)]
pub struct DemoArgs {
    /// Folder for the sample archive and lake (default: a folder under the system temp dir).
    #[arg(long)]
    dir: Option<PathBuf>,
    /// Events per day per account and region.
    #[arg(long, default_value_t = 20_000)]
    events_per_day: u64,
    #[arg(long, default_value_t = 7)]
    seed: u64,
}

pub async fn run(args: DemoArgs) -> anyhow::Result<ExitCode> {
    let dir = args.dir.unwrap_or_else(|| std::env::temp_dir().join("prism-demo"));
    let mut opts = prism::demo::DemoOptions::new(&dir);
    opts.events_per_day = args.events_per_day;
    opts.seed = args.seed;
    let report = prism::demo::run(&opts, |step| eprintln!("{step}")).await?;
    println!();
    super::insights::print_quality(&report.quality);
    println!("\nA sample query (prism sql --lake {} -c \"…\"):\n  {}\n{}", report.lake.display(), report.sample_query, report.sample_result);
    println!("Explore: prism sql --lake {}", report.lake.display());
    Ok(ExitCode::SUCCESS)
}
