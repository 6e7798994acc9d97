//! `[load]`: the load generator.

use serde::{Deserialize, Serialize};

use super::ConfigError;

/// The load generator's defaults; most settings are flags of `ess load`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LoadConfig {
    /// Base URL of the ingest server.
    pub target: String,
    /// API key sent with every request (empty: none).
    pub api_key: String,
}

impl Default for LoadConfig {
    fn default() -> Self {
        Self {
            target: "http://127.0.0.1:8080".into(),
            api_key: String::new(),
        }
    }
}

impl LoadConfig {
    pub(crate) fn validate(&self) -> Result<(), ConfigError> {
        Ok(())
    }
}
