//! `prism ingest`: reads archives into the lake.
//!
//! Files are parsed in parallel on blocking threads, each streaming its records through the
//! [`RecordReader`](crate::source::RecordReader) into Arrow batches. The main task buffers
//! batches up to a memory budget, then commits them to `events` (dropping duplicates), and
//! after that journals, in one `ingest_log` commit, every file whose records are all committed
//! together with its rejects. A killed run therefore leaves: committed events (consistent),
//! and files not yet journaled, which the next run reads again; their already-committed events
//! are then recognised as duplicates, so counts come out exact.

mod aggregated;

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Instant;

use arrow::array::{Int64Builder, RecordBatch, StringBuilder, TimestampMicrosecondBuilder};
use serde::Serialize;
use tokio::sync::mpsc;

use crate::lake::{Close, EventIndex, Lake, LakeError, OpenFiles};
use crate::rollup::Rollups;
use crate::schema::{self, EventBatchBuilder, Granularity};
use crate::source::{DateRange, Item, Location, RecordReader, SourceError, SourceObject, StreamErrorKind};

/// Errors that stop an ingest run (bad input never does: it is counted and reported).
#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    #[error(transparent)]
    Source(#[from] SourceError),
    #[error(transparent)]
    Lake(#[from] LakeError),
    #[error(transparent)]
    Maintain(#[from] crate::maintain::MaintainError),
    #[error("a parser thread failed: {0}")]
    Worker(String),
    /// The files read before are committed; the rest are left for the next run.
    #[error("stopped after {files} files, whose events are committed: {message}")]
    CredentialsRefused { files: u64, message: String },
}

/// Remote objects in flight by default: enough to hide S3's first-byte latency (tens of
/// milliseconds) behind the parsers of a few cores.
pub const DEFAULT_DOWNLOADS: usize = 32;

/// The most bytes of downloaded, not yet parsed objects held at once.
pub const PREFETCH_BYTES: u64 = 64 << 20;

/// What to ingest and how.
#[derive(Debug, Clone)]
pub struct IngestOptions {
    pub sources: Vec<String>,
    pub lake: String,
    pub range: DateRange,
    /// For a new lake only; an existing lake keeps its own.
    pub granularity: Option<Granularity>,
    /// Memory for events buffered before they are written (two buffers are held: one filling,
    /// one being written). It hardly changes the files: a partition's file stays open across
    /// buffers (`lake::OpenFiles`).
    pub buffer_bytes: usize,
    /// Files parsed at once.
    pub parallelism: usize,
    /// Remote objects downloaded ahead of the parsers at once (see [`PREFETCH_BYTES`]).
    pub downloads: usize,
    /// List and compare with the journal only: report what a run would read, write nothing.
    pub dry_run: bool,
}

/// Files parsed at once unless `--jobs` says otherwise: one per CPU (parsing is CPU-bound;
/// downloads run ahead separately).
pub fn default_parallelism() -> usize {
    std::thread::available_parallelism().map(|n| n.get()).unwrap_or(2)
}

impl IngestOptions {
    pub fn new(sources: Vec<String>, lake: impl Into<String>) -> Self {
        IngestOptions {
            sources,
            lake: lake.into(),
            range: DateRange::default(),
            granularity: None,
            buffer_bytes: 128 << 20,
            parallelism: default_parallelism(),
            downloads: DEFAULT_DOWNLOADS,
            dry_run: false,
        }
    }
}

/// Live counters, for a progress display polled from another thread.
#[derive(Debug, Default)]
pub struct IngestProgress {
    pub files_total: AtomicU64,
    pub bytes_total: AtomicU64,
    pub files_done: AtomicU64,
    /// Bytes read from sources (compressed).
    pub raw_bytes: AtomicU64,
    /// Bytes of JSON after decompression.
    pub json_bytes: AtomicU64,
    pub records: AtomicU64,
    pub written: AtomicU64,
}

/// A rejected record or damaged file, as reported in the summary and `rejects` table.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Rejection {
    pub source: String,
    /// The record's position in its file (0-based), when the problem is one record.
    pub record_index: Option<u64>,
    pub reason: String,
    pub message: String,
    #[serde(skip)]
    pub record: Option<String>,
}

/// The final account of a run. Every listed object is in exactly one of: read, already
/// ingested, skipped; every record read is exactly one of: written, duplicate, rejected.
#[derive(Debug, Clone, Default, Serialize)]
pub struct IngestSummary {
    pub lake: String,
    pub granularity: String,
    pub files_listed: u64,
    pub files_read: u64,
    pub files_already_ingested: u64,
    pub files_skipped: u64,
    pub skipped_by_reason: BTreeMap<String, u64>,
    /// Files that could not be read to the end (truncated, invalid JSON, read errors).
    pub files_damaged: u64,
    /// Records kept whose `eventTime` had no zone (`2024-06-01 12:34:56`, as SIEM exports
    /// write it) and was read as UTC.
    pub eventtime_without_zone: u64,
    pub records_read: u64,
    pub records_written: u64,
    pub duplicates_dropped: u64,
    pub records_rejected: u64,
    pub rejected_by_reason: BTreeMap<String, u64>,
    /// Every damaged file and up to 100 record rejections, with where and why.
    pub problems: Vec<Rejection>,
    pub problems_not_shown: u64,
    pub files_written: u64,
    pub commits: u64,
    /// Commits another writer of the lake beat, each reconciled with its rows and tried again.
    pub commit_conflicts: u64,
    pub bytes_read: u64,
    pub json_bytes: u64,
    pub seconds: f64,
    pub events_per_second: f64,
    /// Files that failed to open or read and will be retried by the next run.
    pub files_to_retry: u64,
    /// Their locations (keys), so a run can say which objects it could not read.
    pub unread: Vec<String>,
    /// The first refusal of the credentials, which ends the run with an error once what was
    /// read is committed.
    #[serde(skip)]
    credentials_refused: Option<String>,
    /// A dry run: nothing was read or written; `files_to_read` and `bytes_to_read` say what
    /// a real run would read.
    pub dry_run: bool,
    pub files_to_read: u64,
    pub bytes_to_read: u64,
    /// Seconds spent listing the sources.
    pub list_seconds: f64,
    /// AWS's aggregated-event summaries (`CloudTrail-Aggregated/` files) imported into
    /// `aggregated_events`. Their files count in `files_read` too; their records only here.
    pub aggregated: AggregatedImport,
}

/// What an ingest did with AWS's aggregated-event files: every record read is exactly one of
/// written, duplicate, rejected.
#[derive(Debug, Clone, Default, Serialize)]
pub struct AggregatedImport {
    pub files: u64,
    pub records_read: u64,
    pub records_written: u64,
    pub duplicates: u64,
    pub records_rejected: u64,
    pub rejected_by_reason: BTreeMap<String, u64>,
}

impl IngestSummary {
    /// True when every file was read completely and no record was rejected.
    pub fn is_clean(&self) -> bool {
        self.files_damaged == 0 && self.records_rejected == 0 && self.aggregated.records_rejected == 0
    }

    /// Lists a problem, up to [`MAX_PROBLEMS_SHOWN`]; the rest are counted.
    fn problem(&mut self, r: &Rejection) {
        if self.problems.len() < MAX_PROBLEMS_SHOWN {
            self.problems.push(r.clone());
        } else {
            self.problems_not_shown += 1;
        }
    }
}

const MAX_PROBLEMS_SHOWN: usize = 100;
const MAX_RECORD_TEXT: usize = 16 << 10;
const ROWS_PER_BATCH: usize = 8192;

enum Msg {
    /// Rows, and the files whose rows are all in this batch or an earlier one.
    Batch { batch: RecordBatch, done: Vec<FileResult> },
    /// Files whose rows were all sent before.
    Done(Vec<FileResult>),
}

/// What a parser reuses from one file to the next: its batch builder, which gathers the rows
/// of many small files into one batch (a batch per file made thousands of tiny batches to
/// concatenate), and its read buffer. A file is reported done with the batch that holds its
/// last rows, so the journal never names a file whose rows are not yet committed.
struct Scratch {
    builder: EventBatchBuilder,
    buffer: Vec<u8>,
    done: Vec<FileResult>,
}

impl Scratch {
    fn new(granularity: Granularity) -> Scratch {
        Scratch { builder: EventBatchBuilder::new(granularity), buffer: Vec::new(), done: Vec::new() }
    }

    /// Notes a file as read to its end; it is reported at once when the builder holds no rows
    /// (of it or of earlier files), else with the batch that will hold them.
    fn file_done(&mut self, result: FileResult, tx: &mpsc::Sender<Msg>, progress: &IngestProgress) {
        self.done.push(result);
        if self.builder.is_empty() {
            self.send(tx, progress);
        }
        progress.files_done.fetch_add(1, Ordering::Relaxed);
    }

    /// Sends the rows built so far with the files they complete; false when the run is stopping.
    fn send(&mut self, tx: &mpsc::Sender<Msg>, progress: &IngestProgress) -> bool {
        progress.records.fetch_add(self.builder.len() as u64, Ordering::Relaxed);
        let done = std::mem::take(&mut self.done);
        let msg = if self.builder.is_empty() { Msg::Done(done) } else { Msg::Batch { batch: self.builder.finish(), done } };
        tx.blocking_send(msg).is_ok()
    }
}

struct FileResult {
    file: usize,
    records: u64,
    /// Records kept whose `eventTime` had no zone (read as UTC).
    zoneless: u64,
    rejects: Vec<Rejection>,
    /// The stream broke; `retry` when the cause may be transient (not the content).
    broken: Option<(Rejection, bool)>,
    /// The store refused the credentials (see [`SourceError::refuses_credentials`]): the file
    /// is left for the next run and this run stops.
    refused: bool,
}

impl FileResult {
    fn new(file: usize) -> FileResult {
        FileResult { file, records: 0, zoneless: 0, rejects: Vec::new(), broken: None, refused: false }
    }
}

/// Lists every source (skips counted in `summary`), each object once, leaving out what the
/// lake's journal says earlier runs completed. The rest is sorted by region, day, then
/// delivery time across accounts ([`SourceObject::delivery_order_key`]), so the parsers fill
/// one partition after another: each gets one file (`lake::OpenFiles`), not one per commit,
/// account or region.
async fn list_sources(opts: &IngestOptions, lake: Option<&Lake>, summary: &mut IngestSummary) -> Result<Vec<SourceObject>, IngestError> {
    let started = Instant::now();
    let mut objects: Vec<SourceObject> = Vec::new();
    for s in &opts.sources {
        let location = Location::parse(s)?;
        let listing = location.list(&opts.range).await?;
        summary.files_listed += (listing.objects.len() + listing.skipped.len()) as u64;
        summary.files_skipped += listing.skipped.len() as u64;
        for sk in listing.skipped {
            *summary.skipped_by_reason.entry(sk.reason.code()).or_default() += 1;
        }
        objects.extend(listing.objects);
    }
    // The same object named twice (overlapping arguments) is read once.
    let mut seen = std::collections::HashSet::new();
    objects.retain(|o| seen.insert(o.location.clone()));
    objects.sort_by(|a, b| a.delivery_order_key().cmp(&b.delivery_order_key()));
    summary.list_seconds = started.elapsed().as_secs_f64();
    if let Some(lake) = lake {
        let done = lake.ingested_sources().await?;
        let before = objects.len();
        objects.retain(|o| !done.contains(&o.location));
        summary.files_already_ingested = (before - objects.len()) as u64;
    }
    Ok(objects)
}

/// `--dry-run`: lists, compares with the journal of the lake if it exists, and reports what a
/// run would read. Creates nothing.
async fn dry_run(opts: &IngestOptions, started: Instant) -> Result<IngestSummary, IngestError> {
    let lake = Lake::open(&opts.lake).await.ok();
    let mut summary = IngestSummary {
        lake: lake.as_ref().map(|l| l.url().to_string()).unwrap_or_else(|| opts.lake.clone()),
        granularity: lake.as_ref().map(|l| l.config().granularity).or(opts.granularity).unwrap_or_default().to_string(),
        dry_run: true,
        ..Default::default()
    };
    let objects = list_sources(opts, lake.as_ref(), &mut summary).await?;
    summary.files_to_read = objects.len() as u64;
    summary.bytes_to_read = objects.iter().map(|o| o.size).sum();
    summary.seconds = started.elapsed().as_secs_f64();
    Ok(summary)
}

/// Runs an ingest. `progress` is updated as it goes.
pub async fn ingest(opts: &IngestOptions, progress: Arc<IngestProgress>) -> Result<IngestSummary, IngestError> {
    let started = Instant::now();
    if opts.dry_run {
        return dry_run(opts, started).await;
    }
    let mut lake = Lake::open_or_create(&opts.lake, opts.granularity).await?;
    let mut summary = IngestSummary { lake: lake.url().to_string(), granularity: lake.config().granularity.to_string(), ..Default::default() };
    // 1. List. 2. Leave out what earlier runs completed.
    let objects = list_sources(opts, Some(&lake), &mut summary).await?;
    let mut rollups = Rollups::open(&lake).await?;
    let mut index = EventIndex::new(lake.events(), INDEX_IDS)?;
    read_objects(opts, &mut lake, &mut rollups, &mut index, objects, summary, progress, started).await
}

/// Ingests objects its caller listed (`prism watch` lists only the newest date folders of
/// each region, and knows what it read before), without listing `opts.sources` or reading the
/// journal; `opts` gives the lake and the reading settings. The journal still records each
/// file, so a later `ingest` of the same archive skips them.
///
/// `kept` holds what a long-running caller keeps from one call to the next (see [`Kept`]).
pub async fn ingest_listed(
    opts: &IngestOptions,
    mut objects: Vec<SourceObject>,
    progress: Arc<IngestProgress>,
    kept: &mut Kept,
) -> Result<IngestSummary, IngestError> {
    let started = Instant::now();
    objects.sort_by(|a, b| a.delivery_order_key().cmp(&b.delivery_order_key()));
    let lake = match &mut kept.lake {
        Some(l) => l,
        None => kept.lake.insert(Lake::open_or_create(&opts.lake, opts.granularity).await?),
    };
    let summary = IngestSummary {
        lake: lake.url().to_string(),
        granularity: lake.config().granularity.to_string(),
        files_listed: objects.len() as u64,
        ..Default::default()
    };
    let rollups = match &mut kept.rollups {
        Some(r) => r,
        None => kept.rollups.insert(Rollups::open(lake).await?),
    };
    let index = match &mut kept.index {
        Some(i) => i,
        None => kept.index.insert(EventIndex::new(lake.events(), INDEX_IDS)?),
    };
    read_objects(opts, lake, rollups, index, objects, summary, progress, started).await
}

/// The event IDs the deduplication index holds at most, besides the partitions the current
/// commit writes to: 16 bytes each, about 40 with the hash table's slack, so about 80 MB.
/// Ingest reads in delivery order and events arrive within hours of their time, so the
/// partitions written to are the newest few; one evicted and needed again is read back from
/// its files.
const INDEX_IDS: usize = 2_000_000;

/// What [`ingest_listed`]'s caller keeps between calls, since building it reads the lake: the
/// lake's open tables, the rollups (which events files they count: the whole table) and the
/// deduplication index (the IDs of the partitions written to: a day's events, per poll). They
/// stay right as long as this process is the lake's only writer; after anything else rewrites
/// the lake (`optimize`), or a failed call, start again from `Kept::default()`.
#[derive(Default)]
pub struct Kept {
    pub lake: Option<Lake>,
    pub rollups: Option<Rollups>,
    pub index: Option<EventIndex>,
}

/// Parses `objects` in parallel and commits them: steps 3 and 4 of a run.
#[allow(clippy::too_many_arguments)]
async fn read_objects(
    opts: &IngestOptions,
    lake: &mut Lake,
    rollups: &mut Rollups,
    index: &mut EventIndex,
    objects: Vec<SourceObject>,
    mut summary: IngestSummary,
    progress: Arc<IngestProgress>,
    started: Instant,
) -> Result<IngestSummary, IngestError> {
    let granularity = lake.config().granularity;
    progress.files_total.store(objects.len() as u64, Ordering::Relaxed);
    progress.bytes_total.store(objects.iter().map(|o| o.size).sum(), Ordering::Relaxed);
    let run_id = uuid::Uuid::new_v4().to_string();
    // AWS's summaries go to their own table, first: they are few and small.
    let (summaries, objects): (Vec<_>, Vec<_>) = objects.into_iter().partition(|o| o.key.content == crate::source::Content::Aggregated);
    if !summaries.is_empty() {
        aggregated::import(lake, &summaries, &run_id, &mut summary, &progress).await?;
    }

    // 3. Parse in parallel, commit as the buffer fills.
    let objects = Arc::new(objects);
    let (tx, mut rx) = mpsc::channel::<Msg>(opts.parallelism * 2 + 2);
    let producer = {
        let objects = objects.clone();
        let progress = progress.clone();
        // Set once the store refuses the credentials: nothing more is downloaded or parsed.
        let halt = Arc::new(AtomicBool::new(false));
        let (parallelism, downloads) = (opts.parallelism.max(1), opts.downloads.max(1));
        tokio::spawn(async move {
            use futures::StreamExt;
            // One long-lived parser per CPU, each taking the next file from a short queue: a
            // task spawned per file left a core idle a third of the time between small files
            // (measured: 1.3–1.5 cores busy of 2 while only parsing).
            let (work_tx, work_rx) = mpsc::channel::<Work>(parallelism * 2);
            let work_rx = Arc::new(std::sync::Mutex::new(work_rx));
            let parsers: Vec<_> = (0..parallelism)
                .map(|_| {
                    let (objects, tx, progress, halt, work_rx) = (objects.clone(), tx.clone(), progress.clone(), halt.clone(), work_rx.clone());
                    tokio::task::spawn_blocking(move || parse_files(&objects, &work_rx, granularity, &tx, &progress, &halt))
                })
                .collect();
            // Only the parsers hold the queue's receiver: when the last one stops (the run is
            // stopping, or they all failed), sending fails and this loop ends instead of waiting.
            drop((tx, work_rx));
            // Remote objects are downloaded ahead of the parsers, `downloads` at once and at
            // most PREFETCH_BYTES held, so that no parser waits for a response. The budget is
            // taken in list order: the object the parsers need next always holds its share.
            let budget = Arc::new(tokio::sync::Semaphore::new(PREFETCH_BYTES as usize));
            let work = futures::stream::iter(0..objects.len())
                .then(|i| {
                    let (budget, objects) = (budget.clone(), objects.clone());
                    async move {
                        let cost = if objects[i].prefetched() { objects[i].size.clamp(1, PREFETCH_BYTES) as u32 } else { 0 };
                        (i, budget.acquire_many_owned(cost).await.ok())
                    }
                })
                .map(|(i, permit)| {
                    let (objects, halted) = (objects.clone(), halt.clone());
                    let download = tokio::spawn(async move { if halted.load(Ordering::Relaxed) { None } else { objects[i].prefetch().await } });
                    async move { Work { file: i, permit, download: download.await } }
                })
                .buffered(downloads);
            let mut work = std::pin::pin!(work);
            while let Some(item) = work.next().await {
                if work_tx.send(item).await.is_err() {
                    break; // every parser stopped: the run is stopping
                }
            }
            drop(work_tx);
            let mut failed = None;
            for parser in parsers {
                if let Err(e) = parser.await {
                    failed.get_or_insert_with(|| crate::error::report(&e));
                }
            }
            failed
        })
    };

    // Double buffering: the rows of one buffer are written while the parsers fill the next,
    // so that parsing does not stop for a commit (it did: the parsers' queue is short). At most
    // two buffers are held; a full one waits for the write before it. A partition's file stays
    // open across buffers while the listing is still in its stretch (`lake::Close::Idle`), and
    // the sources with rows in an open file wait in `finished` for their journal entry.
    let mut dups_by_source: HashMap<String, u64> = HashMap::new();
    let mut open = OpenFiles::default();
    let mut frontier = Frontier::new(objects.len());
    let mut current = Buffer::new();
    let mut ended = false;
    loop {
        let mut next = Buffer::new();
        {
            // A buffer flushed before it is full is due by time: its sources are journaled now.
            let close = if ended || current.bytes < opts.buffer_bytes { Close::All } else { Close::Idle { before: current.before } };
            let flushing = async {
                if current.is_empty() && open.is_empty() {
                    return Ok(());
                }
                let Buffer { pending, finished, .. } = &mut current;
                flush(lake, rollups, index, &mut open, close, pending, &objects, finished, &mut dups_by_source, &run_id, &mut summary, &progress).await
            };
            tokio::pin!(flushing);
            let mut flushed = false;
            while !(flushed && (ended || next.due(opts))) {
                tokio::select! {
                    r = &mut flushing, if !flushed => {
                        r?;
                        flushed = true;
                    }
                    msg = rx.recv(), if !ended && !next.due(opts) => match msg {
                        Some(msg) => next.push(msg),
                        None => ended = true,
                    },
                }
            }
        }
        frontier.mark(next.finished.iter().map(|f| f.file));
        next.before = frontier.before(&objects);
        // Sources whose rows are in files still open: journaled with a later commit.
        next.finished.append(&mut current.finished);
        if ended && next.pending.is_empty() && open.is_empty() && next.finished.is_empty() {
            break;
        }
        current = next;
    }
    match producer.await {
        Ok(None) => {}
        Ok(Some(err)) => return Err(IngestError::Worker(err)),
        Err(join) => return Err(IngestError::Worker(join.to_string())),
    }
    crate::maintain::tidy_rollups(rollups).await?;
    if let Some(message) = summary.credentials_refused.take() {
        return Err(IngestError::CredentialsRefused { files: summary.files_read, message });
    }

    summary.bytes_read = progress.raw_bytes.load(Ordering::Relaxed);
    summary.json_bytes = progress.json_bytes.load(Ordering::Relaxed);
    summary.seconds = started.elapsed().as_secs_f64();
    summary.events_per_second = if summary.seconds > 0.0 { summary.records_read as f64 / summary.seconds } else { 0.0 };
    Ok(summary)
}

/// Rows received from the parsers and not yet committed, with the files they complete.
struct Buffer {
    pending: Vec<RecordBatch>,
    bytes: usize,
    finished: Vec<FileResult>,
    started: Instant,
    /// When it was filled, the event time from which rows of later buffers may start
    /// ([`Frontier::before`]).
    before: i64,
}

impl Buffer {
    fn new() -> Self {
        Buffer { pending: Vec::new(), bytes: 0, finished: Vec::new(), started: Instant::now(), before: i64::MIN }
    }

    fn push(&mut self, msg: Msg) {
        match msg {
            Msg::Batch { batch, done } => {
                self.bytes += batch.get_array_memory_size();
                self.pending.push(batch);
                self.finished.extend(done);
            }
            Msg::Done(done) => self.finished.extend(done),
        }
    }

    /// No rows and no finished files: nothing to commit or journal.
    fn is_empty(&self) -> bool {
        self.pending.is_empty() && self.finished.is_empty()
    }

    /// Full, or holding finished files for a minute (so that a slow trail is journaled).
    fn due(&self, opts: &IngestOptions) -> bool {
        self.bytes >= opts.buffer_bytes || (self.started.elapsed().as_secs() >= 60 && !self.finished.is_empty())
    }
}

/// How long before its delivery stamp a CloudTrail file's events may be: AWS delivers "within
/// an average of about 5 minutes". An event delivered later than this starts a new file; a
/// longer margin holds more rows back (an hour: 300 MB more peak memory on an archive of hourly
/// files of 48,000 events).
const DELIVERY_DELAY_MICROS: i64 = 15 * 60_000_000;

/// The first file, in listing order, whose rows have not all arrived (the parsers each
/// gather several files' rows before sending them: on the a14 archive two hours of a region's
/// events). Rows still to come are from it or later files, so (but for events delivered very
/// late) no older than its delivery stamp less [`DELIVERY_DELAY_MICROS`].
struct Frontier {
    done: Vec<bool>,
    first: usize,
}

impl Frontier {
    fn new(files: usize) -> Frontier {
        Frontier { done: vec![false; files], first: 0 }
    }

    fn mark(&mut self, files: impl Iterator<Item = usize>) {
        for f in files {
            if let Some(d) = self.done.get_mut(f) {
                *d = true;
            }
        }
        while self.done.get(self.first).is_some_and(|d| *d) {
            self.first += 1;
        }
    }

    /// The event time (µs) from which rows may still come; `i64::MAX` when none will or the
    /// next file's name has no delivery stamp (nothing is held back then: a file's rows out
    /// of order only start a new file).
    fn before(&self, objects: &[SourceObject]) -> i64 {
        objects.get(self.first).and_then(SourceObject::delivered_at).map_or(i64::MAX, |t| t.saturating_sub(DELIVERY_DELAY_MICROS))
    }
}

/// Writes buffered events to their partitions' files and commits those `close` finishes, then
/// journals the files whose rows are all committed.
#[allow(clippy::too_many_arguments)]
async fn flush(
    lake: &mut Lake,
    rollups: &mut Rollups,
    index: &mut EventIndex,
    open: &mut OpenFiles,
    close: Close,
    pending: &mut Vec<RecordBatch>,
    objects: &[SourceObject],
    finished: &mut Vec<FileResult>,
    dups_by_source: &mut HashMap<String, u64>,
    run_id: &str,
    summary: &mut IngestSummary,
    progress: &IngestProgress,
) -> Result<(), IngestError> {
    if !pending.is_empty() || !open.is_empty() {
        let metadata = serde_json::json!({"operation": "ingest", "run": run_id});
        let outcome = lake.append_events(std::mem::take(pending), index, open, close, metadata).await?;
        summary.records_written += outcome.written;
        summary.files_written += outcome.files;
        summary.commit_conflicts += outcome.conflicts;
        if outcome.version.is_some() {
            summary.commits += 1;
        }
        progress.written.fetch_add(outcome.written, Ordering::Relaxed);
        // Before the journal: a file is journaled only once its events are counted too.
        rollups.catch_up_after(lake, Some(&outcome)).await?;
        for (src, n) in outcome.duplicates_by_source {
            summary.duplicates_dropped += n;
            *dups_by_source.entry(src).or_default() += n;
        }
    }
    let (mut ready, waiting): (Vec<FileResult>, Vec<FileResult>) = finished.drain(..).partition(|f| !open.holds(&objects[f.file].location));
    *finished = waiting;
    journal(lake, objects, &mut ready, dups_by_source, run_id, summary, false).await
}

/// Journals the files in `finished` (whose rows are committed) with their rejects, in one
/// `ingest_log` commit, and counts them: their records as events, or as AWS's aggregated
/// summaries when `aggregated`.
#[allow(clippy::too_many_arguments)]
async fn journal(
    lake: &mut Lake,
    objects: &[SourceObject],
    finished: &mut Vec<FileResult>,
    dups_by_source: &mut HashMap<String, u64>,
    run_id: &str,
    summary: &mut IngestSummary,
    aggregated: bool,
) -> Result<(), IngestError> {
    if finished.is_empty() {
        return Ok(());
    }
    let mut log = IngestLogBuilder::default();
    for f in finished.drain(..) {
        let obj = &objects[f.file];
        if f.refused {
            // Not journaled, not a problem of the file: the run stops and the next one reads it.
            if let Some((r, _)) = &f.broken {
                summary.credentials_refused.get_or_insert_with(|| r.message.clone());
            }
            continue;
        }
        summary.files_read += 1;
        let rejected = f.rejects.len() as u64;
        let (read, rejects, by_reason) = if aggregated {
            summary.aggregated.files += 1;
            let a = &mut summary.aggregated;
            (&mut a.records_read, &mut a.records_rejected, &mut a.rejected_by_reason)
        } else {
            (&mut summary.records_read, &mut summary.records_rejected, &mut summary.rejected_by_reason)
        };
        *read += f.records;
        *rejects += rejected;
        summary.eventtime_without_zone += f.zoneless;
        for r in &f.rejects {
            *by_reason.entry(r.reason.clone()).or_default() += 1;
        }
        if let Some((r, _)) = &f.broken {
            *by_reason.entry(format!("file:{}", r.reason)).or_default() += 1;
        }
        let dups = dups_by_source.remove(&obj.location).unwrap_or(0);
        for r in &f.rejects {
            summary.problem(r);
            log.reject(r, run_id);
        }
        let retry = match &f.broken {
            Some((r, retry)) => {
                summary.files_damaged += 1;
                summary.problem(r);
                if !retry {
                    log.reject(r, run_id);
                }
                *retry
            }
            None => false,
        };
        if retry {
            // Not journaled: the next run reads it again (its committed rows dedupe).
            summary.files_to_retry += 1;
            summary.unread.push(obj.location.clone());
        } else {
            let status = if f.broken.is_some() { "damaged" } else { "complete" };
            let kept = f.records.saturating_sub(rejected + dups);
            log.file(&obj.location, obj.size, status, f.records, kept, dups, rejected, run_id);
        }
    }
    lake.append_ingest_log(log.finish()).await?;
    Ok(())
}

/// A rejection of something in `obj`: a record (`record_index`, its text cut to
/// [`MAX_RECORD_TEXT`]) or the whole file.
fn rejection(obj: &SourceObject, index: Option<u64>, reason: &str, message: String, record: Option<&[u8]>) -> Rejection {
    Rejection {
        source: obj.location.clone(),
        record_index: index,
        reason: reason.to_owned(),
        message,
        record: record.map(|b| String::from_utf8_lossy(&b[..b.len().min(MAX_RECORD_TEXT)]).into_owned()),
    }
}

/// Bytes read from a file before and after decompression, counted as it is read.
#[derive(Default, Clone)]
struct ReadBytes {
    raw: Arc<AtomicU64>,
    json: Arc<AtomicU64>,
    /// What was added to the run's progress so far.
    reported: (u64, u64),
}

impl ReadBytes {
    /// The counters, for [`SourceObject::open`].
    fn counters(&self) -> (Arc<AtomicU64>, Arc<AtomicU64>) {
        (self.raw.clone(), self.json.clone())
    }

    /// Adds what was read since the last call to the run's progress.
    fn report(&mut self, progress: &IngestProgress) {
        let (r, j) = (self.raw.load(Ordering::Relaxed), self.json.load(Ordering::Relaxed));
        progress.raw_bytes.fetch_add(r - self.reported.0, Ordering::Relaxed);
        progress.json_bytes.fetch_add(j - self.reported.1, Ordering::Relaxed);
        self.reported = (r, j);
    }
}

/// Opens `obj` (or the body `fetched` ahead) and walks its records, the one loop of every
/// kind of file: `each` gets each record's index and bytes, and may stop the walk (the run is
/// stopping); a line that is no JSON object and a broken stream are noted in `result`.
/// `each` is first offered the bytes from a record's start to the end of those read (`whole`
/// false): it may take one record from their front and return its length, or return None to
/// be given the record alone (`whole` true: then it always returns Some). Returns the read
/// buffer, for reuse, and whether the walk was stopped.
fn walk_records(
    obj: &SourceObject,
    fetched: Option<Result<bytes::Bytes, SourceError>>,
    buffer: Vec<u8>,
    (raw, json): (Arc<AtomicU64>, Arc<AtomicU64>),
    result: &mut FileResult,
    mut each: impl FnMut(usize, &[u8], bool, &mut FileResult) -> Option<(usize, std::ops::ControlFlow<()>)>,
) -> (Vec<u8>, std::ops::ControlFlow<()>) {
    let reader = match fetched.transpose().and_then(|body| obj.open(body, raw, json)) {
        Ok(r) => r,
        Err(e) => {
            result.refused = e.refuses_credentials();
            result.broken = Some((rejection(obj, None, "read_error", crate::error::report(&e), None), true));
            return (buffer, std::ops::ControlFlow::Continue(()));
        }
    };
    let mut records = RecordReader::with_buffer(reader, buffer);
    loop {
        let mut flow = std::ops::ControlFlow::Continue(());
        let item = records.next_item_with(|index, front| {
            let (len, f) = each(index, front, false, result)?;
            flow = f;
            Some(len)
        });
        match item {
            Ok(None) => break,
            Ok(Some(Item::Taken { .. })) => {
                result.records += 1;
                if flow.is_break() {
                    return (records.into_buffer(), flow);
                }
            }
            Ok(Some(Item::BadLine { index, message })) => {
                result.records += 1;
                result.rejects.push(rejection(obj, Some(index as u64), "invalid_json", message, None));
            }
            Ok(Some(Item::Record { index, bytes })) => {
                result.records += 1;
                if each(index, bytes, true, result).is_some_and(|(_, flow)| flow.is_break()) {
                    return (records.into_buffer(), std::ops::ControlFlow::Break(()));
                }
            }
            Err(e) => {
                let retry = e.kind == StreamErrorKind::Read;
                let message = format!("{} (at record {}, byte {} of the decompressed stream)", e.message, e.record_index, e.offset);
                result.broken = Some((rejection(obj, Some(e.record_index as u64), e.kind.code(), message, None), retry));
                break;
            }
        }
    }
    (records.into_buffer(), std::ops::ControlFlow::Continue(()))
}

/// A file for a parser: its index in the list, its share of the download budget, and its
/// body when downloaded ahead (see [`SourceObject::prefetch`]).
struct Work {
    file: usize,
    permit: Option<tokio::sync::OwnedSemaphorePermit>,
    download: Result<Option<Result<bytes::Bytes, SourceError>>, tokio::task::JoinError>,
}

/// One parser: parses the files `work` hands it until the list ends or the run stops, then
/// sends the rows it still holds.
fn parse_files(
    objects: &[SourceObject],
    work: &std::sync::Mutex<mpsc::Receiver<Work>>,
    granularity: Granularity,
    tx: &mpsc::Sender<Msg>,
    progress: &IngestProgress,
    halt: &AtomicBool,
) {
    let mut scratch = Scratch::new(granularity);
    loop {
        let next = work.lock().unwrap_or_else(|e| e.into_inner()).blocking_recv();
        let Some(Work { file, permit, download }) = next else { break };
        if halt.load(Ordering::Relaxed) {
            continue; // not journaled: the next run reads it
        }
        let fetched = download.unwrap_or_else(|e| Some(Err(objects[file].open_error(format!("the download stopped: {e}").into()))));
        if parse_file(file, &objects[file], fetched, &mut scratch, tx, progress) {
            halt.store(true, Ordering::Relaxed);
        }
        drop(permit); // the body is parsed and dropped: its budget is free again
        if tx.is_closed() {
            return; // the run is stopping
        }
    }
    // The rows (and files) this parser still holds.
    if !scratch.builder.is_empty() || !scratch.done.is_empty() {
        scratch.send(tx, progress);
    }
}

/// Reads one file to the end into `scratch`'s builder, sending a batch whenever it is full.
/// True when the store refused the credentials (the run must stop).
fn parse_file(
    file: usize,
    obj: &SourceObject,
    fetched: Option<Result<bytes::Bytes, SourceError>>,
    scratch: &mut Scratch,
    tx: &mpsc::Sender<Msg>,
    progress: &IngestProgress,
) -> bool {
    let mut result = FileResult::new(file);
    let mut bytes_read = ReadBytes::default();
    let buffer = std::mem::take(&mut scratch.buffer);
    let (buffer, flow) = walk_records(obj, fetched, buffer, bytes_read.counters(), &mut result, |index, bytes, whole, result| {
        let (parsed, bytes) = if whole {
            (schema::parse_record(bytes), bytes)
        } else {
            let (ev, len) = schema::parse_front(bytes)?;
            (Ok(ev), &bytes[..len])
        };
        let checked = parsed.and_then(|mut ev| {
            let c = schema::check_record(&ev, bytes)?;
            result.zoneless += u64::from(c.zoneless_time);
            scratch.builder.append(&mut ev, c, &obj.location);
            Ok(())
        });
        if let Err(e) = checked {
            result.rejects.push(rejection(obj, Some(index as u64), e.reason.code(), e.message, Some(bytes)));
        }
        if scratch.builder.len() >= ROWS_PER_BATCH {
            bytes_read.report(progress);
            if !scratch.send(tx, progress) {
                return Some((bytes.len(), std::ops::ControlFlow::Break(()))); // the run is stopping
            }
        }
        Some((bytes.len(), std::ops::ControlFlow::Continue(())))
    });
    scratch.buffer = buffer;
    if flow.is_break() {
        return false;
    }
    bytes_read.report(progress);
    let refused = result.refused;
    scratch.file_done(result, tx, progress);
    refused
}

/// Rows for the `ingest_log` table.
#[derive(Default)]
struct IngestLogBuilder {
    kind: StringBuilder,
    source: StringBuilder,
    index: Int64Builder,
    reason: StringBuilder,
    message: StringBuilder,
    record: StringBuilder,
    size: Int64Builder,
    records: Int64Builder,
    kept: Int64Builder,
    dups: Int64Builder,
    rejected: Int64Builder,
    run: StringBuilder,
    at: TimestampMicrosecondBuilder,
}

impl IngestLogBuilder {
    fn now() -> i64 {
        chrono::Utc::now().timestamp_micros()
    }

    fn reject(&mut self, r: &Rejection, run: &str) {
        self.kind.append_value("reject");
        self.source.append_value(&r.source);
        self.index.append_option(r.record_index.map(|i| i as i64));
        self.reason.append_value(&r.reason);
        self.message.append_value(&r.message);
        self.record.append_option(r.record.as_deref());
        self.size.append_null();
        self.records.append_null();
        self.kept.append_null();
        self.dups.append_null();
        self.rejected.append_null();
        self.run.append_value(run);
        self.at.append_value(Self::now());
    }

    #[allow(clippy::too_many_arguments)]
    fn file(&mut self, source: &str, size: u64, status: &str, records: u64, kept: u64, dups: u64, rejected: u64, run: &str) {
        self.kind.append_value("file");
        self.source.append_value(source);
        self.index.append_null();
        self.reason.append_value(status);
        self.message.append_null();
        self.record.append_null();
        self.size.append_value(size as i64);
        self.records.append_value(records as i64);
        self.kept.append_value(kept as i64);
        self.dups.append_value(dups as i64);
        self.rejected.append_value(rejected as i64);
        self.run.append_value(run);
        self.at.append_value(Self::now());
    }

    fn finish(mut self) -> RecordBatch {
        use std::sync::Arc as A;
        let columns: Vec<arrow::array::ArrayRef> = vec![
            A::new(self.kind.finish()),
            A::new(self.source.finish()),
            A::new(self.index.finish()),
            A::new(self.reason.finish()),
            A::new(self.message.finish()),
            A::new(self.record.finish()),
            A::new(self.size.finish()),
            A::new(self.records.finish()),
            A::new(self.kept.finish()),
            A::new(self.dups.finish()),
            A::new(self.rejected.finish()),
            A::new(self.run.finish()),
            A::new(self.at.finish().with_timezone("UTC")),
        ];
        RecordBatch::try_new(crate::schema::tables::ingest_log_schema(), columns).unwrap_or_else(|e| panic!("ingest_log schema mismatch: {e}"))
    }
}
