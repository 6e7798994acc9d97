//! `[sink]`: the Kafka → ClickHouse consumer.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::{ConfigError, value_error};

/// The sink.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SinkConfig {
    /// Consumer group id.
    pub group_id: String,
    /// Address of the sink's `/metrics`, `/healthz` and `/readyz`.
    pub listen: String,
    /// A batch is written when it holds this many rows…
    pub batch_rows: usize,
    /// …or this many bytes of encoded rows…
    pub batch_bytes: usize,
    /// …or when its first row has waited this long.
    #[serde(with = "humantime_serde")]
    pub batch_max_wait: Duration,
    /// Consumer `session.timeout.ms`.
    pub session_timeout_ms: u32,
    /// Consumer `heartbeat.interval.ms`.
    pub heartbeat_interval_ms: u32,
    /// First retry delay after a failed insert; doubles up to `retry_max_backoff`.
    #[serde(with = "humantime_serde")]
    pub retry_initial_backoff: Duration,
    /// Longest delay between insert retries.
    #[serde(with = "humantime_serde")]
    pub retry_max_backoff: Duration,
}

impl Default for SinkConfig {
    fn default() -> Self {
        Self {
            group_id: "ess-sink".into(),
            listen: "127.0.0.1:9464".into(),
            batch_rows: 50_000,
            batch_bytes: 32 * 1024 * 1024,
            batch_max_wait: Duration::from_millis(500),
            session_timeout_ms: 10_000,
            heartbeat_interval_ms: 1_000,
            retry_initial_backoff: Duration::from_millis(100),
            retry_max_backoff: Duration::from_secs(10),
        }
    }
}

impl SinkConfig {
    pub(crate) fn validate(&self) -> Result<(), ConfigError> {
        if self.batch_rows == 0 {
            return Err(value_error("sink.batch_rows", "must be at least 1"));
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
        Ok(())
    }
}
