//! The console's HTML pages, rendered on the server with no script: Insights (list and
//! details), Settings, SQL, and the login form when the server has a token.
//!
//! Every value is escaped by [`escape`] where it enters the markup (log values are
//! attacker-controlled), and every link's query value by [`url_encode`]. The Content Security
//! Policy set by the guard allows no script at all, so an escaping slip still runs nothing.

use std::fmt::Write;

use axum::Router;
use axum::extract::{Form, Path, Query, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use serde::Deserialize;

use super::data::{self, InsightFilter, Zoom};
use super::{ServeError, Shared, escape, redirect};
use crate::insights::{CALL_RATE, ERROR_RATE};

const STYLE: &str = include_str!("style.css");
const EVENTS_PER_PAGE: usize = 50;
const SQL_ROWS_PER_PAGE: usize = 100;

pub fn routes() -> Router<Shared> {
    Router::new()
        .route("/", get(|| async { redirect("/insights") }))
        .route("/assets/style.css", get(style))
        .route("/insights", get(insights))
        .route("/insights/{id}", get(details))
        .route("/settings", get(settings).post(save_settings))
        .route("/sql", get(sql_page))
        .route("/login", get(login_form).post(login))
}

/// Percent-encodes a query-string value.
pub fn url_encode(s: &str) -> String {
    url::form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

/// An error as a page.
pub struct PageError(pub ServeError);

impl<E: Into<ServeError>> From<E> for PageError {
    fn from(e: E) -> Self {
        PageError(e.into())
    }
}

impl IntoResponse for PageError {
    fn into_response(self) -> Response {
        super::failure(&self.0, false)
    }
}

type PageResult = std::result::Result<Response, PageError>;

pub fn error_page(status: StatusCode, message: &str) -> String {
    layout(
        &status.to_string(),
        "",
        &format!(
            "<h1>{}</h1><pre class=\"error\" id=\"error\">{}</pre><p><a href=\"/insights\">Back to Insights</a></p>",
            escape(&status.to_string()),
            escape(message)
        ),
    )
}

fn layout(title: &str, active: &str, body: &str) -> String {
    let mut nav = String::new();
    for (href, name) in [("/insights", "Insights"), ("/settings", "Settings"), ("/sql", "SQL")] {
        let class = if name == active { " class=\"active\"" } else { "" };
        let _ = write!(nav, "<a href=\"{href}\"{class}>{name}</a>");
    }
    format!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><meta name=\"viewport\" content=\"width=device-width\">\
         <title>{} · Prism</title><link rel=\"stylesheet\" href=\"/assets/style.css\"></head>\
         <body><header><a class=\"brand\" href=\"/insights\">Prism</a><nav>{nav}</nav></header><main>{body}</main></body></html>",
        escape(title)
    )
}

async fn style() -> Response {
    let mut r = STYLE.into_response();
    r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("text/css; charset=utf-8"));
    r.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("max-age=3600"));
    r
}

fn html(body: String) -> Response {
    Html(body).into_response()
}

fn minutes_text(m: i64) -> String {
    match m {
        m if m < 60 => format!("{m} min"),
        m if m % 60 == 0 => format!("{} h", m / 60),
        m => format!("{} h {} min", m / 60, m % 60),
    }
}

fn short_time(rfc: &str) -> String {
    rfc.replace('T', " ").trim_end_matches('Z').trim_end_matches(":00").to_owned()
}

fn option(value: &str, label: &str, selected: Option<&str>) -> String {
    let sel = if selected == Some(value) { " selected" } else { "" };
    format!("<option value=\"{}\"{sel}>{}</option>", escape(value), escape(label))
}

/// The filters as a query string (without `page`), for pager links.
fn filter_query(f: &InsightFilter) -> String {
    let mut parts = Vec::new();
    for (k, v) in [
        ("from", &f.from),
        ("to", &f.to),
        ("type", &f.insight_type),
        ("category", &f.category),
        ("eventsource", &f.eventsource),
        ("eventname", &f.eventname),
        ("errorcode", &f.errorcode),
        ("account", &f.account),
        ("region", &f.region),
        ("direction", &f.direction),
    ] {
        if let Some(v) = v.as_deref().filter(|v| !v.is_empty()) {
            parts.push(format!("{k}={}", url_encode(v)));
        }
    }
    parts.join("&")
}

