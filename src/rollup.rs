//! Per-minute and per-hour API call counts kept beside the events, so that Insights read
//! thousands of rows per series instead of millions of events.
//!
//! The `rollups` table is *derived* from `events`: [`Rollups::catch_up`] counts every events file not
//! yet counted, and writes the counts (summed over those files) with one `file` row per file
//! counted, in one commit. Ingest calls it after each events commit, handing over the rows it
//! just committed, which are counted in memory rather than read back from the new files
//! ([`Rollups::catch_up_after`]); Insights call it before reading. A crash between the two commits therefore loses nothing (the next catch-up counts
//! the files the crash left out), and since counts and their file markers land together, no
//! file is counted twice.
//!
//! Two kinds of row share the table:
//! - `minute`: calls per (account, region, minute, API, error code, read-only, management):
//!   the series the detector scores. Only management and data events are counted (the two
//!   categories Insights analyse), so `management = false` rows are data events; network
//!   activity events are in `events` and in the `file` rows' totals only;
//! - `hour`: the same per hour and also per caller (`useridentityarn`, `useragent`): the
//!   baseline attributions of an Insight, over 7 days, without reading 7 days of events.

use std::collections::HashSet;

use foldhash::HashMap;
use std::sync::Arc;

use arrow::array::{
    Array, ArrayRef, AsArray, BooleanArray, BooleanBuilder, Int64Builder, ListArray, RecordBatch, StringArray, StringBuilder, StructArray,
    TimestampMicrosecondArray, TimestampMicrosecondBuilder,
};

use deltalake::DeltaTable;
use futures::{StreamExt, TryStreamExt};

use crate::lake::{self, AppendOutcome, Lake, LakeError, PartitionFile};
use crate::schema::tables::ROLLUPS as ROLLUPS_TABLE;

pub const MINUTE: &str = "minute";
pub const HOUR: &str = "hour";
/// One row per events file counted (`datafile`, and its events in `calls`).
pub const FILE: &str = "file";
/// The order `prism optimize` writes rollups in: one series' rows together, in time order.
pub const SORT_COLUMNS: [&str; 6] = ["kind", "recipientaccountid", "awsregion", "eventsource", "eventname", "period"];

const MICROS_PER_MINUTE: i64 = 60_000_000;
const MICROS_PER_HOUR: i64 = 60 * MICROS_PER_MINUTE;

/// Events files counted per rollups commit.
const CHUNK_FILES: usize = 2_000;

/// What one catch-up did.
#[derive(Debug, Default, Clone, Copy)]
pub struct CatchUp {
    pub files: u64,
    pub events: u64,
    pub rows: u64,
    /// Of `files`, those counted from an append's rows in memory rather than read back.
    pub from_memory: u64,
}

/// The lake's `rollups` table, opened by its owner (as the scheduler's history is), with the
/// set of events files it already counts.
pub struct Rollups {
    table: DeltaTable,
    /// Events files the rollups already count, loaded on first use.
    counted: Option<HashSet<String>>,
    /// Counts of the rows ingest wrote to events files still open ([`lake::OpenFiles`]), by
    /// file: committed with the counts of the append that commits the file.
    held: HashMap<u64, Held>,
}

/// Counts held for a partition's open file.
#[derive(Default)]
struct Held {
    events: u64,
    /// Keys owned (the rows they were counted from are gone), merged into the counts of the
    /// committing append's rows, so that its rollups file is written in one sorted run.
    hours: Vec<(Key, i64)>,
    minutes: Vec<(Key, i64)>,
}

impl Rollups {
    /// Opens the lake's rollups (creating the table on a lake older than it).
    pub async fn open(lake: &Lake) -> Result<Rollups, LakeError> {
        let table = lake.table(ROLLUPS_TABLE, crate::schema::tables::rollups_schema(), &[]).await?;
        Ok(Rollups { table, counted: None, held: HashMap::default() })
    }

    pub fn table(&self) -> &DeltaTable {
        &self.table
    }

    /// Takes the table at a newer version, after a compaction of its files.
    pub fn replace_table(&mut self, table: DeltaTable) {
        self.table = table;
    }

    /// Counts every events file of `lake` that the rollups do not cover yet, in commits of
    /// [`CHUNK_FILES`] files.
    pub async fn catch_up(&mut self, lake: &Lake) -> Result<CatchUp, LakeError> {
        self.catch_up_after(lake, None).await
    }

