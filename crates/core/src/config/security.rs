//! Secrets and the Kafka connection's security: `[kafka.tls]` and `[kafka.sasl]`.

use std::fmt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::{ConfigError, value_error};

/// A password or key: printed as `***` by `ess config` and by `Debug`, so logs and support
/// bundles never carry it.
#[derive(Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    /// What `ess config` shows instead of a set secret.
    pub const MASK: &'static str = "***";

    /// Wraps a value.
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    /// The value itself, for the client that needs it.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// Whether no value is set.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Replaces a set value by [`Secret::MASK`].
    pub(crate) fn mask(&mut self) {
        if !self.0.is_empty() {
            self.0 = Self::MASK.to_owned();
        }
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.is_empty() {
            f.write_str("\"\"")
        } else {
            write!(f, "{:?}", Self::MASK)
        }
    }
}

/// Fills `secret` from `file` (`key` names the pair in errors): the file's content without
/// its trailing newline. Setting both is refused; afterwards `file` is cleared, so the
/// resolved configuration holds the value once.
pub(crate) fn read_secret_file(
    secret: &mut Secret,
    file: &mut PathBuf,
    key: &str,
) -> Result<(), ConfigError> {
    if file.as_os_str().is_empty() {
        return Ok(());
    }
    if !secret.is_empty() {
        return Err(value_error(
            &format!("{key}_file"),
            format!("and `{key}` are both set; set one"),
        ));
    }
    let text = std::fs::read_to_string(&*file).map_err(|e| {
        value_error(
            &format!("{key}_file"),
            format!("cannot be read ({}): {e}", file.display()),
        )
    })?;
    *secret = Secret::new(text.trim_end_matches(['\r', '\n']));
    file.clear();
    Ok(())
}

/// Checks that a configured file exists and is readable.
pub(crate) fn check_readable(path: &Path, key: &str) -> Result<(), ConfigError> {
    if path.as_os_str().is_empty() {
        return Ok(());
    }
    std::fs::File::open(path)
        .map(drop)
        .map_err(|e| value_error(key, format!("cannot be read ({}): {e}", path.display())))
}

/// Checks that `path` (if set) holds at least one PEM certificate.
pub(crate) fn check_pem_certificates(path: &Path, key: &str) -> Result<(), ConfigError> {
    if path.as_os_str().is_empty() {
        return Ok(());
    }
    let text = std::fs::read_to_string(path)
        .map_err(|e| value_error(key, format!("cannot be read ({}): {e}", path.display())))?;
    if !text.contains("-----BEGIN CERTIFICATE-----") {
        return Err(value_error(
            key,
            format!("({}) holds no PEM certificate", path.display()),
        ));
    }
    Ok(())
}

/// TLS to the brokers (`security.protocol` `ssl` or `sasl_ssl`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct KafkaTls {
    /// Encrypt the connection to every broker.
    pub enabled: bool,
    /// PEM file with the CA certificate(s) that signed the brokers' certificates. Empty: the
    /// system's trusted roots (enough for managed services with public certificates).
    pub ca_file: PathBuf,
    /// PEM client certificate, for brokers that require mutual TLS (with `key_file`).
    pub cert_file: PathBuf,
    /// PEM private key of `cert_file`.
    pub key_file: PathBuf,
    /// Password of an encrypted `key_file`.
    pub key_password: Secret,
    /// File holding `key_password` (read at start; trailing newline dropped).
    pub key_password_file: PathBuf,
    /// Check that the broker's certificate names the host connected to. Turn off only for
    /// certificates without the right subject alternative names.
    pub verify_hostname: bool,
}

impl Default for KafkaTls {
    fn default() -> Self {
        Self {
            enabled: false,
            ca_file: PathBuf::new(),
            cert_file: PathBuf::new(),
            key_file: PathBuf::new(),
            key_password: Secret::default(),
            key_password_file: PathBuf::new(),
            verify_hostname: true,
        }
    }
}

/// SASL mechanisms librdkafka is built with here.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum SaslMechanism {
    /// No SASL.
    #[default]
    None,
    /// `PLAIN`: user name and password in clear inside the connection (use with TLS).
    Plain,
    /// `SCRAM-SHA-256`.
    #[serde(rename = "scram-sha-256")]
    ScramSha256,
    /// `SCRAM-SHA-512`.
    #[serde(rename = "scram-sha-512")]
    ScramSha512,
}

impl SaslMechanism {
    /// librdkafka's name for it (`sasl.mechanism`), `None` without SASL.
    pub fn librdkafka_name(self) -> Option<&'static str> {
        match self {
            Self::None => None,
            Self::Plain => Some("PLAIN"),
            Self::ScramSha256 => Some("SCRAM-SHA-256"),
            Self::ScramSha512 => Some("SCRAM-SHA-512"),
        }
    }
}

