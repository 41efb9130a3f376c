//! The last stage of a `DISTINCT` on strings, by small hash sets that fit in the cache.
//!
//! `count(DISTINCT requestid)` over 4.5M events (one request ID per event) is a group-by on
//! the request IDs (see `distinct`) whose final stage inserted every ID into one hash table
//! per partition: a table of a million 36-byte strings, where each insert misses the cache
//! and the table is copied at each growth. That stage took 1 s of CPU. [`DistinctValues`]
//! replaces such a final stage (one string-view key, nothing aggregated) with a
//! [`DistinctValuesExec`]: it keeps the partition's batches and each row's hash, sorts the
//! rows' hashes and positions into 256 buckets by eight bits of the hash, then finds each bucket's distinct
//! values with a table of a few thousand entries, and emits one row per distinct value (and
//! one null, if any), as the final aggregate did. This is the radix-partitioned aggregation
//! DuckDB uses.
//!
//! Its batches are held until the end (the final aggregate held a copy of each distinct
//! value instead). If the session's memory pool refuses them, the partition goes through the
//! final aggregate, as before. Not used on distributed sessions (see `per_batch`).

use std::fmt;
use std::hash::BuildHasher;
use std::sync::Arc;

use arrow::array::{Array, ArrayRef, AsArray, BinaryViewArray, BooleanArray, BooleanBufferBuilder, RecordBatch};
use arrow::datatypes::{DataType, SchemaRef};
use datafusion::common::config::ConfigOptions;
use datafusion::common::tree_node::TreeNodeRecursion;
use datafusion::error::{DataFusionError, Result};
use datafusion::execution::TaskContext;
use datafusion::execution::memory_pool::{MemoryConsumer, MemoryReservation};
use datafusion::physical_expr::PhysicalExpr;
use datafusion::physical_optimizer::PhysicalOptimizerRule;
use datafusion::physical_plan::aggregates::{AggregateExec, AggregateMode};
use datafusion::physical_plan::metrics::{BaselineMetrics, Count, ExecutionPlanMetricsSet, MetricBuilder, MetricsSet};
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::{
    DisplayAs, DisplayFormatType, ExecutionPlan, InputOrderMode, PlanProperties, ReplaceChildrenOptions, SendableRecordBatchStream, apply_expression_roots,
};
use futures::stream::BoxStream;
use futures::{StreamExt, TryStreamExt};

/// Buckets a partition's rows are spread over, by bits 40 to 47 of their hash (the hash
/// table inside a bucket uses the low bits for positions and the top seven as tags).
const BUCKETS: usize = 256;

/// The physical optimizer rule: final `DISTINCT` stages on one string-view key become
/// [`DistinctValuesExec`]s.
#[derive(Debug, Default)]
pub struct DistinctValues;

impl PhysicalOptimizerRule for DistinctValues {
    fn optimize(&self, plan: Arc<dyn ExecutionPlan>, _config: &ConfigOptions) -> Result<Arc<dyn ExecutionPlan>> {
        super::plan_rules::replace_aggregates(plan, DistinctValuesExec::try_new)
    }

    fn name(&self) -> &str {
        "distinct_values"
    }

    fn schema_check(&self) -> bool {
        true
    }
}

/// A final, hash-partitioned `GROUP BY key` without aggregates, by buckets (module doc).
#[derive(Debug)]
pub struct DistinctValuesExec {
    /// The final aggregate replaced: its output is this node's, and it takes over a partition
    /// whose batches the memory pool refuses.
    aggregate: Arc<AggregateExec>,
    key: Arc<dyn PhysicalExpr>,
    metrics: ExecutionPlanMetricsSet,
}

