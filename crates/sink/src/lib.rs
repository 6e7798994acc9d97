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
//! - [`encode`]: RowBinary rows straight from borrowed events, and the insert settings a
//!   `JSON` `properties` column needs.
//! - [`writer`]: insert tasks: retries with backoff and jitter, failover to another replica,
//!   splitting by month and refused data, dead letters.
//! - [`nodes`]: the nodes inserts go to, which are suspect, probing them back.
//! - [`lease`]: whether the process may still write for its partitions (a pause past the
//!   session timeout says no).
//! - [`query_id`]: the query ids naming an insert's topic and partitions.
//! - [`shard`]: for direct writes, the Distributed table's row → shard mapping and which
//!   node holds which shard.
//! - [`classify`]: retry / don't-retry for ClickHouse errors.
//! - [`offsets`]: which offsets may be committed.
//! - [`reconcile`]: on assignment, which offsets are already stored.
//! - [`monitoring`]: the monitoring endpoints `/metrics`, `/healthz`, `/readyz`, and the
//!   [`monitoring::Health`] the poll loop writes for them.

pub mod batch;
pub mod classify;
pub mod consumer;
pub mod encode;
pub mod lease;
pub mod monitoring;
pub mod nodes;
pub mod offsets;
pub mod query_id;
pub mod reconcile;
pub mod shard;
pub mod writer;

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use anyhow::Context as _;
use ess_core::config::{Config, WritePath};
use rdkafka::producer::FutureProducer;

use crate::batch::BatchLimits;
use crate::consumer::{Links, LoopConfig};
use crate::lease::Lease;
use crate::monitoring::Health;
use crate::nodes::Nodes;
use crate::reconcile::Reconciler;
use crate::shard::{Layout, LayoutError, Sharding};
use crate::writer::{Target, Writer, WriterParts};

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

/// Refuses to start when the table's `properties` column has the other type than
/// `clickhouse.properties`: every insert would fail (and every row be dead-lettered). A table
/// that cannot be read now is only logged.
async fn check_properties_column(
    client: &clickhouse::Client,
    ch: &ess_core::config::ClickHouseConfig,
) -> anyhow::Result<()> {
    let check = ess_core::migrate::check_properties_column(client, ch);
    match tokio::time::timeout(ch.timeout, check).await {
        Ok(Err(e @ ess_core::migrate::MigrateError::Refused(_))) => return Err(e.into()),
        Ok(Err(e)) => tracing::warn!("cannot read the table's columns: {e}"),
        Err(_) => tracing::warn!("the table's columns were not read within {:?}", ch.timeout),
        Ok(Ok(())) => {}
    }
    Ok(())
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
    monitoring::prometheus();
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
    let version = ess_core::clickhouse::server_version(&clients[0].1, &clients[0].0);
    match tokio::time::timeout(ch.timeout, version).await {
        Ok(Ok(v)) => {
            tracing::info!(version = %v.text, "ClickHouse");
            check_properties_column(&clients[0].1, ch).await?;
        }
        Ok(Err(e)) => tracing::warn!("ClickHouse does not answer yet (inserts will retry): {e}"),
        Err(_) => tracing::warn!(
            "ClickHouse does not answer within {:?} (inserts will retry)",
            ch.timeout
        ),
    }
    // Dropping `stop_watch` (when the sink stops) ends the node watch.
    let (stop_watch, watch_stopped) = tokio::sync::oneshot::channel::<()>();
    let (target, sharding) = target(&config, &clients, async {
        let _ = watch_stopped.await;
    })
    .await?;
    let reconciler = Reconciler {
        nodes: clients,
        local_table: format!("{}.{}", ch.database, ch.local_table()),
        topic: config.kafka.topic.clone(),
        wait: config.sink.reconcile_wait,
        timeout: ch.timeout,
    };
    let producer: FutureProducer = ess_core::kafka::client_config(&config.kafka)
        .set("acks", "all")
        .set("linger.ms", "5")
        .create()
        .map_err(SinkError::Kafka)?;
    let generation = Arc::new(AtomicU64::new(1));
    let lease = Lease::new(
        Lease::stall_for(
            config.sink.session_timeout_ms,
            config.sink.heartbeat_interval_ms,
        ),
        generation.clone(),
    );
    let writer = Arc::new(Writer::new(WriterParts {
        target,
        producer,
        topic: config.kafka.topic.clone(),
        dlq_topic: config.kafka.dlq_topic.clone(),
        initial_backoff: config.sink.retry_initial_backoff,
        max_backoff: config.sink.retry_max_backoff,
        generation: generation.clone(),
        lease: lease.clone(),
        sharding,
        max_months: config.sink.max_partitions_per_insert,
    }));

    let health = Arc::new(Health::default());
    health.beat();
    let (addr, server) = serve(&config, &health).await?;
    let task_health = health.clone();
    let task = tokio::spawn(async move {
        let watch = lease.watch().context("lease thread")?;
        let shared = Shared {
            generation,
            lease: lease.clone(),
            reconciler,
            health: task_health,
        };
        let result = consume(config, shutdown, writer, shared).await;
        lease.stop();
        let _ = watch.join();
        drop(stop_watch);
        if let Some((stop_server, server)) = server {
            let _ = stop_server.send(());
            let _ = server.await;
        }
        result
    });
    Ok(Running { health, addr, task })
}

type Server = (
    tokio::sync::oneshot::Sender<()>,
    tokio::task::JoinHandle<()>,
);