async fn insights(State(st): State<Shared>, Query(f): Query<InsightFilter>) -> PageResult {
    let marks = data::marks(&st.ctx).await?;
    let page = data::list(&st.ctx, &f, &marks).await?;
    let (_, config) = st.config().await?;
    let enabled = crate::insights::selectors_of(&config);
    let mut b = String::new();
    b.push_str("<h1>Insights</h1>");
    if enabled.is_empty() {
        b.push_str("<p class=\"notice\" id=\"disabled\">Insights are off for this lake. Turn them on in <a href=\"/settings\">Settings</a>, then run <code>prism insights backfill</code>.</p>");
    }
    // Filters.
    let text = |name: &str, label: &str, value: &Option<String>, hint: &str| {
        format!("<label>{label}<input name=\"{name}\" value=\"{}\" placeholder=\"{hint}\"></label>", escape(value.as_deref().unwrap_or("")))
    };
    let _ = write!(
        b,
        "<form class=\"filters\" method=\"get\" action=\"/insights\">{}{}<label>Type<select name=\"type\">{}{}{}</select></label>\
         <label>Category<select name=\"category\">{}{}{}</select></label>{}{}{}{}{}\
         <label>Direction<select name=\"direction\">{}{}{}</select></label><button type=\"submit\">Apply</button> <a href=\"/insights\">Clear</a></form>",
        text("from", "From", &f.from, "2024-01-05"),
        text("to", "To", &f.to, "2024-01-06T12:00:00Z"),
        option("", "any", f.insight_type.as_deref()),
        option(CALL_RATE, "API call rate", f.insight_type.as_deref()),
        option(ERROR_RATE, "API error rate", f.insight_type.as_deref()),
        option("", "any", f.category.as_deref()),
        option("Management", "Management events", f.category.as_deref()),
        option("Data", "Data events", f.category.as_deref()),
        text("eventsource", "Event source", &f.eventsource, "ec2.amazonaws.com"),
        text("eventname", "Event name", &f.eventname, "RunInstances"),
        text("errorcode", "Error code", &f.errorcode, "AccessDenied"),
        text("account", "Account", &f.account, "111122223333"),
        text("region", "Region", &f.region, "us-east-1"),
        option("", "any", f.direction.as_deref()),
        option("spike", "spike", f.direction.as_deref()),
        option("drop", "drop", f.direction.as_deref()),
    );
    // Per-day strip: every day from the first to the last with an Insight, empty days too.
    if let (Some(first), Some(last)) = (page.days.first(), page.days.last()) {
        strip(&mut b, first, last, &page.days);
    }
    let _ = write!(b, "<p class=\"muted\" id=\"total\">{} Insights match.</p>", page.total);
    if page.items.is_empty() {
        b.push_str("<p id=\"empty\">No Insights match these filters.</p>");
    } else {
        b.push_str(
            "<table id=\"insights\"><thead><tr><th>API</th><th>Type</th><th>Direction</th><th>Start (UTC)</th><th>Duration</th>\
             <th>Baseline avg</th><th>Insight avg</th><th>Top identity</th><th>Account / region</th></tr></thead><tbody>",
        );
        for i in &page.items {
            let _ = write!(
                b,
                "<tr data-shared-id=\"{id}\"><td><a href=\"/insights/{idu}\">{api}</a></td><td>{ty}</td><td>{dir}</td><td>{start}</td><td>{dur}{open}</td>\
                 <td class=\"num\">{base:.2}</td><td class=\"num\">{avg:.2}</td><td>{who}</td><td>{acct} / {region}</td></tr>",
                id = escape(&i.sharedeventid),
                idu = url_encode(&i.sharedeventid),
                api = escape(&i.api()),
                ty = type_label(&i.insighttype),
                dir = escape(&i.insightdirection),
                start = escape(&short_time(&i.starttime)),
                dur = minutes_text(i.insightduration),
                open = if i.open { " <span class=\"badge\">open</span>" } else { "" },
                base = i.baselineaverage,
                avg = i.insightaverage,
                who = escape(i.topidentity.as_deref().unwrap_or("")),
                acct = escape(&i.recipientaccountid),
                region = escape(&i.awsregion),
            );
        }
        b.push_str("</tbody></table>");
        pager(&mut b, "/insights", &filter_query(&f), page.page, page.page.saturating_mul(page.per_page) < page.total as usize);
    }
    Ok(html(layout("Insights", "Insights", &b)))
}

