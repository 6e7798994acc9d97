//! Reading and validating events from a request body.
//!
//! The body is valid UTF-8 JSON: one event object, an array of them, or one object per line
//! (NDJSON). Each event is read in one pass with borrowed strings; `properties` stays the
//! client's text ([`RawValue`]) and is walked once more to refuse duplicate keys and nesting
//! deeper than the limit, which serde_json alone would let through.
//!
//! Top-level keys other than `id`, `type`, `timestamp`, `properties`, `source`, `user_id`,
//! `anonymous_id` and `context` are refused (`unknown_field`), so a misspelt field never
//! disappears silently. `user_id` and `anonymous_id` follow the rules of `type` and `source`
//! except that empty means absent; `context` follows those of `properties` (an object, within
//! the same size and depth limits, without duplicate keys).
//!
//! The serde seeds that do the reading are in `seeds`; this module holds the event, the
//! limits, the refusals and the checks.

mod seeds;

use std::borrow::Cow;
use std::cell::Cell;

use ess_core::wire::Millis;
use serde::de::{DeserializeSeed, IgnoredAny};
use serde_json::value::RawValue;
use uuid::Uuid;

use seeds::{ArraySeed, EventSeed, TOO_MANY, Walk};

/// What the validator enforces.
#[derive(Debug, Clone, Copy)]
pub struct EventLimits {
    /// Longest `type` and `source`, in bytes.
    pub max_type_len: usize,
    /// Largest `properties`, in bytes of JSON text.
    pub max_properties_bytes: usize,
    /// Deepest nesting of `properties` (the object itself is depth 1).
    pub max_depth: usize,
    /// Most events in one batch.
    pub max_batch_events: usize,
}

/// One validated event, borrowing from the request body.
#[derive(Debug)]
pub struct Event<'a> {
    /// The client's id, or `None` when the server must make one.
    pub id: Option<Uuid>,
    /// Event type.
    pub kind: Cow<'a, str>,
    /// The client's `source`, if given.
    pub source: Option<Cow<'a, str>>,
    /// The client's timestamp, if given.
    pub timestamp: Option<Millis>,
    /// The properties object as the client wrote it; `None` when absent.
    pub properties: Option<&'a RawValue>,
    /// The client's `user_id`, if given and not empty.
    pub user_id: Option<Cow<'a, str>>,
    /// The client's `anonymous_id`, if given and not empty.
    pub anonymous_id: Option<Cow<'a, str>>,
    /// The context object as the client wrote it; `None` when absent.
    pub context: Option<&'a RawValue>,
}

/// Why an event (or the body holding it) was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EventError {
    /// The body is not valid UTF-8.
    #[error("the body is not valid UTF-8")]
    InvalidUtf8,
    /// Not JSON (syntax error, NaN, Infinity, trailing garbage …).
    #[error("malformed JSON: {0}")]
    Json(String),
    /// The event is not a JSON object.
    #[error("an event must be a JSON object")]
    NotObject,
    /// A batch was not an array (or NDJSON).
    #[error(
        "a batch must be a JSON array of events, or NDJSON with Content-Type application/x-ndjson"
    )]
    NotArray,
    /// A required field is absent.
    #[error("missing field `{0}`")]
    Missing(&'static str),
    /// A top-level key the event model does not have.
    #[error(
        "unknown field `{0}`; allowed: id, type, timestamp, properties, source, user_id, \
         anonymous_id, context"
    )]
    Unknown(String),
    /// The same key twice in one object.
    #[error("duplicate key `{0}`")]
    Duplicate(String),
    /// A field has the wrong type or value.
    #[error("invalid `{field}`: {reason}")]
    Invalid {
        /// The field.
        field: &'static str,
        /// Why.
        reason: String,
    },
    /// `properties` nests deeper than allowed.
    #[error("`properties` nests deeper than {0} levels")]
    TooDeep(usize),
    /// `properties` is larger than allowed.
    #[error("`properties` is {size} bytes; the limit is {limit}")]
    PropertiesTooLarge {
        /// Its size.
        size: usize,
        /// The limit.
        limit: usize,
    },
    /// `context` is larger than allowed.
    #[error("`context` is {size} bytes; the limit is {limit}")]
    ContextTooLarge {
        /// Its size.
        size: usize,
        /// The limit.
        limit: usize,
    },
    /// A batch without events.
    #[error("the batch holds no events")]
    EmptyBatch,
    /// A batch with too many events.
    #[error("the batch holds more than {0} events")]
    BatchTooLarge(usize),
    /// One event (a Segment call) is larger than allowed.
    #[error("the event is {size} bytes; the limit is {limit}")]
    EventTooLarge {
        /// Its size.
        size: usize,
        /// The limit.
        limit: usize,
    },
    /// A batch body (Segment `batch`) is larger than allowed.
    #[error("the batch is {size} bytes; the limit is {limit}")]
    BatchBytesTooLarge {
        /// Its size.
        size: usize,
        /// The limit.
        limit: usize,
    },
    /// A Segment call with neither `userId` nor `anonymousId`.
    #[error("missing field `userId` or `anonymousId`: every call needs one")]
    NoUser,
}

