//! Row groups skipped by their dictionaries: a filter on few-valued strings reads only the row
//! groups whose dictionary holds a value it accepts.
//!
//! A hunt for a rare value (`useragent LIKE '%python-requests%'`, `sourceipaddress LIKE
//! '185.220.%'`) matches in a few row groups, yet the scan decoded every row group's keys to
//! find out: min/max statistics of user agents or addresses prune nothing. The lake writes
//! these columns ([`crate::lake::FEW_VALUED_COLUMNS`]) with a dictionary per row group, whose
//! page is a few kilobytes. Where a filter sits right on a lake table's scan, [`SkipRowGroups`]
//! puts a [`RowGroupSkipExec`] in the scan's place: per file, it reads each row group's
//! dictionary pages of the columns the filter tests, evaluates each test on the values (and on
//! a null), and hands the scan a [`ParquetAccessPlan`] that skips the row groups where the
//! filter can be true for no row. The filter above still runs on every row read.
//!
//! The filter is taken apart at its `AND`s and `OR`s; a part that reads one few-valued column
//! and calls nothing volatile is tested on the values, any other part counts as possibly true.
//! A row group is skipped only where every data page of the column is dictionary-encoded
//! (the chunk's page encoding statistics say so): a writer whose dictionary grew too large
//! goes on in plain pages, whose values the dictionary does not hold.
//!
//! Not used on distributed sessions, like the other rules over Prism's own operators.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;

use arrow::array::{Array, ArrayRef, BooleanArray, RecordBatch, StringArray};
use arrow::datatypes::{DataType, Field, Schema};
use bytes::Bytes;
use datafusion::common::config::ConfigOptions;
use datafusion::common::tree_node::{Transformed, TransformedResult, TreeNode, TreeNodeRecursion};
use datafusion::datasource::listing::PartitionedFile;
use datafusion::datasource::physical_plan::parquet::{ParquetAccessPlan, ParquetFileReaderFactory};
use datafusion::datasource::physical_plan::{FileGroup, FileScanConfigBuilder, FileSource};
use datafusion::datasource::source::DataSourceExec;
use datafusion::error::{DataFusionError, Result};
use datafusion::execution::TaskContext;
use datafusion::logical_expr::{Operator, Volatility};
use datafusion::physical_expr::expressions::{BinaryExpr, IsNotNullExpr, IsNullExpr};
use datafusion::physical_expr::utils::collect_columns;
use datafusion::physical_expr::{PhysicalExpr, ScalarFunctionExpr};
use datafusion::physical_optimizer::PhysicalOptimizerRule;
use datafusion::physical_plan::filter::FilterExec;
use datafusion::physical_plan::metrics::{BaselineMetrics, Count, ExecutionPlanMetricsSet, MetricBuilder, MetricsSet, RecordOutput};
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::{DisplayAs, DisplayFormatType, ExecutionPlan, PlanProperties, ReplaceChildrenOptions, SendableRecordBatchStream};
use futures::future::BoxFuture;
use futures::{StreamExt, TryStreamExt};
use parquet::arrow::arrow_reader::ArrowReaderOptions;
use parquet::arrow::async_reader::AsyncFileReader;
use parquet::basic::{Encoding, Type as PhysicalType};
use parquet::column::page::{Page, PageReader};
use parquet::file::metadata::{ColumnChunkMetaData, PageIndexPolicy, ParquetMetaData};
use parquet::file::serialized_reader::SerializedPageReader;

use super::page_count::{Chunk, plain_values};

/// The physical optimizer rule (see the module doc). Runs last: after [`super::dictionary`],
/// so the filters it looks at are final, and after [`super::sort_files`], which looks for the
/// scan right under a filter.
#[derive(Debug, Default)]
pub struct SkipRowGroups;

impl PhysicalOptimizerRule for SkipRowGroups {
    fn optimize(&self, plan: Arc<dyn ExecutionPlan>, _config: &ConfigOptions) -> Result<Arc<dyn ExecutionPlan>> {
        plan.transform_up(|node| {
            let Some(filter) = node.downcast_ref::<FilterExec>() else { return Ok(Transformed::no(node)) };
            let Some(exec) = RowGroupSkipExec::try_new(filter) else { return Ok(Transformed::no(node)) };
            let child = Arc::new(exec) as Arc<dyn ExecutionPlan>;
            Ok(Transformed::yes(Arc::clone(&node).replace_children(vec![child], super::plan_rules::recompute())?))
        })
        .data()
    }

