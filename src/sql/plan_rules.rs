//! What Prism's physical optimizer rules share: replacing aggregates, rewriting filters'
//! predicates, and evaluating an expression over a batch of its one column.

use std::sync::Arc;

use datafusion::arrow::datatypes::Schema;
use datafusion::common::tree_node::{Transformed, TransformedResult, TreeNode};
use datafusion::error::Result;
use datafusion::physical_expr::PhysicalExpr;
use datafusion::physical_expr::expressions::Column;
use datafusion::physical_plan::ExecutionPlan;
use datafusion::physical_plan::aggregates::AggregateExec;
use datafusion::physical_plan::filter::{FilterExec, FilterExecBuilder};

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
