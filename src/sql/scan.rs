//! The lake's tables as plain DataFusion Parquet scans.
//!
//! delta-rs's own table provider replays the table's file list through the Delta kernel at
//! every query and puts its scan node between DataFusion's optimizer and the Parquet reader.
//! So a projection of one struct field (`useridentity.arn`) decodes the whole struct, and the
//! dynamic filters that joins and top-N queries build never reach the files. [`LakeTable`]
//! hands DataFusion its own `DataSourceExec` over the files of the snapshot the session
//! already holds:
//!
//! - files are chosen at planning from the Delta log: a filter's pruning predicate is
//!   evaluated against each file's partition values and min/max/null-count statistics, so a
//!   time range reads only the files of that range, without opening the others;
//! - DataFusion's Parquet reader, with the session's Parquet options, reads the rest: nested
//!   projection, row-group pruning and dynamic filters all apply;
//! - the exact row count from the log is the scan's statistic (joins order their sides by it,
//!   and `count(*)` of a whole table is answered without reading any file).
//!
//! Tables that need a Delta reader feature this scan does not implement (deletion vectors,
//! column mapping: reader version 2 or more) are refused with that reason (see
//! [`LakeTable::try_new`]); Prism never writes them. This is why Prism builds delta-rs without
//! its DataFusion integration, a large part of a first build.

use std::collections::HashSet;
use std::ops::Range;
use std::sync::Arc;

use arrow::array::{Array, ArrayRef, AsArray, BooleanArray, RecordBatch, TimestampMicrosecondArray, TimestampNanosecondArray};
use arrow::datatypes::{DataType, FieldRef, Schema, SchemaRef, TimeUnit};
use async_trait::async_trait;
use bytes::Bytes;
use datafusion::catalog::{Session, TableProvider};
use datafusion::common::pruning::PruningStatistics;
use datafusion::common::stats::Precision;
use datafusion::common::{Column, DFSchema, DataFusionError, Result as DfResult, ScalarValue, Statistics};
use datafusion::datasource::TableType;
use datafusion::datasource::file_format::FileFormat;
use datafusion::datasource::file_format::parquet::ParquetFormat;
use datafusion::datasource::listing::PartitionedFile;
use datafusion::datasource::physical_plan::parquet::{CachedParquetFileReaderFactory, DefaultParquetFileReaderFactory, ParquetFileReaderFactory};
use datafusion::datasource::physical_plan::{FileGroup, FileScanConfigBuilder, ParquetSource, wrap_partition_type_in_dict, wrap_partition_value_in_dict};
use datafusion::datasource::source::DataSourceExec;
use datafusion::datasource::table_schema::TableSchema;
use datafusion::execution::object_store::ObjectStoreUrl;
use datafusion::logical_expr::utils::conjunction;
use datafusion::logical_expr::{Expr, TableProviderFilterPushDown};
use datafusion::physical_optimizer::pruning::PruningPredicateBuilder;
use datafusion::physical_plan::ExecutionPlan;
use datafusion::physical_plan::empty::EmptyExec;
use datafusion::physical_plan::metrics::ExecutionPlanMetricsSet;
use deltalake::DeltaTable;

use super::local_reads::LocalReads;
use deltalake::table::state::DeltaTableState;
use futures::FutureExt;
use futures::future::BoxFuture;
use object_store::path::Path as ObjectPath;
use object_store::{ObjectMeta, ObjectStore};
use parquet::arrow::arrow_reader::ArrowReaderOptions;
use parquet::arrow::async_reader::AsyncFileReader;
use parquet::arrow::{ARROW_SCHEMA_META_KEY, encode_arrow_schema};
use parquet::file::metadata::{FileMetaData, KeyValue, ParquetMetaData, ParquetMetaDataBuilder};

/// The object-store URL a table's scans name: `prism-table://<the table's URL in hex>/`. The
/// session registers the table's store under it at planning; a process that only executes
/// plans (a `prism worker`) opens the store from the URL itself ([`table_store`]).
fn table_store_url(table_url: &str) -> DfResult<ObjectStoreUrl> {
    ObjectStoreUrl::parse(format!("{TABLE_STORE_SCHEME}://{}/", hex::encode(table_url)))
}

pub(crate) const TABLE_STORE_SCHEME: &str = "prism-table";

/// The store of the table a [`table_store_url`] names, rooted at the table, opened as the lake
/// opens it (the S3 credential chain of this process). `None` for any other URL.
pub(crate) fn table_store(url: &url::Url) -> Option<DfResult<Arc<dyn ObjectStore>>> {
    if url.scheme() != TABLE_STORE_SCHEME {
        return None;
    }
    let decoded = hex::decode(url.host_str().unwrap_or("")).ok();
    let table = decoded.and_then(|b| String::from_utf8(b).ok()).and_then(|s| url::Url::parse(&s).ok());
    Some(match table {
        Some(table) => crate::source::store_for(&table).map(|store| LocalReads::wrap(&table, store)).map_err(|e| DataFusionError::External(Box::new(e))),
        None => Err(DataFusionError::Plan(format!("`{url}` names no lake table"))),
    })
}

