//! Per-minute and per-hour API call counts kept beside the events, so that Insights read
//! thousands of rows per series instead of millions of events.
//!
//! The `rollups` table is *derived* from `events`: each row names the events data file it
//! counts (`datafile`), and [`catch_up`] counts every events file not yet counted. Ingest calls
//! it after each events commit; Insights call it before reading. A crash between the two
//! commits therefore loses nothing: the next catch-up counts the files the crash left out.
//! Rows and their file markers land in one commit, so no file is counted twice.
//!
//! Two kinds of row share the table:
//! - `minute`: calls per (account, region, minute, API, error code, read-only, management):
//!   the series the detector scores;
//! - `hour`: the same per hour and also per caller (`useridentityarn`, `useragent`): the
//!   baseline attributions of an Insight, over 7 days, without reading 7 days of events.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use arrow::array::{
    Array, ArrayRef, AsArray, BooleanArray, BooleanBuilder, Int64Builder, RecordBatch, StringBuilder, StructArray,
    TimestampMicrosecondArray, TimestampMicrosecondBuilder,
};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use deltalake::protocol::SaveMode;
use deltalake::DeltaTable;
use futures::{StreamExt, TryStreamExt};

use crate::lake::{self, Lake, LakeError};

pub const ROLLUPS_TABLE: &str = "rollups";
pub const MINUTE: &str = "minute";
pub const HOUR: &str = "hour";

const MICROS_PER_MINUTE: i64 = 60_000_000;
const MICROS_PER_HOUR: i64 = 60 * MICROS_PER_MINUTE;

/// Schema of `rollups`. `errorcode` is null for calls that succeeded; `useridentityarn` and
/// `useragent` are null on minute rows.
pub fn rollups_schema() -> SchemaRef {
    let ts = DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into()));
    Arc::new(Schema::new(vec![
        Field::new("kind", DataType::Utf8, false),
        Field::new("recipientaccountid", DataType::Utf8, false),
        Field::new("awsregion", DataType::Utf8, false),
        Field::new("period", ts, false),
        Field::new("eventsource", DataType::Utf8, false),
        Field::new("eventname", DataType::Utf8, false),
        Field::new("errorcode", DataType::Utf8, true),
        Field::new("readonly", DataType::Boolean, true),
        Field::new("management", DataType::Boolean, false),
        Field::new("useridentityarn", DataType::Utf8, true),
        Field::new("useragent", DataType::Utf8, true),
        Field::new("calls", DataType::Int64, false),
        Field::new("datafile", DataType::Utf8, false),
    ]))
}

/// What one catch-up did.
#[derive(Debug, Default, Clone, Copy)]
pub struct CatchUp {
    pub files: u64,
    pub events: u64,
    pub rows: u64,
}

/// Counts every events file that the rollups do not cover yet, in one commit.
pub async fn catch_up(lake: &mut Lake) -> Result<CatchUp, LakeError> {
    let mut out = CatchUp::default();
    if lake.rolled_files.is_none() {
        let mut done = HashSet::new();
        for b in lake::read_table_columns(&lake.rollups, &["datafile"], None).await? {
            if let Some(col) = b.column(0).as_string_opt::<i32>() {
                done.extend(col.iter().flatten().map(str::to_owned));
            }
        }
        lake.rolled_files = Some(done);
    }
    let done = lake.rolled_files.as_ref().map(|d| d.len()).unwrap_or(0);
    let pending: Vec<(String, String)> = lake::partition_files(lake.events())
        .into_iter()
        .filter(|(path, _)| lake.rolled_files.as_ref().is_none_or(|d| !d.contains(path)))
        .collect();
    tracing::debug!(done, pending = pending.len(), "rollup catch-up");
    if pending.is_empty() {
        return Ok(out);
    }
    let table = lake.events().clone();
    let counted: Vec<(String, Counts)> = futures::stream::iter(pending.into_iter().map(|(path, region)| {
        let table = table.clone();
        async move {
            let batches = lake::read_files_columns(&table, std::slice::from_ref(&path), PROJECTION).await?;
            let mut counts = Counts::default();
            for b in &batches {
                counts.add(b, &region)?;
            }
            Ok::<_, LakeError>((path, counts))
        }
    }))
    .buffer_unordered(8)
    .try_collect()
    .await?;
    let mut rows = RowsBuilder::default();
    for (path, counts) in &counted {
        out.files += 1;
        out.events += counts.events;
        rows.push(path, counts);
    }
    let batch = rows.finish()?;
    out.rows = batch.num_rows() as u64;
    let table = lake.rollups.clone();
    lake.rollups = table
        .write(vec![batch])
        .with_save_mode(SaveMode::Append)
        .await
        .map_err(|e| LakeError::Delta { context: format!("writing {}{ROLLUPS_TABLE}", lake.url()), source: e })?;
    if let Some(d) = lake.rolled_files.as_mut() {
        d.extend(counted.into_iter().map(|(p, _)| p));
    }
    Ok(out)
}

