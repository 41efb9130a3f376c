//! End-to-end tests of `prism generate`: its archives ingest cleanly, its labels describe what
//! is in the files, and a seed fixes every byte.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use crate::common::*;
use prism::generate::{GenerateOptions, generate};
use prism::ingest::{IngestOptions, IngestProgress};

fn small(out: &Path) -> GenerateOptions {
    one_account(out, "us-east-1", 8, 10_000, 8, 3)
}

#[tokio::test(flavor = "multi_thread")]
async fn generated_archive_ingests_cleanly_and_labels_match_the_files() {
    let tmp = tempfile::tempdir().unwrap();
    let (out, lake) = (tmp.path().join("sample"), tmp.path().join("lake"));
    let opts = small(&out);
    let g = tokio::task::spawn_blocking(move || generate(&opts)).await.unwrap().unwrap();
    // 8 days from a Monday at 10,000 a day on average over a week (weekends are quieter).
    assert!((70_000..95_000).contains(&g.events), "{g:?}");
    assert_eq!(g.anomalies, 8);

    // Day partitions: this test is about the archive, and a few large files query fastest.
    let mut ingest_opts = IngestOptions::new(vec![out.to_str().unwrap().to_owned()], lake.to_str().unwrap());
    ingest_opts.granularity = Some(prism::schema::Granularity::Day);
    let s = prism::ingest(&ingest_opts, Arc::new(IngestProgress::default())).await.unwrap();
    assert!(s.is_clean(), "{:?}", s.problems);
    assert_eq!(s.records_written, g.events);
    assert_eq!(s.duplicates_dropped, g.duplicates);
    assert!(g.duplicates > 0, "some events are delivered twice");

    // Files arrive about every 5 minutes and some events arrive in the next one.
    let files = scalar(&lake, "SELECT count(*) FROM ingested_files").await;
    assert!((2300..=2305).contains(&files), "{files} files for 8 days");
    // A file is stamped with the end of its 5 minutes; an event in a later-stamped file came late.
    let late = scalar(
        &lake,
        "SELECT count(*) FROM events WHERE regexp_replace(sourcefile, '^.*_(\\d{8}T\\d{4})Z_.*$', '\\1') \
         > to_char(eventtime + INTERVAL '5 minutes', '%Y%m%dT%H%M')",
    )
    .await;
    assert!(late > 0, "late deliveries");

    // Mostly reads, and several identity types.
    let reads = scalar(&lake, "SELECT count(*) FROM events WHERE readonly").await;
    assert!(reads as f64 > 0.8 * g.events as f64);
    let types = scalar(&lake, "SELECT count(DISTINCT useridentity['type']) FROM events").await;
    assert!(types >= 3);
    let errors = scalar(&lake, "SELECT count(*) FROM events WHERE errorcode IS NOT NULL").await;
    assert!(errors > 0);

    let labels = prism::generate::read_labels(&out).unwrap();
    let mut kinds = BTreeMap::new();
    for l in labels["anomalies"].as_array().unwrap() {
        let (start, end) = (l["start"].as_str().unwrap(), l["end"].as_str().unwrap());
        let api = format!(
            "eventsource = '{}' AND eventname = '{}' AND awsregion = '{}' AND recipientaccountid = '{}'",
            l["eventSource"].as_str().unwrap(),
            l["eventName"].as_str().unwrap(),
            l["region"].as_str().unwrap(),
            l["account"].as_str().unwrap()
        );
        let window = format!("eventtime >= TIMESTAMP '{start}' AND eventtime < TIMESTAMP '{end}'");
        let minutes = (chrono::DateTime::parse_from_rfc3339(end).unwrap() - chrono::DateTime::parse_from_rfc3339(start).unwrap()).num_minutes();
        let magnitude = l["magnitude"].as_f64().unwrap();
        let kind = l["kind"].as_str().unwrap();
        *kinds.entry(kind.to_owned()).or_insert(0) += 1;
        match kind {
            "spike" => {
                let arn = l["userIdentityArn"].as_str().unwrap();
                let by_actor = scalar(&lake, &format!("SELECT count(*) FROM events WHERE {api} AND {window} AND useridentity['arn'] = '{arn}'")).await;
                // At least `magnitude` extra calls a minute (Poisson: allow a wide margin).
                assert!(by_actor as f64 >= 0.5 * magnitude * minutes as f64, "{l}: {by_actor} calls by {arn}");
            }
            "drop" => {
                let inside = scalar(&lake, &format!("SELECT count(*) FROM events WHERE {api} AND {window}")).await;
                assert_eq!(inside, 0, "{l}");
                let around = scalar(
                    &lake,
                    &format!("SELECT count(*) FROM events WHERE {api} AND eventtime >= TIMESTAMP '{start}' - INTERVAL '3 hours' AND eventtime < TIMESTAMP '{end}' + INTERVAL '3 hours'"),
                )
                .await;
                assert!(around > 0, "{l}: the API is busy around the drop");
            }
            "error_burst" => {
                let code = l["errorCode"].as_str().unwrap();
                let errors = scalar(&lake, &format!("SELECT count(*) FROM events WHERE {api} AND {window} AND errorcode = '{code}'")).await;
                assert!(errors as f64 >= 0.5 * magnitude * minutes as f64, "{l}: {errors} errors");
            }
            other => panic!("unknown kind {other}"),
        }
        // Nothing anomalous before the 7-day baseline exists.
        assert!(start >= "2024-01-08T00:00:00Z", "{l}");
    }
    assert_eq!(kinds.get("spike"), Some(&4));
    assert_eq!(kinds.get("drop"), Some(&2));
    assert_eq!(kinds.get("error_burst"), Some(&2));
}

