//! The Segment tracking API: what Segment's SDKs (analytics.js / analytics-next, analytics-node,
//! analytics-python, and the SDKs that speak the same spec) send, read into ess events.
//!
//! Routes (see `docs/api.md`): `/v1/track`, `/v1/page`, `/v1/screen`, `/v1/identify`,
//! `/v1/group`, `/v1/alias` take one call; `/v1/batch` and `/v1/import` take
//! `{"batch": [call, …], "sentAt"?, "writeKey"?, "context"?}`. The browser SDK posts one call to
//! `/v1/t`, `/v1/p`, `/v1/s`, `/v1/i`, `/v1/g`, `/v1/a` (the call's first letter) and batches to
//! `/v1/b`.
//!
//! Mapping of one call to an event:
//! - `id`: `messageId` when it is a UUID; any other `messageId` becomes a UUID v5 of the source
//!   and the `messageId`, so every retry of one message gets the same id; none → a new UUID v7.
//! - `type`: the `event` of a `track`; the call's name (`page`, `identify`, …) for the others.
//! - `properties`: `track` → its `properties`; `page`/`screen` → `properties` plus `name` and
//!   `category`; `identify` → the `traits`; `group` → the `traits` plus `groupId`; `alias` →
//!   `{"previousId": …}`.
//! - `userId`, `anonymousId` (one is required) and `context` are kept as they are.
//! - `timestamp`: Segment's clock-skew correction, `receivedAt - (sentAt - originalTimestamp)`,
//!   where `originalTimestamp` is the call's `originalTimestamp` or else its `timestamp`; without
//!   `sentAt` the call's own time as is; without either, the time ess received it.
//!
//! Unknown keys (`integrations`, `_metadata`, `options`, …) are ignored, as Segment does.

use std::borrow::Cow;
use std::net::IpAddr;

use ess_core::wire::Millis;
use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::{Map, Value};
use uuid::Uuid;

use crate::client_event::{self, EventError, EventLimits, Rejected, check_name};

/// Namespace of the UUID v5 ids made from `messageId`s that are not UUIDs.
pub const MESSAGE_ID_NAMESPACE: Uuid = Uuid::from_u128(0x5e6d_1c0a_7a3b_4c8e_9f21_0d4b_6a8e_e55e);

/// Longest `messageId`, `userId`, `anonymousId`, `groupId` or `previousId`, in bytes.
pub const MAX_ID_BYTES: usize = 1024;

/// The six calls of the spec.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Call {
    /// An action the user performed (`event` names it).
    Track,
    /// A web page view.
    Page,
    /// A mobile screen view.
    Screen,
    /// Who the user is (`traits`).
    Identify,
    /// The user's group or account (`groupId`, `traits`).
    Group,
    /// A new id for a known user (`previousId` → `userId`).
    Alias,
}

impl Call {
    /// The call's name, which is also the event type of every call but `track`.
    pub fn name(self) -> &'static str {
        match self {
            Self::Track => "track",
            Self::Page => "page",
            Self::Screen => "screen",
            Self::Identify => "identify",
            Self::Group => "group",
            Self::Alias => "alias",
        }
    }

    /// Reads a call name.
    pub fn from_name(name: &str) -> Option<Self> {
        Some(match name {
            "track" => Self::Track,
            "page" => Self::Page,
            "screen" => Self::Screen,
            "identify" => Self::Identify,
            "group" => Self::Group,
            "alias" => Self::Alias,
            _ => return None,
        })
    }
}

/// What a route takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    /// One call of this kind (`/v1/track`, `/v1/t`, …).
    Single(Call),
    /// `{"batch": […]}` (`/v1/batch`, `/v1/import`, `/v1/b`).
    Batch,
}

/// Size limits of the Segment routes.
#[derive(Debug, Clone, Copy)]
pub struct SizeLimits {
    /// Largest call, in bytes of JSON.
    pub max_event_bytes: usize,
    /// Largest batch body, in bytes of JSON.
    pub max_batch_bytes: usize,
}

