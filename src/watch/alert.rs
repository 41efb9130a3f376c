//! What a sink is given for one Insight record: the record, a one-line summary a person can
//! read at a glance, and a link to the console's page for it.

use serde_json::{Value, json};

/// AWS's `detail-type` for Insights events on EventBridge.
pub const DETAIL_TYPE: &str = "AWS Insight via CloudTrail";
/// AWS's `source` for CloudTrail's events on EventBridge.
pub const SOURCE: &str = "aws.cloudtrail";

/// One Insight record to deliver.
#[derive(Debug, Clone, PartialEq)]
pub struct Alert {
    pub event_id: String,
    pub shared_id: String,
    /// `Start` or `End`.
    pub state: String,
    pub account: String,
    pub region: String,
    /// The record's `eventTime`.
    pub time: String,
    /// The Insight record exactly as in the `insights` table and AWS-format files.
    pub record: Value,
    pub summary: String,
    /// The console's details page, when `--public-url` is known.
    pub link: Option<String>,
}

impl Alert {
    /// Builds an alert from a stored record (its `eventjson`). Values in the record that come
    /// from logs (API names, callers) are cleaned of control characters in the summary.
    pub fn new(record: Value, public_url: Option<&url::Url>) -> Alert {
        let text = |v: &Value| v.as_str().map(clean).unwrap_or_default();
        let shared_id = text(&record["sharedEventID"]);
        let link = public_url.and_then(|u| {
            let mut u = u.clone();
            u.path_segments_mut().ok()?.pop_if_empty().push("insights").push(&shared_id);
            Some(u.to_string())
        });
        Alert {
            event_id: text(&record["eventID"]),
            state: text(&record["insightDetails"]["state"]),
            account: text(&record["recipientAccountId"]),
            region: text(&record["awsRegion"]),
            time: text(&record["eventTime"]),
            summary: summary(&record),
            shared_id,
            link,
            record,
        }
    }

    /// The record with `summary` and `link` beside its own fields: the line `file=` appends,
    /// the message `cloudwatch-logs=` puts, and what `command=` reads on stdin.
    pub fn line(&self) -> Value {
        let mut v = self.record.clone();
        if let Some(o) = v.as_object_mut() {
            o.insert("summary".into(), json!(self.summary));
            if let Some(l) = &self.link {
                o.insert("link".into(), json!(l));
            }
        }
        v
    }

    /// The event AWS puts on EventBridge for an Insight (`detail` is the record), with the
    /// summary and link as two more top-level fields: the body `webhook=` posts.
    pub fn eventbridge_event(&self) -> Value {
        let id = uuid::Uuid::new_v5(&uuid::Uuid::NAMESPACE_OID, self.event_id.as_bytes()).to_string();
        let mut v = json!({
            "version": "0",
            "id": id,
            "detail-type": DETAIL_TYPE,
            "source": SOURCE,
            "account": self.account,
            "time": self.time,
            "region": self.region,
            "resources": [],
            "detail": self.record,
            "summary": self.summary,
        });
        if let (Some(l), Some(o)) = (&self.link, v.as_object_mut()) {
            o.insert("link".into(), json!(l));
        }
        v
    }
}