impl DistinctValuesExec {
    /// The node for `aggregate`, if it is the final, hash-partitioned stage of a group-by on
    /// one string-view key without aggregates, grouping sets, limit or input order.
    pub fn try_new(aggregate: &AggregateExec) -> Result<Option<DistinctValuesExec>> {
        let group_by = aggregate.group_expr();
        let plain = *aggregate.mode() == AggregateMode::FinalPartitioned
            && aggregate.aggr_expr().is_empty()
            && group_by.is_single()
            && aggregate.limit_options().is_none()
            && aggregate.dynamic_expressions_produced().is_empty()
            && *aggregate.input_order_mode() == InputOrderMode::Linear;
        let [(key, _)] = group_by.expr() else { return Ok(None) };
        if !plain || !matches!(key.data_type(&aggregate.input().schema())?, DataType::Utf8View | DataType::BinaryView) {
            return Ok(None);
        }
        Ok(Some(DistinctValuesExec { aggregate: Arc::new(aggregate.clone()), key: Arc::clone(key), metrics: ExecutionPlanMetricsSet::new() }))
    }
}

/// One partition's rows, as they arrive: the batches, and each row's hash.
struct Buckets {
    batches: Vec<RecordBatch>,
    /// Each batch's key, as bytes (a string view read as a binary view).
    keys: Vec<BinaryViewArray>,
    /// The originals, for the output.
    originals: Vec<ArrayRef>,
    /// Each batch's rows' hashes (0 for a null row, which the key's nulls tell apart).
    hashes: Vec<Vec<u64>>,
    /// Non-null rows so far.
    rows: usize,
    /// The first null key, if any: a group of its own.
    null: Option<(u32, u32)>,
    hasher: foldhash::fast::RandomState,
}

/// A row's bucket, by bits 40 to 47 of its hash.
fn bucket_of(hash: u64) -> usize {
    (hash >> 40) as usize % BUCKETS
}

impl Buckets {
    fn new() -> Buckets {
        Buckets { batches: Vec::new(), keys: Vec::new(), originals: Vec::new(), hashes: Vec::new(), rows: 0, null: None, hasher: Default::default() }
    }

    fn add(&mut self, batch: RecordBatch, key: ArrayRef) -> Result<()> {
        let b = u32::try_from(self.keys.len()).map_err(|_| DataFusionError::Internal("more than 2^32 batches in a partition".into()))?;
        let bytes = match key.as_string_view_opt() {
            Some(s) => s.clone().to_binary_view(),
            None => key.as_binary_view_opt().cloned().ok_or_else(|| DataFusionError::Internal(format!("a distinct key of type {}", key.data_type())))?,
        };
        let hashes: Vec<u64> = (0..bytes.len()).map(|row| if bytes.is_null(row) { 0 } else { self.hasher.hash_one(bytes.value(row)) }).collect();
        if self.null.is_none()
            && let Some(row) = (0..bytes.len()).find(|&row| bytes.is_null(row))
        {
            self.null = Some((b, row as u32));
        }
        self.rows += bytes.len() - bytes.null_count();
        self.hashes.push(hashes);
        self.keys.push(bytes);
        self.originals.push(key);
        self.batches.push(batch);
        Ok(())
    }

    /// Every non-null row as (hash, batch, row), grouped by bucket in one vector (a counting
    /// sort: no bucket grows by copying), and where each bucket starts.
    fn by_bucket(&self) -> (Vec<(u64, u32, u32)>, Vec<usize>) {
        let mut starts = vec![0usize; BUCKETS + 1];
        for (b, hashes) in self.hashes.iter().enumerate() {
            let key = &self.keys[b];
            for (r, &h) in hashes.iter().enumerate() {
                if key.is_valid(r) {
                    starts[bucket_of(h) + 1] += 1;
                }
            }
        }
        for i in 1..=BUCKETS {
            starts[i] += starts[i - 1];
        }
        let mut next = starts.clone();
        let mut entries = vec![(0u64, 0u32, 0u32); self.rows];
        for (b, hashes) in self.hashes.iter().enumerate() {
            let key = &self.keys[b];
            for (r, &h) in hashes.iter().enumerate() {
                if key.is_valid(r) {
                    let slot = &mut next[bucket_of(h)];
                    entries[*slot] = (h, b as u32, r as u32);
                    *slot += 1;
                }
            }
        }
        (entries, starts)
    }

