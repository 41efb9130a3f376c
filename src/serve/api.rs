//! The JSON API under `/api/`: what every page shows, for scripts. Field names are the
//! `insights` table's columns; errors are `{"error": message, "code": name}` with a 4xx or 5xx
//! status (AWS's exception names where AWS has one). README "Console and API" lists each
//! endpoint with a curl example.

use axum::Json;
use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde::Deserialize;

use super::data::{self, InsightFilter, Zoom};
use super::{Result, ServeError, Shared};
use crate::sql::output::{OutputFormat, ResultWriter};

pub fn routes() -> Router<Shared> {
    Router::new()
        .route("/api/insights", get(list))
        .route("/api/insights/{id}", get(one))
        .route("/api/insights/{id}/series", get(series))
        .route("/api/insights/{id}/chart.svg", get(chart))
        .route("/api/insights/{id}/chart.png", get(chart_png))
        .route("/api/insights/{id}/events", get(events))
        .route("/api/selectors", get(get_selectors).put(put_selectors))
        .route("/api/sql", get(sql_get).post(sql_post))
}

/// An error as the API's JSON body.
pub struct ApiError(pub ServeError);

impl<E: Into<ServeError>> From<E> for ApiError {
    fn from(e: E) -> Self {
        ApiError(e.into())
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        super::failure(&self.0, true)
    }
}

type ApiResult<T> = std::result::Result<T, ApiError>;

async fn list(State(st): State<Shared>, Query(f): Query<InsightFilter>) -> ApiResult<Json<data::InsightPage>> {
    let marks = data::marks(&st.ctx).await?;
    Ok(Json(data::list(&st.ctx, &f, &marks).await?))
}