    /// [`Rollups::catch_up`] right after an append: its rows are counted in memory rather
    /// than read back from its files. Those of files it committed are committed with the
    /// counts held for the same files' rows from earlier appends, in one commit; those of
    /// files still open are held until an append commits them. Only the other files (a
    /// crashed run's) are read.
    pub async fn catch_up_after(&mut self, lake: &Lake, appended: Option<&AppendOutcome>) -> Result<CatchUp, LakeError> {
        let mut out = CatchUp::default();
        if self.counted.is_none() {
            self.counted = Some(lake::string_set(&lake::read_table_columns(&self.table, &["datafile"], None).await?));
        }
        let done = self.counted.as_ref().map(|d| d.len()).unwrap_or(0);
        let mut pending: Vec<PartitionFile> =
            lake::partition_files(lake.events()).into_iter().filter(|f| self.counted.as_ref().is_none_or(|d| !d.contains(&f.path))).collect();
        tracing::debug!(done, pending = pending.len(), "rollup catch-up");
        if let Some(appended) = appended {
            let projected = appended.stored.iter().flat_map(|s| s.batches.iter()).map(project).collect::<Result<Vec<_>, _>>()?;
            let events = projected.iter().map(Events::new).collect::<Result<Vec<_>, _>>()?;
            self.hold(appended, &events);
            if let Some(counted) = self.count_committed(lake, appended, &events, &pending).await? {
                pending.retain(|f| !self.counted.as_ref().is_some_and(|d| d.contains(&f.path)));
                out = counted;
            }
        }
        let pending: Vec<(String, String)> = pending.into_iter().map(|f| (f.path, f.region)).collect();
        if pending.is_empty() {
            return Ok(out);
        }
        // In chunks, each its own commit, so memory stays bounded on a lake never rolled up.
        let table = lake.events().clone();
        for chunk in pending.chunks(CHUNK_FILES) {
            let mut files = chunk.to_vec();
            let shown = format!("{}{ROLLUPS_TABLE}", lake.url());
            let (mut conflicts, mut counted_events) = (0, 0);
            loop {
                // Counts add up across files, so one commit writes each key once.
                let (counted, total) = count_files(&table, &files).await?;
                let batch = RowsBuilder::batch(counted.iter().map(|(path, events)| (path.as_str(), *events)), |rows| rows.push(&total))?;
                let n = batch.num_rows() as u64;
                // Only on the version read: another writer may have counted some of these
                // files meanwhile (it sees this run's events files once they are committed).
                if lake::append_if_current(&mut self.table, vec![batch], &shown).await?.is_some() {
                    out.rows += n;
                    counted_events = counted.iter().map(|(_, events)| events).sum::<u64>();
                    break;
                }
                conflicts += 1;
                if conflicts > lake::MAX_CONFLICTS {
                    return Err(lake::outpaced(&shown));
                }
                // Counted again without the files the other writer counted (rare: a race).
                let theirs = self.counted_since(&shown).await?;
                files.retain(|(path, _)| !theirs.contains(path));
                if files.is_empty() {
                    break;
                }
            }
            out.files += files.len() as u64;
            out.events += counted_events;
            if let Some(d) = self.counted.as_mut() {
                d.extend(files.into_iter().map(|(p, _)| p));
            }
        }
        Ok(out)
    }

    /// Counts the rows an append wrote to files it left open, and holds the counts.
    fn hold(&mut self, appended: &AppendOutcome, events: &[Events]) {
        let Some(stored) = &appended.stored else { return };
        let files: HashSet<u64> = appended.committed.iter().map(|c| c.file).collect();
        for p in stored.partitions.iter().filter(|p| !files.contains(&p.file)) {
            let mut counts = RefCounts::new();
            counts.add_rows(p, events);
            let held = self.held.entry(p.file).or_default();
            held.events += counts.events;
            held.hours.extend(counts.hours.into_rows().into_iter().map(|(k, n)| (k.owned(), n)));
            held.minutes.extend(counts.minutes.into_rows().into_iter().map(|(k, n)| (k.owned(), n)));
        }
    }

