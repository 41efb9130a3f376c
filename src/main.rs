//! `prism`: the command-line layer. It parses arguments, calls the library and prints.

use std::io::{IsTerminal, Write};
use std::process::ExitCode;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use chrono::{DateTime, NaiveDate, Utc};
use clap::{Args, CommandFactory, FromArgMatches, Parser, Subcommand};

use prism::ingest::{IngestOptions, IngestSummary, Progress};
use prism::schedule;
use prism::schema::Granularity;
use prism::sql::OutputFormat;
use tokio_util::sync::CancellationToken;

#[path = "cli/insights.rs"]
mod insights_cmd;
#[path = "cli/progress.rs"]
mod progress_bar;

/// mimalloc: the many short-lived allocations of parsing and small-file writing are markedly
/// cheaper than with the system allocator (the same choice as datafusion-cli).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;
use prism::source::DateRange;

/// Exit codes (README, "Exit codes").
const EXIT_PARTIAL: u8 = 3;

#[derive(Parser)]
#[command(
    name = "prism",
    version,
    about = "CloudTrail archives to a SQL-queryable Parquet lake",
    long_about = "Prism turns AWS CloudTrail log archives into a Parquet lake (Delta tables) that \
                  you can query with SQL.\n\nStart with:\n  prism ingest ./AWSLogs --lake ./lake\n  \
                  prism sql --lake ./lake -c \"SELECT eventname, count(*) FROM events GROUP BY 1 ORDER BY 2 DESC LIMIT 10\""
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Read CloudTrail archives into the lake (only files not ingested before).
    #[command(after_help = "\
