//! `prism generate`: CloudTrail archives that look like a real account's, with labelled
//! anomalies whose place is known, for tests, benchmarks, the demo and detector quality.
//!
//! Each (account, region) is an independent stream with its own seed, generated minute by
//! minute: every API's calls are Poisson-distributed around a rate shaped by a diurnal and
//! weekly rhythm, scheduled jobs burst at fixed minutes (normal traffic a good detector must
//! not flag), and the planned anomalies add or remove calls. Events are delivered as
//! CloudTrail does: one gzipped file about every 5 minutes, records unordered, a few events
//! late (in the next file) and a few delivered twice. Streams run in parallel, and the same
//! seed gives byte-identical files whatever the scheduling.

pub mod catalogue;

use std::fmt::Write as _;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Instant;

use chrono::{DateTime, Datelike, NaiveDate, Utc};
use serde::{Deserialize, Serialize};

use catalogue::{APIS, Api, BUCKETS, Caller, DATA_APIS, SCHEDULED_JOBS};

/// Errors of the generator.
#[derive(Debug, thiserror::Error)]
pub enum GenerateError {
    #[error("invalid generator options: {0}")]
    Options(String),
    #[error("writing `{path}`")]
    Write {
        path: String,
        #[source]
        source: std::io::Error,
    },
}

/// Minutes of history before the first anomaly: a full 7-day baseline plus an hour.
pub const WARMUP_MINUTES: u32 = 7 * 1440 + 60;

/// What to generate.
#[derive(Debug, Clone)]
pub struct GenerateOptions {
    pub out: PathBuf,
    pub accounts: u32,
    pub regions: Vec<String>,
    pub days: u32,
    /// Events per day for each account and region, on average.
    pub events_per_day: u64,
    pub anomalies: u32,
    pub seed: u64,
    /// First day (UTC).
    pub start: NaiveDate,
    /// Share of events delivered twice.
    pub duplicate_rate: f64,
    /// Share of events delivered in the next file.
    pub late_rate: f64,
    /// Streams generated at once.
    pub threads: usize,
    /// Data events per day for each account and region, on average (0: none, the default).
    /// With them, half the anomalies are data-event ones.
    pub data_events_per_day: u64,
}

impl GenerateOptions {
    pub fn new(out: impl Into<PathBuf>) -> Self {
        GenerateOptions {
            out: out.into(),
            accounts: 2,
            regions: vec!["us-east-1".into(), "eu-west-1".into()],
            days: 10,
            events_per_day: 100_000,
            anomalies: 12,
            seed: 7,
            start: NaiveDate::from_ymd_opt(2024, 1, 1).unwrap_or_default(),
            duplicate_rate: 0.001,
            late_rate: 0.01,
            threads: std::thread::available_parallelism().map(|n| n.get()).unwrap_or(2),
            data_events_per_day: 0,
        }
    }

    fn validate(&self) -> Result<(), GenerateError> {
        let bad = |m: String| Err(GenerateError::Options(m));
        if self.accounts == 0 || self.regions.is_empty() || self.days == 0 {
            return bad("--accounts, --regions and --days must be at least 1".into());
        }
        if let Some(r) = self.regions.iter().find(|r| !crate::schema::is_safe_name(r)) {
            return bad(format!("region `{r}` is not a valid name"));
        }
        if self.anomalies > 0 && self.days * 1440 < WARMUP_MINUTES + 120 {
            return bad(format!(
                "anomalies start after a 7-day baseline, so --days must be at least 8 with --anomalies {} (or use --anomalies 0)",
                self.anomalies
            ));
        }
        if !(0.0..=0.5).contains(&self.duplicate_rate) || !(0.0..=0.5).contains(&self.late_rate) {
            return bad("duplicate and late rates must be between 0 and 0.5".into());
        }
        Ok(())
    }
}

/// One injected anomaly: the ground truth the detector is scored against. Written to
/// `labels.json` by the generator and read back by `prism insights evaluate`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Label {
    pub id: u32,
    /// `spike`, `drop` or `error_burst`.
    pub kind: String,
    /// The events it is in: `Management` or `Data` (labels from before data events have none:
    /// Management).
    #[serde(default = "management")]
    pub category: String,
    /// What a data-event anomaly stands for: `exfiltration` (bulk GetObject by a new
    /// identity), `delete_burst`, `access_denied_burst` (on one bucket) or `invoke_drop`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scenario: Option<String>,
    /// The bucket of an S3 anomaly (`arn:aws:s3:::<bucket>`).
    #[serde(rename = "resourceARN", default, skip_serializing_if = "Option::is_none")]
    pub resource_arn: Option<String>,
    pub account: String,
    pub region: String,
    #[serde(rename = "eventSource")]
    pub event_source: String,
    #[serde(rename = "eventName")]
    pub event_name: String,
    /// `ApiCallRateInsight` or `ApiErrorRateInsight`.
    #[serde(rename = "insightType")]
    pub insight_type: String,
    #[serde(rename = "errorCode")]
    pub error_code: Option<String>,
    /// First minute (UTC), inclusive.
    pub start: String,
    /// Minute after the last, exclusive.
    pub end: String,
    /// Spikes: the multiple of the API's usual rate. Drops: 0. Error bursts: errors per minute.
    pub magnitude: f64,
    #[serde(rename = "userIdentityArn", default)]
    pub user_identity_arn: Option<String>,
    #[serde(rename = "userAgent", default)]
    pub user_agent: Option<String>,
    /// Drops: the calls the API would have made during the silence (at its usual rate).
    #[serde(rename = "expectedCalls", default, skip_serializing_if = "Option::is_none")]
    pub expected_calls: Option<f64>,
    #[serde(skip)]
    start_minute: u32,
    #[serde(skip)]
    end_minute: u32,
}

fn management() -> String {
    "Management".into()
}