    /// Counts the files an append committed from their rows in memory (this append's, and
    /// the counts held from earlier ones), and commits the counts if the table is still at
    /// the version read. None, having done nothing, when the read path must do it: a file
    /// already counted or without a row count, a file rewritten without another writer's
    /// rows, rows that do not add up to the files' (which would be a bug), or another
    /// writer's commit first.
    async fn count_committed(
        &mut self,
        lake: &Lake,
        appended: &AppendOutcome,
        events: &[Events<'_>],
        pending: &[PartitionFile],
    ) -> Result<Option<CatchUp>, LakeError> {
        if appended.committed.is_empty() {
            return Ok(None);
        }
        let rows_of: HashMap<&str, Option<u64>> = pending.iter().map(|f| (f.path.as_str(), f.rows)).collect();
        let (mut files, mut helds, mut held_events, mut readable) = (Vec::new(), Vec::new(), 0u64, true);
        for c in &appended.committed {
            let held = self.held.remove(&c.file);
            readable &= !c.rewritten;
            for path in &c.files {
                match rows_of.get(path.as_str()) {
                    Some(Some(n)) => files.push((path.as_str(), *n)),
                    _ => readable = false,
                }
            }
            if let Some(held) = held {
                held_events += held.events;
                helds.push(held);
            }
        }
        let Some(stored) = appended.stored.as_ref().filter(|_| readable) else { return Ok(None) };
        let mut counts = RefCounts::new();
        let committed: HashSet<u64> = appended.committed.iter().map(|c| c.file).collect();
        for p in stored.partitions.iter().filter(|p| committed.contains(&p.file)) {
            counts.add_rows(p, events);
        }
        let in_files: u64 = files.iter().map(|(_, n)| n).sum();
        if counts.events + held_events != in_files {
            tracing::warn!(counted = counts.events + held_events, in_files, "rollups: an append's rows do not add up to its files; reading them back");
            return Ok(None);
        }
        let batch = RowsBuilder::batch(files.iter().copied(), |rows| rows.push_with_held(counts, &helds))?;
        let n = batch.num_rows() as u64;
        let shown = format!("{}{ROLLUPS_TABLE}", lake.url());
        if lake::append_if_current(&mut self.table, vec![batch], &shown).await?.is_none() {
            return Ok(None);
        }
        if let Some(d) = self.counted.as_mut() {
            d.extend(files.iter().map(|(p, _)| p.to_string()));
        }
        let files = files.len() as u64;
        Ok(Some(CatchUp { files, events: in_files, rows: n, from_memory: files }))
    }

    /// Takes the table at its latest version; returns the events files that the commits of
    /// other writers since counted (which are added to `counted`).
    async fn counted_since(&mut self, shown: &str) -> Result<HashSet<String>, LakeError> {
        let theirs = lake::string_set(&lake::columns_added_since(&mut self.table, &["datafile"], shown).await?);
        if let Some(d) = self.counted.as_mut() {
            d.extend(theirs.iter().cloned());
        }
        Ok(theirs)
    }

    /// Records events files that hold rows already counted under other files (compaction's
    /// output), with no counts, so no catch-up counts them again. Called *before* the commit
    /// that swaps the files in: a crash between the two leaves markers of files never
    /// committed, which nothing reads. Every file being replaced must be counted first
    /// ([`Rollups::catch_up`]), or its rows would never be.
    pub async fn mark_rewritten(&mut self, lake: &Lake, paths: &[String]) -> Result<(), LakeError> {
        let mut rows = RowsBuilder::default();
        for p in paths {
            rows.push_file(p, 0);
        }
        self.append(lake, rows).await?;
        if let Some(d) = self.counted.as_mut() {
            d.extend(paths.iter().cloned());
        }
        Ok(())
    }

    /// Appends `rows` in one commit; returns how many.
    async fn append(&mut self, lake: &Lake, rows: RowsBuilder) -> Result<u64, LakeError> {
        let batch = rows.finish()?;
        let n = batch.num_rows() as u64;
        self.table = lake::append(&self.table, vec![batch], &format!("{}{ROLLUPS_TABLE}", lake.url())).await?;
        Ok(n)
    }
}

/// Counts the events files `files` (path, region), 8 at a time: each file's event count, and
/// the counts of all of them.
async fn count_files(table: &DeltaTable, files: &[(String, String)]) -> Result<(Vec<(String, u64)>, Counts), LakeError> {
    let mut per_file = Vec::with_capacity(files.len());
    let mut total = Counts::default();
    let mut counting = futures::stream::iter(files.iter().cloned().map(|(path, region)| async move {
        let batches = lake::read_files_columns(table, std::slice::from_ref(&path), PROJECTION).await?;
        let mut counts = Counts::default();
        for b in &batches {
            counts.add(b, &region)?;
        }
        Ok::<_, LakeError>((path, counts))
    }))
    .buffer_unordered(8);
    while let Some((path, counts)) = counting.try_next().await? {
        per_file.push((path, counts.events));
        total.absorb(counts);
    }
    Ok((per_file, total))
}

/// The columns of [`PROJECTION`] (top level) of a batch of every events column: [`Events`]
/// reads `resources` and `sourceipaddress` when a batch holds them, which counting does not need.
fn project(b: &RecordBatch) -> Result<RecordBatch, LakeError> {
    let schema = b.schema();
    let mut indices = Vec::new();
    for name in PROJECTION.iter().filter_map(|c| c.split('.').next()) {
        let i = schema.index_of(name).map_err(|source| LakeError::Arrow { context: "projecting events for the rollups".into(), source })?;
        if !indices.contains(&i) {
            indices.push(i);
        }
    }
    b.project(&indices).map_err(|source| LakeError::Arrow { context: "projecting events for the rollups".into(), source })
}

/// The events columns a rollup reads (`awsregion` comes from the partition).
pub(crate) const PROJECTION: &[&str] = &[
    "recipientaccountid",
    "eventtime",
    "eventsource",
    "eventname",
    "errorcode",
    "readonly",
    "managementevent",
    "eventcategory",
    "useragent",
    "useridentity.arn",
    "useridentity.invokedby",
    "useridentity.accountid",
];

fn get(a: &StringArray, i: usize) -> Option<&str> {
    a.is_valid(i).then(|| a.value(i))
}

#[derive(Clone, PartialEq, Eq, Hash)]
struct Key {
    account: String,
    region: String,
    period: i64,
    source: String,
    name: String,
    error: Option<String>,
    readonly: Option<bool>,
    management: bool,
    arn: Option<String>,
    agent: Option<String>,
}

/// Counts of one events file.
#[derive(Default)]
struct Counts {
    minutes: HashMap<Key, i64>,
    hours: HashMap<Key, i64>,
    events: u64,
}

/// A key borrowing from the batches counted: counting allocates per distinct key, not per event.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct KeyRef<'a> {
    account: &'a str,
    region: &'a str,
    period: i64,
    source: &'a str,
    name: &'a str,
    error: Option<&'a str>,
    readonly: Option<bool>,
    management: bool,
    arn: Option<&'a str>,
    agent: Option<&'a str>,
}

