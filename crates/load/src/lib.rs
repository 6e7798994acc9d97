//! ess load and ess verify.

use ess_core::config::Config;

/// `ess load` flags.
#[derive(Debug, clap::Args)]
pub struct LoadArgs {}

/// `ess verify` flags.
#[derive(Debug, clap::Args)]
pub struct VerifyArgs {
    /// Run id printed by `ess load`.
    #[arg(long)]
    pub run: String,
}

/// Runs the load; returns whether it succeeded.
pub async fn load(config: &Config, args: LoadArgs) -> anyhow::Result<bool> {
    let _ = (config, args);
    anyhow::bail!("ess load is not built yet")
}

/// Verifies a run; returns whether nothing was lost or duplicated.
pub async fn verify(config: &Config, args: VerifyArgs) -> anyhow::Result<bool> {
    let _ = (config, args);
    anyhow::bail!("ess verify is not built yet")
}
