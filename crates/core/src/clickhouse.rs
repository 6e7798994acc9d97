//! Connecting to ClickHouse, and telling old servers from current ones.

use std::time::Duration;

use hyper_util::client::legacy::Client as HyperClient;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

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
    /// The query failed (network, server error). The message carries the whole cause chain
    /// and, where the cause is a setting, the keys to check.
    #[error("ClickHouse at {url}: {}", explain(error))]
    Query {
        /// The node.
        url: String,
        /// The client's error (its causes are part of the message).
        error: ::clickhouse::error::Error,
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

impl ClickHouseError {
    /// Whether the failure comes from a setting (credentials, CA, http vs https) rather than
    /// from a node that is down: retrying cannot fix it.
    pub fn is_setting_error(&self) -> bool {
        match self {
            // A closed connection or a timeout may also be a node going down: not certain.
            Self::Query { error, .. } => blame(&explain(error)).is_some_and(|s| {
                s.starts_with("clickhouse.user")
                    || s.starts_with("clickhouse.ca_file")
                    || s.contains("plain http?")
            }),
            Self::Version { .. } => false,
        }
    }
}

/// A client for `url` with the configured credentials and connection settings, no database
/// selected, validation on. Every ClickHouse client of ess is made here.
pub fn client(config: &ClickHouseConfig, url: &str) -> Client {
    let mut client = connection(config).with_url(url).with_user(&config.user);
    if !config.password.is_empty() {
        client = client.with_password(config.password.expose());
    }
    client
}

/// Idle connections are closed before ClickHouse's own keep-alive timeout (3 s on old
/// servers) would close them under a request.
const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(2);
const TCP_KEEPALIVE: Duration = Duration::from_secs(60);

/// A client over a fresh connection pool: `http://` and `https://` URLs, TLS by the system's
/// OpenSSL trusting the system's roots plus `clickhouse.ca_file`, at most
/// `clickhouse.connect_timeout` to open a TCP connection.
fn connection(config: &ClickHouseConfig) -> Client {
    let mut http = HttpConnector::new();
    http.set_keepalive(Some(TCP_KEEPALIVE));
    http.set_connect_timeout(Some(config.connect_timeout));
    let pool = HyperClient::builder(TokioExecutor::new())
        .pool_idle_timeout(POOL_IDLE_TIMEOUT)
        .clone();
    match tls_connector(config) {
        Ok(tls) => {
            http.enforce_http(false);
            let https = hyper_tls::HttpsConnector::from((http, tls.into()));
            Client::with_http_client(pool.build(https))
        }
        Err(e) => {
            // Loading the config checked `clickhouse.ca_file`, so this is a file changed since
            // or a broken OpenSSL: plain HTTP still works, https:// URLs fail naming the key.
            tracing::error!("clickhouse.ca_file: {e}; https:// nodes cannot be reached");
            Client::with_http_client(pool.build(http))
        }
    }
}

/// TLS settings for `https://` nodes: TLS 1.2 or later, the system's roots and the
/// certificates of `clickhouse.ca_file`.
fn tls_connector(config: &ClickHouseConfig) -> Result<native_tls::TlsConnector, String> {
    let mut builder = native_tls::TlsConnector::builder();
    builder.min_protocol_version(Some(native_tls::Protocol::Tlsv12));
    if !config.ca_file.as_os_str().is_empty() {
        let path = config.ca_file.display();
        let pem = std::fs::read(&config.ca_file).map_err(|e| format!("cannot read {path}: {e}"))?;
        let certificates = native_tls::Certificate::stack_from_pem(&pem)
            .map_err(|e| format!("no certificate in {path}: {e}"))?;
        for certificate in certificates {
            builder.add_root_certificate(certificate);
        }
    }
    builder.build().map_err(|e| e.to_string())
}

/// The client's error with every cause under it (the TLS or socket error behind "client
/// error (Connect)"), and the keys to check when the cause points at a setting.
fn explain(error: &::clickhouse::error::Error) -> String {
    let mut text = error.to_string();
    let mut cause = std::error::Error::source(error);
    while let Some(c) = cause {
        let part = c.to_string();
        if !text.contains(&part) {
            text.push_str(": ");
            text.push_str(&part);
        }
        cause = c.source();
    }
    if let Some(setting) = blame(&text) {
        text.push_str("; check ");
        text.push_str(setting);
    }
    text
}

/// The settings an error text points at.
fn blame(text: &str) -> Option<&'static str> {
    let t = text.to_ascii_lowercase();
    let any = |needles: &[&str]| needles.iter().any(|n| t.contains(n));
    if any(&[
        "code: 192,",
        "code: 193,",
        "code: 194,",
        "code: 516,",
        "wrong password",
        "authentication failed",
        "password is incorrect",
    ]) {
        Some("clickhouse.user and clickhouse.password")
    } else if any(&[
        "certificate verify failed",
        "self signed certificate",
        "self-signed certificate",
        "unable to get local issuer",
    ]) {
        Some("clickhouse.ca_file (the CA that signed the nodes' certificates)")
    } else if any(&[
        "wrong version number",
        "packet length too long",
        "unexpected eof while reading",
    ]) {
        Some("clickhouse.url and clickhouse.nodes (https:// to a port that serves plain http?)")
    } else if any(&[
        "connection closed before message completed",
        "connection reset",
    ]) {
        Some("clickhouse.url and clickhouse.nodes (http:// to a port that serves https?)")
    } else if any(&["connect timeout", "timed out"]) {
        Some("clickhouse.url, clickhouse.nodes and clickhouse.connect_timeout")
    } else {
        None
    }
}

/// Asks the server its version.
pub async fn server_version(client: &Client, url: &str) -> Result<ServerVersion, ClickHouseError> {
    let text: String = client
        .clone()
        .with_validation(false)
        .query("SELECT version()")
        .fetch_one()
        .await
        .map_err(|error| ClickHouseError::Query {
            url: url.to_owned(),
            error,
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
