//! S3 end to end, against a real S3 protocol server started by the tests (tests/e2e/common/s3.rs):
//! archives read from a bucket, lakes and Insights files written to one, `prism backfill`
//! killed and resumed, listing restricted to the date folders, and injected faults.

use std::path::PathBuf;
use std::process::{Command, Output};
use std::sync::OnceLock;

use crate::common::s3::{Fault, S3Server};
use crate::common::{kill_after, prism_bin};

const BOTH: &str = r#"[{"InsightType":"ApiCallRateInsight"},{"InsightType":"ApiErrorRateInsight"}]"#;

/// A generated archive: 1 account, 1 region, 9 days, labelled anomalies.
fn archive() -> &'static (tempfile::TempDir, PathBuf) {
    static ARCHIVE: OnceLock<(tempfile::TempDir, PathBuf)> = OnceLock::new();
    ARCHIVE.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let archive = dir.path().join("archive");
        prism::generate::generate(&crate::common::one_account(&archive, "eu-west-1", 9, 2_000, 4, 5)).unwrap();
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
    let counts = sql(server, lake, "SELECT count(*), count(DISTINCT eventid), min(eventtime), max(eventtime) FROM events");
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
    fp.0.lines().nth(1).and_then(|l| l.split(',').next()).and_then(|n| n.parse().ok()).unwrap_or(0)
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
    assert!(reference.1.lines().count() > 2, "the archive's anomalies give Insights: {}", reference.1);
    assert_eq!(&fingerprint(None, lake), reference);
    // Every source file came through the server: its locations are s3:// URLs.
    let s3_files = sql(None, lake, "SELECT count(*) FROM ingested_files WHERE sourcefile LIKE 's3://trail-bucket/trail/AWSLogs/%'");
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
    assert!(!files.is_empty() && files.iter().all(|k| k.contains("/CloudTrail-Insight/")), "{files:?}");
}

/// Two ingests of the same archive at once into one lake in the bucket (created by both):
/// Delta's commits rely on S3's create-only PUT (`If-None-Match: *`), which the test server
/// makes atomic as S3 does. Each event is stored once, the journal's `kept` adds up to them,
/// and the rollups count each events file once.
#[test]
fn concurrent_ingests_into_a_lake_in_s3_store_each_event_once() {
    let server = server_with_archive();
    let (lake, source) = (server.url("lake"), server.url("trail/"));
    let writer = || {
        Command::new(prism_bin())
            .args(["ingest", &source, "--lake", &lake, "--granularity", "day", "--buffer-mb", "1", "--jobs", "1", "--json"])
            .envs(server.env())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap()
    };
    let mut conflicts = 0;
    for w in [writer(), writer()] {
        let out = w.wait_with_output().unwrap();
        assert!(out.status.success(), "a writer failed: {}", String::from_utf8_lossy(&out.stderr));
        let summary: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        conflicts += summary["commit_conflicts"].as_u64().unwrap();
    }
    assert!(conflicts > 0, "no commit of one writer met the other's");
    let counts = sql(Some(&server), &lake, "SELECT count(*), count(DISTINCT eventid), min(eventtime), max(eventtime) FROM events");
    let reference = &local_reference().1;
    assert_eq!(counts, reference.0);
    let events = event_count(reference).to_string();
    let kept = sql(Some(&server), &lake, "SELECT sum(kept) FROM ingested_files");
    assert_eq!(kept.lines().nth(1), Some(events.as_str()), "{kept}");
    let counted = sql(Some(&server), &lake, "SELECT sum(calls) FROM rollups WHERE kind = 'file'");
    assert_eq!(counted.lines().nth(1), Some(events.as_str()), "{counted}");
}