    /// For each batch, which of its rows hold a distinct key's first occurrence.
    fn distinct(&self) -> Vec<BooleanBufferBuilder> {
        let mut firsts: Vec<BooleanBufferBuilder> = self
            .keys
            .iter()
            .map(|k| {
                let mut rows = BooleanBufferBuilder::new(k.len());
                rows.append_n(k.len(), false);
                rows
            })
            .collect();
        if let Some((b, r)) = self.null {
            firsts[b as usize].set_bit(r as usize, true);
        }
        let (entries, starts) = self.by_bucket();
        let mut table: hashbrown::HashTable<u32> = hashbrown::HashTable::new();
        let value = |&(_, b, r): &(u64, u32, u32)| self.keys[b as usize].value(r as usize);
        for window in starts.windows(2) {
            let bucket = &entries[window[0]..window[1]];
            table.clear();
            for (i, entry) in bucket.iter().enumerate() {
                let seen = table.find(entry.0, |&j| {
                    let other = &bucket[j as usize];
                    other.0 == entry.0 && value(other) == value(entry)
                });
                if seen.is_none() {
                    table.insert_unique(entry.0, i as u32, |&j| bucket[j as usize].0);
                    firsts[entry.1 as usize].set_bit(entry.2 as usize, true);
                }
            }
        }
        firsts
    }

    /// The batches, their hashes, and the (hash, batch, row) entries `distinct` will make.
    fn memory(&self) -> usize {
        self.batches.iter().map(RecordBatch::get_array_memory_size).sum::<usize>()
            + self.hashes.iter().map(|h| h.capacity() * 8).sum::<usize>()
            + self.rows * 16
    }
}

impl DisplayAs for DistinctValuesExec {
    fn fmt_as(&self, t: DisplayFormatType, f: &mut fmt::Formatter) -> fmt::Result {
        write!(f, "DistinctValuesExec, else ")?;
        self.aggregate.fmt_as(t, f)
    }
}

impl ExecutionPlan for DistinctValuesExec {
    fn name(&self) -> &str {
        "DistinctValuesExec"
    }

    fn properties(&self) -> &Arc<PlanProperties> {
        self.aggregate.properties()
    }

    fn children(&self) -> Vec<&Arc<dyn ExecutionPlan>> {
        vec![self.aggregate.input()]
    }

    fn apply_expressions(&self, f: &mut dyn FnMut(&Arc<dyn PhysicalExpr>) -> Result<TreeNodeRecursion>) -> Result<TreeNodeRecursion> {
        apply_expression_roots([&self.key], f)
    }

    fn replace_children(self: Arc<Self>, children: Vec<Arc<dyn ExecutionPlan>>, options: ReplaceChildrenOptions) -> Result<Arc<dyn ExecutionPlan>> {
        super::plan_rules::replaced_over(&self.aggregate, children, options, DistinctValuesExec::try_new)
    }

    fn with_new_children(self: Arc<Self>, children: Vec<Arc<dyn ExecutionPlan>>) -> Result<Arc<dyn ExecutionPlan>> {
        self.replace_children(children, super::plan_rules::recompute())
    }

    fn execute(&self, partition: usize, context: Arc<TaskContext>) -> Result<SendableRecordBatchStream> {
        let input = self.aggregate.input().execute(partition, Arc::clone(&context))?;
        let run = Run {
            aggregate: Arc::clone(&self.aggregate),
            key: Arc::clone(&self.key),
            schema: self.schema(),
            partition,
            reservation: MemoryConsumer::new(format!("DistinctValuesExec[{partition}]")).register(context.memory_pool()),
            context,
            baseline: BaselineMetrics::new(&self.metrics, partition),
            handed_over: MetricBuilder::new(&self.metrics).counter("partitions_handed_over", partition),
        };
        let stream = futures::stream::once(run.distinct(input)).try_flatten();
        Ok(Box::pin(RecordBatchStreamAdapter::new(self.schema(), stream)))
    }

