//! ess ingest: HTTP → Kafka.

use std::future::Future;

use ess_core::config::Config;

/// Serves until `shutdown` resolves.
pub async fn run(
    config: Config,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let _ = (config, shutdown);
    anyhow::bail!("ess ingest is not built yet")
}
