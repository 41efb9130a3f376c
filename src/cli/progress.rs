//! One progress-bar driver for every long command: a thread redraws the bar from shared
//! counters until stopped, so the work itself never waits on the terminal.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

/// A bar drawn on stderr by its own thread; dropped or [`Bar::finish`]ed, it is cleared.
pub struct Bar {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Bar {
    /// Starts a bar with an indicatif `template`; `update` sets its length, position and
    /// message from the shared counters, every 150 ms.
    pub fn start(template: &str, update: impl Fn(&indicatif::ProgressBar) + Send + 'static) -> Bar {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let style = indicatif::ProgressStyle::with_template(template).unwrap_or_else(|_| indicatif::ProgressStyle::default_bar());
        let thread = std::thread::spawn(move || {
            let bar = indicatif::ProgressBar::new(0);
            bar.set_style(style);
            while !flag.load(Ordering::Relaxed) {
                update(&bar);
                std::thread::sleep(Duration::from_millis(150));
            }
            bar.finish_and_clear();
        });
        Bar { stop, thread: Some(thread) }
    }

    pub fn finish(mut self) {
        self.stop_now();
    }

    fn stop_now(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Bar {
    fn drop(&mut self) {
        self.stop_now();
    }
}

/// Draws files, events, MB/s and ETA on stderr until finished; with `backfill`, then the
/// Insights step's series.
pub fn ingest_bar(progress: Arc<prism::ingest::IngestProgress>, backfill: Option<Arc<prism::backfill::BackfillProgress>>) -> Bar {
    Bar::start("{spinner} [{elapsed_precise}] {wide_bar} {bytes}/{total_bytes} {binary_bytes_per_sec} ETA {eta} {msg}", move |bar| {
        bar.set_length(progress.bytes_total.load(Ordering::Relaxed));
        bar.set_position(progress.raw_bytes.load(Ordering::Relaxed));
        let mut msg = format!(
            "files {}/{} · events {}",
            progress.files_done.load(Ordering::Relaxed),
            progress.files_total.load(Ordering::Relaxed),
            progress.records.load(Ordering::Relaxed)
        );
        if let Some(b) = backfill.as_ref().filter(|b| b.phase.load(Ordering::Relaxed) == prism::backfill::PHASE_INSIGHTS) {
            msg = format!(
                "{msg} · insights: series {}/{} · {} found",
                b.insights.series_done.load(Ordering::Relaxed),
                b.insights.series_total.load(Ordering::Relaxed),
                b.insights.found.load(Ordering::Relaxed)
            );
        }
        bar.set_message(msg);
    })
}
