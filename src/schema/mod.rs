//! The `events` table schema: CloudTrail's record fields under the lower-case names Athena and
//! CloudTrail Lake users know, how one JSON record is parsed and checked, and how records
//! become Arrow batches.
//!
//! Every CloudTrail object is declared once below with `cloudtrail_object!`; the parser, the
//! Arrow fields and the column builders all derive from those declarations (see `fields.rs`).

pub mod aggregated;
pub mod fields;
pub mod tables;
pub mod time;

use std::borrow::Cow;
use std::fmt::Write as _;
use std::sync::Arc;

use arrow::array::{ArrayRef, RecordBatch, StringBuilder};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};

use fields::{CollectExtras, Extras, Str, cloudtrail_object};
pub use time::{Granularity, parse_event_time, parse_zoneless_time};

cloudtrail_object!(
    /// `userIdentity.onBehalfOf` (IAM Identity Center).
    OnBehalfOf, OnBehalfOfB {
    userid: str = "userId" => "userid",
    identitystorearn: str = "identityStoreArn" => "identitystorearn",
});

cloudtrail_object!(
    /// `userIdentity.sessionContext.sessionIssuer`: the role or user that issued the session.
    SessionIssuer, SessionIssuerB {
    type_: str = "type" => "type",
    principalid: str = "principalId" => "principalid",
    arn: str = "arn" => "arn",
    accountid: str = "accountId" => "accountid",
    username: str = "userName" => "username",
});

cloudtrail_object!(
    /// `userIdentity.sessionContext.webIdFederationData`.
    WebIdFederationData, WebIdFederationDataB {
    federatedprovider: str = "federatedProvider" => "federatedprovider",
    attributes: json = "attributes" => "attributes",
});

cloudtrail_object!(
    /// `userIdentity.sessionContext.attributes`; both are strings in CloudTrail.
    SessionAttributes, SessionAttributesB {
    creationdate: text = "creationDate" => "creationdate",
    mfaauthenticated: text = "mfaAuthenticated" => "mfaauthenticated",
});

cloudtrail_object!(
    /// `userIdentity.sessionContext`.
    SessionContext, SessionContextB {
    sessionissuer: obj SessionIssuer SessionIssuerB = "sessionIssuer" => "sessionissuer",
    webidfederationdata: obj WebIdFederationData WebIdFederationDataB = "webIdFederationData" => "webidfederationdata",
    attributes: obj SessionAttributes SessionAttributesB = "attributes" => "attributes",
    sourceidentity: str = "sourceIdentity" => "sourceidentity",
    ec2roledelivery: text = "ec2RoleDelivery" => "ec2roledelivery",
    assumedroot: text = "assumedRoot" => "assumedroot",
});

cloudtrail_object!(
    /// `userIdentity`: who made the call.
    UserIdentity, UserIdentityB {
    type_: str = "type" => "type",
    principalid: str = "principalId" => "principalid",
    arn: str = "arn" => "arn",
    accountid: str = "accountId" => "accountid",
    accesskeyid: str = "accessKeyId" => "accesskeyid",
    username: str = "userName" => "username",
    invokedby: str = "invokedBy" => "invokedby",
    credentialid: str = "credentialId" => "credentialid",
    identityprovider: str = "identityProvider" => "identityprovider",
    onbehalfof: obj OnBehalfOf OnBehalfOfB = "onBehalfOf" => "onbehalfof",
    inscopeof: json = "inScopeOf" => "inscopeof",
    sessioncontext: obj SessionContext SessionContextB = "sessionContext" => "sessioncontext",
});

cloudtrail_object!(
    /// One entry of `resources`. Note CloudTrail's upper-case `ARN` key.
    Resource, ResourceB {
    arn: str = "ARN" => "arn",
    accountid: str = "accountId" => "accountid",
    type_: str = "type" => "type",
});

cloudtrail_object!(
    /// `tlsDetails`.
    TlsDetails, TlsDetailsB {
    tlsversion: str = "tlsVersion" => "tlsversion",
    ciphersuite: str = "cipherSuite" => "ciphersuite",
    clientprovidedhostheader: str = "clientProvidedHostHeader" => "clientprovidedhostheader",
    keyexchange: str = "keyExchange" => "keyexchange",
});