/// One lake table at one Delta version, scanned by DataFusion's Parquet reader.
#[derive(Debug)]
pub struct LakeTable {
    /// `<lake>/<name>/`, for messages.
    url: String,
    state: DeltaTableState,
    /// The table's columns in the Delta schema's order (partition columns where the schema
    /// puts them), strings as views, string partition columns dictionary-encoded.
    schema: SchemaRef,
    /// What the scan reads: the file columns, then the partition columns in Delta's order.
    scan_schema: TableSchema,
    /// For each column of `schema`, its index in `scan_schema`.
    scan_index: Vec<usize>,
    /// Partition columns, in the order of the log's partition values.
    partition_columns: Vec<String>,
    /// The table's object store, registered in the session under `store_url` at each scan.
    store_url: ObjectStoreUrl,
    store: Arc<dyn ObjectStore>,
}

impl LakeTable {
    /// The scan of `table` at its loaded version. Prism writes its tables at reader version 1
    /// (no deletion vectors, no column mapping); a table that needs more was not written by
    /// Prism and is refused.
    pub fn try_new(table: &DeltaTable) -> DfResult<LakeTable> {
        let url = table.table_url().to_string();
        let refuse = |reason: String| DataFusionError::Plan(format!("reading lake table {url}: {reason}"));
        let state = table.snapshot().map_err(|e| refuse(e.to_string()))?.clone();
        let reader = state.protocol().min_reader_version();
        if reader > 1 {
            return Err(refuse(format!("it needs Delta reader version {reader} (deletion vectors or column mapping), which Prism does not read")));
        }
        let partition_columns = state.metadata().partition_columns().to_vec();
        let logical = state.snapshot().arrow_schema();
        let partitioned: HashSet<&str> = partition_columns.iter().map(String::as_str).collect();
        let mut fields: Vec<FieldRef> = Vec::with_capacity(logical.fields().len());
        let mut file_fields: Vec<FieldRef> = Vec::new();
        for f in logical.fields() {
            let field = if partitioned.contains(f.name().as_str()) {
                let t = match f.data_type() {
                    DataType::Utf8 | DataType::LargeUtf8 | DataType::Binary | DataType::LargeBinary => wrap_partition_type_in_dict(f.data_type().clone()),
                    other => other.clone(),
                };
                Arc::new(f.as_ref().clone().with_data_type(t))
            } else {
                let field = viewed(f);
                file_fields.push(field.clone());
                field
            };
            fields.push(field);
        }
        let mut partition_fields = Vec::with_capacity(partition_columns.len());
        for c in &partition_columns {
            partition_fields.push(fields.iter().find(|f| f.name() == c).ok_or_else(|| refuse(format!("partition column {c} is not in the schema")))?.clone());
        }
        let scan_index = fields
            .iter()
            .map(|f| match partition_columns.iter().position(|c| c == f.name()) {
                Some(p) => Some(file_fields.len() + p),
                None => file_fields.iter().position(|g| g.name() == f.name()),
            })
            .collect::<Option<Vec<usize>>>()
            .ok_or_else(|| refuse("a column is neither in the files nor a partition".to_owned()))?;
        let scan_schema = TableSchema::builder(Arc::new(Schema::new(file_fields))).with_table_partition_cols(partition_fields).build();
        let store_url = table_store_url(&url)?;
        Ok(LakeTable {
            url,
            store: LocalReads::wrap(table.table_url(), table.log_store().object_store(None)),
            state,
            schema: Arc::new(Schema::new(fields)),
            scan_schema,
            scan_index,
            partition_columns,
            store_url,
        })
    }

    /// Which files may hold rows matching `filters` (None: all of them), from the log's
    /// statistics. A predicate the statistics cannot decide keeps every file.
    fn prune(&self, session: &dyn Session, filters: &[Expr], log: &DeltaStats) -> DfResult<Option<Vec<bool>>> {
        let Some(predicate) = conjunction(filters.iter().cloned()) else { return Ok(None) };
        let df_schema = DFSchema::try_from(self.schema.as_ref().clone())?;
        let physical = session.create_physical_expr(predicate, &df_schema)?;
        let max_in_list = session.config_options().execution.parquet.max_in_list_size;
        let Some(pruning) = PruningPredicateBuilder::new().with_file_schema(self.schema.clone()).with_max_in_list_size(max_in_list).build(physical) else {
            return Ok(None);
        };
        match pruning.prune(log) {
            Ok(keep) => Ok(Some(keep)),
            Err(e) => {
                tracing::debug!(table = %self.url, "no file pruning: {e}");
                Ok(None)
            }
        }
    }

