//! Inner joins on one string key, probed once per distinct value of each batch.
//!
//! `SELECT … FROM events e JOIN ingested_files f ON e.sourcefile = f.sourcefile …` spent a
//! third of its time in DataFusion's hash join hashing each probe row's file name (about 100
//! bytes) and comparing it with its match: 4.5M times, for 16K distinct names. A lake's strings
//! come from Parquet dictionaries as views, and the rows of one value in a batch share one view
//! ([`super::per_batch`]). [`ViewJoinExec`] replaces a hash join that is inner, collects its
//! build side once for every partition, and has one string-view key and no other condition:
//! the build side's values go into a hash table once; each probe batch is grouped by its rows'
//! views ([`super::per_batch::group_rows`]) and each distinct value is looked up once. A batch
//! whose values are mostly distinct (no dictionary behind them) is looked up row by row.
//!
//! The build side's memory is reserved from the session's pool, as DataFusion's join does.
//! Not used on distributed sessions, like the other rules over Prism's own operators.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;

use arrow::array::{Array, ArrayRef, AsArray, RecordBatch, RecordBatchOptions, UInt32Array};
use arrow::datatypes::DataType;
use datafusion::common::config::ConfigOptions;
use datafusion::common::tree_node::{Transformed, TransformedResult, TreeNode, TreeNodeRecursion};
use datafusion::common::{JoinType, NullEquality};
use datafusion::error::{DataFusionError, Result};
use datafusion::execution::TaskContext;
use datafusion::execution::memory_pool::{MemoryConsumer, MemoryReservation};
use datafusion::physical_expr::PhysicalExpr;
use datafusion::physical_optimizer::PhysicalOptimizerRule;
use datafusion::physical_plan::joins::{HashJoinExec, PartitionMode};
use datafusion::physical_plan::metrics::{BaselineMetrics, ExecutionPlanMetricsSet, MetricsSet, RecordOutput};
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::{DisplayAs, DisplayFormatType, ExecutionPlan, PlanProperties, ReplaceChildrenOptions, SendableRecordBatchStream};
use futures::{StreamExt, TryStreamExt};

use super::per_batch::{fold, group_rows, view_or_null};

/// The physical optimizer rule (see the module doc).
#[derive(Debug, Default)]
pub struct JoinByViews;

impl PhysicalOptimizerRule for JoinByViews {
    fn optimize(&self, plan: Arc<dyn ExecutionPlan>, _config: &ConfigOptions) -> Result<Arc<dyn ExecutionPlan>> {
        plan.transform_up(|node| match node.downcast_ref::<HashJoinExec>().and_then(ViewJoinExec::try_new) {
            Some(exec) => Ok(Transformed::yes(Arc::new(exec) as Arc<dyn ExecutionPlan>)),
            None => Ok(Transformed::no(node)),
        })
        .data()
    }

    fn name(&self) -> &str {
        "join_by_views"
    }

    fn schema_check(&self) -> bool {
        true
    }
}

/// A hash join probed by distinct views (see the module doc).
#[derive(Debug)]
pub struct ViewJoinExec {
    /// The join replaced: its children, output and display.
    join: Arc<HashJoinExec>,
    /// The build side's table, made by the first partition to need it.
    built: Arc<tokio::sync::OnceCell<Arc<Built>>>,
    metrics: ExecutionPlanMetricsSet,
}

impl ViewJoinExec {
    /// The node for `join`, if it is an inner join that collects its build side, on one pair
    /// of string views, with no other condition, no limit, and nulls equal to nothing.
    fn try_new(join: &HashJoinExec) -> Option<ViewJoinExec> {
        let [(left, right)] = join.on() else { return None };
        let views = |e: &Arc<dyn PhysicalExpr>, side: &Arc<dyn ExecutionPlan>| e.data_type(&side.schema()).ok() == Some(DataType::Utf8View);
        let plain = join.join_type == JoinType::Inner
            && join.mode == PartitionMode::CollectLeft
            && join.filter.is_none()
            && join.fetch().is_none()
            && join.null_equality == NullEquality::NullEqualsNothing
            && !join.null_aware
            && views(left, &join.left)
            && views(right, &join.right);
        if !plain {
            return None;
        }
        // (A hash join is not `Clone`: a copy is rebuilt from its parts.)
        let copy = join.builder().build().ok()?;
        Some(ViewJoinExec { join: Arc::new(copy), built: Arc::default(), metrics: ExecutionPlanMetricsSet::new() })
    }
}

