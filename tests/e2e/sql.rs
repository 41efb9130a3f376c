//! `prism sql` and the session: refresh while open, time pruning, -c/-f/stdin, output files,
//! errors, and the interactive shell driven in a real terminal (tmux).

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::common::{log_path, prism_bin, record, run_ingest, text_column, write_gz};
use arrow::array::{AsArray, Int64Array, RecordBatch};
use arrow::datatypes::{DataType, Field, Schema};
use datafusion::common::tree_node::TreeNode;
use datafusion::physical_plan::ExecutionPlan;

/// Records with a few API names, so that a GROUP BY has a known answer.
fn records(prefix: &str, names: &[(&str, usize)], day: &str) -> Vec<serde_json::Value> {
    let mut out = Vec::new();
    for (name, n) in names {
        for i in 0..*n {
            let mut r = record(&format!("{prefix}-{name}-{i}"), &format!("{day}T10:{:02}:00Z", i % 60), "us-east-1");
            r["eventName"] = (*name).into();
            out.push(r);
        }
    }
    out
}

/// A lake of 9 events (5 DescribeInstances, 3 GetObject, 1 ListUsers) and one rejected record.
fn small_lake(dir: &Path) -> PathBuf {
    let archive = dir.join("archive");
    let mut recs = records("a", &[("DescribeInstances", 5), ("GetObject", 3), ("ListUsers", 1)], "2024-03-01");
    recs.push(serde_json::json!({"eventID": "broken", "eventTime": "not a time", "awsRegion": "us-east-1"}));
    write_gz(&log_path(&archive, "111122223333", "us-east-1", "20240301", "A"), &recs);
    let lake = dir.join("lake");
    let (code, _) = run_ingest(&[archive.to_str().unwrap(), "--lake", lake.to_str().unwrap()]);
    assert_eq!(code, 3, "one record is rejected");
    lake
}

/// A temporary folder holding [`small_lake`], and the lake's path.
fn fixture() -> (tempfile::TempDir, String) {
    let dir = tempfile::tempdir().unwrap();
    let lake = small_lake(dir.path()).to_str().unwrap().to_owned();
    (dir, lake)
}

fn prism(args: &[&str]) -> Output {
    Command::new(prism_bin()).args(args).output().unwrap()
}

