//! Several `DISTINCT` aggregates over different columns, as one grouped aggregate each.
//!
//! DataFusion computes `SELECT count(DISTINCT a), count(DISTINCT b) FROM t` with one hash set
//! per column in each partition, then merges all the sets in a single thread: on the lake's
//! 4.5M request IDs that merge alone took most of the query. It rewrites one distinct column
//! into a parallel `GROUP BY` (`SingleDistinctToGroupBy`), but not two or more. This rule does
//! that for each column of an ungrouped aggregate and joins the one-row results, as DuckDB does:
//!
//! ```text
//! SELECT count(DISTINCT a), count(DISTINCT b), max(c) FROM t
//!   =>  (SELECT count(v) FROM (SELECT a AS v FROM t GROUP BY a))
//!       CROSS JOIN (SELECT count(v) FROM (SELECT b AS v FROM t GROUP BY b))
//!       CROSS JOIN (SELECT max(c) FROM t)
//! ```
//!
//! Each branch reads the table again, but only its own column, so this applies only where that
//! is cheap and gives the same rows each time: the input is scans, filters and projections
//! without volatile functions or row limits. The distinct aggregates must be `count`, `sum`,
//! `avg`, `min` or `max` of one argument (which ignore the `NULL` group) without `FILTER` or
//! `ORDER BY`. A grouped query with one distinct column beside counts is split into two
//! group-bys instead ([`grouped_with_counts`]), which reads its input once.

use std::sync::Arc;

use datafusion::common::tree_node::{Transformed, TreeNode};
use datafusion::common::{Column, Result};
use datafusion::logical_expr::expr::AggregateFunction;
use datafusion::logical_expr::{Aggregate, AggregateUDF, Expr, LogicalPlan, LogicalPlanBuilder};
use datafusion::optimizer::optimizer::ApplyOrder;
use datafusion::optimizer::{OptimizerConfig, OptimizerRule};

/// The optimizer rule (see the module's documentation).
#[derive(Debug, Default)]
pub struct MultiDistinctToCrossJoin;

/// Aggregates whose result over a column's distinct values is their `DISTINCT` result.
const SET_AGGREGATES: &[&str] = &["count", "sum", "avg", "min", "max"];

impl OptimizerRule for MultiDistinctToCrossJoin {
    fn name(&self) -> &str {
        "prism_multi_distinct_to_cross_join"
    }

    fn apply_order(&self) -> Option<ApplyOrder> {
        Some(ApplyOrder::TopDown)
    }

    fn supports_rewrite(&self) -> bool {
        true
    }

    fn rewrite(&self, plan: LogicalPlan, _config: &dyn OptimizerConfig) -> Result<Transformed<LogicalPlan>> {
        let LogicalPlan::Aggregate(aggregate) = &plan else { return Ok(Transformed::no(plan)) };
        match rewrite(aggregate)? {
            Some(rewritten) => Ok(Transformed::yes(rewritten)),
            None => Ok(Transformed::no(plan)),
        }
    }
}

/// The name of aggregate `i`'s result inside the rewritten plan.
fn slot(i: usize) -> String {
    format!("__prism_aggregate_{i}")
}

/// The name of the distinct argument's values inside the rewritten plan.
const VALUE: &str = "__prism_value";

fn column(name: &str) -> Expr {
    Expr::Column(Column::from_name(name))
}

/// One of the aggregate's expressions: an aggregate function, and the argument of its
/// `DISTINCT` if it has one. `None` for what neither form rewrites: no aggregate function, or
/// a distinct one other than a set aggregate of one argument without `FILTER` or `ORDER BY`.
fn classify(expr: &Expr) -> Option<(&AggregateFunction, Option<&Expr>)> {
    let Expr::AggregateFunction(f) = expr else { return None };
    let p = &f.params;
    if !p.distinct {
        return Some((f, None));
    }
    let [arg] = p.args.as_slice() else { return None };
    let plain_call = p.filter.is_none() && p.order_by.is_empty();
    (plain_call && SET_AGGREGATES.contains(&f.func.name())).then_some((f, Some(arg)))
}

