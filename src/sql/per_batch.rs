//! Group-by counts taken within each batch first, keyed by the rows' 16-byte identities.
//!
//! `SELECT useridentity['arn'], count(*) … GROUP BY 1` on 4.5M events spent most of its time
//! in DataFusion's partial aggregate, which hashes every row's string and compares it with the
//! group it finds. Parquet's reader decodes a dictionary-encoded column into string views that
//! point into the dictionary, so within a batch the rows of one value share one view, and the
//! view identifies the value as well as its bytes do. [`CountPerBatch`] replaces a partial
//! aggregate that only counts (`count(*)`, `count(x)`, or nothing: a `DISTINCT`) over keys that
//! have such identities (string views, dictionary keys, numbers, booleans) with a
//! [`PerBatchCountExec`]: it groups each batch by its rows' identities (a small hash table of
//! 16-byte keys) and passes on one row per distinct key with its counts. A partial aggregate's
//! output may repeat a key: the final aggregate above adds the counts up by value, so a value
//! seen through two different views (two batches, two dictionaries) is still one group.
//!
//! Where a batch's keys are mostly distinct (request IDs, timestamps: no dictionary), counting
//! per batch would pass on nearly every row; from that batch on, the rest of the partition goes
//! through DataFusion's own partial aggregate, as before.
//!
//! Not used on distributed sessions: their plans travel to workers as protobuf, which knows
//! only DataFusion's own operators.

use std::fmt;
use std::hash::BuildHasher;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use arrow::array::{Array, ArrayRef, AsArray, Int64Array, RecordBatch, UInt32Array};
use arrow::datatypes::{DataType, Int32Type, SchemaRef};
use datafusion::common::config::ConfigOptions;
use datafusion::common::tree_node::TreeNodeRecursion;
use datafusion::error::{DataFusionError, Result};
use datafusion::execution::TaskContext;
use datafusion::physical_expr::PhysicalExpr;
use datafusion::physical_expr::expressions::{Column, Literal};
use datafusion::physical_optimizer::PhysicalOptimizerRule;
use datafusion::physical_plan::aggregates::{AggregateExec, AggregateMode};
use datafusion::physical_plan::metrics::{BaselineMetrics, Count, ExecutionPlanMetricsSet, MetricBuilder, MetricsSet};
use datafusion::physical_plan::{
    DisplayAs, DisplayFormatType, ExecutionPlan, InputOrderMode, PlanProperties, RecordBatchStream, ReplaceChildrenOptions, SendableRecordBatchStream,
    apply_expression_roots,
};
use futures::{Stream, StreamExt};

use super::dictionary::{DictionaryCastExec, cast_back};

/// Rows of a batch looked at before deciding whether its keys repeat enough: more than a
/// quarter of them distinct, and the partition's partial aggregate takes over.
const PROBE_ROWS: usize = 1024;

/// The physical optimizer rule: partial aggregates that only count, over keys with
/// identities, become [`PerBatchCountExec`]s.
#[derive(Debug, Default)]
pub struct CountPerBatch;

impl PhysicalOptimizerRule for CountPerBatch {
    fn optimize(&self, plan: Arc<dyn ExecutionPlan>, _config: &ConfigOptions) -> Result<Arc<dyn ExecutionPlan>> {
        super::plan_rules::replace_aggregates(plan, PerBatchCountExec::try_new)
    }

    fn name(&self) -> &str {
        "count_per_batch"
    }

    fn schema_check(&self) -> bool {
        true
    }
}

/// A partial aggregate that only counts, taken batch by batch (see the module doc).
#[derive(Debug)]
pub struct PerBatchCountExec {
    /// The partial aggregate replaced: its output is this node's, and it takes over a
    /// partition whose keys turn out mostly distinct.
    aggregate: Arc<AggregateExec>,
    /// The grouping keys, over the input.
    keys: Vec<Arc<dyn PhysicalExpr>>,
    /// Each count's argument (`count(*)` is `count(1)`), over the input.
    counted: Vec<Arc<dyn PhysicalExpr>>,
    metrics: ExecutionPlanMetricsSet,
}

