//! End-to-end tests of `prism watch`: a trail written file by file into a folder and into the
//! loopback S3 server, Insights delivered to a real HTTP server, a file, and (through moto's
//! AWS emulator) CloudWatch Logs and EventBridge; sinks that fail, a watch killed between a
//! delivery and its journal entry, S3 answering 503, and the LIST requests a poll makes.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::common::s3::{Fault, S3Server};
use crate::common::{self, prism_bin, strings};

const WAIT: Duration = Duration::from_secs(120);

struct Fixture {
    _dir: tempfile::TempDir,
    archive: PathBuf,
    /// The archive backfilled in one run (`prism backfill`): the Insights a watch must find.
    reference: PathBuf,
}

fn fixture() -> &'static Fixture {
    static FIXTURE: OnceLock<Fixture> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let archive = dir.path().join("archive");
        let reference = dir.path().join("reference");
        prism::generate::generate(&common::one_account(&archive, "eu-west-1", 9, 3_000, 6, 11)).unwrap();
        let out = Command::new(prism_bin()).args(["backfill", archive.to_str().unwrap(), "--lake", reference.to_str().unwrap(), "--quiet"]).output().unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        Fixture { _dir: dir, archive, reference }
    })
}

/// The records of a lake's `insights` table: eventID → record.
async fn lake_records(lake: &Path) -> BTreeMap<String, Value> {
    strings(lake, "SELECT eventjson FROM insights")
        .await
        .into_iter()
        .map(|j| serde_json::from_str::<Value>(&j.unwrap()).unwrap())
        .map(|v| (v["eventID"].as_str().unwrap().to_owned(), v))
        .collect()
}

/// sharedEventIDs of the Start records.
fn starts(records: &BTreeMap<String, Value>) -> BTreeSet<String> {
    records.values().filter(|r| r["insightDetails"]["state"] == "Start").map(|r| r["sharedEventID"].as_str().unwrap().to_owned()).collect()
}

// ---------------------------------------------------------------------------------------------
// A webhook receiver: a real HTTP server on loopback.

#[derive(Default)]
struct HookState {
    /// Bodies answered 2xx (or received just before the watch was killed), in arrival order.
    received: Mutex<Vec<Value>>,
    requests: AtomicU32,
    /// Requests (1-based numbers) up to this one are answered 500.
    fail_until: AtomicU32,
    /// The request with this number kills `pid` (SIGKILL) before answering.
    kill_at: AtomicU32,
    /// The request with this number is never answered (nor recorded).
    hang_at: AtomicU32,
    pid: AtomicU32,
    /// `X-Prism-Signature-256` of each received body, and the body's bytes.
    signatures: Mutex<Vec<(Option<String>, Vec<u8>)>>,
}

struct Hook {
    url: String,
    state: Arc<HookState>,
}

impl Hook {
    fn start() -> Hook {
        let state = Arc::new(HookState::default());
        let (tx, rx) = std::sync::mpsc::channel();
        let shared = state.clone();
        std::thread::spawn(move || {
            tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async move {
                let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
                tx.send(listener.local_addr().unwrap()).unwrap();
                let app = axum::Router::new().route(
                    "/hook",
                    axum::routing::post(move |headers: axum::http::HeaderMap, body: axum::body::Bytes| {
                        let s = shared.clone();
                        async move {
                            let n = s.requests.fetch_add(1, Ordering::SeqCst) + 1;
                            if n == s.hang_at.load(Ordering::SeqCst) {
                                std::future::pending::<()>().await;
                            }
                            if n <= s.fail_until.load(Ordering::SeqCst) {
                                return (axum::http::StatusCode::INTERNAL_SERVER_ERROR, "down for maintenance");
                            }
                            s.received.lock().unwrap().push(serde_json::from_slice(&body).unwrap());
                            let sig = headers.get("x-prism-signature-256").map(|v| v.to_str().unwrap().to_owned());
                            s.signatures.lock().unwrap().push((sig, body.to_vec()));
                            if n == s.kill_at.load(Ordering::SeqCst) {
                                Command::new("kill").args(["-KILL", &s.pid.load(Ordering::SeqCst).to_string()]).status().unwrap();
                                tokio::time::sleep(Duration::from_millis(500)).await;
                            }
                            (axum::http::StatusCode::OK, "ok")
                        }
                    }),
                );
                axum::serve(listener, app).await.unwrap();
            });
        });
        let addr = rx.recv().unwrap();
        Hook { url: format!("http://{addr}/hook"), state }
    }

    fn received(&self) -> Vec<Value> {
        self.state.received.lock().unwrap().clone()
    }
}

// ---------------------------------------------------------------------------------------------
// A running `prism watch`, its JSON lines read as they come.

