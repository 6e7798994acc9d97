//! GeoIP (`ingest.geoip_db`, a MaxMind-format `.mmdb` such as GeoLite2-City or DB-IP City
//! Lite): the client address's place, looked up before `ingest.anonymize_ip` zeroes its host part.
//!
//! A lookup gives the Segment spec's `context.location` fields: `country`, `region` (the first
//! subdivision), `city`, `latitude`, `longitude`, all in English, each only when the database
//! has it. Addresses the database does not cover, and private ones, give nothing.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::Path;

use serde::Deserialize;
use serde_json::{Map, Value};

/// An opened GeoIP database.
pub struct GeoIp {
    reader: maxminddb::Reader<Vec<u8>>,
}

impl std::fmt::Debug for GeoIp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GeoIp")
            .field("database_type", &self.reader.metadata.database_type)
            .finish_non_exhaustive()
    }
}

/// What a City or Country database holds that ess reads.
#[derive(Deserialize)]
struct Record<'a> {
    #[serde(borrow, default)]
    country: Option<Place<'a>>,
    #[serde(borrow, default)]
    subdivisions: Option<Vec<Place<'a>>>,
    #[serde(borrow, default)]
    city: Option<Place<'a>>,
    #[serde(default)]
    location: Option<Coordinates>,
}

#[derive(Deserialize)]
struct Place<'a> {
    #[serde(borrow, default)]
    names: Option<BTreeMap<&'a str, &'a str>>,
}

#[derive(Deserialize)]
struct Coordinates {
    #[serde(default)]
    latitude: Option<f64>,
    #[serde(default)]
    longitude: Option<f64>,
}

impl Place<'_> {
    fn english(&self) -> Option<String> {
        self.names
            .as_ref()
            .and_then(|n| n.get("en"))
            .map(|s| (*s).to_owned())
    }
}

impl GeoIp {
    /// Opens the database at `path` (read into memory once).
    pub fn open(path: &Path) -> Result<Self, String> {
        let reader = maxminddb::Reader::open_readfile(path)
            .map_err(|e| format!("ingest.geoip_db: cannot open {}: {e}", path.display()))?;
        Ok(Self { reader })
    }

    /// The `context.location` object for `ip`, or `None` when the database knows nothing of it.
    pub fn location(&self, ip: IpAddr) -> Option<Map<String, Value>> {
        let record: Record<'_> = match self.reader.lookup(ip) {
            Ok(Some(record)) => record,
            Ok(None) => return None,
            Err(e) => {
                tracing::debug!(%ip, error = %e, "GeoIP lookup failed");
                return None;
            }
        };
        let mut out = Map::new();
        let mut put = |key: &str, value: Option<String>| {
            if let Some(v) = value {
                out.insert(key.to_owned(), Value::String(v));
            }
        };
        put("country", record.country.as_ref().and_then(Place::english));
        put(
            "region",
            record
                .subdivisions
                .as_ref()
                .and_then(|s| s.first())
                .and_then(Place::english),
        );
        put("city", record.city.as_ref().and_then(Place::english));
        if let Some(at) = record.location {
            for (key, value) in [("latitude", at.latitude), ("longitude", at.longitude)] {
                if let Some(n) = value.and_then(serde_json::Number::from_f64) {
                    out.insert(key.to_owned(), Value::Number(n));
                }
            }
        }
        (!out.is_empty()).then_some(out)
    }
}
