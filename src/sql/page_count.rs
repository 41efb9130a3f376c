//! Group-by counts of one few-valued string column taken straight from its Parquet pages.
//!
//! After [`super::per_batch`] and [`super::dictionary`], `SELECT useridentity['arn'], count(*)
//! … GROUP BY 1` over 4.5M events spent most of its time in parquet-rs building arrays it then
//! only counted: each row's definition level decoded to an `i16` and folded into a validity
//! bitmap, each row's dictionary key unpacked, moved to its slot among the nulls and checked.
//! Where a partial count's input is a lake table's scan and nothing else (no filter, no
//! limit), [`CountPages`] replaces both with a [`PageCountExec`], which reads each row group's
//! chunk of the column and counts from its pages: a run of one key adds its length at once,
//! bit-packed keys are unpacked eight at a time into a histogram, and a page's nulls are its
//! rows less the values its definition levels mark present. Pages that hold another number of
//! rows than their row group is an error, not a smaller count. It passes on what the partial count did: one row per value present in a
//! row group, with its counts, for the final aggregate to add up.
//!
//! Pages whose values are plain (a writer's dictionary grew too large) are counted by their
//! bytes; a chunk in any other encoding is read with parquet-rs's column reader.
//!
//! Not used on distributed sessions, like the other rules over Prism's own operators.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;

use arrow::array::{ArrayRef, RecordBatch, StringViewBuilder};
use arrow::datatypes::SchemaRef;
use bytes::{Buf, Bytes};
use datafusion::common::config::ConfigOptions;
use datafusion::common::tree_node::{Transformed, TransformedResult, TreeNode, TreeNodeRecursion};
use datafusion::datasource::listing::PartitionedFile;
use datafusion::datasource::physical_plan::FileSource;
use datafusion::datasource::physical_plan::parquet::ParquetFileReaderFactory;
use datafusion::error::{DataFusionError, Result};
use datafusion::execution::TaskContext;
use datafusion::physical_expr::PhysicalExpr;
use datafusion::physical_expr::expressions::Column;
use datafusion::physical_optimizer::PhysicalOptimizerRule;
use datafusion::physical_plan::metrics::{BaselineMetrics, ExecutionPlanMetricsSet, MetricsSet, RecordOutput};
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::{DisplayAs, DisplayFormatType, ExecutionPlan, PlanProperties, ReplaceChildrenOptions, SendableRecordBatchStream};
use futures::{StreamExt, TryStreamExt};
use parquet::basic::{Encoding, Type as PhysicalType};
use parquet::column::page::{Page, PageReader};
use parquet::column::reader::ColumnReaderImpl;
use parquet::data_type::ByteArrayType;
use parquet::errors::ParquetError;
use parquet::file::metadata::ColumnChunkMetaData;
use parquet::file::reader::{ChunkReader, Length};
use parquet::file::serialized_reader::SerializedPageReader;
use parquet::schema::types::ColumnDescPtr;

use super::per_batch::{PerBatchCountExec, counted_by_key, counts_batch};

/// The physical optimizer rule (see the module doc). Runs after [`super::per_batch`], whose
/// nodes it replaces, and before [`super::dictionary`], which would read their scans'
/// column as dictionaries.
#[derive(Debug, Default)]
pub struct CountPages;

impl PhysicalOptimizerRule for CountPages {
    fn optimize(&self, plan: Arc<dyn ExecutionPlan>, _config: &ConfigOptions) -> Result<Arc<dyn ExecutionPlan>> {
        plan.transform_down(|node| match PageCountExec::try_new(&node) {
            Some(exec) => Ok(Transformed::new(Arc::new(exec) as Arc<dyn ExecutionPlan>, true, TreeNodeRecursion::Jump)),
            None => Ok(Transformed::no(node)),
        })
        .data()
    }

    fn name(&self) -> &str {
        "count_pages"
    }

    fn schema_check(&self) -> bool {
        true
    }
}

/// A partial count of one few-valued column, read from the pages (see the module doc).
#[derive(Debug)]
pub struct PageCountExec {
    /// The partial count replaced, over its scan: this node's output, and its display.
    replaced: Arc<dyn ExecutionPlan>,
    reading: Arc<Reading>,
    /// The scan's files, by partition.
    groups: Vec<Vec<PartitionedFile>>,
    metrics: ExecutionPlanMetricsSet,
}

/// What each partition reads and how it counts.
#[derive(Debug)]
struct Reading {
    factory: Arc<dyn ParquetFileReaderFactory>,
    metadata_size_hint: Option<usize>,
    /// The column's dotted path in the files (`useridentity.arn`).
    path: String,
    /// Each count, as [`counted_by_key`] gives it.
    counted: Vec<Option<bool>>,
    schema: SchemaRef,
}

