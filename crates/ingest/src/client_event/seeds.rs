//! The hand-written serde seeds that read an event in one pass: the event object with borrowed
//! strings ([`EventSeed`]), a batch array that stops past the limit ([`ArraySeed`]), and the
//! walk that refuses duplicate keys and deep nesting in `properties` and `context` ([`Walk`]).
//! A refusal of ours is left in a `Cell` for the caller, so that it keeps its variant instead
//! of becoming serde's message.

use std::borrow::Cow;
use std::cell::Cell;
use std::collections::HashSet;
use std::fmt;

use ess_core::wire::Millis;
use serde::de::{self, DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::value::RawValue;
use uuid::Uuid;

use super::{Event, EventError};

pub(super) const TOO_MANY: &str = "ess: too many events";

/// Reads `[raw, raw, …]`, stopping as soon as there are more than `max`.
pub(super) struct ArraySeed {
    pub(super) max: usize,
}

impl<'de> DeserializeSeed<'de> for ArraySeed {
    type Value = Vec<&'de RawValue>;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_seq(self)
    }
}

impl<'de> Visitor<'de> for ArraySeed {
    type Value = Vec<&'de RawValue>;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an array of events")
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        let mut out = Vec::with_capacity(seq.size_hint().unwrap_or(16).min(self.max));
        while let Some(raw) = seq.next_element::<&'de RawValue>()? {
            if out.len() == self.max {
                return Err(de::Error::custom(TOO_MANY));
            }
            out.push(raw);
        }
        Ok(out)
    }
}

/// The event object's keys.
enum Field<'de> {
    Id,
    Type,
    Timestamp,
    Properties,
    Source,
    UserId,
    AnonymousId,
    Context,
    Unknown(Cow<'de, str>),
}

struct FieldSeed;

impl<'de> DeserializeSeed<'de> for FieldSeed {
    type Value = Field<'de>;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_str(self)
    }
}

impl<'de> Visitor<'de> for FieldSeed {
    type Value = Field<'de>;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a field name")
    }
    fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
        Ok(Self::field(v).unwrap_or(Field::Unknown(Cow::Borrowed(v))))
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
        Ok(Self::field(v).unwrap_or_else(|| Field::Unknown(Cow::Owned(v.to_owned()))))
    }
}

impl FieldSeed {
    fn field<'de>(name: &str) -> Option<Field<'de>> {
        Some(match name {
            "id" => Field::Id,
            "type" => Field::Type,
            "timestamp" => Field::Timestamp,
            "properties" => Field::Properties,
            "source" => Field::Source,
            "user_id" => Field::UserId,
            "anonymous_id" => Field::AnonymousId,
            "context" => Field::Context,
            _ => return None,
        })
    }
}

/// A string, borrowed from the input when it has no escapes.
struct StrSeed;

impl<'de> DeserializeSeed<'de> for StrSeed {
    type Value = Cow<'de, str>;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_str(self)
    }
}

impl<'de> Visitor<'de> for StrSeed {
    type Value = Cow<'de, str>;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a string")
    }
    fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
        Ok(Cow::Borrowed(v))
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
        Ok(Cow::Owned(v.to_owned()))
    }
}

/// A value that may be `null`, meaning absent.
struct Nullable<S>(S);

impl<'de, S: DeserializeSeed<'de>> DeserializeSeed<'de> for Nullable<S> {
    type Value = Option<S::Value>;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_option(self)
    }
}

impl<'de, S: DeserializeSeed<'de>> Visitor<'de> for Nullable<S> {
    type Value = Option<S::Value>;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a value or null")
    }
    fn visit_none<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok(None)
    }
    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        self.0.deserialize(d).map(Some)
    }
}

/// A seed for a plain `Deserialize` type.
struct Plain<T>(std::marker::PhantomData<T>);

impl<T> Plain<T> {
    fn new() -> Self {
        Self(std::marker::PhantomData)
    }
}

impl<'de, T: de::Deserialize<'de>> DeserializeSeed<'de> for Plain<T> {
    type Value = T;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<T, D::Error> {
        T::deserialize(d)
    }
}

/// Reads the event object; a refusal is left in `found` for the caller.
pub(super) struct EventSeed<'c> {
    pub(super) found: &'c Cell<Option<EventError>>,
}

impl<'de> DeserializeSeed<'de> for EventSeed<'_> {
    type Value = Event<'de>;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_map(self)
    }
}

impl EventSeed<'_> {
    fn fail<E: de::Error>(&self, error: EventError) -> E {
        let message = error.to_string();
        self.found.set(Some(error));
        E::custom(message)
    }

    /// Reads one field's value, naming the field when it is wrong.
    fn value<'de, A, S>(
        &self,
        map: &mut A,
        field: &'static str,
        seed: S,
    ) -> Result<S::Value, A::Error>
    where
        A: MapAccess<'de>,
        S: DeserializeSeed<'de>,
    {
        map.next_value_seed(seed).inspect_err(|e| {
            // Keep serde_json's error (its category tells syntax from data); remember which
            // field it was about in case it is a data error.
            let reason = e.to_string();
            // Strip serde_json's " at line 1 column 9" suffix: the field name says more.
            let reason = match reason.rfind(" at line ") {
                Some(at) => reason[..at].to_owned(),
                None => reason,
            };
            self.found.set(Some(EventError::Invalid { field, reason }));
        })
    }
}

