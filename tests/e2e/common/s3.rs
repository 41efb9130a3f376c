//! A real S3 protocol server for the tests: `s3s` over a folder (`s3s-fs`), served by hyper on
//! 127.0.0.1 in its own thread and runtime, with static credentials. A wrapper around the
//! service records every request and injects faults (503 SlowDown, 500, dropped connections,
//! slow responses) by rules, so the tests see what a real S3 client sees.
//!
//! ListObjects(V2) is answered here, not by s3s-fs: s3s-fs 0.14 walks the whole bucket folder
//! for every 1,000-key page, which makes a 50,000-key listing take a minute where S3 and MinIO
//! take seconds. [`list_page`] walks only what a page needs. `benches/s3_server.rs` serves a
//! folder with this same module.
#![allow(dead_code)]

use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto::Builder as ConnBuilder;
use s3s::dto::{
    AbortMultipartUploadInput, AbortMultipartUploadOutput, CompleteMultipartUploadInput, CompleteMultipartUploadOutput, CopyObjectInput, CopyObjectOutput,
    CreateBucketInput, CreateBucketOutput, CreateMultipartUploadInput, CreateMultipartUploadOutput, DeleteBucketInput, DeleteBucketOutput, DeleteObjectInput,
    DeleteObjectOutput, DeleteObjectsInput, DeleteObjectsOutput, GetBucketLocationInput, GetBucketLocationOutput, GetObjectInput, GetObjectOutput,
    HeadBucketInput, HeadBucketOutput, HeadObjectInput, HeadObjectOutput, ListBucketsInput, ListBucketsOutput, ListPartsInput, ListPartsOutput, PutObjectInput,
    PutObjectOutput, UploadPartCopyInput, UploadPartCopyOutput, UploadPartInput, UploadPartOutput,
};
use s3s::dto::{CommonPrefix, ListObjectsInput, ListObjectsOutput, ListObjectsV2Input, ListObjectsV2Output, Object, Timestamp};
use s3s::{S3Request, S3Response, S3Result, s3_error};

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
        url::form_urlencoded::parse(self.query.as_bytes()).find(|(k, _)| k == name).map(|(_, v)| v.into_owned())
    }
}

#[derive(Default)]
struct State {
    /// Keep every request in `seen` (the tests); a bench server serving for hours does not.
    record: bool,
    rules: Mutex<Vec<Rule>>,
    seen: Mutex<Vec<Seen>>,
    faults_injected: Mutex<u64>,
    /// Object GETs being answered now, and the most there were at once.
    gets_in_flight: AtomicUsize,
    max_gets_in_flight: AtomicUsize,
    /// Requests the credentials still serve before they expire (`usize::MAX`: never).
    credential_uses_left: AtomicUsize,
}

/// Counts an object GET as in flight until its answer (headers) is ready.
struct InFlight<'a>(&'a State);

