//! A filter on a column that is mostly null reads the other columns only where it holds.
//!
//! `WHERE errorcode IS NOT NULL` keeps 24K of 4.5M events, yet a scan decodes every column it
//! returns for all 4.5M rows and the filter drops them afterwards. Parquet's reader can
//! instead evaluate the filter first and decode the other columns only for the rows it keeps
//! (DataFusion's `pushdown_filters`); that costs more than it saves for a filter that keeps
//! many rows (measured: the query suite slower with it on everywhere, regex and JSON filters
//! 2–3×). The log's per-file null counts (`sql::scan`) tell when a filter keeps few rows: a
//! condition that only holds where a column is not null (`IS NOT NULL`, a comparison with a
//! literal) keeps at most that column's non-null rows. [`SparseFilters`] turns the reader's
//! filtering on for a scan whose predicate has such a condition on a column at least
//! [`SPARSE`] null across the scan's files, when every condition of the predicate is that
//! cheap (so the reader evaluates nothing costly per row). The filter above the scan stays:
//! answers do not change.
//!
//! Such a scan also leaves the page index unread unless a condition is on `eventtime`, the
//! column the events files are sorted by (other tables' scans of mostly null columns leave it
//! unread too): a page of 2,048 rows is all null only where the column's
//! values cluster, which only time does in the lake, and reading every column's page index
//! of each file cost more than it pruned (errors-only group-by by identity 65 → 56 ms).

use std::sync::Arc;

use datafusion::common::config::ConfigOptions;
use datafusion::common::stats::Precision;
use datafusion::common::tree_node::{Transformed, TransformedResult, TreeNode};
use datafusion::datasource::physical_plan::{FileScanConfig, FileScanConfigBuilder, FileSource, ParquetSource};
use datafusion::datasource::source::DataSourceExec;
use datafusion::error::Result;
use datafusion::logical_expr::Operator;
use datafusion::physical_expr::PhysicalExpr;
use datafusion::physical_expr::expressions::{BinaryExpr, Column, IsNotNullExpr, Literal};
use datafusion::physical_expr::split_conjunction;
use datafusion::physical_optimizer::PhysicalOptimizerRule;
use datafusion::physical_plan::ExecutionPlan;

/// The share of null rows from which a column's null-rejecting filter counts as sparse.
pub const SPARSE: f64 = 0.9;

/// The physical optimizer rule (see the module doc).
#[derive(Debug, Default)]
pub struct SparseFilters;

impl PhysicalOptimizerRule for SparseFilters {
    fn optimize(&self, plan: Arc<dyn ExecutionPlan>, _config: &ConfigOptions) -> Result<Arc<dyn ExecutionPlan>> {
        plan.transform_up(|node| {
            let Some(config) = super::plan_rules::file_scan(&node) else {
                return Ok(Transformed::no(node));
            };
            let Some(source) = config.file_source().downcast_ref::<ParquetSource>() else { return Ok(Transformed::no(node)) };
            let Some(predicate) = FileSource::filter(source) else { return Ok(Transformed::no(node)) };
            if source.table_parquet_options().global.pushdown_filters || !sparse(&predicate, config) {
                return Ok(Transformed::no(node));
            }
            let by_time = datafusion::physical_expr::utils::collect_columns(&predicate).iter().any(|c| c.name() == crate::schema::EVENT_TIME);
            let source = source.clone().with_pushdown_filters(true).with_enable_page_index(by_time && source.table_parquet_options().global.enable_page_index);
            let config = FileScanConfigBuilder::from(config.clone()).with_source(Arc::new(source)).build();
            Ok(Transformed::yes(DataSourceExec::from_data_source(config) as Arc<dyn ExecutionPlan>))
        })
        .data()
    }

    fn name(&self) -> &str {
        "sparse_filters"
    }

    fn schema_check(&self) -> bool {
        true
    }
}