impl PageCountExec {
    /// The node for `node`, if it is a [`PerBatchCountExec`] of `count(*)` or `count(key)`
    /// grouped by one few-valued column of the lake scan right below it, which reads its
    /// files whole (no limit, no filter it applies to rows, no access plan of its own).
    fn try_new(node: &Arc<dyn ExecutionPlan>) -> Option<PageCountExec> {
        let count = node.downcast_ref::<PerBatchCountExec>()?;
        let [key] = count.keys() else { return None };
        let key = key.downcast_ref::<Column>()?;
        let counted = counted_by_key(count.keys(), count.counted())?;
        let (config, source) = super::plan_rules::lake_scan(count.input())?;
        let options = &source.table_parquet_options().global;
        // A predicate without pushed-down filters only prunes (a join's or a top-N's dynamic
        // filter): every row read still reaches the count.
        if config.limit.is_some() || (options.pushdown_filters && FileSource::filter(source).is_some()) {
            return None;
        }
        let projection = FileSource::projection(source)?;
        let expr = &projection.iter().nth(key.index())?.expr;
        let path = super::dictionary::few_valued(expr, FileSource::table_schema(source).file_schema())?;
        let groups: Vec<Vec<PartitionedFile>> = config.file_groups.iter().map(|g| g.files().to_vec()).collect();
        let reading = Reading {
            factory: Arc::clone(source.parquet_file_reader_factory()?),
            metadata_size_hint: options.metadata_size_hint,
            path,
            counted,
            schema: count.schema(),
        };
        Some(PageCountExec { replaced: Arc::clone(node), reading: Arc::new(reading), groups, metrics: ExecutionPlanMetricsSet::new() })
    }
}

impl DisplayAs for PageCountExec {
    fn fmt_as(&self, t: DisplayFormatType, f: &mut fmt::Formatter) -> fmt::Result {
        let files: std::collections::HashSet<_> = self.groups.iter().flatten().map(|f| &f.object_meta.location).collect();
        write!(f, "PageCountExec: {}, {} files, for ", self.reading.path, files.len())?;
        self.replaced.fmt_as(t, f)
    }
}

impl ExecutionPlan for PageCountExec {
    fn name(&self) -> &str {
        "PageCountExec"
    }

    fn properties(&self) -> &Arc<PlanProperties> {
        self.replaced.properties()
    }

    fn children(&self) -> Vec<&Arc<dyn ExecutionPlan>> {
        vec![]
    }

    fn apply_expressions(&self, _f: &mut dyn FnMut(&Arc<dyn PhysicalExpr>) -> Result<TreeNodeRecursion>) -> Result<TreeNodeRecursion> {
        Ok(TreeNodeRecursion::Continue)
    }

    fn replace_children(self: Arc<Self>, children: Vec<Arc<dyn ExecutionPlan>>, _options: ReplaceChildrenOptions) -> Result<Arc<dyn ExecutionPlan>> {
        match children.is_empty() {
            true => Ok(self),
            false => Err(DataFusionError::Internal("PageCountExec has no children".into())),
        }
    }

    fn with_new_children(self: Arc<Self>, children: Vec<Arc<dyn ExecutionPlan>>) -> Result<Arc<dyn ExecutionPlan>> {
        self.replace_children(children, super::plan_rules::recompute())
    }

    fn execute(&self, partition: usize, _context: Arc<TaskContext>) -> Result<SendableRecordBatchStream> {
        let files = self.groups.get(partition).cloned().ok_or_else(|| DataFusionError::Internal(format!("PageCountExec has no partition {partition}")))?;
        let (reading, metrics) = (Arc::clone(&self.reading), self.metrics.clone());
        let baseline = BaselineMetrics::new(&self.metrics, partition);
        let counts = futures::stream::iter(files)
            .then(move |file| {
                let (reading, metrics, baseline) = (Arc::clone(&reading), metrics.clone(), baseline.clone());
                async move { reading.count_file(file, partition, &metrics, &baseline).await }
            })
            .map_ok(|batches| futures::stream::iter(batches.into_iter().map(Ok)))
            .try_flatten();
        Ok(Box::pin(RecordBatchStreamAdapter::new(self.schema(), counts)))
    }

    fn metrics(&self) -> Option<MetricsSet> {
        Some(self.metrics.clone_inner())
    }
}

