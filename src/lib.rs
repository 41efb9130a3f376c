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
//! - [`schedule`]: scheduled queries and their run history;
//! - [`backfill`] and [`demo`]: the commands that chain the steps above.
//!
//! The `prism` binary is a thin command-line layer over these (`src/cli/`).

pub mod backfill;
pub mod demo;
pub mod error;
pub mod generate;
pub mod ingest;
pub mod insights;
pub mod lake;
pub mod model;
pub mod rollup;
pub mod schedule;
pub mod schema;
pub mod source;
pub mod sql;

pub use ingest::{IngestOptions, IngestProgress, IngestSummary, ingest};
pub use lake::Lake;
