//! `[ingest]`: the HTTP ingest server.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::{ConfigError, value_error};

/// Whether requests need an API key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum AuthMode {
    /// Every request needs a key from `ingest.api_keys`.
    #[default]
    On,
    /// No key is checked. Only when set explicitly; the server says so when it starts.
    Off,
}

/// One API key and its rate limit.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiKey {
    /// Short name, stored as the event's `source` when the event gives none.
    pub id: String,
    /// The secret sent in `Authorization: Bearer …` or `X-API-Key`.
    pub key: String,
    /// Sustained events per second (token bucket refill).
    #[serde(default = "default_rate")]
    pub rate_per_sec: u32,
    /// Burst size (token bucket capacity).
    #[serde(default = "default_burst")]
    pub burst: u32,
}

fn default_rate() -> u32 {
    100_000
}

fn default_burst() -> u32 {
    200_000
}

/// Bytes of the byte budget (`max_buffered_bytes`) one parsed event holds besides the body:
/// its parsed form, its id, its delivery handle and its share of the response.
pub const BYTES_PER_EVENT: usize = 512;

/// The ingest server.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct IngestConfig {
    /// Listen address.
    pub listen: String,
    /// API key checking.
    pub auth: AuthMode,
    /// Accepted API keys.
    pub api_keys: Vec<ApiKey>,
    /// Largest request body after decompression, in bytes.
    pub max_body_bytes: usize,
    /// Most events in one batch request.
    pub max_batch_events: usize,
    /// Largest `properties` object of one event, in bytes of JSON.
    pub max_properties_bytes: usize,
    /// Longest event `type`, in bytes.
    pub max_type_len: usize,
    /// Deepest nesting of `properties`.
    pub max_depth: usize,
    /// How long a request may wait for the broker's acknowledgement before it gets 503.
    #[serde(with = "humantime_serde")]
    pub produce_timeout: Duration,
    /// How long shutdown may take from the signal to the exit, whatever clients do: requests
    /// already handed to the producer are answered within it, then the producer is flushed.
    /// At least `produce_timeout` + 1 s.
    #[serde(with = "humantime_serde")]
    pub shutdown_timeout: Duration,
    /// Producer `linger.ms` (fractions allowed): how long a partition's events wait to be sent
    /// together. 10 ms: every produce request becomes a stored batch, and the local broker's
    /// fetches cost more with every batch a partition holds; at 0.4 ms the demo's rate fell by
    /// half over a million events, at 10 ms it held (BENCHMARKS.md, local broker). The price is
    /// latency: each 2xx waits up to that long, so a client with few connections sending one
    /// event at a time gets fewer requests/s (connections / latency); set it lower for that.
    pub linger_ms: f64,
    /// Producer compression codec (`lz4`, `zstd`, `snappy`, `gzip`, `none`).
    pub compression: String,
    /// Most messages waiting in the producer queue; beyond it requests get 503.
    pub queue_max_messages: u32,
    /// Most kilobytes waiting in the producer queue; beyond it requests get 503.
    pub queue_max_kbytes: u32,
    /// How long a client may take to send its request body before it gets 408.
    #[serde(with = "humantime_serde")]
    pub read_timeout: Duration,
    /// How long a client may take to send a request head (request line and headers), from
    /// connecting or from the first byte of a later request on the same connection; then the
    /// connection is closed (after a 408 if part of a head arrived).
    #[serde(with = "humantime_serde")]
    pub head_timeout: Duration,
    /// How long a kept-alive connection may wait for its next request before it is closed.
    #[serde(with = "humantime_serde")]
    pub idle_timeout: Duration,
    /// Most connections open at once; beyond it a new connection is answered 503 `overloaded`
    /// and closed.
    pub max_connections: usize,
    /// Most bytes of request bodies held at once over all requests: as received, decompressed,
    /// and parsed. A request that does not fit gets 503 `overloaded` (before its body is read
    /// when it declares its length). At least 2 × `max_body_bytes` + `max_batch_events` × 512,
    /// so that the largest request fits on its own.
    pub max_buffered_bytes: usize,
    /// Seconds clients are told to wait (`Retry-After`) when the broker is unavailable.
    pub retry_after_secs: u32,
    /// Extra librdkafka producer properties, applied last (e.g. `batch.size`). Numbers and
    /// booleans are taken as written.
    #[serde(deserialize_with = "super::overrides::properties")]
    pub producer: BTreeMap<String, String>,
    /// Threads serving HTTP: 0 serves on the caller's runtime; 1 on a dedicated single-threaded
    /// runtime (fewest cross-thread wake-ups); more on a dedicated multi-threaded one.
    pub workers: usize,
    /// Proxies (addresses or CIDR blocks, e.g. `"10.0.0.0/8"`, `"::1"`) whose
    /// `Forwarded` / `X-Forwarded-For` headers are believed. The client's address is the
    /// connection's peer unless the peer is one of these; then it is the right-most address
    /// in the header that is not one of these. Empty (the default): headers are ignored.
    pub trusted_proxies: Vec<String>,
    /// Store the client's address with its host part zeroed (IPv4 /24, IPv6 /48).
    pub anonymize_ip: bool,
    // The Segment-compatible door, browsers and enrichment (see `SegmentConfig` below).
    /// `[ingest.segment]`: limits of the Segment tracking API.
    pub segment: SegmentConfig,
    /// `[ingest.cors]`: which web pages may send events.
    pub cors: CorsConfig,
    /// A MaxMind-format `.mmdb` (GeoLite2 / DB-IP City or Country): when set, Segment calls get
    /// `context.location` (country, region, city) looked up from their IP
    /// (before `anonymize_ip` zeroes its host part).
    pub geoip_db: Option<std::path::PathBuf>,
}