cloudtrail_object!(
    /// One CloudTrail event record (eventVersion up to 1.11). Free-form fields are kept as JSON
    /// text (`json`), queryable with the JSON functions.
    Event, EventB {
    eventversion: str = "eventVersion" => "eventversion",
    useridentity: obj UserIdentity UserIdentityB = "userIdentity" => "useridentity",
    eventtime: time = "eventTime" => "eventtime",
    eventsource: str = "eventSource" => "eventsource",
    eventname: str = "eventName" => "eventname",
    awsregion: str = "awsRegion" => "awsregion",
    sourceipaddress: str = "sourceIPAddress" => "sourceipaddress",
    useragent: str = "userAgent" => "useragent",
    errorcode: str = "errorCode" => "errorcode",
    errormessage: str = "errorMessage" => "errormessage",
    requestparameters: json = "requestParameters" => "requestparameters",
    responseelements: json = "responseElements" => "responseelements",
    additionaleventdata: json = "additionalEventData" => "additionaleventdata",
    requestid: str = "requestID" => "requestid",
    eventid: str = "eventID" => "eventid",
    eventtype: str = "eventType" => "eventtype",
    apiversion: str = "apiVersion" => "apiversion",
    managementevent: flag = "managementEvent" => "managementevent",
    readonly: flag = "readOnly" => "readonly",
    resources: list Resource ResourceB = "resources" => "resources",
    recipientaccountid: str = "recipientAccountId" => "recipientaccountid",
    serviceeventdetails: json = "serviceEventDetails" => "serviceeventdetails",
    sharedeventid: str = "sharedEventID" => "sharedeventid",
    vpcendpointid: str = "vpcEndpointId" => "vpcendpointid",
    vpcendpointaccountid: str = "vpcEndpointAccountId" => "vpcendpointaccountid",
    eventcategory: str = "eventCategory" => "eventcategory",
    addendum: json = "addendum" => "addendum",
    sessioncredentialfromconsole: text = "sessionCredentialFromConsole" => "sessioncredentialfromconsole",
    edgedevicedetails: json = "edgeDeviceDetails" => "edgedevicedetails",
    tlsdetails: obj TlsDetails TlsDetailsB = "tlsDetails" => "tlsdetails",
    insightdetails: json = "insightDetails" => "insightdetails",
});

/// Column holding the keys a record carried that no column above maps, as a JSON object keyed
/// by path (`{"userIdentity.newField": …}`); null when there were none.
pub const ADDITIONAL_FIELDS: &str = "additionalfields";
/// Lineage: the object (file path or `s3://` URL) the record was read from.
pub const SOURCE_FILE: &str = "sourcefile";
/// Partition column: the event's time bucket (see [`Granularity::bucket_name`]).
pub const EVENT_PERIOD: &str = "eventperiod";
/// Partition column: the event's region.
pub const AWS_REGION: &str = "awsregion";
/// The unique key of an event.
pub const EVENT_ID: &str = "eventid";
/// The event time column.
pub const EVENT_TIME: &str = "eventtime";

/// The columns the lake is partitioned by, outermost first.
pub const PARTITION_COLUMNS: [&str; 2] = [AWS_REGION, EVENT_PERIOD];

/// The full Arrow schema of the `events` table.
pub fn events_schema() -> SchemaRef {
    let mut fields: Vec<Field> = Event::arrow_fields().iter().map(|f| f.as_ref().clone()).collect();
    fields.push(Field::new(ADDITIONAL_FIELDS, DataType::Utf8, true));
    fields.push(Field::new(SOURCE_FILE, DataType::Utf8, true));
    fields.push(Field::new(EVENT_PERIOD, DataType::Utf8, true));
    Arc::new(Schema::new(fields))
}

