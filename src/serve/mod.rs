//! `prism serve`: the Insights console (pages) and its HTTP API (`/api/…`) over a lake, from
//! one process with everything embedded.
//!
//! - [`data`]: what the pages and the API show, read from the lake;
//! - [`chart`]: the details chart as SVG (also `prism insights graph`);
//! - [`query`]: read-only SQL with a time limit and a row cap;
//! - [`pages`] and [`api`]: the HTML pages and the JSON endpoints;
//! - this module: options, start-up refusals, the access guard (token, same origin, host) and
//!   the security headers every response carries.
//!
//! The server keeps one DataFusion session over the lake. Tables are resolved at their latest
//! committed version whenever a query is planned, so an `insights run` meanwhile shows on the
//! next request. Settings (the selectors) are read from the lake on each request too.

pub mod api;
pub mod chart;
pub mod data;
pub mod pages;
pub mod query;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use datafusion::error::DataFusionError;
use datafusion::prelude::SessionContext;

use crate::lake::{Lake, LakeError};

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error(transparent)]
    Lake(#[from] LakeError),
    #[error(transparent)]
    Insights(Box<crate::insights::InsightsError>),
    #[error(transparent)]
    Sql(#[from] crate::sql::SqlError),
    #[error("{context}")]
    Query {
        context: String,
        #[source]
        source: DataFusionError,
    },
    #[error("cannot listen on {addr}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "refusing to listen on {0} without a token: anyone who can reach it could read the lake. Pass --token-file FILE (a file holding a secret of 16 or more characters), or listen on 127.0.0.1"
    )]
    TokenRequired(SocketAddr),
    #[error("the token in {path} is not usable: {reason}")]
    BadToken { path: String, reason: String },
    #[error("reading the token file {path}")]
    TokenFile {
        path: String,
        #[source]
        source: std::io::Error,
    },
    /// The request is wrong (a bad filter, zoom or page): 400.
    #[error("{0}")]
    BadRequest(String),
    /// The request is refused (a write in SQL, an invalid selector): 400, with AWS's words
    /// where AWS has them.
    #[error("{0}")]
    Refused(String),
    #[error("{0}")]
    NotFound(String),
    #[error("the query ran longer than the server's limit of {0:?} (--query-timeout)")]
    Timeout(Duration),
    /// Every planner is still busy with earlier queries that ran out of time (see
    /// [`query::planners`]): 503.
    #[error(
        "the server is still parsing earlier queries that ran out of time, and none finished within its limit of {0:?} (--query-timeout); try again shortly"
    )]
    Busy(Duration),
    /// The lake's data is not as the code expects.
    #[error("{0}")]
    Data(String),
    #[error("serving HTTP")]
    Io(#[source] std::io::Error),
}

impl From<crate::insights::InsightsError> for ServeError {
    fn from(e: crate::insights::InsightsError) -> Self {
        ServeError::Insights(Box::new(e))
    }
}

