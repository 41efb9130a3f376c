//! End-to-end tests of aggregated events: `prism event-config` as AWS's API, and `prism
//! aggregate` records counted exactly, the same whether run in chunks or in one backfill.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Command, Output};

use serde_json::Value;

use crate::common::{prism_bin, query, scalar};

fn prism(args: &[&str]) -> Output {
    Command::new(prism_bin()).args(args).output().unwrap()
}

fn ok(args: &[&str]) -> String {
    let out = prism(args);
    assert!(out.status.success(), "prism {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}

const ALL: &str = r#"[{"EventCategory":"Data","Templates":["API_ACTIVITY","RESOURCE_ACCESS","USER_ACTIONS"]}]"#;

/// Two days of one account and region with data events, and the day folders' paths.
fn archive(dir: &Path) -> (std::path::PathBuf, Vec<String>) {
    let archive = dir.join("archive");
    let mut g = crate::common::one_account(&archive, "us-east-1", 2, 1_000, 0, 9);
    g.data_events_per_day = 8_000;
    prism::generate::generate(&g).unwrap();
    let region = crate::common::files_under(&archive).into_iter().find(|p| p.to_string_lossy().ends_with(".json.gz")).unwrap();
    let region = region.ancestors().nth(4).unwrap().to_path_buf();
    let days = ["2024/01/01", "2024/01/02", "2024/01/03"].iter().map(|d| region.join(d)).filter(|p| p.exists()).map(|p| p.display().to_string()).collect();
    (archive, days)
}

/// The records of a lake's table, by ID.
async fn records(lake: &Path) -> BTreeMap<String, Value> {
    let mut out = BTreeMap::new();
    for b in query(lake, "SELECT eventid, eventjson FROM aggregated_events").await {
        let (id, json) = (crate::common::text_column(&b, 0), crate::common::text_column(&b, 1));
        for i in 0..b.num_rows() {
            out.insert(id[i].clone().unwrap(), serde_json::from_str(json[i].as_deref().unwrap()).unwrap());
        }
    }
    out
}

#[test]
fn event_config_mirrors_the_aws_api() {
    let dir = tempfile::tempdir().unwrap();
    let lake = dir.path().join("lake");
    let l = lake.to_str().unwrap();
    let a = dir.path().join("a");
    crate::common::write_gz(
        &crate::common::log_path(&a, "111122223333", "us-east-1", "20240101", "x"),
        &[crate::common::record("e1", "2024-01-01T00:00:00Z", "us-east-1")],
    );
    ok(&["ingest", a.to_str().unwrap(), "--lake", l, "--quiet"]);
    let none: Value = serde_json::from_str(&ok(&["event-config", "get", "--lake", l])).unwrap();
    assert_eq!(none["AggregationConfigurations"], serde_json::json!([]));
    for bad in [
        r#"[{"EventCategory":"Management","Templates":["API_ACTIVITY"]}]"#,
        r#"[{"EventCategory":"Data","Templates":["API_ACTIVITY"]},{"EventCategory":"Data","Templates":["USER_ACTIONS"]}]"#,
        r#"[{"EventCategory":"Data","Templates":["EVERYTHING"]}]"#,
        r#"[{"EventCategory":"Data","Templates":[]}]"#,
        "not json",
    ] {
        let out = prism(&["event-config", "put", "--lake", l, "--aggregation-configurations", bad]);
        assert_eq!(out.status.code(), Some(1), "{bad}");
        assert!(String::from_utf8_lossy(&out.stderr).contains("InvalidParameterException"), "{bad}: {out:?}");
    }
    let put = ok(&["event-config", "put", "--lake", l, "--aggregation-configurations", &format!(r#"{{"TrailName":"t","AggregationConfigurations":{ALL}}}"#)]);
    let got = ok(&["event-config", "get", "--lake", l]);
    assert_eq!(put, got);
    let v: Value = serde_json::from_str(&got).unwrap();
    assert_eq!(v["AggregationConfigurations"], serde_json::from_str::<Value>(ALL).unwrap());
    ok(&["event-config", "put", "--lake", l, "--aggregation-configurations", "[]"]);
    let text = ok(&["aggregate", "run", "--lake", l]);
    assert!(text.contains("not configured"), "{text}");
}

#[tokio::test(flavor = "multi_thread")]
async fn aggregated_records_are_exact_and_chunked_runs_equal_one_backfill() {
    let dir = tempfile::tempdir().unwrap();
    let (archive, days) = archive(dir.path());
    let (chunked, whole) = (dir.path().join("chunked"), dir.path().join("whole"));
    let (c, w) = (chunked.to_str().unwrap(), whole.to_str().unwrap());

    // One lake ingests day by day, aggregating after each; the other all at once, then backfills.
    for day in &days {
        ok(&["ingest", day, "--lake", c, "--quiet"]);
        ok(&["event-config", "put", "--lake", c, "--aggregation-configurations", ALL]);
        ok(&["aggregate", "run", "--lake", c, "--settle-minutes", "10"]);
    }
    ok(&["ingest", archive.to_str().unwrap(), "--lake", w, "--quiet"]);
    ok(&["event-config", "put", "--lake", w, "--aggregation-configurations", ALL]);
    let s: Value = serde_json::from_str(&ok(&["aggregate", "backfill", "--lake", w, "--json"])).unwrap();
    let (a, b) = (records(&chunked).await, records(&whole).await);
    assert!(!a.is_empty());
    assert_eq!(a.len() as u64, s["records_written"].as_u64().unwrap());
    assert_eq!(a.keys().collect::<Vec<_>>(), b.keys().collect::<Vec<_>>());
    assert_eq!(a, b, "the same records, counts and all");

    // Counted in slices of the day (a pass per 2,000 events), the same records.
    let sliced = dir.path().join("sliced");
    let sl = sliced.to_str().unwrap();
    ok(&["ingest", archive.to_str().unwrap(), "--lake", sl, "--quiet"]);
    ok(&["event-config", "put", "--lake", sl, "--aggregation-configurations", ALL]);
    // Killed at growing delays first: after each kill the table holds each record once and
    // every file written is whole.
    let args = ["aggregate", "backfill", "--lake", sl, "--json", "--max-events-per-pass", "2000"];
    let mut landed = 0;
    for delay_ms in [150u64, 400, 900, 1_600] {
        let mut command = Command::new(prism_bin());
        command.args(args).stdout(std::process::Stdio::null());
        landed += usize::from(crate::common::kill_after(command, delay_ms));
        if sliced.join("aggregated_events/_delta_log").exists() {
            assert_eq!(scalar(&sliced, "SELECT count(*) - count(DISTINCT eventid) FROM aggregated_events").await, 0);
        }
        let files = if sliced.join("AWSLogs").exists() { crate::common::files_under(&sliced.join("AWSLogs")) } else { Vec::new() };
        // A kill mid-write leaves object_store's staging file (`….json.gz#1`) beside the name
        // it never made: not a delivered file (`vacuum` deletes it).
        for file in files.into_iter().filter(|f| f.to_string_lossy().ends_with(".json.gz")) {
            let mut text = String::new();
            std::io::Read::read_to_string(&mut flate2::read::GzDecoder::new(std::fs::File::open(&file).unwrap()), &mut text).unwrap();
            serde_json::from_str::<Value>(&text).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
        }
    }
    assert!(landed >= 2, "{landed} kills landed mid-run");
    let s: Value = serde_json::from_str(&ok(&["aggregate", "backfill", "--lake", sl, "--json", "--max-events-per-pass", "2000"])).unwrap();
    assert_eq!(a.len() as u64, s["records_written"].as_u64().unwrap() + s["records_existing"].as_u64().unwrap());
    assert_eq!(a, records(&sliced).await, "the same records, counted in slices after kills");

    // A re-run stores nothing twice.
    let again: Value = serde_json::from_str(&ok(&["aggregate", "backfill", "--lake", w, "--json"])).unwrap();
    assert_eq!((again["records_written"].as_u64(), again["records_existing"].as_u64()), (Some(0), Some(a.len() as u64)));

    // Three backfills at once on another lake of the same events: each record stored once,
    // the same records as one run's. Whether the runs overlap is up to the scheduler, so a race
    // where one finished before the others started is run again on a fresh lake (each race's
    // answers are checked either way), up to five times.
    let mut met = false;
    for attempt in 0..5 {
        let racing = dir.path().join(format!("racing-{attempt}"));
        let r = racing.to_str().unwrap();
        ok(&["ingest", archive.to_str().unwrap(), "--lake", r, "--quiet"]);
        ok(&["event-config", "put", "--lake", r, "--aggregation-configurations", ALL]);
        let runs: Vec<_> = (0..3)
            .map(|_| Command::new(prism_bin()).args(["aggregate", "backfill", "--lake", r, "--json"]).stdout(std::process::Stdio::piped()).spawn().unwrap())
            .collect();
        let (mut written, mut meanwhile) = (0, 0);
        for run in runs {
            let out = run.wait_with_output().unwrap();
            assert!(out.status.success());
            let s: Value = serde_json::from_slice(&out.stdout).unwrap();
            written += s["records_written"].as_u64().unwrap();
            meanwhile += s["records_stored_meanwhile"].as_u64().unwrap();
        }
        assert_eq!(written, a.len() as u64);
        assert_eq!(records(&racing).await, a);
        if meanwhile > 0 {
            met = true;
            break;
        }
    }
    assert!(met, "in five races the runs never met: this test would prove nothing");

    // Every count, checked against plain SQL over the events: each template's primary count,
    // and each detail dimension's breakdown.
    let dims = [
        ("eventName", "eventname"),
        (
            "resourceARN",
            "CASE WHEN get_field(array_element(resources, 1), 'type') = 'AWS::S3::Object' THEN get_field(array_element(resources, 2), 'arn') ELSE get_field(array_element(resources, 1), 'arn') END",
        ),
        ("userIdentity", "useridentity['arn']"),
        ("userAgent", "useragent"),
        ("sourceIPAddress", "sourceipaddress"),
        ("errorCode", "errorcode"),
    ];
    let data = "eventcategory = 'Data'";
    let last = b.values().filter_map(|r| r["timeWindow"]["windowEnd"].as_str()).max().unwrap().to_owned();
    let until = format!("eventtime < TIMESTAMP '{last}'");
    let key = |r: &Value| (r["eventSource"].as_str().unwrap().to_owned(), r["timeWindow"]["windowStart"].as_str().unwrap().to_owned());
    let window = "to_char(date_bin(INTERVAL '5 minutes', eventtime, TIMESTAMP '1970-01-01T00:00:00Z'), '%Y-%m-%dT%H:%M:%SZ')";
    let mut checked = 0;
    for (primary, p_expr) in &dims[..3] {
        let mine: Vec<&Value> = b.values().filter(|r| r["summary"]["primaryDimension"]["dimension"] == *primary).collect();
        let expected = counted(
            &whole,
            format!("SELECT eventsource, {window}, {p_expr}, count(*) FROM events WHERE {data} AND {until} AND {p_expr} IS NOT NULL GROUP BY 1, 2, 3"),
        )
        .await;
        assert_eq!(mine.len(), expected.len(), "{primary}: one record per source, window and value");
        for r in &mine {
            let (src, start) = key(r);
            let stat = &r["summary"]["primaryDimension"]["statistics"][0];
            let value = stat["name"].as_str().unwrap().to_owned();
            assert_eq!(stat["value"].as_i64(), expected.get(&vec![src.clone(), start.clone(), value]).copied(), "{r}");
        }
        for (detail, d_expr) in dims.iter().filter(|d| d.0 != *primary) {
            let expected = counted(&whole, format!(
                "SELECT eventsource, {window}, {p_expr}, {d_expr}, count(*) FROM events WHERE {data} AND {until} AND {p_expr} IS NOT NULL AND {d_expr} IS NOT NULL GROUP BY 1, 2, 3, 4"
            ))
            .await;
            let mut listed = 0;
            for r in &mine {
                let (src, start) = key(r);
                let value = r["summary"]["primaryDimension"]["statistics"][0]["name"].as_str().unwrap().to_owned();
                let Some(d) = r["summary"]["details"].as_array().unwrap().iter().find(|d| d["dimension"] == *detail) else { continue };
                for s in d["statistics"].as_array().unwrap() {
                    let k = vec![src.clone(), start.clone(), value.clone(), s["name"].as_str().unwrap().to_owned()];
                    assert_eq!(s["value"].as_i64(), expected.get(&k).copied(), "{primary} {detail} {k:?}");
                    listed += 1;
                    checked += 1;
                }
            }
            // Every value is listed (no window here reaches the cap of 50 values).
            assert_eq!(listed, expected.len(), "{primary} by {detail}");
        }
    }
    assert!(checked > 1000, "{checked} counts checked");
    let files =
        crate::common::files_under(&whole.join("AWSLogs")).into_iter().filter(|p| p.to_string_lossy().contains("/CloudTrail-Aggregated/us-east-1/")).count();
    assert!(files > 0);
    assert_eq!(scalar(&whole, "SELECT count(DISTINCT origin) FROM aggregated_events WHERE origin = 'prism'").await, 1);
}

/// The counts of a `SELECT keys…, count(*) … GROUP BY keys…`, by keys.
async fn counted(lake: &Path, sql: String) -> BTreeMap<Vec<String>, i64> {
    let mut m = BTreeMap::new();
    for b in query(lake, &sql).await {
        let cols: Vec<Vec<Option<String>>> = (0..b.num_columns() - 1).map(|i| crate::common::text_column(&b, i)).collect();
        let n = b.column(b.num_columns() - 1).as_any().downcast_ref::<arrow::array::Int64Array>().unwrap();
        for row in 0..b.num_rows() {
            m.insert(cols.iter().map(|c| c[row].clone().unwrap_or_default()).collect(), n.value(row));
        }
    }
    m
}