impl Reading {
    /// The partial count's batches of `file`'s row groups in its range (DataFusion's rule: a
    /// row group belongs to the range its first page starts in), one per row group.
    async fn count_file(
        &self,
        file: PartitionedFile,
        partition: usize,
        metrics: &ExecutionPlanMetricsSet,
        baseline: &BaselineMetrics,
    ) -> Result<Vec<RecordBatch>> {
        let location = file.object_meta.location.clone();
        let range = file.range.clone();
        let context = |e: ParquetError| DataFusionError::External(format!("{location}: {e}").into());
        let mut reader = self.factory.create_reader(partition, file, self.metadata_size_hint, metrics)?;
        let metadata = reader.get_metadata(None).await.map_err(context)?;
        let schema = metadata.file_metadata().schema_descr_ptr();
        let leaf = schema.columns().iter().position(|c| c.path().string() == self.path);
        let mut batches = Vec::new();
        for group in metadata.row_groups() {
            let Some(first) = group.columns().first() else { continue };
            let start = first.dictionary_page_offset().unwrap_or_else(|| first.data_page_offset());
            if range.as_ref().is_some_and(|r| !r.contains(start)) {
                continue;
            }
            let tally = match leaf {
                // A file from before the column was added: every row null.
                None => Tally { nulls: group.num_rows(), ..Tally::default() },
                Some(c) => {
                    let chunk = group.columns().get(c).ok_or_else(|| context(ParquetError::General(format!("a row group without column {c}"))))?;
                    let (offset, length) = chunk.byte_range();
                    let bytes = reader.get_bytes(offset..offset + length).await.map_err(context)?;
                    let _timer = baseline.elapsed_compute().timer();
                    tally_chunk(Chunk { offset, bytes }, chunk, schema.column(c), group.num_rows()).map_err(context)?
                }
            };
            let _timer = baseline.elapsed_compute().timer();
            let batch = tally
                .into_batch(&self.schema, &self.counted)
                .map_err(|e| DataFusionError::External(format!("{location}: column {}: {e}", self.path).into()))?;
            batches.push(batch.record_output(baseline));
        }
        Ok(batches)
    }
}

/// A column chunk's bytes, read where the file holds them: the page reader asks by offsets
/// in the file.
pub(super) struct Chunk {
    pub(super) offset: u64,
    pub(super) bytes: Bytes,
}

impl Chunk {
    fn at(&self, start: u64, length: usize) -> Result<Bytes, ParquetError> {
        let from =
            start.checked_sub(self.offset).and_then(|s| usize::try_from(s).ok()).filter(|s| s.checked_add(length).is_some_and(|e| e <= self.bytes.len()));
        from.map(|s| self.bytes.slice(s..s + length))
            .ok_or_else(|| ParquetError::EOF(format!("bytes {start}..+{length} outside the column chunk at {}..+{}", self.offset, self.bytes.len())))
    }
}

impl Length for Chunk {
    fn len(&self) -> u64 {
        self.offset + self.bytes.len() as u64
    }
}

impl ChunkReader for Chunk {
    type T = bytes::buf::Reader<Bytes>;

    fn get_read(&self, start: u64) -> Result<Self::T, ParquetError> {
        let rest = self.len().saturating_sub(start);
        Ok(self.at(start, usize::try_from(rest).unwrap_or(usize::MAX))?.reader())
    }

    fn get_bytes(&self, start: u64, length: usize) -> Result<Bytes, ParquetError> {
        self.at(start, length)
    }
}

/// One row group's counts of a column.
#[derive(Debug, Default)]
struct Tally {
    /// The dictionary page's values and each one's rows.
    dictionary: Vec<Bytes>,
    keyed: Vec<i64>,
    /// Values stored outside the dictionary, and their rows.
    plain: HashMap<Bytes, i64>,
    nulls: i64,
}

impl Tally {
    /// The partial count's batch: one row per value present (and one for the nulls).
    fn into_batch(self, schema: &SchemaRef, counted: &[Option<bool>]) -> Result<RecordBatch, String> {
        // Views: no 2 GiB limit on a row group's distinct values, as 32-bit offsets would have.
        let mut keys = StringViewBuilder::new();
        let mut totals = Vec::new();
        let present = self.dictionary.iter().zip(&self.keyed).filter(|(_, n)| **n > 0);
        for (value, n) in present.chain(self.plain.iter()) {
            keys.append_value(std::str::from_utf8(value).map_err(|e| format!("a value that is not UTF-8 ({e})"))?);
            totals.push(*n);
        }
        if self.nulls > 0 {
            keys.append_null();
            totals.push(self.nulls);
        }
        counts_batch(schema, Arc::new(keys.finish()) as ArrayRef, &totals, counted).map_err(|e| e.to_string())
    }
}

