//! `ess ingest`: the HTTP API that puts events into Kafka.
//!
//! A 2xx means every event of the request is in Kafka: the handler hands the events to one
//! shared idempotent producer (`acks=all`) without blocking, then waits for the broker's
//! acknowledgement of each before it answers 202. Anything else is an error with a JSON body
//! and an explicit status; a 503 names the events that were not confirmed, and clients retry
//! them with the same ids (storage deduplicates by id). The API is documented in `docs/api.md`.
//!
//! # Layout
//! - [`server`]: binding, readiness, graceful shutdown ([`run`], [`serve`]).
//! - [`router`]: routes, handlers and the shared state ([`app`]).
//! - [`api`]: the response bodies and the error → status mapping.
//! - [`event`]: reading and validating events from a body (single, array, NDJSON).
//! - [`body`]: media types, content encodings, capped decompression.
//! - [`auth`]: API keys (constant-time) and their token buckets.
//! - [`producer`]: the Kafka producer and the per-event verdicts.
//! - [`metrics`]: the Prometheus metrics.

pub mod api;
pub mod auth;
pub mod body;
pub mod event;
pub mod metrics;
pub mod producer;
pub mod router;
pub mod server;

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

/// Binds `ingest.listen` and serves until `shutdown` resolves (what `ess ingest` runs).
pub async fn run(
    config: Config,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    server::run(config, shutdown).await?;
    Ok(())
}
