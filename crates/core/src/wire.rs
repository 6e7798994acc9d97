//! The canonical event: what ingest writes to Kafka and what the sink reads back.
//!
//! One Kafka message holds one event as compact JSON, keyed by the event id:
//!
//! ```json
//! {"id":"0192…","type":"page_view","source":"web","timestamp":"2026-11-24T08:00:00.123Z",
//!  "ingest_time":"2026-11-24T08:00:00.125Z","properties":{"path":"/"},
//!  "user_id":"u-42","anonymous_id":"a-7","context":{"page":{"path":"/"}},
//!  "ip":"203.0.113.9","user_agent":"Mozilla/5.0 …"}
//! ```
//!
//! Identity (`user_id`, `anonymous_id`), `context` and the request context (`ip`,
//! `user_agent`) may be missing when reading (messages written before they existed still
//! decode: empty strings, `{}`), and are left out when writing while empty.
//!
//! Timestamps are UTC RFC 3339 with exactly three fractional digits, so any consumer of the
//! topic can read them and none loses precision.

use std::borrow::Cow;
use std::fmt;

use serde::de::{self, Deserializer, Visitor};
use serde::{Deserialize, Serialize, Serializer};
use serde_json::value::RawValue;
use time::format_description::well_known::Rfc3339;
use time::{OffsetDateTime, UtcOffset};
use uuid::Uuid;

/// A point in time as whole milliseconds since the Unix epoch (UTC).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Millis(pub i64);

/// Why a timestamp could not be read.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TimestampError {
    /// Not RFC 3339.
    #[error("not an RFC 3339 date-time: {0}")]
    Format(String),
    /// Outside what the pipeline stores (years 1970 to 9999).
    #[error("out of range: {0}")]
    Range(String),
}

impl Millis {
    /// The current time, truncated to the millisecond.
    pub fn now() -> Self {
        let nanos = OffsetDateTime::now_utc().unix_timestamp_nanos();
        Self((nanos / 1_000_000) as i64)
    }

    /// Parses RFC 3339 with any offset and any fractional precision; sub-millisecond digits are
    /// truncated (floor).
    pub fn parse_rfc3339(text: &str) -> Result<Self, TimestampError> {
        let parsed = OffsetDateTime::parse(text, &Rfc3339)
            .map_err(|e| TimestampError::Format(format!("{text:?}: {e}")))?;
        let ms = parsed.unix_timestamp_nanos().div_euclid(1_000_000);
        Self::from_epoch_ms(ms as i64)
    }

    /// Accepts epoch milliseconds within the stored range.
    pub fn from_epoch_ms(ms: i64) -> Result<Self, TimestampError> {
        // 253402300799999 = 9999-12-31T23:59:59.999Z
        if (0..=253_402_300_799_999).contains(&ms) {
            Ok(Self(ms))
        } else {
            Err(TimestampError::Range(format!(
                "{ms} ms is outside 1970-01-01..9999-12-31"
            )))
        }
    }

    /// UTC RFC 3339 with exactly three fractional digits, e.g. `2026-11-24T08:00:00.123Z`.
    pub fn to_rfc3339(self) -> String {
        let mut out = String::with_capacity(24);
        self.write_rfc3339(&mut out);
        out
    }

    fn write_rfc3339(self, out: &mut String) {
        use fmt::Write as _;
        let dt = OffsetDateTime::from_unix_timestamp_nanos(i128::from(self.0) * 1_000_000)
            .unwrap_or(OffsetDateTime::UNIX_EPOCH)
            .to_offset(UtcOffset::UTC);
        let _ = write!(
            out,
            "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:03}Z",
            dt.year(),
            u8::from(dt.month()),
            dt.day(),
            dt.hour(),
            dt.minute(),
            dt.second(),
            dt.millisecond()
        );
    }
}

impl fmt::Display for Millis {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_rfc3339())
    }
}

impl Serialize for Millis {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut out = String::with_capacity(24);
        self.write_rfc3339(&mut out);
        serializer.serialize_str(&out)
    }
}