/// `labels.json`: the one definition of its format, for the generator and the evaluator.
#[derive(Debug, Serialize, Deserialize)]
pub struct Labels {
    #[serde(default)]
    pub seed: u64,
    #[serde(default)]
    pub start: String,
    #[serde(default)]
    pub days: u32,
    #[serde(default)]
    pub accounts: Vec<String>,
    #[serde(default)]
    pub regions: Vec<String>,
    #[serde(default)]
    pub events_per_day: u64,
    #[serde(default)]
    pub data_events_per_day: u64,
    pub anomalies: Vec<Label>,
    #[serde(default)]
    pub scheduled_jobs: Vec<ScheduledJobLabel>,
}

/// A scheduled job's burst: normal activity that must not be flagged.
#[derive(Debug, Serialize, Deserialize)]
pub struct ScheduledJobLabel {
    #[serde(rename = "eventSource")]
    pub event_source: String,
    #[serde(rename = "eventName")]
    pub event_name: String,
    /// `HH:MM` daily, or `*:MM` hourly (UTC).
    pub at: String,
    #[serde(default)]
    pub calls: u32,
}

#[derive(Debug, Default, Clone, Serialize)]
pub struct GenerateSummary {
    pub files: u64,
    pub events: u64,
    pub duplicates: u64,
    pub bytes: u64,
    pub seconds: f64,
    pub events_per_second: f64,
    pub anomalies: usize,
}

/// SplitMix64: small, fast, and stable across versions (a dependency's generator may change
/// its stream in a minor release, which would break byte-identical output).
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed)
    }
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    /// Uniform in [0, 1).
    pub fn f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
    /// Uniform in [0, n).
    pub fn below(&mut self, n: u64) -> u64 {
        if n == 0 { 0 } else { self.next_u64() % n }
    }
    pub fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len() as u64) as usize]
    }
    pub fn chance(&mut self, p: f64) -> bool {
        self.f64() < p
    }
    /// Poisson-distributed count with mean `lambda` (Knuth below 30, normal approximation above).
    pub fn poisson(&mut self, lambda: f64) -> u32 {
        if lambda <= 0.0 {
            return 0;
        }
        if lambda < 30.0 {
            let limit = (-lambda).exp();
            let mut k = 0;
            let mut p = self.f64();
            while p > limit {
                k += 1;
                p *= self.f64();
            }
            return k;
        }
        // Box–Muller.
        let (u1, u2) = (self.f64().max(1e-12), self.f64());
        let z = (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos();
        (lambda + z * lambda.sqrt()).round().max(0.0) as u32
    }
    /// A UUID-shaped identifier.
    pub fn uuid(&mut self, out: &mut String) {
        let (a, b) = (self.next_u64(), self.next_u64());
        let _ = write!(out, "{:08x}-{:04x}-4{:03x}-{:04x}-{:012x}", a >> 32, (a >> 16) & 0xffff, a & 0xfff, (b >> 48) & 0x3fff | 0x8000, b & 0xffff_ffff_ffff);
    }
    fn alnum(&mut self, n: usize) -> String {
        const CHARS: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
        (0..n).map(|_| CHARS[self.below(CHARS.len() as u64) as usize] as char).collect()
    }
}

fn mix(seed: u64, a: u64, b: u64) -> u64 {
    let mut r = Rng::new(seed ^ a.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ b.wrapping_mul(0xC2B2_AE3D_27D4_EB4F));
    r.next_u64()
}

/// The diurnal and weekly shape of traffic: a working-hours peak around 14:00 UTC over a
/// night floor, and weekends at half the weekday level. Averages exactly 1 over a week, so
/// `events_per_day` holds on average.
pub fn rhythm(minute: u32, weekday: u32) -> f64 {
    static MEAN: std::sync::OnceLock<f64> = std::sync::OnceLock::new();
    let mean = *MEAN.get_or_init(|| (0..7 * 1440).map(|m| raw_rhythm(m % 1440, m / 1440)).sum::<f64>() / (7.0 * 1440.0));
    raw_rhythm(minute % 1440, weekday) / mean
}

/// The shape of data-event traffic: applications serve around the clock, so a milder
/// working-hours peak and weekends at 80%. Averages 1 over a week.
pub fn data_rhythm(minute: u32, weekday: u32) -> f64 {
    static MEAN: std::sync::OnceLock<f64> = std::sync::OnceLock::new();
    let raw = |m: u32, w: u32| {
        let hour = (m % 1440) as f64 / 60.0;
        (0.8 + 0.4 * (-((hour - 15.0) / 5.0).powi(2)).exp()) * if w >= 5 { 0.8 } else { 1.0 }
    };
    let mean = *MEAN.get_or_init(|| (0..7 * 1440).map(|m| raw(m % 1440, m / 1440)).sum::<f64>() / (7.0 * 1440.0));
    raw(minute % 1440, weekday) / mean
}

/// An API's rhythm at a minute.
fn api_rhythm(api: &Api, minute: u32, weekday: u32) -> f64 {
    if api.data { data_rhythm(minute, weekday) } else { rhythm(minute, weekday) }
}

fn raw_rhythm(minute_of_day: u32, weekday: u32) -> f64 {
    let hour = minute_of_day as f64 / 60.0;
    let day = 0.45 + 1.1 * (-((hour - 14.0) / 4.5).powi(2)).exp();
    let week = if weekday >= 5 { 0.5 } else { 1.0 };
    day * week
}

