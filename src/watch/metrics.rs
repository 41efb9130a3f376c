//! `/metrics` in the Prometheus text format (`--metrics ADDR`).

use std::fmt::Write;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use super::Stats;

/// The counters and gauges of a watch, as Prometheus text (format 0.0.4).
pub fn render(stats: &Stats) -> String {
    let mut out = String::new();
    let mut metric = |name: &str, kind: &str, help: &str, samples: &[(String, f64)]| {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
        for (labels, value) in samples {
            let _ = writeln!(out, "{name}{labels} {value}");
        }
    };
    let one = |v: u64| vec![(String::new(), v as f64)];
    metric("prism_watch_polls_total", "counter", "Polls of the sources (the first is the catch-up).", &one(stats.polls.load(Ordering::Relaxed)));
    metric(
        "prism_watch_poll_failures_total",
        "counter",
        "Polls that failed (listing, reading or writing); the next poll retries.",
        &one(stats.poll_failures.load(Ordering::Relaxed)),
    );
    metric("prism_watch_objects_total", "counter", "Log files read into the lake.", &one(stats.objects.load(Ordering::Relaxed)));
    metric("prism_watch_events_total", "counter", "Events written to the lake (duplicates left out).", &one(stats.events.load(Ordering::Relaxed)));
    metric("prism_watch_rejects_total", "counter", "Records rejected, and damaged files (see the rejects table).", &one(stats.rejects.load(Ordering::Relaxed)));
    metric("prism_watch_insights_total", "counter", "Insight records (Start and End) found.", &one(stats.insights.load(Ordering::Relaxed)));
    let lag = stats.lag_seconds.load(Ordering::Relaxed);
    metric(
        "prism_watch_lag_seconds",
        "gauge",
        "Seconds from the delivery time of the newest log file seen (from its CloudTrail name) to the last poll.",
        &if lag >= 0 { vec![(String::new(), lag as f64)] } else { Vec::new() },
    );
    let per_sink = |f: &dyn Fn(&super::SinkStats) -> u64| -> Vec<(String, f64)> {
        stats.sinks.iter().map(|s| (format!("{{sink=\"{}\",target=\"{}\"}}", label(&s.id), label(&s.target)), f(s) as f64)).collect()
    };
    metric("prism_watch_deliveries_total", "counter", "Alerts a sink acknowledged.", &per_sink(&|s| s.delivered.load(Ordering::Relaxed)));
    metric(
        "prism_watch_delivery_failures_total",
        "counter",
        "Delivery attempts that failed (each is retried).",
        &per_sink(&|s| s.failures.load(Ordering::Relaxed)),
    );
    metric("prism_watch_backlog", "gauge", "Alerts waiting for a sink.", &per_sink(&|s| s.backlog.load(Ordering::Relaxed)));
    out
}

/// A label value with `\`, `"` and newlines escaped, as the format requires.
fn label(s: &str) -> String {
    s.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

/// Serves `/metrics` on `listener` until `stop` completes.
pub async fn serve(listener: tokio::net::TcpListener, stats: Arc<Stats>, stop: impl std::future::Future<Output = ()> + Send + 'static) -> std::io::Result<()> {
    use axum::routing::get;
    let app = axum::Router::new().route(
        "/metrics",
        get(move || {
            let stats = stats.clone();
            async move { ([(axum::http::header::CONTENT_TYPE, "text/plain; version=0.0.4")], render(&stats)) }
        }),
    );
    axum::serve(listener, app).with_graceful_shutdown(stop).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_format_with_escaped_labels() {
        let stats = Stats::new(vec![("file:1".into(), "file /tmp/a\"b".into())]);
        stats.polls.store(3, Ordering::Relaxed);
        stats.sinks[0].backlog.store(2, Ordering::Relaxed);
        let text = render(&stats);
        assert!(text.contains("# TYPE prism_watch_polls_total counter\nprism_watch_polls_total 3\n"), "{text}");
        assert!(text.contains("prism_watch_backlog{sink=\"file:1\",target=\"file /tmp/a\\\"b\"} 2\n"), "{text}");
        // No lag before the first file.
        assert!(!text.contains("\nprism_watch_lag_seconds "), "{text}");
    }
}