impl<'de> Deserialize<'de> for Millis {
    /// Reads the canonical RFC 3339 string, or epoch milliseconds as an integer.
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct MillisVisitor;
        impl Visitor<'_> for MillisVisitor {
            type Value = Millis;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an RFC 3339 date-time string or epoch milliseconds")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Millis, E> {
                Millis::parse_rfc3339(v).map_err(E::custom)
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Millis, E> {
                Millis::from_epoch_ms(v).map_err(E::custom)
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Millis, E> {
                let v = i64::try_from(v).map_err(|_| E::custom("epoch milliseconds too large"))?;
                Millis::from_epoch_ms(v).map_err(E::custom)
            }
        }
        deserializer.deserialize_any(MillisVisitor)
    }
}

/// The canonical event, borrowed from a Kafka message or built by ingest.
///
/// Build one with the fields you know and `..WireEvent::default()` for the rest.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WireEvent<'a> {
    /// Unique event id; the Kafka key and, with `source`, the ClickHouse dedup key.
    pub id: Uuid,
    /// Event type, e.g. `page_view`.
    #[serde(rename = "type", borrow)]
    pub kind: Cow<'a, str>,
    /// Who sent it (the API key id, or what the client said); empty when unknown.
    #[serde(default, borrow)]
    pub source: Cow<'a, str>,
    /// When the event happened, by the client's clock (ingest time when the client gave none).
    pub timestamp: Millis,
    /// When ingest accepted it.
    pub ingest_time: Millis,
    /// The event's properties: a JSON object, kept as the client's text.
    #[serde(borrow)]
    pub properties: &'a RawValue,
    /// The known user the event is about; empty when anonymous.
    #[serde(default, borrow, skip_serializing_if = "str::is_empty")]
    pub user_id: Cow<'a, str>,
    /// The device or browser's id before (or without) a known user; empty when absent.
    #[serde(default, borrow, skip_serializing_if = "str::is_empty")]
    pub anonymous_id: Cow<'a, str>,
    /// What the client sent as context (page, app, device, campaign…): a JSON object kept as
    /// the client's text; `{}` when absent.
    #[serde(
        default = "empty_object",
        borrow,
        skip_serializing_if = "is_empty_object"
    )]
    pub context: &'a RawValue,
    /// The client's address as ingest determined it (after the trusted-proxy rule and any
    /// anonymisation); empty when unknown.
    #[serde(default, borrow, skip_serializing_if = "str::is_empty")]
    pub ip: Cow<'a, str>,
    /// The request's `User-Agent`; empty when absent.
    #[serde(default, borrow, skip_serializing_if = "str::is_empty")]
    pub user_agent: Cow<'a, str>,
}

/// The JSON object `{}`, borrowed for as long as anyone wants.
pub fn empty_object<'a>() -> &'a RawValue {
    static EMPTY: std::sync::LazyLock<&'static RawValue> = std::sync::LazyLock::new(|| {
        // `{}` is valid JSON; the fallback is never taken.
        serde_json::from_str::<&'static RawValue>("{}").unwrap_or(RawValue::NULL)
    });
    *EMPTY
}

fn is_empty_object(value: &&RawValue) -> bool {
    value.get() == "{}"
}

impl Default for WireEvent<'_> {
    /// The nil id, empty strings, time 0 and `{}` properties and context.
    fn default() -> Self {
        Self {
            id: Uuid::nil(),
            kind: Cow::Borrowed(""),
            source: Cow::Borrowed(""),
            timestamp: Millis(0),
            ingest_time: Millis(0),
            properties: empty_object(),
            user_id: Cow::Borrowed(""),
            anonymous_id: Cow::Borrowed(""),
            context: empty_object(),
            ip: Cow::Borrowed(""),
            user_agent: Cow::Borrowed(""),
        }
    }
}

impl WireEvent<'_> {
    /// Compact JSON, the Kafka message value.
    pub fn to_json(&self) -> Vec<u8> {
        // Serialising these field types cannot fail: no maps with non-string keys, no floats.
        serde_json::to_vec(self).unwrap_or_default()
    }
}