fn prism_stdin(args: &[&str], stdin: &str) -> Output {
    use std::io::Write;
    let mut child = Command::new(prism_bin()).args(args).stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    child.stdin.take().unwrap().write_all(stdin.as_bytes()).unwrap();
    child.wait_with_output().unwrap()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

async fn count(ctx: &datafusion::prelude::SessionContext, sql: &str) -> i64 {
    let batches = ctx.sql(sql).await.unwrap().collect().await.unwrap();
    let col = arrow::compute::cast(batches[0].column(0), &DataType::Int64).unwrap();
    col.as_any().downcast_ref::<Int64Array>().unwrap().value(0)
}

#[tokio::test(flavor = "multi_thread")]
async fn an_open_session_sees_later_ingests_and_new_tables() {
    let dir = tempfile::tempdir().unwrap();
    let lake_dir = small_lake(dir.path());
    let lake = prism::Lake::open(lake_dir.to_str().unwrap()).await.unwrap();
    let ctx = prism::sql::session(&lake).await.unwrap();
    assert_eq!(count(&ctx, "SELECT count(*) FROM events").await, 9);
    assert_eq!(count(&ctx, "SELECT count(*) FROM rejects").await, 1);
    assert_eq!(count(&ctx, "SELECT count(*) FROM ingested_files").await, 1);

    // Another process ingests more while the session stays open.
    let archive = dir.path().join("archive2");
    let mut recs = records("b", &[("GetObject", 4)], "2024-03-02");
    recs.push(serde_json::json!({"eventID": "broken2", "awsRegion": "us-east-1"}));
    write_gz(&log_path(&archive, "111122223333", "us-east-1", "20240302", "B"), &recs);
    let (code, _) = run_ingest(&[archive.to_str().unwrap(), "--lake", lake_dir.to_str().unwrap()]);
    assert_eq!(code, 3);
    assert_eq!(count(&ctx, "SELECT count(*) FROM events").await, 13, "the new commit is read without a new session");
    assert_eq!(count(&ctx, "SELECT count(*) FROM events WHERE eventname = 'GetObject'").await, 7);
    assert_eq!(count(&ctx, "SELECT count(*) FROM rejects").await, 2, "views follow the journal too");
    assert_eq!(count(&ctx, "SELECT count(*) FROM ingested_files").await, 2);

    // A table created after the session (as the insights or a rollup would be) is queryable.
    let schema = Arc::new(Schema::new(vec![Field::new("n", DataType::Int64, true)]));
    let writer = prism::Lake::open(lake_dir.to_str().unwrap()).await.unwrap();
    let table = writer.table("later_table", schema.clone(), &[]).await.unwrap();
    assert_eq!(count(&ctx, "SELECT count(*) FROM later_table").await, 0);
    let batch = RecordBatch::try_new(schema, vec![Arc::new(Int64Array::from(vec![1, 2, 3]))]).unwrap();
    prism::lake::append(&table, vec![batch], "later_table").await.unwrap();
    assert_eq!(count(&ctx, "SELECT sum(n) FROM later_table").await, 6);
    prism::sql::refresh(&ctx).await.unwrap();
    let names = common_names(&ctx).await;
    assert!(names.contains(&"later_table".to_owned()), "{names:?}");
    for t in ["events", "ingest_log", "rejects", "ingested_files"] {
        assert!(names.contains(&t.to_owned()), "{t} in {names:?}");
    }

    // Session tables coexist with the lake's; a lake table cannot be replaced or dropped.
    ctx.sql("CREATE VIEW gets AS SELECT * FROM events WHERE eventname = 'GetObject'").await.unwrap();
    assert_eq!(count(&ctx, "SELECT count(*) FROM gets").await, 7);
    assert!(ctx.sql("CREATE OR REPLACE VIEW events AS SELECT 1").await.is_err());
    assert!(ctx.sql("DROP TABLE events").await.is_err());
    assert_eq!(count(&ctx, "SELECT count(*) FROM events").await, 13);
}

async fn common_names(ctx: &datafusion::prelude::SessionContext) -> Vec<String> {
    let sql = "SELECT table_name FROM information_schema.tables WHERE table_schema = 'public'";
    let mut names = Vec::new();
    for b in ctx.sql(sql).await.unwrap().collect().await.unwrap() {
        let col = arrow::compute::cast(b.column(0), &DataType::Utf8).unwrap();
        names.extend(col.as_string::<i32>().iter().flatten().map(str::to_owned));
    }
    names
}

/// The distinct data files an executed plan's Parquet scans opened. Each file (or byte range of
/// a large file) handed to a scan is counted by its `files_ranges_pruned_statistics` metric as
/// matched or pruned; files pruned at planning from the Delta log are never handed to it.
fn files_read(plan: &Arc<dyn ExecutionPlan>) -> usize {
    fn walk(plan: &Arc<dyn ExecutionPlan>, files: &mut std::collections::HashSet<String>, ranges: &mut usize) {
        use datafusion::datasource::physical_plan::FileScanConfig;
        use datafusion::datasource::source::DataSourceExec;
        use datafusion::physical_plan::metrics::MetricValue;
        if let Some(config) = plan.downcast_ref::<DataSourceExec>().and_then(|s| s.data_source().downcast_ref::<FileScanConfig>()) {
            files.extend(config.file_groups.iter().flat_map(|g| g.iter()).map(|f| f.object_meta.location.to_string()));
            for m in plan.metrics().iter().flat_map(|m| m.iter()) {
                if let MetricValue::PruningMetrics { name, pruning_metrics } = m.value()
                    && name == "files_ranges_pruned_statistics"
                {
                    *ranges += pruning_metrics.matched();
                }
            }
        }
        for c in plan.children() {
            walk(c, files, ranges);
        }
    }
    let (mut files, mut ranges) = (std::collections::HashSet::new(), 0);
    walk(plan, &mut files, &mut ranges);
    assert!(ranges >= files.len(), "the scan opened {ranges} ranges of {} files", files.len());
    files.len()
}

/// Runs `sql` and returns (its first value, the data files the scan read).
async fn run_measured(ctx: &datafusion::prelude::SessionContext, sql: &str) -> (i64, usize) {
    let df = ctx.sql(sql).await.unwrap();
    let plan = df.create_physical_plan().await.unwrap();
    let batches = datafusion::physical_plan::collect(plan.clone(), ctx.task_ctx()).await.unwrap();
    let col = arrow::compute::cast(batches[0].column(0), &DataType::Int64).unwrap();
    let n = col.as_any().downcast_ref::<Int64Array>().unwrap().value(0);
    (n, files_read(&plan))
}

/// The physical plan of `sql`, as EXPLAIN prints it.
async fn physical_plan(ctx: &datafusion::prelude::SessionContext, sql: &str) -> String {
    let plan = ctx.sql(sql).await.unwrap().create_physical_plan().await.unwrap();
    datafusion::physical_plan::displayable(plan.as_ref()).indent(true).to_string()
}

/// What the lake's own scan (src/sql/scan.rs) gives DataFusion: a struct field is read alone,
/// `count(*)` of a table comes from the log, the partition and statistics columns prune files,
/// and a timestamp bound inside a file's last millisecond does not prune that file.
#[tokio::test(flavor = "multi_thread")]
async fn lake_tables_are_parquet_scans_pruned_by_the_delta_log() {
    let dir = tempfile::tempdir().unwrap();
    let archive = dir.path().join("archive");
    for (i, region) in ["us-east-1", "eu-west-1"].iter().enumerate() {
        let mut recs = records(&format!("r{i}"), &[("DescribeInstances", 4), ("GetObject", 2 + i)], "2024-03-01");
        for r in &mut recs {
            r["awsRegion"] = (*region).into();
        }
        write_gz(&log_path(&archive, "111122223333", region, "20240301", &format!("R{i}")), &recs);
    }
    let lake_dir = dir.path().join("lake");
    let (code, _) = run_ingest(&[archive.to_str().unwrap(), "--lake", lake_dir.to_str().unwrap(), "--granularity", "hour"]);
    assert_eq!(code, 0);
    let lake = prism::Lake::open(lake_dir.to_str().unwrap()).await.unwrap();
    let ctx = prism::sql::session(&lake).await.unwrap();

    // One struct field: the projection reaches the Parquet scan, which decodes that leaf only.
    let plan = physical_plan(&ctx, "SELECT useridentity['arn'] FROM events").await;
    let scan = plan.lines().find(|l| l.contains("DataSourceExec")).unwrap_or_else(|| panic!("{plan}"));
    assert!(scan.contains("get_field(useridentity"), "the field is read by the scan: {plan}");

    // count(*) of a whole table: answered from the log's row counts, no file is opened.
    let plan = physical_plan(&ctx, "SELECT count(*) FROM events").await;
    assert!(!plan.contains("DataSourceExec"), "{plan}");
    assert_eq!(count(&ctx, "SELECT count(*) FROM events").await, 13);
    assert_eq!(count(&ctx, "SELECT count(*) FROM events WHERE eventname = 'GetObject'").await, 5);

    // Partition values and per-file statistics choose the files.
    let (n, files) = run_measured(&ctx, "SELECT count(*) FROM events WHERE awsregion = 'eu-west-1'").await;
    assert_eq!((n, files), (7, 1), "one region's file");
    let (n, files) = run_measured(&ctx, "SELECT count(*) FROM events WHERE awsregion IN ('eu-west-1', 'ap-south-1')").await;
    assert_eq!((n, files), (7, 1), "a list of regions: the files of those in the lake");
    let (n, files) = run_measured(&ctx, "SELECT count(*) FROM events WHERE awsregion IS NULL").await;
    assert_eq!((n, files), (0, 0), "no file has a null region");
    let (n, files) = run_measured(&ctx, "SELECT count(*) FROM events WHERE recipientaccountid = '999999999999'").await;
    assert_eq!((n, files), (0, 0), "no file holds that account");
    let (n, files) = run_measured(&ctx, "SELECT count(*) FROM events WHERE eventtime > TIMESTAMP '2024-03-01T10:05:00Z'").await;
    assert_eq!((n, files), (0, 0), "every event is at 10:05 or before");

    // Delta keeps timestamp maxima truncated to the millisecond; the newest journal row (written
    // with microseconds) is still found by a bound just below it.
    let newest = {
        let batches = ctx.sql("SELECT CAST(max(ingestedat) AS VARCHAR) FROM ingest_log").await.unwrap().collect().await.unwrap();
        let col = arrow::compute::cast(batches[0].column(0), &DataType::Utf8).unwrap();
        col.as_string::<i32>().value(0).to_owned()
    };
    let sql = format!("SELECT count(*) FROM ingest_log WHERE ingestedat >= TIMESTAMP '{newest}'");
    assert!(count(&ctx, &sql).await >= 1, "{sql}");
}

#[tokio::test(flavor = "multi_thread")]
async fn time_ranges_top_n_and_sparse_filters_read_only_what_they_need() {
    let dir = tempfile::tempdir().unwrap();
    let archive = dir.path().join("archive");
    let lake_dir = dir.path().join("lake");
    let out = prism(&[
        "generate",
        "--out",
        archive.to_str().unwrap(),
        "--accounts",
        "1",
        "--regions",
        "us-east-1",
        "--days",
        "4",
        "--events-per-day",
        "2000",
        "--anomalies",
        "0",
        "--seed",
        "3",
        "--start",
        "2024-01-01",
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let (code, _) = run_ingest(&[archive.to_str().unwrap(), "--lake", lake_dir.to_str().unwrap(), "--granularity", "hour"]);
    assert_eq!(code, 0);

    let lake = prism::Lake::open(lake_dir.to_str().unwrap()).await.unwrap();
    let files: Vec<String> = lake.events().get_file_uris().unwrap().collect();
    let in_range: Vec<&String> = files.iter().filter(|f| (0..6).any(|h| f.contains(&format!("eventperiod=20240102T{h:02}Z/")))).collect();
    assert!(files.len() > 80 && !in_range.is_empty(), "{} files, {} in range", files.len(), in_range.len());

    let ctx = prism::sql::session(&lake).await.unwrap();
    let (all, scanned_all) = run_measured(&ctx, "SELECT count(*) FROM events WHERE eventname IS NOT NULL").await;
    assert_eq!(scanned_all, files.len(), "without a time filter every file is read");

    let range = "eventtime >= TIMESTAMP '2024-01-02T00:00:00Z' AND eventtime < TIMESTAMP '2024-01-02T06:00:00Z'";
    let (n, scanned) = run_measured(&ctx, &format!("SELECT count(*) FROM events WHERE {range}")).await;
    assert_eq!(scanned, in_range.len(), "only the files of 00:00-06:00 on Jan 2 are scanned ({} in the lake)", files.len());
    // The same rows as a filter the statistics cannot use.
    let (expected, scanned_unpruned) = run_measured(
        &ctx,
        "SELECT count(*) FROM events WHERE date_trunc('day', eventtime) = TIMESTAMP '2024-01-02T00:00:00Z' \
         AND extract(hour FROM eventtime) < 6",
    )
    .await;
    assert!(n > 0 && n == expected && n < all, "{n} rows in range, {expected} expected, {all} in all");
    assert!(scanned_unpruned > scanned);

    // BETWEEN and a one-sided range prune too.
    let (_, between) =
        run_measured(&ctx, "SELECT count(*) FROM events WHERE eventtime BETWEEN TIMESTAMP '2024-01-03T10:00:00Z' AND TIMESTAMP '2024-01-03T10:59:59Z'").await;
    assert!((1..=3).contains(&between), "one hour's partition: {between} files");
    let (_, tail) = run_measured(&ctx, "SELECT count(*) FROM events WHERE eventtime >= TIMESTAMP '2024-01-04T18:00:00Z'").await;
    assert!(tail < files.len() / 10, "the last hours: {tail} of {} files", files.len());

    // A top-N by time reads the newest files first (src/sql/sort_files.rs, with the files'
    // bounds from the log): the scan's first file is the newest hour's, few rows are read, and
    // the answer is the head of the full sort.
    let newest = files.iter().filter_map(|f| f.split("eventperiod=").nth(1)).map(|p| p.split('/').next().unwrap_or_default()).max().unwrap();
    let top = "SELECT eventid FROM events ORDER BY eventtime DESC, eventid LIMIT 10";
    let plan = ctx.sql(top).await.unwrap().create_physical_plan().await.unwrap();
    let batches = datafusion::physical_plan::collect(plan.clone(), ctx.task_ctx()).await.unwrap();
    let (first, read) = first_file_and_rows(&plan);
    assert!(first.contains(&format!("eventperiod={newest}/")), "the first file read is {first}, the newest hour {newest}");
    assert!(read < all as usize / 10, "{read} of {all} rows read");
    let full = ctx.sql("SELECT eventid FROM events ORDER BY eventtime DESC, eventid").await.unwrap().collect().await.unwrap();
    let ids = |b: &[RecordBatch]| b.iter().flat_map(|b| text_column(b, 0)).collect::<Vec<_>>();
    assert_eq!(ids(&batches), ids(&full)[..10]);

    // Errors are a few percent of the events: the log's null counts let the Parquet reader
    // apply `errorcode IS NOT NULL` itself (src/sql/sparse_filter.rs), with the same count.
    let errors = "SELECT count(*) FROM events WHERE errorcode IS NOT NULL";
    let plan = ctx.sql(errors).await.unwrap().create_physical_plan().await.unwrap();
    let batches = datafusion::physical_plan::collect(plan.clone(), ctx.task_ctx()).await.unwrap();
    let n = arrow::compute::cast(batches[0].column(0), &DataType::Int64).unwrap().as_primitive::<arrow::datatypes::Int64Type>().value(0);
    assert_eq!(n, count(&ctx, "SELECT count(errorcode) FROM events").await);
    assert!(n > 0 && n < all / 10, "{n} errors of {all} events");
    let mut dropped = 0;
    plan.apply(|node| {
        dropped += node.metrics().and_then(|m| m.sum_by_name("pushdown_rows_pruned")).map_or(0, |v| v.as_usize());
        Ok(datafusion::common::tree_node::TreeNodeRecursion::Continue)
    })
    .unwrap();
    // Files, row groups and pages without an error are skipped before, by their null counts.
    assert!(dropped > 0 && dropped as i64 <= all - n, "the reader dropped {dropped} rows of {all}");

    // Counts by a few-valued string, and filters on them, read the column as Parquet's
    // dictionary and keys (src/sql/dictionary.rs): the same answers as the rows themselves,
    // read as strings (passed on whole, which the rule leaves alone) and counted here.
    let rows = ctx.sql("SELECT useridentity['arn'], useragent, sourceipaddress FROM events").await.unwrap().collect().await.unwrap();
    let mut by_arn: std::collections::BTreeMap<Option<String>, i64> = Default::default();
    let mut matching = 0i64;
    for b in &rows {
        let (arns, agents, addresses) = (text_column(b, 0), text_column(b, 1), text_column(b, 2));
        for i in 0..b.num_rows() {
            *by_arn.entry(arns[i].clone()).or_default() += 1;
            let python = agents[i].as_deref().is_some_and(|a| a.contains("python"));
            matching += i64::from(python || addresses[i].as_deref().is_some_and(|a| a.starts_with("10.")));
        }
    }
    assert!(by_arn.len() > 3 && by_arn.contains_key(&None), "{by_arn:?}");
    // Counted from the Parquet pages (src/sql/page_count.rs), or, under a filter, from the
    // dictionary keys.
    for (top, shown) in [
        ("SELECT useridentity['arn'] AS arn, count(*) AS n FROM events GROUP BY 1 ORDER BY n DESC, arn NULLS FIRST", "PageCountExec"),
        (
            "SELECT useridentity['arn'] AS arn, count(*) AS n FROM events WHERE eventname <> '' GROUP BY 1 ORDER BY n DESC, arn NULLS FIRST",
            "DictionaryCastExec",
        ),
    ] {
        assert!(physical_plan(&ctx, top).await.contains(shown), "{}", physical_plan(&ctx, top).await);
        let counted = ctx.sql(top).await.unwrap().collect().await.unwrap();
        let mut got: std::collections::BTreeMap<Option<String>, i64> = Default::default();
        for b in &counted {
            let (arns, ns) = (text_column(b, 0), text_column(b, 1));
            for i in 0..b.num_rows() {
                got.insert(arns[i].clone(), ns[i].as_deref().unwrap().parse().unwrap());
            }
        }
        assert_eq!(got, by_arn, "{top}");
    }
    // A join on the delivered file's name is probed once per distinct name of a batch
    // (src/sql/view_join.rs): every event has its file in the journal.
    let joined = "SELECT count(*) FROM events e JOIN ingested_files f ON e.sourcefile = f.sourcefile";
    assert!(physical_plan(&ctx, joined).await.contains("ViewJoinExec"), "{}", physical_plan(&ctx, joined).await);
    assert_eq!(count(&ctx, joined).await, all);
    let like = "SELECT count(*) FROM events WHERE useragent LIKE '%python%' OR sourceipaddress LIKE '10.%'";
    // Tested on the values of each row group's dictionaries first (src/sql/row_group_skip.rs).
    let plan = physical_plan(&ctx, like).await;
    assert!(plan.contains("on_values(") && plan.contains("RowGroupSkipExec: by dictionaries of [useragent, sourceipaddress]"), "{plan}");
    assert_eq!(count(&ctx, like).await, matching);
    assert!(matching > 0 && matching < all, "{matching} of {all}");
    // A field both filtered and passed on (two outputs of the scan read it): left as views.
    let both = "SELECT count(*), count(t) FROM (SELECT useridentity['type'] AS t FROM events WHERE useridentity['type'] IN ('AssumedRole', 'IAMUser') AND eventname <> 'x')";
    let typed = count(&ctx, "SELECT count(*) FROM events WHERE useridentity['type'] = 'AssumedRole' OR useridentity['type'] = 'IAMUser'").await;
    assert_eq!(count(&ctx, both).await, typed);
    assert!(typed > 0, "{}", physical_plan(&ctx, both).await);
}

/// The first file of an executed plan's Parquet scan, and the rows the scan produced.
fn first_file_and_rows(plan: &Arc<dyn ExecutionPlan>) -> (String, usize) {
    use datafusion::datasource::physical_plan::FileScanConfig;
    use datafusion::datasource::source::DataSourceExec;
    if let Some(config) = plan.downcast_ref::<DataSourceExec>().and_then(|s| s.data_source().downcast_ref::<FileScanConfig>()) {
        let first = config.file_groups.first().and_then(|g| g.iter().next()).map(|f| f.object_meta.location.to_string()).unwrap_or_default();
        return (first, plan.metrics().and_then(|m| m.output_rows()).unwrap_or(0));
    }
    plan.children().into_iter().map(first_file_and_rows).find(|(f, _)| !f.is_empty()).unwrap_or_default()
}

#[test]
fn statements_from_c_f_and_stdin_run_in_order() {
    let (dir, lake) = fixture();
    let lake = lake.as_str();
    let file = dir.path().join("q.sql");
    std::fs::write(&file, "-- the second input\nSELECT count(*) AS n FROM events;\n\nSELECT 'x;y' AS s;\n").unwrap();
    let out = prism(&["sql", "--lake", lake, "-c", "SELECT 1 AS a; SELECT 2 AS b", "-f", file.to_str().unwrap(), "-c", "SELECT 3 AS c", "--format", "csv"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "a\n1\nb\n2\nn\n9\ns\nx;y\nc\n3\n");

    let out = prism_stdin(
        &["sql", "--lake", lake, "--format", "ndjson"],
        "SELECT eventname, count(*) AS n FROM events GROUP BY 1 ORDER BY 2 DESC;\nSELECT count(*) AS rejected FROM rejects",
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(
        text(&out.stdout),
        "{\"eventname\":\"DescribeInstances\",\"n\":5}\n{\"eventname\":\"GetObject\",\"n\":3}\n\
         {\"eventname\":\"ListUsers\",\"n\":1}\n{\"rejected\":1}\n"
    );

    let out = prism(&["sql", "--lake", lake, "-c", "SELECT eventname FROM events ORDER BY 1 LIMIT 1", "--format", "json"]);
    assert_eq!(text(&out.stdout), "[{\"eventname\":\"DescribeInstances\"}]\n");

    let out = prism_stdin(&["sql", "--lake", lake], "-- nothing here\n");
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains("no SQL statement"), "{}", text(&out.stderr));
}

#[test]
fn a_failing_statement_stops_the_run_and_is_named_with_its_place() {
    let (dir, lake) = fixture();
    let lake = lake.as_str();
    let file = dir.path().join("report.sql");
    std::fs::write(&file, "SELECT 1 AS first;\n-- then\nSELECT eventname,\n       nosuch FROM events;\nSELECT 3 AS third;\n").unwrap();
    let out = prism(&["sql", "--lake", lake, "-f", file.to_str().unwrap(), "--format", "csv"]);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(text(&out.stdout), "first\n1\n", "statements after the failure do not run");
    let err = text(&out.stderr);
    assert!(err.contains("report.sql: statement 2 (line 4, column 8) failed: Schema error: No field named nosuch"), "{err}");
    assert!(err.contains("4 |        nosuch FROM events;\n  |        ^^^^^^"), "{err}");

    let out = prism(&["sql", "--lake", lake, "-c", "SELECT 1", "-c", "SELECT 2; SELEC 3"]);
    assert_eq!(out.status.code(), Some(1));
    let err = text(&out.stderr);
    assert!(err.contains("-c #2: statement 2 (line 1, column 11) failed: sql parser error: Expected: an SQL statement, found: SELEC"), "{err}");
    assert!(err.contains("1 | SELECT 2; SELEC 3\n  |           ^"), "{err}");

    // Errors during execution (after planning) are reported too.
    let out = prism(&["sql", "--lake", lake, "-c", "SELECT 10 / (value - 5) FROM range(10)"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains("-c: statement 1 (line 1) failed: Arrow error: Divide by zero"), "{}", text(&out.stderr));

    let out = prism(&["sql", "--lake", dir.path().join("nowhere").to_str().unwrap(), "-c", "SELECT 1"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains("no lake here"), "{}", text(&out.stderr));
}

#[test]
fn output_files_are_complete_or_absent() {
    let (dir, lake) = fixture();
    let lake = lake.as_str();
    let results = dir.path().join("results");

    // The format comes from the extension; only the last statement goes to the file.
    let csv = results.join("apis.csv");
    let out = prism(&[
        "sql",
        "--lake",
        lake,
        "-c",
        "CREATE VIEW apis AS SELECT eventname, count(*) AS n FROM events GROUP BY 1",
        "-c",
        "SELECT * FROM apis ORDER BY n DESC",
        "--output",
        csv.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(std::fs::read_to_string(&csv).unwrap(), "eventname,n\nDescribeInstances,5\nGetObject,3\nListUsers,1\n");
    assert!(out.stdout.is_empty());

    let parquet = results.join("events.parquet");
    let out = prism(&["sql", "--lake", lake, "-c", "SELECT * FROM events", "-o", parquet.to_str().unwrap()]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let reader = parquet::arrow::arrow_reader::ParquetRecordBatchReader::try_new(std::fs::File::open(&parquet).unwrap(), 1024).unwrap();
    assert_eq!(reader.map(|b| b.unwrap().num_rows()).sum::<usize>(), 9);

    // A run that fails half-way through its rows leaves the previous file as it was.
    let out = prism(&["sql", "--lake", lake, "-c", "SELECT value, 10 / (value - 50000) AS x FROM range(100000)", "--output", csv.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(std::fs::read_to_string(&csv).unwrap(), "eventname,n\nDescribeInstances,5\nGetObject,3\nListUsers,1\n");
    let names: Vec<String> = std::fs::read_dir(&results).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    assert_eq!(names.len(), 2, "no temporary file is left: {names:?}");

    let out = prism(&["sql", "--lake", lake, "-c", "SELECT 1", "--output", results.join("x.txt").to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains("use .csv, .json, .ndjson or .parquet, or give the format"), "{}", text(&out.stderr));
    let out = prism(&["sql", "--lake", lake, "-c", "SELECT 1 AS one", "--output", results.join("x.txt").to_str().unwrap(), "--format", "table"]);
    assert!(out.status.success());
    assert!(std::fs::read_to_string(results.join("x.txt")).unwrap().contains("| one |"));

    // Parquet may go to a pipe (it is refused only on a terminal, see the tmux test).
    let out = prism(&["sql", "--lake", lake, "-c", "SELECT 1 AS one", "--format", "parquet"]);
    assert!(out.status.success());
    assert!(out.stdout.starts_with(b"PAR1") && out.stdout.ends_with(b"PAR1"));
}

#[test]
fn maxrows_summarises_the_rest() {
    let (_dir, lake) = fixture();
    let lake = lake.as_str();
    let out = prism(&["sql", "--lake", lake, "-c", "SELECT value FROM range(100)", "--maxrows", "5"]);
    let stdout = text(&out.stdout);
    assert!(stdout.contains("| 4     |") && !stdout.contains("| 5     |"), "{stdout}");
    assert!(stdout.ends_with("+\n… 95 more rows\n"), "{stdout}");
    // To a pipe, every row unless --maxrows is given.
    let out = prism(&["sql", "--lake", lake, "-c", "SELECT value FROM range(100)", "--format", "csv"]);
    assert_eq!(text(&out.stdout).lines().count(), 101);
    // A reader that stops early (`| head`) ends the run quietly, by SIGPIPE as any Unix tool.
    use std::io::BufRead;
    let mut child = Command::new(prism_bin())
        .args(["sql", "--lake", lake, "-c", "SELECT value FROM range(10000000)", "--format", "csv"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = std::io::BufReader::new(child.stdout.take().unwrap()).lines();
    assert_eq!(lines.next().unwrap().unwrap(), "value");
    drop(lines);
    let out = child.wait_with_output().unwrap();
    use std::os::unix::process::ExitStatusExt;
    assert!(out.status.signal() == Some(libc::SIGPIPE) && out.stderr.is_empty(), "{:?}: {}", out.status, text(&out.stderr));
}

#[test]
fn help_teaches_tables_meta_commands_and_examples() {
    let out = prism(&["sql", "--help"]);
    let help = text(&out.stdout);
    for needle in [
        "events",
        "rejects",
        "ingested_files",
        "\\d TABLE",
        "\\timing",
        "\\format",
        "\\i FILE",
        "\\q",
        "--output",
        "--maxrows",
        "Examples:",
        "prism sql --lake ./lake -c",
        "TIMESTAMP '2024-06-01T00:00:00Z'",
    ] {
        assert!(help.contains(needle), "`{needle}` missing from:\n{help}");
    }
}

// ---------------------------------------------------------------------------------------------
// The interactive shell, in a real terminal.

/// A tmux server of its own (its own socket), running one command in a 200×50 window.
struct Tmux {
    /// The server's socket and configuration live in this folder, removed with it.
    dir: tempfile::TempDir,
}

impl Tmux {
    /// Runs `command` in a shell in the window; when it ends, the shell writes `EXIT=<status>`
    /// and the pane stays (remain-on-exit) so that the screen can still be read. (The shell
    /// traps SIGINT so that a Ctrl-C meant for the program does not end the shell; the program
    /// gets the default disposition back.)
    fn start(command: &str) -> Tmux {
        let version = Command::new("tmux").arg("-V").output();
        assert!(
            version.is_ok_and(|o| o.status.success()),
            "tmux is needed to test the interactive shell as a person uses it: install it (apt-get install tmux)"
        );
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("tmux.conf"), "set-option -g remain-on-exit on\n").unwrap();
        let t = Tmux { dir };
        let script = format!("trap true INT; {command}; echo \"EXIT=$?\"");
        let config = t.dir.path().join("tmux.conf");
        let config = config.to_str().unwrap();
        t.tmux(&["-f", config, "new-session", "-d", "-x", "200", "-y", "50", "-s", "t", "sh", "-c", &script]);
        t
    }

    fn tmux(&self, args: &[&str]) -> String {
        let out = Command::new("tmux").arg("-S").arg(self.dir.path().join("socket")).args(args).output().unwrap();
        assert!(out.status.success(), "tmux {args:?}: {}", text(&out.stderr));
        text(&out.stdout)
    }

    /// Everything the terminal has shown (wrapped lines joined).
    fn screen(&self) -> String {
        self.tmux(&["capture-pane", "-p", "-J", "-S", "-", "-t", "t"])
    }

    fn wait_for(&self, what: &str, done: impl Fn(&str) -> bool) -> String {
        let start = Instant::now();
        loop {
            let screen = self.screen();
            if done(&screen) {
                return screen;
            }
            assert!(start.elapsed() < Duration::from_secs(90), "waited for {what}; the screen shows:\n{screen}");
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn prompts(screen: &str) -> usize {
        screen.matches("prism> ").count()
    }

    /// Types `text` (a `;` at the end of a tmux argument would end the tmux command, so it is
    /// sent as a key of its own).
    fn type_text(&self, text: &str) {
        let (body, semicolon) = match text.strip_suffix(';') {
            Some(body) => (body, true),
            None => (text, false),
        };
        if !body.is_empty() {
            self.tmux(&["send-keys", "-t", "t", "-l", "--", body]);
        }
        if semicolon {
            self.tmux(&["send-keys", "-t", "t", "-H", "3b"]);
        }
    }

    fn keys(&self, keys: &[&str]) {
        let mut args = vec!["send-keys", "-t", "t"];
        args.extend(keys);
        self.tmux(&args);
    }

    /// Types the lines of one entry, each followed by Enter, and returns what appeared between
    /// the entry and the next prompt.
    fn enter(&self, lines: &[&str]) -> String {
        let before = Self::prompts(&self.screen());
        for line in lines {
            self.type_text(line);
            self.keys(&["Enter"]);
        }
        let screen = self.wait_for(&format!("the prompt after {lines:?}"), |s| Self::prompts(s) > before && s.trim_end().ends_with("prism>"));
        let last = screen.rfind("prism> ").unwrap_or(0);
        let start = screen[..last].rfind("prism> ").unwrap_or(0);
        screen[start..last].to_owned()
    }

    /// The program's exit status, once it has ended.
    fn exit_status(&self) -> Option<i32> {
        let screen = self.screen();
        let at = screen.rfind("EXIT=")?;
        screen[at + 5..].lines().next()?.trim().parse().ok()
    }

    fn wait_exit(&self) -> i32 {
        let screen = self.wait_for("the program to end", |s| s.contains("EXIT="));
        self.exit_status().unwrap_or_else(|| panic!("no exit status on the screen:\n{screen}"))
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = Command::new("tmux").arg("-S").arg(self.dir.path().join("socket")).arg("kill-server").output();
    }
}

fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "'\\''"))
}

fn start_repl(lake: &Path, history: &Path) -> Tmux {
    let command =
        format!("{} sql --lake {} --history {}", shell_quote(prism_bin()), shell_quote(lake.to_str().unwrap()), shell_quote(history.to_str().unwrap()));
    let t = Tmux::start(&command);
    t.wait_for("the greeting", |s| s.contains("tables: ") && s.contains(" events, ingest_log") && s.trim_end().ends_with("prism>"));
    t
}

#[test]
fn the_shell_as_a_person_uses_it() {
    let dir = tempfile::tempdir().unwrap();
    let lake = small_lake(dir.path());
    let history = dir.path().join("history");
    let t = start_repl(&lake, &history);

    let out = t.enter(&["SELECT 40 + 2 AS answer;"]);
    assert!(out.contains("| answer |") && out.contains("| 42     |") && out.contains("1 row in "), "{out}");

    let out = t.enter(&["SELECT eventname, count(*) AS n", "FROM events", "GROUP BY 1 ORDER BY 2 DESC LIMIT 2;"]);
    assert!(out.contains("| DescribeInstances | 5 |\n| GetObject         | 3 |"), "{out}");
    assert!(out.contains("2 rows in "), "{out}");

    let out = t.enter(&["\\d"]);
    for table in ["| events ", "| ingest_log ", "| ingested_files ", "| rejects "] {
        assert!(out.contains(table), "{table} in {out}");
    }
    let out = t.enter(&["\\d events"]);
    assert!(out.contains("| eventtime ") && out.contains("timestamp (UTC)") && out.contains("useridentity.arn"), "{out}");

    let out = t.enter(&["SELECT nosuch FROM events;"]);
    assert!(out.contains("error: Schema error: No field named nosuch."), "{out}");
    assert!(out.contains("1 | SELECT nosuch FROM events;\n  |        ^^^^^^"), "{out}");
    let out = t.enter(&["SELECT 7 AS seven;"]);
    assert!(out.contains("| 7     |"), "the shell goes on after an error: {out}");

    // Tab completes a table name after FROM.
    t.type_text("SELECT count(*) AS rejected FROM rej");
    t.keys(&["Tab"]);
    t.wait_for("the completed table name", |s| s.trim_end().ends_with("FROM rejects"));
    let out = t.enter(&[";"]);
    assert!(out.contains("| rejected |") && out.contains("| 1        |"), "{out}");

    let out = t.enter(&["SELECT value FROM range(100);"]);
    assert!(out.contains("| 39    |") && !out.contains("| 40    |") && out.contains("… 60 more rows"), "{out}");

    let out = t.enter(&["\\format csv"]);
    assert!(out.contains("Results are shown as csv."), "{out}");
    let out = t.enter(&["\\timing"]);
    assert!(out.contains("Timing is off."), "{out}");
    let out = t.enter(&["SELECT 'a' AS x, 2 AS y;"]);
    assert!(out.contains("x,y\na,2\n") && !out.contains(" in 0."), "{out}");
    t.enter(&["\\format table"]);
    t.enter(&["\\timing on"]);

    let script = dir.path().join("two.sql");
    std::fs::write(&script, "SELECT 1 AS one;\nSELECT oops FROM events;\nSELECT 3 AS three;\n").unwrap();
    let out = t.enter(&[&format!("\\i {}", script.display())]);
    assert!(out.contains("| one |"), "{out}");
    assert!(out.contains("two.sql: statement 2 (line 2, column 8) failed: Schema error: No field named oops"), "{out}");
    assert!(!out.contains("three"), "{out}");

    // Ctrl-C cancels a running query and the shell stays.
    let before = Tmux::prompts(&t.screen());
    t.type_text("SELECT sum(value) FROM range(1, 1000000000000);");
    t.keys(&["Enter"]);
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(Tmux::prompts(&t.screen()), before, "the query is still running");
    t.keys(&["C-c"]);
    let screen = t.wait_for("the cancellation", |s| s.contains("Query cancelled.") && Tmux::prompts(s) > before);
    assert!(screen.trim_end().ends_with("prism>"), "{screen}");
    let out = t.enter(&["SELECT 8 AS eight;"]);
    assert!(out.contains("| 8     |"), "{out}");
    assert_eq!(t.exit_status(), None, "the shell is still running");

    t.enter(&["\\?"]);
    t.type_text("\\q");
    t.keys(&["Enter"]);
    assert_eq!(t.wait_exit(), 0, "{}", t.screen());
    let history = std::fs::read_to_string(&history).unwrap();
    assert!(history.contains("SELECT 40 + 2 AS answer;") && history.contains("\\\\q"), "{history}");
}

#[test]
fn the_shell_sees_new_data_and_quits_on_ctrl_d() {
    let dir = tempfile::tempdir().unwrap();
    let lake = small_lake(dir.path());
    let t = start_repl(&lake, &dir.path().join("history"));
    let out = t.enter(&["SELECT count(*) AS n FROM events;"]);
    assert!(out.contains("| 9 |"), "{out}");

    let archive = dir.path().join("archive2");
    write_gz(&log_path(&archive, "111122223333", "us-east-1", "20240302", "B"), &records("b", &[("GetObject", 4)], "2024-03-02"));
    let (code, _) = run_ingest(&[archive.to_str().unwrap(), "--lake", lake.to_str().unwrap()]);
    assert_eq!(code, 0);
    let out = t.enter(&["SELECT count(*) AS n FROM events;"]);
    assert!(out.contains("| 13 |"), "the open shell reads the new commit: {out}");

    t.keys(&["C-d"]);
    assert_eq!(t.wait_exit(), 0, "{}", t.screen());
}

#[test]
fn parquet_is_refused_on_a_terminal() {
    let dir = tempfile::tempdir().unwrap();
    let lake = small_lake(dir.path());
    let command = format!("{} sql --lake {} -c 'SELECT 1' --format parquet", shell_quote(prism_bin()), shell_quote(lake.to_str().unwrap()));
    let t = Tmux::start(&command);
    assert_eq!(t.wait_exit(), 1);
    let screen = t.screen();
    assert!(screen.contains("Parquet is binary") && screen.contains("--output FILE.parquet"), "{screen}");
}
