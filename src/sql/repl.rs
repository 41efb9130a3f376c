//! The interactive SQL shell (`prism sql --lake LAKE` on a terminal).
//!
//! Built on rustyline the way datafusion-cli is: a validator keeps reading lines until the
//! input ends with `;` (so a statement may span lines and is one history entry), a completer
//! offers keywords, functions, tables and columns from the session's catalog, and lines
//! starting with `\` are meta commands. A query runs while the terminal is in its normal mode,
//! so Ctrl-C arrives as a signal: it cancels the query (dropping its stream stops every task of
//! the plan), not the shell.

use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use datafusion::arrow::array::{ArrayRef, BooleanArray, RecordBatch, StringArray};
use datafusion::arrow::datatypes::{DataType, Field, Fields, Schema};
use datafusion::prelude::SessionContext;
use datafusion::sql::sqlparser::keywords::ALL_KEYWORDS;
use rustyline::completion::{Completer, FilenameCompleter, Pair};
use rustyline::error::ReadlineError;
use rustyline::highlight::Highlighter;
use rustyline::hint::Hinter;
use rustyline::history::FileHistory;
use rustyline::validate::{ValidationContext, ValidationResult, Validator};
use rustyline::{CompletionType, Config, Context, Editor, Helper};

use super::SqlError;
use super::exec::{self, ExecError, Sink, StatementError};
use super::output::{OutputFormat, ResultWriter};

const PROMPT: &str = "prism> ";

/// Settings of a REPL session.
#[derive(Debug, Clone)]
pub struct ReplOptions {
    /// Where the history is kept; `None` keeps none.
    pub history: Option<PathBuf>,
    /// Rows shown per result (0: all).
    pub maxrows: usize,
    /// The starting result format (`\format` changes it).
    pub format: OutputFormat,
    /// Shown in the greeting: which lake this is.
    pub lake: String,
}

/// `$PRISM_HISTORY`, else `~/.prism_history`.
pub fn default_history_path() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("PRISM_HISTORY").filter(|p| !p.is_empty()) {
        return Some(PathBuf::from(p));
    }
    std::env::home_dir().map(|h| h.join(".prism_history"))
}

pub const HELP: &str = "\
Statements end with `;` and may span lines. Tab completes keywords, tables and columns.
Ctrl-C cancels a running query (or clears the line); Ctrl-D or \\q quits.

  \\d               list tables and views
  \\d TABLE         the columns of TABLE: nested fields as a.b (query them so), list
                   items as a[].b (query a[1]['b'])
  \\timing [on|off] show the rows and time after each statement (on by default)
  \\format FORMAT   table, csv, json or ndjson
  \\i FILE          run the statements of FILE
  \\q               quit
  \\?               this help

Tables: events (one row per CloudTrail event), ingest_log, rejects, ingested_files, and every
other Delta table of the lake. Times are UTC. Examples:
  SELECT eventname, count(*) FROM events GROUP BY 1 ORDER BY 2 DESC LIMIT 10;
  SELECT * FROM events WHERE eventtime >= TIMESTAMP '2024-06-01T00:00:00Z' LIMIT 5;
  SELECT (requestparameters->>'userName') AS username, count(*) FROM events
    WHERE eventsource = 'iam.amazonaws.com' GROUP BY 1;";

/// State the meta commands change.
struct State {
    format: OutputFormat,
    maxrows: Option<usize>,
    timing: bool,
}