    /// The selected files, with their partition values, and their total row count when the log
    /// knows every file's.
    fn files(&self, keep: Option<&[bool]>, log: &DeltaStats) -> DfResult<(Vec<PartitionedFile>, Option<usize>)> {
        let column = |name: &str| {
            log.files.column_by_name(name).ok_or_else(|| DataFusionError::Execution(format!("{}: the Delta log's file list has no `{name}`", self.url)))
        };
        let partition_values: Vec<(ArrayRef, bool)> = self
            .partition_columns
            .iter()
            .map(|c| {
                let values = column(&format!("partition.{c}"))?.clone();
                let dictionary = matches!(self.schema.field_with_name(c).map(|f| f.data_type()), Ok(DataType::Dictionary(..)));
                Ok((values, dictionary))
            })
            .collect::<DfResult<_>>()?;
        let paths = column("path")?.as_string_opt::<i32>().ok_or_else(|| DataFusionError::Execution(format!("{}: file paths are not strings", self.url)))?;
        let sizes = arrow::compute::cast(column("size_bytes")?, &DataType::Int64)?;
        let sizes = sizes.as_primitive::<arrow::datatypes::Int64Type>();
        let modified = arrow::compute::cast(column("modification_time")?, &DataType::Timestamp(TimeUnit::Millisecond, None))?;
        let modified = modified.as_primitive::<arrow::datatypes::TimestampMillisecondType>();
        let records = log.row_counts();
        let records = records.as_ref().and_then(|r| r.as_primitive_opt::<arrow::datatypes::UInt64Type>());
        let file_schema = self.scan_schema.file_schema();
        let kept = keep.map_or(log.files.num_rows(), |k| k.iter().filter(|k| **k).count());
        let bounds = (kept <= MAX_FILE_STATISTICS).then(|| FileBounds::new(log, file_schema));
        let mut files = Vec::new();
        let mut rows = Some(0usize);
        for i in 0..log.files.num_rows() {
            if keep.is_some_and(|k| !k.get(i).copied().unwrap_or(true)) {
                continue;
            }
            let path = paths.value(i);
            if path.contains("://") {
                return Err(DataFusionError::NotImplemented(format!("{}: data file `{path}` is outside the table", self.url)));
            }
            // The log holds paths percent-encoded, as delta-rs's own file views decode them.
            let location = ObjectPath::from_url_path(path).unwrap_or_else(|_| ObjectPath::from(path));
            let last_modified = chrono::DateTime::from_timestamp_millis(modified.value(i)).unwrap_or_default();
            let meta = ObjectMeta { location, last_modified, size: u64::try_from(sizes.value(i)).unwrap_or(0), e_tag: None, version: None };
            let mut file = PartitionedFile::new_from_meta(meta);
            file.partition_values = partition_values
                .iter()
                .map(|(values, dictionary)| {
                    let v = ScalarValue::try_from_array(values, i)?;
                    Ok(if *dictionary { wrap_partition_value_in_dict(v) } else { v })
                })
                .collect::<DfResult<_>>()?;
            let count = records.filter(|r| r.is_valid(i)).map(|r| r.value(i) as usize);
            rows = rows.zip(count).map(|(a, b)| a + b);
            files.push(match &bounds {
                Some(bounds) => file.with_statistics(Arc::new(bounds.of_file(i, count, file_schema)?)),
                None => file,
            });
        }
        Ok((files, rows))
    }
}

