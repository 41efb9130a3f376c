//! The command line: one module per command, each holding its arguments, its help and the
//! printing of its results. Commands parse, call the library and print; nothing else.

mod aggregate;
mod args;
mod backfill;
mod demo;
mod event_config;
mod generate;
mod ingest;
mod insights;
mod optimize;
mod progress;
mod schedule;
mod selectors;
mod serve;
mod sql;
mod trail;
mod vacuum;
mod watch;
mod worker;

use std::process::ExitCode;

use clap::{ArgMatches, Parser, Subcommand};

/// Exit status of a run that finished but left something out (rejected records, unread
/// objects, failed queries): docs/ingest.md, "Exit status".
pub const EXIT_PARTIAL: u8 = 3;

/// Blocking threads for file I/O besides the parsers. Tokio's default (512 in all) let a
/// Delta checkpoint read a table's last 100 commit files on 100 threads at once: the
/// 20.8M-event ingest peaked at 1.1 GB RSS with those threads, 0.7 GB with 16.
const IO_THREADS: usize = 16;

#[derive(Parser)]
#[command(
    name = "prism",
    version,
    about = "CloudTrail archives to a SQL-queryable Parquet lake, with CloudTrail Insights computed locally",
    long_about = "Prism turns AWS CloudTrail log archives into a Parquet lake (Delta tables) that \
                  you can query with SQL, and finds unusual API activity in it as CloudTrail \
                  Insights does.\n\nStart with:\n  prism demo\n  prism ingest ./AWSLogs --lake ./lake\n  \
                  prism sql --lake ./lake -c \"SELECT eventname, count(*) FROM events GROUP BY 1 ORDER BY 2 DESC LIMIT 10\""
)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
    /// Run queries on these `prism worker`s too (comma-separated http://host:port): `sql`, the
    /// REPL, `schedule` and `serve`. Needs a build with `--features distributed`.
    #[arg(long, global = true, env = "PRISM_WORKERS", value_name = "URLS")]
    workers: Option<String>,
}

/// What `--workers` and `prism worker` say in a build without them.
#[cfg_attr(feature = "distributed", allow(dead_code))]
const NOT_DISTRIBUTED: &str =
    "this prism was built without distributed queries: build it with `cargo build --release --features distributed` (docs/distributed.md)";

#[derive(Subcommand)]
enum Command {
    /// Read CloudTrail archives into the lake (only files not ingested before).
    #[command(after_help = ingest::HELP)]
    Ingest(ingest::IngestArgs),
    /// Ingest an archive and backfill Insights over it in one resumable command.
    #[command(after_help = backfill::HELP)]
    Backfill(backfill::BackfillArgs),
    /// Write a realistic CloudTrail archive with labelled anomalies (labels.json).
    #[command(after_help = generate::HELP)]
    Generate(generate::GenerateArgs),
    /// Enable or show Insights types (like CloudTrail's Put/GetInsightSelectors).
    #[command(subcommand)]
    Selectors(selectors::SelectorsCommand),
    /// Find unusual API call and error rates: backfill history, run incrementally, evaluate.
    #[command(subcommand)]
    Insights(insights::InsightsCommand),
    /// Name the trail and say which event categories it logs (data Insights need data events).
    #[command(subcommand)]
    Trail(trail::TrailCommand),
    /// Configure aggregated events (like CloudTrail's Put/GetEventConfiguration).
    #[command(subcommand, name = "event-config")]
    EventConfig(event_config::EventConfigCommand),
    /// Compute aggregated events: 5-minute summaries of data events, backfilled or incremental.
    #[command(subcommand)]
    Aggregate(aggregate::AggregateCommand),
    /// Compact a lake's small files into larger ones, atomically (then `vacuum` the old ones).
    #[command(after_help = optimize::HELP)]
    Optimize(optimize::OptimizeArgs),
    /// Delete files no version of the lake needs (replaced, or left by killed runs).
    #[command(after_help = vacuum::HELP)]
    Vacuum(vacuum::VacuumArgs),
    /// Generate a sample, ingest it, backfill Insights and show them beside their labels.
    #[command(after_help = demo::HELP)]
    Demo(demo::DemoArgs),
    /// Query the lake (or your own files) with SQL: an interactive shell, or -c, -f or stdin.
    #[command(after_help = sql::HELP)]
    Sql(sql::SqlArgs),
    /// Run .sql files on a cron schedule: once from cron, or as a long-running service.
    #[command(subcommand, after_help = schedule::HELP)]
    Schedule(schedule::ScheduleCommand),
    /// The Insights console: web pages and a JSON API over the lake (http://127.0.0.1:8080).
    #[command(after_help = serve::HELP)]
    Serve(serve::ServeArgs),
    /// Follow a trail: ingest logs as they land, find Insights, deliver alerts (webhook, ...).
    #[command(after_help = watch::HELP)]
    Watch(watch::WatchArgs),
    /// Execute parts of other machines' queries (for `--workers`); needs `--features distributed`.
    #[command(after_help = worker::HELP)]
    Worker(worker::WorkerArgs),
}