fn tree_bytes(root: &Path) -> BTreeMap<String, Vec<u8>> {
    files_under(root).into_iter().map(|p| (p.strip_prefix(root).unwrap().display().to_string(), std::fs::read(&p).unwrap())).collect()
}

#[test]
fn the_same_seed_gives_the_same_bytes() {
    let tmp = tempfile::tempdir().unwrap();
    let run = |dir: &str, seed: u64, threads: usize| {
        let mut o = GenerateOptions::new(tmp.path().join(dir));
        o.accounts = 2;
        o.days = 1;
        o.events_per_day = 2_000;
        o.anomalies = 0;
        o.seed = seed;
        o.threads = threads;
        generate(&o).unwrap();
        tree_bytes(&tmp.path().join(dir))
    };
    let a = run("a", 11, 1);
    let b = run("b", 11, 4);
    assert!(a.len() > 4 * 280, "{} files", a.len());
    assert_eq!(a, b, "same seed, different thread counts");
    let c = run("c", 12, 2);
    assert_ne!(a, c);
}

#[test]
fn cli_generate_reports_and_refuses_bad_options() {
    let tmp = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(prism_bin())
        .args(["generate", "--out", tmp.path().join("s").to_str().unwrap(), "--days", "3", "--anomalies", "2"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--days must be at least 8"));
    let out = std::process::Command::new(prism_bin())
        .args(["generate", "--out", tmp.path().join("s").to_str().unwrap(), "--days", "1", "--anomalies", "0", "--events-per-day", "500", "--json"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(v["events"].as_u64().unwrap() > 1000);
    assert!(tmp.path().join("s/labels.json").exists());
}

/// `--data-events-per-day`: data events with their own fields and resources, half the
/// anomalies on them (the four scenarios in turn), each visible in the files as labelled, and
/// found by data Insights as `insights evaluate` scores them per category.
#[tokio::test(flavor = "multi_thread")]
async fn data_events_and_their_anomalies_are_generated_and_found() {
    let tmp = tempfile::tempdir().unwrap();
    let (out, lake) = (tmp.path().join("sample"), tmp.path().join("lake"));
    let mut opts = one_account(&out, "us-east-1", 8, 3_000, 8, 5);
    opts.data_events_per_day = 20_000;
    let g = tokio::task::spawn_blocking(move || generate(&opts)).await.unwrap().unwrap();
    let l = lake.to_str().unwrap();
    let mut ingest_opts = IngestOptions::new(vec![out.to_str().unwrap().to_owned()], l);
    ingest_opts.granularity = Some(prism::schema::Granularity::Day);
    let s = prism::ingest(&ingest_opts, Arc::new(IngestProgress::default())).await.unwrap();
    assert!(s.is_clean(), "{:?}", s.problems);
    assert_eq!(s.records_written, g.events);

    let data = scalar(&lake, "SELECT count(*) FROM events WHERE eventcategory = 'Data' AND NOT managementevent").await;
    assert!(data as f64 > 0.8 * g.events as f64, "{data} of {}", g.events);
    let apis = strings(&lake, "SELECT DISTINCT eventname FROM events WHERE eventcategory = 'Data' ORDER BY 1").await;
    assert_eq!(
        apis.into_iter().flatten().collect::<Vec<_>>(),
        ["DeleteObject", "GetItem", "GetObject", "HeadObject", "Invoke", "PutItem", "PutObject", "Query"]
    );
    // S3 object events name their bucket too; four buckets.
    let buckets = scalar(
        &lake,
        "SELECT count(DISTINCT get_field(array_element(resources, 2), 'arn')) FROM events WHERE eventsource = 's3.amazonaws.com' AND eventcategory = 'Data'",
    )
    .await;
    assert_eq!(buckets, 4);

    let labels: prism::generate::Labels = serde_json::from_value(prism::generate::read_labels(&out).unwrap()).unwrap();
    let scenarios: Vec<Option<&str>> = labels.anomalies.iter().filter(|l| l.category == "Data").map(|l| l.scenario.as_deref()).collect();
    assert_eq!(scenarios, [Some("exfiltration"), Some("delete_burst"), Some("access_denied_burst"), Some("invoke_drop")]);
    for a in labels.anomalies.iter().filter(|l| l.category == "Data") {
        let window = format!(
            "eventsource = '{}' AND eventname = '{}' AND eventtime >= TIMESTAMP '{}' AND eventtime < TIMESTAMP '{}'",
            a.event_source, a.event_name, a.start, a.end
        );
        match (a.kind.as_str(), &a.resource_arn) {
            ("drop", _) => assert_eq!(scalar(&lake, &format!("SELECT count(*) FROM events WHERE {window}")).await, 0, "{a:?}"),
            (_, Some(bucket)) => {
                let arn = a.user_identity_arn.as_deref().unwrap();
                let n = scalar(
                    &lake,
                    &format!("SELECT count(*) FROM events WHERE {window} AND useridentity['arn'] = '{arn}' AND get_field(array_element(resources, 2), 'arn') = '{bucket}'"),
                )
                .await;
                assert!(n as f64 >= 0.5 * a.magnitude, "{a:?}: {n}");
            }
            _ => panic!("an S3 anomaly without its bucket: {a:?}"),
        }
    }

    // Data Insights find them; scored per category.
    let both = r#"[{"InsightType":"ApiCallRateInsight","EventCategories":["Management","Data"]},{"InsightType":"ApiErrorRateInsight","EventCategories":["Management","Data"]}]"#;
    let mut lake_handle = prism::Lake::open(l).await.unwrap();
    prism::insights::put_selectors(&mut lake_handle, prism::insights::parse_selectors(both).unwrap()).await.unwrap();
    let run = prism::insights::RunOptions::new(l.to_owned(), prism::insights::Mode::Backfill { from: None, to: None });
    prism::insights::run(&run, &Default::default()).await.unwrap();
    let q = prism::insights::quality::evaluate(l, &out.join("labels.json")).await.unwrap();
    let data = q.by_category.iter().find(|c| c.category == "Data").expect("a Data score");
    assert_eq!((data.labels, data.eligible_found, data.eligible), (4, 4, 4), "{:?}", q.found);
    assert_eq!(data.false_insights, 0, "{:?}", q.found);
    assert!(q.by_category.iter().any(|c| c.category == "Management"));
}
