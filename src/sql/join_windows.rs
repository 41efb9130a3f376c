//! A join on time windows reads only the windows' row groups.
//!
//! "Who called the API during each Insight" joins the events with a handful of windows
//! (`e.eventtime >= s.t0 AND e.eventtime < s.t1 + INTERVAL '1 minute'`). DataFusion's hash join
//! derives dynamic filters from its equality keys only, so the events' scan read every row
//! group of the lake to find the few hours the windows cover. [`JoinWindows`] finds such
//! bounds in an inner hash join's filter (a probe-side column between two expressions of the
//! build side), and gives the probe side's Parquet scan a dynamic filter that starts as `true`.
//! A [`WindowsExec`] over the build side evaluates both bounds on every build row as the
//! join collects it, and when the build side ends, sets the filter to the union of the
//! windows (`col >= lo AND col < hi OR …`, overlapping ones merged, at most
//! [`MAX_WINDOWS`]). The join collects its whole build side before it reads the probe side,
//! so the scan opens its files with the windows known and prunes row groups and pages by
//! their statistics. Rows are still filtered by the join itself: the windows only skip reads.
//!
//! Only joins that collect one build side for all partitions (`CollectLeft`) qualify, and
//! only when the probe column reaches the scan through repartitions, plain filters and
//! projections of columns. Not used on distributed sessions (their plans travel as protobuf).

use std::fmt;
use std::sync::{Arc, Mutex};

use arrow::array::{Array, RecordBatch};
use arrow::datatypes::{DataType, SchemaRef};
use datafusion::common::config::ConfigOptions;
use datafusion::common::tree_node::{Transformed, TransformedResult, TreeNode, TreeNodeRecursion};
use datafusion::common::{JoinSide, JoinType, ScalarValue};
use datafusion::datasource::source::DataSourceExec;
use datafusion::error::Result;
use datafusion::execution::TaskContext;
use datafusion::logical_expr::Operator;
use datafusion::physical_expr::expressions::{BinaryExpr, Column, DynamicFilterPhysicalExpr, Literal, lit};
use datafusion::physical_expr::utils::{collect_columns, split_conjunction};
use datafusion::physical_expr::{PhysicalExpr, PhysicalExprRef};
use datafusion::physical_optimizer::PhysicalOptimizerRule;
use datafusion::physical_plan::filter::FilterExec;
use datafusion::physical_plan::joins::{HashJoinExec, PartitionMode};
use datafusion::physical_plan::projection::ProjectionExec;
use datafusion::physical_plan::repartition::RepartitionExec;
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::{
    DisplayAs, DisplayFormatType, ExecutionPlan, ExecutionPlanProperties, PlanProperties, ReplaceChildrenOptions, SendableRecordBatchStream,
    apply_expression_roots,
};
use futures::StreamExt;

/// Windows kept at most: more are merged across their smallest gaps, so the filter stays cheap
/// to evaluate against each row group's statistics.
pub const MAX_WINDOWS: usize = 64;

/// The physical optimizer rule (module doc).
#[derive(Debug, Default)]
pub struct JoinWindows;

impl PhysicalOptimizerRule for JoinWindows {
    fn optimize(&self, plan: Arc<dyn ExecutionPlan>, config: &ConfigOptions) -> Result<Arc<dyn ExecutionPlan>> {
        plan.transform_up(|node| match with_windows(&node, config)? {
            Some(replaced) => Ok(Transformed::yes(replaced)),
            None => Ok(Transformed::no(node)),
        })
        .data()
    }

    fn name(&self) -> &str {
        "join_windows"
    }

    fn schema_check(&self) -> bool {
        true
    }
}

/// A probe-side column's bounds: `column >= lower` (or `>`) and `column < upper` (or `<=`),
/// each bound an expression over the build side's columns.
struct Bounds {
    /// The column's index in the probe side's output.
    probe: usize,
    lower: (PhysicalExprRef, bool),
    upper: (PhysicalExprRef, bool),
}

