//! RowBinary encoding of [`ess_core::schema::EventRow`] straight from a borrowed
//! [`WireEvent`], and decoding back (for dead-lettering a row ClickHouse refused).
//!
//! The byte layout is the same on every server flavor: `UInt64` milliseconds (18.16) and
//! `DateTime64(3)` (current) are both eight little-endian bytes, `LowCardinality(String)` and
//! `String` are both a LEB128 length followed by the bytes, and a `UUID` is its two big-endian
//! halves each written as a little-endian `UInt64`.
//!
//! `properties` is always sent as JSON text. A `JSON` column (`clickhouse.properties =
//! "json"`) takes it with the insert setting of [`insert_settings`]; without it the server
//! would read the bytes as its binary JSON encoding and refuse the block.

use ess_core::config::Properties;
use ess_core::schema::{EventRow, JSON_AS_STRING_SETTING};
use ess_core::wire::{Millis, WireEvent};
use serde_json::value::RawValue;
use uuid::Uuid;

/// The column list every insert names, in [`EventRow`] order.
pub const COLUMNS: &str = ess_core::schema::COLUMN_NAMES;

/// The settings an insert of rows encoded here needs for a `properties` column of type
/// `properties`: none for `String` (what 18.16 gets: unchanged), and for `JSON` the one that
/// reads the column's RowBinary value as JSON text.
pub fn insert_settings(properties: Properties) -> &'static [(&'static str, &'static str)] {
    match properties {
        Properties::String => &[],
        Properties::Json => &[(JSON_AS_STRING_SETTING, "1")],
    }
}

/// One row's fields, borrowed from wherever they are: the one place that knows the byte layout
/// of [`ess_core::schema::COLUMNS`].
struct RowRef<'a> {
    id: Uuid,
    kind: &'a str,
    source: &'a str,
    user_id: &'a str,
    anonymous_id: &'a str,
    ip: &'a str,
    user_agent: &'a str,
    context: &'a str,
    event_time: i64,
    ingest_time: i64,
    store_time: i64,
    properties: &'a str,
    kafka_partition: i32,
    kafka_offset: i64,
}

impl RowRef<'_> {
    /// Appends the row; returns where in `out` its `store_time` starts.
    fn put(&self, out: &mut Vec<u8>) -> usize {
        put_uuid(out, self.id);
        for s in [
            self.kind,
            self.source,
            self.user_id,
            self.anonymous_id,
            self.ip,
            self.user_agent,
            self.context,
        ] {
            put_str(out, s);
        }
        out.extend_from_slice(&self.event_time.to_le_bytes());
        out.extend_from_slice(&self.ingest_time.to_le_bytes());
        let store_at = out.len();
        out.extend_from_slice(&self.store_time.to_le_bytes());
        put_str(out, self.properties);
        out.extend_from_slice(&self.kafka_partition.to_le_bytes());
        out.extend_from_slice(&self.kafka_offset.to_le_bytes());
        store_at
    }
}

/// Appends one row to `out`; returns the position in `out` of the row's eight `store_time`
/// bytes (to stamp later).
pub fn encode_row(
    out: &mut Vec<u8>,
    event: &WireEvent<'_>,
    store_time: i64,
    partition: i32,
    offset: i64,
) -> usize {
    RowRef {
        id: event.id,
        kind: &event.kind,
        source: &event.source,
        user_id: &event.user_id,
        anonymous_id: &event.anonymous_id,
        ip: &event.ip,
        user_agent: &event.user_agent,
        context: event.context.get(),
        event_time: event.timestamp.0,
        ingest_time: event.ingest_time.0,
        store_time,
        properties: event.properties.get(),
        kafka_partition: partition,
        kafka_offset: offset,
    }
    .put(out)
}

/// Appends an [`EventRow`] (tests and tools).
pub fn encode_event_row(out: &mut Vec<u8>, row: &EventRow) {
    RowRef {
        id: row.id,
        kind: &row.kind,
        source: &row.source,
        user_id: &row.user_id,
        anonymous_id: &row.anonymous_id,
        ip: &row.ip,
        user_agent: &row.user_agent,
        context: &row.context,
        event_time: row.event_time,
        ingest_time: row.ingest_time,
        store_time: row.store_time,
        properties: &row.properties,
        kafka_partition: row.kafka_partition,
        kafka_offset: row.kafka_offset,
    }
    .put(out);
}

fn put_uuid(out: &mut Vec<u8>, id: Uuid) {
    let (high, low) = id.as_u64_pair();
    out.extend_from_slice(&high.to_le_bytes());
    out.extend_from_slice(&low.to_le_bytes());
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    let mut len = s.len() as u64;
    loop {
        let byte = (len & 0x7f) as u8;
        len >>= 7;
        if len == 0 {
            out.push(byte);
            break;
        }
        out.push(byte | 0x80);
    }
    out.extend_from_slice(s.as_bytes());
}

/// Reads one row encoded by [`encode_row`]; `None` when the bytes are not one whole row.
pub fn decode_row(mut bytes: &[u8]) -> Option<EventRow> {
    let b = &mut bytes;
    let row = EventRow {
        id: take_uuid(b)?,
        kind: take_str(b)?,
        source: take_str(b)?,
        user_id: take_str(b)?,
        anonymous_id: take_str(b)?,
        ip: take_str(b)?,
        user_agent: take_str(b)?,
        context: take_str(b)?,
        event_time: take_u64(b)? as i64,
        ingest_time: take_u64(b)? as i64,
        store_time: take_u64(b)? as i64,
        properties: take_str(b)?,
        kafka_partition: i32::from_le_bytes(take(b)?),
        kafka_offset: take_u64(b)? as i64,
    };
    bytes.is_empty().then_some(row)
}

