//! `[sink]`: the Kafka → ClickHouse consumer.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::{ConfigError, value_error};

/// Where the sink's inserts go.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum WritePath {
    /// Each row straight to its shard's replicated table (`clickhouse.table` + `_local`) on a
    /// replica of that shard, chosen with the Distributed table's own sharding function.
    #[default]
    Shards,
    /// Through the Distributed table with `insert_distributed_sync=1`.
    Distributed,
}

/// The sink.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SinkConfig {
    /// Consumer group id.
    pub group_id: String,
    /// Address of the sink's `/metrics`, `/healthz` and `/readyz`; port 0 picks a free port
    /// (the bound address is logged). Empty turns the endpoint off.
    pub listen: String,
    /// A batch is written when it holds this many rows…
    pub batch_rows: usize,
    /// …or this many bytes of encoded rows…
    pub batch_bytes: usize,
    /// …or when its first row has waited this long.
    #[serde(with = "humantime_serde")]
    pub batch_max_wait: Duration,
    /// Where inserts go: `shards` (each shard's replicated table directly, rows split with
    /// the Distributed table's sharding function) or `distributed` (the Distributed table,
    /// synchronously). See docs/design.md for the measurement behind the default.
    pub write_path: WritePath,
    /// Inserts in flight at once.
    pub inflight_inserts: usize,
    /// Sealed batches waiting for a free insert slot; when this queue is full the consumer
    /// pauses its partitions (it keeps polling, so it stays in the group).
    pub queue_batches: usize,
    /// Consumer `session.timeout.ms`.
    pub session_timeout_ms: u32,
    /// Consumer `heartbeat.interval.ms`.
    pub heartbeat_interval_ms: u32,
    /// Consumer `fetch.min.bytes`: how much data a fetch waits for (at most
    /// `fetch_wait_max_ms`). Few large fetches instead of many small ones under load.
    pub fetch_min_bytes: u32,
    /// Consumer `fetch.wait.max.ms`: how long the broker may hold a fetch for
    /// `fetch_min_bytes` of new data (500, Kafka's own default: half the fetches of 200 ms, and
    /// on the local broker a third less CPU per event; new events wait up to that long).
    pub fetch_wait_max_ms: u32,
    /// First retry delay after a failed insert; doubles up to `retry_max_backoff`, with jitter.
    #[serde(with = "humantime_serde")]
    pub retry_initial_backoff: Duration,
    /// Longest delay between insert retries.
    #[serde(with = "humantime_serde")]
    pub retry_max_backoff: Duration,
    /// How long a revoke waits for in-flight batches of the revoked partitions to be stored
    /// and committed; after it they are abandoned (the next owner reconciles them).
    #[serde(with = "humantime_serde")]
    pub revoke_timeout: Duration,
    /// How long a graceful shutdown waits for in-flight batches to be stored and committed.
    #[serde(with = "humantime_serde")]
    pub shutdown_timeout: Duration,
    /// On assignment the sink asks every ClickHouse node which offsets past the committed one
    /// are already stored. While a node does not answer it retries; after this long it goes on
    /// with the nodes that answered (a replica that was down and held rows no other replica
    /// has yet could then produce duplicates; see docs/design.md).
    #[serde(with = "humantime_serde")]
    pub reconcile_wait: Duration,
    /// Most months of event time (the table's partitions) one insert may touch; a shard's part
    /// spanning more is inserted in blocks of at most this many months. Current ClickHouse
    /// refuses a block touching more than `max_partitions_per_insert_block` (100) partitions;
    /// the default is half of that because 18.16 computes a row's month in the server's time
    /// zone, where one UTC month can fall into two.
    pub max_partitions_per_insert: usize,
    /// Replicas that must hold a part before ClickHouse acknowledges it (`insert_quorum`);
    /// 0 turns quorum writes off. With 2 on a 2-replica shard a part counts as stored, and its
    /// offsets are committed, only when both replicas have it: losing a replica's disk right
    /// after a commit loses nothing, but while a replica is away its shard's rows (and the
    /// batches holding them) wait. See docs/design.md.
    pub insert_quorum: u32,
}

impl Default for SinkConfig {
    fn default() -> Self {
        Self {
            group_id: "ess-sink".into(),
            listen: "127.0.0.1:9464".into(),
            batch_rows: 100_000,
            batch_bytes: 16 * 1024 * 1024,
            batch_max_wait: Duration::from_millis(300),
            write_path: WritePath::default(),
            inflight_inserts: 3,
            queue_batches: 2,
            session_timeout_ms: 10_000,
            heartbeat_interval_ms: 1_000,
            fetch_min_bytes: 1 << 20,
            fetch_wait_max_ms: 500,
            retry_initial_backoff: Duration::from_millis(100),
            retry_max_backoff: Duration::from_secs(10),
            revoke_timeout: Duration::from_secs(20),
            shutdown_timeout: Duration::from_secs(30),
            reconcile_wait: Duration::from_secs(120),
            max_partitions_per_insert: 50,
            insert_quorum: 0,
        }
    }
}

impl SinkConfig {
    pub(crate) fn validate(&self) -> Result<(), ConfigError> {
        if self.batch_rows == 0 {
            return Err(value_error("sink.batch_rows", "must be at least 1"));
        }
        if !(1024..=1 << 30).contains(&self.batch_bytes) {
            return Err(value_error(
                "sink.batch_bytes",
                "must be between 1024 and 1073741824 (1 GiB)",
            ));
        }
        if self.inflight_inserts == 0 {
            return Err(value_error("sink.inflight_inserts", "must be at least 1"));
        }
        if self.queue_batches == 0 {
            return Err(value_error("sink.queue_batches", "must be at least 1"));
        }
        if !(1..=100_000_000).contains(&self.fetch_min_bytes) {
            return Err(value_error(
                "sink.fetch_min_bytes",
                "must be between 1 and 100000000",
            ));
        }
        if self.fetch_wait_max_ms > 300_000 {
            return Err(value_error(
                "sink.fetch_wait_max_ms",
                "must be at most 300000 (5 minutes)",
            ));
        }
        if !(1..=100_000).contains(&self.max_partitions_per_insert) {
            return Err(value_error(
                "sink.max_partitions_per_insert",
                "must be between 1 and 100000",
            ));
        }
        if self.insert_quorum > 16 {
            return Err(value_error(
                "sink.insert_quorum",
                "must be 0 (off) or a number of replicas up to 16",
            ));
        }
        if self.group_id.trim().is_empty() {
            return Err(value_error("sink.group_id", "must not be empty"));
        }
        if self.heartbeat_interval_ms >= self.session_timeout_ms {
            return Err(value_error(
                "sink.heartbeat_interval_ms",
                "must be lower than sink.session_timeout_ms",
            ));
        }
        if self.retry_initial_backoff.is_zero()
            || self.retry_max_backoff < self.retry_initial_backoff
        {
            return Err(value_error(
                "sink.retry_max_backoff",
                "must be at least sink.retry_initial_backoff, which must be positive",
            ));
        }
        if !self.listen.is_empty() && self.listen.parse::<std::net::SocketAddr>().is_err() {
            return Err(value_error(
                "sink.listen",
                "must be empty or an address like 127.0.0.1:9464 (port 0 picks one)",
            ));
        }
        Ok(())
    }
}