/// Why a single record was rejected. The code is what the `rejects` table's `reason` holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum RecordRejection {
    /// The record's bytes are not valid JSON.
    InvalidJson,
    /// A known field has the wrong JSON type (e.g. `eventName: 5`).
    WrongType,
    /// No `eventTime`, or it is null.
    MissingEventTime,
    /// `eventTime` is not an RFC 3339 timestamp.
    InvalidEventTime,
    /// `awsRegion` is missing or not a safe name (it becomes a partition path).
    InvalidRegion,
    /// A single record larger than the reader's limit.
    TooLarge,
}

impl RecordRejection {
    pub fn code(self) -> &'static str {
        match self {
            RecordRejection::InvalidJson => "invalid_json",
            RecordRejection::WrongType => "wrong_type",
            RecordRejection::MissingEventTime => "missing_eventtime",
            RecordRejection::InvalidEventTime => "invalid_eventtime",
            RecordRejection::InvalidRegion => "invalid_region",
            RecordRejection::TooLarge => "record_too_large",
        }
    }
}

/// A rejected record: the reason code and a message naming the field or the parse error.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordError {
    pub reason: RecordRejection,
    pub message: String,
}

impl RecordError {
    fn new(reason: RecordRejection, message: impl Into<String>) -> Self {
        RecordError { reason, message: message.into() }
    }
}

/// True when `s` may become one path segment on any filesystem and in S3: 1 to 64 ASCII
/// letters, digits or `-`, starting with a letter or digit. Region and account values read from
/// logs must pass this before they name a folder.
pub fn is_safe_name(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty() && b.len() <= 64 && b[0].is_ascii_alphanumeric() && b.iter().all(|c| c.is_ascii_alphanumeric() || *c == b'-')
}

/// Parses the record at the front of `bytes` (which may go on with more records, or end
/// inside this one) and returns it with its length; None when it is not a whole, valid
/// record, which [`parse_record`] then reads once its end is found, with the error to report.
/// A record this accepts, `parse_record` accepts as the same event: the same parser, on text
/// whose UTF-8 is checked first (all of it that is valid, as the record may end before a bad
/// or cut character).
pub fn parse_front(bytes: &[u8]) -> Option<(Event<'_>, usize)> {
    let text = match std::str::from_utf8(bytes) {
        Ok(text) => text,
        Err(e) => std::str::from_utf8(&bytes[..e.valid_up_to()]).ok()?,
    };
    let mut events = serde_json::Deserializer::from_str(text).into_iter::<Event>();
    let event = events.next()?.ok()?;
    Some((event, events.byte_offset()))
}

/// Parses one record's JSON. The record's UTF-8 is checked once, whole, and parsed as text:
/// serde_json's byte reader would check every string again (3% of an ingest's time).
pub fn parse_record(bytes: &[u8]) -> Result<Event<'_>, RecordError> {
    let text = std::str::from_utf8(bytes)
        .map_err(|e| RecordError::new(RecordRejection::InvalidJson, format!("the record is not UTF-8: invalid byte at offset {}", e.valid_up_to())))?;
    serde_json::from_str::<Event>(text).map_err(|e| {
        // The parser prefixes errors with the field they occurred in, which hides whether the
        // cause was syntax or type; on this (rare) path, re-read the bytes as plain JSON.
        match serde_json::from_slice::<serde::de::IgnoredAny>(bytes) {
            Err(syntax) => RecordError::new(RecordRejection::InvalidJson, syntax.to_string()),
            // Skipping does not decode strings: an escape that is no character (a lone UTF-16
            // surrogate, `"\ud800"`) shows only when they are decoded.
            Ok(_) => match serde_json::from_slice::<serde_json::Value>(bytes) {
                Err(bad) if bad.is_syntax() && !bad.to_string().contains("recursion limit") => RecordError::new(
                    RecordRejection::InvalidJson,
                    format!("{e} (a string holds an escape that is not a character, such as a lone UTF-16 surrogate)"),
                ),
                _ => RecordError::new(RecordRejection::WrongType, e.to_string()),
            },
        }
    })
}