/// The canonical Kafka message for a stored row (what a dead letter carries when ClickHouse
/// refused the row rather than the sink refusing the message).
pub fn row_to_wire_json(row: &EventRow) -> Vec<u8> {
    let raw = |text: &str| {
        RawValue::from_string(text.to_owned())
            .unwrap_or_else(|_| RawValue::from_string("null".into()).unwrap_or_default())
    };
    let (properties, context) = (raw(&row.properties), raw(&row.context));
    WireEvent {
        id: row.id,
        kind: row.kind.as_str().into(),
        source: row.source.as_str().into(),
        timestamp: Millis(row.event_time),
        ingest_time: Millis(row.ingest_time),
        properties: &properties,
        user_id: row.user_id.as_str().into(),
        anonymous_id: row.anonymous_id.as_str().into(),
        context: &context,
        ip: row.ip.as_str().into(),
        user_agent: row.user_agent.as_str().into(),
    }
    .to_json()
}

fn take<const N: usize>(bytes: &mut &[u8]) -> Option<[u8; N]> {
    let head: [u8; N] = bytes.get(..N)?.try_into().ok()?;
    *bytes = &bytes[N..];
    Some(head)
}

fn take_uuid(bytes: &mut &[u8]) -> Option<Uuid> {
    let high = take_u64(bytes)?;
    let low = take_u64(bytes)?;
    Some(Uuid::from_u64_pair(high, low))
}

fn take_u64(bytes: &mut &[u8]) -> Option<u64> {
    take(bytes).map(u64::from_le_bytes)
}

fn take_str(bytes: &mut &[u8]) -> Option<String> {
    let mut len = 0u64;
    let mut shift = 0;
    loop {
        let (&byte, rest) = bytes.split_first()?;
        *bytes = rest;
        len |= u64::from(byte & 0x7f) << shift;
        if byte & 0x80 == 0 {
            break;
        }
        shift += 7;
        if shift > 63 {
            return None;
        }
    }
    let len = usize::try_from(len).ok()?;
    let text = std::str::from_utf8(bytes.get(..len)?).ok()?.to_owned();
    *bytes = &bytes[len..];
    Some(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_row_round_trips_through_rowbinary() {
        let json = r#"{"id":"0192f3a4-5b6c-7d8e-9fa0-b1c2d3e4f5a6","type":"page_view","source":"web","timestamp":"2026-11-24T08:00:00.123Z","ingest_time":"2026-11-24T08:00:00.125Z","properties":{"path":"/ü","s":"x"},"user_id":"ü-1","anonymous_id":"","context":{"page":"/ü"},"ip":"203.0.113.9","user_agent":"UA 🦀"}"#;
        let event = WireEvent::from_json(json.as_bytes()).unwrap();
        let mut out = Vec::new();
        let stamp = encode_row(&mut out, &event, 1_764_000_000_999, 3, 42);
        assert_eq!(out[stamp..stamp + 8], 1_764_000_000_999i64.to_le_bytes());
        let row = decode_row(&out).unwrap();
        assert_eq!(
            (
                &*row.user_id,
                &*row.anonymous_id,
                &*row.ip,
                &*row.user_agent
            ),
            ("ü-1", "", "203.0.113.9", "UA 🦀")
        );
        assert_eq!(row.context, r#"{"page":"/ü"}"#);
        assert_eq!(row.id, event.id);
        assert_eq!(row.kind, "page_view");
        assert_eq!(row.event_time, event.timestamp.0);
        assert_eq!(row.ingest_time, event.ingest_time.0);
        assert_eq!(row.store_time, 1_764_000_000_999);
        assert_eq!(row.properties, r#"{"path":"/ü","s":"x"}"#);
        assert_eq!((row.kafka_partition, row.kafka_offset), (3, 42));
        let mut again = Vec::new();
        encode_event_row(&mut again, &row);
        assert_eq!(again, out, "both encoders agree");
        let back = row_to_wire_json(&row);
        let wire = WireEvent::from_json(&back).unwrap();
        assert_eq!(wire.id, event.id);
        assert_eq!(wire.properties.get(), event.properties.get());
        assert_eq!(wire.context.get(), event.context.get());
        assert_eq!(wire.user_agent, event.user_agent);
    }

    #[test]
    fn uuid_halves_are_little_endian() {
        let id = Uuid::parse_str("00112233-4455-6677-8899-aabbccddeeff").unwrap();
        let mut out = Vec::new();
        put_uuid(&mut out, id);
        assert_eq!(
            out,
            [
                0x77, 0x66, 0x55, 0x44, 0x33, 0x22, 0x11, 0x00, 0xff, 0xee, 0xdd, 0xcc, 0xbb, 0xaa,
                0x99, 0x88
            ]
        );
    }

    #[test]
    fn long_strings_use_multi_byte_lengths() {
        let s = "x".repeat(300);
        let mut out = Vec::new();
        put_str(&mut out, &s);
        assert_eq!(&out[..2], &[0xac, 0x02]);
        let mut slice = &out[..];
        assert_eq!(take_str(&mut slice).unwrap(), s);
        assert!(decode_row(&out[..5]).is_none());
    }
}