impl KeyRef<'_> {
    fn owned(&self) -> Key {
        Key {
            account: self.account.to_owned(),
            region: self.region.to_owned(),
            period: self.period,
            source: self.source.to_owned(),
            name: self.name.to_owned(),
            error: self.error.map(str::to_owned),
            readonly: self.readonly,
            management: self.management,
            arn: self.arn.map(str::to_owned),
            agent: self.agent.map(str::to_owned),
        }
    }
}

impl Key {
    fn borrowed(&self) -> KeyRef<'_> {
        KeyRef {
            account: &self.account,
            region: &self.region,
            period: self.period,
            source: &self.source,
            name: &self.name,
            error: self.error.as_deref(),
            readonly: self.readonly,
            management: self.management,
            arn: self.arn.as_deref(),
            agent: self.agent.as_deref(),
        }
    }
}

/// Counts keyed by strings borrowed from the batches counted.
struct RefCounts<'a> {
    minutes: Windowed<'a>,
    hours: Windowed<'a>,
    events: u64,
}

impl<'a> RefCounts<'a> {
    fn new() -> Self {
        RefCounts { minutes: Windowed::default(), hours: Windowed::default(), events: 0 }
    }

    /// Counts the rows an append wrote to one partition's file (`events`: its batches).
    fn add_rows(&mut self, p: &'a lake::StoredPartition, events: &[Events<'a>]) {
        for &(b, r) in &p.rows {
            if let Some(e) = events.get(b).and_then(|c| c.view(r)) {
                self.add(&p.region, &e);
            }
        }
    }

    /// Counts one event of `region`: its minute, and its hour with its caller.
    fn add(&mut self, region: &'a str, e: &EventView<'a>) {
        self.events += 1;
        if e.category.is_none() {
            return;
        }
        let mut key = KeyRef {
            account: e.account,
            region,
            period: e.time.div_euclid(MICROS_PER_MINUTE) * MICROS_PER_MINUTE,
            source: e.source,
            name: e.name,
            error: e.error,
            readonly: e.readonly,
            management: e.management,
            arn: None,
            agent: None,
        };
        self.minutes.add(key);
        key.period = e.time.div_euclid(MICROS_PER_HOUR) * MICROS_PER_HOUR;
        key.arn = e.caller;
        key.agent = e.agent;
        self.hours.add(key);
    }
}

/// Counts by key of events that come in time order, as every events file and every append's
/// partition holds them: only the keys of the current period (and region) are in a hash map,
/// which stays small enough for the cache, and move to a list when the period changes. (One
/// map of every key of a commit, about 70,000 for 110,000 events, cost a cache miss per event.)
/// Events out of order are counted right too: a period seen again keeps every key in the map
/// from then on, and the list's keys are added to it at the end.
#[derive(Default)]
struct Windowed<'a> {
    open: HashMap<KeyRef<'a>, i64>,
    /// The (region, period) of the keys in `open`, while events come in order.
    current: Option<(&'a str, i64)>,
    closed: Vec<(KeyRef<'a>, i64)>,
    closed_periods: HashSet<(&'a str, i64)>,
    out_of_order: bool,
}

impl<'a> Windowed<'a> {
    fn add(&mut self, key: KeyRef<'a>) {
        if !self.out_of_order && self.current.is_none_or(|(region, period)| period != key.period || region != key.region) {
            if let Some(done) = self.current.take() {
                self.closed_periods.insert(done);
                self.closed.extend(self.open.drain());
            }
            self.out_of_order = self.closed_periods.contains(&(key.region, key.period));
            self.current = Some((key.region, key.period));
        }
        *self.open.entry(key).or_default() += 1;
    }

    /// Every key once, with its count.
    fn into_rows(mut self) -> Vec<(KeyRef<'a>, i64)> {
        if self.out_of_order {
            for (k, n) in self.closed.drain(..) {
                *self.open.entry(k).or_default() += n;
            }
        }
        self.closed.extend(self.open.drain());
        self.closed
    }
}

impl Counts {
    /// Adds `other` in, moving its keys (the smaller map into the larger).
    fn absorb(&mut self, mut other: Counts) {
        for (mine, theirs) in [(&mut self.minutes, &mut other.minutes), (&mut self.hours, &mut other.hours)] {
            if theirs.len() > mine.len() {
                std::mem::swap(mine, theirs);
            }
            mine.reserve(theirs.len());
            for (k, n) in theirs.drain() {
                *mine.entry(k).or_default() += n;
            }
        }
        self.events += other.events;
    }

    fn add(&mut self, b: &RecordBatch, region: &str) -> Result<(), LakeError> {
        let mut counts = RefCounts::new();
        visit(b, |e| counts.add(region, e))?;
        for (k, n) in counts.minutes.into_rows() {
            *self.minutes.entry(k.owned()).or_default() += n;
        }
        for (k, n) in counts.hours.into_rows() {
            *self.hours.entry(k.owned()).or_default() += n;
        }
        self.events += counts.events;
        Ok(())
    }
}

/// The categories of events Insights analyse (AWS's `EventCategories` of an Insight selector).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Category {
    #[default]
    Management,
    Data,
}

impl Category {
    pub const ALL: [Category; 2] = [Category::Management, Category::Data];

    /// As AWS spells it (`EventCategories`, `sourceEventCategory`).
    pub fn as_str(self) -> &'static str {
        match self {
            Category::Management => "Management",
            Category::Data => "Data",
        }
    }

    pub fn parse(s: &str) -> Option<Category> {
        Category::ALL.into_iter().find(|c| c.as_str() == s)
    }

    /// The category of a rollup row.
    pub fn of_rollup(management: bool) -> Category {
        if management { Category::Management } else { Category::Data }
    }
}