impl EventError {
    /// The stable error code clients see.
    pub fn code(&self) -> &'static str {
        match self {
            Self::InvalidUtf8 => "invalid_utf8",
            Self::Json(_) => "invalid_json",
            Self::NotObject => "invalid_event",
            Self::NotArray => "invalid_batch",
            Self::Missing(_) => "missing_field",
            Self::Unknown(_) => "unknown_field",
            Self::Duplicate(_) => "duplicate_key",
            Self::Invalid { .. } => "invalid_field",
            Self::TooDeep(_) => "too_deep",
            Self::PropertiesTooLarge { .. } => "properties_too_large",
            Self::ContextTooLarge { .. } => "context_too_large",
            Self::EmptyBatch => "empty_batch",
            Self::BatchTooLarge(_) | Self::BatchBytesTooLarge { .. } => "batch_too_large",
            Self::EventTooLarge { .. } => "event_too_large",
            Self::NoUser => "missing_field",
        }
    }

    /// The field the error is about, when there is one.
    pub fn field(&self) -> Option<&str> {
        match self {
            Self::Missing(f) | Self::Invalid { field: f, .. } => Some(f),
            Self::Unknown(f) => Some(f),
            Self::TooDeep(_) | Self::PropertiesTooLarge { .. } => Some("properties"),
            Self::NoUser => Some("userId"),
            Self::ContextTooLarge { .. } => Some("context"),
            _ => None,
        }
    }

    /// Whether the error is about size (413) rather than shape (400).
    pub fn is_too_large(&self) -> bool {
        matches!(
            self,
            Self::PropertiesTooLarge { .. }
                | Self::ContextTooLarge { .. }
                | Self::BatchTooLarge(_)
                | Self::EventTooLarge { .. }
                | Self::BatchBytesTooLarge { .. }
        )
    }
}

/// An error with the position of the event in its batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejected {
    /// Index of the event in the batch (`None` for single events and body-level errors).
    pub index: Option<usize>,
    /// What is wrong.
    pub error: EventError,
}

impl std::fmt::Display for Rejected {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.index {
            Some(i) => write!(f, "event {i}: {}", self.error),
            None => write!(f, "{}", self.error),
        }
    }
}

impl std::error::Error for Rejected {}

/// Checks the body is UTF-8 once, so every later step can borrow `&str`.
pub fn as_text(body: &[u8]) -> Result<&str, Rejected> {
    std::str::from_utf8(body).map_err(|_| Rejected {
        index: None,
        error: EventError::InvalidUtf8,
    })
}

/// Reads the body of `POST /v1/events`: exactly one event object.
pub fn parse_single<'a>(text: &'a str, limits: &EventLimits) -> Result<Event<'a>, Rejected> {
    parse_event(text, limits).map_err(|error| Rejected { index: None, error })
}

