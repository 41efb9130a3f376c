//! `prism watch`: follows a trail's archive, ingests what lands, finds Insights as their
//! minutes settle, and delivers each new Insight record to the configured sinks.
//!
//! One step (a poll) is: list what is new ([`crate::source::follow`]), ingest it (the
//! ingest pipeline: journal, dedup, rejects), run Insights incrementally over the settled
//! minutes (as `prism insights run`), and hand the records no sink has yet to the sinks. The
//! first step is the catch-up: a full listing, less what the journal says is ingested.
//!
//! Each sink has its own worker and queue, so a sink that is down only grows its own backlog;
//! it retries with backoff and delivers in order when it is back. An acknowledgement is
//! journaled in the `deliveries` table ([`journal`]) after the sink acknowledged, so a crash
//! re-sends what was not journaled: at least once, never lost.
//!
//! One watch per lake: it holds the lake's `watch` lease ([`crate::lake::lease`]). A second is
//! refused, or with `lease.wait` waits as a standby and takes over when the first stops or dies.

pub mod alert;
pub mod aws;
pub mod journal;
pub mod metrics;
pub mod sinks;

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use chrono::{NaiveDateTime, Utc};
use serde_json::json;
use tokio::sync::{mpsc, watch};

use crate::ingest::{IngestError, IngestOptions, IngestProgress};
use crate::insights::{self, InsightsError, InsightsProgress, Mode, RunOptions};
use crate::lake::lease::LeaseOptions;
use crate::lake::{Lake, LakeError};
use crate::source::follow::Follower;
use crate::source::{Location, SourceError};
pub use alert::Alert;
pub use sinks::{Sink, SinkSpecError};