impl Cli {
    /// Threads the runtime may run blocking work on: one for each parser of an ingest (each
    /// holds one while it waits for the committer) and [`IO_THREADS`] for file I/O.
    pub fn blocking_threads(&self) -> usize {
        let parsers = match &self.command {
            Command::Ingest(args) => args.jobs,
            Command::Backfill(args) => args.ingest.jobs,
            _ => None,
        };
        parsers.unwrap_or_else(prism::ingest::default_parallelism).max(1) + IO_THREADS
    }

    /// How long, in milliseconds, freed memory stays with the process before it goes back to
    /// the OS (`main.rs`): None (mimalloc's default) for the commands whose work is queries
    /// (`sql`, `schedule`, the console), which reuse it for the next batch; 50 ms for `ingest`,
    /// whose parsers reuse what a commit frees (4.5M events: 19.4 → 17.1 s, 456 → 582 MB
    /// peak); at once for the others, which hold big buffers (an Insights backfill).
    pub fn purge_delay_ms(&self) -> Option<std::ffi::c_long> {
        match self.command {
            Command::Sql(_) | Command::Schedule(_) | Command::Serve(_) => None,
            Command::Ingest(_) => Some(50),
            _ => Some(0),
        }
    }

    /// True for the commands that write to other processes' pipes: `watch`'s command sink (run
    /// by the console's watch too), whose child may exit before reading everything.
    pub fn writes_to_pipes(&self) -> bool {
        matches!(self.command, Command::Watch(_) | Command::Serve(_))
    }

    /// Runs the command. `matches` are the raw matches, for arguments whose order matters.
    pub async fn run(self, matches: &ArgMatches) -> anyhow::Result<ExitCode> {
        if let Some(list) = self.workers.as_deref().filter(|w| !w.trim().is_empty()) {
            #[cfg(feature = "distributed")]
            prism::sql::use_workers(prism::sql::distributed::parse_workers(list).map_err(|e| anyhow::anyhow!("--workers: {e}"))?);
            #[cfg(not(feature = "distributed"))]
            anyhow::bail!("--workers {list}: {NOT_DISTRIBUTED}");
        }
        match self.command {
            Command::Ingest(args) => ingest::run(args).await,
            Command::Backfill(args) => backfill::run(args).await,
            Command::Generate(args) => generate::run(args).await,
            Command::Selectors(cmd) => selectors::run(cmd).await,
            Command::Insights(cmd) => insights::run(cmd).await,
            Command::EventConfig(cmd) => event_config::run(cmd).await,
            Command::Trail(cmd) => trail::run(cmd).await,
            Command::Aggregate(cmd) => aggregate::run(cmd).await,
            Command::Optimize(args) => optimize::run(args).await,
            Command::Vacuum(args) => vacuum::run(args).await,
            Command::Demo(args) => demo::run(args).await,
            Command::Sql(args) => {
                let inputs = matches.subcommand_matches("sql").map(|m| sql::inputs(m, &args)).unwrap_or_default();
                sql::run(args, inputs).await
            }
            Command::Schedule(cmd) => schedule::run(cmd).await,
            Command::Serve(args) => serve::run(args).await,
            Command::Watch(args) => watch::run(args).await,
            Command::Worker(args) => worker::run(args).await,
        }
    }
}

/// A stop that several tasks share (the console and its watch): it turns true at the first
/// SIGINT or SIGTERM; [`stopped`] waits for it. A second signal exits at once with status 130:
/// finishing a step can take long (a catch-up of months), and every step is safe to cut
/// (the lake stays consistent, the step is redone at the next start).
pub fn shared_stop() -> tokio::sync::watch::Receiver<bool> {
    let (tx, rx) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        if next_signal().await {
            let _ = tx.send(true);
            eprintln!("prism: stopping after the current step (a second Ctrl-C stops now)");
            if next_signal().await {
                eprintln!("prism: stopped now; the unfinished step is redone at the next start");
                std::process::exit(130);
            }
        } else {
            // No signals to listen to: never stop on one (the sender must stay alive).
            std::future::pending::<()>().await;
        }
    });
    rx
}

/// Resolves when `stop` has turned true (or its sender is gone).
pub async fn stopped(mut stop: tokio::sync::watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}

/// Waits for SIGINT or SIGTERM; false when signals cannot be listened to.
pub async fn next_signal() -> bool {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let (Ok(mut int), Ok(mut term)) = (signal(SignalKind::interrupt()), signal(SignalKind::terminate())) else {
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
