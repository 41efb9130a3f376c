//! The session's `public` schema: the lake itself, read afresh at every query.
//!
//! A [`SessionContext`](datafusion::prelude::SessionContext) normally holds table providers fixed
//! when they were registered, and a Delta provider is a snapshot of one table version. A REPL
//! left open while `prism ingest` runs must see each new commit, and a table created later (the
//! insights, a rollup, the scheduler's history) must be queryable without a new session. So
//! this schema provider:
//!
//! - finds tables by listing the lake root: every folder with a `_delta_log/` is a table named
//!   after the folder (file:// and s3:// alike, through the lake's object store);
//! - brings a table up to its latest commit each time a query names it (only the commits since
//!   the last query are read, see [`DeltaTable::update_incremental`]), and scans it with
//!   DataFusion's own Parquet reader ([`LakeTable`]);
//! - plans the `rejects` and `ingested_files` views over the `ingest_log` of that moment;
//! - keeps tables and views a user creates in the session (`CREATE VIEW`, `CREATE TABLE AS`).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex, RwLock};

use async_trait::async_trait;
use datafusion::catalog::{SchemaProvider, TableProvider};
use datafusion::common::{DataFusionError, Result as DfResult};
use datafusion::datasource::{ViewTable, provider_as_source};
use datafusion::logical_expr::{Expr, LogicalPlanBuilder, TableType, col, lit};
use deltalake::{DeltaTable, DeltaTableBuilder, DeltaTableError};
use futures::StreamExt;
use object_store::ObjectStore;
use object_store::path::Path as ObjectPath;
use url::Url;

use super::scan::LakeTable;
use crate::lake::Lake;
use crate::schema::tables::INGEST_LOG as INGEST_LOG_TABLE;

/// The folder inside a table that makes it a Delta table.
const DELTA_LOG: &str = "_delta_log";

/// A view over `ingest_log` that users query by name: the rows of one `kind`, with these
/// columns (`column AS name` renames).
struct View {
    name: &'static str,
    kind: &'static str,
    columns: &'static [&'static str],
}

const VIEWS: &[View] = &[
    View { name: "rejects", kind: "reject", columns: &["sourcefile", "recordindex", "reason", "message", "record", "runid", "ingestedat"] },
    View {
        name: "ingested_files",
        kind: "file",
        columns: &["sourcefile", "reason AS status", "filesize", "records", "kept", "duplicates", "rejected", "runid", "ingestedat"],
    },
];

/// The lake as a DataFusion schema. See the module documentation.
#[derive(Debug)]
pub struct LakeSchema {
    url: Url,
    store: Arc<dyn ObjectStore>,
    /// Lake tables found so far, each kept at its latest loaded version. The inner lock
    /// serialises updates of one table; queries on different tables do not wait on each other.
    tables: Mutex<BTreeMap<String, Arc<tokio::sync::Mutex<DeltaTable>>>>,
    /// Tables and views created in this session.
    session_tables: RwLock<HashMap<String, Arc<dyn TableProvider>>>,
}

impl LakeSchema {
    /// The schema of `lake`, starting from the tables `lake` has already loaded.
    pub async fn new(lake: &Lake) -> DfResult<LakeSchema> {
        let mut tables = BTreeMap::new();
        for table in [lake.events(), lake.ingest_log()] {
            if let Some(name) = table_name(table.table_url().as_str()) {
                tables.insert(name, Arc::new(tokio::sync::Mutex::new(table.clone())));
            }
        }
        let schema = LakeSchema { url: lake.url().clone(), store: lake.store(), tables: Mutex::new(tables), session_tables: RwLock::new(HashMap::new()) };
        schema.refresh().await?;
        Ok(schema)
    }

    /// Lists the lake root again: tables created since are added, tables removed are dropped.
    /// Listings (`SHOW TABLES`, `information_schema`, `\d`) show what the last refresh found;
    /// a query naming a new table finds it without one.
    pub async fn refresh(&self) -> DfResult<()> {
        let listing = self.store.list_with_delimiter(None).await.map_err(store_error(&self.url))?;
        let folders: BTreeSet<String> = listing.common_prefixes.iter().filter_map(|p| p.filename().map(str::to_owned)).collect();
        let known: BTreeSet<String> = self.lake_table_names().into_iter().collect();
        let mut found = Vec::new();
        for name in folders.difference(&known) {
            if valid_table_folder(name) && self.has_delta_log(name).await? {
                found.push(name.clone());
            }
        }
        let mut tables = lock(&self.tables);
        tables.retain(|name, _| folders.contains(name));
        for name in found {
            if let Some(table) = self.open(&name) {
                tables.entry(name).or_insert_with(|| Arc::new(tokio::sync::Mutex::new(table)));
            }
        }
        Ok(())
    }

    /// Names of the Delta tables under the lake root (as of the last refresh).
    pub fn lake_table_names(&self) -> Vec<String> {
        lock(&self.tables).keys().cloned().collect()
    }

    async fn has_delta_log(&self, name: &str) -> DfResult<bool> {
        let prefix = ObjectPath::from(format!("{name}/{DELTA_LOG}"));
        match self.store.list(Some(&prefix)).next().await {
            Some(Ok(_)) => Ok(true),
            None => Ok(false),
            Some(Err(e)) => Err(store_error(&self.url)(e)),
        }
    }

    /// An unloaded handle on `<lake>/<name>/` (loaded on first use).
    fn open(&self, name: &str) -> Option<DeltaTable> {
        let url = self.url.join(&format!("{name}/")).ok()?;
        DeltaTableBuilder::from_url(url).ok()?.build().ok()
    }

