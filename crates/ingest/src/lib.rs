//! `ess ingest`: the HTTP API that puts events into Kafka.
//!
//! A 2xx means every event of the request is in Kafka: the handler hands the events to one
//! shared idempotent producer (`acks=all`) without blocking, then waits for the broker's
//! acknowledgement of each before it answers 202. Anything else is an error with a JSON body
//! and an explicit status; a 503 names the events that were not confirmed, and clients retry
//! them with the same ids (storage deduplicates by id). The API is documented in `docs/api.md`.
//!
//! # Layout
//! - [`server`]: binding, readiness, a shutdown that ends within `shutdown_timeout` ([`run`],
//!   [`serve`]).
//! - [`conn`]: connections: the cap, the head and idle timeouts, JSON bodies on the HTTP
//!   layer's answers to unreadable heads, closing them at shutdown.
//! - [`router`]: routes, handlers and the shared state ([`app`]).
//! - [`api`]: the response bodies and the error → status mapping.
//! - [`intake`]: taking in a body: size, byte budget, read timeout, decompression, shutdown.
//! - [`budget`]: the byte budget shared by all requests (`max_buffered_bytes`).
//! - [`client_event`]: the client's form of an event: reading and validating the events of a
//!   body (single, array, NDJSON), without copying their strings.
//! - [`context`]: the client's address (trusted-proxy rule, anonymisation) and user agent.
//! - [`body`]: media types, content encodings, capped decompression.
//! - [`auth`]: API keys (constant-time), their token buckets, and the tokens a declared event
//!   count (`X-Event-Count`) reserves from the headers.
//! - [`producer`]: the Kafka producer and the per-event verdicts.
//! - [`metrics`]: the Prometheus metrics.
//! - [`tracking`]: the Segment-compatible routes (`/v1/track`, `/v1/batch`, the browser SDK's
//!   `/v1/t`, …): key from Basic auth or the body, CORS, enrichment, the Segment responses.
//! - [`segment`]: reading Segment calls into events (the mapping in `docs/api.md`).
//! - [`cors`]: allowed origins, preflights, the browser-key rule.
//! - [`geoip`]: `context.location` from an `.mmdb`.

pub mod api;
pub mod auth;
pub mod body;
pub mod budget;
pub mod client_event;
pub mod conn;
pub mod context;
pub mod cors;
pub mod geoip;
pub mod intake;
pub mod metrics;
pub mod producer;
pub mod router;
pub mod segment;
pub mod server;
pub mod tracking;

use std::future::Future;

use ess_core::config::{Config, ConfigError};

pub use router::{AppState, app};
pub use server::serve;

/// Why the server could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The configuration cannot serve.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The listen address could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: String,
        /// What the OS said.
        source: std::io::Error,
    },
    /// The Kafka producer could not be created.
    #[error("cannot create the Kafka producer: {0}")]
    Producer(rdkafka::error::KafkaError),
    /// Serving failed.
    #[error("serving failed: {0}")]
    Serve(std::io::Error),
    /// Anything else.
    #[error("{0}")]
    Internal(String),
}

/// How long the server's own runtime waits for blocking calls once serving ended.
const RUNTIME_STOP: std::time::Duration = std::time::Duration::from_millis(100);

/// Binds `ingest.listen` and serves until `shutdown` resolves (what `ess ingest` runs).
///
/// With `ingest.workers` ≥ 1 the server runs on a runtime of its own (single-threaded for 1),
/// on its own threads; the caller's runtime only waits for the shutdown signal and the result.
pub async fn run(
    config: Config,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let workers = config.ingest.workers;
    if workers == 0 {
        server::run(config, shutdown).await?;
        return Ok(());
    }
    // A runtime of its own, on threads of its own; the caller's runtime only waits for it.
    let (done_tx, done_rx) = tokio::sync::oneshot::channel();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let thread = std::thread::Builder::new()
        .name("ess-ingest".into())
        .spawn(move || {
            let runtime = if workers == 1 {
                tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
            } else {
                tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(workers)
                    .thread_name("ess-ingest")
                    .enable_all()
                    .build()
            };
            let result = match runtime {
                Ok(runtime) => {
                    let result = runtime.block_on(server::run(config, async {
                        let _ = stop_rx.await;
                    }));
                    // Do not wait for a blocking call still running (a metadata request
                    // of the readiness probe): shutdown has its deadline.
                    runtime.shutdown_timeout(RUNTIME_STOP);
                    result
                }
                Err(e) => Err(Error::Internal(format!(
                    "cannot start the ingest runtime: {e}"
                ))),
            };
            let _ = done_tx.send(result);
        })?;
    let mut done = std::pin::pin!(done_rx);
    tokio::select! {
        result = &mut done => return finish(thread, result),
        () = shutdown => {}
    }
    let _ = stop_tx.send(());
    finish(thread, done.await)
}

fn finish(
    thread: std::thread::JoinHandle<()>,
    result: Result<Result<(), Error>, tokio::sync::oneshot::error::RecvError>,
) -> anyhow::Result<()> {
    let _ = thread.join();
    match result {
        Ok(result) => Ok(result?),
        Err(_) => anyhow::bail!("the ingest runtime stopped unexpectedly"),
    }
}
