//! The run record `ess load` writes and `ess verify` reads: the summary and, compactly as
//! ranges, exactly which sequence numbers the server accepted.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::ids::{RunId, SeqSet};
use crate::stats::LoadSummary;

/// What a run leaves behind for the verifier.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RunRecord {
    /// The load's summary.
    pub summary: LoadSummary,
    /// Accepted sequence numbers as half-open ranges `[start, end)`.
    pub accepted: Vec<[u64; 2]>,
    /// The events' `source` when it is not the run id (an API key's id).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
}

impl RunRecord {
    /// The record of a finished run.
    pub fn new(summary: LoadSummary, accepted: &SeqSet) -> Self {
        Self {
            summary,
            accepted: accepted.to_ranges(),
            source: None,
        }
    }

    /// The accepted set.
    pub fn accepted_set(&self) -> SeqSet {
        SeqSet::from_ranges(&self.accepted)
    }

    /// Writes it as JSON, creating the directory.
    pub fn write(&self, path: &Path) -> anyhow::Result<()> {
        use anyhow::Context as _;
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
        }
        let text = serde_json::to_vec(self)?;
        std::fs::write(path, text).with_context(|| format!("write {}", path.display()))
    }

    /// Reads a record.
    pub fn read(path: &Path) -> anyhow::Result<Self> {
        use anyhow::Context as _;
        let text = std::fs::read(path)
            .with_context(|| format!("read run record {} (written by ess load)", path.display()))?;
        serde_json::from_slice(&text).with_context(|| format!("parse {}", path.display()))
    }
}

/// Where runs are recorded by default: `<state dir>/runs/<run>.json`.
pub fn default_path(state_dir: &Path, run: RunId) -> PathBuf {
    state_dir.join("runs").join(format!("{run}.json"))
}
