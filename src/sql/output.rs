//! Result formats, shared by `prism sql`, the REPL and scheduled queries (one writer per format).

use std::io::Write;
use std::path::{Path, PathBuf};

use datafusion::arrow::array::RecordBatch;
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::arrow::error::ArrowError;
use datafusion::parquet::arrow::ArrowWriter;
use datafusion::parquet::errors::ParquetError;

#[derive(Debug, thiserror::Error)]
pub enum OutputError {
    #[error("writing {what}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("formatting results as {format}")]
    Arrow {
        format: OutputFormat,
        #[source]
        source: ArrowError,
    },
    #[error("writing Parquet")]
    Parquet(#[from] ParquetError),
    #[error("cannot tell the output format of `{path}` from its extension; use .csv, .json, .ndjson or .parquet, or give the format (--format)")]
    UnknownExtension { path: String },
}

/// How results are written. `Table` is for people; the others are for programs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, clap::ValueEnum)]
pub enum OutputFormat {
    /// An aligned text table.
    Table,
    /// CSV with a header line.
    Csv,
    /// One JSON array of objects.
    Json,
    /// One JSON object per line.
    Ndjson,
    /// A Parquet file (binary: write it to a file, not a terminal).
    Parquet,
}

impl std::fmt::Display for OutputFormat {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            OutputFormat::Table => "table",
            OutputFormat::Csv => "csv",
            OutputFormat::Json => "json",
            OutputFormat::Ndjson => "ndjson",
            OutputFormat::Parquet => "parquet",
        })
    }
}

impl std::str::FromStr for OutputFormat {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.to_ascii_lowercase().as_str() {
            "table" => Ok(OutputFormat::Table),
            "csv" => Ok(OutputFormat::Csv),
            "json" => Ok(OutputFormat::Json),
            "ndjson" | "jsonl" => Ok(OutputFormat::Ndjson),
            "parquet" => Ok(OutputFormat::Parquet),
            other => Err(format!("unknown format `{other}`: use table, csv, json, ndjson or parquet")),
        }
    }
}

impl OutputFormat {
    /// The format a file name asks for (`.csv`, `.json`, `.ndjson`/`.jsonl`, `.parquet`).
    pub fn from_path(path: &Path) -> Result<OutputFormat, OutputError> {
        let unknown = || OutputError::UnknownExtension { path: path.display().to_string() };
        let ext = path.extension().and_then(|e| e.to_str()).ok_or_else(unknown)?;
        match ext.parse::<OutputFormat>() {
            Ok(OutputFormat::Table) | Err(_) => Err(unknown()),
            Ok(f) => Ok(f),
        }
    }
}

/// Writes results in one format as they arrive, so an export of millions of rows needs the
/// memory of one batch (the `table` format alone keeps its rows, to align the columns).
/// An empty result still writes the header (CSV), `[]` (JSON), the column names (table), or a
/// valid Parquet file with the schema.
pub struct ResultWriter<W: Write + Send> {
    format: OutputFormat,
    schema: SchemaRef,
    state: WriterState<W>,
}

/// `batch` with the columns `convert` turns into text (it returns `None` for those it keeps).
fn as_text(
    batch: &RecordBatch,
    convert: impl Fn(&datafusion::arrow::datatypes::Field, &datafusion::arrow::array::ArrayRef) -> Result<Option<datafusion::arrow::array::StringArray>, ArrowError>,
) -> Result<RecordBatch, ArrowError> {
    use datafusion::arrow::array::ArrayRef;
    use datafusion::arrow::datatypes::{DataType, Field, Schema};
    let mut fields = Vec::new();
    let mut columns: Vec<ArrayRef> = Vec::new();
    for (field, column) in batch.schema().fields().iter().zip(batch.columns()) {
        match convert(field, column)? {
            Some(text) => {
                fields.push(Field::new(field.name(), DataType::Utf8, true));
                columns.push(std::sync::Arc::new(text));
            }
            None => {
                fields.push(field.as_ref().clone());
                columns.push(column.clone());
            }
        }
    }
    RecordBatch::try_new(std::sync::Arc::new(Schema::new(fields)), columns)
}