/// `ApiCallRateInsight Start: ec2.amazonaws.com RunInstances in 111122223333/us-east-1 at
/// …: 42 calls/min vs a baseline of 3.1 (13.5x), for 5 min; top caller arn:…`.
pub fn summary(record: &Value) -> String {
    let d = &record["insightDetails"];
    let text = |v: &Value| v.as_str().map(clean).unwrap_or_else(|| "?".into());
    let stats = &d["insightContext"]["statistics"];
    let (baseline, insight) = (stats["baseline"]["average"].as_f64().unwrap_or(0.0), stats["insight"]["average"].as_f64().unwrap_or(0.0));
    let what = match d["errorCode"].as_str() {
        Some(code) => format!("{} errors/min", clean(code)),
        None => "calls/min".into(),
    };
    let ratio = if baseline > 0.0 { format!(" ({:.1}x)", insight / baseline) } else { String::new() };
    let duration = stats["insightDuration"].as_i64().unwrap_or(0);
    // Data Insights say so; management ones read as before.
    let category = match d["sourceEventCategory"].as_str() {
        Some(c) if c != "Management" => format!(" on {} events", clean(&c.to_lowercase())),
        _ => String::new(),
    };
    let mut out = format!(
        "{}{category} {}: {} {} in {}/{} at {}: {} {what} vs a baseline of {}{ratio}, for {duration} min",
        text(&d["insightType"]),
        text(&d["state"]),
        text(&d["eventSource"]),
        text(&d["eventName"]),
        text(&record["recipientAccountId"]),
        text(&record["awsRegion"]),
        text(&record["eventTime"]),
        round(insight),
        round(baseline),
    );
    let top = d["insightContext"]["attributions"]
        .as_array()
        .and_then(|a| a.iter().find(|x| x["attribute"] == "userIdentityArn"))
        .and_then(|x| x["insight"].get(0))
        .and_then(|x| x["value"].as_str());
    if let Some(top) = top {
        out.push_str("; top caller ");
        out.push_str(&clean(top));
    }
    out
}

fn round(x: f64) -> String {
    let s = format!("{x:.2}");
    s.trim_end_matches('0').trim_end_matches('.').to_owned()
}

pub use crate::error::clean;

#[cfg(test)]
mod tests {
    use super::*;

    fn record() -> Value {
        json!({
            "eventVersion": "1.09", "eventTime": "2024-01-09T10:00:00Z", "awsRegion": "eu-west-1",
            "eventID": "e1", "eventType": "AwsCloudTrailInsight", "recipientAccountId": "111122223333",
            "sharedEventID": "s1", "eventCategory": "Insight",
            "insightDetails": {"state": "Start", "eventSource": "ec2.amazonaws.com", "eventName": "RunInstances\u{1b}[2J",
                "insightType": "ApiCallRateInsight", "sourceEventCategory": "Management",
                "insightContext": {"statistics": {"baseline": {"average": 3.1}, "insight": {"average": 42.0}, "insightDuration": 1, "baselineDuration": 10000},
                    "attributions": [{"attribute": "userIdentityArn", "insight": [{"value": "arn:aws:iam::111122223333:user/mallory", "average": 40.0}], "baseline": []}]}}
        })
    }

    #[test]
    fn summary_reads_at_a_glance_and_is_safe_on_a_terminal() {
        let s = summary(&record());
        assert_eq!(
            s,
            "ApiCallRateInsight Start: ec2.amazonaws.com RunInstances\u{fffd}[2J in 111122223333/eu-west-1 at 2024-01-09T10:00:00Z: 42 calls/min vs a baseline of 3.1 (13.5x), for 1 min; top caller arn:aws:iam::111122223333:user/mallory"
        );
        assert_eq!(clean(&"x".repeat(300)).chars().count(), 201);
        let mut data = record();
        data["insightDetails"]["sourceEventCategory"] = "Data".into();
        assert!(summary(&data).starts_with("ApiCallRateInsight on data events Start: "), "{}", summary(&data));
    }

    #[test]
    fn eventbridge_shape_and_link() {
        let url = url::Url::parse("https://prism.example/console/").unwrap();
        let a = Alert::new(record(), Some(&url));
        assert_eq!(a.link.as_deref(), Some("https://prism.example/console/insights/s1"));
        let e = a.eventbridge_event();
        assert_eq!(e["detail-type"], DETAIL_TYPE);
        assert_eq!(e["source"], SOURCE);
        assert_eq!(e["account"], "111122223333");
        assert_eq!(e["detail"], record());
        assert_eq!(a.line()["eventID"], "e1");
        assert_eq!(a.line()["link"], "https://prism.example/console/insights/s1");
    }
}
