//! End-to-end tests of the lake's layout and upkeep: the default day partitions prune time
//! filters to a few row groups, `prism optimize` compacts small files without changing a row
//! (even when killed at any point), and `prism vacuum` deletes only what no version needs.

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::sync::Arc;

use arrow::array::{Array, AsArray};
use arrow::datatypes::TimestampMicrosecondType;

use crate::common::*;
use prism::ingest::{IngestOptions, IngestProgress};

/// A two-region archive ingested into a new lake with the default settings, committing every
/// `buffer_mb` MiB of events (small: many commits, so many small files per partition).
async fn lake_of_small_files(tmp: &Path, buffer_mb: usize, runs: u64) -> std::path::PathBuf {
    let lake = tmp.join("lake");
    // One ingest per archive: each commits one file per partition it reaches (more when a
    // partition outgrows a file).
    for run in 0..runs {
        let archive = tmp.join(format!("archive{run}"));
        for (region, seed) in [("us-east-1", 1 + 2 * run), ("eu-west-1", 2 + 2 * run)] {
            let g = one_account(&archive, region, 2, 12_000 / runs, 0, seed);
            tokio::task::spawn_blocking(move || prism::generate::generate(&g)).await.unwrap().unwrap();
        }
        let mut opts = IngestOptions::new(vec![archive.to_str().unwrap().to_owned()], lake.to_str().unwrap());
        opts.buffer_bytes = buffer_mb << 20;
        let s = prism::ingest(&opts, Arc::new(IngestProgress::default())).await.unwrap();
        assert!(s.is_clean() && s.records_written > 40_000 / runs, "{s:?}");
    }
    lake
}

/// An ingest over many commit buffers keeps each partition's file open while the listing is in
/// its stretch: one file per partition, each in time order (the rows of one buffer that the next
/// may precede wait for it), every source journaled once its rows are committed, the rollups
/// counting every file.
#[tokio::test(flavor = "multi_thread")]
async fn an_ingest_writes_one_time_sorted_file_per_partition() {
    let tmp = tempfile::tempdir().unwrap();
    let lake = lake_of_small_files(tmp.path(), 1, 1).await;
    let opened = prism::Lake::open(lake.to_str().unwrap()).await.unwrap();
    let partitions: HashSet<Vec<(String, String)>> = prism::lake::table_files(opened.events()).into_iter().map(|f| f.partition).collect();
    let files = files_are_time_sorted(&lake).await;
    // us-east-1's partitions also get the global services' events that other regions' files
    // hold (read before us-east-1's own, in listing order): those start a file of their own.
    let mut per_partition: HashMap<Vec<(String, String)>, usize> = HashMap::new();
    for f in prism::lake::table_files(opened.events()) {
        *per_partition.entry(f.partition).or_default() += 1;
    }
    for (partition, n) in &per_partition {
        let global = partition.iter().any(|(c, v)| c == "awsregion" && v == "us-east-1");
        assert!(*n == 1 || (global && *n <= 3), "{n} files in {partition:?}");
    }
    assert!(files < 2 * partitions.len(), "{files} files for {} partitions", partitions.len());
    let counts = strings(
        &lake,
        "SELECT concat_ws(' ', (SELECT count(*) FROM events), (SELECT sum(kept) FROM ingested_files), \
         (SELECT count(*) FROM ingested_files WHERE status = 'complete'), (SELECT sum(calls) FROM rollups WHERE kind = 'file'))",
    )
    .await;
    let parts: Vec<u64> = counts[0].as_deref().unwrap().split(' ').map(|n| n.parse().unwrap()).collect();
    assert!(parts[0] > 40_000 && parts[1] == parts[0] && parts[3] == parts[0], "{parts:?}");
    assert_eq!(parts[2] as usize, files_under(&tmp.path().join("archive0")).iter().filter(|p| p.to_string_lossy().ends_with(".json.gz")).count());
    let mut rollups = prism::rollup::Rollups::open(&opened).await.unwrap();
    assert_eq!(rollups.catch_up(&opened).await.unwrap().files, 0, "every file counted as it was committed");
    rollups_are_sorted_by_series(&lake).await;
}

/// Data files of `events` on disk (committed or not).
fn parquet_on_disk(lake: &Path) -> usize {
    files_under(&lake.join("events")).iter().filter(|p| p.extension().is_some_and(|x| x == "parquet") && !p.to_string_lossy().contains("_delta_log")).count()
}

/// What must not change whatever optimize does: the rows, and the rollups' counts.
async fn fingerprint(lake: &Path) -> Vec<Option<String>> {
    let sql = "SELECT concat_ws(' ', \
        (SELECT count(*) FROM events), (SELECT count(DISTINCT eventid) FROM events), \
        (SELECT sum(extract(epoch FROM eventtime)::BIGINT % 86400 + length(eventname)) FROM events), \
        (SELECT sum(calls) FROM rollups WHERE kind = 'minute'), (SELECT sum(calls) FROM rollups WHERE kind = 'hour'))";
    strings(lake, sql).await
}

