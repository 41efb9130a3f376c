//! `prism`: the command-line layer. It parses arguments, calls the library and prints.

use std::io::{IsTerminal, Write};
use std::process::ExitCode;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use chrono::NaiveDate;
use clap::{Args, CommandFactory, FromArgMatches, Parser, Subcommand};

use prism::ingest::{IngestOptions, IngestSummary, Progress};
use prism::schema::Granularity;
use prism::sql::OutputFormat;

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
    /// Print the summary as JSON on stdout.
    #[arg(long)]
    json: bool,
    /// No progress bar and no summary text (errors still go to stderr).
    #[arg(long, short)]
    quiet: bool,
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
            Command::Sql(args) => {
                let inputs = matches.subcommand_matches("sql").map(|m| sql_inputs(m, &args)).unwrap_or_default();
                run_sql(args, inputs).await
            }
            Command::Generate(args) => run_generate(args).await,
        }
    });
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run_ingest(args: IngestArgs) -> anyhow::Result<ExitCode> {
    if let (Some(f), Some(t)) = (args.from, args.to)
        && f > t
    {
        anyhow::bail!("--from {f} is after --to {t}");
    }
    let mut opts = IngestOptions::new(args.sources, args.lake);
    opts.range = DateRange { from: args.from, to: args.to };
    opts.granularity = args.granularity;
    opts.buffer_bytes = args.buffer_mb.max(1) << 20;
    if let Some(j) = args.jobs {
        opts.parallelism = j.max(1);
    }
    let progress = Arc::new(Progress::default());
    let show_bar = !args.quiet && std::io::stderr().is_terminal();
    let bar = show_bar.then(|| spawn_progress_bar(progress.clone()));
    let result = prism::ingest(&opts, progress).await;
    if let Some((bar, stop)) = bar {
        stop.store(true, Ordering::Relaxed);
        let _ = bar.join();
    }
    let summary = result.context("ingest failed")?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&summary)?);
    } else if !args.quiet {
        print_summary(&summary);
    }
    Ok(if summary.is_clean() && summary.files_to_retry == 0 { ExitCode::SUCCESS } else { ExitCode::from(EXIT_PARTIAL) })
}

/// Draws files, events, MB/s and ETA on stderr until `stop` is set.
fn spawn_progress_bar(progress: Arc<Progress>) -> (std::thread::JoinHandle<()>, Arc<std::sync::atomic::AtomicBool>) {
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let stop2 = stop.clone();
    let handle = std::thread::spawn(move || {
        let bar = indicatif::ProgressBar::new(0);
        bar.set_style(
            indicatif::ProgressStyle::with_template(
                "{spinner} [{elapsed_precise}] {wide_bar} {bytes}/{total_bytes} {binary_bytes_per_sec} ETA {eta} {msg}",
            )
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
        );
        while !stop2.load(Ordering::Relaxed) {
            bar.set_length(progress.bytes_total.load(Ordering::Relaxed));
            bar.set_position(progress.raw_bytes.load(Ordering::Relaxed));
            bar.set_message(format!(
                "files {}/{} · events {}",
                progress.files_done.load(Ordering::Relaxed),
                progress.files_total.load(Ordering::Relaxed),
                progress.records.load(Ordering::Relaxed)
            ));
            std::thread::sleep(Duration::from_millis(150));
        }
        bar.finish_and_clear();
    });
    (handle, stop)
}

fn print_summary(s: &IngestSummary) {
    let mut out = String::new();
    use std::fmt::Write as _;
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
