//! Finding and reading CloudTrail archives: local files and folders, or `s3://bucket/prefix`.
//!
//! Keys are classified by the layout AWS delivers
//! (`[prefix/]AWSLogs/[o-…/]<account>/CloudTrail/<region>/YYYY/MM/DD/<file>`, and
//! `CloudTrail-NetworkActivity/` beside `CloudTrail/` for network-activity events): event logs
//! are read, and so are AWS's aggregated-event summaries (`CloudTrail-Aggregated/`, marked
//! [`Content::Aggregated`]), while digests, Insights files and other services' logs in a shared
//! bucket are skipped and counted. Files outside that layout (exports, test corpora) are read
//! when they look like JSON. Compression is detected from the bytes, not the name.

pub mod follow;
pub mod records;

use std::fmt;
use std::fs::File;
use std::io::{self, BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use chrono::NaiveDate;
use futures::TryStreamExt;
use object_store::path::Path as ObjectPath;
use object_store::{ObjectMeta, ObjectStore, ObjectStoreExt};
use url::Url;

pub use records::{Item, Layout, RecordReader, StreamError, StreamErrorKind};

/// Errors finding or opening sources. Each names the location it is about.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error("`{location}` is not a readable source: {reason}")]
    InvalidLocation { location: String, reason: String },
    #[error("`{location}` is not a readable source")]
    Location {
        location: String,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error("cannot list `{location}`")]
    List {
        location: String,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error("cannot open `{location}`")]
    Open {
        location: String,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

impl SourceError {
    /// Whether the store refused the credentials themselves (expired or unknown), not this
    /// object: every later request would fail the same way, so a run stops instead of
    /// reporting each remaining object.
    pub fn refuses_credentials(&self) -> bool {
        refuses_credentials(&crate::error::report(self))
    }
}

/// The error codes S3 (and STS-issued sessions) answer when the request's credentials are no
/// longer or never were valid, as opposed to a refusal of one object (`AccessDenied`).
const CREDENTIAL_ERRORS: [&str; 5] = ["ExpiredToken", "InvalidToken", "TokenRefreshRequired", "InvalidAccessKeyId", "InvalidClientTokenId"];

/// Whether an error's text carries one of [`CREDENTIAL_ERRORS`] (object_store reports S3's
/// error body as text, without a code to match).
pub fn refuses_credentials(error: &str) -> bool {
    CREDENTIAL_ERRORS.iter().any(|code| error.contains(code))
}

/// Where archives are read from.
#[derive(Clone)]
pub enum Location {
    /// A file or a folder on this machine (absolute).
    Local(PathBuf),
    /// An object store prefix (`s3://bucket/prefix`). `store` is rooted at the prefix.
    Remote { url: Url, store: Arc<dyn ObjectStore> },
}

impl fmt::Debug for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{self}")
    }
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Location::Local(p) => write!(f, "{}", p.display()),
            Location::Remote { url, .. } => write!(f, "{url}"),
        }
    }
}

/// Registers the `s3://` and `s3a://` schemes with delta-rs's object-store and log-store
/// factories (once per process).
///
/// The store is object_store's own S3 client, not the AWS SDK: it builds in seconds rather than
/// minutes, and covers the credentials a server or CI job has (the `AWS_*` environment
/// variables, web identity tokens, ECS task roles and EC2 instance roles). Named profiles and
/// SSO are not read: `eval "$(aws configure export-credentials --format env)"` turns any profile
/// into environment variables. `AWS_ENDPOINT_URL` (with `AWS_ALLOW_HTTP=true` for plain http)
/// points it at S3-compatible stores. Commits use S3's conditional writes (`If-None-Match`), so
/// two writers can never both create one table version.
pub fn register_object_stores() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        use deltalake::logstore::{logstore_factories, object_store_factories};
        let store = Arc::new(S3StoreFactory);
        let log = Arc::new(S3LogStoreFactory);
        for scheme in ["s3://", "s3a://"] {
            let Ok(url) = Url::parse(scheme) else { continue };
            object_store_factories().insert(url.clone(), store.clone());
            logstore_factories().insert(url, log.clone());
        }
    });
}

/// Builds an S3 store from the environment, the URL and the options delta-rs parsed
/// ([`storage_options`] and any `aws_*` key).
struct S3StoreFactory;

impl deltalake::logstore::ObjectStoreFactory for S3StoreFactory {
    fn parse_url_opts(&self, url: &Url, config: &deltalake::logstore::StorageConfig) -> deltalake::DeltaResult<(Arc<dyn ObjectStore>, ObjectPath)> {
        use object_store::aws::{AmazonS3Builder, AmazonS3ConfigKey};
        use std::str::FromStr;
        let mut builder = AmazonS3Builder::from_env().with_url(url.as_str()).with_retry(config.retry.clone());
        for (key, value) in &config.raw {
            if let Ok(key) = AmazonS3ConfigKey::from_str(&key.to_ascii_lowercase()) {
                builder = builder.with_config(key, value.clone());
            }
        }
        let store = builder.build()?;
        let prefix = ObjectPath::parse(url.path())?;
        Ok((Arc::new(store), prefix))
    }
}