impl PerBatchCountExec {
    /// The node for `aggregate`, if it is a partial aggregate of counts only (no `DISTINCT`,
    /// `FILTER` or order), grouped (no grouping sets) by keys with identities
    /// ([`has_identities`]), without a limit or an input order it relies on.
    pub fn try_new(aggregate: &AggregateExec) -> Result<Option<PerBatchCountExec>> {
        let group_by = aggregate.group_expr();
        let input = aggregate.input().schema();
        let plain = *aggregate.mode() == AggregateMode::Partial
            && group_by.is_single()
            && !group_by.expr().is_empty()
            && group_by.expr().len() <= 64
            && aggregate.filter_expr().iter().all(Option::is_none)
            && aggregate.limit_options().is_none()
            && aggregate.dynamic_expressions_produced().is_empty()
            && *aggregate.input_order_mode() == InputOrderMode::Linear;
        if !plain {
            return Ok(None);
        }
        // DataFusion's own group-by on numbers alone is as fast: one key at least must be a
        // string view or a dictionary, whose values it would hash by their bytes.
        let types = group_by.expr().iter().map(|(key, _)| key.data_type(&input)).collect::<Result<Vec<_>>>()?;
        let viewed = |t: &DataType| matches!(t, DataType::Utf8View | DataType::BinaryView | DataType::Dictionary(..));
        if !types.iter().all(has_identities) || !types.iter().any(viewed) {
            return Ok(None);
        }
        let mut counted = Vec::new();
        for a in aggregate.aggr_expr() {
            let [argument] = &a.expressions()[..] else { return Ok(None) };
            let states = a.state_fields()?;
            let one_count = matches!(&states[..], [s] if s.data_type() == &DataType::Int64);
            if a.fun().name() != "count" || a.is_distinct() || !a.order_bys().is_empty() || !one_count {
                return Ok(None);
            }
            counted.push(Arc::clone(argument));
        }
        let keys = group_by.expr().iter().map(|(e, _)| Arc::clone(e)).collect();
        Ok(Some(PerBatchCountExec { aggregate: Arc::new(aggregate.clone()), keys, counted, metrics: ExecutionPlanMetricsSet::new() }))
    }
}

impl PerBatchCountExec {
    /// The grouping keys, over the input.
    pub(super) fn keys(&self) -> &[Arc<dyn PhysicalExpr>] {
        &self.keys
    }

    /// Each count's argument, over the input.
    pub(super) fn counted(&self) -> &[Arc<dyn PhysicalExpr>] {
        &self.counted
    }

    /// The input counted.
    pub(super) fn input(&self) -> &Arc<dyn ExecutionPlan> {
        self.aggregate.input()
    }

    /// The input to read: below a [`DictionaryCastExec`], when the keys and counts are
    /// columns (or constants) that read the same there, with the schema to cast a batch back
    /// to for the aggregate that may take over.
    fn read(&self) -> (&Arc<dyn ExecutionPlan>, Option<SchemaRef>) {
        let input = self.aggregate.input();
        let plain = |e: &Arc<dyn PhysicalExpr>| e.downcast_ref::<Column>().is_some() || e.downcast_ref::<Literal>().is_some();
        match input.downcast_ref::<DictionaryCastExec>() {
            Some(cast) if self.keys.iter().chain(&self.counted).all(plain) => (cast.input(), Some(input.schema())),
            _ => (input, None),
        }
    }
}

/// Types whose arrays give each row a 16-byte identity: equal identities in one array mean
/// equal values ([`identities`]).
fn has_identities(t: &DataType) -> bool {
    match t {
        DataType::Utf8View | DataType::BinaryView | DataType::Boolean => true,
        DataType::Dictionary(keys, _) => keys.is_integer(),
        t => t.primitive_width().is_some_and(|w| w <= 16),
    }
}

/// Writes column `c` of each row's key into `ids` (`width` columns per row) and sets bit `c`
/// of `nulls` for a null. The identity is the value itself, for numbers and booleans; a
/// string's view (its length and bytes when short, else where it lies in the array's buffers);
/// a dictionary key.
fn identities(array: &dyn Array, c: usize, width: usize, ids: &mut [u128], nulls: &mut [u64]) -> Result<()> {
    let n = array.len();
    if let Some(dictionary) = array.as_any_dictionary_opt() {
        return identities(dictionary.keys(), c, width, ids, nulls);
    }
    match array.data_type() {
        DataType::Utf8View | DataType::BinaryView => {
            for (i, v) in views(array).iter().enumerate() {
                ids[i * width + c] = *v;
            }
        }
        DataType::Boolean => {
            let values = array.as_boolean().values();
            for i in 0..n {
                ids[i * width + c] = u128::from(values.value(i));
            }
        }
        t => {
            let size = t.primitive_width().filter(|w| *w <= 16).ok_or_else(|| DataFusionError::Internal(format!("no row identities for {t}")))?;
            let data = array.to_data();
            let bytes = data.buffers().first().map(|b| b.as_slice()).unwrap_or_default();
            let bytes = bytes
                .get(data.offset() * size..(data.offset() + n) * size)
                .ok_or_else(|| DataFusionError::Internal(format!("a {t} array shorter than its length")))?;
            for (i, value) in bytes.chunks_exact(size).enumerate() {
                let mut le = [0u8; 16];
                le[..size].copy_from_slice(value);
                ids[i * width + c] = u128::from_le_bytes(le);
            }
        }
    }
    if let Some(valid) = array.nulls().filter(|v| v.null_count() > 0) {
        for i in (!valid.inner()).set_indices() {
            ids[i * width + c] = 0;
            nulls[i] |= 1 << c;
        }
    }
    Ok(())
}