fn strip(b: &mut String, first: &data::DayCount, last: &data::DayCount, days: &[data::DayCount]) {
    let parse = |d: &str| chrono::NaiveDate::parse_from_str(d, "%Y-%m-%d").ok();
    let (Some(d0), Some(d1)) = (parse(&first.day), parse(&last.day)) else { return };
    let n = ((d1 - d0).num_days() + 1).clamp(1, 3660) as usize;
    let mut counts = vec![0i64; n];
    for d in days {
        if let Some(i) = parse(&d.day).and_then(|x| usize::try_from((x - d0).num_days()).ok()).filter(|i| *i < n) {
            counts[i] += d.count;
        }
    }
    let max = counts.iter().copied().max().unwrap_or(1).max(1) as f64;
    let w = (960.0 / n as f64).clamp(3.0, 24.0);
    let width = (n as f64 * w).max(220.0);
    let _ = write!(b, "<div class=\"strip\"><svg id=\"days\" width=\"{width:.0}\" height=\"64\" role=\"img\" aria-label=\"Insights per day\">");
    for (i, count) in counts.iter().enumerate() {
        let day = d0 + chrono::Days::new(i as u64);
        let h = if *count == 0 { 1.0 } else { (*count as f64 / max * 44.0).max(3.0) };
        let fill = if *count == 0 { "#d1d5db" } else { "#0972d3" };
        let _ = write!(
            b,
            "<rect class=\"{class}\" data-day=\"{day}\" data-count=\"{count}\" x=\"{x:.1}\" y=\"{y:.1}\" width=\"{bw:.1}\" height=\"{h:.1}\" fill=\"{fill}\"><title>{day}: {count}</title></rect>",
            class = if *count == 0 { "empty" } else { "day" },
            x = i as f64 * w + 1.0,
            y = 48.0 - h,
            bw = (w - 2.0).max(1.0),
        );
    }
    let _ = write!(
        b,
        "<text x=\"0\" y=\"62\" font-size=\"10\">{d0}</text><text x=\"{width:.0}\" y=\"62\" font-size=\"10\" text-anchor=\"end\">{d1}</text></svg>\
         <span class=\"muted\">Insights per day of their start (most: {})</span></div>",
        max as i64
    );
}

fn pager(b: &mut String, path: &str, query: &str, page: usize, more: bool) {
    let sep = if query.is_empty() { "" } else { "&" };
    b.push_str("<nav class=\"pager\">");
    if page > 1 {
        let _ = write!(b, "<a id=\"prev\" href=\"{path}?{query}{sep}page={}\">Newer</a>", page - 1);
    }
    let _ = write!(b, "<span>Page {page}</span>");
    if more {
        let _ = write!(b, "<a id=\"next\" href=\"{path}?{query}{sep}page={}\">Older</a>", page.saturating_add(1));
    }
    b.push_str("</nav>");
}

fn type_label(t: &str) -> &'static str {
    match t {
        CALL_RATE => "API call rate",
        ERROR_RATE => "API error rate",
        _ => "other",
    }
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct DetailsQuery {
    zoom: String,
    tab: String,
    page: Option<usize>,
}

