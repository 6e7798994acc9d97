//! `[ingest]`: the HTTP ingest server.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::{ConfigError, value_error};

/// Whether requests need an API key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum AuthMode {
    /// Every request needs a key from `ingest.api_keys`.
    #[default]
    On,
    /// No key is checked. Only when set explicitly; the server says so when it starts.
    Off,
}

/// One API key and its rate limit.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiKey {
    /// Short name, stored as the event's `source` when the event gives none.
    pub id: String,
    /// The secret sent in `Authorization: Bearer …` or `X-API-Key`.
    pub key: String,
    /// Sustained events per second (token bucket refill).
    #[serde(default = "default_rate")]
    pub rate_per_sec: u32,
    /// Burst size (token bucket capacity).
    #[serde(default = "default_burst")]
    pub burst: u32,
}

fn default_rate() -> u32 {
    100_000
}

fn default_burst() -> u32 {
    200_000
}

/// The ingest server.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct IngestConfig {
    /// Listen address.
    pub listen: String,
    /// API key checking.
    pub auth: AuthMode,
    /// Accepted API keys.
    pub api_keys: Vec<ApiKey>,
    /// Largest request body after decompression, in bytes.
    pub max_body_bytes: usize,
    /// Most events in one batch request.
    pub max_batch_events: usize,
    /// Largest `properties` object of one event, in bytes of JSON.
    pub max_properties_bytes: usize,
    /// Longest event `type`, in bytes.
    pub max_type_len: usize,
    /// Deepest nesting of `properties`.
    pub max_depth: usize,
    /// How long a request may wait for the broker's acknowledgement before it gets 503.
    #[serde(with = "humantime_serde")]
    pub produce_timeout: Duration,
    /// How long shutdown waits for the producer to flush.
    #[serde(with = "humantime_serde")]
    pub shutdown_timeout: Duration,
    /// Producer `linger.ms` (fractions allowed): how long a partition's events wait to be sent
    /// together. 10 ms: every produce request becomes a stored batch, and the local broker's
    /// fetches cost more with every batch a partition holds; at 0.4 ms the demo's rate fell by
    /// half over a million events, at 10 ms it held (BENCHMARKS.md, local broker). The price is
    /// latency: each 2xx waits up to that long, so a client with few connections sending one
    /// event at a time gets fewer requests/s (connections / latency); set it lower for that.
    pub linger_ms: f64,
    /// Producer compression codec (`lz4`, `zstd`, `snappy`, `gzip`, `none`).
    pub compression: String,
    /// Most messages waiting in the producer queue; beyond it requests get 503.
    pub queue_max_messages: u32,
    /// Most kilobytes waiting in the producer queue; beyond it requests get 503.
    pub queue_max_kbytes: u32,
    /// How long a client may take to send its request body before it gets 408.
    #[serde(with = "humantime_serde")]
    pub read_timeout: Duration,
    /// Seconds clients are told to wait (`Retry-After`) when the broker is unavailable.
    pub retry_after_secs: u32,
    /// Extra librdkafka producer properties, applied last (e.g. `batch.size`).
    pub producer: BTreeMap<String, String>,
    /// Threads serving HTTP: 0 serves on the caller's runtime; 1 on a dedicated single-threaded
    /// runtime (fewest cross-thread wake-ups); more on a dedicated multi-threaded one.
    pub workers: usize,
}

impl Default for IngestConfig {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:8080".into(),
            auth: AuthMode::On,
            api_keys: Vec::new(),
            max_body_bytes: 8 * 1024 * 1024,
            max_batch_events: 10_000,
            max_properties_bytes: 32 * 1024,
            max_type_len: 128,
            max_depth: 32,
            produce_timeout: Duration::from_secs(5),
            shutdown_timeout: Duration::from_secs(10),
            linger_ms: 10.0,
            compression: "lz4".into(),
            queue_max_messages: 100_000,
            queue_max_kbytes: 32 * 1024,
            read_timeout: Duration::from_secs(30),
            retry_after_secs: 1,
            producer: BTreeMap::new(),
            workers: 1,
        }
    }
}

impl IngestConfig {
    /// What the ingest server needs beyond [`IngestConfig::validate`]: with auth on, at least
    /// one key (other subcommands load the same config and need none).
    pub fn require_keys(&self) -> Result<(), ConfigError> {
        if self.auth == AuthMode::On && self.api_keys.is_empty() {
            return Err(value_error(
                "ingest.api_keys",
                "is empty while ingest.auth = \"on\": add a key or set ingest.auth = \"off\"",
            ));
        }
        Ok(())
    }

    pub(crate) fn validate(&self) -> Result<(), ConfigError> {
        for (i, k) in self.api_keys.iter().enumerate() {
            if k.key.len() < 16 {
                return Err(value_error(
                    &format!("ingest.api_keys[{i}].key"),
                    "must be at least 16 characters",
                ));
            }
            if k.rate_per_sec == 0 || k.burst == 0 {
                return Err(value_error(
                    &format!("ingest.api_keys[{i}].rate_per_sec"),
                    "rate_per_sec and burst must be positive",
                ));
            }
        }
        if self.max_body_bytes == 0 {
            return Err(value_error("ingest.max_body_bytes", "must be at least 1"));
        }
        if self.max_type_len == 0 {
            return Err(value_error("ingest.max_type_len", "must be at least 1"));
        }
        if !(1..=100).contains(&self.max_depth) {
            return Err(value_error("ingest.max_depth", "must be between 1 and 100"));
        }
        if self.max_properties_bytes < 2 || self.max_properties_bytes > 900_000 {
            return Err(value_error(
                "ingest.max_properties_bytes",
                "must be between 2 and 900000 (one event must fit in a Kafka message)",
            ));
        }
        if self.produce_timeout < Duration::from_millis(100) {
            return Err(value_error(
                "ingest.produce_timeout",
                "must be at least 100ms",
            ));
        }
        if self.queue_max_messages == 0 || self.queue_max_kbytes == 0 {
            return Err(value_error(
                "ingest.queue_max_messages",
                "queue_max_messages and queue_max_kbytes must be positive",
            ));
        }
        if !(0.0..=900_000.0).contains(&self.linger_ms) {
            return Err(value_error(
                "ingest.linger_ms",
                "must be between 0 and 900000 (milliseconds)",
            ));
        }
        if self.max_batch_events == 0 {
            return Err(value_error("ingest.max_batch_events", "must be at least 1"));
        }
        if !["lz4", "zstd", "snappy", "gzip", "none"].contains(&self.compression.as_str()) {
            return Err(value_error(
                "ingest.compression",
                "must be one of lz4, zstd, snappy, gzip, none",
            ));
        }
        Ok(())
    }
}