/// `node` with windows, if it is an inner `CollectLeft` hash join whose filter bounds a probe
/// column that reaches a scan.
fn with_windows(node: &Arc<dyn ExecutionPlan>, config: &ConfigOptions) -> Result<Option<Arc<dyn ExecutionPlan>>> {
    let Some(join) = node.downcast_ref::<HashJoinExec>() else { return Ok(None) };
    if *join.join_type() != JoinType::Inner || *join.partition_mode() != PartitionMode::CollectLeft || join.left().output_partitioning().partition_count() != 1
    {
        return Ok(None);
    }
    if join.left().downcast_ref::<WindowsExec>().is_some() {
        return Ok(None);
    }
    let Some(bounds) = join.filter().and_then(|f| bounds(f.expression(), f.column_indices())) else { return Ok(None) };
    let probe_type = join.right().schema().field(bounds.probe).data_type().clone();
    let build_schema = join.left().schema();
    if bounds.lower.0.data_type(&build_schema)? != probe_type || bounds.upper.0.data_type(&build_schema)? != probe_type {
        return Ok(None);
    }
    let Some((right, filter)) = scan_with_filter(join.right(), bounds.probe, config)? else { return Ok(None) };
    let left: Arc<dyn ExecutionPlan> = Arc::new(WindowsExec::new(Arc::clone(join.left()), bounds, filter));
    Ok(Some(Arc::clone(node).replace_children(vec![left, right], super::plan_rules::recompute())?))
}

/// The bounds in a join filter's conjuncts, if one probe column has a lower and an upper one.
fn bounds(filter: &Arc<dyn PhysicalExpr>, sides: &[datafusion::physical_plan::joins::utils::ColumnIndex]) -> Option<Bounds> {
    let side_of = |e: &Arc<dyn PhysicalExpr>| -> Option<JoinSide> {
        let columns = collect_columns(e);
        let first = sides.get(columns.iter().next()?.index())?.side;
        columns.iter().all(|c| sides.get(c.index()).is_some_and(|s| s.side == first)).then_some(first)
    };
    // The build side's expression in the build side's own columns.
    let on_build = |e: &Arc<dyn PhysicalExpr>| -> Option<PhysicalExprRef> {
        Arc::clone(e)
            .transform(|node| match node.downcast_ref::<Column>() {
                Some(c) => Ok(Transformed::yes(Arc::new(Column::new(c.name(), sides[c.index()].index)) as _)),
                None => Ok(Transformed::no(node)),
            })
            .data()
            .ok()
    };
    let mut lower: Option<(usize, (PhysicalExprRef, bool))> = None;
    let mut upper: Option<(usize, (PhysicalExprRef, bool))> = None;
    for conjunct in split_conjunction(filter) {
        let Some(binary) = conjunct.downcast_ref::<BinaryExpr>() else { continue };
        // Written as probe OP build, or build OP probe (then flipped).
        let (probe, op, build) = match (binary.left().downcast_ref::<Column>(), binary.right().downcast_ref::<Column>()) {
            (Some(c), _) if side_of(binary.left()) == Some(JoinSide::Right) => (c, *binary.op(), binary.right()),
            (_, Some(c)) if side_of(binary.right()) == Some(JoinSide::Right) => (c, binary.op().swap()?, binary.left()),
            _ => continue,
        };
        // A volatile bound (`random()`) would not be the value the join sees.
        if side_of(build) != Some(JoinSide::Left) || build.exists(|n| Ok(n.is_volatile_node())).unwrap_or(true) {
            continue;
        }
        let probe = sides[probe.index()].index;
        let Some(build) = on_build(build) else { continue };
        match op {
            Operator::GtEq | Operator::Gt => lower = Some((probe, (build, op == Operator::Gt))),
            Operator::Lt | Operator::LtEq => upper = Some((probe, (build, op == Operator::LtEq))),
            _ => {}
        }
    }
    let ((lo_col, lower), (hi_col, upper)) = (lower?, upper?);
    (lo_col == hi_col).then_some(Bounds { probe: lo_col, lower, upper })
}

/// A probe side rebuilt over its scan, and the dynamic filter pushed into that scan.
type ScanWithFilter = (Arc<dyn ExecutionPlan>, Arc<DynamicFilterPhysicalExpr>);

