//! End-to-end tests of `prism serve`: the JSON API through a real HTTP client, the access rules
//! (token, same origin, host), live reads, and the pages in headless Chromium driven over
//! WebDriver (`chromedriver`), with screenshots written to `target/screenshots/`.

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;

use crate::common::{self, prism_bin, strings};

const BOTH: &str = r#"[{"InsightType":"ApiCallRateInsight"},{"InsightType":"ApiErrorRateInsight"}]"#;
const SCRIPT_AGENT: &str = "<script>document.title='owned'</script><img src=x onerror=alert(1)>";

fn ok(args: &[&str]) -> String {
    let out = Command::new(prism_bin()).args(args).output().unwrap();
    assert!(out.status.success(), "prism {args:?} failed:\n{}\n{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

struct Fixture {
    _dir: tempfile::TempDir,
    archive: PathBuf,
    /// Ingested, no Insights yet (for the live test).
    bare: PathBuf,
    /// Ingested, Insights backfilled, and one event with a hostile user agent in an Insight.
    lake: PathBuf,
    /// The Insight that holds the hostile event.
    hostile: String,
}

/// A generated archive with labelled anomalies (9 days, 1 account, 1 region), ingested; one
/// copy gets its Insights and an event whose user agent is markup.
fn fixture() -> &'static Fixture {
    static FIXTURE: OnceLock<Fixture> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let archive = dir.path().join("archive");
        let bare = dir.path().join("bare");
        let lake = dir.path().join("lake");
        prism::generate::generate(&common::one_account(&archive, "eu-west-1", 9, 3_000, 6, 11)).unwrap();
        ok(&["ingest", archive.to_str().unwrap(), "--lake", bare.to_str().unwrap(), "--quiet"]);
        copy_lake(&bare, &lake);
        let l = lake.to_str().unwrap();
        ok(&["selectors", "put", "--lake", l, "--insight-selectors", BOTH]);
        ok(&["insights", "backfill", "--lake", l, "--quiet"]);
        // A closed call-rate Insight, and one more call of its API inside it, from a hostile client.
        // The tests that call this are async: the query runs on a runtime of its own thread.
        let query_lake = lake.clone();
        let row = std::thread::spawn(move || {
            tokio::runtime::Runtime::new().unwrap().block_on(common::query(
                &query_lake,
                "SELECT s.sharedeventid, s.recipientaccountid, s.insighteventsource, s.insighteventname, CAST(e.eventtime AS VARCHAR) AS t \
             FROM insights s JOIN insights e ON s.sharedeventid = e.sharedeventid AND e.insightstate = 'End' \
             WHERE s.insightstate = 'Start' AND s.insighttype = 'ApiCallRateInsight' ORDER BY s.eventtime, s.sharedeventid LIMIT 1",
            ))
        })
        .join()
        .unwrap();
        let col = |i: usize| {
            let c = arrow::compute::cast(row[0].column(i), &arrow::datatypes::DataType::Utf8).unwrap();
            arrow::array::AsArray::as_string::<i32>(&c).value(0).to_owned()
        };
        let (hostile, account, source, name, end) = (col(0), col(1), col(2), col(3), col(4));
        // In the Insight's last minute: the newest of its events, first on the Events tab.
        let time = chrono::NaiveDateTime::parse_from_str(&end[..19], "%Y-%m-%dT%H:%M:%S")
            .or_else(|_| chrono::NaiveDateTime::parse_from_str(&end[..19], "%Y-%m-%d %H:%M:%S"))
            .unwrap()
            - chrono::Duration::seconds(1);
        let mut rec = common::record("hostile-event-1", &time.format("%Y-%m-%dT%H:%M:%SZ").to_string(), "eu-west-1");
        rec["eventSource"] = source.into();
        rec["eventName"] = name.into();
        rec["readOnly"] = false.into();
        rec["recipientAccountId"] = account.clone().into();
        rec["userAgent"] = SCRIPT_AGENT.into();
        rec["errorMessage"] = "<b>bold</b> & \"quoted\"".into();
        let extra = dir.path().join("extra");
        common::write_gz(&common::log_path(&extra, &account, "eu-west-1", &time.format("%Y%m%d").to_string(), "HOSTILE"), &[rec]);
        ok(&["ingest", extra.to_str().unwrap(), "--lake", l, "--quiet"]);
        Fixture { _dir: dir, archive, bare, lake, hostile }
    })
}

