//! ess sink: Kafka → ClickHouse, exactly once in the stored rows.
//!
//! A consumer-group member that reads `WireEvent` JSON, encodes RowBinary rows as it reads,
//! cuts batches by rows, bytes and age, inserts them (each shard's rows straight into its
//! replicated table, or through the Distributed table with `insert_distributed_sync=1`:
//! `sink.write_path`) and commits a partition's offset only after ClickHouse
//! acknowledged every batch up to it. Exactly-once comes from reconciliation on assignment
//! (offsets past the committed one that ClickHouse already holds are skipped) and from retries
//! that resend identical blocks, which replicated block deduplication drops; see
//! `docs/design.md`.
//!
//! # Layout
//! - [`consumer`]: the poll loop thread: batching, backpressure (pause/resume), commits,
//!   rebalance callbacks.
//! - [`batch`]: the batch builder (rows, bytes, age) and the sealed [`batch::Batch`].
//! - [`encode`]: RowBinary rows straight from borrowed events.
//! - [`writer`]: insert tasks: retries with backoff and jitter, splitting refused data,
//!   dead letters.
//! - [`shard`]: for direct writes, the Distributed table's row → shard mapping and which
//!   node holds which shard.
//! - [`classify`]: retry / don't-retry for ClickHouse errors.
//! - [`offsets`]: which offsets may be committed.
//! - [`reconcile`]: on assignment, which offsets are already stored.
//! - [`server`]: `/metrics`, `/healthz`, `/readyz`.

pub mod batch;
pub mod classify;
pub mod consumer;
pub mod encode;
pub mod offsets;
pub mod reconcile;
pub mod server;
pub mod shard;
pub mod writer;

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use anyhow::Context as _;
use ess_core::config::{Config, WritePath};
use rdkafka::producer::FutureProducer;

use crate::batch::Limits;
use crate::consumer::LoopConfig;
use crate::reconcile::Reconciler;
use crate::server::Health;
use crate::shard::{Layout, LayoutError};
use crate::writer::{Route, Target, Writer};

