//! Prism: CloudTrail archives to a SQL-queryable Parquet lake.
//!
//! The modules follow the data's path:
//! - [`source`]: find archives (local or S3), classify keys, stream records out of files;
//! - [`schema`]: the `events` table schema, record parsing and checks;
//! - [`lake`]: the Delta tables, deduplication and atomic commits;
//! - [`ingest`]: the pipeline from sources to the lake, with its summary;
//! - [`sql`]: the DataFusion session over the lake;
//! - [`schedule`]: scheduled queries and their run history;
//! - [`generate`]: realistic archives with labelled anomalies.
//!
//! The `prism` binary is a thin command-line layer over these.

pub mod generate;
pub mod ingest;
pub mod lake;
pub mod schedule;
pub mod schema;
pub mod source;
pub mod sql;

pub use ingest::{ingest, IngestOptions, IngestSummary, Progress};
pub use lake::Lake;
