//! `prism`: parses the command line, runs the command on a Tokio runtime, and turns an error
//! into one line on stderr and exit status 1. Everything else is in `cli` and the library.

mod cli;

use std::process::ExitCode;

use clap::{CommandFactory, FromArgMatches};

/// mimalloc: the many short-lived allocations of parsing and small-file writing are markedly
/// cheaper than with the system allocator (the same choice as datafusion-cli).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// mimalloc 3's `mi_option_purge_delay`: how long freed memory stays with the process before it
/// goes back to the OS (10 ms by default, and 10 times that for arenas). Ingest frees a
/// commit's buffers on one thread while parsers allocate on others; with the default, an ingest
/// of 10,370 small files peaked at 955 MiB, with 0 (at once) at 610 MiB, no slower
/// (docs/performance.md), and an Insights backfill over 4.5M events at 1.07 GB instead of 1.28
/// (though 15% slower). Since transparent huge pages are off (below), `ingest` measured faster
/// with 50 ms at a peak still far under 1 GiB ([`cli::Cli::purge_delay_ms`]). Commands that run
/// queries keep the default:
/// a query reads each batch into fresh buffers, and pages given back at once fault in again
/// (the query suite took 2.94 s with the default, 3.36 s with 0).
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

/// mimalloc 3's `mi_option_allow_thp`. With it on (the default), mimalloc asks for transparent
/// huge pages, and each page it takes back from the OS (at once, above) costs a fault that
/// zeroes 2 MiB when touched again. Off, a 10,370-file day ingest took 11.5–11.9 s at
/// 454–476 MiB instead of 13.4–16.1 s at 618–673 MiB, and a watch's Insights step 0.46 s
/// instead of 1.1 s (docs/performance.md#memory-allocator).
const MI_OPTION_ALLOW_THP: libmimalloc_sys::mi_option_t = 43;

fn main() -> ExitCode {
    if std::env::var_os("MIMALLOC_ALLOW_THP").is_none() {
        // The option stops mimalloc advising huge pages from now on; the prctl also covers what
        // it mapped before `main` and kernels whose THP setting is `always` (what
        // MIMALLOC_ALLOW_THP=0 does when read at start). SAFETY: neither touches memory.
        unsafe { libmimalloc_sys::mi_option_set(MI_OPTION_ALLOW_THP, 0) };
        #[cfg(target_os = "linux")]
        unsafe {
            libc::prctl(libc::PR_SET_THP_DISABLE, 1, 0, 0, 0)
        };
    }
    quiet_caught_panics();
    let matches = cli::Cli::command().get_matches();
    let cli = match cli::Cli::from_arg_matches(&matches) {
        Ok(cli) => cli,
        Err(e) => e.exit(),
    };
    if let Some(delay) = cli.purge_delay_ms().filter(|_| std::env::var_os("MIMALLOC_PURGE_DELAY").is_none()) {
        // SAFETY: sets a documented option of the allocator this binary links; no memory is touched.
        unsafe { libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, delay) };
    }
    // A reader that closes stdout early (`prism sql … | head`) ends the process quietly, as it
    // does any Unix tool, instead of a panic at the next print (Rust ignores SIGPIPE, so a
    // print fails instead). Not where Prism writes to a child's stdin: a sink command that
    // exits early is an error to report, not the end of the watch.
    #[cfg(unix)]
    if !cli.writes_to_pipes() {
        // SAFETY: restores the default action of one signal before any thread starts.
        unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
    }
    tracing_subscriber::fmt()
        // Dependencies log routine conditions as errors (e.g. "no files in log segment" while a
        // table is being created); show only Prism's own warnings unless PRISM_LOG asks.
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_env("PRISM_LOG").unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("prism=warn")))
        .with_writer(std::io::stderr)
        .init();
    let runtime = match tokio::runtime::Builder::new_multi_thread().max_blocking_threads(cli.blocking_threads()).enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(cli.run(&matches));
    // Work nobody awaits any more (a console query's parse that ran out of time) must not hold
    // the exit up for long; everything a command awaited has ended by now.
    runtime.shutdown_timeout(std::time::Duration::from_secs(5));
    match result {
        Ok(code) => code,
        Err(e) => {
            let text = prism::error::report(e.as_ref());
            eprintln!("error: {text}");
            if let Some(hint) = hint(&text) {
                eprintln!("hint: {hint}");
            }
            ExitCode::FAILURE
        }
    }
}

/// What to do about errors of the machine rather than of Prism. Every writing command leaves
/// the lake consistent when it stops, and the next run goes on from there.
fn hint(error: &str) -> Option<&'static str> {
    if error.contains("No space left on device") || error.contains("Disk quota exceeded") {
        Some("the disk is full. What was committed is intact: free space and run the same command again; it goes on where it stopped.")
    } else if prism::source::refuses_credentials(error) {
        Some(
            "the AWS credentials expired or are not valid. What was committed is intact: renew them (e.g. `aws sso login`, or fresh keys in the environment) and run the same command again; it goes on where it stopped.",
        )
    } else if error.contains("Read-only file system") || error.contains("Permission denied") {
        Some("Prism cannot write there. Nothing was changed by the failed write: make the location writable (or choose another) and run the command again.")
    } else {
        None
    }
}

/// Keeps stderr to the error itself when a dependency panics on purpose and catches it: after
/// a failed upload (a full disk), deltalake aborts the object store's writer, which panics
/// "Already shut down" by design, inside `catch_unwind`; the default hook would print that
/// panic and its backtrace before the real error. Every other panic is printed as usual.
fn quiet_caught_panics() {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let from_buffered_writer = info.location().is_some_and(|l| l.file().contains("object_store") && l.file().ends_with("buffered.rs"));
        let message = info.payload().downcast_ref::<&str>().copied().or_else(|| info.payload().downcast_ref::<String>().map(String::as_str));
        if from_buffered_writer && message == Some("Already shut down") {
            return;
        }
        // datafusion-distributed 4.0 drains a failed query's tasks with tokio's
        // `JoinSet::join_all`, which panics, inside a task of its own, when one of them was
        // cancelled (as when a worker is down): the query's error is already reported.
        let from_join_set = info.location().is_some_and(|l| l.file().contains("tokio") && l.file().ends_with("join_set.rs"));
        if from_join_set && message.is_some_and(|m| m.ends_with("was cancelled")) {
            return;
        }
        default(info);
    }));
}