/// CSV has no nested values: struct, list and map columns become their JSON text (as
/// `--format json` would print them), so `SELECT *` over events works in every format.
fn nested_as_json(batch: &RecordBatch) -> Result<RecordBatch, ArrowError> {
    use datafusion::arrow::array::StringBuilder;
    use datafusion::arrow::datatypes::{Field, Schema};
    if !batch.schema().fields().iter().any(|f| f.data_type().is_nested()) {
        return Ok(batch.clone());
    }
    as_text(batch, |field, column| {
        if !field.data_type().is_nested() {
            return Ok(None);
        }
        // One-column NDJSON lines are `{"v":<value>}`, or `{}` for a null.
        let one = RecordBatch::try_new(std::sync::Arc::new(Schema::new(vec![Field::new("v", field.data_type().clone(), true)])), vec![column.clone()])?;
        let mut w = datafusion::arrow::json::LineDelimitedWriter::new(Vec::new());
        w.write(&one)?;
        w.finish()?;
        let text = String::from_utf8(w.into_inner()).map_err(|e| ArrowError::ExternalError(Box::new(e)))?;
        let mut strings = StringBuilder::new();
        for line in text.lines() {
            match line.strip_prefix("{\"v\":").and_then(|v| v.strip_suffix('}')) {
                Some(v) => strings.append_value(v),
                None => strings.append_null(),
            }
        }
        Ok(Some(strings.finish()))
    })
}

/// Whether a character can act on a terminal rather than show: control characters (C0, DEL,
/// C1, so escape sequences and newlines) and the bidirectional overrides and isolates, which
/// reorder what is shown.
fn acts_on_terminal(c: char) -> bool {
    c.is_control() || matches!(c, '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
}

/// A value made safe to show on a terminal: each character that could act on it is shown as
/// an escape (`\n`, `\t`, `\r`, else `\u{1b}`). Values read from logs are attacker-controlled.
pub fn for_terminal(s: &str) -> std::borrow::Cow<'_, str> {
    use std::fmt::Write as _;
    if !s.chars().any(acts_on_terminal) {
        return std::borrow::Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        match c {
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if acts_on_terminal(c) => {
                let _ = write!(out, "\\u{{{:x}}}", c as u32);
            }
            c => out.push(c),
        }
    }
    std::borrow::Cow::Owned(out)
}

/// A batch as the `table` format shows it: nested values as JSON text, and every text made
/// safe for a terminal ([`for_terminal`]).
fn for_terminal_batch(batch: &RecordBatch) -> Result<RecordBatch, ArrowError> {
    use datafusion::arrow::array::AsArray;
    use datafusion::arrow::datatypes::DataType;
    as_text(&nested_as_json(batch)?, |field, column| {
        if !matches!(field.data_type(), DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View | DataType::Dictionary(..)) {
            return Ok(None);
        }
        let plain = datafusion::arrow::compute::cast(column, &DataType::Utf8)?;
        Ok(Some(plain.as_string::<i32>().iter().map(|v| v.map(for_terminal)).collect()))
    })
}

enum WriterState<W: Write + Send> {
    Table { out: W, batches: Vec<RecordBatch> },
    Csv { out: datafusion::arrow::csv::Writer<W>, wrote: bool },
    Json(datafusion::arrow::json::ArrayWriter<W>),
    Ndjson(datafusion::arrow::json::LineDelimitedWriter<W>),
    Parquet(ArrowWriter<W>),
}

impl<W: Write + Send> ResultWriter<W> {
    pub fn new(format: OutputFormat, schema: SchemaRef, out: W) -> Result<Self, OutputError> {
        let state = match format {
            OutputFormat::Table => WriterState::Table { out, batches: Vec::new() },
            OutputFormat::Csv => WriterState::Csv { out: datafusion::arrow::csv::WriterBuilder::new().with_header(true).build(out), wrote: false },
            OutputFormat::Json => WriterState::Json(datafusion::arrow::json::ArrayWriter::new(out)),
            OutputFormat::Ndjson => WriterState::Ndjson(datafusion::arrow::json::LineDelimitedWriter::new(out)),
            OutputFormat::Parquet => WriterState::Parquet(ArrowWriter::try_new(out, schema.clone(), None)?),
        };
        Ok(ResultWriter { format, schema, state })
    }

    pub fn write(&mut self, batch: &RecordBatch) -> Result<(), OutputError> {
        let format = self.format;
        let arrow = |source| OutputError::Arrow { format, source };
        match &mut self.state {
            WriterState::Table { batches, .. } => batches.push(batch.clone()),
            WriterState::Csv { out, wrote } => {
                out.write(&nested_as_json(batch).map_err(arrow)?).map_err(arrow)?;
                *wrote = true;
            }
            WriterState::Json(w) => w.write(batch).map_err(arrow)?,
            WriterState::Ndjson(w) => w.write(batch).map_err(arrow)?,
            WriterState::Parquet(w) => w.write(batch)?,
        }
        Ok(())
    }