/// `func(args)` without `DISTINCT`, `FILTER` or `ORDER BY`, with `f`'s null treatment.
fn call(f: &AggregateFunction, func: Arc<AggregateUDF>, args: Vec<Expr>) -> Expr {
    Expr::AggregateFunction(AggregateFunction::new_udf(func, args, false, None, vec![], f.params.null_treatment))
}

/// `plan` with its columns `names` renamed to the aggregate's own names and qualifiers, so
/// that the plan above reads the same columns.
fn renamed(aggregate: &Aggregate, plan: LogicalPlanBuilder, names: impl Iterator<Item = String>) -> Result<LogicalPlan> {
    let names = names.enumerate().map(|(i, name)| {
        let (qualifier, field) = aggregate.schema.qualified_field(i);
        column(&name).alias_qualified(qualifier.cloned(), field.name())
    });
    plan.project(names)?.build()
}

fn rewrite(aggregate: &Aggregate) -> Result<Option<LogicalPlan>> {
    if !aggregate.group_expr.is_empty() {
        return grouped_with_counts(aggregate);
    }
    if !cheap_to_repeat(&aggregate.input)? {
        return Ok(None);
    }
    // The distinct arguments in order of first use, each with the aggregates over it.
    let mut distinct: Vec<(&Expr, Vec<(usize, &AggregateFunction)>)> = Vec::new();
    let mut plain: Vec<Expr> = Vec::new();
    for (i, expr) in aggregate.aggr_expr.iter().enumerate() {
        match classify(expr) {
            None => return Ok(None),
            Some((_, None)) => plain.push(expr.clone().alias(slot(i))),
            Some((f, Some(arg))) => match distinct.iter_mut().find(|(a, _)| *a == arg) {
                Some((_, uses)) => uses.push((i, f)),
                None => distinct.push((arg, vec![(i, f)])),
            },
        }
    }
    if distinct.len() < 2 {
        return Ok(None);
    }
    let input = &aggregate.input;
    let mut branches = Vec::with_capacity(distinct.len() + 1);
    for (arg, uses) in distinct {
        let values = LogicalPlanBuilder::from(input.as_ref().clone()).aggregate(vec![arg.clone().unalias().alias(VALUE)], Vec::<Expr>::new())?;
        let results: Vec<Expr> = uses.into_iter().map(|(i, f)| call(f, Arc::clone(&f.func), vec![column(VALUE)]).alias(slot(i))).collect();
        branches.push(values.aggregate(Vec::<Expr>::new(), results)?.build()?);
    }
    if !plain.is_empty() {
        branches.push(LogicalPlanBuilder::from(input.as_ref().clone()).aggregate(Vec::<Expr>::new(), plain)?.build()?);
    }
    let mut branches = branches.into_iter();
    let Some(first) = branches.next() else { return Ok(None) };
    let mut joined = LogicalPlanBuilder::from(first);
    for branch in branches {
        joined = joined.cross_join(branch)?;
    }
    Ok(Some(renamed(aggregate, joined, (0..aggregate.aggr_expr.len()).map(slot))?))
}

