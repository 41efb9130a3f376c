//! Runs every `tests/slt/*.slt` file (sqllogictest format) against a lake built from fixture data,
//! through the session every entry point uses (`prism::sql::session`).
//!
//! `cargo test slt` runs them all; `PRISM_SLT=json cargo test slt` runs the files whose name
//! contains `json`. A new `.slt` file in tests/slt/ is picked up by itself.
//!
//! The fixture lake holds hand-written records (account 111122223333) whose values the .slt files
//! state exactly, a few real records from the corpus, one rejected record, and a small generated
//! archive (another account) that only aggregate facts are asserted about. To look at it while
//! writing a .slt file, keep it: `PRISM_SLT_LAKE=/tmp/slt cargo test slt`, then
//! `prism sql --lake /tmp/slt/lake -c "…"`.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow::array::{Array, RecordBatch};
use arrow::datatypes::DataType;
use arrow::util::display::{ArrayFormatter, FormatOptions};
use datafusion::error::DataFusionError;
use datafusion::prelude::SessionContext;
use serde_json::{Value, json};
use sqllogictest::{DBOutput, DefaultColumnType};

/// One connection: a session over the fixture lake.
struct Prism {
    ctx: SessionContext,
}

#[async_trait::async_trait]
impl sqllogictest::AsyncDB for Prism {
    type Error = DataFusionError;
    type ColumnType = DefaultColumnType;

    async fn run(&mut self, sql: &str) -> Result<DBOutput<DefaultColumnType>, DataFusionError> {
        let df = self.ctx.sql(sql).await?;
        let fields = df.schema().fields().clone();
        let batches = df.collect().await?;
        if fields.is_empty() {
            return Ok(DBOutput::StatementComplete(0));
        }
        let types = fields.iter().map(|f| column_type(f.data_type())).collect();
        let mut rows = Vec::new();
        for batch in &batches {
            rows.extend(format_rows(batch)?);
        }
        Ok(DBOutput::Rows { types, rows })
    }

    async fn shutdown(&mut self) {}

    fn engine_name(&self) -> &str {
        "prism"
    }
}

fn column_type(t: &DataType) -> DefaultColumnType {
    match t {
        t if t.is_integer() => DefaultColumnType::Integer,
        t if t.is_floating() || matches!(t, DataType::Decimal128(..) | DataType::Decimal256(..)) => DefaultColumnType::FloatingPoint,
        DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View => DefaultColumnType::Text,
        _ => DefaultColumnType::Any,
    }
}

/// Values as Arrow displays them; NULL as `NULL` and the empty string as `(empty)`, the
/// sqllogictest conventions.
fn format_rows(batch: &RecordBatch) -> Result<Vec<Vec<String>>, DataFusionError> {
    let options = FormatOptions::default().with_null("NULL");
    let formatters = batch.columns().iter().map(|c| ArrayFormatter::try_new(c.as_ref(), &options)).collect::<Result<Vec<_>, _>>()?;
    Ok((0..batch.num_rows())
        .map(|row| {
            formatters
                .iter()
                .zip(batch.columns())
                .map(|(f, col)| {
                    let s = f.value(row).to_string();
                    if s.is_empty() && col.is_valid(row) { "(empty)".to_owned() } else { s }
                })
                .collect()
        })
        .collect())
}

// ---------------------------------------------------------------------------------------------
// Fixture data

const ACCT: &str = "111122223333";

