//! A real S3 protocol server for the tests: `s3s` over a folder (`s3s-fs`), served by hyper on
//! 127.0.0.1 in its own thread and runtime, with static credentials. A wrapper around the
//! service records every request and injects faults (503 SlowDown, 500, dropped connections,
//! slow responses) by rules, so the tests see what a real S3 client sees.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto::Builder as ConnBuilder;

pub const ACCESS_KEY: &str = "prism-test-key";
pub const SECRET_KEY: &str = "prism-test-secret";

/// What to do to a matching request.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Fault {
    /// `503 SlowDown`, as S3 answers when throttling.
    SlowDown,
    /// `500 InternalError`.
    InternalError,
    /// The connection is closed without an answer.
    Drop,
    /// The answer comes after this delay.
    Slow(Duration),
}

/// Injects `fault` into the next `times` requests whose `METHOD /bucket/key?query` contains
/// `pattern` (`u32::MAX`: every time).
#[derive(Debug, Clone)]
pub struct Rule {
    pub pattern: String,
    pub fault: Fault,
    pub times: u32,
}

/// One request seen by the server.
#[derive(Debug, Clone)]
pub struct Seen {
    pub method: String,
    /// `/bucket/key`, percent-decoded.
    pub path: String,
    pub query: String,
}

impl Seen {
    /// A ListObjects(V2) request: a GET on the bucket itself.
    pub fn is_list(&self) -> bool {
        self.method == "GET" && self.path.trim_matches('/').split('/').count() == 1 && !self.query.contains("location")
    }

    /// A query parameter, percent-decoded.
    pub fn param(&self, name: &str) -> Option<String> {
        url::form_urlencoded::parse(self.query.as_bytes())
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.into_owned())
    }
}

#[derive(Default)]
struct State {
    rules: Mutex<Vec<Rule>>,
    seen: Mutex<Vec<Seen>>,
    faults_injected: Mutex<u64>,
}

pub struct S3Server {
    pub endpoint: String,
    pub bucket: String,
    /// The folder behind the server (`<root>/<bucket>/<key>`).
    pub root: tempfile::TempDir,
    state: Arc<State>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
}