impl ServeError {
    pub fn status(&self) -> StatusCode {
        match self {
            ServeError::BadRequest(_) | ServeError::Refused(_) => StatusCode::BAD_REQUEST,
            ServeError::NotFound(_) => StatusCode::NOT_FOUND,
            ServeError::Timeout(_) => StatusCode::REQUEST_TIMEOUT,
            ServeError::Busy(_) => StatusCode::SERVICE_UNAVAILABLE,
            ServeError::Insights(e)
                if matches!(**e, crate::insights::InsightsError::InvalidSelectors(_) | crate::insights::InsightsError::ManagementEventsOff(_)) =>
            {
                StatusCode::BAD_REQUEST
            }
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// A short machine-readable name for the API's error bodies.
    pub fn code(&self) -> &'static str {
        match self {
            ServeError::BadRequest(_) => "BadRequest",
            ServeError::Refused(_) => "Refused",
            ServeError::NotFound(_) => "NotFound",
            ServeError::Timeout(_) => "Timeout",
            ServeError::Busy(_) => "Busy",
            ServeError::Insights(e) => match **e {
                crate::insights::InsightsError::InvalidSelectors(_) => "InvalidInsightSelectorsException",
                crate::insights::InsightsError::ManagementEventsOff(_) => "InvalidParameterException",
                crate::insights::InsightsError::NotEnabled(_) => "InsightNotEnabledException",
                _ => "InternalError",
            },
            _ => "InternalError",
        }
    }
}

pub type Result<T, E = ServeError> = std::result::Result<T, E>;

/// How `prism serve` runs.
#[derive(Debug, Clone)]
pub struct ServeOptions {
    pub lake: String,
    pub listen: SocketAddr,
    /// The secret every request must carry; required unless `listen` is a loopback address.
    pub token: Option<String>,
    /// Longest a SQL-page query may run.
    pub query_timeout: Duration,
    /// Most rows a SQL-page query returns (more are cut, and the page says so).
    pub max_rows: usize,
}

impl ServeOptions {
    pub fn new(lake: impl Into<String>) -> Self {
        ServeOptions {
            lake: lake.into(),
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            token: None,
            query_timeout: Duration::from_secs(30),
            max_rows: 10_000,
        }
    }
}

/// Reads and checks a token file: one line of 16 to 256 visible ASCII characters, none that a
/// cookie or header would need quoted.
pub fn read_token(path: &str) -> Result<String> {
    let text = std::fs::read_to_string(path).map_err(|source| ServeError::TokenFile { path: path.to_owned(), source })?;
    let token = text.trim();
    let bad = |reason: &str| ServeError::BadToken { path: path.to_owned(), reason: reason.to_owned() };
    if token.len() < 16 {
        return Err(bad("it must be at least 16 characters long (e.g. `openssl rand -hex 24 > FILE`)"));
    }
    if token.len() > 256 || !token.bytes().all(|b| b.is_ascii_graphic() && !matches!(b, b';' | b',' | b'"' | b'\\')) {
        return Err(bad("use up to 256 letters, digits and punctuation other than ; , \" and \\"));
    }
    Ok(token.to_owned())
}

/// What every handler shares.
pub struct AppState {
    pub location: String,
    pub ctx: SessionContext,
    pub opts: ServeOptions,
    /// Bounds the SQL page's parses and plans running at once ([`query::planners`]).
    pub planners: Arc<tokio::sync::Semaphore>,
}

impl AppState {
    /// The lake, opened for a change of its settings.
    pub async fn lake(&self) -> Result<Lake> {
        Ok(Lake::open(&self.location).await?)
    }

    /// The lake's latest settings (selectors), read for this request.
    pub async fn config(&self) -> Result<(url::Url, crate::lake::LakeConfig)> {
        Ok(Lake::read_config(&self.location).await?)
    }
}

pub type Shared = Arc<AppState>;

/// The server's Parquet footer cache; a month of a busy account's lake fits in it.
const METADATA_CACHE: &str = "256M";

/// Opens the lake and builds the router: everything but the socket, so tests and `serve` share it.
pub async fn app(opts: ServeOptions) -> Result<Router> {
    let lake = Lake::open(&opts.lake).await?;
    let ctx = crate::insights::session(&lake).await?;
    // A footer cache: the server reads the same files (the rollups', the insights table's,
    // recent events) request after request. On 30M events (docs/console.md) it took a chart's
    // series from 130-240 ms to 145-165 ms once warm; one-shot commands keep it off
    // (`sql::session`), where it only costs.
    let cache = format!("SET datafusion.runtime.metadata_cache_limit = '{METADATA_CACHE}'");
    ctx.sql(&cache).await.map(drop).map_err(|source| ServeError::Query { context: "setting the footer cache".into(), source })?;
    let state = Arc::new(AppState { location: lake.url().to_string(), ctx, opts, planners: query::planners() });
    let router = Router::new().merge(pages::routes()).merge(api::routes()).layer(axum::middleware::from_fn_with_state(state.clone(), guard)).with_state(state);
    Ok(router)
}

/// Binds the address, refusing any but loopback without a token; the caller prints it (port 0
/// picks a free one) before [`run`].
pub async fn bind(opts: &ServeOptions) -> Result<tokio::net::TcpListener> {
    if !opts.listen.ip().is_loopback() && opts.token.is_none() {
        return Err(ServeError::TokenRequired(opts.listen));
    }
    tokio::net::TcpListener::bind(opts.listen).await.map_err(|source| ServeError::Bind { addr: opts.listen, source })
}

/// Serves until `shutdown` completes.
pub async fn run(listener: tokio::net::TcpListener, router: Router, shutdown: impl std::future::Future<Output = ()> + Send + 'static) -> Result<()> {
    axum::serve(listener, router).with_graceful_shutdown(shutdown).await.map_err(ServeError::Io)
}

/// `prism insights graph`: the details chart of one Insight as SVG.
pub async fn graph(location: &str, id: &str, zoom: &str) -> Result<String> {
    let zoom = data::Zoom::parse(zoom)?;
    let lake = Lake::open(location).await?;
    let ctx = crate::insights::session(&lake).await?;
    Ok(chart::svg(&data::chart_series(&ctx, id, zoom).await?))
}

pub const COOKIE: &str = "prism_token";

/// How a request proved it may act.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Credential {
    /// `Authorization: Bearer …`: sent by scripts; a browser never adds it across sites.
    Header,
    /// The login cookie, or nothing where no token is needed: a browser sends both on
    /// cross-site requests too, so state changes also need the same origin.
    Ambient,
}