    fn metrics(&self) -> Option<MetricsSet> {
        Some(self.metrics.clone_inner())
    }
}

/// One partition's execution.
struct Run {
    aggregate: Arc<AggregateExec>,
    key: Arc<dyn PhysicalExpr>,
    schema: SchemaRef,
    partition: usize,
    reservation: MemoryReservation,
    context: Arc<TaskContext>,
    baseline: BaselineMetrics,
    handed_over: Count,
}

impl Run {
    /// The partition's distinct keys, or the final aggregate's output if the memory pool
    /// refuses to hold the partition's batches.
    async fn distinct(self, mut input: SendableRecordBatchStream) -> Result<BoxStream<'static, Result<RecordBatch>>> {
        let mut buckets = Buckets::new();
        while let Some(batch) = input.next().await {
            let batch = batch?;
            if batch.num_rows() == 0 {
                continue;
            }
            let timer = self.baseline.elapsed_compute().timer();
            let key = self.key.evaluate(&batch)?.into_array(batch.num_rows())?;
            buckets.add(batch, key)?;
            timer.done();
            if self.reservation.try_resize(buckets.memory()).is_err() {
                self.handed_over.add(1);
                let held = futures::stream::iter(std::mem::take(&mut buckets.batches).into_iter().map(Ok));
                return Ok(super::plan_rules::aggregate_over(&self.aggregate, held.chain(input), self.partition, &self.context)?.boxed());
            }
        }
        let timer = self.baseline.elapsed_compute().timer();
        // Each batch's first occurrences, filtered in the batch's order: taking them in the
        // buckets' order instead read the views at random (a sixth of the query's time).
        let firsts = buckets.distinct();
        let mut out = Vec::new();
        // Batches of a few distinct values each are gathered up to the session's batch size
        // (by hand: arrow's BatchCoalescer, which copies the strings of a filtered batch, made
        // `count(DISTINCT requestid)` 12% slower).
        let batch_size = self.context.session_config().batch_size().max(1);
        let mut pending: Vec<ArrayRef> = Vec::new();
        let mut pending_rows = 0;
        let flush = |pending: &mut Vec<ArrayRef>, out: &mut Vec<_>| -> Result<()> {
            let parts: Vec<&dyn Array> = pending.iter().map(|a| a.as_ref()).collect();
            let values = if parts.len() == 1 { Arc::clone(&pending[0]) } else { arrow::compute::concat(&parts)? };
            out.push(RecordBatch::try_new(self.schema.clone(), vec![values]));
            pending.clear();
            Ok(())
        };
        for (original, mut rows) in buckets.originals.iter().zip(firsts) {
            let rows = BooleanArray::new(rows.finish(), None);
            if rows.true_count() > 0 {
                let values = arrow::compute::filter(original, &rows)?;
                pending_rows += values.len();
                pending.push(values);
                if pending_rows >= batch_size {
                    flush(&mut pending, &mut out)?;
                    pending_rows = 0;
                }
            }
        }
        if !pending.is_empty() {
            flush(&mut pending, &mut out)?;
        }
        timer.done();
        let Run { baseline, reservation, .. } = self;
        drop(buckets);
        drop(reservation);
        Ok(futures::stream::iter(out)
            .map(move |b| {
                if let Ok(b) = &b {
                    baseline.record_output(b.num_rows());
                }
                b.map_err(DataFusionError::from)
            })
            .boxed())
    }
}

#[cfg(test)]
mod tests {
    use arrow::array::{StringViewArray, UInt32Array};
    use arrow::datatypes::{Field, Schema};
    use datafusion::datasource::MemTable;
    use datafusion::execution::runtime_env::RuntimeEnvBuilder;
    use datafusion::prelude::SessionContext;

    use super::*;