#[async_trait]
impl TableProvider for LakeTable {
    fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }

    fn table_type(&self) -> TableType {
        TableType::Base
    }

    /// Every filter prunes files (and row groups), but rows are filtered above the scan.
    fn supports_filters_pushdown(&self, filters: &[&Expr]) -> DfResult<Vec<TableProviderFilterPushDown>> {
        Ok(vec![TableProviderFilterPushDown::Inexact; filters.len()])
    }

    async fn scan(&self, session: &dyn Session, projection: Option<&Vec<usize>>, filters: &[Expr], limit: Option<usize>) -> DfResult<Arc<dyn ExecutionPlan>> {
        let stats = DeltaStats {
            files: self
                .state
                .snapshot()
                .add_actions_table(true)
                .map_err(|e| DataFusionError::External(format!("{}: reading the Delta log's file list: {e}", self.url).into()))?,
        };
        let (files, rows) = if stats.num_containers() == 0 {
            (Vec::new(), Some(0))
        } else {
            let keep = self.prune(session, filters, &stats)?;
            self.files(keep.as_deref(), &stats)?
        };
        if files.is_empty() {
            let schema = match projection {
                Some(p) => Arc::new(self.schema.project(p)?),
                None => self.schema.clone(),
            };
            return Ok(Arc::new(EmptyExec::new(schema)));
        }
        session.runtime_env().register_object_store(self.store_url.as_ref(), self.store.clone());
        let projection: Vec<usize> = match projection {
            Some(p) => p.iter().map(|&i| self.scan_index[i]).collect(),
            None => self.scan_index.clone(),
        };
        let mut statistics = Statistics::new_unknown(self.scan_schema.table_schema());
        statistics.num_rows = rows.map_or(Precision::Absent, Precision::Exact);
        let format = ParquetFormat::default().with_options(session.table_options().parquet.clone());
        let groups = FileGroup::new(files).split_files(session.config().target_partitions().max(1));
        let cache = session.runtime_env().cache_manager.clone();
        // Footers go through the session's cache when it has one; with none (the default, see
        // `sql::session`) they are read directly, not offered to a cache of size 0 (which
        // still measures each one). A cached footer is read with DataFusion's size hint, as
        // DataFusion's own plan does.
        let mut source = format
            .file_source(self.scan_schema.clone())
            .downcast_ref::<ParquetSource>()
            .cloned()
            .ok_or_else(|| DataFusionError::Internal(format!("{}: a Parquet scan without a Parquet source", self.url)))?;
        let footers: Arc<dyn ParquetFileReaderFactory> = match format.metadata_size_hint() {
            _ if cache.get_metadata_cache_limit() == 0 => Arc::new(DefaultParquetFileReaderFactory::new(self.store.clone())),
            hint => {
                if let Some(hint) = hint {
                    source = source.with_metadata_size_hint(hint);
                }
                Arc::new(CachedParquetFileReaderFactory::new(self.store.clone(), cache.get_file_metadata_cache()))
            }
        };
        let source = source.with_parquet_file_reader_factory(Arc::new(NestedViews::new(footers, Vec::new())));
        let config = FileScanConfigBuilder::new(self.store_url.clone(), Arc::new(source))
            .with_file_groups(groups)
            .with_statistics(statistics)
            .with_projection_indices(Some(projection))?
            .with_limit(limit)
            .build();
        Ok(DataSourceExec::from_data_source(config))
    }
}

/// The lake's strings, nested ones included, are read as views (`Utf8View`): Parquet's reader
/// makes a view of each string without copying it, and a dictionary-encoded column's equal
/// strings share one view into the dictionary, which later operators hash or compare as 16
/// bytes (`sql::per_value`). DataFusion asks the reader for views of top-level strings only;
/// [`NestedViews`] asks for the rest, so a nested view type is read, not cast. The strings at
/// `dictionaries` (dotted paths, `useridentity.arn`) are read as `Dictionary(Int32, Utf8)`
/// instead: Parquet's dictionary and each row's key, as stored (`sql::dictionary`).
fn view_types(t: &DataType, path: &str, dictionaries: &[String]) -> DataType {
    let nested = |f: &FieldRef| view_field(f, &format!("{path}.{}", f.name()), dictionaries);
    match t {
        DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View if dictionaries.iter().any(|d| d == path) => {
            DataType::Dictionary(Box::new(DataType::Int32), Box::new(DataType::Utf8))
        }
        DataType::Utf8 | DataType::LargeUtf8 => DataType::Utf8View,
        DataType::Binary | DataType::LargeBinary => DataType::BinaryView,
        DataType::Struct(fields) => DataType::Struct(fields.iter().map(nested).collect()),
        DataType::List(item) => DataType::List(nested(item)),
        DataType::LargeList(item) => DataType::LargeList(nested(item)),
        other => other.clone(),
    }
}

/// `f`, found at `path`, with its strings as views or dictionaries ([`view_types`]).
fn view_field(f: &FieldRef, path: &str, dictionaries: &[String]) -> FieldRef {
    Arc::new(f.as_ref().clone().with_data_type(view_types(f.data_type(), path, dictionaries)))
}

/// A top-level field with its strings as views ([`view_types`]).
fn viewed(f: &FieldRef) -> FieldRef {
    view_field(f, f.name(), &[])
}

/// `schema` with the strings at `dictionaries` (dotted paths) as `Dictionary(Int32, Utf8)`:
/// the table schema of a scan that reads them so (`sql::dictionary`).
pub(crate) fn with_dictionaries(schema: &Schema, dictionaries: &[String]) -> Schema {
    let fields: Vec<FieldRef> = schema.fields().iter().map(|f| view_field(f, f.name(), dictionaries)).collect();
    Schema::new_with_metadata(fields, schema.metadata().clone())
}