    fn name(&self) -> &str {
        "skip_row_groups"
    }

    fn schema_check(&self) -> bool {
        true
    }
}

/// What a filter says about a row group, given the values of its columns' dictionaries.
#[derive(Debug, Clone)]
enum Test {
    /// A part of the filter over one few-valued column (its dotted path in the files), over a
    /// batch of that column alone, as the scan reads it (`read_as`).
    Values {
        path: String,
        expr: Arc<dyn PhysicalExpr>,
        read_as: DataType,
    },
    And(Vec<Test>),
    Or(Vec<Test>),
    /// Anything else: possibly true.
    Unknown,
}

impl Test {
    /// The test of `expr`, a predicate over the scan's output (`projection`: the scan's
    /// expressions over its files' columns, `files`).
    fn of(expr: &Arc<dyn PhysicalExpr>, projection: &[Arc<dyn PhysicalExpr>], files: &Schema, output: &Schema) -> Test {
        if let Some(binary) = expr.downcast_ref::<BinaryExpr>()
            && matches!(binary.op(), Operator::And | Operator::Or)
        {
            let parts = vec![Test::of(binary.left(), projection, files, output), Test::of(binary.right(), projection, files, output)];
            return if *binary.op() == Operator::And { Test::And(parts) } else { Test::Or(parts) };
        }
        let columns = collect_columns(expr);
        let [column] = columns.iter().collect::<Vec<_>>()[..] else { return Test::Unknown };
        let Some((path, read_as)) = projection.get(column.index()).and_then(|p| super::dictionary::few_valued_as(p, files)) else { return Test::Unknown };
        if output.fields().get(column.index()).is_none_or(|f| *f.data_type() != read_as) || volatile(expr) || nullness(expr) {
            return Test::Unknown;
        }
        match super::plan_rules::over_its_column(expr) {
            Ok(expr) => Test::Values { path, expr, read_as },
            Err(_) => Test::Unknown,
        }
    }

    /// Whether some row group could be found false: a test of values that decides.
    fn decides(&self) -> bool {
        match self {
            Test::Values { .. } => true,
            Test::And(parts) => parts.iter().any(Test::decides),
            Test::Or(parts) => parts.iter().all(Test::decides),
            Test::Unknown => false,
        }
    }

    /// The dotted paths of the columns tested, once each.
    fn paths(&self, out: &mut Vec<String>) {
        match self {
            Test::Values { path, .. } if !out.contains(path) => out.push(path.clone()),
            Test::And(parts) | Test::Or(parts) => parts.iter().for_each(|p| p.paths(out)),
            _ => {}
        }
    }

    /// Whether the filter can be true for a row of the row group whose columns hold `values`
    /// (by path; None: not all known).
    fn possible(&self, values: &[(String, Option<ArrayRef>)]) -> bool {
        match self {
            Test::Values { path, expr, read_as } => {
                let Some(Some(array)) = values.iter().find(|(p, _)| p == path).map(|(_, v)| v) else { return true };
                // A part that fails on some value (a cast of a code that is no number, which
                // the rows' own order of evaluation may never reach) decides nothing.
                let answer = || -> Result<bool> {
                    let array = arrow::compute::cast(array, read_as)?;
                    let schema = Arc::new(Schema::new(vec![Field::new("v", read_as.clone(), true)]));
                    let batch = RecordBatch::try_new(schema, vec![array])?;
                    let answer = expr.evaluate(&batch)?.into_array(batch.num_rows())?;
                    Ok(answer.as_any().downcast_ref::<BooleanArray>().is_none_or(|a| a.true_count() > 0))
                };
                answer().unwrap_or(true)
            }
            Test::And(parts) => parts.iter().all(|p| p.possible(values)),
            Test::Or(parts) => parts.iter().any(|p| p.possible(values)),
            Test::Unknown => true,
        }
    }
}

/// Whether `expr` only asks whether its column is null: a dictionary cannot tell (every row
/// group of a column with values holds one), so reading it would be work for nothing.
fn nullness(expr: &Arc<dyn PhysicalExpr>) -> bool {
    let mut expr = expr;
    while let Some(inner) = expr.downcast_ref::<super::dictionary::OnValues>().and_then(|v| v.children().into_iter().next()) {
        expr = inner;
    }
    expr.downcast_ref::<IsNullExpr>().is_some() || expr.downcast_ref::<IsNotNullExpr>().is_some()
}