/// Writes the archive and `labels.json`. Returns what was written.
pub fn generate(opts: &GenerateOptions) -> Result<GenerateSummary, GenerateError> {
    opts.validate()?;
    let started = Instant::now();
    let mut rng = Rng::new(opts.seed);
    let accounts: Vec<String> = (0..opts.accounts).map(|_| format!("{:012}", 100_000_000_000 + rng.below(899_999_999_999))).collect();
    let labels = plan_anomalies(opts, &accounts, &mut rng);

    let streams: Vec<(usize, usize)> = (0..accounts.len()).flat_map(|a| (0..opts.regions.len()).map(move |r| (a, r))).collect();
    let next = AtomicUsize::new(0);
    let (files, events, dups, bytes) = (AtomicU64::new(0), AtomicU64::new(0), AtomicU64::new(0), AtomicU64::new(0));
    let error: Mutex<Option<GenerateError>> = Mutex::new(None);
    std::thread::scope(|s| {
        for _ in 0..opts.threads.clamp(1, streams.len().max(1)) {
            s.spawn(|| {
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let Some(&(a, r)) = streams.get(i) else { break };
                    let stream = Stream::new(opts, &accounts[a], &opts.regions[r], a, r, &labels);
                    match stream.run() {
                        Ok(st) => {
                            files.fetch_add(st.files, Ordering::Relaxed);
                            events.fetch_add(st.events, Ordering::Relaxed);
                            dups.fetch_add(st.duplicates, Ordering::Relaxed);
                            bytes.fetch_add(st.bytes, Ordering::Relaxed);
                        }
                        Err(e) => {
                            if let Ok(mut slot) = error.lock() {
                                slot.get_or_insert(e);
                            }
                            break;
                        }
                    }
                }
            });
        }
    });
    if let Some(e) = error.into_inner().ok().flatten() {
        return Err(e);
    }

    let doc = Labels {
        seed: opts.seed,
        start: opts.start.to_string(),
        days: opts.days,
        accounts: accounts.clone(),
        regions: opts.regions.clone(),
        events_per_day: opts.events_per_day,
        data_events_per_day: opts.data_events_per_day,
        anomalies: labels.clone(),
        scheduled_jobs: SCHEDULED_JOBS
            .iter()
            .map(|j| ScheduledJobLabel {
                event_source: j.source.to_owned(),
                event_name: j.name.to_owned(),
                at: if j.hourly { format!("*:{:02}", j.minute) } else { format!("{:02}:{:02}", j.minute / 60, j.minute % 60) },
                calls: j.calls,
            })
            .collect(),
    };
    let path = opts.out.join("labels.json");
    let body = serde_json::to_vec_pretty(&doc).map_err(|e| GenerateError::Write { path: path.display().to_string(), source: e.into() })?;
    std::fs::create_dir_all(&opts.out).map_err(|source| GenerateError::Write { path: opts.out.display().to_string(), source })?;
    std::fs::write(&path, body).map_err(|source| GenerateError::Write { path: path.display().to_string(), source })?;

    let seconds = started.elapsed().as_secs_f64();
    let events = events.load(Ordering::Relaxed);
    Ok(GenerateSummary {
        files: files.load(Ordering::Relaxed),
        events,
        duplicates: dups.load(Ordering::Relaxed),
        bytes: bytes.load(Ordering::Relaxed),
        seconds,
        events_per_second: events as f64 / seconds.max(1e-9),
        anomalies: labels.len(),
    })
}

fn minute_name(start: NaiveDate, minute: u32) -> String {
    let t = start.and_hms_opt(0, 0, 0).unwrap_or_default().and_utc() + chrono::Duration::minutes(i64::from(minute));
    t.format("%Y-%m-%dT%H:%M:00Z").to_string()
}

/// An API's mean calls per minute in one account and region, before the rhythm shapes it.
fn base_rate(opts: &GenerateOptions, api: &Api) -> f64 {
    let (catalogue, per_day) = if api.data { (DATA_APIS, opts.data_events_per_day) } else { (APIS, opts.events_per_day) };
    let total_weight: f64 = catalogue.iter().map(|a| a.weight).sum();
    per_day as f64 / 1440.0 * api.weight / total_weight
}

/// The APIs a stream calls: the management catalogue, and the data one when data events are on.
fn catalogue(opts: &GenerateOptions) -> Vec<&'static Api> {
    let data: &'static [Api] = if opts.data_events_per_day > 0 { DATA_APIS } else { &[] };
    APIS.iter().chain(data).collect()
}

fn data_api(name: &str) -> &'static Api {
    DATA_APIS.iter().find(|a| a.name == name).unwrap_or(&DATA_APIS[0])
}

/// Calls a drop must silence to be labelled with its plain duration: P(no call | 20 expected)
/// is 2·10⁻⁹, where a 10-minute silence of an API making one call a minute (P = 5·10⁻⁵)
/// happens by chance somewhere in two weeks of a few hundred APIs.
pub const MIN_DROP_CALLS: f64 = 20.0;

