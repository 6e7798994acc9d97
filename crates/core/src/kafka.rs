//! Kafka client settings shared by every component, and the check that the brokers accept
//! them.

use std::path::Path;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use rdkafka::ClientConfig;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::{ClientContext, DefaultClientContext};
use rdkafka::config::RDKafkaLogLevel;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext};
use rdkafka::error::KafkaError;
use rdkafka::types::RDKafkaErrorCode;

use crate::config::KafkaConfig;

/// A client config with the bootstrap servers, the security settings of `[kafka.tls]` and
/// `[kafka.sasl]`, then the extra properties of `[kafka.client]`.
pub fn client_config(config: &KafkaConfig) -> ClientConfig {
    let mut client = ClientConfig::new();
    client.set("bootstrap.servers", &config.brokers);
    for (key, value) in security_properties(config) {
        client.set(key, value);
    }
    for (key, value) in &config.client {
        client.set(key, value);
    }
    client
}

/// The librdkafka properties for `[kafka.tls]` and `[kafka.sasl]`.
pub fn security_properties(config: &KafkaConfig) -> Vec<(&'static str, String)> {
    let (tls, sasl) = (&config.tls, &config.sasl);
    let mechanism = sasl.mechanism.librdkafka_name();
    let protocol = match (tls.enabled, mechanism.is_some()) {
        (false, false) => "plaintext",
        (true, false) => "ssl",
        (false, true) => "sasl_plaintext",
        (true, true) => "sasl_ssl",
    };
    let mut props = vec![("security.protocol", protocol.to_owned())];
    let path = |p: &Path| p.display().to_string();
    if tls.enabled {
        if !tls.ca_file.as_os_str().is_empty() {
            props.push(("ssl.ca.location", path(&tls.ca_file)));
        }
        if !tls.cert_file.as_os_str().is_empty() {
            props.push(("ssl.certificate.location", path(&tls.cert_file)));
            props.push(("ssl.key.location", path(&tls.key_file)));
        }
        if !tls.key_password.is_empty() {
            props.push(("ssl.key.password", tls.key_password.expose().to_owned()));
        }
        let check = if tls.verify_hostname { "https" } else { "none" };
        props.push(("ssl.endpoint.identification.algorithm", check.to_owned()));
    }
    if let Some(mechanism) = mechanism {
        props.push(("sasl.mechanism", mechanism.to_owned()));
        props.push(("sasl.username", sasl.username.clone()));
        props.push(("sasl.password", sasl.password.expose().to_owned()));
    }
    props
}

/// Why the brokers cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// The client could not be created (a bad property).
    #[error("kafka client: {0}")]
    Client(#[from] KafkaError),
    /// A broker answered but refused the connection's security; `setting` names the keys
    /// to look at.
    #[error("Kafka at {brokers}: {reason}; check {setting}")]
    Refused {
        /// The bootstrap servers.
        brokers: String,
        /// What librdkafka reported.
        reason: String,
        /// The configuration keys that decide it.
        setting: &'static str,
    },
    /// No broker answered in time (down, firewalled, or a wrong address).
    #[error("Kafka at {brokers}: no answer within {timeout:?}{last}")]
    Unreachable {
        /// The bootstrap servers.
        brokers: String,
        /// How long it waited.
        timeout: Duration,
        /// The last thing librdkafka reported, if anything.
        last: String,
    },
}

/// Collects what librdkafka reports while [`check_connection`] waits.
#[derive(Debug, Default)]
struct ProbeContext {
    reports: Mutex<Vec<String>>,
}

impl ProbeContext {
    fn push(&self, message: String) {
        if let Ok(mut reports) = self.reports.lock() {
            reports.push(message);
        }
    }

    fn reports(&self) -> Vec<String> {
        self.reports.lock().map(|r| r.clone()).unwrap_or_default()
    }
}