/// The views of a string- or binary-view array.
fn views(array: &dyn Array) -> &[u128] {
    match array.as_string_view_opt() {
        Some(s) => s.views(),
        None => array.as_binary_view().views(),
    }
}

/// One partition's per-batch counting, its buffers kept from batch to batch.
struct BatchCounter {
    keys: Vec<Arc<dyn PhysicalExpr>>,
    counted: Vec<Arc<dyn PhysicalExpr>>,
    schema: SchemaRef,
    hasher: foldhash::fast::RandomState,
    ids: Vec<u128>,
    nulls: Vec<u64>,
    table: hashbrown::HashTable<u32>,
    /// [`counted_by_key`] of the keys and counts, worked out once.
    by_key: Option<Vec<Option<bool>>>,
}

impl BatchCounter {
    /// One row per distinct key of `batch` with its counts, in the partial aggregate's
    /// schema; None when the keys are mostly distinct.
    fn count(&mut self, batch: &RecordBatch) -> Result<Option<RecordBatch>> {
        let n = batch.num_rows();
        let keys = self.keys.iter().map(|k| k.evaluate(batch)?.into_array(n)).collect::<Result<Vec<ArrayRef>>>()?;
        if let [key] = &keys[..]
            && let Some(dictionary) = key.as_dictionary_opt::<Int32Type>()
            && dictionary.values().null_count() == 0
            && let Some(counted) = &self.by_key
        {
            return self.key_counted(dictionary, counted);
        }
        let (hasher, table) = (&self.hasher, &mut self.table);
        let grouped = match &keys[..] {
            // One string key (most group-bys): its views read in place, not copied first.
            [key] if matches!(key.data_type(), DataType::Utf8View | DataType::BinaryView) => {
                let views = views(key.as_ref());
                match key.nulls().filter(|v| v.null_count() > 0) {
                    Some(valid) => group_rows(n, view_or_null(views, valid.inner()), |&id| fold(id), hasher, table),
                    None => group_rows(n, |row| (0, views[row]), |&id| fold(id), hasher, table),
                }
            }
            // One dictionary key (`sql::dictionary`): the keys are the groups.
            [key] if key.as_dictionary_opt::<Int32Type>().is_some() => {
                key.as_dictionary_opt::<Int32Type>().and_then(|d| key_groups(d.keys(), d.values().len()))
            }
            _ => self.identities_grouped(&keys, n)?,
        };
        let Some((firsts, groups)) = grouped else { return Ok(None) };
        self.counted(batch, &keys, firsts, &groups).map(Some)
    }

    /// The partial aggregate's batch for one dictionary key: its rows counted per key (a
    /// four-lane histogram, no row's group written down), one row per key present, each
    /// `counted` as [`counted_by_key`] says (None: a count of nothing).
    fn key_counted(&self, dictionary: &arrow::array::DictionaryArray<Int32Type>, counted: &[Option<bool>]) -> Result<Option<RecordBatch>> {
        let values = dictionary.values().len();
        let keys = dictionary.keys();
        let raw = keys.values();
        let mut lanes = vec![[0i64; 4]; values + 1];
        match keys.nulls().filter(|v| v.null_count() > 0) {
            Some(valid) => {
                // A null row counts in the last bin, whatever key its slot holds; chosen by a
                // mask, not a branch (nulls fall at random: a branch mispredicts).
                for (rows, word) in raw.chunks(64).zip(valid.inner().bit_chunks().iter_padded()) {
                    for (b, k) in rows.iter().enumerate() {
                        let valid = 0usize.wrapping_sub(((word >> b) & 1) as usize);
                        let bin = ((*k as usize).min(values) & valid) | (values & !valid);
                        lanes[bin][b & 3] += 1;
                    }
                }
            }
            None => {
                for (i, k) in raw.iter().enumerate() {
                    lanes[(*k as usize).min(values)][i & 3] += 1;
                }
            }
        }
        let totals: Vec<i64> = lanes.iter().map(|l| l.iter().sum()).collect();
        let present: Vec<usize> = (0..=values).filter(|b| totals[*b] > 0).collect();
        // Keys mostly distinct (a dictionary of nearly every row's value): the partition goes
        // to DataFusion's aggregate, as [`group_rows`] decides.
        if raw.len() > PROBE_ROWS && present.len() > raw.len() / 4 {
            return Ok(None);
        }
        let picks = UInt32Array::from_iter(present.iter().map(|&b| (b < values).then_some(b as u32)));
        let key = arrow::compute::take(dictionary.values().as_ref(), &picks, None)?;
        let totals: Vec<i64> = present.iter().map(|&b| totals[b]).collect();
        counts_batch(&self.schema, key, &totals, counted).map(Some)
    }