Examples:
  prism ingest ./AWSLogs --lake ./lake
  prism ingest s3://my-trail-bucket/AWSLogs/ --lake ./lake --from 2024-06-01 --to 2024-06-30
  prism ingest exports/*.ndjson.gz --lake ./lake --json > summary.json

Sources are files or folders (read recursively) or s3://bucket/prefix. Files may be .json or
.json.gz holding {\"Records\":[...]}, a bare JSON array, or one record per line.
CloudTrail-Digest, CloudTrail-Insight and other services' files are skipped and counted.

Exit status: 0 all read cleanly; 3 finished, but some records were rejected or some files
were damaged (see the summary and the `rejects` table); 1 the run failed; 2 bad arguments.")]
    Ingest(IngestArgs),
    /// Ingest an archive and backfill Insights over it in one resumable command.
    #[command(after_help = "\
Examples:
  export AWS_PROFILE=security-audit      # or AWS_ACCESS_KEY_ID/…; AWS_ENDPOINT_URL for S3-compatible stores
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
(PRISM_S3_MAX_RETRIES, PRISM_S3_RETRY_TIMEOUT; see README, S3).

Exit status: 0 complete; 3 finished, but some objects could not be read (listed by key; the
next run retries them, and Insights wait for a complete archive) or some records were rejected; 1 the run failed; 2 bad arguments.")]
    Backfill(BackfillArgs),
    /// Write a realistic CloudTrail archive with labelled anomalies (labels.json).
    #[command(after_help = "\
Example:
  prism generate --out ./sample --accounts 2 --regions us-east-1,eu-west-1 --days 10 \\
      --events-per-day 200000 --anomalies 12 --seed 7

Writes ./sample/AWSLogs/<account>/CloudTrail/<region>/YYYY/MM/DD/*.json.gz, one file per account
and region every 5 minutes, and ./sample/labels.json: each anomaly's account, region, API,
insight type, error code, start and end minute and magnitude, and the scheduled jobs (normal
bursts). Anomalies start after a 7-day baseline, so they need --days 8 or more.
The same --seed gives byte-identical output.")]
    Generate(GenerateArgs),
    /// Enable or show Insights types (like CloudTrail's Put/GetInsightSelectors).
    #[command(subcommand)]
    Selectors(insights_cmd::SelectorsCommand),
    /// Find unusual API call and error rates: backfill history, run incrementally, evaluate.
    #[command(subcommand)]
    Insights(insights_cmd::InsightsCommand),
    /// Generate a sample, ingest it, backfill Insights and show them beside their labels.
    #[command(after_help = "\
Example:
  prism demo                      # about a minute; prints where the lake is
  prism sql --lake /tmp/prism-demo/lake -c \"SELECT * FROM insights\"

Runs on the local machine only: no services, no credentials.")]
    Demo(insights_cmd::DemoArgs),
    /// Query the lake with SQL: an interactive shell, or statements from -c, -f or stdin.
    #[command(after_help = "\
Tables (every Delta table of the lake, by its folder name):
  events           one row per CloudTrail event (eventtime is a UTC timestamp; see README, Schema)
  ingest_log       the ingest journal: one row per file read and per rejected record
  rejects          view: the rejected records, with file, record index, reason and raw text
  ingested_files   view: the files read, with their counts
Each query reads the latest data: a shell left open sees what `prism ingest` commits meanwhile.
A filter on eventtime reads only the files of that time range.

Interactive (no -c/-f and stdin a terminal): statements end with `;` and may span lines; Tab
completes keywords, tables and columns; Ctrl-C cancels a query; Ctrl-D quits. Meta commands:
  \\d, \\d TABLE, \\timing, \\format table|csv|json|ndjson, \\i FILE, \\q, \\?

Examples:
  prism sql --lake ./lake
  prism sql --lake ./lake -c \"SELECT eventname, count(*) FROM events GROUP BY 1 ORDER BY 2 DESC\"
  prism sql --lake ./lake -f queries/ingest_problems.sql --format csv > problems.csv
  prism sql --lake ./lake --output day.parquet -c \"SELECT * FROM events
      WHERE eventtime >= TIMESTAMP '2024-06-01T00:00:00Z'
        AND eventtime < TIMESTAMP '2024-06-02T00:00:00Z'\"
  echo \"SELECT count(*) FROM rejects;\" | prism sql --lake ./lake --format json

JSON columns (requestparameters, responseelements, …): (requestparameters->>'userName'),
json_get_str(requestparameters, 'bucketName'). Several statements run in order (-c and -f
as given); the first that fails stops the run with exit status 1, naming the statement.")]
    Sql(SqlArgs),
    /// Run .sql files on a cron schedule: once from cron, or as a long-running service.
    #[command(subcommand, after_help = SCHEDULE_HELP)]
    Schedule(ScheduleCommand),
}

const SCHEDULE_HELP: &str = "\
A query file schedules itself with comment lines at its top:
  -- name: access_denied_hot_spots
  -- schedule: 0 * * * *
  -- output: results/{name}/{date}.csv
  -- window: 1h
  SELECT ... FROM events WHERE eventtime >= {start} AND eventtime < {end} ...

  name      default: the file name without .sql
  schedule  cron, 5 fields (minute hour day month weekday), in UTC; without it, not scheduled
  output    .csv, .json, .ndjson or .parquet, under --out; default {name}/{date}.csv
  window    optional: 15m, 1h, 1d, 1w, 1h30m...; fills {start} and {end} in the SQL
  delay     optional: the window ends this long before the slot (CloudTrail delivers late)

{start} and {end} become TIMESTAMP '2024-06-01T11:00:00Z' literals (the window is [start, end));
in output paths they are 20240601T1100Z, and {date} is the day of the window's end (or of the
slot). Each run is a row of the lake table query_runs: prism sql --lake ./lake -c \"SELECT * FROM query_runs ORDER BY startedat DESC\"

A query is due when the latest slot of its schedule at or before now is later than the slot of
its last successful run. A query missed while the machine was off runs once, for the latest slot.

Examples:
  prism schedule list --queries queries/ --lake ./lake
  prism schedule run --lake ./lake --queries queries/ --once --out /srv/reports
  prism schedule serve --lake ./lake --queries queries/ --out /srv/reports

A crontab line (every 5 minutes; each query still runs on its own schedule):
  */5 * * * * prism schedule run --lake /data/lake --queries /data/queries --out /srv/reports --once";