/// One event as the rollups and Insights see it.
pub(crate) struct EventView<'a> {
    /// Microseconds since the epoch.
    pub time: i64,
    pub account: &'a str,
    pub source: &'a str,
    pub name: &'a str,
    pub error: Option<&'a str>,
    pub readonly: Option<bool>,
    pub management: bool,
    /// Management or data; None for the categories Insights do not analyse (network activity).
    pub category: Option<Category>,
    /// `useridentity.arn`, or the service in `invokedby`.
    pub caller: Option<&'a str>,
    pub agent: Option<&'a str>,
    /// The resource called on, when the batch holds `resources`: for S3 the bucket (an object
    /// call lists the object first, then its bucket), else the first resource's ARN.
    pub resource: Option<&'a str>,
    /// `sourceipaddress`, when the batch holds it.
    pub ip: Option<&'a str>,
}

/// Calls `f` for each event of a batch read with [`PROJECTION`] (events without a time are
/// skipped: ingest never writes them).
pub(crate) fn visit<'b>(b: &'b RecordBatch, mut f: impl FnMut(&EventView<'b>)) -> Result<(), LakeError> {
    let events = Events::new(b)?;
    for i in 0..b.num_rows() {
        if let Some(e) = events.view(i) {
            f(&e);
        }
    }
    Ok(())
}

/// A batch's columns as [`EventView`]s read them: the one place that decides an event's
/// account, whether it is a management event, and who made it.
pub(crate) struct Events<'b> {
    account: &'b StringArray,
    time: &'b TimestampMicrosecondArray,
    source: &'b StringArray,
    name: &'b StringArray,
    error: &'b StringArray,
    agent: &'b StringArray,
    category: &'b StringArray,
    readonly: &'b BooleanArray,
    management: &'b BooleanArray,
    identity: &'b StructArray,
    arn: &'b StringArray,
    invoked_by: &'b StringArray,
    id_account: &'b StringArray,
    /// Read only by those who ask for them (aggregated events).
    ip: Option<&'b StringArray>,
    /// `resources`, its entries' `arn` and `type`.
    resources: Option<(&'b ListArray, &'b StringArray, &'b StringArray)>,
}

impl<'b> Events<'b> {
    /// The columns of `b`, which holds [`PROJECTION`]'s (and may hold `sourceipaddress` and
    /// `resources`).
    pub(crate) fn new(b: &'b RecordBatch) -> Result<Events<'b>, LakeError> {
        let bad = |c: &str| LakeError::Config { path: "events".into(), reason: format!("column {c} has an unexpected type") };
        let string = |name: &str| b.column_by_name(name).and_then(|c| c.as_string_opt::<i32>()).ok_or_else(|| bad(name));
        let boolean = |name: &str| b.column_by_name(name).and_then(|c| c.as_any().downcast_ref::<BooleanArray>()).ok_or_else(|| bad(name));
        let time = b.column_by_name("eventtime").and_then(|c| c.as_any().downcast_ref::<TimestampMicrosecondArray>()).ok_or_else(|| bad("eventtime"))?;
        let identity = b.column_by_name("useridentity").and_then(|c| c.as_any().downcast_ref::<StructArray>()).ok_or_else(|| bad("useridentity"))?;
        let id_field = |n: &str| identity.column_by_name(n).and_then(|c| c.as_string_opt::<i32>()).ok_or_else(|| bad(n));
        let ip = match b.column_by_name("sourceipaddress") {
            Some(c) => Some(c.as_string_opt::<i32>().ok_or_else(|| bad("sourceipaddress"))?),
            None => None,
        };
        let resources = match b.column_by_name("resources") {
            Some(c) => {
                let list = c.as_list_opt::<i32>().ok_or_else(|| bad("resources"))?;
                let entries = list.values().as_struct_opt().ok_or_else(|| bad("resources"))?;
                let field = |n: &str| entries.column_by_name(n).and_then(|c| c.as_string_opt::<i32>()).ok_or_else(|| bad(&format!("resources.{n}")));
                Some((list, field("arn")?, field("type")?))
            }
            None => None,
        };
        Ok(Events {
            account: string("recipientaccountid")?,
            time,
            source: string("eventsource")?,
            name: string("eventname")?,
            error: string("errorcode")?,
            agent: string("useragent")?,
            category: string("eventcategory")?,
            readonly: boolean("readonly")?,
            management: boolean("managementevent")?,
            identity,
            arn: id_field("arn")?,
            invoked_by: id_field("invokedby")?,
            id_account: id_field("accountid")?,
            ip,
            resources,
        })
    }

    /// The resource called on (see [`EventView::resource`]).
    fn resource(&self, i: usize) -> Option<&'b str> {
        let (list, arn, kind) = self.resources?;
        if list.is_null(i) {
            return None;
        }
        let (start, end) = (list.value_offsets()[i] as usize, list.value_offsets()[i + 1] as usize);
        let at = if end - start >= 2 && get(kind, start) == Some("AWS::S3::Object") { start + 1 } else { start };
        if at < end { get(arn, at) } else { None }
    }