async fn details(State(st): State<Shared>, Path(id): Path<String>, Query(q): Query<DetailsQuery>) -> PageResult {
    let zoom = Zoom::parse(&q.zoom)?;
    let marks = data::marks(&st.ctx).await?;
    let (i, records) = data::one(&st.ctx, &id, &marks).await?;
    let idu = url_encode(&i.sharedeventid);
    let mut b = String::new();
    // Left column: the other Insights of this API and type.
    let others = data::of_series(&st.ctx, &i, None, None, &marks).await?;
    b.push_str("<div class=\"columns\"><aside><h2>Insights of this API</h2><ul id=\"others\">");
    for o in &others {
        let current = if o.sharedeventid == i.sharedeventid { " class=\"current\"" } else { "" };
        let _ = write!(
            b,
            "<li{current}><a href=\"/insights/{}\">{}</a> <span class=\"muted\">{} · {}</span></li>",
            url_encode(&o.sharedeventid),
            escape(&short_time(&o.starttime)),
            escape(&o.insightdirection),
            minutes_text(o.insightduration)
        );
    }
    b.push_str("</ul></aside><section>");
    let _ = write!(b, "<h1>{}</h1>", escape(&i.api()));
    let _ = write!(
        b,
        "<dl class=\"summary\"><dt>Type</dt><dd>{}</dd><dt>Direction</dt><dd>{}</dd><dt>Start</dt><dd id=\"start\">{}</dd><dt>End</dt><dd id=\"end\">{}</dd>\
         <dt>Duration</dt><dd>{}</dd><dt>Account</dt><dd>{}</dd><dt>Region</dt><dd>{}</dd><dt>Event category</dt><dd>{}</dd><dt>sharedEventID</dt><dd><code>{}</code></dd></dl>",
        type_label(&i.insighttype),
        escape(&i.insightdirection),
        escape(&i.starttime),
        escape(i.endtime.as_deref().unwrap_or("open (no End record yet)")),
        minutes_text(i.insightduration),
        escape(&i.recipientaccountid),
        escape(&i.awsregion),
        escape(&i.sourceeventcategory),
        escape(&i.sharedeventid),
    );
    let events_tab = q.tab == "events";
    let _ = write!(
        b,
        "<nav class=\"tabs\"><a href=\"/insights/{idu}\"{}>Graph</a><a id=\"events-tab\" href=\"/insights/{idu}?tab=events\"{}>Events</a></nav>",
        if events_tab { "" } else { " class=\"active\"" },
        if events_tab { " class=\"active\"" } else { "" },
    );
    if events_tab {
        let page = data::events(&st.ctx, &i, q.page.unwrap_or(1), EVENTS_PER_PAGE, &marks).await?;
        let _ = write!(
            b,
            "<p class=\"muted\">The events this Insight counted, from its start to its end, newest first. <a id=\"open-sql\" href=\"/sql?q={}\">Open this query in SQL</a></p>",
            url_encode(&page.sql)
        );
        b.push_str(
            "<table id=\"events\"><thead><tr><th>Time (UTC)</th><th>Identity</th><th>Source IP</th><th>User agent</th><th>Error</th><th>Event ID</th></tr></thead><tbody>",
        );
        for e in &page.items {
            let error = match (&e.errorcode, &e.errormessage) {
                (Some(c), Some(m)) => format!("{}: {}", escape(c), escape(m)),
                (Some(c), None) => escape(c),
                (None, Some(m)) => escape(m),
                (None, None) => String::new(),
            };
            let _ = write!(
                b,
                "<tr data-event-id=\"{id}\"><td>{t}</td><td>{who}</td><td>{ip}</td><td class=\"agent\">{ua}</td><td>{error}</td><td><code>{id}</code></td></tr>",
                id = escape(&e.eventid),
                t = escape(&e.eventtime),
                who = escape(e.useridentityarn.as_deref().unwrap_or("")),
                ip = escape(e.sourceipaddress.as_deref().unwrap_or("")),
                ua = escape(e.useragent.as_deref().unwrap_or("")),
            );
        }
        b.push_str("</tbody></table>");
        pager(&mut b, &format!("/insights/{idu}"), "tab=events", page.page, page.more);
    } else {
        b.push_str("<nav class=\"zoom\">Window: ");
        for z in [Zoom::Insight, Zoom::Day, Zoom::Week] {
            let label = match z {
                Zoom::Insight => "Insight ± 1 hour",
                Zoom::Day => "1 day",
                Zoom::Week => "1 week",
            };
            let class = if z == zoom { " class=\"active\"" } else { "" };
            let _ = write!(b, "<a href=\"/insights/{idu}?zoom={}\"{class}>{label}</a>", z.as_str());
        }
        let _ = write!(b, " <a href=\"/api/insights/{idu}/chart.svg?zoom={}\" download=\"insight.svg\">Download SVG</a></nav>", zoom.as_str());
        let series = data::series(&st.ctx, &i, zoom, &marks).await?;
        let _ = write!(b, "<figure id=\"chart\">{}</figure>", super::chart::svg(&series));
        statistics(&mut b, &records);
    }
    b.push_str("</section></div>");
    Ok(html(layout(&i.api(), "Insights", &b)))
}