impl Default for IngestConfig {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:8080".into(),
            auth: AuthMode::On,
            api_keys: Vec::new(),
            max_body_bytes: 8 * 1024 * 1024,
            max_batch_events: 10_000,
            max_properties_bytes: 32 * 1024,
            max_type_len: 128,
            max_depth: 32,
            produce_timeout: Duration::from_secs(5),
            shutdown_timeout: Duration::from_secs(10),
            linger_ms: 10.0,
            compression: "lz4".into(),
            queue_max_messages: 100_000,
            queue_max_kbytes: 32 * 1024,
            read_timeout: Duration::from_secs(30),
            head_timeout: Duration::from_secs(5),
            idle_timeout: Duration::from_secs(75),
            max_connections: 4096,
            max_buffered_bytes: 128 * 1024 * 1024,
            retry_after_secs: 1,
            producer: BTreeMap::new(),
            workers: 1,
            trusted_proxies: Vec::new(),
            anonymize_ip: false,
            segment: SegmentConfig::default(),
            cors: CorsConfig::default(),
            geoip_db: None,
        }
    }
}

impl IngestConfig {
    /// What the ingest server needs beyond [`IngestConfig::validate`]: with auth on, at least
    /// one key (other subcommands load the same config and need none).
    pub fn require_keys(&self) -> Result<(), ConfigError> {
        if self.auth == AuthMode::On && self.api_keys.is_empty() {
            return Err(value_error(
                "ingest.api_keys",
                "is empty while ingest.auth = \"on\": add a key or set ingest.auth = \"off\"",
            ));
        }
        Ok(())
    }

