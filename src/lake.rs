//! The lake: a folder (or S3 prefix) holding
//!
//! ```text
//! <lake>/prism.json     lake settings, written once when the lake is created
//! <lake>/events/        Delta table of events, partitioned awsregion=…/eventperiod=…
//! <lake>/ingest_log/    Delta table: one row per ingested file and one per rejected record
//! <lake>/_prism/leases/ who runs the scheduler or the watch now (see [`lease`])
//! ```
//!
//! Delta gives atomic commits: Parquet files are written first and become visible only when
//! the commit naming them lands, so a process killed at any point leaves the previous,
//! consistent version. Files a killed run wrote but never committed are invisible (and
//! removed by `vacuum`).
//!
//! Deduplication: an event ID's partition is fixed by its region and time, so a duplicate can
//! only be in the partition its twin is in. The [`EventIndex`] keeps 128-bit hashes of the IDs
//! of recently touched partitions and loads a partition's IDs from its files when needed.
//!
//! Many writers: appends that deduplicate (events, the journal's rejects, the rollups) commit
//! only on the version they saw ([`commit_if_current`]); the loser of a race reconciles with
//! the winner's files and tries again (docs/lake.md#concurrency). Commands whose work is not
//! an append hold a [`lease`] instead: one at a time per lake.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use arrow::array::{Array, AsArray, RecordBatch, StringArray};
use arrow::datatypes::SchemaRef;
use deltalake::kernel::Action;
use deltalake::kernel::transaction::{CommitBuilder, CommitProperties, TransactionError};
use deltalake::protocol::{DeltaOperation, SaveMode};
use deltalake::writer::{DeltaWriter, RecordBatchWriter};
use deltalake::{DeltaTable, DeltaTableError};
use futures::TryStreamExt;
use object_store::path::Path as ObjectPath;
use object_store::{ObjectStore, ObjectStoreExt, PutMode, PutPayload};
use parquet::arrow::ProjectionMask;
#[allow(deprecated)]
use parquet::arrow::async_reader::ParquetObjectReader;
use parquet::arrow::async_reader::ParquetRecordBatchStreamBuilder;
use parquet::basic::{Compression, ZstdLevel};
use parquet::file::properties::{EnabledStatistics, WriterProperties};
use parquet::schema::types::ColumnPath;
use serde::{Deserialize, Serialize};
use url::Url;

use crate::schema::{self, AWS_REGION, EVENT_ID, EVENT_PERIOD, EVENT_TIME, Granularity, SOURCE_FILE};

pub mod lease;

/// Errors of the lake layer, each naming the table or object concerned.
#[derive(Debug, thiserror::Error)]
pub enum LakeError {
    #[error("`{location}` is not a usable lake location: {reason}")]
    InvalidLocation { location: String, reason: String },
    #[error("`{location}` is not a usable lake location")]
    Location {
        location: String,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error("lake settings `{path}`")]
    ConfigJson {
        path: String,
        #[source]
        source: serde_json::Error,
    },
    #[error("{context}")]
    Task {
        context: String,
        #[source]
        source: tokio::task::JoinError,
    },
    #[error("{context}")]
    Delta {
        context: String,
        #[source]
        source: DeltaTableError,
    },
    #[error("{context}")]
    Store {
        context: String,
        #[source]
        source: object_store::Error,
    },
    #[error("{context}")]
    Parquet {
        context: String,
        #[source]
        source: parquet::errors::ParquetError,
    },
    #[error("{context}")]
    Arrow {
        context: String,
        #[source]
        source: arrow::error::ArrowError,
    },
    #[error("lake settings `{path}`: {reason}")]
    Config { path: String, reason: String },
    /// Another writer changed what this commit was based on; nothing was committed, and the
    /// same command run again starts from the new version.
    #[error("{path}: {reason}; nothing was committed, run again")]
    Conflict { path: String, reason: String },
    /// A lease ([`lease`]) another process holds.
    #[error("another process is doing this on the lake: {holder}. Run this when it is done, or pass --wait to take over then (the lease {lease})")]
    Leased { lease: String, holder: String },
    #[error("the lease {lease} was taken over by another process (this one did not renew it in time); stopped")]
    LeaseLost { lease: String },
    #[error("`{location}` is not a usable output location")]
    Output {
        location: String,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error("writing `{path}`")]
    Write {
        path: String,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

type Result<T, E = LakeError> = std::result::Result<T, E>;

/// The lake's URL and the object store rooted at it.
fn connect(location: &str, create: bool) -> Result<(Url, Arc<dyn ObjectStore>)> {
    let url = lake_url(location, create)?;
    let store = crate::source::store_for(&url).map_err(delta(format!("lake `{url}`")))?;
    Ok((url, store))
}

fn delta(context: impl Into<String>) -> impl FnOnce(DeltaTableError) -> LakeError {
    let context = context.into();
    move |source| LakeError::Delta { context, source }
}

/// Settings fixed when a lake is created (`prism.json`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LakeConfig {
    /// Version of the lake layout.
    pub format: u32,
    /// Time granularity of the `eventperiod` partitions.
    pub granularity: Granularity,
    /// Whether the trail logs management events (Insights need them).
    #[serde(default = "default_true")]
    pub management_events: bool,
    /// Insights types enabled on management events (`ApiCallRateInsight`,
    /// `ApiErrorRateInsight`); none by default.
    #[serde(default)]
    pub insight_selectors: Vec<String>,
    /// Insights types enabled on data events; none by default.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub data_insight_selectors: Vec<String>,
    /// Whether the trail logs data events (data Insights need them); unset: as the lake's
    /// events show.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data_events: Option<bool>,
    /// The trail's name: data Insights name their trail (`insightSource`). Default `prism`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trail_name: Option<String>,
    /// Aggregated-event templates (`API_ACTIVITY`, `RESOURCE_ACCESS`, `USER_ACTIONS`); none:
    /// no aggregation.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub aggregation_templates: Vec<String>,
}

impl LakeConfig {
    /// The trail name data Insights carry.
    pub fn trail(&self) -> &str {
        self.trail_name.as_deref().unwrap_or("prism")
    }
}

/// Checks a trail name as CloudTrail does (`CreateTrail`): 3 to 128 ASCII letters, digits,
/// `.`, `_` or `-`, starting and ending with a letter or digit, with no two of `.`, `_`, `-`
/// side by side. It becomes part of an ARN in every data Insight.
pub fn check_trail_name(name: &str) -> std::result::Result<(), String> {
    let b = name.as_bytes();
    let punct = |c: u8| matches!(c, b'.' | b'_' | b'-');
    if !(3..=128).contains(&b.len()) {
        return Err(format!("trail name {name:?} must be 3 to 128 characters long"));
    }
    if let Some(c) = name.chars().find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))) {
        return Err(format!("trail name {name:?} may hold only letters, digits, '.', '_' and '-', not {c:?}"));
    }
    if !b[0].is_ascii_alphanumeric() || !b[b.len() - 1].is_ascii_alphanumeric() {
        return Err(format!("trail name {name:?} must start and end with a letter or digit"));
    }
    if b.windows(2).any(|w| punct(w[0]) && punct(w[1])) {
        return Err(format!("trail name {name:?} must not have '.', '_' or '-' side by side"));
    }
    Ok(())
}

fn default_true() -> bool {
    true
}

impl Default for LakeConfig {
    fn default() -> Self {
        LakeConfig {
            format: 1,
            granularity: Granularity::Day,
            management_events: true,
            insight_selectors: Vec::new(),
            data_insight_selectors: Vec::new(),
            data_events: None,
            trail_name: None,
            aggregation_templates: Vec::new(),
        }
    }
}

pub const CONFIG_FILE: &str = "prism.json";

#[cfg(test)]
mod trail_name_tests {
    #[test]
    fn trail_names_follow_cloudtrails_rules() {
        for good in ["prism", "org-trail", "my_trail.v2", "abc", &"a".repeat(128)] {
            assert_eq!(super::check_trail_name(good), Ok(()), "{good}");
        }
        for bad in ["ab", "-trail", "trail-", "a--b", "a._b", "tr ail", "trail/x", "tr\u{1b}ail", &"a".repeat(129), "tråil"] {
            assert!(super::check_trail_name(bad).is_err(), "{bad}");
        }
    }
}
const NO_LAKE: &str = "no lake here (no prism.json); create one with `prism ingest … --lake` first";
pub const EVENTS_TABLE: &str = "events";
pub use crate::schema::tables::INGEST_LOG as INGEST_LOG_TABLE;

/// An open lake.
pub struct Lake {
    url: Url,
    store: Arc<dyn ObjectStore>,
    config: LakeConfig,
    events: DeltaTable,
    ingest_log: DeltaTable,
    /// Files other writers journaled while this one ran (their rejects are not journaled
    /// again).
    journaled_elsewhere: HashSet<String>,
}

/// Turns a lake argument (a path, `file://` or `s3://` URL) into a URL ending in `/`; a local
/// folder is created when `create` is set, and must exist otherwise.
pub fn lake_url(location: &str, create: bool) -> Result<Url> {
    let invalid = |reason: String| LakeError::InvalidLocation { location: location.to_owned(), reason };
    let failed = |source: Box<dyn std::error::Error + Send + Sync>| LakeError::Location { location: location.to_owned(), source };
    let mut url = if location.contains("://") {
        Url::parse(location).map_err(|e| failed(e.into()))?
    } else {
        let path = std::path::Path::new(location);
        if create {
            std::fs::create_dir_all(path).map_err(|e| failed(e.into()))?;
        }
        let abs = std::fs::canonicalize(path).map_err(|e| failed(e.into()))?;
        Url::from_directory_path(&abs).map_err(|_| invalid("not an absolute path".into()))?
    };
    if !matches!(url.scheme(), "file" | "s3" | "s3a" | "memory") {
        return Err(invalid(format!("unsupported scheme `{}`", url.scheme())));
    }
    if !url.path().ends_with('/') {
        let p = format!("{}/", url.path());
        url.set_path(&p);
    }
    Ok(url)
}

impl Lake {
    /// Opens the lake at `location`, creating it (with `granularity`, default day) when it
    /// does not exist. A granularity that differs from an existing lake's is an error.
    ///
    /// Every table of [`crate::schema::tables`] is created too, empty, so that every query
    /// (and `\d`) sees the whole lake before Insights or scheduled queries first write.
    pub async fn open_or_create(location: &str, granularity: Option<Granularity>) -> Result<Lake> {
        let (url, store) = connect(location, true)?;
        let lake = Lake::load(url, store, granularity).await?;
        for (name, schema) in crate::schema::tables::all() {
            if name != INGEST_LOG_TABLE {
                lake.table(name, schema, &[]).await?;
            }
        }
        Ok(lake)
    }

    /// Opens an existing lake; an error if there is none at `location` (nothing is created).
    pub async fn open(location: &str) -> Result<Lake> {
        let no_lake = || LakeError::InvalidLocation { location: location.to_owned(), reason: NO_LAKE.into() };
        let (url, store) = connect(location, false).map_err(|_| no_lake())?;
        if store.head(&ObjectPath::from(CONFIG_FILE)).await.is_err() {
            return Err(no_lake());
        }
        Lake::load(url, store, None).await
    }

    /// The settings of the lake at `location` (its `prism.json`), without opening its tables:
    /// for readers that need only the settings, such as the console's pages.
    pub async fn read_config(location: &str) -> Result<(Url, LakeConfig)> {
        let no_lake = || LakeError::InvalidLocation { location: location.to_owned(), reason: NO_LAKE.into() };
        let (url, store) = connect(location, false).map_err(|_| no_lake())?;
        let config = read_config_file(store.as_ref(), &url).await?.ok_or_else(no_lake)?;
        Ok((url, config))
    }

