//! String predicates evaluated once per distinct value of a batch, not once per row.
//!
//! Parquet stores a column with few distinct values (user agents, ARNs, source addresses) as
//! a dictionary, and DataFusion's reader decodes it into string views that point into that
//! dictionary: the rows of a batch with the same value have the same 16-byte view. DuckDB
//! evaluates `useragent LIKE '%python%'` or a regular expression once per dictionary entry;
//! DataFusion evaluates it once per row. [`EvaluatePerValue`] wraps each such expression of a
//! filter (a LIKE, a regular-expression match or a function call over one string-view column,
//! nothing volatile) in a [`PerValue`], which runs it on the batch's distinct views and spreads
//! the answers back by position. The rows are grouped by view with [`super::per_batch`]'s
//! grouping; where the views are mostly distinct (no dictionary: request IDs, JSON text), it
//! stops trying and evaluates row by row, as before. A `LIKE 'prefix%'` is replaced by
//! `prefix_like`'s test on the views instead, which is cheaper still.
//!
//! Not used on distributed sessions: their plans travel to workers as protobuf, which knows
//! only DataFusion's own expressions.

use std::fmt;
use std::hash::{Hash, Hasher};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use arrow::array::{Array, AsArray, RecordBatch, UInt32Array};
use arrow::datatypes::{DataType, Field, FieldRef, Schema};
use datafusion::common::config::ConfigOptions;
use datafusion::common::tree_node::{Transformed, TreeNode, TreeNodeRecursion};
use datafusion::error::Result;
use datafusion::logical_expr::ColumnarValue;
use datafusion::logical_expr::Operator;
use datafusion::physical_expr::expressions::{BinaryExpr, Column, LikeExpr};
use datafusion::physical_expr::utils::collect_columns;
use datafusion::physical_expr::{PhysicalExpr, ScalarFunctionExpr};
use datafusion::physical_optimizer::PhysicalOptimizerRule;
use datafusion::physical_plan::ExecutionPlan;

/// The physical optimizer rule: wraps the string predicates of every filter in [`PerValue`].
#[derive(Debug, Default)]
pub struct EvaluatePerValue;

impl PhysicalOptimizerRule for EvaluatePerValue {
    fn optimize(&self, plan: Arc<dyn ExecutionPlan>, _config: &ConfigOptions) -> Result<Arc<dyn ExecutionPlan>> {
        super::plan_rules::rewrite_filters(plan, |predicate, schema| {
            let wrapped = wrap(Arc::clone(predicate), schema)?;
            Ok(wrapped.transformed.then_some(wrapped.data))
        })
    }

    fn name(&self) -> &str {
        "evaluate_per_value"
    }

    fn schema_check(&self) -> bool {
        true
    }
}

/// Wraps the largest subexpressions of `expr` that qualify (see the module doc).
fn wrap(expr: Arc<dyn PhysicalExpr>, schema: &Schema) -> Result<Transformed<Arc<dyn PhysicalExpr>>> {
    expr.transform_down(|e| {
        // Already wrapped (the rule run twice), or a JSON prefilter (its text is mostly
        // distinct): not again, nor anything inside.
        if e.downcast_ref::<PerValue>().is_some()
            || e.downcast_ref::<super::prefix_like::PrefixMatch>().is_some()
            || e.downcast_ref::<super::json_filter::JsonPrefilter>().is_some()
        {
            return Ok(Transformed::new(e, false, TreeNodeRecursion::Jump));
        }
        // A prefix LIKE is cheaper still on the views themselves (see `prefix_like`).
        if let Some(prefix) = super::prefix_like::rewrite(&e, schema)? {
            return Ok(Transformed::new(prefix, true, TreeNodeRecursion::Jump));
        }
        if qualifies(&e, schema)? {
            let wrapped: Arc<dyn PhysicalExpr> = Arc::new(PerValue::new(e)?);
            return Ok(Transformed::new(wrapped, true, TreeNodeRecursion::Jump));
        }
        Ok(Transformed::no(e))
    })
}

/// One string-view column, something costly per row on it ([`costly`]), nothing volatile.
fn qualifies(e: &Arc<dyn PhysicalExpr>, schema: &Schema) -> Result<bool> {
    let columns = collect_columns(e);
    let [column] = columns.iter().collect::<Vec<_>>()[..] else { return Ok(false) };
    if schema.fields().get(column.index()).map(|f| f.data_type()) != Some(&DataType::Utf8View) {
        return Ok(false);
    }
    let costly = e.exists(|n| Ok(costly(n)))?;
    let volatile = e.exists(|n| Ok(n.is_volatile_node()))?;
    Ok(costly && !volatile)
}

