//! End-to-end tests of `prism ingest`, on the real corpus and on files built here.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::Read;
use std::path::Path;
use std::sync::Arc;

use crate::common::*;
use prism::ingest::{IngestOptions, IngestProgress, IngestSummary};

async fn ingest(sources: &[&Path], lake: &Path) -> IngestSummary {
    let opts = IngestOptions::new(sources.iter().map(|p| p.to_str().unwrap().to_owned()).collect(), lake.to_str().unwrap());
    prism::ingest(&opts, Arc::new(IngestProgress::default())).await.unwrap()
}

/// Every record of the real corpus's parseable files, read independently of Prism.
fn corpus_records() -> Vec<(String, serde_json::Value)> {
    let mut out = Vec::new();
    let mut stack = vec![corpus()];
    while let Some(dir) = stack.pop() {
        for e in std::fs::read_dir(&dir).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
                continue;
            }
            let name = p.to_string_lossy().to_string();
            if !(name.ends_with(".json") || name.ends_with(".json.gz")) {
                continue;
            }
            let mut bytes = std::fs::read(&p).unwrap();
            if name.ends_with(".gz") {
                let mut s = Vec::new();
                flate2::read::GzDecoder::new(&bytes[..]).read_to_end(&mut s).unwrap();
                bytes = s;
            }
            let Ok(v) = serde_json::from_slice::<serde_json::Value>(&bytes) else { continue };
            let records = match v {
                serde_json::Value::Object(mut m) => match m.remove("Records") {
                    Some(serde_json::Value::Array(a)) => a,
                    _ => continue,
                },
                serde_json::Value::Array(a) => a,
                _ => continue,
            };
            out.extend(records.into_iter().map(|r| (name.clone(), r)));
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread")]
async fn real_corpus_ingests_with_exact_counts() {
    let tmp = tempfile::tempdir().unwrap();
    let lake = tmp.path().join("lake");
    let s = ingest(&[&corpus()], &lake).await;

    // 57 JSON files; 5 licences and the README are skipped as not JSON.
    assert_eq!(s.files_listed, 63);
    assert_eq!(s.files_skipped, 6);
    assert_eq!(s.skipped_by_reason.get("not_json"), Some(&6));
    assert_eq!(s.files_read, 57);
    // 391 records in the parseable files. Of the two invalid files, one breaks inside record 0
    // (an unclosed brace: one unparseable span, rejected), the other after a complete record 0
    // (a missing comma: record 0 is kept, the rest of the file is reported).
    assert_eq!(s.records_read, 393);
    assert_eq!(s.files_damaged, 2);
    let rejected: BTreeMap<&str, u64> = s.rejected_by_reason.iter().map(|(k, v)| (k.as_str(), *v)).collect();
    assert_eq!(rejected, BTreeMap::from([("file:invalid_json", 2), ("invalid_eventtime", 1), ("invalid_json", 1), ("missing_eventtime", 3)]));
    assert_eq!(s.records_rejected, 5);
    // 346 distinct real events plus the one salvaged record, and the 41 fixture records
    // without eventID: 3 have no eventTime, 1 an invalid one, the other 37 are 16 distinct.
    assert_eq!(s.records_written, 347 + 16);
    assert_eq!(s.duplicates_dropped, 393 - 5 - 363);
    assert!(!s.is_clean());

    assert_eq!(scalar(&lake, "SELECT count(*) FROM events").await, 363);
    assert_eq!(scalar(&lake, "SELECT count(DISTINCT eventid) FROM events").await, 363);

    // Each real eventID is stored exactly once: those of the parseable files, and the record
    // read before the syntax error.
    let mut expected: HashSet<String> = corpus_records().iter().filter_map(|(_, r)| r.get("eventID").and_then(|v| v.as_str()).map(str::to_owned)).collect();
    assert_eq!(expected.len(), 346);
    expected.insert("81f9856b-3acd-4d3f-bd34-01741e978037".to_owned());
    let stored: HashSet<String> =
        strings(&lake, "SELECT eventid FROM events WHERE sourcefile NOT LIKE '%aws-processing-library-fixtures%'").await.into_iter().flatten().collect();
    assert_eq!(stored, expected);

    // The organisation-trail key and the plain key are both read.
    assert_eq!(scalar(&lake, "SELECT count(*) FROM events WHERE sourcefile LIKE '%/cloud-snitch/AWSLogs/o-1234abcde/%'").await, 20);
    assert_eq!(scalar(&lake, "SELECT count(*) FROM events WHERE sourcefile LIKE '%/cloud-snitch/AWSLogs/333333333333/%'").await, 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn rejects_are_queryable_with_file_index_and_reason() {
    let tmp = tempfile::tempdir().unwrap();
    let lake = tmp.path().join("lake");
    ingest(&[&corpus()], &lake).await;
    let rows = query(&lake, "SELECT sourcefile, recordindex, reason, message FROM rejects ORDER BY sourcefile, recordindex, reason").await;
    let mut got = Vec::new();
    for b in &rows {
        let src = arrow::compute::cast(b.column(0), &arrow::datatypes::DataType::Utf8).unwrap();
        let idx = arrow::compute::cast(b.column(1), &arrow::datatypes::DataType::Int64).unwrap();
        let reason = arrow::compute::cast(b.column(2), &arrow::datatypes::DataType::Utf8).unwrap();
        use arrow::array::AsArray;
        for i in 0..b.num_rows() {
            let file = src.as_string::<i32>().value(i).rsplit('/').next().unwrap().to_owned();
            got.push((file, idx.as_primitive::<arrow::datatypes::Int64Type>().value(i), reason.as_string::<i32>().value(i).to_owned()));
        }
    }
    let want: Vec<(String, i64, String)> = [
        ("SerializerAllFieldsNull.json", 0, "missing_eventtime"),
        ("SerializerTestFileBadFieldName.json", 0, "missing_eventtime"),
        ("SerializerTestFileBadJsonFormat.json", 0, "invalid_json"),
        ("SerializerTestFileBadJsonFormat.json", 1, "invalid_json"),
        ("SerializerTestFileMissField.json", 3, "invalid_eventtime"),
        ("SerializerTestFileNewFieldName.json", 0, "missing_eventtime"),
        ("aws.execution.ec2-user-data.json", 1, "invalid_json"),
    ]
    .iter()
    .map(|(f, i, r)| (f.to_string(), *i, r.to_string()))
    .collect();
    let mut got_sorted = got.clone();
    got_sorted.sort();
    let mut want_sorted = want.clone();
    want_sorted.sort();
    assert_eq!(got_sorted, want_sorted);
}

#[tokio::test(flavor = "multi_thread")]
async fn schema_round_trips_real_records() {
    let tmp = tempfile::tempdir().unwrap();
    let lake = tmp.path().join("lake");
    ingest(&[&corpus().join("stratus-red-team"), &corpus().join("cloud-snitch")], &lake).await;
    let rows = query(
        &lake,
        "SELECT eventid, eventname, eventsource, awsregion, useridentity['arn'] AS arn, \
                useridentity['sessioncontext']['sessionissuer']['arn'] AS issuer, readonly, \
                requestparameters, CAST(eventtime AS VARCHAR) AS t, errorcode, recipientaccountid \
         FROM events",
    )
    .await;
    let by_id: HashMap<String, serde_json::Value> = corpus_records()
        .into_iter()
        .filter(|(f, _)| f.contains("stratus-red-team") || f.contains("cloud-snitch"))
        .filter_map(|(_, r)| Some((r.get("eventID")?.as_str()?.to_owned(), r)))
        .collect();
    let mut checked = 0;
    for b in &rows {
        let col = |n: &str| arrow::compute::cast(b.column_by_name(n).unwrap(), &arrow::datatypes::DataType::Utf8).unwrap();
        let cols: Vec<_> =
            ["eventid", "eventname", "eventsource", "awsregion", "arn", "issuer", "readonly", "requestparameters", "t", "errorcode", "recipientaccountid"]
                .iter()
                .map(|n| col(n))
                .collect();
        use arrow::array::{Array, AsArray};
        let get = |c: usize, i: usize| {
            let a = cols[c].as_string::<i32>();
            a.is_valid(i).then(|| a.value(i).to_owned())
        };
        for i in 0..b.num_rows() {
            let id = get(0, i).unwrap();
            let src = &by_id[&id];
            let s = |k: &str| src.get(k).and_then(|v| v.as_str()).map(str::to_owned);
            assert_eq!(get(1, i), s("eventName"), "{id}");
            assert_eq!(get(2, i), s("eventSource"), "{id}");
            assert_eq!(get(3, i), s("awsRegion"), "{id}");
            assert_eq!(get(4, i), src.pointer("/userIdentity/arn").and_then(|v| v.as_str()).map(str::to_owned), "{id}");
            assert_eq!(get(5, i), src.pointer("/userIdentity/sessionContext/sessionIssuer/arn").and_then(|v| v.as_str()).map(str::to_owned), "{id}");
            assert_eq!(get(6, i), src.get("readOnly").and_then(|v| v.as_bool()).map(|b| b.to_string()), "{id}");
            let params = get(7, i).map(|t| serde_json::from_str::<serde_json::Value>(&t).unwrap());
            let want = src.get("requestParameters").cloned().filter(|v| !v.is_null());
            assert_eq!(params, want, "{id}");
            let t = get(8, i).unwrap();
            let want_t = s("eventTime").unwrap();
            assert_eq!(t, want_t, "{id}");
            assert_eq!(get(9, i), s("errorCode"), "{id}");
            assert_eq!(get(10, i), s("recipientAccountId"), "{id}");
            checked += 1;
        }
    }
    assert_eq!(checked, 310 + 21);
}

#[tokio::test(flavor = "multi_thread")]
async fn reingest_adds_nothing_and_new_files_are_picked_up() {
    let tmp = tempfile::tempdir().unwrap();
    let (src, lake) = (tmp.path().join("src"), tmp.path().join("lake"));
    let a: Vec<_> = (0..5).map(|i| record(&format!("id-{i}"), "2024-06-01T10:00:00Z", "us-east-1")).collect();
    write_gz(&log_path(&src, "111122223333", "us-east-1", "20240601", "A"), &a);

    let first = ingest(&[&src], &lake).await;
    assert_eq!((first.files_read, first.records_written, first.duplicates_dropped), (1, 5, 0));
    assert!(first.is_clean());

    let again = ingest(&[&src], &lake).await;
    assert_eq!((again.files_read, again.files_already_ingested, again.records_written), (0, 1, 0));
    assert_eq!(scalar(&lake, "SELECT count(*) FROM events").await, 5);

    // A new file that repeats two events of the first, and repeats one of its own.
    let mut b: Vec<_> = (3..8).map(|i| record(&format!("id-{i}"), "2024-06-01T10:00:00Z", "us-east-1")).collect();
    b.push(record("id-7", "2024-06-01T10:00:00Z", "us-east-1"));
    write_gz(&log_path(&src, "111122223333", "us-east-1", "20240601", "B"), &b);
    let third = ingest(&[&src], &lake).await;
    assert_eq!((third.files_read, third.files_already_ingested), (1, 1));
    assert_eq!((third.records_read, third.records_written, third.duplicates_dropped), (6, 3, 3));
    assert_eq!(scalar(&lake, "SELECT count(*) FROM events").await, 8);
    assert_eq!(scalar(&lake, "SELECT count(DISTINCT eventid) FROM events").await, 8);
    let kept = scalar(&lake, "SELECT kept FROM ingested_files WHERE sourcefile LIKE '%_B.json.gz'").await;
    assert_eq!(kept, 3);
}

#[tokio::test(flavor = "multi_thread")]
async fn damaged_files_keep_their_readable_records() {
    let tmp = tempfile::tempdir().unwrap();
    let (src, lake) = (tmp.path().join("src"), tmp.path().join("lake"));
    std::fs::create_dir_all(&src).unwrap();

    // A gzip cut short: the records before the cut are kept.
    let recs: Vec<_> = (0..2000).map(|i| record(&format!("t-{i}"), "2024-06-01T10:00:00Z", "us-east-1")).collect();
    let full = src.join("full.json.gz");
    write_gz(&full, &recs);
    let bytes = std::fs::read(&full).unwrap();
    std::fs::write(src.join("truncated.json.gz"), &bytes[..bytes.len() / 2]).unwrap();
    std::fs::remove_file(&full).unwrap();

    // One file mixing good records, invalid JSON, a missing eventTime and a wrong type.
    let good = |id: &str| record(id, "2024-06-01T11:00:00Z", "eu-west-1").to_string();
    let mut no_time = record("m-1", "x", "eu-west-1");
    no_time.as_object_mut().unwrap().remove("eventTime");
    let mut wrong = record("w-1", "2024-06-01T11:00:00Z", "eu-west-1");
    wrong["eventName"] = serde_json::json!(["not", "a", "string"]);
    let lines = [good("g-1"), "{\"eventTime\": oops}".into(), no_time.to_string(), wrong.to_string(), good("g-2"), "not json at all".into()];
    std::fs::write(src.join("mixed.ndjson"), lines.join("\n")).unwrap();

    let (code, s) = run_ingest(&[src.to_str().unwrap(), "--lake", lake.to_str().unwrap()]);
    assert_eq!(code, 3, "partial success: {s}");
    assert_eq!(s["files_read"], 2);
    assert_eq!(s["files_damaged"], 1);
    assert_eq!(s["rejected_by_reason"]["file:truncated"], 1);
    assert_eq!(s["rejected_by_reason"]["invalid_json"], 2);
    assert_eq!(s["rejected_by_reason"]["missing_eventtime"], 1);
    assert_eq!(s["rejected_by_reason"]["wrong_type"], 1);
    let truncated_kept = scalar(&lake, "SELECT count(*) FROM events WHERE sourcefile LIKE '%truncated.json.gz'").await;
    assert!(truncated_kept > 0 && truncated_kept < 2000, "kept {truncated_kept} of the truncated file");
    assert_eq!(s["records_written"].as_i64().unwrap(), truncated_kept + 2);
    let wrong_msg = strings(&lake, "SELECT message FROM rejects WHERE reason = 'wrong_type'").await;
    assert!(wrong_msg[0].as_deref().unwrap().contains("eventName"), "{wrong_msg:?}");
    let idx = scalar(&lake, "SELECT recordindex FROM rejects WHERE reason = 'missing_eventtime'").await;
    assert_eq!(idx, 2);

    // Damaged files are journaled: a second run does not read them again.
    let (code, s) = run_ingest(&[src.to_str().unwrap(), "--lake", lake.to_str().unwrap()]);
    assert_eq!(code, 0, "{s}");
    assert_eq!(s["files_already_ingested"], 2);
}

#[tokio::test(flavor = "multi_thread")]
async fn unsafe_regions_never_become_paths() {
    let tmp = tempfile::tempdir().unwrap();
    let (src, lake) = (tmp.path().join("src"), tmp.path().join("lake"));
    let bad = ["../escape", "a/b", "", "..", "/abs", "x\\y", "..\\..\\win"];
    let mut recs: Vec<_> = bad.iter().enumerate().map(|(i, r)| record(&format!("bad-{i}"), "2024-06-01T10:00:00Z", r)).collect();
    recs.push(record("ok-1", "2024-06-01T10:00:00Z", "us-east-1"));
    let mut no_region = record("nr", "2024-06-01T10:00:00Z", "x");
    no_region.as_object_mut().unwrap().remove("awsRegion");
    recs.push(no_region);
    write_gz(&src.join("evil.json.gz"), &recs);

    let s = ingest(&[&src], &lake).await;
    assert_eq!(s.records_written, 1);
    assert_eq!(s.rejected_by_reason.get("invalid_region"), Some(&(bad.len() as u64 + 1)));

    // Nothing was written outside the lake, and the only partition is the valid one.
    let mut entries: Vec<String> = std::fs::read_dir(tmp.path()).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    entries.sort();
    assert_eq!(entries, vec!["lake", "src"]);
    let regions: Vec<String> = std::fs::read_dir(lake.join("events"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("awsregion="))
        .collect();
    assert_eq!(regions, vec!["awsregion=us-east-1"]);
}

#[tokio::test(flavor = "multi_thread")]
async fn date_range_reads_only_matching_folders() {
    let tmp = tempfile::tempdir().unwrap();
    let (src, lake) = (tmp.path().join("src"), tmp.path().join("lake"));
    for (day, n) in [("20240530", 1), ("20240601", 2), ("20240602", 3), ("20240603", 4), ("20240604", 5)] {
        let recs: Vec<_> = (0..n).map(|i| record(&format!("{day}-{i}"), "2024-06-01T10:00:00Z", "us-east-1")).collect();
        write_gz(&log_path(&src, "111122223333", "us-east-1", day, "X"), &recs);
    }
    let mut opts = IngestOptions::new(vec![src.to_str().unwrap().to_owned()], lake.to_str().unwrap());
    let d = |s| chrono::NaiveDate::parse_from_str(s, "%Y-%m-%d").unwrap();
    opts.range = prism::source::DateRange { from: Some(d("2024-06-01")), to: Some(d("2024-06-02")) };
    let s = prism::ingest(&opts, Arc::new(IngestProgress::default())).await.unwrap();
    // 06-01 and 06-02, plus 06-03 for late deliveries of 06-02.
    assert_eq!(s.files_read, 3);
    assert_eq!(s.records_written, 2 + 3 + 4);
    assert_eq!(s.skipped_by_reason.get("outside_date_range"), Some(&2));
}

#[test]
fn kill_at_any_point_leaves_a_consistent_lake_and_the_rerun_completes_it() {
    let tmp = tempfile::tempdir().unwrap();
    let (src, lake) = (tmp.path().join("src"), tmp.path().join("lake"));
    // 120 files × 400 records over a few hours, with duplicates across files and bad records.
    let mut expected = HashSet::new();
    let mut bad = 0;
    for f in 0..120 {
        let mut recs = Vec::new();
        for i in 0..400 {
            // The first 10 records of each file repeat the previous file's (CloudTrail
            // redelivers identical records).
            let n = if i < 10 && f > 0 { f * 400 + i - 400 } else { f * 400 + i };
            let id = format!("e-{n}");
            let minute = (n / 40) % 600;
            let t = format!("2024-06-01T{:02}:{:02}:{:02}Z", minute / 60, minute % 60, n % 60);
            let region = ["us-east-1", "eu-west-1"][n % 2];
            recs.push(record(&id, &t, region));
            expected.insert(id);
        }
        recs.push(serde_json::json!({"awsRegion": "us-east-1", "eventID": format!("bad-{f}")}));
        bad += 1;
        write_gz(&log_path(&src, "111122223333", "us-east-1", "20240601", &format!("F{f:04}")), &recs);
    }
    let args = |lake: &Path| {
        vec![
            "ingest".to_owned(),
            src.to_str().unwrap().to_owned(),
            "--lake".into(),
            lake.to_str().unwrap().to_owned(),
            "--buffer-mb".into(),
            "2".into(),
            "--quiet".into(),
        ]
    };
    let rt = tokio::runtime::Runtime::new().unwrap();
    // Kill at growing delays, each run resuming the last, until one finishes by itself.
    let mut killed = 0;
    let mut delay_ms = 100u64;
    loop {
        let mut command = std::process::Command::new(prism_bin());
        command.args(args(&lake));
        let finished = !kill_after(command, delay_ms);
        killed += u32::from(!finished);
        // Whatever was committed is consistent: no duplicates, nothing invented.
        if lake.join("prism.json").exists() && lake.join("events/_delta_log").exists() {
            rt.block_on(async {
                let total = scalar(&lake, "SELECT count(*) FROM events").await;
                let distinct = scalar(&lake, "SELECT count(DISTINCT eventid) FROM events").await;
                assert_eq!(total, distinct, "after a kill at {delay_ms} ms");
                assert!(total as usize <= expected.len());
                let dup_rejects = scalar(&lake, "SELECT count(*) FROM (SELECT sourcefile, recordindex FROM rejects GROUP BY 1, 2 HAVING count(*) > 1)").await;
                assert_eq!(dup_rejects, 0);
            });
        }
        if finished || delay_ms > 60_000 {
            break;
        }
        delay_ms = delay_ms * 3 / 2;
    }
    assert!(killed >= 2, "only {killed} kills landed before the ingest finished; make the data larger");
    // One more run completes whatever is left.
    let status = std::process::Command::new(prism_bin()).args(args(&lake)).status().unwrap();
    assert!(matches!(status.code(), Some(0) | Some(3)), "{status:?}");
    rt.block_on(async {
        assert_eq!(scalar(&lake, "SELECT count(*) FROM events").await as usize, expected.len());
        assert_eq!(scalar(&lake, "SELECT count(DISTINCT eventid) FROM events").await as usize, expected.len());
        assert_eq!(scalar(&lake, "SELECT count(*) FROM rejects").await, bad);
        assert_eq!(scalar(&lake, "SELECT count(*) FROM ingested_files").await, 120);
    });
    // What the killed runs left (uncommitted files, half-written staging files) goes with a
    // vacuum that keeps nothing, and the lake reads the same.
    let out = std::process::Command::new(prism_bin()).args(["vacuum", "--lake", lake.to_str().unwrap(), "--retention", "0", "--quiet"]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let staging: Vec<_> = files_under(&lake).into_iter().filter(|p| p.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.contains('#'))).collect();
    assert!(staging.is_empty(), "{staging:?}");
    rt.block_on(async {
        assert_eq!(scalar(&lake, "SELECT count(DISTINCT eventid) FROM events").await as usize, expected.len());
        assert_eq!(scalar(&lake, "SELECT count(*) FROM events").await as usize, expected.len());
    });
}

/// Three `prism ingest` processes at once on one lake, with overlapping sources (all four
/// days, the last two, the middle two) and records redelivered across files: every event is
/// stored once, each reject journaled once, `kept` adds up to the events stored, and the
/// rollups count each events file once, as after one writer.
#[test]
fn concurrent_ingests_of_overlapping_sources_store_each_event_once() {
    let tmp = tempfile::tempdir().unwrap();
    let (src, lake, reference) = (tmp.path().join("src"), tmp.path().join("lake"), tmp.path().join("reference"));
    let days = ["20240601", "20240602", "20240603", "20240604"];
    let (mut expected, mut bad) = (HashSet::new(), 0);
    for (d, day) in days.iter().enumerate() {
        for f in 0..30 {
            let file = d * 30 + f;
            let mut recs = Vec::new();
            for i in 0..300 {
                // The first 10 records repeat the previous file's, as CloudTrail redelivers.
                let n = if i < 10 && f > 0 { file * 300 + i - 300 } else { file * 300 + i };
                let id = format!("e-{n}");
                let t = format!("{}-{}-{}T{:02}:{:02}:{:02}Z", &day[..4], &day[4..6], &day[6..], (n / 300) % 24, (n / 5) % 60, n % 60);
                recs.push(record(&id, &t, ["us-east-1", "eu-west-1"][n % 2]));
                expected.insert(id);
            }
            recs.push(serde_json::json!({"awsRegion": "us-east-1", "eventID": format!("bad-{file}")}));
            bad += 1;
            write_gz(&log_path(&src, "111122223333", "us-east-1", day, &format!("F{f:03}")), &recs);
        }
    }
    let day = |d: &str| src.join(format!("AWSLogs/111122223333/CloudTrail/us-east-1/2024/06/{d}"));
    let run = |sources: Vec<std::path::PathBuf>, lake: &Path| {
        let mut cmd = std::process::Command::new(prism_bin());
        cmd.arg("ingest").args(sources).args(["--lake", lake.to_str().unwrap(), "--buffer-mb", "1", "--jobs", "1", "--json"]);
        cmd.stdout(std::process::Stdio::piped()).stderr(std::process::Stdio::piped()).spawn().unwrap()
    };
    let writers = [vec![src.clone()], vec![day("03"), day("04")], vec![day("02"), day("03")]].map(|sources| run(sources, &lake));
    let one = run(vec![src.clone()], &reference).wait_with_output().unwrap();
    // Exit status 3: done, with rejects (the bad records).
    assert_eq!(one.status.code(), Some(3), "{}", String::from_utf8_lossy(&one.stderr));
    let mut conflicts = 0;
    for w in writers {
        let out = w.wait_with_output().unwrap();
        assert_eq!(out.status.code(), Some(3), "a writer failed: {}", String::from_utf8_lossy(&out.stderr));
        let summary: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        conflicts += summary["commit_conflicts"].as_u64().unwrap();
    }
    // The writers overlapped: without it this test would prove nothing.
    assert!(conflicts > 0, "no commit of one writer met another's");
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        assert_eq!(scalar(&lake, "SELECT count(*) FROM events").await as usize, expected.len());
        assert_eq!(scalar(&lake, "SELECT count(DISTINCT eventid) FROM events").await as usize, expected.len());
        assert_eq!(scalar(&lake, "SELECT count(*) FROM rejects").await, bad);
        assert_eq!(scalar(&lake, "SELECT count(DISTINCT sourcefile) FROM ingested_files").await, 120);
        assert_eq!(scalar(&lake, "SELECT sum(kept) FROM ingested_files").await as usize, expected.len());
        // Each events file counted once: the rollups hold what one writer's do.
        assert_eq!(scalar(&lake, "SELECT sum(calls) FROM rollups WHERE kind = 'file'").await as usize, expected.len());
        for kind in ["minute", "hour"] {
            let sum = format!("SELECT sum(calls) FROM rollups WHERE kind = '{kind}'");
            assert_eq!(scalar(&lake, &sum).await, scalar(&reference, &sum).await, "{kind} rollups");
        }
    });
}

#[test]
fn cli_help_and_errors() {
    let out = std::process::Command::new(prism_bin()).args(["ingest", "--help"]).output().unwrap();
    let help = String::from_utf8_lossy(&out.stdout);
    for needle in ["--lake", "--from", "--granularity", "Exit status", "s3://"] {
        assert!(help.contains(needle), "help lacks {needle}:\n{help}");
    }
    let tmp = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(prism_bin()).args(["ingest", "/no/such/folder", "--lake", tmp.path().join("l").to_str().unwrap()]).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("/no/such/folder"), "{err}");
    let out = std::process::Command::new(prism_bin()).args(["ingest", "x", "--lake", "y", "--from", "June"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
}

#[tokio::test(flavor = "multi_thread")]
async fn shipped_ingest_problems_query_lists_rejects_by_reason_and_file() {
    let tmp = tempfile::tempdir().unwrap();
    let lake = tmp.path().join("lake");
    ingest(&[&corpus().join("aws-processing-library-fixtures")], &lake).await;
    let query = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("queries/ingest_problems.sql");
    let out = std::process::Command::new(prism_bin())
        .args(["sql", "--lake", lake.to_str().unwrap(), "-f", query.to_str().unwrap(), "--format", "csv"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let csv = String::from_utf8(out.stdout).unwrap();
    let rows: Vec<Vec<&str>> = csv.lines().skip(1).map(|l| l.split(',').collect()).collect();
    // Fixtures: 3 records without eventTime in 3 files, 1 invalid eventTime, and the invalid
    // JSON file (one unparseable span plus the structural break).
    let summary: Vec<(&str, &str, &str)> = rows.iter().map(|r| (r[0], r[1].rsplit('/').next().unwrap(), r[2])).collect();
    assert_eq!(summary.len(), 5, "{csv}");
    assert_eq!(summary[0], ("invalid_json", "SerializerTestFileBadJsonFormat.json", "2"));
    assert!(summary.contains(&("invalid_eventtime", "SerializerTestFileMissField.json", "1")));
    assert_eq!(summary.iter().filter(|r| r.0 == "missing_eventtime").count(), 3);
}

#[test]
fn sql_on_a_missing_lake_is_a_clear_error_and_creates_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let missing = tmp.path().join("typo");
    let out = std::process::Command::new(prism_bin()).args(["sql", "--lake", missing.to_str().unwrap(), "-c", "SELECT 1"]).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no lake here"));
    assert!(!missing.exists());
}

#[tokio::test(flavor = "multi_thread")]
async fn json_functions_query_free_form_columns() {
    let tmp = tempfile::tempdir().unwrap();
    let lake = tmp.path().join("lake");
    ingest(&[&corpus().join("stratus-red-team")], &lake).await;
    // The same value through the JSON functions and read independently from the source files.
    let got: HashSet<String> = strings(
        &lake,
        "SELECT json_get_str(requestparameters, 'userName') FROM events \
         WHERE eventname = 'CreateUser' AND json_get_str(requestparameters, 'userName') IS NOT NULL",
    )
    .await
    .into_iter()
    .flatten()
    .collect();
    let want: HashSet<String> = corpus_records()
        .iter()
        .filter(|(f, r)| f.contains("stratus-red-team") && r["eventName"] == "CreateUser")
        .filter_map(|(_, r)| r.pointer("/requestParameters/userName").and_then(|v| v.as_str()).map(str::to_owned))
        .collect();
    assert!(!want.is_empty());
    assert_eq!(got, want);
    let arrow = scalar(&lake, "SELECT count(*) FROM events WHERE (requestparameters->>'userName') IS NOT NULL").await;
    assert!(arrow >= want.len() as i64);
}

/// The Delta log keeps per-file statistics of the filter columns only: statistics of every
/// column made the log (and every commit's and query's memory) grow 3–4 KB per file.
#[tokio::test(flavor = "multi_thread")]
async fn file_statistics_cover_the_filter_columns_only() {
    let tmp = tempfile::tempdir().unwrap();
    let lake = tmp.path().join("lake");
    ingest(&[&corpus()], &lake).await;
    let wanted: std::collections::BTreeSet<&str> = prism::lake::EVENTS_STATS_COLUMNS.split(',').collect();
    let mut files = 0;
    for log in files_under(&lake.join("events/_delta_log")).iter().filter(|p| p.extension().is_some_and(|e| e == "json")) {
        for line in std::fs::read_to_string(log).unwrap().lines() {
            let action: serde_json::Value = serde_json::from_str(line).unwrap();
            let Some(stats) = action["add"]["stats"].as_str() else { continue };
            let stats: serde_json::Value = serde_json::from_str(stats).unwrap();
            let columns: std::collections::BTreeSet<&str> = stats["minValues"].as_object().unwrap().keys().map(|k| k.as_str()).collect();
            assert!(columns.is_subset(&wanted), "{columns:?}");
            assert!(columns.contains("eventtime"), "{columns:?}");
            files += 1;
        }
    }
    assert!(files > 10, "{files} data files");
}

/// Network-activity events (their own `CloudTrail-NetworkActivity/` folder) are events; AWS's
/// aggregated-event summaries (`CloudTrail-Aggregated/`) are not, and are skipped with their
/// reason, as digests and Insights files are. The files are shaped as AWS documents them.
#[tokio::test]
async fn network_activity_files_are_events_and_aws_aggregated_files_go_to_their_table() {
    let dir = tempfile::tempdir().unwrap();
    let (archive, lake) = (dir.path().join("archive"), dir.path().join("lake"));
    let trail = log_path(&archive, "111122223333", "us-east-1", "20251117", "a");
    write_gz(&trail, &[record("m-1", "2025-11-17T19:20:00Z", "us-east-1")]);
    let network = |id: &str, error: Option<&str>| {
        let mut r = serde_json::json!({
            "eventVersion": "1.11",
            "userIdentity": {"type": "AWSAccount", "principalId": "", "accountId": "444455556666"},
            "eventTime": "2025-11-17T19:21:07Z",
            "eventSource": "s3.amazonaws.com",
            "eventName": "ListObjectsV2",
            "awsRegion": "us-east-1",
            "sourceIPAddress": "10.0.1.5",
            "userAgent": "aws-cli/2.15.0",
            "requestID": format!("req-{id}"),
            "eventID": id,
            "readOnly": true,
            "eventType": "AwsVpceEvent",
            "managementEvent": false,
            "recipientAccountId": "111122223333",
            "sharedEventID": "5e1d7a43-0f6c-4f5e-9d1b-2a3c4d5e6f70",
            "vpcEndpointId": "vpce-0123456789abcdef0",
            "vpcEndpointAccountId": "111122223333",
            "eventCategory": "NetworkActivity"
        });
        if let Some(code) = error {
            r["errorCode"] = code.into();
            r["errorMessage"] = "The request was denied due to a VPC endpoint policy".into();
        }
        r
    };
    let folder = trail.to_string_lossy().replace("/CloudTrail/", "/CloudTrail-NetworkActivity/").replace("_CloudTrail_", "_CloudTrail-NetworkActivity_");
    write_gz(Path::new(&folder), &[network("n-1", None), network("n-2", Some("VpceAccessDenied"))]);
    let aggregated = serde_json::json!({"eventVersion":"1.0","accountId":"111122223333","eventId":"62759c1a-6248-48e1-a6b3-d5fb7e6c4bc0",
        "eventCategory":"Aggregated","eventType":"AwsAggregatedEvent","awsRegion":"us-east-1","eventSource":"s3.amazonaws.com",
        "timeWindow":{"windowStart":"2025-11-17T19:20:00Z","windowEnd":"2025-11-17T19:25:00Z","windowSize":"PT5M"},
        "summary":{"primaryDimension":{"dimension":"eventName","statistics":[{"name":"PutObject","value":1000}],"aggregationType":"Count"},"details":[]}});
    // AWS's summaries: a good one, one that is an event record (misfiled), and in a second
    // file without the envelope, the good one again (a redelivery) and another.
    let folder = trail.to_string_lossy().replace("/CloudTrail/", "/CloudTrail-Aggregated/").replace("_CloudTrail_", "_CloudTrail-Aggregated_");
    write_gz(Path::new(&folder), &[aggregated.clone(), network("n-9", None)]);
    let mut other = aggregated.clone();
    other["eventId"] = "0c1e1b2a-6248-48e1-a6b3-d5fb7e6c4bc1".into();
    other["summary"]["primaryDimension"] =
        serde_json::json!({"dimension":"resourceARN","statistics":[{"name":"arn:aws:s3:::bucket-1","value":800}],"aggregationType":"Count"});
    let second = folder.replace("_a.json.gz", "_b.json");
    assert_ne!(second, folder);
    std::fs::write(&second, format!("{aggregated}\n{other}\n")).unwrap();

    let s = ingest(&[&archive], &lake).await;
    assert_eq!((s.files_read, s.records_written, s.records_rejected, s.files_skipped), (4, 3, 0, 0), "{s:?}");
    let a = &s.aggregated;
    assert_eq!((a.files, a.records_read, a.records_written, a.duplicates, a.records_rejected), (2, 4, 2, 1, 1), "{s:?}");
    assert_eq!(a.rejected_by_reason.get("not_aggregated"), Some(&1), "{s:?}");
    assert!(s.problems.iter().any(|p| p.source == folder && p.record_index == Some(1) && p.reason == "not_aggregated"), "{s:?}");
    let rows = strings(
        &lake,
        "SELECT origin || ' ' || template || ' ' || primaryvalue || ' ' || eventcount || ' ' || CAST(windowstart AS VARCHAR) || ' ' || accountid || ' ' || awsregion \
         FROM aggregated_events ORDER BY eventid",
    )
    .await;
    let rows: Vec<String> = rows.into_iter().flatten().collect();
    assert_eq!(
        rows,
        [
            "aws RESOURCE_ACCESS arn:aws:s3:::bucket-1 800 2025-11-17T19:20:00Z 111122223333 us-east-1",
            "aws API_ACTIVITY PutObject 1000 2025-11-17T19:20:00Z 111122223333 us-east-1"
        ]
    );
    let sources = strings(&lake, "SELECT sourcefile FROM aggregated_events ORDER BY eventid").await;
    assert_eq!(sources, [Some(second.clone()), Some(folder.clone())]);
    // The record is kept whole, and none of it is in `events`.
    let json = strings(&lake, "SELECT eventjson FROM aggregated_events WHERE template = 'API_ACTIVITY'").await;
    assert_eq!(serde_json::from_str::<serde_json::Value>(json[0].as_deref().unwrap()).unwrap(), aggregated);
    assert_eq!(strings(&lake, "SELECT CAST(count(*) AS VARCHAR) FROM events WHERE eventid NOT IN ('m-1', 'n-1', 'n-2')").await, [Some("0".to_owned())]);
    // A re-run reads nothing again.
    let again = ingest(&[&archive], &lake).await;
    assert_eq!((again.files_read, again.files_already_ingested, again.aggregated.records_written), (0, 4, 0), "{again:?}");

    let rows = strings(&lake, "SELECT eventid || ' ' || eventcategory || ' ' || coalesce(errorcode, '-') FROM events ORDER BY eventid").await;
    let rows: Vec<String> = rows.into_iter().flatten().collect();
    assert_eq!(rows, ["m-1 Management -", "n-1 NetworkActivity -", "n-2 NetworkActivity VpceAccessDenied"]);
    // The endpoint's fields are kept.
    let endpoint = strings(&lake, "SELECT vpcendpointid FROM events WHERE eventid = 'n-1'").await;
    assert_eq!(endpoint, [Some("vpce-0123456789abcdef0".to_owned())]);
}

/// A SIEM's export: `eventTime` without a zone is read as UTC and counted apart; a log
/// shipper's `@timestamp` instead of `eventTime` is rejected with a reason that says so.
#[tokio::test(flavor = "multi_thread")]
async fn exports_with_zoneless_times_are_read_as_utc_and_counted() {
    let dir = tempfile::tempdir().unwrap();
    let (export, lake) = (dir.path().join("export.ndjson"), dir.path().join("lake"));
    let mut zoneless = record("z-1", "2024-06-01T12:34:56Z", "us-east-1");
    zoneless["eventTime"] = "2024-06-01 12:34:56.000000000".into();
    let mut shipped = record("s-1", "2024-06-01T12:34:56Z", "us-east-1");
    let time = shipped.as_object_mut().unwrap().remove("eventTime").unwrap();
    shipped["@timestamp"] = time;
    let lines: Vec<String> = [record("u-1", "2024-06-01T12:34:56Z", "us-east-1"), zoneless, shipped].iter().map(|r| r.to_string()).collect();
    std::fs::write(&export, lines.join("\n")).unwrap();

    let s = ingest(&[&export], &lake).await;
    assert_eq!((s.records_read, s.records_written, s.records_rejected, s.eventtime_without_zone), (3, 2, 1, 1), "{s:?}");
    assert_eq!(s.rejected_by_reason.get("missing_eventtime"), Some(&1), "{s:?}");
    assert!(s.problems[0].message.contains("has `@timestamp`"), "{s:?}");
    let times = strings(&lake, "SELECT CAST(eventtime AS VARCHAR) FROM events ORDER BY eventid").await;
    assert_eq!(times, [Some("2024-06-01T12:34:56Z".to_owned()), Some("2024-06-01T12:34:56Z".to_owned())]);
}

/// Hostile values (issue 19): terminal escapes, `<script>`, NUL, a lone surrogate, a 10 MB
/// string, 10,000-deep nesting and a million-element array are kept or rejected with a reason,
/// and `prism sql` shows them without letting them act on the terminal.
#[tokio::test(flavor = "multi_thread")]
async fn hostile_values_are_kept_or_rejected_and_shown_safely() {
    let dir = tempfile::tempdir().unwrap();
    let (file, lake) = (dir.path().join("hostile.json"), dir.path().join("lake"));
    let with = |id: &str, key: &str, value: &str| {
        let mut r = record(id, "2024-06-01T12:00:00Z", "us-east-1");
        r[key] = "PLACEHOLDER".into();
        r.to_string().replace("\"PLACEHOLDER\"", value)
    };
    let deep = format!("{}1{}", "{\"a\":".repeat(10_000), "}".repeat(10_000));
    let array = format!("[{}]", vec!["7"; 1_000_000].join(","));
    let records = [
        with("escape", "userAgent", r#""\u001b[2J\u001b]0;owned\u0007<script>alert(1)</script>""#),
        with("nul", "userAgent", r#""nul\u0000byte""#),
        with("surrogate", "userAgent", r#""\ud800x""#),
        with("big", "requestParameters", &format!("{{\"k\":\"{}\"}}", "x".repeat(10_000_000))),
        with("deep", "requestParameters", &deep),
        with("array", "requestParameters", &format!("{{\"list\":{array}}}")),
    ];
    std::fs::write(&file, format!("{{\"Records\":[{}]}}", records.join(","))).unwrap();

    let s = ingest(&[&file], &lake).await;
    assert_eq!((s.records_read, s.records_written, s.records_rejected), (6, 5, 1), "{s:?}");
    assert_eq!(s.problems[0].record_index, Some(2), "{s:?}");
    assert_eq!(s.problems[0].reason, "invalid_json", "{s:?}");
    // Free-form values are kept whole, as JSON text.
    let sizes = strings(
        &lake,
        "SELECT eventid || ' ' || CAST(length(requestparameters) AS VARCHAR) FROM events WHERE eventid IN ('array', 'big', 'deep') ORDER BY eventid",
    )
    .await;
    assert_eq!(sizes.into_iter().flatten().collect::<Vec<_>>(), ["array 2000010", "big 10000008", "deep 60001"]);

    let l = lake.to_str().unwrap();
    let out =
        std::process::Command::new(prism_bin()).args(["sql", "--lake", l, "-c", "SELECT eventid, useragent FROM events ORDER BY eventid"]).output().unwrap();
    let table = String::from_utf8(out.stdout).unwrap();
    assert!(out.status.success(), "{table}");
    assert!(!table.chars().any(|c| c.is_control() && c != '\n'), "{table:?}");
    assert!(table.contains(r"\u{1b}[2J\u{1b}]0;owned\u{7}<script>alert(1)</script>") && table.contains(r"nul\u{0}byte"), "{table}");
    // Programs get the exact values.
    let out = std::process::Command::new(prism_bin())
        .args(["sql", "--lake", l, "--format", "json", "-c", "SELECT useragent FROM events WHERE eventid = 'escape'"])
        .output()
        .unwrap();
    let rows: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(rows[0]["useragent"], "\u{1b}[2J\u{1b}]0;owned\u{7}<script>alert(1)</script>");
}

/// An account ID that could name a path (`../../evil`) is kept in the lake but never names a
/// folder: Insights and aggregation leave it out and say so.
#[tokio::test(flavor = "multi_thread")]
async fn unsafe_accounts_never_become_paths() {
    let tmp = tempfile::tempdir().unwrap();
    let (src, lake) = (tmp.path().join("src"), tmp.path().join("lake"));
    let mut recs = Vec::new();
    for (i, account) in ["../../evil", "111122223333"].iter().enumerate() {
        for m in 0..30 {
            let mut r = record(&format!("{i}-{m}"), &format!("2024-06-01T10:{m:02}:00Z"), "us-east-1");
            r["recipientAccountId"] = (*account).into();
            r["eventSource"] = "s3.amazonaws.com".into();
            r["managementEvent"] = false.into();
            r["eventCategory"] = "Data".into();
            recs.push(r);
        }
    }
    write_gz(&src.join("evil.json.gz"), &recs);
    let s = ingest(&[&src], &lake).await;
    assert_eq!(s.records_written, 60);

    let l = lake.to_str().unwrap();
    let run = |args: &[&str]| -> serde_json::Value {
        let out = std::process::Command::new(prism_bin()).args(args).output().unwrap();
        assert!(out.status.success(), "{args:?}: {}", String::from_utf8_lossy(&out.stderr));
        serde_json::from_slice(&out.stdout).unwrap()
    };
    run(&["event-config", "put", "--lake", l, "--aggregation-configurations", r#"[{"EventCategory":"Data","Templates":["API_ACTIVITY"]}]"#]);
    let a = run(&["aggregate", "backfill", "--lake", l, "--settle-minutes", "0", "--json"]);
    assert_eq!(a["skipped_accounts"], serde_json::json!(["../../evil/us-east-1"]), "{a}");
    assert!(a["records_written"].as_u64().unwrap() > 0, "{a}");
    run(&["selectors", "put", "--lake", l, "--insight-selectors", r#"[{"InsightType":"ApiCallRateInsight","EventCategories":["Data"]}]"#]);
    let i = run(&["insights", "backfill", "--lake", l, "--json"]);
    assert_eq!(i["skipped_accounts"], serde_json::json!(["../../evil/us-east-1"]), "{i}");

    // Nothing outside the lake; under AWSLogs/, only the valid account.
    let mut entries: Vec<String> = std::fs::read_dir(tmp.path()).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    entries.sort();
    assert_eq!(entries, ["lake", "src"]);
    let accounts: Vec<String> = std::fs::read_dir(lake.join("AWSLogs")).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    assert_eq!(accounts, ["111122223333"]);
}

/// A full disk during ingest (a 1.5 MB tmpfs in a private mount namespace, `unshare -rm`): exit
/// status 1 with the error naming the lake's path and a hint, no panic text, a lake that reads
/// consistently with no duplicate; once there is space, the same command completes it exactly.
/// Then the lake's file system turns read-only: a clear error, the lake unchanged.
#[test]
fn a_full_disk_and_a_read_only_lake_fail_clearly_and_resume() {
    let dir = tempfile::tempdir().unwrap();
    let (archive, more, mnt, out) = (dir.path().join("archive"), dir.path().join("more"), dir.path().join("mnt"), dir.path().join("out"));
    prism::generate::generate(&crate::common::one_account(&archive, "us-east-1", 1, 20_000, 0, 1)).unwrap();
    write_gz(&more.join("late.json.gz"), &[record("late-1", "2024-06-01T10:00:00Z", "us-east-1")]);
    std::fs::create_dir_all(&out).unwrap();
    let script = r#"
        set -u
        count() { "$PRISM" sql --lake "$MNT/lake" --format csv -c "SELECT count(*) AS n, count(DISTINCT eventid) AS d FROM events" | tail -1; }
        mkdir -p "$MNT" && mount -t tmpfs -o size=1500k tmpfs "$MNT" || exit 99
        "$PRISM" ingest "$ARCHIVE" --lake "$MNT/lake" --buffer-mb 1 --quiet 2> "$OUT/full.err"; echo $? > "$OUT/full.rc"
        count > "$OUT/full.count"
        mount -o remount,size=300m "$MNT" || exit 98
        "$PRISM" ingest "$ARCHIVE" --lake "$MNT/lake" --json > "$OUT/resumed.json" 2> "$OUT/resumed.err"; echo $? > "$OUT/resumed.rc"
        count > "$OUT/resumed.count"
        mount -o remount,ro "$MNT" || exit 97
        "$PRISM" ingest "$MORE" --lake "$MNT/lake" --quiet 2> "$OUT/ro.err"; echo $? > "$OUT/ro.rc"
        count > "$OUT/ro.count"
    "#;
    let status = std::process::Command::new("unshare")
        .args(["-rm", "sh", "-c", script])
        .env("PRISM", prism_bin())
        .env("ARCHIVE", &archive)
        .env("MORE", &more)
        .env("MNT", &mnt)
        .env("OUT", &out)
        .status()
        .expect("this test needs unshare (util-linux) and user namespaces, to mount a small tmpfs");
    assert!(status.success(), "the mount namespace could not be set up: {status}");
    let read = |name: &str| std::fs::read_to_string(out.join(name)).unwrap_or_default().trim().to_owned();
    let counts = |name: &str| -> (u64, u64) {
        let text = read(name);
        let (n, d) = text.split_once(',').unwrap_or_else(|| panic!("{name}: {text}"));
        (n.parse().unwrap(), d.parse().unwrap())
    };
    let total = {
        let s: serde_json::Value = serde_json::from_str(&read("resumed.json")).unwrap();
        s["records_written"].as_u64().unwrap() + s["duplicates_dropped"].as_u64().unwrap()
    };

    assert_eq!(read("full.rc"), "1", "{}", read("full.err"));
    let err = read("full.err");
    assert!(err.contains("No space left on device") && err.contains(&format!("{}", mnt.join("lake").display())), "{err}");
    assert!(err.contains("hint: the disk is full") && !err.contains("panicked"), "{err}");
    let (n, d) = counts("full.count");
    assert_eq!(n, d, "no event stored twice");

    assert_eq!(read("resumed.rc"), "0", "{}", read("resumed.err"));
    let (n, d) = counts("resumed.count");
    assert_eq!((n, d), (23_480, 23_480), "every event of the archive, once ({total} read by the resumed run)");

    assert_eq!(read("ro.rc"), "1");
    let err = read("ro.err");
    assert!(err.contains("Read-only file system") && err.contains("hint: Prism cannot write there") && !err.contains("panicked"), "{err}");
    assert_eq!(counts("ro.count"), (23_480, 23_480));
}