    async fn load(url: Url, store: Arc<dyn ObjectStore>, granularity: Option<Granularity>) -> Result<Lake> {
        let wanted = LakeConfig { granularity: granularity.unwrap_or_default(), ..LakeConfig::default() };
        let config = read_or_create_config(store.as_ref(), &url, &wanted).await?;
        if let Some(g) = granularity
            && g != config.granularity
        {
            return Err(LakeError::Config {
                path: format!("{url}{CONFIG_FILE}"),
                reason: format!("this lake was created with {} partitions; --granularity {g} applies only to a new lake", config.granularity),
            });
        }
        let events = open_or_create_table(
            &url,
            EVENTS_TABLE,
            schema::events_schema(),
            &schema::PARTITION_COLUMNS,
            &[(deltalake::TableProperty::DataSkippingStatsColumns, EVENTS_STATS_COLUMNS)],
        )
        .await?;
        let ingest_log = open_or_create_table(&url, INGEST_LOG_TABLE, crate::schema::tables::ingest_log_schema(), &[], &[]).await?;
        Ok(Lake { url, store, config, events, ingest_log, journaled_elsewhere: HashSet::new() })
    }

    pub fn url(&self) -> &Url {
        &self.url
    }

    pub fn config(&self) -> &LakeConfig {
        &self.config
    }

    /// Replaces the lake's settings file (one atomic put).
    pub async fn save_config(&mut self, config: LakeConfig) -> Result<()> {
        let shown = format!("{}{CONFIG_FILE}", self.url);
        let body = serde_json::to_vec_pretty(&config).map_err(|source| LakeError::ConfigJson { path: shown.clone(), source })?;
        self.store.put(&ObjectPath::from(CONFIG_FILE), PutPayload::from(body)).await.map_err(|source| LakeError::Store { context: shown, source })?;
        self.config = config;
        Ok(())
    }

    pub fn events(&self) -> &DeltaTable {
        &self.events
    }

    pub fn ingest_log(&self) -> &DeltaTable {
        &self.ingest_log
    }

    /// Opens (or creates) another table of the lake, such as the scheduler's run history.
    pub async fn table(&self, name: &str, schema: SchemaRef, partitions: &[&str]) -> Result<DeltaTable> {
        open_or_create_table(&self.url, name, schema, partitions, &[]).await
    }

    /// The object store rooted at the lake.
    pub fn store(&self) -> Arc<dyn ObjectStore> {
        self.store.clone()
    }

    /// Sources whose ingestion completed in an earlier run.
    pub async fn ingested_sources(&self) -> Result<HashSet<String>> {
        let batches = read_table_columns(&self.ingest_log, &["kind", "sourcefile"], None).await?;
        let mut out = HashSet::new();
        for b in batches {
            let (Some(kind), Some(src)) = (b.column(0).as_string_opt::<i32>(), b.column(1).as_string_opt::<i32>()) else {
                continue;
            };
            for i in 0..b.num_rows() {
                if kind.is_valid(i) && kind.value(i) == "file" && src.is_valid(i) {
                    out.insert(src.value(i).to_owned());
                }
            }
        }
        Ok(out)
    }

    /// Appends journal rows (files and rejects) in one commit.
    ///
    /// Beside other writers: a file that two runs read at once is journaled by each, with
    /// what each kept (so `kept` adds up to the events stored), but its rejects only once:
    /// when another run journaled the file first, this run's rejects of it are dropped.
    pub async fn append_ingest_log(&mut self, batch: RecordBatch) -> Result<()> {
        let shown = format!("{}{INGEST_LOG_TABLE}", self.url);
        let mut batch = batch;
        for _ in 0..MAX_CONFLICTS {
            if !self.journaled_elsewhere.is_empty() {
                let (kind, src) = (string_column_of(&batch, "kind", &shown)?, string_column_of(&batch, "sourcefile", &shown)?);
                let keep: arrow::array::BooleanArray =
                    (0..batch.num_rows()).map(|i| Some(!(kind.value(i) == "reject" && self.journaled_elsewhere.contains(src.value(i))))).collect();
                batch = arrow::compute::filter_record_batch(&batch, &keep)
                    .map_err(|source| LakeError::Arrow { context: format!("journal rows for {shown}"), source })?;
            }
            if batch.num_rows() == 0 || append_if_current(&mut self.ingest_log, vec![batch.clone()], &shown).await?.is_some() {
                return Ok(());
            }
            // Commits of other writers since this one's last: a commit is only made on the
            // version it saw, so every one of them is seen here.
            for b in columns_added_since(&mut self.ingest_log, &["kind", "sourcefile"], &shown).await? {
                let (Some(kind), Some(src)) = (b.column(0).as_string_opt::<i32>(), b.column(1).as_string_opt::<i32>()) else { continue };
                let files = (0..b.num_rows()).filter(|&i| kind.is_valid(i) && kind.value(i) == "file" && src.is_valid(i));
                self.journaled_elsewhere.extend(files.map(|i| src.value(i).to_owned()));
            }
        }
        Err(outpaced(&shown))
    }

    /// Writes `batches` (the `events` schema) to the events table, dropping rows whose eventID
    /// is already stored or repeated within them.
    ///
    /// Rows go to their partition's file in `open`, which stays open from one append to the
    /// next while its partition keeps receiving rows: a partition that several commit buffers
    /// fill is one file, not one per buffer (a14: 28 files instead of 107; the query suite
    /// 0.66× DuckDB's time instead of 0.85×). The files `close` finishes are committed together; the others stay uncommitted
    /// and their sources unjournaled ([`OpenFiles::holds`]), so a crash leaves their rows to
    /// the next run, and their unfinished uploads to `vacuum` (a local staging file) or to the
    /// bucket's lifecycle rule (an S3 multipart upload).
    ///
    /// The batches are not copied whole: peak memory is the input, its sort order (24 bytes a
    /// row, and an ID hash of 16 in the index) and the open files' encoded row groups.
    ///
    /// Safe beside other writers of the lake: the commit is made only on the version the
    /// deduplication last checked. When another writer committed first, the rows it stored
    /// too are dropped from the files being committed (read back and rewritten, only those
    /// that lost rows), and the files still open are checked the same way when they close.
    pub async fn append_events(
        &mut self,
        batches: Vec<RecordBatch>,
        index: &mut EventIndex,
        open: &mut OpenFiles,
        close: Close,
        metadata: serde_json::Value,
    ) -> Result<AppendOutcome> {
        let mut outcome = AppendOutcome::default();
        let mut batches: Vec<RecordBatch> = batches.into_iter().filter(|b| b.num_rows() > 0).collect();
        // The rows open files held back (deduplicated already) join this append's: sorted
        // together, each partition's rows reach its file in time order.
        let fresh_batches = batches.len();
        for file in open.files.values_mut() {
            batches.append(&mut file.carry);
        }
        let batches = Arc::new(batches);
        let columns = batches.iter().map(event_columns).collect::<Result<Vec<_>>>()?;
        // Partitions this append brings new rows to: the others are behind the listing.
        let mut fresh: HashSet<(String, String)> = HashSet::new();
        // Sort by partition, then time: one run of rows per partition, time-ordered in files.
        // Only the order is computed here, over the buffered batches in place; each partition's
        // rows are gathered a few thousand at a time as its file is written, so the buffer is
        // never copied whole (a sorted copy was as large as the buffer itself).
        let mut parts: Vec<PartitionRows> = Vec::new();
        let since = index.clock; // partitions used after this are this append's: kept by `evict`
        {
            // Each row's partition as its rank among the partitions' names, so that the sort
            // compares numbers rather than two strings (a third of the ingest's `memcmp`), and
            // a row's key takes 24 bytes instead of 56.
            let (rank, names) = ranks(columns.iter().flat_map(|c| (0..c.times.len()).map(|r| (c.regions.value(r), c.periods.value(r)))));
            let mut keys: Vec<(u32, i64, u32, u32)> = Vec::with_capacity(rank.len());
            let mut rank = rank.into_iter();
            for (b, c) in columns.iter().enumerate() {
                for (r, partition) in (0..c.times.len()).zip(rank.by_ref()) {
                    keys.push((partition, c.times.value(r), b as u32, r as u32));
                }
            }
            keys.sort_unstable();
            // Deduplicate partition by partition (sequential: it owns the index).
            for run in keys.chunk_by(|a, b| a.0 == b.0) {
                let (region, period) = names[run[0].0 as usize];
                let key = (region.to_owned(), period.to_owned());
                let mut rows = Vec::with_capacity(run.len());
                if run.iter().all(|&(_, _, b, _)| b as usize >= fresh_batches) {
                    rows.extend(run.iter().map(|&(_, _, b, r)| (b as usize, r as usize)));
                } else {
                    let known = index.partition(&self.events, &key).await?;
                    let mut added = 0;
                    for &(_, _, b, r) in run {
                        let (b, r) = (b as usize, r as usize);
                        if b >= fresh_batches {
                            rows.push((b, r));
                        } else if known.insert(id_hash(columns[b].ids.value(r))) {
                            rows.push((b, r));
                            added += 1;
                        } else {
                            *outcome.duplicates_by_source.entry(columns[b].sources.value(r).to_owned()).or_default() += 1;
                        }
                    }
                    index.cached_ids += added;
                    if added > 0 {
                        fresh.insert(key.clone());
                    }
                }
                if !rows.is_empty() {
                    parts.push((key, rows));
                }
            }
        }
        index.evict(since);
        // Which files stay open: decided before writing, so that a lane finishes a file it
        // closes right after writing its rows (as many writers alive at once as lanes and kept
        // files, however many partitions an append reaches: a minute lake's are hundreds).
        let sizes: Vec<(&(String, String), u64)> = parts
            .iter()
            .filter(|(key, _)| fresh.contains(key))
            .map(|(key, rows)| (key, open.files.get(key).map_or(0, |f| f.rows) + rows.len() as u64))
            .collect();
        let keep = OpenFiles::to_keep(close, sizes);
        let refs: Vec<&RecordBatch> = batches.iter().collect();
        // Each file notes the sources of every batch that gave it rows (a batch holds a few
        // files' rows): more than its own sources at worst, which only delays their journal.
        let batch_sources: Vec<Vec<&str>> = columns
            .iter()
            .map(|c| {
                let mut v: Vec<&str> = (0..c.sources.len()).map(|i| c.sources.value(i)).collect();
                v.dedup();
                v.sort_unstable();
                v.dedup();
                v
            })
            .collect();
        let mut jobs = Vec::with_capacity(parts.len() + open.files.len());
        for (key, mut rows) in parts {
            let first = columns[rows[0].0].times.value(rows[0].1);
            let mut file = match open.files.remove(&key) {
                // Rows older than the file's newest (an event delivered late, or a global
                // service's event in another region's file): the file is finished, and they
                // start a new one, so that every file is in time order.
                Some(file) if file.newest > first => {
                    jobs.push((key.clone(), Vec::new(), file, true));
                    open.new_file()
                }
                Some(file) => file,
                None => open.new_file(),
            };
            let mut seen: Vec<usize> = rows.iter().map(|&(b, _)| b).collect();
            seen.sort_unstable();
            seen.dedup();
            for s in seen.into_iter().flat_map(|b| &batch_sources[b]) {
                if !file.sources.contains(*s) {
                    file.sources.insert((*s).to_owned());
                }
            }
            let closing = !keep.contains(&key);
            if let (false, Close::Idle { before }) = (closing, close) {
                // Held back: rows from `before` on, which rows still to come may precede.
                let split = rows.partition_point(|&(b, r)| columns[b].times.value(r) < before);
                let carry = rows.split_off(split);
                if !carry.is_empty() {
                    file.carry.push(
                        arrow::compute::interleave_record_batch(&refs, &carry)
                            .map_err(|source| LakeError::Arrow { context: "holding back events for their file".into(), source })?,
                    );
                }
            }
            if let Some(&(b, r)) = rows.last() {
                file.newest = file.newest.max(columns[b].times.value(r));
            }
            jobs.push((key, rows, file, closing));
        }
        drop(refs);
        // Files this append gives no rows: their partitions are behind the listing.
        for (key, file) in open.files.drain() {
            jobs.push((key, Vec::new(), file, true));
        }
        let mut partitions = Vec::with_capacity(jobs.len());
        let mut closed = Vec::new();
        for (key, rows, written) in self.write_open(batches.clone(), jobs).await? {
            let file = match written {
                Written::Open(file) => {
                    let id = file.id;
                    open.files.insert(key.clone(), *file);
                    id
                }
                Written::Closed(file) => {
                    let id = file.id;
                    closed.push(file);
                    id
                }
            };
            if !rows.is_empty() {
                partitions.push(StoredPartition { region: key.0, period: key.1, file, rows });
            }
        }
        outcome.stored = Some(Stored { batches, partitions });
        closed.sort_by(|a, b| a.key.cmp(&b.key));
        for c in &mut closed {
            self.drop_theirs(c, &mut outcome).await?;
        }
        let operation = DeltaOperation::Write {
            mode: SaveMode::Append,
            partition_by: Some(schema::PARTITION_COLUMNS.iter().map(|s| s.to_string()).collect()),
            predicate: None,
        };
        let shown = format!("{}{EVENTS_TABLE}", self.url);
        for _ in 0..MAX_CONFLICTS {
            let actions: Vec<Action> = closed.iter().flat_map(|c| c.adds.iter().cloned().map(Action::Add)).collect();
            if actions.is_empty() {
                // Every row of the files closed was another writer's: nothing to commit, but
                // what was held for the files is dropped (`Committed::rewritten`).
                outcome.committed.extend(closed.into_iter().map(|c| Committed { file: c.id, key: c.key, files: Vec::new(), rows: 0, rewritten: true }));
                return Ok(outcome);
            }
            match commit_if_current(&mut self.events, actions, operation.clone(), Some(metadata.clone()), &shown).await {
                Ok(Some(version)) => {
                    outcome.version = Some(version);
                    for c in closed {
                        outcome.written += c.rows;
                        outcome.files += c.adds.len() as u64;
                        let files = c.adds.iter().map(|a| log_path(&a.path)).collect();
                        index.add_files(&c.key, c.adds.into_iter().map(|a| a.path));
                        outcome.committed.push(Committed { file: c.id, key: c.key, files, rows: c.rows, rewritten: c.rewritten });
                    }
                    return Ok(outcome);
                }
                Ok(None) => {
                    outcome.conflicts += 1;
                    closed = self.reconcile(closed, open, index, &mut outcome).await.inspect_err(|_| index.clear())?;
                }
                // A failed commit leaves the index holding IDs that were never stored.
                Err(e) => {
                    index.clear();
                    return Err(e);
                }
            }
        }
        index.clear();
        Err(outpaced(&shown))
    }