/// The build side: its rows, and the rows of each key value.
#[derive(Debug)]
struct Built {
    batch: RecordBatch,
    rows: HashMap<Box<[u8]>, Vec<u32>, foldhash::fast::RandomState>,
    _reservation: MemoryReservation,
}

impl Built {
    async fn new(join: Arc<HashJoinExec>, context: Arc<TaskContext>) -> Result<Built> {
        let left = Arc::clone(join.left());
        let schema = left.schema();
        let batches = datafusion::physical_plan::collect(left, Arc::clone(&context)).await?;
        let batch = arrow::compute::concat_batches(&schema, &batches)?;
        let reservation = MemoryConsumer::new("ViewJoinExec build side").register(context.memory_pool());
        reservation.try_grow(batch.get_array_memory_size())?;
        let keys = join.on()[0].0.evaluate(&batch)?.into_array(batch.num_rows())?;
        let keys = keys.as_string_view();
        let mut rows: HashMap<Box<[u8]>, Vec<u32>, foldhash::fast::RandomState> = HashMap::default();
        for (row, key) in keys.iter().enumerate() {
            if let Some(key) = key {
                rows.entry(key.as_bytes().into()).or_default().push(row as u32);
            }
        }
        reservation.try_grow(rows.iter().map(|(k, v)| k.len() + 4 * v.len() + 48).sum())?;
        Ok(Built { batch, rows, _reservation: reservation })
    }

    /// `probe` joined with the build side, in the join's schema before its projection.
    fn join(&self, join: &HashJoinExec, probe: &RecordBatch) -> Result<RecordBatch> {
        let n = probe.num_rows();
        let keys = join.on()[0].1.evaluate(probe)?.into_array(n)?;
        let keys = keys.as_string_view();
        let none: &[u32] = &[];
        let matches = |row: usize| if keys.is_null(row) { none } else { self.rows.get(keys.value(row).as_bytes()).map_or(none, Vec::as_slice) };
        let (mut left, mut right) = (Vec::with_capacity(n), Vec::with_capacity(n));
        let mut take = |row: usize, rows: &[u32]| {
            left.extend_from_slice(rows);
            right.extend(std::iter::repeat_n(row as u32, rows.len()));
        };
        let views = keys.views();
        let hasher = foldhash::fast::RandomState::default();
        let mut table = hashbrown::HashTable::new();
        // Grouped as the per-batch count groups its keys (a null row's key is (1, 0)).
        let grouped = match keys.nulls().filter(|v| v.null_count() > 0) {
            Some(valid) => group_rows(n, view_or_null(views, valid.inner()), |&id| fold(id), &hasher, &mut table),
            None => group_rows(n, |row| (0, views[row]), |&id| fold(id), &hasher, &mut table),
        };
        match grouped {
            // Each distinct value looked up once.
            Some((firsts, groups)) => {
                let found: Vec<&[u32]> = firsts.iter().map(|&first| matches(first as usize)).collect();
                for (row, group) in groups.iter().enumerate() {
                    take(row, found[*group as usize]);
                }
            }
            None => (0..n).for_each(|row| take(row, matches(row))),
        }
        let (left, right) = (UInt32Array::from(left), UInt32Array::from(right));
        let mut columns: Vec<ArrayRef> = Vec::with_capacity(self.batch.num_columns() + probe.num_columns());
        for column in self.batch.columns() {
            columns.push(arrow::compute::take(column.as_ref(), &left, None)?);
        }
        for column in probe.columns() {
            columns.push(arrow::compute::take(column.as_ref(), &right, None)?);
        }
        let options = RecordBatchOptions::new().with_row_count(Some(left.len()));
        let joined = RecordBatch::try_new_with_options(Arc::clone(join.join_schema()), columns, &options)?;
        match &join.projection {
            Some(projection) => Ok(joined.project(projection)?),
            None => Ok(joined),
        }
    }
}

