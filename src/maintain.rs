//! Lake upkeep: `prism optimize` rewrites a table's small files into fewer large ones, and
//! `prism vacuum` deletes the files no version of a table needs any more.
//!
//! Small files come from every commit that touches a partition: an incremental ingest every
//! few minutes adds one file to today's partition each time, and each Insights run or
//! scheduled query adds one to its table. Each file costs a footer read and a Delta log entry
//! per query.
//!
//! `events` is compacted here, partition by partition: a partition's files, taken in the order
//! they were written (ingest writes in delivery order), are grouped into bins of about the
//! target size, and each bin's files (each sorted by `eventtime` already) are merged into one
//! new file in `eventtime` order, a batch of each file at a time, so row-group statistics keep
//! pruning time filters and memory stays small whatever the bin's size. Each group of bins is
//! swapped in by one commit that removes the old files and adds the new ones
//! (`dataChange: false`), after checking that the new files hold exactly the old files' rows.
//! Before that commit, the rollups record the new files as counted (their rows were counted
//! under the old files), and every old file is counted first. A kill at any point leaves the
//! last committed version, and at worst new files no version references, which `vacuum`
//! deletes.
//!
//! The other tables are compacted the same way, without the sort: their rows stay in the
//! order they were written. (delta-rs's own `optimize` would write their strings as
//! `Utf8View`, which the lake's own readers of these tables do not expect.) `vacuum` is
//! delta-rs's, in its full mode, which also finds files a killed writer left, not only those
//! a commit removed.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use arrow::array::{Array, RecordBatch};
use deltalake::DeltaTable;
use deltalake::operations::vacuum::VacuumMode;
use futures::TryStreamExt;
use parquet::file::properties::WriterProperties;
use serde::Serialize;

use crate::lake::{self, EVENTS_TABLE, Lake, LakeError, TableFile};
use crate::rollup::Rollups;
use crate::schema::{EVENT_TIME, tables};

/// Default size of a compacted file (of Parquet).
pub const DEFAULT_TARGET_BYTES: u64 = 64 << 20;

/// Target files' worth of old files replaced per commit: bounds the work a kill can waste,
/// without a commit per file.
const BINS_PER_COMMIT: u64 = 8;

/// Default retention of `vacuum`: Delta's own default (`delta.deletedFileRetentionDuration`),
/// so that a query reading an older version, or a writer between writing its files and
/// committing them, is never left without its files.
pub const DEFAULT_RETENTION_HOURS: i64 = 7 * 24;