/// Whether `expr` holds anything whose answer may change from one call to the next: a
/// volatile node, or a function that is only stable.
fn volatile(expr: &Arc<dyn PhysicalExpr>) -> bool {
    let changing = |e: &Arc<dyn PhysicalExpr>| {
        e.is_volatile_node() || e.downcast_ref::<ScalarFunctionExpr>().is_some_and(|call| call.fun().signature().volatility != Volatility::Immutable)
    };
    expr.exists(|e| Ok(changing(e))).unwrap_or(true)
}

/// Above a lake table's scan: reads its row groups' dictionaries first, and runs the scan
/// over access plans that skip the row groups its filter cannot match (see the module doc).
/// The scan stays its child, as planned, with its own metrics.
#[derive(Debug)]
pub struct RowGroupSkipExec {
    input: Arc<dyn ExecutionPlan>,
    test: Arc<Test>,
    paths: Arc<[String]>,
    metrics: ExecutionPlanMetricsSet,
}

impl RowGroupSkipExec {
    /// The node for `filter`'s input, if it is a lake table's scan and `filter` tests a
    /// few-valued column it reads.
    fn try_new(filter: &FilterExec) -> Option<RowGroupSkipExec> {
        let scan = filter.input();
        let (_, source) = super::plan_rules::lake_scan(scan)?;
        let projection: Vec<Arc<dyn PhysicalExpr>> = FileSource::projection(source)?.iter().map(|p| Arc::clone(&p.expr)).collect();
        let files = FileSource::table_schema(source).file_schema();
        let test = Test::of(filter.predicate(), &projection, files, &scan.schema());
        if !test.decides() {
            return None;
        }
        let mut paths = Vec::new();
        test.paths(&mut paths);
        source.parquet_file_reader_factory()?;
        Some(RowGroupSkipExec { input: Arc::clone(scan), test: Arc::new(test), paths: paths.into(), metrics: ExecutionPlanMetricsSet::new() })
    }
}

impl DisplayAs for RowGroupSkipExec {
    fn fmt_as(&self, _t: DisplayFormatType, f: &mut fmt::Formatter) -> fmt::Result {
        write!(f, "RowGroupSkipExec: by dictionaries of [{}]", self.paths.join(", "))
    }
}

impl ExecutionPlan for RowGroupSkipExec {
    fn name(&self) -> &str {
        "RowGroupSkipExec"
    }

    fn properties(&self) -> &Arc<PlanProperties> {
        self.input.properties()
    }

    fn children(&self) -> Vec<&Arc<dyn ExecutionPlan>> {
        vec![&self.input]
    }

    fn apply_expressions(&self, _f: &mut dyn FnMut(&Arc<dyn PhysicalExpr>) -> Result<TreeNodeRecursion>) -> Result<TreeNodeRecursion> {
        Ok(TreeNodeRecursion::Continue)
    }

    /// Over a new scan, if it is still a lake table's; else that scan alone (the skip only
    /// saves reading, the filter above decides).
    fn replace_children(self: Arc<Self>, mut children: Vec<Arc<dyn ExecutionPlan>>, _options: ReplaceChildrenOptions) -> Result<Arc<dyn ExecutionPlan>> {
        let (Some(input), true) = (children.pop(), children.is_empty()) else {
            return Err(DataFusionError::Internal("RowGroupSkipExec has one child".into()));
        };
        if super::plan_rules::lake_scan(&input).is_none_or(|(_, source)| source.parquet_file_reader_factory().is_none())
            || input.schema() != self.input.schema()
        {
            return Ok(input);
        }
        let node = RowGroupSkipExec { input, test: Arc::clone(&self.test), paths: Arc::clone(&self.paths), metrics: ExecutionPlanMetricsSet::new() };
        Ok(Arc::new(node))
    }

    fn with_new_children(self: Arc<Self>, children: Vec<Arc<dyn ExecutionPlan>>) -> Result<Arc<dyn ExecutionPlan>> {
        self.replace_children(children, super::plan_rules::recompute())
    }