/// Places the anomalies: kinds in a fixed mix, after the warm-up, never overlapping on one API.
fn plan_anomalies(opts: &GenerateOptions, accounts: &[String], rng: &mut Rng) -> Vec<Label> {
    let total = opts.days * 1440;
    let writes: Vec<&Api> = APIS.iter().filter(|a| !a.read_only).collect();
    let busy_writes: Vec<&Api> = writes.iter().copied().filter(|a| a.weight >= 1.5).collect();
    let mut out: Vec<Label> = Vec::new();
    for id in 0..opts.anomalies {
        for _attempt in 0..50 {
            let account = rng.pick(accounts).clone();
            let region = rng.pick(&opts.regions).clone();
            let data = opts.data_events_per_day > 0 && id % 2 == 1;
            let mut scenario = None;
            let mut bucket = None;
            let (kind, api, duration, magnitude, error_code, insight) = match id % 4 {
                // Data-event anomalies: the four scenarios in turn.
                _ if data => {
                    let (s, k, api, durations, magnitudes, code): (&str, &str, &Api, &[u32], &[f64], Option<&str>) = match (id / 2) % 4 {
                        0 => ("exfiltration", "spike", data_api("GetObject"), &[10, 20, 30, 60], &[5.0, 10.0, 20.0, 50.0], None),
                        1 => ("delete_burst", "spike", data_api("DeleteObject"), &[3, 5, 10, 20], &[10.0, 20.0, 50.0, 100.0], None),
                        2 => ("access_denied_burst", "error_burst", data_api("GetObject"), &[3, 5, 10, 20], &[5.0, 10.0, 20.0, 50.0], Some("AccessDenied")),
                        _ => ("invoke_drop", "drop", data_api("Invoke"), &[10, 20, 30, 60], &[0.0], None),
                    };
                    scenario = Some(s.to_owned());
                    if api.source == "s3.amazonaws.com" {
                        bucket = Some(format!("arn:aws:s3:::{account}-{}", rng.pick(BUCKETS).0));
                    }
                    let insight = if k == "error_burst" { "ApiErrorRateInsight" } else { "ApiCallRateInsight" };
                    (k, api, *rng.pick(durations), *rng.pick(magnitudes), code.map(str::to_owned), insight)
                }
                0 | 1 => {
                    let api = *rng.pick(&writes);
                    let magnitude = *rng.pick(&[2.0, 3.0, 5.0, 10.0, 20.0, 50.0, 100.0]);
                    let duration = *rng.pick(&[1u32, 3, 5, 10, 20, 30, 60]);
                    ("spike", api, duration, magnitude, None, "ApiCallRateInsight")
                }
                2 => {
                    let api = *rng.pick(&busy_writes);
                    let duration = *rng.pick(&[10u32, 20, 30, 60]);
                    ("drop", api, duration, 0.0, None, "ApiCallRateInsight")
                }
                _ => {
                    let api = rng.pick(APIS);
                    let code = if rng.chance(0.5) { "AccessDenied" } else { "ThrottlingException" };
                    let rate = *rng.pick(&[5.0, 10.0, 20.0, 50.0]);
                    let duration = *rng.pick(&[3u32, 5, 10, 20, 30]);
                    ("error_burst", api, duration, rate, Some(code.to_owned()), "ApiErrorRateInsight")
                }
            };
            let start = WARMUP_MINUTES + rng.below(u64::from(total - WARMUP_MINUTES - duration - 1)) as u32;
            let mut end = start + duration;
            let mut expected_calls = None;
            if kind == "drop" {
                // A silence is only an anomaly when the API would have made enough calls in it:
                // a quiet API missing a few calls at night is chance, not an outage. Drops
                // last until the usual rate would have made MIN_DROP_CALLS calls (at most 4 h).
                let rate = |m: u32| {
                    let weekday = (opts.start + chrono::Days::new(u64::from(m / 1440))).weekday().num_days_from_monday();
                    base_rate(opts, api) * api_rhythm(api, m, weekday)
                };
                let mut calls: f64 = (start..end).map(rate).sum();
                while calls < MIN_DROP_CALLS && end < (start + 240).min(total - 1) {
                    calls += rate(end);
                    end += 1;
                }
                expected_calls = Some((calls * 10.0).round() / 10.0);
            }
            let clash = out
                .iter()
                .any(|l| l.account == account && l.region == region && l.event_name == api.name && l.start_minute < end + 60 && start < l.end_minute + 60);
            if clash {
                continue;
            }
            let (arn, ua) = if kind == "drop" {
                (None, None)
            } else if data && scenario.as_deref() != Some("delete_burst") {
                // A new identity reading (or refused reading) the bucket.
                (Some(format!("arn:aws:iam::{account}:user/intruder-{id}")), Some("aws-cli/2.15.30 Python/3.11.8 Linux/6.5.0 command/s3.sync".to_owned()))
            } else if rng.chance(0.5) {
                (Some(format!("arn:aws:iam::{account}:user/intruder-{id}")), Some("python-requests/2.31.0".to_owned()))
            } else {
                (Some(format!("arn:aws:sts::{account}:assumed-role/ci-deploy/GitHubActions")), Some(catalogue::user_agents(Caller::Automation)[0].to_owned()))
            };
            out.push(Label {
                id,
                kind: kind.to_owned(),
                category: if data { "Data" } else { "Management" }.to_owned(),
                scenario,
                resource_arn: bucket,
                account,
                region,
                event_source: api.source.to_owned(),
                event_name: api.name.to_owned(),
                insight_type: insight.to_owned(),
                error_code,
                start: minute_name(opts.start, start),
                end: minute_name(opts.start, end),
                magnitude,
                user_identity_arn: arn,
                user_agent: ua,
                expected_calls,
                start_minute: start,
                end_minute: end,
            });
            break;
        }
    }
    out
}

#[derive(Default)]
struct StreamStats {
    files: u64,
    events: u64,
    duplicates: u64,
    bytes: u64,
}

/// One account and region.
struct Stream<'a> {
    opts: &'a GenerateOptions,
    account: &'a str,
    region: &'a str,
    labels: Vec<&'a Label>,
    rng: Rng,
    /// The APIs it calls, and their calls per minute at rhythm 1.
    apis: Vec<&'static Api>,
    base: Vec<f64>,
    start_secs: i64,
}

/// What one event is: its API, and who calls with which error.
struct Call<'a> {
    api: &'a Api,
    error: Option<&'a str>,
    /// An anomaly's identity and agent, overriding the usual caller.
    actor: Option<(&'a str, &'a str)>,
    /// An anomaly's bucket (`arn:aws:s3:::<bucket>`), for S3 data events.
    bucket: Option<&'a str>,
}

impl<'a> Stream<'a> {
    fn new(opts: &'a GenerateOptions, account: &'a str, region: &'a str, a: usize, r: usize, labels: &'a [Label]) -> Self {
        Stream {
            opts,
            account,
            region,
            labels: labels.iter().filter(|l| l.account == account && l.region == region).collect(),
            rng: Rng::new(mix(opts.seed, a as u64 + 1, r as u64 + 1)),
            apis: catalogue(opts),
            base: catalogue(opts).into_iter().map(|a| base_rate(opts, a)).collect(),
            start_secs: opts.start.and_hms_opt(0, 0, 0).unwrap_or_default().and_utc().timestamp(),
        }
    }