/// The probe side with a dynamic filter on column `index` pushed into its Parquet scan, and
/// that filter; `None` if the column does not reach a scan as a plain column.
fn scan_with_filter(plan: &Arc<dyn ExecutionPlan>, index: usize, config: &ConfigOptions) -> Result<Option<ScanWithFilter>> {
    let child_index = if plan.downcast_ref::<RepartitionExec>().is_some() {
        Some(index)
    } else if let Some(filter) = plan.downcast_ref::<FilterExec>() {
        filter.projection().is_none().then_some(index)
    } else if let Some(projection) = plan.downcast_ref::<ProjectionExec>() {
        projection.expr().get(index).and_then(|p| p.expr.downcast_ref::<Column>().map(Column::index))
    } else if let Some(scan) = plan.downcast_ref::<DataSourceExec>() {
        let field = plan.schema().field(index).clone();
        let column: PhysicalExprRef = Arc::new(Column::new(field.name(), index));
        let filter = Arc::new(DynamicFilterPhysicalExpr::new(vec![column], lit(true)));
        let pushed = scan.data_source().try_pushdown_filters(vec![Arc::clone(&filter) as PhysicalExprRef], config)?;
        return Ok(pushed.updated_node.map(|source| (Arc::new(DataSourceExec::new(source)) as Arc<dyn ExecutionPlan>, filter)));
    } else {
        None
    };
    let [child] = plan.children()[..] else { return Ok(None) };
    let Some(child_index) = child_index else { return Ok(None) };
    let Some((child, filter)) = scan_with_filter(child, child_index, config)? else { return Ok(None) };
    Ok(Some((Arc::clone(plan).replace_children(vec![child], super::plan_rules::recompute())?, filter)))
}

/// The build side of a join with windows: its rows pass through unchanged while both bounds
/// are evaluated on them; at its end, the probe scan's filter becomes their union. The filter
/// belongs to the plan: two runs of one plan at once (which Prism never starts) would share it.
#[derive(Debug)]
pub struct WindowsExec {
    input: Arc<dyn ExecutionPlan>,
    bounds: Arc<Bounds>,
    filter: Arc<DynamicFilterPhysicalExpr>,
}

impl fmt::Debug for Bounds {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "column {} in [{}, {}]", self.probe, self.lower.0, self.upper.0)
    }
}

impl WindowsExec {
    fn new(input: Arc<dyn ExecutionPlan>, bounds: Bounds, filter: Arc<DynamicFilterPhysicalExpr>) -> WindowsExec {
        WindowsExec { input, bounds: Arc::new(bounds), filter }
    }
}

impl DisplayAs for WindowsExec {
    fn fmt_as(&self, _: DisplayFormatType, f: &mut fmt::Formatter) -> fmt::Result {
        write!(
            f,
            "WindowsExec: {} {} probe {} {} {}",
            self.bounds.lower.0,
            if self.bounds.lower.1 { "<" } else { "<=" },
            self.filter.children()[0],
            if self.bounds.upper.1 { "<=" } else { "<" },
            self.bounds.upper.0
        )
    }
}

impl ExecutionPlan for WindowsExec {
    fn name(&self) -> &str {
        "WindowsExec"
    }

    fn properties(&self) -> &Arc<PlanProperties> {
        self.input.properties()
    }

    fn children(&self) -> Vec<&Arc<dyn ExecutionPlan>> {
        vec![&self.input]
    }

    fn replace_children(self: Arc<Self>, children: Vec<Arc<dyn ExecutionPlan>>, _: ReplaceChildrenOptions) -> Result<Arc<dyn ExecutionPlan>> {
        let [input] = <[_; 1]>::try_from(children).map_err(|_| datafusion::error::DataFusionError::Internal("WindowsExec has one child".into()))?;
        Ok(Arc::new(WindowsExec { input, bounds: Arc::clone(&self.bounds), filter: Arc::clone(&self.filter) }))
    }

    fn with_new_children(self: Arc<Self>, children: Vec<Arc<dyn ExecutionPlan>>) -> Result<Arc<dyn ExecutionPlan>> {
        self.replace_children(children, super::plan_rules::recompute())
    }