/// The counts of `chunk`, the chunk of `column` in a row group of `rows` rows.
fn tally_chunk(chunk: Chunk, meta: &ColumnChunkMetaData, column: ColumnDescPtr, rows: i64) -> Result<Tally, ParquetError> {
    if column.max_rep_level() != 0 || column.physical_type() != PhysicalType::BYTE_ARRAY {
        return Err(ParquetError::General(format!("column {} is not a string outside any list", column.path())));
    }
    let pages = SerializedPageReader::new(Arc::new(chunk), meta, usize::try_from(rows).unwrap_or(0), None)?;
    // Levels in RLE, values in a dictionary or plain: what this module decodes.
    let decoded = meta.encodings().all(|e| matches!(e, Encoding::RLE | Encoding::RLE_DICTIONARY | Encoding::PLAIN_DICTIONARY | Encoding::PLAIN));
    let tally = match decoded {
        true => tally_pages(pages, column.max_def_level())?,
        false => tally_values(pages, column)?,
    };
    // A chunk cut short at a page's end would otherwise count less, silently.
    let counted = tally.nulls + tally.keyed.iter().sum::<i64>() + tally.plain.values().sum::<i64>();
    match counted == rows {
        true => Ok(tally),
        false => Err(ParquetError::General(format!("its pages hold {counted} rows, its row group {rows}"))),
    }
}

/// Counts from the pages themselves (see the module doc).
fn tally_pages(mut pages: impl PageReader, max_def: i16) -> Result<Tally, ParquetError> {
    let mut tally = Tally::default();
    let level_width = bit_width(max_def as u64);
    while let Some(page) = pages.get_next_page()? {
        match page {
            Page::DictionaryPage { buf, num_values, encoding, .. } => {
                if !matches!(encoding, Encoding::PLAIN | Encoding::PLAIN_DICTIONARY) || !tally.dictionary.is_empty() {
                    return Err(ParquetError::General(format!("a second dictionary page, or one in {encoding}")));
                }
                tally.dictionary = plain_values(&buf, num_values as usize)?;
                tally.keyed = vec![0; tally.dictionary.len()];
            }
            Page::DataPage { buf, num_values, encoding, def_level_encoding, .. } => {
                let (present, values) = match max_def {
                    0 => (num_values as usize, buf),
                    _ if def_level_encoding != Encoding::RLE => return Err(ParquetError::General(format!("definition levels in {def_level_encoding}"))),
                    _ => {
                        let length = buf.get(..4).map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize).ok_or_else(|| eof("a page's levels"))?;
                        let levels = buf.get(4..4 + length).ok_or_else(|| eof("a page's levels"))?;
                        (present(levels, level_width, num_values, max_def)?, buf.slice(4 + length..))
                    }
                };
                tally.nulls += i64::from(num_values) - present as i64;
                tally.values(encoding, &values, present)?;
            }
            Page::DataPageV2 { buf, num_values, encoding, num_nulls, def_levels_byte_len, rep_levels_byte_len, .. } => {
                // Repetition levels (none here), definition levels, then the values. The levels
                // are counted rather than the header's null count trusted.
                let (from, to) = (rep_levels_byte_len as usize, rep_levels_byte_len as usize + def_levels_byte_len as usize);
                let levels = buf.get(from..to).ok_or_else(|| eof("a page's levels"))?;
                let present = match max_def {
                    0 => num_values.checked_sub(num_nulls).ok_or_else(|| ParquetError::General("a page with more nulls than values".into()))? as usize,
                    _ => present(levels, level_width, num_values, max_def)?,
                };
                tally.nulls += i64::from(num_values) - present as i64;
                tally.values(encoding, &buf.slice(to..), present)?;
            }
        }
    }
    Ok(tally)
}

impl Tally {
    /// Counts a page's `n` present values, stored in `encoding`.
    fn values(&mut self, encoding: Encoding, data: &Bytes, n: usize) -> Result<(), ParquetError> {
        match encoding {
            Encoding::RLE_DICTIONARY | Encoding::PLAIN_DICTIONARY => {
                let width = *data.first().ok_or_else(|| eof("a page's dictionary keys"))?;
                let mut keys = Keys { keyed: &mut self.keyed, beyond: None };
                hybrid(data.get(1..).unwrap_or_default(), width, n, &mut keys)?;
                match keys.beyond {
                    Some(k) => Err(ParquetError::General(format!("dictionary key {k} beyond the dictionary's {} values", self.keyed.len()))),
                    None => Ok(()),
                }
            }
            Encoding::PLAIN => {
                let values = plain_values(data, n)?;
                for value in values {
                    *self.plain.entry(value).or_default() += 1;
                }
                Ok(())
            }
            other => Err(ParquetError::General(format!("values in {other}"))),
        }
    }
}

/// Counts from the values parquet-rs's column reader decodes: chunks in encodings
/// [`tally_pages`] does not read.
fn tally_values(pages: impl PageReader + 'static, column: ColumnDescPtr) -> Result<Tally, ParquetError> {
    let max_def = column.max_def_level();
    let mut reader = ColumnReaderImpl::<ByteArrayType>::new(column, Box::new(pages));
    let mut tally = Tally::default();
    let (mut levels, mut values) = (Vec::new(), Vec::new());
    loop {
        levels.clear();
        values.clear();
        let (records, _, read_levels) = reader.read_records(8192, (max_def > 0).then_some(&mut levels), None, &mut values)?;
        if records == 0 {
            return Ok(tally);
        }
        if max_def > 0 {
            tally.nulls += levels[..read_levels].iter().filter(|l| **l < max_def).count() as i64;
        }
        for value in values.drain(..) {
            *tally.plain.entry(Bytes::copy_from_slice(value.data())).or_default() += 1;
        }
    }
}

