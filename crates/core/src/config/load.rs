//! `[load]`: the load generator.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::{ConfigError, value_error};

/// The load generator's defaults; most settings are flags of `ess load`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LoadConfig {
    /// Base URL of the ingest server.
    pub target: String,
    /// API key sent with every request (empty: none).
    pub api_key: String,
    /// Connections of the closed model when neither a rate nor connections are given.
    pub connections: usize,
    /// Events per request (1: single events).
    pub batch: usize,
    /// Per-request timeout; a request without a full answer by then counts as failed.
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
}

impl Default for LoadConfig {
    fn default() -> Self {
        Self {
            target: "http://127.0.0.1:8080".into(),
            api_key: String::new(),
            connections: 64,
            batch: 1,
            timeout: Duration::from_secs(10),
        }
    }
}

impl LoadConfig {
    pub(crate) fn validate(&self) -> Result<(), ConfigError> {
        if self.connections == 0 {
            return Err(value_error("load.connections", "must be at least 1"));
        }
        if self.batch == 0 {
            return Err(value_error("load.batch", "must be at least 1"));
        }
        if self.timeout.is_zero() {
            return Err(value_error("load.timeout", "must be positive"));
        }
        Ok(())
    }
}
