//! The DataFusion session over a lake: one builder used by every entry point.

use std::sync::Arc;

use datafusion::error::DataFusionError;
use datafusion::prelude::{SessionConfig, SessionContext};

use crate::lake::{Lake, LakeError};

pub mod catalog;
pub mod exec;
pub mod output;
pub mod repl;
pub mod scan;

pub use catalog::LakeSchema;
pub use scan::LakeTable;
pub use exec::{BatchOptions, Input, StatementError};
pub use output::{OutputError, OutputFormat};

#[derive(Debug, thiserror::Error)]
pub enum SqlError {
    #[error(transparent)]
    Lake(#[from] LakeError),
    #[error("registering table `{table}`: {source}")]
    Register {
        table: String,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error(transparent)]
    DataFusion(#[from] DataFusionError),
    #[error(transparent)]
    Statement(Box<StatementError>),
    #[error(transparent)]
    Output(#[from] OutputError),
    #[error("reading {what}: {source}")]
    Read {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{0}")]
    Usage(String),
    #[error("terminal: {0}")]
    Terminal(#[from] rustyline::error::ReadlineError),
}

/// A session over `lake`: every Delta table under the lake root (by its folder name, at its
/// latest version whenever a query is planned), the `rejects` and `ingested_files` views, the
/// JSON functions and the project's UDFs, with the time zone set to UTC.
pub async fn session(lake: &Lake) -> Result<SessionContext, SqlError> {
    let mut ctx = SessionContext::new_with_config(session_config());
    // requestparameters, responseelements and the other free-form columns are JSON text.
    datafusion_functions_json::register_all(&mut ctx)?;
    // baseline(), deviation_score(), anomaly_probability(): the detector's own model.
    crate::udf::register(&ctx);
    let schema = LakeSchema::new(lake)
        .await
        .map_err(|e| SqlError::Register { table: lake.url().to_string(), source: e.into() })?;
    let options = ctx.state().config_options().catalog.clone();
    let catalog = ctx
        .catalog(&options.default_catalog)
        .ok_or_else(|| DataFusionError::Plan(format!("no catalog `{}`", options.default_catalog)))?;
    catalog.register_schema(&options.default_schema, Arc::new(schema))?;
    Ok(ctx)
}

/// UTC, `information_schema`, and spans, so that planning errors (an unknown column or table)
/// point at the statement's text.
fn session_config() -> SessionConfig {
    let mut config = SessionConfig::new().with_information_schema(true);
    config.options_mut().execution.time_zone = Some("UTC".to_owned());
    config.options_mut().sql_parser.collect_spans = true;
    config
}

/// Lists the lake again, so that listings (`SHOW TABLES`, `information_schema.tables`, `\d`)
/// include tables created since the session was built or last refreshed. Queries that name a
/// table never need this: they find it and read its latest version by themselves.
pub async fn refresh(ctx: &SessionContext) -> Result<(), SqlError> {
    let options = ctx.state().config_options().catalog.clone();
    let schema = ctx.catalog(&options.default_catalog).and_then(|c| c.schema(&options.default_schema));
    if let Some(lake) = schema.as_ref().and_then(|s| s.downcast_ref::<LakeSchema>()) {
        lake.refresh().await?;
    }
    Ok(())
}