/// Reads the body of `POST /v1/events/batch` sent as a JSON array.
pub fn parse_array<'a>(text: &'a str, limits: &EventLimits) -> Result<Vec<Event<'a>>, Rejected> {
    let body_error = |error| Rejected { index: None, error };
    if first_byte(text) != Some(b'[') {
        return Err(body_error(if first_byte(text).is_none() {
            EventError::Json("the body is empty".into())
        } else {
            EventError::NotArray
        }));
    }
    let raws = {
        let mut de = serde_json::Deserializer::from_str(text);
        let seed = ArraySeed {
            max: limits.max_batch_events,
        };
        let raws = seed
            .deserialize(&mut de)
            .and_then(|raws| de.end().map(|()| raws));
        match raws {
            Ok(raws) => raws,
            Err(e) if e.to_string().starts_with(TOO_MANY) => {
                return Err(body_error(EventError::BatchTooLarge(
                    limits.max_batch_events,
                )));
            }
            Err(e) => return Err(body_error(json_error(&e, limits.max_depth))),
        }
    };
    if raws.is_empty() {
        return Err(body_error(EventError::EmptyBatch));
    }
    raws.into_iter()
        .enumerate()
        .map(|(index, raw)| {
            parse_event(raw.get(), limits).map_err(|error| Rejected {
                index: Some(index),
                error,
            })
        })
        .collect()
}

/// Reads the body of `POST /v1/events/batch` sent as NDJSON: one event per non-blank line.
pub fn parse_ndjson<'a>(text: &'a str, limits: &EventLimits) -> Result<Vec<Event<'a>>, Rejected> {
    let mut events = Vec::new();
    for line in text.split('\n') {
        let line = line.strip_suffix('\r').unwrap_or(line);
        if line.trim_ascii().is_empty() {
            continue;
        }
        if events.len() == limits.max_batch_events {
            return Err(Rejected {
                index: None,
                error: EventError::BatchTooLarge(limits.max_batch_events),
            });
        }
        let index = events.len();
        events.push(parse_event(line, limits).map_err(|error| Rejected {
            index: Some(index),
            error,
        })?);
    }
    if events.is_empty() {
        return Err(Rejected {
            index: None,
            error: EventError::EmptyBatch,
        });
    }
    Ok(events)
}

fn first_byte(text: &str) -> Option<u8> {
    text.bytes().find(|b| !b.is_ascii_whitespace())
}

/// Maps a serde_json error that was not ours to an [`EventError`].
fn json_error(e: &serde_json::Error, max_depth: usize) -> EventError {
    let text = e.to_string();
    if text.starts_with("recursion limit exceeded") {
        // serde_json's own guard (128 levels) fires before ours on absurd nesting.
        return EventError::TooDeep(max_depth);
    }
    EventError::Json(text)
}

/// Reads one event object from its text.
fn parse_event<'a>(text: &'a str, limits: &EventLimits) -> Result<Event<'a>, EventError> {
    match first_byte(text) {
        Some(b'{') => {}
        None => return Err(EventError::Json("the body is empty".into())),
        Some(_) => {
            // Tell malformed JSON from a well-formed non-object.
            return match serde_json::from_str::<IgnoredAny>(text) {
                Ok(_) => Err(EventError::NotObject),
                Err(e) => Err(json_error(&e, limits.max_depth)),
            };
        }
    }
    let found = Cell::new(None);
    let mut de = serde_json::Deserializer::from_str(text);
    let result = EventSeed { found: &found }
        .deserialize(&mut de)
        .and_then(|event| de.end().map(|()| event));
    let event = match result {
        Ok(event) => event,
        Err(e) => {
            // Syntax errors win: a truncated body is malformed JSON, whatever field it was in.
            return Err(match (e.classify(), found.take()) {
                (serde_json::error::Category::Data, Some(ours)) => ours,
                _ => json_error(&e, limits.max_depth),
            });
        }
    };
    check_event(&event, limits)?;
    Ok(event)
}

fn check_event(event: &Event<'_>, limits: &EventLimits) -> Result<(), EventError> {
    check_name("type", &event.kind, limits.max_type_len)?;
    if let Some(source) = &event.source {
        check_name("source", source, limits.max_type_len)?;
    }
    if event.id.is_some_and(|id| id.is_nil()) {
        return Err(EventError::Invalid {
            field: "id",
            reason: "the nil UUID is not an event id".into(),
        });
    }
    if let Some(props) = event.properties {
        check_properties(props, limits)?;
    }
    for (field, value) in [
        ("user_id", &event.user_id),
        ("anonymous_id", &event.anonymous_id),
    ] {
        if let Some(value) = value {
            check_name(field, value, limits.max_type_len)?;
        }
    }
    if let Some(context) = event.context {
        check_context(context, limits)?;
    }
    Ok(())
}