    /// Row `i`, or None when it has no time.
    pub(crate) fn view(&self, i: usize) -> Option<EventView<'b>> {
        if self.time.is_null(i) {
            return None;
        }
        // Old records lack managementEvent: they are management events unless their category
        // says otherwise.
        let management = if self.management.is_valid(i) { self.management.value(i) } else { get(self.category, i).is_none_or(|c| c == "Management") };
        // Data events before eventCategory existed had managementEvent false and no category.
        let category = match (management, get(self.category, i)) {
            (true, _) => Some(Category::Management),
            (false, None | Some("Data")) => Some(Category::Data),
            (false, Some(_)) => None,
        };
        let identity = self.identity.is_valid(i);
        Some(EventView {
            time: self.time.value(i),
            // The account whose trail logged the call; older records may lack it.
            account: get(self.account, i).or_else(|| get(self.id_account, i).filter(|_| identity)).unwrap_or("unknown"),
            source: get(self.source, i).unwrap_or(""),
            name: get(self.name, i).unwrap_or(""),
            error: get(self.error, i),
            readonly: self.readonly.is_valid(i).then(|| self.readonly.value(i)),
            management,
            category,
            caller: get(self.arn, i).or_else(|| get(self.invoked_by, i)).filter(|_| identity),
            agent: get(self.agent, i),
            resource: self.resource(i),
            ip: self.ip.and_then(|a| get(a, i)),
        })
    }
}

#[derive(Default)]
struct RowsBuilder {
    kind: StringBuilder,
    account: StringBuilder,
    region: StringBuilder,
    period: TimestampMicrosecondBuilder,
    source: StringBuilder,
    name: StringBuilder,
    error: StringBuilder,
    readonly: BooleanBuilder,
    management: BooleanBuilder,
    arn: StringBuilder,
    agent: StringBuilder,
    calls: Int64Builder,
    datafile: StringBuilder,
}