impl<'a> WireEvent<'a> {
    /// Reads a Kafka message value.
    pub fn from_json(bytes: &'a [u8]) -> Result<Self, serde_json::Error> {
        serde_json::from_slice(bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_round_trip_keeps_milliseconds() {
        for text in [
            "1970-01-01T00:00:00.000Z",
            "2026-11-24T08:00:00.123Z",
            "2024-02-29T23:59:59.999Z",
            "9999-12-31T23:59:59.999Z",
        ] {
            let ms = Millis::parse_rfc3339(text).unwrap();
            assert_eq!(ms.to_rfc3339(), text);
        }
    }

    #[test]
    fn offsets_and_extra_digits_are_normalised_to_utc_ms() {
        let ms = Millis::parse_rfc3339("2026-11-24T10:00:00.123987+02:00").unwrap();
        assert_eq!(ms.to_rfc3339(), "2026-11-24T08:00:00.123Z");
        let whole = Millis::parse_rfc3339("2026-11-24T08:00:00Z").unwrap();
        assert_eq!(whole.0 % 1000, 0);
    }

    #[test]
    fn bad_timestamps_are_refused() {
        assert!(Millis::parse_rfc3339("2026-11-24 08:00:00").is_err());
        assert!(Millis::parse_rfc3339("yesterday").is_err());
        assert!(Millis::parse_rfc3339("1969-12-31T23:59:59.999Z").is_err());
        assert!(Millis::from_epoch_ms(-1).is_err());
    }

    #[test]
    fn wire_event_round_trip() {
        let props = RawValue::from_string(r#"{"a":"é","n":[1,2]}"#.to_owned()).unwrap();
        let event = WireEvent {
            id: Uuid::new_v4(),
            kind: "page_view".into(),
            source: "web".into(),
            timestamp: Millis(1_764_000_000_123),
            ingest_time: Millis(1_764_000_000_456),
            properties: &props,
            ..WireEvent::default()
        };
        let bytes = event.to_json();
        let back = WireEvent::from_json(&bytes).unwrap();
        assert_eq!(back.id, event.id);
        assert_eq!(back.kind, "page_view");
        assert_eq!(back.timestamp, event.timestamp);
        assert_eq!(back.ingest_time, event.ingest_time);
        assert_eq!(back.properties.get(), r#"{"a":"é","n":[1,2]}"#);
        assert_eq!(back.context.get(), "{}");
        assert!(back.user_id.is_empty() && back.ip.is_empty());
        let text = String::from_utf8(bytes).unwrap();
        assert!(
            !text.contains("user_id") && !text.contains("context"),
            "{text}"
        );
    }

    #[test]
    fn identity_and_context_round_trip() {
        let props = RawValue::from_string("{}".to_owned()).unwrap();
        let context =
            RawValue::from_string(r#"{"page":{"title":"Grüße \"x\""}}"#.to_owned()).unwrap();
        let event = WireEvent {
            id: Uuid::new_v4(),
            kind: "signup".into(),
            timestamp: Millis(1),
            ingest_time: Millis(2),
            properties: &props,
            user_id: "użytkownik-7 \"q\"".into(),
            anonymous_id: "anon-🦀".into(),
            context: &context,
            ip: "2001:db8::1".into(),
            user_agent: "curl/8.0".into(),
            ..WireEvent::default()
        };
        let bytes = event.to_json();
        let text = std::str::from_utf8(&bytes).unwrap();
        for key in [
            "\"user_id\"",
            "\"anonymous_id\"",
            "\"context\"",
            "\"ip\"",
            "\"user_agent\"",
        ] {
            assert!(text.contains(key), "{key} in {text}");
        }
        let back = WireEvent::from_json(&bytes).unwrap();
        assert_eq!(back.user_id, event.user_id);
        assert_eq!(back.anonymous_id, "anon-🦀");
        assert_eq!(back.context.get(), context.get());
        assert_eq!(back.ip, "2001:db8::1");
        assert_eq!(back.user_agent, "curl/8.0");
    }

    #[test]
    fn messages_without_the_new_fields_still_decode() {
        let old = r#"{"id":"0192f3a4-5b6c-7d8e-9fa0-b1c2d3e4f5a6","type":"t","source":"s","timestamp":"2026-11-24T08:00:00.123Z","ingest_time":"2026-11-24T08:00:00.125Z","properties":{}}"#;
        let event = WireEvent::from_json(old.as_bytes()).unwrap();
        assert_eq!(event.context.get(), "{}");
        assert_eq!(
            (
                &*event.user_id,
                &*event.anonymous_id,
                &*event.ip,
                &*event.user_agent
            ),
            ("", "", "", "")
        );
    }
}
