//! Prism's end-to-end tests, in one executable so DataFusion, Delta and the S3 test server are
//! linked once (as ripgrep and delta-rs do). Each module is one area of the product; shared
//! fixtures and helpers are in `common`. `cargo test --test e2e s3::` runs one module.

mod common;

mod aggregate;
mod cli;

mod generate;
mod ingest;
mod insights;
mod interop;
mod maintain;
mod queries;
mod s3;
mod schedule;
mod serve;
mod slt;
mod sql;
mod watch;