    /// Each row's group and each group's first row, by the keys' identities copied side by side.
    fn identities_grouped(&mut self, keys: &[ArrayRef], n: usize) -> Result<Option<(Vec<u32>, Vec<u32>)>> {
        let width = keys.len();
        self.ids.clear();
        self.ids.resize(n * width, 0);
        self.nulls.clear();
        self.nulls.resize(n, 0);
        for (c, key) in keys.iter().enumerate() {
            identities(key.as_ref(), c, width, &mut self.ids, &mut self.nulls)?;
        }
        let (ids, nulls) = (&self.ids, &self.nulls);
        let (hasher, table) = (&self.hasher, &mut self.table);
        let grouped = match width {
            // One or two keys (most group-bys) without slices, which compare through memcmp.
            1 => group_rows(n, |row| (nulls[row], ids[row]), |&id| fold(id), hasher, table),
            2 => group_rows(n, |row| (nulls[row], (ids[2 * row], ids[2 * row + 1])), |&(a, b)| fold(a) ^ fold(b).rotate_left(17), hasher, table),
            _ => group_rows(
                n,
                |row| (nulls[row], &ids[row * width..(row + 1) * width]),
                |ids: &&[u128]| ids.iter().fold(0, |h, &id| h.rotate_left(17) ^ fold(id)),
                hasher,
                table,
            ),
        };
        Ok(grouped)
    }

    /// The partial aggregate's batch: the first row of each group's keys, and its counts.
    fn counted(&self, batch: &RecordBatch, keys: &[ArrayRef], firsts: Vec<u32>, groups: &[u32]) -> Result<RecordBatch> {
        let n = batch.num_rows();
        let firsts = UInt32Array::from(firsts);
        // A key read as a dictionary is output as the type planned (a view).
        let mut columns = keys
            .iter()
            .zip(self.schema.fields())
            .map(|(k, f)| {
                let taken = arrow::compute::take(k.as_ref(), &firsts, None)?;
                if taken.data_type() == f.data_type() { Ok(taken) } else { arrow::compute::cast(&taken, f.data_type()) }
            })
            .collect::<Result<Vec<_>, _>>()?;
        let mut rows: Option<Vec<i64>> = None;
        for argument in &self.counted {
            let counted = argument.evaluate(batch)?.into_array(n)?;
            let mut counts = vec![0i64; firsts.len()];
            match counted.logical_nulls() {
                Some(valid) if valid.null_count() > 0 => valid.inner().set_indices().for_each(|i| counts[groups[i] as usize] += 1),
                _ => {
                    // count(*) and any count of a column without nulls: the group's rows.
                    counts = rows.get_or_insert_with(|| rows_per_group(groups, firsts.len())).clone();
                }
            }
            columns.push(Arc::new(Int64Array::from(counts)));
        }
        Ok(RecordBatch::try_new(self.schema.clone(), columns)?)
    }
}

/// Each row's group and each group's first row, for rows grouped by their dictionary `keys`
/// into `values` values (a null is one more group); None, as [`group_rows`], when more than a
/// quarter of the first [`PROBE_ROWS`] rows are distinct.
fn key_groups(keys: &arrow::array::Int32Array, values: usize) -> Option<(Vec<u32>, Vec<u32>)> {
    let n = keys.len();
    let mut group_of = vec![u32::MAX; values + 1];
    let mut firsts: Vec<u32> = Vec::new();
    let mut groups: Vec<u32> = Vec::with_capacity(n);
    let mut place = |row: usize, key: usize| {
        // A key past the values (not in a valid array) counts with the nulls, never out of bounds.
        let slot = &mut group_of[key.min(values)];
        if *slot == u32::MAX {
            *slot = firsts.len() as u32;
            firsts.push(row as u32);
        }
        groups.push(*slot);
    };
    let raw = keys.values();
    match keys.nulls().filter(|v| v.null_count() > 0) {
        Some(valid) => {
            for row in 0..n {
                let key = if valid.is_valid(row) { raw[row] as usize } else { values };
                place(row, key);
            }
        }
        None => raw.iter().enumerate().for_each(|(row, k)| place(row, *k as usize)),
    }
    (n <= PROBE_ROWS || firsts.len() <= n / 4).then_some((firsts, groups))
}

