//! S3 end to end, against a real S3 protocol server started by the tests (tests/common/s3.rs):
//! archives read from a bucket, lakes and Insights files written to one, `prism backfill`
//! killed and resumed, listing restricted to the date folders, and injected faults.

mod common;

use std::path::PathBuf;
use std::process::{Command, Output};
use std::sync::OnceLock;

use common::prism_bin;
use common::s3::{Fault, S3Server};

const BOTH: &str = r#"[{"InsightType":"ApiCallRateInsight"},{"InsightType":"ApiErrorRateInsight"}]"#;

/// A generated archive: 1 account, 1 region, 9 days, labelled anomalies.
fn archive() -> &'static (tempfile::TempDir, PathBuf) {
    static ARCHIVE: OnceLock<(tempfile::TempDir, PathBuf)> = OnceLock::new();
    ARCHIVE.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let archive = dir.path().join("archive");
        let mut g = prism::generate::GenerateOptions::new(&archive);
        g.accounts = 1;
        g.regions = vec!["eu-west-1".into()];
        g.days = 9;
        g.events_per_day = 2_000;
        g.anomalies = 4;
        g.seed = 5;
        prism::generate::generate(&g).unwrap();
        (dir, archive)
    })
}

/// A server holding the archive under `trail/`.
fn server_with_archive() -> S3Server {
    let server = S3Server::start("trail-bucket");
    let n = server.upload(&archive().1, "trail/");
    assert!(n > 2000, "uploaded {n} files");
    server
}

fn prism(server: Option<&S3Server>, args: &[&str]) -> Output {
    let mut cmd = Command::new(prism_bin());
    cmd.args(args);
    if let Some(s) = server {
        cmd.envs(s.env());
    }
    cmd.output().unwrap()
}

fn ok(server: Option<&S3Server>, args: &[&str]) -> String {
    let out = prism(server, args);
    assert!(
        out.status.success(),
        "prism {args:?} failed ({:?}):\n{}\n{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The result of a query as CSV text.
fn sql(server: Option<&S3Server>, lake: &str, query: &str) -> String {
    ok(server, &["sql", "--lake", lake, "--format", "csv", "-c", query])
}

/// What two lakes must agree on: event count, distinct IDs, and every Insights record.
fn fingerprint(server: Option<&S3Server>, lake: &str) -> (String, String) {
    let counts = sql(
        server,
        lake,
        "SELECT count(*), count(DISTINCT eventid), min(eventtime), max(eventtime) FROM events",
    );
    let insights = sql(server, lake, "SELECT eventid, eventjson FROM insights ORDER BY eventid");
    (counts, insights)
}

fn local_reference() -> &'static (tempfile::TempDir, (String, String)) {
    static REF: OnceLock<(tempfile::TempDir, (String, String))> = OnceLock::new();
    REF.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let lake = dir.path().join("lake");
        let lake = lake.to_str().unwrap();
        ok(None, &["ingest", archive().1.to_str().unwrap(), "--lake", lake, "--quiet"]);
        ok(None, &["selectors", "put", "--lake", lake, "--insight-selectors", BOTH]);
        ok(None, &["insights", "backfill", "--lake", lake, "--quiet"]);
        let fp = fingerprint(None, lake);
        (dir, fp)
    })
}