    /// 20,000 rows: thousands of distinct strings (short ones inline in their views, long ones
    /// with a common prefix), many repeated across batches, and nulls.
    fn table() -> RecordBatch {
        let n = 20_000u32;
        let values = StringViewArray::from_iter((0..n).map(|i| match i % 10 {
            0 => None,
            1 => Some(format!("s{}", i % 1000)),
            _ => Some(format!("0f8e2c1a-request-{:08}", (i * 7919) % 6001)),
        }));
        let picks = UInt32Array::from_iter_values(0..n);
        let values = arrow::compute::take(&values, &picks, None).unwrap();
        RecordBatch::try_new(Arc::new(Schema::new(vec![Field::new("id", DataType::Utf8View, true)])), vec![values]).unwrap()
    }

    /// The plan with its metrics and the printed result of `sql`, with or without the rule, over
    /// batches of 1,000 rows in four partitions, with a memory pool of `memory` bytes.
    async fn plan_and_rows(sql: &str, rule: bool, memory: Option<usize>) -> (String, String) {
        let runtime = match memory {
            Some(bytes) => RuntimeEnvBuilder::new().with_memory_limit(bytes, 1.0).build_arc().unwrap(),
            None => RuntimeEnvBuilder::new().build_arc().unwrap(),
        };
        let builder = datafusion::execution::SessionStateBuilder::new().with_default_features().with_runtime_env(runtime);
        let builder = if rule { builder.with_physical_optimizer_rule(Arc::new(DistinctValues)) } else { builder };
        let ctx = SessionContext::new_with_state(builder.build());
        let t = table();
        let parts = (0..4).map(|p| (0..5).map(|i| t.slice(p * 5000 + i * 1000, 1000)).collect()).collect();
        ctx.register_table("t", Arc::new(MemTable::try_new(t.schema(), parts).unwrap())).unwrap();
        let plan = ctx.sql(sql).await.unwrap().create_physical_plan().await.unwrap();
        let batches = datafusion::physical_plan::collect(plan.clone(), ctx.task_ctx()).await.unwrap();
        let shown = datafusion::physical_plan::display::DisplayableExecutionPlan::with_metrics(plan.as_ref()).indent(true).to_string();
        (shown, arrow::util::pretty::pretty_format_batches(&batches).unwrap().to_string())
    }

    #[tokio::test]
    async fn distinct_values_by_buckets_are_the_final_aggregates() {
        for sql in
            ["SELECT count(DISTINCT id) FROM t", "SELECT id FROM t GROUP BY id ORDER BY id NULLS FIRST", "SELECT count(*) FROM (SELECT DISTINCT id FROM t)"]
        {
            let (plan, rows) = plan_and_rows(sql, true, None).await;
            assert!(plan.contains("DistinctValuesExec") && plan.contains("partitions_handed_over=0"), "{sql}: {plan}");
            assert_eq!(rows, plan_and_rows(sql, false, None).await.1, "{sql}: {plan}");
        }
        let t = table();
        let ids = t.column(0).as_string_view();
        let expected: std::collections::HashSet<&str> = ids.iter().flatten().collect();
        let (_, rows) = plan_and_rows("SELECT count(DISTINCT id) FROM t", true, None).await;
        assert!(rows.contains(&format!("| {} ", expected.len())), "{} distinct: {rows}", expected.len());
        // Other aggregates: left alone.
        let (plan, _) = plan_and_rows("SELECT id, count(*) FROM t GROUP BY id", true, None).await;
        assert!(!plan.contains("DistinctValuesExec"), "{plan}");
    }

    #[tokio::test]
    async fn a_refused_partition_goes_through_the_final_aggregate() {
        let sql = "SELECT count(DISTINCT id) FROM t";
        let (plan, rows) = plan_and_rows(sql, true, Some(2_000_000)).await;
        assert!(plan.contains("DistinctValuesExec") && !plan.contains("partitions_handed_over=0"), "{plan}");
        assert_eq!(rows, plan_and_rows(sql, false, None).await.1, "{plan}");
    }
}