impl ClientContext for ProbeContext {
    fn log(&self, level: RDKafkaLogLevel, fac: &str, log_message: &str) {
        // A broker that closes the connection is logged at info level (`FAIL`), and that is
        // where librdkafka says why: a plaintext client at a TLS listener, or a client
        // without SASL at a broker that requires it.
        let level = level as i32;
        if level <= RDKafkaLogLevel::Warning as i32
            || (fac == "FAIL" && level <= RDKafkaLogLevel::Info as i32)
        {
            self.push(format!("{fac}: {log_message}"));
        }
    }

    fn error(&self, error: KafkaError, reason: &str) {
        self.push(format!("{error}: {reason}"));
    }
}

impl ConsumerContext for ProbeContext {}

/// How long a connection had been in `state` when librdkafka reported it failed ("… (after
/// 12ms in state UP)"), if the report says.
fn millis_in_state(report: &str, state: &str) -> Option<u64> {
    let end = report.find(&format!("ms in state {state}"))?;
    let start = report[..end].rfind("after ")? + "after ".len();
    report[start..end].parse().ok()
}

/// The settings a librdkafka report points at, or `None` when it says nothing about them.
/// `tls` and `sasl` are whether the client used them.
fn blame(report: &str, tls: bool, sasl: bool) -> Option<&'static str> {
    let r = report.to_ascii_lowercase();
    let says = |words: &[&str]| words.iter().any(|w| r.contains(w));
    let cut = says(&[
        "disconnected",
        "send failed",
        "connection reset",
        "broken pipe",
    ]);
    // A Kafka broker answers ApiVersions on any listener; a TLS listener drops the plaintext
    // request instead (librdkafka adds its own hint only when the peer closed cleanly, not
    // when it reset the connection).
    let dropped_first_request = cut && r.contains("in state apiversion_query");
    // A broker that requires SASL answers ApiVersions, then drops the first other request
    // of a client that did not authenticate (librdkafka's own hint for it needs a clean
    // close, too).
    let dropped_after_up = cut && millis_in_state(&r, "up").is_some_and(|ms| ms < 2000);
    if says(&[
        "certificate verify failed",
        "failed to verify broker certificate",
    ]) {
        Some(
            "kafka.tls.ca_file (the CA that signed the brokers' certificates) and kafka.tls.verify_hostname",
        )
    } else if says(&["ssl.ca.location", "ssl.certificate", "ssl.key"]) {
        Some("kafka.tls.ca_file, kafka.tls.cert_file and kafka.tls.key_file")
    } else if says(&["connecting to a ssl listener", "connecting to a sasl_ssl"])
        || (dropped_first_request && !tls)
    {
        Some("kafka.tls.enabled (the listener dropped a plaintext request: it expects TLS)")
    } else if says(&["might require sasl authentication"]) || (dropped_after_up && !sasl) {
        Some("kafka.sasl.mechanism (the broker requires SASL authentication)")
    } else if says(&["ssl handshake failed", "in state ssl_handshake"]) {
        // The handshake was refused, cut off or never answered: most often a listener that
        // does not speak TLS at all.
        Some(
            "kafka.tls.enabled (is the listener TLS? a plaintext listener does not answer the handshake), kafka.tls.ca_file, kafka.tls.cert_file and kafka.tls.key_file",
        )
    } else if says(&["unsupported sasl mechanism", "state auth_handshake"])
        || (r.contains("sasl mechanism") && r.contains("not supported"))
    {
        // Refused, or the connection closed, at the SASL handshake (before any password).
        Some("kafka.sasl.mechanism (the broker does not offer it, or does not use SASL)")
    } else if says(&["authentication", "sasl"]) {
        Some("kafka.sasl.mechanism, kafka.sasl.username and kafka.sasl.password")
    } else {
        None
    }
}