/// What checking a parsed record established.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checked {
    /// `eventtime` in microseconds since the epoch, UTC.
    pub time_micros: i64,
    /// Set when the record had no `eventID` and one was derived from its content.
    pub derived_id: Option<String>,
    /// `eventTime` had no zone and was read as UTC ([`parse_zoneless_time`]).
    pub zoneless_time: bool,
}

/// Checks what the lake needs of a record: a valid time, a region that is safe as a path,
/// and an ID. Records without `eventID` (written before eventVersion 1.01) are kept under
/// a UUID v5 of their canonical content, so the same record read twice is stored once.
pub fn check_record(event: &Event<'_>, raw: &[u8]) -> Result<Checked, RecordError> {
    let (time, zoneless_time) = match &event.eventtime {
        None => return Err(RecordError::new(RecordRejection::MissingEventTime, missing_time_message(raw))),
        Some(t) => match parse_event_time(t.as_str()).map(|t| (t, false)).or_else(|| parse_zoneless_time(t.as_str()).map(|t| (t, true))) {
            Some(read) => read,
            None => {
                let shown = serde_json::to_string(truncate(t.as_str(), 64)).unwrap_or_default();
                return Err(RecordError::new(RecordRejection::InvalidEventTime, format!("eventTime {shown} is not an RFC 3339 timestamp")));
            }
        },
    };
    match &event.awsregion {
        None => return Err(RecordError::new(RecordRejection::InvalidRegion, "record has no awsRegion")),
        Some(r) if !is_safe_name(r.as_str()) => {
            return Err(RecordError::new(
                RecordRejection::InvalidRegion,
                format!(
                    "awsRegion {} is not a valid name (letters, digits and '-', at most 64)",
                    serde_json::to_string(truncate(r.as_str(), 64)).unwrap_or_default()
                ),
            ));
        }
        Some(_) => {}
    }
    let derived_id = match &event.eventid {
        Some(id) if !id.as_str().is_empty() => None,
        _ => Some(derive_event_id(raw)?),
    };
    Ok(Checked { time_micros: time, derived_id, zoneless_time })
}

/// Keys other tools put a record's time under. A record with one of them and no `eventTime`
/// was reshaped on its way (a log shipper's envelope, a SIEM's export), and the message says so.
const OTHER_TIME_KEYS: [&str; 8] = ["@timestamp", "timestamp", "time", "_time", "eventtime", "EventTime", "event_time", "eventTimestamp"];

/// Why a record has no usable time, naming another time field when it has one (a rare path:
/// the record is read again as plain JSON).
fn missing_time_message(raw: &[u8]) -> String {
    let value: Option<serde_json::Map<String, serde_json::Value>> = serde_json::from_slice(raw).ok();
    let other = value.as_ref().and_then(|m| OTHER_TIME_KEYS.iter().find(|k| m.get(**k).is_some_and(|v| !v.is_null())));
    match other {
        Some(key) => format!(
            "record has no eventTime, but has `{key}`: it is not a CloudTrail record as AWS writes it (a log shipper's or SIEM's field); \
             export the original records, or rename the field to eventTime"
        ),
        None => "record has no eventTime".to_owned(),
    }
}

/// Namespace of derived event IDs (a fixed random UUID, so IDs are stable across versions).
const DERIVED_ID_NAMESPACE: uuid::Uuid = uuid::Uuid::from_u128(0x6b1f_5c2e_93a4_4d7e_8f10_2c3b_4a5d_6e7f);

/// A UUID v5 of the record's canonical JSON (keys sorted, no insignificant whitespace), so
/// the same record formatted differently gets the same ID.
pub fn derive_event_id(raw: &[u8]) -> Result<String, RecordError> {
    let value: serde_json::Value = serde_json::from_slice(raw).map_err(|e| RecordError::new(RecordRejection::InvalidJson, e.to_string()))?;
    let mut canonical = String::with_capacity(raw.len());
    write_canonical(&value, &mut canonical);
    Ok(uuid::Uuid::new_v5(&DERIVED_ID_NAMESPACE, canonical.as_bytes()).to_string())
}

