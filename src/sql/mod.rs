//! The DataFusion session over a lake: one builder used by every entry point.

use std::sync::Arc;

use datafusion::error::DataFusionError;
use datafusion::execution::SessionStateBuilder;
use datafusion::execution::object_store::{DefaultObjectStoreRegistry, ObjectStoreRegistry};
use datafusion::execution::runtime_env::{RuntimeEnv, RuntimeEnvBuilder};
use datafusion::prelude::{SessionConfig, SessionContext};
use object_store::ObjectStore;
use url::Url;

use crate::lake::{Lake, LakeError};

/// The `ScalarUDFImpl` methods of a wrapper around `self.inner` (a `ScalarUDF`) that change
/// nothing of what the function is: its name, signature, types, ordering and documentation.
/// The wrapper writes the methods it changes (`date_trunc`, `json_filter`).
macro_rules! delegate_to_inner_udf {
    () => {
        fn name(&self) -> &str {
            self.inner.name()
        }

        fn aliases(&self) -> &[String] {
            self.inner.aliases()
        }

        fn signature(&self) -> &datafusion::logical_expr::Signature {
            self.inner.signature()
        }

        fn return_type(&self, arg_types: &[arrow::datatypes::DataType]) -> datafusion::error::Result<arrow::datatypes::DataType> {
            self.inner.return_type(arg_types)
        }

        fn return_field_from_args(&self, args: datafusion::logical_expr::ReturnFieldArgs) -> datafusion::error::Result<arrow::datatypes::FieldRef> {
            self.inner.return_field_from_args(args)
        }

        fn output_ordering(
            &self,
            inputs: &[datafusion::logical_expr::sort_properties::ExprProperties],
        ) -> datafusion::error::Result<datafusion::logical_expr::sort_properties::SortProperties> {
            self.inner.output_ordering(inputs)
        }

        fn documentation(&self) -> Option<&datafusion::logical_expr::Documentation> {
            self.inner.documentation()
        }
    };
}

pub mod catalog;
pub mod date_trunc;
pub mod dictionary;
pub mod distinct;
pub mod distinct_values;
#[cfg(feature = "distributed")]
pub mod distributed;
pub mod exec;
pub mod join_windows;
pub mod json_filter;
mod local_reads;
pub mod output;
pub mod page_count;
pub mod per_batch;
pub mod per_value;
pub mod prefix_like;
mod plan_rules;
pub mod repl;
pub mod row_group_skip;
pub mod scan;
pub mod sort_files;
pub mod sparse_filter;
pub mod udf;
pub mod view_join;
pub mod window;

pub use catalog::LakeSchema;
pub use exec::{BatchOptions, Input, StatementError};
pub use output::{OutputError, OutputFormat};
pub use scan::LakeTable;