impl RowsBuilder {
    /// A `file` row for each of `files` (path, events), then the counts `push` appends.
    fn batch<'f>(files: impl IntoIterator<Item = (&'f str, u64)>, push: impl FnOnce(&mut RowsBuilder)) -> Result<RecordBatch, LakeError> {
        let mut rows = RowsBuilder::default();
        for (path, events) in files {
            rows.push_file(path, events);
        }
        push(&mut rows);
        rows.finish()
    }

    /// The marker that an events file is counted (in the same commit as its counts; with 0
    /// events for a compacted file, whose rows the files it replaced were counted for).
    fn push_file(&mut self, datafile: &str, events: u64) {
        self.kind.append_value(FILE);
        for b in [&mut self.account, &mut self.region, &mut self.source, &mut self.name] {
            b.append_value("");
        }
        self.period.append_value(0);
        self.error.append_null();
        self.readonly.append_null();
        self.management.append_value(false);
        self.arn.append_null();
        self.agent.append_null();
        self.calls.append_value(events as i64);
        self.datafile.append_value(datafile);
    }

    /// Appends the counts' rows in [`SORT_COLUMNS`] order (after any file markers: `file`
    /// sorts before `hour` and `minute`), as every rollups file is written, so that a read of
    /// one series skips the pages (and, once compacted, the row groups) of the others.
    fn push(&mut self, counts: &Counts) {
        self.push_keys(HOUR, counts.hours.iter().map(|(k, n)| (k.borrowed(), *n)).collect());
        self.push_keys(MINUTE, counts.minutes.iter().map(|(k, n)| (k.borrowed(), *n)).collect());
    }

    /// [`RowsBuilder::push`] for counts of borrowed keys, with counts held from earlier appends:
    /// a key in both is written twice (readers sum a key's rows), all in one sorted run.
    fn push_with_held(&mut self, counts: RefCounts, held: &[Held]) {
        let mut hours = counts.hours.into_rows();
        let mut minutes = counts.minutes.into_rows();
        for h in held {
            hours.extend(h.hours.iter().map(|(k, n)| (k.borrowed(), *n)));
            minutes.extend(h.minutes.iter().map(|(k, n)| (k.borrowed(), *n)));
        }
        self.push_keys(HOUR, hours);
        self.push_keys(MINUTE, minutes);
    }

    fn push_keys(&mut self, kind: &str, rows: Vec<(KeyRef, i64)>) {
        // Sorted by series rank and period: numbers, not four strings, compared.
        let (series, _) = lake::ranks(rows.iter().map(|(k, _)| (k.account, k.region, k.source, k.name)));
        let mut order: Vec<(u32, i64, u32)> = rows.iter().zip(series).enumerate().map(|(i, ((k, _), s))| (s, k.period, i as u32)).collect();
        order.sort_unstable();
        for (_, _, i) in order {
            let (k, n) = rows[i as usize];
            self.kind.append_value(kind);
            self.account.append_value(k.account);
            self.region.append_value(k.region);
            self.period.append_value(k.period);
            self.source.append_value(k.source);
            self.name.append_value(k.name);
            self.error.append_option(k.error);
            self.readonly.append_option(k.readonly);
            self.management.append_value(k.management);
            self.arn.append_option(k.arn);
            self.agent.append_option(k.agent);
            self.calls.append_value(n);
            self.datafile.append_null();
        }
    }

    fn finish(mut self) -> Result<RecordBatch, LakeError> {
        let columns: Vec<ArrayRef> = vec![
            Arc::new(self.kind.finish()),
            Arc::new(self.account.finish()),
            Arc::new(self.region.finish()),
            Arc::new(self.period.finish().with_timezone("UTC")),
            Arc::new(self.source.finish()),
            Arc::new(self.name.finish()),
            Arc::new(self.error.finish()),
            Arc::new(self.readonly.finish()),
            Arc::new(self.management.finish()),
            Arc::new(self.arn.finish()),
            Arc::new(self.agent.finish()),
            Arc::new(self.calls.finish()),
            Arc::new(self.datafile.finish()),
        ];
        RecordBatch::try_new(crate::schema::tables::rollups_schema(), columns)
            .map_err(|source| LakeError::Arrow { context: "building rollup rows".into(), source })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lake::Close;

    fn key(account: &str, source: &str, name: &str, minute: i64) -> Key {
        Key {
            account: account.into(),
            region: "us-east-1".into(),
            period: minute * MICROS_PER_MINUTE,
            source: source.into(),
            name: name.into(),
            error: None,
            readonly: None,
            management: true,
            arn: None,
            agent: None,
        }
    }

    /// An append's files counted from its rows in memory give the rows that reading the files
    /// back gives: two lakes take the same events, one counted each way.
    #[tokio::test]
    async fn counting_an_append_in_memory_matches_reading_its_files() {
        let mut records = Vec::new();
        for i in 0..300u32 {
            let (region, source, name) = [("us-east-1", "s3.amazonaws.com", "GetObject"), ("eu-west-1", "ec2.amazonaws.com", "RunInstances")][i as usize % 2];
            let account = ["111122223333", "444455556666"][i as usize % 5 / 4];
            let mut r = serde_json::json!({"eventVersion": "1.09", "eventTime": format!("2024-06-0{}T{:02}:{:02}:00Z", 1 + i % 3, i % 24, i % 7),
                "eventSource": source, "eventName": name, "awsRegion": region, "eventID": format!("id-{i}"),
                "recipientAccountId": account, "managementEvent": i % 11 != 0,
                "eventCategory": if i % 11 == 0 { "Data" } else { "Management" }, "readOnly": i % 3 == 0, "userAgent": format!("agent-{}", i % 4),
                "userIdentity": {"type": "AssumedRole", "arn": format!("arn:aws:sts::111122223333:assumed-role/r/{}", i % 5)}});
            if i % 6 == 0 {
                r["errorCode"] = "AccessDenied".into();
            }
            records.push(r);
        }
        // Several batches: a partition's rows come from more than one.
        let batches: Vec<RecordBatch> = records.chunks(70).map(crate::lake::tests::event_batch).collect();
        let mut rollups_of = Vec::new();
        // Counted from memory in one append, from memory over appends that leave files open
        // (counts held, then committed with the files), and read back from the files.
        // And in time order, as ingest's sorted listing gives them: files stay open, their last
        // hour held back from one append to the next.
        let mut sorted = records.clone();
        sorted.sort_by_key(|r| r["eventTime"].as_str().unwrap().to_owned());
        let in_time_order: Vec<RecordBatch> = sorted.chunks(70).map(crate::lake::tests::event_batch).collect();
        let first_time = |b: &RecordBatch| b.column_by_name("eventtime").unwrap().as_primitive::<arrow::datatypes::TimestampMicrosecondType>().value(0);
        for mode in ["one append", "open files", "open files, time-ordered", "read back"] {
            let dir = tempfile::tempdir().unwrap();
            let mut lake = Lake::open_or_create(dir.path().to_str().unwrap(), Some(crate::schema::Granularity::Day)).await.unwrap();
            let mut index = crate::lake::EventIndex::new(lake.events(), 1000).unwrap();
            let mut open = crate::lake::OpenFiles::default();
            let mut rollups = Rollups::open(&lake).await.unwrap();
            let appends: Vec<(Vec<RecordBatch>, Close)> = match mode {
                "open files" => batches.iter().map(|b| (vec![b.clone()], Close::Idle { before: i64::MAX })).chain([(Vec::new(), Close::All)]).collect(),
                // Each append's rows up to an hour before the next's first are written; the
                // rest is held back.
                "open files, time-ordered" => in_time_order
                    .iter()
                    .zip(in_time_order.iter().skip(1).map(|b| first_time(b) - 3_600_000_000).chain([i64::MAX]))
                    .map(|(b, before)| (vec![b.clone()], Close::Idle { before }))
                    .chain([(Vec::new(), Close::All)])
                    .collect(),
                _ => vec![(batches.clone(), Close::All)],
            };
            let (mut out, mut files) = (CatchUp::default(), 0);
            for (batches, close) in appends {
                let outcome = lake.append_events(batches, &mut index, &mut open, close, serde_json::json!({})).await.unwrap();
                files += outcome.files;
                let o = rollups.catch_up_after(&lake, Some(&outcome).filter(|_| mode != "read back")).await.unwrap();
                (out.files, out.events, out.from_memory) = (out.files + o.files, out.events + o.events, out.from_memory + o.from_memory);
            }
            assert_eq!((out.files, out.events), (files, 300), "{mode}");
            if mode == "open files, time-ordered" {
                assert_eq!(files, 6, "one file per partition");
            }
            assert_eq!(out.from_memory, if mode == "read back" { 0 } else { out.files }, "{mode}");
            assert!(rollups.held.is_empty(), "{mode}: nothing held once every file is committed");
            let mut rows = Vec::new();
            let columns = [
                "kind",
                "recipientaccountid",
                "awsregion",
                "period",
                "eventsource",
                "eventname",
                "errorcode",
                "readonly",
                "management",
                "useridentityarn",
                "useragent",
                "calls",
            ];
            for b in lake::read_table_columns(rollups.table(), &columns, None).await.unwrap() {
                let shown: Vec<Vec<String>> = (0..b.num_columns())
                    .map(|c| (0..b.num_rows()).map(|r| arrow::util::display::array_value_to_string(b.column(c), r).unwrap()).collect())
                    .collect();
                rows.extend((0..b.num_rows()).map(|r| shown.iter().map(|c| c[r].clone()).collect::<Vec<_>>()));
            }
            assert!(rows.iter().any(|r| r[0] == HOUR) && rows.iter().any(|r| r[0] == MINUTE) && rows.iter().any(|r| r[6] == "AccessDenied"));
            // Readers sum a key's rows (appends may write a key more than once).
            let mut summed: std::collections::BTreeMap<Vec<String>, i64> = std::collections::BTreeMap::new();
            for mut r in rows {
                let calls: i64 = r.pop().unwrap().parse().unwrap();
                *summed.entry(r).or_default() += calls;
            }
            rollups_of.push(summed);
        }
        for (i, mode) in ["one append", "open files", "open files, time-ordered"].iter().enumerate() {
            assert_eq!(rollups_of[i], rollups_of[3], "{mode}");
        }
    }

    /// Counting by period windows gives each key once with its count, whether the events come
    /// in time order (as files hold them) or not (a period and a region seen again).
    #[test]
    fn windowed_counts_match_a_plain_count_in_any_order() {
        let regions = ["us-east-1", "eu-west-1"];
        let keys: Vec<KeyRef> = (0..400i64)
            .map(|i| KeyRef {
                account: ["1", "2"][(i % 2) as usize],
                region: regions[(i / 100 % 2) as usize],
                period: i / 10 * MICROS_PER_MINUTE,
                source: "s3",
                name: ["Get", "Put", "List"][(i % 3) as usize],
                error: (i % 7 == 0).then_some("AccessDenied"),
                readonly: Some(i % 3 == 0),
                management: true,
                arn: None,
                agent: None,
            })
            .collect();
        let mut plain: HashMap<KeyRef, i64> = HashMap::default();
        keys.iter().for_each(|k| *plain.entry(*k).or_default() += 1);
        let mut shuffled = keys.clone();
        shuffled.rotate_left(123); // the last periods first, then the first ones again
        shuffled.swap(5, 300);
        for (order, out_of_order) in [(&keys, false), (&shuffled, true)] {
            let mut w = Windowed::default();
            order.iter().for_each(|k| w.add(*k));
            assert_eq!(w.out_of_order, out_of_order);
            let rows = w.into_rows();
            assert_eq!(rows.len(), plain.len(), "each key once");
            assert_eq!(rows.into_iter().collect::<HashMap<_, _>>(), plain);
        }
    }

    /// Rows come out in `SORT_COLUMNS` order without a sort of the batch: sorting it changes
    /// none of those columns.
    #[test]
    fn rows_are_written_in_sort_column_order() {
        let mut a = Counts::default();
        let mut b = Counts::default();
        for (i, (acct, src, name)) in
            [("2", "s3", "Get"), ("1", "s3", "Put"), ("1", "ec2", "Run"), ("1", "s3", "Get"), ("10", "a", "b")].into_iter().enumerate()
        {
            for minute in [7, 3, 60] {
                let target = if i % 2 == 0 { &mut a } else { &mut b };
                *target.minutes.entry(key(acct, src, name, minute)).or_default() += 1;
                *target.hours.entry(key(acct, src, name, minute / 60 * 60)).or_default() += 1;
            }
        }
        *b.minutes.entry(key("2", "s3", "Get", 7)).or_default() += 5;
        a.events = 9;
        b.events = 10;
        a.absorb(b);
        assert_eq!((a.events, a.minutes[&key("2", "s3", "Get", 7)]), (19, 6));
        let mut rows = RowsBuilder::default();
        rows.push_file("f2.parquet", 3);
        rows.push_file("f1.parquet", 4);
        rows.push(&a);
        let batch = rows.finish().unwrap();
        let columns: Vec<_> =
            SORT_COLUMNS.iter().map(|c| arrow::compute::SortColumn { values: batch.column_by_name(c).unwrap().clone(), options: None }).collect();
        let order = arrow::compute::lexsort_to_indices(&columns, None).unwrap();
        for c in &columns {
            assert_eq!(&arrow::compute::take(&c.values, &order, None).unwrap(), &c.values);
        }
        assert_eq!(batch.num_rows(), 2 + a.minutes.len() + a.hours.len());
    }
}