#[derive(Debug, thiserror::Error)]
pub enum MaintainError {
    #[error(transparent)]
    Lake(#[from] LakeError),
    #[error("{context}")]
    Delta {
        context: String,
        #[source]
        source: deltalake::DeltaTableError,
    },
    #[error("compacting {partition}: read {read} rows where the Delta log counts {expected}; nothing was committed")]
    Count { partition: String, read: u64, expected: u64 },
    #[error("{context}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
}

type Result<T, E = MaintainError> = std::result::Result<T, E>;

/// What `optimize` does.
#[derive(Debug, Clone)]
pub struct OptimizeOptions {
    pub lake: String,
    /// Files at least this large are left alone; smaller ones are combined up to it.
    pub target_bytes: u64,
    /// Plan only: report what would be rewritten, write nothing.
    pub dry_run: bool,
    /// Tables left alone: `prism watch` leaves `deliveries` to its journal writer, which may
    /// be committing at the same time.
    pub skip_tables: Vec<&'static str>,
}

impl OptimizeOptions {
    pub fn new(lake: impl Into<String>) -> Self {
        OptimizeOptions { lake: lake.into(), target_bytes: DEFAULT_TARGET_BYTES, dry_run: false, skip_tables: Vec::new() }
    }
}

/// Live counters for a progress display.
#[derive(Debug, Default)]
pub struct OptimizeProgress {
    pub bytes_total: AtomicU64,
    pub bytes_done: AtomicU64,
    pub files_done: AtomicU64,
}

/// What `optimize` did to one table.
#[derive(Debug, Clone, Default, Serialize)]
pub struct TableCompaction {
    pub table: String,
    pub files_before: u64,
    pub bytes_before: u64,
    pub files_removed: u64,
    pub bytes_removed: u64,
    pub files_added: u64,
    pub bytes_added: u64,
    /// Rows moved into the new files.
    pub rows: u64,
    pub partitions: u64,
    pub commits: u64,
}

/// The account of an `optimize` run.
#[derive(Debug, Clone, Default, Serialize)]
pub struct OptimizeSummary {
    pub lake: String,
    pub dry_run: bool,
    pub target_bytes: u64,
    pub tables: Vec<TableCompaction>,
    pub seconds: f64,
}

/// Compacts every table of the lake at `opts.lake`.
pub async fn optimize(opts: &OptimizeOptions, progress: Arc<OptimizeProgress>) -> Result<OptimizeSummary> {
    let started = Instant::now();
    let mut lake = Lake::open(&opts.lake).await?;
    let mut summary = OptimizeSummary { lake: lake.url().to_string(), dry_run: opts.dry_run, target_bytes: opts.target_bytes, ..Default::default() };
    let (events, props) = (lake.events().clone(), lake.file_properties(EVENTS_TABLE));
    let (_, done) = compact(Owner::Events(&mut lake), EVENTS_TABLE, events, props, opts.target_bytes, opts.dry_run, &progress).await?;
    summary.tables.push(done);
    for (name, schema) in tables::all() {
        if opts.skip_tables.contains(&name) {
            continue;
        }
        let table = lake.table(name, schema, &[]).await?;
        let (_, done) = compact(Owner::Other, name, table, lake::table_properties(), opts.target_bytes, opts.dry_run, &progress).await?;
        summary.tables.push(done);
    }
    summary.seconds = started.elapsed().as_secs_f64();
    Ok(summary)
}

/// One new file's worth of a partition's old files.
struct Bin {
    partition: Vec<(String, String)>,
    files: Vec<TableFile>,
}

/// Groups each partition's small files, in the order they were written, into bins of about
/// `target` bytes; a bin of one file is left alone (rewriting it gains nothing).
fn plan(files: Vec<TableFile>, target: u64) -> Vec<Bin> {
    let mut by_partition: BTreeMap<Vec<(String, String)>, Vec<TableFile>> = BTreeMap::new();
    for f in files {
        by_partition.entry(f.partition.clone()).or_default().push(f);
    }
    let mut bins = Vec::new();
    for (partition, mut files) in by_partition {
        files.sort_by(|a, b| (a.modified, &a.path).cmp(&(b.modified, &b.path)));
        let mut current: Vec<TableFile> = Vec::new();
        let mut size = 0;
        for f in files.into_iter().filter(|f| f.size < target) {
            if size + f.size > target && !current.is_empty() {
                bins.push(Bin { partition: partition.clone(), files: std::mem::take(&mut current) });
                size = 0;
            }
            size += f.size;
            current.push(f);
        }
        bins.push(Bin { partition, files: current });
    }
    bins.retain(|b| b.files.len() > 1);
    bins
}

/// Rollups files at which ingest and `insights run` compact the rollups.
pub const ROLLUPS_COMPACT_AT_FILES: usize = 64;

/// Compacts the rollups (by series, then time) once they have [`ROLLUPS_COMPACT_AT_FILES`]
/// files: each ingest commit adds one, and a chart or an Insights run reads one series out of
/// all of them (on 30M events, a console details page's p95 went from 371 ms to 117 ms).
pub async fn tidy_rollups(rollups: &mut Rollups) -> Result<bool> {
    if lake::table_files(rollups.table()).len() < ROLLUPS_COMPACT_AT_FILES {
        return Ok(false);
    }
    match compact_table(rollups.table().clone(), tables::ROLLUPS, DEFAULT_TARGET_BYTES).await {
        Ok(table) => {
            rollups.replace_table(table);
            Ok(true)
        }
        // Another writer of the lake tidied (or appended) first: leave it to the next run.
        Err(MaintainError::Lake(LakeError::Conflict { reason, .. })) => {
            tracing::debug!(%reason, "rollups left for the next tidy");
            Ok(false)
        }
        Err(e) => Err(e),
    }
}

/// Who commits a compaction: `events` goes through the lake, whose rollups must have counted
/// every file before it is replaced; any other table is committed directly.
enum Owner<'a> {
    Events(&'a mut Lake),
    Other,
}

/// Compacts `table` (any table but `events`, at its latest version) into files of about
/// `target_bytes`; returns it at its new version. The scheduler keeps its run history small
/// with this.
pub async fn compact_table(table: DeltaTable, name: &str, target_bytes: u64) -> Result<DeltaTable> {
    let (table, _) = compact(Owner::Other, name, table, lake::table_properties(), target_bytes, false, &OptimizeProgress::default()).await?;
    Ok(table)
}

/// Compacts table `name` (`table` is its latest version).
async fn compact(
    mut owner: Owner<'_>,
    name: &str,
    mut table: DeltaTable,
    props: WriterProperties,
    target_bytes: u64,
    dry_run: bool,
    progress: &OptimizeProgress,
) -> Result<(DeltaTable, TableCompaction)> {
    let files = lake::table_files(&table);
    let mut out =
        TableCompaction { table: name.to_owned(), files_before: files.len() as u64, bytes_before: files.iter().map(|f| f.size).sum(), ..Default::default() };
    let bins = plan(files, target_bytes);
    out.partitions = bins.iter().map(|b| &b.partition).collect::<HashSet<_>>().len() as u64;
    out.files_removed = bins.iter().map(|b| b.files.len() as u64).sum();
    out.bytes_removed = bins.iter().flat_map(|b| &b.files).map(|f| f.size).sum();
    progress.bytes_total.fetch_add(out.bytes_removed, Ordering::Relaxed);
    if dry_run || bins.is_empty() {
        return Ok((table, out));
    }
    // Every events file about to be replaced must be counted by the rollups before it goes.
    let mut rollups = match &mut owner {
        Owner::Events(lake) => {
            let mut r = Rollups::open(lake).await?;
            r.catch_up(lake).await?;
            Some(r)
        }
        Owner::Other => None,
    };
    let mut removed: Vec<String> = Vec::new();
    let mut added: Vec<deltalake::kernel::Add> = Vec::new();
    let mut pending_bytes = 0;
    let last = bins.len() - 1;
    // Events in time order (time filters prune row groups); rollups by series, then time (a
    // chart or an Insights run reads one API's minutes, and the statistics skip the others').
    let sort_by: &[&str] = match owner {
        Owner::Events(_) => &[EVENT_TIME],
        Owner::Other if name == tables::ROLLUPS => &crate::rollup::SORT_COLUMNS,
        Owner::Other => &[],
    };
    for (i, bin) in bins.into_iter().enumerate() {
        let (rows, adds) = rewrite_bin(&table, name, &bin, sort_by, props.clone()).await?;
        out.rows += rows;
        let bytes: u64 = bin.files.iter().map(|f| f.size).sum();
        pending_bytes += bytes;
        removed.extend(bin.files.iter().map(|f| f.path.clone()));
        added.extend(adds);
        progress.bytes_done.fetch_add(bytes, Ordering::Relaxed);
        progress.files_done.fetch_add(bin.files.len() as u64, Ordering::Relaxed);
        if pending_bytes >= BINS_PER_COMMIT * target_bytes || i == last {
            out.files_added += added.len() as u64;
            out.bytes_added += added.iter().map(|a| a.size.max(0) as u64).sum::<u64>();
            match (&mut owner, rollups.as_mut()) {
                (Owner::Events(lake), Some(rollups)) => {
                    let paths: Vec<String> = added.iter().map(|a| a.path.clone()).collect();
                    rollups.mark_rewritten(lake, &paths).await?;
                    lake.replace_events_files(&removed, std::mem::take(&mut added), target_bytes).await?;
                    table = lake.events().clone();
                }
                _ => table = lake::replace_files(&table, &removed, std::mem::take(&mut added), target_bytes).await?.0,
            }
            out.commits += 1;
            removed.clear();
            pending_bytes = 0;
        }
    }
    Ok((table, out))
}

/// Merges a bin's files into one new file, its rows in `sort_by` order when given (else in
/// file order). Returns the rows moved and the new file's Add action (not yet committed).
async fn rewrite_bin(table: &DeltaTable, name: &str, bin: &Bin, sort_by: &[&str], props: WriterProperties) -> Result<(u64, Vec<deltalake::kernel::Add>)> {
    let shown = format!("{name}/{}", bin.partition.iter().map(|(c, v)| format!("{c}={v}")).collect::<Vec<_>>().join("/"));
    let mut inputs = Vec::with_capacity(bin.files.len());
    for f in &bin.files {
        inputs.push(Input { batches: lake::file_batches(table, &f.path, None, Some(MERGE_BATCH_ROWS)).await?, batch: None, keys: None, row: 0, slot: None });
    }
    let merge = Merge::start(inputs, sort_by, shown.clone()).await?;
    let read = Arc::new(AtomicU64::new(0));
    let counted = read.clone();
    let chunks = futures::stream::try_unfold(merge, move |mut merge| {
        let counted = counted.clone();
        async move {
            let chunk = merge.next_chunk().await?;
            Ok(chunk.map(|batch| {
                counted.fetch_add(batch.num_rows() as u64, Ordering::Relaxed);
                (batch, merge)
            }))
        }
    });
    let adds = lake::write_file(table, props, &bin.partition, chunks).await?;
    let read = read.load(Ordering::Relaxed);
    // The new file is not committed yet: a count that does not match leaves it unreferenced.
    if let Some(expected) = bin.files.iter().map(|f| f.rows).sum::<Option<u64>>()
        && expected != read
    {
        return Err(MaintainError::Count { partition: shown, read, expected });
    }
    let written: u64 = adds.iter().filter_map(|a| a.get_stats().ok().flatten().map(|s| s.num_records.max(0) as u64)).sum();
    if written != read {
        return Err(MaintainError::Count { partition: format!("{shown} (written)"), read: written, expected: read });
    }
    Ok((read, adds))
}

/// Rows decoded at a time from each file of a bin being merged.
const MERGE_BATCH_ROWS: usize = 4096;

/// One file of a bin being merged: its current batch, that batch's sort keys, and the next row.
struct Input {
    batches: futures::stream::BoxStream<'static, Result<RecordBatch, LakeError>>,
    batch: Option<RecordBatch>,
    keys: Option<arrow::row::Rows>,
    row: usize,
    /// Where `batch` is in the row group being gathered, once a row of it is taken.
    slot: Option<usize>,
}

/// A k-way merge of a bin's files by the sort columns' row encoding (nulls first), stable on
/// ties (earlier file first). Every file Prism writes is sorted already, so the merge reads
/// one batch of each file at a time: memory is a batch per file plus one row group, whatever
/// the bin's size (sorting the whole bin in memory took 700 MB at the end of a 20M-event
/// ingest). A file written unsorted (by an older version) is merged as it is: every row still
/// moves once, in a less useful order. Without sort columns the files are concatenated.
struct Merge {
    inputs: Vec<Input>,
    /// Inputs with rows left, a binary min-heap by (current key, input).
    heap: Vec<usize>,
    sort_by: Vec<String>,
    converter: Option<arrow::row::RowConverter>,
    shown: String,
}

impl Merge {
    async fn start(inputs: Vec<Input>, sort_by: &[&str], shown: String) -> Result<Merge, LakeError> {
        let mut merge = Merge { inputs, heap: Vec::new(), sort_by: sort_by.iter().map(|c| c.to_string()).collect(), converter: None, shown };
        for i in 0..merge.inputs.len() {
            if merge.advance(i).await? {
                merge.heap.push(i);
            }
        }
        for i in (0..merge.heap.len() / 2).rev() {
            merge.sift_down(i);
        }
        Ok(merge)
    }

