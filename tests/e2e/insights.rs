//! End-to-end tests of Insights: selectors, backfill and incremental runs, the AWS-format
//! records and files, the SQL functions against the detector, crashes, and the demo.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

use crate::common::{kill_after, prism_bin, scalar, strings};

const BOTH: &str = r#"[{"InsightType":"ApiCallRateInsight"},{"InsightType":"ApiErrorRateInsight"}]"#;

/// A generated archive (9 days, 1 account, 1 region, labelled anomalies) ingested once; each
/// test works on its own copy of the lake.
fn fixture() -> &'static (tempfile::TempDir, PathBuf, PathBuf) {
    static FIXTURE: OnceLock<(tempfile::TempDir, PathBuf, PathBuf)> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let archive = dir.path().join("archive");
        let lake = dir.path().join("lake");
        prism::generate::generate(&crate::common::one_account(&archive, "eu-west-1", 9, 3_000, 6, 11)).unwrap();
        let out = prism(&["ingest", archive.to_str().unwrap(), "--lake", lake.to_str().unwrap(), "--quiet"]);
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        (dir, archive, lake)
    })
}

fn copy_lake(to: &Path) -> PathBuf {
    let lake = to.join("lake");
    std::fs::create_dir_all(to).unwrap();
    let status = Command::new("cp").arg("-r").arg(&fixture().2).arg(&lake).status().unwrap();
    assert!(status.success());
    lake
}

fn prism(args: &[&str]) -> Output {
    Command::new(prism_bin()).args(args).output().unwrap()
}

fn ok(args: &[&str]) -> String {
    let out = prism(args);
    assert!(out.status.success(), "prism {args:?} failed:\n{}\n{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn enable(lake: &Path) {
    ok(&["selectors", "put", "--lake", lake.to_str().unwrap(), "--insight-selectors", BOTH]);
}

fn summary(args: &[&str]) -> serde_json::Value {
    let mut a = args.to_vec();
    a.extend(["--json", "--quiet"]);
    let out = prism(&a);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap()
}

/// Every stored record: event ID → its JSON.
async fn records(lake: &Path) -> BTreeMap<String, String> {
    let ids = strings(lake, "SELECT eventid FROM insights ORDER BY eventid").await;
    let json = strings(lake, "SELECT eventjson FROM insights ORDER BY eventid").await;
    ids.into_iter().zip(json).map(|(a, b)| (a.unwrap(), b.unwrap())).collect()
}

/// Every record in the AWS-format files under `root`, by event ID, with the file's key.
fn file_records(root: &Path) -> BTreeMap<String, (String, serde_json::Value)> {
    let mut out = BTreeMap::new();
    let base = root.join("AWSLogs");
    if !base.exists() {
        return out;
    }
    let mut stack = vec![base];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
                continue;
            }
            let key = p.strip_prefix(root).unwrap().to_str().unwrap().to_owned();
            // A run killed while writing a file leaves object_store's staging file (`….json.gz#1`)
            // beside the final name, which it never created: not a delivered file.
            if !key.ends_with(".json.gz") {
                continue;
            }
            let mut text = String::new();
            flate2::read::GzDecoder::new(std::fs::File::open(&p).unwrap()).read_to_string(&mut text).unwrap();
            let v: serde_json::Value = serde_json::from_str(&text).unwrap();
            for r in v["Records"].as_array().unwrap() {
                let twice = out.insert(r["eventID"].as_str().unwrap().to_owned(), (key.clone(), r.clone()));
                assert!(twice.is_none(), "{} is in two files", r["eventID"]);
            }
        }
    }
    out
}

