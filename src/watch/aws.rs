//! The AWS-native sinks: CloudWatch Logs (where CloudTrail itself sends Insights) and
//! EventBridge (where rules match "AWS Insight via CloudTrail"), through the AWS SDK with the
//! standard credential chain, `AWS_REGION` and `AWS_ENDPOINT_URL`.
//!
//! The SDK's HTTP client is built with rustls on `ring`, the provider the rest of the tree
//! already uses; its clients are made at the first delivery, so that parsing `--alert` needs
//! no credentials and a sink whose credentials fail only fails its own deliveries.

use aws_sdk_cloudwatchlogs::error::DisplayErrorContext;
use tokio::sync::OnceCell;

use super::alert::{Alert, DETAIL_TYPE};

/// The stream of `cloudwatch-logs=GROUP` without `:STREAM`.
pub const DEFAULT_STREAM: &str = "prism-watch";
/// EventBridge refuses `aws.` sources from anyone but AWS (`NotAuthorizedForSourceException`),
/// so events carry this source and AWS's detail-type: rules should match the detail-type.
pub const EVENTBRIDGE_SOURCE: &str = "prism.cloudtrail";

pub enum AwsSink {
    Logs { group: String, stream: String, client: OnceCell<aws_sdk_cloudwatchlogs::Client>, ready: OnceCell<()> },
    Events { bus: String, client: OnceCell<aws_sdk_eventbridge::Client> },
}

/// The SDK's settings from the standard chain (environment, profile, SSO, IMDS …).
async fn sdk_config() -> aws_config::SdkConfig {
    use aws_smithy_http_client::tls::{self, rustls_provider::CryptoMode};
    let http = aws_smithy_http_client::Builder::new().tls_provider(tls::Provider::Rustls(CryptoMode::Ring)).build_https();
    aws_config::defaults(aws_config::BehaviorVersion::latest()).http_client(http).load().await
}

impl AwsSink {
    /// `kind` is `cloudwatch-logs` (`GROUP[:STREAM]`) or `eventbridge` (`BUS`, a name or ARN).
    pub fn parse(kind: &str, target: &str) -> Result<AwsSink, String> {
        if kind == "cloudwatch-logs" {
            let (group, stream) = target.split_once(':').unwrap_or((target, DEFAULT_STREAM));
            let valid = |s: &str, extra: &str| {
                !s.is_empty() && s.len() <= 512 && s.chars().all(|c| c.is_ascii_alphanumeric() || "._-/#".contains(c) || extra.contains(c))
            };
            if !valid(group, "") {
                return Err(format!("`{group}` is not a log group name (letters, digits and . _ - / #)"));
            }
            if !valid(stream, " ") {
                return Err(format!("`{stream}` is not a log stream name"));
            }
            return Ok(AwsSink::Logs { group: group.into(), stream: stream.into(), client: OnceCell::new(), ready: OnceCell::new() });
        }
        if target.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err("an event bus name or ARN has no spaces".into());
        }
        Ok(AwsSink::Events { bus: target.into(), client: OnceCell::new() })
    }

    pub async fn deliver(&self, alert: &Alert) -> Result<String, String> {
        let message = serde_json::to_string(&alert.line()).map_err(|e| e.to_string())?;
        match self {
            AwsSink::Logs { group, stream, client, ready } => {
                let client = client.get_or_init(|| async { aws_sdk_cloudwatchlogs::Client::new(&sdk_config().await) }).await;
                ready.get_or_try_init(|| ensure_stream(client, group, stream)).await?;
                let now = chrono::Utc::now().timestamp_millis();
                let event = aws_sdk_cloudwatchlogs::types::InputLogEvent::builder().timestamp(now).message(message).build().map_err(|e| e.to_string())?;
                let out = client
                    .put_log_events()
                    .log_group_name(group)
                    .log_stream_name(stream)
                    .log_events(event)
                    .send()
                    .await
                    .map_err(|e| format!("PutLogEvents: {}", DisplayErrorContext(&e)))?;
                if let Some(r) = out.rejected_log_events_info() {
                    return Err(format!("PutLogEvents rejected the event ({r:?})"));
                }
                Ok("PutLogEvents".into())
            }
            AwsSink::Events { bus, client } => {
                let client = client.get_or_init(|| async { aws_sdk_eventbridge::Client::new(&sdk_config().await) }).await;
                let entry = aws_sdk_eventbridge::types::PutEventsRequestEntry::builder()
                    .event_bus_name(bus)
                    .source(EVENTBRIDGE_SOURCE)
                    .detail_type(DETAIL_TYPE)
                    .detail(message)
                    .build();
                let out = client.put_events().entries(entry).send().await.map_err(|e| format!("PutEvents: {}", DisplayErrorContext(&e)))?;
                if out.failed_entry_count() > 0 {
                    let e = out.entries().first();
                    return Err(format!(
                        "PutEvents refused the event: {} {}",
                        e.and_then(|e| e.error_code()).unwrap_or("?"),
                        e.and_then(|e| e.error_message()).unwrap_or("")
                    ));
                }
                let id = out.entries().first().and_then(|e| e.event_id()).unwrap_or("");
                Ok(format!("PutEvents {id}"))
            }
        }
    }
}

/// Creates the log group and stream unless they exist.
async fn ensure_stream(client: &aws_sdk_cloudwatchlogs::Client, group: &str, stream: &str) -> Result<(), String> {
    if let Err(e) = client.create_log_group().log_group_name(group).send().await
        && !e.as_service_error().is_some_and(|x| x.is_resource_already_exists_exception())
    {
        return Err(format!("CreateLogGroup {group}: {}", DisplayErrorContext(&e)));
    }
    if let Err(e) = client.create_log_stream().log_group_name(group).log_stream_name(stream).send().await
        && !e.as_service_error().is_some_and(|x| x.is_resource_already_exists_exception())
    {
        return Err(format!("CreateLogStream {group}:{stream}: {}", DisplayErrorContext(&e)));
    }
    Ok(())
}