impl<'a> InFlight<'a> {
    fn enter(state: &'a State) -> InFlight<'a> {
        let now = state.gets_in_flight.fetch_add(1, Ordering::SeqCst) + 1;
        state.max_gets_in_flight.fetch_max(now, Ordering::SeqCst);
        InFlight(state)
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.gets_in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Who answers ListObjects(V2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Listing {
    /// [`list_page`]: walks only the folder the prefix names, from the resume point on.
    Walk,
    /// s3s-fs's own (the whole bucket per page), to compare with.
    Stock,
}

pub struct S3Server {
    pub endpoint: String,
    pub bucket: String,
    /// The folder behind the server (`<root>/<bucket>/<key>`).
    pub root: PathBuf,
    /// Deletes `root` with the server, when the server made it.
    _temp: Option<tempfile::TempDir>,
    state: Arc<State>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
}

impl S3Server {
    /// Starts a server with one empty bucket.
    pub fn start(bucket: &str) -> S3Server {
        S3Server::start_with(bucket, Listing::Walk)
    }

    /// [`S3Server::start`] with a choice of listing.
    pub fn start_with(bucket: &str, listing: Listing) -> S3Server {
        let temp = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(temp.path().join(bucket)).unwrap();
        let root = temp.path().to_path_buf();
        launch(root, Some(temp), bucket, 0, listing, true).unwrap()
    }

    /// Serves an existing folder (each subfolder a bucket) on 127.0.0.1:`port` (0: any free
    /// port), recording no requests: the server of `benches/s3_server.rs`.
    pub fn serve_folder(root: &Path, port: u16, listing: Listing) -> io::Result<S3Server> {
        launch(root.to_path_buf(), None, "", port, listing, false)
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
        let files = files_under(dir);
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
        self.state.rules.lock().unwrap().push(Rule { pattern: pattern.to_owned(), fault, times });
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

    /// The most object GETs the server was answering at once (a `Slow` fault holds one open).
    pub fn max_gets_in_flight(&self) -> usize {
        self.state.max_gets_in_flight.load(Ordering::SeqCst)
    }

    /// The credentials expire after `requests` more requests: every later one is refused with
    /// `400 ExpiredToken`, as S3 answers a session token past its expiry.
    pub fn expire_credentials_after(&self, requests: usize) {
        self.state.credential_uses_left.store(requests, Ordering::SeqCst);
    }

    /// New credentials: requests are served again.
    pub fn renew_credentials(&self) {
        self.state.credential_uses_left.store(usize::MAX, Ordering::SeqCst);
    }

    pub fn faults_injected(&self) -> u64 {
        *self.state.faults_injected.lock().unwrap()
    }

    /// Keys stored under `prefix` (read from the folder behind the server).
    pub fn keys(&self, prefix: &str) -> Vec<String> {
        let base = self.root.join(&self.bucket);
        files_under(&base).into_iter().map(|p| p.strip_prefix(&base).unwrap().to_str().unwrap().to_owned()).filter(|k| k.starts_with(prefix)).collect()
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

/// Every regular file under `root`, recursively, sorted.
pub fn files_under(root: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.push(p);
            }
        }
    }
    out.sort();
    out
}

/// Starts the server's thread and runtime and waits until it listens.
fn launch(root: PathBuf, temp: Option<tempfile::TempDir>, bucket: &str, port: u16, listing: Listing, record: bool) -> io::Result<S3Server> {
    let state = Arc::new(State { record, credential_uses_left: AtomicUsize::new(usize::MAX), ..State::default() });
    let (addr_tx, addr_rx) = std::sync::mpsc::channel();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let (fs_root, st) = (root.clone(), state.clone());
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build();
        match rt {
            Ok(rt) => rt.block_on(serve(fs_root, st, port, listing, addr_tx, stop_rx)),
            Err(e) => drop(addr_tx.send(Err(e))),
        }
    });
    let addr = addr_rx.recv().map_err(io::Error::other)??;
    Ok(S3Server { endpoint: format!("http://{addr}"), bucket: bucket.to_owned(), root, _temp: temp, state, stop: Some(stop_tx) })
}

async fn serve(
    root: PathBuf,
    state: Arc<State>,
    port: u16,
    listing: Listing,
    addr_tx: std::sync::mpsc::Sender<io::Result<std::net::SocketAddr>>,
    mut stop: tokio::sync::oneshot::Receiver<()>,
) {
    let started = async {
        let store = Store::new(&root, listing)?;
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await?;
        io::Result::Ok((store, listener))
    };
    let (store, listener) = match started.await {
        Ok(x) => x,
        Err(e) => return drop(addr_tx.send(Err(e))),
    };
    let s3 = {
        let mut b = s3s::service::S3ServiceBuilder::new(store);
        b.set_auth(s3s::auth::SimpleAuth::from_single(ACCESS_KEY, SECRET_KEY));
        b.build()
    };
    if addr_tx.send(listener.local_addr()).is_err() {
        return;
    }
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

async fn handle(s3: &s3s::service::S3Service, state: &State, req: http::Request<hyper::body::Incoming>) -> Result<s3s::HttpResponse, s3s::HttpError> {
    let path = percent_decode(req.uri().path());
    let query = req.uri().query().unwrap_or("").to_owned();
    let method = req.method().as_str().to_owned();
    let target = format!("{method} {path}?{query}");
    let _in_flight = (method == "GET" && path.trim_matches('/').contains('/')).then(|| InFlight::enter(state));
    if state.record {
        state.seen.lock().unwrap().push(Seen { method, path, query });
    }
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
    let error = |status: u16, code: &str| {
        let body = format!("<?xml version=\"1.0\" encoding=\"UTF-8\"?><Error><Code>{code}</Code><Message>injected by the test server</Message></Error>");
        Ok(http::Response::builder().status(status).body(s3s::Body::from(body)).unwrap())
    };
    let expired =
        state.credential_uses_left.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| (n != usize::MAX && n > 0).then(|| n - 1)).is_err_and(|n| n == 0);
    if expired {
        return error(400, "ExpiredToken");
    }
    if let Some(f) = fault {
        *state.faults_injected.lock().unwrap() += 1;
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
    url::form_urlencoded::parse(format!("x={}", s.replace('+', "%2B")).as_bytes()).next().map(|(_, v)| v.into_owned()).unwrap_or_default()
}

/// s3s-fs, with ListObjects(V2) answered by [`list_page`] (unless `listing` is
/// [`Listing::Stock`]).
struct Store {
    fs: s3s_fs::FileSystem,
    /// The root s3s-fs serves (canonical, as s3s-fs makes it): a bucket is a folder in it.
    root: PathBuf,
    listing: Listing,
    /// Held by conditional PUTs: s3s-fs checks `If-None-Match` and then writes, so two racing
    /// creates of one key could both succeed, where S3 lets exactly one win (Delta commits
    /// from concurrent writers rely on it).
    conditional: tokio::sync::Mutex<()>,
}

impl Store {
    fn new(root: &Path, listing: Listing) -> io::Result<Store> {
        let fs = s3s_fs::FileSystem::new(root).map_err(|e| io::Error::other(format!("{e:?}")))?;
        Ok(Store { fs, root: std::fs::canonicalize(root)?, listing, conditional: tokio::sync::Mutex::new(()) })
    }
}

/// `impl S3 for Store`: the listed operations go to s3s-fs as they are (they are every one
/// s3s-fs 0.14 implements; the others answer NotImplemented, as from s3s-fs), then the items
/// in braces, Store's own.
macro_rules! impl_s3_delegating_to_s3s_fs {
    ($($op:ident($input:ty) -> $output:ty;)* { $($own:tt)* }) => {
        #[async_trait::async_trait]
        impl s3s::S3 for Store {
            $(
                async fn $op(&self, req: S3Request<$input>) -> S3Result<S3Response<$output>> {
                    s3s::S3::$op(&self.fs, req).await
                }
            )*
            $($own)*
        }
    };
}

impl_s3_delegating_to_s3s_fs! {
    abort_multipart_upload(AbortMultipartUploadInput) -> AbortMultipartUploadOutput;
    complete_multipart_upload(CompleteMultipartUploadInput) -> CompleteMultipartUploadOutput;
    copy_object(CopyObjectInput) -> CopyObjectOutput;
    create_bucket(CreateBucketInput) -> CreateBucketOutput;
    create_multipart_upload(CreateMultipartUploadInput) -> CreateMultipartUploadOutput;
    delete_bucket(DeleteBucketInput) -> DeleteBucketOutput;
    delete_object(DeleteObjectInput) -> DeleteObjectOutput;
    delete_objects(DeleteObjectsInput) -> DeleteObjectsOutput;
    get_bucket_location(GetBucketLocationInput) -> GetBucketLocationOutput;
    get_object(GetObjectInput) -> GetObjectOutput;
    head_bucket(HeadBucketInput) -> HeadBucketOutput;
    head_object(HeadObjectInput) -> HeadObjectOutput;
    list_buckets(ListBucketsInput) -> ListBucketsOutput;
    list_parts(ListPartsInput) -> ListPartsOutput;
    upload_part(UploadPartInput) -> UploadPartOutput;
    upload_part_copy(UploadPartCopyInput) -> UploadPartCopyOutput;
    {
        /// PutObject, conditional ones one at a time (see [`Store::conditional`]).
        async fn put_object(&self, req: S3Request<PutObjectInput>) -> S3Result<S3Response<PutObjectOutput>> {
            if req.input.if_none_match.is_none() && req.input.if_match.is_none() {
                return s3s::S3::put_object(&self.fs, req).await;
            }
            let _one = self.conditional.lock().await;
            s3s::S3::put_object(&self.fs, req).await
        }

        /// ListObjects (v1) through V2, converted as s3s-fs converts it.
        async fn list_objects(&self, req: S3Request<ListObjectsInput>) -> S3Result<S3Response<ListObjectsOutput>> {
            let v2 = s3s::S3::list_objects_v2(self, req.map_input(Into::into)).await?;
            Ok(v2.map_output(|v2| ListObjectsOutput {
                contents: v2.contents,
                common_prefixes: v2.common_prefixes,
                delimiter: v2.delimiter,
                encoding_type: v2.encoding_type,
                name: v2.name,
                prefix: v2.prefix,
                max_keys: v2.max_keys,
                is_truncated: v2.is_truncated,
                next_marker: v2.next_continuation_token,
                ..Default::default()
            }))
        }

        async fn list_objects_v2(&self, req: S3Request<ListObjectsV2Input>) -> S3Result<S3Response<ListObjectsV2Output>> {
            if self.listing == Listing::Stock {
                return s3s::S3::list_objects_v2(&self.fs, req).await;
            }
            let input = req.input;
            let bucket = self.root.join(&input.bucket);
            if !s3s::path::check_bucket_name(&input.bucket) || !bucket.is_dir() {
                return Err(s3_error!(NoSuchBucket));
            }
            // As s3s-fs: the prefix without leading slashes, resume after the later of the
            // continuation token (the last key or common prefix of the previous page) and
            // start-after, 1,000 keys unless asked otherwise.
            let prefix = input.prefix.as_deref().unwrap_or("").trim_start_matches('/').to_owned();
            let delimiter = input.delimiter.clone().filter(|d| !d.is_empty());
            let after = input.continuation_token.iter().chain(&input.start_after).max().cloned().unwrap_or_default();
            let max_keys = input.max_keys.unwrap_or(1000);
            let limit = usize::try_from(max_keys).unwrap_or(1000);
            let page = tokio::task::spawn_blocking(move || list_page(&bucket, &prefix, delimiter.as_deref(), &after, limit))
                .await
                .map_err(s3s::S3Error::internal_error)?
                .map_err(s3s::S3Error::internal_error)?;
            let key_count = i32::try_from(page.objects.len() + page.prefixes.len()).map_err(s3s::S3Error::internal_error)?;
            let output = ListObjectsV2Output {
                key_count: Some(key_count),
                max_keys: Some(max_keys),
                is_truncated: Some(page.truncated),
                contents: (!page.objects.is_empty()).then_some(page.objects),
                common_prefixes: (!page.prefixes.is_empty())
                    .then(|| page.prefixes.into_iter().map(|p| CommonPrefix { prefix: Some(p) }).collect()),
                continuation_token: input.continuation_token,
                next_continuation_token: page.truncated.then_some(page.last).flatten(),
                delimiter: input.delimiter,
                encoding_type: input.encoding_type,
                name: Some(input.bucket),
                prefix: input.prefix,
                start_after: input.start_after,
                ..Default::default()
            };
            Ok(S3Response::new(output))
        }
    }
}

/// One ListObjectsV2 page.
#[derive(Debug, Default)]
pub struct Page {
    pub objects: Vec<Object>,
    pub prefixes: Vec<String>,
    /// More keys or common prefixes follow.
    pub truncated: bool,
    /// The last key or common prefix of the page: the continuation token.
    pub last: Option<String>,
}

/// The page of `bucket` (a folder) after the key `after`: up to `max_keys` keys starting with
/// `prefix`, in S3 (bytewise) order, those with `delimiter` after the prefix rolled up into
/// common prefixes (one a page entry, never one at or before `after`). Keys are the folder's
/// files, as s3s-fs lists them: its own files (metadata, uploads, temporary files) live beside
/// the buckets, not in them, so nothing in a bucket is left out; names that are not UTF-8 are.
/// Only the folder the prefix names is read, subtrees wholly at or before `after` or inside a
/// common prefix already met are skipped unread, and the walk stops one entry past the page:
/// a page costs the folders on the path to `after` plus its own keys, not the bucket.
pub fn list_page(bucket: &Path, prefix: &str, delimiter: Option<&str>, after: &str, max_keys: usize) -> io::Result<Page> {
    let mut page = Page::default();
    if max_keys == 0 {
        return Ok(page);
    }
    let mut walk = Walk::new(bucket, prefix)?;
    let mut rolled_up: Option<String> = None;
    while let Some((key, path)) = walk.next(after, rolled_up.as_deref())? {
        let common = delimiter.and_then(|d| key[prefix.len()..].find(d).map(|at| key[..prefix.len() + at + d.len()].to_owned()));
        if let Some(common) = &common {
            rolled_up = Some(common.clone());
            if common.as_str() <= after {
                continue;
            }
        }
        if page.objects.len() + page.prefixes.len() == max_keys {
            page.truncated = true;
            break;
        }
        match common {
            Some(common) => {
                page.last = Some(common.clone());
                page.prefixes.push(common);
            }
            None => {
                let meta = match std::fs::symlink_metadata(&path) {
                    Ok(m) => m,
                    Err(e) if e.kind() == io::ErrorKind::NotFound => continue, // deleted since listed
                    Err(e) => return Err(e),
                };
                page.objects.push(Object {
                    key: Some(key.clone()),
                    last_modified: Some(Timestamp::from(meta.modified()?)),
                    size: Some(i64::try_from(meta.len()).map_err(io::Error::other)?),
                    ..Default::default()
                });
                page.last = Some(key);
            }
        }
    }
    Ok(page)
}

/// A depth-first walk of a bucket folder in key order, from the folder a prefix names.
struct Walk {
    stack: Vec<Frame>,
}

/// A folder being walked: its path, its key prefix (`a/b/`), its entries not yet visited.
struct Frame {
    dir: PathBuf,
    key_prefix: String,
    entries: std::vec::IntoIter<Entry>,
}

struct Entry {
    name: String,
    dir: bool,
}

impl Walk {
    fn new(bucket: &Path, prefix: &str) -> io::Result<Walk> {
        let (dir, name_prefix) = prefix.split_at(prefix.rfind('/').map_or(0, |at| at + 1));
        // s3s-fs resolves keys to normalised paths: no key has an empty, `.` or `..` segment.
        if dir.split_terminator('/').any(|s| matches!(s, "" | "." | "..")) {
            return Ok(Walk { stack: Vec::new() });
        }
        let path = bucket.join(dir);
        let entries = sorted_entries(&path, name_prefix)?;
        Ok(Walk { stack: vec![Frame { dir: path, key_prefix: dir.to_owned(), entries: entries.into_iter() }] })
    }

    /// The next file after the key `after` whose key does not start with `skip`: its key and
    /// path. Folders whose keys all lie at or before `after`, or start with `skip`, are not read.
    fn next(&mut self, after: &str, skip: Option<&str>) -> io::Result<Option<(String, PathBuf)>> {
        while let Some(frame) = self.stack.last_mut() {
            let Some(entry) = frame.entries.next() else {
                self.stack.pop();
                continue;
            };
            let mut key = format!("{}{}", frame.key_prefix, entry.name);
            let path = frame.dir.join(&entry.name);
            let skipped = |k: &str| skip.is_some_and(|s| k.starts_with(s));
            if entry.dir {
                key.push('/');
                // Every key below starts with `key`: all are before `after` when `key` is and
                // `after` is not itself below it.
                let behind = key.as_str() < after && !after.starts_with(key.as_str());
                if !behind && !skipped(&key) {
                    let entries = sorted_entries(&path, "")?;
                    self.stack.push(Frame { dir: path, key_prefix: key, entries: entries.into_iter() });
                }
            } else if key.as_str() > after && !skipped(&key) {
                return Ok(Some((key, path)));
            }
        }
        Ok(None)
    }
}

/// The entries of `dir` whose names start with `name_prefix`, in the order of their keys: a
/// folder `a` holds keys `a/…`, so it sorts as `a/`, after a file `a-b` (`-` < `/`). A folder
/// that is gone (deleted meanwhile) or is a file is empty.
fn sorted_entries(dir: &Path, name_prefix: &str) -> io::Result<Vec<Entry>> {
    let read = match std::fs::read_dir(dir) {
        Ok(r) => r,
        Err(e) if matches!(e.kind(), io::ErrorKind::NotFound | io::ErrorKind::NotADirectory) => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let mut entries = Vec::new();
    for e in read {
        let e = e?;
        let Ok(name) = e.file_name().into_string() else { continue };
        if !name.starts_with(name_prefix) {
            continue;
        }
        let dir = match e.file_type() {
            Ok(t) => t.is_dir(),
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e),
        };
        entries.push(Entry { name, dir });
    }
    entries.sort_by(|a, b| a.key_bytes().cmp(b.key_bytes()));
    Ok(entries)
}

impl Entry {
    /// The entry's name as its keys begin: `a/` for a folder.
    fn key_bytes(&self) -> impl Iterator<Item = u8> + '_ {
        self.name.bytes().chain(self.dir.then_some(b'/'))
    }
}
