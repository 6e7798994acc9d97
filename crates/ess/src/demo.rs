//! `ess demo`: the whole pipeline on the local stack, with a verified report.

use ess_core::config::Config;

/// `ess demo` flags.
#[derive(Debug, clap::Args)]
pub struct DemoArgs {}

/// Runs the demo; returns whether the verification passed.
pub async fn run(config: Config, args: DemoArgs) -> anyhow::Result<bool> {
    let _ = (config, args);
    anyhow::bail!("ess demo is not built yet")
}