/// Canonical JSON: object keys sorted, whatever map ordering serde_json was built with.
fn write_canonical(v: &serde_json::Value, out: &mut String) {
    use serde_json::Value;
    match v {
        Value::Object(map) => {
            let mut entries: Vec<_> = map.iter().collect();
            entries.sort_by(|a, b| a.0.cmp(b.0));
            out.push('{');
            for (i, (k, v)) in entries.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push_str(&Value::String(k.clone()).to_string());
                out.push(':');
                write_canonical(v, out);
            }
            out.push('}');
        }
        Value::Array(items) => {
            out.push('[');
            for (i, v) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_canonical(v, out);
            }
            out.push(']');
        }
        other => {
            let _ = write!(out, "{other}");
        }
    }
}

fn truncate(s: &str, max: usize) -> &str {
    match s.char_indices().nth(max) {
        Some((i, _)) => &s[..i],
        None => s,
    }
}

/// Accumulates checked records into an Arrow batch with the `events` schema.
pub struct EventBatchBuilder {
    granularity: Granularity,
    columns: EventB,
    additional: StringBuilder,
    source: StringBuilder,
    period: StringBuilder,
    /// The last bucket's start and name: consecutive records share it, so the name is
    /// formatted once a bucket, not once a record.
    last_bucket: (i64, String),
    rows: usize,
}

impl EventBatchBuilder {
    pub fn new(granularity: Granularity) -> Self {
        EventBatchBuilder {
            granularity,
            columns: EventB::default(),
            additional: StringBuilder::new(),
            source: StringBuilder::new(),
            period: StringBuilder::new(),
            last_bucket: (i64::MIN, String::new()),
            rows: 0,
        }
    }

    pub fn len(&self) -> usize {
        self.rows
    }

    pub fn is_empty(&self) -> bool {
        self.rows == 0
    }

    /// Appends a record that passed [`check_record`].
    pub fn append(&mut self, event: &mut Event<'_>, checked: Checked, source_file: &str) {
        if let Some(id) = checked.derived_id {
            event.eventid = Some(Str(Cow::Owned(id)));
        }
        if checked.zoneless_time {
            // The column reads CloudTrail's form; the rare zone-less value is written in it.
            let utc = chrono::DateTime::<chrono::Utc>::from_timestamp_micros(checked.time_micros).unwrap_or_default();
            event.eventtime = Some(Str(Cow::Owned(utc.to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true))));
        }
        self.columns.append_columns(Some(event));

        let mut extras: Extras<'_> = Vec::new();
        event.collect_extras(&mut String::new(), &mut extras);
        if extras.is_empty() {
            self.additional.append_null();
        } else {
            self.additional.append_value(extras_json(&extras));
        }
        self.source.append_value(source_file);
        let bucket = self.granularity.floor(checked.time_micros);
        if bucket != self.last_bucket.0 {
            self.last_bucket = (bucket, self.granularity.bucket_name(bucket));
        }
        self.period.append_value(&self.last_bucket.1);
        self.rows += 1;
    }

    /// Finishes the rows appended so far into a batch and starts a new one.
    pub fn finish(&mut self) -> RecordBatch {
        let mut columns: Vec<ArrayRef> = self.columns.finish_columns();
        columns.push(Arc::new(fields::finish_strings(&mut self.additional)));
        columns.push(Arc::new(fields::finish_strings(&mut self.source)));
        columns.push(Arc::new(fields::finish_strings(&mut self.period)));
        self.rows = 0;
        // The builders produce exactly the declared schema; a mismatch is a programming error
        // caught by the unit tests below, never by input.
        RecordBatch::try_new(events_schema(), columns).unwrap_or_else(|e| panic!("events schema mismatch: {e}"))
    }
}

/// `{"path": value, …}` from the collected unknown keys.
fn extras_json(extras: &Extras<'_>) -> String {
    let mut out = String::from("{");
    for (i, (k, v)) in extras.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push_str(&serde_json::Value::String(k.clone()).to_string());
        out.push(':');
        out.push_str(v.get());
    }
    out.push('}');
    out
}

#[cfg(test)]
mod tests;