/// Hand-written records whose every value the .slt files may state.
fn hand_records() -> Vec<Value> {
    let base = |id: &str, time: &str| {
        let mut r = crate::common::record(id, time, "us-east-1");
        r["recipientAccountId"] = json!(ACCT);
        r
    };
    let mut v = Vec::new();

    // Times: an offset is converted to UTC; fractional seconds are kept to the microsecond.
    let mut r = base("t-offset", "2024-03-10T23:30:00+02:00");
    r["requestParameters"] = json!({"userName": "alice", "durationSeconds": 3600, "tags": ["a", "b", "c"], "enabled": true, "ratio": 0.25});
    v.push(r);
    let mut r = base("t-fraction", "2024-03-10T23:59:59.123456Z");
    // Type drift: the same keys with other JSON types.
    r["requestParameters"] = json!({"userName": 42, "durationSeconds": "3600", "tags": [], "enabled": "yes"});
    r["readOnly"] = json!("false");
    v.push(r);
    let mut r = base("t-midnight", "2024-03-11T00:00:00Z");
    r["eventName"] = json!("AuthorizeSecurityGroupIngress");
    r["readOnly"] = json!(false);
    r["requestParameters"] = json!({"groupId": "sg-0abc", "ipPermissions": {"items": [
        {"ipProtocol": "tcp", "fromPort": 22, "toPort": 22, "ipRanges": {"items": [{"cidrIp": "10.0.0.0/8"}, {"cidrIp": "0.0.0.0/0"}]}}]}});
    r["responseElements"] = json!({"_return": true, "securityGroupRuleSet": {"items": [{"groupRuleId": "sgr-1"}]}});
    v.push(r);

    // Null and absent free-form columns; a session with MFA given as a JSON boolean; a field
    // CloudTrail may add later.
    let mut r = base("n-null", "2024-03-11T01:00:00Z");
    r["requestParameters"] = Value::Null;
    r["userIdentity"] = json!({"type": "AssumedRole", "principalId": "AROAEXAMPLE:bob", "arn": format!("arn:aws:sts::{ACCT}:assumed-role/Admin/bob"),
        "accountId": ACCT, "sessionContext": {"sessionIssuer": {"type": "Role", "arn": format!("arn:aws:iam::{ACCT}:role/Admin"), "userName": "Admin"},
        "attributes": {"creationDate": "2024-03-11T00:30:00Z", "mfaAuthenticated": true}}, "newIdentityField": "x"});
    v.push(r);
    let mut r = base("n-absent", "2024-03-11T01:00:01Z");
    r.as_object_mut().unwrap().remove("requestParameters");
    r["eventSource"] = json!("signin.amazonaws.com");
    r["eventName"] = json!("ConsoleLogin");
    r["readOnly"] = json!(false);
    r["responseElements"] = json!({"ConsoleLogin": "Success"});
    r["additionalEventData"] = json!({"LoginTo": "https://console.aws.amazon.com/", "MobileVersion": "No", "MFAUsed": "Yes"});
    r["errorCode"] = Value::Null;
    v.push(r);
    let mut r = base("e-denied", "2024-03-11T02:00:00Z");
    r["awsRegion"] = json!("eu-west-1");
    r["errorCode"] = json!("AccessDenied");
    r["errorMessage"] = json!("User is not authorized");
    r["requestParameters"] = json!({"userName": "", "filter": {"name": "x", "values": [1, 2]}});
    v.push(r);

    // Rejected: no eventTime.
    let mut r = base("bad", "2024-03-11T03:00:00Z");
    r.as_object_mut().unwrap().remove("eventTime");
    v.push(r);
    v
}

/// Builds the lake under `dir` and returns its path.
async fn build_lake(dir: &Path) -> PathBuf {
    let archive = dir.join("archive");
    let lake = dir.join("lake");
    crate::common::write_gz(&crate::common::log_path(&archive, ACCT, "us-east-1", "20240310", "SltHandWritten01"), &hand_records());
    // Real records: a console sign-in without MFA and a security group opened with the older
    // top-level cidrIp shape.
    let real = archive.join("real");
    std::fs::create_dir_all(&real).unwrap();
    for name in ["aws.initial-access.console-login-without-mfa.json", "aws.exfiltration.ec2-security-group-open-port-22-ingress.json"] {
        std::fs::copy(crate::common::corpus().join("stratus-red-team").join(name), real.join(name)).unwrap();
    }
    let opts = crate::common::one_account(&archive.join("generated"), "us-east-1", 1, 300, 0, 5);
    tokio::task::spawn_blocking(move || prism::generate::generate(&opts)).await.unwrap().unwrap();

    let mut opts = prism::IngestOptions::new(vec![archive.to_str().unwrap().to_owned()], lake.to_str().unwrap());
    // Minute partitions, not the default day: tables.slt checks the finest bucket names.
    opts.granularity = Some(prism::schema::Granularity::Minute);
    let summary = prism::ingest(&opts, Arc::new(prism::IngestProgress::default())).await.unwrap();
    assert_eq!(summary.records_rejected, 1, "{:?}", summary.problems);
    lake
}