/// `n` values in Parquet's plain encoding of byte arrays: each a 4-byte length and its bytes.
pub(super) fn plain_values(buf: &Bytes, n: usize) -> Result<Vec<Bytes>, ParquetError> {
    let mut values = Vec::with_capacity(n.min(buf.len() / 4));
    let mut at = 0usize;
    for _ in 0..n {
        let length = buf.get(at..at + 4).map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize).ok_or_else(|| eof("a plain value's length"))?;
        let end = (at + 4).checked_add(length).filter(|e| *e <= buf.len()).ok_or_else(|| eof("a plain value"))?;
        values.push(buf.slice(at + 4..end));
        at = end;
    }
    Ok(values)
}

/// Bits that hold values up to `max`.
fn bit_width(max: u64) -> u8 {
    (64 - max.leading_zeros()) as u8
}

fn eof(what: &str) -> ParquetError {
    ParquetError::EOF(format!("{what} cut short"))
}

/// What takes the values of an RLE/bit-packed hybrid stream ([`hybrid`]).
trait Runs {
    /// `n` values of one `value`.
    fn run(&mut self, value: u32, n: usize);
    /// Up to eight values bit-packed together.
    fn packed(&mut self, values: &[u32]);
}

/// How many of a page's `rows` levels (`width` bits each) are `max`: its values present.
fn present(levels: &[u8], width: u8, rows: u32, max: i16) -> Result<usize, ParquetError> {
    let mut present = Present { level: max as u32, rows: 0 };
    hybrid(levels, width, rows as usize, &mut present)?;
    Ok(present.rows)
}

/// Counts the levels equal to `level`: a page's values present.
struct Present {
    level: u32,
    rows: usize,
}

impl Runs for Present {
    fn run(&mut self, value: u32, n: usize) {
        self.rows += usize::from(value == self.level) * n;
    }

    fn packed(&mut self, values: &[u32]) {
        self.rows += values.iter().filter(|v| **v == self.level).count();
    }
}

/// Counts the rows of each dictionary key; notes a key beyond the dictionary.
struct Keys<'a> {
    keyed: &'a mut [i64],
    beyond: Option<u32>,
}

impl Runs for Keys<'_> {
    fn run(&mut self, key: u32, n: usize) {
        match self.keyed.get_mut(key as usize) {
            Some(c) => *c += n as i64,
            None => self.beyond = Some(key),
        }
    }

    fn packed(&mut self, keys: &[u32]) {
        for key in keys {
            self.run(*key, 1);
        }
    }
}

/// The first `n` values of an RLE/bit-packed hybrid stream of `width`-bit values (Parquet's
/// levels and dictionary keys), given to `to`.
fn hybrid(buf: &[u8], width: u8, mut n: usize, to: &mut impl Runs) -> Result<(), ParquetError> {
    if width > 32 {
        return Err(ParquetError::General(format!("{width}-bit values")));
    }
    let width = usize::from(width);
    let mut at = 0usize;
    while n > 0 {
        let mut header = 0u64;
        for shift in (0..64).step_by(7) {
            let byte = *buf.get(at).ok_or_else(|| eof("a run"))?;
            at += 1;
            header |= u64::from(byte & 0x7f) << shift;
            if byte & 0x80 == 0 {
                break;
            }
        }
        let count = usize::try_from(header >> 1).unwrap_or(usize::MAX);
        if header & 1 == 0 {
            let bytes = width.div_ceil(8);
            let value = buf.get(at..at + bytes).ok_or_else(|| eof("a run"))?;
            at += bytes;
            let value = value.iter().rev().fold(0u32, |v, b| (v << 8) | u32::from(*b));
            let take = count.min(n);
            to.run(value, take);
            n -= take;
        } else {
            for _ in 0..count {
                if n == 0 {
                    break;
                }
                let take = n.min(8);
                // The last group may be cut to the bytes its values need.
                let rest = buf.get(at..).unwrap_or_default();
                if rest.len().min(width) * 8 < take * width {
                    return Err(eof("bit-packed values"));
                }
                to.packed(&unpack8(rest, width)[..take]);
                at += width;
                n -= take;
            }
        }
    }
    Ok(())
}