    /// Ends the output (footer, closing bracket, the table itself) and flushes it.
    pub fn finish(self) -> Result<W, OutputError> {
        let format = self.format;
        let arrow = |source| OutputError::Arrow { format, source };
        let io = |source| OutputError::Io { what: "results".into(), source };
        let mut out = match self.state {
            WriterState::Table { mut out, batches } => {
                let shown: Vec<RecordBatch> = batches.iter().map(for_terminal_batch).collect::<Result<_, _>>().map_err(arrow)?;
                // With the schema, an empty result still shows its column names.
                let schema = shown.first().map(|b| b.schema()).unwrap_or(self.schema);
                let table = datafusion::arrow::util::pretty::pretty_format_batches_with_schema(schema, &shown).map_err(arrow)?;
                writeln!(out, "{table}").map_err(io)?;
                out
            }
            WriterState::Csv { out, wrote } => {
                let mut out = out.into_inner();
                if !wrote {
                    let names: Vec<&str> = self.schema.fields().iter().map(|f| f.name().as_str()).collect();
                    writeln!(out, "{}", names.join(",")).map_err(io)?;
                }
                out
            }
            WriterState::Json(mut w) => {
                w.finish().map_err(arrow)?;
                let mut out = w.into_inner();
                writeln!(out).map_err(io)?;
                out
            }
            WriterState::Ndjson(mut w) => {
                w.finish().map_err(arrow)?;
                w.into_inner()
            }
            WriterState::Parquet(w) => w.into_inner()?,
        };
        out.flush().map_err(io)?;
        Ok(out)
    }
}

/// Writes `batches` (all of `schema`) to `out` in `format`.
pub fn write_batches<W: Write + Send>(format: OutputFormat, schema: &SchemaRef, batches: &[RecordBatch], out: W) -> Result<(), OutputError> {
    let mut w = ResultWriter::new(format, schema.clone(), out)?;
    for b in batches {
        w.write(b)?;
    }
    w.finish().map(drop)
}

/// A file written atomically: into a temporary file beside it, renamed over it by
/// [`AtomicFile::commit`], so a reader (or a crash) never sees half a file. Dropped without a
/// commit, it leaves nothing behind. Parent folders are created.
pub struct AtomicFile {
    path: PathBuf,
    tmp: PathBuf,
    file: std::io::BufWriter<std::fs::File>,
    committed: bool,
}

impl AtomicFile {
    pub fn create(path: &Path) -> Result<AtomicFile, OutputError> {
        let io = |source| OutputError::Io { what: path.display().to_string(), source };
        let dir = match path.parent() {
            Some(d) if !d.as_os_str().is_empty() => d,
            _ => Path::new("."),
        };
        std::fs::create_dir_all(dir).map_err(io)?;
        let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        let tmp = dir.join(format!(".{name}.{}.tmp", std::process::id()));
        let file = std::fs::File::create(&tmp).map_err(io)?;
        Ok(AtomicFile { path: path.to_owned(), tmp, file: std::io::BufWriter::new(file), committed: false })
    }

    /// Where the bytes go until the commit.
    pub fn writer(&mut self) -> &mut std::io::BufWriter<std::fs::File> {
        &mut self.file
    }

    /// Flushes the file to disk and moves it to its final name.
    pub fn commit(mut self) -> Result<(), OutputError> {
        let io = |source| OutputError::Io { what: self.path.display().to_string(), source };
        self.file.flush().map_err(io)?;
        self.file.get_ref().sync_all().map_err(io)?;
        std::fs::rename(&self.tmp, &self.path).map_err(io)?;
        self.committed = true;
        Ok(())
    }
}

impl Drop for AtomicFile {
    fn drop(&mut self) {
        if !self.committed {
            let _ = std::fs::remove_file(&self.tmp);
        }
    }
}