/// Opens the lake's Parquet files so that their strings, at any depth, are read as views, and
/// those at `dictionaries` as dictionaries.
///
/// The reader takes its Arrow types from the schema a file carries in its footer
/// (`ARROW:schema`), where the writer recorded `Utf8`. This factory's readers hand the opener
/// each footer with that schema's strings turned into views ([`view_types`]), so nested
/// strings come out of the decoder as views, as the table's schema declares them, instead of
/// being copied into `Utf8` and cast. Each file's own schema is rewritten, so files written
/// before a column was added to a struct read as well as the others.
#[derive(Debug)]
pub(crate) struct NestedViews {
    inner: Arc<dyn ParquetFileReaderFactory>,
    dictionaries: Arc<[String]>,
}

impl NestedViews {
    /// Readers of `inner`'s files whose strings at `dictionaries` are read as dictionaries.
    /// `inner` may be a [`NestedViews`] itself: its views become dictionaries where asked.
    pub(crate) fn new(inner: Arc<dyn ParquetFileReaderFactory>, dictionaries: Vec<String>) -> NestedViews {
        NestedViews { inner, dictionaries: dictionaries.into() }
    }
}

impl ParquetFileReaderFactory for NestedViews {
    fn create_reader(
        &self,
        partition: usize,
        file: PartitionedFile,
        size_hint: Option<usize>,
        metrics: &ExecutionPlanMetricsSet,
    ) -> DfResult<Box<dyn AsyncFileReader + Send>> {
        let inner = self.inner.create_reader(partition, file, size_hint, metrics)?;
        Ok(Box::new(NestedViewsReader { inner, dictionaries: self.dictionaries.clone() }))
    }
}

struct NestedViewsReader {
    inner: Box<dyn AsyncFileReader + Send>,
    dictionaries: Arc<[String]>,
}

impl AsyncFileReader for NestedViewsReader {
    fn get_bytes(&mut self, range: Range<u64>) -> BoxFuture<'_, parquet::errors::Result<Bytes>> {
        self.inner.get_bytes(range)
    }

    fn get_byte_ranges(&mut self, ranges: Vec<Range<u64>>) -> BoxFuture<'_, parquet::errors::Result<Vec<Bytes>>> {
        self.inner.get_byte_ranges(ranges)
    }

    fn get_metadata<'a>(&'a mut self, options: Option<&'a ArrowReaderOptions>) -> BoxFuture<'a, parquet::errors::Result<Arc<ParquetMetaData>>> {
        async move { with_view_schema(self.inner.get_metadata(options).await?, &self.dictionaries) }.boxed()
    }
}

/// `metadata` with its Arrow schema's strings as views (dictionaries at `dictionaries`);
/// unchanged when there is nothing to change.
fn with_view_schema(metadata: Arc<ParquetMetaData>, dictionaries: &Arc<[String]>) -> parquet::errors::Result<Arc<ParquetMetaData>> {
    let file = metadata.file_metadata();
    let embedded = file.key_value_metadata().into_iter().flatten().find(|kv| kv.key == ARROW_SCHEMA_META_KEY).and_then(|kv| kv.value.clone());
    let viewed = match &embedded {
        Some(embedded) => remembered_view_schema(embedded, file, dictionaries)?,
        None => viewed_schema(file, dictionaries)?,
    };
    let Some(viewed) = viewed else { return Ok(metadata) };
    let mut key_values: Vec<KeyValue> = file.key_value_metadata().into_iter().flatten().filter(|kv| kv.key != ARROW_SCHEMA_META_KEY).cloned().collect();
    key_values.push(KeyValue::new(ARROW_SCHEMA_META_KEY.to_owned(), viewed));
    let file = FileMetaData::new(
        file.version(),
        file.num_rows(),
        file.created_by().map(str::to_owned),
        Some(key_values),
        file.schema_descr_ptr(),
        file.column_orders().cloned(),
    );
    let mut old = Arc::unwrap_or_clone(metadata).into_builder();
    let rebuilt = ParquetMetaDataBuilder::new(file)
        .set_row_groups(old.take_row_groups())
        .set_column_index(old.take_column_index())
        .set_offset_index(old.take_offset_index())
        .build();
    Ok(Arc::new(rebuilt))
}

/// The encoded Arrow schema of `file` with its strings as views (dictionaries at
/// `dictionaries`), or `None` when that changes nothing.
fn viewed_schema(file: &FileMetaData, dictionaries: &[String]) -> parquet::errors::Result<Option<String>> {
    let schema = parquet::arrow::parquet_to_arrow_schema(file.schema_descr(), file.key_value_metadata())?;
    let viewed = with_dictionaries(&schema, dictionaries);
    Ok((viewed != schema).then(|| encode_arrow_schema(&viewed)))
}