/// The scheduler's lease on a lake in S3 (its files are create-only PUTs, as Delta commits):
/// a second scheduler is refused while one serves, and goes ahead once it stopped.
#[test]
fn one_scheduler_at_a_time_on_a_lake_in_s3() {
    let server = server_with_archive();
    let (lake, source) = (server.url("lake"), server.url("trail/"));
    ok(Some(&server), &["ingest", &source, "--lake", &lake, "--granularity", "day", "--quiet"]);
    let dir = tempfile::tempdir().unwrap();
    let (queries, out) = (dir.path().join("queries"), dir.path().join("out"));
    std::fs::create_dir_all(&queries).unwrap();
    std::fs::write(queries.join("total.sql"), "-- schedule: 0 0 1 * *\n-- output: {name}.json\nSELECT count(*) AS n FROM events\n").unwrap();
    let (q, o) = (queries.to_str().unwrap(), out.to_str().unwrap());
    let mut serve = Command::new(prism_bin())
        .args(["schedule", "serve", "--lake", &lake, "--queries", q, "--out", o, "--poll", "1"])
        .envs(server.env())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    while !out.join("total.json").exists() {
        assert!(serve.try_wait().unwrap().is_none(), "serve ended early");
        assert!(std::time::Instant::now() < deadline, "the query did not run");
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let second = prism(Some(&server), &["schedule", "run", "--lake", &lake, "--queries", q, "--out", o, "--once"]);
    let err = String::from_utf8_lossy(&second.stderr);
    assert_eq!(second.status.code(), Some(1), "{err}");
    assert!(err.contains(&format!("another process is doing this on the lake: `prism schedule serve` (pid {} on", serve.id())), "{err}");
    Command::new("kill").args(["-TERM", &serve.id().to_string()]).status().unwrap();
    assert!(serve.wait().unwrap().success());
    let third = prism(Some(&server), &["schedule", "run", "--lake", &lake, "--queries", q, "--out", o, "--once"]);
    assert_eq!(third.status.code(), Some(0), "{}", String::from_utf8_lossy(&third.stderr));
    assert!(String::from_utf8_lossy(&third.stdout).contains("not due total"));
}

/// Workers read a lake in S3 themselves, with their own credentials (here the test server's,
/// in their environment): a query on two `prism worker` processes gives plain `prism sql`'s rows.
#[cfg(feature = "distributed")]
#[test]
fn workers_read_a_lake_in_s3_with_their_own_credentials() {
    let server = server_with_archive();
    let (lake, source) = (server.url("lake"), server.url("trail/"));
    ok(Some(&server), &["ingest", &source, "--lake", &lake, "--granularity", "day", "--quiet"]);
    let workers = [crate::common::WorkerProcess::start_with(&server.env()), crate::common::WorkerProcess::start_with(&server.env())];
    let list = format!("{},{}", workers[0].url, workers[1].url);
    let split = "SET distributed.file_scan_config_bytes_per_partition = 4096";
    let query = "SELECT eventname, count(*), count(DISTINCT eventid), max(eventtime) FROM events GROUP BY 1 ORDER BY 1";
    let on_workers = |sql: &str| ok(Some(&server), &["sql", "--lake", &lake, "--format", "csv", "--workers", &list, "-c", split, "-c", sql]);
    assert_eq!(on_workers(query), sql(Some(&server), &lake, query));
    let plan = on_workers(&format!("EXPLAIN ANALYZE {query}"));
    assert!(plan.contains("tasks=2") && plan.contains("DistributedLeafExec"), "{plan}");
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
    let summary = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("no JSON summary ({e}): {}\n{stderr}", String::from_utf8_lossy(&out.stdout)));
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
        let mut command = Command::new(prism_bin());
        command.args(["backfill", &source, "--lake", lake_s, "--quiet"]).envs(server.env());
        killed += u32::from(kill_after(command, delay_ms));
    }
    assert!(killed >= 2, "the runs finished before they could be killed; the test proves nothing");
    let (code, summary, stderr) = backfill(&server, lake_s, &[]);
    assert_eq!(code, 0, "{summary}\n{stderr}");
    assert_eq!(summary["complete"], true);
    assert_eq!(&fingerprint(None, lake_s), &local_reference().1);
    // A further run downloads nothing: every object is journaled.
    server.clear_seen();
    let (code, summary, _) = backfill(&server, lake_s, &[]);
    assert_eq!(code, 0);
    assert_eq!(summary["ingest"]["files_read"], 0, "{summary}");
    let gets = server.seen().iter().filter(|s| s.method == "GET" && s.path.contains("/trail/AWSLogs/") && !s.is_list()).count();
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
    let day_folders: Vec<String> = lists.iter().filter(|l| l.param("delimiter").is_none()).map(|l| l.param("prefix").unwrap_or_default()).collect();
    let days: std::collections::BTreeSet<&str> = day_folders.iter().map(|p| &p[p.len().saturating_sub(11)..]).collect();
    assert!(!day_folders.is_empty(), "{lists:?}");
    for p in &day_folders {
        assert!(
            ["2024/01/03/", "2024/01/04/", "2024/01/05/"].iter().any(|d| p.ends_with(d)),
            "a listing outside the range's date folders: {p:?} (all: {day_folders:?})"
        );
    }
    assert_eq!(days.len(), 3, "{day_folders:?}");
    // Delimiter listings only walk down to the regions: AWSLogs/, and the account's
    // CloudTrail/, CloudTrail-NetworkActivity/ and CloudTrail-Aggregated/.
    let walks = lists.iter().filter(|l| l.param("delimiter").is_some()).count();
    assert!(walks <= 5, "{lists:?}");
    // And the same days from a local folder give the same events.
    let local = dir.path().join("local");
    ok(None, &["ingest", archive().1.to_str().unwrap(), "--lake", local.to_str().unwrap(), "--from", "2024-01-03", "--to", "2024-01-04", "--quiet"]);
    let q = "SELECT count(*), count(DISTINCT eventid) FROM events";
    assert_eq!(sql(None, lake_s, q), sql(None, local.to_str().unwrap(), q));
    assert_eq!(
        summary["ingest"]["records_written"].as_u64().unwrap(),
        sql(None, lake_s, "SELECT count(*) FROM events").lines().nth(1).unwrap().parse::<u64>().unwrap()
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
    let quick_retries = [("PRISM_S3_MAX_RETRIES", "4"), ("PRISM_S3_INIT_BACKOFF", "20ms"), ("PRISM_S3_MAX_BACKOFF", "200ms"), ("PRISM_S3_RETRY_TIMEOUT", "5s")];
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

/// Credentials that expire mid-run (S3's `400 ExpiredToken` for every request after a point),
/// with the lake on disk and with the lake in the same bucket: the run stops with an error that
/// names a key and the cause and says what to do, leaves the lake consistent, and the same
/// command completes once the credentials are renewed.
#[test]
fn credentials_that_expire_mid_run_are_reported_and_the_run_resumes() {
    let server = server_with_archive();
    let dir = tempfile::tempdir().unwrap();
    let local = dir.path().join("lake");
    for lake in [local.to_str().unwrap().to_owned(), server.url("lake")] {
        let source = server.url("trail/");
        let args = ["backfill", source.as_str(), "--lake", &lake, "--granularity", "day", "--quiet"];
        server.expire_credentials_after(400);
        let out = prism(Some(&server), &args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{lake}: {stderr}");
        assert!(stderr.contains("ExpiredToken") && stderr.contains("trail-bucket/"), "{lake}: {stderr}");
        assert!(stderr.contains("renew"), "the hint: {stderr}");
        assert!(!stderr.contains("panicked"), "{stderr}");
        assert!(stderr.lines().count() <= 3, "one error, not one per object: {stderr}");
        server.renew_credentials();
        // Whatever was committed reads, with no event twice.
        let twice = sql(Some(&server), &lake, "SELECT count(*) - count(DISTINCT eventid) FROM events");
        assert_eq!(twice.lines().nth(1), Some("0"), "{lake}: {twice}");
        ok(Some(&server), &args);
        assert_eq!(&fingerprint(Some(&server), &lake), &local_reference().1, "{lake}");
    }
}

/// A refused listing fails the run with one line that names the location and says the store's
/// answer once, not once per layer of the error.
#[test]
fn a_refused_listing_is_one_clear_error() {
    let server = server_with_archive();
    let dir = tempfile::tempdir().unwrap();
    let lake = dir.path().join("lake");
    let source = server.url("trail/AWSLogs/");
    let out = Command::new(prism_bin())
        .args(["ingest", &source, "--lake", lake.to_str().unwrap()])
        .envs(server.env())
        .env("AWS_ACCESS_KEY_ID", "nobody")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    let line = stderr.lines().find(|l| l.starts_with("error: ")).unwrap_or_else(|| panic!("no error line: {stderr}"));
    assert!(line.contains(&format!("cannot list `{source}`")), "{line}");
    assert_eq!(line.matches("NotSignedUp").count(), 1, "{line}");
    assert_eq!(line.matches("cannot list").count(), 1, "{line}");
}

/// Downloads run ahead of the parsers, as many at once as `--downloads` says and no more: with
/// one parser and slow answers, the server sees that many GETs open together, and the lake ends
/// with the same events as from the folder.
#[test]
fn downloads_run_ahead_of_the_parsers_and_stay_bounded() {
    let server = server_with_archive();
    // The first 40 object GETs are held 300 ms each: long enough that downloads overlap.
    server.add_rule("GET /trail-bucket/trail/", Fault::Slow(std::time::Duration::from_millis(300)), 40);
    let dir = tempfile::tempdir().unwrap();
    let lake = dir.path().join("lake");
    let lake = lake.to_str().unwrap();
    let source = server.url("trail/AWSLogs/");
    let out = ok(Some(&server), &["ingest", &source, "--lake", lake, "--jobs", "1", "--downloads", "6", "--json"]);
    let summary: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(summary["files_read"].as_u64(), Some(server.keys("trail/AWSLogs/").len() as u64), "{summary}");
    let most = server.max_gets_in_flight();
    assert!((4..=6).contains(&most), "{most} GETs at once with --jobs 1 --downloads 6");
    let counts = sql(None, lake, "SELECT count(*), count(DISTINCT eventid), min(eventtime), max(eventtime) FROM events");
    assert_eq!(counts, local_reference().1.0);
}

/// Files with names that sort awkwardly around `/` (`a+b`, `a-b`, `a.b` < `a/…` < `a0`), a
/// non-ASCII name, deep and empty folders, and a folder of 24 keys to page through. Each
/// file's content is its key, so sizes tell files apart.
fn awkward_tree(bucket: &std::path::Path) -> Vec<String> {
    let mut keys: Vec<String> = [
        "a+b",
        "a-b",
        "a.b",
        "a/b-c",
        "a/b.d/e",
        "a/b/c-d",
        "a/b/c.e",
        "a/b/cd/e",
        "a/bc",
        "a0",
        "a b/x",
        "ab/c",
        "b-/c",
        "b.c",
        "b/c",
        "deep/1/2/3/4/5/6/f",
        "deep/1/2/3/4/5/6/g",
        "deep/1/2/x",
        "deep/1/x-",
        "deep/1-",
        "ü/x",
        "üb",
        "z",
    ]
    .into_iter()
    .map(str::to_owned)
    .chain((0..24).map(|i| format!("many/{i:03}")))
    .collect();
    for k in &keys {
        let path = bucket.join(k);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, k.as_bytes()).unwrap();
    }
    for empty in ["empty", "a/empty", "deep/1/2/3/void/null", "many/empty"] {
        std::fs::create_dir_all(bucket.join(empty)).unwrap();
    }
    keys.sort();
    keys
}

/// What a listing must give, by brute force over every key (sorted): the keys after `after`
/// starting with `prefix`, those with `delimiter` after the prefix rolled up into their common
/// prefix (`true`), common prefixes at or before `after` left out.
fn expected_listing(keys: &[String], prefix: &str, delimiter: Option<&str>, after: &str) -> Vec<(String, bool)> {
    let mut out: Vec<(String, bool)> = Vec::new();
    for k in keys.iter().filter(|k| k.starts_with(prefix) && k.as_str() > after) {
        let item = match delimiter.and_then(|d| k[prefix.len()..].find(d).map(|at| k[..prefix.len() + at + d.len()].to_owned())) {
            Some(common) if common.as_str() <= after => continue,
            Some(common) => (common, true),
            None => (k.clone(), false),
        };
        if out.last() != Some(&item) {
            out.push(item);
        }
    }
    out
}

/// Lists page by page through object_store's raw ListObjectsV2 client: the items of all pages in
/// order (keys and common prefixes merged by key within a page), and the pages' sizes.
async fn list_pages(
    client: &object_store::aws::AmazonS3,
    prefix: &str,
    delimiter: Option<&str>,
    after: &str,
    max_keys: usize,
) -> (Vec<(String, bool)>, Vec<usize>, Vec<object_store::ObjectMeta>) {
    use object_store::list::{PaginatedListOptions, PaginatedListStore};
    let (mut items, mut sizes, mut metas, mut token) = (Vec::new(), Vec::new(), Vec::new(), None);
    loop {
        let opts = PaginatedListOptions {
            offset: (!after.is_empty()).then(|| after.to_owned()),
            delimiter: delimiter.map(|d| d.to_owned().into()),
            max_keys: Some(max_keys),
            page_token: token.take(),
            ..Default::default()
        };
        let page = client.list_paginated((!prefix.is_empty()).then_some(prefix), opts).await.unwrap();
        // object_store drops the trailing `/` of a common prefix; other delimiters stay.
        let d = delimiter.unwrap_or("");
        let mut here: Vec<(String, bool)> = page.result.objects.iter().map(|o| (o.location.to_string(), false)).collect();
        here.extend(page.result.common_prefixes.iter().map(|p| {
            let p = p.to_string();
            (if p.ends_with(d) { p } else { format!("{p}/") }, true)
        }));
        here.sort();
        sizes.push(here.len());
        items.extend(here);
        metas.extend(page.result.objects);
        match page.page_token {
            Some(t) => token = Some(t),
            None => return (items, sizes, metas),
        }
    }
}

#[test]
fn the_server_lists_awkward_names_page_by_page_in_key_order() {
    use futures::TryStreamExt;
    use object_store::ObjectStore;
    use object_store::path::Path as ObjectPath;
    let server = S3Server::start("list-bucket");
    let stock = S3Server::start_with("list-bucket", crate::common::s3::Listing::Stock);
    let keys = awkward_tree(&server.root.join("list-bucket"));
    awkward_tree(&stock.root.join("list-bucket"));
    let (client, stock_client) = (server.client(), stock.client());
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async {
        let prefixes = ["", "a", "a/", "a/b", "a/b/", "a/b/c", "a-", "b", "deep/1", "deep/1/2/3/", "many/0", "many/01", "ü", "nope/", "a/b/c/d"];
        let afters = ["", "a", "a/", "a/b", "a-b", "a/b/c", "deep/1/2", "many/015", "ü"];
        let mut checked = 0;
        for (i, prefix) in prefixes.iter().enumerate() {
            for delimiter in [None, Some("/"), Some("-")] {
                for (j, after) in afters.iter().enumerate() {
                    let max_keys = [1, 2, 7, 1000][(i + j) % 4];
                    let want = expected_listing(&keys, prefix, delimiter, after);
                    let (got, sizes, metas) = list_pages(&client, prefix, delimiter, after, max_keys).await;
                    let case = format!("prefix {prefix:?}, delimiter {delimiter:?}, after {after:?}, max_keys {max_keys}");
                    assert_eq!(got, want, "{case}");
                    // Every page but the last is full, and the last is not empty unless it is the only one.
                    let (last, full) = sizes.split_last().unwrap();
                    assert!(full.iter().all(|n| *n == max_keys) && *last <= max_keys, "{case}: pages {sizes:?}");
                    assert!(*last > 0 || sizes.len() == 1, "{case}: pages {sizes:?}");
                    for m in &metas {
                        let file = std::fs::metadata(server.root.join("list-bucket").join(m.location.as_ref())).unwrap();
                        assert_eq!(m.size, file.len(), "{case}: {}", m.location);
                        let mtime: chrono::DateTime<chrono::Utc> = file.modified().unwrap().into();
                        assert!((m.last_modified - mtime).num_seconds().abs() <= 1, "{case}: {} {}", m.last_modified, mtime);
                    }
                    // s3s-fs's own listing gives the same pages.
                    let (stock_got, stock_sizes, _) = list_pages(&stock_client, prefix, delimiter, after, max_keys).await;
                    assert_eq!((&got, &sizes), (&stock_got, &stock_sizes), "{case}: against s3s-fs");
                    checked += want.len();
                }
            }
        }
        assert!(checked > 1000, "{checked}");
        // The listings Prism and deltalake make: flat, by folder, with delimiter, with offset.
        let all: Vec<String> = client.list(None).map_ok(|m| m.location.to_string()).try_collect().await.unwrap();
        assert_eq!(all, keys);
        let under_a: Vec<String> = client.list(Some(&ObjectPath::from("a"))).map_ok(|m| m.location.to_string()).try_collect().await.unwrap();
        assert_eq!(under_a, keys.iter().filter(|k| k.starts_with("a/")).cloned().collect::<Vec<_>>());
        let level = client.list_with_delimiter(Some(&ObjectPath::from("a"))).await.unwrap();
        let names: Vec<String> = level.objects.iter().map(|m| m.location.to_string()).collect();
        let folders: Vec<String> = level.common_prefixes.iter().map(|p| p.to_string()).collect();
        assert_eq!((names, folders), (vec!["a/b-c".to_owned(), "a/bc".to_owned()], vec!["a/b".to_owned(), "a/b.d".to_owned()]));
        let top = client.list_with_delimiter(None).await.unwrap();
        let folders: Vec<String> = top.common_prefixes.iter().map(|p| p.to_string()).collect();
        assert_eq!(folders, ["a", "a b", "ab", "b", "b-", "deep", "many", "ü"]);
        let offset = ObjectPath::from("a/b/c");
        let after: Vec<String> = client.list_with_offset(None, &offset).map_ok(|m| m.location.to_string()).try_collect().await.unwrap();
        assert_eq!(after, keys.iter().filter(|k| k.as_str() > "a/b/c").cloned().collect::<Vec<_>>());
    });
}