/// Compares without an early exit, so response times tell nothing about the token.
fn same_secret(a: &str, b: &str) -> bool {
    a.len() == b.len() && a.bytes().zip(b.bytes()).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn credential(headers: &HeaderMap, token: &str) -> Option<Credential> {
    let bearer = headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()).and_then(|v| v.strip_prefix("Bearer "));
    if bearer.is_some_and(|b| same_secret(b.trim(), token)) {
        return Some(Credential::Header);
    }
    let cookies = headers.get_all(header::COOKIE).iter().filter_map(|v| v.to_str().ok());
    let from_cookie = cookies.flat_map(|c| c.split(';')).filter_map(|kv| kv.trim().split_once('=')).any(|(k, v)| k == COOKIE && same_secret(v, token));
    from_cookie.then_some(Credential::Ambient)
}

/// Whether the request's `Origin` (or, without one, its `Referer`) is this server.
fn same_origin(headers: &HeaderMap) -> bool {
    let Some(host) = headers.get(header::HOST).and_then(|v| v.to_str().ok()) else { return false };
    let matches = |url: &str| {
        ["http://", "https://"].iter().any(|scheme| url.strip_prefix(scheme).is_some_and(|rest| rest == host || rest.starts_with(&format!("{host}/"))))
    };
    match headers.get(header::ORIGIN).and_then(|v| v.to_str().ok()) {
        Some(origin) => matches(origin),
        None => headers.get(header::REFERER).and_then(|v| v.to_str().ok()).is_some_and(matches),
    }
}

/// Whether `Host` names this machine's loopback: without a token, a page from another site
/// must not reach the console through a DNS name rebound to 127.0.0.1.
fn loopback_host(headers: &HeaderMap) -> bool {
    let Some(host) = headers.get(header::HOST).and_then(|v| v.to_str().ok()) else { return false };
    let name = match host.strip_prefix('[') {
        Some(v6) => v6.split(']').next().unwrap_or(""),
        None => host.rsplit_once(':').map_or(host, |(h, _)| h),
    };
    matches!(name, "localhost" | "127.0.0.1" | "::1") || name.parse::<std::net::Ipv4Addr>().is_ok_and(|ip| ip.is_loopback())
}

/// A failed request's answer: the error's status, logged when it is the server's fault.
pub(crate) fn failure(e: &ServeError, api: bool) -> Response {
    let status = e.status();
    let message = crate::error::report(e);
    if status.is_server_error() {
        tracing::warn!(error = %message, "request failed");
    }
    refuse(api, status, e.code(), &message)
}

/// JSON `{"error", "code"}` under `/api/`, an error page elsewhere.
fn refuse(api: bool, status: StatusCode, code: &str, message: &str) -> Response {
    if api {
        (status, axum::Json(serde_json::json!({"error": message, "code": code}))).into_response()
    } else {
        (status, axum::response::Html(pages::error_page(status, message))).into_response()
    }
}