    fn execute(&self, partition: usize, context: Arc<TaskContext>) -> Result<SendableRecordBatchStream> {
        let internal = |what: &str| DataFusionError::Internal(format!("RowGroupSkipExec {what}"));
        let (config, source) = super::plan_rules::lake_scan(&self.input).ok_or_else(|| internal("over another scan"))?;
        // The scan's own reader factory, as it is now (a later rule may have rebuilt the scan).
        let factory = Arc::clone(source.parquet_file_reader_factory().ok_or_else(|| internal("over a scan without a reader factory"))?);
        let files = config.file_groups.get(partition).ok_or_else(|| internal(&format!("has no partition {partition}")))?.files().to_vec();
        let planner = Arc::new(Planner {
            factory: Arc::clone(&factory),
            metadata_size_hint: source.table_parquet_options().global.metadata_size_hint,
            test: Arc::clone(&self.test),
            paths: Arc::clone(&self.paths),
            bytes: MetricBuilder::new(&self.metrics).counter("dictionary_bytes_read", partition),
            checked: MetricBuilder::new(&self.metrics).counter("row_groups_checked", partition),
            skipped: MetricBuilder::new(&self.metrics).counter("row_groups_skipped_by_dictionary", partition),
        });
        let (config, source) = (config.clone(), source.clone());
        let baseline = BaselineMetrics::new(&self.metrics, partition);
        let stream = futures::stream::once(async move {
            // A few files at once: on S3 each is a footer and a request for its dictionaries.
            let planned: Vec<(PartitionedFile, Option<Arc<ParquetMetaData>>)> = futures::stream::iter(files)
                .map(|file| {
                    let planner = Arc::clone(&planner);
                    async move { planner.plan(file, partition).await }
                })
                .buffered(PLAN_AHEAD)
                .try_filter_map(|planned| futures::future::ready(Ok(planned)))
                .try_collect()
                .await?;
            // The same scan (its source, and so its metrics) over this partition's files, given
            // the footers read here rather than reading them again.
            let footers = planned.iter().filter_map(|(file, footer)| Some((file.object_meta.location.to_string(), Arc::clone(footer.as_ref()?)))).collect();
            let files = planned.into_iter().map(|(file, _)| file).collect();
            let source = source.with_parquet_file_reader_factory(Arc::new(Preloaded { inner: factory, footers }));
            let scan = FileScanConfigBuilder::from(config).with_source(Arc::new(source)).with_file_groups(vec![FileGroup::new(files)]).build();
            DataSourceExec::from_data_source(scan).execute(0, context)
        })
        .try_flatten()
        .map_ok(move |batch| batch.record_output(&baseline));
        Ok(Box::pin(RecordBatchStreamAdapter::new(self.schema(), stream)))
    }

    fn metrics(&self) -> Option<MetricsSet> {
        Some(self.metrics.clone_inner())
    }
}

/// Reads a file's dictionaries and plans which of its row groups to read.
struct Planner {
    factory: Arc<dyn ParquetFileReaderFactory>,
    metadata_size_hint: Option<usize>,
    test: Arc<Test>,
    paths: Arc<[String]>,
    bytes: Count,
    checked: Count,
    skipped: Count,
}

/// Files planned at once by each partition.
const PLAN_AHEAD: usize = 4;