    /// The lake table `name` at its latest version, finding it first if it is new.
    async fn lake_table(&self, name: &str) -> DfResult<Option<Arc<dyn TableProvider>>> {
        let handle = lock(&self.tables).get(name).cloned();
        let handle = match handle {
            Some(h) => h,
            None => {
                if !valid_table_folder(name) || !self.has_delta_log(name).await? {
                    return Ok(None);
                }
                let Some(table) = self.open(name) else {
                    return Ok(None);
                };
                lock(&self.tables).entry(name.to_owned()).or_insert_with(|| Arc::new(tokio::sync::Mutex::new(table))).clone()
            }
        };
        let mut table = handle.lock().await;
        match table.update_incremental(None).await {
            Ok(()) => {}
            // The folder exists but its first commit has not landed yet.
            Err(DeltaTableError::NotATable(_)) => return Ok(None),
            Err(e) => {
                return Err(DataFusionError::External(format!("loading lake table `{name}` ({}{name}/): {e}", self.url).into()));
            }
        }
        // DataFusion's own Parquet scan over the loaded snapshot (src/sql/scan.rs).
        Ok(Some(Arc::new(LakeTable::try_new(&table)?)))
    }

    /// A view over the current `ingest_log`.
    async fn view(&self, name: &str) -> DfResult<Option<Arc<dyn TableProvider>>> {
        let Some(view) = VIEWS.iter().find(|v| v.name == name) else { return Ok(None) };
        let Some(log) = self.lake_table(INGEST_LOG_TABLE).await? else { return Ok(None) };
        let projection: Vec<Expr> = view
            .columns
            .iter()
            .map(|c| match c.split_once(" AS ") {
                Some((column, alias)) => col(column).alias(alias),
                None => col(*c),
            })
            .collect();
        let plan =
            LogicalPlanBuilder::scan(INGEST_LOG_TABLE, provider_as_source(log), None)?.filter(col("kind").eq(lit(view.kind)))?.project(projection)?.build()?;
        let definition = format!("SELECT {} FROM {INGEST_LOG_TABLE} WHERE kind = '{}'", view.columns.join(", "), view.kind);
        Ok(Some(Arc::new(ViewTable::new(plan, Some(definition)))))
    }

    fn has_view(&self, name: &str) -> bool {
        VIEWS.iter().any(|v| v.name == name) && lock(&self.tables).contains_key(INGEST_LOG_TABLE)
    }
}

#[async_trait]
impl SchemaProvider for LakeSchema {
    fn table_names(&self) -> Vec<String> {
        let mut names: BTreeSet<String> = self.lake_table_names().into_iter().collect();
        names.extend(VIEWS.iter().map(|v| v.name.to_owned()).filter(|n| self.has_view(n)));
        names.extend(read(&self.session_tables).keys().cloned());
        names.into_iter().collect()
    }

    async fn table(&self, name: &str) -> DfResult<Option<Arc<dyn TableProvider>>> {
        if let Some(t) = read(&self.session_tables).get(name) {
            return Ok(Some(t.clone()));
        }
        if let Some(t) = self.lake_table(name).await? {
            return Ok(Some(t));
        }
        self.view(name).await
    }

    async fn table_type(&self, name: &str) -> DfResult<Option<TableType>> {
        if let Some(t) = read(&self.session_tables).get(name) {
            return Ok(Some(t.table_type()));
        }
        if lock(&self.tables).contains_key(name) {
            return Ok(Some(TableType::Base));
        }
        Ok(self.has_view(name).then_some(TableType::View))
    }

    fn register_table(&self, name: String, table: Arc<dyn TableProvider>) -> DfResult<Option<Arc<dyn TableProvider>>> {
        if lock(&self.tables).contains_key(&name) || self.has_view(&name) {
            return Err(DataFusionError::Plan(format!("`{name}` is a table of the lake; choose another name")));
        }
        let mut session = self.session_tables.write().unwrap_or_else(|e| e.into_inner());
        Ok(session.insert(name, table))
    }

    fn deregister_table(&self, name: &str) -> DfResult<Option<Arc<dyn TableProvider>>> {
        if let Some(t) = self.session_tables.write().unwrap_or_else(|e| e.into_inner()).remove(name) {
            return Ok(Some(t));
        }
        if lock(&self.tables).contains_key(name) || self.has_view(name) {
            return Err(DataFusionError::Plan(format!("`{name}` is a table of the lake; it cannot be dropped from SQL")));
        }
        Ok(None)
    }

    fn table_exist(&self, name: &str) -> bool {
        read(&self.session_tables).contains_key(name) || lock(&self.tables).contains_key(name) || self.has_view(name)
    }
}

/// A lake folder that can be a table: not hidden, not a Delta or Spark internal folder.
fn valid_table_folder(name: &str) -> bool {
    !name.is_empty() && !name.starts_with(['.', '_']) && !name.contains('/')
}

/// The last path segment of a table URL (`…/lake/events/` → `events`).
fn table_name(url: &str) -> Option<String> {
    url.trim_end_matches('/').rsplit('/').next().filter(|s| !s.is_empty()).map(str::to_owned)
}

fn store_error(url: &Url) -> impl Fn(object_store::Error) -> DataFusionError + '_ {
    move |e| DataFusionError::External(format!("listing the lake {url}: {e}").into())
}

/// Locks survive a panic elsewhere: the maps stay consistent (each update is one insert).
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn read<T>(m: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    m.read().unwrap_or_else(|e| e.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_folders() {
        assert!(valid_table_folder("events"));
        assert!(valid_table_folder("run_history"));
        assert!(!valid_table_folder("_delta_log"));
        assert!(!valid_table_folder(".tmp"));
        assert!(!valid_table_folder(""));
        assert_eq!(table_name("file:///tmp/lake/events/").as_deref(), Some("events"));
        assert_eq!(table_name("s3://b/p/ingest_log").as_deref(), Some("ingest_log"));
    }
}