    /// After another writer's commit beat this append's: takes the events table at its latest
    /// version, notes the IDs that writer stored in partitions this run has files in (open or
    /// being committed), and drops them from the files being committed.
    async fn reconcile(
        &mut self,
        mut closed: Vec<ClosedFile>,
        open: &mut OpenFiles,
        index: &mut EventIndex,
        outcome: &mut AppendOutcome,
    ) -> Result<Vec<ClosedFile>> {
        let shown = format!("{}{EVENTS_TABLE}", self.url);
        let mut added: HashMap<(String, String), Vec<String>> = HashMap::new();
        for f in changes_since(&mut self.events, &shown).await? {
            let value = |column: &str| f.partition.iter().find(|(c, _)| c == column).map(|(_, v)| v.clone());
            if let (Some(region), Some(period)) = (value(AWS_REGION), value(EVENT_PERIOD)) {
                added.entry((region, period)).or_default().push(f.path);
            }
        }
        index.reload_files(&self.events);
        for (key, paths) in &added {
            // Both a file a late row finished and the one it started may be closing.
            let closing: Vec<&mut ClosedFile> = closed.iter_mut().filter(|c| &c.key == key).collect();
            if closing.is_empty() && !open.files.contains_key(key) {
                index.forget(key); // another writer's rows there: read them again when needed
                continue;
            }
            let mut theirs: foldhash::HashSet<u128> = foldhash::HashSet::default();
            for b in read_files_columns(&self.events, paths, &[EVENT_ID]).await? {
                if let Some(col) = b.column(0).as_string_opt::<i32>() {
                    theirs.extend(col.iter().flatten().map(id_hash));
                }
            }
            index.learn(key, &theirs);
            if let Some(file) = open.files.get_mut(key) {
                file.theirs.extend(theirs.iter().copied());
            }
            for c in closing {
                c.theirs.extend(theirs.iter().copied());
            }
        }
        for c in &mut closed {
            self.drop_theirs(c, outcome).await?;
        }
        Ok(closed)
    }

    /// Drops from a file about to be committed the rows whose IDs another writer stored
    /// since the file was opened (counted as duplicates): the file is read back and written
    /// again without them, or deleted when none are left. Nothing to do in the usual case.
    async fn drop_theirs(&self, c: &mut ClosedFile, outcome: &mut AppendOutcome) -> Result<()> {
        let theirs = std::mem::take(&mut c.theirs);
        if theirs.is_empty() || c.adds.is_empty() {
            return Ok(());
        }
        let paths: Vec<String> = c.adds.iter().map(|a| log_path(&a.path)).collect();
        let mut kept = Vec::new();
        let mut dropped = 0u64;
        for b in read_files(&self.events, &paths, None).await? {
            let (ids, sources) = (string_column(&b, EVENT_ID)?, string_column(&b, SOURCE_FILE)?);
            let keep: arrow::array::BooleanArray = (0..b.num_rows())
                .map(|i| {
                    let stored = theirs.contains(&id_hash(ids.value(i)));
                    if stored {
                        dropped += 1;
                        *outcome.duplicates_by_source.entry(sources.value(i).to_owned()).or_default() += 1;
                    }
                    Some(!stored)
                })
                .collect();
            kept.push(
                arrow::compute::filter_record_batch(&b, &keep)
                    .map_err(|source| LakeError::Arrow { context: "dropping events another writer stored".into(), source })?,
            );
        }
        if dropped == 0 {
            return Ok(());
        }
        discard(&self.events, &c.adds).await;
        c.rows -= dropped;
        c.rewritten = true;
        c.adds = if c.rows == 0 {
            Vec::new()
        } else {
            let partition = [(AWS_REGION.to_owned(), c.key.0.clone()), (EVENT_PERIOD.to_owned(), c.key.1.clone())];
            write_file(&self.events, writer_properties(self.config.granularity), &partition, futures::stream::iter(kept.into_iter().map(Ok))).await?
        };
        Ok(())
    }

    /// Writes each partition's rows into its open file, [`WRITE_LANES`] files at a time, and
    /// finishes the files to close.
    async fn write_open(&self, batches: Arc<Vec<RecordBatch>>, jobs: Vec<WriteJob>) -> Result<Vec<((String, String), Vec<(usize, usize)>, Written)>> {
        let lanes = WRITE_LANES.min(jobs.len()).max(1);
        let mut groups: Vec<Vec<WriteJob>> = (0..lanes).map(|_| Vec::new()).collect();
        for (i, job) in jobs.into_iter().enumerate() {
            groups[i % lanes].push(job);
        }
        let mut tasks = tokio::task::JoinSet::new();
        for group in groups {
            let (batches, url, table, granularity) = (batches.clone(), self.events.table_url().to_string(), self.events.clone(), self.config.granularity);
            tasks.spawn(async move {
                let refs: Vec<&RecordBatch> = batches.iter().collect();
                let mut done = Vec::with_capacity(group.len());
                for (key, rows, mut file, closing) in group {
                    let failed = || delta(format!("writing partition {} of {url}", partition_path(&key)));
                    let values = partition_values([(AWS_REGION, key.0.as_str()), (EVENT_PERIOD, key.1.as_str())].into_iter());
                    for chunk in rows.chunks(GATHER_ROWS) {
                        let batch = arrow::compute::interleave_record_batch(&refs, chunk)
                            .map_err(|source| LakeError::Arrow { context: "gathering events to write".into(), source })?;
                        let writer = match &mut file.writer {
                            Some(writer) => writer,
                            None => file.writer.insert(table_writer(&table, writer_properties(granularity))?),
                        };
                        writer.write_partition(batch, &values, deltalake::writer::WriteMode::Default).await.map_err(failed())?;
                    }
                    file.rows += rows.len() as u64;
                    let written = if closing {
                        let adds = match &mut file.writer {
                            Some(writer) => writer.flush().await.map_err(failed())?,
                            None => Vec::new(),
                        };
                        Written::Closed(ClosedFile { id: file.id, key: key.clone(), adds, rows: file.rows, theirs: file.theirs, rewritten: false })
                    } else {
                        Written::Open(Box::new(file))
                    };
                    done.push((key, rows, written));
                }
                Ok::<_, LakeError>(done)
            });
        }
        let mut written = Vec::new();
        while let Some(joined) = tasks.join_next().await {
            let lane = joined.map_err(|source| LakeError::Task { context: format!("a writer task of {EVENTS_TABLE} failed"), source })?;
            written.extend(lane?);
        }
        Ok(written)
    }

    /// How the files of table `name` are written: `events` as ingest writes them, the others
    /// with zstd.
    pub fn file_properties(&self, name: &str) -> WriterProperties {
        if name == EVENTS_TABLE { writer_properties(self.config.granularity) } else { table_properties() }
    }

    /// [`replace_files`] on `events`, keeping this lake's view of the table current.
    pub async fn replace_events_files(&mut self, removed: &[String], added: Vec<deltalake::kernel::Add>, target_size: u64) -> Result<i64> {
        let (table, version) = replace_files(&self.events, removed, added, target_size).await?;
        self.events = table;
        Ok(version)
    }
}

/// How the files of every table but `events` are written.
pub fn table_properties() -> WriterProperties {
    WriterProperties::builder().set_compression(Compression::ZSTD(ZstdLevel::default())).build()
}

/// Appends `batches` (rows of `table`, which has no partition columns) in one commit, as one
/// new file; returns the table at the new version. `shown` names the table in errors.
pub async fn append(table: &DeltaTable, batches: Vec<RecordBatch>, shown: &str) -> Result<DeltaTable> {
    let mut table = table.clone();
    let adds = write_file(&table, table_properties(), &[], futures::stream::iter(batches.into_iter().map(Ok))).await?;
    if !adds.is_empty() {
        let operation = DeltaOperation::Write { mode: SaveMode::Append, partition_by: None, predicate: None };
        commit(&mut table, adds.into_iter().map(Action::Add).collect(), operation, None, shown).await?;
    }
    Ok(table)
}

/// [`append`], committed only on the version `table` holds (see [`commit_if_current`]):
/// `Ok(None)` when another writer committed first, with nothing committed and the file
/// deleted. `table` moves to the new version when committed.
pub async fn append_if_current(table: &mut DeltaTable, batches: Vec<RecordBatch>, shown: &str) -> Result<Option<i64>> {
    let adds = write_file(table, table_properties(), &[], futures::stream::iter(batches.into_iter().map(Ok))).await?;
    if adds.is_empty() {
        return Ok(table.version().map(|v| v as i64));
    }
    let operation = DeltaOperation::Write { mode: SaveMode::Append, partition_by: None, predicate: None };
    let committed = commit_if_current(table, adds.iter().cloned().map(Action::Add).collect(), operation, None, shown).await?;
    if committed.is_none() {
        discard(table, &adds).await;
    }
    Ok(committed)
}