impl Planner {
    /// `file` with an access plan that skips the row groups the filter cannot match (those
    /// outside its byte range, which the scan skips anyway, are not read), and its footer;
    /// None when it skips every row group of its range, so that the scan does not even open
    /// it. A footer that cannot be read leaves the file to the scan, which reports why.
    async fn plan(&self, file: PartitionedFile, partition: usize) -> Result<Option<(PartitionedFile, Option<Arc<ParquetMetaData>>)>> {
        // The reader's own metrics (a scan's) would read as this node's: its bytes are counted
        // below instead.
        let mut reader = self.factory.create_reader(partition, file.clone(), self.metadata_size_hint, &ExecutionPlanMetricsSet::new())?;
        // The footer alone, as the scan asks for it (it reads the page index apart, if at all).
        let options = ArrowReaderOptions::new().with_page_index_policy(PageIndexPolicy::Skip);
        let Ok(metadata) = reader.get_metadata(Some(&options)).await else { return Ok(Some((file, None))) };
        let groups: Vec<usize> = (0..metadata.num_row_groups())
            .filter(|&index| {
                let Some(first) = metadata.row_group(index).columns().first() else { return false };
                let start = first.dictionary_page_offset().unwrap_or_else(|| first.data_page_offset());
                file.range.as_ref().is_none_or(|r| r.contains(start))
            })
            .collect();
        // Every dictionary page wanted, in one request.
        let wanted: Vec<(usize, usize, Option<std::ops::Range<u64>>)> = groups
            .iter()
            .flat_map(|&g| self.paths.iter().enumerate().map(move |(p, path)| (g, p, path)))
            .map(|(g, p, path)| (g, p, dictionary_range(&metadata, g, path)))
            .collect();
        let ranges: Vec<std::ops::Range<u64>> = wanted.iter().filter_map(|(_, _, r)| r.clone().filter(|r| !r.is_empty())).collect();
        let asked = ranges.len();
        // Not the pages asked for (an error, or another number of them): none is known.
        let mut fetched = match ranges.is_empty() {
            true => Vec::new(),
            false => reader.get_byte_ranges(ranges).await.ok().filter(|pages| pages.len() == asked).unwrap_or_default(),
        }
        .into_iter();
        self.bytes.add(fetched.as_slice().iter().map(Bytes::len).sum());
        let mut plan = ParquetAccessPlan::new_all(metadata.num_row_groups());
        let mut read = 0;
        for &g in &groups {
            let values: Vec<(String, Option<ArrayRef>)> = wanted
                .iter()
                .filter(|(group, _, _)| *group == g)
                .map(|(_, p, range)| {
                    let values = match range {
                        // The column is not in this file: every row null.
                        None => Some(Arc::new(StringArray::from(vec![None::<&str>])) as ArrayRef),
                        Some(range) if range.is_empty() => None,
                        Some(range) => fetched.next().and_then(|bytes| dictionary_values(&metadata, g, &self.paths[*p], range.start, bytes)),
                    };
                    (self.paths[*p].clone(), values)
                })
                .collect();
            self.checked.add(1);
            if self.test.possible(&values) {
                read += 1;
            } else {
                plan.skip(g);
                self.skipped.add(1);
            }
        }
        Ok((read > 0).then(|| (file.with_extension(plan), Some(metadata))))
    }
}

/// A reader factory that hands out the footers already read (and the inner factory's readers
/// for the rest).
#[derive(Debug)]
struct Preloaded {
    inner: Arc<dyn ParquetFileReaderFactory>,
    footers: HashMap<String, Arc<ParquetMetaData>>,
}

impl ParquetFileReaderFactory for Preloaded {
    fn create_reader(
        &self,
        partition_index: usize,
        file: PartitionedFile,
        metadata_size_hint: Option<usize>,
        metrics: &ExecutionPlanMetricsSet,
    ) -> Result<Box<dyn AsyncFileReader + Send>> {
        let footer = self.footers.get(file.object_meta.location.as_ref()).cloned();
        let inner = self.inner.create_reader(partition_index, file, metadata_size_hint, metrics)?;
        Ok(match footer {
            Some(footer) => Box::new(WithFooter { inner, footer }),
            None => inner,
        })
    }
}

/// A file's reader whose footer is already read.
struct WithFooter {
    inner: Box<dyn AsyncFileReader + Send>,
    footer: Arc<ParquetMetaData>,
}

impl AsyncFileReader for WithFooter {
    fn get_bytes(&mut self, range: std::ops::Range<u64>) -> BoxFuture<'_, parquet::errors::Result<Bytes>> {
        self.inner.get_bytes(range)
    }

    fn get_byte_ranges(&mut self, ranges: Vec<std::ops::Range<u64>>) -> BoxFuture<'_, parquet::errors::Result<Vec<Bytes>>> {
        self.inner.get_byte_ranges(ranges)
    }

    /// The footer read, unless the page index is asked for with it (the scan loads that
    /// apart, after the footer; this keeps a caller that asks at once right too).
    fn get_metadata<'a>(&'a mut self, options: Option<&'a ArrowReaderOptions>) -> BoxFuture<'a, parquet::errors::Result<Arc<ParquetMetaData>>> {
        let asks = options.is_some_and(|o| o.offset_index_policy() != PageIndexPolicy::Skip || o.column_index_policy() != PageIndexPolicy::Skip);
        if asks && (self.footer.offset_index().is_none() || self.footer.column_index().is_none()) {
            return self.inner.get_metadata(options);
        }
        let footer = Arc::clone(&self.footer);
        Box::pin(async move { Ok(footer) })
    }
}

/// The leaf column at `path` in row group `group`, if the file has it.
fn leaf_chunk<'m>(metadata: &'m ParquetMetaData, group: usize, path: &str) -> Option<Option<&'m ColumnChunkMetaData>> {
    let leaf = metadata.file_metadata().schema_descr().columns().iter().position(|c| c.path().string() == path)?;
    Some(metadata.row_groups().get(group)?.columns().get(leaf))
}