impl DisplayAs for ViewJoinExec {
    fn fmt_as(&self, t: DisplayFormatType, f: &mut fmt::Formatter) -> fmt::Result {
        write!(f, "ViewJoinExec, for ")?;
        self.join.fmt_as(t, f)
    }
}

impl ExecutionPlan for ViewJoinExec {
    fn name(&self) -> &str {
        "ViewJoinExec"
    }

    fn properties(&self) -> &Arc<PlanProperties> {
        self.join.properties()
    }

    fn children(&self) -> Vec<&Arc<dyn ExecutionPlan>> {
        self.join.children()
    }

    fn apply_expressions(&self, f: &mut dyn FnMut(&Arc<dyn PhysicalExpr>) -> Result<TreeNodeRecursion>) -> Result<TreeNodeRecursion> {
        self.join.apply_expressions(f)
    }

    fn replace_children(self: Arc<Self>, children: Vec<Arc<dyn ExecutionPlan>>, options: ReplaceChildrenOptions) -> Result<Arc<dyn ExecutionPlan>> {
        let rebuilt = Arc::clone(&self.join).replace_children(children, options)?;
        let join = rebuilt.downcast_ref::<HashJoinExec>().ok_or_else(|| DataFusionError::Internal("a hash join rebuilt as something else".into()))?;
        let exec = ViewJoinExec::try_new(join).ok_or_else(|| DataFusionError::Internal("a view join over new inputs no longer qualifies".into()))?;
        Ok(Arc::new(exec))
    }

    fn with_new_children(self: Arc<Self>, children: Vec<Arc<dyn ExecutionPlan>>) -> Result<Arc<dyn ExecutionPlan>> {
        self.replace_children(children, super::plan_rules::recompute())
    }

    fn execute(&self, partition: usize, context: Arc<TaskContext>) -> Result<SendableRecordBatchStream> {
        let probe = self.join.right().execute(partition, Arc::clone(&context))?;
        let (join, built) = (Arc::clone(&self.join), Arc::clone(&self.built));
        let baseline = BaselineMetrics::new(&self.metrics, partition);
        let joined = futures::stream::once(async move {
            let table = built.get_or_try_init(|| async { Built::new(Arc::clone(&join), context).await.map(Arc::new) }).await?;
            let table = Arc::clone(table);
            Ok::<_, DataFusionError>(probe.map(move |batch| {
                let _timer = baseline.elapsed_compute().timer();
                batch.and_then(|b| table.join(&join, &b)).map(|b| b.record_output(&baseline))
            }))
        })
        .try_flatten();
        Ok(Box::pin(RecordBatchStreamAdapter::new(self.schema(), joined)))
    }

    fn metrics(&self) -> Option<MetricsSet> {
        Some(self.metrics.clone_inner())
    }
}

#[cfg(test)]
mod tests {
    use arrow::array::{Int64Array, StringViewArray};
    use arrow::datatypes::{Field, Schema};
    use datafusion::datasource::MemTable;
    use datafusion::prelude::{SessionConfig, SessionContext};

    use super::*;