/// Delta's default log store: commits are put-if-absent, which S3 honours natively.
struct S3LogStoreFactory;

impl deltalake::logstore::LogStoreFactory for S3LogStoreFactory {
    fn with_options(
        &self,
        prefixed_store: Arc<dyn ObjectStore>,
        root_store: Arc<dyn ObjectStore>,
        location: &Url,
        options: &deltalake::logstore::StorageConfig,
    ) -> deltalake::DeltaResult<Arc<dyn deltalake::logstore::LogStore>> {
        Ok(deltalake::logstore::default_logstore(prefixed_store, root_store, location, options))
    }
}

/// Object-store options from the environment, for every S3 store Prism opens (sources, lakes,
/// Insights output). Requests that fail with 5xx, 429 or a broken connection (also mid-body)
/// are retried with exponential backoff by object_store; these tune how long:
/// `PRISM_S3_MAX_RETRIES` (default 10), `PRISM_S3_RETRY_TIMEOUT` (default 3 min, the total
/// time spent retrying one request), `PRISM_S3_INIT_BACKOFF` (default 100 ms),
/// `PRISM_S3_MAX_BACKOFF` (default 15 s) and `PRISM_S3_TIMEOUT` (one request, default 30 s).
/// Durations are humantime (`500ms`, `2s`, `3m`).
pub fn storage_options() -> Vec<(String, String)> {
    [
        ("PRISM_S3_MAX_RETRIES", "max_retries"),
        ("PRISM_S3_RETRY_TIMEOUT", "retry_timeout"),
        ("PRISM_S3_INIT_BACKOFF", "init_backoff"),
        ("PRISM_S3_MAX_BACKOFF", "max_backoff"),
        ("PRISM_S3_TIMEOUT", "timeout"),
    ]
    .into_iter()
    .filter_map(|(var, key)| std::env::var(var).ok().filter(|v| !v.is_empty()).map(|v| (key.to_owned(), v)))
    .collect()
}

/// Opens the object store for `url` with [`storage_options`].
pub fn store_for(url: &Url) -> Result<Arc<dyn ObjectStore>, deltalake::DeltaTableError> {
    register_object_stores();
    deltalake::logstore::store_for(url, storage_options())
}

impl Location {
    /// Parses a command-line location: `s3://bucket/prefix`, `file:///path`, or a path.
    pub fn parse(s: &str) -> Result<Location, SourceError> {
        let invalid = |reason: String| SourceError::InvalidLocation { location: s.to_owned(), reason };
        let failed = |source: Box<dyn std::error::Error + Send + Sync>| SourceError::Location { location: s.to_owned(), source };
        if let Some((scheme, _)) = s.split_once("://") {
            let url = Url::parse(s).map_err(|e| failed(e.into()))?;
            if scheme == "file" {
                let path = url.to_file_path().map_err(|_| invalid("not a local file URL".into()))?;
                return Location::parse_local(&path).map_err(|e| failed(e.into()));
            }
            if !matches!(scheme, "s3" | "s3a") {
                return Err(invalid(format!("unsupported scheme `{scheme}://` (use a path or s3://bucket/prefix)")));
            }
            if url.host_str().unwrap_or("").is_empty() {
                return Err(invalid("the URL names no bucket".into()));
            }
            let store = store_for(&url).map_err(|e| failed(e.into()))?;
            return Ok(Location::Remote { url, store });
        }
        Location::parse_local(Path::new(s)).map_err(|e| failed(e.into()))
    }

    fn parse_local(path: &Path) -> Result<Location, io::Error> {
        let abs = std::fs::canonicalize(path)?;
        Ok(Location::Local(abs))
    }

    /// Lists every object below this location, sorted by key, classified.
    pub async fn list(&self, range: &DateRange) -> Result<Listing, SourceError> {
        let mut listing = Listing::default();
        match self {
            Location::Local(root) => {
                let root = root.clone();
                let found = tokio::task::spawn_blocking(move || walk_local(&root))
                    .await
                    .map_err(|e| SourceError::List { location: self.to_string(), source: e.into() })?
                    .map_err(|e| SourceError::List { location: self.to_string(), source: e.into() })?;
                for (path, size) in found {
                    let display = path.display().to_string();
                    listing.push(display, size, ObjectRef::Local(path), range);
                }
            }
            Location::Remote { url, store } => {
                let list_err = |e: object_store::Error| SourceError::List { location: url.to_string(), source: e.into() };
                let mut objects = list_remote(store.as_ref(), url, day_folders(range).as_deref()).await.map_err(list_err)?;
                objects.sort_by(|a, b| a.location.cmp(&b.location));
                let base = url.as_str().trim_end_matches('/');
                for meta in objects {
                    let display = format!("{base}/{}", meta.location);
                    listing.push(display, meta.size, ObjectRef::Remote { store: store.clone(), path: meta.location }, range);
                }
            }
        }
        Ok(listing)
    }
}