/// Runs the shell until `\q` or Ctrl-D.
pub async fn run(ctx: &SessionContext, opts: ReplOptions) -> Result<(), SqlError> {
    let config = Config::builder()
        .max_history_size(10_000)?
        .history_ignore_dups(true)?
        .history_ignore_space(true)
        .auto_add_history(false)
        .completion_type(CompletionType::List)
        .build();
    let words = Arc::new(Mutex::new(Words::default()));
    let mut rl: Editor<ReplHelper, FileHistory> = Editor::with_config(config)?;
    rl.set_helper(Some(ReplHelper { words: words.clone(), files: FilenameCompleter::new() }));
    let history = opts.history.clone();
    if let Some(path) = &history
        && path.exists()
        && let Err(e) = rl.load_history(path)
    {
        eprintln!("warning: cannot read the history file {}: {e}", path.display());
    }
    let mut state = State { format: opts.format, maxrows: (opts.maxrows > 0).then_some(opts.maxrows), timing: true };
    refresh_words(ctx, &words).await;
    let tables = lock(&words).tables.iter().cloned().collect::<Vec<_>>().join(", ");
    println!("Prism SQL on {} — tables: {tables}", opts.lake);
    println!("Statements end with `;`. \\? for help, \\q to quit.");
    let mut history_warned = false;
    loop {
        let input = match rl.readline(PROMPT) {
            Ok(input) => input,
            // Ctrl-C at the prompt drops the line being typed, as in a shell.
            Err(ReadlineError::Interrupted) => continue,
            Err(ReadlineError::Eof) => break,
            Err(e) => return Err(e.into()),
        };
        let command = input.trim();
        if command.is_empty() {
            continue;
        }
        rl.add_history_entry(input.as_str())?;
        if let Some(path) = &history
            && let Err(e) = rl.append_history(path)
            && !history_warned
        {
            eprintln!("warning: cannot write the history file {}: {e}", path.display());
            history_warned = true;
        }
        if let Some(meta) = command.strip_prefix('\\') {
            if meta_command(ctx, meta, &mut state).await == Flow::Quit {
                break;
            }
        } else if matches!(command.trim_end_matches(';').to_ascii_lowercase().as_str(), "quit" | "exit") {
            break;
        } else {
            run_text(ctx, "", &input, &state).await;
        }
        refresh_words(ctx, &words).await;
    }
    Ok(())
}

#[derive(Debug, PartialEq, Eq)]
enum Flow {
    Continue,
    Quit,
}

async fn meta_command(ctx: &SessionContext, meta: &str, state: &mut State) -> Flow {
    let (name, arg) = meta.split_once(char::is_whitespace).unwrap_or((meta, ""));
    let arg = arg.trim().trim_end_matches(';').trim();
    match (name, arg) {
        ("q" | "quit", _) => return Flow::Quit,
        ("?" | "h" | "help", _) => println!("{HELP}"),
        ("d", "") => {
            let _ = super::refresh(ctx).await;
            let sql = "SELECT table_name AS name, CASE table_type WHEN 'BASE TABLE' THEN 'table' ELSE lower(table_type) END AS type \
                       FROM information_schema.tables WHERE table_schema = 'public' ORDER BY name";
            let mut out = std::io::stdout();
            let sink = Sink { format: OutputFormat::Table, maxrows: None, out: &mut out };
            if let Err(e) = exec::execute(ctx, sql, sink).await {
                eprintln!("error: {}", crate::error::report(&e));
            }
        }
        ("d", table) => {
            if let Err(e) = describe_table(ctx, table).await {
                eprintln!("error: {}", crate::error::report(&e));
            }
        }
        ("timing", "" | "on" | "off") => {
            state.timing = if arg.is_empty() { !state.timing } else { arg == "on" };
            println!("Timing is {}.", if state.timing { "on" } else { "off" });
        }
        ("timing", other) => eprintln!("error: \\timing takes on or off, not `{other}`"),
        ("format", "") => println!("Results are shown as {}.", state.format),
        ("format", f) => match f.parse::<OutputFormat>() {
            Ok(OutputFormat::Parquet) => {
                eprintln!("error: Parquet is binary; write it to a file with `prism sql -c … --output FILE.parquet`")
            }
            Ok(f) => {
                state.format = f;
                println!("Results are shown as {f}.");
            }
            Err(e) => eprintln!("error: {e}"),
        },
        ("i", "") => eprintln!("error: \\i needs a file: \\i queries/root_activity.sql"),
        ("i", file) => match std::fs::read_to_string(file) {
            Ok(text) => run_text(ctx, file, &text, state).await,
            Err(e) => eprintln!("error: reading {file}: {e}"),
        },
        _ => eprintln!("error: unknown command `\\{name}`; \\? lists the commands"),
    }
    Flow::Continue
}