/// Appends the rows of `batch` in one commit, less those whose `key` column another writer
/// stored since the version `table` holds (records with deterministic IDs, such as Insights:
/// two runs at once find the same ones). Returns the rows committed.
pub async fn append_new_keys(table: &mut DeltaTable, batch: RecordBatch, key: &str, shown: &str) -> Result<u64> {
    let mut batch = batch;
    for _ in 0..MAX_CONFLICTS {
        if batch.num_rows() == 0 || append_if_current(table, vec![batch.clone()], shown).await?.is_some() {
            return Ok(batch.num_rows() as u64);
        }
        let theirs = string_set(&columns_added_since(table, &[key], shown).await?);
        let ours = string_column_of(&batch, key, shown)?;
        let keep: arrow::array::BooleanArray = ours.iter().map(|v| Some(v.is_none_or(|v| !theirs.contains(v)))).collect();
        batch = arrow::compute::filter_record_batch(&batch, &keep).map_err(|source| LakeError::Arrow { context: format!("rows for {shown}"), source })?;
    }
    Err(outpaced(shown))
}

/// Where AWS-format files go (Insights, aggregated events): a folder or `s3://` URL given with
/// `--out`, or the lake itself.
pub struct OutputStore {
    store: Arc<dyn ObjectStore>,
    shown: String,
}

impl OutputStore {
    pub fn new(out: Option<&str>, lake: &Lake) -> Result<OutputStore> {
        let Some(out) = out else {
            return Ok(OutputStore { store: lake.store(), shown: lake.url().to_string() });
        };
        let invalid = |source: Box<dyn std::error::Error + Send + Sync>| LakeError::Output { location: out.to_owned(), source };
        let url = lake_url(out, true).map_err(|e| invalid(e.into()))?;
        let store = crate::source::store_for(&url).map_err(|e| invalid(e.into()))?;
        Ok(OutputStore { store, shown: url.to_string() })
    }

    /// Writes one file as CloudTrail delivers its own (spec sections 3 and 7):
    /// `AWSLogs/<account>/CloudTrail-<kind>/<region>/YYYY/MM/DD/<account>_CloudTrail-<kind>_<region>_<YYYYMMDDTHHmmZ>_<16 chars>.json.gz`,
    /// dated `at`, the suffix derived from the records' IDs (so a retry rewrites the same
    /// file), holding `{"Records": records}` gzipped.
    pub async fn put_records(&self, kind: &str, account: &str, region: &str, at: chrono::DateTime<chrono::Utc>, ids: &[&str], records: &[&str]) -> Result<()> {
        use std::io::Write;
        // Callers leave out unsafe names; this is the last line of defence before a path.
        if let Some(bad) = [account, region].into_iter().find(|v| !crate::schema::is_safe_name(v)) {
            let reason = format!("{} is not a safe folder name; no file is written for it", serde_json::Value::from(bad));
            return Err(LakeError::Config { path: self.shown.clone(), reason });
        }
        let suffix = format!("{:016X}", xxhash_rust::xxh3::xxh3_64(ids.join(",").as_bytes()));
        let path = format!(
            "AWSLogs/{account}/CloudTrail-{kind}/{region}/{}/{account}_CloudTrail-{kind}_{region}_{}_{suffix}.json.gz",
            at.format("%Y/%m/%d"),
            at.format("%Y%m%dT%H%MZ"),
        );
        let shown = format!("{}{path}", self.shown);
        // The records are JSON texts already (callers serialize each once, for the table too).
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        let mut body = || {
            gz.write_all(b"{\"Records\":[")?;
            for (i, r) in records.iter().enumerate() {
                if i > 0 {
                    gz.write_all(b",")?;
                }
                gz.write_all(r.as_bytes())?;
            }
            gz.write_all(b"]}")
        };
        let bytes = body().and_then(|()| gz.finish());
        let bytes = bytes.map_err(|e| LakeError::Write { path: shown.clone(), source: e.into() })?;
        self.store.put(&ObjectPath::from(path.as_str()), PutPayload::from(bytes)).await.map_err(|e| LakeError::Write { path: shown, source: e.into() })?;
        Ok(())
    }
}

/// Brings a table without partitions up to `schema`, whose extra columns are nullable strings:
/// every row gets `defaults`' value for them (or null). One commit replaces all the table's
/// files and its schema, so a crash leaves either the old table or the new one. Tables that
/// hold Prism's own few rows (`insights`) only: everything is rewritten. Returns the table,
/// unchanged when it has every column already.
pub async fn add_columns(table: DeltaTable, schema: SchemaRef, defaults: &[(&str, &str)], shown: &str) -> Result<DeltaTable> {
    use deltalake::kernel::MetadataExt;
    use deltalake::kernel::engine::arrow_conversion::TryIntoKernel;
    let snapshot = table.snapshot().map_err(delta(format!("reading {shown}")))?;
    let present: HashSet<String> = snapshot.schema().fields().map(|f| f.name().to_owned()).collect();
    if schema.fields().iter().all(|f| present.contains(f.name())) {
        return Ok(table);
    }
    let files: Vec<String> = snapshot.log_data().iter().map(|f| f.object_store_path().to_string()).collect();
    let old = read_files(&table, &files, None).await?;
    let mut batches = Vec::with_capacity(old.len());
    for b in old {
        let mut columns = Vec::with_capacity(schema.fields().len());
        for field in schema.fields() {
            let column = match b.column_by_name(field.name()) {
                Some(c) => c.clone(),
                None => {
                    let value = defaults.iter().find(|(n, _)| *n == field.name()).map(|d| d.1);
                    Arc::new(StringArray::from(vec![value; b.num_rows()])) as arrow::array::ArrayRef
                }
            };
            columns.push(column);
        }
        batches
            .push(RecordBatch::try_new(schema.clone(), columns).map_err(|source| LakeError::Arrow { context: format!("adding columns to {shown}"), source })?);
    }
    let kernel: deltalake::kernel::StructType =
        schema.as_ref().try_into_kernel().map_err(|e| LakeError::Delta { context: format!("schema of {shown}"), source: e.into() })?;
    let metadata =
        snapshot.metadata().clone().with_schema(&kernel).map_err(|e| LakeError::Delta { context: format!("schema of {shown}"), source: e.into() })?;
    let mut writer = RecordBatchWriter::for_table(&table).map_err(delta(format!("preparing a writer of {shown}")))?.with_writer_properties(table_properties());
    for b in batches {
        writer.write_partition(b, &Default::default(), deltalake::writer::WriteMode::MergeSchema).await.map_err(delta(format!("rewriting {shown}")))?;
    }
    let adds = writer.flush().await.map_err(delta(format!("rewriting {shown}")))?;
    let mut actions: Vec<Action> = vec![Action::Metadata(metadata)];
    actions.extend(snapshot.log_data().iter().map(|f| Action::Remove(f.remove_action(true))));
    actions.extend(adds.into_iter().map(Action::Add));
    let mut table = table;
    let operation = DeltaOperation::Write { mode: SaveMode::Overwrite, partition_by: None, predicate: None };
    commit(&mut table, actions, operation, Some(serde_json::json!({"operation": "add columns"})), shown).await?;
    Ok(table)
}

/// Commits `actions` to `table` as its next version and moves `table` to it; returns the
/// version. `metadata` goes in the commit's `prism` field; `shown` names the table in errors.
/// Another writer's commit in between is resolved by delta-rs's conflict checker.
async fn commit(table: &mut DeltaTable, actions: Vec<Action>, operation: DeltaOperation, metadata: Option<serde_json::Value>, shown: &str) -> Result<i64> {
    let committed = commit_at(table, actions, operation, metadata, shown, None).await?;
    committed.ok_or_else(|| LakeError::Config { path: shown.to_owned(), reason: "commit refused with retries allowed".into() })
}

/// [`commit`] only as the version right after the one `table` holds: `Ok(None)` when another
/// writer committed since, and nothing is committed. Appends that deduplicate use it, because
/// delta-rs would put a blind append after any other (two writers holding the same event
/// would both store it); the caller reconciles with what the other writer added
/// ([`changes_since`]) and tries again.
async fn commit_if_current(
    table: &mut DeltaTable,
    actions: Vec<Action>,
    operation: DeltaOperation,
    metadata: Option<serde_json::Value>,
    shown: &str,
) -> Result<Option<i64>> {
    commit_at(table, actions, operation, metadata, shown, Some(0)).await
}

async fn commit_at(
    table: &mut DeltaTable,
    actions: Vec<Action>,
    operation: DeltaOperation,
    metadata: Option<serde_json::Value>,
    shown: &str,
    retries: Option<usize>,
) -> Result<Option<i64>> {
    let snapshot = table.snapshot().map_err(delta(format!("reading {shown}")))?;
    let mut props = match metadata {
        Some(m) => CommitProperties::default().with_metadata([("prism".to_owned(), m)]),
        None => CommitProperties::default(),
    };
    if let Some(n) = retries {
        props = props.with_max_retries(n);
    }
    let finalized = CommitBuilder::from(props).with_actions(actions).build(Some(snapshot), table.log_store(), operation).await;
    match finalized {
        Ok(f) => {
            table.state = Some(f.snapshot());
            Ok(Some(f.version() as i64))
        }
        Err(DeltaTableError::Transaction { source: TransactionError::MaxCommitAttempts(_) }) if retries == Some(0) => Ok(None),
        Err(DeltaTableError::Transaction { source: TransactionError::CommitConflict(e) }) => {
            Err(LakeError::Conflict { path: shown.to_owned(), reason: format!("another writer committed a conflicting change first ({e})") })
        }
        Err(source) => Err(LakeError::Delta { context: format!("committing to {shown}"), source }),
    }
}

/// Moves `table` to its latest version and returns the data files added since the version it
/// held (by other writers), as [`TableFile`]s.
pub(crate) async fn changes_since(table: &mut DeltaTable, shown: &str) -> Result<Vec<TableFile>> {
    let before: HashSet<String> = table_files(table).into_iter().map(|f| f.path).collect();
    table.update_incremental(None).await.map_err(delta(format!("reading {shown}")))?;
    Ok(table_files(table).into_iter().filter(|f| !before.contains(&f.path)).collect())
}

/// [`changes_since`], then `columns` of the files other writers added: what the loser of a
/// commit race reads to reconcile with the winners.
pub(crate) async fn columns_added_since(table: &mut DeltaTable, columns: &[&str], shown: &str) -> Result<Vec<RecordBatch>> {
    let added: Vec<String> = changes_since(table, shown).await?.into_iter().map(|f| f.path).collect();
    read_table_columns(table, columns, Some(&added)).await
}

/// The distinct values of the first column (strings) of `batches`.
pub(crate) fn string_set(batches: &[RecordBatch]) -> HashSet<String> {
    let mut out = HashSet::new();
    for b in batches {
        if let Some(col) = b.column(0).as_string_opt::<i32>() {
            out.extend(col.iter().flatten().map(str::to_owned));
        }
    }
    out
}

/// Deletes files written for a commit that was not made (best effort: `vacuum` removes any
/// left behind).
async fn discard(table: &DeltaTable, adds: &[deltalake::kernel::Add]) {
    let store = table.log_store().object_store(None);
    for add in adds {
        if let Err(e) = store.delete(&ObjectPath::from(add.path.as_str())).await {
            tracing::debug!(path = %add.path, error = %e, "an uncommitted file was left for vacuum");
        }
    }
}