/// `context` is held to the rules of `properties`, under its own name.
fn check_context(context: &RawValue, limits: &EventLimits) -> Result<(), EventError> {
    check_properties(context, limits).map_err(|e| match e {
        EventError::Invalid { reason, .. } => EventError::Invalid {
            field: "context",
            reason,
        },
        EventError::TooDeep(max) => EventError::Invalid {
            field: "context",
            reason: format!("nests deeper than {max} levels"),
        },
        EventError::PropertiesTooLarge { size, limit } => {
            EventError::ContextTooLarge { size, limit }
        }
        EventError::Duplicate(key) => EventError::Invalid {
            field: "context",
            reason: format!("duplicate key `{key}`"),
        },
        other => other,
    })
}

/// A name (`type`, `source`, an id, …): not blank, at most `max` bytes, no control characters.
pub(crate) fn check_name(field: &'static str, value: &str, max: usize) -> Result<(), EventError> {
    let invalid = |reason: String| Err(EventError::Invalid { field, reason });
    if value.trim().is_empty() {
        return invalid("must not be empty or blank".into());
    }
    if value.len() > max {
        return invalid(format!("is {} bytes; the limit is {max}", value.len()));
    }
    if value.chars().any(char::is_control) {
        return invalid("must not contain control characters".into());
    }
    Ok(())
}