/// One call, read and checked, borrowing from the body.
#[derive(Debug)]
pub struct Message<'a> {
    /// The call.
    pub call: Call,
    /// The client's `messageId`.
    pub message_id: Option<Cow<'a, str>>,
    /// Event type (see the module docs).
    pub kind: Cow<'a, str>,
    /// `userId`.
    pub user_id: Option<Cow<'a, str>>,
    /// `anonymousId`.
    pub anonymous_id: Option<Cow<'a, str>>,
    /// The event's properties object.
    pub properties: Cow<'a, RawValue>,
    /// `context` (the call's, merged over the batch's).
    pub context: Option<Cow<'a, RawValue>>,
    /// When it happened, skew-corrected.
    pub timestamp: Millis,
    /// `context.ip`, when it holds an IP address.
    pub context_ip: Option<IpAddr>,
    /// `context.userAgent`.
    pub context_user_agent: Option<String>,
}

impl Message<'_> {
    /// The event id (see the module docs); `source` scopes `messageId`s that are not UUIDs.
    pub fn id(&self, source: &str) -> Uuid {
        match self.message_id.as_deref() {
            None => Uuid::now_v7(),
            Some(text) => match Uuid::try_parse(text) {
                Ok(id) if !id.is_nil() => id,
                _ => {
                    let mut name = Vec::with_capacity(source.len() + 1 + text.len());
                    name.extend_from_slice(source.as_bytes());
                    name.push(0);
                    name.extend_from_slice(text.as_bytes());
                    Uuid::new_v5(&MESSAGE_ID_NAMESPACE, &name)
                }
            },
        }
    }
}

/// A request body, read.
#[derive(Debug)]
pub struct Body<'a> {
    /// `writeKey` from the body (the batch's, or the single call's).
    pub write_key: Option<Cow<'a, str>>,
    /// The calls in request order.
    pub messages: Vec<Message<'a>>,
}

/// Every key a call may have that ess reads; the rest is ignored.
#[derive(Deserialize)]
struct RawMessage<'a> {
    #[serde(rename = "type", borrow, default)]
    kind: Option<&'a RawValue>,
    #[serde(rename = "messageId", borrow, default)]
    message_id: Option<&'a RawValue>,
    #[serde(rename = "userId", borrow, default)]
    user_id: Option<&'a RawValue>,
    #[serde(rename = "anonymousId", borrow, default)]
    anonymous_id: Option<&'a RawValue>,
    #[serde(borrow, default)]
    event: Option<&'a RawValue>,
    #[serde(borrow, default)]
    name: Option<&'a RawValue>,
    #[serde(borrow, default)]
    category: Option<&'a RawValue>,
    #[serde(borrow, default)]
    properties: Option<&'a RawValue>,
    #[serde(borrow, default)]
    traits: Option<&'a RawValue>,
    #[serde(borrow, default)]
    context: Option<&'a RawValue>,
    #[serde(rename = "groupId", borrow, default)]
    group_id: Option<&'a RawValue>,
    #[serde(rename = "previousId", borrow, default)]
    previous_id: Option<&'a RawValue>,
    #[serde(borrow, default)]
    timestamp: Option<&'a RawValue>,
    #[serde(rename = "originalTimestamp", borrow, default)]
    original_timestamp: Option<&'a RawValue>,
    #[serde(rename = "sentAt", borrow, default)]
    sent_at: Option<&'a RawValue>,
    #[serde(rename = "writeKey", borrow, default)]
    write_key: Option<&'a RawValue>,
}

/// The batch envelope.
#[derive(Deserialize)]
struct RawBatch<'a> {
    #[serde(borrow, default)]
    batch: Option<&'a RawValue>,
    #[serde(rename = "sentAt", borrow, default)]
    sent_at: Option<&'a RawValue>,
    #[serde(rename = "writeKey", borrow, default)]
    write_key: Option<&'a RawValue>,
    #[serde(borrow, default)]
    context: Option<&'a RawValue>,
}

