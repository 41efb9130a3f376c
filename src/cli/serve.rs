//! `prism serve`: the Insights console and its JSON API over a lake.

use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;

use clap::Args;

use prism::serve::{self, ServeOptions};

pub const HELP: &str = "\
Examples:
  prism serve --lake ./lake                      # http://127.0.0.1:8080; opens no browser
  prism serve --lake ./lake --listen 127.0.0.1:0 # any free port (printed on the first line)
  prism serve --lake s3://bucket/lake --listen 0.0.0.0:8080 --token-file /etc/prism/token

Pages: /insights (the list, with filters and a per-day strip), /insights/<sharedEventID>
(graph, statistics, attributions, Events tab), /settings (Insights types), /sql (read-only
queries). The JSON API under /api/ is listed in the README (\"Console and API\").

On a loopback address no token is needed, and only requests for localhost, 127.0.0.1 or [::1]
are answered. On any other address a token is required: every request must send
`Authorization: Bearer <token>`, or sign in once at /login (a cookie). Changes (saving
settings) must come from the console's own pages or carry the header.

The server reads the lake's latest committed version on each request: Insights written by an
`insights run` meanwhile show on reload. Stop it with Ctrl-C.

With --watch SOURCE, the server also follows a trail as `prism watch` does (the same --alert,
--interval, --settle-minutes and --metrics options; see `prism watch --help`), and alerts link
to this console when --public-url is given.";

#[derive(Args)]
pub struct ServeArgs {
    /// The lake (a folder or s3:// URL).
    #[arg(long)]
    lake: String,
    /// Address and port to listen on. Any address but loopback needs --token-file.
    #[arg(long, default_value = "127.0.0.1:8080")]
    listen: SocketAddr,
    /// A file holding the secret every request must carry (16 to 256 visible characters).
    #[arg(long, value_name = "FILE")]
    token_file: Option<String>,
    /// Longest a SQL-page or /api/sql query may run.
    #[arg(long, default_value = "30s", value_parser = super::args::parse_duration)]
    query_timeout: Duration,
    /// Most rows a SQL-page or /api/sql query returns (the rest is cut, and the answer says so).
    #[arg(long, default_value_t = 10_000)]
    max_rows: usize,
    /// Also follow this trail (a folder or s3:// URL) as `prism watch` does (repeatable).
    #[arg(long = "watch", value_name = "SOURCE")]
    watch: Vec<String>,
    #[command(flatten)]
    follow: super::watch::FollowArgs,
}

pub async fn run(args: ServeArgs) -> anyhow::Result<ExitCode> {
    let mut opts = ServeOptions::new(args.lake);
    opts.listen = args.listen;
    opts.token = args.token_file.as_deref().map(serve::read_token).transpose()?;
    opts.query_timeout = args.query_timeout;
    opts.max_rows = args.max_rows.max(1);
    if !args.watch.is_empty() {
        // A watching console creates its lake, as `prism watch` does.
        prism::Lake::open_or_create(&opts.lake, None).await?;
    }
    let listener = serve::bind(&opts).await?;
    let router = serve::app(opts.clone()).await?;
    let addr = listener.local_addr()?;
    // The first line is the address (tests and scripts read it when the port was 0).
    println!("Prism console on http://{addr}/ (lake {}){}", opts.lake, if opts.token.is_some() { ", token required" } else { "" });
    // One Ctrl-C stops both the server and the watch.
    let stop = super::shared_stop();
    let watching = if args.watch.is_empty() { None } else { Some(super::watch::start(args.watch, opts.lake.clone(), args.follow, stop.clone()).await?) };
    let server = serve::run(listener, router, super::stopped(stop));
    match watching {
        None => server.await?,
        // A watch that fails ends the console too, with its error, rather than leave a
        // console that sends no alerts.
        Some(mut watch) => tokio::select! {
            served = server => {
                served?;
                watch.await??;
            }
            watched = &mut watch => watched??,
        },
    }
    Ok(ExitCode::SUCCESS)
}