struct Watch {
    child: Child,
    lines: Receiver<Value>,
    /// Every line so far.
    seen: Vec<Value>,
    metrics: Option<String>,
}

impl Watch {
    fn start(args: &[&str], env: &[(String, String)]) -> Watch {
        let mut child = Command::new(prism_bin())
            .arg("watch")
            .args(args)
            .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let (tx, lines) = std::sync::mpsc::channel();
        let stdout = child.stdout.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let v: Value = serde_json::from_str(&line).unwrap_or_else(|e| panic!("not a JSON line ({e}): {line}"));
                if tx.send(v).is_err() {
                    break;
                }
            }
        });
        let mut metrics = None;
        let stderr = child.stderr.take().unwrap();
        if args.contains(&"--metrics") {
            let mut reader = BufReader::new(stderr);
            let mut first = String::new();
            reader.read_line(&mut first).unwrap();
            metrics = first.split_whitespace().find(|w| w.starts_with("http://")).map(str::to_owned);
            assert!(metrics.is_some(), "no metrics address: {first}");
            std::thread::spawn(move || std::io::copy(&mut reader, &mut std::io::sink()));
        } else {
            std::thread::spawn(move || std::io::copy(&mut BufReader::new(stderr), &mut std::io::stderr()));
        }
        Watch { child, lines, seen: Vec::new(), metrics }
    }

    /// Waits for a line that `pred` accepts, and returns it.
    fn wait_for(&mut self, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + WAIT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(v) => {
                    self.seen.push(v.clone());
                    if pred(&v) {
                        return v;
                    }
                }
                Err(RecvTimeoutError::Timeout) => panic!("timed out waiting for {what}; lines:\n{}", self.dump()),
                Err(RecvTimeoutError::Disconnected) => {
                    panic!("prism watch ended while waiting for {what} ({:?}); lines:\n{}", self.child.try_wait(), self.dump())
                }
            }
        }
    }

    /// The next poll line (not a delivery line).
    fn next_poll(&mut self) -> Value {
        self.wait_for("a poll", |v| v.get("poll").is_some())
    }

    fn dump(&self) -> String {
        self.seen.iter().map(|v| v.to_string()).collect::<Vec<_>>().join("\n")
    }

    /// SIGTERM; the watch finishes its step and exits 0.
    fn stop(mut self) -> Vec<Value> {
        Command::new("kill").args(["-TERM", &self.child.id().to_string()]).status().unwrap();
        let status = self.child.wait().unwrap();
        self.seen.extend(self.lines.try_iter());
        assert!(status.success(), "prism watch exited with {status}; lines:\n{}", self.dump());
        assert_eq!(self.seen.last().and_then(|v| v.get("event")).and_then(|v| v.as_str()), Some("stop"), "{}", self.dump());
        self.seen
    }
}

/// Every sink's `delivered` count in a poll line.
fn delivered(line: &Value) -> Vec<u64> {
    line["sinks"].as_array().map(|a| a.iter().map(|s| s["delivered"].as_u64().unwrap()).collect()).unwrap_or_default()
}

/// The files of an archive under `root`, sorted by delivery time (the date folder and name).
fn archive_files(root: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = common::files_under(root).into_iter().filter(|p| p.to_string_lossy().ends_with(".json.gz")).collect();
    files.sort_by_key(|p| p.file_name().unwrap().to_string_lossy().split('_').nth(3).unwrap_or("").to_owned());
    files
}

