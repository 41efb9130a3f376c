//! Prism: CloudTrail archives to a SQL-queryable Parquet lake, with CloudTrail Insights
//! computed locally.
//!
//! The modules follow the data's path, each using only those above it:
//! - [`error`]: how errors show each cause once;
//! - [`source`]: find archives (local or S3), classify keys, stream records out of files;
//! - [`schema`]: the tables' schemas, record parsing and checks;
//! - [`lake`]: the Delta tables, deduplication and atomic commits;
//! - [`rollup`]: per-minute and per-hour call counts derived from the events;
//! - [`ingest`]: the pipeline from sources to the lake and its rollups, with its summary;
//! - [`model`]: baselines and deviation scores, shared by the detector and the SQL functions;
//! - [`sql`]: everything DataFusion: the session over the lake, its scan, the UDFs, the REPL;
//! - [`generate`]: realistic archives with labelled anomalies (a test and demo source);
//! - [`insights`]: the detector, Insights records, their tables and files, and their quality
//!   against a generator's labels;
//! - [`aggregate`]: AWS's aggregated events: 5-minute summaries of data events;
//! - [`schedule`]: scheduled queries and their run history;
//! - [`serve`]: the Insights console (web pages) and its HTTP API;
//! - [`backfill`] and [`demo`]: the commands that chain the steps above.
//!
//! The `prism` binary is a thin command-line layer over these (`src/cli/`).

// Errors name the file, key or table they are about and carry their cause; they are returned
// on cold paths, so their size (delta-rs's and DataFusion's errors are large) costs nothing.
#![allow(clippy::result_large_err)]

pub mod error;
pub mod source;
pub mod schema;
pub mod lake;
pub mod rollup;
pub mod maintain;
pub mod ingest;
pub mod model;
pub mod sql;
pub mod generate;
pub mod insights;
pub mod aggregate;
pub mod schedule;
pub mod serve;
pub mod watch;
pub mod backfill;
pub mod demo;

pub use ingest::{IngestOptions, IngestProgress, IngestSummary, ingest};
pub use lake::Lake;

#[cfg(test)]
mod tests {
    use std::path::Path;

    /// Every file of module `name`: `src/name.rs` or everything under `src/name/`.
    fn files(root: &Path, name: &str, out: &mut Vec<std::path::PathBuf>) {
        let file = root.join(format!("{name}.rs"));
        if file.exists() {
            out.push(file);
        }
        let mut stack = vec![root.join(name)];
        while let Some(dir) = stack.pop() {
            for entry in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
                let p = entry.path();
                if p.is_dir() {
                    stack.push(p);
                } else if p.extension().is_some_and(|x| x == "rs") {
                    out.push(p);
                }
            }
        }
    }

    /// The modules follow the data's path: each uses only those declared above it here, so
    /// there is no import cycle and the house reads top-down.
    #[test]
    fn modules_use_only_those_declared_above_them() {
        let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
        let lib = std::fs::read_to_string(src.join("lib.rs")).unwrap();
        let order: Vec<&str> = lib.lines().filter_map(|l| l.strip_prefix("pub mod ")?.strip_suffix(';')).collect();
        assert!(order.len() >= 10, "{order:?}");
        let mut wrong = Vec::new();
        for (i, module) in order.iter().enumerate() {
            let mut paths = Vec::new();
            files(&src, module, &mut paths);
            assert!(!paths.is_empty(), "no files for module {module}");
            for path in paths {
                let text = std::fs::read_to_string(&path).unwrap();
                for used in text.split("crate::").skip(1) {
                    let name: String = used.chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '_').collect();
                    if let Some(j) = order.iter().position(|m| *m == name)
                        && j > i
                    {
                        wrong.push(format!("{} uses crate::{name}, declared below {module}", path.display()));
                    }
                }
            }
        }
        assert!(wrong.is_empty(), "{wrong:#?}");
    }
}