/// Writes results to `path` atomically (see [`AtomicFile`]).
pub fn write_file_atomic(path: &Path, format: OutputFormat, schema: &SchemaRef, batches: &[RecordBatch]) -> Result<(), OutputError> {
    let mut file = AtomicFile::create(path)?;
    write_batches(format, schema, batches, file.writer())?;
    file.commit()
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::arrow::array::{Int64Array, StringArray};
    use datafusion::arrow::datatypes::{DataType, Field, Schema};
    use std::sync::Arc;

    fn batch() -> (SchemaRef, RecordBatch) {
        let schema = Arc::new(Schema::new(vec![Field::new("api", DataType::Utf8, false), Field::new("n", DataType::Int64, false)]));
        let b = RecordBatch::try_new(schema.clone(), vec![Arc::new(StringArray::from(vec!["A", "B"])), Arc::new(Int64Array::from(vec![1, 2]))]).unwrap();
        (schema, b)
    }

    fn render(format: OutputFormat, batches: &[RecordBatch], schema: &SchemaRef) -> String {
        let mut out = Vec::new();
        write_batches(format, schema, batches, &mut out).unwrap();
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn text_formats() {
        let (schema, b) = batch();
        let rows = std::slice::from_ref(&b);
        assert_eq!(render(OutputFormat::Csv, rows, &schema), "api,n\nA,1\nB,2\n");
        assert_eq!(render(OutputFormat::Json, rows, &schema), "[{\"api\":\"A\",\"n\":1},{\"api\":\"B\",\"n\":2}]\n");
        assert_eq!(render(OutputFormat::Ndjson, rows, &schema), "{\"api\":\"A\",\"n\":1}\n{\"api\":\"B\",\"n\":2}\n");
        assert!(render(OutputFormat::Table, rows, &schema).contains("| A   | 1 |"));
    }

    #[test]
    fn empty_results_keep_their_shape() {
        let (schema, _) = batch();
        assert_eq!(render(OutputFormat::Csv, &[], &schema), "api,n\n");
        assert_eq!(render(OutputFormat::Json, &[], &schema), "[]\n");
        assert!(render(OutputFormat::Table, &[], &schema).contains("| api | n |"));
    }

    #[test]
    fn the_table_format_shows_control_characters_escaped() {
        let schema = Arc::new(Schema::new(vec![Field::new("v", DataType::Utf8, true)]));
        let hostile = ["\u{1b}[2J\u{1b}]0;owned\u{7}", "a\nb\tc\r", "\u{202e}txt.exe", "\u{9b}31m"];
        let batch = RecordBatch::try_new(schema.clone(), vec![Arc::new(StringArray::from(hostile.to_vec()))]).unwrap();
        let table = render(OutputFormat::Table, &[batch], &schema);
        assert!(!table.chars().any(|c| c != '\n' && acts_on_terminal(c)), "{table:?}");
        assert_eq!(table.lines().count(), 8, "one line per row: {table}");
        for shown in ["\\u{1b}[2J\\u{1b}]0;owned\\u{7}", "a\\nb\\tc\\r", "\\u{202e}txt.exe", "\\u{9b}31m"] {
            assert!(table.contains(shown), "{shown} in {table}");
        }
        assert_eq!(for_terminal("plain, ü, 東京"), "plain, ü, 東京");
    }

    #[test]
    fn csv_prints_nested_columns_as_json() {
        use datafusion::arrow::array::{ArrayRef, Int64Array, StringArray, StructArray};
        use datafusion::arrow::datatypes::{DataType, Field, Fields, Schema};
        let arn = Field::new("arn", DataType::Utf8, true);
        let who = StructArray::new(
            Fields::from(vec![arn.clone()]),
            vec![std::sync::Arc::new(StringArray::from(vec![Some("arn:a"), None])) as ArrayRef],
            Some(vec![true, false].into()),
        );
        let schema =
            std::sync::Arc::new(Schema::new(vec![Field::new("who", DataType::Struct(Fields::from(vec![arn])), true), Field::new("n", DataType::Int64, false)]));
        let batch = RecordBatch::try_new(schema.clone(), vec![std::sync::Arc::new(who), std::sync::Arc::new(Int64Array::from(vec![1, 2]))]).unwrap();
        assert_eq!(render(OutputFormat::Csv, &[batch], &schema), "who,n\n\"{\"\"arn\"\":\"\"arn:a\"\"}\",1\n,2\n");
    }

    #[test]
    fn batches_stream_through_one_writer() {
        let (schema, b) = batch();
        let mut out = Vec::new();
        let mut w = ResultWriter::new(OutputFormat::Csv, schema, &mut out).unwrap();
        w.write(&b).unwrap();
        w.write(&b.slice(1, 1)).unwrap();
        w.finish().unwrap();
        assert_eq!(String::from_utf8(out).unwrap(), "api,n\nA,1\nB,2\nB,2\n", "one header");
    }

    #[test]
    fn an_uncommitted_file_leaves_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("r.csv");
        std::fs::write(&path, "old\n").unwrap();
        let mut file = AtomicFile::create(&path).unwrap();
        file.writer().write_all(b"half").unwrap();
        drop(file);
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "old\n");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1, "no temporary file left");
    }

    #[test]
    fn atomic_parquet_file_round_trips() {
        let (schema, b) = batch();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("out/x.parquet");
        let format = OutputFormat::from_path(&path).unwrap();
        write_file_atomic(&path, format, &schema, std::slice::from_ref(&b)).unwrap();
        let file = std::fs::File::open(&path).unwrap();
        let reader = datafusion::parquet::arrow::arrow_reader::ParquetRecordBatchReader::try_new(file, 1024).unwrap();
        let back: Vec<RecordBatch> = reader.collect::<Result<_, _>>().unwrap();
        assert_eq!(back, vec![b]);
        assert_eq!(std::fs::read_dir(path.parent().unwrap()).unwrap().count(), 1, "no temporary file left");
        assert!(OutputFormat::from_path(Path::new("x.txt")).is_err());
    }
}