/// What `context` holds that ingest reads.
#[derive(Deserialize)]
struct ContextPeek<'a> {
    #[serde(borrow, default)]
    ip: Option<&'a RawValue>,
    #[serde(rename = "userAgent", borrow, default)]
    user_agent: Option<&'a RawValue>,
}

/// What the whole request shares.
struct Shared<'a, 'l> {
    limits: &'l EventLimits,
    sizes: &'l SizeLimits,
    received: Millis,
    sent_at: Option<Millis>,
    batch_context: Option<&'a RawValue>,
}

/// Reads a body of `route`; `received` is when the request arrived.
pub fn parse<'a>(
    text: &'a str,
    route: Route,
    limits: &EventLimits,
    sizes: &SizeLimits,
    received: Millis,
) -> Result<Body<'a>, Rejected> {
    let body_error = |error| Rejected { index: None, error };
    match route {
        Route::Single(call) => {
            if text.len() > sizes.max_event_bytes {
                return Err(body_error(EventError::EventTooLarge {
                    size: text.len(),
                    limit: sizes.max_event_bytes,
                }));
            }
            let raw = object::<RawMessage<'a>>(text).map_err(body_error)?;
            let shared = Shared {
                limits,
                sizes,
                received,
                sent_at: None,
                batch_context: None,
            };
            let write_key =
                optional_str("writeKey", raw.write_key, MAX_ID_BYTES).map_err(body_error)?;
            let message = message(raw, Some(call), &shared).map_err(body_error)?;
            Ok(Body {
                write_key,
                messages: vec![message],
            })
        }
        Route::Batch => {
            if text.len() > sizes.max_batch_bytes {
                return Err(body_error(EventError::BatchBytesTooLarge {
                    size: text.len(),
                    limit: sizes.max_batch_bytes,
                }));
            }
            let raw = object::<RawBatch<'a>>(text).map_err(body_error)?;
            let write_key =
                optional_str("writeKey", raw.write_key, MAX_ID_BYTES).map_err(body_error)?;
            let sent_at = optional_time("sentAt", raw.sent_at).map_err(body_error)?;
            let batch_context = match raw.context {
                Some(c) if c.get() == "null" => None,
                Some(c) => {
                    check_object("context", c, limits, sizes.max_event_bytes)
                        .map_err(body_error)?;
                    Some(c)
                }
                None => None,
            };
            let items: Vec<&'a RawValue> = match raw.batch {
                None => return Err(body_error(EventError::Missing("batch"))),
                Some(b) => serde_json::from_str(b.get()).map_err(|_| {
                    body_error(EventError::Invalid {
                        field: "batch",
                        reason: "must be an array of calls".into(),
                    })
                })?,
            };
            if items.is_empty() {
                return Err(body_error(EventError::EmptyBatch));
            }
            if items.len() > limits.max_batch_events {
                return Err(body_error(EventError::BatchTooLarge(
                    limits.max_batch_events,
                )));
            }
            let shared = Shared {
                limits,
                sizes,
                received,
                sent_at,
                batch_context,
            };
            let messages = items
                .into_iter()
                .enumerate()
                .map(|(index, item)| {
                    let at = |error| Rejected {
                        index: Some(index),
                        error,
                    };
                    let text = item.get();
                    if text.len() > sizes.max_event_bytes {
                        return Err(at(EventError::EventTooLarge {
                            size: text.len(),
                            limit: sizes.max_event_bytes,
                        }));
                    }
                    let raw = object::<RawMessage<'a>>(text).map_err(at)?;
                    message(raw, None, &shared).map_err(at)
                })
                .collect::<Result<Vec<_>, _>>()?;
            Ok(Body {
                write_key,
                messages,
            })
        }
    }
}