/// Puts `file` (of `archive`) into `trail` at the same relative path, atomically (a rename),
/// as an object appears in S3 whole.
fn land(archive: &Path, file: &Path, trail: &Path, staging: &Path) {
    let to = trail.join(file.strip_prefix(archive).unwrap());
    std::fs::create_dir_all(to.parent().unwrap()).unwrap();
    let tmp = staging.join(file.file_name().unwrap());
    std::fs::copy(file, &tmp).unwrap();
    std::fs::rename(&tmp, &to).unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_trail_landing_file_by_file_is_alerted_once_per_insight_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let trail = dir.path().join("trail");
    land_and_alert(dir.path(), &trail, trail.to_str().unwrap(), &[]).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn an_s3_trail_landing_file_by_file_is_alerted_once_per_insight() {
    let dir = tempfile::tempdir().unwrap();
    let server = S3Server::start("trail");
    // Objects appear in the server's folder as they appear in a bucket: whole (a rename).
    land_and_alert(dir.path(), &server.root.join("trail"), &server.url(""), &server.env()).await;
}

/// A generated trail lands in `trail` (read by the watch as `source`) while a watch runs: a
/// week at its start, the last two days in 12 steps. Every Insight goes to a webhook (signed)
/// and a file once, in order, and the Insights are those one backfill of the archive finds.
async fn land_and_alert(work: &Path, trail: &Path, source: &str, env: &[(String, String)]) {
    let f = fixture();
    let (staging, lake, alerts) = (work.join("staging"), work.join("lake"), work.join("alerts.ndjson"));
    std::fs::create_dir_all(&staging).unwrap();
    // A week of history is there when the watch starts; the last two days land in 12 steps.
    let files = archive_files(&f.archive);
    let history = files.iter().position(|p| p.to_string_lossy().contains("/2024/01/08/")).unwrap();
    for file in &files[..history] {
        land(&f.archive, file, trail, &staging);
    }
    let hook = Hook::start();
    let secret = work.join("secret");
    std::fs::write(&secret, "s3cr3t\n").unwrap();
    let webhook = format!("webhook={},secret-file={}", hook.url, secret.display());
    let file_sink = format!("file={}", alerts.display());
    let mut watch = Watch::start(
        &[
            source,
            "--lake",
            lake.to_str().unwrap(),
            "--interval",
            "300ms",
            "--compact-every",
            "2s",
            "--alert",
            &webhook,
            "--alert",
            &file_sink,
            "--public-url",
            "http://console.example/",
        ],
        env,
    );
    watch.wait_for("the start line", |v| v["event"] == "start");
    let caught_up = watch.wait_for("the catch-up", |v| v.get("catch_up").is_some());
    assert_eq!(caught_up["ingest"]["files"].as_u64(), Some(history as u64), "{caught_up}");
    assert_eq!(caught_up["skipped"].as_u64(), Some(0), "{caught_up}");
    let rest = &files[history..];
    for chunk in rest.chunks(rest.len().div_ceil(12)) {
        for file in chunk {
            land(&f.archive, file, trail, &staging);
        }
        let n = chunk.len() as u64;
        let mut got = 0;
        while got < n {
            let line = watch.next_poll();
            assert!(line.get("error").is_none(), "{line}");
            got += line["ingest"]["files"].as_u64().unwrap_or(0);
        }
    }
    // Everything landed: once the sinks have all the lake's records, stop.
    let expected = lake_records(&f.reference).await;
    let total = expected.len() as u64;
    assert!(total >= 6, "the fixture should have Insights: {total}");
    watch.wait_for("every record delivered to both sinks", |v| v.get("poll").is_some() && delivered(v) == [total, total]);
    let lines = watch.stop();

    // The watch found what one backfill of the whole archive finds.
    let records = lake_records(&lake).await;
    assert_eq!(starts(&records), starts(&expected), "the watch's Insights differ from a backfill's");
    assert_eq!(records.len(), expected.len());

    // The webhook got each record once, as the EventBridge event, signed.
    let bodies = hook.received();
    let ids: Vec<String> = bodies.iter().map(|b| b["detail"]["eventID"].as_str().unwrap().to_owned()).collect();
    assert_eq!(ids.iter().collect::<BTreeSet<_>>().len(), ids.len(), "a record was delivered twice");
    assert_eq!(ids.iter().cloned().collect::<BTreeSet<_>>(), records.keys().cloned().collect::<BTreeSet<_>>());
    for (body, (sig, raw)) in bodies.iter().zip(hook.state.signatures.lock().unwrap().iter()) {
        assert_eq!(body["detail-type"], "AWS Insight via CloudTrail");
        assert_eq!(body["source"], "aws.cloudtrail");
        assert_eq!(body["account"], body["detail"]["recipientAccountId"]);
        assert_eq!(body["detail"], records[body["detail"]["eventID"].as_str().unwrap()], "the detail is the stored record");
        let shared = body["detail"]["sharedEventID"].as_str().unwrap();
        assert_eq!(body["link"], format!("http://console.example/insights/{shared}"));
        let summary = body["summary"].as_str().unwrap();
        assert!(summary.starts_with(body["detail"]["insightDetails"]["insightType"].as_str().unwrap()) && summary.contains("baseline"), "{summary}");
        assert_eq!(sig.as_deref(), Some(prism::watch::sinks::signature(b"s3cr3t", raw).as_str()), "signed with the secret file's key");
    }
    // In order: each Insight's Start before its End.
    let mut position: HashMap<(String, String), usize> = HashMap::new();
    for (i, b) in bodies.iter().enumerate() {
        position.insert((b["detail"]["sharedEventID"].as_str().unwrap().to_owned(), b["detail"]["insightDetails"]["state"].as_str().unwrap().to_owned()), i);
    }
    for ((shared, state), i) in &position {
        if state == "End" {
            let order: Vec<String> = bodies
                .iter()
                .map(|b| format!("{} {} {}", b["detail"]["eventTime"], b["detail"]["insightDetails"]["state"], b["detail"]["sharedEventID"]))
                .collect();
            assert!(
                position[&(shared.clone(), "Start".to_owned())] < *i,
                "End of {shared} before its Start:\n{}\n{}",
                order.join("\n"),
                lines.iter().filter(|l| l.get("poll").is_some() && l.get("insights").is_some()).map(|l| l.to_string()).collect::<Vec<_>>().join("\n")
            );
        }
    }
    // Each labelled anomaly the detector finds (as scored by `insights evaluate`) was alerted.
    let evaluate = |lake: &Path| -> Value {
        let labels = f.archive.join("labels.json");
        let out = Command::new(prism_bin())
            .args(["insights", "evaluate", "--lake", lake.to_str().unwrap(), "--labels", labels.to_str().unwrap(), "--json"])
            .output()
            .unwrap();
        serde_json::from_slice(&out.stdout).unwrap()
    };
    let (quality, reference) = (evaluate(&lake), evaluate(&f.reference));
    assert_eq!(quality["recall"], reference["recall"]);
    let labelled: Vec<&Value> = quality["found"].as_array().unwrap().iter().filter(|x| !x["label"].is_null()).collect();
    assert!(!labelled.is_empty(), "{quality}");
    for found in labelled {
        let alerted = bodies.iter().filter(|b| {
            let d = &b["detail"];
            let i = &d["insightDetails"];
            i["state"] == "Start"
                && d["eventTime"] == found["start"]
                && i["eventName"] == found["event_name"]
                && i["insightType"] == found["insight_type"]
                && i["errorCode"].as_str() == found["error_code"].as_str()
        });
        assert_eq!(alerted.count(), 1, "label {} ({found}) not alerted once", found["label"]);
    }
    // The file sink: one line per record, the record plus summary and link.
    let text = std::fs::read_to_string(&alerts).unwrap();
    let file_ids: Vec<String> = text.lines().map(|l| serde_json::from_str::<Value>(l).unwrap()["eventID"].as_str().unwrap().to_owned()).collect();
    assert_eq!(file_ids, ids, "the file got the same records in the same order");
    // The journal says so too, and each poll logged what it did.
    let journaled = common::scalar(&lake, "SELECT count(*) FROM deliveries WHERE status = 'delivered'").await;
    assert_eq!(journaled as u64, 2 * total);
    // Compaction ran while files landed (and changed no answer above).
    assert!(lines.iter().any(|l| l["compacted_files"].as_u64().unwrap_or(0) > 0), "no compaction");
    let polls = lines.iter().filter(|l| l.get("poll").is_some()).count();
    assert!(polls > 12, "{polls} polls");
    assert_eq!(lines.iter().filter(|l| l["event"] == "delivered").count() as u64, 2 * total);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_failing_webhook_and_a_killed_watch_lose_no_alert() {
    let f = fixture();
    let dir = tempfile::tempdir().unwrap();
    let (lake, alerts) = (dir.path().join("lake"), dir.path().join("alerts.ndjson"));
    let total = lake_records(&f.reference).await.len() as u64;
    // The webhook answers 500 five times, then the watch is killed while the sixth request
    // (the same first record, retried) is being answered: delivered, not journaled.
    let hook = Hook::start();
    hook.state.fail_until.store(5, Ordering::SeqCst);
    hook.state.kill_at.store(6, Ordering::SeqCst);
    let (webhook, file_sink) = (format!("webhook={}", hook.url), format!("file={}", alerts.display()));
    // A third sink is never up; its URL's path is a secret that must not reach the log.
    let dead = "webhook=http://127.0.0.1:9/T0/SECRETPATH";
    let args = [
        f.archive.to_str().unwrap(),
        "--lake",
        lake.to_str().unwrap(),
        "--interval",
        "500ms",
        "--retry-max",
        "1s",
        "--alert",
        &webhook,
        "--alert",
        &file_sink,
        "--alert",
        dead,
    ];
    let mut watch = Watch::start(&args, &[]);
    hook.state.pid.store(watch.child.id(), Ordering::SeqCst);
    // While the webhook is down, the file sink gets everything: one sink does not hold up another.
    // (The dead sink's failures come too, in any order.)
    watch.wait_for("the webhook's 500 logged", |v| v["event"] == "delivery_failed" && v["error"] == "HTTP 500: down for maintenance");
    watch.wait_for("the file sink done while the webhook is down", |v| {
        v.get("poll").is_some() && delivered(v).first() == Some(&0) && delivered(v).get(1) == Some(&total)
    });
    let status = watch.child.wait().unwrap();
    assert_eq!(status.code(), None, "killed by a signal");
    assert_eq!(hook.received().len(), 1, "the delivery the watch was killed in");

    // Restarted: nothing is ingested or analysed again; the webhook's backlog goes out.
    let mut watch = Watch::start(&args, &[]);
    let caught_up = watch.wait_for("the catch-up", |v| v.get("catch_up").is_some());
    assert_eq!(caught_up["new_objects"].as_u64(), Some(0), "{caught_up}");
    assert_eq!(caught_up["insights"].as_u64(), Some(0), "{caught_up}");
    watch.wait_for("the webhook's backlog delivered", |v| v.get("poll").is_some() && delivered(v).first() == Some(&total));
    // One watch per lake: a second is refused, naming this one; with --wait it is a standby
    // that takes over when this one stops.
    let second = Command::new(prism_bin()).arg("watch").args(args).output().unwrap();
    let err = String::from_utf8_lossy(&second.stderr);
    assert_eq!(second.status.code(), Some(1), "{err}");
    assert!(err.contains(&format!("another process is doing this on the lake: `prism watch` (pid {} on", watch.child.id())), "{err}");
    let mut standby = Watch::start(&[&args[..], &["--wait"]].concat(), &[]);
    standby.wait_for("the standby waiting", |v| v["event"] == "waiting" && v["holder"].as_str().is_some_and(|h| h.contains("`prism watch`")));
    let lines = watch.stop();
    let started = standby.wait_for("the standby taking over", |v| v["event"] == "start");
    assert_eq!(started["lake"], lake.to_str().unwrap());
    let caught_up = standby.wait_for("its catch-up", |v| v.get("catch_up").is_some());
    assert_eq!((caught_up["new_objects"].as_u64(), caught_up["insights"].as_u64()), (Some(0), Some(0)), "{caught_up}");
    standby.stop();
    let refused =
        lines.iter().find(|l| l["event"] == "delivery_failed" && l["target"] == "webhook http://127.0.0.1/…").expect("the dead sink's failures are logged");
    assert!(lines.iter().all(|l| !l.to_string().contains("SECRETPATH")), "a webhook's path was logged: {refused}");
    let ids: Vec<String> = hook.received().iter().map(|b| b["detail"]["eventID"].as_str().unwrap().to_owned()).collect();
    let unique: BTreeSet<&String> = ids.iter().collect();
    assert_eq!(unique.len() as u64, total, "every record reached the webhook");
    assert_eq!(ids.len() as u64, total + 1, "only the record in flight at the kill came twice");
    assert_eq!(ids[0], ids[1], "the in-flight record was sent again first");
    let lines = std::fs::read_to_string(&alerts).unwrap().lines().count() as u64;
    assert!(lines >= total, "{lines} lines in the file sink");
    let journaled = common::scalar(&lake, "SELECT count(DISTINCT eventid) FROM deliveries WHERE status = 'delivered'").await;
    assert_eq!(journaled as u64, total);
}

/// A first signal lets the delivery under way finish (up to 90 s); a second stops at once.
#[tokio::test(flavor = "multi_thread")]
async fn a_second_signal_stops_the_watch_at_once() {
    let f = fixture();
    let dir = tempfile::tempdir().unwrap();
    let lake = dir.path().join("lake");
    let total = lake_records(&f.reference).await.len() as u64;
    let hook = Hook::start();
    hook.state.hang_at.store(1, Ordering::SeqCst);
    let webhook = format!("webhook={}", hook.url);
    let args = [f.archive.to_str().unwrap(), "--lake", lake.to_str().unwrap(), "--interval", "500ms", "--alert", &webhook];
    let mut watch = Watch::start(&args, &[]);
    let deadline = Instant::now() + WAIT;
    while hook.state.requests.load(Ordering::SeqCst) == 0 {
        assert!(Instant::now() < deadline, "no delivery was attempted");
        std::thread::sleep(Duration::from_millis(50));
    }
    let term = |pid: u32| Command::new("kill").args(["-TERM", &pid.to_string()]).status().unwrap();
    term(watch.child.id());
    std::thread::sleep(Duration::from_secs(1));
    assert!(watch.child.try_wait().unwrap().is_none(), "the first signal waits for the delivery under way");
    term(watch.child.id());
    let asked = Instant::now();
    let status = watch.child.wait().unwrap();
    assert_eq!(status.code(), Some(130), "{status}");
    assert!(asked.elapsed() < Duration::from_secs(10), "the second signal took {:?}", asked.elapsed());

    // Restarted: the record that was in flight, and every other, reaches the webhook.
    let mut watch = Watch::start(&args, &[]);
    watch.wait_for("every record delivered", |v| v.get("poll").is_some() && delivered(v).first() == Some(&total));
    watch.stop();
    let ids: BTreeSet<String> = hook.received().iter().map(|b| b["detail"]["eventID"].as_str().unwrap().to_owned()).collect();
    assert_eq!(ids.len() as u64, total);
}

/// A CloudTrail-named empty log file's key.
fn key(region: &str, day: chrono::NaiveDate, i: u32) -> String {
    format!(
        "AWSLogs/111122223333/CloudTrail/{region}/{}/111122223333_CloudTrail_{region}_{}T{:02}{:02}Z_{i:04}.json.gz",
        day.format("%Y/%m/%d"),
        day.format("%Y%m%d"),
        (i / 12) % 24,
        (i % 12) * 5
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn an_s3_trail_of_50000_keys_is_polled_by_its_newest_date_folders() {
    let server = S3Server::start("trail");
    let bucket = server.root.join("trail");
    let first = chrono::NaiveDate::from_ymd_opt(2025, 1, 1).unwrap();
    let body = b"{\"Records\":[]}";
    for region in ["eu-west-1", "us-east-1"] {
        for d in 0..100 {
            let day = first + chrono::Days::new(d);
            std::fs::create_dir_all(bucket.join(key(region, day, 0)).parent().unwrap()).unwrap();
            for i in 0..250 {
                std::fs::write(bucket.join(key(region, day, i)), body).unwrap();
            }
        }
    }
    assert_eq!(common::files_under(&bucket).len(), 50_000);
    let last = first + chrono::Days::new(99);
    let dir = tempfile::tempdir().unwrap();
    let lake = dir.path().join("lake");
    let mut env = server.env();
    env.extend(
        [("PRISM_S3_MAX_RETRIES", "2"), ("PRISM_S3_INIT_BACKOFF", "10ms"), ("PRISM_S3_MAX_BACKOFF", "50ms"), ("PRISM_S3_RETRY_TIMEOUT", "2s")]
            .map(|(k, v)| (k.to_owned(), v.to_owned())),
    );
    let from = last.format("%Y-%m-%d").to_string();
    let mut watch =
        Watch::start(&[&server.url(""), "--lake", lake.to_str().unwrap(), "--from", &from, "--interval", "300ms", "--metrics", "127.0.0.1:0"], &env);
    let caught_up = watch.wait_for("the catch-up", |v| v.get("catch_up").is_some());
    assert_eq!(caught_up["ingest"]["files"].as_u64(), Some(500), "the last day of both regions: {caught_up}");
    assert_eq!(caught_up["skipped"].as_u64(), Some(49_500), "{caught_up}");

    // New objects: one in the newest folder, one in the next day's, one in a new region.
    server.clear_seen();
    let next = last + chrono::Days::new(1);
    for k in [key("eu-west-1", last, 250), key("us-east-1", next, 0), key("ap-south-1", next, 0)] {
        std::fs::create_dir_all(bucket.join(&k).parent().unwrap()).unwrap();
        std::fs::write(bucket.join(&k), body).unwrap();
    }
    let mut got = 0;
    while got < 3 {
        got += watch.next_poll()["ingest"]["files"].as_u64().unwrap_or(0);
    }
    server.clear_seen();
    let poll = watch.next_poll();
    assert_eq!(poll["new_objects"].as_u64(), Some(0), "{poll}");
    // The follower remembers the keys of each region's two newest folders, not the bucket's.
    assert!(poll["keys_held"].as_u64().unwrap() < 1_100, "{poll}");
    // One poll: delimiter listings down to the region folders, and one listing per region
    // from the day before its newest folder (a page of 500 keys, not 25,000).
    let lists: Vec<_> = server.seen().into_iter().filter(|s| s.is_list()).collect();
    let (walks, regions): (Vec<_>, Vec<_>) = lists.iter().partition(|s| s.param("delimiter").is_some());
    assert_eq!(walks.len(), 5, "the bucket, AWSLogs/, the account's CloudTrail/, CloudTrail-NetworkActivity/ and CloudTrail-Aggregated/: {lists:?}");
    let mut starts: Vec<(String, String)> = regions.iter().map(|s| (s.param("prefix").unwrap(), s.param("start-after").unwrap_or_default())).collect();
    starts.sort();
    let folder = |r: &str, d: chrono::NaiveDate| format!("AWSLogs/111122223333/CloudTrail/{r}/{}", d.format("%Y/%m/%d"));
    assert_eq!(
        starts,
        [
            ("AWSLogs/111122223333/CloudTrail/ap-south-1/".to_owned(), folder("ap-south-1", last)),
            ("AWSLogs/111122223333/CloudTrail/eu-west-1/".to_owned(), folder("eu-west-1", last - chrono::Days::new(1))),
            ("AWSLogs/111122223333/CloudTrail/us-east-1/".to_owned(), folder("us-east-1", last)),
        ]
    );

    // S3 answers 503 to every listing for a while: polls fail, are logged, and recover.
    server.add_rule("list-type=2", Fault::SlowDown, u32::MAX);
    let failed = watch.wait_for("a failed poll", |v| v.get("error").is_some());
    assert!(failed["error"].as_str().unwrap().contains("cannot list"), "{failed}");
    server.clear_rules();
    let k = key("eu-west-1", last, 251);
    std::fs::write(bucket.join(&k), body).unwrap();
    watch.wait_for("the object after the outage", |v| v["ingest"]["files"].as_u64() == Some(1));
    let metrics = reqwest::get(watch.metrics.clone().unwrap()).await.unwrap().text().await.unwrap();
    let value = |name: &str| -> f64 {
        metrics.lines().find_map(|l| l.strip_prefix(&format!("{name} "))).unwrap_or_else(|| panic!("{name} missing:\n{metrics}")).parse().unwrap()
    };
    assert_eq!(value("prism_watch_objects_total"), 504.0);
    assert!(value("prism_watch_poll_failures_total") >= 1.0);
    assert!(value("prism_watch_polls_total") >= 4.0);
    assert!(value("prism_watch_lag_seconds") > 0.0);
    watch.stop();
}

// ---------------------------------------------------------------------------------------------
// CloudWatch Logs and EventBridge, on moto's AWS emulator.

struct Moto {
    child: Child,
    endpoint: String,
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Moto {
    async fn start() -> Moto {
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        // .ci/run names a virtualenv's Python when the system's has no moto.
        let python = std::env::var("PRISM_TEST_PYTHON").unwrap_or_else(|_| "python3".into());
        let child = Command::new(python)
            .args(["-m", "moto.server", "-H", "127.0.0.1", "-p", &port.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("python3 with moto[server] (installed by .ci/run)");
        let moto = Moto { child, endpoint: format!("http://127.0.0.1:{port}") };
        let deadline = Instant::now() + Duration::from_secs(30);
        while !reqwest::get(format!("{}/moto-api/", moto.endpoint)).await.is_ok_and(|r| r.status().is_success()) {
            assert!(Instant::now() < deadline, "moto did not start; is moto[server] installed? (.ci/run installs it)");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        moto
    }

    /// One AWS JSON-protocol call (moto accepts any signature).
    async fn call(&self, service: &str, target: &str, version: &str, body: Value) -> Value {
        let response = reqwest::Client::new()
            .post(&self.endpoint)
            .header("content-type", format!("application/x-amz-json-{version}"))
            .header("x-amz-target", target)
            .header("authorization", format!("AWS4-HMAC-SHA256 Credential=test/20240101/us-east-1/{service}/aws4_request, SignedHeaders=host, Signature=00"))
            .body(body.to_string())
            .send()
            .await
            .unwrap();
        let status = response.status();
        let text = response.text().await.unwrap();
        assert!(status.is_success(), "{target}: {status} {text}");
        serde_json::from_str(&text).unwrap_or(Value::Null)
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn insights_reach_cloudwatch_logs_and_eventbridge() {
    let f = fixture();
    let moto = Moto::start().await;
    // An EventBridge rule as a user would write it for Insights, sending to an SQS queue.
    let queue = moto.call("sqs", "AmazonSQS.CreateQueue", "1.0", serde_json::json!({"QueueName": "insights"})).await["QueueUrl"].as_str().unwrap().to_owned();
    moto.call("events", "AWSEvents.CreateEventBus", "1.1", serde_json::json!({"Name": "prism-bus"})).await;
    let pattern = serde_json::json!({"detail-type": ["AWS Insight via CloudTrail"]}).to_string();
    moto.call("events", "AWSEvents.PutRule", "1.1", serde_json::json!({"Name": "insights", "EventBusName": "prism-bus", "EventPattern": pattern})).await;
    let target =
        serde_json::json!({"Rule": "insights", "EventBusName": "prism-bus", "Targets": [{"Id": "q", "Arn": "arn:aws:sqs:us-east-1:123456789012:insights"}]});
    moto.call("events", "AWSEvents.PutTargets", "1.1", target).await;

    let dir = tempfile::tempdir().unwrap();
    let lake = dir.path().join("lake");
    let env: Vec<(String, String)> = [
        ("AWS_ENDPOINT_URL_CLOUDWATCH_LOGS", moto.endpoint.as_str()),
        ("AWS_ENDPOINT_URL_EVENTBRIDGE", moto.endpoint.as_str()),
        ("AWS_ACCESS_KEY_ID", "test"),
        ("AWS_SECRET_ACCESS_KEY", "test"),
        ("AWS_REGION", "us-east-1"),
        ("AWS_EC2_METADATA_DISABLED", "true"),
    ]
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .to_vec();
    let total = lake_records(&f.reference).await.len() as u64;
    let mut watch = Watch::start(
        &[
            f.archive.to_str().unwrap(),
            "--lake",
            lake.to_str().unwrap(),
            "--interval",
            "500ms",
            "--alert",
            "cloudwatch-logs=prism-alerts:insights",
            "--alert",
            "eventbridge=prism-bus",
        ],
        &env,
    );
    watch.wait_for("every record delivered to both", |v| v.get("poll").is_some() && delivered(v) == [total, total]);
    watch.stop();
    let records = lake_records(&lake).await;

    let events = moto
        .call(
            "logs",
            "Logs_20140328.GetLogEvents",
            "1.1",
            serde_json::json!({"logGroupName": "prism-alerts", "logStreamName": "insights", "startFromHead": true}),
        )
        .await;
    let logged: BTreeSet<String> = events["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            let line: Value = serde_json::from_str(e["message"].as_str().unwrap()).unwrap();
            assert!(line["summary"].as_str().is_some());
            line["eventID"].as_str().unwrap().to_owned()
        })
        .collect();
    assert_eq!(logged, records.keys().cloned().collect::<BTreeSet<_>>());

    let mut routed = BTreeSet::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while (routed.len() as u64) < total && Instant::now() < deadline {
        let got =
            moto.call("sqs", "AmazonSQS.ReceiveMessage", "1.0", serde_json::json!({"QueueUrl": queue, "MaxNumberOfMessages": 10, "WaitTimeSeconds": 1})).await;
        for m in got["Messages"].as_array().cloned().unwrap_or_default() {
            let event: Value = serde_json::from_str(m["Body"].as_str().unwrap()).unwrap();
            assert_eq!(event["detail-type"], "AWS Insight via CloudTrail");
            assert_eq!(event["source"], "prism.cloudtrail");
            let id = event["detail"]["eventID"].as_str().unwrap().to_owned();
            assert_eq!(event["detail"]["insightDetails"], records[&id]["insightDetails"]);
            routed.insert(id);
        }
    }
    assert_eq!(routed, records.keys().cloned().collect::<BTreeSet<_>>(), "the rule matched every Insight");
}

#[test]
fn bad_alerts_are_refused_as_bad_arguments() {
    let out = Command::new(prism_bin()).args(["watch", ".", "--lake", "/nonexistent/lake", "--alert", "pager=x"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("unknown kind `pager`"), "{err}");
    let help = Command::new(prism_bin()).args(["watch", "--help"]).output().unwrap();
    let help = String::from_utf8_lossy(&help.stdout);
    for must in ["webhook=URL", "command=CMD", "file=PATH", "cloudwatch-logs=GROUP", "eventbridge=BUS", "at least once", "Exit status"] {
        assert!(help.contains(must), "--help lacks {must}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn the_console_can_watch_too() {
    let f = fixture();
    let dir = tempfile::tempdir().unwrap();
    let (lake, alerts) = (dir.path().join("lake"), dir.path().join("alerts.ndjson"));
    let total = lake_records(&f.reference).await.len();
    let file_sink = format!("file={}", alerts.display());
    let mut child = Command::new(prism_bin())
        .args(["serve", "--lake", lake.to_str().unwrap(), "--listen", "127.0.0.1:0", "--watch", f.archive.to_str().unwrap()])
        .args(["--interval", "500ms", "--alert", &file_sink, "--public-url", "https://prism.example/"])
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    let mut first = String::new();
    stdout.read_line(&mut first).unwrap();
    let base = first.split_whitespace().find(|w| w.starts_with("http://")).unwrap().trim_end_matches('/').to_owned();
    std::thread::spawn(move || std::io::copy(&mut stdout, &mut std::io::sink()));
    let deadline = Instant::now() + WAIT;
    while std::fs::read_to_string(&alerts).map(|t| t.lines().count()).unwrap_or(0) < total {
        assert!(Instant::now() < deadline, "the console's watch did not deliver");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // The alerts link to this console's pages, and the console shows what the watch found.
    let line: Value = serde_json::from_str(std::fs::read_to_string(&alerts).unwrap().lines().next().unwrap()).unwrap();
    let shared = line["sharedEventID"].as_str().unwrap();
    assert_eq!(line["link"], format!("https://prism.example/insights/{shared}"));
    let page = reqwest::get(format!("{base}/api/insights/{shared}")).await.unwrap();
    assert!(page.status().is_success(), "{}", page.status());
    Command::new("kill").args(["-TERM", &child.id().to_string()]).status().unwrap();
    assert!(child.wait().unwrap().success());
}
