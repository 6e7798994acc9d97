//! Test harness for integration tests against the real stack that `ess stack up` runs:
//! its configuration, per-test topics and databases, polling with a deadline.
//!
//! # Layout
//!
//! - this file: the stack's configuration, [`Ephemeral`] topics and databases, [`eventually`],
//!   [`stop_merges`].
//! - [`http`]: a raw HTTP/1.1 connection for what well-behaved clients never do (half-sent
//!   heads, slow bodies, idling), and the request bytes the tests send on it.
//! - [`topic`]: reading a topic back from the beginning, and checking every acknowledged
//!   event is in it once.
//! - [`broker`]: a private in-memory broker, for tests that stop or freeze it.
//! - [`process`]: running a command that must succeed, signalling a process.

pub mod broker;
pub mod http;
pub mod process;
pub mod topic;

use std::future::Future;
use std::time::{Duration, Instant};

use ess_core::clickhouse::{Client, connect};
use ess_core::config::Config;
use ess_core::migrate::Migrated;

/// The configuration the running stack answers to (defaults, `ESS_CONFIG`, `ESS_*`).
pub fn stack_config() -> Config {
    match Config::load(None, &[]) {
        Ok(config) => config,
        Err(e) => panic!("test configuration: {e}"),
    }
}

/// A unique lowercase suffix for names.
pub fn unique(prefix: &str) -> String {
    format!(
        "{prefix}_{}",
        &uuid::Uuid::new_v4().simple().to_string()[..12]
    )
}

/// A topic, dead-letter topic, consumer group and ClickHouse database of the test's own,
/// migrated; removed by [`Ephemeral::cleanup`].
#[derive(Debug)]
pub struct Ephemeral {
    /// Configuration pointing at the test's own names.
    pub config: Config,
    /// What migration did (server version, schema).
    pub migrated: Migrated,
}

impl Ephemeral {
    /// Creates the names and runs `ess migrate` for them, with `partitions` topic partitions.
    pub async fn new(partitions: i32) -> Self {
        let mut config = stack_config();
        let name = unique("it");
        config.kafka.topic = format!("{name}.events");
        config.kafka.dlq_topic = format!("{name}.dlq");
        config.kafka.partitions = partitions;
        config.clickhouse.database = name.clone();
        config.sink.group_id = format!("{name}.sink");
        let migrated = ess_core::migrate::run(&config)
            .await
            .expect("migrate the test's database and topic");
        Self { config, migrated }
    }

    /// A client for the database on `url`, set up for the server's version.
    pub async fn client(&self, url: &str) -> Client {
        let (client, _) = connect(&self.config.clickhouse, url)
            .await
            .expect("connect to ClickHouse");
        client.with_database(&self.config.clickhouse.database)
    }

    /// Drops the database and the topics.
    pub async fn cleanup(self) {
        let ch = &self.config.clickhouse;
        if let Ok((client, _)) = connect(ch, &ch.url).await {
            let _ = client
                .query(&self.migrated.schema.drop_database())
                .execute()
                .await;
        }
        for topic in [&self.config.kafka.topic, &self.config.kafka.dlq_topic] {
            let _ = ess_core::kafka::delete_topic(&self.config.kafka, topic).await;
        }
    }
}

/// Polls `check` every 100 ms until it returns `Some` or `timeout` passes.
pub async fn eventually<T, F, Fut>(timeout: Duration, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A loopback port nothing listens on right now (the system picks it).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

/// Stops background merges of the test's replicated tables on every node, so a duplicate
/// stays a row of its own until the test counts it (the tables are ReplacingMergeTree).
pub async fn stop_merges(config: &Config) {
    for url in config.clickhouse.all_nodes() {
        let client = ess_core::clickhouse::client(&config.clickhouse, &url).with_validation(false);
        client
            .query(&format!(
                "SYSTEM STOP MERGES {}.{}",
                config.clickhouse.database,
                config.clickhouse.local_table()
            ))
            .execute()
            .await
            .expect("stop merges");
    }
}