    fn apply_expressions(&self, f: &mut dyn FnMut(&Arc<dyn PhysicalExpr>) -> Result<TreeNodeRecursion>) -> Result<TreeNodeRecursion> {
        apply_expression_roots([&self.bounds.lower.0, &self.bounds.upper.0], f)
    }

    fn execute(&self, partition: usize, context: Arc<TaskContext>) -> Result<SendableRecordBatchStream> {
        let schema: SchemaRef = self.input.schema();
        // The windows so far, merged whenever they reach four times the limit (so a build side
        // of millions of rows holds a few hundred); `None` once a bound failed to evaluate.
        let windows = Arc::new(Mutex::new(Some(Vec::<(ScalarValue, ScalarValue)>::new())));
        let (bounds, filter) = (Arc::clone(&self.bounds), Arc::clone(&self.filter));
        let observe = {
            let (bounds, windows) = (Arc::clone(&bounds), Arc::clone(&windows));
            move |batch: &RecordBatch| {
                let Ok(mut held) = windows.lock() else { return };
                let Some(list) = held.as_mut() else { return };
                // A bound the join would never evaluate (a build row no probe key matches) may
                // fail, as an overflowing `t1 + INTERVAL`: then no windows, not a failed query.
                if add_windows(&bounds, batch, list).is_err() {
                    *held = None;
                } else if list.len() >= 4 * MAX_WINDOWS {
                    *list = merge(std::mem::take(list));
                }
            }
        };
        let finish = futures::stream::once(async move {
            let held = windows.lock().ok().and_then(|mut w| w.take());
            // The filter is `true` until here; without windows (a failed bound) it stays so.
            if let Some(list) = held {
                filter.update(union(&bounds, filter.children()[0], list))?;
            }
            filter.mark_complete();
            Ok(None)
        });
        let stream = self
            .input
            .execute(partition, context)?
            .map(move |b| {
                if let Ok(batch) = &b {
                    observe(batch);
                }
                b.map(Some)
            })
            .chain(finish)
            .filter_map(|b: Result<Option<RecordBatch>>| async move { b.transpose() });
        Ok(Box::pin(RecordBatchStreamAdapter::new(schema, stream)))
    }
}

/// Adds the windows of `batch`'s rows to `windows`; rows with a null bound have none (the join
/// matches them with nothing).
fn add_windows(bounds: &Bounds, batch: &RecordBatch, windows: &mut Vec<(ScalarValue, ScalarValue)>) -> Result<()> {
    let lower = bounds.lower.0.evaluate(batch)?.into_array(batch.num_rows())?;
    let upper = bounds.upper.0.evaluate(batch)?.into_array(batch.num_rows())?;
    for row in 0..batch.num_rows() {
        if lower.is_valid(row) && upper.is_valid(row) {
            windows.push((ScalarValue::try_from_array(&lower, row)?, ScalarValue::try_from_array(&upper, row)?));
        }
    }
    Ok(())
}

/// `windows` sorted, overlapping or touching ones merged, then merged across their smallest
/// gaps until at most [`MAX_WINDOWS`] are left: each result covers the windows it replaced.
fn merge(mut windows: Vec<(ScalarValue, ScalarValue)>) -> Vec<(ScalarValue, ScalarValue)> {
    windows.retain(|(lo, hi)| lo.partial_cmp(hi).is_some_and(|o| o.is_le()));
    windows.sort_by(|a, b| a.0.partial_cmp(&b.0).unwrap_or(std::cmp::Ordering::Equal));
    let mut merged: Vec<(ScalarValue, ScalarValue)> = Vec::new();
    for (lo, hi) in windows {
        match merged.last_mut() {
            Some(last) if lo <= last.1 => {
                if hi > last.1 {
                    last.1 = hi;
                }
            }
            _ => merged.push((lo, hi)),
        }
    }
    if merged.len() <= MAX_WINDOWS {
        return merged;
    }
    // Close the smallest gaps (measured where the type is a number or a time; else 0, which
    // still yields covering windows).
    let gaps: Vec<i64> = merged.windows(2).map(|w| as_i64(&w[1].0).zip(as_i64(&w[0].1)).map_or(0, |(next, end)| next.saturating_sub(end))).collect();
    let mut order: Vec<usize> = (0..gaps.len()).collect();
    order.sort_by_key(|&i| gaps[i]);
    let mut close = vec![false; gaps.len()];
    for &i in &order[..merged.len() - MAX_WINDOWS] {
        close[i] = true;
    }
    let mut reduced: Vec<(ScalarValue, ScalarValue)> = Vec::with_capacity(MAX_WINDOWS);
    for (i, (lo, hi)) in merged.into_iter().enumerate() {
        match reduced.last_mut() {
            Some(last) if i > 0 && close[i - 1] => last.1 = hi,
            _ => reduced.push((lo, hi)),
        }
    }
    reduced
}