/// Statistics and attributions, insight beside baseline, from the newest record (the End's
/// cover the whole Insight).
fn statistics(b: &mut String, records: &[serde_json::Value]) {
    let Some(rec) = records.iter().find(|r| r.pointer("/insightDetails/state").and_then(|s| s.as_str()) == Some("End")).or(records.first()) else {
        return;
    };
    let ctx = rec.pointer("/insightDetails/insightContext");
    let stat = |p: &str| ctx.and_then(|c| c.pointer(p)).map(|v| v.to_string()).unwrap_or_default();
    let _ = write!(
        b,
        "<h2>Statistics</h2><table id=\"statistics\"><thead><tr><th></th><th>Insight</th><th>Baseline</th></tr></thead><tbody>\
         <tr><td>Average per minute</td><td class=\"num\">{}</td><td class=\"num\">{}</td></tr>\
         <tr><td>Duration (minutes)</td><td class=\"num\">{}</td><td class=\"num\">{}</td></tr></tbody></table>",
        escape(&stat("/statistics/insight/average")),
        escape(&stat("/statistics/baseline/average")),
        escape(&stat("/statistics/insightDuration")),
        escape(&stat("/statistics/baselineDuration")),
    );
    let Some(attributions) = ctx.and_then(|c| c.get("attributions")).and_then(|a| a.as_array()) else { return };
    b.push_str("<h2>Attributions</h2><div class=\"attributions\">");
    for a in attributions {
        let name = a.get("attribute").and_then(|v| v.as_str()).unwrap_or("");
        let list = |k: &str| a.get(k).and_then(|v| v.as_array()).cloned().unwrap_or_default();
        let row = |v: &serde_json::Value| {
            format!(
                "<tr><td>{}</td><td class=\"num\">{}</td></tr>",
                escape(v.get("value").and_then(|x| x.as_str()).unwrap_or("")),
                escape(&v.get("average").map(|x| x.to_string()).unwrap_or_default())
            )
        };
        let _ = write!(
            b,
            "<table class=\"attribution\" data-attribute=\"{}\"><caption>{}</caption><thead><tr><th>During the Insight</th><th>avg</th></tr></thead><tbody>",
            escape(name),
            escape(name)
        );
        for v in list("insight") {
            b.push_str(&row(&v));
        }
        b.push_str("</tbody><thead><tr><th>Baseline</th><th>avg</th></tr></thead><tbody>");
        for v in list("baseline") {
            b.push_str(&row(&v));
        }
        b.push_str("</tbody></table>");
    }
    b.push_str("</div>");
}

/// The settings form: one checkbox per Insights type and event category (management ones
/// named by the type, data ones `Data-<type>`).
fn settings_form(config: &crate::lake::LakeConfig, message: &str) -> String {
    let mut b = String::from("<h1>Settings</h1>");
    b.push_str(message);
    b.push_str("<form method=\"post\" action=\"/settings\" id=\"selectors\">");
    let sets: [(&str, &str, &[String], [&str; 2]); 2] = [
        (
            "management events",
            "",
            &config.insight_selectors,
            [
                "Unusual numbers of write management API calls per minute, per API.",
                "Unusual numbers of failed management API calls per minute, per API and error code.",
            ],
        ),
        (
            "data events",
            "Data-",
            &config.data_insight_selectors,
            [
                "Unusual numbers of data API calls (reads and writes: S3 objects, Lambda invokes, DynamoDB items, …) per minute, per API.",
                "Unusual numbers of failed data API calls per minute, per API and error code.",
            ],
        ),
    ];
    for (legend, prefix, enabled, whats) in sets {
        let _ = write!(b, "<fieldset><legend>Insights types ({legend})</legend>");
        for (t, what) in [CALL_RATE, ERROR_RATE].into_iter().zip(whats) {
            let checked = if enabled.iter().any(|e| e == t) { " checked" } else { "" };
            let _ = write!(
                b,
                "<label class=\"check\"><input type=\"checkbox\" name=\"{prefix}{t}\" id=\"{prefix}{t}\"{checked}> <b>{t}</b> <span class=\"muted\">{what}</span></label>"
            );
        }
        b.push_str("</fieldset>");
    }
    b.push_str(
        "<button type=\"submit\" id=\"save\">Save</button></form>\
         <p class=\"muted\">Saved as <code>prism selectors put</code> saves them; all are off until enabled. Data Insights need a trail that logs data events.</p>",
    );
    b
}