/// Every active events file has its rows in `eventtime` order.
async fn files_are_time_sorted(lake_dir: &Path) -> usize {
    let lake = prism::Lake::open(lake_dir.to_str().unwrap()).await.unwrap();
    let files = prism::lake::table_files(lake.events());
    for f in &files {
        let batches = prism::lake::read_files(lake.events(), std::slice::from_ref(&f.path), Some(&["eventtime"])).await.unwrap();
        let times: Vec<i64> = batches.iter().flat_map(|b| b.column(0).as_primitive::<TimestampMicrosecondType>().values().to_vec()).collect();
        assert!(times.windows(2).all(|w| w[0] <= w[1]), "{} is not sorted by eventtime", f.path);
    }
    files.len()
}

/// Every active rollups file holds its rows by series, then time (`rollup::SORT_COLUMNS`).
async fn rollups_are_sorted_by_series(lake_dir: &Path) {
    let lake = prism::Lake::open(lake_dir.to_str().unwrap()).await.unwrap();
    let rollups = prism::rollup::Rollups::open(&lake).await.unwrap();
    for f in prism::lake::table_files(rollups.table()) {
        let batches = prism::lake::read_files(rollups.table(), std::slice::from_ref(&f.path), Some(&prism::rollup::SORT_COLUMNS)).await.unwrap();
        let batch = arrow::compute::concat_batches(&batches[0].schema(), &batches).unwrap();
        let batch = batch.project(&prism::rollup::SORT_COLUMNS.map(|c| batch.schema().index_of(c).unwrap())).unwrap();
        let fields = batch.columns().iter().map(|c| arrow::row::SortField::new(c.data_type().clone())).collect();
        let rows = arrow::row::RowConverter::new(fields).unwrap().convert_columns(batch.columns()).unwrap();
        if let Some(i) = (1..rows.num_rows()).find(|&i| rows.row(i - 1) > rows.row(i)) {
            panic!(
                "{} is not sorted by series and time at row {i}:\n{}",
                f.path,
                arrow::util::pretty::pretty_format_batches(&[batch.slice(i - 1, 2)]).unwrap()
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn the_default_lake_is_day_partitioned_and_a_time_filter_reads_a_small_part_of_it() {
    let tmp = tempfile::tempdir().unwrap();
    let lake = lake_of_small_files(tmp.path(), 128, 1).await;
    let config: serde_json::Value = serde_json::from_slice(&std::fs::read(lake.join("prism.json")).unwrap()).unwrap();
    assert_eq!(config["granularity"], "day");
    let periods = strings(&lake, "SELECT DISTINCT eventperiod FROM events ORDER BY 1").await;
    assert_eq!(periods.first().cloned().flatten().as_deref(), Some("20240101"));
    files_are_time_sorted(&lake).await;

    // A one-hour filter reads the row groups and pages of that hour, not the day's file.
    let lake_bytes: u64 = files_under(&lake.join("events"))
        .iter()
        .filter(|p| p.extension().is_some_and(|x| x == "parquet") && !p.to_string_lossy().contains("_delta_log"))
        .map(|p| std::fs::metadata(p).unwrap().len())
        .sum();
    let sql = "EXPLAIN ANALYZE SELECT * FROM events WHERE eventtime >= TIMESTAMP '2024-01-01T12:00:00Z' AND eventtime < TIMESTAMP '2024-01-01T13:00:00Z'";
    let mut text = String::new();
    for b in query(&lake, sql).await {
        let plan = arrow::compute::cast(b.column(1), &arrow::datatypes::DataType::Utf8).unwrap();
        let plan = plan.as_string::<i32>();
        for i in 0..plan.len() {
            text.push_str(plan.value(i));
            text.push('\n');
        }
    }
    let scanned: u64 = text
        .split("bytes_scanned=")
        .skip(1)
        .map(|rest| {
            let n: String = rest.chars().take_while(|c| *c != ',' && *c != ']').collect();
            parse_size(n.trim())
        })
        .sum();
    assert!(scanned > 0, "no bytes_scanned metric in:\n{text}");
    // One hour of 48 (two days in two regions) is 2% of the rows. This lake's files are one
    // row group each (a day here is 12,000 events), so pages of 2 Ki rows (about 4 hours) and
    // the footers bound what is read: about 28%. Rows out of time order, or no page limit,
    // would read everything. (On 4.5M events the benchmark measures 1.2%: docs/performance.md.)
    assert!(scanned * 100 < lake_bytes * 40, "a one-hour filter read {scanned} of {lake_bytes} bytes:\n{text}");
}

/// `3.60 M`, `312.0 K`, `1234` (DataFusion's human-readable byte counts) in bytes.
fn parse_size(s: &str) -> u64 {
    let digits: String = s.chars().take_while(|c| c.is_ascii_digit() || *c == '.').collect();
    let unit = &s[digits.len()..];
    let n: f64 = digits.parse().unwrap_or(0.0);
    let scale = match unit.trim().trim_end_matches('B') {
        "K" => 1e3,
        "M" => 1e6,
        "G" => 1e9,
        "" => 1.0,
        other => panic!("unknown unit {other} in {s}"),
    };
    (n * scale) as u64
}

#[tokio::test(flavor = "multi_thread")]
async fn optimize_killed_at_any_point_leaves_the_same_rows_and_finishes_on_rerun() {
    let tmp = tempfile::tempdir().unwrap();
    // Eight runs: a run writes one file per partition (`lake::OpenFiles`).
    let lake = lake_of_small_files(tmp.path(), 1, 8).await;
    let before = fingerprint(&lake).await;
    let files_before = files_are_time_sorted(&lake).await;
    assert!(files_before > 20, "{files_before} files: the test needs many small ones");
    let args = ["optimize", "--lake", lake.to_str().unwrap(), "--target-size", "1", "--quiet"];

    let mut killed = 0;
    let mut delay_ms = 150u64;
    loop {
        let mut command = std::process::Command::new(prism_bin());
        command.args(args);
        let finished = !kill_after(command, delay_ms);
        killed += u32::from(!finished);
        assert_eq!(fingerprint(&lake).await, before, "after a kill at {delay_ms} ms");
        if finished || delay_ms > 60_000 {
            break;
        }
        delay_ms *= 2;
    }
    assert!(killed >= 2, "only {killed} kills landed before optimize finished; make the lake larger");
    let out = std::process::Command::new(prism_bin()).args(["optimize", "--lake", lake.to_str().unwrap(), "--json"]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(fingerprint(&lake).await, before);
    let files_after = files_are_time_sorted(&lake).await;
    assert!(files_after <= 6, "{files_after} files left of {files_before}");
    rollups_are_sorted_by_series(&lake).await;

    // A catch-up of the rollups finds nothing new to count: the new files were marked.
    let opened = prism::Lake::open(lake.to_str().unwrap()).await.unwrap();
    let mut rollups = prism::rollup::Rollups::open(&opened).await.unwrap();
    assert_eq!(rollups.catch_up(&opened).await.unwrap().files, 0);

    // Nothing left to combine: a second run changes nothing.
    let again = std::process::Command::new(prism_bin()).args(["optimize", "--lake", lake.to_str().unwrap(), "--json"]).output().unwrap();
    let summary: serde_json::Value = serde_json::from_slice(&again.stdout).unwrap();
    let removed: u64 = summary["tables"].as_array().unwrap().iter().map(|t| t["files_removed"].as_u64().unwrap()).sum();
    assert_eq!(removed, 0, "{summary}");

    // Vacuum: the default retention keeps the replaced files (a week); none keeps none of them,
    // and the lake still reads the same.
    let on_disk = parquet_on_disk(&lake);
    assert!(on_disk > files_before, "the replaced and the killed runs' files are still on disk");
    let vacuum = |retention: &str| {
        let out =
            std::process::Command::new(prism_bin()).args(["vacuum", "--lake", lake.to_str().unwrap(), "--retention", retention, "--json"]).output().unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        serde_json::from_slice::<serde_json::Value>(&out.stdout).unwrap()
    };
    // Writers killed mid-upload leave object_store's staging files beside names never made.
    let partition = files_under(&lake.join("events")).into_iter().find(|p| p.extension().is_some_and(|x| x == "parquet")).unwrap();
    let insight_dir = lake.join("AWSLogs/123456789012/CloudTrail-Insight/us-east-1/2024/01/01");
    std::fs::create_dir_all(&insight_dir).unwrap();
    let staging = [partition.with_file_name("part-00000-killed.parquet#3"), insight_dir.join("x_CloudTrail-Insight.json.gz#1")];
    let not_staging = insight_dir.join("notes#v1");
    for f in staging.iter().chain([&not_staging]) {
        std::fs::write(f, b"half").unwrap();
    }
    let kept = vacuum("1w");
    assert_eq!(kept["tables"][0]["files_deleted"], 0, "{kept}");
    assert_eq!(kept["unfinished_uploads"]["files_deleted"], 0, "{kept}");
    assert_eq!(parquet_on_disk(&lake), on_disk);
    assert!(staging.iter().all(|f| f.exists()));
    let swept = vacuum("0");
    assert_eq!(swept["unfinished_uploads"]["files_deleted"], 2, "{swept}");
    assert!(staging.iter().all(|f| !f.exists()) && not_staging.exists());
    assert_eq!(parquet_on_disk(&lake), files_after);
    assert_eq!(fingerprint(&lake).await, before);
    let ids: HashSet<Option<String>> = strings(&lake, "SELECT eventid FROM events").await.into_iter().collect();
    assert_eq!(Some(ids.len().to_string()), before[0].as_ref().and_then(|s| s.split(' ').next()).map(str::to_owned));
}

/// Two `prism optimize` at once on one lake: where both pick the same files, one commits and
/// the other refuses with a conflict and commits nothing; the rows and rollups stay exact, and
/// a run after them finishes the job.
#[tokio::test(flavor = "multi_thread")]
async fn two_optimizes_at_once_keep_every_row_once() {
    let tmp = tempfile::tempdir().unwrap();
    let lake = lake_of_small_files(tmp.path(), 1, 4).await;
    let before = fingerprint(&lake).await;
    let l = lake.to_str().unwrap();
    let runs: Vec<_> = (0..2)
        .map(|_| {
            let mut cmd = std::process::Command::new(prism_bin());
            cmd.args(["optimize", "--lake", l, "--quiet"]).stderr(std::process::Stdio::piped()).spawn().unwrap()
        })
        .collect();
    let mut committed = 0;
    for run in runs {
        let out = run.wait_with_output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        match out.status.code() {
            Some(0) => committed += 1,
            Some(1) => assert!(stderr.contains("nothing was committed, run again") && stderr.lines().count() <= 3, "{stderr}"),
            other => panic!("exit {other:?}: {stderr}"),
        }
    }
    assert!(committed >= 1);
    assert_eq!(fingerprint(&lake).await, before);
    let out = std::process::Command::new(prism_bin()).args(["optimize", "--lake", l, "--quiet"]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(fingerprint(&lake).await, before);
    assert!(files_are_time_sorted(&lake).await <= 6);
    let events = scalar(&lake, "SELECT count(*) FROM events").await;
    assert_eq!(scalar(&lake, "SELECT sum(calls) FROM rollups WHERE kind = 'minute'").await, events);
}

#[test]
fn upkeep_commands_explain_bad_arguments_and_a_missing_lake() {
    let tmp = tempfile::tempdir().unwrap();
    let missing = tmp.path().join("nothing-here");
    let run = |args: &[&str]| std::process::Command::new(prism_bin()).args(args).output().unwrap();
    let out = run(&["vacuum", "--lake", missing.to_str().unwrap(), "--retention", "5x"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("is not a duration like 15m"), "{out:?}");
    for command in ["optimize", "vacuum"] {
        let out = run(&[command, "--lake", missing.to_str().unwrap()]);
        assert_eq!(out.status.code(), Some(1), "{command}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("no lake here"), "{command}: {err}");
        assert!(!missing.exists(), "{command} created a lake");
    }
    let help = run(&["optimize", "--help"]);
    assert!(String::from_utf8_lossy(&help.stdout).contains("prism vacuum"));
}

#[tokio::test(flavor = "multi_thread")]
async fn ingest_keeps_the_rollups_few_and_in_series_order() {
    let tmp = tempfile::tempdir().unwrap();
    let lake = tmp.path().join("lake");
    // One small ingest after another, as from cron: each adds a rollups file, until there are
    // enough to compact.
    let runs = prism::maintain::ROLLUPS_COMPACT_AT_FILES + 2;
    let mut written = 0;
    for run in 0..runs {
        let source = tmp.path().join(format!("delivery{run}"));
        let records: Vec<serde_json::Value> = (0..20)
            .map(|i| {
                let mut r = crate::common::record(&format!("r{run}-{i}"), &format!("2024-01-01T{:02}:{:02}:00Z", run % 24, i), "us-east-1");
                r["eventName"] = ["DescribeInstances", "RunInstances", "CreateTags"][i % 3].into();
                r
            })
            .collect();
        crate::common::write_gz(&crate::common::log_path(&source, "111122223333", "us-east-1", "20240101", &format!("R{run}")), &records);
        let opts = IngestOptions::new(vec![source.to_str().unwrap().to_owned()], lake.to_str().unwrap());
        written += prism::ingest(&opts, Arc::new(IngestProgress::default())).await.unwrap().records_written;
    }
    let opened = prism::Lake::open(lake.to_str().unwrap()).await.unwrap();
    let rollups = prism::rollup::Rollups::open(&opened).await.unwrap();
    let files = prism::lake::table_files(rollups.table()).len();
    assert!(files < prism::maintain::ROLLUPS_COMPACT_AT_FILES, "{files} rollups files after {runs} ingests");
    rollups_are_sorted_by_series(&lake).await;
    let counted = strings(&lake, "SELECT CAST(sum(calls) AS VARCHAR) FROM rollups WHERE kind = 'minute'").await;
    assert_eq!(counted, vec![Some(written.to_string())]);
}