    /// Loads input `i`'s next non-empty batch; false when the file is done.
    async fn advance(&mut self, i: usize) -> Result<bool, LakeError> {
        loop {
            let Some(batch) = self.inputs[i].batches.try_next().await? else {
                let input = &mut self.inputs[i];
                (input.batch, input.keys) = (None, None);
                return Ok(false);
            };
            if batch.num_rows() == 0 {
                continue;
            }
            let keys = self.keys(&batch)?;
            let input = &mut self.inputs[i];
            (input.batch, input.keys, input.row, input.slot) = (Some(batch), keys, 0, None);
            return Ok(true);
        }
    }

    fn keys(&mut self, batch: &RecordBatch) -> Result<Option<arrow::row::Rows>, LakeError> {
        if self.sort_by.is_empty() {
            return Ok(None);
        }
        let arrow_err = |source| LakeError::Arrow { context: format!("sorting {}", self.shown), source };
        let columns = self
            .sort_by
            .iter()
            .map(|c| {
                batch.column_by_name(c).cloned().ok_or_else(|| LakeError::Config { path: self.shown.clone(), reason: format!("no column {c} to sort by") })
            })
            .collect::<Result<Vec<_>, _>>()?;
        if self.converter.is_none() {
            let fields = columns.iter().map(|c| arrow::row::SortField::new(c.data_type().clone())).collect();
            self.converter = Some(arrow::row::RowConverter::new(fields).map_err(arrow_err)?);
        }
        let converter = self.converter.as_ref().ok_or_else(|| LakeError::Config { path: self.shown.clone(), reason: "no row converter".into() })?;
        Ok(Some(converter.convert_columns(&columns).map_err(arrow_err)?))
    }

