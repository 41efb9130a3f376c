//! End-to-end tests of `prism schedule`: the real binary on a small lake whose events sit at
//! known times, with time moved by `--now`.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use serde_json::Value;

fn fixture_queries() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/schedule")
}

fn event(id: &str, time: &str, name: &str) -> Value {
    let mut r = crate::common::record(id, time, "us-east-1");
    r["eventName"] = Value::from(name);
    r
}

/// A lake with events around the hour 11:00–12:00 of 2024-06-01, and one on 2024-06-03 08:15.
/// In [11:00, 12:00): DescribeInstances 1, GetObject 2 (the events at 10:59:59 and 12:00 are
/// outside).
fn lake(dir: &Path) -> PathBuf {
    let archive = dir.join("archive");
    let day1 = [
        event("e1", "2024-06-01T10:59:59Z", "DescribeInstances"),
        event("e2", "2024-06-01T11:00:00Z", "DescribeInstances"),
        event("e3", "2024-06-01T11:30:00Z", "GetObject"),
        event("e4", "2024-06-01T11:59:59Z", "GetObject"),
        event("e5", "2024-06-01T12:00:00Z", "DescribeInstances"),
    ];
    crate::common::write_gz(&crate::common::log_path(&archive, "111122223333", "us-east-1", "20240601", "a"), &day1);
    let day3 = [event("e6", "2024-06-03T08:15:00Z", "PutObject")];
    crate::common::write_gz(&crate::common::log_path(&archive, "111122223333", "us-east-1", "20240603", "b"), &day3);
    let lake = dir.join("lake");
    let (code, summary) = crate::common::run_ingest(&[archive.to_str().unwrap(), "--lake", lake.to_str().unwrap()]);
    assert_eq!(code, 0, "{summary}");
    lake
}

/// A temporary folder holding the lake, a queries folder and an output folder.
struct Setup {
    _dir: tempfile::TempDir,
    lake: PathBuf,
    queries: PathBuf,
    out: PathBuf,
}

/// A lake ([`lake`]) and a queries folder holding `files` (name, text).
fn setup(files: &[(&str, &str)]) -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let lake = lake(dir.path());
    let queries = dir.path().join("queries");
    std::fs::create_dir_all(&queries).unwrap();
    let out = dir.path().join("out");
    let setup = Setup { lake, queries, out, _dir: dir };
    for (name, text) in files {
        setup.write(name, text);
    }
    setup
}

impl Setup {
    fn write(&self, name: &str, text: &str) {
        std::fs::write(self.queries.join(name), text).unwrap();
    }

    fn output(&self, path: &str) -> String {
        std::fs::read_to_string(self.out.join(path)).unwrap()
    }
}

fn prism(args: &[&str]) -> Output {
    Command::new(crate::common::prism_bin()).args(args).output().unwrap()
}