#[derive(Subcommand)]
enum ScheduleCommand {
    /// Run every scheduled query that is due now, once, and exit (for cron).
    #[command(after_help = "\
Examples:
  prism schedule run --lake ./lake --queries queries/ --once
  prism schedule run --lake ./lake --queries queries/ --once --out /srv/reports --json

Crontab (every 5 minutes; each query runs on its own schedule, at most once per slot):
  */5 * * * * prism schedule run --lake /data/lake --queries /data/queries --out /srv/reports --once

Exit status: 0 every due query succeeded (or none was due); 3 some query failed, a file has a
bad header, or a stop signal left queries unrun (see the summary and query_runs); 1 the run
failed as a whole (e.g. no lake, folder unreadable, history not writable); 2 bad arguments.")]
    Run(ScheduleRunArgs),
    /// Keep running: each query at its slots, re-reading the folder so edits are picked up.
    #[command(after_help = "\
Example:
  prism schedule serve --lake ./lake --queries queries/ --out /srv/reports

Each loop re-reads the folder and the lake, runs what is due, and sleeps until the next slot of
any query (at most --poll seconds, so added or edited files are seen). A run that failed is
retried at the next slot, or as soon as its file is edited. Ctrl-C or SIGTERM stops after the
running query (a second signal stops at once). Exit status: 0 stopped cleanly; 1 failed at start.")]
    Serve(ScheduleServeArgs),
    /// Show each query: its schedule, window, whether it is due, its next slot and last run.
    #[command(after_help = "\
Examples:
  prism schedule list --queries queries/
  prism schedule list --queries queries/ --lake ./lake --json")]
    List(ScheduleListArgs),
}