/// Where the dictionary page of the column at `path` in row group `group` is: None when the
/// file lacks the column (every row null), an empty range when its values are not all known
/// from a dictionary (a data page outside it, no encoding statistics, not strings, a chunk
/// whose sizes make no sense).
fn dictionary_range(metadata: &ParquetMetaData, group: usize, path: &str) -> Option<std::ops::Range<u64>> {
    let unknown = Some(0..0);
    let Some(chunk) = leaf_chunk(metadata, group, path)? else { return unknown };
    if chunk.column_type() != PhysicalType::BYTE_ARRAY || !all_dictionary(chunk) {
        return unknown;
    }
    let (Some(Ok(offset)), Ok(data), Ok(size)) =
        (chunk.dictionary_page_offset().map(u64::try_from), u64::try_from(chunk.data_page_offset()), u64::try_from(chunk.compressed_size()))
    else {
        return unknown;
    };
    match offset < data && data <= offset.saturating_add(size) {
        true => Some(offset..data),
        false => unknown,
    }
}

/// The values of a dictionary page read from `offset` (`bytes`), and a null; None when they
/// cannot be read as strings.
fn dictionary_values(metadata: &ParquetMetaData, group: usize, path: &str, offset: u64, bytes: Bytes) -> Option<ArrayRef> {
    let chunk = leaf_chunk(metadata, group, path)??;
    let rows = usize::try_from(metadata.row_groups().get(group)?.num_rows()).unwrap_or(0);
    let mut pages = SerializedPageReader::new(Arc::new(Chunk { offset, bytes }), chunk, rows, None).ok()?;
    let Ok(Some(Page::DictionaryPage { buf, num_values, encoding, .. })) = pages.get_next_page() else { return None };
    if !matches!(encoding, Encoding::PLAIN | Encoding::PLAIN_DICTIONARY) {
        return None;
    }
    let values = plain_values(&buf, num_values as usize).ok()?;
    let mut strings = Vec::with_capacity(values.len() + 1);
    for v in &values {
        strings.push(Some(std::str::from_utf8(v).ok()?));
    }
    strings.push(None);
    Some(Arc::new(StringArray::from(strings)))
}

/// Whether every data page of `chunk` is dictionary-encoded, by its encoding statistics (the
/// check the parquet crate documents for this).
fn all_dictionary(chunk: &ColumnChunkMetaData) -> bool {
    let dictionary = |e: Encoding| matches!(e, Encoding::PLAIN_DICTIONARY | Encoding::RLE_DICTIONARY);
    if let Some(mask) = chunk.page_encoding_stats_mask() {
        return mask.is_only(Encoding::PLAIN_DICTIONARY) || mask.is_only(Encoding::RLE_DICTIONARY);
    }
    chunk.page_encoding_stats().is_some_and(|stats| {
        use parquet::basic::PageType;
        let mut data = stats.iter().filter(|s| matches!(s.page_type, PageType::DATA_PAGE | PageType::DATA_PAGE_V2)).peekable();
        data.peek().is_some() && data.all(|s| dictionary(s.encoding))
    })
}

#[cfg(test)]
mod tests {
    use arrow::array::{Int64Array, StringArray};
    use arrow::datatypes::{DataType, Field, Schema};
    use parquet::arrow::ArrowWriter;
    use parquet::file::properties::WriterProperties;
    use parquet::file::reader::FileReader;

    use datafusion::datasource::physical_plan::ParquetSource;

    use super::*;
    use crate::sql::dictionary::tests::run_with;