/// A copy of a lake, for a test that changes it.
fn copy_lake(from: &Path, to: &Path) -> PathBuf {
    assert!(Command::new("cp").arg("-r").arg(from).arg(to).status().unwrap().success());
    to.to_owned()
}

/// A running `prism serve`, stopped on drop.
struct Server {
    child: Child,
    url: String,
}

impl Server {
    fn start(lake: &Path, extra: &[&str]) -> Server {
        let mut child = Command::new(prism_bin())
            .args(["serve", "--lake", lake.to_str().unwrap(), "--listen", "127.0.0.1:0"])
            .args(extra)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
        let url =
            line.split_whitespace().find(|w| w.starts_with("http://")).unwrap_or_else(|| panic!("no address in {line:?}")).trim_end_matches('/').to_owned();
        Server { child, url }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn client() -> reqwest::Client {
    reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().unwrap()
}

async fn get(url: &str) -> (u16, serde_json::Value) {
    let r = client().get(url).send().await.unwrap();
    let status = r.status().as_u16();
    let body = r.bytes().await.unwrap();
    (status, serde_json::from_slice(&body).unwrap_or_else(|e| panic!("{url}: not JSON ({e}): {}", String::from_utf8_lossy(&body))))
}

async fn send(req: reqwest::RequestBuilder) -> (u16, reqwest::header::HeaderMap, String) {
    let r = req.send().await.unwrap();
    let (status, headers) = (r.status().as_u16(), r.headers().clone());
    (status, headers, r.text().await.unwrap())
}

fn json(s: &str) -> serde_json::Value {
    serde_json::from_str(s).unwrap_or_else(|e| panic!("not JSON ({e}): {s}"))
}

#[tokio::test(flavor = "multi_thread")]
async fn api_answers_with_the_insights_table_and_refuses_what_it_must() {
    let f = fixture();
    let server = Server::start(&f.lake, &[]);
    let u = &server.url;

    // The list: every Start once, newest first, paged, filtered.
    let starts = strings(&f.lake, "SELECT sharedeventid FROM insights WHERE insightstate = 'Start'").await;
    let (status, all) = get(&format!("{u}/api/insights?perPage=500")).await;
    assert_eq!(status, 200);
    assert_eq!(all["total"].as_i64().unwrap() as usize, starts.len());
    let listed: BTreeSet<String> = all["items"].as_array().unwrap().iter().map(|i| i["sharedeventid"].as_str().unwrap().to_owned()).collect();
    assert_eq!(listed, starts.iter().flatten().cloned().collect::<BTreeSet<_>>());
    let times: Vec<&str> = all["items"].as_array().unwrap().iter().map(|i| i["starttime"].as_str().unwrap()).collect();
    assert!(times.windows(2).all(|w| w[0] >= w[1]), "newest first: {times:?}");
    let days: i64 = all["days"].as_array().unwrap().iter().map(|d| d["count"].as_i64().unwrap()).sum();
    assert_eq!(days as usize, starts.len());
    for field in
        ["insighttype", "insighteventsource", "insighteventname", "insightdirection", "starttime", "baselineaverage", "insightaverage", "topidentity", "open"]
    {
        assert!(all["items"][0].get(field).is_some(), "field {field} in {}", all["items"][0]);
    }
    let (_, page2) = get(&format!("{u}/api/insights?perPage=2&page=2")).await;
    assert_eq!(page2["items"][0]["sharedeventid"], all["items"][2]["sharedeventid"]);
    let (_, errors) = get(&format!("{u}/api/insights?type=ApiErrorRateInsight&perPage=500")).await;
    let n_errors = strings(&f.lake, "SELECT sharedeventid FROM insights WHERE insightstate = 'Start' AND insighttype = 'ApiErrorRateInsight'").await.len();
    assert_eq!(errors["items"].as_array().unwrap().len(), n_errors);
    assert!(errors["items"].as_array().unwrap().iter().all(|i| i["insighttype"] == "ApiErrorRateInsight"));
    let (status, bad) = get(&format!("{u}/api/insights?direction=sideways")).await;
    assert_eq!((status, bad["code"].as_str()), (400, Some("BadRequest")), "{bad}");

    // One Insight, its series and its events.
    let id = &f.hostile;
    let (status, one) = get(&format!("{u}/api/insights/{id}")).await;
    assert_eq!(status, 200, "{one}");
    assert_eq!(one["records"][0]["insightDetails"]["state"], "Start");
    assert_eq!(one["records"][0]["sharedEventID"], id.as_str());
    let (status, missing) = get(&format!("{u}/api/insights/no-such-id")).await;
    assert_eq!((status, missing["code"].as_str()), (404, Some("NotFound")));
    let (_, series) = get(&format!("{u}/api/insights/{id}/series")).await;
    assert_eq!(series["values"].as_array().unwrap().len(), series["expected"].as_array().unwrap().len());
    assert!(series["bands"].as_array().unwrap().iter().any(|b| b["sharedeventid"] == id.as_str()));
    let (status, headers, _) = send(client().get(format!("{u}/api/insights/{id}/chart.png?zoom=day"))).await;
    assert_eq!((status, headers["content-type"].to_str().unwrap()), (200, "image/png"));
    let (_, events) = get(&format!("{u}/api/insights/{id}/events?perPage=500")).await;
    let sql = events["sql"].as_str().unwrap();
    let expected: Vec<Option<String>> = strings(&f.lake, &sql.replace("SELECT eventtime, eventid,", "SELECT eventid, eventtime,")).await;
    let shown: Vec<Option<String>> = events["items"].as_array().unwrap().iter().map(|e| e["eventid"].as_str().map(str::to_owned)).collect();
    assert!(!shown.is_empty());
    assert_eq!(shown, expected, "the Events tab lists exactly what its SQL returns");
    assert!(shown.contains(&Some("hostile-event-1".into())));

    // SQL: read-only, one statement, capped, with the place of an error.
    let post = |body: serde_json::Value| client().post(format!("{u}/api/sql")).header("origin", u.as_str()).json_body(body);
    let (status, _, body) = send(post(serde_json::json!({"sql": "SELECT count(*) AS n FROM events"}))).await;
    assert_eq!(status, 200, "{body}");
    let n = common::scalar(&f.lake, "SELECT count(*) FROM events").await;
    assert_eq!(json(&body)["rows"][0]["n"].as_i64(), Some(n));
    for write in ["DROP TABLE events", "CREATE TABLE t AS SELECT 1", "SET datafusion.execution.batch_size = 1", "INSERT INTO insights SELECT * FROM insights"] {
        let (status, _, body) = send(post(serde_json::json!({"sql": write}))).await;
        assert_eq!((status, json(&body)["code"].as_str()), (400, Some("Refused")), "{write}: {body}");
    }
    let (status, _, body) = send(post(serde_json::json!({"sql": "SELECT 1; SELECT 2"}))).await;
    assert_eq!(status, 400, "{body}");
    let (status, _, body) = send(post(serde_json::json!({"sql": "SELECT\n  nosuchcolumn FROM events"}))).await;
    assert_eq!(status, 400);
    assert!(json(&body)["error"].as_str().unwrap().contains("line 2, column 3"), "{body}");
    let (status, headers, csv) = send(client().get(format!("{u}/api/sql?q=SELECT%20eventid%20FROM%20events%20ORDER%20BY%201&format=csv"))).await;
    assert_eq!(status, 200);
    assert!(headers["content-type"].to_str().unwrap().starts_with("text/csv"));
    assert_eq!(csv.lines().count(), 10_001, "header and the default cap of 10,000 rows");
    assert_eq!(headers["x-prism-truncated-at"], "10000");
    // Page numbers of any size are pages past the end, not an overflow (fuzzing found one at
    // 4444444444444444441 on the SQL page).
    let huge = [
        "/sql?q=SELECT%201&page=4444444444444444441".to_owned(),
        "/insights?page=18446744073709551615".into(),
        "/insights?page=184467440737095517&perPage=100".into(),
        "/api/insights?page=18446744073709551615".into(),
        format!("/api/insights/{id}/events?page=18446744073709551615"),
        format!("/insights/{id}?tab=events&page=18446744073709551615"),
    ];
    for path in huge {
        let (status, _, page) = send(client().get(format!("{u}{path}"))).await;
        assert_eq!(status, 200, "{path}: {page}");
    }

    // Selectors: AWS's refusals, the same-origin rule, and `prism selectors get` reads it back.
    let put = |body: &str| client().put(format!("{u}/api/selectors")).header("origin", u.as_str()).body(body.to_owned());
    let (status, _, body) = send(put(r#"[{"InsightType":"ApiCallRateInsight"},{"InsightType":"Nope"}]"#)).await;
    assert_eq!((status, json(&body)["code"].as_str()), (400, Some("InvalidInsightSelectorsException")), "{body}");
    let (status, _, body) = send(client().put(format!("{u}/api/selectors")).body(r#"[{"InsightType":"ApiCallRateInsight"}]"#)).await;
    assert_eq!(status, 403, "no Origin: a cross-site form could have sent it: {body}");
    let (status, _, body) = send(client().put(format!("{u}/api/selectors")).header("origin", "http://evil.example").body("[]")).await;
    assert_eq!(status, 403, "{body}");
    let (status, _, body) = send(put(r#"[{"InsightType":"ApiCallRateInsight"}]"#)).await;
    assert_eq!(status, 200, "{body}");
    let got = json(&ok(&["selectors", "get", "--lake", f.lake.to_str().unwrap()]));
    assert_eq!(got["InsightSelectors"], serde_json::json!([{"InsightType": "ApiCallRateInsight", "EventCategories": ["Management"]}]));
    let (status, _, _) = send(put(BOTH)).await;
    assert_eq!(status, 200);

    // Without a token, only loopback host names are answered (no DNS rebinding).
    let (status, _, _) = send(client().get(format!("{u}/api/insights")).header("host", "rebound.example")).await;
    assert_eq!(status, 403);
    let (_, headers, _) = send(client().get(format!("{u}/insights"))).await;
    assert!(headers["content-security-policy"].to_str().unwrap().contains("default-src 'none'"));
}

/// A JSON body without reqwest's `json` feature (which would rebuild reqwest for the tests).
trait JsonBody {
    fn json_body(self, v: serde_json::Value) -> Self;
}

impl JsonBody for reqwest::RequestBuilder {
    fn json_body(self, v: serde_json::Value) -> Self {
        self.header("content-type", "application/json").body(v.to_string())
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_token_guards_every_request_off_loopback() {
    let f = fixture();
    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("token");
    // Off loopback, no token: refused at start.
    let out = Command::new(prism_bin()).args(["serve", "--lake", f.lake.to_str().unwrap(), "--listen", "0.0.0.0:0"]).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("without a token"), "{}", String::from_utf8_lossy(&out.stderr));
    std::fs::write(&token_file, "short").unwrap();
    let out = Command::new(prism_bin()).args(["serve", "--lake", f.lake.to_str().unwrap(), "--token-file", token_file.to_str().unwrap()]).output().unwrap();
    assert_eq!(out.status.code(), Some(1), "a short token is refused");

    let token = "s3cret-token-0123456789";
    std::fs::write(&token_file, format!("{token}\n")).unwrap();
    let server = Server::start(&f.lake, &["--token-file", token_file.to_str().unwrap()]);
    let u = &server.url;
    let (status, body) = get(&format!("{u}/api/insights")).await;
    assert_eq!((status, body["code"].as_str()), (401, Some("Unauthorized")));
    let (status, _, _) = send(client().get(format!("{u}/api/insights")).header("authorization", "Bearer wrong-token-000000000")).await;
    assert_eq!(status, 401);
    let (status, _, _) = send(client().get(format!("{u}/api/insights")).header("authorization", format!("Bearer {token}"))).await;
    assert_eq!(status, 200);
    // Pages send the browser to the login form, which sets a cookie.
    let (status, headers, _) = send(client().get(format!("{u}/settings"))).await;
    assert_eq!(status, 303);
    assert_eq!(headers["location"], "/login?next=%2Fsettings");
    let login = |t: &str| {
        client()
            .post(format!("{u}/login"))
            .header("origin", u.as_str())
            .header("content-type", "application/x-www-form-urlencoded")
            .body(format!("token={t}&next=%2Fsettings"))
    };
    let (status, _, _) = send(login("wrong")).await;
    assert_eq!(status, 401);
    let (status, headers, _) = send(login(token)).await;
    assert_eq!((status, headers["location"].to_str().unwrap()), (303, "/settings"));
    let cookie = headers["set-cookie"].to_str().unwrap().split(';').next().unwrap().to_owned();
    assert!(headers["set-cookie"].to_str().unwrap().contains("HttpOnly"));
    let (status, _, page) = send(client().get(format!("{u}/settings")).header("cookie", &cookie)).await;
    assert_eq!(status, 200, "{page}");
    // A change with the cookie must come from the console's own pages; with the header it may not.
    let (status, _, _) = send(client().put(format!("{u}/api/selectors")).header("cookie", &cookie).body(BOTH)).await;
    assert_eq!(status, 403);
    let (status, _, _) = send(client().put(format!("{u}/api/selectors")).header("cookie", &cookie).header("origin", u.as_str()).body(BOTH)).await;
    assert_eq!(status, 200);
    let (status, _, _) = send(client().put(format!("{u}/api/selectors")).header("authorization", format!("Bearer {token}")).body(BOTH)).await;
    assert_eq!(status, 200);
}

/// A query sqlparser takes seconds to parse (found by fuzzing the console) times out at the
/// server's limit like a slow one, other requests go on meanwhile, and while every planner is
/// still busy with such parses a new query is answered "busy" at the limit instead of queueing.
#[tokio::test(flavor = "multi_thread")]
async fn a_query_slow_to_parse_times_out_without_stalling_the_console() {
    let f = fixture();
    let server = Server::start(&f.lake, &["--query-timeout", "500ms"]);
    let u = &server.url;
    let slow = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/fuzz/slow-parse.sql")).unwrap();
    let post = |sql: &str| client().post(format!("{u}/api/sql")).header("origin", u.as_str()).json_body(serde_json::json!({ "sql": sql }));
    let (status, _, body) = send(post("SELECT 1 AS one")).await;
    assert_eq!(status, 200, "{body}");
    // One slow parse per planner; the server has one per core, as this machine counts them.
    let planners = std::thread::available_parallelism().map_or(2, |n| n.get());
    for _ in 0..planners {
        let (status, _, body) = send(post(&slow)).await;
        assert_eq!((status, json(&body)["code"].as_str()), (408, Some("Timeout")), "{body}");
        let (status, _) = get(&format!("{u}/api/insights")).await;
        assert_eq!(status, 200, "pages answer while the parse runs on");
    }
    let (status, _, body) = send(post("SELECT 1 AS one")).await;
    assert_eq!((status, json(&body)["code"].as_str()), (503, Some("Busy")), "{body}");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_console_shows_insights_written_while_it_runs() {
    let f = fixture();
    let dir = tempfile::tempdir().unwrap();
    let lake = copy_lake(&f.bare, &dir.path().join("lake"));
    let server = Server::start(&lake, &[]);
    let (_, before) = get(&format!("{}/api/insights", server.url)).await;
    assert_eq!(before["total"], 0);
    let (_, _, page) = send(client().get(format!("{}/insights", server.url))).await;
    assert!(page.contains("id=\"disabled\""), "the page says Insights are off");
    ok(&["selectors", "put", "--lake", lake.to_str().unwrap(), "--insight-selectors", BOTH]);
    ok(&["insights", "backfill", "--lake", lake.to_str().unwrap(), "--quiet"]);
    let (_, after) = get(&format!("{}/api/insights", server.url)).await;
    assert!(after["total"].as_i64().unwrap() > 0, "{after}");
    assert_eq!(after["total"].as_i64().unwrap() as usize, strings(&lake, "SELECT sharedeventid FROM insights WHERE insightstate = 'Start'").await.len());

    // The settings page shows `selectors put`'s refusals: a trail that logs no management events.
    let config = lake.join("prism.json");
    let text = std::fs::read_to_string(&config).unwrap().replace("\"management_events\": true", "\"management_events\": false");
    std::fs::write(&config, text).unwrap();
    let form = client()
        .post(format!("{}/settings", server.url))
        .header("origin", server.url.as_str())
        .header("content-type", "application/x-www-form-urlencoded")
        .body("ApiCallRateInsight=on");
    let (status, _, page) = send(form).await;
    assert_eq!(status, 400);
    assert!(page.contains("id=\"error\"") && page.contains("does not log management events"), "{page}");
}

#[test]
fn insights_graph_writes_the_details_chart() {
    let f = fixture();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("chart.svg");
    ok(&["insights", "graph", &f.hostile, "--lake", f.lake.to_str().unwrap(), "-o", out.to_str().unwrap(), "--zoom", "day"]);
    let svg = std::fs::read_to_string(&out).unwrap();
    assert!(svg.starts_with("<svg") && svg.ends_with("</svg>"));
    assert!(svg.contains(&format!("data-shared-id=\"{}\"", f.hostile)));
    let png = dir.path().join("chart.png");
    ok(&["insights", "graph", &f.hostile, "--lake", f.lake.to_str().unwrap(), "-o", png.to_str().unwrap()]);
    assert_eq!(&std::fs::read(&png).unwrap()[..8], b"\x89PNG\r\n\x1a\n");
    let txt = Command::new(prism_bin()).args(["insights", "graph", &f.hostile, "--lake", f.lake.to_str().unwrap(), "-o", "chart.txt"]).output().unwrap();
    assert_eq!(txt.status.code(), Some(1), "an unknown extension is refused");
    let bad = Command::new(prism_bin()).args(["insights", "graph", "nope", "--lake", f.lake.to_str().unwrap(), "-o", out.to_str().unwrap()]).output().unwrap();
    assert_eq!(bad.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("no Insight with sharedEventID `nope`"));
}

// ---------------------------------------------------------------------------------------------
// The pages in a real browser.

/// A headless Chromium session through chromedriver (the W3C WebDriver protocol over HTTP).
struct Browser {
    driver: Child,
    base: String,
    session: String,
}

const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

impl Browser {
    async fn start() -> Browser {
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let driver = Command::new("chromedriver")
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run chromedriver ({e}): install Chromium with `apt install chromium chromium-driver`, as .ci/run does"));
        let base = format!("http://127.0.0.1:{port}");
        for _ in 0..100 {
            if client().get(format!("{base}/status")).send().await.is_ok() {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
        let caps = serde_json::json!({"capabilities": {"alwaysMatch": {"goog:chromeOptions": {
            "args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1400,1100"]}}}});
        let (status, _, body) = send(client().post(format!("{base}/session")).json_body(caps)).await;
        assert_eq!(status, 200, "chromedriver session: {body}");
        let session = json(&body)["value"]["sessionId"].as_str().unwrap().to_owned();
        Browser { driver, base, session }
    }

    async fn call(&self, method: reqwest::Method, path: &str, body: Option<serde_json::Value>) -> serde_json::Value {
        let mut req = client().request(method, format!("{}/session/{}{path}", self.base, self.session));
        if let Some(b) = body {
            req = req.json_body(b);
        }
        let (status, _, text) = send(req).await;
        assert_eq!(status, 200, "{path}: {text}");
        json(&text)["value"].take()
    }

    async fn goto(&self, url: &str) {
        self.call(reqwest::Method::POST, "/url", Some(serde_json::json!({"url": url}))).await;
    }

    async fn find_all(&self, css: &str) -> Vec<String> {
        let v = self.call(reqwest::Method::POST, "/elements", Some(serde_json::json!({"using": "css selector", "value": css}))).await;
        v.as_array().unwrap().iter().map(|e| e[ELEMENT].as_str().unwrap().to_owned()).collect()
    }

    /// The first element matching `css`, waiting up to 10 s for it: a click that submits a form
    /// can return before the next page is there, more so on a loaded machine.
    async fn find(&self, css: &str) -> String {
        for _ in 0..100 {
            if let Some(e) = self.find_all(css).await.into_iter().next() {
                return e;
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
        panic!("no element {css} within 10 s")
    }

    async fn text(&self, element: &str) -> String {
        self.call(reqwest::Method::GET, &format!("/element/{element}/text"), None).await.as_str().unwrap().to_owned()
    }

    async fn attr(&self, element: &str, name: &str) -> Option<String> {
        self.call(reqwest::Method::GET, &format!("/element/{element}/attribute/{name}"), None).await.as_str().map(str::to_owned)
    }

    async fn click(&self, element: &str) {
        self.call(reqwest::Method::POST, &format!("/element/{element}/click"), Some(serde_json::json!({}))).await;
    }

    async fn title(&self) -> String {
        self.call(reqwest::Method::GET, "/title", None).await.as_str().unwrap().to_owned()
    }

    async fn screenshot(&self, name: &str) {
        use base64::Engine;
        let png = self.call(reqwest::Method::GET, "/screenshot", None).await;
        let bytes = base64::engine::general_purpose::STANDARD.decode(png.as_str().unwrap()).unwrap();
        let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("../screenshots");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join(name), bytes).unwrap();
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn the_pages_work_in_a_real_browser() {
    let f = fixture();
    let dir = tempfile::tempdir().unwrap();
    let lake = copy_lake(&f.lake, &dir.path().join("lake"));
    let server = Server::start(&lake, &[]);
    let u = &server.url;
    let b = Browser::start().await;

    // The list shows every Insight, the labelled ones among them.
    b.goto(&format!("{u}/insights?perPage=500")).await;
    let rows = b.find_all("#insights tbody tr").await;
    let starts = strings(&lake, "SELECT sharedeventid FROM insights WHERE insightstate = 'Start'").await;
    assert_eq!(rows.len(), starts.len());
    let mut shown = BTreeSet::new();
    for r in &rows {
        shown.insert(b.attr(r, "data-shared-id").await.unwrap());
    }
    assert_eq!(shown, starts.into_iter().flatten().collect::<BTreeSet<_>>());
    let list_text = b.text(&b.find("#insights").await).await;
    let labels = f.archive.join("labels.json");
    let quality = prism::insights::quality::evaluate(lake.to_str().unwrap(), &labels).await.unwrap();
    let labelled: Vec<_> = quality.found.iter().filter(|x| x.label.is_some()).collect();
    assert!(labelled.len() >= 3, "{quality:?}");
    for l in &labelled {
        assert!(list_text.contains(&format!("{}:{}", l.event_source, l.event_name)), "{} missing from the list", l.event_name);
    }
    assert_eq!(b.find_all("#days rect.day").await.len(), quality_days(&lake).await);
    b.screenshot("console-insights.png").await;

    // Details: one band per Insight of that API in the window, at its minutes.
    let id = &f.hostile;
    b.goto(&format!("{u}/insights/{id}?zoom=week")).await;
    let bands = b.find_all("#chart rect.band").await;
    let (_, series) = get(&format!("{u}/api/insights/{id}/series?zoom=week")).await;
    let lo = minute(series["from"].as_str().unwrap());
    let n = series["values"].as_array().unwrap().len() as f64;
    let expected = strings(
        &lake,
        &format!(
            "WITH me AS (SELECT * FROM insights WHERE sharedeventid = '{id}' AND insightstate = 'Start') \
             SELECT DISTINCT i.sharedeventid FROM insights i, me WHERE i.insightstate = 'Start' AND i.insighttype = me.insighttype \
             AND i.insighteventsource = me.insighteventsource AND i.insighteventname = me.insighteventname \
             AND i.recipientaccountid = me.recipientaccountid AND i.awsregion = me.awsregion \
             AND i.eventtime < TIMESTAMP '{}' AND coalesce((SELECT max(e.eventtime) FROM insights e WHERE e.sharedeventid = i.sharedeventid AND e.insightstate = 'End'), TIMESTAMP '2100-01-01') >= TIMESTAMP '{}'",
            series["to"].as_str().unwrap(),
            series["from"].as_str().unwrap()
        ),
    )
    .await;
    assert_eq!(bands.len(), expected.len(), "one band per Insight of the API in the window");
    for band in &bands {
        let shared = b.attr(band, "data-shared-id").await.unwrap();
        assert!(expected.contains(&Some(shared.clone())));
        let start = minute(&b.attr(band, "data-start").await.unwrap());
        let x: f64 = b.attr(band, "x").await.unwrap().parse().unwrap();
        let want = 64.0 + ((start - lo).max(0) as f64) / n * 880.0;
        assert!((x - want).abs() < 0.2, "band {shared} at x={x}, its start minute is at {want}");
    }
    assert!(b.find_all("#chart rect.band.current").await.len() == 1);
    assert!(!b.find_all("#statistics tbody tr").await.is_empty());
    assert!(!b.find_all("#others li").await.is_empty());
    b.goto(&format!("{u}/insights/{id}")).await;
    b.screenshot("console-details.png").await;

    // Events tab: exactly what its SQL returns (first page), the hostile agent as plain text.
    b.click(&b.find("#events-tab").await).await;
    let mut ids = Vec::new();
    for r in b.find_all("#events tbody tr").await {
        ids.push(Some(b.attr(&r, "data-event-id").await.unwrap()));
    }
    let link = b.attr(&b.find("#open-sql").await, "href").await.unwrap();
    let sql: String = url::form_urlencoded::parse(link.split_once('?').unwrap().1.as_bytes()).find(|(k, _)| k == "q").unwrap().1.into_owned();
    let want: Vec<Option<String>> = strings(&lake, &format!("{} LIMIT 50", sql.replace("SELECT eventtime, eventid,", "SELECT eventid, eventtime,"))).await;
    assert_eq!(ids, want);
    let agents = b.text(&b.find("#events").await).await;
    assert!(agents.contains(SCRIPT_AGENT), "the user agent shows as text");
    assert!(agents.contains("<b>bold</b> & \"quoted\""));
    assert!(b.find_all("script").await.is_empty() && b.find_all("#events img").await.is_empty());
    assert_ne!(b.title().await, "owned");
    // The SQL page runs the linked query.
    b.goto(&format!("{u}{link}")).await;
    assert!(b.text(&b.find("#rowcount").await).await.starts_with(&format!("{} rows", strings(&lake, &sql).await.len())));

    // Settings: a checkbox change is saved, as `prism selectors get` shows.
    b.goto(&format!("{u}/settings")).await;
    b.click(&b.find("#ApiErrorRateInsight").await).await;
    b.click(&b.find("#save").await).await;
    assert_eq!(b.text(&b.find("#saved").await).await, "Saved.");
    assert!(b.text(&b.find("#next").await).await.contains("ApiCallRateInsight"));
    let got = json(&ok(&["selectors", "get", "--lake", lake.to_str().unwrap()]));
    assert_eq!(got["InsightSelectors"], serde_json::json!([{"InsightType": "ApiCallRateInsight", "EventCategories": ["Management"]}]));
    let _ = b.call(reqwest::Method::DELETE, "", None).await;
}

/// Days with at least one Insight start.
async fn quality_days(lake: &Path) -> usize {
    strings(lake, "SELECT DISTINCT CAST(date_trunc('day', eventtime) AS VARCHAR) FROM insights WHERE insightstate = 'Start'").await.len()
}

fn minute(t: &str) -> i64 {
    chrono::DateTime::parse_from_rfc3339(t).unwrap().timestamp() / 60
}
