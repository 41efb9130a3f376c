//! Running SQL text: splitting it into statements, executing each, printing its result, and
//! saying where a failed statement went wrong. Shared by `prism sql -c/-f`, SQL on stdin and
//! the REPL.

use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use datafusion::arrow::array::RecordBatch;
use datafusion::error::DataFusionError;
use datafusion::prelude::SessionContext;
use datafusion::sql::sqlparser::dialect::GenericDialect;
use datafusion::sql::sqlparser::tokenizer::{Token, TokenWithSpan, Tokenizer};
use futures::StreamExt;

use super::SqlError;
use super::output::{AtomicFile, OutputError, OutputFormat, ResultWriter};
use super::window::{SQL_END, SQL_START, TimeWindow, uses_window};

/// Rows shown on a terminal when `--maxrows` is not given (as datafusion-cli).
pub const DEFAULT_MAXROWS: usize = 40;

/// One statement of a script, with where it starts in the script's text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Statement {
    /// 1-based position among the script's statements.
    pub number: usize,
    /// The statement's text, from just after the previous `;` (leading comments included) to
    /// just before its own `;`.
    pub text: String,
    /// Line (1-based) and column (1-based, in characters) where `text` starts in the script.
    pub line: usize,
    pub column: usize,
}

/// Splits SQL text into statements at each `;` that is outside strings, quoted names and
/// comments (by DataFusion's own tokenizer). Statements made only of blanks and comments are
/// left out. Text the tokenizer cannot read to the end (an unclosed quote) becomes the last
/// statement, for the parser to report where it breaks.
pub fn split_statements(text: &str) -> Vec<Statement> {
    let mut tokens: Vec<TokenWithSpan> = Vec::new();
    let complete = Tokenizer::new(&GenericDialect {}, text).tokenize_with_location_into_buf(&mut tokens).is_ok();
    let index = LineIndex::new(text);
    let mut out = Vec::new();
    let mut start = 0usize; // byte offset of the current statement's text
    let mut has_content = false;
    let push = |start: usize, end: usize, out: &mut Vec<Statement>| {
        let (line, column) = index.location(start);
        out.push(Statement { number: out.len() + 1, text: text[start..end].to_owned(), line, column });
    };
    for t in &tokens {
        match &t.token {
            Token::SemiColon => {
                // The tokenizer's positions can be off after some constructs (a `/*!` hint):
                // take the `;` at or after the position it gives, found in the text itself.
                let near = floor_char_boundary(text, index.offset(t.span.start.line as usize, t.span.start.column as usize).max(start));
                let Some(at) = text[near..].find(';').map(|i| near + i) else { continue };
                if has_content {
                    push(start, at, &mut out);
                }
                start = at + 1;
                has_content = false;
            }
            Token::Whitespace(_) | Token::EOF => {}
            _ => has_content = true,
        }
    }
    if start < text.len() && (has_content || (!complete && !text[start..].trim().is_empty())) {
        push(start, text.len(), &mut out);
    }
    out
}

/// Whether REPL input is a whole statement: its last token (ignoring blanks and comments) is a
/// `;` outside quotes and comments.
pub fn ends_statement(text: &str) -> bool {
    let Ok(tokens) = Tokenizer::new(&GenericDialect {}, text).tokenize() else {
        return false;
    };
    tokens.iter().rev().find(|t| !matches!(t, Token::Whitespace(_) | Token::EOF)).is_some_and(|t| matches!(t, Token::SemiColon))
}

/// Byte offsets of line starts, to turn the tokenizer's (line, column) into offsets and back.
struct LineIndex<'a> {
    text: &'a str,
    starts: Vec<usize>,
}

/// The largest char boundary of `text` at or before `i`.
fn floor_char_boundary(text: &str, i: usize) -> usize {
    let mut i = i.min(text.len());
    while !text.is_char_boundary(i) {
        i -= 1;
    }
    i
}

impl<'a> LineIndex<'a> {
    fn new(text: &'a str) -> Self {
        let starts = std::iter::once(0).chain(text.match_indices('\n').map(|(i, _)| i + 1)).collect();
        LineIndex { text, starts }
    }