/// `prism schedule run --once --json` at `now`: (exit code, summary).
fn run_once(lake: &Path, queries: &Path, out: &Path, now: &str) -> (i32, Value) {
    let o = schedule("run", lake, queries, &["--once", "--json", "--out", out.to_str().unwrap(), "--now", now]).output().unwrap();
    let code = o.status.code().unwrap_or(-1);
    let summary = serde_json::from_slice(&o.stdout).unwrap_or_else(|e| {
        panic!("no JSON ({e}); code {code}\nstdout: {}\nstderr: {}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
    });
    (code, summary)
}

/// `prism schedule <command> --lake LAKE --queries QUERIES …extra`.
fn schedule(command: &str, lake: &Path, queries: &Path, extra: &[&str]) -> Command {
    let mut c = Command::new(crate::common::prism_bin());
    c.args(["schedule", command, "--lake", lake.to_str().unwrap(), "--queries", queries.to_str().unwrap()]);
    c.args(extra);
    c
}

/// Rows of `prism sql --format json`.
fn sql(lake: &Path, query: &str) -> Vec<Value> {
    let o = prism(&["sql", "--lake", lake.to_str().unwrap(), "--format", "json", "-c", query]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    serde_json::from_slice::<Vec<Value>>(&o.stdout).unwrap()
}

fn names(runs: &Value) -> Vec<&str> {
    runs.as_array().unwrap().iter().map(|r| r["query"].as_str().unwrap()).collect()
}

#[test]
fn never_run_query_is_due_once_per_slot_and_a_missed_day_runs_once() {
    let dir = tempfile::tempdir().unwrap();
    let lake = lake(dir.path());
    let out = dir.path().join("out");

    // Never ran: due for the latest slot, 12:00, with the window [11:00, 12:00).
    let (code, s) = run_once(&lake, &fixture_queries(), &out, "2024-06-01T12:30:00Z");
    assert_eq!(code, 0, "{s}");
    assert_eq!(names(&s["runs"]), ["hourly_calls"]);
    let run = &s["runs"][0];
    assert_eq!(run["status"], "ok");
    assert_eq!(run["slot"], "2024-06-01T12:00:00Z");
    assert_eq!(run["window_start"], "2024-06-01T11:00:00Z");
    assert_eq!(run["window_end"], "2024-06-01T12:00:00Z");
    assert_eq!(run["rows"], 2);
    let file = out.join("results/hourly_calls/2024-06-01/20240601T1200Z.csv");
    assert_eq!(run["output"], file.to_str().unwrap());
    assert_eq!(std::fs::read_to_string(&file).unwrap(), "eventname,calls\nDescribeInstances,1\nGetObject,2\n");
    // The output is what the same SQL gives through `prism sql`, and no temporary file is left.
    let same = sql(
        &lake,
        "SELECT eventname, count(*) AS calls FROM events WHERE eventtime >= TIMESTAMP '2024-06-01T11:00:00Z' \
         AND eventtime < TIMESTAMP '2024-06-01T12:00:00Z' GROUP BY eventname ORDER BY eventname",
    );
    assert_eq!(same, vec![serde_json::json!({"eventname": "DescribeInstances", "calls": 1}), serde_json::json!({"eventname": "GetObject", "calls": 2})]);
    assert_eq!(std::fs::read_dir(file.parent().unwrap()).unwrap().count(), 1);

    // Same time again, and later within the same hour: nothing is due.
    for now in ["2024-06-01T12:30:00Z", "2024-06-01T12:59:59Z"] {
        let (code, s) = run_once(&lake, &fixture_queries(), &out, now);
        assert_eq!(code, 0, "{s}");
        assert_eq!(s["runs"], serde_json::json!([]), "{now}");
        assert_eq!(s["not_due"][0]["name"], "hourly_calls");
        assert_eq!(s["not_due"][0]["last_ok_slot"], "2024-06-01T12:00:00Z");
        assert_eq!(s["not_due"][0]["next_slot"], "2024-06-01T13:00:00Z");
    }

    // The machine was off for almost two days: one run, for the latest slot only.
    let (code, s) = run_once(&lake, &fixture_queries(), &out, "2024-06-03T09:05:00Z");
    assert_eq!(code, 0, "{s}");
    assert_eq!(names(&s["runs"]), ["hourly_calls"]);
    assert_eq!(s["runs"][0]["slot"], "2024-06-03T09:00:00Z");
    assert_eq!(s["runs"][0]["window_start"], "2024-06-03T08:00:00Z");
    let file = out.join("results/hourly_calls/2024-06-03/20240603T0900Z.csv");
    assert_eq!(std::fs::read_to_string(&file).unwrap(), "eventname,calls\nPutObject,1\n");
    let (_, s) = run_once(&lake, &fixture_queries(), &out, "2024-06-03T09:06:00Z");
    assert_eq!(s["runs"], serde_json::json!([]));

    // The history holds exactly the two runs.
    let rows = sql(&lake, "SELECT query, slot, status, rows FROM query_runs ORDER BY slot");
    assert_eq!(
        rows,
        vec![
            serde_json::json!({"query": "hourly_calls", "slot": "2024-06-01T12:00:00Z", "status": "ok", "rows": 2}),
            serde_json::json!({"query": "hourly_calls", "slot": "2024-06-03T09:00:00Z", "status": "ok", "rows": 1}),
        ]
    );
}

#[test]
fn a_failing_query_is_recorded_while_the_others_run_and_the_exit_code_says_so() {
    let hourly = std::fs::read_to_string(fixture_queries().join("hourly_calls.sql")).unwrap();
    let t = setup(&[
        ("hourly_calls.sql", &hourly),
        ("a_broken.sql", "-- schedule: 0 0 * * *\nSELECT nope FROM nowhere;\n"),
        (
            "daily.json.sql",
            "-- name: daily_total\n-- schedule: 5 0 * * *\n-- output: {name}/{date}.json\n-- window: 1d\n-- delay: 5m\n\
             SELECT count(*) AS n FROM events WHERE eventtime >= {start} AND eventtime < {end}\n",
        ),
        // Scheduled queries only read.
        ("c_writes.sql", "-- schedule: 0 0 * * *\nCOPY (SELECT 1) TO 'x.csv'\n"),
        ("bad_header.sql", "-- name: x\n-- schedule: 0 25 * * *\nSELECT 1\n"),
        ("unscheduled.sql", "-- What it finds: nothing on a schedule.\nSELECT 1\n"),
    ]);
    let (lake, queries, out) = (&t.lake, &t.queries, &t.out);

    let (code, s) = run_once(lake, queries, out, "2024-06-02T00:10:00Z");
    assert_eq!(code, 3, "{s}");
    assert_eq!(names(&s["runs"]), ["a_broken", "c_writes", "daily_total", "hourly_calls"]);
    let broken = &s["runs"][0];
    assert_eq!(broken["status"], "error");
    assert!(broken["error"].as_str().unwrap().contains("nowhere"), "{broken}");
    assert_eq!(broken["output"], Value::Null);
    assert_eq!(s["runs"][1]["status"], "error");
    assert!(s["runs"][1]["error"].as_str().unwrap().contains("DML not supported: COPY"), "{}", s["runs"][1]);
    assert!(!out.join("x.csv").exists() && !Path::new("x.csv").exists());
    assert_eq!(s["runs"][2]["status"], "ok");
    assert_eq!(s["runs"][2]["window_start"], "2024-06-01T00:00:00Z");
    assert_eq!(s["runs"][2]["window_end"], "2024-06-02T00:00:00Z");
    assert_eq!(t.output("daily_total/2024-06-02.json"), "[{\"n\":5}]\n");
    assert_eq!(s["runs"][3]["status"], "ok");
    assert_eq!(s["unscheduled"], serde_json::json!(["unscheduled"]));
    let problem = &s["problems"][0];
    assert!(problem["file"].as_str().unwrap().ends_with("bad_header.sql"));
    assert_eq!(problem["line"], 2);
    assert!(problem["message"].as_str().unwrap().contains("`0 25 * * *` is not a cron schedule"), "{problem}");

    // The history, through `prism sql`, says which failed and why.
    let rows = sql(lake, "SELECT query, status, rows, error, output IS NOT NULL AS written FROM query_runs ORDER BY query");
    assert_eq!(rows.len(), 4);
    assert_eq!(rows[0]["query"], "a_broken");
    assert_eq!(rows[0]["status"], "error");
    assert!(rows[0]["error"].as_str().unwrap().contains("nowhere"));
    assert_eq!(rows[0]["written"], false);
    assert_eq!(rows[2], serde_json::json!({"query": "daily_total", "status": "ok", "rows": 1, "written": true}));

    // A failed query stays due, so the next run tries it again; the others are done.
    std::fs::remove_file(queries.join("c_writes.sql")).unwrap();
    let (code, s) = run_once(lake, queries, out, "2024-06-02T00:15:00Z");
    assert_eq!(code, 3);
    assert_eq!(names(&s["runs"]), ["a_broken"]);
    // Fixed, and the bad file gone: it succeeds and the exit code is 0.
    t.write("a_broken.sql", "-- schedule: 0 0 * * *\nSELECT 1 AS one;\n");
    std::fs::remove_file(queries.join("bad_header.sql")).unwrap();
    let (code, s) = run_once(lake, queries, out, "2024-06-02T00:20:00Z");
    assert_eq!(code, 0, "{s}");
    assert_eq!(names(&s["runs"]), ["a_broken"]);
    assert_eq!(t.output("a_broken/2024-06-02.csv"), "one\n1\n");
}

#[test]
fn list_shows_schedule_next_slot_and_last_run() {
    let dir = tempfile::tempdir().unwrap();
    let lake = lake(dir.path());
    let out = dir.path().join("out");
    let list = |now: &str| {
        let o = schedule("list", &lake, &fixture_queries(), &["--json", "--now", now]).output().unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        serde_json::from_slice::<Value>(&o.stdout).unwrap()["queries"][0].clone()
    };
    let q = list("2024-06-01T12:30:00Z");
    assert_eq!(q["name"], "hourly_calls");
    assert_eq!(q["schedule"], "0 * * * *");
    assert_eq!(q["window"], "1h");
    assert_eq!(q["due"], "2024-06-01T12:00:00Z");
    assert_eq!(q["last_run"], Value::Null);
    run_once(&lake, &fixture_queries(), &out, "2024-06-01T12:30:00Z");
    let q = list("2024-06-01T12:31:00Z");
    assert_eq!(q["due"], Value::Null);
    assert_eq!(q["next_slot"], "2024-06-01T13:00:00Z");
    assert_eq!(q["last_run"]["status"], "ok");
    assert_eq!(q["last_run"]["rows"], 2);
    // The text form names the same things.
    let o = schedule("list", &lake, &fixture_queries(), &["--now", "2024-06-01T12:31:00Z"]).output().unwrap();
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(text.contains("hourly_calls  0 * * * *  1h      2024-06-01T13:00Z  2024-06-01T12:00Z ok, 2 rows"), "{text}");
}

/// Starts `prism schedule serve` in the background.
fn serve(lake: &Path, queries: &Path, out: &Path) -> std::process::Child {
    schedule("serve", lake, queries, &["--poll", "1", "--out", out.to_str().unwrap()])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap()
}

/// Waits for `path` to exist (the scheduler writes it atomically, so it is complete).
fn wait_for(path: &Path, child: &mut std::process::Child) {
    let deadline = Instant::now() + Duration::from_secs(120);
    while !path.exists() {
        if let Ok(Some(status)) = child.try_wait() {
            panic!("serve exited early with {status}");
        }
        assert!(Instant::now() < deadline, "{} was not written", path.display());
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn signal(child: &std::process::Child, name: &str) {
    let ok = Command::new("kill").args([name, &child.id().to_string()]).status().unwrap();
    assert!(ok.success());
}

/// Waits for the child to exit; returns its exit code and what it printed.
fn finish(mut child: std::process::Child) -> (i32, String, String) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if child.try_wait().unwrap().is_some() {
            break;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("serve did not stop after the signal");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let o = child.wait_with_output().unwrap();
    (o.status.code().unwrap_or(-1), String::from_utf8_lossy(&o.stdout).into_owned(), String::from_utf8_lossy(&o.stderr).into_owned())
}

#[test]
fn serve_runs_due_queries_picks_up_new_files_and_stops_on_sigint() {
    let t = setup(&[("total.sql", "-- schedule: 0 0 1 * *\n-- output: {name}.json\nSELECT count(*) AS n FROM events\n")]);
    let mut child = serve(&t.lake, &t.queries, &t.out);
    // Never run, so due at once.
    wait_for(&t.out.join("total.json"), &mut child);
    assert_eq!(t.output("total.json"), "[{\"n\":6}]\n");
    // A file added while serve sleeps is read at the next loop.
    t.write("added.sql", "-- schedule: 0 0 1 1 *\n-- output: {name}.ndjson\nSELECT 42 AS answer\n");
    wait_for(&t.out.join("added.ndjson"), &mut child);
    assert_eq!(t.output("added.ndjson"), "{\"answer\":42}\n");
    signal(&child, "-INT");
    let (code, stdout, stderr) = finish(child);
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.contains("ok      total"), "{stdout}");
    assert!(stdout.contains("ok      added"), "{stdout}");
    assert!(stderr.contains("stopped:"), "{stderr}");
    // Each query ran once: the slots are far apart.
    let rows = sql(&t.lake, "SELECT query, count(*) AS runs FROM query_runs GROUP BY query ORDER BY query");
    assert_eq!(rows, vec![serde_json::json!({"query": "added", "runs": 1}), serde_json::json!({"query": "total", "runs": 1})]);
}

#[test]
fn serve_does_not_repeat_a_failed_slot_but_retries_an_edited_file_and_stops_on_sigterm() {
    let monthly = |sql: &str| format!("-- schedule: 0 0 1 * *\n-- output: {{name}}.csv\n{sql}\n");
    let t = setup(&[("broken.sql", &monthly("SELECT nope FROM nowhere")), ("ok.sql", &monthly("SELECT 1 AS one"))]);
    let mut child = serve(&t.lake, &t.queries, &t.out);
    wait_for(&t.out.join("ok.csv"), &mut child);
    // Several loops pass (poll is 1 s); the broken query is not retried for the same slot.
    std::thread::sleep(Duration::from_millis(2500));
    // Fixed, it runs at the next loop.
    t.write("broken.sql", &monthly("SELECT 2 AS two"));
    wait_for(&t.out.join("broken.csv"), &mut child);
    signal(&child, "-TERM");
    let (code, stdout, stderr) = finish(child);
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(stdout.matches("FAILED  broken").count(), 1, "{stdout}");
    let rows = sql(&t.lake, "SELECT query, status FROM query_runs ORDER BY query, startedat");
    assert_eq!(
        rows,
        vec![
            serde_json::json!({"query": "broken", "status": "error"}),
            serde_json::json!({"query": "broken", "status": "ok"}),
            serde_json::json!({"query": "ok", "status": "ok"})
        ]
    );
}

/// The pid in the newest file of the lake's scheduler lease, unless it was released.
fn lease_holder(lake: &Path) -> Option<u32> {
    let folder = lake.join("_prism/leases/schedule");
    let newest = std::fs::read_dir(folder).ok()?.flatten().map(|e| e.path()).max()?;
    let v: Value = serde_json::from_str(&std::fs::read_to_string(newest).ok()?).ok()?;
    if v["released"] == true { None } else { v["pid"].as_u64().map(|p| p as u32) }
}

/// One scheduler per lake: a second is refused naming the first; a standby (`--wait`) takes
/// over at once when the first is killed (on the same machine its death is seen), runs what
/// the first had not, and releases the lake when stopped.
#[test]
fn a_second_scheduler_is_refused_and_a_standby_takes_over_from_a_killed_one() {
    let t = setup(&[("total.sql", "-- schedule: 0 0 1 * *\n-- output: {name}.json\nSELECT count(*) AS n FROM events\n")]);
    let mut first = serve(&t.lake, &t.queries, &t.out);
    wait_for(&t.out.join("total.json"), &mut first);
    assert_eq!(lease_holder(&t.lake), Some(first.id()));
    let o = schedule("run", &t.lake, &t.queries, &["--once", "--out", t.out.to_str().unwrap()]).output().unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(err.contains("another process is doing this on the lake: `prism schedule serve` (pid"), "{err}");
    assert!(err.contains(&format!("pid {} on", first.id())) && err.contains("--wait"), "{err}");

    let mut standby = schedule("serve", &t.lake, &t.queries, &["--poll", "1", "--out", t.out.to_str().unwrap(), "--wait"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(lease_holder(&t.lake), Some(first.id()), "the standby waits");
    first.kill().unwrap();
    first.wait().unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while lease_holder(&t.lake) != Some(standby.id()) {
        assert!(Instant::now() < deadline, "the standby did not take over: {:?}", lease_holder(&t.lake));
        std::thread::sleep(Duration::from_millis(100));
    }
    // It serves now: a new file runs; the first's query is not run again.
    t.write("added.sql", "-- schedule: 0 0 1 1 *\n-- output: {name}.json\nSELECT 42 AS answer\n");
    wait_for(&t.out.join("added.json"), &mut standby);
    signal(&standby, "-TERM");
    let (code, stdout, stderr) = finish(standby);
    assert_eq!(code, 0, "{stderr}");
    assert!(stderr.contains("waiting: another scheduler runs on this lake: `prism schedule serve`"), "{stderr}");
    assert!(stdout.contains("ok      added") && !stdout.contains("total"), "{stdout}");
    // Released: a run goes ahead at once.
    assert_eq!(lease_holder(&t.lake), None);
    let o = schedule("run", &t.lake, &t.queries, &["--once", "--out", t.out.to_str().unwrap()]).output().unwrap();
    assert_eq!(o.status.code(), Some(0), "{}", String::from_utf8_lossy(&o.stderr));
    let rows = sql(&t.lake, "SELECT query, count(*) AS runs FROM query_runs GROUP BY query ORDER BY query");
    assert_eq!(rows, vec![serde_json::json!({"query": "added", "runs": 1}), serde_json::json!({"query": "total", "runs": 1})]);
}

#[test]
fn usage_errors_and_a_missing_lake() {
    let dir = tempfile::tempdir().unwrap();
    let o = prism(&["schedule", "run", "--queries", fixture_queries().to_str().unwrap(), "--lake", dir.path().join("none").to_str().unwrap(), "--once"]);
    assert_eq!(o.status.code(), Some(1), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(String::from_utf8_lossy(&o.stderr).contains("no lake here"));
    let o = prism(&["schedule", "run", "--lake", "x", "--once", "--now", "yesterday"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("not an RFC 3339 time"));
    let o = prism(&["schedule", "list", "--queries", dir.path().join("nope").to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&o.stderr).contains("reading the queries folder"));
    let help = String::from_utf8_lossy(&prism(&["schedule", "run", "--help"]).stdout).into_owned();
    assert!(help.contains("*/5 * * * * prism schedule run"), "{help}");
}

/// `schedule run` killed at growing delays (issue 19's kill matrix): after each kill, every
/// output file is whole and each slot is recorded at most once; the run that finishes runs each
/// query once for the slot, with the same results as an uninterrupted run.
#[test]
fn a_killed_run_leaves_whole_files_and_the_next_run_completes_each_slot_once() {
    let files: Vec<(String, String)> = (0..8)
        .map(|i| {
            let text = format!(
                "-- name: q{i}\n-- schedule: 0 * * * *\n-- output: results/{{name}}/{{end}}.csv\n-- window: 1h\n\
                 SELECT eventname, count(*) + {i} AS calls FROM events WHERE eventtime >= {{start}} AND eventtime < {{end}} \
                 GROUP BY eventname ORDER BY eventname;\n"
            );
            (format!("q{i}.sql"), text)
        })
        .collect();
    let refs: Vec<(&str, &str)> = files.iter().map(|(n, t)| (n.as_str(), t.as_str())).collect();
    let s = setup(&refs);
    let now = "2024-06-01T12:30:00Z";
    let expected = |i: usize| format!("eventname,calls\nDescribeInstances,{}\nGetObject,{}\n", 1 + i, 2 + i);
    let mut landed = 0;
    for delay_ms in [60u64, 200, 450, 900] {
        let mut c = schedule("run", &s.lake, &s.queries, &["--once", "--out", s.out.to_str().unwrap(), "--now", now]);
        c.stdout(std::process::Stdio::null()).stderr(std::process::Stdio::null());
        landed += usize::from(crate::common::kill_after(c, delay_ms));
        for i in 0..8 {
            let file = s.out.join(format!("results/q{i}/20240601T1200Z.csv"));
            if file.exists() {
                assert_eq!(std::fs::read_to_string(&file).unwrap(), expected(i), "{}", file.display());
            }
        }
        if s.lake.join("query_runs/_delta_log").exists() {
            let twice = sql(&s.lake, "SELECT count(*) AS n FROM (SELECT query, slot FROM query_runs GROUP BY 1, 2 HAVING count(*) > 1)");
            assert_eq!(twice, vec![serde_json::json!({"n": 0})]);
        }
    }
    assert!(landed >= 1, "no kill landed mid-run");
    let (code, summary) = run_once(&s.lake, &s.queries, &s.out, now);
    assert_eq!(code, 0, "{summary}");
    let rows = sql(&s.lake, "SELECT query, count(*) AS runs FROM query_runs WHERE status = 'ok' GROUP BY query ORDER BY query");
    let want: Vec<Value> = (0..8).map(|i| serde_json::json!({"query": format!("q{i}"), "runs": 1})).collect();
    assert_eq!(rows, want);
    for i in 0..8 {
        assert_eq!(s.output(&format!("results/q{i}/20240601T1200Z.csv")), expected(i));
    }
}