    fn run(mut self) -> Result<StreamStats, GenerateError> {
        let mut stats = StreamStats::default();
        let total = self.opts.days * 1440;
        // Records of the current and the next 5-minute delivery.
        let mut current: Vec<String> = Vec::new();
        let mut next: Vec<String> = Vec::new();
        let mut bucket = 0u32;
        let mut calls: Vec<Call> = Vec::new();
        for minute in 0..total {
            if minute / 5 != bucket {
                self.deliver(bucket, &mut current, &mut stats)?;
                std::mem::swap(&mut current, &mut next);
                bucket = minute / 5;
            }
            calls.clear();
            self.plan_minute(minute, &mut calls);
            // `YYYY-MM-DDTHH:MM:` once a minute: formatting dates per record is the slow part.
            let t = DateTime::<Utc>::from_timestamp(self.start_secs + i64::from(minute) * 60, 0).unwrap_or_default();
            let prefix = t.format("%Y-%m-%dT%H:%M:").to_string();
            for call in &calls {
                let second = self.rng.below(60) as u32;
                let mut rec = String::with_capacity(1400);
                self.write_record(&mut rec, call, &prefix, second);
                stats.events += 1;
                // Late delivery: the next file. Duplicates: delivered again in the next file.
                let late = minute % 5 == 4 && self.rng.chance(self.opts.late_rate * 5.0);
                if self.rng.chance(self.opts.duplicate_rate) {
                    next.push(rec.clone());
                    stats.duplicates += 1;
                }
                if late { next.push(rec) } else { current.push(rec) }
            }
        }
        self.deliver(bucket, &mut current, &mut stats)?;
        self.deliver(bucket + 1, &mut next, &mut stats)?;
        Ok(stats)
    }

    /// The calls of one minute: the rhythm's Poisson draws, scheduled jobs and anomalies.
    fn plan_minute(&mut self, minute: u32, calls: &mut Vec<Call<'a>>) {
        let day_index = minute / 1440;
        let weekday = (self.opts.start + chrono::Days::new(u64::from(day_index))).weekday().num_days_from_monday();
        let (shape, data_shape) = (rhythm(minute, weekday), data_rhythm(minute, weekday));
        let active: Vec<&'a Label> = self.labels.iter().copied().filter(|l| l.start_minute <= minute && minute < l.end_minute).collect();
        for (i, &api) in self.apis.iter().enumerate() {
            let rate = self.base[i] * if api.data { data_shape } else { shape };
            let dropped = active.iter().any(|l| l.kind == "drop" && l.event_name == api.name && l.event_source == api.source);
            let n = if dropped { 0 } else { self.rng.poisson(rate) };
            for _ in 0..n {
                let error = self.rng.chance(api.error_rate).then_some(api.error_code);
                calls.push(Call { api, error, actor: None, bucket: None });
            }
            for l in active.iter().filter(|l| l.event_name == api.name && l.event_source == api.source) {
                let actor = l.user_identity_arn.as_deref().zip(l.user_agent.as_deref());
                let extra = match l.kind.as_str() {
                    // At least `magnitude` extra calls, so rare APIs show the multiple too.
                    "spike" => self.rng.poisson((rate * (l.magnitude - 1.0)).max(l.magnitude)),
                    "error_burst" => self.rng.poisson(l.magnitude),
                    _ => 0,
                };
                let error = if l.kind == "error_burst" { l.error_code.as_deref() } else { None };
                for _ in 0..extra {
                    calls.push(Call { api, error, actor, bucket: l.resource_arn.as_deref() });
                }
            }
        }
        for job in SCHEDULED_JOBS {
            let at = if job.hourly { minute % 60 == job.minute } else { minute % 1440 == job.minute };
            if at && let Some(api) = APIS.iter().find(|a| a.name == job.name && a.source == job.source) {
                for _ in 0..job.calls {
                    calls.push(Call { api, error: None, actor: None, bucket: None });
                }
            }
        }
    }

    /// Writes one delivery file: records shuffled, gzipped, named as CloudTrail names them.
    fn deliver(&mut self, bucket: u32, records: &mut Vec<String>, stats: &mut StreamStats) -> Result<(), GenerateError> {
        if records.is_empty() {
            return Ok(());
        }
        for i in (1..records.len()).rev() {
            let j = self.rng.below(i as u64 + 1) as usize;
            records.swap(i, j);
        }
        // Delivered at the end of its 5 minutes; around midnight that is the next day's folder.
        let delivered = DateTime::<Utc>::from_timestamp(self.start_secs + i64::from(bucket + 1) * 300, 0).unwrap_or_default();
        let name = format!(
            "{acct}_CloudTrail_{region}_{stamp}_{rand}.json.gz",
            acct = self.account,
            region = self.region,
            stamp = delivered.format("%Y%m%dT%H%MZ"),
            rand = self.rng.alnum(16)
        );
        let dir = self.opts.out.join(format!(
            "AWSLogs/{}/CloudTrail/{}/{:04}/{:02}/{:02}",
            self.account,
            self.region,
            delivered.year(),
            delivered.month(),
            delivered.day()
        ));
        let path = dir.join(name);
        let err = |source| GenerateError::Write { path: path.display().to_string(), source };
        std::fs::create_dir_all(&dir).map_err(err)?;
        let file = std::fs::File::create(&path).map_err(err)?;
        let mut gz = flate2::write::GzEncoder::new(std::io::BufWriter::with_capacity(256 << 10, file), flate2::Compression::fast());
        let mut written = 0u64;
        let mut put = |gz: &mut flate2::write::GzEncoder<_>, b: &[u8]| -> std::io::Result<()> {
            written += b.len() as u64;
            gz.write_all(b)
        };
        put(&mut gz, b"{\"Records\":[").map_err(err)?;
        for (i, r) in records.iter().enumerate() {
            if i > 0 {
                put(&mut gz, b",").map_err(err)?;
            }
            put(&mut gz, r.as_bytes()).map_err(err)?;
        }
        put(&mut gz, b"]}").map_err(err)?;
        gz.finish().and_then(|mut w| w.flush()).map_err(err)?;
        stats.files += 1;
        stats.bytes += written;
        records.clear();
        Ok(())
    }