impl<'de> Visitor<'de> for EventSeed<'_> {
    type Value = Event<'de>;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an event object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut id: Option<Option<Uuid>> = None;
        let mut kind: Option<Cow<'de, str>> = None;
        let mut source: Option<Option<Cow<'de, str>>> = None;
        let mut timestamp: Option<Option<Millis>> = None;
        let mut properties: Option<Option<&'de RawValue>> = None;
        let mut user_id: Option<Option<Cow<'de, str>>> = None;
        let mut anonymous_id: Option<Option<Cow<'de, str>>> = None;
        let mut context: Option<Option<&'de RawValue>> = None;
        while let Some(field) = map.next_key_seed(FieldSeed)? {
            let duplicate = |name: &str| self.fail(EventError::Duplicate(name.to_owned()));
            match field {
                Field::Id => {
                    if id.is_some() {
                        return Err(duplicate("id"));
                    }
                    id = Some(self.value(&mut map, "id", Nullable(Plain::<Uuid>::new()))?);
                }
                Field::Type => {
                    if kind.is_some() {
                        return Err(duplicate("type"));
                    }
                    kind = Some(self.value(&mut map, "type", StrSeed)?);
                }
                Field::Source => {
                    if source.is_some() {
                        return Err(duplicate("source"));
                    }
                    source = Some(self.value(&mut map, "source", Nullable(StrSeed))?);
                }
                Field::Timestamp => {
                    if timestamp.is_some() {
                        return Err(duplicate("timestamp"));
                    }
                    timestamp = Some(self.value(
                        &mut map,
                        "timestamp",
                        Nullable(Plain::<Millis>::new()),
                    )?);
                }
                Field::Properties => {
                    if properties.is_some() {
                        return Err(duplicate("properties"));
                    }
                    // Borrowed raw text: `null` stays "null" here and is refused later.
                    let raw = self.value(&mut map, "properties", Plain::<&'de RawValue>::new())?;
                    properties = Some(if raw.get() == "null" { None } else { Some(raw) });
                }
                Field::UserId => {
                    if user_id.is_some() {
                        return Err(duplicate("user_id"));
                    }
                    user_id = Some(self.value(&mut map, "user_id", Nullable(StrSeed))?);
                }
                Field::AnonymousId => {
                    if anonymous_id.is_some() {
                        return Err(duplicate("anonymous_id"));
                    }
                    anonymous_id = Some(self.value(&mut map, "anonymous_id", Nullable(StrSeed))?);
                }
                Field::Context => {
                    if context.is_some() {
                        return Err(duplicate("context"));
                    }
                    let raw = self.value(&mut map, "context", Plain::<&'de RawValue>::new())?;
                    context = Some(if raw.get() == "null" { None } else { Some(raw) });
                }
                Field::Unknown(name) => {
                    return Err(self.fail(EventError::Unknown(name.into_owned())));
                }
            }
        }
        let Some(kind) = kind else {
            return Err(self.fail(EventError::Missing("type")));
        };
        Ok(Event {
            id: id.flatten(),
            kind,
            source: source.flatten(),
            timestamp: timestamp.flatten(),
            properties: properties.flatten(),
            // Empty identity is no identity: stored as the empty string either way.
            user_id: user_id.flatten().filter(|v| !v.is_empty()),
            anonymous_id: anonymous_id.flatten().filter(|v| !v.is_empty()),
            context: context.flatten(),
        })
    }
}

/// Walks a JSON value: refuses duplicate keys and nesting deeper than `max`.
pub(super) struct Walk<'c> {
    pub(super) depth: usize,
    pub(super) max: usize,
    pub(super) found: &'c Cell<Option<EventError>>,
}

impl Walk<'_> {
    fn fail<E: de::Error>(&self, error: EventError) -> E {
        let message = error.to_string();
        self.found.set(Some(error));
        E::custom(message)
    }

    /// The walker for this container's children, or a refusal when the container is too deep.
    fn children<E: de::Error>(&self) -> Result<Self, E> {
        if self.depth > self.max {
            return Err(self.fail(EventError::TooDeep(self.max)));
        }
        Ok(Walk {
            depth: self.depth + 1,
            max: self.max,
            found: self.found,
        })
    }

    fn again(&self) -> Self {
        Walk {
            depth: self.depth,
            max: self.max,
            found: self.found,
        }
    }
}

impl<'de> DeserializeSeed<'de> for Walk<'_> {
    type Value = ();
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

/// Objects with more keys than this switch from a linear scan to a hash set.
const LINEAR_KEYS: usize = 16;

impl<'de> Visitor<'de> for Walk<'_> {
    type Value = ();
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }
    fn visit_bool<E: de::Error>(self, _: bool) -> Result<(), E> {
        Ok(())
    }
    fn visit_i64<E: de::Error>(self, _: i64) -> Result<(), E> {
        Ok(())
    }
    fn visit_u64<E: de::Error>(self, _: u64) -> Result<(), E> {
        Ok(())
    }
    fn visit_f64<E: de::Error>(self, _: f64) -> Result<(), E> {
        Ok(())
    }
    fn visit_str<E: de::Error>(self, _: &str) -> Result<(), E> {
        Ok(())
    }
    fn visit_unit<E: de::Error>(self) -> Result<(), E> {
        Ok(())
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        let child = self.children()?;
        while seq.next_element_seed(child.again())?.is_some() {}
        Ok(())
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        let child = self.children()?;
        let mut keys: Vec<Cow<'de, str>> = Vec::new();
        let mut set: Option<HashSet<Cow<'de, str>>> = None;
        while let Some(key) = map.next_key_seed(StrSeed)? {
            let duplicate = match &mut set {
                Some(set) => !set.insert(key.clone()),
                None => {
                    let dup = keys.contains(&key);
                    keys.push(key.clone());
                    if keys.len() > LINEAR_KEYS {
                        set = Some(keys.drain(..).collect());
                    }
                    dup
                }
            };
            if duplicate {
                return Err(self.fail(EventError::Duplicate(format!("{key}` in `properties"))));
            }
            map.next_value_seed(child.again())?;
        }
        Ok(())
    }
}