/// `column` within any of `windows` ([`merge`]d); `false` when there are none.
fn union(bounds: &Bounds, column: &PhysicalExprRef, windows: Vec<(ScalarValue, ScalarValue)>) -> PhysicalExprRef {
    let within = |(lo, hi): (ScalarValue, ScalarValue)| -> PhysicalExprRef {
        let lower = Arc::new(BinaryExpr::new(Arc::clone(column), if bounds.lower.1 { Operator::Gt } else { Operator::GtEq }, Arc::new(Literal::new(lo))));
        let upper = Arc::new(BinaryExpr::new(Arc::clone(column), if bounds.upper.1 { Operator::LtEq } else { Operator::Lt }, Arc::new(Literal::new(hi))));
        Arc::new(BinaryExpr::new(lower, Operator::And, upper))
    };
    merge(windows).into_iter().map(within).reduce(|a, b| Arc::new(BinaryExpr::new(a, Operator::Or, b))).unwrap_or_else(|| lit(false))
}

/// A bound as a number (a timestamp's ticks), for measuring gaps.
fn as_i64(v: &ScalarValue) -> Option<i64> {
    match v.cast_to(&DataType::Int64).ok()? {
        ScalarValue::Int64(n) => n,
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use arrow::array::{Int64Array, StringArray, TimestampMicrosecondArray};
    use arrow::datatypes::{Field, Schema, TimeUnit};
    use datafusion::datasource::MemTable;
    use datafusion::prelude::{ParquetReadOptions, SessionContext};
    use parquet::arrow::ArrowWriter;
    use parquet::file::properties::WriterProperties;

    use super::*;

    const SECOND: i64 = 1_000_000;

    fn ts(name: &str, nullable: bool) -> Field {
        Field::new(name, DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())), nullable)
    }

    /// A session over `e`: 2,000 rows a second apart in row groups of 100, keys `a`/`b`
    /// alternating; and `w`: the windows given as (key, start second, end second).
    async fn session(rule: bool, dir: &std::path::Path, windows: &[(&str, Option<i64>, Option<i64>)]) -> SessionContext {
        let builder = datafusion::execution::SessionStateBuilder::new().with_default_features();
        let builder = if rule { builder.with_physical_optimizer_rule(Arc::new(JoinWindows)) } else { builder };
        let ctx = SessionContext::new_with_state(builder.build());
        let path = dir.join("e.parquet");
        if !path.exists() {
            let schema = Arc::new(Schema::new(vec![ts("ts", false), Field::new("k", DataType::Utf8, false), Field::new("v", DataType::Int64, false)]));
            let n = 2_000i64;
            let batch = RecordBatch::try_new(
                Arc::clone(&schema),
                vec![
                    Arc::new(TimestampMicrosecondArray::from_iter_values((0..n).map(|i| i * SECOND)).with_timezone("UTC")),
                    Arc::new(StringArray::from_iter_values((0..n).map(|i| if i % 2 == 0 { "a" } else { "b" }))),
                    Arc::new(Int64Array::from_iter_values(0..n)),
                ],
            )
            .unwrap();
            let props = WriterProperties::builder().set_max_row_group_row_count(Some(100)).build();
            let mut writer = ArrowWriter::try_new(std::fs::File::create(&path).unwrap(), schema, Some(props)).unwrap();
            writer.write(&batch).unwrap();
            writer.close().unwrap();
        }
        ctx.register_parquet("e", path.to_str().unwrap(), ParquetReadOptions::default()).await.unwrap();
        let schema = Arc::new(Schema::new(vec![Field::new("k", DataType::Utf8, false), ts("t0", true), ts("t1", true)]));
        type Window<'a> = (&'a str, Option<i64>, Option<i64>);
        let seconds = |f: fn(&Window) -> Option<i64>| {
            Arc::new(TimestampMicrosecondArray::from_iter(windows.iter().map(|w| f(w).map(|s| s * SECOND))).with_timezone("UTC"))
        };
        let w = RecordBatch::try_new(
            Arc::clone(&schema),
            vec![Arc::new(StringArray::from_iter_values(windows.iter().map(|w| w.0))), seconds(|w| w.1), seconds(|w| w.2)],
        )
        .unwrap();
        ctx.register_table("w", Arc::new(MemTable::try_new(schema, vec![vec![w]]).unwrap())).unwrap();
        ctx
    }

    /// The plan with metrics, and the rows, of `sql`.
    async fn run(ctx: &SessionContext, sql: &str) -> (String, String) {
        let plan = ctx.sql(sql).await.unwrap().create_physical_plan().await.unwrap();
        let batches = datafusion::physical_plan::collect(Arc::clone(&plan), ctx.task_ctx()).await.unwrap();
        let shown = datafusion::physical_plan::display::DisplayableExecutionPlan::with_metrics(plan.as_ref()).indent(true).to_string();
        (shown, arrow::util::pretty::pretty_format_batches(&batches).unwrap().to_string())
    }

    /// Row groups read: the `→ N matched` of the probe scan's statistics pruning.
    fn row_groups_read(plan: &str) -> usize {
        let at = plan.find("row_groups_pruned_statistics=").expect(plan);
        let rest = &plan[at..];
        let matched = &rest[rest.find('→').expect(plan) + '→'.len_utf8()..];
        matched.trim_start().split(' ').next().unwrap().parse().expect(plan)
    }

    #[tokio::test]
    async fn the_probe_scan_reads_only_the_windows_row_groups_and_answers_the_same() {
        let dir = tempfile::tempdir().unwrap();
        let windows = [("a", Some(150), Some(260)), ("b", Some(1_500), Some(1_520)), ("a", None, Some(900)), ("b", Some(700), None)];
        let queries = [
            "SELECT w.k, count(*), sum(e.v) FROM w JOIN e ON e.k = w.k AND e.ts >= w.t0 AND e.ts < w.t1 + INTERVAL '1 second' GROUP BY 1 ORDER BY 1",
            // Bounds written the other way round, strict and inclusive.
            "SELECT count(*), sum(e.v) FROM w JOIN e ON e.k = w.k AND w.t0 < e.ts AND w.t1 >= e.ts",
        ];
        for sql in queries {
            let (plan, rows) = run(&session(true, dir.path(), &windows).await, sql).await;
            let (plain, expected) = run(&session(false, dir.path(), &windows).await, sql).await;
            assert_eq!(rows, expected, "{sql}\n{plan}");
            assert!(plan.contains("WindowsExec"), "{plan}");
            assert!(!plain.contains("WindowsExec"));
            // Seconds 150-260 and 1,500-1,520: row groups 1, 2 and 15 of 20.
            assert_eq!(row_groups_read(&plan), 3, "{sql}\n{plan}");
            assert_eq!(row_groups_read(&plain), 20);
        }
        // No window (or only null bounds): nothing is read, nothing matches.
        let sql = queries[0];
        let (plan, rows) = run(&session(true, dir.path(), &[("a", None, Some(5))]).await, sql).await;
        assert_eq!(row_groups_read(&plan), 0, "{plan}");
        assert_eq!(rows, run(&session(false, dir.path(), &[("a", None, Some(5))]).await, sql).await.1);
        // A left join keeps unmatched build rows and an outer join of the other side would keep
        // every probe row: neither is given windows.
        let sql = "SELECT count(*) FROM e LEFT JOIN w ON e.k = w.k AND e.ts >= w.t0 AND e.ts < w.t1";
        let (plan, rows) = run(&session(true, dir.path(), &windows).await, sql).await;
        assert!(!plan.contains("WindowsExec"), "{plan}");
        assert_eq!(rows, run(&session(false, dir.path(), &windows).await, sql).await.1);
    }

    /// A bound that fails to evaluate on a build row (which the join, matching no key, would
    /// never evaluate) leaves the filter `true` and the rows flowing; good bounds set it.
    #[tokio::test]
    async fn a_failing_bound_leaves_the_filter_true() {
        use datafusion::datasource::memory::MemorySourceConfig;
        use datafusion::physical_expr::expressions::cast;
        let schema = Arc::new(Schema::new(vec![ts("t0", true), Field::new("end", DataType::Utf8, true)]));
        let batch = RecordBatch::try_new(
            Arc::clone(&schema),
            vec![
                Arc::new(TimestampMicrosecondArray::from(vec![Some(0), Some(SECOND)]).with_timezone("UTC")),
                Arc::new(StringArray::from(vec![Some("1970-01-01T00:00:05Z"), Some("not a time")])),
            ],
        )
        .unwrap();
        let probe_type = DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into()));
        for (rows, expect_true) in [(2, true), (1, false)] {
            let input = MemorySourceConfig::try_new_exec(&[vec![batch.slice(0, rows)]], Arc::clone(&schema), None).unwrap();
            let upper = cast(Arc::new(Column::new("end", 1)), &schema, probe_type.clone()).unwrap();
            let bounds = Bounds { probe: 0, lower: (Arc::new(Column::new("t0", 0)), false), upper: (upper, false) };
            let filter = Arc::new(DynamicFilterPhysicalExpr::new(vec![Arc::new(Column::new("ts", 0))], lit(true)));
            let exec = Arc::new(WindowsExec::new(input, bounds, Arc::clone(&filter)));
            let out = datafusion::physical_plan::collect(exec, Arc::new(TaskContext::default())).await.unwrap();
            assert_eq!(out.iter().map(RecordBatch::num_rows).sum::<usize>(), rows);
            let current = filter.current().unwrap().to_string();
            assert_eq!(current == "true", expect_true, "{rows} rows: {current}");
        }
    }

    /// Overlapping windows merge; more than [`MAX_WINDOWS`] merge across their smallest gaps,
    /// always into windows that cover the originals.
    #[test]
    fn windows_merge_into_covering_ones() {
        let column: PhysicalExprRef = Arc::new(Column::new("t", 0));
        let bounds = Bounds { probe: 0, lower: (Arc::clone(&column), false), upper: (Arc::clone(&column), false) };
        let v = |n: i64| ScalarValue::Int64(Some(n));
        let shown = union(&bounds, &column, vec![(v(10), v(20)), (v(0), v(5)), (v(15), v(30)), (v(40), v(30))]).to_string();
        assert_eq!(shown, "t@0 >= 0 AND t@0 < 5 OR t@0 >= 10 AND t@0 < 30");
        assert_eq!(union(&bounds, &column, vec![]).to_string(), "false");
        // 200 windows of 1 at 0, 10, 20, … with one wide gap after the 100th.
        let many: Vec<_> = (0..200).map(|i| if i < 100 { (v(i * 10), v(i * 10 + 1)) } else { (v(100_000 + i * 10), v(100_000 + i * 10 + 1)) }).collect();
        let merged = union(&bounds, &column, many.clone()).to_string();
        let windows: Vec<(i64, i64)> = merged
            .split(" OR ")
            .map(|w| {
                let n: Vec<i64> = w.split(' ').filter_map(|t| t.parse().ok()).collect();
                (n[0], n[1])
            })
            .collect();
        assert!(windows.len() <= MAX_WINDOWS, "{merged}");
        for (lo, hi) in many {
            let (lo, hi) = (as_i64(&lo).unwrap(), as_i64(&hi).unwrap());
            assert!(windows.iter().any(|&(a, b)| a <= lo && hi <= b), "[{lo}, {hi}) not covered by {merged}");
        }
        assert!(!windows.iter().any(|&(a, b)| a < 100_000 && b > 10_000), "the wide gap was merged: {merged}");
    }
}