/// Eight `width`-bit values packed little-endian at the start of `bytes` (the stream from the
/// group on; bytes past the stream's end read as zeros). Up to 16 bits, the group is one
/// load and eight shifts.
#[inline]
fn unpack8(bytes: &[u8], width: usize) -> [u32; 8] {
    let mut values = [0u32; 8];
    if width <= 8 {
        let mut word = [0u8; 8];
        let n = bytes.len().min(8);
        word[..n].copy_from_slice(&bytes[..n]);
        let (all, mask) = (u64::from_le_bytes(word), (1u64 << width) - 1);
        for (i, v) in values.iter_mut().enumerate() {
            *v = ((all >> (i * width)) & mask) as u32;
        }
    } else if width <= 16 {
        let mut word = [0u8; 16];
        let n = bytes.len().min(16);
        word[..n].copy_from_slice(&bytes[..n]);
        let (all, mask) = (u128::from_le_bytes(word), (1u128 << width) - 1);
        for (i, v) in values.iter_mut().enumerate() {
            *v = ((all >> (i * width)) & mask) as u32;
        }
    } else {
        let mut padded = [0u8; 40];
        let n = bytes.len().min(width);
        padded[..n].copy_from_slice(&bytes[..n]);
        let mask = (1u64 << width) - 1;
        for (i, v) in values.iter_mut().enumerate() {
            let bit = i * width;
            let mut word = [0u8; 8];
            word.copy_from_slice(&padded[bit / 8..bit / 8 + 8]);
            *v = ((u64::from_le_bytes(word) >> (bit % 8)) & mask) as u32;
        }
    }
    values
}

#[cfg(test)]
mod tests {
    use super::*;

    use arrow::array::{Array, AsArray, StringArray, StructArray};
    use arrow::datatypes::{DataType, Field, Fields, Schema};
    use parquet::arrow::ArrowWriter;
    use parquet::basic::Compression;
    use parquet::file::metadata::ParquetMetaDataReader;
    use parquet::file::properties::{EnabledStatistics, WriterProperties, WriterVersion};

    /// `values` (None: a null) as `s.v`, a string in a nullable struct, in Parquet written by
    /// `props`; the struct itself null where `struct_null` says.
    fn file(values: &[Option<String>], struct_null: impl Fn(usize) -> bool, props: WriterProperties) -> Bytes {
        let strings: ArrayRef = Arc::new(StringArray::from(values.to_vec()));
        let fields = Fields::from(vec![Field::new("v", DataType::Utf8, true)]);
        let valid: Vec<bool> = (0..values.len()).map(|i| !struct_null(i)).collect();
        let s = StructArray::new(fields.clone(), vec![strings], Some(valid.into()));
        let schema = Arc::new(Schema::new(vec![Field::new("s", DataType::Struct(fields), true)]));
        let batch = RecordBatch::try_new(Arc::clone(&schema), vec![Arc::new(s)]).unwrap();
        let mut out = Vec::new();
        let mut writer = ArrowWriter::try_new(&mut out, schema, Some(props)).unwrap();
        writer.write(&batch).unwrap();
        writer.close().unwrap();
        Bytes::from(out)
    }

    /// Every row group's tally of `s.v`, summed by value (None: the nulls), and the encodings
    /// of its chunks, with "v2" if it has pages of version 2.
    fn tallied(file: &Bytes) -> (HashMap<Option<String>, i64>, Vec<String>) {
        let metadata = ParquetMetaDataReader::new().parse_and_finish(file).unwrap();
        let column = metadata.file_metadata().schema_descr().column(0);
        let mut sums = HashMap::new();
        let mut kinds = std::collections::BTreeSet::new();
        for group in metadata.row_groups() {
            let meta = group.column(0);
            kinds.extend(meta.encodings().map(|e| e.to_string()));
            let (offset, length) = meta.byte_range();
            let chunk = Arc::new(Chunk { offset, bytes: file.slice(offset as usize..(offset + length) as usize) });
            let mut pages = SerializedPageReader::new(chunk, meta, group.num_rows() as usize, None).unwrap();
            while let Some(page) = pages.get_next_page().unwrap() {
                if matches!(page, Page::DataPageV2 { .. }) {
                    kinds.insert("v2".to_string());
                }
            }
            let (offset, length) = meta.byte_range();
            let chunk = Chunk { offset, bytes: file.slice(offset as usize..(offset + length) as usize) };
            let tally = tally_chunk(chunk, meta, Arc::clone(&column), group.num_rows()).unwrap();
            for (value, n) in tally.dictionary.iter().zip(&tally.keyed).chain(tally.plain.iter()) {
                *sums.entry(Some(String::from_utf8(value.to_vec()).unwrap())).or_default() += n;
            }
            *sums.entry(None).or_default() += tally.nulls;
        }
        sums.retain(|_, n| *n > 0);
        (sums, kinds.into_iter().collect())
    }

    fn expected(values: &[Option<String>], struct_null: impl Fn(usize) -> bool) -> HashMap<Option<String>, i64> {
        let mut sums = HashMap::new();
        for (i, v) in values.iter().enumerate() {
            *sums.entry(if struct_null(i) { None } else { v.clone() }).or_default() += 1;
        }
        sums
    }