    /// Byte offset of a 1-based (line, column in characters).
    fn offset(&self, line: usize, column: usize) -> usize {
        let Some(&start) = self.starts.get(line.saturating_sub(1)) else {
            return self.text.len();
        };
        self.text[start..].char_indices().nth(column.saturating_sub(1)).map_or(self.text.len(), |(i, _)| start + i)
    }

    /// 1-based (line, column in characters) of a byte offset.
    fn location(&self, offset: usize) -> (usize, usize) {
        let offset = floor_char_boundary(self.text, offset);
        let line = self.starts.partition_point(|&s| s <= offset);
        let start = self.starts[line - 1];
        (line, self.text[start..offset].chars().count() + 1)
    }
}

/// A statement that failed, with where: the script it came from, its number, and the place in
/// the script the error points at (from the parser's position or the planner's span), shown
/// as the script's line with a caret under the place.
#[derive(Debug, Clone)]
pub struct StatementError {
    /// `-c #1`, a file name, `<stdin>`; empty for a REPL entry.
    pub origin: String,
    pub number: usize,
    /// Line and column in the script (1-based), the statement's start when the error has no
    /// position of its own.
    pub line: usize,
    pub column: usize,
    /// Whether `line`/`column` come from the error itself.
    pub located: bool,
    pub message: String,
    /// The script's line and a caret line under the place, when located.
    pub excerpt: Option<String>,
}

impl std::fmt::Display for StatementError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if !self.origin.is_empty() {
            write!(f, "{}: ", self.origin)?;
        }
        write!(f, "statement {} ", self.number)?;
        if self.located {
            write!(f, "(line {}, column {})", self.line, self.column)?;
        } else {
            write!(f, "(line {})", self.line)?;
        }
        write!(f, " failed: {}", self.message)?;
        if let Some(excerpt) = &self.excerpt {
            write!(f, "\n{excerpt}")?;
        }
        Ok(())
    }
}

impl std::error::Error for StatementError {}

impl StatementError {
    /// Locates `error`, raised by `statement` of the script `script` (its whole text).
    pub fn new(origin: &str, script: &str, statement: &Statement, error: &DataFusionError) -> StatementError {
        let (message, span) = describe(error);
        let mut e = StatementError {
            origin: origin.to_owned(),
            number: statement.number,
            line: statement.line,
            column: statement.column,
            located: false,
            message,
            excerpt: None,
        };
        if let Some((line, column, len)) = span {
            // Positions are relative to the statement's text, which starts mid-line in the script.
            e.line = statement.line + line - 1;
            e.column = if line == 1 { statement.column + column - 1 } else { column };
            e.located = true;
            e.excerpt = excerpt(script, e.line, e.column, len);
        }
        e
    }
}

/// The error's message (the innermost DataFusion error, without Debug noise) and, when it has
/// one, its position in the statement: (line, column, length in characters).
fn describe(error: &DataFusionError) -> (String, Option<(usize, usize, usize)>) {
    let root = error.find_root();
    let mut message = match root {
        DataFusionError::SQL(e, _) => e.to_string(),
        other => other.strip_backtrace(),
    };
    // An unknown column's message lists every column of every table in scope, which for
    // `events` buries the point (and the caret) under 34 names.
    if let Some(cut) = message.find("\nValid fields are ") {
        message.truncate(cut);
    }
    if let Some(span) = error.diagnostic().and_then(|d| d.span)
        && span.start.line > 0
    {
        let (line, column) = (span.start.line as usize, span.start.column as usize);
        let len = if span.end.line == span.start.line && span.end.column > span.start.column { (span.end.column - span.start.column) as usize } else { 1 };
        return (message, Some((line, column, len)));
    }
    // The parser and tokenizer end their messages with "at Line: L, Column: C", relative to
    // the statement; the caller gives the position in the script's terms instead.
    match parser_position(&message) {
        Some((l, c)) => {
            let cut = message.rfind(" at Line: ").unwrap_or(message.len());
            (message[..cut].to_owned(), Some((l, c, 1)))
        }
        None => (message, None),
    }
}

/// The `Line: L, Column: C` of a parser or tokenizer message.
fn parser_position(message: &str) -> Option<(usize, usize)> {
    let at = message.rfind("Line: ")?;
    let rest = &message[at + "Line: ".len()..];
    let (line, rest) = rest.split_once(", Column: ")?;
    let column: String = rest.chars().take_while(char::is_ascii_digit).collect();
    Some((line.trim().parse().ok()?, column.parse().ok()?)).filter(|&(l, c)| l > 0 && c > 0)
}