impl S3Server {
    /// Starts a server with one empty bucket.
    pub fn start(bucket: &str) -> S3Server {
        let root = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(root.path().join(bucket)).unwrap();
        let state = Arc::new(State::default());
        let (addr_tx, addr_rx) = std::sync::mpsc::channel();
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let (fs_root, st) = (root.path().to_path_buf(), state.clone());
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(serve(fs_root, st, addr_tx, stop_rx));
        });
        let addr = addr_rx.recv().unwrap();
        S3Server {
            endpoint: format!("http://{addr}"),
            bucket: bucket.to_owned(),
            root,
            state,
            stop: Some(stop_tx),
        }
    }

    /// The environment a client needs: endpoint, static credentials, plain HTTP, no IMDS.
    pub fn env(&self) -> Vec<(String, String)> {
        [
            ("AWS_ENDPOINT_URL", self.endpoint.as_str()),
            ("AWS_ACCESS_KEY_ID", ACCESS_KEY),
            ("AWS_SECRET_ACCESS_KEY", SECRET_KEY),
            ("AWS_REGION", "us-east-1"),
            ("AWS_ALLOW_HTTP", "true"),
            ("AWS_EC2_METADATA_DISABLED", "true"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
    }

    /// `s3://bucket/prefix`.
    pub fn url(&self, prefix: &str) -> String {
        format!("s3://{}/{}", self.bucket, prefix)
    }

    /// An object_store client of the bucket, through the S3 protocol.
    pub fn client(&self) -> object_store::aws::AmazonS3 {
        object_store::aws::AmazonS3Builder::new()
            .with_endpoint(&self.endpoint)
            .with_bucket_name(&self.bucket)
            .with_access_key_id(ACCESS_KEY)
            .with_secret_access_key(SECRET_KEY)
            .with_region("us-east-1")
            .with_allow_http(true)
            .build()
            .unwrap()
    }

    /// Uploads every file under `dir` with PUT requests, keyed `<prefix><relative path>`.
    pub fn upload(&self, dir: &Path, prefix: &str) -> usize {
        use futures::StreamExt;
        use object_store::ObjectStoreExt;
        let files = super::files_under(dir);
        let client = self.client();
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(async {
            futures::stream::iter(files.iter())
                .map(|p| {
                    let key = format!("{prefix}{}", p.strip_prefix(dir).unwrap().to_str().unwrap());
                    let body = std::fs::read(p).unwrap();
                    let client = &client;
                    async move { client.put(&object_store::path::Path::from(key), body.into()).await.unwrap() }
                })
                .buffer_unordered(16)
                .collect::<Vec<_>>()
                .await
        });
        files.len()
    }

    pub fn add_rule(&self, pattern: &str, fault: Fault, times: u32) {
        self.state.rules.lock().unwrap().push(Rule {
            pattern: pattern.to_owned(),
            fault,
            times,
        });
    }

    pub fn clear_rules(&self) {
        self.state.rules.lock().unwrap().clear();
    }

    /// Every request so far, in arrival order.
    pub fn seen(&self) -> Vec<Seen> {
        self.state.seen.lock().unwrap().clone()
    }

    pub fn clear_seen(&self) {
        self.state.seen.lock().unwrap().clear();
    }

    pub fn faults_injected(&self) -> u64 {
        *self.state.faults_injected.lock().unwrap()
    }

    /// Keys stored under `prefix` (read from the folder behind the server).
    pub fn keys(&self, prefix: &str) -> Vec<String> {
        let base = self.root.path().join(&self.bucket);
        super::files_under(&base)
            .into_iter()
            .map(|p| p.strip_prefix(&base).unwrap().to_str().unwrap().to_owned())
            .filter(|k| k.starts_with(prefix))
            .collect()
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

async fn serve(
    root: PathBuf,
    state: Arc<State>,
    addr_tx: std::sync::mpsc::Sender<std::net::SocketAddr>,
    mut stop: tokio::sync::oneshot::Receiver<()>,
) {
    let fs = s3s_fs::FileSystem::new(&root).unwrap();
    let s3 = {
        let mut b = s3s::service::S3ServiceBuilder::new(fs);
        b.set_auth(s3s::auth::SimpleAuth::from_single(ACCESS_KEY, SECRET_KEY));
        b.build()
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    addr_tx.send(listener.local_addr().unwrap()).unwrap();
    let http = ConnBuilder::new(TokioExecutor::new());
    loop {
        let socket = tokio::select! {
            r = listener.accept() => match r { Ok((s, _)) => s, Err(_) => continue },
            _ = &mut stop => return,
        };
        let (s3, state) = (s3.clone(), state.clone());
        let service = hyper::service::service_fn(move |req: http::Request<hyper::body::Incoming>| {
            let (s3, state) = (s3.clone(), state.clone());
            async move { handle(&s3, &state, req).await }
        });
        let conn = http.serve_connection(TokioIo::new(socket), service).into_owned();
        tokio::spawn(async move {
            let _ = conn.await;
        });
    }
}

async fn handle(
    s3: &s3s::service::S3Service,
    state: &State,
    req: http::Request<hyper::body::Incoming>,
) -> Result<s3s::HttpResponse, s3s::HttpError> {
    let path = percent_decode(req.uri().path());
    let query = req.uri().query().unwrap_or("").to_owned();
    let method = req.method().as_str().to_owned();
    let target = format!("{method} {path}?{query}");
    state.seen.lock().unwrap().push(Seen { method, path, query });
    let fault = {
        let mut rules = state.rules.lock().unwrap();
        let hit = rules.iter_mut().find(|r| r.times > 0 && target.contains(&r.pattern));
        hit.map(|r| {
            if r.times != u32::MAX {
                r.times -= 1;
            }
            r.fault
        })
    };
    if let Some(f) = fault {
        *state.faults_injected.lock().unwrap() += 1;
        let error = |status: u16, code: &str| {
            let body = format!(
                "<?xml version=\"1.0\" encoding=\"UTF-8\"?><Error><Code>{code}</Code><Message>injected by the test server</Message></Error>"
            );
            Ok(http::Response::builder().status(status).body(s3s::Body::from(body)).unwrap())
        };
        match f {
            Fault::SlowDown => return error(503, "SlowDown"),
            Fault::InternalError => return error(500, "InternalError"),
            Fault::Drop => return Err(s3s::HttpError::new("connection dropped by the test server".into())),
            Fault::Slow(d) => tokio::time::sleep(d).await,
        }
    }
    hyper::service::Service::call(s3, req).await
}

fn percent_decode(s: &str) -> String {
    url::form_urlencoded::parse(format!("x={}", s.replace('+', "%2B")).as_bytes())
        .next()
        .map(|(_, v)| v.into_owned())
        .unwrap_or_default()
}