/// Delivery date folders to list for a range with both ends (`to` + 1 for late deliveries); None
/// when the range is open on either side. Capped at 100 years so a typo cannot explode.
fn day_folders(range: &DateRange) -> Option<Vec<NaiveDate>> {
    let (from, to) = (range.from?, range.to? + chrono::Days::new(1));
    let days: Vec<NaiveDate> = from.iter_days().take_while(|d| *d <= to).take(36_600).collect();
    Some(days)
}

/// How many listings run at once: one per region of an organization's trail bucket with a few
/// accounts, and S3 answers each page in about 50 ms.
const PARALLEL_LISTINGS: usize = 16;

/// Lists an object store location. One that is or contains an `AWSLogs/` folder is listed with
/// delimiters down to the `AWSLogs/[o-…/]<account>/CloudTrail[-NetworkActivity]/<region>/`
/// folders, then each
/// region folder is listed on its own, [`PARALLEL_LISTINGS`] at a time, instead of one page
/// after the other for the whole archive. With `days`, only those date folders of each region
/// are listed (a one-week range lists a week of keys, not a year's), and the digest, Insight
/// and other services' folders beside `CloudTrail/` are not listed at all; without, they are
/// listed in full, so the listing holds every key a flat listing would. Anything beside
/// `AWSLogs/` is listed in full. Unsorted.
async fn list_remote(store: &dyn ObjectStore, url: &Url, days: Option<&[NaiveDate]>) -> Result<Vec<ObjectMeta>, object_store::Error> {
    use futures::StreamExt;
    let found = descend(store, url, days.is_none()).await?;
    let mut objects = found.objects;
    let mut folders = found.in_full;
    match days {
        Some(days) => folders.extend(found.regions.iter().flat_map(|r| {
            days.iter().map(move |d| Some(r.clone().join(d.format("%Y").to_string()).join(d.format("%m").to_string()).join(d.format("%d").to_string())))
        })),
        None => folders.extend(found.regions.into_iter().map(Some)),
    }
    let listed: Vec<Result<Vec<ObjectMeta>, object_store::Error>> = futures::stream::iter(folders)
        .map(|p| async move { store.list(p.as_ref()).try_collect::<Vec<_>>().await })
        .buffer_unordered(PARALLEL_LISTINGS)
        .collect()
        .await;
    for l in listed {
        objects.extend(l?);
    }
    Ok(objects)
}

/// What [`descend`] found: objects met on the way down, the region folders, and the folders to
/// list in full (`None`: the whole location).
#[derive(Default)]
struct Descent {
    objects: Vec<ObjectMeta>,
    regions: Vec<ObjectPath>,
    in_full: Vec<Option<ObjectPath>>,
}

/// Walks down the AWS layout with delimiter listings to the [`TRAIL_FOLDERS`]' region folders
/// (the accounts' levels [`PARALLEL_LISTINGS`] at a time). Without an `AWSLogs/` folder (at the
/// location or directly in it) the whole location is to be listed in full. `services`: list
/// each account folder too, so that its digest, Insight and other services' folders are listed
/// in full; otherwise only the account's event folders are.
async fn descend(store: &dyn ObjectStore, url: &Url, services: bool) -> Result<Descent, object_store::Error> {
    use futures::StreamExt;
    let last = |p: &ObjectPath| p.parts().next_back().map(|x| x.as_ref().to_owned()).unwrap_or_default();
    let mut found = Descent::default();
    // Where the AWS layout starts: the location itself (`…/AWSLogs/`) or a folder in it.
    let mut aws_logs = Vec::new();
    if url.path().trim_end_matches('/').rsplit('/').next() == Some("AWSLogs") {
        aws_logs.push(None);
    } else {
        let top = store.list_with_delimiter(None).await?;
        let (logs, beside): (Vec<_>, Vec<_>) = top.common_prefixes.into_iter().partition(|p| last(p) == "AWSLogs");
        if logs.is_empty() {
            found.in_full.push(None);
            return Ok(found);
        }
        found.objects.extend(top.objects);
        found.in_full.extend(beside.into_iter().map(Some));
        aws_logs.extend(logs.into_iter().map(Some));
    }
    // AWSLogs/[o-…/]<account>/CloudTrail[-NetworkActivity]/<region>/
    let mut accounts = Vec::new();
    for root in aws_logs {
        let level = store.list_with_delimiter(root.as_ref()).await?;
        found.objects.extend(level.objects);
        for p in level.common_prefixes {
            if last(&p).starts_with("o-") {
                let org = store.list_with_delimiter(Some(&p)).await?;
                found.objects.extend(org.objects);
                accounts.extend(org.common_prefixes);
            } else {
                accounts.push(p);
            }
        }
    }
    // An organization's accounts are many: their levels are listed in parallel too.
    let per_account: Vec<Descent> = futures::stream::iter(accounts)
        .map(|account| async move {
            let mut found = Descent::default();
            let mut trails: Vec<ObjectPath> = TRAIL_FOLDERS.iter().map(|f| account.clone().join(*f)).collect();
            if services {
                let level = store.list_with_delimiter(Some(&account)).await?;
                found.objects.extend(level.objects);
                let (trail, other): (Vec<_>, Vec<_>) = level.common_prefixes.into_iter().partition(|p| TRAIL_FOLDERS.contains(&last(p).as_str()));
                trails = trail;
                found.in_full.extend(other.into_iter().map(Some));
            }
            for trail in trails {
                let level = store.list_with_delimiter(Some(&trail)).await?;
                found.objects.extend(level.objects);
                found.regions.extend(level.common_prefixes);
            }
            Ok::<_, object_store::Error>(found)
        })
        .buffer_unordered(PARALLEL_LISTINGS)
        .try_collect()
        .await?;
    for f in per_account {
        found.objects.extend(f.objects);
        found.regions.extend(f.regions);
        found.in_full.extend(f.in_full);
    }
    Ok(found)
}