/// Times an append is reconciled with other writers' commits before it gives up (each time,
/// another writer made progress).
pub(crate) const MAX_CONFLICTS: usize = 1000;

/// The error of an append that other writers beat [`MAX_CONFLICTS`] times in a row.
pub(crate) fn outpaced(shown: &str) -> LakeError {
    LakeError::Conflict { path: shown.to_owned(), reason: format!("other writers committed first {MAX_CONFLICTS} times in a row") }
}

/// Writes `batches` (rows of `table`, of one partition when it has any, with or without the
/// partition columns) into one new Parquet file, not yet committed; returns its Add action.
pub async fn write_file(
    table: &DeltaTable,
    props: WriterProperties,
    partition: &[(String, String)],
    batches: impl futures::Stream<Item = Result<RecordBatch>>,
) -> Result<Vec<deltalake::kernel::Add>> {
    let shown = || partition.iter().map(|(c, v)| format!("{c}={v}")).collect::<Vec<_>>().join("/");
    let mut writer = table_writer(table, props)?;
    let values = partition_values(partition.iter().map(|(c, v)| (c.as_str(), v.as_str())));
    let mut batches = std::pin::pin!(batches);
    while let Some(batch) = batches.try_next().await? {
        writer.write_partition(batch, &values, deltalake::writer::WriteMode::Default).await.map_err(delta(format!("writing partition {}", shown())))?;
    }
    writer.flush().await.map_err(delta(format!("writing partition {} of {}", shown(), table.table_url())))
}

/// A writer of new files of `table`, not yet committed.
fn table_writer(table: &DeltaTable, props: WriterProperties) -> Result<RecordBatchWriter> {
    Ok(RecordBatchWriter::for_table(table).map_err(delta(format!("preparing a writer of {}", table.table_url())))?.with_writer_properties(props))
}

/// A partition's (column, value) pairs as the writer takes them.
fn partition_values<'a>(partition: impl Iterator<Item = (&'a str, &'a str)>) -> indexmap::IndexMap<String, delta_kernel::expressions::Scalar> {
    partition.map(|(c, v)| (c.to_owned(), delta_kernel::expressions::Scalar::String(v.to_owned()))).collect()
}

/// Replaces files of `table` with files holding the same rows (compaction), in one commit:
/// readers see either the old files or the new ones, never both or neither. Returns the
/// table at the new version.
pub async fn replace_files(table: &DeltaTable, removed: &[String], mut added: Vec<deltalake::kernel::Add>, target_size: u64) -> Result<(DeltaTable, i64)> {
    let url = table.table_url().to_string();
    for add in &mut added {
        add.data_change = false; // the same rows, rearranged: readers of changes skip it
    }
    let wanted: HashSet<&str> = removed.iter().map(String::as_str).collect();
    let mut table = table.clone();
    // Only on the version the files were read from, checked again after any other commit:
    // delta-rs's conflict checker lets two compactions of the same files both commit (their
    // rows would then be in the table twice).
    for _ in 0..MAX_CONFLICTS {
        let snapshot = table.snapshot().map_err(delta(format!("reading {url}")))?;
        let mut actions: Vec<Action> = Vec::with_capacity(removed.len() + added.len());
        for f in snapshot.log_data().iter() {
            if wanted.contains(f.object_store_path().as_ref()) {
                actions.push(Action::Remove(f.remove_action(false)));
            }
        }
        if actions.len() != removed.len() {
            discard(&table, &added).await;
            return Err(LakeError::Conflict {
                path: url,
                reason: format!(
                    "{} of the {} files to replace are no longer in the table (another writer replaced them)",
                    removed.len() - actions.len(),
                    removed.len()
                ),
            });
        }
        actions.extend(added.iter().cloned().map(Action::Add));
        let operation = DeltaOperation::Optimize { predicate: None, target_size: target_size as i64 };
        if let Some(version) = commit_if_current(&mut table, actions, operation, Some(serde_json::json!({"operation": "optimize"})), &url).await? {
            return Ok((table, version));
        }
        table.update_incremental(None).await.map_err(delta(format!("reading {url}")))?;
    }
    Err(outpaced(&url))
}

/// Column `name` of an `events` batch as strings.
fn string_column<'a>(batch: &'a RecordBatch, name: &str) -> Result<&'a StringArray> {
    string_column_of(batch, name, EVENTS_TABLE)
}

/// Column `name` of a batch of `table` as strings.
fn string_column_of<'a>(batch: &'a RecordBatch, name: &str, table: &str) -> Result<&'a StringArray> {
    batch
        .column_by_name(name)
        .and_then(|a| a.as_string_opt::<i32>())
        .ok_or_else(|| LakeError::Config { path: table.into(), reason: format!("column {name} is not a string column") })
}

/// The columns of an `events` batch that appending reads.
struct EventColumns<'a> {
    regions: &'a StringArray,
    periods: &'a StringArray,
    times: &'a arrow::array::TimestampMicrosecondArray,
    ids: &'a StringArray,
    sources: &'a StringArray,
}

fn event_columns(batch: &RecordBatch) -> Result<EventColumns<'_>> {
    let times = batch
        .column_by_name(EVENT_TIME)
        .and_then(|a| a.as_primitive_opt::<arrow::datatypes::TimestampMicrosecondType>())
        .ok_or_else(|| LakeError::Config { path: EVENTS_TABLE.into(), reason: format!("column {EVENT_TIME} is not a timestamp column") })?;
    let [regions, periods, ids, sources] = [AWS_REGION, EVENT_PERIOD, EVENT_ID, SOURCE_FILE].map(|name| string_column(batch, name));
    Ok(EventColumns { regions: regions?, periods: periods?, times, ids: ids?, sources: sources? })
}

/// Partition files written at once.
const WRITE_LANES: usize = 4;

/// A partition (region, period) and the `(batch, row)` positions of its rows in the commit
/// buffer, in the order to write them.
type PartitionRows = ((String, String), Vec<(usize, usize)>);

/// Rows gathered from the ingest buffer into one batch for a writer: small next to the
/// buffer, large enough that per-batch costs do not show.
const GATHER_ROWS: usize = 4096;

/// What one [`Lake::append_events`] did.
#[derive(Debug, Default)]
pub struct AppendOutcome {
    /// Rows committed (those of the files it closed, written by this append or earlier ones).
    pub written: u64,
    pub files: u64,
    pub version: Option<i64>,
    /// Times another writer committed first and this append was reconciled with it.
    pub conflicts: u64,
    /// Rows dropped as duplicates, by source file.
    pub duplicates_by_source: HashMap<String, u64>,
    /// The rows this append wrote (to files committed now or still open), still in memory.
    pub stored: Option<Stored>,
    /// The files this append committed, by partition.
    pub committed: Vec<Committed>,
}

/// The rows an append wrote, kept in memory after it so that the rollups count them from
/// here instead of reading the files back (a quarter of an ingest's CPU).
#[derive(Debug)]
pub struct Stored {
    pub batches: Arc<Vec<RecordBatch>>,
    pub partitions: Vec<StoredPartition>,
}

/// One partition's share of [`Stored`].
#[derive(Debug)]
pub struct StoredPartition {
    pub region: String,
    pub period: String,
    /// The file they went to, by a number unique in the process: a partition can have one
    /// file committed and the next open.
    pub file: u64,
    /// The rows, as `(batch, row)` in [`Stored::batches`].
    pub rows: Vec<(usize, usize)>,
}

/// A partition's file an append committed.
#[derive(Debug)]
pub struct Committed {
    /// Which file (see [`StoredPartition::file`]).
    pub file: u64,
    /// (region, period).
    pub key: (String, String),
    /// The files, named as [`table_files`] names them: one, or none when every row turned out
    /// to be another writer's.
    pub files: Vec<String>,
    pub rows: u64,
    /// Rewritten without rows another writer stored: the rows [`Stored`] gave for it over the
    /// appends that wrote it are more than the file holds.
    pub rewritten: bool,
}

/// Which open files [`Lake::append_events`] finishes and commits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Close {
    /// Every one: the run ends, or its sources must be journaled now.
    All,
    /// Those this append gave no rows (their partitions are behind the listing), those of
    /// [`MAX_FILE_ROWS`] or more, and all but the [`KEEP_OPEN`] latest partitions. The files
    /// kept write only their rows before `before` (µs), the time from which rows still to
    /// come may start: the others wait for the next append, so that each file is written in
    /// time order. (A row older than what its file holds, an event delivered very late,
    /// starts a new file.)
    Idle { before: i64 },
}

/// Files kept open at most after an append with [`Close::Idle`]: a day partition of one
/// region, the day before it (whose last events arrive in the next day's first deliveries),
/// and the same at a region's change.
pub const KEEP_OPEN: usize = 4;

/// Rows after which an open file is finished: 16 row groups, about 60 MB of a busy account's
/// events (a day of the hourly-files archive, 1.17M events, is two files).
pub const MAX_FILE_ROWS: u64 = 16 * ROW_GROUP_ROWS as u64;

/// The `events` files being written across appends, one per partition, not yet committed.
#[derive(Default)]
pub struct OpenFiles {
    files: HashMap<(String, String), OpenFile>,
}

impl OpenFiles {
    fn new_file(&mut self) -> OpenFile {
        // Unique in the process, not only in this run: `prism watch` keeps its rollups (and
        // what they hold by file) from one poll to the next.
        static OPENED: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let id = OPENED.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
        OpenFile { id, writer: None, rows: 0, sources: HashSet::new(), theirs: foldhash::HashSet::default(), carry: Vec::new(), newest: i64::MIN }
    }

    pub fn is_empty(&self) -> bool {
        self.files.is_empty()
    }

    /// Whether rows of source file `source` may be in a file not committed yet: its journal
    /// entry waits until they are.
    pub fn holds(&self, source: &str) -> bool {
        self.files.values().any(|f| f.sources.contains(source))
    }

    /// The partitions whose files stay open after an append that gives them these rows
    /// (counting the file's earlier ones).
    fn to_keep(close: Close, sizes: Vec<(&(String, String), u64)>) -> HashSet<(String, String)> {
        if let Close::All = close {
            return HashSet::new();
        }
        let mut keep: Vec<&(String, String)> = sizes.into_iter().filter(|(_, rows)| *rows < MAX_FILE_ROWS).map(|(key, _)| key).collect();
        keep.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        keep.truncate(KEEP_OPEN);
        keep.into_iter().cloned().collect()
    }
}

/// One partition's file being written.
struct OpenFile {
    /// Which file (see [`StoredPartition::file`]).
    id: u64,
    /// Made by the writer lane at the first rows (preparing one reads the table's schema: on
    /// a minute lake's thousands of partitions, too slow to do in turn).
    writer: Option<RecordBatchWriter>,
    rows: u64,
    sources: HashSet<String>,
    /// IDs other writers stored in the partition since the file was opened: dropped from it
    /// when it closes.
    theirs: foldhash::HashSet<u128>,
    /// Rows held back for the next append (deduplicated, not yet written or counted).
    carry: Vec<RecordBatch>,
    /// The newest `eventtime` written.
    newest: i64,
}

/// A file finished and about to be committed.
struct ClosedFile {
    id: u64,
    key: (String, String),
    adds: Vec<deltalake::kernel::Add>,
    rows: u64,
    theirs: foldhash::HashSet<u128>,
    rewritten: bool,
}

/// A partition's rows for its open file, and whether to finish the file after them.
type WriteJob = ((String, String), Vec<(usize, usize)>, OpenFile, bool);