    /// One complete record as CloudTrail writes it. Values are fixed vocabulary without
    /// characters that need JSON escaping.
    fn write_record(&mut self, out: &mut String, call: &Call, minute_prefix: &str, second: u32) {
        let api = call.api;
        let acct = self.account;
        let (day, hour) = (&minute_prefix[..10], &minute_prefix[..13]);
        let rng = &mut self.rng;
        out.push_str("{\"eventVersion\":\"1.09\",\"userIdentity\":");
        let (ip, agent): (String, &str) = match (call.actor, api.caller) {
            (Some((arn, ua)), _) => {
                let user = arn.rsplit('/').next().unwrap_or("intruder");
                let key = rng.alnum(16).to_uppercase();
                if arn.contains(":assumed-role/") {
                    let creation = format!("{hour}:00:00Z");
                    let role = AssumedRole {
                        issuer_id: &format!("AROA{acct}"),
                        role: "ci-deploy",
                        access_key: &format!("ASIA{key}"),
                        creation: &creation,
                        ..AssumedRole::new(acct, user)
                    };
                    role.write(out);
                } else {
                    write_iam_user(out, acct, &format!("AIDA{acct}{user}"), arn, &format!("AKIA{key}"), user);
                }
                (format!("185.220.101.{}", rng.below(250) + 1), ua)
            }
            (None, Caller::Human) => {
                let user = *rng.pick(&["alice", "bob", "carol"]);
                let ua = *rng.pick(catalogue::user_agents(Caller::Human));
                if rng.chance(0.5) {
                    let arn = format!("arn:aws:iam::{acct}:user/{user}");
                    write_iam_user(out, acct, &format!("AIDA{acct}{user}"), &arn, &format!("AKIA{acct}{user}"), user);
                } else {
                    let creation = format!("{day}T08:00:00Z");
                    let role = AssumedRole {
                        issuer_id: &format!("AROA{acct}"),
                        role: "Admin",
                        access_key: &format!("ASIA{acct}{user}"),
                        creation: &creation,
                        mfa: true,
                        ..AssumedRole::new(acct, user)
                    };
                    role.write(out);
                }
                (format!("203.0.113.{}", rng.below(20) + 10), ua)
            }
            (None, Caller::App) => {
                let instance = *rng.pick(&["i-0a1b2c3d4e5f60718", "i-0f9e8d7c6b5a40312", "i-0123456789abcdef0", "i-0fedcba9876543210"]);
                let ua = *rng.pick(catalogue::user_agents(Caller::App));
                let creation = format!("{hour}:00:00Z");
                let role = AssumedRole {
                    issuer_id: &format!("AROA{acct}APP"),
                    role: "app-role",
                    access_key: &format!("ASIA{acct}APP"),
                    creation: &creation,
                    ec2_role_delivery: true,
                    ..AssumedRole::new(acct, instance)
                };
                role.write(out);
                (format!("10.0.{}.{}", rng.below(4), rng.below(250) + 1), ua)
            }
            (None, Caller::Automation) => {
                let ua = *rng.pick(catalogue::user_agents(Caller::Automation));
                if rng.chance(0.7) {
                    let creation = format!("{hour}:00:00Z");
                    let provider = format!("arn:aws:iam::{acct}:oidc-provider/token.actions.githubusercontent.com");
                    let role = AssumedRole {
                        issuer_id: &format!("AROA{acct}CI"),
                        role: "ci-deploy",
                        access_key: &format!("ASIA{acct}CI"),
                        creation: &creation,
                        web_identity: Some(&provider),
                        ..AssumedRole::new(acct, "GitHubActions")
                    };
                    role.write(out);
                } else {
                    let arn = format!("arn:aws:iam::{acct}:user/terraform");
                    write_iam_user(out, acct, &format!("AIDA{acct}TF"), &arn, &format!("AKIA{acct}TF"), "terraform");
                }
                (format!("198.51.100.{}", rng.below(50) + 1), ua)
            }
            (None, Caller::Service) => {
                let svc = *rng.pick(catalogue::user_agents(Caller::Service));
                let _ = write!(out, "{{\"type\":\"AWSService\",\"invokedBy\":\"{svc}\"}}");
                (svc.to_owned(), svc)
            }
        };
        let _ = write!(
            out,
            ",\"eventTime\":\"{minute_prefix}{second:02}Z\",\"eventSource\":\"{}\",\"eventName\":\"{}\",\"awsRegion\":\"{}\",\"sourceIPAddress\":\"{ip}\",\"userAgent\":\"{agent}\"",
            api.source, api.name, self.region
        );
        if let Some(code) = call.error {
            let _ = write!(out, ",\"errorCode\":\"{code}\",\"errorMessage\":\"The request failed: {code}\"");
        }
        if api.data {
            return write_data_tail(out, call, rng, acct, self.region);
        }
        out.push_str(",\"requestParameters\":");
        request_parameters(out, api, rng, acct);
        out.push_str(",\"responseElements\":");
        if api.read_only || call.error.is_some() {
            out.push_str("null");
        } else {
            out.push_str("{\"requestId\":\"");
            rng.uuid(out);
            out.push_str("\",\"return\":true}");
        }
        out.push_str(",\"requestID\":\"");
        rng.uuid(out);
        out.push_str("\",\"eventID\":\"");
        rng.uuid(out);
        let _ = write!(out, "\",\"readOnly\":{}", api.read_only);
        if let Some(arn) = resource_arn(api, acct, self.region) {
            let _ = write!(out, ",\"resources\":[{{\"accountId\":\"{acct}\",\"type\":\"{}\",\"ARN\":\"{arn}\"}}]", resource_type(api));
        }
        let _ = write!(
            out,
            ",\"eventType\":\"AwsApiCall\",\"managementEvent\":true,\"recipientAccountId\":\"{acct}\",\"eventCategory\":\"Management\",\"tlsDetails\":{{\"tlsVersion\":\"TLSv1.3\",\"cipherSuite\":\"TLS_AES_128_GCM_SHA256\",\"clientProvidedHostHeader\":\"{}.{}.amazonaws.com\"}}}}",
            api.source.split('.').next().unwrap_or("api"),
            self.region
        );
    }
}

