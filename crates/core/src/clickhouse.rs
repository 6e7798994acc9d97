//! Connecting to ClickHouse, and telling old servers from current ones.

use crate::config::ClickHouseConfig;

pub use ::clickhouse::Client;

/// What the server can do, decided from `SELECT version()`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flavor {
    /// Before 20.1 (e.g. Debian's 18.16): no DateTime64, no LowCardinality by default, no
    /// `RowBinaryWithNamesAndTypes`, so the client's schema validation must be off.
    Legacy,
    /// 20.1 and later: DateTime64(3), LowCardinality, client-side schema validation.
    Modern,
}

/// A parsed server version.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerVersion {
    /// As the server printed it.
    pub text: String,
    /// Major version (year-based since 18).
    pub major: u32,
    /// Minor version.
    pub minor: u32,
}

impl ServerVersion {
    /// Parses `major.minor[.patch…]`.
    pub fn parse(text: &str) -> Option<Self> {
        let mut parts = text.trim().split('.');
        let major = parts.next()?.parse().ok()?;
        let minor = parts.next()?.parse().ok()?;
        Some(Self {
            text: text.trim().to_owned(),
            major,
            minor,
        })
    }

    /// Which schema and client settings this server needs.
    pub fn flavor(&self) -> Flavor {
        if self.major >= 20 {
            Flavor::Modern
        } else {
            Flavor::Legacy
        }
    }
}

/// Why talking to ClickHouse failed.
#[derive(Debug, thiserror::Error)]
pub enum ClickHouseError {
    /// The query failed (network, server error).
    #[error("ClickHouse at {url}: {source}")]
    Query {
        /// The node.
        url: String,
        /// The client's error.
        source: ::clickhouse::error::Error,
    },
    /// `version()` returned something unreadable.
    #[error("ClickHouse at {url} reported an unreadable version {text:?}")]
    Version {
        /// The node.
        url: String,
        /// What it said.
        text: String,
    },
}

/// A client for `url` with the configured credentials and connect timeout, no database
/// selected, validation on. Response timeouts are per request (`clickhouse.timeout`): the
/// caller applies them, since an insert's data may take longer to send than its answer.
pub fn client(config: &ClickHouseConfig, url: &str) -> Client {
    let mut client = with_connect_timeout(config)
        .with_url(url)
        .with_user(&config.user);
    if !config.password.is_empty() {
        client = client.with_password(&config.password);
    }
    client
}

/// A bare [`Client`] whose HTTP client has the `clickhouse` crate's own settings (keep-alive,
/// a pool idle timeout below the server's 3 s) plus `clickhouse.connect_timeout`, so a node
/// that does not accept connections fails fast instead of after the OS's minutes.
fn with_connect_timeout(config: &ClickHouseConfig) -> Client {
    use hyper_util::client::legacy::{Client as HyperClient, connect::HttpConnector};
    let mut connector = HttpConnector::new();
    connector.set_keepalive(Some(std::time::Duration::from_secs(60)));
    connector.set_connect_timeout(Some(config.connect_timeout));
    Client::with_http_client(
        HyperClient::builder(hyper_util::rt::TokioExecutor::new())
            .pool_idle_timeout(std::time::Duration::from_secs(2))
            .build(connector),
    )
}

/// Asks the server its version.
pub async fn server_version(client: &Client, url: &str) -> Result<ServerVersion, ClickHouseError> {
    let text: String = client
        .clone()
        .with_validation(false)
        .query("SELECT version()")
        .fetch_one()
        .await
        .map_err(|source| ClickHouseError::Query {
            url: url.to_owned(),
            source,
        })?;
    ServerVersion::parse(&text).ok_or_else(|| ClickHouseError::Version {
        url: url.to_owned(),
        text,
    })
}

/// Connects to `url`, asks its version and returns a client set up for it (schema validation
/// only where the server supports it) together with the version.
pub async fn connect(
    config: &ClickHouseConfig,
    url: &str,
) -> Result<(Client, ServerVersion), ClickHouseError> {
    let base = client(config, url);
    let version = server_version(&base, url).await?;
    let client = base.with_validation(version.flavor() == Flavor::Modern);
    Ok((client, version))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_choose_the_flavor() {
        let old = ServerVersion::parse("18.16.1").unwrap();
        assert_eq!((old.major, old.minor), (18, 16));
        assert_eq!(old.flavor(), Flavor::Legacy);
        assert_eq!(
            ServerVersion::parse("23.8.2.7").unwrap().flavor(),
            Flavor::Modern
        );
        assert_eq!(
            ServerVersion::parse("26.9.2.1").unwrap().flavor(),
            Flavor::Modern
        );
        assert!(ServerVersion::parse("banana").is_none());
    }
}