/// Asks the brokers for metadata with the configured security settings, for at most
/// `timeout`. A broker that refuses the TLS handshake or the credentials gives
/// [`ConnectError::Refused`] as soon as it is reported (usually well under a second), naming
/// the settings to check; no answer at all gives [`ConnectError::Unreachable`]. Blocking:
/// call it from a blocking thread.
pub fn check_connection(config: &KafkaConfig, timeout: Duration) -> Result<(), ConnectError> {
    let context = ProbeContext::default();
    // A listener that does not speak TLS may hold a TLS handshake open without answering:
    // give up on it in half the time, so that is reported rather than "no answer".
    let setup = (timeout / 2).max(Duration::from_secs(1)).as_millis();
    let consumer: BaseConsumer<ProbeContext> = client_config(config)
        .set("reconnect.backoff.ms", "100")
        .set("reconnect.backoff.max.ms", "1000")
        .set("socket.connection.setup.timeout.ms", setup.to_string())
        .set_log_level(RDKafkaLogLevel::Info)
        .create_with_context(context)?;
    let refused = |reason: String, setting| ConnectError::Refused {
        brokers: config.brokers.clone(),
        reason,
        setting,
    };
    let sasl = config.sasl.mechanism.librdkafka_name().is_some();
    let deadline = Instant::now() + timeout;
    loop {
        let step =
            Duration::from_millis(500).min(deadline.saturating_duration_since(Instant::now()));
        let answered = consumer.fetch_metadata(None, step);
        // Errors reach the context only while the client is polled (no subscription: no
        // message can come back).
        let _ = consumer.poll(Duration::ZERO);
        let reports = consumer.context().reports();
        let blamed = reports
            .iter()
            .find_map(|r| blame(r, config.tls.enabled, sasl).map(|s| (r, s)));
        if let Some((report, setting)) = blamed {
            return Err(refused(report.clone(), setting));
        }
        match answered {
            Ok(_) => return Ok(()),
            Err(e) if Instant::now() >= deadline => {
                let last = reports.last().cloned().unwrap_or_else(|| e.to_string());
                return Err(ConnectError::Unreachable {
                    brokers: config.brokers.clone(),
                    timeout,
                    last: format!(" (last report: {last})"),
                });
            }
            Err(_) => {}
        }
    }
}

/// Creates `name` with `partitions` partitions unless it exists. Returns whether it was created.
pub async fn ensure_topic(
    config: &KafkaConfig,
    name: &str,
    partitions: i32,
) -> Result<bool, KafkaError> {
    let admin: AdminClient<DefaultClientContext> = client_config(config).create()?;
    let topic = NewTopic::new(
        name,
        partitions,
        TopicReplication::Fixed(config.replication_factor),
    );
    let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(30)));
    let results = admin.create_topics([&topic], &options).await?;
    match results.into_iter().next() {
        Some(Ok(_)) => Ok(true),
        Some(Err((_, RDKafkaErrorCode::TopicAlreadyExists))) => Ok(false),
        Some(Err((_, code))) => Err(KafkaError::AdminOp(code)),
        None => Ok(false),
    }
}

/// The partition ids of `topic` as the broker reports them (empty when it does not know the
/// topic). Blocking: call it from a blocking thread.
pub fn partition_ids<C, X>(
    consumer: &C,
    topic: &str,
    timeout: Duration,
) -> Result<Vec<i32>, KafkaError>
where
    C: Consumer<X>,
    X: ConsumerContext,
{
    let metadata = consumer.fetch_metadata(Some(topic), timeout)?;
    Ok(metadata
        .topics()
        .iter()
        .filter(|t| t.name() == topic && t.error().is_none())
        .flat_map(|t| t.partitions().iter().map(|p| p.id()))
        .collect())
}

/// How many partitions `name` has (0 when the broker does not know it). Blocking.
pub fn partition_count(config: &KafkaConfig, name: &str) -> Result<i32, KafkaError> {
    let consumer: BaseConsumer = client_config(config).create()?;
    Ok(partition_ids(&consumer, name, Duration::from_secs(10))?.len() as i32)
}