/// Reads a JSON object into `T`, telling malformed JSON from a non-object.
fn object<'a, T: Deserialize<'a>>(text: &'a str) -> Result<T, EventError> {
    match text.bytes().find(|b| !b.is_ascii_whitespace()) {
        None => return Err(EventError::Json("the body is empty".into())),
        Some(b'{') => {}
        Some(_) => {
            return match serde_json::from_str::<serde::de::IgnoredAny>(text) {
                Ok(_) => Err(EventError::NotObject),
                Err(e) => Err(EventError::Json(e.to_string())),
            };
        }
    }
    serde_json::from_str(text).map_err(|e| {
        let text = e.to_string();
        if let Some(field) = text
            .strip_prefix("duplicate field `")
            .and_then(|rest| rest.split('`').next())
        {
            return EventError::Duplicate(field.to_owned());
        }
        EventError::Json(text)
    })
}

fn message<'a>(
    raw: RawMessage<'a>,
    route_call: Option<Call>,
    shared: &Shared<'a, '_>,
) -> Result<Message<'a>, EventError> {
    let stated = optional_str("type", raw.kind, shared.limits.max_type_len)?;
    let call = match (route_call, stated.as_deref()) {
        (Some(call), None) => call,
        (Some(call), Some(name)) if name == call.name() => call,
        (Some(call), Some(name)) => {
            return Err(EventError::Invalid {
                field: "type",
                reason: format!("is {name:?} on the {} endpoint", call.name()),
            });
        }
        (None, Some(name)) => Call::from_name(name).ok_or_else(|| EventError::Invalid {
            field: "type",
            reason: format!(
                "unknown call {name:?}; one of track, page, screen, identify, group, alias"
            ),
        })?,
        (None, None) => return Err(EventError::Missing("type")),
    };
    let message_id = optional_id("messageId", raw.message_id)?;
    let user_id = optional_id("userId", raw.user_id)?;
    let anonymous_id = optional_id("anonymousId", raw.anonymous_id)?;
    if user_id.is_none() && anonymous_id.is_none() {
        return Err(EventError::NoUser);
    }
    let limits = shared.limits;
    let kind = match call {
        Call::Track => {
            let name = optional_str("event", raw.event, limits.max_type_len)?
                .ok_or(EventError::Missing("event"))?;
            check_name("event", &name, limits.max_type_len)?;
            name
        }
        other => Cow::Borrowed(other.name()),
    };
    let properties = match call {
        Call::Track => object_or_empty("properties", raw.properties, limits)?,
        Call::Page | Call::Screen => {
            let base = object_or_empty("properties", raw.properties, limits)?;
            let name = optional_str("name", raw.name, limits.max_properties_bytes)?;
            let category = optional_str("category", raw.category, limits.max_properties_bytes)?;
            with_fields(base, &[("name", name), ("category", category)])?
        }
        Call::Identify => object_or_empty("traits", raw.traits, limits)?,
        Call::Group => {
            let base = object_or_empty("traits", raw.traits, limits)?;
            let group =
                optional_id("groupId", raw.group_id)?.ok_or(EventError::Missing("groupId"))?;
            with_fields(base, &[("groupId", Some(group))])?
        }
        Call::Alias => {
            let previous = optional_id("previousId", raw.previous_id)?
                .ok_or(EventError::Missing("previousId"))?;
            with_fields(
                Cow::Owned(empty_object()?),
                &[("previousId", Some(previous))],
            )?
        }
    };
    let context = match raw.context {
        Some(c) if c.get() == "null" => shared.batch_context.map(Cow::Borrowed),
        Some(c) => {
            check_object("context", c, limits, shared.sizes.max_event_bytes)?;
            Some(match shared.batch_context {
                Some(batch) => merge(batch, c)?,
                None => Cow::Borrowed(c),
            })
        }
        None => shared.batch_context.map(Cow::Borrowed),
    };
    let (context_ip, context_user_agent) = match &context {
        Some(c) => peek(c)?,
        None => (None, None),
    };
    let original = match optional_time("originalTimestamp", raw.original_timestamp)? {
        Some(t) => Some(t),
        None => optional_time("timestamp", raw.timestamp)?,
    };
    let sent_at = match optional_time("sentAt", raw.sent_at)? {
        Some(t) => Some(t),
        None => shared.sent_at,
    };
    let timestamp = corrected(original, sent_at, shared.received);
    Ok(Message {
        call,
        message_id,
        kind,
        user_id,
        anonymous_id,
        properties,
        context,
        timestamp,
        context_ip,
        context_user_agent,
    })
}

