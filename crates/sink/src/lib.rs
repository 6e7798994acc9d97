//! ess sink: Kafka → ClickHouse.

use std::future::Future;

use ess_core::config::Config;

/// Consumes until `shutdown` resolves.
pub async fn run(
    config: Config,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let _ = (config, shutdown);
    anyhow::bail!("ess sink is not built yet")
}