/// Deletes `name` (tests clean up with it).
pub async fn delete_topic(config: &KafkaConfig, name: &str) -> Result<(), KafkaError> {
    let admin: AdminClient<DefaultClientContext> = client_config(config).create()?;
    let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(30)));
    admin.delete_topics(&[name], &options).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn librdkafka_reports_point_at_the_settings() {
        // Reports as librdkafka 2.12 words them (TLS on?, report, a setting it must name), for a
        // client without SASL.
        let cases = [
            (
                true,
                "ssl://127.0.0.1:9093/bootstrap: SSL handshake failed: error:0A000086:SSL routines::certificate verify failed: broker certificate could not be verified, verify that ssl.ca.location is correctly configured",
                "kafka.tls.ca_file",
            ),
            (
                false,
                "127.0.0.1:9093/bootstrap: Disconnected while requesting ApiVersion: might be caused by incorrect security.protocol configuration (connecting to a SSL listener?) or broker version is < 0.10",
                "kafka.tls.enabled",
            ),
            (
                false,
                "FAIL: [thrd:127.0.0.1:28503/bootstrap]: 127.0.0.1:28503/bootstrap: Disconnected: connection reset by peer (after 9ms in state APIVERSION_QUERY)",
                "kafka.tls.enabled",
            ),
            (
                true,
                "FAIL: [thrd:ssl://127.0.0.1:28174/bootstrap]: ssl://127.0.0.1:28174/bootstrap: Connection setup timed out in state SSL_HANDSHAKE (after 5002ms in state SSL_HANDSHAKE)",
                "kafka.tls.enabled",
            ),
            (
                false,
                "FAIL: [thrd:sasl_plaintext://127.0.0.1:28501/bootstrap]: sasl_plaintext://127.0.0.1:28501/bootstrap: Disconnected: connection closed by peer: receive 0 after POLLIN (after 1ms in state AUTH_HANDSHAKE)",
                "kafka.sasl.mechanism",
            ),
            (
                false,
                "sasl_plaintext://127.0.0.1:9092/bootstrap: SASL authentication error: Authentication failed during authentication due to invalid credentials with SASL mechanism SCRAM-SHA-512",
                "kafka.sasl.password",
            ),
        ];
        for (tls, report, setting) in cases {
            let blamed = blame(report, tls, false).unwrap_or_default();
            assert!(blamed.contains(setting), "{report} → {blamed}");
        }
        for tls in [false, true] {
            assert_eq!(
                blame(
                    "127.0.0.1:9092/bootstrap: Connect to ipv4#127.0.0.1:9092 failed: Connection refused (after 0ms in state CONNECT)",
                    tls,
                    false
                ),
                None
            );
        }
        // Over TLS, a drop at the first request is not a plaintext client's mistake.
        assert_eq!(
            blame(
                "ssl://127.0.0.1:9093/bootstrap: Disconnected: connection reset by peer (after 3ms in state APIVERSION_QUERY)",
                true,
                false
            ),
            None
        );
        // A client without SASL dropped right after the handshake: the broker wants SASL. Not
        // so long after it (an idle connection closed), nor for a client that authenticated.
        let up = |ms: u32| {
            format!(
                "FAIL: [thrd:127.0.0.1:28501/bootstrap]: 127.0.0.1:28501/bootstrap: Disconnected: connection closed by peer: receive 0 after POLLIN (after {ms}ms in state UP)"
            )
        };
        assert!(blame(&up(0), false, false).is_some_and(|b| b.contains("kafka.sasl.mechanism")));
        assert_eq!(blame(&up(600_000), false, false), None);
        assert_eq!(blame(&up(0), false, true), None);
    }

    #[test]
    fn security_settings_become_librdkafka_properties() {
        let mut config = KafkaConfig::default();
        let props = |c: &KafkaConfig| {
            security_properties(c)
                .into_iter()
                .collect::<std::collections::BTreeMap<_, _>>()
        };
        assert_eq!(props(&config)["security.protocol"], "plaintext");
        config.tls.enabled = true;
        config.tls.ca_file = "/ca.pem".into();
        config.sasl.mechanism = crate::config::SaslMechanism::ScramSha256;
        config.sasl.username = "u".into();
        config.sasl.password = crate::config::Secret::new("p");
        let p = props(&config);
        assert_eq!(p["security.protocol"], "sasl_ssl");
        assert_eq!(p["ssl.ca.location"], "/ca.pem");
        assert_eq!(p["sasl.mechanism"], "SCRAM-SHA-256");
        assert_eq!(p["sasl.password"], "p");
        assert_eq!(p["ssl.endpoint.identification.algorithm"], "https");
    }
}
