//! `prism schedule run | serve | list`: .sql files on a cron schedule.

use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use chrono::{DateTime, Utc};
use clap::{Args, Subcommand};
use tokio_util::sync::CancellationToken;

use prism::schedule;

use super::EXIT_PARTIAL;
use super::args::parse_time;

pub const HELP: &str = "\
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
pub enum ScheduleCommand {
    /// Run every scheduled query that is due now, once, and exit (for cron).
    #[command(after_help = "\
Examples:
  prism schedule run --lake ./lake --queries queries/ --once
  prism schedule run --lake ./lake --queries queries/ --once --out /srv/reports --json

Crontab (every 5 minutes; each query runs on its own schedule, at most once per slot):
  */5 * * * * prism schedule run --lake /data/lake --queries /data/queries --out /srv/reports --once

One scheduler runs on a lake at a time (a lease in the lake): while another `schedule run` or
`schedule serve` holds it, this one fails saying which (or waits, with --wait).

Exit status: 0 every due query succeeded (or none was due); 3 some query failed, a file has a
bad header, or a stop signal left queries unrun (see the summary and query_runs); 1 the run
failed as a whole (e.g. no lake, folder unreadable, history not writable, another scheduler
running); 2 bad arguments.")]
    Run(ScheduleRunArgs),
    /// Keep running: each query at its slots, re-reading the folder so edits are picked up.
    #[command(after_help = "\
Example:
  prism schedule serve --lake ./lake --queries queries/ --out /srv/reports

Each loop re-reads the folder and the lake, runs what is due, and sleeps until the next slot of
any query (at most --poll seconds, so added or edited files are seen). A run that failed is
retried at the next slot, or as soon as its file is edited. Ctrl-C or SIGTERM stops after the
running query (a second signal stops at once).

One scheduler runs on a lake at a time (a lease in the lake, renewed every 20 s). A second
`serve` fails saying which process holds it; with --wait it waits as a standby and takes over
when the first stops, or within 60 s of its death (at once on the same machine).

Exit status: 0 stopped cleanly; 1 failed at start (or another scheduler holds the lake), or the
lease was taken over by another scheduler (this one had stalled).")]
    Serve(ScheduleServeArgs),
    /// Show each query: its schedule, window, whether it is due, its next slot and last run.
    #[command(after_help = "\
Examples:
  prism schedule list --queries queries/
  prism schedule list --queries queries/ --lake ./lake --json")]
    List(ScheduleListArgs),
}

#[derive(Args)]
pub struct ScheduleCommon {
    /// Folder of .sql files (not read recursively).
    #[arg(long, default_value = "queries", env = "PRISM_QUERIES")]
    pub queries: std::path::PathBuf,
    /// Folder that relative output paths are written under (absolute ones are kept).
    #[arg(long, default_value = ".")]
    pub out: std::path::PathBuf,
    /// Print JSON on stdout instead of text.
    #[arg(long)]
    pub json: bool,
    /// If another scheduler runs on this lake, wait for it to stop (or die) and take over,
    /// instead of failing: a standby.
    #[arg(long)]
    pub wait: bool,
}

impl ScheduleCommon {
    fn run_options(&self) -> schedule::RunOptions {
        let mut options = schedule::RunOptions::new(&self.out);
        options.lease.wait = self.wait;
        options
    }
}

fn waiting(holder: &prism::lake::lease::Holder) {
    eprintln!("waiting: another scheduler runs on this lake: {}", holder.describe(Utc::now()));
}

#[derive(Args)]
pub struct ScheduleRunArgs {
    /// The lake folder or s3:// URL.
    #[arg(long, env = "PRISM_LAKE")]
    pub lake: String,
    #[command(flatten)]
    pub common: ScheduleCommon,
    /// Run what is due once and exit (what `run` always does; spelled out for crontabs).
    #[arg(long)]
    pub once: bool,
    /// Pretend the time is this (RFC 3339), for tests and dry reasoning about slots.
    #[arg(long, hide = true, value_parser = parse_time)]
    pub now: Option<DateTime<Utc>>,
}

#[derive(Args)]
pub struct ScheduleServeArgs {
    /// The lake folder or s3:// URL.
    #[arg(long, env = "PRISM_LAKE")]
    pub lake: String,
    #[command(flatten)]
    pub common: ScheduleCommon,
    /// Longest sleep between loops, in seconds: how soon folder edits are picked up.
    #[arg(long, default_value_t = 60, value_name = "SECONDS", value_parser = clap::value_parser!(u64).range(1..))]
    pub poll: u64,
}