#[derive(Debug, thiserror::Error)]
pub enum SqlError {
    #[error(transparent)]
    Lake(#[from] LakeError),
    #[error("registering table `{table}`")]
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
    #[error("reading {what}")]
    Read {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{0}")]
    Usage(String),
    #[error("terminal")]
    Terminal(#[from] rustyline::error::ReadlineError),
}

/// A session over `lake`: every Delta table under the lake root (by its folder name, at its
/// latest version whenever a query is planned), the `rejects` and `ingested_files` views, the
/// JSON functions and the project's UDFs, with the time zone set to UTC.
pub async fn session(lake: &Lake) -> Result<SessionContext, SqlError> {
    session_on(lake, workers()).await
}

/// [`session`], with queries planned to run on `workers` when given (the `distributed`
/// feature; see [`use_workers`]).
pub async fn session_on(lake: &Lake, workers: Option<&[Url]>) -> Result<SessionContext, SqlError> {
    let ctx = base_session(workers)?;
    let schema = LakeSchema::new(lake).await.map_err(|e| SqlError::Register { table: lake.url().to_string(), source: e.into() })?;
    let options = ctx.state().config_options().catalog.clone();
    let catalog = ctx.catalog(&options.default_catalog).ok_or_else(|| DataFusionError::Plan(format!("no catalog `{}`", options.default_catalog)))?;
    catalog.register_schema(&options.default_schema, Arc::new(schema))?;
    Ok(ctx)
}

/// A session with no lake, for the model's functions on a user's own series: the same
/// functions and settings as [`session`], plus files named in queries (`SELECT * FROM
/// 'series.csv'`) and `CREATE EXTERNAL TABLE` over local CSV, Parquet and JSON files.
pub fn local_session() -> Result<SessionContext, SqlError> {
    Ok(base_session(workers())?.enable_url_table())
}

/// Workers every session of this process sends its queries to (`--workers`), set once at
/// start-up.
static WORKERS: std::sync::OnceLock<Vec<Url>> = std::sync::OnceLock::new();

/// Makes every session this process builds from now on distributed over `workers` (`prism
/// worker` processes): `prism sql`, the REPL, `schedule` and `serve` alike.
#[cfg(feature = "distributed")]
pub fn use_workers(workers: Vec<Url>) {
    let _ = WORKERS.set(workers);
}

fn workers() -> Option<&'static [Url]> {
    WORKERS.get().map(Vec::as_slice)
}

/// What every session has: the runtime, the configuration, the JSON functions and the UDFs.
fn base_session(workers: Option<&[Url]>) -> Result<SessionContext, SqlError> {
    let builder = SessionStateBuilder::new()
        .with_config(session_config())
        .with_runtime_env(runtime()?)
        .with_default_features()
        // count(DISTINCT a), count(DISTINCT b): one parallel group-by per column, not one set
        // merged in one thread (see `distinct`).
        .with_optimizer_rule(Arc::new(distinct::MultiDistinctToCrossJoin))
        // JSON functions are evaluated where the query put them, not for every row of the scan
        // (see `json_filter`).
        .with_analyzer_rule(Arc::new(json_filter::KeepJsonInPlace));
    let builder = match workers.filter(|w| !w.is_empty()) {
        #[cfg(feature = "distributed")]
        Some(w) => distributed::coordinate(builder, w),
        // LIKE and functions on strings with few distinct values: once per value of a batch
        // (see `per_value`); LIKE 'prefix%' on the views' own bytes (see `prefix_like`). Only here: distributed plans travel as protobuf, which knows only
        // DataFusion's own expressions.
        // Group-by counts: within each batch first, by the rows' views (see `per_batch`).
        // DISTINCT on strings: by buckets that fit in the cache (see `distinct_values`).
        // A JSON field equal to a string: parsed only where the text holds the string (see
        // `json_filter`).
        // A filter on a mostly null column is applied as the files are read (see
        // `sparse_filter`).
        // An inner join on one string key probed once per distinct value of a batch (see
        // `view_join`).
        // A count grouped by a few-valued string of a scan, from its pages (see `page_count`).
        // Few-valued strings only filtered or counted by are read as dictionaries (see
        // `dictionary`); after the rules whose nodes it reads, and before `sort_files`, which
        // asks the scan it finds for its newest row groups first.
        // A top-N reads the files nearest its top first (see `sort_files`).
        // Row groups whose dictionaries hold no value a filter accepts are not read (see
        // `row_group_skip`); last, so that `sort_files` still finds the scan under a filter.
        _ => builder
            .with_physical_optimizer_rule(Arc::new(json_filter::PrefilterJson))
            .with_physical_optimizer_rule(Arc::new(per_value::EvaluatePerValue))
            .with_physical_optimizer_rule(Arc::new(per_batch::CountPerBatch))
            .with_physical_optimizer_rule(Arc::new(distinct_values::DistinctValues))
            .with_physical_optimizer_rule(Arc::new(join_windows::JoinWindows))
            .with_physical_optimizer_rule(Arc::new(view_join::JoinByViews))
            .with_physical_optimizer_rule(Arc::new(sparse_filter::SparseFilters))
            .with_physical_optimizer_rule(Arc::new(page_count::CountPages))
            .with_physical_optimizer_rule(Arc::new(dictionary::ReadDictionaries))
            .with_physical_optimizer_rule(Arc::new(sort_files::SortFiles))
            .with_physical_optimizer_rule(Arc::new(row_group_skip::SkipRowGroups)),
    };
    let mut ctx = SessionContext::new_with_state(builder.build());
    // requestparameters, responseelements and the other free-form columns are JSON text.
    datafusion_functions_json::register_all(&mut ctx)?;
    // baseline(), deviation_score(), anomaly_probability(): the detector's own model.
    udf::register(&ctx);
    // date_trunc on UTC timestamps by arithmetic, not a calendar conversion per row.
    ctx.register_udf(date_trunc::date_trunc());
    Ok(ctx)
}

/// The runtime of every session, and of a worker.
fn runtime() -> Result<Arc<RuntimeEnv>, DataFusionError> {
    // No Parquet footer cache: offering a query's thousands of footers to it costs more than
    // its hits save, unless every file of a lake fits and queries repeat (measured on 2,880
    // files: the first query 40% slower, the next ones 25% faster; on 29,567 files it only
    // evicts). `SET datafusion.runtime.metadata_cache_limit = '1G'` turns it on.
    RuntimeEnvBuilder::new().with_metadata_cache_limit(0).with_object_store_registry(Arc::new(LakeStores::default())).build_arc()
}

/// DataFusion's object-store registry, which also opens the store of a lake table that a scan
/// names (`prism-table://…`, see [`scan`]) when none is registered: a worker executes scans
/// that another process planned.
#[derive(Debug, Default)]
struct LakeStores(DefaultObjectStoreRegistry);

impl ObjectStoreRegistry for LakeStores {
    fn register_store(&self, url: &Url, store: Arc<dyn ObjectStore>) -> Option<Arc<dyn ObjectStore>> {
        self.0.register_store(url, store)
    }

    fn deregister_store(&self, url: &Url) -> datafusion::common::Result<Arc<dyn ObjectStore>> {
        self.0.deregister_store(url)
    }

    fn get_store(&self, url: &Url) -> datafusion::common::Result<Arc<dyn ObjectStore>> {
        self.0.get_store(url).or_else(|not_found| match scan::table_store(url) {
            Some(store) => {
                let store = store?;
                self.0.register_store(url, store.clone());
                Ok(store)
            }
            None => Err(not_found),
        })
    }
}

/// UTC, `information_schema`, and spans, so that planning errors (an unknown column or table)
/// point at the statement's text.
fn session_config() -> SessionConfig {
    // Two partitions per core: lake files are small, so a scan stream spends much of its time
    // waiting for a file's footer and column chunks; twice as many streams keep the cores busy
    // (measured: 25-35% less time for full scans of a 29,567-file lake; more gains nothing).
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let mut config = SessionConfig::new().with_information_schema(true).with_target_partitions(2 * cores);
    config.options_mut().execution.time_zone = Some("UTC".to_owned());
    config.options_mut().sql_parser.collect_spans = true;
    // A join's dynamic filter is turned into a pruning predicate again for every file the probe
    // side opens. Lake files are many and small, and their statistics are in the Delta log (the
    // scan prunes with them at planning), so the per-file work costs more than it saves: off,
    // joins of the events with a small table ran 1.6-1.9x faster on a 29,567-file lake.
    config.options_mut().optimizer.enable_join_dynamic_filter_pushdown = false;
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
