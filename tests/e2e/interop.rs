//! Other engines read the lake: it is plain Delta (protocol reader 1, writer 2, no table
//! features), so delta-rs's Python package, a reader written independently of Prism's code,
//! reads every table and gets the same answers, before and after `prism optimize`.

use std::process::Command;

use crate::common::*;

const BOTH: &str = r#"[{"InsightType":"ApiCallRateInsight"},{"InsightType":"ApiErrorRateInsight"}]"#;

/// Queries whose answers hold only integers and strings (so no number or time formatting can
/// differ between the two), over every kind of table Prism writes.
const QUERIES: &[&str] = &[
    "SELECT awsregion, eventperiod, count(*), count(DISTINCT eventid), count(errorcode), CAST(min(eventtime) AS BIGINT), CAST(max(eventtime) AS BIGINT) FROM events GROUP BY 1, 2 ORDER BY 1, 2",
    "SELECT eventsource, eventname, count(*) FROM events GROUP BY 1, 2 ORDER BY 3 DESC, 1, 2 LIMIT 10",
    "SELECT useridentity['arn'], count(*) FROM events GROUP BY 1 ORDER BY 2 DESC, 1 LIMIT 5",
    "SELECT kind, count(*), sum(calls) FROM rollups GROUP BY 1 ORDER BY 1",
    "SELECT kind, count(*), count(DISTINCT sourcefile), sum(kept) FROM ingest_log GROUP BY 1 ORDER BY 1",
    "SELECT eventid, sharedeventid, insightstate, insighttype, insighteventname, awsregion, recipientaccountid FROM insights ORDER BY 1",
];

/// The answers of [`QUERIES`] from the Python `deltalake` package: one line per row, values
/// joined by `|`, `NULL` for null.
const READER: &str = r#"
import json, sys
from deltalake import DeltaTable, QueryBuilder
lake, queries = sys.argv[1], json.loads(sys.argv[2])
q = QueryBuilder()
for t in ["events", "rollups", "ingest_log", "insights"]:
    q.register(t, DeltaTable(f"{lake}/{t}"))
for sql in queries:
    t = q.execute(sql).read_all()
    cols = [t.column(i).to_pylist() for i in range(t.num_columns)]
    print("\n".join("|".join("NULL" if v is None else str(v) for v in row) for row in zip(*cols)))
    print("--")
"#;

fn python_answers(lake: &str) -> String {
    // .ci/run names a virtualenv's Python when the system's lacks the packages.
    let python = std::env::var("PRISM_TEST_PYTHON").unwrap_or_else(|_| "python3".into());
    let out = Command::new(python)
        .args(["-c", READER, lake, &serde_json::to_string(QUERIES).unwrap()])
        .output()
        .expect("python3 with the deltalake package (installed by .ci/run)");
    assert!(out.status.success(), "the deltalake reader failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}

fn prism_answers(lake: &str) -> String {
    let mut all = String::new();
    for sql in QUERIES {
        let out = Command::new(prism_bin()).args(["sql", "--lake", lake, "--format", "csv", "-c", sql]).output().unwrap();
        assert!(out.status.success(), "{sql}: {}", String::from_utf8_lossy(&out.stderr));
        // No value of these queries holds a comma or a quote: the CSV splits plainly.
        for line in String::from_utf8(out.stdout).unwrap().lines().skip(1) {
            all.push_str(&line.split(',').map(|v| if v.is_empty() { "NULL" } else { v }).collect::<Vec<_>>().join("|"));
            all.push('\n');
        }
        all.push_str("--\n");
    }
    all
}

fn prism(args: &[&str]) {
    let out = Command::new(prism_bin()).args(args).output().unwrap();
    assert!(matches!(out.status.code(), Some(0) | Some(3)), "prism {args:?}: {}", String::from_utf8_lossy(&out.stderr));
}

#[test]
fn the_python_deltalake_package_reads_every_table_as_prism_does() {
    let tmp = tempfile::tempdir().unwrap();
    let (archive, lake) = (tmp.path().join("archive"), tmp.path().join("lake"));
    prism::generate::generate(&one_account(&archive, "eu-west-1", 9, 2_000, 4, 8)).unwrap();
    let lake = lake.to_str().unwrap();
    prism(&["ingest", archive.to_str().unwrap(), "--lake", lake, "--buffer-mb", "2", "--quiet"]);
    prism(&["selectors", "put", "--lake", lake, "--insight-selectors", BOTH]);
    prism(&["insights", "backfill", "--lake", lake, "--quiet"]);
    let answers = prism_answers(lake);
    assert!(answers.lines().filter(|l| l.contains("ApiCallRateInsight")).count() >= 2, "the archive's anomalies give Insights:\n{answers}");
    assert_eq!(python_answers(lake), answers);
    // Compaction's commits (files removed and added, no data change) read the same.
    prism(&["optimize", "--lake", lake, "--quiet"]);
    assert_eq!(python_answers(lake), prism_answers(lake), "after optimize");
}