#[derive(Debug, thiserror::Error)]
pub enum WatchError {
    #[error(transparent)]
    Source(#[from] SourceError),
    #[error(transparent)]
    Ingest(#[from] IngestError),
    #[error(transparent)]
    Insights(#[from] InsightsError),
    #[error(transparent)]
    Lake(#[from] LakeError),
    #[error(transparent)]
    Maintain(#[from] crate::maintain::MaintainError),
    #[error("cannot serve metrics on {addr}")]
    Metrics {
        addr: std::net::SocketAddr,
        #[source]
        source: std::io::Error,
    },
}

/// What to follow and where alerts go.
pub struct WatchOptions {
    /// Ingest settings; `sources` are the locations to follow, `range.from` limits the catch-up.
    pub ingest: IngestOptions,
    pub interval: Duration,
    pub settle_minutes: i64,
    pub params: insights::detect::DetectorParams,
    /// Where AWS-format Insights files go (default: the lake).
    pub out: Option<String>,
    pub sinks: Vec<Sink>,
    /// The console's address as users reach it, for links in alerts.
    pub public_url: Option<url::Url>,
    /// First and longest wait between attempts to deliver to a failing sink.
    pub retry_first: Duration,
    pub retry_max: Duration,
    /// How often the lake's small files are compacted (each poll adds some).
    pub compact_every: Duration,
    /// Whether to wait for a watch already running on the lake (a standby).
    pub lease: LeaseOptions,
}

impl WatchOptions {
    pub fn new(ingest: IngestOptions) -> Self {
        WatchOptions {
            ingest,
            interval: Duration::from_secs(60),
            settle_minutes: 10,
            params: Default::default(),
            out: None,
            sinks: Vec::new(),
            public_url: None,
            retry_first: Duration::from_secs(1),
            retry_max: Duration::from_secs(300),
            compact_every: Duration::from_secs(3600),
            lease: LeaseOptions::default(),
        }
    }
}

/// Live counters: the log lines and `/metrics` read them.
pub struct Stats {
    pub polls: AtomicU64,
    pub poll_failures: AtomicU64,
    pub objects: AtomicU64,
    pub events: AtomicU64,
    pub rejects: AtomicU64,
    pub insights: AtomicU64,
    /// Seconds behind the newest log file's delivery time; -1 before the first file.
    pub lag_seconds: AtomicI64,
    pub sinks: Vec<SinkStats>,
}

pub struct SinkStats {
    pub id: String,
    pub target: String,
    pub delivered: AtomicU64,
    pub failures: AtomicU64,
    pub backlog: AtomicU64,
}

impl Stats {
    /// Counters for sinks given as (id, target).
    pub fn new(sinks: Vec<(String, String)>) -> Stats {
        Stats {
            polls: AtomicU64::new(0),
            poll_failures: AtomicU64::new(0),
            objects: AtomicU64::new(0),
            events: AtomicU64::new(0),
            rejects: AtomicU64::new(0),
            insights: AtomicU64::new(0),
            lag_seconds: AtomicI64::new(-1),
            sinks: sinks
                .into_iter()
                .map(|(id, target)| SinkStats { id, target, delivered: AtomicU64::new(0), failures: AtomicU64::new(0), backlog: AtomicU64::new(0) })
                .collect(),
        }
    }
}

/// Prints one JSON object per line on stdout: the watch's structured log.
fn log(line: serde_json::Value) {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

fn now_text() -> String {
    Utc::now().format("%Y-%m-%dT%H:%M:%SZ").to_string()
}

/// Runs until `stop` completes (then finishes the current step, lets each sink finish the
/// delivery it is making, journals, and returns). Errors of a step are logged and retried at
/// the next poll; only a lake that cannot be opened or journaled, or a lost lease, ends the run
/// with an error.
pub async fn run(opts: WatchOptions, stats: Arc<Stats>, stop: impl std::future::Future<Output = ()> + Send + 'static) -> Result<(), WatchError> {
    let (stop_tx, mut stop_rx) = watch::channel(false);
    // Stops the loop and the sinks: the caller's stop, or a lost lease.
    let stop_forward = Arc::new(stop_tx);
    let stop_tx = stop_forward.clone();
    tokio::spawn(async move {
        stop.await;
        let _ = stop_tx.send(true);
    });
    let mut followers = Vec::new();
    for s in &opts.ingest.sources {
        followers.push(Follower::new(Location::parse(s)?, opts.ingest.range));
    }
    let lake = Lake::open_or_create(&opts.ingest.lake, opts.ingest.granularity).await?;
    let enabled = enable_insights(lake).await?;
    let lake = Lake::open(&opts.ingest.lake).await?;
    let waiting = |h: &crate::lake::lease::Holder| log(json!({"time": now_text(), "event": "waiting", "holder": h.describe(Utc::now())}));
    let lease = tokio::select! {
        lease = lake.lease("watch", "prism watch", opts.lease, waiting) => lease?,
        _ = stop_rx.wait_for(|s| *s) => {
            log(json!({"time": now_text(), "event": "stop", "backlog": 0}));
            return Ok(());
        }
    };
    let lost = lease.lost();
    let mut journal = journal::Journal::open(&lake).await?;
    let mut handled = journal.handled().await?;
    register_sinks(&lake, &opts.sinks, &mut journal, &mut handled).await?;
    drop(lake);
    log(json!({"time": now_text(), "event": "start", "lake": opts.ingest.lake, "sources": opts.ingest.sources, "insights_enabled_now": enabled,
        "sinks": opts.sinks.iter().map(|s| json!({"sink": s.id, "target": s.target})).collect::<Vec<_>>()}));

    // The journal writer and one worker per sink.
    let (ack_tx, ack_rx) = mpsc::unbounded_channel::<journal::Row>();
    let writer = tokio::spawn(write_journal(journal, ack_rx));
    let mut queues = Vec::new();
    let mut workers = Vec::new();
    let sinks: Vec<Arc<Sink>> = opts.sinks.into_iter().map(Arc::new).collect();
    for (i, sink) in sinks.iter().enumerate() {
        let (tx, rx) = mpsc::unbounded_channel::<Alert>();
        queues.push(tx);
        let retry = (opts.retry_first, opts.retry_max);
        workers.push(tokio::spawn(deliver(sink.clone(), i, stats.clone(), rx, ack_tx.clone(), stop_rx.clone(), retry)));
    }
    drop(ack_tx);

    let mut step = Step { started: false, newest_stamp: None, analyse: true, enqueue: true, kept: Default::default(), retry: Vec::new() };
    let mut last_tidy = Instant::now();
    loop {
        let began = Instant::now();
        let mut line = serde_json::Map::new();
        line.insert("time".into(), json!(now_text()));
        line.insert("poll".into(), json!(stats.polls.fetch_add(1, Ordering::Relaxed) + 1));
        match step.run(&opts.ingest, &opts.out, opts.params, opts.settle_minutes, &mut followers, &stats, &mut line).await {
            Ok(()) => {
                // New records, to every sink that has not handled them.
                if step.enqueue {
                    match enqueue(&opts.ingest.lake, opts.public_url.as_ref(), &sinks, &mut handled, &queues).await {
                        Ok(n) => {
                            step.enqueue = false;
                            line.insert("alerts_queued".into(), json!(n));
                        }
                        Err(e) => {
                            stats.poll_failures.fetch_add(1, Ordering::Relaxed);
                            line.insert("error".into(), json!(crate::error::report(&e)));
                        }
                    }
                }
            }
            Err(e) => {
                stats.poll_failures.fetch_add(1, Ordering::Relaxed);
                line.insert("error".into(), json!(crate::error::report(&e)));
            }
        }
        let lag = stats.lag_seconds.load(Ordering::Relaxed);
        if lag >= 0 {
            line.insert("lag_seconds".into(), json!(lag));
        }
        line.insert(
            "sinks".into(),
            json!(
                stats
                    .sinks
                    .iter()
                    .map(|s| json!({"target": s.target, "delivered": s.delivered.load(Ordering::Relaxed),
                "failures": s.failures.load(Ordering::Relaxed), "backlog": s.backlog.load(Ordering::Relaxed)}))
                    .collect::<Vec<_>>()
            ),
        );
        // Each poll adds a small file to the partitions it wrote; they are compacted hourly,
        // as `prism optimize` would, so queries and polls keep opening few files.
        if last_tidy.elapsed() >= opts.compact_every && !line.contains_key("error") {
            last_tidy = Instant::now();
            // The compaction rewrites events files the kept rollups know by name.
            step.kept = Default::default();
            match tidy(&opts.ingest.lake).await {
                Ok(files) => line.insert("compacted_files".into(), json!(files)),
                Err(e) => line.insert("error".into(), json!(crate::error::report(&e))),
            };
        }
        line.insert("seconds".into(), json!(seconds(began)));
        log(serde_json::Value::Object(line));
        if *stop_rx.borrow() || lost.is_cancelled() {
            break;
        }
        tokio::select! {
            _ = tokio::time::sleep(opts.interval) => {}
            _ = stop_rx.changed() => break,
            () = lost.cancelled() => break,
        }
    }
    if lost.is_cancelled() {
        // Another watch took over: the sinks stop after the delivery they are making.
        let _ = stop_forward.send(true);
    }
    // Workers end after the delivery they are making; the writer journals what they acked.
    drop(queues);
    for w in workers {
        let _ = w.await;
    }
    let journaled = writer.await.unwrap_or(Ok(()));
    log(json!({"time": now_text(), "event": "stop", "backlog": stats.sinks.iter().map(|s| s.backlog.load(Ordering::Relaxed)).sum::<u64>()}));
    if lease.is_lost() {
        return Err(WatchError::Lake(lease.lost_error()));
    }
    let released = lease.release().await;
    journaled?;
    Ok(released?)
}

/// Compacts the tables a watch writes (`prism optimize`), but `deliveries`, which the journal
/// writer may be appending to; returns the files replaced. Replaced files stay until
/// `prism vacuum`.
async fn tidy(lake: &str) -> Result<u64, WatchError> {
    let mut opts = crate::maintain::OptimizeOptions::new(lake);
    opts.skip_tables = vec![crate::schema::tables::DELIVERIES];
    let summary = crate::maintain::optimize(&opts, Default::default()).await?;
    Ok(summary.tables.iter().map(|t| t.files_removed).sum())
}

/// Both Insights types are enabled on a lake that has none, as `prism backfill` does: a
/// monitor is run for its Insights. Returns the types it enabled.
async fn enable_insights(mut lake: Lake) -> Result<Vec<String>, WatchError> {
    if !insights::selectors_of(lake.config()).is_empty() || !lake.config().management_events {
        return Ok(Vec::new());
    }
    let types = [insights::CALL_RATE, insights::ERROR_RATE];
    insights::put_selectors(&mut lake, insights::Selector::management(&types)).await?;
    Ok(types.map(str::to_owned).to_vec())
}

/// A sink used for the first time is registered, with the records already in the lake marked
/// `before` (not sent to it).
async fn register_sinks(lake: &Lake, sinks: &[Sink], journal: &mut journal::Journal, handled: &mut HashMap<String, HashSet<String>>) -> Result<(), WatchError> {
    let new: Vec<&Sink> = sinks.iter().filter(|s| !handled.contains_key(&s.id)).collect();
    if new.is_empty() {
        return Ok(());
    }
    let existing = journal::insight_records(lake).await?;
    let mut rows = Vec::new();
    for sink in new {
        let row = |status, id: Option<&(String, String, String, String)>| journal::Row {
            sink: sink.id.clone(),
            target: sink.target.clone(),
            status,
            event_id: id.map(|r| r.0.clone()),
            shared_id: id.map(|r| r.1.clone()),
            state: id.map(|r| r.2.clone()),
            attempts: None,
            response: None,
        };
        rows.push(row("registered", None));
        rows.extend(existing.iter().map(|r| row("before", Some(r))));
        handled.insert(sink.id.clone(), existing.iter().map(|r| r.0.clone()).collect());
    }
    journal.append(&rows).await?;
    Ok(())
}

/// Sends each sink the records it has not handled; returns how many alerts were queued.
async fn enqueue(
    lake: &str,
    public_url: Option<&url::Url>,
    sinks: &[Arc<Sink>],
    handled: &mut HashMap<String, HashSet<String>>,
    queues: &[mpsc::UnboundedSender<Alert>],
) -> Result<u64, LakeError> {
    if sinks.is_empty() {
        return Ok(0);
    }
    let lake = Lake::open(lake).await?;
    let records = journal::insight_records(&lake).await?;
    let mut queued = 0;
    for (sink, queue) in sinks.iter().zip(queues) {
        let done = handled.entry(sink.id.clone()).or_default();
        for (id, _, _, json) in &records {
            if done.contains(id) {
                continue;
            }
            let Ok(record) = serde_json::from_str(json) else {
                // Prism wrote it; a record that does not parse is reported, never skipped quietly.
                log(json!({"time": now_text(), "event": "unreadable_record", "eventID": id, "target": sink.target}));
                continue;
            };
            if queue.send(Alert::new(record, public_url)).is_ok() {
                done.insert(id.clone());
                queued += 1;
            }
        }
    }
    Ok(queued)
}

/// What steps carry from one to the next.
struct Step {
    /// The catch-up (a full listing) is done.
    started: bool,
    /// The newest delivery time seen in a log file's name.
    newest_stamp: Option<NaiveDateTime>,
    /// Insights are to run (new events were written, or the last run failed).
    analyse: bool,
    /// Records are to be handed to the sinks (new ones were found, or the last try failed).
    enqueue: bool,
    /// The rollups and deduplication index, kept from poll to poll: building them reads the
    /// lake.
    kept: crate::ingest::Kept,
    /// Files to read again at the next poll (the follower reports each key only once).
    retry: Vec<crate::source::SourceObject>,
}

impl Step {
    /// Lists, ingests and analyses; records what it did in `line`.
    #[allow(clippy::too_many_arguments)]
    async fn run(
        &mut self,
        ingest: &IngestOptions,
        out: &Option<String>,
        params: insights::detect::DetectorParams,
        settle_minutes: i64,
        followers: &mut [Follower],
        stats: &Stats,
        line: &mut serde_json::Map<String, serde_json::Value>,
    ) -> Result<(), WatchError> {
        let catch_up = !self.started;
        // Files of earlier polls to read again (unreadable then, or their ingest failed).
        let mut objects = std::mem::take(&mut self.retry);
        let mut skipped = 0u64;
        let listed = Instant::now();
        for f in followers.iter_mut() {
            let listing = if catch_up { f.start().await } else { f.poll().await };
            match listing {
                Ok(listing) => {
                    skipped += listing.skipped.len() as u64;
                    objects.extend(listing.objects);
                }
                Err(e) => {
                    // The followers before this one noted their keys as seen: kept for later.
                    self.retry = objects;
                    return Err(e.into());
                }
            }
        }
        let mut distinct = HashSet::new();
        objects.retain(|o| distinct.insert(o.location.clone()));
        if catch_up {
            // What earlier runs ingested is left out, as `prism ingest` does.
            let lake = Lake::open(&ingest.lake).await?;
            let done = lake.ingested_sources().await?;
            let before = objects.len();
            objects.retain(|o| !done.contains(&o.location));
            line.insert("catch_up".into(), json!({"already_ingested": before - objects.len()}));
        }
        line.insert("list_seconds".into(), json!(seconds(listed)));
        line.insert("new_objects".into(), json!(objects.len()));
        line.insert("keys_held".into(), json!(followers.iter().map(Follower::keys_held).sum::<usize>()));
        line.insert("skipped".into(), json!(skipped));
        for o in &objects {
            if let Some(stamp) = delivery_stamp(&o.location) {
                self.newest_stamp = self.newest_stamp.max(Some(stamp));
            }
        }
        if !objects.is_empty() {
            let listed = objects.clone();
            let began = Instant::now();
            let summary = match crate::ingest::ingest_listed(ingest, objects, Arc::new(IngestProgress::default()), &mut self.kept).await {
                Ok(s) => s,
                Err(e) => {
                    self.kept = Default::default(); // its state after a failed commit is not known
                    // Read again next poll; what this run committed is then left out as
                    // duplicates, and the minutes it wrote are analysed.
                    self.retry = listed;
                    self.analyse = true;
                    return Err(e.into());
                }
            };
            let unread: HashSet<&String> = summary.unread.iter().collect();
            self.retry = listed.into_iter().filter(|o| unread.contains(&o.location)).collect();
            stats.objects.fetch_add(summary.files_read, Ordering::Relaxed);
            stats.events.fetch_add(summary.records_written, Ordering::Relaxed);
            stats.rejects.fetch_add(summary.records_rejected + summary.files_damaged, Ordering::Relaxed);
            self.analyse |= summary.records_written > 0;
            line.insert(
                "ingest".into(),
                json!({"files": summary.files_read, "events": summary.records_written, "duplicates": summary.duplicates_dropped,
                    "rejected": summary.records_rejected, "damaged_files": summary.files_damaged, "unread": summary.unread.len(),
                    "seconds": seconds(began)}),
            );
        }
        self.started = true;
        if let Some(stamp) = self.newest_stamp {
            stats.lag_seconds.store((Utc::now().naive_utc() - stamp).num_seconds().max(0), Ordering::Relaxed);
        }
        // Minutes settle only as newer events arrive, so a poll that wrote none has nothing
        // new to analyse (the catch-up always runs: a crash may have left minutes unanalysed).
        if self.analyse {
            let mut run = RunOptions::new(ingest.lake.clone(), Mode::Incremental { until: None });
            run.out = out.clone();
            run.params = params;
            run.settle_minutes = settle_minutes;
            let began = Instant::now();
            let summary = match insights::run_with(&run, &InsightsProgress::default(), &mut self.kept).await {
                Ok(s) => s,
                Err(e) => {
                    self.kept = Default::default();
                    // It may have stored records before failing; a re-run finds them stored.
                    self.enqueue = true;
                    return Err(e.into());
                }
            };
            line.insert("insights_seconds".into(), json!(seconds(began)));
            self.analyse = false;
            self.enqueue |= summary.records_written > 0;
            stats.insights.fetch_add(summary.records_written, Ordering::Relaxed);
            line.insert("insights".into(), json!(summary.records_written));
            line.insert("open_insights".into(), json!(summary.open));
            if let Some(to) = summary.analysed_to {
                line.insert("analysed_to".into(), json!(to));
            }
        }
        Ok(())
    }
}

/// Seconds since `t`, to the millisecond, for the log lines.
fn seconds(t: Instant) -> f64 {
    (t.elapsed().as_secs_f64() * 1000.0).round() / 1000.0
}

/// The `YYYYMMDDTHHmmZ` delivery time in a CloudTrail log file's name.
fn delivery_stamp(location: &str) -> Option<NaiveDateTime> {
    let name = location.rsplit(['/', '\\']).next()?;
    NaiveDateTime::parse_from_str(name.split('_').nth(3)?, "%Y%m%dT%H%MZ").ok()
}

/// The longest one delivery attempt may take.
const DELIVERY_TIMEOUT: Duration = Duration::from_secs(90);

/// A sink's worker: delivers its queue in order, retrying the head with backoff, and sends
/// each acknowledgement to the journal writer. Ends when the queue is closed or a stop is
/// asked for (after the delivery under way); what is left is sent after the next start.
async fn deliver(
    sink: Arc<Sink>,
    index: usize,
    stats: Arc<Stats>,
    mut rx: mpsc::UnboundedReceiver<Alert>,
    acks: mpsc::UnboundedSender<journal::Row>,
    mut stop: watch::Receiver<bool>,
    (retry_first, retry_max): (Duration, Duration),
) {
    let counters = &stats.sinks[index];
    let mut queue: VecDeque<Alert> = VecDeque::new();
    let mut attempts = 0i64;
    loop {
        if *stop.borrow() {
            break;
        }
        if queue.is_empty() {
            tokio::select! {
                a = rx.recv() => match a {
                    Some(a) => queue.push_back(a),
                    None => break,
                },
                _ = stop.changed() => break,
            }
        }
        while let Ok(a) = rx.try_recv() {
            queue.push_back(a);
        }
        counters.backlog.store(queue.len() as u64, Ordering::Relaxed);
        let Some(alert) = queue.front() else { continue };
        attempts += 1;
        // Sinks time out themselves; this bounds any (an SDK call, a stuck disk) so a stop waits
        // for no more than this.
        let attempt = tokio::time::timeout(DELIVERY_TIMEOUT, sink.deliver(alert))
            .await
            .unwrap_or_else(|_| Err(format!("no answer within {}s", DELIVERY_TIMEOUT.as_secs())));
        match attempt {
            Ok(response) => {
                let row = journal::Row {
                    sink: sink.id.clone(),
                    target: sink.target.clone(),
                    status: "delivered",
                    event_id: Some(alert.event_id.clone()),
                    shared_id: Some(alert.shared_id.clone()),
                    state: Some(alert.state.clone()),
                    attempts: Some(attempts),
                    response: Some(response),
                };
                let _ = acks.send(row);
                counters.delivered.fetch_add(1, Ordering::Relaxed);
                log(
                    json!({"time": now_text(), "event": "delivered", "target": sink.target, "eventID": alert.event_id, "state": alert.state, "attempts": attempts, "summary": alert.summary}),
                );
                queue.pop_front();
                counters.backlog.store(queue.len() as u64, Ordering::Relaxed);
                attempts = 0;
                if *stop.borrow() {
                    break;
                }
            }
            Err(error) => {
                counters.failures.fetch_add(1, Ordering::Relaxed);
                let wait = retry_first.saturating_mul(1u32 << (attempts - 1).clamp(0, 16) as u32).min(retry_max);
                log(json!({"time": now_text(), "event": "delivery_failed", "target": sink.target, "eventID": alert.event_id, "attempts": attempts,
                    "error": error, "retry_in_seconds": wait.as_secs_f64(), "backlog": queue.len()}));
                tokio::select! {
                    _ = tokio::time::sleep(wait) => {}
                    _ = stop.changed() => break,
                }
            }
        }
    }
    counters.backlog.store(queue.len() as u64 + rx.len() as u64, Ordering::Relaxed);
}

/// Journals acknowledgements, as many as have arrived in one commit. A failed commit is
/// retried with the same rows; when the senders are gone, it drains and ends.
async fn write_journal(mut journal: journal::Journal, mut rx: mpsc::UnboundedReceiver<journal::Row>) -> Result<(), LakeError> {
    let mut rows = Vec::new();
    let mut final_tries = 0;
    loop {
        if rows.is_empty() {
            match rx.recv().await {
                Some(r) => rows.push(r),
                None => return Ok(()),
            }
        }
        while let Ok(r) = rx.try_recv() {
            rows.push(r);
        }
        match journal.append(&rows).await {
            Ok(()) => rows.clear(),
            Err(e) => {
                log(json!({"time": now_text(), "event": "journal_failed", "error": crate::error::report(&e), "rows": rows.len()}));
                // Once the senders are gone (stopping), a few more tries, then the error: the
                // rows' records are sent again at the next start.
                if rx.is_closed() && rx.is_empty() {
                    final_tries += 1;
                    if final_tries > 5 {
                        return Err(e);
                    }
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delivery_time_from_cloudtrail_names() {
        let t = delivery_stamp("s3://b/AWSLogs/1/CloudTrail/r/2026/01/02/1_CloudTrail_r_20260102T0305Z_abc.json.gz");
        assert_eq!(t.map(|t| t.to_string()).as_deref(), Some("2026-01-02 03:05:00"));
        assert_eq!(delivery_stamp("/x/export.json"), None);
    }
}
