//! Prism's SQL across machines (the `distributed` feature), with datafusion-distributed: a
//! session given workers plans as usual, then ships plan fragments (file scans split by file,
//! partial aggregates, shuffles) to `prism worker` processes over Arrow Flight and gathers
//! their results.
//!
//! A worker needs what a fragment may name: Prism's UDFs and the JSON functions (the same
//! functions as every session: [`super::base_session`]), and the lake's object stores, which it
//! opens itself from the table URL in each scan ([`super::LakeStores`]), with its own
//! credentials. A worker holds no lake: one serves any lake its machine can read.

use std::net::SocketAddr;

use datafusion::error::DataFusionError;
use datafusion::execution::SessionStateBuilder;
use datafusion_distributed::{DistributedExt, SessionStateBuilderExt, Worker, WorkerQueryContext, WorkerResolver};
use url::Url;

use super::SqlError;

/// The workers of a coordinating session: a fixed list.
#[derive(Debug, Clone)]
struct Workers(Vec<Url>);

impl WorkerResolver for Workers {
    fn get_urls(&self) -> Result<Vec<Url>, DataFusionError> {
        Ok(self.0.clone())
    }
}

/// `builder` as a coordinating session: queries it plans run on `workers`.
pub(super) fn coordinate(builder: SessionStateBuilder, workers: &[Url]) -> SessionStateBuilder {
    builder.with_distributed_planner().with_distributed_worker_resolver(Workers(workers.to_vec()))
}

/// Parses `--workers`: comma-separated `http://host:port` URLs.
pub fn parse_workers(list: &str) -> Result<Vec<Url>, String> {
    let mut out = Vec::new();
    for item in list.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        let with_scheme = if item.contains("://") { item.to_owned() } else { format!("http://{item}") };
        let url = Url::parse(&with_scheme).map_err(|e| format!("`{item}` is not a worker address ({e}); give http://host:port"))?;
        if url.scheme() != "http" || url.host_str().is_none() || url.port().is_none() {
            return Err(format!("`{item}` is not a worker address; give http://host:port, as `prism worker --listen` prints it"));
        }
        out.push(url);
    }
    if out.is_empty() {
        return Err("no worker given".into());
    }
    Ok(out)
}

/// Serves plan fragments on `listener` until the process ends.
pub async fn serve_worker(listener: tokio::net::TcpListener) -> Result<(), SqlError> {
    let worker = Worker::from_session_builder(|ctx: WorkerQueryContext| async move {
        // The coordinator's settings come with the fragment (in `ctx.builder`); the
        // functions are the ones every Prism session has.
        let functions = super::base_session(None).map_err(|e| DataFusionError::External(Box::new(e)))?.state();
        Ok(ctx
            .builder
            .with_scalar_functions(functions.scalar_functions().values().cloned().collect())
            .with_aggregate_functions(functions.aggregate_functions().values().cloned().collect())
            .with_window_functions(functions.window_functions().values().cloned().collect())
            .build())
    })
    .with_runtime_env(super::runtime()?);
    tonic::transport::Server::builder()
        .add_service(worker.into_worker_server())
        .serve_with_incoming(tonic::transport::server::TcpIncoming::from(listener))
        .await
        .map_err(|e| SqlError::Usage(format!("the worker stopped: {e}")))
}

/// Starts a worker on `addr` (port 0: any free port) in this process's runtime; returns the
/// address it listens on. For tests and benchmarks: 127.0.0.1:0 gives a loopback cluster.
pub async fn spawn_worker(addr: SocketAddr) -> Result<SocketAddr, SqlError> {
    let listener = tokio::net::TcpListener::bind(addr).await.map_err(|source| SqlError::Read { what: format!("the worker address {addr}"), source })?;
    let local = listener.local_addr().map_err(|source| SqlError::Read { what: format!("the worker address {addr}"), source })?;
    tokio::spawn(async move {
        if let Err(e) = serve_worker(listener).await {
            tracing::error!(error = %e, "worker on {local} stopped");
        }
    });
    Ok(local)
}