#[derive(Args)]
struct ScheduleCommon {
    /// Folder of .sql files (not read recursively).
    #[arg(long, default_value = "queries", env = "PRISM_QUERIES")]
    queries: std::path::PathBuf,
    /// Folder that relative output paths are written under (absolute ones are kept).
    #[arg(long, default_value = ".")]
    out: std::path::PathBuf,
    /// Print JSON on stdout instead of text.
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
struct ScheduleRunArgs {
    /// The lake folder or s3:// URL.
    #[arg(long, env = "PRISM_LAKE")]
    lake: String,
    #[command(flatten)]
    common: ScheduleCommon,
    /// Run what is due once and exit (what `run` always does; spelled out for crontabs).
    #[arg(long)]
    once: bool,
    /// Pretend the time is this (RFC 3339), for tests and dry reasoning about slots.
    #[arg(long, hide = true, value_parser = parse_rfc3339)]
    now: Option<DateTime<Utc>>,
}

#[derive(Args)]
struct ScheduleServeArgs {
    /// The lake folder or s3:// URL.
    #[arg(long, env = "PRISM_LAKE")]
    lake: String,
    #[command(flatten)]
    common: ScheduleCommon,
    /// Longest sleep between loops, in seconds: how soon folder edits are picked up.
    #[arg(long, default_value_t = 60, value_name = "SECONDS", value_parser = clap::value_parser!(u64).range(1..))]
    poll: u64,
}

#[derive(Args)]
struct ScheduleListArgs {
    /// Folder of .sql files.
    #[arg(long, default_value = "queries", env = "PRISM_QUERIES")]
    queries: std::path::PathBuf,
    /// The lake, for last runs and dueness (without it, nothing is known to have run).
    #[arg(long, env = "PRISM_LAKE")]
    lake: Option<String>,
    /// Print JSON on stdout.
    #[arg(long)]
    json: bool,
    /// Pretend the time is this (RFC 3339).
    #[arg(long, hide = true, value_parser = parse_rfc3339)]
    now: Option<DateTime<Utc>>,
}

#[derive(Args)]
struct IngestArgs {
    /// Files, folders or s3://bucket/prefix URLs to read.
    #[arg(required = true, value_name = "SOURCE")]
    sources: Vec<String>,
    /// The lake: a folder, or s3://bucket/prefix. Created when missing.
    #[arg(long, env = "PRISM_LAKE")]
    lake: String,
    /// First delivery day to read (YYYY-MM-DD), by the archive's date folders.
    #[arg(long, value_parser = parse_date)]
    from: Option<NaiveDate>,
    /// Last day to read (YYYY-MM-DD). The following day's folder is read too, for late deliveries.
    #[arg(long, value_parser = parse_date)]
    to: Option<NaiveDate>,
    /// Time partitioning of a new lake: minute (most files), hour or day (fewest, fastest
    /// ingest). Fixed once the lake exists.
    #[arg(long, value_parser = clap::value_parser!(Granularity))]
    granularity: Option<Granularity>,
    /// Memory for events buffered between commits, in MiB.
    #[arg(long, default_value_t = 128, value_name = "MIB")]
    buffer_mb: usize,
    /// Files parsed at once (default: the number of CPUs).
    #[arg(long)]
    jobs: Option<usize>,
    /// S3 objects downloaded at once, ahead of the parsers (at most 64 MiB of them held).
    /// Raise it for a distant bucket: each object costs a round trip.
    #[arg(long, default_value_t = prism::ingest::DEFAULT_DOWNLOADS, value_name = "N")]
    downloads: usize,
    /// Print the summary as JSON on stdout.
    #[arg(long)]
    json: bool,
    /// No progress bar and no summary text (errors still go to stderr).
    #[arg(long, short)]
    quiet: bool,
    /// List the sources and compare with the lake's journal, then stop: how many objects and
    /// bytes a run would read, and how long the listing took. Nothing is read or written.
    #[arg(long)]
    dry_run: bool,
}

#[derive(Args)]
struct BackfillArgs {
    #[command(flatten)]
    ingest: IngestArgs,
    /// Where the AWS-format Insights files go (a folder or s3:// URL); default: the lake.
    #[arg(long)]
    out: Option<String>,
    /// Only ingest; do not run Insights.
    #[arg(long)]
    no_insights: bool,
    /// Insights detector sensitivity: 2 finds weaker deviations, 0.5 only stronger ones.
    #[arg(long, default_value_t = 1.0)]
    sensitivity: f64,
}

#[derive(Args)]
struct GenerateArgs {
    /// Folder to write (created if missing).
    #[arg(long)]
    out: std::path::PathBuf,
    /// Number of AWS accounts.
    #[arg(long, default_value_t = 2)]
    accounts: u32,
    /// Regions, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "us-east-1,eu-west-1")]
    regions: Vec<String>,
    /// Days of history.
    #[arg(long, default_value_t = 10)]
    days: u32,
    /// Average events per day for each account and region.
    #[arg(long, default_value_t = 100_000)]
    events_per_day: u64,
    /// Anomalies to inject (spikes, drops to zero, error bursts).
    #[arg(long, default_value_t = 12)]
    anomalies: u32,
    /// Random seed.
    #[arg(long, default_value_t = 7)]
    seed: u64,
    /// First day (YYYY-MM-DD, UTC).
    #[arg(long, value_parser = parse_date, default_value = "2024-01-01")]
    start: NaiveDate,
    /// Share of events delivered twice.
    #[arg(long, default_value_t = 0.001)]
    duplicate_rate: f64,
    /// Share of events delivered late (in the next file).
    #[arg(long, default_value_t = 0.01)]
    late_rate: f64,
    /// Print the summary as JSON.
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
struct SqlArgs {
    /// The lake folder or s3:// URL.
    #[arg(long, env = "PRISM_LAKE")]
    lake: String,
    /// SQL to run; repeatable, each may hold several `;`-separated statements.
    #[arg(short = 'c', long = "command", value_name = "SQL")]
    command: Vec<String>,
    /// A file of SQL statements to run; repeatable.
    #[arg(short = 'f', long = "file", value_name = "FILE")]
    file: Vec<std::path::PathBuf>,
    /// Result format [default: from --output's extension, else table].
    #[arg(long, value_enum)]
    format: Option<OutputFormat>,
    /// Write the last statement's result to FILE (atomically: complete or not at all).
    #[arg(long, short = 'o', value_name = "FILE")]
    output: Option<std::path::PathBuf>,
    /// Rows shown per result on a terminal (0: all) [default: 40]. Output to a pipe or
    /// --output is complete unless this is given.
    #[arg(long, value_name = "N")]
    maxrows: Option<usize>,
    /// History file of the interactive shell [default: ~/.prism_history].
    #[arg(long, env = "PRISM_HISTORY", value_name = "FILE")]
    history: Option<std::path::PathBuf>,
}

/// The -c and -f arguments in the order they were given.
fn sql_inputs(matches: &clap::ArgMatches, args: &SqlArgs) -> Vec<prism::sql::Input> {
    let indexed = |id: &str| matches.indices_of(id).map(|i| i.collect::<Vec<_>>()).unwrap_or_default();
    let commands = args.command.iter().map(|c| prism::sql::Input::Command(c.clone()));
    let files = args.file.iter().map(|f| prism::sql::Input::File(f.clone()));
    let mut inputs: Vec<_> = indexed("command").into_iter().zip(commands).chain(indexed("file").into_iter().zip(files)).collect();
    inputs.sort_by_key(|(i, _)| *i);
    inputs.into_iter().map(|(_, input)| input).collect()
}

fn parse_rfc3339(s: &str) -> Result<DateTime<Utc>, String> {
    DateTime::parse_from_rfc3339(s)
        .map(|t| t.with_timezone(&Utc))
        .map_err(|_| format!("`{s}` is not an RFC 3339 time like 2024-06-01T12:00:00Z"))
}

fn parse_date(s: &str) -> Result<NaiveDate, String> {
    NaiveDate::parse_from_str(s, "%Y-%m-%d").map_err(|_| format!("`{s}` is not a date like 2024-06-30"))
}

fn main() -> ExitCode {
    let matches = Cli::command().get_matches();
    let cli = match Cli::from_arg_matches(&matches) {
        Ok(cli) => cli,
        Err(e) => e.exit(),
    };
    tracing_subscriber::fmt()
        // Dependencies log routine conditions as errors (e.g. "no files in log segment" while a
        // table is being created); show only Prism's own warnings unless PRISM_LOG asks.
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("PRISM_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("prism=warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        match cli.command {
            Command::Ingest(args) => run_ingest(args).await,
            Command::Backfill(args) => run_backfill(args).await,
            Command::Sql(args) => {
                let inputs = matches.subcommand_matches("sql").map(|m| sql_inputs(m, &args)).unwrap_or_default();
                run_sql(args, inputs).await
            }
            Command::Generate(args) => run_generate(args).await,
            Command::Selectors(cmd) => insights_cmd::selectors(cmd).await,
            Command::Insights(cmd) => insights_cmd::insights(cmd).await,
            Command::Demo(args) => insights_cmd::demo(args).await,
            Command::Schedule(ScheduleCommand::Run(args)) => run_schedule_once(args).await,
            Command::Schedule(ScheduleCommand::Serve(args)) => run_schedule_serve(args).await,
            Command::Schedule(ScheduleCommand::List(args)) => run_schedule_list(args).await,
        }
    });
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {}", error_text(&e));
            ExitCode::FAILURE
        }
    }
}