/// `SELECT g, count(*), count(DISTINCT x) FROM t GROUP BY g` as two group-bys, the first by
/// `g` and `x` with partial counts, the second by `g`: DataFusion rewrites a grouped distinct
/// aggregate so only when the others are `sum`, `min` or `max`, and otherwise keeps a hash set
/// of `x` per group, merged in one thread (the join of the events with the ingest journal spent
/// most of its time there). Here the other aggregates may also be `count`, whose partial
/// counts are then summed; the distinct ones must all be over the same single argument.
fn grouped_with_counts(aggregate: &Aggregate) -> Result<Option<LogicalPlan>> {
    if matches!(aggregate.group_expr.first(), Some(Expr::GroupingSet(_))) {
        return Ok(None);
    }
    let Some(uses) = aggregate.aggr_expr.iter().map(classify).collect::<Option<Vec<_>>>() else { return Ok(None) };
    let mut value: Option<&Expr> = None;
    let mut any_count = false;
    for (f, distinct) in &uses {
        match distinct {
            Some(arg) if value.is_none_or(|v| v == *arg) => value = Some(arg),
            Some(_) => return Ok(None),
            None => {
                let name = f.func.name();
                if f.params.filter.is_some() || !f.params.order_by.is_empty() || !matches!(name, "count" | "sum" | "min" | "max") {
                    return Ok(None);
                }
                any_count |= name == "count";
            }
        }
    }
    // Without a plain count, DataFusion's own rule applies; without a distinct one, none is needed.
    let (Some(value), true) = (value, any_count) else { return Ok(None) };
    let groups = aggregate.group_expr.len();
    let group = |i: usize| format!("__prism_group_{i}");
    let partial = |i: usize| format!("__prism_partial_{i}");
    let mut inner_groups: Vec<Expr> = aggregate.group_expr.iter().enumerate().map(|(i, g)| g.clone().unalias().alias(group(i))).collect();
    inner_groups.push(value.clone().unalias().alias(VALUE));
    let mut inner = Vec::new();
    let mut outer = Vec::new();
    for (i, (f, distinct)) in uses.into_iter().enumerate() {
        let (func, arg) = if distinct.is_some() {
            (Arc::clone(&f.func), column(VALUE))
        } else {
            inner.push(call(f, Arc::clone(&f.func), f.params.args.clone()).alias(partial(i)));
            // Counts of the partial groups add up; sums, minima and maxima combine as themselves.
            let func = if f.func.name() == "count" { datafusion::functions_aggregate::sum::sum_udaf() } else { Arc::clone(&f.func) };
            (func, column(&partial(i)))
        };
        outer.push(call(f, func, vec![arg]).alias(slot(i)));
    }
    let plan = LogicalPlanBuilder::from(aggregate.input.as_ref().clone())
        .aggregate(inner_groups, inner)?
        .aggregate((0..groups).map(|i| column(&group(i))).collect::<Vec<_>>(), outer)?;
    Ok(Some(renamed(aggregate, plan, (0..groups).map(group).chain((0..aggregate.aggr_expr.len()).map(slot)))?))
}

/// Whether `plan` can be computed once per branch with the same rows each time, at the cost of
/// reading the columns each branch needs: scans, filters and projections, nothing volatile,
/// no row limit (a limited scan may return different rows each time).
fn cheap_to_repeat(plan: &LogicalPlan) -> Result<bool> {
    let costly = plan.exists(|node| {
        let shape = match node {
            LogicalPlan::TableScan(scan) => scan.fetch.is_none(),
            LogicalPlan::Filter(_) | LogicalPlan::Projection(_) | LogicalPlan::SubqueryAlias(_) => true,
            _ => false,
        };
        Ok(!shape || node.expressions().iter().any(Expr::is_volatile))
    })?;
    Ok(!costly)
}

#[cfg(test)]
mod tests {
    use datafusion::prelude::SessionContext;

    use super::*;

    /// The optimized plan and the printed result of `sql`, with or without the rule.
    async fn plan_and_rows(sql: &str, rule: bool) -> (String, String) {
        let builder = datafusion::execution::SessionStateBuilder::new().with_default_features();
        let builder = if rule { builder.with_optimizer_rule(Arc::new(MultiDistinctToCrossJoin)) } else { builder };
        let ctx = SessionContext::new_with_state(builder.build());
        ctx.sql("CREATE TABLE t (a INT, b VARCHAR, c DOUBLE) AS VALUES (1, 'x', 1.5), (1, 'y', NULL), (2, NULL, 2.5), (NULL, 'x', 2.5), (3, 'z', 4.0)")
            .await
            .unwrap();
        let df = ctx.sql(sql).await.unwrap();
        let plan = df.clone().into_optimized_plan().unwrap().display_indent().to_string();
        let batches = df.collect().await.unwrap();
        (plan, arrow::util::pretty::pretty_format_batches(&batches).unwrap().to_string())
    }