/// Recursively lists regular files with their sizes, sorted, not following symlinked folders
/// (no loops).
fn walk_local(root: &Path) -> io::Result<Vec<(PathBuf, u64)>> {
    walk_local_paths(root)?.into_iter().map(|p| std::fs::metadata(&p).map(|m| (p, m.len()))).collect()
}

/// [`walk_local`] without the sizes: a follower reads the same folders on every poll and needs
/// the size of the few new files only.
fn walk_local_paths(root: &Path) -> io::Result<Vec<PathBuf>> {
    let meta = std::fs::metadata(root)?;
    if meta.is_file() {
        return Ok(vec![root.to_path_buf()]);
    }
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let mut entries: Vec<_> = std::fs::read_dir(&dir)?.collect::<Result<_, _>>()?;
        entries.sort_by_key(|e| e.file_name());
        for entry in entries.into_iter().rev() {
            let ft = entry.file_type()?;
            let path = entry.path();
            if ft.is_dir() {
                stack.push(path);
            } else if ft.is_file() || (ft.is_symlink() && path.is_file()) {
                out.push(path);
            }
        }
    }
    out.sort();
    Ok(out)
}

/// How to fetch one object.
#[derive(Clone)]
pub enum ObjectRef {
    Local(PathBuf),
    Remote { store: Arc<dyn ObjectStore>, path: ObjectPath },
}

/// Remote objects up to this size are downloaded whole ahead of parsing
/// ([`SourceObject::prefetch`]); larger ones are streamed by their parser. CloudTrail delivers
/// objects of kilobytes to a few MiB.
pub const PREFETCH_MAX_OBJECT: u64 = 8 << 20;

/// An object to read.
#[derive(Clone)]
pub struct SourceObject {
    /// The path or URL, as shown to users and stored in `sourcefile`.
    pub location: String,
    pub size: u64,
    pub key: KeyInfo,
    pub object: ObjectRef,
}

/// An object that was listed but is not read, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Skipped {
    pub location: String,
    pub reason: SkipReason,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum SkipReason {
    /// `CloudTrail-Digest/`: integrity digests, not events.
    Digest,
    /// `CloudTrail-Insight/`: Insights records, not events.
    Insight,
    /// Another service's logs in a shared bucket (`Config/`, `GuardDuty/`, …).
    OtherService(String),
    /// Not a `.json`, `.json.gz`, `.jsonl` or `.ndjson` file.
    NotJson,
    /// Its delivery date folder is outside `--from/--to`.
    OutsideDateRange,
    /// `labels.json`, the ground truth `prism generate` writes beside its archive.
    GeneratorLabels,
}

impl SkipReason {
    pub fn code(&self) -> String {
        match self {
            SkipReason::Digest => "digest".into(),
            SkipReason::Insight => "insight".into(),
            SkipReason::OtherService(s) => format!("not_cloudtrail:{s}"),
            SkipReason::NotJson => "not_json".into(),
            SkipReason::OutsideDateRange => "outside_date_range".into(),
            SkipReason::GeneratorLabels => "generator_labels".into(),
        }
    }
}

impl fmt::Display for SkipReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SkipReason::Digest => f.write_str("CloudTrail digest file"),
            SkipReason::Insight => f.write_str("CloudTrail Insights file"),
            SkipReason::OtherService(s) => write!(f, "{s} log, not CloudTrail"),
            SkipReason::NotJson => f.write_str("not a JSON log file"),
            SkipReason::OutsideDateRange => f.write_str("delivered outside --from/--to"),
            SkipReason::GeneratorLabels => f.write_str("prism generate's labels.json"),
        }
    }
}

/// What a file holds, by its folder.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Content {
    /// Event records (`CloudTrail/`, `CloudTrail-NetworkActivity/`, and files outside the layout).
    #[default]
    Events,
    /// AWS's 5-minute summaries of data events (`CloudTrail-Aggregated/`), imported into
    /// `aggregated_events`, not `events`.
    Aggregated,
}

/// What the key says about an object, when it follows the AWS layout.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KeyInfo {
    pub content: Content,
    pub account: Option<String>,
    pub region: Option<String>,
    /// The delivery date folder.
    pub date: Option<NaiveDate>,
}

/// Days to read, by delivery date folder. `to` is inclusive, and files delivered the day after
/// `to` are read too, since CloudTrail delivers up to ~15 minutes late and events from just
/// before midnight land in the next day's folder.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DateRange {
    pub from: Option<NaiveDate>,
    pub to: Option<NaiveDate>,
}