/// `properties` must be an object within the size and depth limits, without duplicate keys.
pub fn check_properties(props: &RawValue, limits: &EventLimits) -> Result<(), EventError> {
    let text = props.get();
    if first_byte(text) != Some(b'{') {
        return Err(EventError::Invalid {
            field: "properties",
            reason: "must be a JSON object".into(),
        });
    }
    let found = Cell::new(None);
    let mut de = serde_json::Deserializer::from_str(text);
    let walk = Walk {
        depth: 1,
        max: limits.max_depth,
        found: &found,
    };
    if let Err(e) = walk.deserialize(&mut de) {
        return Err(found
            .take()
            .unwrap_or_else(|| json_error(&e, limits.max_depth)));
    }
    // After the walk, so that absurd nesting is reported as such, not as size.
    if text.len() > limits.max_properties_bytes {
        return Err(EventError::PropertiesTooLarge {
            size: text.len(),
            limit: limits.max_properties_bytes,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: EventLimits = EventLimits {
        max_type_len: 16,
        max_properties_bytes: 64,
        max_depth: 3,
        max_batch_events: 3,
    };

    fn err(text: &str) -> EventError {
        parse_single(text, &LIMITS).unwrap_err().error
    }

    #[test]
    fn reads_a_full_event_borrowing_the_body() {
        let text = r#"{"id":"0192f0c4-1111-7000-8000-000000000001","type":"view","source":"web","timestamp":1764000000123,"properties":{"a":[1,{"b":2}]}}"#;
        let event = parse_single(text, &LIMITS).unwrap();
        assert!(matches!(event.kind, Cow::Borrowed("view")));
        assert_eq!(event.source.as_deref(), Some("web"));
        assert_eq!(event.timestamp, Some(Millis(1_764_000_000_123)));
        assert_eq!(event.properties.unwrap().get(), r#"{"a":[1,{"b":2}]}"#);
        let minimal = parse_single(r#"{"type":"x","properties":null,"id":null}"#, &LIMITS).unwrap();
        assert!(minimal.id.is_none() && minimal.properties.is_none());
    }

    #[test]
    fn identity_and_context_are_read_and_held_to_the_rules_of_their_kin() {
        let text =
            r#"{"type":"a","user_id":"ü\"1","anonymous_id":"","context":{"page":{"p":"/"}}}"#;
        let event = parse_single(text, &LIMITS).unwrap();
        assert_eq!(event.user_id.as_deref(), Some("ü\"1"));
        assert_eq!(event.anonymous_id, None, "empty is absent");
        assert_eq!(event.context.unwrap().get(), r#"{"page":{"p":"/"}}"#);
        let none = parse_single(r#"{"type":"a","context":null,"user_id":null}"#, &LIMITS).unwrap();
        assert!(none.context.is_none() && none.user_id.is_none());
        assert!(matches!(
            err(r#"{"type":"a","user_id":"   "}"#),
            EventError::Invalid {
                field: "user_id",
                ..
            }
        ));
        assert!(matches!(
            err(r#"{"type":"a","anonymous_id":"0123456789abcdefg"}"#),
            EventError::Invalid {
                field: "anonymous_id",
                ..
            }
        ));
        assert!(matches!(
            err(r#"{"type":"a","user_id":7}"#),
            EventError::Invalid {
                field: "user_id",
                ..
            }
        ));
        assert!(matches!(
            err(r#"{"type":"a","context":[1]}"#),
            EventError::Invalid {
                field: "context",
                ..
            }
        ));
        assert!(matches!(
            err(r#"{"type":"a","context":{"a":{"b":{"c":{}}}}}"#),
            EventError::Invalid {
                field: "context",
                ..
            }
        ));
        assert!(matches!(
            err(r#"{"type":"a","context":{"k":1,"k":2}}"#),
            EventError::Invalid {
                field: "context",
                ..
            }
        ));
        let big = format!(r#"{{"type":"a","context":{{"k":"{}"}}}}"#, "x".repeat(80));
        let e = err(&big);
        assert_eq!(e.code(), "context_too_large");
        assert!(e.is_too_large());
        assert_eq!(
            err(r#"{"type":"a","context":{},"context":{}}"#),
            EventError::Duplicate("context".into())
        );
    }

    #[test]
    fn refusals_name_the_field() {
        assert_eq!(err(r#"{}"#), EventError::Missing("type"));
        assert_eq!(
            err(r#"{"type":"a","x":1}"#),
            EventError::Unknown("x".into())
        );
        assert_eq!(
            err(r#"{"type":"a","type":"a"}"#),
            EventError::Duplicate("type".into())
        );
        assert!(matches!(
            err(r#"{"type":1}"#),
            EventError::Invalid { field: "type", .. }
        ));
        assert!(matches!(
            err(r#"{"type":"a","timestamp":"x"}"#),
            EventError::Invalid {
                field: "timestamp",
                ..
            }
        ));
        assert!(matches!(err(r#"{"type":"#), EventError::Json(_)));
        assert_eq!(err("[1]"), EventError::NotObject);
    }

    #[test]
    fn properties_depth_duplicates_and_size() {
        let ok = r#"{"type":"a","properties":{"a":{"b":{"c":1}}}}"#;
        assert!(parse_single(ok, &LIMITS).is_ok());
        let deep = r#"{"type":"a","properties":{"a":{"b":{"c":[1]}}}}"#;
        assert_eq!(err(deep), EventError::TooDeep(3));
        let dup = r#"{"type":"a","properties":{"a":[{"k":1,"k":1}]}}"#;
        assert!(matches!(err(dup), EventError::Duplicate(_)));
        let escaped = r#"{"type":"a","properties":{"k":1,"\u006b":2}}"#;
        assert!(matches!(err(escaped), EventError::Duplicate(_)));
        let big = format!(
            r#"{{"type":"a","properties":{{"x":"{}"}}}}"#,
            "x".repeat(64)
        );
        assert!(matches!(err(&big), EventError::PropertiesTooLarge { .. }));
    }

    #[test]
    fn batches() {
        let events = parse_array(r#" [{"type":"a"},{"type":"b"}] "#, &LIMITS).unwrap();
        assert_eq!(events.len(), 2);
        let bad = parse_array(r#"[{"type":"a"},{"typ":"b"}]"#, &LIMITS).unwrap_err();
        assert_eq!(bad.index, Some(1));
        let many = parse_array(
            r#"[{"type":"a"},{"type":"a"},{"type":"a"},{"type":"a"}]"#,
            &LIMITS,
        );
        assert_eq!(many.unwrap_err().error, EventError::BatchTooLarge(3));
        assert_eq!(
            parse_array("[]", &LIMITS).unwrap_err().error,
            EventError::EmptyBatch
        );
        let nd = parse_ndjson("{\"type\":\"a\"}\r\n\n{\"type\":\"b\"}", &LIMITS).unwrap();
        assert_eq!(nd.len(), 2);
        let bad = parse_ndjson("{\"type\":\"a\"}\n{\"type\":2}\n", &LIMITS).unwrap_err();
        assert_eq!(bad.index, Some(1));
    }
}