fn slt_files() -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/slt");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("reading {}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "slt"))
        .collect();
    files.sort();
    files
}

#[test]
fn slt() {
    run_slt(false);
}

/// The same files on a session whose queries run on two workers (in this process, on
/// loopback): distributed answers equal one machine's. Plans are split whatever the lake's
/// size (a fragment per 4 KB of files), so every scan and aggregate crosses the network.
#[cfg(feature = "distributed")]
#[test]
fn slt_on_two_workers() {
    run_slt(true);
}

fn run_slt(distributed: bool) {
    // PRISM_SLT=a,b runs the files whose name contains a or b.
    let filters: Vec<String> = std::env::var("PRISM_SLT").unwrap_or_default().split(',').filter(|f| !f.is_empty()).map(str::to_owned).collect();
    let files: Vec<PathBuf> = slt_files()
        .into_iter()
        .filter(|p| filters.is_empty() || filters.iter().any(|f| p.file_name().unwrap().to_string_lossy().contains(f.as_str())))
        .collect();
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    let failures = runtime.block_on(async {
        let tmp = tempfile::tempdir().unwrap();
        let dir = match std::env::var_os("PRISM_SLT_LAKE") {
            Some(keep) => {
                let keep = PathBuf::from(keep).join(if distributed { "distributed" } else { "local" });
                let _ = std::fs::remove_dir_all(&keep);
                keep
            }
            None => tmp.path().to_owned(),
        };
        let lake_path = build_lake(&dir).await;
        let lake = prism::Lake::open(lake_path.to_str().unwrap()).await.unwrap();
        let workers = if distributed { Some(two_workers().await) } else { None };
        let mut failures = 0;
        for file in &files {
            let name = file.strip_prefix(env!("CARGO_MANIFEST_DIR")).unwrap_or(file).display().to_string();
            // A fresh session per file, so a file's SET or CREATE VIEW cannot leak into another.
            let (lake, workers) = (&lake, &workers);
            let mut runner = sqllogictest::Runner::new(|| async move {
                let ctx = prism::sql::session_on(lake, workers.as_deref()).await.map_err(|e| DataFusionError::External(Box::new(e)))?;
                if workers.is_some() {
                    ctx.sql("SET distributed.file_scan_config_bytes_per_partition = 4096").await?.collect().await?;
                }
                Ok(Prism { ctx })
            });
            match runner.run_file_async(file).await {
                Ok(()) => println!("slt {name} ... ok"),
                Err(e) => {
                    failures += 1;
                    println!("slt {name} ... FAILED\n{e}\n");
                }
            }
        }
        failures
    });
    println!("\n{} .slt files, {} failed", files.len(), failures);
    assert_eq!(failures, 0, "{failures} .slt files failed (see above)");
}

/// Two workers serving on loopback in the current runtime.
#[cfg(feature = "distributed")]
async fn two_workers() -> Vec<url::Url> {
    let mut urls = Vec::new();
    for _ in 0..2 {
        let addr = prism::sql::distributed::spawn_worker("127.0.0.1:0".parse().unwrap()).await.unwrap();
        urls.push(url::Url::parse(&format!("http://{addr}")).unwrap());
    }
    urls
}

#[cfg(not(feature = "distributed"))]
async fn two_workers() -> Vec<url::Url> {
    unreachable!("only the distributed feature runs the slt files on workers")
}