    /// One file of 8 row groups of 1,000 rows: a rare user agent only in row group 3, nulls
    /// among the agents; addresses few-valued except in row group 6, where they overflow the
    /// dictionary into plain pages and a rare address comes after the overflow.
    fn write_file(dir: &std::path::Path) {
        let schema = Arc::new(Schema::new(vec![
            Field::new("useragent", DataType::Utf8, true),
            Field::new("sourceipaddress", DataType::Utf8, true),
            Field::new("errorcode", DataType::Utf8, true),
            Field::new("v", DataType::Int64, false),
        ]));
        let rows = 0..8_000i64;
        let agent = |i: i64| match (i / 1_000, i % 7) {
            (3, 0) => Some("python-requests/2.31".to_owned()),
            (_, 1) => None,
            (_, k) => Some(format!("aws-cli/2.{k}")),
        };
        let address = |i: i64| match i / 1_000 {
            6 if i % 1_000 >= 990 => "185.220.1.1".to_owned(),
            6 => format!("203.0.{}.{}-padding-to-fill-the-dictionary-page", i / 256, i % 256),
            _ => format!("10.0.0.{}", i % 5),
        };
        let batch = RecordBatch::try_new(
            Arc::clone(&schema),
            vec![
                Arc::new(StringArray::from_iter(rows.clone().map(agent))),
                Arc::new(StringArray::from_iter_values(rows.clone().map(address))),
                Arc::new(StringArray::from_iter(rows.clone().map(|i| (i % 40 == 3).then_some("AccessDenied")))),
                Arc::new(Int64Array::from_iter_values(rows)),
            ],
        )
        .unwrap();
        // The agents' pages compressed, the addresses' not, as the lake writes either.
        let props = WriterProperties::builder()
            .set_max_row_group_row_count(Some(1_000))
            .set_dictionary_page_size_limit(4_096)
            .set_column_compression(parquet::schema::types::ColumnPath::from("useragent"), parquet::basic::Compression::ZSTD(Default::default()))
            .build();
        let path = dir.join("f.parquet");
        let mut writer = ArrowWriter::try_new(std::fs::File::create(&path).unwrap(), Arc::clone(&schema), Some(props)).unwrap();
        writer.write(&batch).unwrap();
        writer.close().unwrap();
        // The layout the cases need: only row group 6's addresses leave the dictionary.
        let reader = parquet::file::serialized_reader::SerializedFileReader::new(std::fs::File::open(&path).unwrap()).unwrap();
        let groups = reader.metadata().row_groups();
        assert_eq!(groups.len(), 8);
        let covered: Vec<bool> = groups.iter().map(|g| all_dictionary(g.column(1))).collect();
        assert_eq!(covered, (0..8).map(|g| g != 6).collect::<Vec<_>>());
        assert!(groups.iter().all(|g| all_dictionary(g.column(0))));
    }

    fn rules(skip: bool) -> Vec<Arc<dyn PhysicalOptimizerRule>> {
        let mut rules: Vec<Arc<dyn PhysicalOptimizerRule>> =
            vec![Arc::new(super::super::page_count::CountPages), Arc::new(super::super::dictionary::ReadDictionaries)];
        if skip {
            rules.push(Arc::new(SkipRowGroups));
        }
        rules
    }

    /// The row groups skipped, as `EXPLAIN ANALYZE` adds them up; None without the node.
    fn skipped(plan: &str) -> Option<u64> {
        let line = plan.lines().find(|l| l.contains("RowGroupSkipExec"))?;
        let at = line.find("row_groups_skipped_by_dictionary=")? + "row_groups_skipped_by_dictionary=".len();
        line[at..].split(|c: char| !c.is_ascii_digit()).next()?.parse().ok()
    }

    #[tokio::test]
    async fn row_groups_whose_dictionaries_cannot_match_are_skipped_with_the_same_answers() {
        let dir = tempfile::tempdir().unwrap();
        write_file(dir.path());
        // (query, row groups skipped of 8; None: no node)
        let cases = [
            ("SELECT count(*), sum(v) FROM t WHERE useragent LIKE '%python-requests%'", Some(7)),
            ("SELECT count(*) FROM t WHERE useragent LIKE '%python%' OR sourceipaddress LIKE '185.220.%'", Some(6)),
            // In row group 6 the address is in a plain page, not the dictionary: read.
            ("SELECT count(*), min(v) FROM t WHERE sourceipaddress = '185.220.1.1'", Some(7)),
            ("SELECT count(*) FROM t WHERE useragent LIKE '%python%' AND v > 3500", Some(7)),
            ("SELECT count(*) FROM t WHERE useragent = 'nobody' AND errorcode = 'AccessDenied'", Some(8)),
            ("SELECT count(*) FROM t WHERE errorcode = 'AccessDenied' OR useragent = 'nobody'", Some(0)),
            // True on a null: possible everywhere (the dictionary holds no null).
            ("SELECT count(*) FROM t WHERE coalesce(useragent, 'none') = 'none'", Some(0)),
            // Only whether a value is there: no dictionary is read for it.
            ("SELECT count(*) FROM t WHERE useragent IS NULL", None),
            ("SELECT count(*) FROM t WHERE errorcode IS NOT NULL AND v > 10", None),
            ("SELECT count(*) FROM t WHERE NOT (useragent LIKE '%cli%')", Some(7)),
            // Another column's test decides nothing: no node.
            ("SELECT count(*) FROM t WHERE useragent LIKE '%python%' OR v > 7000", None),
            ("SELECT count(*) FROM t WHERE v > 7000", None),
        ];
        for (sql, expected) in cases {
            let (_, answer) = run_with(dir.path(), sql, &rules(false)).await;
            let (plan, same) = run_with(dir.path(), sql, &rules(true)).await;
            assert_eq!(answer, same, "{sql}: {plan}");
            assert_eq!(skipped(&plan), expected, "{sql}: {plan}");
        }
        // What the rare values' rows are: the dictionaries skipped nothing they hold.
        let (_, answer) = run_with(dir.path(), "SELECT count(*) FROM t WHERE sourceipaddress = '185.220.1.1'", &rules(true)).await;
        assert!(answer.contains("| 10 "), "{answer}");
    }

