//! `ess migrate`: the topics, the database and the tables, idempotently.

use crate::clickhouse::{ClickHouseError, ServerVersion, connect};
use crate::config::Config;
use crate::kafka::ensure_topic;
use crate::schema::Schema;

/// Why migration failed.
#[derive(Debug, thiserror::Error)]
pub enum MigrateError {
    /// ClickHouse could not be reached or refused a statement.
    #[error(transparent)]
    ClickHouse(#[from] ClickHouseError),
    /// A DDL statement failed.
    #[error("ClickHouse refused `{statement}`: {source}")]
    Ddl {
        /// The statement.
        statement: String,
        /// The error.
        source: ::clickhouse::error::Error,
    },
    /// The broker refused to create a topic.
    #[error("cannot create topic {topic}: {source}")]
    Topic {
        /// The topic.
        topic: String,
        /// The error.
        source: rdkafka::error::KafkaError,
    },
}

/// What migration did.
#[derive(Debug, Clone)]
pub struct Migrated {
    /// The ClickHouse version it spoke to.
    pub version: ServerVersion,
    /// The schema it applied.
    pub schema: Schema,
    /// Topics it created (empty when all existed).
    pub created_topics: Vec<String>,
}

/// Creates the events and dead-letter topics and the ClickHouse tables unless they exist.
pub async fn run(config: &Config) -> Result<Migrated, MigrateError> {
    let mut created_topics = Vec::new();
    for (topic, partitions) in [
        (&config.kafka.topic, config.kafka.partitions),
        (&config.kafka.dlq_topic, 1),
    ] {
        let created = ensure_topic(&config.kafka, topic, partitions)
            .await
            .map_err(|source| MigrateError::Topic {
                topic: topic.clone(),
                source,
            })?;
        if created {
            created_topics.push(topic.clone());
        }
    }
    let ch = &config.clickhouse;
    let (client, version) = connect(ch, &ch.url).await?;
    let schema = Schema::new(ch, version.flavor());
    for statement in schema.ddl() {
        client
            .query(&statement)
            .execute()
            .await
            .map_err(|source| MigrateError::Ddl {
                statement: statement.clone(),
                source,
            })?;
    }
    Ok(Migrated {
        version,
        schema,
        created_topics,
    })
}