/// The events columns a rollup reads (`awsregion` comes from the partition).
const PROJECTION: &[&str] = &[
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

impl Counts {
    fn add(&mut self, b: &RecordBatch, region: &str) -> Result<(), LakeError> {
        let bad = |c: &str| LakeError::Config { path: "events".into(), reason: format!("column {c} has an unexpected type") };
        let string = |name: &str| b.column_by_name(name).and_then(|c| c.as_string_opt::<i32>()).ok_or_else(|| bad(name));
        let boolean = |name: &str| {
            b.column_by_name(name).and_then(|c| c.as_any().downcast_ref::<BooleanArray>()).ok_or_else(|| bad(name))
        };
        let account = string("recipientaccountid")?;
        let time = b
            .column_by_name("eventtime")
            .and_then(|c| c.as_any().downcast_ref::<TimestampMicrosecondArray>())
            .ok_or_else(|| bad("eventtime"))?;
        let (source, name, error, agent, category) =
            (string("eventsource")?, string("eventname")?, string("errorcode")?, string("useragent")?, string("eventcategory")?);
        let (readonly, management) = (boolean("readonly")?, boolean("managementevent")?);
        let identity = b.column_by_name("useridentity").and_then(|c| c.as_any().downcast_ref::<StructArray>()).ok_or_else(|| bad("useridentity"))?;
        let id_field = |n: &str| identity.column_by_name(n).and_then(|c| c.as_string_opt::<i32>()).ok_or_else(|| bad(n));
        let (arn, invoked_by, id_account) = (id_field("arn")?, id_field("invokedby")?, id_field("accountid")?);
        for i in 0..b.num_rows() {
            if time.is_null(i) {
                continue;
            }
            self.events += 1;
            let t = time.value(i);
            // Old records lack managementEvent: they are management events unless their
            // category says otherwise.
            let mgmt = if management.is_valid(i) {
                management.value(i)
            } else {
                get(category, i).is_none_or(|c| c == "Management")
            };
            // The account whose trail logged the call; older records may lack it.
            let acct = get(account, i).or_else(|| get(id_account, i).filter(|_| identity.is_valid(i))).unwrap_or("unknown");
            let who = get(arn, i).or_else(|| get(invoked_by, i)).filter(|_| identity.is_valid(i));
            let mut key = Key {
                account: acct.to_owned(),
                region: region.to_owned(),
                period: t.div_euclid(MICROS_PER_MINUTE) * MICROS_PER_MINUTE,
                source: get(source, i).unwrap_or("").to_owned(),
                name: get(name, i).unwrap_or("").to_owned(),
                error: get(error, i).map(str::to_owned),
                readonly: readonly.is_valid(i).then(|| readonly.value(i)),
                management: mgmt,
                arn: None,
                agent: None,
            };
            *self.minutes.entry(key.clone()).or_default() += 1;
            key.period = t.div_euclid(MICROS_PER_HOUR) * MICROS_PER_HOUR;
            key.arn = who.map(str::to_owned);
            key.agent = get(agent, i).map(str::to_owned);
            *self.hours.entry(key).or_default() += 1;
        }
        Ok(())
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
    fn push(&mut self, datafile: &str, counts: &Counts) {
        for (kind, map) in [(MINUTE, &counts.minutes), (HOUR, &counts.hours)] {
            for (k, n) in map {
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
                self.datafile.append_value(datafile);
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
        RecordBatch::try_new(rollups_schema(), columns)
            .map_err(|source| LakeError::Arrow { context: "building rollup rows".into(), source })
    }
}

/// Opens (or creates) the rollups table of the lake at `url`.
pub(crate) async fn open(url: &url::Url) -> Result<DeltaTable, LakeError> {
    lake::open_or_create_table(url, ROLLUPS_TABLE, rollups_schema(), &[]).await
}