    /// No aggregate node of `plan` computes a `DISTINCT` (the final projection keeps the names).
    fn no_distinct_aggregate(plan: &str) -> bool {
        plan.lines().filter(|l| l.trim_start().starts_with("Aggregate")).all(|l| !l.contains("DISTINCT"))
    }

    #[tokio::test]
    async fn several_distinct_columns_become_one_group_by_each_with_the_same_answer() {
        for sql in [
            "SELECT count(DISTINCT a) AS na, count(DISTINCT b), sum(DISTINCT c), count(*) AS n, max(c) FROM t",
            "SELECT avg(DISTINCT c), count(DISTINCT b), min(DISTINCT a), count(DISTINCT a) FROM t WHERE c > 2",
            "SELECT count(DISTINCT a), count(DISTINCT b) FROM t WHERE a > 100",
            "SELECT count(DISTINCT a) + 1 AS x, count(DISTINCT upper(b)) FROM (SELECT a, b FROM t WHERE c IS NOT NULL) s",
        ] {
            let (plan, rows) = plan_and_rows(sql, true).await;
            assert!(plan.contains("Cross Join") && no_distinct_aggregate(&plan), "{sql}: {plan}");
            assert_eq!(rows, plan_and_rows(sql, false).await.1, "{sql}: {plan}");
        }
        for sql in [
            "SELECT b, count(*) AS n, count(DISTINCT a), max(c), count(c) FROM t GROUP BY b ORDER BY b",
            "SELECT a % 2 AS odd, count(DISTINCT b), max(DISTINCT b), count(*), min(c), sum(a) FROM t GROUP BY a % 2 ORDER BY 1",
        ] {
            let (plan, rows) = plan_and_rows(sql, true).await;
            assert!(plan.contains("__prism_partial") && no_distinct_aggregate(&plan), "{sql}: {plan}");
            assert_eq!(rows, plan_and_rows(sql, false).await.1, "{sql}: {plan}");
        }
        let (_, rows) = plan_and_rows("SELECT count(DISTINCT a), count(DISTINCT b), sum(DISTINCT c) FROM t", true).await;
        // a: 1, 2, 3 (NULL is no value); b: x, y, z; c: 1.5 + 2.5 + 4.0, each value once.
        assert!(rows.contains("| 3                   | 3                   | 8.0               |"), "{rows}");
    }

    #[tokio::test]
    async fn what_the_rule_cannot_do_the_same_is_left_alone() {
        for sql in [
            "SELECT count(DISTINCT a), count(*) FROM t",
            "SELECT b, count(DISTINCT a), count(DISTINCT c) FROM t GROUP BY b",
            "SELECT b, count(DISTINCT a), count(DISTINCT c), count(*) FROM t GROUP BY b",
            "SELECT b, count(DISTINCT a), avg(c) FROM t GROUP BY b",
            "SELECT b, count(DISTINCT a), count(*) FILTER (WHERE c > 1) FROM t GROUP BY b",
            "SELECT count(DISTINCT a), count(DISTINCT b) FROM t WHERE random() < 2",
            "SELECT count(DISTINCT a), count(DISTINCT b) FROM (SELECT * FROM t LIMIT 3)",
            "SELECT count(DISTINCT a) FILTER (WHERE c > 2), count(DISTINCT b) FROM t",
            "SELECT string_agg(DISTINCT b, ','), count(DISTINCT a) FROM t",
        ] {
            let (plan, _) = plan_and_rows(sql, true).await;
            assert!(!plan.contains("__prism"), "{sql}: {plan}");
        }
    }
}
