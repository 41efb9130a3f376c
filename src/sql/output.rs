//! Result formats, shared by `prism sql`, the REPL and scheduled queries (one writer per format).

use std::io::Write;
use std::path::Path;

use datafusion::arrow::array::RecordBatch;
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::arrow::error::ArrowError;
use datafusion::parquet::arrow::ArrowWriter;
use datafusion::parquet::errors::ParquetError;

#[derive(Debug, thiserror::Error)]
pub enum OutputError {
    #[error("writing {what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("formatting results as {format}: {source}")]
    Arrow {
        format: OutputFormat,
        #[source]
        source: ArrowError,
    },
    #[error("writing Parquet: {0}")]
    Parquet(#[from] ParquetError),
    #[error("cannot tell the output format of `{path}` from its extension; use .csv, .json, .ndjson or .parquet")]
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

/// Writes `batches` (all of `schema`) to `out` in `format`. An empty result still writes the
/// header (CSV), `[]` (JSON), or a valid Parquet file with the schema.
pub fn write_batches<W: Write + Send>(
    format: OutputFormat,
    schema: &SchemaRef,
    batches: &[RecordBatch],
    mut out: W,
) -> Result<(), OutputError> {
    let arrow = |source| OutputError::Arrow { format, source };
    let io = |source| OutputError::Io { what: "results".into(), source };
    match format {
        OutputFormat::Table => {
            // With the schema, an empty result still shows its column names.
            let table = datafusion::arrow::util::pretty::pretty_format_batches_with_schema(schema.clone(), batches)
                .map_err(arrow)?;
            writeln!(out, "{table}").map_err(io)?;
        }
        OutputFormat::Csv => {
            if batches.is_empty() {
                let names: Vec<&str> = schema.fields().iter().map(|f| f.name().as_str()).collect();
                writeln!(out, "{}", names.join(",")).map_err(io)?;
            }
            let mut w = datafusion::arrow::csv::WriterBuilder::new().with_header(true).build(&mut out);
            for b in batches {
                w.write(b).map_err(arrow)?;
            }
        }
        OutputFormat::Json => {
            let mut w = datafusion::arrow::json::ArrayWriter::new(&mut out);
            for b in batches {
                w.write(b).map_err(arrow)?;
            }
            w.finish().map_err(arrow)?;
            writeln!(out).map_err(io)?;
        }
        OutputFormat::Ndjson => {
            let mut w = datafusion::arrow::json::LineDelimitedWriter::new(&mut out);
            for b in batches {
                w.write(b).map_err(arrow)?;
            }
            w.finish().map_err(arrow)?;
        }
        OutputFormat::Parquet => {
            let mut w = ArrowWriter::try_new(&mut out, schema.clone(), None)?;
            for b in batches {
                w.write(b)?;
            }
            w.close()?;
        }
    }
    out.flush().map_err(io)
}

/// Writes results to `path` atomically: into a temporary file beside it, then renamed over it,
/// so a reader (or a crash) never sees half a file. Parent folders are created.
pub fn write_file_atomic(
    path: &Path,
    format: OutputFormat,
    schema: &SchemaRef,
    batches: &[RecordBatch],
) -> Result<(), OutputError> {
    let io = |source| OutputError::Io { what: path.display().to_string(), source };
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    std::fs::create_dir_all(dir).map_err(io)?;
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let tmp = dir.join(format!(".{name}.{}.tmp", std::process::id()));
    let result = std::fs::File::create(&tmp)
        .map_err(io)
        .and_then(|f| write_batches(format, schema, batches, std::io::BufWriter::new(f)))
        .and_then(|()| std::fs::rename(&tmp, path).map_err(io));
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::arrow::array::{Int64Array, StringArray};
    use datafusion::arrow::datatypes::{DataType, Field, Schema};
    use std::sync::Arc;

    fn batch() -> (SchemaRef, RecordBatch) {
        let schema = Arc::new(Schema::new(vec![
            Field::new("api", DataType::Utf8, false),
            Field::new("n", DataType::Int64, false),
        ]));
        let b = RecordBatch::try_new(
            schema.clone(),
            vec![Arc::new(StringArray::from(vec!["A", "B"])), Arc::new(Int64Array::from(vec![1, 2]))],
        )
        .unwrap();
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
    fn atomic_parquet_file_round_trips() {
        let (schema, b) = batch();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("out/x.parquet");
        let format = OutputFormat::from_path(&path).unwrap();
        write_file_atomic(&path, format, &schema, &[b.clone()]).unwrap();
        let file = std::fs::File::open(&path).unwrap();
        let reader = datafusion::parquet::arrow::arrow_reader::ParquetRecordBatchReader::try_new(file, 1024).unwrap();
        let back: Vec<RecordBatch> = reader.collect::<Result<_, _>>().unwrap();
        assert_eq!(back, vec![b]);
        assert_eq!(std::fs::read_dir(path.parent().unwrap()).unwrap().count(), 1, "no temporary file left");
        assert!(OutputFormat::from_path(Path::new("x.txt")).is_err());
    }
}