/// `receivedAt - (sentAt - originalTimestamp)`, kept within what the pipeline stores.
pub fn corrected(original: Option<Millis>, sent_at: Option<Millis>, received: Millis) -> Millis {
    match (original, sent_at) {
        (Some(original), Some(sent)) => {
            let ms = received.0.saturating_sub(sent.0.saturating_sub(original.0));
            Millis::from_epoch_ms(ms).unwrap_or(original)
        }
        (Some(original), None) => original,
        (None, _) => received,
    }
}

/// A JSON string (or `null`/absent) of at most `max` bytes.
fn optional_str<'a>(
    field: &'static str,
    raw: Option<&'a RawValue>,
    max: usize,
) -> Result<Option<Cow<'a, str>>, EventError> {
    let Some(raw) = raw else { return Ok(None) };
    let text = raw.get();
    if text == "null" {
        return Ok(None);
    }
    let value = string(field, text)?;
    if value.len() > max {
        return Err(EventError::Invalid {
            field,
            reason: format!("is {} bytes; the limit is {max}", value.len()),
        });
    }
    Ok(Some(value))
}

fn string<'a>(field: &'static str, text: &'a str) -> Result<Cow<'a, str>, EventError> {
    if let Ok(s) = serde_json::from_str::<&'a str>(text) {
        return Ok(Cow::Borrowed(s));
    }
    serde_json::from_str::<String>(text)
        .map(Cow::Owned)
        .map_err(|_| EventError::Invalid {
            field,
            reason: "must be a string".into(),
        })
}

/// An id: a non-blank string (or a number, kept as its text) of at most [`MAX_ID_BYTES`].
fn optional_id<'a>(
    field: &'static str,
    raw: Option<&'a RawValue>,
) -> Result<Option<Cow<'a, str>>, EventError> {
    let Some(raw) = raw else { return Ok(None) };
    let text = raw.get();
    let value = match text.as_bytes().first() {
        Some(b'n') if text == "null" => return Ok(None),
        Some(b'-' | b'0'..=b'9') if serde_json::from_str::<serde::de::IgnoredAny>(text).is_ok() => {
            Cow::Borrowed(text)
        }
        _ => string(field, text).map_err(|_| EventError::Invalid {
            field,
            reason: "must be a string".into(),
        })?,
    };
    check_name(field, &value, MAX_ID_BYTES)?;
    Ok(Some(value))
}

fn optional_time(
    field: &'static str,
    raw: Option<&RawValue>,
) -> Result<Option<Millis>, EventError> {
    let Some(raw) = raw else { return Ok(None) };
    if raw.get() == "null" {
        return Ok(None);
    }
    let text = string(field, raw.get())?;
    Millis::parse_rfc3339(&text)
        .map(Some)
        .map_err(|e| EventError::Invalid {
            field,
            reason: format!("must be an ISO-8601 date-time with a time zone ({e})"),
        })
}

/// `raw` as the properties object (checked like ess's own `properties`), `{}` when absent.
fn object_or_empty<'a>(
    field: &'static str,
    raw: Option<&'a RawValue>,
    limits: &EventLimits,
) -> Result<Cow<'a, RawValue>, EventError> {
    match raw {
        None => Ok(Cow::Owned(empty_object()?)),
        Some(raw) if raw.get() == "null" => Ok(Cow::Owned(empty_object()?)),
        Some(raw) => {
            client_event::check_properties(raw, limits).map_err(|e| rename(e, field))?;
            Ok(Cow::Borrowed(raw))
        }
    }
}

/// `context` and the batch's `context`: objects within the depth limit and `max` bytes.
fn check_object(
    field: &'static str,
    raw: &RawValue,
    limits: &EventLimits,
    max: usize,
) -> Result<(), EventError> {
    let limits = EventLimits {
        max_properties_bytes: max,
        ..*limits
    };
    client_event::check_properties(raw, &limits).map_err(|e| rename(e, field))
}