/// Every request passes here: the host and token checks, the same-origin check on state
/// changes, then the security headers on the response.
async fn guard(State(state): State<Shared>, req: Request, next: Next) -> Response {
    let path = req.uri().path().to_owned();
    let api = path.starts_with("/api/");
    let headers = req.headers();
    let open_path = path == "/login" || path.starts_with("/assets/");
    let credential = match &state.opts.token {
        None => {
            if !loopback_host(headers) {
                return refuse(api, StatusCode::FORBIDDEN, "Forbidden", "this console answers only to localhost, 127.0.0.1 or [::1] (it has no token)");
            }
            Credential::Ambient
        }
        Some(token) => match credential(headers, token) {
            Some(c) => c,
            None if open_path => Credential::Ambient,
            None if api => return refuse(true, StatusCode::UNAUTHORIZED, "Unauthorized", "this server needs its token: send `Authorization: Bearer <token>`"),
            None => {
                let next_path = req.uri().path_and_query().map(|p| p.as_str()).unwrap_or("/");
                let location = format!("/login?next={}", pages::url_encode(next_path));
                return (StatusCode::SEE_OTHER, [(header::LOCATION, location)]).into_response();
            }
        },
    };
    let changes_state = !matches!(*req.method(), Method::GET | Method::HEAD | Method::OPTIONS);
    if changes_state && credential == Credential::Ambient && !same_origin(headers) {
        return refuse(
            api,
            StatusCode::FORBIDDEN,
            "Forbidden",
            "cross-site request refused: a change must come from this console's own pages (Origin or Referer of this host)",
        );
    }
    let mut response = next.run(req).await;
    let h = response.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static("default-src 'none'; style-src 'self'; img-src 'self' data:; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"),
    );
    h.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    h.insert(header::REFERRER_POLICY, HeaderValue::from_static("same-origin"));
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.entry(header::CACHE_CONTROL).or_insert(HeaderValue::from_static("no-store"));
    response
}

/// Escapes text for HTML and SVG (element content and quoted attributes). Values in logs are
/// attacker-controlled: a user agent of `<script>` must show as text.
pub fn escape(s: &str) -> String {
    let mut o = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        match c {
            '&' => o.push_str("&amp;"),
            '<' => o.push_str("&lt;"),
            '>' => o.push_str("&gt;"),
            '"' => o.push_str("&quot;"),
            '\'' => o.push_str("&#39;"),
            // Control characters (bar tab and newline) are invalid in XML; shown as U+FFFD.
            c if c.is_control() && c != '\n' && c != '\t' => o.push('\u{FFFD}'),
            c => o.push(c),
        }
    }
    o
}

/// An empty body with a status, for handlers that only redirect.
pub fn redirect(to: &str) -> Response {
    let mut r = Response::new(Body::empty());
    *r.status_mut() = StatusCode::SEE_OTHER;
    if let Ok(v) = HeaderValue::from_str(to) {
        r.headers_mut().insert(header::LOCATION, v);
    }
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(*k, HeaderValue::from_str(v).unwrap());
        }
        h
    }

    #[test]
    fn escaping() {
        assert_eq!(escape("<script>alert('x')</script> & \"q\""), "&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt; &amp; &quot;q&quot;");
        assert_eq!(escape("a\u{0}b"), "a\u{FFFD}b");
    }

    #[test]
    fn credentials_from_header_or_cookie() {
        let t = "0123456789abcdef";
        assert_eq!(credential(&headers(&[("authorization", "Bearer 0123456789abcdef")]), t), Some(Credential::Header));
        assert_eq!(credential(&headers(&[("cookie", "a=b; prism_token=0123456789abcdef")]), t), Some(Credential::Ambient));
        assert_eq!(credential(&headers(&[("cookie", "prism_token=0123456789abcdeX")]), t), None);
        assert_eq!(credential(&headers(&[]), t), None);
    }

    #[test]
    fn origins_and_hosts() {
        assert!(same_origin(&headers(&[("host", "127.0.0.1:8080"), ("origin", "http://127.0.0.1:8080")])));
        assert!(!same_origin(&headers(&[("host", "127.0.0.1:8080"), ("origin", "http://evil.example")])));
        assert!(!same_origin(&headers(&[("host", "127.0.0.1:8080"), ("origin", "http://127.0.0.1:8080.evil.example")])));
        assert!(same_origin(&headers(&[("host", "h:1"), ("referer", "http://h:1/settings")])));
        assert!(!same_origin(&headers(&[("host", "h:1")])));
        assert!(loopback_host(&headers(&[("host", "localhost:8080")])));
        assert!(loopback_host(&headers(&[("host", "[::1]:8080")])));
        assert!(!loopback_host(&headers(&[("host", "rebound.example:8080")])));
    }

    #[test]
    fn tokens_are_checked() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("t");
        std::fs::write(&p, "short\n").unwrap();
        assert!(read_token(p.to_str().unwrap()).is_err());
        std::fs::write(&p, "0123456789abcdef0123\n").unwrap();
        assert_eq!(read_token(p.to_str().unwrap()).unwrap(), "0123456789abcdef0123");
        std::fs::write(&p, "0123456789abcdef;0123").unwrap();
        assert!(read_token(p.to_str().unwrap()).is_err());
    }
}
