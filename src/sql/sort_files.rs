//! A top-N by a column reads first the files whose statistics put them nearest the top.
//!
//! `ORDER BY eventtime DESC LIMIT 100` keeps a threshold, DataFusion's dynamic filter, that
//! skips every file and row group past it; but it only tightens as rows arrive, and a scan
//! reads its files in the log's order, oldest first, each partition from its own stretch of
//! time. DataFusion orders a scan's files by statistics for a sort only where every sort key
//! has them (`ORDER BY eventtime DESC, eventid` does not: the log keeps none for `eventid`),
//! and only within each partition. [`SortFiles`] orders them by the first key's bounds from
//! the log (`sql::scan` gives each file its statistics): newest maximum first for a descending
//! key, oldest minimum first for an ascending one. It deals them out to the partitions in
//! turn, so each partition starts near the top. The order of files is all it changes: every
//! file is still read or pruned as before, so answers do not depend on it.

use std::cmp::Ordering;
use std::sync::Arc;

use datafusion::common::ScalarValue;
use datafusion::common::config::ConfigOptions;
use datafusion::common::tree_node::{Transformed, TransformedResult, TreeNode};
use datafusion::datasource::listing::PartitionedFile;
use datafusion::datasource::physical_plan::{FileGroup, FileScanConfig, FileScanConfigBuilder};
use datafusion::datasource::source::DataSourceExec;
use datafusion::error::Result;
use datafusion::physical_expr::expressions::Column;
use datafusion::physical_optimizer::PhysicalOptimizerRule;
use datafusion::physical_plan::filter::FilterExec;
use datafusion::physical_plan::repartition::RepartitionExec;
use datafusion::physical_plan::sorts::sort::SortExec;
use datafusion::physical_plan::{ChildrenPropertiesMode, ExecutionPlan, ReplaceChildrenOptions};

/// The physical optimizer rule (see the module doc).
#[derive(Debug, Default)]
pub struct SortFiles;

impl PhysicalOptimizerRule for SortFiles {
    fn optimize(&self, plan: Arc<dyn ExecutionPlan>, _config: &ConfigOptions) -> Result<Arc<dyn ExecutionPlan>> {
        plan.transform_down(|node| {
            let Some(sort) = node.downcast_ref::<SortExec>() else { return Ok(Transformed::no(node)) };
            let first = sort.expr().first();
            let Some(column) = first.expr.downcast_ref::<Column>().map(|c| c.name().to_string()) else { return Ok(Transformed::no(node)) };
            let descending = first.options.descending;
            if sort.fetch().is_none() {
                return Ok(Transformed::no(node));
            }
            match reordered(sort.input(), &column, descending)? {
                Some(input) => Ok(Transformed::yes(Arc::clone(&node).replace_children(vec![input], recompute())?)),
                None => Ok(Transformed::no(node)),
            }
        })
        .data()
    }

    fn name(&self) -> &str {
        "sort_files"
    }

    fn schema_check(&self) -> bool {
        true
    }
}

fn recompute() -> ReplaceChildrenOptions {
    ReplaceChildrenOptions::new(ChildrenPropertiesMode::Recompute)
}

/// `plan` with the files of its scan in `column`'s order, through filters (without a
/// projection) and repartitions, which keep the scan's columns; None where there is no such
/// scan, the column has no statistics, or the scan's order is declared and must stay.
fn reordered(plan: &Arc<dyn ExecutionPlan>, column: &str, descending: bool) -> Result<Option<Arc<dyn ExecutionPlan>>> {
    let passes = plan.downcast_ref::<FilterExec>().is_some_and(|f| f.projection().is_none()) || plan.downcast_ref::<RepartitionExec>().is_some();
    if passes {
        let [child] = &plan.children()[..] else { return Ok(None) };
        return match reordered(child, column, descending)? {
            Some(child) => Ok(Some(Arc::clone(plan).replace_children(vec![child], recompute())?)),
            None => Ok(None),
        };
    }
    let Some(config) = plan.downcast_ref::<DataSourceExec>().and_then(|d| d.data_source().downcast_ref::<FileScanConfig>()) else { return Ok(None) };
    if !config.output_ordering.is_empty() || config.preserve_order {
        return Ok(None);
    }
    let Ok(index) = config.file_source().table_schema().table_schema().index_of(column) else { return Ok(None) };
    let bound = |file: &PartitionedFile| -> Option<ScalarValue> {
        let statistics = file.statistics.as_ref()?.column_statistics.get(index)?;
        let bound = if descending { &statistics.max_value } else { &statistics.min_value };
        bound.get_value().cloned()
    };
    let mut files: Vec<(Option<ScalarValue>, PartitionedFile)> = config.file_groups.iter().flat_map(|g| g.iter()).map(|f| (bound(f), f.clone())).collect();
    if files.iter().all(|(b, _)| b.is_none()) {
        return Ok(None);
    }
    // Files without a bound go last; the sort is stable, so ties keep the log's order.
    files.sort_by(|(a, _), (b, _)| match (a, b) {
        (Some(a), Some(b)) => {
            let order = a.partial_cmp(b).unwrap_or(Ordering::Equal);
            if descending { order.reverse() } else { order }
        }
        (Some(_), None) => Ordering::Less,
        (None, Some(_)) => Ordering::Greater,
        (None, None) => Ordering::Equal,
    });
    let partitions = config.file_groups.len().max(1);
    let mut groups: Vec<Vec<PartitionedFile>> = vec![Vec::new(); partitions];
    for (i, (_, file)) in files.into_iter().enumerate() {
        groups[i % partitions].push(file);
    }
    let config = FileScanConfigBuilder::from(config.clone()).with_file_groups(groups.into_iter().map(FileGroup::new).collect()).build();
    Ok(Some(DataSourceExec::from_data_source(config)))
}

