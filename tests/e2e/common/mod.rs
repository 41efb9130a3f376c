//! Helpers shared by the end-to-end tests.
#![allow(dead_code)]

pub mod s3;

#[allow(unused_imports)] // not every test uses it
pub use s3::files_under;

use std::io::Write;
use std::path::{Path, PathBuf};

use arrow::array::{Array, AsArray, RecordBatch};
use arrow::datatypes::Int64Type;

/// The real CloudTrail corpus shipped beside the repository.
pub fn corpus() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/data/cloudtrail-real")
}

pub fn prism_bin() -> &'static str {
    env!("CARGO_BIN_EXE_prism")
}

/// Runs SQL against a lake and returns the batches.
pub async fn query(lake: &Path, sql: &str) -> Vec<RecordBatch> {
    let lake = prism::Lake::open(lake.to_str().unwrap()).await.unwrap();
    let ctx = prism::sql::session(&lake).await.unwrap();
    ctx.sql(sql).await.unwrap().collect().await.unwrap()
}

/// A single integer result.
pub async fn scalar(lake: &Path, sql: &str) -> i64 {
    let batches = query(lake, sql).await;
    let b = batches.iter().find(|b| b.num_rows() > 0).expect("one row");
    let col = arrow::compute::cast(b.column(0), &arrow::datatypes::DataType::Int64).unwrap();
    col.as_primitive::<Int64Type>().value(0)
}

/// All values of a string column.
pub async fn strings(lake: &Path, sql: &str) -> Vec<Option<String>> {
    query(lake, sql).await.iter().flat_map(|b| text_column(b, 0)).collect()
}

/// One column of a batch as text.
pub fn text_column(b: &RecordBatch, i: usize) -> Vec<Option<String>> {
    let col = arrow::compute::cast(b.column(i), &arrow::datatypes::DataType::Utf8).unwrap();
    let col = col.as_string::<i32>();
    (0..col.len()).map(|i| col.is_valid(i).then(|| col.value(i).to_owned())).collect()
}

/// A synthetic but complete CloudTrail record.
pub fn record(id: &str, time: &str, region: &str) -> serde_json::Value {
    serde_json::json!({
        "eventVersion": "1.09",
        "userIdentity": {"type": "IAMUser", "principalId": "AIDA1", "arn": "arn:aws:iam::111122223333:user/alice",
            "accountId": "111122223333", "accessKeyId": "AKIA1", "userName": "alice"},
        "eventTime": time,
        "eventSource": "ec2.amazonaws.com",
        "eventName": "DescribeInstances",
        "awsRegion": region,
        "sourceIPAddress": "198.51.100.1",
        "userAgent": "aws-cli/2.15.0",
        "requestParameters": {"maxResults": 5},
        "responseElements": null,
        "requestID": format!("req-{id}"),
        "eventID": id,
        "readOnly": true,
        "eventType": "AwsApiCall",
        "managementEvent": true,
        "recipientAccountId": "111122223333",
        "eventCategory": "Management"
    })
}

/// Writes `{"Records": records}` gzipped to `path`.
pub fn write_gz(path: &Path, records: &[serde_json::Value]) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    let body = serde_json::to_vec(&serde_json::json!({"Records": records})).unwrap();
    let mut enc = flate2::write::GzEncoder::new(std::fs::File::create(path).unwrap(), flate2::Compression::fast());
    enc.write_all(&body).unwrap();
    enc.finish().unwrap();
}

/// The AWS key layout for a log file.
pub fn log_path(root: &Path, account: &str, region: &str, day: &str, name: &str) -> PathBuf {
    let (y, rest) = day.split_at(4);
    let (m, d) = rest.split_at(2);
    root.join(format!("AWSLogs/{account}/CloudTrail/{region}/{y}/{m}/{d}/{account}_CloudTrail_{region}_{day}T0000Z_{name}.json.gz"))
}

/// Runs `prism ingest` and returns (exit code, stdout as JSON summary).
pub fn run_ingest(args: &[&str]) -> (i32, serde_json::Value) {
    let out = std::process::Command::new(prism_bin()).arg("ingest").args(args).arg("--json").output().unwrap();
    let code = out.status.code().unwrap_or(-1);
    let summary = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!("no JSON summary ({e}); code {code}\nstdout: {}\nstderr: {}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
    });
    (code, summary)
}

/// The generator's options for one account in one region: the archive most tests build.
pub fn one_account(out: &Path, region: &str, days: u32, events_per_day: u64, anomalies: u32, seed: u64) -> prism::generate::GenerateOptions {
    let mut g = prism::generate::GenerateOptions::new(out);
    g.accounts = 1;
    g.regions = vec![region.into()];
    g.days = days;
    g.events_per_day = events_per_day;
    g.anomalies = anomalies;
    g.seed = seed;
    g
}

/// Starts `command` and kills it (SIGKILL) after `delay_ms` unless it finished by then, as a
/// crash would; true when the kill landed. The kill-and-resume tests call it at growing delays.
pub fn kill_after(mut command: std::process::Command, delay_ms: u64) -> bool {
    let mut child = command.spawn().unwrap();
    std::thread::sleep(std::time::Duration::from_millis(delay_ms));
    let running = child.try_wait().unwrap().is_none();
    if running {
        child.kill().unwrap();
    }
    child.wait().unwrap();
    running
}

/// A `prism worker` process on a free loopback port, stopped when dropped.
#[cfg(feature = "distributed")]
pub struct WorkerProcess {
    child: std::process::Child,
    /// `http://127.0.0.1:PORT`, as the worker prints it.
    pub url: String,
}

#[cfg(feature = "distributed")]
impl WorkerProcess {
    pub fn start() -> WorkerProcess {
        WorkerProcess::start_with(&[])
    }

    /// [`WorkerProcess::start`] with these environment variables (e.g. S3 credentials).
    pub fn start_with(env: &[(String, String)]) -> WorkerProcess {
        use std::io::BufRead;
        let mut child = std::process::Command::new(prism_bin())
            .args(["worker", "--listen", "127.0.0.1:0"])
            .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let mut line = String::new();
        std::io::BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
        let url = line.trim().rsplit(' ').next().unwrap_or_default().to_owned();
        assert!(url.starts_with("http://127.0.0.1:"), "the worker said: {line}");
        WorkerProcess { child, url }
    }
}

#[cfg(feature = "distributed")]
impl Drop for WorkerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
