//! The command line as a newcomer meets it: `prism sql` with no lake over their own files, the
//! shipped queries run by hand with a window, every shipped query on a new lake, and argument
//! values refused with exit status 2 and an example of a good one.

use std::path::Path;
use std::process::{Command, Output};

use crate::common::{log_path, prism_bin, record, run_ingest, write_gz};

fn prism(args: &[&str]) -> Output {
    Command::new(prism_bin()).args(args).current_dir(env!("CARGO_MANIFEST_DIR")).output().unwrap()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[test]
fn sql_without_a_lake_reads_a_users_csv_with_every_function() {
    let dir = tempfile::tempdir().unwrap();
    let csv = dir.path().join("series.csv");
    let mut body = String::from("t,v\n");
    for i in 0..30 {
        body.push_str(&format!("{i},{}\n", if i == 25 { 200 } else { 10 }));
    }
    std::fs::write(&csv, body).unwrap();
    let csv = csv.to_str().unwrap();

    // A file named in the query is a table.
    let o = prism(&["sql", "--format", "csv", "-c", &format!("SELECT count(*) AS n, sum(v) AS s FROM '{csv}'")]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    assert_eq!(text(&o.stdout), "n,s\n30,490\n");

    // CREATE EXTERNAL TABLE, the model's functions and the JSON functions.
    let sql = format!(
        "CREATE EXTERNAL TABLE s STORED AS CSV LOCATION '{csv}' OPTIONS ('format.has_header' 'true');
         SELECT t, v FROM (
             SELECT t, v, b['history'] AS h, deviation_score(CAST(v AS DOUBLE), b['expected']) AS score
             FROM (SELECT t, v, baseline(CAST(v AS DOUBLE), t, 1, 20) OVER (ORDER BY t) AS b FROM s))
         WHERE h >= 5 AND score > 6;
         SELECT json_get_str('{{\"a\":\"b\"}}', 'a') AS j"
    );
    let o = prism(&["sql", "--format", "csv", "-c", &sql]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    let out = text(&o.stdout);
    assert!(out.contains("t,v\n25,200\n"), "the spike, and only it, scores: {out}");
    assert!(out.ends_with("j\nb\n"), "{out}");

    // The lake's tables are not there, and saying so is the error.
    let o = prism(&["sql", "-c", "SELECT count(*) FROM events"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(text(&o.stderr).contains("events"), "{}", text(&o.stderr));
}

/// A lake of one ingested file, through `prism ingest` (which creates every table).
fn new_lake(dir: &Path) -> String {
    let archive = dir.join("archive");
    let mut r = record("e1", "2024-06-01T10:00:00Z", "us-east-1");
    r["errorCode"] = "AccessDenied".into();
    write_gz(&log_path(&archive, "111122223333", "us-east-1", "20240601", "A"), &[r, record("e2", "2024-06-01T10:05:00Z", "us-east-1")]);
    let lake = dir.join("lake");
    let (code, _) = run_ingest(&[archive.to_str().unwrap(), "--lake", lake.to_str().unwrap()]);
    assert_eq!(code, 0);
    lake.to_str().unwrap().to_owned()
}

#[test]
fn windowed_files_are_filled_by_flags_or_refused_with_the_reason() {
    let dir = tempfile::tempdir().unwrap();
    let lake = new_lake(dir.path());
    let file = "queries/access_denied_hot_spots.sql";

    let o = prism(&["sql", "--lake", &lake, "-f", file]);
    assert_eq!(o.status.code(), Some(1));
    let err = text(&o.stderr);
    assert!(err.contains("{start}/{end}") && err.contains("--window") && err.contains(file), "{err}");
    assert!(!err.contains("Expected"), "not a parser error: {err}");

    let o = prism(&["sql", "--lake", &lake, "--format", "csv", "-f", file, "--start", "2024-06-01T00:00:00Z", "--end", "2024-06-02T00:00:00Z"]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    assert!(text(&o.stdout).contains("user/alice,IAMUser,111122223333,1,2,"), "one denial of two calls: {}", text(&o.stdout));

    // A window ending now has none of 2024's events, but runs.
    let o = prism(&["sql", "--lake", &lake, "--format", "csv", "-f", file, "--window", "1h"]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    assert!(!text(&o.stdout).contains("user/alice"), "{}", text(&o.stdout));

    // Half a window is a usage error that says what is missing.
    let o = prism(&["sql", "--lake", &lake, "-f", file, "--start", "2024-06-01T00:00:00Z"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(text(&o.stderr).contains("--start needs --end or --window"), "{}", text(&o.stderr));
}

#[test]
fn every_shipped_query_runs_on_a_new_lake() {
    let dir = tempfile::tempdir().unwrap();
    let lake = new_lake(dir.path());
    let o =
        prism(&["sql", "--lake", &lake, "--format", "csv", "-c", "SELECT table_name FROM information_schema.tables WHERE table_schema = 'public' ORDER BY 1"]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    let tables = text(&o.stdout);
    for t in ["events", "ingest_log", "rejects", "ingested_files", "rollups", "insights", "insight_runs", "query_runs"] {
        assert!(tables.lines().any(|l| l == t), "{t} exists before anything fills it: {tables}");
    }
    let mut files: Vec<_> = std::fs::read_dir(Path::new(env!("CARGO_MANIFEST_DIR")).join("queries"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "sql"))
        .collect();
    files.sort();
    assert!(files.len() >= 10);
    for f in files {
        let f = f.to_str().unwrap();
        let o = prism(&["sql", "--lake", &lake, "--format", "csv", "-f", f, "--start", "2024-06-01T00:00:00Z", "--end", "2024-06-02T00:00:00Z"]);
        assert!(o.status.success(), "{f}: {}", text(&o.stderr));
    }
}

#[test]
fn bad_argument_values_exit_2_with_a_good_example() {
    for (args, says) in [
        (&["insights", "run", "--lake", "x", "--sensitivity", "0"][..], "like 0.5, 1 or 2"),
        (&["backfill", "x", "--lake", "y", "--sensitivity=-1"][..], "like 0.5, 1 or 2"),
        (&["ingest", "x", "--lake", "y", "--from", "2024/06/01"][..], "like 2024-06-30"),
        (&["insights", "run", "--lake", "x", "--until", "yesterday"][..], "RFC 3339"),
        (&["sql", "--window", "an hour", "-c", "SELECT 1"][..], "like 15m, 1h"),
    ] {
        let o = prism(args);
        assert_eq!(o.status.code(), Some(2), "{args:?}");
        assert!(text(&o.stderr).contains(says), "{args:?}: {}", text(&o.stderr));
    }
    let o = prism(&["ingest", "x", "--lake", "y", "--from", "2024-06-02", "--to", "2024-06-01"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(text(&o.stderr).contains("--from 2024-06-02 is after --to 2024-06-01"), "{}", text(&o.stderr));
}
