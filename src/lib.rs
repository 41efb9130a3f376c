//! Prism: CloudTrail archives to a SQL-queryable Parquet lake.
//!
//! The modules follow the data's path:
//! - [`source`]: find archives (local or S3), classify keys, stream records out of files;
//! - [`schema`]: the `events` table schema, record parsing and checks;
//! - [`lake`]: the Delta tables, deduplication and atomic commits;
//! - [`rollup`]: per-minute and per-hour call counts derived from the events;
//! - [`ingest`]: the pipeline from sources to the lake, with its summary;
//! - [`insights`]: baselines, scores, the detector, Insights records, tables and files;
//! - [`udf`]: the model's SQL functions;
//! - [`sql`]: the DataFusion session over the lake;
//! - [`schedule`]: scheduled queries and their run history;
//! - [`generate`]: realistic archives with labelled anomalies.
//!
//! The `prism` binary is a thin command-line layer over these.

pub mod backfill;
pub mod demo;
pub mod generate;
pub mod ingest;
pub mod insights;
pub mod lake;
pub mod rollup;
pub mod schedule;
pub mod schema;
pub mod source;
pub mod sql;
pub mod udf;

pub use ingest::{ingest, IngestOptions, IngestSummary, Progress};
pub use lake::Lake;