/// SASL authentication to the brokers.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct KafkaSasl {
    /// `none`, `plain`, `scram-sha-256` or `scram-sha-512`.
    pub mechanism: SaslMechanism,
    /// User name.
    pub username: String,
    /// Password (also `ESS_KAFKA__SASL__PASSWORD`).
    pub password: Secret,
    /// File holding the password (read at start; trailing newline dropped).
    pub password_file: PathBuf,
}

impl KafkaTls {
    pub(crate) fn read_secret_files(&mut self) -> Result<(), ConfigError> {
        read_secret_file(
            &mut self.key_password,
            &mut self.key_password_file,
            "kafka.tls.key_password",
        )
    }

    pub(crate) fn validate(&self) -> Result<(), ConfigError> {
        let any_file = [&self.ca_file, &self.cert_file, &self.key_file]
            .iter()
            .any(|p| !p.as_os_str().is_empty());
        if any_file && !self.enabled {
            return Err(value_error(
                "kafka.tls.enabled",
                "is false but TLS files are set; set it to true",
            ));
        }
        if self.cert_file.as_os_str().is_empty() != self.key_file.as_os_str().is_empty() {
            return Err(value_error(
                "kafka.tls.cert_file",
                "and `kafka.tls.key_file` go together: set both or neither",
            ));
        }
        check_pem_certificates(&self.ca_file, "kafka.tls.ca_file")?;
        check_pem_certificates(&self.cert_file, "kafka.tls.cert_file")?;
        check_readable(&self.key_file, "kafka.tls.key_file")?;
        Ok(())
    }
}

impl KafkaSasl {
    pub(crate) fn read_secret_files(&mut self) -> Result<(), ConfigError> {
        read_secret_file(
            &mut self.password,
            &mut self.password_file,
            "kafka.sasl.password",
        )
    }

    pub(crate) fn validate(&self) -> Result<(), ConfigError> {
        if self.mechanism == SaslMechanism::None {
            if !self.username.is_empty() {
                return Err(value_error(
                    "kafka.sasl.mechanism",
                    "is none but `kafka.sasl.username` is set; choose plain, scram-sha-256 or scram-sha-512",
                ));
            }
            return Ok(());
        }
        if self.username.is_empty() {
            return Err(value_error(
                "kafka.sasl.username",
                "must be set when `kafka.sasl.mechanism` is not none",
            ));
        }
        if self.password.is_empty() {
            return Err(value_error(
                "kafka.sasl.password",
                "must be set (or `kafka.sasl.password_file`) when `kafka.sasl.mechanism` is not none",
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use crate::config::Config;

    #[test]
    fn sasl_mechanisms_read_as_documented() {
        for (text, name) in [
            ("plain", "PLAIN"),
            ("scram-sha-256", "SCRAM-SHA-256"),
            ("scram-sha-512", "SCRAM-SHA-512"),
        ] {
            let c = Config::load_from(
                None,
                &[],
                &[
                    format!("kafka.sasl.mechanism={text}"),
                    "kafka.sasl.username=u".into(),
                    "kafka.sasl.password=p".into(),
                ],
            )
            .unwrap();
            assert_eq!(c.kafka.sasl.mechanism.librdkafka_name(), Some(name));
        }
        let err = Config::load_from(None, &[], &["kafka.sasl.mechanism=scram-sha-512".into()])
            .unwrap_err();
        assert!(err.to_string().contains("kafka.sasl.username"), "{err}");
    }

    #[test]
    fn secrets_come_from_files_and_are_masked() {
        let dir = std::env::temp_dir().join(format!("ess-secret-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("pw");
        std::fs::write(&file, "from-file\n").unwrap();
        let env = vec![(
            "ESS_KAFKA__SASL__PASSWORD".to_owned(),
            "from-env".to_owned(),
        )];
        let c = Config::load_from(
            None,
            &env,
            &[
                format!("clickhouse.password_file={}", file.display()),
                "kafka.sasl.mechanism=plain".into(),
                "kafka.sasl.username=u".into(),
            ],
        )
        .unwrap();
        assert_eq!(c.clickhouse.password.expose(), "from-file");
        assert_eq!(c.kafka.sasl.password.expose(), "from-env");
        let printed = c.to_toml();
        assert!(
            !printed.contains("from-file") && !printed.contains("from-env"),
            "{printed}"
        );
        assert!(c.to_toml_with_secrets().contains("from-file"));
        assert!(!format!("{c:?}").contains("from-env"));
        let both = Config::load_from(
            None,
            &[],
            &[
                format!("clickhouse.password_file={}", file.display()),
                "clickhouse.password=x".into(),
            ],
        )
        .unwrap_err();
        assert!(
            both.to_string().contains("clickhouse.password_file"),
            "{both}"
        );
        let missing = Config::load_from(None, &[], &["clickhouse.ca_file=/nonexistent.pem".into()])
            .unwrap_err();
        assert!(
            missing.to_string().contains("clickhouse.ca_file"),
            "{missing}"
        );
        std::fs::remove_dir_all(dir).unwrap();
    }
}