/// What the next `prism insights run` will do with these selectors.
async fn next_run(st: &super::AppState, config: &crate::lake::LakeConfig) -> Result<String, ServeError> {
    let named = |types: &[String], on: &str| -> Option<String> {
        (!types.is_empty()).then(|| format!("{} on {on} events", types.iter().map(|t| format!("<b>{}</b>", escape(t))).collect::<Vec<_>>().join(" and ")))
    };
    let parts: Vec<String> = [named(&config.insight_selectors, "management"), named(&config.data_insight_selectors, "data")].into_iter().flatten().collect();
    if parts.is_empty() {
        return Ok("Insights are off: the next <code>prism insights run</code> analyses nothing.".into());
    }
    let marks = data::marks(&st.ctx).await?;
    let mut s = format!("The next <code>prism insights run</code> analyses {}", parts.join(", and "));
    if marks.is_empty() {
        s.push_str(" over all the data (no run yet; <code>prism insights backfill</code> does the same in one pass).");
    } else {
        let mut parts: Vec<String> =
            marks.iter().map(|((a, r), m)| format!("{} / {} from {}", escape(a), escape(r), escape(&crate::insights::minute_rfc3339(*m)))).collect();
        parts.sort();
        let _ = write!(s, ", in {}.", parts.join("; "));
    }
    Ok(s)
}

async fn settings(State(st): State<Shared>) -> PageResult {
    let (_, config) = st.config().await?;
    let message = format!("<p id=\"next\">{}</p>", next_run(&st, &config).await?);
    Ok(html(layout("Settings", "Settings", &settings_form(&config, &message))))
}