/// Binds and serves `/metrics`, `/healthz` and `/readyz` (unless `sink.listen` is empty).
async fn serve(
    config: &Config,
    health: &Arc<Health>,
) -> anyhow::Result<(Option<std::net::SocketAddr>, Option<Server>)> {
    if config.sink.listen.is_empty() {
        return Ok((None, None));
    }
    let listener = tokio::net::TcpListener::bind(&config.sink.listen)
        .await
        .map_err(|source| SinkError::Listen {
            addr: config.sink.listen.clone(),
            source,
        })?;
    let bound = listener.local_addr().context("listen address")?;
    tracing::info!(addr = %bound, "sink metrics and health listening");
    let app = monitoring::app(health.clone());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(async move {
        let _ = axum::serve(listener, app)
            .with_graceful_shutdown(async {
                let _ = stopped.await;
            })
            .await;
    });
    Ok((Some(bound), Some((stop, task))))
}

/// Where inserts go: the nodes with their shards (direct writes) or all of them (the
/// Distributed table), with the insert settings; and the row → shard mapping for direct
/// writes. Starts the task that probes suspect nodes and maps late ones.
async fn target(
    config: &Config,
    clients: &[(String, clickhouse::Client)],
    stop: impl Future<Output = ()> + Send + 'static,
) -> Result<(Target, Option<Sharding>), SinkError> {
    let ch = &config.clickhouse;
    let insert_client = |c: &clickhouse::Client| {
        let mut c = c.clone().with_setting("insert_deduplicate", "1");
        for (name, value) in encode::insert_settings(ch.properties) {
            c = c.with_setting(*name, *value);
        }
        if config.sink.insert_quorum > 0 {
            c = c
                .with_setting("insert_quorum", config.sink.insert_quorum.to_string())
                .with_setting("insert_quorum_timeout", ch.timeout.as_millis().to_string());
        }
        c
    };
    let (nodes, direct, sharding, sql) = match config.sink.write_path {
        WritePath::Distributed => {
            let nodes = clients.iter().map(|(url, c)| {
                let c = insert_client(c).with_setting("insert_distributed_sync", "1");
                (url.clone(), c, Some(0))
            });
            (Nodes::new(nodes), false, None, insert_sql(ch, &ch.table))
        }
        WritePath::Shards => {
            let layout = Layout::discover(
                clients,
                &ch.cluster,
                (&ch.database, &ch.table),
                (config.sink.reconcile_wait, ch.timeout),
            )
            .await?;
            tracing::info!(
                shards = layout.replicas.len(),
                replicas = ?layout.replicas.iter().map(|r| r.iter().map(|(u, _)| u.as_str()).collect::<Vec<_>>()).collect::<Vec<_>>(),
                "writing straight to each shard's replicated table"
            );
            let shard_of = |url: &str| {
                layout
                    .replicas
                    .iter()
                    .position(|r| r.iter().any(|(u, _)| u == url))
            };
            let nodes = clients
                .iter()
                .map(|(url, c)| (url.clone(), insert_client(c), shard_of(url)));
            let sql = insert_sql(ch, &ch.local_table());
            (Nodes::new(nodes), true, Some(layout.sharding), sql)
        }
    };
    let nodes = Arc::new(nodes);
    let cluster = ch.cluster.clone();
    let probe_timeout = ch.timeout.min(std::time::Duration::from_secs(5));
    tokio::spawn(nodes.clone().watch(
        probe_timeout,
        move |client, url| {
            let cluster = cluster.clone();
            async move { shard::local_shard(&client, &url, &cluster).await.ok() }
        },
        stop,
    ));
    let target = Target {
        nodes,
        direct,
        sql,
        timeout: ch.timeout,
    };
    Ok((target, sharding))
}

/// What the poll loop shares with the rest of the sink, besides the writer.
struct Shared {
    generation: Arc<AtomicU64>,
    lease: Arc<Lease>,
    reconciler: Reconciler,
    health: Arc<Health>,
}

/// Runs the writer's dispatcher and the poll loop until `shutdown`, then lets both finish.
async fn consume(
    config: Config,
    shutdown: impl Future<Output = ()> + Send + 'static,
    writer: Arc<Writer>,
    shared: Shared,
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
        consumer: consumer_config(&config),
        topic: config.kafka.topic.clone(),
        limits: BatchLimits {
            rows: config.sink.batch_rows,
            bytes: config.sink.batch_bytes,
            max_wait: config.sink.batch_max_wait,
        },
        sharding,
        revoke_timeout: config.sink.revoke_timeout,
        shutdown_timeout: config.sink.shutdown_timeout,
    };
    let links = Links {
        batches: batch_tx,
        acks: ack_rx,
        generation: shared.generation,
        lease: shared.lease,
        reconciler: shared.reconciler,
        runtime: tokio::runtime::Handle::current(),
        health: shared.health,
        stop,
    };
    let polled = tokio::task::spawn_blocking(move || consumer::poll_loop(loop_config, links)).await;
    stopper.abort();
    // The poll loop returns once every batch is stored or `shutdown_timeout` has passed. An
    // insert still running then is abandoned (the next owner's fence and reconciliation cover
    // it): waiting for it would hold the exit for up to `clickhouse.timeout` per replica.
    dispatcher.abort();
    let _ = dispatcher.await;
    polled.context("poll loop panicked")?
}