async fn one(State(st): State<Shared>, Path(id): Path<String>) -> ApiResult<Json<serde_json::Value>> {
    let marks = data::marks(&st.ctx).await?;
    let (insight, records) = data::one(&st.ctx, &id, &marks).await?;
    Ok(Json(serde_json::json!({"insight": insight, "records": records})))
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct ZoomQuery {
    zoom: String,
}

async fn series(State(st): State<Shared>, Path(id): Path<String>, Query(q): Query<ZoomQuery>) -> ApiResult<Json<data::Series>> {
    Ok(Json(data::chart_series(&st.ctx, &id, Zoom::parse(&q.zoom)?).await?))
}

async fn chart(State(st): State<Shared>, Path(id): Path<String>, Query(q): Query<ZoomQuery>) -> ApiResult<Response> {
    let svg = super::chart::svg(&data::chart_series(&st.ctx, &id, Zoom::parse(&q.zoom)?).await?);
    Ok(([(header::CONTENT_TYPE, "image/svg+xml")], svg).into_response())
}

async fn chart_png(State(st): State<Shared>, Path(id): Path<String>, Query(q): Query<ZoomQuery>) -> ApiResult<Response> {
    let svg = super::chart::svg(&data::chart_series(&st.ctx, &id, Zoom::parse(&q.zoom)?).await?);
    // Rasterizing is CPU work of tens of milliseconds: off the async threads.
    let png = tokio::task::spawn_blocking(move || super::chart::png(&svg)).await.map_err(|e| ServeError::Data(format!("drawing the PNG: {e}")))??;
    Ok(([(header::CONTENT_TYPE, "image/png")], png).into_response())
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct PageQuery {
    page: Option<usize>,
    #[serde(rename = "perPage")]
    per_page: Option<usize>,
}

async fn events(State(st): State<Shared>, Path(id): Path<String>, Query(q): Query<PageQuery>) -> ApiResult<Json<data::EventPage>> {
    let marks = data::marks(&st.ctx).await?;
    let (insight, _) = data::one(&st.ctx, &id, &marks).await?;
    Ok(Json(data::events(&st.ctx, &insight, q.page.unwrap_or(1), q.per_page.unwrap_or(data::DEFAULT_PER_PAGE), &marks).await?))
}

async fn get_selectors(State(st): State<Shared>) -> ApiResult<Json<serde_json::Value>> {
    let (url, config) = st.config().await?;
    let types = crate::insights::get_selectors(&url, &config)?;
    Ok(Json(crate::insights::selectors_response(&url, &types)))
}

/// `PutInsightSelectors`: the body is what `prism selectors put --insight-selectors` takes.
async fn put_selectors(State(st): State<Shared>, body: Bytes) -> ApiResult<Json<serde_json::Value>> {
    let text = std::str::from_utf8(&body).map_err(|_| ServeError::BadRequest("the body is not UTF-8 JSON".into()))?;
    let types = crate::insights::parse_selectors(text)?;
    let mut lake = st.lake().await?;
    crate::insights::put_selectors(&mut lake, types.clone()).await?;
    Ok(Json(crate::insights::selectors_response(lake.url(), &types)))
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct SqlQuery {
    q: String,
    format: Option<String>,
}

#[derive(Deserialize)]
struct SqlBody {
    sql: String,
    #[serde(default)]
    format: Option<String>,
}

async fn sql_get(State(st): State<Shared>, Query(q): Query<SqlQuery>) -> ApiResult<Response> {
    sql(&st, &q.q, q.format.as_deref()).await
}

async fn sql_post(State(st): State<Shared>, body: Bytes) -> ApiResult<Response> {
    let b: SqlBody = serde_json::from_slice(&body).map_err(|e| ServeError::BadRequest(format!("the body must be {{\"sql\": \"…\"}}: {e}")))?;
    sql(&st, &b.sql, b.format.as_deref()).await
}

/// Runs a read-only query: JSON by default (columns, rows as objects, whether rows were cut),
/// or `format=csv|ndjson` as a download.
async fn sql(st: &super::AppState, text: &str, format: Option<&str>) -> ApiResult<Response> {
    let answer = super::query::run(st, text, st.opts.max_rows).await?;
    let format = match format.unwrap_or("json") {
        "json" => None,
        "csv" => Some(OutputFormat::Csv),
        "ndjson" => Some(OutputFormat::Ndjson),
        other => return Err(ServeError::BadRequest(format!("unknown format `{other}`: use json, csv or ndjson")).into()),
    };
    let write = |format: OutputFormat| -> Result<Vec<u8>> {
        let mut w = ResultWriter::new(format, answer.schema.clone(), Vec::new()).map_err(|e| ServeError::Data(crate::error::report(&e)))?;
        for b in &answer.batches {
            w.write(b).map_err(|e| ServeError::Data(crate::error::report(&e)))?;
        }
        w.finish().map_err(|e| ServeError::Data(crate::error::report(&e)))
    };
    let mut response = match format {
        Some(f) => {
            let (mime, name) = if f == OutputFormat::Csv { ("text/csv; charset=utf-8", "result.csv") } else { ("application/x-ndjson", "result.ndjson") };
            let mut r = write(f)?.into_response();
            r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static(mime));
            if let Ok(v) = HeaderValue::from_str(&format!("attachment; filename=\"{name}\"")) {
                r.headers_mut().insert(header::CONTENT_DISPOSITION, v);
            }
            r
        }
        None => {
            let rows: serde_json::Value = serde_json::from_slice(&write(OutputFormat::Json)?).unwrap_or(serde_json::Value::Array(vec![]));
            let columns: Vec<_> = answer.schema.fields().iter().map(|f| serde_json::json!({"name": f.name(), "type": f.data_type().to_string()})).collect();
            Json(serde_json::json!({
                "columns": columns,
                "rows": rows,
                "rowCount": answer.rows,
                "truncated": answer.truncated,
                "maxRows": st.opts.max_rows,
                "millis": answer.millis as u64,
            }))
            .into_response()
        }
    };
    if answer.truncated
        && let Ok(v) = HeaderValue::from_str(&st.opts.max_rows.to_string())
    {
        response.headers_mut().insert("x-prism-truncated-at", v);
    }
    Ok(response)
}