    /// A probe table of 6,000 rows whose names share views as a dictionary's decoding gives
    /// them (some null, some with no match), then 3,000 rows of distinct names; a build table
    /// with a name twice, a null name and a name no probe row has.
    fn tables() -> (RecordBatch, RecordBatch) {
        let long = |i: usize| format!("AWSLogs/123456789012/CloudTrail/us-east-1/2024/01/05/file-{i:04}.json.gz");
        let names = StringViewArray::from(vec![Some(long(1)), Some(long(2)), None, Some(long(3)), Some("short".to_string()), Some(long(9))]);
        let picks = UInt32Array::from_iter_values((0..6000u32).map(|i| (i * 7 + i / 13) % 6));
        let shared = arrow::compute::take(&names, &picks, None).unwrap();
        let distinct = StringViewArray::from_iter_values((0..3000).map(|i| long(i % 4)));
        let name = arrow::compute::concat(&[shared.as_ref(), &distinct]).unwrap();
        let probe_schema = Arc::new(Schema::new(vec![Field::new("name", DataType::Utf8View, true), Field::new("v", DataType::Int64, false)]));
        let probe = RecordBatch::try_new(probe_schema, vec![name, Arc::new(Int64Array::from_iter_values(0..9000))]).unwrap();
        let build_schema = Arc::new(Schema::new(vec![Field::new("fname", DataType::Utf8View, true), Field::new("status", DataType::Utf8View, false)]));
        let fname = StringViewArray::from(vec![Some(long(1)), Some(long(2)), Some(long(2)), None, Some("short".to_string()), Some(long(7)), Some(long(0))]);
        let status = StringViewArray::from_iter_values(["ok", "ok", "again", "null", "short", "unused", "zero"]);
        (probe, RecordBatch::try_new(build_schema, vec![Arc::new(fname), Arc::new(status)]).unwrap())
    }

    /// The plan and the answer of `sql` with or without the rule, over probe batches of 1,500
    /// rows in two partitions.
    async fn run(sql: &str, rule: bool) -> (String, String) {
        let config = SessionConfig::new().with_target_partitions(2).with_batch_size(1_500);
        let builder = datafusion::execution::SessionStateBuilder::new().with_default_features().with_config(config);
        let builder = if rule { builder.with_physical_optimizer_rule(Arc::new(JoinByViews)) } else { builder };
        let ctx = SessionContext::new_with_state(builder.build());
        let (probe, build) = tables();
        let part = |from: usize| (0..3).map(|i| probe.slice(from + i * 1500, 1500)).collect::<Vec<_>>();
        ctx.register_table("e", Arc::new(MemTable::try_new(probe.schema(), vec![part(0), part(4500)]).unwrap())).unwrap();
        ctx.register_table("f", Arc::new(MemTable::try_new(build.schema(), vec![vec![build]]).unwrap())).unwrap();
        let plan = ctx.sql(sql).await.unwrap().create_physical_plan().await.unwrap();
        let batches = datafusion::physical_plan::collect(Arc::clone(&plan), ctx.task_ctx()).await.unwrap();
        let shown = datafusion::physical_plan::displayable(plan.as_ref()).indent(true).to_string();
        (shown, arrow::util::pretty::pretty_format_batches(&batches).unwrap().to_string())
    }

    #[tokio::test]
    async fn joins_probed_by_views_give_the_same_rows() {
        for sql in [
            "SELECT f.status, count(*), count(DISTINCT e.name), sum(e.v) FROM e JOIN f ON e.name = f.fname GROUP BY 1 ORDER BY 1",
            "SELECT e.v, f.status FROM e JOIN f ON e.name = f.fname ORDER BY 1, 2",
            "SELECT e.name, f.fname, e.v FROM e JOIN f ON f.fname = e.name WHERE e.v % 7 = 1 ORDER BY 3, 2",
        ] {
            let (plan, rows) = run(sql, true).await;
            assert!(plan.contains("ViewJoinExec"), "{sql}: {plan}");
            assert_eq!(rows, run(sql, false).await.1, "{sql}: {plan}");
        }
        // Outer joins, other conditions, other key types: left to DataFusion.
        for sql in [
            "SELECT count(*), count(f.status) FROM e LEFT JOIN f ON e.name = f.fname",
            "SELECT count(*) FROM e JOIN f ON e.name = f.fname AND e.v > length(f.status)",
            "SELECT count(*) FROM e JOIN f ON e.v = length(f.fname)",
        ] {
            let (plan, rows) = run(sql, true).await;
            assert!(!plan.contains("ViewJoinExec"), "{sql}: {plan}");
            assert_eq!(rows, run(sql, false).await.1, "{sql}: {plan}");
        }
    }
}