/// For each count, whether it counts the key's non-null rows (`count(key)`) rather than
/// every row (`count(*)`, `count(1)`); None when a count reads another column.
pub(super) fn counted_by_key(keys: &[Arc<dyn PhysicalExpr>], counted: &[Arc<dyn PhysicalExpr>]) -> Option<Vec<Option<bool>>> {
    let key = keys.first()?.downcast_ref::<Column>()?;
    let kind = |e: &Arc<dyn PhysicalExpr>| match (e.downcast_ref::<Literal>(), e.downcast_ref::<Column>()) {
        // A count of a null constant counts nothing.
        (Some(l), _) => Some((!l.value().is_null()).then_some(false)),
        (_, Some(c)) if c.index() == key.index() => Some(Some(true)),
        _ => None,
    };
    counted.iter().map(kind).collect()
}

/// The partial count's batch (in `schema`) of distinct `keys`, a null one the nulls' group,
/// seen `totals` times each: each count as [`counted_by_key`] gives it (None: a count of
/// nothing; Some(true): of the key, which skips its nulls).
pub(super) fn counts_batch(schema: &SchemaRef, keys: ArrayRef, totals: &[i64], counted: &[Option<bool>]) -> Result<RecordBatch> {
    let wanted = schema.field(0).data_type();
    let keys = if keys.data_type() == wanted { keys } else { arrow::compute::cast(&keys, wanted)? };
    let mut columns = vec![Arc::clone(&keys)];
    for count in counted {
        let n = totals.iter().enumerate().map(|(i, total)| match count {
            None => 0,
            Some(true) if keys.is_null(i) => 0,
            Some(_) => *total,
        });
        columns.push(Arc::new(Int64Array::from_iter_values(n)));
    }
    Ok(RecordBatch::try_new(Arc::clone(schema), columns)?)
}

/// How many of `groups` (each row's group) fall in each of `count` groups. Four counters per
/// group, taken in turn: a few groups take most rows, and adding to one counter row after row
/// waits on the previous addition's store (9% of the counting's samples before).
fn rows_per_group(groups: &[u32], count: usize) -> Vec<i64> {
    let mut lanes = vec![[0i64; 4]; count];
    let mut chunks = groups.chunks_exact(4);
    for chunk in &mut chunks {
        for (lane, g) in chunk.iter().enumerate() {
            lanes[*g as usize][lane] += 1;
        }
    }
    for g in chunks.remainder() {
        lanes[*g as usize][0] += 1;
    }
    lanes.iter().map(|l| l.iter().sum()).collect()
}

/// Slots of [`group_rows`]'s cache of recent keys: 8 KB, cleared for every batch. 1,024 slots
/// measured 6–11% slower on group-bys and LIKE over few-valued columns, and no faster on the
/// source addresses (1,323 values); 64 slower again.
const RECENT: usize = 256;

/// Each row's group among `n` rows keyed by `key` (a row's null bits and identities), and each
/// group's first row; None when more than a quarter of the first [`PROBE_ROWS`] rows are
/// distinct. A direct-mapped cache of recent keys, indexed by `fold` (the identities mixed into
/// 64 bits) and one multiplication, sits in front of the hash table: a batch's few distinct
/// views are found with one comparison; a null key (its null bits and zeroed identities) is
/// cached like any other.
pub(super) fn group_rows<K: Copy + Default + Eq + std::hash::Hash>(
    n: usize,
    key: impl Fn(usize) -> (u64, K),
    fold: impl Fn(&K) -> u64,
    hasher: &foldhash::fast::RandomState,
    table: &mut hashbrown::HashTable<u32>,
) -> Option<(Vec<u32>, Vec<u32>)> {
    table.clear();
    // A slot holds (null bits, key, group + 1); 0 is empty.
    let mut recent: Vec<(u64, K, u32)> = vec![(0, K::default(), 0); RECENT];
    let slot = |null: u64, k: &K| ((fold(k) ^ null).wrapping_mul(0x9E37_79B9_7F4A_7C15) >> (64 - RECENT.trailing_zeros())) as usize;
    let mut firsts: Vec<u32> = Vec::new();
    let mut groups: Vec<u32> = Vec::with_capacity(n);
    for row in 0..n {
        if row == PROBE_ROWS && firsts.len() > PROBE_ROWS / 4 {
            return None;
        }
        let (null, k) = key(row);
        let s = slot(null, &k);
        let (cached_null, cached, group) = recent[s];
        if group != 0 && cached_null == null && cached == k {
            groups.push(group - 1);
            continue;
        }
        let hash = hasher.hash_one((null, k));
        let group = match table.find(hash, |&g| key(firsts[g as usize] as usize) == (null, k)) {
            Some(&g) => g,
            None => {
                let g = firsts.len() as u32;
                firsts.push(row as u32);
                table.insert_unique(hash, g, |&g| hasher.hash_one(key(firsts[g as usize] as usize)));
                g
            }
        };
        recent[s] = (null, k, group + 1);
        groups.push(group);
    }
    Some((firsts, groups))
}

