//! What Prism's physical optimizer rules share: replacing aggregates (and handing a partition
//! back to the aggregate replaced), rewriting filters' predicates, and evaluating an
//! expression over a batch of its one column.

use std::fmt;
use std::sync::{Arc, Mutex};

use datafusion::arrow::array::RecordBatch;
use datafusion::arrow::datatypes::Schema;
use datafusion::common::tree_node::{Transformed, TransformedResult, TreeNode, TreeNodeRecursion};
use datafusion::datasource::physical_plan::{FileScanConfig, ParquetSource};
use datafusion::datasource::source::DataSourceExec;
use datafusion::error::{DataFusionError, Result};
use datafusion::execution::TaskContext;
use datafusion::physical_expr::PhysicalExpr;
use datafusion::physical_expr::expressions::Column;
use datafusion::physical_plan::aggregates::AggregateExec;
use datafusion::physical_plan::filter::{FilterExec, FilterExecBuilder};
use datafusion::physical_plan::{
    ChildrenPropertiesMode, DisplayAs, DisplayFormatType, ExecutionPlan, PlanProperties, ReplaceChildrenOptions, SendableRecordBatchStream,
};
use futures::Stream;

/// `plan` with each aggregate that `replace` gives a node for replaced by it.
pub(super) fn replace_aggregates<E: ExecutionPlan + 'static>(
    plan: Arc<dyn ExecutionPlan>,
    replace: impl Fn(&AggregateExec) -> Result<Option<E>>,
) -> Result<Arc<dyn ExecutionPlan>> {
    plan.transform_up(|node| {
        let Some(aggregate) = node.downcast_ref::<AggregateExec>() else { return Ok(Transformed::no(node)) };
        match replace(aggregate)? {
            Some(exec) => Ok(Transformed::yes(Arc::new(exec) as Arc<dyn ExecutionPlan>)),
            None => Ok(Transformed::no(node)),
        }
    })
    .data()
}

/// A replacement of `aggregate` over new children: `aggregate` rebuilt over them, and
/// replaced again by `replace`, which must still take it.
pub(super) fn replaced_over<E: ExecutionPlan + 'static>(
    aggregate: &Arc<AggregateExec>,
    children: Vec<Arc<dyn ExecutionPlan>>,
    options: ReplaceChildrenOptions,
    replace: impl Fn(&AggregateExec) -> Result<Option<E>>,
) -> Result<Arc<dyn ExecutionPlan>> {
    let rebuilt = Arc::clone(aggregate).replace_children(children, options)?;
    let rebuilt = rebuilt.downcast_ref::<AggregateExec>().ok_or_else(|| DataFusionError::Internal("an aggregate rebuilt as something else".into()))?;
    let exec = replace(rebuilt)?.ok_or_else(|| DataFusionError::Internal(format!("{} over a new input no longer qualifies", rebuilt.name())))?;
    Ok(Arc::new(exec))
}

/// `aggregate`'s `partition` executed over `input`, a stream already started, instead of its
/// own input: how a replacement hands a partition back to the aggregate it replaced midway.
pub(super) fn aggregate_over(
    aggregate: &Arc<AggregateExec>,
    input: impl Stream<Item = Result<RecordBatch>> + Send + 'static,
    partition: usize,
    context: &Arc<TaskContext>,
) -> Result<SendableRecordBatchStream> {
    let rest = Arc::new(Replay::new(input, aggregate.input()));
    let aggregate = Arc::clone(aggregate).replace_children(vec![rest], ReplaceChildrenOptions::new(ChildrenPropertiesMode::Keep))?;
    aggregate.execute(partition, Arc::clone(context))
}

/// `plan` with each filter's predicate replaced where `rewrite` (given the predicate and the
/// filter's input schema) gives a new one; the filter's projection, selectivity, batch size
/// and limit are kept.
pub(super) fn rewrite_filters(
    plan: Arc<dyn ExecutionPlan>,
    rewrite: impl Fn(&Arc<dyn PhysicalExpr>, &Schema) -> Result<Option<Arc<dyn PhysicalExpr>>>,
) -> Result<Arc<dyn ExecutionPlan>> {
    plan.transform_up(|node| {
        let Some(filter) = node.downcast_ref::<FilterExec>() else { return Ok(Transformed::no(node)) };
        let Some(predicate) = rewrite(filter.predicate(), &filter.input().schema())? else { return Ok(Transformed::no(node)) };
        let rebuilt = FilterExecBuilder::new(predicate, Arc::clone(filter.input()))
            .apply_projection_by_ref(filter.projection().as_ref())?
            .with_default_selectivity(filter.default_selectivity())
            .with_batch_size(filter.batch_size())
            .with_fetch(filter.fetch())
            .build()?;
        Ok(Transformed::yes(Arc::new(rebuilt) as Arc<dyn ExecutionPlan>))
    })
    .data()
}