/// The rest of a data event after its caller, time, API and error: request parameters, IDs,
/// the resources (an S3 object and its bucket, a function, a table) and the category fields.
fn write_data_tail(out: &mut String, call: &Call, rng: &mut Rng, acct: &str, region: &str) {
    let api = call.api;
    let n = rng.below(5000);
    let resources = match api.source {
        "s3.amazonaws.com" => {
            let bucket = match call.bucket.and_then(|b| b.strip_prefix("arn:aws:s3:::")) {
                Some(b) => b.to_owned(),
                None => {
                    let mut x = rng.f64();
                    let name = BUCKETS.iter().find(|(_, share)| {
                        x -= share;
                        x < 0.0
                    });
                    format!("{acct}-{}", name.unwrap_or(&BUCKETS[0]).0)
                }
            };
            let key = format!("data/{:02}/object-{n:04}.json", n % 32);
            let _ = write!(out, ",\"requestParameters\":{{\"bucketName\":\"{bucket}\",\"Host\":\"{bucket}.s3.{region}.amazonaws.com\",\"key\":\"{key}\"}}");
            format!(
                "[{{\"type\":\"AWS::S3::Object\",\"ARN\":\"arn:aws:s3:::{bucket}/{key}\"}},{{\"accountId\":\"{acct}\",\"type\":\"AWS::S3::Bucket\",\"ARN\":\"arn:aws:s3:::{bucket}\"}}]"
            )
        }
        "lambda.amazonaws.com" => {
            let function = format!("arn:aws:lambda:{region}:{acct}:function:orders-{}", n % 4);
            let _ = write!(out, ",\"requestParameters\":{{\"functionName\":\"{function}\",\"invocationType\":\"RequestResponse\"}}");
            format!("[{{\"accountId\":\"{acct}\",\"type\":\"AWS::Lambda::Function\",\"ARN\":\"{function}\"}}]")
        }
        _ => {
            let table = ["orders", "sessions", "customers"][(n % 3) as usize];
            let _ = write!(out, ",\"requestParameters\":{{\"tableName\":\"{table}\",\"key\":{{\"id\":\"{n}\"}}}}");
            format!("[{{\"accountId\":\"{acct}\",\"type\":\"AWS::DynamoDB::Table\",\"ARN\":\"arn:aws:dynamodb:{region}:{acct}:table/{table}\"}}]")
        }
    };
    out.push_str(",\"responseElements\":null,\"requestID\":\"");
    rng.uuid(out);
    out.push_str("\",\"eventID\":\"");
    rng.uuid(out);
    let _ = write!(
        out,
        "\",\"readOnly\":{},\"resources\":{resources},\"eventType\":\"AwsApiCall\",\"managementEvent\":false,\"recipientAccountId\":\"{acct}\",\"eventCategory\":\"Data\",\"tlsDetails\":{{\"tlsVersion\":\"TLSv1.3\",\"cipherSuite\":\"TLS_AES_128_GCM_SHA256\",\"clientProvidedHostHeader\":\"{}.{region}.amazonaws.com\"}}}}",
        api.read_only,
        api.source.split('.').next().unwrap_or("api"),
    );
}

/// `userIdentity` of an IAM user.
fn write_iam_user(out: &mut String, acct: &str, principal_id: &str, arn: &str, access_key: &str, user: &str) {
    let _ = write!(
        out,
        "{{\"type\":\"IAMUser\",\"principalId\":\"{principal_id}\",\"arn\":\"{arn}\",\"accountId\":\"{acct}\",\"accessKeyId\":\"{access_key}\",\"userName\":\"{user}\"}}"
    );
}

/// `userIdentity` of an assumed-role session, with its session context.
struct AssumedRole<'a> {
    acct: &'a str,
    session: &'a str,
    /// The role's principal ID; the session's is `<issuer_id>:<session>`.
    issuer_id: &'a str,
    role: &'a str,
    access_key: &'a str,
    creation: &'a str,
    mfa: bool,
    /// The OIDC provider, for web-identity sessions.
    web_identity: Option<&'a str>,
    ec2_role_delivery: bool,
}

impl<'a> AssumedRole<'a> {
    fn new(acct: &'a str, session: &'a str) -> Self {
        AssumedRole { acct, session, issuer_id: "", role: "", access_key: "", creation: "", mfa: false, web_identity: None, ec2_role_delivery: false }
    }

    fn write(&self, out: &mut String) {
        let AssumedRole { acct, session, issuer_id, role, access_key, creation, .. } = self;
        let _ = write!(
            out,
            "{{\"type\":\"AssumedRole\",\"principalId\":\"{issuer_id}:{session}\",\"arn\":\"arn:aws:sts::{acct}:assumed-role/{role}/{session}\",\"accountId\":\"{acct}\",\"accessKeyId\":\"{access_key}\",\"sessionContext\":{{\"sessionIssuer\":{{\"type\":\"Role\",\"principalId\":\"{issuer_id}\",\"arn\":\"arn:aws:iam::{acct}:role/{role}\",\"accountId\":\"{acct}\",\"userName\":\"{role}\"}}"
        );
        if let Some(provider) = self.web_identity {
            let _ = write!(out, ",\"webIdFederationData\":{{\"federatedProvider\":\"{provider}\",\"attributes\":{{}}}}");
        }
        let _ = write!(out, ",\"attributes\":{{\"creationDate\":\"{creation}\",\"mfaAuthenticated\":\"{}\"}}", self.mfa);
        if self.ec2_role_delivery {
            out.push_str(",\"ec2RoleDelivery\":\"2.0\"");
        }
        out.push_str("}}");
    }
}