/// The error and its causes on one line, each said once: the library's errors already show
/// their source in their own message (`cannot list …: <the store's error>`), which anyhow's
/// `{:#}` would repeat for every layer.
fn error_text(e: &anyhow::Error) -> String {
    let mut text = String::new();
    for cause in e.chain() {
        let said = cause.to_string();
        if text.contains(&said) {
            continue;
        }
        if !text.is_empty() {
            text.push_str(": ");
        }
        text.push_str(&said);
    }
    text
}

fn ingest_options(args: &IngestArgs) -> anyhow::Result<IngestOptions> {
    if let (Some(f), Some(t)) = (args.from, args.to)
        && f > t
    {
        anyhow::bail!("--from {f} is after --to {t}");
    }
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

async fn run_backfill(args: BackfillArgs) -> anyhow::Result<ExitCode> {
    if !(args.sensitivity.is_finite() && args.sensitivity > 0.0) {
        anyhow::bail!("--sensitivity must be a positive number, like 0.5, 1 or 2");
    }
    let mut opts = prism::backfill::BackfillOptions::new(ingest_options(&args.ingest)?);
    opts.out = args.out;
    opts.params = prism::insights::detect::DetectorParams::with_sensitivity(args.sensitivity);
    if args.no_insights {
        opts.insights = prism::backfill::InsightsChoice::Off;
    }
    let progress = Arc::new(prism::backfill::Progress::default());
    let show_bar = !args.ingest.quiet && std::io::stderr().is_terminal();
    let bar = show_bar.then(|| spawn_progress_bar(progress.ingest.clone(), Some(progress.clone())));
    let result = prism::backfill::backfill(&opts, &progress).await;
    if let Some(bar) = bar {
        bar.finish();
    }
    let summary = result.context("backfill failed")?;
    if args.ingest.json {
        println!("{}", serde_json::to_string_pretty(&summary)?);
    } else if !args.ingest.quiet {
        print_summary(&summary.ingest);
        if !summary.enabled_insights.is_empty() {
            println!("Enabled Insights on the lake: {}", summary.enabled_insights.join(", "));
        }
        if let Some(run) = &summary.insights {
            insights_cmd::print_run(run);
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

async fn run_ingest(args: IngestArgs) -> anyhow::Result<ExitCode> {
    let opts = ingest_options(&args)?;
    let progress = Arc::new(Progress::default());
    let show_bar = !args.quiet && std::io::stderr().is_terminal();
    let bar = show_bar.then(|| spawn_progress_bar(progress.clone(), None));
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

/// Draws files, events, MB/s and ETA on stderr until finished; with `backfill`, then the
/// Insights step's series.
fn spawn_progress_bar(progress: Arc<Progress>, backfill: Option<Arc<prism::backfill::Progress>>) -> progress_bar::Bar {
    progress_bar::Bar::start(
        "{spinner} [{elapsed_precise}] {wide_bar} {bytes}/{total_bytes} {binary_bytes_per_sec} ETA {eta} {msg}",
        move |bar| {
            bar.set_length(progress.bytes_total.load(Ordering::Relaxed));
            bar.set_position(progress.raw_bytes.load(Ordering::Relaxed));
            let mut msg = format!(
                "files {}/{} · events {}",
                progress.files_done.load(Ordering::Relaxed),
                progress.files_total.load(Ordering::Relaxed),
                progress.records.load(Ordering::Relaxed)
            );
            if let Some(b) = backfill.as_ref().filter(|b| b.phase.load(Ordering::Relaxed) == prism::backfill::PHASE_INSIGHTS) {
                msg = format!(
                    "{msg} · insights: series {}/{} · {} found",
                    b.insights.series_done.load(Ordering::Relaxed),
                    b.insights.series_total.load(Ordering::Relaxed),
                    b.insights.found.load(Ordering::Relaxed)
                );
            }
            bar.set_message(msg);
        },
    )
}

fn print_summary(s: &IngestSummary) {
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
    let _ = writeln!(
        out,
        "  output:  {} Parquet files in {} commits",
        s.files_written, s.commits
    );
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

async fn run_generate(args: GenerateArgs) -> anyhow::Result<ExitCode> {
    let mut opts = prism::generate::GenerateOptions::new(args.out);
    opts.accounts = args.accounts;
    opts.regions = args.regions;
    opts.days = args.days;
    opts.events_per_day = args.events_per_day;
    opts.anomalies = args.anomalies;
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
            summary.events, summary.duplicates, summary.files, summary.bytes as f64 / 1e6, summary.anomalies, summary.seconds, summary.events_per_second
        );
    }
    Ok(ExitCode::SUCCESS)
}

async fn run_sql(args: SqlArgs, mut inputs: Vec<prism::sql::Input>) -> anyhow::Result<ExitCode> {
    let lake = prism::Lake::open(&args.lake).await?;
    let ctx = prism::sql::session(&lake).await?;
    if inputs.is_empty() {
        if std::io::stdin().is_terminal() {
            if args.output.is_some() {
                anyhow::bail!("--output needs SQL to run: give -c, -f, or SQL on stdin");
            }
            if args.format == Some(OutputFormat::Parquet) {
                anyhow::bail!("the interactive shell shows text; for Parquet give -c or -f with --output FILE.parquet");
            }
            let opts = prism::sql::repl::ReplOptions {
                history: args.history.or_else(prism::sql::repl::default_history_path),
                maxrows: args.maxrows.unwrap_or(prism::sql::exec::DEFAULT_MAXROWS),
                format: args.format.unwrap_or(OutputFormat::Table),
                lake: lake.url().to_string(),
            };
            prism::sql::repl::run(&ctx, opts).await?;
            return Ok(ExitCode::SUCCESS);
        }
        inputs.push(prism::sql::Input::Stdin);
    }
    let opts = prism::sql::BatchOptions { format: args.format, output: args.output, maxrows: args.maxrows };
    prism::sql::exec::run_inputs(&ctx, &inputs, &opts).await?;
    Ok(ExitCode::SUCCESS)
}

/// A token cancelled by the first Ctrl-C or SIGTERM; a second signal exits at once.
fn stop_on_signals() -> CancellationToken {
    let token = CancellationToken::new();
    let stop = token.clone();
    tokio::spawn(async move {
        if !next_signal().await {
            return;
        }
        eprintln!("stopping after the running query (signal again to stop now)");
        stop.cancel();
        if next_signal().await {
            std::process::exit(130);
        }
    });
    token
}

/// Waits for SIGINT or SIGTERM; false when signals cannot be listened to.
async fn next_signal() -> bool {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let (Ok(mut int), Ok(mut term)) = (
            signal(SignalKind::interrupt()),
            signal(SignalKind::terminate()),
        ) else {
            return false;
        };
        tokio::select! {
            _ = int.recv() => true,
            _ = term.recv() => true,
        }
    }
    #[cfg(not(unix))]
    {
        tokio::signal::ctrl_c().await.is_ok()
    }
}

fn minute(t: DateTime<Utc>) -> String {
    t.format("%Y-%m-%dT%H:%MZ").to_string()
}

fn run_line(r: &schedule::QueryRun) -> String {
    match r.status {
        schedule::RunStatus::Ok => format!(
            "ok      {}  slot {}  {} rows  {} ms  -> {}",
            r.query,
            minute(r.slot),
            r.rows.unwrap_or(0),
            r.duration_ms,
            r.output.as_deref().unwrap_or("")
        ),
        schedule::RunStatus::Error => format!(
            "FAILED  {}  slot {}  {} ms  {}: {}",
            r.query,
            minute(r.slot),
            r.duration_ms,
            r.file,
            r.error.as_deref().unwrap_or("")
        ),
    }
}

async fn run_schedule_once(args: ScheduleRunArgs) -> anyhow::Result<ExitCode> {
    let now = args.now.unwrap_or_else(Utc::now);
    let catalogue = schedule::load_queries(&args.common.queries)?;
    let lake = prism::Lake::open(&args.lake).await?;
    let options = schedule::RunOptions {
        out_dir: args.common.out.clone(),
    };
    let stop = stop_on_signals();
    let json = args.common.json;
    let summary = schedule::run_due(&lake, &catalogue, now, &options, &stop, |r| {
        if !json {
            println!("{}", run_line(r));
        }
    })
    .await
    .context("scheduled run failed")?;
    if json {
        println!("{}", serde_json::to_string_pretty(&summary)?);
    } else {
        for n in &summary.not_due {
            let last = n.last_ok_slot.map(minute).unwrap_or_else(|| "-".into());
            let next = n.next_slot.map(minute).unwrap_or_else(|| "-".into());
            println!("not due {}  last ok slot {last}, next slot {next}", n.name);
        }
        for name in &summary.unscheduled {
            println!("skipped {name}  (no `-- schedule:` line)");
        }
        for name in &summary.not_run {
            println!("not run {name}  (stopped; still due)");
        }
        for p in &summary.problems {
            println!("BAD     {p}");
        }
        println!(
            "{} ran at {}: {} ok, {} failed; {} not due, {} not scheduled, {} files with problems{}",
            summary.runs.len(),
            minute(summary.now),
            summary.runs.len() - summary.failed(),
            summary.failed(),
            summary.not_due.len(),
            summary.unscheduled.len(),
            summary.problems.len(),
            if summary.not_run.is_empty() {
                String::new()
            } else {
                format!(", {} not run", summary.not_run.len())
            }
        );
    }
    Ok(if summary.is_clean() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(EXIT_PARTIAL)
    })
}

async fn run_schedule_serve(args: ScheduleServeArgs) -> anyhow::Result<ExitCode> {
    let options = schedule::ServeOptions {
        lake: args.lake,
        queries: args.common.queries,
        run: schedule::RunOptions {
            out_dir: args.common.out,
        },
        poll: Duration::from_secs(args.poll),
    };
    let json = args.common.json;
    eprintln!(
        "serving the queries of {} (Ctrl-C stops after the running query)",
        options.queries.display()
    );
    let stop = stop_on_signals();
    let totals = schedule::serve(&options, Utc::now, &stop, |event| match event {
        schedule::ServeEvent::Run(r) if json => {
            if let Ok(line) = serde_json::to_string(r) {
                println!("{line}");
            }
        }
        schedule::ServeEvent::Run(r) => println!("{}", run_line(r)),
        schedule::ServeEvent::Problems(problems) => {
            for p in problems {
                eprintln!("bad query file: {p}");
            }
        }
        schedule::ServeEvent::PassFailed(e) => eprintln!("error: {e} (trying again next loop)"),
        schedule::ServeEvent::Sleeping(until) => tracing::debug!("sleeping until {until}"),
    })
    .await
    .context("serve failed")?;
    eprintln!(
        "stopped: {} loops, {} runs, {} failed",
        totals.passes, totals.runs, totals.failed
    );
    Ok(ExitCode::SUCCESS)
}

async fn run_schedule_list(args: ScheduleListArgs) -> anyhow::Result<ExitCode> {
    let now = args.now.unwrap_or_else(Utc::now);
    let catalogue = schedule::load_queries(&args.queries)?;
    let history = match &args.lake {
        Some(lake) => Some(schedule::History::open(&prism::Lake::open(lake).await?).await?),
        None => None,
    };
    let statuses = schedule::statuses(&catalogue, history.as_ref(), now);
    if args.json {
        let out =
            serde_json::json!({"now": now, "queries": statuses, "problems": catalogue.problems});
        println!("{}", serde_json::to_string_pretty(&out)?);
        return Ok(if catalogue.problems.is_empty() {
            ExitCode::SUCCESS
        } else {
            ExitCode::from(EXIT_PARTIAL)
        });
    }
    let mut rows =
        vec![["NAME", "SCHEDULE", "WINDOW", "NEXT", "LAST RUN", "OUTPUT"].map(String::from)];
    for s in &statuses {
        let next = match (&s.schedule, s.due) {
            (None, _) => "not scheduled".to_owned(),
            (Some(_), Some(slot)) if history.is_some() => {
                format!("due now (slot {})", minute(slot))
            }
            (Some(_), _) => s.next_slot.map(minute).unwrap_or_else(|| "never".into()),
        };
        let last = match &s.last_run {
            Some(r) => match r.status {
                schedule::RunStatus::Ok => {
                    format!("{} ok, {} rows", minute(r.slot), r.rows.unwrap_or(0))
                }
                schedule::RunStatus::Error => format!("{} FAILED", minute(r.slot)),
            },
            None if history.is_some() => "never".to_owned(),
            None => "- (no --lake)".to_owned(),
        };
        let window = match (s.window.as_deref(), s.delay.as_deref()) {
            (Some(w), Some(d)) => format!("{w} (-{d})"),
            (Some(w), None) => w.to_owned(),
            _ => "-".to_owned(),
        };
        let output = if s.schedule.is_some() {
            s.output.clone()
        } else {
            "-".to_owned()
        };
        rows.push([
            s.name.clone(),
            s.schedule.clone().unwrap_or_else(|| "-".into()),
            window,
            next,
            last,
            output,
        ]);
    }
    let widths: Vec<usize> = (0..6)
        .map(|c| rows.iter().map(|r| r[c].chars().count()).max().unwrap_or(0))
        .collect();
    for r in &rows {
        let cells: Vec<String> = r
            .iter()
            .zip(&widths)
            .map(|(cell, w)| format!("{cell:<w$}"))
            .collect();
        println!("{}", cells.join("  ").trim_end());
    }
    for p in &catalogue.problems {
        println!("BAD  {p}");
    }
    Ok(if catalogue.problems.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(EXIT_PARTIAL)
    })
}
