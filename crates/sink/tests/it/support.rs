//! Producing events, running in-process sinks, counting what ClickHouse stores.

use std::time::Duration;

use ess_core::config::Config;
use ess_core::event::{Millis, WireEvent};
use rdkafka::producer::{FutureProducer, FutureRecord};
use serde_json::value::RawValue;
use tokio::sync::oneshot;

/// Sink logs on stderr (`RUST_LOG`, default warn), shown with `--nocapture`.
pub fn init_logs() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_test_writer()
        .try_init();
}

/// Settings for fast group joins and small batches.
pub fn test_config(mut config: Config) -> Config {
    config.sink.session_timeout_ms = 2000;
    config.sink.heartbeat_interval_ms = 500;
    config.sink.listen = "127.0.0.1:0".into();
    config.sink.batch_rows = 2_000;
    config.sink.batch_max_wait = Duration::from_millis(100);
    config.sink.revoke_timeout = Duration::from_secs(10);
    config.sink.retry_max_backoff = Duration::from_secs(2);
    config
}

pub fn producer(config: &Config) -> FutureProducer {
    ess_core::kafka::client_config(&config.kafka)
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("linger.ms", "5")
        .set("compression.type", "lz4")
        .create()
        .expect("producer")
}

/// An event with a unicode property; `n` makes its properties unique.
pub fn event_json(n: u64) -> (uuid::Uuid, Vec<u8>) {
    let id = uuid::Uuid::now_v7();
    let props = RawValue::from_string(format!(
        r#"{{"n":{n},"text":"héllo wörld ✓ 日本 🚀","q":"\"x\""}}"#
    ))
    .expect("json");
    let now = Millis::now();
    let event = WireEvent {
        id,
        kind: "page_view".into(),
        source: "it".into(),
        timestamp: Millis(now.0 - 1234),
        ingest_time: now,
        properties: &props,
        ..WireEvent::default()
    };
    (id, event.to_json())
}

/// Produces `n` events (keys are their ids) and waits for every acknowledgement.
pub async fn produce(config: &Config, producer: &FutureProducer, n: u64, start: u64) {
    use futures::StreamExt as _;
    let topic = &config.kafka.topic;
    futures::stream::iter(start..start + n)
        .map(|i| async move {
            let (id, json) = event_json(i);
            let key = id.to_string();
            producer
                .send(
                    FutureRecord::to(topic).key(&key).payload(&json),
                    Duration::from_secs(30),
                )
                .await
                .map(|_| ())
                .map_err(|(e, _)| e)
        })
        .buffer_unordered(2_000)
        .for_each(|r| async move { r.expect("produced") })
        .await;
}

/// Produces one raw message to `partition`.
pub async fn produce_raw(
    config: &Config,
    producer: &FutureProducer,
    partition: i32,
    key: &str,
    payload: &[u8],
) {
    producer
        .send(
            FutureRecord::to(&config.kafka.topic)
                .partition(partition)
                .key(key)
                .payload(payload),
            Duration::from_secs(30),
        )
        .await
        .expect("produced");
}

/// A sink running in this process.
pub struct InProcess {
    stop: Option<oneshot::Sender<()>>,
    running: ess_sink::Running,
}

impl InProcess {
    pub async fn start(config: &Config) -> Self {
        let (stop, stopped) = oneshot::channel::<()>();
        let running = ess_sink::start(config.clone(), async {
            let _ = stopped.await;
        })
        .await
        .expect("sink starts");
        Self {
            stop: Some(stop),
            running,
        }
    }

    pub fn health(&self) -> &ess_sink::server::Health {
        &self.running.health
    }

    /// Graceful stop; returns what `run` returned.
    pub async fn stop(mut self) -> anyhow::Result<()> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        tokio::time::timeout(Duration::from_secs(60), self.running.wait())
            .await
            .expect("sink stops within 60 s")
    }
}

/// `(count(), uniqExact(id))` on the table users query.
pub async fn counts(config: &Config) -> (u64, u64) {
    counts_on(config, &config.clickhouse.url).await
}

pub async fn counts_on(config: &Config, url: &str) -> (u64, u64) {
    try_counts_on(config, url).await.expect("count")
}

pub async fn try_counts_on(config: &Config, url: &str) -> Option<(u64, u64)> {
    let client = ess_core::clickhouse::client(&config.clickhouse, url)
        .with_validation(false)
        .with_database(&config.clickhouse.database);
    client
        .query(&format!(
            "SELECT count(), uniqExact(id) FROM {}",
            config.clickhouse.table
        ))
        .fetch_one::<(u64, u64)>()
        .await
        .ok()
}

/// Waits until the table holds at least `n` rows; returns `(count, uniqExact)`.
pub async fn wait_for_rows(config: &Config, n: u64, timeout: Duration) -> (u64, u64) {
    ess_testkit::eventually(timeout, &format!("{n} rows"), || async {
        let c = try_counts_on(config, &config.clickhouse.url).await?;
        (c.0 >= n).then_some(c)
    })
    .await
}

/// Committed offsets of the group, summed over partitions (the number of messages a new
/// member would skip).
pub fn committed_total(config: &Config, partitions: i32) -> i64 {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    let consumer: BaseConsumer = ess_core::kafka::client_config(&config.kafka)
        .set("group.id", &config.sink.group_id)
        .create()
        .expect("consumer");
    let mut tpl = rdkafka::TopicPartitionList::new();
    for p in 0..partitions {
        tpl.add_partition(&config.kafka.topic, p);
    }
    let committed = consumer
        .committed_offsets(tpl, Duration::from_secs(10))
        .expect("committed offsets");
    committed
        .elements()
        .iter()
        .map(|e| match e.offset() {
            rdkafka::Offset::Offset(o) => o,
            _ => 0,
        })
        .sum()
}