/// Plausible request parameters by API family.
fn request_parameters(out: &mut String, api: &Api, rng: &mut Rng, acct: &str) {
    let n = rng.below(40);
    let _ = match api.name {
        "RunInstances" => write!(
            out,
            "{{\"instancesSet\":{{\"items\":[{{\"imageId\":\"ami-0c55b159cbfafe1f0\",\"minCount\":1,\"maxCount\":{}}}]}},\"instanceType\":\"t3.micro\",\"monitoring\":{{\"enabled\":false}}}}",
            n % 3 + 1
        ),
        "AuthorizeSecurityGroupIngress" => write!(
            out,
            "{{\"groupId\":\"sg-0{n:07x}\",\"ipPermissions\":{{\"items\":[{{\"ipProtocol\":\"tcp\",\"fromPort\":22,\"toPort\":22,\"ipRanges\":{{\"items\":[{{\"cidrIp\":\"0.0.0.0/0\"}}]}}}}]}}}}"
        ),
        "CreateAccessKey" | "CreateUser" | "GetUser" => write!(out, "{{\"userName\":\"svc-user-{n}\"}}"),
        "AssumeRole" => write!(out, "{{\"roleArn\":\"arn:aws:iam::{acct}:role/app-role\",\"roleSessionName\":\"session-{n}\",\"durationSeconds\":3600}}"),
        "Decrypt" | "GenerateDataKey" => write!(
            out,
            "{{\"encryptionAlgorithm\":\"SYMMETRIC_DEFAULT\",\"keyId\":\"arn:aws:kms:us-east-1:{acct}:key/0000{n:04}-aaaa-bbbb-cccc-dddddddddddd\"}}"
        ),
        "GetParameter" | "PutParameter" => write!(out, "{{\"name\":\"/app/config/param-{n}\",\"withDecryption\":true}}"),
        "GetSecretValue" => write!(out, "{{\"secretId\":\"prod/db/password-{n}\"}}"),
        "CreateLogStream" => write!(out, "{{\"logGroupName\":\"/aws/lambda/fn-{n}\",\"logStreamName\":\"2024/01/01/[$LATEST]{n:032x}\"}}"),
        "GetRole" | "ListAttachedRolePolicies" | "AttachRolePolicy" | "PutRolePolicy" => write!(out, "{{\"roleName\":\"role-{n}\"}}"),
        name if name.starts_with("Describe") || name.starts_with("List") => write!(out, "{{\"maxResults\":{},\"filterSet\":{{}}}}", 50 + n * 10),
        name if name.contains("Bucket") => write!(out, "{{\"bucketName\":\"data-bucket-{n}\",\"Host\":\"data-bucket-{n}.s3.amazonaws.com\"}}"),
        _ => write!(out, "{{\"resourceId\":\"res-{n:06}\"}}"),
    };
}

fn resource_arn(api: &Api, acct: &str, region: &str) -> Option<String> {
    match api.name {
        "AssumeRole" => Some(format!("arn:aws:iam::{acct}:role/app-role")),
        "Decrypt" | "GenerateDataKey" => Some(format!("arn:aws:kms:{region}:{acct}:key/00000001-aaaa-bbbb-cccc-dddddddddddd")),
        "GetSecretValue" => Some(format!("arn:aws:secretsmanager:{region}:{acct}:secret:prod/db/password")),
        _ => None,
    }
}

fn resource_type(api: &Api) -> &'static str {
    match api.name {
        "AssumeRole" => "AWS::IAM::Role",
        "Decrypt" | "GenerateDataKey" => "AWS::KMS::Key",
        _ => "AWS::SecretsManager::Secret",
    }
}

/// Reads `labels.json` back (for tests and the quality scorer).
pub fn read_labels(dir: &Path) -> Result<serde_json::Value, GenerateError> {
    let path = dir.join("labels.json");
    let bytes = std::fs::read(&path).map_err(|source| GenerateError::Write { path: path.display().to_string(), source })?;
    serde_json::from_slice(&bytes).map_err(|e| GenerateError::Write { path: path.display().to_string(), source: e.into() })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rng_streams_depend_only_on_the_seed() {
        let seq = |seed| {
            let mut r = Rng::new(seed);
            (0..5).map(|_| r.next_u64()).collect::<Vec<_>>()
        };
        assert_eq!(seq(7), seq(7));
        assert_ne!(seq(7), seq(8));
        let mut id = String::new();
        Rng::new(3).uuid(&mut id);
        assert!(uuid::Uuid::parse_str(&id).is_ok(), "{id}");
    }

    #[test]
    fn poisson_mean_is_right() {
        let mut r = Rng::new(1);
        for lambda in [0.3, 4.0, 80.0] {
            let n = 20_000;
            let sum: u64 = (0..n).map(|_| u64::from(r.poisson(lambda))).sum();
            let mean = sum as f64 / n as f64;
            assert!((mean - lambda).abs() < lambda.sqrt() * 0.1 + 0.02, "lambda {lambda}: mean {mean}");
        }
    }

    #[test]
    fn rhythm_peaks_in_working_hours_dips_at_weekends_and_averages_one() {
        assert!(rhythm(14 * 60, 2) > 2.0 * rhythm(3 * 60, 2));
        assert!(rhythm(14 * 60, 6) < rhythm(14 * 60, 2));
        let mean = (0..7 * 1440).map(|m| rhythm(m % 1440, m / 1440)).sum::<f64>() / (7.0 * 1440.0);
        assert!((mean - 1.0).abs() < 1e-9, "{mean}");
    }

    #[test]
    fn too_few_days_for_anomalies_is_refused() {
        let mut o = GenerateOptions::new("/tmp/x");
        o.days = 3;
        assert!(matches!(o.validate(), Err(GenerateError::Options(m)) if m.contains("--days")));
        o.anomalies = 0;
        assert!(o.validate().is_ok());
    }
}