#[test]
fn selectors_mirror_the_aws_api() {
    let tmp = tempfile::tempdir().unwrap();
    let lake = copy_lake(tmp.path());
    let l = lake.to_str().unwrap();

    let out = prism(&["selectors", "get", "--lake", l]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("InsightNotEnabledException"));

    // Nothing enabled: a run says so and writes nothing.
    let text = ok(&["insights", "backfill", "--lake", l]);
    assert!(text.contains("not enabled"), "{text}");
    // The table exists from the lake's creation, empty; no data file and no Insights file.
    let data_files =
        std::fs::read_dir(lake.join("insights")).unwrap().filter(|e| e.as_ref().unwrap().path().extension().is_some_and(|x| x == "parquet")).count();
    assert_eq!(data_files, 0);
    assert!(!lake.join("AWSLogs").exists());

    for bad in [r#"[{"InsightType":"ApiCallRate"}]"#, r#"{"Selectors":[]}"#, "not json", r#"[{"InsightType":"ApiCallRateInsight","x":1}]"#] {
        let out = prism(&["selectors", "put", "--lake", l, "--insight-selectors", bad]);
        assert_eq!(out.status.code(), Some(1), "{bad}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("InvalidInsightSelectorsException") && err.contains("ApiErrorRateInsight"), "{err}");
    }

    let put = ok(&["selectors", "put", "--lake", l, "--insight-selectors", &format!(r#"{{"InsightSelectors":{BOTH}}}"#)]);
    let got = ok(&["selectors", "get", "--lake", l]);
    assert_eq!(put, got);
    let v: serde_json::Value = serde_json::from_str(&got).unwrap();
    // Omitted EventCategories mean Management, and are returned.
    assert_eq!(
        v["InsightSelectors"],
        serde_json::json!([{"InsightType":"ApiCallRateInsight","EventCategories":["Management"]},{"InsightType":"ApiErrorRateInsight","EventCategories":["Management"]}])
    );

    // An empty list turns Insights off.
    ok(&["selectors", "put", "--lake", l, "--insight-selectors", "[]"]);
    assert_eq!(prism(&["selectors", "get", "--lake", l]).status.code(), Some(1));

    // A trail without management events cannot have Insights.
    let trail: serde_json::Value = serde_json::from_str(&ok(&["trail", "put", "--lake", l, "--management-events", "off"])).unwrap();
    assert_eq!(trail["ManagementEvents"], "off");
    let out = prism(&["selectors", "put", "--lake", l, "--insight-selectors", BOTH]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("management events"));
}

/// A trail of one account and region over 9 days: a management write every 10 minutes, and S3
/// GetObject data events (reads) at 4–6 a minute, with 200 a minute for 20 minutes on the last
/// day. Files are hourly.
fn data_trail(archive: &Path) {
    let day0 = chrono::NaiveDate::from_ymd_opt(2025, 11, 1).unwrap().and_hms_opt(0, 0, 0).unwrap().and_utc();
    let burst = 8 * 1440 + 600;
    let mut n = 0u64;
    for hour in 0..9 * 24 {
        let start = day0 + chrono::Duration::hours(hour);
        let mut records = Vec::new();
        for m in hour * 60..hour * 60 + 60 {
            let time = (day0 + chrono::Duration::minutes(m)).format("%Y-%m-%dT%H:%M:%SZ").to_string();
            if m % 10 == 0 {
                n += 1;
                let mut r = crate::common::record(&format!("m-{n}"), &time, "us-east-1");
                r["eventName"] = "RunInstances".into();
                r["readOnly"] = false.into();
                records.push(r);
            }
            let reads = if (burst..burst + 20).contains(&m) { 200 } else { 4 + m % 3 };
            for _ in 0..reads {
                n += 1;
                let mut r = crate::common::record(&format!("d-{n}"), &time, "us-east-1");
                r["eventSource"] = "s3.amazonaws.com".into();
                r["eventName"] = "GetObject".into();
                r["managementEvent"] = false.into();
                r["eventCategory"] = "Data".into();
                r["resources"] = serde_json::json!([{"type": "AWS::S3::Object", "ARN": "arn:aws:s3:::reports/q3.csv"}]);
                if (burst..burst + 20).contains(&m) {
                    r["userIdentity"]["arn"] = "arn:aws:iam::111122223333:user/exfil".into();
                }
                records.push(r);
            }
        }
        let stamp = start.format("%Y%m%d").to_string();
        let path = crate::common::log_path(archive, "111122223333", "us-east-1", &stamp, &format!("{hour:03}"))
            .with_file_name(format!("111122223333_CloudTrail_us-east-1_{}_{hour:03}.json.gz", start.format("%Y%m%dT%H%MZ")));
        crate::common::write_gz(&path, &records);
    }
}

/// Insights on data events (spec section 6): the selectors' EventCategories, the refusal on a
/// trail without data events, and a call-rate Insight on S3 reads (which the management call
/// rate does not count) that carries its category and its trail's ARN.
#[tokio::test(flavor = "multi_thread")]
async fn data_insights_count_reads_and_name_their_trail() {
    let tmp = tempfile::tempdir().unwrap();
    let (archive, lake) = (tmp.path().join("archive"), tmp.path().join("lake"));
    data_trail(&archive);
    ok(&["ingest", archive.to_str().unwrap(), "--lake", lake.to_str().unwrap(), "--quiet"]);
    let l = lake.to_str().unwrap();
    const DATA: &str = r#"[{"InsightType":"ApiCallRateInsight","EventCategories":["Data"]}]"#;

    // The trail settings may say it logs no data events: refused as AWS words it.
    let trail = |args: &[&str]| -> serde_json::Value { serde_json::from_str(&ok(&[&["trail"], args].concat())).unwrap() };
    assert_eq!(trail(&["get", "--lake", l])["DataEvents"], "auto (on: the lake holds data events)");
    assert_eq!(trail(&["put", "--lake", l, "--data-events", "off"])["DataEvents"], "off");
    let out = prism(&["selectors", "put", "--lake", l, "--insight-selectors", DATA]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("InvalidParameterException: Insights for data events can only be enabled for trails that log data events."), "{err}");
    // Unknown categories are refused too.
    let out = prism(&["selectors", "put", "--lake", l, "--insight-selectors", r#"[{"InsightType":"ApiCallRateInsight","EventCategories":["Network"]}]"#]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("InvalidInsightSelectorsException"), "{out:?}");
    assert_eq!(trail(&["put", "--lake", l, "--data-events", "auto"])["DataEvents"], "auto (on: the lake holds data events)");
    // The trail's name, as data Insights will carry it; CloudTrail's naming rules hold.
    assert_eq!(trail(&["put", "--lake", l, "--name", "org-trail"])["TrailName"], "org-trail");
    for bad in ["a/b", "x", "-trail", "a..b"] {
        let out = prism(&["trail", "put", "--lake", l, &format!("--name={bad}")]);
        assert_eq!(out.status.code(), Some(1), "{bad}");
        assert!(String::from_utf8_lossy(&out.stderr).contains("trail name"), "{out:?}");
    }
    assert_eq!(trail(&["get", "--lake", l])["TrailName"], "org-trail");

    // Management call rate counts writes only: the burst of reads is no Insight.
    ok(&["selectors", "put", "--lake", l, "--insight-selectors", r#"[{"InsightType":"ApiCallRateInsight"}]"#]);
    ok(&["insights", "backfill", "--lake", l]);
    assert_eq!(scalar(&lake, "SELECT count(*) FROM insights WHERE insighteventname = 'GetObject'").await, 0);

    // The same type on data events only (the list replaces: management call rate goes off).
    ok(&["selectors", "put", "--lake", l, "--insight-selectors", DATA]);
    let got: serde_json::Value = serde_json::from_str(&ok(&["selectors", "get", "--lake", l])).unwrap();
    assert_eq!(got["InsightSelectors"], serde_json::json!([{"InsightType":"ApiCallRateInsight","EventCategories":["Data"]}]));
    ok(&["insights", "backfill", "--lake", l]);
    let rows =
        strings(&lake, "SELECT insightstate || ' ' || sourceeventcategory || ' ' || insighteventname FROM insights ORDER BY eventtime, insightstate DESC")
            .await;
    assert_eq!(rows.into_iter().flatten().collect::<Vec<_>>(), ["Start Data GetObject", "End Data GetObject"]);
    let json = strings(&lake, "SELECT eventjson FROM insights WHERE insightstate = 'Start'").await;
    let record: serde_json::Value = serde_json::from_str(json[0].as_deref().unwrap()).unwrap();
    let d = &record["insightDetails"];
    assert_eq!(d["sourceEventCategory"], "Data");
    assert_eq!(d["insightSource"], "arn:aws:cloudtrail:us-east-1:111122223333:trail/org-trail");
    assert_eq!(d["insightType"], "ApiCallRateInsight");
    assert_eq!(record["eventTime"], "2025-11-09T10:00:00Z");
    assert_eq!(d["insightContext"]["statistics"]["insight"]["average"], 200.0);
    let callers = &d["insightContext"]["attributions"][0];
    assert_eq!(callers["attribute"], "userIdentityArn");
    assert_eq!(callers["insight"][0]["value"], "arn:aws:iam::111122223333:user/exfil");
    assert_eq!(callers["baseline"][0]["value"], "arn:aws:iam::111122223333:user/alice");
    // The run's summary names the category.
    let text = ok(&["insights", "run", "--lake", l]);
    assert!(text.contains("ApiCallRateInsight (Data)"), "{text}");

    // What AWS would charge: the events each type analyses, counted as the events table has them.
    let bill: serde_json::Value = serde_json::from_str(&ok(&["insights", "cost", "--lake", l, "--json"])).unwrap();
    let line = |c: &str, t: &str| bill["lines"].as_array().unwrap().iter().find(|x| x["category"] == c && x["insight_type"] == t).unwrap().clone();
    let data = scalar(&lake, "SELECT count(*) FROM events WHERE eventcategory = 'Data'").await;
    let writes = scalar(&lake, "SELECT count(*) FROM events WHERE managementevent AND NOT readonly").await;
    let management = scalar(&lake, "SELECT count(*) FROM events WHERE managementevent").await;
    assert_eq!(line("Data", "ApiCallRateInsight")["events_analysed"], data);
    assert_eq!(line("Data", "ApiCallRateInsight")["enabled"], true);
    assert_eq!(line("Management", "ApiCallRateInsight")["events_analysed"], writes);
    assert_eq!(line("Management", "ApiCallRateInsight")["enabled"], false);
    assert_eq!(line("Management", "ApiErrorRateInsight")["events_analysed"], management);
    assert_eq!(line("Data", "ApiCallRateInsight")["usd"], (data as f64 / 100_000.0 * 0.03 * 100.0).round() / 100.0);
    // A day's events only.
    let day: serde_json::Value = serde_json::from_str(&ok(&["insights", "cost", "--lake", l, "--from", "2025-11-09", "--to", "2025-11-09", "--json"])).unwrap();
    let on_day = scalar(&lake, "SELECT count(*) FROM events WHERE eventcategory = 'Data' AND eventtime >= TIMESTAMP '2025-11-09T00:00:00Z'").await;
    assert_eq!(day["lines"][2]["events_analysed"], on_day);
}

#[tokio::test(flavor = "multi_thread")]
async fn backfill_writes_aws_records_and_files_once() {
    let tmp = tempfile::tempdir().unwrap();
    let lake = copy_lake(tmp.path());
    let l = lake.to_str().unwrap();
    enable(&lake);
    let s = summary(&["insights", "backfill", "--lake", l]);
    let written = s["records_written"].as_u64().unwrap();
    assert!(s["starts"].as_u64().unwrap() >= 3, "{s}");
    assert_eq!(written, s["starts"].as_u64().unwrap() + s["ends"].as_u64().unwrap());

    // The labelled spikes and error bursts of the target's size are found. (Drops are not:
    // at 3,000 events a day the busiest write API makes 0.06 calls a minute, and its silence
    // cannot be told from chance; the quality benchmark measures drops at full volume.)
    let labels = fixture().1.join("labels.json");
    let q = prism::insights::quality::evaluate(l, &labels).await.unwrap();
    let missed: Vec<_> = q.missed.iter().filter(|m| m.kind != "drop" && prism::insights::quality::eligible(m).unwrap()).collect();
    assert!(missed.is_empty(), "missed: {missed:?}");
    assert!(q.eligible_found >= 3, "{q:?}");
    assert!(q.precision >= 0.9, "{:?}", q.found);

    // Table and files hold the same records.
    let table = records(&lake).await;
    let files = file_records(&lake);
    assert_eq!(table.len() as u64, written);
    assert_eq!(table.keys().collect::<Vec<_>>(), files.keys().collect::<Vec<_>>());
    let name = regex_like_insight_key();
    let mut by_shared: BTreeMap<String, Vec<serde_json::Value>> = BTreeMap::new();
    for (id, (key, r)) in &files {
        assert!(name(key), "file key {key}");
        assert_eq!(serde_json::from_str::<serde_json::Value>(&table[id]).unwrap(), *r);
        assert_eq!(r["eventType"], "AwsCloudTrailInsight");
        assert_eq!(r["eventCategory"], "Insight");
        assert!(r.get("userIdentity").is_none() && r.get("eventName").is_none());
        assert!(r["eventTime"].as_str().unwrap().ends_with(":00Z"), "whole minutes");
        let d = &r["insightDetails"];
        let stats = &d["insightContext"]["statistics"];
        assert!(stats["baseline"]["average"].is_number() && stats["insight"]["average"].is_number());
        assert!(stats["insightDuration"].as_i64().unwrap() >= 1);
        assert!(stats["baselineDuration"].as_i64().unwrap() >= 3 * 1440);
        let call_rate = d["insightType"] == "ApiCallRateInsight";
        assert_eq!(d.get("errorCode").is_some(), !call_rate);
        let attributions = d["insightContext"]["attributions"].as_array().unwrap();
        let names: Vec<&str> = attributions.iter().map(|a| a["attribute"].as_str().unwrap()).collect();
        assert_eq!(names, if call_rate { vec!["userIdentityArn", "userAgent", "errorCode"] } else { vec!["userIdentityArn", "userAgent"] });
        for a in attributions {
            for side in ["insight", "baseline"] {
                let values = a[side].as_array().unwrap();
                assert!(values.len() <= 5);
                let avgs: Vec<f64> = values.iter().map(|v| v["average"].as_f64().unwrap()).collect();
                assert!(avgs.windows(2).all(|w| w[0] >= w[1]), "sorted by average: {avgs:?}");
            }
            // With 5 values or fewer, an attribute's averages add up to the Insight's average.
            let insight = a["insight"].as_array().unwrap();
            if d["state"] == "End" && insight.len() < 5 {
                let sum: f64 = insight.iter().map(|v| v["average"].as_f64().unwrap()).sum();
                assert!((sum - stats["insight"]["average"].as_f64().unwrap()).abs() < 1e-3, "{a}");
            }
        }
        by_shared.entry(r["sharedEventID"].as_str().unwrap().to_owned()).or_default().push(r.clone());
    }
    for (shared, pair) in &by_shared {
        let states: BTreeSet<&str> = pair.iter().map(|r| r["insightDetails"]["state"].as_str().unwrap()).collect();
        assert!(states.contains("Start"), "{shared} has a Start");
        if pair.len() == 2 {
            assert_eq!(states.len(), 2);
            let (s, e) = (&pair[0], &pair[1]);
            assert_ne!(s["eventID"], e["eventID"]);
            assert_eq!(s["insightDetails"]["eventName"], e["insightDetails"]["eventName"]);
        }
    }

    // A successful call's error code is the string "null".
    let any_null = files.values().any(|(_, r)| {
        r["insightDetails"]["insightType"] == "ApiCallRateInsight"
            && r["insightDetails"]["insightContext"]["attributions"][2]["insight"].as_array().unwrap().iter().any(|v| v["value"] == "null")
    });
    assert!(any_null);

    // Re-running adds nothing and rewrites nothing.
    let again = summary(&["insights", "backfill", "--lake", l]);
    assert_eq!(again["records_written"], 0);
    assert_eq!(records(&lake).await, table);
    assert_eq!(file_records(&lake).len(), files.len());
    // `run` after a backfill finds everything analysed.
    let run = summary(&["insights", "run", "--lake", l]);
    assert_eq!(run["records_written"], 0);

    // The shipped summary query lists each Insight once, with its top caller.
    let query = Path::new(env!("CARGO_MANIFEST_DIR")).join("queries/unusual_activity.sql");
    let out = ok(&["sql", "--lake", l, "-f", query.to_str().unwrap(), "--format", "json"]);
    let rows: Vec<serde_json::Value> = serde_json::from_str(&out).unwrap();
    assert_eq!(rows.len() as u64, s["starts"].as_u64().unwrap(), "{out}");
    for r in &rows {
        let spike = r["direction"] == "spike";
        assert_eq!(r["ratio"].as_f64().unwrap() > 1.0, spike, "{r}");
        assert!(r["top_caller"].is_string(), "{r}");
        let label = q.found.iter().find(|f| f.event_name == r["api"].as_str().unwrap() && f.insight_type == r["type"].as_str().unwrap());
        assert!(label.is_some(), "{r}");
    }

    // Queryable through SQL, with the flattened columns.
    let n = scalar(&lake, "SELECT count(*) FROM insights WHERE insightstate = 'Start' AND insighttype IN ('ApiCallRateInsight', 'ApiErrorRateInsight')").await;
    assert_eq!(n as u64, s["starts"].as_u64().unwrap());
}

/// `AWSLogs/<account>/CloudTrail-Insight/<region>/YYYY/MM/DD/<account>_CloudTrail-Insight_<region>_<YYYYMMDDTHHmmZ>_<16>.json.gz`
fn regex_like_insight_key() -> impl Fn(&str) -> bool {
    |key: &str| {
        let parts: Vec<&str> = key.split('/').collect();
        if parts.len() != 8 || parts[0] != "AWSLogs" || parts[2] != "CloudTrail-Insight" {
            return false;
        }
        let (account, region) = (parts[1], parts[3]);
        let Some(rest) = parts[7].strip_prefix(&format!("{account}_CloudTrail-Insight_{region}_")) else { return false };
        let Some(rest) = rest.strip_suffix(".json.gz") else { return false };
        let Some((stamp, suffix)) = rest.split_once('_') else { return false };
        let date = format!("{}{}{}", parts[4], parts[5], parts[6]);
        stamp.len() == 14 && stamp.starts_with(&date) && stamp.ends_with('Z') && suffix.len() == 16 && parts[4].len() == 4
    }
}

/// Property: analysing the history in one backfill, or in any number of incremental runs,
/// gives the same records.
#[tokio::test(flavor = "multi_thread")]
async fn chunked_runs_find_what_one_backfill_finds() {
    let tmp = tempfile::tempdir().unwrap();
    let whole = copy_lake(&tmp.path().join("whole"));
    enable(&whole);
    ok(&["insights", "backfill", "--lake", whole.to_str().unwrap(), "--quiet"]);
    let expected = records(&whole).await;
    assert!(expected.len() >= 6);
    // Cut points: around the Insights (where carrying state over matters) and random ones.
    let times = strings(&whole, "SELECT CAST(eventtime AS VARCHAR) AS t FROM insights ORDER BY eventtime").await;
    let insight_minutes: Vec<i64> = times.iter().map(|t| minute(t.as_deref().unwrap())).collect();
    let (lo, hi) = (*insight_minutes.first().unwrap() - 600, *insight_minutes.last().unwrap() + 60);
    let mut rng = 0x9e37_79b9_7f4a_7c15u64 ^ 42;
    let mut next = |n: i64| {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        (rng % n as u64) as i64
    };
    // Round 2 also kills each run (SIGKILL at a growing delay) before running it again: a
    // killed incremental run loses nothing and stores nothing twice (issue 19's kill matrix).
    let mut killed = 0;
    for round in 0..3 {
        let lake = copy_lake(&tmp.path().join(format!("chunks{round}")));
        let l = lake.to_str().unwrap();
        enable(&lake);
        let mut cuts: Vec<i64> = (0..3).map(|_| lo + next(hi - lo)).collect();
        // One cut inside an Insight, one minute after its start.
        cuts.push(insight_minutes[round % insight_minutes.len()] + 1);
        cuts.sort();
        cuts.dedup();
        for (i, cut) in cuts.iter().enumerate() {
            let until = chrono::DateTime::from_timestamp(cut * 60, 0).unwrap().to_rfc3339();
            let args = ["insights", "run", "--lake", l, "--until", &until, "--quiet"];
            if round == 2 {
                let mut command = Command::new(prism_bin());
                command.args(args);
                killed += usize::from(kill_after(command, 150 + 250 * i as u64));
                assert_consistent(&lake).await;
                file_records(&lake);
            }
            ok(&args);
        }
        ok(&["insights", "run", "--lake", l, "--quiet"]);
        let got = records(&lake).await;
        assert_eq!(got.keys().collect::<Vec<_>>(), expected.keys().collect::<Vec<_>>(), "cuts {cuts:?}");
        assert_eq!(got, expected, "cuts {cuts:?}");
        // The same records reach the files.
        assert_eq!(file_records(&lake).keys().collect::<BTreeSet<_>>(), expected.keys().collect::<BTreeSet<_>>());
    }
    assert!(killed > 0, "no run was killed before it finished: the delays need shortening");
}

fn minute(t: &str) -> i64 {
    let t = t.replace(' ', "T");
    let t = if t.ends_with('Z') { t } else { format!("{t}Z") };
    chrono::DateTime::parse_from_rfc3339(&t).unwrap().timestamp() / 60
}

/// The shipped query recomputes the detector's score with the SQL functions, and agrees with it.
#[tokio::test(flavor = "multi_thread")]
async fn sql_functions_recompute_the_detector() {
    let tmp = tempfile::tempdir().unwrap();
    let lake = copy_lake(tmp.path());
    let l = lake.to_str().unwrap();
    enable(&lake);
    ok(&["insights", "backfill", "--lake", l, "--quiet"]);
    let query = Path::new(env!("CARGO_MANIFEST_DIR")).join("queries/insight_score_check.sql");
    let out = ok(&["sql", "--lake", l, "-f", query.to_str().unwrap(), "--format", "json"]);
    let rows: Vec<serde_json::Value> = serde_json::from_str(&out).unwrap();
    assert!(!rows.is_empty());
    // The detector's latest call-rate Insight.
    let start = strings(
        &lake,
        "SELECT CAST(eventtime AS VARCHAR) AS t FROM insights WHERE insighttype = 'ApiCallRateInsight' AND insightstate = 'Start' \
         ORDER BY eventtime DESC, insighteventname LIMIT 1",
    )
    .await[0]
        .clone()
        .unwrap();
    let decided = strings(
        &lake,
        "SELECT CAST(decidedat AS VARCHAR) AS t FROM insights WHERE insighttype = 'ApiCallRateInsight' AND insightstate = 'Start' \
         ORDER BY eventtime DESC, insighteventname LIMIT 1",
    )
    .await[0]
        .clone()
        .unwrap();
    let (start, decided) = (minute(&start), minute(&decided));
    let params = prism::insights::detect::DetectorParams::default();
    // In SQL, the first minute from the Insight's start on where the score passes the
    // threshold with calls above expectation is the minute the detector decided.
    let first = rows
        .iter()
        .filter(|r| {
            let m = minute(r["minute"].as_str().unwrap());
            m >= start - 5 && r["spike_score"].as_f64().unwrap() >= params.start_score && r["calls"].as_f64().unwrap() > r["expected"].as_f64().unwrap()
        })
        .map(|r| minute(r["minute"].as_str().unwrap()))
        .min();
    assert_eq!(first, Some(decided), "start {start}");
    let p = rows.iter().find(|r| minute(r["minute"].as_str().unwrap()) == decided).unwrap()["probability"].as_f64().unwrap();
    assert!(p > 0.999, "{p}");
}

/// Whatever a killed run committed is consistent: every End has its Start, and no record is
/// stored twice.
async fn assert_consistent(lake: &Path) {
    if !lake.join("insights/_delta_log").exists() {
        return;
    }
    let orphans = scalar(
        lake,
        "SELECT count(*) FROM insights e WHERE e.insightstate = 'End' AND NOT EXISTS \
         (SELECT 1 FROM insights s WHERE s.sharedeventid = e.sharedeventid AND s.insightstate = 'Start')",
    )
    .await;
    assert_eq!(orphans, 0);
    assert_eq!(scalar(lake, "SELECT count(*) - count(DISTINCT eventid) FROM insights").await, 0);
}

/// A copy of the fixture lake under `dir` with both Insights types backfilled: what the tests
/// of interrupted or concurrent runs must end equal to.
fn backfilled_copy(dir: &Path) -> PathBuf {
    let clean = copy_lake(&dir.join("clean"));
    enable(&clean);
    ok(&["insights", "backfill", "--lake", clean.to_str().unwrap(), "--quiet"]);
    clean
}

/// The rollups count every event of `lake` once, per minute and per hour.
async fn assert_rollups_count_every_event(lake: &Path) {
    let events = scalar(lake, "SELECT count(*) FROM events").await;
    for kind in ["minute", "hour", "file"] {
        assert_eq!(scalar(lake, &format!("SELECT sum(calls) FROM rollups WHERE kind = '{kind}'")).await, events, "{kind} rollups");
    }
}

/// A backfill killed at any point, then re-run, ends with exactly the records of a clean run.
#[tokio::test(flavor = "multi_thread")]
async fn a_killed_backfill_resumes_to_the_same_records() {
    let tmp = tempfile::tempdir().unwrap();
    let clean = backfilled_copy(tmp.path());
    let expected = records(&clean).await;

    let lake = copy_lake(&tmp.path().join("killed"));
    let l = lake.to_str().unwrap();
    enable(&lake);
    // Remove the rollups: the run must rebuild them from the events first (as after a crash
    // between an ingest's events commit and its rollups commit).
    std::fs::remove_dir_all(lake.join("rollups")).unwrap();
    for delay_ms in [300u64, 900, 2_000, 4_000] {
        let mut child = Command::new(prism_bin()).args(["insights", "backfill", "--lake", l, "--quiet"]).spawn().unwrap();
        std::thread::sleep(std::time::Duration::from_millis(delay_ms));
        let _ = child.kill();
        let _ = child.wait();
        assert_consistent(&lake).await;
    }
    ok(&["insights", "backfill", "--lake", l, "--quiet"]);
    assert_eq!(records(&lake).await, expected);
    assert_rollups_count_every_event(&lake).await;
}

/// Three backfills at once on one lake whose rollups are gone: they race to count the events
/// and to store the same records, and the lake ends as after one backfill.
#[tokio::test(flavor = "multi_thread")]
async fn backfills_at_once_store_each_record_once() {
    let tmp = tempfile::tempdir().unwrap();
    let clean = backfilled_copy(tmp.path());
    let expected = records(&clean).await;
    assert!(expected.len() >= 4, "{expected:?}");

    let lake = copy_lake(&tmp.path().join("racing"));
    let l = lake.to_str().unwrap();
    enable(&lake);
    std::fs::remove_dir_all(lake.join("rollups")).unwrap();
    let runs: Vec<_> = (0..3)
        .map(|_| {
            Command::new(prism_bin()).args(["insights", "backfill", "--lake", l, "--json", "--quiet"]).stdout(std::process::Stdio::piped()).spawn().unwrap()
        })
        .collect();
    let (mut written, mut meanwhile) = (0, 0);
    for run in runs {
        let out = run.wait_with_output().unwrap();
        assert!(out.status.success());
        let s: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        written += s["records_written"].as_u64().unwrap();
        meanwhile += s["records_stored_meanwhile"].as_u64().unwrap();
    }
    assert!(meanwhile > 0, "the runs did not meet: this test would prove nothing");
    assert_eq!(written as usize, expected.len());
    assert_consistent(&lake).await;
    assert_eq!(records(&lake).await, expected);
    // The AWS-format files: the same names and records as the clean run's.
    let files = |root: &Path| file_records(root).into_iter().map(|(id, (key, _))| (id, key)).collect::<BTreeMap<_, _>>();
    assert_eq!(files(&lake), files(&clean));
    assert_rollups_count_every_event(&lake).await;
}

/// The recipe for a large backfill (docs/lake.md#concurrency): writers split by date range,
/// at once, without Insights, then one Insights pass; the lake equals one writer's.
#[tokio::test(flavor = "multi_thread")]
async fn a_backfill_split_across_writers_equals_one_backfill() {
    let tmp = tempfile::tempdir().unwrap();
    let clean = backfilled_copy(tmp.path());

    let lake = tmp.path().join("split");
    let (archive, l) = (fixture().1.to_str().unwrap(), lake.to_str().unwrap());
    // `--to` also reads the next day's folder (late deliveries): the ranges overlap by a day.
    let writers: Vec<_> = [["--to", "2024-01-04"], ["--from", "2024-01-05"]]
        .into_iter()
        .map(|range| {
            let mut cmd = Command::new(prism_bin());
            cmd.args(["backfill", archive, "--lake", l, "--no-insights", "--json"]).args(range);
            cmd.stdout(std::process::Stdio::piped()).spawn().unwrap()
        })
        .collect();
    for w in writers {
        let out = w.wait_with_output().unwrap();
        assert!(out.status.success());
        let s: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert!(s["ingest"]["records_written"].as_u64().unwrap() > 5_000, "each writer has its share: {s}");
    }
    enable(&lake);
    ok(&["insights", "backfill", "--lake", l, "--quiet"]);
    let count = "SELECT count(*) FROM events";
    assert_eq!(scalar(&lake, count).await, scalar(&clean, count).await);
    assert_eq!(scalar(&lake, "SELECT count(DISTINCT eventid) FROM events").await, scalar(&clean, count).await);
    assert_eq!(records(&lake).await, records(&clean).await);
}

#[test]
fn rollups_count_every_event_of_the_real_corpus() {
    let tmp = tempfile::tempdir().unwrap();
    let lake = tmp.path().join("lake");
    let l = lake.to_str().unwrap();
    let out = prism(&["ingest", crate::common::corpus().to_str().unwrap(), "--lake", l, "--quiet"]);
    assert_eq!(out.status.code(), Some(3), "the corpus has damaged files");
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let events = scalar(&lake, "SELECT count(*) FROM events").await;
        assert_eq!(events, 363);
        for kind in ["minute", "hour"] {
            let sql = format!("SELECT sum(calls) FROM rollups WHERE kind = '{kind}'");
            assert_eq!(scalar(&lake, &sql).await, events, "{kind}");
        }
        // Per API, minute by minute, the rollups agree with the events.
        let diff = scalar(
            &lake,
            "SELECT count(*) FROM (SELECT eventsource, eventname, date_trunc('minute', eventtime) AS m, count(*) AS n FROM events GROUP BY 1, 2, 3) e \
             FULL JOIN (SELECT eventsource, eventname, period AS m, sum(calls) AS n FROM rollups WHERE kind = 'minute' GROUP BY 1, 2, 3) r \
             ON e.eventsource = r.eventsource AND e.eventname = r.eventname AND e.m = r.m WHERE e.n IS DISTINCT FROM r.n",
        )
        .await;
        assert_eq!(diff, 0);
    });
}

#[test]
fn the_demo_runs_on_the_embedded_default() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("demo");
    let out = prism(&["demo", "--dir", dir.to_str().unwrap(), "--events-per-day", "3000"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}\n{}", String::from_utf8_lossy(&out.stderr));
    assert!(text.contains("label #"), "{text}");
    assert!(text.contains("Recall") && text.contains("Precision"), "{text}");
    assert!(text.contains("insighteventname"), "the sample query's result: {text}");
    assert!(dir.join("lake/insights/_delta_log").exists());
    // Re-running replaces its own folder; a foreign folder is refused.
    assert!(prism(&["demo", "--dir", dir.to_str().unwrap(), "--events-per-day", "1000"]).status.success());
    let foreign = tmp.path().join("mine");
    std::fs::create_dir_all(&foreign).unwrap();
    std::fs::write(foreign.join("notes.txt"), "keep").unwrap();
    let out = prism(&["demo", "--dir", foreign.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    assert!(foreign.join("notes.txt").exists());
}