/// A file's embedded Arrow schema and the paths read as dictionaries, to the schema they make.
type ViewedSchemas = std::collections::HashMap<String, Vec<(Arc<[String]>, Option<String>)>>;

/// The files of a table share a handful of schemas: each footer's embedded Arrow schema is
/// decoded, turned into views and encoded once per process (and set of dictionaries), not once
/// per file (that was a twentieth of a one-column scan's time).
static VIEWED_SCHEMAS: std::sync::LazyLock<std::sync::Mutex<ViewedSchemas>> = std::sync::LazyLock::new(Default::default);

/// Schemas remembered at most; a lake has one per schema change (and set of dictionaries read).
const VIEWED_SCHEMAS_KEPT: usize = 64;

/// [`viewed_schema`] of a file whose embedded schema is `embedded`, from [`VIEWED_SCHEMAS`].
fn remembered_view_schema(embedded: &str, file: &FileMetaData, dictionaries: &Arc<[String]>) -> parquet::errors::Result<Option<String>> {
    let known = |memo: &ViewedSchemas| memo.get(embedded)?.iter().find(|(d, _)| d == dictionaries).map(|(_, s)| s.clone());
    if let Some(known) = VIEWED_SCHEMAS.lock().ok().and_then(|memo| known(&memo)) {
        return Ok(known);
    }
    let made = viewed_schema(file, dictionaries)?;
    if let Ok(mut memo) = VIEWED_SCHEMAS.lock() {
        if memo.values().map(Vec::len).sum::<usize>() >= VIEWED_SCHEMAS_KEPT {
            memo.clear();
        }
        memo.entry(embedded.to_owned()).or_default().push((dictionaries.clone(), made.clone()));
    }
    Ok(made)
}

/// The log's statistics, as DataFusion's pruning reads them: delta-rs's flattened list of
/// the table's files (`path`, `size_bytes`, `num_records`, `min.<column>`, `max.<column>`,
/// `null_count.<column>`, `partition.<column>`), one row per file. Delta keeps timestamps'
/// maxima truncated to the millisecond, so a maximum here is the end of its millisecond: a file
/// whose last event is at .999500 is not pruned by a bound at .999200.
struct DeltaStats {
    files: RecordBatch,
}

impl DeltaStats {
    fn stat(&self, prefix: &str, column: &Column) -> Option<ArrayRef> {
        self.files.column_by_name(&format!("{prefix}.{}", column.name)).cloned()
    }

    fn is_partition(&self, column: &Column) -> bool {
        self.stat("partition", column).is_some()
    }
}

impl PruningStatistics for DeltaStats {
    fn min_values(&self, column: &Column) -> Option<ArrayRef> {
        self.stat("min", column).or_else(|| self.stat("partition", column))
    }

    fn max_values(&self, column: &Column) -> Option<ArrayRef> {
        let Some(max) = self.stat("max", column) else { return self.stat("partition", column) };
        Some(match max.data_type() {
            DataType::Timestamp(TimeUnit::Microsecond, tz) => {
                let a = max.as_any().downcast_ref::<TimestampMicrosecondArray>()?;
                Arc::new(a.unary::<_, arrow::datatypes::TimestampMicrosecondType>(|v| v.saturating_add(999)).with_timezone_opt(tz.clone()))
            }
            DataType::Timestamp(TimeUnit::Nanosecond, tz) => {
                let a = max.as_any().downcast_ref::<TimestampNanosecondArray>()?;
                Arc::new(a.unary::<_, arrow::datatypes::TimestampNanosecondType>(|v| v.saturating_add(999_999)).with_timezone_opt(tz.clone()))
            }
            _ => max,
        })
    }

    fn num_containers(&self) -> usize {
        self.files.num_rows()
    }

    fn null_counts(&self, column: &Column) -> Option<ArrayRef> {
        if self.is_partition(column) {
            // A partition value is one value for the whole file: all rows null or none.
            let values = self.stat("partition", column)?;
            let rows = self.row_counts()?;
            let rows = rows.as_primitive_opt::<arrow::datatypes::UInt64Type>()?;
            return Some(Arc::new(arrow::array::UInt64Array::from_iter(
                (0..values.len()).map(|i| if values.is_null(i) { rows.is_valid(i).then(|| rows.value(i)) } else { Some(0) }),
            )));
        }
        arrow::compute::cast(self.stat("null_count", column)?.as_ref(), &DataType::UInt64).ok()
    }

    fn row_counts(&self) -> Option<ArrayRef> {
        arrow::compute::cast(self.files.column_by_name("num_records")?.as_ref(), &DataType::UInt64).ok()
    }

