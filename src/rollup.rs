//! Per-minute and per-hour API call counts kept beside the events, so that Insights read
//! thousands of rows per series instead of millions of events.
//!
//! The `rollups` table is *derived* from `events`: [`Rollups::catch_up`] counts every events file not
//! yet counted, and writes the counts (summed over those files) with one `file` row per file
//! counted, in one commit. Ingest calls it after each events commit; Insights call it before
//! reading. A crash between the two commits therefore loses nothing (the next catch-up counts
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
    Array, ArrayRef, AsArray, BooleanArray, BooleanBuilder, Int64Builder, RecordBatch, StringBuilder, StructArray, TimestampMicrosecondArray,
    TimestampMicrosecondBuilder,
};

use deltalake::DeltaTable;
use futures::{StreamExt, TryStreamExt};

use crate::lake::{self, Lake, LakeError};
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
}

/// The lake's `rollups` table, opened by its owner (as the scheduler's history is), with the
/// set of events files it already counts.
pub struct Rollups {
    table: DeltaTable,
    /// Events files the rollups already count, loaded on first use.
    counted: Option<HashSet<String>>,
}

impl Rollups {
    /// Opens the lake's rollups (creating the table on a lake older than it).
    pub async fn open(lake: &Lake) -> Result<Rollups, LakeError> {
        let table = lake.table(ROLLUPS_TABLE, crate::schema::tables::rollups_schema(), &[]).await?;
        Ok(Rollups { table, counted: None })
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
        let mut out = CatchUp::default();
        if self.counted.is_none() {
            self.counted = Some(lake::string_set(&lake::read_table_columns(&self.table, &["datafile"], None).await?));
        }
        let done = self.counted.as_ref().map(|d| d.len()).unwrap_or(0);
        let pending: Vec<(String, String)> = lake::partition_files(lake.events())
            .into_iter()
            .filter(|f| self.counted.as_ref().is_none_or(|d| !d.contains(&f.path)))
            .map(|f| (f.path, f.region))
            .collect();
        tracing::debug!(done, pending = pending.len(), "rollup catch-up");
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
                let mut rows = RowsBuilder::default();
                for (path, events) in &counted {
                    rows.push_file(path, *events);
                }
                rows.push(&total);
                let batch = rows.finish()?;
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

fn get(a: &arrow::array::StringArray, i: usize) -> Option<&str> {
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

/// A key borrowing from one batch: counting a batch allocates per distinct key, not per event.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
struct KeyRef<'a> {
    account: &'a str,
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
    fn owned(&self, region: &str) -> Key {
        Key {
            account: self.account.to_owned(),
            region: region.to_owned(),
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
        // Sized for a batch's keys up front: growing rehashes every key (five strings each).
        let keys = (b.num_rows() / 4).clamp(16, 4096);
        let mut minutes: HashMap<KeyRef, i64> = HashMap::with_capacity_and_hasher(keys, Default::default());
        let mut hours: HashMap<KeyRef, i64> = HashMap::with_capacity_and_hasher(keys, Default::default());
        visit(b, |e| {
            self.events += 1;
            if e.category.is_none() {
                return;
            }
            let mut key = KeyRef {
                account: e.account,
                period: e.time.div_euclid(MICROS_PER_MINUTE) * MICROS_PER_MINUTE,
                source: e.source,
                name: e.name,
                error: e.error,
                readonly: e.readonly,
                management: e.management,
                arn: None,
                agent: None,
            };
            *minutes.entry(key).or_default() += 1;
            key.period = e.time.div_euclid(MICROS_PER_HOUR) * MICROS_PER_HOUR;
            key.arn = e.caller;
            key.agent = e.agent;
            *hours.entry(key).or_default() += 1;
        })?;
        for (k, n) in minutes {
            *self.minutes.entry(k.owned(region)).or_default() += n;
        }
        for (k, n) in hours {
            *self.hours.entry(k.owned(region)).or_default() += n;
        }
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
/// skipped: ingest never writes them). The one place that decides an event's account, whether
/// it is a management event, and who made it.
pub(crate) fn visit<'b>(b: &'b RecordBatch, mut f: impl FnMut(&EventView<'b>)) -> Result<(), LakeError> {
    let bad = |c: &str| LakeError::Config { path: "events".into(), reason: format!("column {c} has an unexpected type") };
    let string = |name: &str| b.column_by_name(name).and_then(|c| c.as_string_opt::<i32>()).ok_or_else(|| bad(name));
    let boolean = |name: &str| b.column_by_name(name).and_then(|c| c.as_any().downcast_ref::<BooleanArray>()).ok_or_else(|| bad(name));
    let account = string("recipientaccountid")?;
    let time = b.column_by_name("eventtime").and_then(|c| c.as_any().downcast_ref::<TimestampMicrosecondArray>()).ok_or_else(|| bad("eventtime"))?;
    let (source, name, error, agent, category) =
        (string("eventsource")?, string("eventname")?, string("errorcode")?, string("useragent")?, string("eventcategory")?);
    let (readonly, management) = (boolean("readonly")?, boolean("managementevent")?);
    let identity = b.column_by_name("useridentity").and_then(|c| c.as_any().downcast_ref::<StructArray>()).ok_or_else(|| bad("useridentity"))?;
    let id_field = |n: &str| identity.column_by_name(n).and_then(|c| c.as_string_opt::<i32>()).ok_or_else(|| bad(n));
    let (arn, invoked_by, id_account) = (id_field("arn")?, id_field("invokedby")?, id_field("accountid")?);
    // Read only by those who ask for them (aggregated events).
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
    let resource = |i: usize| {
        let (list, arn, kind) = resources?;
        if list.is_null(i) {
            return None;
        }
        let (start, end) = (list.value_offsets()[i] as usize, list.value_offsets()[i + 1] as usize);
        let at = if end - start >= 2 && get(kind, start) == Some("AWS::S3::Object") { start + 1 } else { start };
        if at < end { get(arn, at) } else { None }
    };
    for i in 0..b.num_rows() {
        if time.is_null(i) {
            continue;
        }
        // Old records lack managementEvent: they are management events unless their category
        // says otherwise.
        let management = if management.is_valid(i) { management.value(i) } else { get(category, i).is_none_or(|c| c == "Management") };
        // Data events before eventCategory existed had managementEvent false and no category.
        let category = match (management, get(category, i)) {
            (true, _) => Some(Category::Management),
            (false, None | Some("Data")) => Some(Category::Data),
            (false, Some(_)) => None,
        };
        f(&EventView {
            time: time.value(i),
            // The account whose trail logged the call; older records may lack it.
            account: get(account, i).or_else(|| get(id_account, i).filter(|_| identity.is_valid(i))).unwrap_or("unknown"),
            source: get(source, i).unwrap_or(""),
            name: get(name, i).unwrap_or(""),
            error: get(error, i),
            readonly: readonly.is_valid(i).then(|| readonly.value(i)),
            management,
            category,
            caller: get(arn, i).or_else(|| get(invoked_by, i)).filter(|_| identity.is_valid(i)),
            agent: get(agent, i),
            resource: resource(i),
            ip: ip.and_then(|a| get(a, i)),
        });
    }
    Ok(())
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
        for (kind, map) in [(HOUR, &counts.hours), (MINUTE, &counts.minutes)] {
            let mut rows: Vec<(&Key, &i64)> = map.iter().collect();
            rows.sort_unstable_by(|(a, _), (b, _)| {
                (&a.account, &a.region, &a.source, &a.name, a.period).cmp(&(&b.account, &b.region, &b.source, &b.name, b.period))
            });
            for (k, n) in rows {
                self.kind.append_value(kind);
                self.account.append_value(&k.account);
                self.region.append_value(&k.region);
                self.period.append_value(k.period);
                self.source.append_value(&k.source);
                self.name.append_value(&k.name);
                self.error.append_option(k.error.as_deref());
                self.readonly.append_option(k.readonly);
                self.management.append_value(k.management);
                self.arn.append_option(k.arn.as_deref());
                self.agent.append_option(k.agent.as_deref());
                self.calls.append_value(*n);
                self.datafile.append_null();
            }
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