    /// Rows of few values in runs and at random, some nulls in either level.
    fn rows(n: usize, distinct: usize) -> Vec<Option<String>> {
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        (0..n)
            .map(|i| {
                state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                let r = (state >> 33) as usize;
                match (i / 500) % 3 {
                    // A stretch of one value: RLE runs.
                    0 => Some(format!("arn:aws:iam::123456789012:user/u{}", (i / 500) % distinct)),
                    _ if r.is_multiple_of(7) => None,
                    _ => Some(format!("arn:aws:iam::123456789012:user/u{}", r % distinct)),
                }
            })
            .collect()
    }

    #[test]
    fn counts_from_pages_match_the_rows_in_every_layout() {
        let struct_null = |i: usize| i % 11 == 3;
        let base = || WriterProperties::builder().set_statistics_enabled(EnabledStatistics::None);
        // (layout, the encodings of its chunks with many values, and "v2" for v2 pages)
        let layouts = [
            ("dictionary, v1 pages", base().set_data_page_row_count_limit(1000).set_write_batch_size(1000).build(), "PLAIN RLE RLE_DICTIONARY"),
            (
                "dictionary, v2 pages",
                base().set_writer_version(WriterVersion::PARQUET_2_0).set_data_page_row_count_limit(700).set_write_batch_size(700).build(),
                "PLAIN RLE RLE_DICTIONARY v2",
            ),
            ("small row groups", base().set_max_row_group_row_count(Some(3000)).build(), "PLAIN RLE RLE_DICTIONARY"),
            ("compressed pages", base().set_compression(Compression::ZSTD(Default::default())).build(), "PLAIN RLE RLE_DICTIONARY"),
            ("plain", base().set_dictionary_enabled(false).build(), "PLAIN RLE"),
            (
                "dictionary overflowing to plain",
                base().set_dictionary_page_size_limit(200).set_data_page_row_count_limit(500).set_write_batch_size(500).build(),
                "PLAIN RLE RLE_DICTIONARY",
            ),
            (
                "delta byte arrays (column reader)",
                base().set_dictionary_enabled(false).set_encoding(Encoding::DELTA_BYTE_ARRAY).build(),
                "DELTA_BYTE_ARRAY RLE",
            ),
        ];
        for distinct in [1, 5, 300, 70_000] {
            let values = rows(20_000, distinct);
            for (name, props, encodings) in &layouts {
                let bytes = file(&values, struct_null, props.clone());
                let (sums, kinds) = tallied(&bytes);
                assert_eq!(sums, expected(&values, struct_null), "{name}, {distinct} distinct");
                if distinct >= 300 {
                    assert_eq!(kinds.join(" "), *encodings, "{name}, {distinct} distinct");
                }
            }
        }
    }

    /// Parquet files of a table that is not the lake's (`CREATE EXTERNAL TABLE`, a file named
    /// in a query) keep DataFusion's reader: their writers may use what this module does not.
    #[tokio::test]
    async fn only_lake_tables_are_counted_from_their_pages() {
        let dir = tempfile::tempdir().unwrap();
        let values: ArrayRef = Arc::new(StringArray::from(vec![Some("a"), None, Some("b"), Some("a")]));
        let batch = RecordBatch::try_new(Arc::new(Schema::new(vec![Field::new("useragent", DataType::Utf8, true)])), vec![values]).unwrap();
        let mut writer = ArrowWriter::try_new(std::fs::File::create(dir.path().join("f.parquet")).unwrap(), batch.schema(), None).unwrap();
        writer.write(&batch).unwrap();
        writer.close().unwrap();
        let builder = datafusion::execution::SessionStateBuilder::new()
            .with_default_features()
            .with_physical_optimizer_rule(Arc::new(super::super::per_batch::CountPerBatch))
            .with_physical_optimizer_rule(Arc::new(CountPages));
        let ctx = datafusion::prelude::SessionContext::new_with_state(builder.build());
        ctx.register_parquet("t", dir.path().to_str().unwrap(), Default::default()).await.unwrap();
        let plan = ctx.sql("SELECT useragent, count(*) FROM t GROUP BY 1").await.unwrap().create_physical_plan().await.unwrap();
        let shown = datafusion::physical_plan::displayable(plan.as_ref()).indent(true).to_string();
        assert!(shown.contains("PerBatchCountExec") && !shown.contains("PageCountExec"), "{shown}");
    }