    fn contained(&self, column: &Column, values: &HashSet<ScalarValue>) -> Option<BooleanArray> {
        // Exact for partition columns: does the file's one value appear in `values`?
        let partition = self.stat("partition", column)?;
        let mut out = arrow::array::BooleanBuilder::with_capacity(partition.len());
        for i in 0..partition.len() {
            if partition.is_null(i) {
                out.append_null();
                continue;
            }
            let v = ScalarValue::try_from_array(&partition, i).ok()?;
            out.append_value(values.iter().any(|x| scalar_eq(x, &v)));
        }
        Some(out.finish())
    }
}

/// Each file's min/max/null counts from the log, as DataFusion's per-file statistics, for the
/// columns the log has them for (Prism keeps them for the time, the API and the error code):
/// a top-N reads the files nearest its top first by them (`sql::sort_files`), and a filter on a
/// mostly null column is applied by the reader (`sql::sparse_filter`). The minima and maxima
/// are bounds, not the values (Delta truncates a timestamp's maximum to the millisecond, and
/// [`DeltaStats`] widens it), so they are `Inexact`, which DataFusion does not prune files by.
/// A file's statistics take about 10 KB (a slot per column), so a scan of more than
/// [`MAX_FILE_STATISTICS`] files goes without them.
const MAX_FILE_STATISTICS: usize = 4096;

struct FileBounds {
    /// Per column of the file schema, one row per file.
    columns: Vec<ColumnBounds>,
}

/// One column's minima and maxima (when they have its type) and null counts, one row per file.
struct ColumnBounds {
    bounds: Option<(ArrayRef, ArrayRef)>,
    nulls: Option<ArrayRef>,
}

impl FileBounds {
    fn new(log: &DeltaStats, file_schema: &Schema) -> FileBounds {
        let columns = file_schema
            .fields()
            .iter()
            .map(|f| {
                let column = Column::new_unqualified(f.name());
                let bounds = log.stat("min", &column).zip(log.stat("max", &column).and(log.max_values(&column)));
                // A bound of another type than the column's would not compare with its values.
                let bounds = bounds.filter(|(min, max)| min.data_type() == f.data_type() && max.data_type() == f.data_type());
                ColumnBounds { bounds, nulls: log.stat("null_count", &column).and(log.null_counts(&column)) }
            })
            .collect();
        FileBounds { columns }
    }

    /// File `i`'s statistics (its `rows` if the log knows them).
    fn of_file(&self, i: usize, rows: Option<usize>, file_schema: &Schema) -> DfResult<Statistics> {
        let mut statistics = Statistics::new_unknown(file_schema);
        statistics.num_rows = rows.map_or(Precision::Absent, Precision::Exact);
        for (column, ColumnBounds { bounds, nulls }) in statistics.column_statistics.iter_mut().zip(&self.columns) {
            if let Some((min, max)) = bounds.as_ref().filter(|(min, max)| min.is_valid(i) && max.is_valid(i)) {
                column.min_value = Precision::Inexact(ScalarValue::try_from_array(min, i)?);
                column.max_value = Precision::Inexact(ScalarValue::try_from_array(max, i)?);
            }
            if let Some(nulls) = nulls.as_ref().and_then(|n| n.as_primitive_opt::<arrow::datatypes::UInt64Type>()).filter(|n| n.is_valid(i)) {
                column.null_count = Precision::Exact(nulls.value(i) as usize);
            }
        }
        Ok(statistics)
    }
}

/// Equality of a predicate's literal and a partition value, through dictionary wrappers and
/// string encodings (a literal may be `Utf8View` where the log holds `Utf8`).
fn scalar_eq(a: &ScalarValue, b: &ScalarValue) -> bool {
    fn plain(v: &ScalarValue) -> ScalarValue {
        match v {
            ScalarValue::Dictionary(_, inner) => plain(inner),
            ScalarValue::Utf8View(s) | ScalarValue::LargeUtf8(s) => ScalarValue::Utf8(s.clone()),
            other => other.clone(),
        }
    }
    plain(a) == plain(b)
}

#[cfg(test)]
mod tests {
    use super::*;

    use arrow::datatypes::Field;