/// A file after [`Lake::write_open`].
enum Written {
    Open(Box<OpenFile>),
    Closed(ClosedFile),
}

/// `awsregion=…/eventperiod=…`, for messages.
fn partition_path(key: &(String, String)) -> String {
    format!("{AWS_REGION}={}/{EVENT_PERIOD}={}", key.0, key.1)
}

/// A data file's path as the Delta log's readers name it (`object_store_path`): the path an
/// add action holds, parsed as an object-store path.
fn log_path(add_path: &str) -> String {
    object_store::path::Path::parse(add_path).map(|p| p.to_string()).unwrap_or_else(|_| object_store::path::Path::from(add_path).to_string())
}

impl AppendOutcome {
    pub fn duplicates(&self) -> u64 {
        self.duplicates_by_source.values().sum()
    }
}

/// Each key's rank among the distinct keys (their sort order), in the order given, and the
/// distinct keys by rank: a sort by rank compares numbers instead of the keys' strings, and a
/// run of one key is looked up once.
pub(crate) fn ranks<K: Ord + std::hash::Hash + Copy>(keys: impl Iterator<Item = K>) -> (Vec<u32>, Vec<K>) {
    let mut ids: foldhash::HashMap<K, u32> = Default::default();
    let mut out = Vec::with_capacity(keys.size_hint().0);
    let mut last: Option<(K, u32)> = None;
    for k in keys {
        let id = match last {
            Some((l, id)) if l == k => id,
            _ => {
                let fresh = ids.len() as u32;
                *ids.entry(k).or_insert(fresh)
            }
        };
        last = Some((k, id));
        out.push(id);
    }
    let mut distinct: Vec<(K, u32)> = ids.into_iter().collect();
    distinct.sort_unstable();
    let mut rank = vec![0u32; distinct.len()];
    for (r, (_, id)) in distinct.iter().enumerate() {
        rank[*id as usize] = r as u32;
    }
    out.iter_mut().for_each(|id| *id = rank[*id as usize]);
    (out, distinct.into_iter().map(|(k, _)| k).collect())
}

/// Rows per row group of `events` files. Files are sorted by `eventtime`, so a row group
/// covers a stretch of time and its min/max let a time filter skip the rest of a day's file;
/// the page index ([`PAGE_ROWS`]) narrows a short range further. Each row group costs every
/// column read a reader, a dictionary and its pages' set-up: on 4.5M events, 64K rows instead
/// of 16K made the query suite 10% faster (top identities 47 → 25 ms), and a one-hour filter
/// still reads under 1% of the lake. A top-N by time, which larger groups slowed, reads the
/// newest files first (`sql::sort_files`).
pub const ROW_GROUP_ROWS: usize = 64 * 1024;

/// Rows per data page: with the page index (written by default), a filter on a few minutes
/// reads a few pages of each column of the row groups it keeps.
pub const PAGE_ROWS: usize = 2 * 1024;

/// Minute partitions hold small files, where parquet-rs's per-column zstd context setup costs
/// more than the whole file's encoding: they use Snappy. Larger files use zstd for the bulky
/// top-level columns ([`COMPRESSED_COLUMNS`]) and store every other column uncompressed, the
/// nested ones (`useridentity.*`, `resources.*`) included: those are few-valued strings, whose
/// column chunk is a dictionary and bit-packed keys that zstd shrinks by 10–25%, while every
/// read of a chunk would create a zstd context pair (parquet-rs makes one per column chunk),
/// which costs more than decoding it.
fn writer_properties(granularity: Granularity) -> WriterProperties {
    let zstd = Compression::ZSTD(ZstdLevel::try_new(1).unwrap_or_default());
    let (default, compressed) = match granularity {
        Granularity::Minute => (Compression::SNAPPY, Compression::SNAPPY),
        Granularity::Hour | Granularity::Day => (Compression::UNCOMPRESSED, zstd),
    };
    let mut builder =
        WriterProperties::builder().set_compression(default).set_max_row_group_row_count(Some(ROW_GROUP_ROWS)).set_data_page_row_count_limit(PAGE_ROWS);
    for column in COMPRESSED_COLUMNS {
        builder = builder.set_column_compression(ColumnPath::from(*column), compressed);
    }
    for column in UNPRUNED_COLUMNS {
        builder = builder.set_column_statistics_enabled(ColumnPath::from(*column), EnabledStatistics::None);
    }
    // Columns whose values are (nearly) all distinct: a dictionary would only cost the interning
    // of every value before parquet-rs falls back to plain encoding.
    for column in UNIQUE_COLUMNS {
        builder = builder.set_column_dictionary_enabled(ColumnPath::from(*column), false);
    }
    builder.build()
}

/// Events columns written without statistics: unique IDs and JSON text held by most events.
/// Their min/max prune nothing (an ID filter's value falls in every row group's range; LIKE
/// uses none), and computing them compared every value twice as it was written (1–2% of an
/// ingest's CPU). Mostly-null columns keep theirs: few values to compare, and their null counts
/// let `IS NOT NULL` skip row groups.
const UNPRUNED_COLUMNS: &[&str] = &[EVENT_ID, "requestid", "requestparameters", "responseelements", "additionaleventdata"];

/// Events columns with a value per event that no other event has.
const UNIQUE_COLUMNS: &[&str] = &[EVENT_ID, EVENT_TIME, "requestid"];

/// Events columns that zstd shrinks 1.5–6× (unique IDs, times, JSON text, messages): the bulk
/// of a lake's bytes. Not `sourcefile` and `sourceipaddress`, which zstd shrinks 1.5–2.5× but
/// which are dictionaries of a few thousand values per row group: uncompressed, a LIKE on the
/// address or a join on the file reads 5–15% faster, for 2% more lake (measured on 4.5M events).
const COMPRESSED_COLUMNS: &[&str] = &[
    EVENT_ID,
    EVENT_TIME,
    "requestid",
    "requestparameters",
    "responseelements",
    "additionaleventdata",
    "serviceeventdetails",
    "addendum",
    "edgedevicedetails",
    "insightdetails",
    schema::ADDITIONAL_FIELDS,
    "errormessage",
];

/// Events strings with few distinct values per row group, which the writer stores as a
/// dictionary and keys (neither unique nor compressed): a scan that only filters them, or
/// counts rows by one of them, reads them as Arrow dictionaries (`sql::dictionary`) and works
/// on each row group's few values and the rows' keys. Dotted paths name struct fields.
pub const FEW_VALUED_COLUMNS: &[&str] = &[
    "eventversion",
    "eventsource",
    "eventname",
    "sourceipaddress",
    "useragent",
    "errorcode",
    "eventtype",
    "eventcategory",
    "recipientaccountid",
    "vpcendpointid",
    "useridentity.type",
    "useridentity.arn",
    "useridentity.accountid",
    "useridentity.username",
    "useridentity.invokedby",
];

/// 128-bit hash of an event ID: collisions are negligible (2^-64 at billions of events) and a
/// partition's IDs cost 16 bytes each in memory.
pub fn id_hash(id: &str) -> u128 {
    xxhash_rust::xxh3::xxh3_128(id.as_bytes())
}

/// Which event IDs each partition holds, for deduplication, within a memory budget.
pub struct EventIndex {
    /// Data files of every partition (relative paths), from the snapshot and this run's writes.
    files: HashMap<(String, String), Vec<String>>,
    cache: HashMap<(String, String), (u64, foldhash::HashSet<u128>)>,
    clock: u64,
    cached_ids: usize,
    max_ids: usize,
}

impl EventIndex {
    /// Builds the partition → files map from the table's current snapshot. `max_ids` bounds
    /// the IDs kept in memory (16 bytes each plus overhead).
    pub fn new(table: &DeltaTable, max_ids: usize) -> Result<EventIndex> {
        Ok(EventIndex { files: files_by_partition(table), cache: HashMap::new(), clock: 0, cached_ids: 0, max_ids })
    }

    /// Takes the partition → files map from `table` again (after other writers' commits).
    fn reload_files(&mut self, table: &DeltaTable) {
        self.files = files_by_partition(table);
    }

    /// Drops a partition's cached IDs: they are read from its files when next needed.
    fn forget(&mut self, key: &(String, String)) {
        if let Some((_, ids)) = self.cache.remove(key) {
            self.cached_ids -= ids.len();
        }
    }

    /// Adds IDs another writer stored in a partition to its cached IDs, if cached.
    fn learn(&mut self, key: &(String, String), ids: &foldhash::HashSet<u128>) {
        if let Some((_, known)) = self.cache.get_mut(key) {
            let before = known.len();
            known.extend(ids.iter().copied());
            self.cached_ids += known.len() - before;
        }
    }

    /// The IDs of a partition, loading them from its files when not cached.
    async fn partition(&mut self, table: &DeltaTable, key: &(String, String)) -> Result<&mut foldhash::HashSet<u128>> {
        self.clock += 1;
        if !self.cache.contains_key(key) {
            let mut ids = foldhash::HashSet::default();
            if let Some(paths) = self.files.get(key) {
                let batches = read_files_columns(table, paths, &[EVENT_ID]).await?;
                for b in batches {
                    if let Some(col) = b.column(0).as_string_opt::<i32>() {
                        ids.extend(col.iter().flatten().map(id_hash));
                    }
                }
            }
            self.cached_ids += ids.len();
            self.cache.insert(key.clone(), (self.clock, ids));
        }
        let clock = self.clock;
        let entry = self.cache.get_mut(key).map(|e| {
            e.0 = clock;
            &mut e.1
        });
        entry.ok_or_else(|| LakeError::Config { path: EVENTS_TABLE.into(), reason: "partition index lost".into() })
    }

    fn add_files(&mut self, key: &(String, String), paths: impl Iterator<Item = String>) {
        self.files.entry(key.clone()).or_default().extend(paths);
    }

    /// Drops the least recently used partitions until half the budget holds, but none used
    /// after `keep_since` (by the append under way): a partition larger than the budget on
    /// its own would otherwise be read back from its files at every commit.
    fn evict(&mut self, keep_since: u64) {
        if self.cached_ids <= self.max_ids {
            return;
        }
        let mut by_age: Vec<_> = self.cache.iter().map(|(k, (t, s))| (*t, s.len(), k.clone())).collect();
        by_age.sort();
        for (used, len, key) in by_age {
            if self.cached_ids <= self.max_ids / 2 || used > keep_since {
                break;
            }
            self.cache.remove(&key);
            self.cached_ids -= len;
        }
    }

    /// Forgets every cached ID (after a failed commit the cache may hold IDs never stored).
    fn clear(&mut self) {
        self.cache.clear();
        self.cached_ids = 0;
    }
}

/// The data files of each partition of the events `table`.
fn files_by_partition(table: &DeltaTable) -> HashMap<(String, String), Vec<String>> {
    let mut files: HashMap<(String, String), Vec<String>> = HashMap::new();
    for f in partition_files(table) {
        files.entry((f.region, f.period)).or_default().push(f.path);
    }
    files
}

/// One data file of the events table and its partition.
#[derive(Debug, Clone)]
pub(crate) struct PartitionFile {
    pub path: String,
    pub region: String,
    pub period: String,
    /// Its rows, from the Delta log's statistics.
    pub rows: Option<u64>,
}

/// Every data file of the (partitioned) events table, with its partition.
pub(crate) fn partition_files(table: &DeltaTable) -> Vec<PartitionFile> {
    table_files(table)
        .into_iter()
        .filter_map(|f| {
            let value = |column: &str| f.partition.iter().find(|(c, _)| c == column).map(|(_, v)| v.clone());
            Some(PartitionFile { region: value(AWS_REGION)?, period: value(EVENT_PERIOD)?, path: f.path, rows: f.rows })
        })
        .collect()
}

