//! Where alerts go: `--alert KIND=TARGET` specs, and the delivery of one alert to one sink.
//!
//! A delivery either is acknowledged (the webhook answered 2xx, the command exited 0, the line
//! is fsynced, AWS accepted the entry) or fails with a reason; retrying is the caller's
//! ([`super::deliver`]).

use std::path::PathBuf;
use std::time::Duration;

use super::alert::{Alert, clean};

/// How long one webhook request may take.
const WEBHOOK_TIMEOUT: Duration = Duration::from_secs(15);
/// How long a `command=` may run before it is killed and the delivery counted as failed.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(60);

/// A `--alert` that cannot be used, and why.
#[derive(Debug, thiserror::Error)]
#[error("--alert `{spec}`: {reason}")]
pub struct SinkSpecError {
    pub spec: String,
    pub reason: String,
}

/// One configured destination.
pub struct Sink {
    /// Stable across restarts and option changes (`webhook:3f2a…`): the journal's key. Derived
    /// from the target, never containing it, since URLs may hold secrets.
    pub id: String,
    /// What logs and metrics show: the target with secrets left out.
    pub target: String,
    kind: Kind,
}

enum Kind {
    Webhook { url: url::Url, headers: reqwest::header::HeaderMap, secret: Option<Vec<u8>>, client: reqwest::Client },
    Command { command: String },
    File { path: PathBuf },
    Aws(super::aws::AwsSink),
}

impl std::fmt::Debug for Sink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({})", self.target, self.id)
    }
}

impl Sink {
    /// Parses `--alert`:
    /// - `webhook=URL[,header=NAME: VALUE]…[,secret-env=VAR|,secret-file=PATH]`
    /// - `command=CMD` (run with `sh -c`; the rest of the spec is the command)
    /// - `file=PATH`
    /// - `cloudwatch-logs=GROUP[:STREAM]`, `eventbridge=BUS` (a name or ARN)
    pub fn parse(spec: &str) -> Result<Sink, SinkSpecError> {
        let fail = |reason: String| SinkSpecError { spec: clean(spec), reason };
        let (kind, rest) = spec
            .split_once('=')
            .ok_or_else(|| fail("expected KIND=TARGET, e.g. webhook=https://…, command=…, file=…, cloudwatch-logs=GROUP or eventbridge=BUS".into()))?;
        let id = |target: &str| format!("{kind}:{:016x}", xxhash_rust::xxh3::xxh3_64(target.as_bytes()));
        match kind {
            "webhook" => {
                let mut parts = split_options(rest);
                let url_text = parts.remove(0);
                let url = url::Url::parse(url_text).map_err(|e| fail(format!("not a URL ({e})")))?;
                if !matches!(url.scheme(), "http" | "https") {
                    return Err(fail("the webhook must be an http:// or https:// URL".into()));
                }
                let mut headers = reqwest::header::HeaderMap::new();
                let mut secret = None;
                for (key, value) in parts.iter().filter_map(|p| p.split_once('=')) {
                    match key {
                        "header" => {
                            let (name, value) = value.split_once(':').ok_or_else(|| fail("header=NAME: VALUE".into()))?;
                            let name = reqwest::header::HeaderName::from_bytes(name.trim().as_bytes()).map_err(|e| fail(format!("header name: {e}")))?;
                            let value = reqwest::header::HeaderValue::from_str(value.trim()).map_err(|e| fail(format!("header value: {e}")))?;
                            headers.insert(name, value);
                        }
                        "secret-env" => secret = Some(std::env::var(value).map_err(|_| fail(format!("environment variable {value} is not set")))?.into_bytes()),
                        "secret-file" => {
                            let text = std::fs::read_to_string(value).map_err(|e| fail(format!("reading {value}: {e}")))?;
                            secret = Some(text.trim().as_bytes().to_vec());
                        }
                        other => return Err(fail(format!("unknown webhook option `{other}` (header=, secret-env=, secret-file=)"))),
                    }
                }
                let client = reqwest::Client::builder().timeout(WEBHOOK_TIMEOUT).build().map_err(|e| fail(e.to_string()))?;
                // Shown without its path and query, which often hold a token (Slack, Teams).
                let target = format!("webhook {}://{}/…", url.scheme(), url.host_str().unwrap_or(""));
                Ok(Sink { id: id(url.as_str()), target, kind: Kind::Webhook { url, headers, secret, client } })
            }
            "command" if !rest.trim().is_empty() => {
                let program = rest.split_whitespace().next().unwrap_or("");
                Ok(Sink { id: id(rest), target: format!("command {}", clean(program)), kind: Kind::Command { command: rest.to_owned() } })
            }
            "file" if !rest.is_empty() => {
                let path = std::path::absolute(rest).map_err(|e| fail(e.to_string()))?;
                if path.is_dir() {
                    return Err(fail("is a folder; name a file to append to".into()));
                }
                let shown = path.display().to_string();
                Ok(Sink { id: id(&shown), target: format!("file {}", clean(&shown)), kind: Kind::File { path } })
            }
            "cloudwatch-logs" | "eventbridge" if !rest.is_empty() => {
                let aws = super::aws::AwsSink::parse(kind, rest).map_err(fail)?;
                Ok(Sink { id: id(rest), target: format!("{kind} {}", clean(rest)), kind: Kind::Aws(aws) })
            }
            "command" | "file" | "cloudwatch-logs" | "eventbridge" => Err(fail("the target is empty".into())),
            other => Err(fail(format!("unknown kind `{}` (webhook, command, file, cloudwatch-logs, eventbridge)", clean(other)))),
        }
    }

