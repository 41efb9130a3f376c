//! `prism worker`: serve fragments of other processes' queries (the `distributed` feature).

use std::net::SocketAddr;
use std::process::ExitCode;

use clap::Args;

pub const HELP: &str = "\
Examples:
  prism worker --listen 0.0.0.0:7070                    # on each machine
  prism sql --lake s3://bucket/lake --workers http://w1:7070,http://w2:7070 -f report.sql

A worker executes parts of the queries of `prism sql`, the REPL, `prism schedule` and `prism
serve` when they are given --workers (or PRISM_WORKERS): scans of the lake's files split
between workers, partial aggregates, joins. It has every Prism SQL function and reads the lake
itself, so every machine must reach it: the same local path (a shared file system), or S3 with
credentials on each (the standard AWS environment variables or instance roles). It serves any
lake and keeps nothing between queries. It prints the address it listens on, then serves until
stopped (Ctrl-C). Traffic is plain gRPC, without authentication: listen on a private network.
Needs a build with `--features distributed` (docs/distributed.md).";

#[derive(Args)]
pub struct WorkerArgs {
    /// Address to listen on (port 0: any free port, printed at start).
    #[arg(long, default_value = "127.0.0.1:7070")]
    pub listen: SocketAddr,
}

#[cfg(feature = "distributed")]
pub async fn run(args: WorkerArgs) -> anyhow::Result<ExitCode> {
    use anyhow::Context;
    let listener = tokio::net::TcpListener::bind(args.listen).await.with_context(|| format!("cannot listen on {}", args.listen))?;
    let addr = listener.local_addr()?;
    println!("prism worker listening on http://{addr}");
    tokio::select! {
        served = prism::sql::distributed::serve_worker(listener) => served?,
        _ = tokio::signal::ctrl_c() => {}
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(not(feature = "distributed"))]
pub async fn run(_: WorkerArgs) -> anyhow::Result<ExitCode> {
    anyhow::bail!("{}", super::NOT_DISTRIBUTED)
}