/// A row's key for [`group_rows`] from a view array with nulls: (0, its view), or (1, 0) for
/// a null. Without a branch: nulls fall at random in a column like `useridentity.arn` (18% of
/// events), and a branch on them mispredicted: a fifth of the counting's samples, and the
/// top-identities query 12% slower.
pub(super) fn view_or_null<'a>(views: &'a [u128], valid: &'a arrow::buffer::BooleanBuffer) -> impl Fn(usize) -> (u64, u128) + 'a {
    move |row| {
        let valid = u64::from(valid.value(row));
        (valid ^ 1, views[row] & 0u128.wrapping_sub(u128::from(valid)))
    }
}

/// One identity in 64 bits, for [`group_rows`]'s cache.
pub(super) fn fold(id: u128) -> u64 {
    (id as u64) ^ ((id >> 64) as u64).rotate_left(29)
}

impl DisplayAs for PerBatchCountExec {
    fn fmt_as(&self, t: DisplayFormatType, f: &mut fmt::Formatter) -> fmt::Result {
        write!(f, "PerBatchCountExec, else ")?;
        self.aggregate.fmt_as(t, f)
    }
}

impl ExecutionPlan for PerBatchCountExec {
    fn name(&self) -> &str {
        "PerBatchCountExec"
    }

    fn properties(&self) -> &Arc<PlanProperties> {
        self.aggregate.properties()
    }

    fn children(&self) -> Vec<&Arc<dyn ExecutionPlan>> {
        vec![self.aggregate.input()]
    }

    fn apply_expressions(&self, f: &mut dyn FnMut(&Arc<dyn PhysicalExpr>) -> Result<TreeNodeRecursion>) -> Result<TreeNodeRecursion> {
        apply_expression_roots(self.keys.iter().chain(&self.counted), f)
    }

    fn replace_children(self: Arc<Self>, children: Vec<Arc<dyn ExecutionPlan>>, options: ReplaceChildrenOptions) -> Result<Arc<dyn ExecutionPlan>> {
        super::plan_rules::replaced_over(&self.aggregate, children, options, PerBatchCountExec::try_new)
    }

    fn with_new_children(self: Arc<Self>, children: Vec<Arc<dyn ExecutionPlan>>) -> Result<Arc<dyn ExecutionPlan>> {
        self.replace_children(children, super::plan_rules::recompute())
    }

    fn execute(&self, partition: usize, context: Arc<TaskContext>) -> Result<SendableRecordBatchStream> {
        let (input, cast) = self.read();
        let input = input.execute(partition, Arc::clone(&context))?;
        let schema = self.schema();
        let counter = BatchCounter {
            keys: self.keys.clone(),
            counted: self.counted.clone(),
            schema: schema.clone(),
            hasher: foldhash::fast::RandomState::default(),
            ids: Vec::new(),
            nulls: Vec::new(),
            table: hashbrown::HashTable::new(),
            by_key: counted_by_key(&self.keys, &self.counted),
        };
        Ok(Box::pin(CountStream {
            state: State::PerBatch(input),
            counter,
            aggregate: Arc::clone(&self.aggregate),
            partition,
            context,
            schema,
            baseline: BaselineMetrics::new(&self.metrics, partition),
            handed_over: MetricBuilder::new(&self.metrics).counter("partitions_handed_over", partition),
            cast,
        }))
    }

    fn metrics(&self) -> Option<MetricsSet> {
        Some(self.metrics.clone_inner())
    }
}

enum State {
    PerBatch(SendableRecordBatchStream),
    /// The partial aggregate's stream, over the batch that gave up and the rest.
    HandedOver(SendableRecordBatchStream),
    Done,
}

struct CountStream {
    state: State,
    counter: BatchCounter,
    aggregate: Arc<AggregateExec>,
    partition: usize,
    context: Arc<TaskContext>,
    schema: SchemaRef,
    baseline: BaselineMetrics,
    handed_over: Count,
    /// The schema the aggregate's input has, when the batches read hold dictionaries instead.
    cast: Option<SchemaRef>,
}