/// `  12 | SELECT nosuch FROM events` and a caret line under `column` (1-based, characters).
fn excerpt(script: &str, line: usize, column: usize, len: usize) -> Option<String> {
    let text = script.lines().nth(line.checked_sub(1)?)?;
    let gutter = line.to_string();
    // Tabs before the place are kept so that the caret lines up in the terminal.
    let pad: String = text.chars().take(column - 1).map(|c| if c == '\t' { '\t' } else { ' ' }).collect();
    let len = len.clamp(1, text.chars().count().saturating_sub(column - 1).max(1));
    Some(format!("{gutter} | {text}\n{} | {pad}{}", " ".repeat(gutter.len()), "^".repeat(len)))
}

/// Where and how a statement's rows are written.
pub struct Sink<'a> {
    pub format: OutputFormat,
    /// At most this many rows are written; the rest are counted and summarised (`… N more
    /// rows`). `None` writes every row.
    pub maxrows: Option<usize>,
    pub out: &'a mut (dyn Write + Send),
}

/// What a statement returned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Outcome {
    /// Rows in the result (all of them, also those not shown).
    pub rows: u64,
    /// Whether the statement returns columns at all (`CREATE VIEW`, `SET` do not).
    pub has_columns: bool,
    pub elapsed: Duration,
}

impl Outcome {
    /// `3 rows in 0.012 s`.
    pub fn summary(&self) -> String {
        let secs = self.elapsed.as_secs_f64();
        if !self.has_columns {
            return format!("OK in {secs:.3} s");
        }
        let plural = if self.rows == 1 { "" } else { "s" };
        format!("{} row{plural} in {secs:.3} s", self.rows)
    }
}

/// Plans and runs one statement, streaming its rows into `sink`.
pub async fn execute(ctx: &SessionContext, sql: &str, sink: Sink<'_>) -> Result<Outcome, ExecError> {
    let started = Instant::now();
    let df = ctx.sql(sql).await?;
    let schema = std::sync::Arc::new(df.schema().as_arrow().clone());
    let has_columns = !schema.fields().is_empty();
    let mut stream = df.execute_stream().await?;
    let limit = sink.maxrows.unwrap_or(usize::MAX);
    let mut writer = has_columns.then(|| ResultWriter::new(sink.format, schema.clone(), &mut *sink.out)).transpose()?;
    let mut rows: u64 = 0;
    let mut shown: usize = 0;
    while let Some(batch) = stream.next().await {
        let batch: RecordBatch = batch?;
        rows += batch.num_rows() as u64;
        if shown < limit
            && let Some(w) = writer.as_mut()
        {
            let take = batch.num_rows().min(limit - shown);
            w.write(&batch.slice(0, take))?;
            shown += take;
        }
    }
    if let Some(w) = writer {
        let out = w.finish()?;
        let hidden = rows - shown as u64;
        if hidden > 0 {
            let plural = if hidden == 1 { "" } else { "s" };
            writeln!(out, "… {hidden} more row{plural}").map_err(|source| OutputError::Io { what: "results".into(), source })?;
        }
    }
    Ok(Outcome { rows, has_columns, elapsed: started.elapsed() })
}