async fn save_settings(State(st): State<Shared>, Form(fields): Form<Vec<(String, String)>>) -> PageResult {
    use crate::insights::{Category, Selector};
    let checked = |name: String| fields.iter().any(|(k, _)| *k == name);
    let selectors: Vec<Selector> = [CALL_RATE, ERROR_RATE]
        .into_iter()
        .map(|t| Selector {
            insight_type: t.to_owned(),
            categories: [(t.to_owned(), Category::Management), (format!("Data-{t}"), Category::Data)]
                .into_iter()
                .filter(|(name, _)| checked(name.clone()))
                .map(|(_, c)| c)
                .collect(),
        })
        .filter(|s| !s.categories.is_empty())
        .collect();
    let mut lake = st.lake().await?;
    match crate::insights::put_selectors(&mut lake, selectors).await {
        Ok(()) => {
            let message = format!("<p class=\"ok\" id=\"saved\">Saved.</p><p id=\"next\">{}</p>", next_run(&st, lake.config()).await?);
            Ok(html(layout("Settings", "Settings", &settings_form(lake.config(), &message))))
        }
        Err(e) => {
            let e = ServeError::from(e);
            let message = format!("<pre class=\"error\" id=\"error\">{}</pre>", escape(&crate::error::report(&e)));
            Ok((e.status(), Html(layout("Settings", "Settings", &settings_form(lake.config(), &message)))).into_response())
        }
    }
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct SqlPageQuery {
    q: String,
    page: Option<usize>,
}

async fn sql_page(State(st): State<Shared>, Query(q): Query<SqlPageQuery>) -> PageResult {
    let mut b = String::from("<div class=\"columns\"><aside><h2>Tables</h2><ul id=\"tables\">");
    let listing = "SELECT table_name FROM information_schema.tables WHERE table_schema <> 'information_schema' ORDER BY 1";
    if let Ok(answer) = super::query::run(&st, listing, 1000).await {
        for batch in &answer.batches {
            let names = crate::insights::utf8(batch.column(0));
            for i in 0..batch.num_rows() {
                let name = names.value(i);
                let _ = write!(b, "<li><a href=\"/sql?q={}\">{}</a></li>", url_encode(&format!("SELECT * FROM {name} LIMIT 100")), escape(name));
            }
        }
    }
    let _ = write!(
        b,
        "</ul></aside><section><h1>SQL</h1><form method=\"get\" action=\"/sql\"><textarea name=\"q\" id=\"q\" rows=\"8\" spellcheck=\"false\">{}</textarea>\
         <p><button type=\"submit\" id=\"run\">Run</button> <span class=\"muted\">Read-only; at most {} rows, {} s per query.</span></p></form>",
        escape(&q.q),
        st.opts.max_rows,
        st.opts.query_timeout.as_secs_f64()
    );
    if !q.q.trim().is_empty() {
        match super::query::run(&st, &q.q, st.opts.max_rows).await {
            Ok(answer) => result_table(&mut b, &answer, &q.q, q.page.unwrap_or(1).max(1)),
            Err(e) => {
                let _ = write!(b, "<pre class=\"error\" id=\"error\">{}</pre>", escape(&crate::error::report(&e)));
                b.push_str("</section></div>");
                return Ok((e.status(), Html(layout("SQL", "SQL", &b))).into_response());
            }
        }
    }
    b.push_str("</section></div>");
    Ok(html(layout("SQL", "SQL", &b)))
}

fn result_table(b: &mut String, answer: &super::query::Answer, sql: &str, page: usize) {
    let qs = url_encode(sql);
    let _ = write!(
        b,
        "<p class=\"muted\" id=\"rowcount\">{} rows in {} ms{}. Download <a href=\"/api/sql?q={qs}&amp;format=csv\">CSV</a> · <a href=\"/api/sql?q={qs}\">JSON</a></p>",
        answer.rows,
        answer.millis,
        if answer.truncated { " (cut at the server's row cap)" } else { "" },
    );
    let options = arrow::util::display::FormatOptions::default().with_null("NULL");
    b.push_str("<table id=\"result\"><thead><tr>");
    for f in answer.schema.fields() {
        let _ = write!(b, "<th>{}</th>", escape(f.name()));
    }
    b.push_str("</tr></thead><tbody>");
    // The page number comes from the URL: any size (fuzzing found 4444444444444444441).
    let (first, last) = ((page - 1).saturating_mul(SQL_ROWS_PER_PAGE), page.saturating_mul(SQL_ROWS_PER_PAGE));
    let mut row = 0;
    for batch in &answer.batches {
        if row >= last {
            break;
        }
        let formatters: Vec<_> = batch.columns().iter().filter_map(|c| arrow::util::display::ArrayFormatter::try_new(c.as_ref(), &options).ok()).collect();
        for i in 0..batch.num_rows() {
            if row >= first && row < last {
                b.push_str("<tr>");
                for f in &formatters {
                    let _ = write!(b, "<td>{}</td>", escape(&f.value(i).to_string()));
                }
                b.push_str("</tr>");
            }
            row += 1;
        }
    }
    b.push_str("</tbody></table>");
    pager(b, "/sql", &format!("q={qs}"), page, answer.rows > last);
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct LoginQuery {
    next: String,
}

/// Only a path on this server (`/…`, not `//host`), so the login cannot redirect elsewhere.
fn local_path(next: &str) -> &str {
    if next.starts_with('/') && !next.starts_with("//") && !next.starts_with("/\\") { next } else { "/insights" }
}

fn login_page(next: &str, message: &str) -> String {
    layout(
        "Sign in",
        "",
        &format!(
            "<h1>Sign in</h1>{message}<form method=\"post\" action=\"/login\" id=\"login\"><label>Token <input type=\"password\" name=\"token\" id=\"token\" autocomplete=\"current-password\"></label>\
             <input type=\"hidden\" name=\"next\" value=\"{}\"><button type=\"submit\">Sign in</button></form>\
             <p class=\"muted\">The token is the content of the server's <code>--token-file</code>.</p>",
            escape(local_path(next))
        ),
    )
}

async fn login_form(Query(q): Query<LoginQuery>) -> Response {
    html(login_page(&q.next, ""))
}

#[derive(Deserialize)]
struct LoginForm {
    token: String,
    #[serde(default)]
    next: String,
}

async fn login(State(st): State<Shared>, Form(form): Form<LoginForm>) -> Response {
    let Some(token) = &st.opts.token else { return redirect(local_path(&form.next)) };
    if !super::same_secret(form.token.trim(), token) {
        return (StatusCode::UNAUTHORIZED, Html(login_page(&form.next, "<p class=\"error\" id=\"error\">That is not this server's token.</p>")))
            .into_response();
    }
    let mut r = redirect(local_path(&form.next));
    if let Ok(v) = HeaderValue::from_str(&format!("{}={token}; Path=/; HttpOnly; SameSite=Strict", super::COOKIE)) {
        r.headers_mut().insert(header::SET_COOKIE, v);
    }
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn login_redirects_stay_on_this_server() {
        assert_eq!(local_path("/insights/x?tab=events"), "/insights/x?tab=events");
        assert_eq!(local_path("//evil.example/"), "/insights");
        assert_eq!(local_path("https://evil.example/"), "/insights");
        assert_eq!(local_path("/\\evil.example"), "/insights");
    }

    #[test]
    fn durations_and_encoding() {
        assert_eq!(minutes_text(45), "45 min");
        assert_eq!(minutes_text(120), "2 h");
        assert_eq!(minutes_text(75), "1 h 15 min");
        assert_eq!(url_encode("a b&c=d'"), "a+b%26c%3Dd%27");
    }
}