/// Runs each statement of `text`, printing results, until one fails or Ctrl-C cancels it.
async fn run_text(ctx: &SessionContext, origin: &str, text: &str, state: &State) {
    let statements = exec::split_statements(text);
    let many = statements.len() > 1;
    for statement in &statements {
        let mut out = std::io::stdout();
        let sink = Sink { format: state.format, maxrows: state.maxrows, out: &mut out };
        let result = tokio::select! {
            r = exec::execute(ctx, &statement.text, sink) => r,
            Ok(()) = tokio::signal::ctrl_c() => {
                println!("\nQuery cancelled.");
                return;
            }
        };
        match result {
            Ok(outcome) => {
                if state.timing {
                    println!("{}", outcome.summary());
                }
            }
            Err(ExecError::Query(e)) => {
                let e = StatementError::new(origin, text, statement, &e);
                if origin.is_empty() && !many {
                    // One statement typed at the prompt: its place is all that matters.
                    eprintln!("error: {}", e.message);
                    if let Some(excerpt) = &e.excerpt {
                        eprintln!("{excerpt}");
                    }
                } else {
                    eprintln!("error: {}", crate::error::report(&e));
                }
                return;
            }
            Err(ExecError::Output(e)) => {
                eprintln!("error: {}", crate::error::report(&e));
                return;
            }
        }
    }
}

/// `\d TABLE`: one row per column, nested fields flattened to paths.
async fn describe_table(ctx: &SessionContext, name: &str) -> Result<(), SqlError> {
    let name = match name.strip_prefix('"').and_then(|n| n.strip_suffix('"')) {
        Some(quoted) => quoted.to_owned(),
        None => name.to_ascii_lowercase(),
    };
    let provider = match ctx.table_provider(name.as_str()).await {
        Ok(p) => p,
        Err(_) => {
            return Err(SqlError::Usage(format!("no table or view `{name}`; \\d lists them")));
        }
    };
    let mut rows = Vec::new();
    flatten_fields("", provider.schema().fields(), &mut rows);
    let schema = Arc::new(Schema::new(vec![
        Field::new("column", DataType::Utf8, false),
        Field::new("type", DataType::Utf8, false),
        Field::new("nullable", DataType::Boolean, false),
    ]));
    let columns: Vec<ArrayRef> = vec![
        Arc::new(StringArray::from_iter_values(rows.iter().map(|r| r.0.as_str()))),
        Arc::new(StringArray::from_iter_values(rows.iter().map(|r| r.1.as_str()))),
        Arc::new(BooleanArray::from(rows.iter().map(|r| r.2).collect::<Vec<_>>())),
    ];
    let batch = RecordBatch::try_new(schema.clone(), columns).map_err(|e| SqlError::DataFusion(e.into()))?;
    let mut w = ResultWriter::new(OutputFormat::Table, schema, std::io::stdout())?;
    w.write(&batch)?;
    w.finish()?;
    Ok(())
}

/// (path, type, nullable) of every field, structs and lists of structs expanded.
fn flatten_fields(prefix: &str, fields: &Fields, out: &mut Vec<(String, String, bool)>) {
    for f in fields {
        let path = format!("{prefix}{}", f.name());
        match f.data_type() {
            DataType::Struct(children) => {
                out.push((path.clone(), "struct".into(), f.is_nullable()));
                flatten_fields(&format!("{path}."), children, out);
            }
            DataType::List(item) | DataType::LargeList(item) if matches!(item.data_type(), DataType::Struct(_)) => {
                out.push((path.clone(), "list<struct>".into(), f.is_nullable()));
                if let DataType::Struct(children) = item.data_type() {
                    flatten_fields(&format!("{path}[]."), children, out);
                }
            }
            other => out.push((path, type_name(other), f.is_nullable())),
        }
    }
}

/// Short type names for people: `string`, `timestamp (UTC)`, `list<string>`.
fn type_name(t: &DataType) -> String {
    match t {
        DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View => "string".into(),
        DataType::Boolean => "boolean".into(),
        DataType::Int8 | DataType::Int16 | DataType::Int32 | DataType::Int64 => "integer".into(),
        DataType::UInt8 | DataType::UInt16 | DataType::UInt32 | DataType::UInt64 => "unsigned integer".into(),
        DataType::Float16 | DataType::Float32 | DataType::Float64 => "double".into(),
        DataType::Timestamp(_, Some(tz)) => format!("timestamp ({tz})"),
        DataType::Timestamp(_, None) => "timestamp".into(),
        DataType::Date32 | DataType::Date64 => "date".into(),
        DataType::List(item) | DataType::LargeList(item) => {
            format!("list<{}>", type_name(item.data_type()))
        }
        other => other.to_string(),
    }
}