/// One data file of a table, as its latest version lists it.
#[derive(Debug, Clone)]
pub struct TableFile {
    pub path: String,
    /// Partition values (column, value), sorted by column; empty for a table without.
    pub partition: Vec<(String, String)>,
    pub size: u64,
    /// When it was written (ms since the epoch): ingest writes in delivery order.
    pub modified: i64,
    /// Its rows, from the Delta log's statistics.
    pub rows: Option<u64>,
}

/// Every data file of `table`.
pub fn table_files(table: &DeltaTable) -> Vec<TableFile> {
    let Ok(state) = table.snapshot() else { return Vec::new() };
    state
        .log_data()
        .iter()
        .map(|f| {
            let mut partition: Vec<(String, String)> = f.partition_values_map().into_iter().filter_map(|(c, v)| Some((c, v?))).collect();
            partition.sort();
            TableFile {
                path: f.object_store_path().to_string(),
                partition,
                size: f.size().max(0) as u64,
                modified: f.modification_time(),
                rows: f.num_records().map(|n| n as u64),
            }
        })
        .collect()
}

/// Reads `columns` of every active file of `table` (or only of `paths`).
pub async fn read_table_columns(table: &DeltaTable, columns: &[&str], paths: Option<&[String]>) -> Result<Vec<RecordBatch>> {
    let all: Vec<String>;
    let paths = match paths {
        Some(p) => p,
        None => {
            all = match table.snapshot() {
                Ok(state) => state.log_data().iter().map(|f| f.object_store_path().to_string()).collect(),
                Err(_) => Vec::new(),
            };
            &all
        }
    };
    read_files_columns(table, paths, columns).await
}

pub(crate) async fn read_files_columns(table: &DeltaTable, paths: &[String], columns: &[&str]) -> Result<Vec<RecordBatch>> {
    read_files(table, paths, Some(columns)).await
}

/// Reads `paths` of `table`, only `columns` when given (the partition columns are not in them).
pub async fn read_files(table: &DeltaTable, paths: &[String], columns: Option<&[&str]>) -> Result<Vec<RecordBatch>> {
    let mut out = Vec::new();
    for path in paths {
        out.extend(file_batches(table, path, columns, None).await?.try_collect::<Vec<_>>().await?);
    }
    Ok(out)
}

/// The batches of one file of `table` as they are decoded (`batch_rows` rows each when given),
/// only `columns` when given. Compaction reads a bin's files side by side this way, so that
/// only a batch of each is in memory.
pub async fn file_batches(
    table: &DeltaTable,
    path: &str,
    columns: Option<&[&str]>,
    batch_rows: Option<usize>,
) -> Result<futures::stream::BoxStream<'static, Result<RecordBatch>>> {
    let store = table.log_store().object_store(None);
    let shown = format!("reading {path}");
    let context = move || shown.clone();
    // Deprecated in parquet 59 in favour of a hand-written AsyncFileReader; it still does
    // exactly this job (ranged reads of one column) with no extra code here.
    #[allow(deprecated)]
    let reader = ParquetObjectReader::new(store, ObjectPath::from(path));
    let mut builder = ParquetRecordBatchStreamBuilder::new(reader).await.map_err(|source| LakeError::Parquet { context: context(), source })?;
    if let Some(columns) = columns {
        let mask = ProjectionMask::columns(builder.parquet_schema(), columns.iter().copied());
        builder = builder.with_projection(mask);
    }
    if let Some(rows) = batch_rows {
        builder = builder.with_batch_size(rows);
    }
    let stream = builder.build().map_err(|source| LakeError::Parquet { context: context(), source })?;
    Ok(Box::pin(stream.map_err(move |source| LakeError::Parquet { context: context(), source })))
}

/// The lake's settings file, or None when there is none.
async fn read_config_file(store: &dyn ObjectStore, url: &Url) -> Result<Option<LakeConfig>> {
    let shown = format!("{url}{CONFIG_FILE}");
    let bytes = match store.get(&ObjectPath::from(CONFIG_FILE)).await {
        Ok(r) => r.bytes().await.map_err(|source| LakeError::Store { context: shown.clone(), source })?,
        Err(object_store::Error::NotFound { .. }) => return Ok(None),
        Err(source) => return Err(LakeError::Store { context: shown, source }),
    };
    serde_json::from_slice::<LakeConfig>(&bytes).map(Some).map_err(|source| LakeError::ConfigJson { path: shown, source })
}

async fn read_or_create_config(store: &dyn ObjectStore, url: &Url, wanted: &LakeConfig) -> Result<LakeConfig> {
    if let Some(config) = read_config_file(store, url).await? {
        return Ok(config);
    }
    let shown = format!("{url}{CONFIG_FILE}");
    let body = serde_json::to_vec_pretty(wanted).map_err(|source| LakeError::ConfigJson { path: shown.clone(), source })?;
    // Create-only, so two processes creating the same lake agree on one config.
    match store.put_opts(&ObjectPath::from(CONFIG_FILE), PutPayload::from(body), PutMode::Create.into()).await {
        Ok(_) => Ok(wanted.clone()),
        Err(object_store::Error::AlreadyExists { .. }) => {
            read_config_file(store, url).await?.ok_or(LakeError::Config { path: shown, reason: "created by another process, then gone".into() })
        }
        Err(source) => Err(LakeError::Store { context: shown, source }),
    }
}

/// The events columns whose per-file min/max the Delta log keeps, for the scan to skip files:
/// time, the API, the account and the error. Statistics of every column (the default: the
/// first 32, nested fields included) cost 3–4 KB of log per file, which a 30-day minute lake of
/// 43,000 files holds in memory at every commit and every query plan.
pub const EVENTS_STATS_COLUMNS: &str = "eventtime,eventsource,eventname,recipientaccountid,errorcode,readonly,managementevent";