impl DateRange {
    pub fn admits(&self, folder: NaiveDate) -> bool {
        self.from.is_none_or(|f| folder >= f) && self.to.is_none_or(|t| folder <= t + chrono::Days::new(1))
    }
}

#[derive(Default)]
pub struct Listing {
    pub objects: Vec<SourceObject>,
    pub skipped: Vec<Skipped>,
}

impl Listing {
    fn push(&mut self, location: String, size: u64, object: ObjectRef, range: &DateRange) {
        match classify(&location) {
            Err(reason) => self.skipped.push(Skipped { location, reason }),
            Ok(key) => {
                if let Some(date) = key.date
                    && !range.admits(date)
                {
                    self.skipped.push(Skipped { location, reason: SkipReason::OutsideDateRange });
                    return;
                }
                self.objects.push(SourceObject { location, size, key, object });
            }
        }
    }

    pub fn total_bytes(&self) -> u64 {
        self.objects.iter().map(|o| o.size).sum()
    }
}

/// The folders of an account (`AWSLogs/[o-…/]<account>/<folder>/<region>/YYYY/MM/DD/`) whose
/// files Prism reads: CloudTrail's management and data events, its network-activity events
/// (VPC endpoint calls), which AWS delivers to a folder of their own, and its aggregated
/// events (summaries, see [`Content::Aggregated`]).
pub const TRAIL_FOLDERS: [&str; 3] = ["CloudTrail", "CloudTrail-NetworkActivity", "CloudTrail-Aggregated"];

/// Classifies a key or path: a log to read (and what it holds), or a reason to skip it.
pub fn classify(location: &str) -> Result<KeyInfo, SkipReason> {
    let name = location.rsplit(['/', '\\']).next().unwrap_or(location);
    if name == "labels.json" {
        return Err(SkipReason::GeneratorLabels);
    }
    let lower = name.to_ascii_lowercase();
    let stem = lower.strip_suffix(".gz").unwrap_or(&lower);
    if !(stem.ends_with(".json") || stem.ends_with(".jsonl") || stem.ends_with(".ndjson")) {
        return Err(SkipReason::NotJson);
    }
    let parts: Vec<&str> = location.split(['/', '\\']).collect();
    // The last `AWSLogs` segment anchors the layout; a file outside it is read as is.
    let Some(at) = parts.iter().rposition(|p| *p == "AWSLogs") else {
        return Ok(KeyInfo::default());
    };
    let mut rest = &parts[at + 1..];
    if rest.first().is_some_and(|p| p.starts_with("o-")) {
        rest = &rest[1..];
    }
    let (account, service) = match rest {
        [account, service, _, ..] => (*account, *service),
        _ => return Ok(KeyInfo::default()),
    };
    let content = match service {
        "CloudTrail-Aggregated" => Content::Aggregated,
        s if TRAIL_FOLDERS.contains(&s) => Content::Events,
        "CloudTrail-Digest" => return Err(SkipReason::Digest),
        "CloudTrail-Insight" => return Err(SkipReason::Insight),
        other => return Err(SkipReason::OtherService(other.to_owned())),
    };
    let region = rest.get(2).map(|s| s.to_string());
    let date = match rest.get(3..6) {
        Some([y, m, d]) => NaiveDate::from_ymd_opt(y.parse().unwrap_or(0), m.parse().unwrap_or(0), d.parse().unwrap_or(0)),
        _ => None,
    };
    Ok(KeyInfo { content, account: Some(account.to_string()), region, date })
}

/// Counts bytes read, for progress.
pub struct Counting<R> {
    inner: R,
    counter: Arc<AtomicU64>,
}

impl<R: Read> Read for Counting<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.counter.fetch_add(n as u64, Ordering::Relaxed);
        Ok(n)
    }
}

impl SourceObject {
    /// Sorts objects by the lake partition their events mostly land in, then by delivery
    /// time: the region, the date folder, then the `YYYYMMDDTHHmmZ` stamp of CloudTrail file
    /// names (accounts interleaved), then the location. Objects outside the AWS layout sort
    /// first. Ingest then fills one region's days one after the other, each in one file
    /// kept open across commits (`lake::OpenFiles`), with the last events of a day (which
    /// arrive in the next day's first deliveries) shortly after the rest; in plain delivery
    /// order every commit got a piece of every region's day (a14: 107 files instead of 31).
    pub fn delivery_order_key(&self) -> (Option<&str>, Option<NaiveDate>, &str, &str) {
        (self.key.region.as_deref(), self.key.date, self.stamp().unwrap_or(""), &self.location)
    }

    /// The `YYYYMMDDTHHmmZ` field of a CloudTrail file's name
    /// (`<account>_CloudTrail_<region>_<stamp>_<random>.json.gz`: the 4th).
    fn stamp(&self) -> Option<&str> {
        let name = self.location.rsplit(['/', '\\']).next().unwrap_or(&self.location);
        name.split('_').nth(3)
    }

    /// The delivery time in a CloudTrail file's name (`…_20240601T0005Z_…`), in µs since the
    /// epoch.
    pub fn delivered_at(&self) -> Option<i64> {
        chrono::NaiveDateTime::parse_from_str(self.stamp()?, "%Y%m%dT%H%MZ").ok().map(|t| t.and_utc().timestamp_micros())
    }