    /// Delivers one alert; Ok holds what the sink answered (for the journal).
    pub async fn deliver(&self, alert: &Alert) -> Result<String, String> {
        match &self.kind {
            Kind::Webhook { url, headers, secret, client } => {
                let body = serde_json::to_vec(&alert.eventbridge_event()).map_err(|e| e.to_string())?;
                let mut request =
                    client.post(url.clone()).headers(headers.clone()).header("content-type", "application/json").header("x-prism-event-id", &alert.event_id);
                if let Some(secret) = secret {
                    request = request.header("x-prism-signature-256", signature(secret, &body));
                }
                // Without the URL: a webhook's path often holds its secret.
                let response = request.body(body).send().await.map_err(|e| crate::error::report(&e.without_url()))?;
                let status = response.status();
                if status.is_success() {
                    Ok(format!("HTTP {}", status.as_u16()))
                } else {
                    let text = response.text().await.unwrap_or_default();
                    Err(format!("HTTP {}: {}", status.as_u16(), clean(text.trim())))
                }
            }
            Kind::Command { command } => run_command(command, alert).await,
            Kind::File { path } => {
                let mut line = serde_json::to_vec(&alert.line()).map_err(|e| e.to_string())?;
                line.push(b'\n');
                let path = path.clone();
                tokio::task::spawn_blocking(move || append_synced(&path, &line).map_err(|e| format!("appending to {}: {e}", path.display())))
                    .await
                    .map_err(|e| e.to_string())??;
                Ok("appended".into())
            }
            Kind::Aws(aws) => aws.deliver(alert).await,
        }
    }
}

/// Splits `URL,header=…,secret-env=…` at the commas that start a known option, so a comma
/// inside the URL stays in it.
fn split_options(s: &str) -> Vec<&str> {
    const OPTIONS: [&str; 3] = ["header=", "secret-env=", "secret-file="];
    let mut out = Vec::new();
    let mut start = 0;
    for (i, _) in s.match_indices(',') {
        if OPTIONS.iter().any(|o| s[i + 1..].starts_with(o)) {
            out.push(&s[start..i]);
            start = i + 1;
        }
    }
    out.push(&s[start..]);
    out
}