impl CountStream {
    /// The partial aggregate over `batch` and what is left of `input`.
    fn hand_over(&mut self, batch: RecordBatch, input: SendableRecordBatchStream) -> Result<SendableRecordBatchStream> {
        self.handed_over.add(1);
        let rest = futures::stream::once(async { Ok(batch) }).chain(input);
        match self.cast.clone() {
            Some(schema) => {
                let rest = rest.map(move |b| b.and_then(|b| cast_back(b, &schema)));
                super::plan_rules::aggregate_over(&self.aggregate, rest, self.partition, &self.context)
            }
            None => super::plan_rules::aggregate_over(&self.aggregate, rest, self.partition, &self.context),
        }
    }
}

impl Stream for CountStream {
    type Item = Result<RecordBatch>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        loop {
            let this = &mut *self;
            match &mut this.state {
                State::PerBatch(input) => {
                    let batch = match ready!(input.poll_next_unpin(cx)) {
                        Some(Ok(b)) if b.num_rows() == 0 => continue,
                        Some(Ok(b)) => b,
                        other => {
                            this.state = State::Done;
                            return Poll::Ready(other);
                        }
                    };
                    let timer = this.baseline.elapsed_compute().timer();
                    let counted = this.counter.count(&batch);
                    timer.done();
                    match counted {
                        Ok(Some(out)) => return this.baseline.record_poll(Poll::Ready(Some(Ok(out)))),
                        Err(e) => {
                            this.state = State::Done;
                            return Poll::Ready(Some(Err(e)));
                        }
                        Ok(None) => {
                            let State::PerBatch(input) = std::mem::replace(&mut this.state, State::Done) else { unreachable!() };
                            match this.hand_over(batch, input) {
                                Ok(stream) => this.state = State::HandedOver(stream),
                                Err(e) => return Poll::Ready(Some(Err(e))),
                            }
                        }
                    }
                }
                State::HandedOver(stream) => {
                    let poll = stream.poll_next_unpin(cx);
                    return this.baseline.record_poll(poll);
                }
                State::Done => return Poll::Ready(None),
            }
        }
    }
}

impl RecordBatchStream for CountStream {
    fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }
}

#[cfg(test)]
mod tests {
    use arrow::array::{Int32Array, StringViewArray, TimestampMicrosecondArray};
    use arrow::datatypes::{Field, Schema};
    use datafusion::datasource::MemTable;
    use datafusion::prelude::SessionContext;

    use super::*;

    #[test]
    fn rows_per_group_counts_every_row_once() {
        let groups: Vec<u32> = (0..1003u32).map(|i| (i * i + i / 7) % 5).collect();
        let mut expected = vec![0i64; 5];
        groups.iter().for_each(|g| expected[*g as usize] += 1);
        assert_eq!(rows_per_group(&groups, 5), expected);
        assert_eq!(rows_per_group(&[2, 0, 2], 4), [1, 0, 2, 0]);
    }

    /// 6,000 rows: a few strings (short and long, with nulls) sharing views as a dictionary's
    /// decoding gives them, a dictionary column, small numbers, and distinct timestamps.
    fn table() -> RecordBatch {
        let values = StringViewArray::from(vec![
            Some("arn:aws:iam::123456789012:user/alice"),
            Some("arn:aws:sts::123456789012:assumed-role/app/i-0abc"),
            Some("short"),
            None,
            Some("arn:aws:iam::123456789012:root"),
        ]);
        let n = 6000u32;
        let picks = UInt32Array::from_iter_values((0..n).map(|i| (i * 7 + i / 13) % 5));
        let arn = arrow::compute::take(&values, &picks, None).unwrap();
        let region: arrow::array::DictionaryArray<arrow::datatypes::UInt16Type> =
            (0..n).map(|i| if i % 11 == 0 { None } else { Some(["us-east-1", "eu-west-1"][(i % 3 == 0) as usize]) }).collect();
        let code = Int32Array::from_iter((0..n).map(|i| (i % 4 != 0).then_some((i % 3) as i32)));
        let time = TimestampMicrosecondArray::from_iter_values((0..n).map(|i| 1_700_000_000_000_000 + i as i64 * 1_000_003)).with_timezone("UTC");
        let schema = Schema::new(vec![
            Field::new("arn", DataType::Utf8View, true),
            Field::new("region", region.data_type().clone(), true),
            Field::new("code", DataType::Int32, true),
            Field::new("time", time.data_type().clone(), false),
        ]);
        RecordBatch::try_new(Arc::new(schema), vec![arn, Arc::new(region), Arc::new(code), Arc::new(time)]).unwrap()
    }