    #[test]
    fn strings_become_views_at_every_depth() {
        assert_eq!(view_types(&DataType::Utf8, "a", &[]), DataType::Utf8View);
        assert_eq!(view_types(&DataType::LargeBinary, "a", &[]), DataType::BinaryView);
        let t = DataType::Struct(vec![Field::new("arn", DataType::Utf8, true), Field::new("n", DataType::Int64, true)].into());
        let list = DataType::List(Arc::new(Field::new("element", t.clone(), true)));
        let viewed = DataType::Struct(vec![Field::new("arn", DataType::Utf8View, true), Field::new("n", DataType::Int64, true)].into());
        assert_eq!(view_types(&t, "u", &[]), viewed);
        assert_eq!(view_types(&list, "l", &[]), DataType::List(Arc::new(Field::new("element", viewed.clone(), true))));
        // Asked for as dictionaries, by path: the nested string, from a string or a view.
        let dictionary = DataType::Dictionary(Box::new(DataType::Int32), Box::new(DataType::Utf8));
        let keyed = DataType::Struct(vec![Field::new("arn", dictionary.clone(), true), Field::new("n", DataType::Int64, true)].into());
        let paths = ["u.arn".to_owned()];
        assert_eq!(view_types(&t, "u", &paths), keyed);
        assert_eq!(view_types(&viewed, "u", &paths), keyed);
        assert_eq!(view_types(&t, "v", &paths), viewed);
        assert_eq!(view_types(&DataType::Utf8View, "u.arn", &paths), dictionary);
        assert_eq!(view_types(&DataType::Int64, "u.arn", &paths), DataType::Int64);
    }

    /// A file whose struct holds a string, with or without the Arrow schema in its footer, is
    /// read with that string as a view, the same values, and its footer otherwise unchanged.
    #[test]
    fn footers_ask_for_nested_strings_as_views() {
        use arrow::array::{Int64Array, StringArray, StructArray};
        use parquet::arrow::ArrowWriter;
        use parquet::arrow::arrow_reader::{ArrowReaderMetadata, ParquetRecordBatchReaderBuilder};
        use parquet::arrow::arrow_writer::ArrowWriterOptions;
        use parquet::file::metadata::ParquetMetaDataReader;

        let arn = Field::new("arn", DataType::Utf8, true);
        let identity = StructArray::from(vec![
            (Arc::new(arn), Arc::new(StringArray::from(vec![Some("arn:aws:iam::123456789012:user/alice"), None, Some("short")])) as ArrayRef),
            (Arc::new(Field::new("n", DataType::Int64, true)), Arc::new(Int64Array::from(vec![1, 2, 3])) as ArrayRef),
        ]);
        let batch = RecordBatch::try_from_iter([("useridentity", Arc::new(identity) as ArrayRef)]).unwrap();
        for embedded in [true, false] {
            let mut file = Vec::new();
            let options = ArrowWriterOptions::new().with_skip_arrow_metadata(!embedded);
            let mut writer = ArrowWriter::try_new_with_options(&mut file, batch.schema(), options).unwrap();
            writer.write(&batch).unwrap();
            writer.close().unwrap();
            let file = bytes::Bytes::from(file);
            let metadata = Arc::new(ParquetMetaDataReader::new().parse_and_finish(&file).unwrap());
            let viewed = with_view_schema(metadata.clone(), &Arc::from(Vec::new())).unwrap();
            assert_eq!(viewed.file_metadata().num_rows(), 3);
            assert_eq!(viewed.row_groups().len(), metadata.row_groups().len());
            let reader = ArrowReaderMetadata::try_new(viewed, Default::default()).unwrap();
            let DataType::Struct(fields) = reader.schema().field(0).data_type().clone() else { panic!("{:?}", reader.schema()) };
            assert_eq!(fields[0].data_type(), &DataType::Utf8View, "embedded: {embedded}");
            let read: Vec<RecordBatch> =
                ParquetRecordBatchReaderBuilder::new_with_metadata(file.clone(), reader.clone()).build().unwrap().collect::<Result<_, _>>().unwrap();
            let arns = read[0].column(0).as_struct().column(0).clone();
            let arns = arns.as_string_view();
            assert_eq!(arns.iter().collect::<Vec<_>>(), vec![Some("arn:aws:iam::123456789012:user/alice"), None, Some("short")]);
            // Read again: the rewritten schema is already all views.
            assert!(Arc::ptr_eq(&with_view_schema(reader.metadata().clone(), &Arc::from(Vec::new())).unwrap(), reader.metadata()));
            // Asked for as a dictionary, over the views: the same values, as keys.
            let keyed = with_view_schema(reader.metadata().clone(), &Arc::from(vec!["useridentity.arn".to_owned()])).unwrap();
            let reader = ArrowReaderMetadata::try_new(keyed, Default::default()).unwrap();
            let read: Vec<RecordBatch> = ParquetRecordBatchReaderBuilder::new_with_metadata(file, reader).build().unwrap().collect::<Result<_, _>>().unwrap();
            let arns = read[0].column(0).as_struct().column(0).clone();
            let arns = arns.as_dictionary::<arrow::datatypes::Int32Type>();
            let arns: Vec<Option<&str>> = arns.downcast_dict::<arrow::array::StringArray>().unwrap().into_iter().collect();
            assert_eq!(arns, vec![Some("arn:aws:iam::123456789012:user/alice"), None, Some("short")], "embedded: {embedded}");
        }
    }
}