#[cfg(test)]
mod tests {
    use arrow::array::{Int64Array, RecordBatch, TimestampMicrosecondArray};
    use arrow::datatypes::{DataType, Field, Schema, TimeUnit};
    use datafusion::prelude::{ParquetReadOptions, SessionConfig, SessionContext};
    use parquet::arrow::ArrowWriter;
    use parquet::file::properties::WriterProperties;

    use super::*;

    /// Six files of an hour each (`f0` the oldest), written oldest first, in row groups of 100.
    fn write_files(dir: &std::path::Path) {
        let schema = Arc::new(Schema::new(vec![
            Field::new("ts", DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())), false),
            Field::new("v", DataType::Int64, false),
        ]));
        for f in 0..6i64 {
            let seconds = (0..1_000i64).map(|i| f * 3_600 + i * 3);
            let batch = RecordBatch::try_new(
                Arc::clone(&schema),
                vec![
                    Arc::new(TimestampMicrosecondArray::from_iter_values(seconds.clone().map(|s| s * 1_000_000)).with_timezone("UTC")),
                    Arc::new(Int64Array::from_iter_values(seconds.map(|s| s % 7))),
                ],
            )
            .unwrap();
            let props = WriterProperties::builder().set_max_row_group_row_count(Some(100)).build();
            let file = std::fs::File::create(dir.join(format!("f{f}.parquet"))).unwrap();
            let mut writer = ArrowWriter::try_new(file, Arc::clone(&schema), Some(props)).unwrap();
            writer.write(&batch).unwrap();
            writer.close().unwrap();
        }
    }

    /// The scan's file groups, the rows it read and the answer of `sql`, with or without the rule.
    async fn run(dir: &std::path::Path, sql: &str, rule: bool) -> (String, usize, String) {
        let builder = datafusion::execution::SessionStateBuilder::new().with_default_features().with_config(SessionConfig::new().with_target_partitions(2));
        let builder = if rule { builder.with_physical_optimizer_rule(Arc::new(SortFiles)) } else { builder };
        let ctx = SessionContext::new_with_state(builder.build());
        ctx.register_parquet("e", dir.to_str().unwrap(), ParquetReadOptions::default()).await.unwrap();
        let plan = ctx.sql(sql).await.unwrap().create_physical_plan().await.unwrap();
        let batches = datafusion::physical_plan::collect(Arc::clone(&plan), ctx.task_ctx()).await.unwrap();
        let mut groups = String::new();
        let mut rows = 0;
        plan.apply(|node| {
            if let Some(config) = node.downcast_ref::<DataSourceExec>().and_then(|d| d.data_source().downcast_ref::<FileScanConfig>()) {
                let names = |g: &FileGroup| {
                    g.iter().map(|f| f.object_meta.location.filename().unwrap_or_default().trim_end_matches(".parquet").to_string()).collect::<Vec<_>>()
                };
                groups = format!("{:?}", config.file_groups.iter().map(names).collect::<Vec<_>>());
                rows = node.metrics().and_then(|m| m.output_rows()).unwrap_or(0);
            }
            Ok(datafusion::common::tree_node::TreeNodeRecursion::Continue)
        })
        .unwrap();
        (groups, rows, arrow::util::pretty::pretty_format_batches(&batches).unwrap().to_string())
    }

    #[tokio::test]
    async fn a_top_n_reads_the_files_nearest_the_top_first() {
        let dir = tempfile::tempdir().unwrap();
        write_files(dir.path());
        // Descending on a key with statistics, then one without (DataFusion would order the
        // files itself were every key a column with statistics).
        let newest = "SELECT ts, v FROM e ORDER BY ts DESC, v + 1 LIMIT 5";
        let (before, rows_before, answer) = run(dir.path(), newest, false).await;
        let (after, rows_after, same) = run(dir.path(), newest, true).await;
        assert_eq!(answer, same);
        assert!(answer.contains("1970-01-01T05:49:57Z"), "{answer}");
        assert_eq!(after, r#"[["f5", "f3", "f1"], ["f4", "f2", "f0"]]"#, "before: {before}");
        // How many rows each run reads depends on when the partitions' threshold tightens;
        // with the newest files first, no more than the newest row group of each partition.
        assert!(rows_after <= 200, "{rows_after} rows read with the rule, {rows_before} without");
        // Ascending: oldest first.
        let oldest = "SELECT ts, v FROM e ORDER BY ts, v + 1 LIMIT 5";
        let (_, _, answer) = run(dir.path(), oldest, false).await;
        let (after, _, same) = run(dir.path(), oldest, true).await;
        assert_eq!(answer, same);
        assert_eq!(after, r#"[["f0", "f2", "f4"], ["f1", "f3", "f5"]]"#);
        // No limit, or a first key that is not a column: the files stay as they are.
        for sql in ["SELECT ts, v FROM e ORDER BY ts DESC", "SELECT ts, v FROM e ORDER BY v + 1 DESC, ts LIMIT 5"] {
            let (before, _, answer) = run(dir.path(), sql, false).await;
            let (after, _, same) = run(dir.path(), sql, true).await;
            assert_eq!((before, answer), (after, same), "{sql}");
        }
    }
}
