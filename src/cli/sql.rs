//! `prism sql`: the interactive shell, or statements from -c, -f or stdin.

use std::io::IsTerminal;
use std::process::ExitCode;

use clap::Args;

use chrono::{DateTime, Utc};

use prism::sql::OutputFormat;
use prism::sql::window::{Span, TimeWindow};

use super::args::{parse_span, parse_time};

pub const HELP: &str = "\
Tables (every Delta table of the lake, by its folder name; `\\d` lists them all):
  events           one row per CloudTrail event (eventtime is a UTC timestamp; docs/lake.md)
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
  prism sql --lake ./lake -f queries/access_denied_hot_spots.sql --window 1h

Windows: a file written for `prism schedule` uses {start} and {end}; --window 1h fills them with
the hour ending now (to the minute), --start/--end with any range (RFC 3339, UTC).

Without --lake: a session with every function and no tables, for your own files:
  prism sql -c \"SELECT * FROM 'series.csv' LIMIT 5\"
  prism sql -c \"CREATE EXTERNAL TABLE s STORED AS CSV LOCATION 'series.csv'
      OPTIONS ('format.has_header' 'true'); SELECT t, v, deviation_score(v, ...) OVER (...) FROM s\"

JSON columns (requestparameters, responseelements, …): (requestparameters->>'userName'),
json_get_str(requestparameters, 'bucketName'). Several statements run in order (-c and -f
as given); the first that fails stops the run with exit status 1, naming the statement.";

#[derive(Args)]
pub struct SqlArgs {
    /// The lake folder or s3:// URL. Without it: no tables, but every function, and local
    /// CSV, Parquet and JSON files by name or with CREATE EXTERNAL TABLE.
    #[arg(long, env = "PRISM_LAKE")]
    pub lake: Option<String>,
    /// SQL to run; repeatable, each may hold several `;`-separated statements.
    #[arg(short = 'c', long = "command", value_name = "SQL")]
    pub command: Vec<String>,
    /// A file of SQL statements to run; repeatable.
    #[arg(short = 'f', long = "file", value_name = "FILE")]
    pub file: Vec<std::path::PathBuf>,
    /// Result format [default: from --output's extension, else table].
    #[arg(long, value_enum)]
    pub format: Option<OutputFormat>,
    /// Write the last statement's result to FILE (atomically: complete or not at all).
    #[arg(long, short = 'o', value_name = "FILE")]
    pub output: Option<std::path::PathBuf>,
    /// Rows shown per result on a terminal (0: all) [default: 40]. Output to a pipe or
    /// --output is complete unless this is given.
    #[arg(long, value_name = "N")]
    pub maxrows: Option<usize>,
    /// Fill {start} with this time (RFC 3339), as a scheduled run would.
    #[arg(long, value_parser = parse_time, value_name = "TIME")]
    pub start: Option<DateTime<Utc>>,
    /// Fill {end} with this time (RFC 3339).
    #[arg(long, value_parser = parse_time, value_name = "TIME")]
    pub end: Option<DateTime<Utc>>,
    /// Fill {start}/{end} with a window this long (15m, 1h, 1d, 1w), ending at --end or now.
    #[arg(long, value_parser = parse_span, value_name = "SPAN")]
    pub window: Option<Span>,
    /// History file of the interactive shell [default: ~/.prism_history].
    #[arg(long, env = "PRISM_HISTORY", value_name = "FILE")]
    pub history: Option<std::path::PathBuf>,
}

/// The -c and -f arguments in the order they were given.
pub fn inputs(matches: &clap::ArgMatches, args: &SqlArgs) -> Vec<prism::sql::Input> {
    let indexed = |id: &str| matches.indices_of(id).map(|i| i.collect::<Vec<_>>()).unwrap_or_default();
    let commands = args.command.iter().map(|c| prism::sql::Input::Command(c.clone()));
    let files = args.file.iter().map(|f| prism::sql::Input::File(f.clone()));
    let mut inputs: Vec<_> = indexed("command").into_iter().zip(commands).chain(indexed("file").into_iter().zip(files)).collect();
    inputs.sort_by_key(|(i, _)| *i);
    inputs.into_iter().map(|(_, input)| input).collect()
}

pub async fn run(args: SqlArgs, mut inputs: Vec<prism::sql::Input>) -> anyhow::Result<ExitCode> {
    let window = TimeWindow::from_flags(args.start, args.end, args.window, Utc::now()).map_err(anyhow::Error::msg)?;
    let (ctx, shown) = match &args.lake {
        Some(lake) => {
            let lake = prism::Lake::open(lake).await?;
            (prism::sql::session(&lake).await?, lake.url().to_string())
        }
        None => (prism::sql::local_session()?, "no lake (your files: SELECT * FROM 'file.csv')".to_owned()),
    };
    if inputs.is_empty() {
        if std::io::stdin().is_terminal() {
            if args.output.is_some() {
                anyhow::bail!("--output needs SQL to run: give -c, -f, or SQL on stdin");
            }
            if args.format == Some(OutputFormat::Parquet) {
                anyhow::bail!("the interactive shell shows text; for Parquet give -c or -f with --output FILE.parquet");
            }
            if window.is_some() {
                anyhow::bail!("--start, --end and --window fill the {{start}}/{{end}} of -c, -f or stdin; the shell takes plain SQL");
            }
            let opts = prism::sql::repl::ReplOptions {
                history: args.history.or_else(prism::sql::repl::default_history_path),
                maxrows: args.maxrows.unwrap_or(prism::sql::exec::DEFAULT_MAXROWS),
                format: args.format.unwrap_or(OutputFormat::Table),
                lake: shown,
            };
            prism::sql::repl::run(&ctx, opts).await?;
            return Ok(ExitCode::SUCCESS);
        }
        inputs.push(prism::sql::Input::Stdin);
    }
    let opts = prism::sql::BatchOptions { format: args.format, output: args.output, maxrows: args.maxrows, window };
    prism::sql::exec::run_inputs(&ctx, &inputs, &opts).await?;
    Ok(ExitCode::SUCCESS)
}