/// LIKE, a regular-expression match (`regexp_like` is planned as `~`) or a function call.
fn costly(e: &Arc<dyn PhysicalExpr>) -> bool {
    let matches = |op: &Operator| {
        matches!(
            op,
            Operator::RegexMatch
                | Operator::RegexIMatch
                | Operator::RegexNotMatch
                | Operator::RegexNotIMatch
                | Operator::LikeMatch
                | Operator::ILikeMatch
                | Operator::NotLikeMatch
                | Operator::NotILikeMatch
        )
    };
    e.downcast_ref::<LikeExpr>().is_some()
        || e.downcast_ref::<ScalarFunctionExpr>().is_some()
        || e.downcast_ref::<BinaryExpr>().is_some_and(|b| matches(b.op()))
}

/// An expression over one string-view column, evaluated once per distinct view of a batch.
#[derive(Debug)]
pub struct PerValue {
    inner: Arc<dyn PhysicalExpr>,
    /// The column, in the input batch.
    column: Column,
    /// `inner` over a batch of that one column (its index 0).
    alone: Arc<dyn PhysicalExpr>,
    /// Set once a batch's values turned out mostly distinct: the column has no dictionary.
    gave_up: AtomicBool,
}

impl PerValue {
    /// The expression wrapped.
    pub(super) fn inner(&self) -> &Arc<dyn PhysicalExpr> {
        &self.inner
    }

    fn new(inner: Arc<dyn PhysicalExpr>) -> Result<PerValue> {
        let columns = collect_columns(&inner);
        let Some(column) = columns.into_iter().next() else {
            return Err(datafusion::error::DataFusionError::Internal("per-value evaluation of an expression without a column".into()));
        };
        let alone = super::plan_rules::over_its_column(&inner)?;
        Ok(PerValue { inner, column, alone, gave_up: AtomicBool::new(false) })
    }

    /// Each row's position among the batch's distinct views (a null is one more value), and
    /// the row of each distinct view's first occurrence; None when they are mostly distinct.
    fn positions(views: &arrow::array::StringViewArray) -> Option<(UInt32Array, UInt32Array)> {
        let n = views.len();
        let ids = views.views();
        let hasher = foldhash::fast::RandomState::default();
        let (fold, table) = (|&id: &u128| super::per_batch::fold(id), &mut hashbrown::HashTable::new());
        let (firsts, keys) = match views.nulls().filter(|v| v.null_count() > 0) {
            Some(valid) => super::per_batch::group_rows(n, super::per_batch::view_or_null(ids, valid.inner()), fold, &hasher, table),
            None => super::per_batch::group_rows(n, |row| (0, ids[row]), fold, &hasher, table),
        }?;
        (firsts.len() < n / 2).then(|| (UInt32Array::from(keys), UInt32Array::from(firsts)))
    }
}

impl PhysicalExpr for PerValue {
    fn data_type(&self, input_schema: &Schema) -> Result<DataType> {
        self.inner.data_type(input_schema)
    }

    fn nullable(&self, input_schema: &Schema) -> Result<bool> {
        self.inner.nullable(input_schema)
    }

    fn return_field(&self, input_schema: &Schema) -> Result<FieldRef> {
        self.inner.return_field(input_schema)
    }

    fn evaluate(&self, batch: &RecordBatch) -> Result<ColumnarValue> {
        let array = batch.column(self.column.index());
        let Some(views) = array.as_string_view_opt() else { return self.inner.evaluate(batch) };
        if views.len() < 64 || self.gave_up.load(Ordering::Relaxed) {
            return self.inner.evaluate(batch);
        }
        let Some((keys, firsts)) = Self::positions(views) else {
            self.gave_up.store(true, Ordering::Relaxed);
            return self.inner.evaluate(batch);
        };
        let values = arrow::compute::take(array.as_ref(), &firsts, None)?;
        let field = Field::new(self.column.name(), DataType::Utf8View, true);
        let distinct = RecordBatch::try_new(Arc::new(Schema::new(vec![field])), vec![values])?;
        match self.alone.evaluate(&distinct)? {
            ColumnarValue::Array(answers) => Ok(ColumnarValue::Array(arrow::compute::take(answers.as_ref(), &keys, None)?)),
            scalar => Ok(scalar),
        }
    }

    fn children(&self) -> Vec<&Arc<dyn PhysicalExpr>> {
        vec![&self.inner]
    }

    fn with_new_children(self: Arc<Self>, children: Vec<Arc<dyn PhysicalExpr>>) -> Result<Arc<dyn PhysicalExpr>> {
        match <[_; 1]>::try_from(children) {
            Ok([inner]) => Ok(Arc::new(PerValue::new(inner)?)),
            Err(_) => Err(datafusion::error::DataFusionError::Internal("per-value evaluation takes one expression".into())),
        }
    }

    fn fmt_sql(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.inner.fmt_sql(f)
    }
}

impl fmt::Display for PerValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "per_value({})", self.inner)
    }
}

impl PartialEq for PerValue {
    fn eq(&self, other: &Self) -> bool {
        self.inner.as_ref() == other.inner.as_ref()
    }
}

impl Eq for PerValue {}

impl Hash for PerValue {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.inner.hash(state);
    }
}

#[cfg(test)]
mod tests {
    use arrow::array::{ArrayRef, StringViewArray};
    use datafusion::datasource::MemTable;
    use datafusion::prelude::SessionContext;