    /// The plan and the printed result of `sql`, with or without the rule, over batches of
    /// 1,500 rows in two partitions.
    async fn plan_and_rows(sql: &str, rule: bool) -> (String, String) {
        let builder = datafusion::execution::SessionStateBuilder::new().with_default_features();
        let builder = if rule { builder.with_physical_optimizer_rule(Arc::new(CountPerBatch)) } else { builder };
        let ctx = SessionContext::new_with_state(builder.build());
        let t = table();
        let part = |from: usize| (0..2).map(|i| t.slice(from + i * 1500, 1500)).collect::<Vec<_>>();
        ctx.register_table("t", Arc::new(MemTable::try_new(t.schema(), vec![part(0), part(3000)]).unwrap())).unwrap();
        let plan = ctx.sql(sql).await.unwrap().create_physical_plan().await.unwrap();
        let batches = datafusion::physical_plan::collect(plan.clone(), ctx.task_ctx()).await.unwrap();
        let shown = datafusion::physical_plan::display::DisplayableExecutionPlan::with_metrics(plan.as_ref()).indent(true).to_string();
        (shown, arrow::util::pretty::pretty_format_batches(&batches).unwrap().to_string())
    }

    #[tokio::test]
    async fn counts_per_batch_give_the_same_groups() {
        let handed_over = "SELECT count(*), sum(n) FROM (SELECT arn, time, count(*) AS n FROM t GROUP BY 1, 2)";
        for sql in [
            "SELECT arn, count(*) AS n FROM t GROUP BY 1 ORDER BY 1",
            "SELECT arn, region, count(*), count(code), count(arn) FROM t GROUP BY 1, 2 ORDER BY 1, 2",
            "SELECT code, region, count(arn) FROM t GROUP BY 1, 2 ORDER BY 1, 2",
            "SELECT arn, region, code, count(*), count(code) FROM t GROUP BY 1, 2, 3 ORDER BY 1, 2, 3",
            "SELECT DISTINCT region, code FROM t ORDER BY 1, 2",
            "SELECT count(DISTINCT arn) FROM t",
            "SELECT substr(arn, 1, 12) AS p, count(*) FROM t WHERE code IS NOT NULL GROUP BY 1 ORDER BY 1",
            // Distinct keys: handed over to the partial aggregate.
            handed_over,
        ] {
            let (plan, rows) = plan_and_rows(sql, true).await;
            assert!(plan.contains("PerBatchCountExec"), "{sql}: {plan}");
            assert_eq!(plan.contains("partitions_handed_over=2"), sql == handed_over, "{sql}: {plan}");
            assert_eq!(rows, plan_and_rows(sql, false).await.1, "{sql}: {plan}");
        }
        // Other aggregates, keys without identities, numbers alone: left alone.
        for sql in [
            "SELECT arn, sum(code) FROM t GROUP BY 1 ORDER BY 1",
            "SELECT arrow_cast(arn, 'Utf8'), count(*) FROM t GROUP BY 1 ORDER BY 1",
            "SELECT code, count(region) FROM t GROUP BY 1 ORDER BY 1",
        ] {
            let (plan, rows) = plan_and_rows(sql, true).await;
            assert!(!plan.contains("PerBatchCountExec"), "{sql}: {plan}");
            assert_eq!(rows, plan_and_rows(sql, false).await.1, "{sql}: {plan}");
        }
    }

    #[test]
    fn a_batch_of_distinct_keys_gives_up_and_repeated_keys_are_counted_once() {
        let t = table();
        let schema = t.schema();
        let column = |name: &str| Arc::new(datafusion::physical_expr::expressions::Column::new_with_schema(name, &schema).unwrap()) as Arc<dyn PhysicalExpr>;
        let out = Arc::new(Schema::new(vec![Field::new("arn", DataType::Utf8View, true), Field::new("n", DataType::Int64, false)]));
        let mut counter = BatchCounter {
            keys: vec![column("arn")],
            counted: vec![column("time")],
            schema: out,
            hasher: Default::default(),
            ids: Vec::new(),
            nulls: Vec::new(),
            table: hashbrown::HashTable::new(),
            by_key: None,
        };
        let counts = counter.count(&t).unwrap().unwrap();
        assert_eq!(counts.num_rows(), 5, "four strings and null");
        let n: i64 = counts.column(1).as_primitive::<arrow::datatypes::Int64Type>().values().iter().sum();
        assert_eq!(n, 6000);
        counter.keys = vec![column("time")];
        counter.schema = Arc::new(Schema::new(vec![Field::new("time", t.column(3).data_type().clone(), false), Field::new("n", DataType::Int64, false)]));
        assert!(counter.count(&t).unwrap().is_none());
    }
}