/// Names `field` in an error that [`client_event::check_properties`] gave about `properties`.
fn rename(error: EventError, field: &'static str) -> EventError {
    if field == "properties" {
        return error;
    }
    match error {
        EventError::Invalid { reason, .. } => EventError::Invalid { field, reason },
        EventError::TooDeep(depth) => EventError::Invalid {
            field,
            reason: format!("nests deeper than {depth} levels"),
        },
        EventError::PropertiesTooLarge { size, limit } => EventError::Invalid {
            field,
            reason: format!("is {size} bytes; the limit is {limit}"),
        },
        other => other,
    }
}

fn empty_object() -> Result<Box<RawValue>, EventError> {
    RawValue::from_string("{}".to_owned()).map_err(|e| EventError::Json(e.to_string()))
}

/// `base` with `fields` set (the call's fields win over keys of the same name).
fn with_fields<'a>(
    base: Cow<'a, RawValue>,
    fields: &[(&'static str, Option<Cow<'_, str>>)],
) -> Result<Cow<'a, RawValue>, EventError> {
    if fields.iter().all(|(_, v)| v.is_none()) {
        return Ok(base);
    }
    let mut map: Map<String, Value> =
        serde_json::from_str(base.get()).map_err(|e| EventError::Json(e.to_string()))?;
    for (key, value) in fields {
        if let Some(value) = value {
            map.insert((*key).to_owned(), Value::String(value.clone().into_owned()));
        }
    }
    to_raw(&map)
}

/// The batch's context with the call's keys over it.
fn merge<'a>(batch: &RawValue, call: &'a RawValue) -> Result<Cow<'a, RawValue>, EventError> {
    let mut map: Map<String, Value> =
        serde_json::from_str(batch.get()).map_err(|e| EventError::Json(e.to_string()))?;
    let own: Map<String, Value> =
        serde_json::from_str(call.get()).map_err(|e| EventError::Json(e.to_string()))?;
    map.extend(own);
    to_raw(&map)
}

fn to_raw<'a>(map: &Map<String, Value>) -> Result<Cow<'a, RawValue>, EventError> {
    let text = serde_json::to_string(map).map_err(|e| EventError::Json(e.to_string()))?;
    RawValue::from_string(text)
        .map(Cow::Owned)
        .map_err(|e| EventError::Json(e.to_string()))
}

