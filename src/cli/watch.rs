//! `prism watch`: follow a trail, find Insights as logs land, deliver alerts.

use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use chrono::NaiveDate;
use clap::Args;

use prism::ingest::IngestOptions;
use prism::source::DateRange;
use prism::watch::{self, Sink, Stats, WatchOptions};

use super::args::{parse_date, parse_duration, parse_sensitivity};

pub const HELP: &str = "\
Examples:
  prism watch ./AWSLogs --lake ./lake --alert file=./alerts.ndjson
  prism watch s3://org-trail/AWSLogs/ --lake ./lake --interval 60s \\
      --alert webhook=https://hooks.example/T0 --alert command='logger -t prism'
  prism watch s3://org-trail/AWSLogs/ --lake ./lake --from 2026-12-01 --metrics 127.0.0.1:9464

On start, everything not yet ingested is read (from --from on, if given), then each poll lists
only the newest date folders of each account and region. After each ingest, Insights run over
the minutes that have settled (--settle-minutes), and every new Insight record (Start and End)
goes to each --alert. Insights types are enabled on a lake that has none.

Alerts (--alert, repeatable):
  webhook=URL[,header=NAME: VALUE][,secret-env=VAR|,secret-file=PATH]
      POSTs the EventBridge event AWS emits for Insights (detail-type \"AWS Insight via
      CloudTrail\", detail = the record) plus \"summary\" and \"link\". With a secret, the
      X-Prism-Signature-256 header holds sha256=HMAC-SHA256(secret, body).
  command=CMD       runs `sh -c CMD` with the record (plus summary and link) on stdin and
                    PRISM_SUMMARY, PRISM_LINK, PRISM_EVENT_ID, PRISM_STATE set; exit 0 = done
  file=PATH         appends the record (plus summary and link) as one JSON line, fsynced
  cloudwatch-logs=GROUP[:STREAM]   PutLogEvents (group and stream created when missing)
  eventbridge=BUS   PutEvents on a bus (name or ARN) with detail-type \"AWS Insight via CloudTrail\"
The AWS ones use the standard credential chain, AWS_REGION and AWS_ENDPOINT_URL.

Delivery is at least once: a sink's acknowledgement is journaled in the lake's `deliveries`
table, and a restart sends what was not journaled (after a crash, possibly again). A failing
sink is retried with backoff (up to --retry-max apart) and does not hold up the others. A sink
added to an existing lake gets the Insights found from then on, not the history.

Each poll prints one JSON line on stdout (objects, events, Insights, deliveries, lag); each
delivery and failed attempt prints one too.

One watch runs on a lake at a time (a lease in the lake, renewed every 20 s): a second fails
saying which process holds it. With --wait it waits as a standby (logging a \"waiting\" line)
and takes over when the first stops, or within 60 s of its death (at once on the same machine).

Exit status: 0 stopped by Ctrl-C or SIGTERM (the current poll is finished first); 1 could not
start (no lake, bad source, address in use, another watch running), or another watch took the
lease over (this one had stalled); 2 bad arguments. A failing poll does not stop the watch: it
is logged, counted, and retried at the next interval.";

/// Options shared by `prism watch` and `prism serve --watch`.
#[derive(Args, Clone)]
pub struct FollowArgs {
    /// Where to deliver each new Insight record: webhook=URL, command=CMD, file=PATH,
    /// cloudwatch-logs=GROUP[:STREAM] or eventbridge=BUS (repeatable; see below).
    #[arg(long = "alert", value_name = "KIND=TARGET", value_parser = check_alert)]
    pub alerts: Vec<String>,
    /// Time between polls.
    #[arg(long, default_value = "60s", value_parser = parse_duration)]
    pub interval: Duration,
    /// Minutes before the newest data left for a later poll, since their events may still be
    /// arriving. An Insight is delivered within one interval plus this after its log lands.
    #[arg(long, default_value_t = 10)]
    pub settle_minutes: i64,
    /// Detector sensitivity: 2 finds weaker deviations, 0.5 only stronger ones.
    #[arg(long, default_value_t = 1.0, value_parser = parse_sensitivity)]
    pub sensitivity: f64,
    /// Catch up from this delivery day (YYYY-MM-DD) instead of the whole archive.
    #[arg(long, value_parser = parse_date)]
    pub from: Option<NaiveDate>,
    /// The console's URL as people reach it (https://prism.example/): alerts link to the
    /// Insight's page there.
    #[arg(long, value_name = "URL")]
    pub public_url: Option<url::Url>,
    /// Serve Prometheus metrics at http://ADDR/metrics.
    #[arg(long, value_name = "ADDR")]
    pub metrics: Option<SocketAddr>,
    /// Longest wait between two attempts to deliver to a failing sink (the first is 1s).
    #[arg(long, default_value = "5m", value_parser = parse_duration)]
    pub retry_max: Duration,
    /// Where AWS-format Insights files go (default: the lake, under AWSLogs/).
    #[arg(long)]
    pub out: Option<String>,
    /// How often to compact the small files each poll adds (as `prism optimize`). Replaced
    /// files stay on disk until `prism vacuum`.
    #[arg(long, default_value = "60m", value_parser = parse_duration)]
    pub compact_every: Duration,
    /// If another watch runs on this lake, wait for it to stop (or die) and take over, instead
    /// of failing: a standby.
    #[arg(long)]
    pub wait: bool,
}

#[derive(Args)]
pub struct WatchArgs {
    /// Folders or s3://bucket/prefix URLs to follow (an AWSLogs/ folder, or the one above it).
    #[arg(required = true, value_name = "SOURCE")]
    sources: Vec<String>,
    /// The lake: a folder, or s3://bucket/prefix. Created when missing.
    #[arg(long, env = "PRISM_LAKE")]
    lake: String,
    #[command(flatten)]
    follow: FollowArgs,
}

/// Refuses a bad `--alert` as a bad argument (exit status 2), with the reason.
fn check_alert(spec: &str) -> Result<String, String> {
    Sink::parse(spec).map(|_| spec.to_owned()).map_err(|e| e.reason)
}

pub async fn run(args: WatchArgs) -> anyhow::Result<ExitCode> {
    let running = start(args.sources, args.lake, args.follow, super::shared_stop()).await?;
    running.await??;
    Ok(ExitCode::SUCCESS)
}

/// Starts a watch (and its metrics server) in the background; the handle ends when `stop`
/// has turned true and the watch has wound down.
pub async fn start(
    sources: Vec<String>,
    lake: String,
    args: FollowArgs,
    stop: tokio::sync::watch::Receiver<bool>,
) -> anyhow::Result<tokio::task::JoinHandle<anyhow::Result<()>>> {
    let mut ingest = IngestOptions::new(sources, lake);
    ingest.range = DateRange { from: args.from, to: None };
    let mut opts = WatchOptions::new(ingest);
    opts.interval = args.interval;
    opts.settle_minutes = args.settle_minutes.max(0);
    opts.params = prism::insights::detect::DetectorParams::with_sensitivity(args.sensitivity);
    opts.out = args.out;
    opts.public_url = args.public_url;
    opts.retry_max = args.retry_max.max(opts.retry_first);
    opts.compact_every = args.compact_every;
    opts.lease.wait = args.wait;
    opts.sinks = args.alerts.iter().map(|a| Sink::parse(a)).collect::<Result<_, _>>()?;
    let stats = Arc::new(Stats::new(opts.sinks.iter().map(|s| (s.id.clone(), s.target.clone())).collect()));
    let metrics = match args.metrics {
        Some(addr) => {
            let listener = tokio::net::TcpListener::bind(addr).await.map_err(|source| watch::WatchError::Metrics { addr, source })?;
            eprintln!("Prism watch metrics on http://{}/metrics", listener.local_addr()?);
            Some(tokio::spawn(watch::metrics::serve(listener, stats.clone(), super::stopped(stop.clone()))))
        }
        None => None,
    };
    Ok(tokio::spawn(async move {
        let result = watch::run(opts, stats, super::stopped(stop)).await;
        if let Some(m) = metrics {
            // After a failed start there is no stop to end the metrics server with.
            if result.is_err() {
                m.abort();
            }
            let _ = m.await;
        }
        result.map_err(anyhow::Error::from)
    }))
}