    pub(crate) fn validate(&self) -> Result<(), ConfigError> {
        for (i, k) in self.api_keys.iter().enumerate() {
            if k.key.len() < 16 {
                return Err(value_error(
                    &format!("ingest.api_keys[{i}].key"),
                    "must be at least 16 characters",
                ));
            }
            if k.rate_per_sec == 0 || k.burst == 0 {
                return Err(value_error(
                    &format!("ingest.api_keys[{i}].rate_per_sec"),
                    "rate_per_sec and burst must be positive",
                ));
            }
        }
        for (i, proxy) in self.trusted_proxies.iter().enumerate() {
            if parse_cidr(proxy).is_none() {
                return Err(value_error(
                    &format!("ingest.trusted_proxies[{i}]"),
                    "must be an IP address or a CIDR block such as 10.0.0.0/8 or fd00::/8",
                ));
            }
        }
        if self.max_body_bytes == 0 {
            return Err(value_error("ingest.max_body_bytes", "must be at least 1"));
        }
        if self.max_type_len == 0 {
            return Err(value_error("ingest.max_type_len", "must be at least 1"));
        }
        if !(1..=100).contains(&self.max_depth) {
            return Err(value_error("ingest.max_depth", "must be between 1 and 100"));
        }
        if self.max_properties_bytes < 2 || self.max_properties_bytes > 900_000 {
            return Err(value_error(
                "ingest.max_properties_bytes",
                "must be between 2 and 900000 (one event must fit in a Kafka message)",
            ));
        }
        if self.produce_timeout < Duration::from_millis(100) {
            return Err(value_error(
                "ingest.produce_timeout",
                "must be at least 100ms",
            ));
        }
        if self.queue_max_messages == 0 || self.queue_max_kbytes == 0 {
            return Err(value_error(
                "ingest.queue_max_messages",
                "queue_max_messages and queue_max_kbytes must be positive",
            ));
        }
        if !(0.0..=900_000.0).contains(&self.linger_ms) {
            return Err(value_error(
                "ingest.linger_ms",
                "must be between 0 and 900000 (milliseconds)",
            ));
        }
        if self.max_batch_events == 0 {
            return Err(value_error("ingest.max_batch_events", "must be at least 1"));
        }
        self.validate_connections()?;
        self.validate_front()?;
        if !["lz4", "zstd", "snappy", "gzip", "none"].contains(&self.compression.as_str()) {
            return Err(value_error(
                "ingest.compression",
                "must be one of lz4, zstd, snappy, gzip, none",
            ));
        }
        Ok(())
    }