/// The column a condition requires to be non-null, if it is one of the cheap conditions:
/// `column IS NOT NULL` or `column <op> literal` (either way round).
fn cheap_condition(e: &Arc<dyn PhysicalExpr>) -> Option<&Column> {
    if let Some(not_null) = e.downcast_ref::<IsNotNullExpr>() {
        return not_null.arg().downcast_ref::<Column>();
    }
    let binary = e.downcast_ref::<BinaryExpr>()?;
    let comparison = matches!(binary.op(), Operator::Eq | Operator::NotEq | Operator::Lt | Operator::LtEq | Operator::Gt | Operator::GtEq);
    let (l, r) = (binary.left(), binary.right());
    let column = match (l.downcast_ref::<Column>(), r.downcast_ref::<Column>()) {
        (Some(c), None) if r.downcast_ref::<Literal>().is_some() => c,
        (None, Some(c)) if l.downcast_ref::<Literal>().is_some() => c,
        _ => return None,
    };
    comparison.then_some(column)
}

/// Whether every condition of `predicate` is cheap and one of them is on a column that the
/// scan's files say is at least [`SPARSE`] null.
fn sparse(predicate: &Arc<dyn PhysicalExpr>, config: &FileScanConfig) -> bool {
    let mut columns = Vec::new();
    for condition in split_conjunction(predicate) {
        match cheap_condition(condition) {
            Some(column) => columns.push(column.name()),
            None => return false,
        }
    }
    let schema = config.file_source().table_schema().table_schema();
    columns.into_iter().any(|name| {
        let Ok(index) = schema.index_of(name) else { return false };
        let (mut nulls, mut rows) = (0usize, 0usize);
        for file in config.file_groups.iter().flat_map(|g| g.iter()) {
            let Some(statistics) = &file.statistics else { return false };
            let (Precision::Exact(n), Precision::Exact(r)) =
                (statistics.column_statistics.get(index).map_or(Precision::Absent, |c| c.null_count), statistics.num_rows)
            else {
                return false;
            };
            nulls += n;
            rows += r;
        }
        rows > 0 && nulls as f64 >= SPARSE * rows as f64
    })
}

#[cfg(test)]
mod tests {
    use arrow::array::{Int64Array, RecordBatch, StringArray};
    use arrow::datatypes::{DataType, Field, Schema};
    use datafusion::prelude::{ParquetReadOptions, SessionContext};
    use parquet::arrow::ArrowWriter;
    use parquet::file::properties::WriterProperties;

    use super::*;

    /// Two files of 10,000 rows: `code` set on one row in 50, `half` on every other row, `v`
    /// and `eventtime` the row's number.
    fn write_files(dir: &std::path::Path) {
        let schema = Arc::new(Schema::new(vec![
            Field::new("code", DataType::Utf8, true),
            Field::new("half", DataType::Utf8, true),
            Field::new("v", DataType::Int64, false),
            Field::new("eventtime", DataType::Int64, false),
        ]));
        for f in 0..2i64 {
            let rows = (f * 10_000)..((f + 1) * 10_000);
            let batch = RecordBatch::try_new(
                Arc::clone(&schema),
                vec![
                    Arc::new(StringArray::from_iter(rows.clone().map(|i| (i % 50 == 7).then(|| ["Denied", "Throttled"][(i % 3 == 0) as usize])))),
                    Arc::new(StringArray::from_iter(rows.clone().map(|i| (i % 2 == 0).then_some("x")))),
                    Arc::new(Int64Array::from_iter_values(rows.clone())),
                    Arc::new(Int64Array::from_iter_values(rows)),
                ],
            )
            .unwrap();
            let props = WriterProperties::builder().set_max_row_group_row_count(Some(1_000)).build();
            let mut writer = ArrowWriter::try_new(std::fs::File::create(dir.join(format!("f{f}.parquet"))).unwrap(), Arc::clone(&schema), Some(props)).unwrap();
            writer.write(&batch).unwrap();
            writer.close().unwrap();
        }
    }