/// Opens the Delta table `<lake>/<name>/`, creating it with `schema` when it does not exist.
/// Every table under the lake root is queryable in SQL by its name.
/// `properties` are Delta table properties set at creation.
pub async fn open_or_create_table(
    lake: &Url,
    name: &str,
    schema: SchemaRef,
    partitions: &[&str],
    properties: &[(deltalake::TableProperty, &str)],
) -> Result<DeltaTable> {
    let url = lake.join(&format!("{name}/")).map_err(|e| LakeError::Location { location: lake.to_string(), source: e.into() })?;
    if url.scheme() == "file"
        && let Ok(dir) = url.to_file_path()
    {
        std::fs::create_dir_all(&dir).map_err(|e| LakeError::Location { location: url.to_string(), source: e.into() })?;
    }
    let table = DeltaTable::try_from_url(url.clone()).await.map_err(delta(format!("opening {url}")))?;
    if table.version().is_some() {
        return Ok(table);
    }
    use deltalake::kernel::engine::arrow_conversion::TryIntoKernel;
    let kernel_schema: deltalake::kernel::StructType =
        schema.as_ref().try_into_kernel().map_err(|e| LakeError::Delta { context: format!("schema of {url}"), source: e.into() })?;
    let created = table
        .create()
        .with_columns(kernel_schema.fields().cloned())
        .with_partition_columns(partitions.iter().map(|s| s.to_string()))
        .with_configuration(properties.iter().map(|(property, value)| (property.as_ref(), Some(*value))))
        .with_table_name(name)
        .with_save_mode(SaveMode::Ignore)
        .await;
    match created {
        Ok(t) => Ok(t),
        // Another process created it first: use theirs.
        Err(_) => DeltaTable::try_from_url(url.clone()).await.map_err(delta(format!("opening {url}"))),
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use arrow::datatypes::{DataType, Field, Schema};

    /// Day and hour files compress the bulky columns with zstd and store few-valued ones as
    /// they are; minute files use Snappy throughout.
    #[test]
    fn bulky_columns_are_compressed_and_few_valued_ones_are_not() {
        let zstd = Compression::ZSTD(ZstdLevel::try_new(1).unwrap());
        let day = writer_properties(Granularity::Day);
        for column in ["requestid", "requestparameters", "responseelements", EVENT_TIME] {
            assert_eq!(day.compression(&ColumnPath::from(column)), zstd, "{column}");
        }
        for column in ["eventname", "eventsource", "useragent", "errorcode", SOURCE_FILE, "sourceipaddress"] {
            assert_eq!(day.compression(&ColumnPath::from(column)), Compression::UNCOMPRESSED, "{column}");
        }
        assert_eq!(day.compression(&ColumnPath::new(vec!["useridentity".into(), "arn".into()])), Compression::UNCOMPRESSED);
        assert!(!day.dictionary_enabled(&ColumnPath::from("requestid")));
        // Statistics where they prune (time, few-valued strings), not on IDs and JSON text.
        for column in [EVENT_ID, "requestid", "requestparameters", "responseelements"] {
            assert_eq!(day.statistics_enabled(&ColumnPath::from(column)), EnabledStatistics::None, "{column}");
        }
        for column in [EVENT_TIME, "eventname", "errorcode", SOURCE_FILE, "errormessage", "insightdetails", "serviceeventdetails"] {
            assert_eq!(day.statistics_enabled(&ColumnPath::from(column)), EnabledStatistics::Page, "{column}");
        }
        // The columns read as dictionaries are stored as dictionaries, uncompressed, and exist.
        let events = crate::schema::events_schema();
        for column in FEW_VALUED_COLUMNS {
            let path = ColumnPath::new(column.split('.').map(str::to_owned).collect());
            assert!(day.dictionary_enabled(&path), "{column}");
            assert_eq!(day.compression(&path), Compression::UNCOMPRESSED, "{column}");
            let (top, leaf) = column.split_once('.').map_or((*column, None), |(t, l)| (t, Some(l)));
            let field = events.field_with_name(top).unwrap();
            let t = match (leaf, field.data_type()) {
                (Some(leaf), DataType::Struct(fields)) => fields.find(leaf).unwrap().1.data_type().clone(),
                (_, t) => t.clone(),
            };
            assert_eq!(t, DataType::Utf8, "{column}");
        }
        let minute = writer_properties(Granularity::Minute);
        for column in ["requestid", "eventname"] {
            assert_eq!(minute.compression(&ColumnPath::from(column)), Compression::SNAPPY, "{column}");
        }
    }

    #[test]
    fn ranks_are_the_keys_sort_order() {
        let keys = [("b", "2"), ("a", "9"), ("b", "2"), ("b", "1"), ("a", "9"), ("c", "0")];
        let (rank, distinct) = ranks(keys.iter().copied());
        assert_eq!(distinct, [("a", "9"), ("b", "1"), ("b", "2"), ("c", "0")]);
        assert_eq!(rank, [2, 0, 2, 1, 0, 3]);
        assert_eq!(ranks(std::iter::empty::<u8>()), (vec![], vec![]));
    }

    #[test]
    fn eviction_keeps_the_partitions_of_the_append_under_way_even_over_budget() {
        let key = |p: &str| ("us-east-1".to_owned(), p.to_owned());
        let ids = |n: u128| (0..n).collect::<foldhash::HashSet<u128>>();
        let cache = HashMap::from([(key("a"), (1, ids(30))), (key("b"), (2, ids(30))), (key("c"), (3, ids(30))), (key("d"), (4, ids(120)))]);
        let mut index = EventIndex { files: HashMap::new(), cache, clock: 4, cached_ids: 210, max_ids: 100 };
        index.evict(3); // d alone is over the budget, and was used by this append: it stays
        assert_eq!(index.cache.keys().map(|k| k.1.as_str()).collect::<Vec<_>>(), ["d"]);
        assert_eq!(index.cached_ids, 120);

        let cache = HashMap::from([(key("a"), (1, ids(40))), (key("b"), (2, ids(40))), (key("c"), (3, ids(40)))]);
        let mut index = EventIndex { files: HashMap::new(), cache, clock: 3, cached_ids: 120, max_ids: 100 };
        index.evict(3); // the oldest go first, down to half the budget
        let mut left: Vec<_> = index.cache.keys().map(|k| k.1.as_str()).collect();
        left.sort();
        assert_eq!((left, index.cached_ids), (vec!["c"], 40));
        index.evict(0); // within budget: nothing to do
        assert_eq!(index.cached_ids, 40);
    }

    /// Events of us-east-1 (id, time) as ingest builds them.
    fn events(rows: &[(&str, &str)]) -> RecordBatch {
        let records: Vec<serde_json::Value> = rows
            .iter()
            .map(|(id, time)| {
                serde_json::json!({"eventVersion": "1.09", "eventTime": time, "eventSource": "s3.amazonaws.com", "eventName": "GetObject",
                    "awsRegion": "us-east-1", "eventID": id, "recipientAccountId": "111122223333", "userIdentity": {"type": "Root"}})
            })
            .collect();
        event_batch(&records)
    }

    /// A batch of CloudTrail records as ingest builds it (day partitions).
    pub(crate) fn event_batch(records: &[serde_json::Value]) -> RecordBatch {
        let mut b = schema::EventBatchBuilder::new(Granularity::Day);
        for record in records {
            let raw = record.to_string();
            let mut event = schema::parse_record(raw.as_bytes()).unwrap();
            let checked = schema::check_record(&event, raw.as_bytes()).unwrap();
            b.append(&mut event, checked, "test.json.gz");
        }
        b.finish()
    }

    /// Two handles on one lake, as two processes: the second appends without having seen the
    /// first's commit. Its rows the first stored are dropped (that partition's file rewritten,
    /// the discarded one deleted), the rest committed, and it then knows the first's IDs.
    #[tokio::test]
    async fn an_append_beaten_by_another_writer_drops_what_that_writer_stored() {
        let dir = tempfile::tempdir().unwrap();
        let location = dir.path().to_str().unwrap();
        let mut first = Lake::open_or_create(location, Some(Granularity::Day)).await.unwrap();
        let mut second = Lake::open(location).await.unwrap();
        let (mut index1, mut index2) = (EventIndex::new(first.events(), 1000).unwrap(), EventIndex::new(second.events(), 1000).unwrap());
        let (d1, d2, d3) = ("2024-06-01T10:00:00Z", "2024-06-02T10:00:00Z", "2024-06-03T10:00:00Z");
        let (mut open1, mut open2) = (OpenFiles::default(), OpenFiles::default());
        let out =
            first.append_events(vec![events(&[("a", d1), ("b", d1), ("c", d2)])], &mut index1, &mut open1, Close::All, serde_json::json!({})).await.unwrap();
        assert_eq!((out.written, out.conflicts), (3, 0));

        let out =
            second.append_events(vec![events(&[("b", d1), ("d", d1), ("e", d3)])], &mut index2, &mut open2, Close::All, serde_json::json!({})).await.unwrap();
        assert_eq!((out.written, out.duplicates(), out.conflicts), (2, 1, 1));
        let out =
            second.append_events(vec![events(&[("a", d1), ("c", d2), ("f", d2)])], &mut index2, &mut open2, Close::All, serde_json::json!({})).await.unwrap();
        assert_eq!((out.written, out.duplicates(), out.conflicts), (1, 2, 0), "the first's IDs are known now");

        // A file left open while the other writer commits to its partition: checked when it
        // closes, though the other's commit came before this writer's next one.
        let out = second
            .append_events(vec![events(&[("g", d2), ("h", d2)])], &mut index2, &mut open2, Close::Idle { before: i64::MAX }, serde_json::json!({}))
            .await
            .unwrap();
        assert_eq!((out.written, out.files), (0, 0), "open, not committed");
        assert!(open2.holds("test.json.gz"));
        let out = first.append_events(vec![events(&[("h", d2), ("i", d3)])], &mut index1, &mut open1, Close::All, serde_json::json!({})).await.unwrap();
        assert_eq!(out.written, 2);
        let out =
            second.append_events(vec![events(&[("j", d3)])], &mut index2, &mut open2, Close::Idle { before: i64::MAX }, serde_json::json!({})).await.unwrap();
        assert_eq!((out.written, out.duplicates(), out.conflicts), (1, 1, 1), "g committed, h dropped; j still open");
        assert!(out.committed.iter().all(|c| c.rewritten && c.key.1 == "20240602"));
        let out = second.append_events(Vec::new(), &mut index2, &mut open2, Close::All, serde_json::json!({})).await.unwrap();
        assert_eq!((out.written, out.files, out.conflicts), (1, 1, 0));
        assert!(open2.is_empty() && !open2.holds("test.json.gz"));

        // A late row finishes the open file and starts another, and both close while the
        // other writer has stored rows of each: both are cleaned of them.
        let late = "2024-06-02T09:00:00Z";
        second.append_events(vec![events(&[("k", d2)])], &mut index2, &mut open2, Close::Idle { before: i64::MAX }, serde_json::json!({})).await.unwrap();
        first.append_events(vec![events(&[("k", d2), ("l", late)])], &mut index1, &mut open1, Close::All, serde_json::json!({})).await.unwrap();
        let out = second.append_events(vec![events(&[("l", late)])], &mut index2, &mut open2, Close::All, serde_json::json!({})).await.unwrap();
        assert_eq!((out.written, out.duplicates(), out.conflicts, out.committed.len()), (0, 2, 1, 2));
        assert!(out.committed.iter().all(|c| c.rewritten && c.files.is_empty()));

        let mut ids: Vec<String> = Vec::new();
        for b in read_table_columns(second.events(), &[EVENT_ID], None).await.unwrap() {
            ids.extend(b.column(0).as_string::<i32>().iter().flatten().map(str::to_owned));
        }
        ids.sort();
        assert_eq!(ids, ["a", "b", "c", "d", "e", "f", "g", "h", "i", "j", "k", "l"]);
        let on_disk = walk_parquet(&dir.path().join(EVENTS_TABLE));
        assert_eq!(on_disk, table_files(second.events()).len(), "no uncommitted file is left behind");
    }

    /// A partition that several appends reach is one file while it stays open: committed when
    /// an append gives it nothing (the listing moved on), or all at the end. Rows from
    /// `before` on wait for the next append; a row older than its file's newest starts a new
    /// file. Every file is in time order.
    #[tokio::test]
    async fn a_partition_written_by_several_appends_is_one_file() {
        let dir = tempfile::tempdir().unwrap();
        let mut lake = Lake::open_or_create(dir.path().to_str().unwrap(), Some(Granularity::Day)).await.unwrap();
        let mut index = EventIndex::new(lake.events(), 1000).unwrap();
        let mut open = OpenFiles::default();
        let (d1, d2, d3) = ("2024-06-01T10:00:00Z", "2024-06-02T10:00:00Z", "2024-06-03T10:00:00Z");
        let micros = |t: &str| chrono::DateTime::parse_from_rfc3339(t).unwrap().timestamp_micros();
        let mut append = async |rows: &[(&str, &str)], close| {
            let batches = if rows.is_empty() { Vec::new() } else { vec![events(rows)] };
            lake.append_events(batches, &mut index, &mut open, close, serde_json::json!({})).await.unwrap()
        };
        let idle = Close::Idle { before: i64::MAX };
        let out = append(&[("a", d1), ("b", d2)], idle).await;
        assert_eq!((out.written, out.files, out.version), (0, 0, None));
        assert_eq!(out.stored.as_ref().unwrap().partitions.len(), 2, "both written to their files");
        let out = append(&[("c", "2024-06-02T11:00:00Z"), ("a", d1), ("d", d3)], Close::Idle { before: micros("2024-06-02T10:30:00Z") }).await;
        assert_eq!((out.written, out.duplicates(), out.files), (1, 1, 1), "d1 got no new row (a repeated): behind, committed");
        assert!(out.stored.as_ref().unwrap().partitions.is_empty(), "a was written by the first append; c (d2) and d (d3) are held back");
        let out = append(&[("e", d3)], idle).await;
        assert_eq!((out.written, out.files), (2, 1), "d2 (b, then c) is behind");
        let out = append(&[("f", "2024-06-03T09:00:00Z")], idle).await;
        assert_eq!((out.written, out.files), (2, 1), "f is older than d3's file (d, e): that file is committed, f starts another");
        let out = append(&[], Close::All).await;
        assert_eq!((out.written, out.files), (1, 1));
        let files = table_files(lake.events());
        assert_eq!(files.len(), 4);
        assert_eq!(files.iter().map(|f| f.rows.unwrap()).sum::<u64>(), 6);
        assert_eq!(walk_parquet(&dir.path().join(EVENTS_TABLE)), 4);
        for f in &files {
            let times: Vec<i64> = read_files(lake.events(), std::slice::from_ref(&f.path), Some(&[EVENT_TIME]))
                .await
                .unwrap()
                .iter()
                .flat_map(|b| b.column(0).as_primitive::<arrow::datatypes::TimestampMicrosecondType>().values().to_vec())
                .collect();
            assert!(times.is_sorted(), "{}: {times:?}", f.path);
        }
    }

    fn walk_parquet(dir: &std::path::Path) -> usize {
        std::fs::read_dir(dir)
            .unwrap()
            .flatten()
            .map(|e| {
                let p = e.path();
                if p.is_dir() { walk_parquet(&p) } else { usize::from(p.extension().is_some_and(|x| x == "parquet")) }
            })
            .sum()
    }

    /// A table from before a column existed gets it, with the default in every old row, in
    /// one commit; a second call changes nothing.
    #[tokio::test]
    async fn add_columns_rewrites_old_rows_with_the_default() {
        let dir = tempfile::tempdir().unwrap();
        let url = Url::from_directory_path(dir.path()).unwrap();
        let old = Arc::new(Schema::new(vec![Field::new("id", DataType::Utf8, false)]));
        let new = Arc::new(Schema::new(vec![Field::new("id", DataType::Utf8, false), Field::new("category", DataType::Utf8, true)]));
        let table = open_or_create_table(&url, "t", old.clone(), &[], &[]).await.unwrap();
        let rows = |ids: &[&str]| RecordBatch::try_new(old.clone(), vec![Arc::new(StringArray::from(ids.to_vec()))]).unwrap();
        let table = append(&table, vec![rows(&["a", "b"])], "t").await.unwrap();
        let table = append(&table, vec![rows(&["c"])], "t").await.unwrap();
        let before = table.version();

        let table = add_columns(table, new.clone(), &[("category", "Management")], "t").await.unwrap();
        assert_eq!(table.version(), before.map(|v| v + 1), "one commit");
        let reopened = open_or_create_table(&url, "t", new.clone(), &[], &[]).await.unwrap();
        let mut got: Vec<(String, String)> = Vec::new();
        for b in read_table_columns(&reopened, &["id", "category"], None).await.unwrap() {
            let (id, c) = (b.column(0).as_string::<i32>(), b.column(1).as_string::<i32>());
            got.extend((0..b.num_rows()).map(|i| (id.value(i).to_owned(), c.value(i).to_owned())));
        }
        got.sort();
        assert_eq!(got, [("a".into(), "Management".into()), ("b".into(), "Management".into()), ("c".into(), "Management".into())]);
        let again = add_columns(reopened, new, &[("category", "Management")], "t").await.unwrap();
        assert_eq!(again.version(), before.map(|v| v + 1), "nothing to add");
    }
}