/// Why [`execute`] failed: the query, or writing its rows.
#[derive(Debug, thiserror::Error)]
pub enum ExecError {
    #[error(transparent)]
    Query(#[from] DataFusionError),
    #[error(transparent)]
    Output(#[from] OutputError),
}

/// SQL to run without a terminal: a `-c` argument, a `-f` file, or standard input.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Input {
    Command(String),
    File(PathBuf),
    Stdin,
}

/// How [`run_inputs`] writes results.
#[derive(Debug, Clone, Default)]
pub struct BatchOptions {
    /// The format; by default inferred from `output`'s extension, else `table`.
    pub format: Option<OutputFormat>,
    /// A file that receives the last statement's result, written atomically.
    pub output: Option<PathBuf>,
    /// Rows written to stdout; by default [`DEFAULT_MAXROWS`] on a terminal, all otherwise.
    /// `Some(0)` means all. Never applies to `output`.
    pub maxrows: Option<usize>,
    /// Fills `{start}` and `{end}`; without it, SQL that uses them is refused.
    pub window: Option<TimeWindow>,
}

/// Runs every statement of `inputs` in order, stopping at the first that fails. Results go to
/// stdout, except the very last statement's when `opts.output` is set.
pub async fn run_inputs(ctx: &SessionContext, inputs: &[Input], opts: &BatchOptions) -> Result<(), SqlError> {
    let format = match (opts.format, &opts.output) {
        (Some(f), _) => f,
        (None, Some(path)) => OutputFormat::from_path(path)?,
        (None, None) => OutputFormat::Table,
    };
    let stdout_is_terminal = std::io::stdout().is_terminal();
    if format == OutputFormat::Parquet && opts.output.is_none() && stdout_is_terminal {
        return Err(SqlError::Usage(
            "Parquet is binary and would garble the terminal: write it to a file with --output FILE.parquet, \
             or redirect stdout (> FILE.parquet)"
                .into(),
        ));
    }
    let maxrows = match opts.maxrows {
        Some(0) => None,
        Some(n) => Some(n),
        None => stdout_is_terminal.then_some(DEFAULT_MAXROWS),
    };
    let mut scripts = Vec::new();
    let commands = inputs.iter().filter(|i| matches!(i, Input::Command(_))).count();
    let mut command_number = 0;
    for input in inputs {
        let (origin, text) = match input {
            Input::Command(sql) => {
                command_number += 1;
                let origin = if commands > 1 { format!("-c #{command_number}") } else { "-c".to_owned() };
                (origin, sql.clone())
            }
            Input::File(path) => {
                let text = std::fs::read_to_string(path).map_err(|source| SqlError::Read { what: path.display().to_string(), source })?;
                (path.display().to_string(), text)
            }
            Input::Stdin => {
                let mut text = String::new();
                std::io::Read::read_to_string(&mut std::io::stdin(), &mut text).map_err(|source| SqlError::Read { what: "standard input".into(), source })?;
                ("<stdin>".to_owned(), text)
            }
        };
        let text = match &opts.window {
            Some(window) => window.fill(&text),
            None if uses_window(&text) => {
                return Err(SqlError::Usage(format!(
                    "{origin} uses the {SQL_START}/{SQL_END} placeholders of scheduled queries: give --window 1h \
                     (the hour ending now), or --start and --end, to fill them"
                )));
            }
            None => text,
        };
        let statements = split_statements(&text);
        scripts.push((origin, text, statements));
    }
    let total: usize = scripts.iter().map(|(_, _, s)| s.len()).sum();
    if total == 0 {
        return Err(SqlError::Usage("no SQL statement to run (the input is empty or only comments)".into()));
    }
    let mut done = 0;
    for (origin, text, statements) in &scripts {
        for statement in statements {
            done += 1;
            let located = |e: ExecError| match e {
                ExecError::Query(e) => SqlError::Statement(Box::new(StatementError::new(origin, text, statement, &e))),
                ExecError::Output(e) => SqlError::Output(e),
            };
            match (&opts.output, done == total) {
                (Some(path), true) => {
                    let mut file = AtomicFile::create(path)?;
                    let sink = Sink { format, maxrows: None, out: file.writer() };
                    execute(ctx, &statement.text, sink).await.map_err(located)?;
                    file.commit()?;
                }
                _ => {
                    // A reader that goes away (`| head`) ends the process by SIGPIPE (main.rs).
                    let mut out = std::io::BufWriter::new(std::io::stdout());
                    let sink = Sink { format, maxrows, out: &mut out };
                    execute(ctx, &statement.text, sink).await.map_err(located)?;
                    out.flush().map_err(|source| located(OutputError::Io { what: "stdout".into(), source }.into()))?;
                }
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn texts(sql: &str) -> Vec<(String, usize, usize)> {
        split_statements(sql).into_iter().map(|s| (s.text, s.line, s.column)).collect()
    }

    /// Found by the `sql_statements` fuzz target: after a `/*!` hint the tokenizer's position of
    /// a `;` fell inside a multi-byte character, and slicing there panicked.
    #[test]
    fn a_hint_comment_before_multibyte_text_does_not_panic() {
        let script = "unt(/*!\u{9827}4;\u{9827}\u{17};;ruly\n SELECT 1; SELECT 2";
        let statements = split_statements(script);
        assert!(!statements.is_empty());
        for st in &statements {
            assert!(script.contains(&st.text));
        }
        let fuzzed = b"nt(/*), 1) AS deei_dnRDERss)rioruly\x05 * * * *\x0aunt(/*!, d*/16 * * le: */16 * * * *\x0aunt(/*!\xe9\xa0\xa74;\xe9\xa0\xa7\x17;;ruly\x05 * * * *\x0aunt(/*!, d*/16 * * le: */16 * * * *\x0aunt(/*!\xe9\xa0\xa74;\xe9\xa0\xa7\x17;;;le: */16 * * * *\x0aunt(/* * * *\x0aunt(/*!2 d*/16 * * * *ven*(consore,\x0a\x0au\x00\x00\x00\x00\x00\x00\x00ynt(/";
        let script = std::str::from_utf8(fuzzed).unwrap().split('\0').next().unwrap();
        for st in split_statements(script) {
            assert!(script.contains(&st.text));
        }
    }

    #[test]
    fn splits_at_semicolons_outside_quotes_and_comments() {
        let sql = "SELECT ';' AS a; -- one; two\nSELECT \"x;y\" FROM t /* ; */;\n\n  ;SELECT 3";
        assert_eq!(
            texts(sql),
            vec![("SELECT ';' AS a".to_owned(), 1, 1), (" -- one; two\nSELECT \"x;y\" FROM t /* ; */".to_owned(), 1, 17), ("SELECT 3".to_owned(), 4, 4),]
        );
        assert!(texts("-- only a comment\n;  ").is_empty());
        let numbers: Vec<usize> = split_statements("SELECT 1; SELECT 2").iter().map(|s| s.number).collect();
        assert_eq!(numbers, vec![1, 2]);
    }

    #[test]
    fn an_unclosed_quote_ends_the_script_as_one_statement() {
        assert_eq!(texts("SELECT 1; SELECT 'oops; SELECT 2"), vec![("SELECT 1".to_owned(), 1, 1), (" SELECT 'oops; SELECT 2".to_owned(), 1, 10),]);
    }

    #[test]
    fn statement_ends() {
        assert!(ends_statement("SELECT 1;"));
        assert!(ends_statement("SELECT 1\n FROM t; -- done\n"));
        assert!(!ends_statement("SELECT 1"));
        assert!(!ends_statement("SELECT ';"));
        assert!(!ends_statement("SELECT 1 /* ; */"));
    }

    #[test]
    fn positions() {
        assert_eq!(parser_position("sql parser error: Expected: end of statement, found: x at Line: 2, Column: 15"), Some((2, 15)));
        assert_eq!(parser_position("no position"), None);
        let e = excerpt("SELECT 1;\nSELECT nosuch FROM t", 2, 8, 6).unwrap();
        assert_eq!(e, "2 | SELECT nosuch FROM t\n  |        ^^^^^^");
        let index = LineIndex::new("ab\nçd;");
        assert_eq!(index.offset(2, 3), 6);
        assert_eq!(index.location(6), (2, 3));
    }

    #[tokio::test]
    async fn errors_point_at_the_place() {
        let ctx = SessionContext::new_with_config(super::super::session_config());
        let script = "SELECT 1;\nSELECT 2,\n  nosuch;";
        let statements = split_statements(script);
        let err = ctx.sql(&statements[1].text).await.unwrap_err();
        let e = StatementError::new("q.sql", script, &statements[1], &err);
        assert_eq!((e.line, e.column, e.located), (3, 3, true), "{e}");
        assert!(e.to_string().starts_with("q.sql: statement 2 (line 3, column 3) failed: "), "{e}");
        assert!(e.to_string().ends_with("3 |   nosuch;\n  |   ^^^^^^"), "{e}");

        let script = "SELECT 1; SELEC 2";
        let statements = split_statements(script);
        let err = ctx.sql(&statements[1].text).await.unwrap_err();
        let e = StatementError::new("-c", script, &statements[1], &err);
        assert_eq!((e.line, e.column), (1, 11), "{e}");
        assert!(e.message.starts_with("sql parser error: "), "{e}");
        assert!(!e.message.contains("Line:"), "the position is given in the script's terms: {e}");
    }
}