    /// A part that fails on a dictionary's values (a cast of a code that is no number) is
    /// possibly true rather than an error: the rows themselves may never reach it.
    #[test]
    fn a_test_that_fails_on_the_values_is_possibly_true() {
        use datafusion::common::ScalarValue;
        use datafusion::physical_expr::expressions::{CastExpr, Column, Literal};
        let cast = Arc::new(CastExpr::new(Arc::new(Column::new("v", 0)), DataType::Int32, None));
        let expr = Arc::new(BinaryExpr::new(cast, Operator::Gt, Arc::new(Literal::new(ScalarValue::Int32(Some(5))))));
        let test = Test::Values { path: "errorcode".into(), expr, read_as: DataType::Utf8View };
        let values = |v: Vec<Option<&str>>| vec![("errorcode".to_owned(), Some(Arc::new(StringArray::from(v)) as ArrayRef))];
        assert!(test.possible(&values(vec![Some("AccessDenied"), None])));
        assert!(!test.possible(&values(vec![Some("1"), Some("5"), None])));
        assert!(test.possible(&values(vec![Some("1"), Some("7"), None])));
    }

    /// Only lake tables' scans: another Parquet file's scan keeps DataFusion's own (its files
    /// may be anyone's).
    #[tokio::test]
    async fn only_lake_tables_are_skipped_by_dictionary() {
        let dir = tempfile::tempdir().unwrap();
        write_file(dir.path());
        // Files split between partitions, so the filter sits right on the scan.
        let config = datafusion::prelude::SessionConfig::new().with_target_partitions(3).with_repartition_file_min_size(1);
        let ctx = datafusion::prelude::SessionContext::new_with_config(config);
        ctx.register_parquet("t", dir.path().to_str().unwrap(), datafusion::prelude::ParquetReadOptions::default()).await.unwrap();
        let plan = ctx.sql("SELECT count(*) FROM t WHERE useragent LIKE '%python%'").await.unwrap().create_physical_plan().await.unwrap();
        // Given a reader factory, as a lake scan has one: only the store URL tells them apart.
        let store: Arc<dyn object_store::ObjectStore> = Arc::new(object_store::local::LocalFileSystem::new());
        let plan = plan
            .transform_up(|node| {
                let Some(config) = super::super::plan_rules::file_scan(&node) else { return Ok(Transformed::no(node)) };
                let Some(source) = config.file_source().downcast_ref::<ParquetSource>() else { return Ok(Transformed::no(node)) };
                let factory = datafusion::datasource::physical_plan::parquet::DefaultParquetFileReaderFactory::new(Arc::clone(&store));
                let source = source.clone().with_parquet_file_reader_factory(Arc::new(factory));
                let scan = DataSourceExec::from_data_source(FileScanConfigBuilder::from(config.clone()).with_source(Arc::new(source)).build());
                Ok(Transformed::yes(scan as Arc<dyn ExecutionPlan>))
            })
            .data()
            .unwrap();
        assert!(datafusion::physical_plan::displayable(plan.as_ref()).indent(true).to_string().contains("FilterExec"));
        let options = ctx.state().config_options().clone();
        let plan = SkipRowGroups.optimize(plan, &options).unwrap();
        let shown = datafusion::physical_plan::displayable(plan.as_ref()).indent(true).to_string();
        assert!(!shown.contains("RowGroupSkipExec"), "{shown}");
    }
}