    /// Whether input `a`'s next row comes before input `b`'s.
    fn before(&self, a: usize, b: usize) -> bool {
        let (x, y) = (&self.inputs[a], &self.inputs[b]);
        match (&x.keys, &y.keys) {
            (Some(kx), Some(ky)) => (kx.row(x.row), a) < (ky.row(y.row), b),
            _ => a < b,
        }
    }

    fn sift_down(&mut self, mut i: usize) {
        loop {
            let mut first = i;
            for child in [2 * i + 1, 2 * i + 2] {
                if child < self.heap.len() && self.before(self.heap[child], self.heap[first]) {
                    first = child;
                }
            }
            if first == i {
                return;
            }
            self.heap.swap(i, first);
            i = first;
        }
    }

    /// The next row group's worth of merged rows, or None when every file is done.
    async fn next_chunk(&mut self) -> Result<Option<RecordBatch>, LakeError> {
        let mut batches: Vec<RecordBatch> = Vec::new();
        let mut indices: Vec<(usize, usize)> = Vec::with_capacity(lake::ROW_GROUP_ROWS);
        for input in &mut self.inputs {
            input.slot = None;
        }
        while indices.len() < lake::ROW_GROUP_ROWS {
            let Some(&top) = self.heap.first() else { break };
            let input = &mut self.inputs[top];
            let Some(batch) = &input.batch else { break };
            let slot = match input.slot {
                Some(slot) => slot,
                None => {
                    batches.push(batch.clone());
                    input.slot = Some(batches.len() - 1);
                    batches.len() - 1
                }
            };
            indices.push((slot, input.row));
            input.row += 1;
            if input.row == batch.num_rows() && !self.advance(top).await? {
                let last = self.heap.len() - 1;
                self.heap.swap(0, last);
                self.heap.pop();
            }
            self.sift_down(0);
        }
        if indices.is_empty() {
            return Ok(None);
        }
        let refs: Vec<&RecordBatch> = batches.iter().collect();
        let chunk = arrow::compute::interleave_record_batch(&refs, &indices)
            .map_err(|source| LakeError::Arrow { context: format!("compacting {}", self.shown), source })?;
        Ok(Some(chunk))
    }
}

/// What `vacuum` does.
#[derive(Debug, Clone)]
pub struct VacuumOptions {
    pub lake: String,
    /// Files removed from the table (or never committed) for less than this are kept.
    pub retention: chrono::TimeDelta,
    pub dry_run: bool,
}

/// Files deleted from one table.
#[derive(Debug, Clone, Default, Serialize)]
pub struct TableVacuum {
    pub table: String,
    pub files_deleted: u64,
    /// Up to 20 of them, for the report.
    pub examples: Vec<String>,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct VacuumSummary {
    pub lake: String,
    pub dry_run: bool,
    pub retention_hours: f64,
    pub tables: Vec<TableVacuum>,
    /// A local lake's unfinished uploads: the staging files (`<name>#<n>`) a writer killed
    /// mid-write leaves beside the name it never got to, in a table or under `AWSLogs/`.
    pub unfinished_uploads: UnfinishedUploads,
    pub seconds: f64,
}

/// Staging files deleted (see [`VacuumSummary::unfinished_uploads`]).
#[derive(Debug, Clone, Default, Serialize)]
pub struct UnfinishedUploads {
    pub files_deleted: u64,
    /// Up to 20 of them, relative to the lake, for the report.
    pub examples: Vec<String>,
}

/// Deletes, from every table of the lake, the data files that the current version does not
/// reference and that were removed (or written and never committed) longer ago than the
/// retention period.
pub async fn vacuum(opts: &VacuumOptions) -> Result<VacuumSummary> {
    let started = Instant::now();
    let lake = Lake::open(&opts.lake).await?;
    let mut summary = VacuumSummary {
        lake: lake.url().to_string(),
        dry_run: opts.dry_run,
        retention_hours: opts.retention.num_seconds() as f64 / 3600.0,
        ..Default::default()
    };
    let mut all = vec![(EVENTS_TABLE, lake.events().clone())];
    for (name, schema) in tables::all() {
        all.push((name, lake.table(name, schema, &[]).await?));
    }
    let retention = chrono::Duration::milliseconds(opts.retention.num_milliseconds());
    for (name, table) in all {
        let (_, metrics) = table
            .vacuum()
            .with_mode(VacuumMode::Full)
            .with_retention_period(retention)
            .with_enforce_retention_duration(false)
            .with_dry_run(opts.dry_run)
            .await
            .map_err(|source| MaintainError::Delta { context: format!("vacuuming table `{name}`"), source })?;
        summary.tables.push(TableVacuum {
            table: name.to_owned(),
            files_deleted: metrics.files_deleted.len() as u64,
            examples: metrics.files_deleted.into_iter().take(20).collect(),
        });
    }
    // object_store writes a local file under a staging name and renames it; delta-rs lists
    // through object_store, which hides staging names, so these are found here. (On S3 a put
    // is atomic, and an unfinished multipart upload is the bucket lifecycle rule's.)
    if let Ok(root) = lake.url().to_file_path() {
        let older_than = std::time::SystemTime::now() - opts.retention.to_std().unwrap_or_default();
        sweep_staging(&root, &root, older_than, opts.dry_run, &mut summary.unfinished_uploads)?;
    }
    summary.seconds = started.elapsed().as_secs_f64();
    Ok(summary)
}

/// object_store's staging name for a local upload: `<final name>#<digits>`.
fn is_staging_name(name: &str) -> bool {
    name.rsplit_once('#').is_some_and(|(base, n)| !base.is_empty() && !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
}

/// Deletes (or, in a dry run, lists) the staging files under `dir` last written before
/// `older_than`. Symbolic links are neither followed nor deleted.
fn sweep_staging(root: &std::path::Path, dir: &std::path::Path, older_than: std::time::SystemTime, dry_run: bool, found: &mut UnfinishedUploads) -> Result<()> {
    let io = |context: String| move |source| MaintainError::Io { context, source };
    let entries = std::fs::read_dir(dir).map_err(io(format!("listing {}", dir.display())))?;
    for entry in entries {
        let entry = entry.map_err(io(format!("listing {}", dir.display())))?;
        let path = entry.path();
        let kind = entry.file_type().map_err(io(format!("reading {}", path.display())))?;
        if kind.is_dir() {
            sweep_staging(root, &path, older_than, dry_run, found)?;
            continue;
        }
        if !kind.is_file() || !entry.file_name().to_str().is_some_and(is_staging_name) {
            continue;
        }
        let modified = entry.metadata().and_then(|m| m.modified()).map_err(io(format!("reading {}", path.display())))?;
        if modified > older_than {
            continue;
        }
        if !dry_run {
            match std::fs::remove_file(&path) {
                Ok(()) => {}
                // Renamed or deleted meanwhile (a writer finishing, a second vacuum): not ours.
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(io(format!("deleting {}", path.display()))(e)),
            }
        }
        found.files_deleted += 1;
        if found.examples.len() < 20 {
            found.examples.push(path.strip_prefix(root).unwrap_or(&path).display().to_string());
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn staging_names_are_object_stores_own() {
        for name in ["part-1.parquet#1", "x.json.gz#12345", "a#0"] {
            assert!(is_staging_name(name), "{name}");
        }
        for name in ["part-1.parquet", "notes#v1", "#1", "x#", "x#1a", "x.json.gz"] {
            assert!(!is_staging_name(name), "{name}");
        }
    }

    fn file(path: &str, period: &str, size: u64, modified: i64) -> TableFile {
        TableFile { path: path.into(), partition: vec![("eventperiod".into(), period.into())], size, modified, rows: Some(1) }
    }

    #[test]
    fn bins_follow_write_order_within_a_partition_and_skip_large_and_lone_files() {
        let files = vec![
            file("c", "20240101", 40, 3),
            file("a", "20240101", 40, 1),
            file("b", "20240101", 40, 2),
            file("big", "20240101", 500, 0),
            file("d", "20240101", 40, 4),
            file("lone", "20240102", 10, 1),
        ];
        let bins = plan(files, 100);
        let paths: Vec<Vec<&str>> = bins.iter().map(|b| b.files.iter().map(|f| f.path.as_str()).collect()).collect();
        assert_eq!(paths, vec![vec!["a", "b"], vec!["c", "d"]]);
        assert!(bins.iter().all(|b| b.partition[0].1 == "20240101"));
    }

    /// A file of sorted keys `k` (tagged with the file's number in `f`), in batches of `batch`.
    fn input(file: i64, keys: impl Iterator<Item = i64>, batch: usize) -> Input {
        use arrow::array::Int64Array;
        let keys: Vec<i64> = keys.collect();
        let batches: Vec<Result<RecordBatch, LakeError>> = keys
            .chunks(batch)
            .map(|k| {
                let f = Int64Array::from(vec![file; k.len()]);
                Ok(RecordBatch::try_from_iter([("k", Arc::new(Int64Array::from(k.to_vec())) as _), ("f", Arc::new(f) as _)]).unwrap())
            })
            .collect();
        Input { batches: Box::pin(futures::stream::iter(batches)), batch: None, keys: None, row: 0, slot: None }
    }

    async fn merged(inputs: Vec<Input>, sort_by: &[&str]) -> Vec<(i64, i64)> {
        let mut merge = Merge::start(inputs, sort_by, "t".into()).await.unwrap();
        let mut out = Vec::new();
        while let Some(chunk) = merge.next_chunk().await.unwrap() {
            assert!(chunk.num_rows() <= lake::ROW_GROUP_ROWS);
            let col = |i: usize| chunk.column(i).as_any().downcast_ref::<arrow::array::Int64Array>().unwrap().values().to_vec();
            out.extend(col(0).into_iter().zip(col(1)));
        }
        out
    }

    #[tokio::test]
    async fn the_merge_orders_rows_across_files_stably_a_row_group_at_a_time() {
        // Three sorted files that overlap, with ties across them, longer than two row groups.
        let inputs = vec![
            input(0, (0..120_000).map(|i| i / 3), 1000),
            input(1, (0..30_000).map(|i| i + 500), 4096),
            input(2, std::iter::empty(), 10),
            input(3, (0..5).map(|_| 7), 2),
        ];
        const { assert!(150_005 > 2 * lake::ROW_GROUP_ROWS) };
        let out = merged(inputs, &["k"]).await;
        assert_eq!(out.len(), 120_000 + 30_000 + 5);
        assert!(out.windows(2).all(|w| w[0] <= w[1]), "keys in order, ties by file");
        // Without sort columns the files are concatenated, in order.
        let out = merged(vec![input(0, [5, 1].into_iter(), 1), input(1, [0].into_iter(), 1)], &[]).await;
        assert_eq!(out, vec![(5, 0), (1, 0), (0, 1)]);
    }
}