    /// A damaged chunk (any byte changed) is an answer or an error, never a panic.
    #[test]
    fn damaged_chunks_are_errors_not_panics() {
        let values = rows(3_000, 40);
        let props = WriterProperties::builder().set_data_page_row_count_limit(500).set_write_batch_size(500).build();
        let bytes = file(&values, |i| i % 11 == 3, props);
        let metadata = ParquetMetaDataReader::new().parse_and_finish(&bytes).unwrap();
        let column = metadata.file_metadata().schema_descr().column(0);
        let group = metadata.row_group(0);
        let meta = group.column(0);
        let (offset, length) = meta.byte_range();
        let chunk = bytes.slice(offset as usize..(offset + length) as usize).to_vec();
        let (mut errors, mut state) = (0, 7u64);
        for _ in 0..2_000 {
            let mut damaged = chunk.clone();
            state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            let at = (state >> 33) as usize % damaged.len();
            damaged[at] = (state >> 17) as u8;
            let chunk = Chunk { offset, bytes: Bytes::from(damaged) };
            errors += usize::from(tally_chunk(chunk, meta, Arc::clone(&column), group.num_rows()).is_err());
        }
        assert!(errors > 0, "no damage was noticed");
    }

    #[test]
    fn hybrid_streams_decode_runs_packed_groups_and_cut_groups() {
        // A run of 5 threes (1 byte), then one packed group of 1..=8 in 4 bits, 10 values wanted
        // of a stream that has 13: the group is cut to the values wanted.
        let stream = [5 << 1, 3, (1 << 1) | 1, 0x21, 0x43, 0x65, 0x87];
        struct Seen(Vec<u32>);
        impl Runs for Seen {
            fn run(&mut self, value: u32, n: usize) {
                self.0.extend(std::iter::repeat_n(value, n));
            }
            fn packed(&mut self, values: &[u32]) {
                self.0.extend_from_slice(values);
            }
        }
        let mut seen = Seen(Vec::new());
        hybrid(&stream, 4, 10, &mut seen).unwrap();
        assert_eq!(seen.0, [3, 3, 3, 3, 3, 1, 2, 3, 4, 5]);
        // Values past the stream's end are an error, not zeros.
        assert!(hybrid(&stream, 4, 14, &mut Seen(Vec::new())).is_err());
        assert!(hybrid(&stream[..4], 4, 10, &mut Seen(Vec::new())).is_err());
        // Every width unpacks what was packed.
        for width in 1..=32usize {
            let values: Vec<u32> = (0..8u64).map(|i| ((i * 0x9e37_79b9) & ((1u64 << width) - 1)) as u32).collect();
            let mut packed = vec![0u8; width];
            for (i, v) in values.iter().enumerate() {
                for b in 0..width {
                    if v >> b & 1 == 1 {
                        let bit = i * width + b;
                        packed[bit / 8] |= 1 << (bit % 8);
                    }
                }
            }
            assert_eq!(unpack8(&packed, width).to_vec(), values, "{width} bits");
            // The next group's bits, loaded with this one's, are masked off.
            packed.extend([0xff; 40]);
            assert_eq!(unpack8(&packed, width).to_vec(), values, "{width} bits, more after");
        }
    }

    #[test]
    fn a_key_beyond_the_dictionary_is_an_error() {
        let mut tally = Tally { dictionary: vec![Bytes::from_static(b"a")], keyed: vec![0], ..Tally::default() };
        // Width 1, a run of 3 ones: key 1 of a one-value dictionary.
        let err = tally.values(Encoding::RLE_DICTIONARY, &Bytes::from_static(&[1, 3 << 1, 1]), 3).unwrap_err();
        assert!(err.to_string().contains("dictionary key 1 beyond"), "{err}");
    }

    #[test]
    fn a_batch_holds_each_value_present_once_and_the_nulls() {
        let schema = Arc::new(Schema::new(vec![
            Field::new("k", DataType::Utf8View, true),
            Field::new("all", DataType::Int64, false),
            Field::new("of_k", DataType::Int64, false),
        ]));
        let tally = Tally {
            dictionary: vec![Bytes::from_static(b"a"), Bytes::from_static(b"b")],
            keyed: vec![3, 0],
            plain: HashMap::from([(Bytes::from_static(b"c"), 2)]),
            nulls: 4,
        };
        let batch = tally.into_batch(&schema, &[Some(false), Some(true)]).unwrap();
        let keys: Vec<Option<&str>> = batch.column(0).as_string_view().iter().collect();
        assert_eq!(keys, [Some("a"), Some("c"), None]);
        assert_eq!(batch.column(1).as_primitive::<arrow::datatypes::Int64Type>().values().to_vec(), [3, 2, 4]);
        assert_eq!(batch.column(2).as_primitive::<arrow::datatypes::Int64Type>().values().to_vec(), [3, 2, 0]);
        let bad = Tally { plain: HashMap::from([(Bytes::from_static(b"\xff"), 1)]), ..Tally::default() };
        assert!(bad.into_batch(&schema, &[Some(false), Some(true)]).unwrap_err().contains("not UTF-8"));
        assert_eq!(batch.column(0).null_count(), 1);
    }
}
