//! `prism serve`'s request handling: raw bytes as one HTTP/1.1 request (request line, headers,
//! body) through the console's whole router (the guard, every page and API handler, the SQL
//! page with a short timeout) over a small real lake with Insights. Any request gets a
//! response, never a panic or a hang.
//!
//! The first byte picks the server: even, no token (loopback `Host` names only); odd, with the
//! token `fuzz-token-0123456789abcdef` (Bearer or cookie). `{id}` in the request is replaced by
//! the id of a real Insight, so the details handlers are reached from simple seeds.
#![no_main]

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use libfuzzer_sys::fuzz_target;
use tower_service::Service;

const TOKEN: &str = "fuzz-token-0123456789abcdef";

struct Fixture {
    runtime: tokio::runtime::Runtime,
    open: Router,
    with_token: Router,
    id: String,
}

/// Builds the lake once per process: a generated archive with anomalies, ingested, and its
/// Insights found, so the pages have something to show.
fn fixture() -> &'static Fixture {
    static FIXTURE: OnceLock<Fixture> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().expect("a runtime");
        let dir = std::env::temp_dir().join(format!("prism-fuzz-http-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let archive = dir.join("archive");
        let lake = dir.join("lake").to_string_lossy().into_owned();
        let mut generate = prism::generate::GenerateOptions::new(&archive);
        generate.accounts = 1;
        generate.regions = vec!["eu-west-1".into()];
        generate.days = 9;
        generate.events_per_day = 2_000;
        generate.anomalies = 4;
        generate.seed = 5;
        prism::generate::generate(&generate).expect("the fixture archive");
        let (open, with_token, id) = runtime.block_on(async {
            let opts = prism::IngestOptions::new(vec![archive.to_string_lossy().into_owned()], lake.clone());
            prism::ingest(&opts, Arc::new(prism::IngestProgress::default())).await.expect("the fixture ingest");
            let selectors = prism::insights::parse_selectors(r#"[{"InsightType":"ApiCallRateInsight"},{"InsightType":"ApiErrorRateInsight"}]"#).expect("selectors");
            let mut opened = prism::Lake::open(&lake).await.expect("the fixture lake");
            prism::insights::put_selectors(&mut opened, selectors).await.expect("the fixture's selectors");
            let run = prism::insights::RunOptions::new(lake.clone(), prism::insights::Mode::Backfill { from: None, to: None });
            prism::insights::run(&run, &prism::insights::InsightsProgress::default()).await.expect("the fixture Insights");
            let mut serve = prism::serve::ServeOptions::new(lake.clone());
            serve.query_timeout = Duration::from_millis(300);
            serve.max_rows = 100;
            let open = prism::serve::app(serve.clone()).await.expect("the console");
            serve.token = Some(TOKEN.to_owned());
            let with_token = prism::serve::app(serve).await.expect("the console with a token");
            let id = first_insight(&lake).await;
            (open, with_token, id)
        });
        Fixture { runtime, open, with_token, id }
    })
}

/// The sharedEventID of one Insight in the lake, read through the public API as a user would.
async fn first_insight(lake: &str) -> String {
    let mut app = prism::serve::app(prism::serve::ServeOptions::new(lake.to_owned())).await.expect("the console");
    let req = http::Request::get("/api/insights").header("host", "127.0.0.1").body(Body::empty()).expect("a request");
    let response = app.call(req).await.expect("infallible");
    let body = axum::body::to_bytes(response.into_body(), 1 << 24).await.expect("a body");
    let text = String::from_utf8_lossy(&body);
    let at = text.find("\"sharedeventid\":\"").expect("an Insight in the fixture") + "\"sharedeventid\":\"".len();
    text[at..].split('"').next().unwrap_or_default().to_owned()
}

/// The request the bytes spell, or `None` when they are not one (hyper would answer 400 itself
/// before the router saw it).
fn request(bytes: &[u8], id: &str) -> Option<http::Request<Body>> {
    let mut headers = [httparse::EMPTY_HEADER; 32];
    let mut parsed = httparse::Request::new(&mut headers);
    let httparse::Status::Complete(head) = parsed.parse(bytes).ok()? else { return None };
    let path = parsed.path?.replace("{id}", id);
    let mut builder = http::Request::builder().method(parsed.method?).uri(path);
    for h in parsed.headers.iter() {
        builder = builder.header(h.name, h.value);
    }
    builder.body(Body::from(bytes[head..].to_vec())).ok()
}

fuzz_target!(
    // The fixture is built before the first input, outside the per-input timeout.
    init: {
        fixture();
    },
    |data: &[u8]| {
        let Some((&choice, rest)) = data.split_first() else { return };
        let fixture = fixture();
        let Some(req) = request(rest, &fixture.id) else { return };
        let mut router = if choice % 2 == 0 { fixture.open.clone() } else { fixture.with_token.clone() };
        fixture.runtime.block_on(async move {
            let response = router.call(req).await.expect("infallible");
            let _ = response.status();
            let _ = axum::body::to_bytes(response.into_body(), 1 << 26).await;
        });
    }
);