#[derive(Args)]
pub struct ScheduleListArgs {
    /// Folder of .sql files.
    #[arg(long, default_value = "queries", env = "PRISM_QUERIES")]
    pub queries: std::path::PathBuf,
    /// The lake, for last runs and dueness (without it, nothing is known to have run).
    #[arg(long, env = "PRISM_LAKE")]
    pub lake: Option<String>,
    /// Print JSON on stdout.
    #[arg(long)]
    pub json: bool,
    /// Pretend the time is this (RFC 3339).
    #[arg(long, hide = true, value_parser = parse_time)]
    pub now: Option<DateTime<Utc>>,
}

/// Runs one `prism schedule` subcommand.
pub async fn run(cmd: ScheduleCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        ScheduleCommand::Run(args) => run_once(args).await,
        ScheduleCommand::Serve(args) => serve(args).await,
        ScheduleCommand::List(args) => list(args).await,
    }
}

/// A token cancelled by the first Ctrl-C or SIGTERM; a second signal exits at once.
fn stop_on_signals() -> CancellationToken {
    let token = CancellationToken::new();
    let stop = token.clone();
    tokio::spawn(async move {
        if !super::next_signal().await {
            return;
        }
        eprintln!("stopping after the running query (signal again to stop now)");
        stop.cancel();
        if super::next_signal().await {
            std::process::exit(130);
        }
    });
    token
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
        schedule::RunStatus::Error => {
            format!("FAILED  {}  slot {}  {} ms  {}: {}", r.query, minute(r.slot), r.duration_ms, r.file, r.error.as_deref().unwrap_or(""))
        }
    }
}

async fn run_once(args: ScheduleRunArgs) -> anyhow::Result<ExitCode> {
    let now = args.now.unwrap_or_else(Utc::now);
    let catalogue = schedule::load_queries(&args.common.queries)?;
    let lake = prism::Lake::open(&args.lake).await?;
    let options = args.common.run_options();
    let stop = stop_on_signals();
    let json = args.common.json;
    let summary = schedule::run_due(&lake, &catalogue, now, &options, &stop, |event| match event {
        schedule::ServeEvent::Run(r) if !json => println!("{}", run_line(r)),
        schedule::ServeEvent::Waiting(holder) => waiting(holder),
        _ => {}
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
            if summary.not_run.is_empty() { String::new() } else { format!(", {} not run", summary.not_run.len()) }
        );
    }
    Ok(if summary.is_clean() { ExitCode::SUCCESS } else { ExitCode::from(EXIT_PARTIAL) })
}

async fn serve(args: ScheduleServeArgs) -> anyhow::Result<ExitCode> {
    let options =
        schedule::ServeOptions { lake: args.lake, run: args.common.run_options(), queries: args.common.queries, poll: Duration::from_secs(args.poll) };
    let json = args.common.json;
    eprintln!("serving the queries of {} (Ctrl-C stops after the running query)", options.queries.display());
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
        schedule::ServeEvent::PassFailed(e) => eprintln!("error: {} (trying again next loop)", prism::error::report(e)),
        schedule::ServeEvent::Sleeping(until) => tracing::debug!("sleeping until {until}"),
        schedule::ServeEvent::Waiting(holder) => waiting(holder),
    })
    .await
    .context("serve failed")?;
    eprintln!("stopped: {} loops, {} runs, {} failed", totals.passes, totals.runs, totals.failed);
    Ok(ExitCode::SUCCESS)
}

async fn list(args: ScheduleListArgs) -> anyhow::Result<ExitCode> {
    let now = args.now.unwrap_or_else(Utc::now);
    let catalogue = schedule::load_queries(&args.queries)?;
    let history = match &args.lake {
        Some(lake) => Some(schedule::History::open(&prism::Lake::open(lake).await?).await?),
        None => None,
    };
    let statuses = schedule::statuses(&catalogue, history.as_ref(), now);
    if args.json {
        let out = serde_json::json!({"now": now, "queries": statuses, "problems": catalogue.problems});
        println!("{}", serde_json::to_string_pretty(&out)?);
        return Ok(if catalogue.problems.is_empty() { ExitCode::SUCCESS } else { ExitCode::from(EXIT_PARTIAL) });
    }
    let mut rows = vec![["NAME", "SCHEDULE", "WINDOW", "NEXT", "LAST RUN", "OUTPUT"].map(String::from)];
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
        let output = if s.schedule.is_some() { s.output.clone() } else { "-".to_owned() };
        rows.push([s.name.clone(), s.schedule.clone().unwrap_or_else(|| "-".into()), window, next, last, output]);
    }
    let widths: Vec<usize> = (0..6).map(|c| rows.iter().map(|r| r[c].chars().count()).max().unwrap_or(0)).collect();
    for r in &rows {
        let cells: Vec<String> = r.iter().zip(&widths).map(|(cell, w)| format!("{cell:<w$}")).collect();
        println!("{}", cells.join("  ").trim_end());
    }
    for p in &catalogue.problems {
        println!("BAD  {p}");
    }
    Ok(if catalogue.problems.is_empty() { ExitCode::SUCCESS } else { ExitCode::from(EXIT_PARTIAL) })
}