    /// The answer of `sql`, and the rows the reader's own filtering dropped, with or without
    /// the rule.
    async fn run(dir: &std::path::Path, sql: &str, rule: bool) -> (String, usize) {
        let (answer, dropped, _) = run_with_page_index(dir, sql, rule).await;
        (answer, dropped)
    }

    /// [`run`], and whether the scan reads the page index.
    async fn run_with_page_index(dir: &std::path::Path, sql: &str, rule: bool) -> (String, usize, bool) {
        let builder = datafusion::execution::SessionStateBuilder::new().with_default_features();
        let builder = if rule { builder.with_physical_optimizer_rule(Arc::new(SparseFilters)) } else { builder };
        let ctx = SessionContext::new_with_state(builder.build());
        ctx.register_parquet("e", dir.to_str().unwrap(), ParquetReadOptions::default()).await.unwrap();
        let plan = ctx.sql(sql).await.unwrap().create_physical_plan().await.unwrap();
        let batches = datafusion::physical_plan::collect(Arc::clone(&plan), ctx.task_ctx()).await.unwrap();
        let mut dropped = 0;
        plan.apply(|node| {
            if let Some(metrics) = node.metrics() {
                dropped += metrics.sum_by_name("pushdown_rows_pruned").map_or(0, |v| v.as_usize());
            }
            Ok(datafusion::common::tree_node::TreeNodeRecursion::Continue)
        })
        .unwrap();
        let mut page_index = false;
        plan.apply(|node| {
            if let Some(source) = super::super::plan_rules::file_scan(node).and_then(|c| c.file_source().downcast_ref::<ParquetSource>()) {
                page_index = source.table_parquet_options().global.enable_page_index;
            }
            Ok(datafusion::common::tree_node::TreeNodeRecursion::Continue)
        })
        .unwrap();
        (arrow::util::pretty::pretty_format_batches(&batches).unwrap().to_string(), dropped, page_index)
    }

    #[tokio::test]
    async fn a_filter_on_a_mostly_null_column_is_evaluated_by_the_reader() {
        let dir = tempfile::tempdir().unwrap();
        write_files(dir.path());
        for sql in
            ["SELECT count(*), sum(v) FROM e WHERE code IS NOT NULL", "SELECT code, count(*), sum(v) FROM e WHERE code = 'Denied' AND v > 100 GROUP BY 1"]
        {
            let (answer, dropped) = run(dir.path(), sql, false).await;
            assert_eq!(dropped, 0, "{sql}");
            let (same, dropped) = run(dir.path(), sql, true).await;
            assert_eq!(answer, same, "{sql}");
            assert!(dropped > 19_000, "{sql}: {dropped} rows dropped by the reader");
        }
        assert!(run(dir.path(), "SELECT count(*) FROM e WHERE code IS NOT NULL", true).await.0.contains("| 400 "));
        // The page index is left unread, unless a condition is on the time the files are sorted by.
        assert!(run_with_page_index(dir.path(), "SELECT count(*) FROM e WHERE code IS NOT NULL", false).await.2);
        assert!(!run_with_page_index(dir.path(), "SELECT count(*) FROM e WHERE code IS NOT NULL", true).await.2);
        let (_, dropped, page_index) = run_with_page_index(dir.path(), "SELECT count(*) FROM e WHERE code IS NOT NULL AND eventtime > 100", true).await;
        assert!(dropped > 19_000 && page_index, "{dropped} rows dropped by the reader");
        // A column half null, or a costly condition beside the sparse one: left to the filter.
        for sql in ["SELECT count(*) FROM e WHERE half IS NOT NULL", "SELECT count(*) FROM e WHERE code IS NOT NULL AND half LIKE '%x%'"] {
            let (answer, _) = run(dir.path(), sql, false).await;
            assert_eq!(run(dir.path(), sql, true).await, (answer, 0), "{sql}");
        }
    }
}