    /// The keys that bound connections, memory and shutdown.
    fn validate_connections(&self) -> Result<(), ConfigError> {
        for (key, value) in [
            ("ingest.read_timeout", self.read_timeout),
            ("ingest.head_timeout", self.head_timeout),
            ("ingest.idle_timeout", self.idle_timeout),
        ] {
            if value < Duration::from_millis(10) {
                return Err(value_error(key, "must be at least 10ms"));
            }
        }
        if self.shutdown_timeout < self.produce_timeout + Duration::from_secs(1) {
            return Err(value_error(
                "ingest.shutdown_timeout",
                "must be at least ingest.produce_timeout + 1s, so that requests already handed \
                 to the producer can be answered",
            ));
        }
        if self.max_connections == 0 {
            return Err(value_error("ingest.max_connections", "must be at least 1"));
        }
        let largest = self
            .max_body_bytes
            .saturating_mul(2)
            .saturating_add(self.max_batch_events.saturating_mul(BYTES_PER_EVENT));
        if self.max_buffered_bytes < largest {
            return Err(value_error(
                "ingest.max_buffered_bytes",
                format!(
                    "must be at least 2 × ingest.max_body_bytes + ingest.max_batch_events × \
                     {BYTES_PER_EVENT} = {largest}, so that the largest request fits"
                ),
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use crate::config::Config;

    fn refused(set: &[&str]) -> String {
        let sets: Vec<String> = set.iter().map(|s| (*s).to_owned()).collect();
        Config::load_from(None, &[], &sets)
            .expect_err("refused")
            .to_string()
    }

    #[test]
    fn connection_limits_are_validated_naming_the_key() {
        assert!(Config::load_from(None, &[], &[]).is_ok());
        for key in ["head_timeout", "idle_timeout", "read_timeout"] {
            let err = refused(&[&format!("ingest.{key}=\"0s\"")]);
            assert!(err.contains(&format!("ingest.{key}")), "{err}");
        }
        let err = refused(&["ingest.max_connections=0"]);
        assert!(err.contains("ingest.max_connections"), "{err}");
        let err = refused(&["ingest.shutdown_timeout=\"5s\""]);
        assert!(err.contains("ingest.shutdown_timeout"), "{err}");
        let err = refused(&["ingest.max_buffered_bytes=1000000"]);
        assert!(err.contains("ingest.max_buffered_bytes"), "{err}");
        // The largest request exactly fits.
        let fits = 2 * 1000 + 10 * super::BYTES_PER_EVENT;
        let sets = [
            "ingest.max_body_bytes=1000".to_owned(),
            "ingest.max_batch_events=10".to_owned(),
            format!("ingest.max_buffered_bytes={fits}"),
        ];
        assert!(Config::load_from(None, &[], &sets).is_ok());
        let sets = [
            "ingest.max_body_bytes=1000".to_owned(),
            "ingest.max_batch_events=10".to_owned(),
            format!("ingest.max_buffered_bytes={}", fits - 1),
        ];
        assert!(Config::load_from(None, &[], &sets).is_err());
    }
}

/// Reads `"10.0.0.0/8"`, `"fd00::/8"` or a bare address (a block of one): the address and
/// the prefix length; `None` when malformed.
pub fn parse_cidr(text: &str) -> Option<(std::net::IpAddr, u8)> {
    let (addr, prefix) = match text.trim().split_once('/') {
        Some((addr, prefix)) => (addr, Some(prefix)),
        None => (text.trim(), None),
    };
    let addr: std::net::IpAddr = addr.parse().ok()?;
    let max = if addr.is_ipv4() { 32 } else { 128 };
    let prefix = match prefix {
        Some(p) => p.parse::<u8>().ok().filter(|&p| p <= max)?,
        None => max,
    };
    Some((addr, prefix))
}

// ---- The Segment-compatible door, browsers and enrichment ----

/// `[ingest.segment]`: the Segment tracking API's limits (Segment's own by default).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SegmentConfig {
    /// Largest call, in bytes of JSON (Segment: 32 KB).
    pub max_event_bytes: usize,
    /// Largest batch request, in bytes of JSON (Segment: 500 KB).
    pub max_batch_bytes: usize,
}

impl Default for SegmentConfig {
    fn default() -> Self {
        Self {
            max_event_bytes: 32 * 1024,
            max_batch_bytes: 500 * 1024,
        }
    }
}

/// `[ingest.cors]`: web pages allowed to send events to the Segment tracking routes.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CorsConfig {
    /// Exact origins (`https://shop.example.com`, scheme + host + port) whose pages may send
    /// events; empty refuses every page. A request with an `Origin` from elsewhere gets 403.
    pub allowed_origins: Vec<String>,
    /// Ids of browser keys (from `ingest.api_keys`), the ones published in web pages: accepted
    /// only from a page of an allowed origin, only on the Segment tracking routes. Every other
    /// key is refused from a page, so a server key pasted into a page stops working.
    pub public_keys: Vec<String>,
    /// How long browsers may cache a preflight answer.
    #[serde(with = "humantime_serde")]
    pub max_age: Duration,
}

impl Default for CorsConfig {
    fn default() -> Self {
        Self {
            allowed_origins: Vec::new(),
            public_keys: Vec::new(),
            max_age: Duration::from_secs(600),
        }
    }
}

impl IngestConfig {
    fn validate_front(&self) -> Result<(), ConfigError> {
        if self.segment.max_event_bytes < 2 || self.segment.max_event_bytes > 900_000 {
            return Err(value_error(
                "ingest.segment.max_event_bytes",
                "must be between 2 and 900000 (one event must fit in a Kafka message)",
            ));
        }
        if self.segment.max_batch_bytes < self.segment.max_event_bytes {
            return Err(value_error(
                "ingest.segment.max_batch_bytes",
                "must be at least ingest.segment.max_event_bytes",
            ));
        }
        for (i, origin) in self.cors.allowed_origins.iter().enumerate() {
            let ok = (origin.starts_with("http://") || origin.starts_with("https://"))
                && !origin.ends_with('/')
                && origin
                    .split("://")
                    .nth(1)
                    .is_some_and(|rest| !rest.is_empty() && !rest.contains('/'));
            if !ok {
                return Err(value_error(
                    &format!("ingest.cors.allowed_origins[{i}]"),
                    "must be an origin like https://shop.example.com (scheme, host, optional port; no path)",
                ));
            }
        }
        for (i, id) in self.cors.public_keys.iter().enumerate() {
            if !self.api_keys.iter().any(|k| &k.id == id) {
                return Err(value_error(
                    &format!("ingest.cors.public_keys[{i}]"),
                    format!("names no key of ingest.api_keys (no id {id:?})"),
                ));
            }
        }
        if let Some(path) = &self.geoip_db
            && !path.is_file()
        {
            return Err(value_error(
                "ingest.geoip_db",
                format!("{} is not a readable file", path.display()),
            ));
        }
        Ok(())
    }
}