/// `expr`, which reads one column, over a batch of that column alone (at index 0).
pub(super) fn over_its_column(expr: &Arc<dyn PhysicalExpr>) -> Result<Arc<dyn PhysicalExpr>> {
    Arc::clone(expr)
        .transform(|e| match e.downcast_ref::<Column>() {
            Some(c) => Ok(Transformed::yes(Arc::new(Column::new(c.name(), 0)) as Arc<dyn PhysicalExpr>)),
            None => Ok(Transformed::no(e)),
        })
        .data()
}

/// A leaf that yields one stream already started: the input of an aggregate that takes over a
/// partition midway.
struct Replay {
    stream: Mutex<Option<SendableRecordBatchStream>>,
    properties: Arc<PlanProperties>,
}

impl Replay {
    /// `stream`, in the place of `like`.
    fn new(stream: impl Stream<Item = Result<RecordBatch>> + Send + 'static, like: &Arc<dyn ExecutionPlan>) -> Replay {
        let stream = datafusion::physical_plan::stream::RecordBatchStreamAdapter::new(like.schema(), stream);
        Replay { stream: Mutex::new(Some(Box::pin(stream))), properties: Arc::clone(like.properties()) }
    }
}

impl fmt::Debug for Replay {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Replay")
    }
}

impl DisplayAs for Replay {
    fn fmt_as(&self, _: DisplayFormatType, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("Replay")
    }
}

impl ExecutionPlan for Replay {
    fn name(&self) -> &str {
        "Replay"
    }

    fn properties(&self) -> &Arc<PlanProperties> {
        &self.properties
    }

    fn children(&self) -> Vec<&Arc<dyn ExecutionPlan>> {
        vec![]
    }

    fn apply_expressions(&self, _f: &mut dyn FnMut(&Arc<dyn PhysicalExpr>) -> Result<TreeNodeRecursion>) -> Result<TreeNodeRecursion> {
        Ok(TreeNodeRecursion::Continue)
    }

    fn replace_children(self: Arc<Self>, _: Vec<Arc<dyn ExecutionPlan>>, _: ReplaceChildrenOptions) -> Result<Arc<dyn ExecutionPlan>> {
        Ok(self)
    }

    fn with_new_children(self: Arc<Self>, _: Vec<Arc<dyn ExecutionPlan>>) -> Result<Arc<dyn ExecutionPlan>> {
        Ok(self)
    }

    fn execute(&self, _partition: usize, _context: Arc<TaskContext>) -> Result<SendableRecordBatchStream> {
        let taken = self.stream.lock().map_err(|_| DataFusionError::Internal("a replayed stream's lock is poisoned".into()))?.take();
        taken.ok_or_else(|| DataFusionError::Internal("a replayed stream executed twice".into()))
    }
}

/// Children's properties recomputed: how Prism's rules put a rewritten plan back together.
pub(super) fn recompute() -> ReplaceChildrenOptions {
    ReplaceChildrenOptions::new(ChildrenPropertiesMode::Recompute)
}

/// The file scan of `plan`, if it is a `DataSourceExec` over files.
pub(super) fn file_scan(plan: &Arc<dyn ExecutionPlan>) -> Option<&FileScanConfig> {
    plan.downcast_ref::<DataSourceExec>().and_then(|d| d.data_source().downcast_ref::<FileScanConfig>())
}

/// `plan`'s files and Parquet source, if it is a lake table's scan whose files carry no
/// access plan of their own. Lake tables only: their files are Prism's own, written as the
/// rules that read pages and dictionaries themselves expect (other Parquet files keep
/// DataFusion's reader, which casts and reads every encoding).
pub(super) fn lake_scan(plan: &Arc<dyn ExecutionPlan>) -> Option<(&FileScanConfig, &ParquetSource)> {
    let config = file_scan(plan)?;
    if !config.object_store_url.as_str().starts_with(super::scan::TABLE_STORE_SCHEME) {
        return None;
    }
    let source = config.file_source().downcast_ref::<ParquetSource>()?;
    if config.file_groups.iter().flat_map(|g| g.files()).any(|f| !f.extensions.is_empty()) {
        return None;
    }
    Some((config, source))
}