    /// Whether [`SourceObject::prefetch`] downloads this object whole: remote, and no larger
    /// than [`PREFETCH_MAX_OBJECT`].
    pub fn prefetched(&self) -> bool {
        matches!(self.object, ObjectRef::Remote { .. }) && self.size <= PREFETCH_MAX_OBJECT
    }

    /// Downloads a remote object whole, so that its request's latency overlaps the parsing of
    /// others instead of stalling a parser (a parser that streams its own object waits for
    /// every chunk). `None` for what [`SourceObject::open`] streams itself: local files and
    /// objects over [`PREFETCH_MAX_OBJECT`]. Failed requests are retried by the store.
    pub async fn prefetch(&self) -> Option<Result<bytes::Bytes, SourceError>> {
        let ObjectRef::Remote { store, path } = &self.object else { return None };
        if !self.prefetched() {
            return None;
        }
        let result = async { store.get(path).await?.bytes().await }.await;
        Some(result.map_err(|e| self.open_error(e.into())))
    }

    /// The error of an object that could not be read, naming it.
    pub fn open_error(&self, source: Box<dyn std::error::Error + Send + Sync>) -> SourceError {
        SourceError::Open { location: self.location.clone(), source }
    }

    /// Opens the object as a stream of decompressed bytes: `fetched`, the body
    /// [`SourceObject::prefetch`] downloaded, or else the file or the object itself. Must run
    /// on a blocking thread (remote objects are bridged from async). `raw_bytes` and
    /// `json_bytes` count what was read before and after decompression.
    pub fn open(&self, fetched: Option<bytes::Bytes>, raw_bytes: Arc<AtomicU64>, json_bytes: Arc<AtomicU64>) -> Result<Box<dyn Read + Send>, SourceError> {
        let open_err = |e| self.open_error(e);
        let raw: Box<dyn Read + Send> = match (&self.object, fetched) {
            (_, Some(body)) => Box::new(io::Cursor::new(body)),
            (ObjectRef::Local(path), None) => Box::new(File::open(path).map_err(|e| open_err(e.into()))?),
            (ObjectRef::Remote { store, path }, None) => {
                let handle = tokio::runtime::Handle::current();
                let result = handle.block_on(store.get(path)).map_err(|e| open_err(e.into()))?;
                let stream = result.into_stream().map_err(io::Error::other);
                Box::new(tokio_util::io::SyncIoBridge::new_with_handle(tokio_util::io::StreamReader::new(stream), handle))
            }
        };
        // Sized to the object: a small file (most CloudTrail files are a few KB) needs no
        // 256 KiB buffer, whose pages the kernel would zero for every file.
        let capacity = usize::try_from(self.size).unwrap_or(usize::MAX).clamp(8 << 10, 256 << 10);
        let mut buffered = BufReader::with_capacity(capacity, Counting { inner: raw, counter: raw_bytes });
        let head = buffered.fill_buf().map_err(|e| open_err(e.into()))?;
        let decoded: Box<dyn Read + Send> =
            if head.starts_with(&[0x1f, 0x8b]) { Box::new(flate2::bufread::MultiGzDecoder::new(buffered)) } else { Box::new(buffered) };
        Ok(Box::new(Counting { inner: decoded, counter: json_bytes }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn day_folders_cover_the_range_and_the_day_after() {
        let d = |s: &str| NaiveDate::parse_from_str(s, "%Y-%m-%d").unwrap();
        let range = DateRange { from: Some(d("2024-02-28")), to: Some(d("2024-03-01")) };
        let days = day_folders(&range).unwrap();
        assert_eq!(days, vec![d("2024-02-28"), d("2024-02-29"), d("2024-03-01"), d("2024-03-02")]);
        assert!(day_folders(&DateRange { from: Some(d("2024-01-01")), to: None }).is_none());
        assert!(day_folders(&DateRange::default()).is_none());
    }

    /// Keys of every kind: beside `AWSLogs/`, at each level of the layout, other services'.
    const MIXED: [&str; 12] = [
        "labels.json",
        "exports/e.json",
        "AWSLogs/x.json",
        "AWSLogs/111/readme.txt",
        "AWSLogs/111/CloudTrail/us-east-1/2024/01/01/a.json.gz",
        "AWSLogs/111/CloudTrail/us-east-1/2024/01/02/b.json.gz",
        "AWSLogs/111/CloudTrail/eu-west-1/2024/01/03/c.json.gz",
        "AWSLogs/111/CloudTrail-Digest/us-east-1/2024/01/01/d.json.gz",
        "AWSLogs/111/Config/us-east-1/2024/01/01/e.json.gz",
        "AWSLogs/o-abc/222/CloudTrail/top.json",
        "AWSLogs/o-abc/222/CloudTrail/ap-south-1/2024/01/02/f.json.gz",
        "AWSLogs/o-abc/222/CloudTrail-Insight/ap-south-1/2024/01/02/g.json.gz",
    ];

    async fn mixed_store(keys: &[&str]) -> Arc<dyn ObjectStore> {
        let store = object_store::memory::InMemory::new();
        for k in keys {
            store.put(&ObjectPath::from(*k), bytes::Bytes::from(k.to_string()).into()).await.unwrap();
        }
        Arc::new(store)
    }

    async fn keys_of(store: &dyn ObjectStore, url: &str, days: Option<&[NaiveDate]>) -> Vec<String> {
        let mut keys: Vec<String> = list_remote(store, &Url::parse(url).unwrap(), days).await.unwrap().into_iter().map(|m| m.location.to_string()).collect();
        keys.sort();
        keys
    }

    /// Small objects are downloaded whole by `prefetch`, large ones streamed by `open`; both
    /// read back the same bytes, gzip or not, and count them.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn small_objects_are_prefetched_and_large_ones_streamed_alike() {
        let store = object_store::memory::InMemory::new();
        let small = br#"{"Records":[{"eventID":"a"}]}"#.to_vec();
        let large = [b"{\"Records\":[".as_slice(), &b"{\"eventID\":\"b\"},".repeat(600_000), b"{}]}"].concat();
        assert!(large.len() as u64 > PREFETCH_MAX_OBJECT);
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        io::Write::write_all(&mut gz, &large).unwrap();
        let large_gz = gz.finish().unwrap();
        let store: Arc<dyn ObjectStore> = Arc::new(store);
        let cases = [("small.json", &small, small.clone()), ("large.json", &large, large.clone()), ("large.json.gz", &large, large_gz)];
        for (key, plain, stored) in cases {
            let size = stored.len() as u64;
            store.put(&ObjectPath::from(key), bytes::Bytes::from(stored).into()).await.unwrap();
            let object = ObjectRef::Remote { store: store.clone(), path: ObjectPath::from(key) };
            let obj = SourceObject { location: format!("s3://b/{key}"), size, key: KeyInfo::default(), object };
            let fetched = obj.prefetch().await.transpose().unwrap();
            assert_eq!(fetched.is_some(), size <= PREFETCH_MAX_OBJECT, "{key}");
            let (raw, json) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
            let (r, j) = (raw.clone(), json.clone());
            let read = tokio::task::spawn_blocking(move || {
                let mut out = Vec::new();
                obj.open(fetched, r, j).unwrap().read_to_end(&mut out).unwrap();
                out
            })
            .await
            .unwrap();
            assert!(read == *plain, "{key}: read {} bytes, expected {}", read.len(), plain.len());
            assert_eq!((raw.load(Ordering::Relaxed), json.load(Ordering::Relaxed)), (size, plain.len() as u64), "{key}");
        }
    }

    #[tokio::test]
    async fn an_undated_remote_listing_finds_every_key_a_flat_listing_finds() {
        let store = mixed_store(&MIXED).await;
        let mut flat: Vec<String> = MIXED.iter().map(|k| k.to_string()).collect();
        flat.sort();
        assert_eq!(keys_of(store.as_ref(), "s3://b/", None).await, flat);
        // A location at `AWSLogs/` itself, and one without any `AWSLogs/` folder.
        let logs: Arc<dyn ObjectStore> = Arc::new(object_store::prefix::PrefixStore::new(store.clone(), "AWSLogs"));
        let under: Vec<String> = flat.iter().filter_map(|k| k.strip_prefix("AWSLogs/")).map(str::to_owned).collect();
        assert_eq!(keys_of(logs.as_ref(), "s3://b/AWSLogs/", None).await, under);
        let plain = mixed_store(&["a.json", "x/y/z.json", "x/AWSLogs.json"]).await;
        assert_eq!(keys_of(plain.as_ref(), "s3://b/", None).await, ["a.json", "x/AWSLogs.json", "x/y/z.json"]);
        // Sorted and classified as a flat listing would be.
        let location = Location::Remote { url: Url::parse("s3://b/").unwrap(), store: store.clone() };
        let listing = location.list(&DateRange::default()).await.unwrap();
        let read: Vec<&str> = listing.objects.iter().map(|o| o.location.as_str()).collect();
        let mut sorted = read.clone();
        sorted.sort();
        assert_eq!(read, sorted);
        assert_eq!(listing.objects.len() + listing.skipped.len(), MIXED.len());
        let mut reasons: Vec<String> = listing.skipped.iter().map(|s| s.reason.code()).collect();
        reasons.sort();
        assert_eq!(reasons, ["digest", "generator_labels", "insight", "not_cloudtrail:Config", "not_json"]);
    }

    #[tokio::test]
    async fn a_dated_remote_listing_lists_only_the_date_folders() {
        let store = mixed_store(&MIXED).await;
        let d = |s: &str| NaiveDate::parse_from_str(s, "%Y-%m-%d").unwrap();
        let days = [d("2024-01-02")];
        let keys = keys_of(store.as_ref(), "s3://b/", Some(&days)).await;
        let want = [
            "AWSLogs/111/CloudTrail/us-east-1/2024/01/02/b.json.gz",
            "AWSLogs/o-abc/222/CloudTrail/ap-south-1/2024/01/02/f.json.gz",
            "AWSLogs/o-abc/222/CloudTrail/top.json",
            "AWSLogs/x.json",
            "exports/e.json",
            "labels.json",
        ];
        assert_eq!(keys, want);
    }

    #[test]
    fn classifies_the_aws_layout() {
        let k = classify(
            "b/AWSLogs/o-1234abcde/222222222222/CloudTrail/us-east-1/2025/03/06/222222222222_CloudTrail_us-east-1_20250306T0230Z_QF6qcgyiaVnSueXa.json.gz",
        )
        .unwrap();
        assert_eq!(k.account.as_deref(), Some("222222222222"));
        assert_eq!(k.region.as_deref(), Some("us-east-1"));
        assert_eq!(k.date, NaiveDate::from_ymd_opt(2025, 3, 6));

        let k = classify("AWSLogs/333333333333/CloudTrail/eu-west-1/2024/12/31/x.json.gz").unwrap();
        assert_eq!(k.account.as_deref(), Some("333333333333"));

        assert_eq!(
            classify("AWSLogs/1/CloudTrail-Digest/us-east-1/2024/01/01/1_CloudTrail-Digest_us-east-1_x_20240101T000000Z.json.gz"),
            Err(SkipReason::Digest)
        );
        assert_eq!(classify("AWSLogs/1/CloudTrail-Insight/us-east-1/2024/01/01/x.json.gz"), Err(SkipReason::Insight));
        let aggregated = classify("AWSLogs/1/CloudTrail-Aggregated/us-east-1/2024/01/01/x.json.gz").unwrap();
        assert_eq!((aggregated.content, aggregated.region.as_deref()), (Content::Aggregated, Some("us-east-1")));
        let k = classify("AWSLogs/1/CloudTrail-NetworkActivity/us-east-1/2024/01/01/x.json.gz").unwrap();
        assert_eq!((k.account.as_deref(), k.region.as_deref()), (Some("1"), Some("us-east-1")));
        assert_eq!(classify("AWSLogs/1/Config/us-east-1/2024/01/01/ConfigSnapshot/x.json.gz"), Err(SkipReason::OtherService("Config".into())));
        assert_eq!(classify("AWSLogs/1/CloudTrail/us-east-1/2024/01/01/README.txt"), Err(SkipReason::NotJson));
        assert_eq!(classify("data/events.ndjson.gz"), Ok(KeyInfo::default()));
        assert_eq!(classify("data/events.JSON"), Ok(KeyInfo::default()));
        assert_eq!(classify("LICENSE"), Err(SkipReason::NotJson));
        assert_eq!(classify("sample/labels.json"), Err(SkipReason::GeneratorLabels));
    }

    #[test]
    fn delivery_order_is_by_region_then_day_with_accounts_interleaved() {
        let obj = |loc: &str| SourceObject { location: loc.to_owned(), size: 0, key: classify(loc).unwrap(), object: ObjectRef::Local(PathBuf::from(loc)) };
        let mut objs = [
            obj("AWSLogs/1/CloudTrail/us-east-1/2024/06/02/1_CloudTrail_us-east-1_20240602T0000Z_a.json.gz"),
            obj("AWSLogs/1/CloudTrail/us-east-1/2024/06/01/1_CloudTrail_us-east-1_20240601T0005Z_b.json.gz"),
            obj("AWSLogs/2/CloudTrail/us-east-1/2024/06/01/2_CloudTrail_us-east-1_20240601T0000Z_d.json.gz"),
            obj("AWSLogs/2/CloudTrail/us-east-1/2024/06/01/2_CloudTrail_us-east-1_20240601T0010Z_e.json.gz"),
            obj("AWSLogs/2/CloudTrail/eu-west-1/2024/06/02/2_CloudTrail_eu-west-1_20240602T2300Z_c.json.gz"),
            obj("exports/plain.json"),
        ];
        objs.sort_by(|a, b| a.delivery_order_key().cmp(&b.delivery_order_key()));
        let names: Vec<_> = objs.iter().map(|o| o.location.rsplit('_').next().unwrap().to_owned()).collect();
        assert_eq!(
            names,
            ["exports/plain.json", "c.json.gz", "d.json.gz", "b.json.gz", "e.json.gz", "a.json.gz"],
            "eu-west-1 first, then us-east-1 day by day"
        );
        assert_eq!(objs[0].delivered_at(), None);
        assert_eq!(objs[3].delivered_at(), Some(chrono::DateTime::parse_from_rfc3339("2024-06-01T00:05:00Z").unwrap().timestamp_micros()));
    }

    #[test]
    fn date_range_allows_late_delivery() {
        let d = |s: &str| NaiveDate::parse_from_str(s, "%Y-%m-%d").unwrap();
        let r = DateRange { from: Some(d("2024-06-01")), to: Some(d("2024-06-30")) };
        assert!(!r.admits(d("2024-05-31")));
        assert!(r.admits(d("2024-06-01")));
        assert!(r.admits(d("2024-07-01")), "the day after `to` holds late deliveries");
        assert!(!r.admits(d("2024-07-02")));
        assert!(DateRange::default().admits(d("1999-01-01")));
    }
}