/// Why the sink could not start.
#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    /// The `/metrics` address could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        /// The address.
        addr: String,
        /// The OS error.
        source: std::io::Error,
    },
    /// A Kafka client could not be created.
    #[error("kafka client: {0}")]
    Kafka(#[from] rdkafka::error::KafkaError),
    /// The shards could not be mapped for `sink.write_path = "shards"`.
    #[error("mapping the ClickHouse shards: {0}")]
    Layout(#[from] LayoutError),
}

fn insert_sql(ch: &ess_core::config::ClickHouseConfig, table: &str) -> String {
    format!(
        "INSERT INTO {}.{table} ({}) FORMAT RowBinary",
        ch.database,
        encode::COLUMNS
    )
}

/// The consumer's librdkafka settings.
pub fn consumer_config(config: &Config) -> rdkafka::ClientConfig {
    let sink = &config.sink;
    let mut c = ess_core::kafka::client_config(&config.kafka);
    c.set("group.id", &sink.group_id)
        .set("client.id", format!("ess-sink-{}", std::process::id()))
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", "earliest")
        .set("session.timeout.ms", sink.session_timeout_ms.to_string())
        .set(
            "heartbeat.interval.ms",
            sink.heartbeat_interval_ms.to_string(),
        )
        // Many small fetches cost the broker more than the data they carry: with
        // `fetch.min.bytes` 1 the local broker answered each with a few events and its CPU,
        // not the sink, capped the whole pipeline (bench/results/sink.md).
        .set("fetch.min.bytes", sink.fetch_min_bytes.to_string())
        .set("fetch.wait.max.ms", sink.fetch_wait_max_ms.to_string())
        // When a partition's prefetch queue is full librdkafka postpones its next fetch by
        // this much (default 1 s). The poll loop empties a full queue in a few milliseconds,
        // so the default left partitions idle most of the time: a pre-filled topic drained at
        // ~150k rows/s with it, ~320k rows/s with 10 ms (bench/results/sink.md).
        .set("fetch.queue.backoff.ms", "10")
        .set("statistics.interval.ms", "1000");
    // Extra properties from `[kafka.client]` win over ours.
    for (key, value) in &config.kafka.client {
        c.set(key, value);
    }
    c
}

/// Consumes until `shutdown` resolves, then stores and commits what is in flight, leaves the
/// group and returns.
pub async fn run(
    config: Config,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    start(config, shutdown).await?.wait().await
}

/// A started sink.
#[derive(Debug)]
pub struct Running {
    /// Liveness, readiness and rebalance counts.
    pub health: Arc<Health>,
    /// Where `/metrics`, `/healthz` and `/readyz` listen, if anywhere.
    pub addr: Option<std::net::SocketAddr>,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
}

impl Running {
    /// Waits until the sink has stopped (after `shutdown` resolved).
    pub async fn wait(self) -> anyhow::Result<()> {
        self.task.await.context("sink task")?
    }
}

/// Starts the sink: binds the health endpoint, then consumes in the background until
/// `shutdown` resolves.
pub async fn start(
    config: Config,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<Running> {
    server::prometheus();
    let ch = &config.clickhouse;
    // Validation off: this sink sends plain RowBinary it encodes itself and reads tuples of
    // integers, which every server version understands (18.16 lacks what validation uses).
    let clients: Vec<(String, clickhouse::Client)> = ch
        .all_nodes()
        .into_iter()
        .map(|url| {
            let client = ess_core::clickhouse::client(ch, &url)
                .with_validation(false)
                .with_database(&ch.database);
            (url, client)
        })
        .collect();
    match ess_core::clickhouse::server_version(&clients[0].1, &clients[0].0).await {
        Ok(v) => tracing::info!(version = %v.text, "ClickHouse"),
        Err(e) => tracing::warn!("ClickHouse does not answer yet (inserts will retry): {e}"),
    }
    let target = match config.sink.write_path {
        WritePath::Distributed => Target {
            route: Route::Distributed(
                clients
                    .iter()
                    .map(|(url, c)| {
                        let c = c
                            .clone()
                            .with_setting("insert_distributed_sync", "1")
                            .with_setting("insert_deduplicate", "1");
                        (url.clone(), c)
                    })
                    .collect(),
            ),
            sql: insert_sql(ch, &ch.table),
        },
        WritePath::Shards => {
            let nodes: Vec<_> = clients
                .iter()
                .map(|(url, c)| {
                    (
                        url.clone(),
                        c.clone().with_setting("insert_deduplicate", "1"),
                    )
                })
                .collect();
            let layout = Layout::discover(
                &nodes,
                &ch.cluster,
                (&ch.database, &ch.table),
                config.sink.reconcile_wait,
            )
            .await
            .map_err(SinkError::Layout)?;
            tracing::info!(
                shards = layout.replicas.len(),
                replicas = ?layout.replicas.iter().map(|r| r.iter().map(|(u, _)| u.as_str()).collect::<Vec<_>>()).collect::<Vec<_>>(),
                "writing straight to each shard's replicated table"
            );
            Target {
                route: Route::Shards(layout),
                sql: insert_sql(ch, &ch.local_table()),
            }
        }
    };
    let reconciler = Reconciler {
        nodes: clients,
        local_table: format!("{}.{}", ch.database, ch.local_table()),
        topic: config.kafka.topic.clone(),
        wait: config.sink.reconcile_wait,
    };
    let producer: FutureProducer = ess_core::kafka::client_config(&config.kafka)
        .set("acks", "all")
        .set("linger.ms", "5")
        .create()
        .map_err(SinkError::Kafka)?;
    let generation = Arc::new(AtomicU64::new(1));
    let writer = Arc::new(Writer::new(
        target,
        producer,
        config.kafka.topic.clone(),
        config.kafka.dlq_topic.clone(),
        config.sink.retry_initial_backoff,
        config.sink.retry_max_backoff,
        generation.clone(),
    ));

    let health = Arc::new(Health::default());
    health.beat();
    let (stop_server, server_stopped) = tokio::sync::oneshot::channel::<()>();
    let mut addr = None;
    let server = if config.sink.listen.is_empty() {
        None
    } else {
        let listener = tokio::net::TcpListener::bind(&config.sink.listen)
            .await
            .map_err(|source| SinkError::Listen {
                addr: config.sink.listen.clone(),
                source,
            })?;
        let bound = listener.local_addr().context("listen address")?;
        tracing::info!(addr = %bound, "sink metrics and health listening");
        addr = Some(bound);
        let app = server::app(health.clone());
        Some(tokio::spawn(async move {
            let _ = axum::serve(listener, app)
                .with_graceful_shutdown(async {
                    let _ = server_stopped.await;
                })
                .await;
        }))
    };

    let task_health = health.clone();
    let task = tokio::spawn(async move {
        let result = consume(
            config,
            shutdown,
            writer,
            generation,
            reconciler,
            task_health,
        )
        .await;
        let _ = stop_server.send(());
        if let Some(server) = server {
            let _ = server.await;
        }
        result
    });
    Ok(Running { health, addr, task })
}

async fn consume(
    config: Config,
    shutdown: impl Future<Output = ()> + Send + 'static,
    writer: Arc<Writer>,
    generation: Arc<AtomicU64>,
    reconciler: Reconciler,
    health: Arc<Health>,
) -> anyhow::Result<()> {
    let sharding = writer.sharding();
    let (batch_tx, batch_rx) = tokio::sync::mpsc::channel(config.sink.queue_batches);
    let (ack_tx, ack_rx) = std::sync::mpsc::channel();
    let dispatcher = tokio::spawn(writer::dispatch(
        writer,
        batch_rx,
        ack_tx,
        config.sink.inflight_inserts,
    ));

    let stop = Arc::new(AtomicBool::new(false));
    let stopper = {
        let stop = stop.clone();
        tokio::spawn(async move {
            shutdown.await;
            stop.store(true, Ordering::SeqCst);
        })
    };
    let loop_config = LoopConfig {
        topic: config.kafka.topic.clone(),
        limits: Limits {
            rows: config.sink.batch_rows,
            bytes: config.sink.batch_bytes,
            max_wait: config.sink.batch_max_wait,
        },
        sharding,
        revoke_timeout: config.sink.revoke_timeout,
        shutdown_timeout: config.sink.shutdown_timeout,
    };
    let consumer_config = consumer_config(&config);
    let runtime = tokio::runtime::Handle::current();
    let poll_health = health.clone();
    let polled = tokio::task::spawn_blocking(move || {
        consumer::poll_loop(
            consumer_config,
            loop_config,
            batch_tx,
            ack_rx,
            generation,
            reconciler,
            runtime,
            poll_health,
            stop,
        )
    })
    .await;
    stopper.abort();
    let _ = dispatcher.await;
    polled.context("poll loop panicked")?
}