/// What the completer offers, refreshed after each command.
#[derive(Default)]
struct Words {
    tables: BTreeSet<String>,
    /// Columns of each table (top level).
    columns: BTreeMap<String, Vec<String>>,
    functions: Vec<String>,
}

async fn refresh_words(ctx: &SessionContext, words: &Arc<Mutex<Words>>) {
    let _ = super::refresh(ctx).await;
    let options = ctx.state().config_options().catalog.clone();
    let Some(schema) = ctx.catalog(&options.default_catalog).and_then(|c| c.schema(&options.default_schema)) else {
        return;
    };
    let names: BTreeSet<String> = schema.table_names().into_iter().collect();
    let known: BTreeSet<String> = lock(words).columns.keys().cloned().collect();
    let mut fetched = Vec::new();
    for name in names.difference(&known) {
        if let Ok(Some(t)) = schema.table(name).await {
            fetched.push((name.clone(), t.schema().fields().iter().map(|f| f.name().clone()).collect()));
        }
    }
    let state = ctx.state();
    let mut functions: Vec<String> =
        state.scalar_functions().keys().chain(state.aggregate_functions().keys()).chain(state.window_functions().keys()).cloned().collect();
    functions.sort();
    functions.dedup();
    let mut w = lock(words);
    w.columns.retain(|t, _| names.contains(t));
    w.columns.extend(fetched);
    w.tables = names;
    w.functions = functions;
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

const META_COMMANDS: &[&str] = &["\\d", "\\timing", "\\format", "\\i", "\\q", "\\?"];
const FORMATS: &[&str] = &["table", "csv", "json", "ndjson"];
/// Keywords after which only a table name fits.
const BEFORE_TABLE: &[&str] = &["FROM", "JOIN", "INTO", "TABLE", "UPDATE", "DESCRIBE"];

struct ReplHelper {
    words: Arc<Mutex<Words>>,
    files: FilenameCompleter,
}

impl ReplHelper {
    /// Candidates for the word `word` (possibly empty), given the text before it.
    fn candidates(&self, before: &str, word: &str) -> Vec<String> {
        let words = lock(&self.words);
        let trimmed = before.trim_start();
        if let Some(meta) = trimmed.strip_prefix('\\') {
            let command = meta.split_whitespace().next().unwrap_or("");
            return match command {
                "d" => words.tables.iter().filter(|t| t.starts_with(word)).cloned().collect(),
                "format" => FORMATS.iter().filter(|f| f.starts_with(word)).map(|f| f.to_string()).collect(),
                _ => Vec::new(),
            };
        }
        let previous = before.split(|c: char| c.is_whitespace() || c == ',' || c == '(').rev().find(|w| !w.is_empty());
        let wants_table = previous.is_some_and(|p| BEFORE_TABLE.iter().any(|k| k.eq_ignore_ascii_case(p)));
        let lower = word.to_ascii_lowercase();
        let mut out: Vec<String> = words.tables.iter().filter(|t| t.starts_with(&lower)).cloned().collect();
        if wants_table || word.is_empty() {
            return out;
        }
        let columns: BTreeSet<&String> = words.columns.values().flatten().filter(|c| c.starts_with(&lower)).collect();
        out.extend(columns.into_iter().filter(|c| !words.tables.contains(*c)).cloned());
        out.extend(words.functions.iter().filter(|f| f.starts_with(&lower)).cloned());
        // Keywords in the case the user types them.
        let upper = word.to_ascii_uppercase();
        let keep_lower = word.chars().any(|c| c.is_ascii_lowercase());
        out.extend(ALL_KEYWORDS.iter().filter(|k| k.starts_with(&upper)).map(|k| if keep_lower { k.to_ascii_lowercase() } else { k.to_string() }));
        let mut seen = BTreeSet::new();
        out.retain(|c| seen.insert(c.clone()));
        out
    }
}

impl Completer for ReplHelper {
    type Candidate = Pair;

    fn complete(&self, line: &str, pos: usize, ctx: &Context<'_>) -> rustyline::Result<(usize, Vec<Pair>)> {
        let before_cursor = &line[..pos];
        if before_cursor.trim_start().starts_with("\\i ") {
            return self.files.complete(line, pos, ctx);
        }
        let start = before_cursor
            .char_indices()
            .rev()
            .find(|(_, c)| !(c.is_alphanumeric() || *c == '_' || *c == '\\' || *c == '?'))
            .map_or(0, |(i, c)| i + c.len_utf8());
        let word = &before_cursor[start..];
        if word.starts_with('\\') && before_cursor[..start].trim().is_empty() {
            let meta: Vec<Pair> =
                META_COMMANDS.iter().filter(|m| m.starts_with(word)).map(|m| Pair { display: m.to_string(), replacement: m.to_string() }).collect();
            return Ok((start, meta));
        }
        let pairs = self.candidates(&before_cursor[..start], word).into_iter().map(|c| Pair { display: c.clone(), replacement: c }).collect();
        Ok((start, pairs))
    }
}

impl Validator for ReplHelper {
    fn validate(&self, ctx: &mut ValidationContext) -> rustyline::Result<ValidationResult> {
        let input = ctx.input().trim();
        let complete = input.is_empty()
            || input.starts_with('\\')
            || matches!(input.trim_end_matches(';').to_ascii_lowercase().as_str(), "quit" | "exit")
            || exec::ends_statement(input);
        Ok(if complete { ValidationResult::Valid(None) } else { ValidationResult::Incomplete })
    }
}

impl Hinter for ReplHelper {
    type Hint = String;
}

impl Highlighter for ReplHelper {
    fn highlight_prompt<'b, 's: 'b, 'p: 'b>(&'s self, prompt: &'p str, _default: bool) -> Cow<'b, str> {
        Cow::Borrowed(prompt)
    }
}

impl Helper for ReplHelper {}

#[cfg(test)]
mod tests {
    use super::*;

    fn helper() -> ReplHelper {
        let words = Words {
            tables: ["events", "ingest_log", "rejects"].iter().map(|s| s.to_string()).collect(),
            columns: [("events".into(), vec!["eventname".into(), "eventtime".into(), "readonly".into()])].into(),
            functions: vec!["json_get_str".into()],
        };
        ReplHelper { words: Arc::new(Mutex::new(words)), files: FilenameCompleter::new() }
    }

    #[test]
    fn completes_tables_after_from_and_everything_elsewhere() {
        let h = helper();
        assert_eq!(h.candidates("SELECT count(*) FROM ", "rej"), vec!["rejects"]);
        assert_eq!(h.candidates("SELECT * FROM ", "eve"), vec!["events"]);
        assert_eq!(h.candidates("SELECT ", "eventn"), vec!["eventname"]);
        assert_eq!(h.candidates("SELECT ", "json_g"), vec!["json_get_str"]);
        assert!(h.candidates("", "SEL").contains(&"SELECT".to_string()));
        assert!(h.candidates("", "sel").contains(&"select".to_string()));
        assert_eq!(h.candidates("\\d ", "in"), vec!["ingest_log"]);
        assert_eq!(h.candidates("\\format ", "nd"), vec!["ndjson"]);
    }

    #[test]
    fn nested_fields_are_flattened() {
        let inner = Fields::from(vec![Field::new("arn", DataType::Utf8, true)]);
        let fields = Fields::from(vec![
            Field::new("useridentity", DataType::Struct(inner.clone()), true),
            Field::new("resources", DataType::List(Arc::new(Field::new("item", DataType::Struct(inner), true))), true),
        ]);
        let mut rows = Vec::new();
        flatten_fields("", &fields, &mut rows);
        let paths: Vec<&str> = rows.iter().map(|r| r.0.as_str()).collect();
        assert_eq!(paths, vec!["useridentity", "useridentity.arn", "resources", "resources[].arn"]);
        assert_eq!(rows[1].1, "string");
    }
}