fn event_count(fp: &(String, String)) -> u64 {
    fp.0.lines()
        .nth(1)
        .and_then(|l| l.split(',').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

#[test]
fn an_archive_in_s3_ingests_and_backfills_like_the_same_archive_on_disk() {
    let server = server_with_archive();
    let dir = tempfile::tempdir().unwrap();
    let lake = dir.path().join("lake");
    let lake = lake.to_str().unwrap();
    let source = server.url("trail/");
    ok(Some(&server), &["ingest", &source, "--lake", lake, "--quiet"]);
    ok(None, &["selectors", "put", "--lake", lake, "--insight-selectors", BOTH]);
    ok(None, &["insights", "backfill", "--lake", lake, "--quiet"]);
    let reference = &local_reference().1;
    assert!(event_count(reference) > 15_000, "{}", reference.0);
    assert!(
        reference.1.lines().count() > 2,
        "the archive's anomalies give Insights: {}",
        reference.1
    );
    assert_eq!(&fingerprint(None, lake), reference);
    // Every source file came through the server: its locations are s3:// URLs.
    let s3_files = sql(
        None,
        lake,
        "SELECT count(*) FROM ingested_files WHERE sourcefile LIKE 's3://trail-bucket/trail/AWSLogs/%'",
    );
    assert_ne!(s3_files.lines().nth(1), Some("0"), "{s3_files}");
}

#[test]
fn a_lake_and_insights_files_in_s3() {
    let server = server_with_archive();
    let lake = server.url("lake");
    let out = server.url("insights-out/");
    let source = server.url("trail/");
    // Day partitions: a lake in a bucket wants few, large objects (and the test server lists
    // by walking its folder, so thousands of minute files would only measure that).
    ok(Some(&server), &["ingest", &source, "--lake", &lake, "--granularity", "day", "--quiet"]);
    ok(Some(&server), &["selectors", "put", "--lake", &lake, "--insight-selectors", BOTH]);
    ok(Some(&server), &["insights", "backfill", "--lake", &lake, "--out", &out, "--quiet"]);
    assert_eq!(&fingerprint(Some(&server), &lake), &local_reference().1);
    assert!(!server.keys("lake/events/_delta_log/").is_empty());
    let files = server.keys("insights-out/AWSLogs/");
    assert!(
        !files.is_empty() && files.iter().all(|k| k.contains("/CloudTrail-Insight/")),
        "{files:?}"
    );
}

/// `prism backfill` with the archive in S3, as JSON summary and exit code.
fn backfill(server: &S3Server, lake: &str, extra: &[&str]) -> (i32, serde_json::Value, String) {
    backfill_with_env(server, lake, extra, &[])
}

/// [`backfill`] with extra environment variables.
fn backfill_with_env(server: &S3Server, lake: &str, extra: &[&str], env: &[(&str, &str)]) -> (i32, serde_json::Value, String) {
    let source = server.url("trail/");
    let mut args = vec!["backfill", source.as_str(), "--lake", lake, "--json"];
    args.extend_from_slice(extra);
    let out = Command::new(prism_bin()).args(&args).envs(server.env()).envs(env.iter().copied()).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    let summary = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("no JSON summary ({e}): {}\n{stderr}", String::from_utf8_lossy(&out.stdout)));
    (out.status.code().unwrap_or(-1), summary, stderr)
}

#[test]
fn backfill_killed_at_growing_delays_resumes_to_exact_counts() {
    let server = server_with_archive();
    let dir = tempfile::tempdir().unwrap();
    let lake = dir.path().join("lake");
    let lake_s = lake.to_str().unwrap();
    let source = server.url("trail/");
    let mut killed = 0;
    for delay_ms in [300u64, 900, 1800, 3000] {
        let mut child = Command::new(prism_bin())
            .args(["backfill", &source, "--lake", lake_s, "--quiet"])
            .envs(server.env())
            .spawn()
            .unwrap();
        std::thread::sleep(std::time::Duration::from_millis(delay_ms));
        if child.try_wait().unwrap().is_none() {
            child.kill().unwrap(); // SIGKILL
            killed += 1;
        }
        child.wait().unwrap();
    }
    assert!(
        killed >= 2,
        "the runs finished before they could be killed; the test proves nothing"
    );
    let (code, summary, stderr) = backfill(&server, lake_s, &[]);
    assert_eq!(code, 0, "{summary}\n{stderr}");
    assert_eq!(summary["complete"], true);
    assert_eq!(&fingerprint(None, lake_s), &local_reference().1);
    // A further run downloads nothing: every object is journaled.
    server.clear_seen();
    let (code, summary, _) = backfill(&server, lake_s, &[]);
    assert_eq!(code, 0);
    assert_eq!(summary["ingest"]["files_read"], 0, "{summary}");
    let gets = server
        .seen()
        .iter()
        .filter(|s| s.method == "GET" && s.path.contains("/trail/AWSLogs/") && !s.is_list())
        .count();
    assert_eq!(gets, 0);
}

#[test]
fn a_dated_backfill_lists_only_the_date_folders_of_its_range() {
    let server = server_with_archive();
    let dir = tempfile::tempdir().unwrap();
    let lake = dir.path().join("lake");
    let lake_s = lake.to_str().unwrap();
    // A dry run lists, downloads nothing, creates no lake, and says what a run would read.
    server.clear_seen();
    let (code, dry, stderr) = backfill(&server, lake_s, &["--from", "2024-01-03", "--to", "2024-01-04", "--dry-run"]);
    assert_eq!(code, 0, "{dry}\n{stderr}");
    assert!(server.seen().iter().all(|s| s.is_list()), "{:?}", server.seen());
    assert!(!lake.exists());
    assert!(dry["ingest"]["files_to_read"].as_u64().unwrap() > 0, "{dry}");
    server.clear_seen();
    let (code, summary, stderr) = backfill(&server, lake_s, &["--from", "2024-01-03", "--to", "2024-01-04", "--no-insights"]);
    assert_eq!(code, 0, "{summary}\n{stderr}");
    assert_eq!(summary["ingest"]["files_read"], dry["ingest"]["files_to_read"]);
    assert_eq!(summary["ingest"]["bytes_read"], dry["ingest"]["bytes_to_read"]);
    let lists: Vec<_> = server.seen().into_iter().filter(|s| s.is_list()).collect();
    let day_folders: Vec<String> = lists
        .iter()
        .filter(|l| l.param("delimiter").is_none())
        .map(|l| l.param("prefix").unwrap_or_default())
        .collect();
    let days: std::collections::BTreeSet<&str> = day_folders.iter().map(|p| &p[p.len().saturating_sub(11)..]).collect();
    assert!(!day_folders.is_empty(), "{lists:?}");
    for p in &day_folders {
        assert!(
            ["2024/01/03/", "2024/01/04/", "2024/01/05/"].iter().any(|d| p.ends_with(d)),
            "a listing outside the range's date folders: {p:?} (all: {day_folders:?})"
        );
    }
    assert_eq!(days.len(), 3, "{day_folders:?}");
    // Delimiter listings only walk down to the regions: AWSLogs/, the account, CloudTrail/.
    let walks = lists.iter().filter(|l| l.param("delimiter").is_some()).count();
    assert!(walks <= 4, "{lists:?}");
    // And the same days from a local folder give the same events.
    let local = dir.path().join("local");
    ok(
        None,
        &[
            "ingest",
            archive().1.to_str().unwrap(),
            "--lake",
            local.to_str().unwrap(),
            "--from",
            "2024-01-03",
            "--to",
            "2024-01-04",
            "--quiet",
        ],
    );
    let q = "SELECT count(*), count(DISTINCT eventid) FROM events";
    assert_eq!(sql(None, lake_s, q), sql(None, local.to_str().unwrap(), q));
    assert_eq!(
        summary["ingest"]["records_written"].as_u64().unwrap(),
        sql(None, lake_s, "SELECT count(*) FROM events")
            .lines()
            .nth(1)
            .unwrap()
            .parse::<u64>()
            .unwrap()
    );
}

#[test]
fn faults_are_retried_and_an_object_that_keeps_failing_is_reported() {
    let server = server_with_archive();
    let keys = server.keys("trail/AWSLogs/");
    let victim = keys.iter().find(|k| k.contains("/2024/01/05/")).unwrap().clone();
    let (slow, flaky) = (keys[100].clone(), keys[200].clone());
    // Throttling and errors on listings and objects, a dropped connection, a slow object.
    server.add_rule("GET /trail-bucket?", Fault::SlowDown, 2);
    server.add_rule(&flaky, Fault::InternalError, 2);
    server.add_rule(&keys[300], Fault::SlowDown, 3);
    server.add_rule(&keys[400], Fault::Drop, 1);
    server.add_rule(&slow, Fault::Slow(std::time::Duration::from_secs(2)), 1);
    server.add_rule(&victim, Fault::InternalError, u32::MAX);
    let lake = server.url("faulty-lake");
    let out = server.url("insights/");
    let quick_retries = [
        ("PRISM_S3_MAX_RETRIES", "4"),
        ("PRISM_S3_INIT_BACKOFF", "20ms"),
        ("PRISM_S3_MAX_BACKOFF", "200ms"),
        ("PRISM_S3_RETRY_TIMEOUT", "5s"),
    ];
    let run = |server: &S3Server| backfill_with_env(server, &lake, &["--granularity", "day", "--out", &out], &quick_retries);
    let (code, summary, stderr) = run(&server);
    assert_eq!(code, 3, "{summary}\n{stderr}");
    assert_eq!(summary["complete"], false);
    let unread: Vec<&str> = summary["unread"].as_array().unwrap().iter().filter_map(|v| v.as_str()).collect();
    assert_eq!(unread, vec![format!("s3://trail-bucket/{victim}").as_str()], "{summary}");
    assert!(stderr.contains("INCOMPLETE") && stderr.contains(&victim), "{stderr}");
    assert!(server.faults_injected() >= 10, "{}", server.faults_injected());
    // The object heals; the same command completes with the exact counts.
    server.clear_rules();
    let (code, summary, stderr) = run(&server);
    assert_eq!(code, 0, "{summary}\n{stderr}");
    assert_eq!(summary["ingest"]["files_read"], 1, "{summary}");
    assert_eq!(&fingerprint(Some(&server), &lake), &local_reference().1);
    assert!(!server.keys("insights/AWSLogs/").is_empty());
}