/// `sha256=<hex>` of the HMAC-SHA256 of `body`: receivers check that an alert came from
/// whoever holds the secret (as GitHub's `X-Hub-Signature-256`).
pub fn signature(secret: &[u8], body: &[u8]) -> String {
    use hmac::{KeyInit, Mac};
    // HMAC takes keys of any length; the error case does not occur.
    let Ok(mut mac) = <hmac::Hmac<sha2::Sha256> as KeyInit>::new_from_slice(secret) else { return "sha256=".into() };
    mac.update(body);
    let bytes = mac.finalize().into_bytes();
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    format!("sha256={hex}")
}

/// Runs `sh -c command` with the alert's line on stdin and its summary, link and IDs in
/// `PRISM_*` variables; exit status 0 acknowledges.
async fn run_command(command: &str, alert: &Alert) -> Result<String, String> {
    use tokio::io::AsyncWriteExt;
    let mut child = tokio::process::Command::new("sh")
        .arg("-c")
        .arg(command)
        .env("PRISM_EVENT_ID", &alert.event_id)
        .env("PRISM_SHARED_EVENT_ID", &alert.shared_id)
        .env("PRISM_STATE", &alert.state)
        .env("PRISM_SUMMARY", &alert.summary)
        .env("PRISM_LINK", alert.link.as_deref().unwrap_or(""))
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| format!("cannot run sh: {e}"))?;
    let mut line = serde_json::to_vec(&alert.line()).map_err(|e| e.to_string())?;
    line.push(b'\n');
    if let Some(mut stdin) = child.stdin.take() {
        // A command that does not read its input is not an error.
        let _ = stdin.write_all(&line).await;
    }
    let output = tokio::time::timeout(COMMAND_TIMEOUT, child.wait_with_output())
        .await
        .map_err(|_| format!("still running after {}s; killed", COMMAND_TIMEOUT.as_secs()))?;
    let output = output.map_err(|e| e.to_string())?;
    if output.status.success() {
        Ok("exit 0".into())
    } else {
        let stderr = String::from_utf8_lossy(&output.stderr);
        Err(format!("{}: {}", output.status, clean(stderr.trim())))
    }
}

fn append_synced(path: &std::path::Path, line: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let mut f = std::fs::OpenOptions::new().create(true).append(true).open(path)?;
    f.write_all(line)?;
    f.sync_data()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn specs_parse_and_refuse_with_reasons() {
        let s = Sink::parse("webhook=https://hooks.example/T0/abc?x=1,2,header=Authorization: Bearer t,header=X-A: b").unwrap();
        assert_eq!(s.target, "webhook https://hooks.example/…");
        assert!(s.id.starts_with("webhook:"));
        let Kind::Webhook { url, headers, .. } = &s.kind else { panic!() };
        assert_eq!(url.as_str(), "https://hooks.example/T0/abc?x=1,2");
        assert_eq!(headers.len(), 2);
        // The ID does not change with the options.
        assert_eq!(Sink::parse("webhook=https://hooks.example/T0/abc?x=1,2").unwrap().id, s.id);
        assert_eq!(Sink::parse("command=logger -t prism, really").unwrap().target, "command logger");
        for (bad, why) in [
            ("nope", "expected KIND=TARGET"),
            ("pager=x", "unknown kind `pager`"),
            ("webhook=ftp://x/", "http:// or https://"),
            ("webhook=https://x/,secret-env=PRISM_SURELY_UNSET_VAR", "PRISM_SURELY_UNSET_VAR is not set"),
            ("webhook=https://x/,header=NoColon", "header=NAME: VALUE"),
            ("file=", "the target is empty"),
        ] {
            let e = Sink::parse(bad).unwrap_err().to_string();
            assert!(e.contains(why), "{bad}: {e}");
        }
    }

    #[test]
    fn signature_is_hmac_sha256() {
        // RFC 4231 test case 2.
        assert_eq!(signature(b"Jefe", b"what do ya want for nothing?"), "sha256=5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843");
    }
}
