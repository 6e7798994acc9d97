//! Kafka client settings shared by every component.

use std::time::Duration;

use rdkafka::ClientConfig;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext};
use rdkafka::error::KafkaError;
use rdkafka::types::RDKafkaErrorCode;

use crate::config::KafkaConfig;

/// A client config with the bootstrap servers and the configured extra properties.
pub fn client_config(config: &KafkaConfig) -> ClientConfig {
    let mut client = ClientConfig::new();
    client.set("bootstrap.servers", &config.brokers);
    for (key, value) in &config.client {
        client.set(key, value);
    }
    client
}

/// Creates `name` with `partitions` partitions unless it exists. Returns whether it was created.
pub async fn ensure_topic(
    config: &KafkaConfig,
    name: &str,
    partitions: i32,
) -> Result<bool, KafkaError> {
    let admin: AdminClient<DefaultClientContext> = client_config(config).create()?;
    let topic = NewTopic::new(
        name,
        partitions,
        TopicReplication::Fixed(config.replication_factor),
    );
    let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(30)));
    let results = admin.create_topics([&topic], &options).await?;
    match results.into_iter().next() {
        Some(Ok(_)) => Ok(true),
        Some(Err((_, RDKafkaErrorCode::TopicAlreadyExists))) => Ok(false),
        Some(Err((_, code))) => Err(KafkaError::AdminOp(code)),
        None => Ok(false),
    }
}

/// The partition ids of `topic` as the broker reports them (empty when it does not know the
/// topic). Blocking: call it from a blocking thread.
pub fn partition_ids<C, X>(
    consumer: &C,
    topic: &str,
    timeout: Duration,
) -> Result<Vec<i32>, KafkaError>
where
    C: Consumer<X>,
    X: ConsumerContext,
{
    let metadata = consumer.fetch_metadata(Some(topic), timeout)?;
    Ok(metadata
        .topics()
        .iter()
        .filter(|t| t.name() == topic && t.error().is_none())
        .flat_map(|t| t.partitions().iter().map(|p| p.id()))
        .collect())
}

/// How many partitions `name` has (0 when the broker does not know it). Blocking.
pub fn partition_count(config: &KafkaConfig, name: &str) -> Result<i32, KafkaError> {
    let consumer: BaseConsumer = client_config(config).create()?;
    Ok(partition_ids(&consumer, name, Duration::from_secs(10))?.len() as i32)
}

/// Deletes `name` (tests clean up with it).
pub async fn delete_topic(config: &KafkaConfig, name: &str) -> Result<(), KafkaError> {
    let admin: AdminClient<DefaultClientContext> = client_config(config).create()?;
    let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(30)));
    admin.delete_topics(&[name], &options).await?;
    Ok(())
}