    use super::*;

    /// 3,000 rows of a few values (short ones inline in their views, long ones sharing a view,
    /// as a dictionary's decoding gives them, and nulls) beside a column of distinct values.
    fn table() -> RecordBatch {
        let values = StringViewArray::from(vec![
            Some("aws-cli/2.15.0 Python/3.11"),
            Some("python-requests/2.31"),
            Some("Boto3/1.34"),
            None,
            Some("console.amazonaws.com"),
        ]);
        let picks = UInt32Array::from_iter_values((0..3000u32).map(|i| (i * 7 + i / 13) % 5));
        let few = arrow::compute::take(&values, &picks, None).unwrap();
        let many: ArrayRef = Arc::new(StringViewArray::from_iter_values((0..3000).map(|i| format!("10.{}.{}.{}", i % 7, i / 256, i % 256))));
        let schema = Schema::new(vec![Field::new("agent", DataType::Utf8View, true), Field::new("ip", DataType::Utf8View, true)]);
        RecordBatch::try_new(Arc::new(schema), vec![few, many]).unwrap()
    }

    /// The plan and the printed result of `sql`, with or without the rule, over batches of
    /// 1,000 rows.
    async fn plan_and_rows(sql: &str, rule: bool) -> (String, String) {
        let builder = datafusion::execution::SessionStateBuilder::new().with_default_features();
        // Twice: a second run over a plan must not wrap anything again.
        let builder = if rule {
            builder.with_physical_optimizer_rule(Arc::new(EvaluatePerValue)).with_physical_optimizer_rule(Arc::new(EvaluatePerValue))
        } else {
            builder
        };
        let ctx = SessionContext::new_with_state(builder.build());
        let t = table();
        let batches: Vec<RecordBatch> = (0..3).map(|i| t.slice(i * 1000, 1000)).collect();
        ctx.register_table("t", Arc::new(MemTable::try_new(t.schema(), vec![batches]).unwrap())).unwrap();
        let df = ctx.sql(sql).await.unwrap();
        let plan = datafusion::physical_plan::displayable(df.clone().create_physical_plan().await.unwrap().as_ref()).indent(true).to_string();
        let batches = df.collect().await.unwrap();
        (plan, arrow::util::pretty::pretty_format_batches(&batches).unwrap().to_string())
    }

    #[tokio::test]
    async fn string_predicates_give_the_same_answers_once_per_value() {
        let (plan, _) = plan_and_rows("SELECT count(*) FROM t WHERE agent LIKE '%python%'", true).await;
        assert_eq!(plan.matches("per_value(").count(), 1, "{plan}");
        for sql in [
            "SELECT agent, count(*) FROM t WHERE agent LIKE '%python%' OR agent ILIKE 'BOTO%' GROUP BY 1 ORDER BY 1",
            "SELECT count(*) FROM t WHERE regexp_like(agent, '^aws-cli/2\\.[0-9]+') AND agent NOT LIKE '%3.12%'",
            "SELECT count(*), count(agent) FROM t WHERE upper(agent) = 'BOTO3/1.34' OR agent IS NULL",
            "SELECT agent, count(*) FROM t WHERE NOT (agent ~ 'console') GROUP BY 1 ORDER BY 1",
            "SELECT count(*) FROM t WHERE ip LIKE '10.3.%' AND agent LIKE '%aws%'",
            "SELECT count(*) FROM t WHERE length(agent) > 12",
        ] {
            let (plan, rows) = plan_and_rows(sql, true).await;
            assert!(plan.contains("per_value("), "{sql}: {plan}");
            assert_eq!(rows, plan_and_rows(sql, false).await.1, "{sql}: {plan}");
        }
        // Two columns in one predicate, a bare column, a volatile function: left alone.
        for sql in [
            "SELECT count(*) FROM t WHERE agent = ip",
            "SELECT count(*) FROM t WHERE agent IS NOT NULL",
            "SELECT count(*) >= 0 FROM t WHERE concat(agent, random()) LIKE '%a%'",
        ] {
            let (plan, rows) = plan_and_rows(sql, true).await;
            assert!(!plan.contains("per_value("), "{sql}: {plan}");
            assert_eq!(rows, plan_and_rows(sql, false).await.1, "{sql}: {plan}");
        }
    }

    #[test]
    fn positions_map_rows_to_distinct_views_and_give_up_on_distinct_columns() {
        let t = table();
        let few = t.column(0).as_string_view();
        let (keys, firsts) = PerValue::positions(few).unwrap();
        assert_eq!(firsts.len(), 5, "four values and null");
        for (row, key) in keys.values().iter().enumerate() {
            let first = firsts.value(*key as usize) as usize;
            assert_eq!(few.is_null(row), few.is_null(first));
            if few.is_valid(row) {
                assert_eq!(few.value(row), few.value(first));
            }
        }
        assert!(PerValue::positions(t.column(1).as_string_view()).is_none());
    }
}