/// `prism ingest --dry-run --json` summary.
fn dry_run(server: &S3Server, source: &str, lake: &str, extra: &[&str]) -> serde_json::Value {
    let mut args = vec!["ingest", source, "--lake", lake, "--dry-run", "--json"];
    args.extend_from_slice(extra);
    serde_json::from_str(&ok(Some(server), &args)).unwrap()
}

#[test]
fn an_undated_listing_lists_each_region_folder_and_finds_what_a_flat_listing_finds() {
    let server = S3Server::start("mixed-bucket");
    let local = tempfile::tempdir().unwrap();
    let files = [
        "labels.json",
        "notes.txt",
        "exports/e.json",
        "AWSLogs/111111111111/readme.txt",
        "AWSLogs/111111111111/CloudTrail/us-east-1/2024/01/01/a.json.gz",
        "AWSLogs/111111111111/CloudTrail/us-east-1/2024/01/02/b.json.gz",
        "AWSLogs/111111111111/CloudTrail/us-east-1/2024/01/02/c.json.gz",
        "AWSLogs/111111111111/CloudTrail/us-east-1/2024/01/03/d.json.gz",
        "AWSLogs/111111111111/CloudTrail/eu-west-1/2024/01/02/e.json.gz",
        "AWSLogs/111111111111/CloudTrail-Digest/us-east-1/2024/01/02/f.json.gz",
        "AWSLogs/111111111111/Config/us-east-1/2024/01/02/ConfigSnapshot/g.json.gz",
        "AWSLogs/o-abcdefghij/222222222222/CloudTrail/top.json",
        "AWSLogs/o-abcdefghij/222222222222/CloudTrail/ap-south-1/2024/01/02/h.json.gz",
        "AWSLogs/o-abcdefghij/222222222222/CloudTrail/ap-south-1/2024/01/05/i.json.gz",
        "AWSLogs/o-abcdefghij/222222222222/CloudTrail-Insight/ap-south-1/2024/01/02/j.json.gz",
    ];
    for root in [local.path().to_path_buf(), server.root.join("mixed-bucket/trail")] {
        for f in files {
            let path = root.join(f);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(&path, f.as_bytes()).unwrap();
        }
    }
    let lake = local.path().join("no-lake");
    let lake = lake.to_str().unwrap();
    let same = ["files_listed", "files_skipped", "skipped_by_reason", "files_to_read", "bytes_to_read"];
    server.clear_seen();
    let s3 = dry_run(&server, &server.url("trail/"), lake, &[]);
    let disk = dry_run(&server, local.path().to_str().unwrap(), lake, &[]);
    assert_eq!(s3["files_listed"], files.len(), "{s3}");
    for field in same {
        assert_eq!(s3[field], disk[field], "{field}: {s3}\n{disk}");
    }
    // Delimiter listings down to the regions, then every other folder in full: one listing for
    // each region, and the digest, Insight, Config and exports folders (counted as skipped).
    let lists: Vec<_> = server.seen().into_iter().filter(|s| s.is_list()).collect();
    let mut in_full: Vec<String> = lists.iter().filter(|l| l.param("delimiter").is_none()).map(|l| l.param("prefix").unwrap_or_default()).collect();
    in_full.sort();
    let want = [
        "trail/AWSLogs/111111111111/CloudTrail-Digest/",
        "trail/AWSLogs/111111111111/CloudTrail/eu-west-1/",
        "trail/AWSLogs/111111111111/CloudTrail/us-east-1/",
        "trail/AWSLogs/111111111111/Config/",
        "trail/AWSLogs/o-abcdefghij/222222222222/CloudTrail-Insight/",
        "trail/AWSLogs/o-abcdefghij/222222222222/CloudTrail/ap-south-1/",
        "trail/exports/",
    ];
    assert_eq!(in_full, want, "{lists:?}");
    // trail/, AWSLogs/, the organization, two accounts and their CloudTrail/ folders.
    assert_eq!(lists.len() - in_full.len(), 7, "{lists:?}");
    // With dates, the same files to read from the date folders alone.
    let range = ["--from", "2024-01-01", "--to", "2024-01-01"];
    let (s3, disk) = (dry_run(&server, &server.url("trail/"), lake, &range), dry_run(&server, local.path().to_str().unwrap(), lake, &range));
    assert_eq!((&s3["files_to_read"], &s3["bytes_to_read"]), (&disk["files_to_read"], &disk["bytes_to_read"]), "{s3}\n{disk}");
    // a; b, c, e and h from the day after (late deliveries); exports/e.json; CloudTrail/top.json.
    assert_eq!(s3["files_to_read"], 7, "{s3}");
}