/// `context.ip` (when it is an address) and `context.userAgent` (when it is a string).
fn peek(context: &RawValue) -> Result<(Option<IpAddr>, Option<String>), EventError> {
    let peek: ContextPeek<'_> =
        serde_json::from_str(context.get()).map_err(|e| EventError::Json(e.to_string()))?;
    let ip = peek
        .ip
        .and_then(|raw| serde_json::from_str::<Cow<'_, str>>(raw.get()).ok())
        .and_then(|s| s.trim().parse::<IpAddr>().ok());
    let agent = peek
        .user_agent
        .and_then(|raw| serde_json::from_str::<String>(raw.get()).ok())
        .filter(|s| !s.is_empty());
    Ok((ip, agent))
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: EventLimits = EventLimits {
        max_type_len: 128,
        max_properties_bytes: 16 * 1024,
        max_depth: 8,
        max_batch_events: 100,
    };
    const SIZES: SizeLimits = SizeLimits {
        max_event_bytes: 32 * 1024,
        max_batch_bytes: 500 * 1024,
    };

    fn ms(text: &str) -> Millis {
        Millis::parse_rfc3339(text).unwrap()
    }

    fn one(route: Route, text: &str) -> Result<Body<'_>, Rejected> {
        parse(text, route, &LIMITS, &SIZES, ms("2026-01-01T00:00:10Z"))
    }

    fn err(route: Route, text: &str) -> (Option<usize>, &'static str, Option<String>) {
        let r = one(route, text).unwrap_err();
        (r.index, r.error.code(), r.error.field().map(str::to_owned))
    }

    #[test]
    fn track_maps_event_properties_ids_and_context() {
        let body = one(
            Route::Single(Call::Track),
            r#"{"event":"Order Completed","userId":"u1","anonymousId":"a1","messageId":"m-1",
               "properties":{"total":3},"context":{"ip":"203.0.113.9","userAgent":"UA/1"},
               "integrations":{"All":true},"writeKey":"k"}"#,
        )
        .unwrap();
        assert_eq!(body.write_key.as_deref(), Some("k"));
        let m = &body.messages[0];
        assert_eq!(m.kind, "Order Completed");
        assert_eq!(m.user_id.as_deref(), Some("u1"));
        assert_eq!(m.anonymous_id.as_deref(), Some("a1"));
        assert_eq!(m.properties.get(), r#"{"total":3}"#);
        assert_eq!(m.context_ip, Some("203.0.113.9".parse().unwrap()));
        assert_eq!(m.context_user_agent.as_deref(), Some("UA/1"));
        // No time given: the receive time.
        assert_eq!(m.timestamp, ms("2026-01-01T00:00:10Z"));
        // A non-UUID messageId: the same id for the same source, another for another source.
        assert_eq!(m.id("web"), m.id("web"));
        assert_ne!(m.id("web"), m.id("app"));
        assert_eq!(m.id("web").get_version_num(), 5);
    }

    #[test]
    fn uuid_message_ids_are_kept() {
        let id = "0192f0c4-2b7e-7c1a-9d3e-6f7a8b9c0d1e";
        let text = format!(r#"{{"type":"identify","userId":"u","messageId":"{id}"}}"#);
        let body = one(Route::Single(Call::Identify), &text).unwrap();
        assert_eq!(body.messages[0].id("x").to_string(), id);
    }

    #[test]
    fn other_calls_keep_their_fields_in_properties() {
        let page = one(
            Route::Single(Call::Page),
            r#"{"anonymousId":"a","name":"Home","category":"Docs","properties":{"path":"/","name":"old"}}"#,
        )
        .unwrap();
        let p: Value = serde_json::from_str(page.messages[0].properties.get()).unwrap();
        assert_eq!(page.messages[0].kind, "page");
        assert_eq!(p["name"], "Home");
        assert_eq!(p["category"], "Docs");
        assert_eq!(p["path"], "/");
        let identify = one(
            Route::Single(Call::Identify),
            r#"{"userId":42,"traits":{"email":"a@b.c"}}"#,
        )
        .unwrap();
        assert_eq!(identify.messages[0].user_id.as_deref(), Some("42"));
        assert_eq!(
            identify.messages[0].properties.get(),
            r#"{"email":"a@b.c"}"#
        );
        let group = one(
            Route::Single(Call::Group),
            r#"{"userId":"u","groupId":"g1","traits":{"plan":"pro"}}"#,
        )
        .unwrap();
        let g: Value = serde_json::from_str(group.messages[0].properties.get()).unwrap();
        assert_eq!(
            (g["groupId"].as_str(), g["plan"].as_str()),
            (Some("g1"), Some("pro"))
        );
        let alias = one(
            Route::Single(Call::Alias),
            r#"{"userId":"u","previousId":"a"}"#,
        )
        .unwrap();
        assert_eq!(alias.messages[0].properties.get(), r#"{"previousId":"a"}"#);
    }

    #[test]
    fn clock_skew_is_corrected_from_sent_at() {
        // The client's clock is 1 h ahead: it says sent at 01:00:10, the event 2 s earlier.
        let body = one(
            Route::Batch,
            r#"{"sentAt":"2026-01-01T01:00:10.000Z","writeKey":"k","context":{"app":"b"},"batch":[
                {"type":"track","event":"e","userId":"u","timestamp":"2026-01-01T01:00:08.000+00:00"},
                {"type":"track","event":"e","userId":"u","originalTimestamp":"2026-01-01T01:00:07Z",
                 "timestamp":"2000-01-01T00:00:00Z","context":{"ip":"::1"}},
                {"type":"page","userId":"u","sentAt":"2026-01-01T00:00:11Z","timestamp":"2026-01-01T00:00:11Z"}]}"#,
        )
        .unwrap();
        let t: Vec<String> = body
            .messages
            .iter()
            .map(|m| m.timestamp.to_rfc3339())
            .collect();
        assert_eq!(
            t,
            [
                "2026-01-01T00:00:08.000Z",
                "2026-01-01T00:00:07.000Z",
                "2026-01-01T00:00:10.000Z"
            ]
        );
        assert_eq!(
            body.messages[0].context.as_deref().map(RawValue::get),
            Some(r#"{"app":"b"}"#)
        );
        let merged: Value =
            serde_json::from_str(body.messages[1].context.as_ref().unwrap().get()).unwrap();
        assert_eq!(
            (merged["app"].as_str(), merged["ip"].as_str()),
            (Some("b"), Some("::1"))
        );
        // Without sentAt the client's time is kept as it is.
        let plain = one(
            Route::Single(Call::Track),
            r#"{"event":"e","userId":"u","timestamp":"2020-05-05T05:05:05.5Z"}"#,
        )
        .unwrap();
        assert_eq!(plain.messages[0].timestamp, ms("2020-05-05T05:05:05.500Z"));
    }

    #[test]
    fn refusals_name_the_field_and_the_call() {
        let t = Route::Single(Call::Track);
        assert_eq!(
            err(t, r#"{"event":"e"}"#),
            (None, "missing_field", Some("userId".into()))
        );
        assert_eq!(
            err(t, r#"{"userId":"u"}"#),
            (None, "missing_field", Some("event".into()))
        );
        assert_eq!(err(t, r#"{"event":5,"userId":"u"}"#).1, "invalid_field");
        assert_eq!(
            err(t, r#"{"event":"e","userId":{}}"#).2.as_deref(),
            Some("userId")
        );
        assert_eq!(
            err(t, r#"{"event":"e","userId":"u","properties":[]}"#)
                .2
                .as_deref(),
            Some("properties")
        );
        assert_eq!(
            err(t, r#"{"event":"e","userId":"u","context":"x"}"#)
                .2
                .as_deref(),
            Some("context")
        );
        assert_eq!(
            err(t, r#"{"event":"e","userId":"u","timestamp":"yesterday"}"#)
                .2
                .as_deref(),
            Some("timestamp")
        );
        assert_eq!(
            err(t, r#"{"type":"page","event":"e","userId":"u"}"#)
                .2
                .as_deref(),
            Some("type")
        );
        assert_eq!(
            err(t, r#"{"event":"e","event":"f","userId":"u"}"#).1,
            "duplicate_key"
        );
        assert_eq!(err(t, "[1]").1, "invalid_event");
        assert_eq!(err(t, "{").1, "invalid_json");
        let b = Route::Batch;
        assert_eq!(
            err(
                b,
                r#"{"batch":[{"type":"track","event":"e","userId":"u"},{"type":"bogus","userId":"u"}]}"#
            ),
            (Some(1), "invalid_field", Some("type".into()))
        );
        assert_eq!(err(b, r#"{"batch":[]}"#).1, "empty_batch");
        assert_eq!(
            err(b, r#"{"sentAt":"x","batch":[]}"#).2.as_deref(),
            Some("sentAt")
        );
        assert_eq!(
            err(b, r#"{}"#),
            (None, "missing_field", Some("batch".into()))
        );
        let big = format!(
            r#"{{"event":"e","userId":"u","properties":{{"p":"{}"}}}}"#,
            "x".repeat(33 * 1024)
        );
        assert_eq!(err(t, &big).1, "event_too_large");
        let many = format!(
            r#"{{"batch":[{}]}}"#,
            vec![r#"{"type":"track","event":"e","userId":"u"}"#; 101].join(",")
        );
        assert_eq!(err(b, &many).1, "batch_too_large");
    }
}
