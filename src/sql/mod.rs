//! The DataFusion session over a lake: one builder used by every entry point.

use datafusion::error::DataFusionError;
use datafusion::common::TableReference;
use datafusion::prelude::{SessionConfig, SessionContext};

use crate::lake::{Lake, LakeError};

pub mod output;

pub use output::OutputFormat;

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
}

/// Views over `ingest_log` that users query by name.
const VIEWS: &[(&str, &str)] = &[
    (
        "rejects",
        "SELECT sourcefile, recordindex, reason, message, record, runid, ingestedat \
         FROM ingest_log WHERE kind = 'reject'",
    ),
    (
        "ingested_files",
        "SELECT sourcefile, reason AS status, filesize, records, kept, duplicates, rejected, runid, ingestedat \
         FROM ingest_log WHERE kind = 'file'",
    ),
];

/// A session with the lake's tables and the JSON functions registered, and the time zone set
/// to UTC.
pub async fn session(lake: &Lake) -> Result<SessionContext, SqlError> {
    let mut config = SessionConfig::new().with_information_schema(true);
    config.options_mut().execution.time_zone = Some("UTC".to_owned());
    let mut ctx = SessionContext::new_with_config(config);
    // requestparameters, responseelements and the other free-form columns are JSON text.
    datafusion_functions_json::register_all(&mut ctx)?;
    crate::udf::register(&ctx);
    for (name, table) in [("events", lake.events()), ("ingest_log", lake.ingest_log())] {
        register_delta(&ctx, name, table).await?;
    }
    // Every other Delta table under the lake root (e.g. the scheduler's `query_runs`).
    for name in lake.table_names().await? {
        if ctx.table_exist(TableReference::bare(name.as_str()))? {
            continue;
        }
        let table = lake.open_table(&name).await?;
        register_delta(&ctx, &name, &table).await?;
    }
    for (name, sql) in VIEWS {
        let df = ctx.sql(sql).await?;
        ctx.register_table(*name, df.into_view())
            .map_err(|e| SqlError::Register { table: (*name).to_owned(), source: e.into() })?;
    }
    Ok(ctx)
}

async fn register_delta(ctx: &SessionContext, name: &str, table: &deltalake::DeltaTable) -> Result<(), SqlError> {
    let register = |e: Box<dyn std::error::Error + Send + Sync>| SqlError::Register { table: name.to_owned(), source: e };
    table.update_datafusion_session(&ctx.state()).map_err(|e| register(e.into()))?;
    let provider = table.table_provider().await.map_err(|e| register(e.into()))?;
    ctx.register_table(TableReference::bare(name), provider).map_err(|e| register(e.into()))?;
    Ok(())
}
