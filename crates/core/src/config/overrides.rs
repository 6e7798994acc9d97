//! The librdkafka properties `[kafka.client]` and `[ingest.producer]` may not change.
//!
//! Those maps win over what ess sets, so one line could quietly undo a promise: a producer
//! with `acks=1` acknowledges events a broker failure loses, a consumer with
//! `enable.auto.commit=true` commits offsets of rows not stored yet. Such values are refused
//! by name; any other property passes through to librdkafka unchanged.

use std::collections::BTreeMap;

use serde::{Deserialize, Deserializer};

use super::{ConfigError, value_error};

/// A property's value as TOML may write it.
#[derive(Deserialize)]
#[serde(untagged)]
enum Scalar {
    Text(String),
    Integer(i64),
    Float(f64),
    Bool(bool),
}

/// Reads a map of librdkafka properties, taking numbers and booleans as their text
/// (`linger.ms = 5` means `"5"`), as librdkafka itself takes every value.
pub(crate) fn properties<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<BTreeMap<String, String>, D::Error> {
    let raw = BTreeMap::<String, Scalar>::deserialize(deserializer)?;
    Ok(raw
        .into_iter()
        .map(|(k, v)| {
            let text = match v {
                Scalar::Text(s) => s,
                Scalar::Integer(i) => i.to_string(),
                Scalar::Float(f) => f.to_string(),
                Scalar::Bool(b) => b.to_string(),
            };
            (k, text)
        })
        .collect())
}

/// A property and the values it may take (empty: none; the key has its own setting).
struct Rule {
    names: &'static [&'static str],
    allowed: &'static [&'static str],
    why: &'static str,
}

const RULES: &[Rule] = &[
    Rule {
        names: &["acks", "request.required.acks"],
        allowed: &["all", "-1"],
        why: "must stay `all`: ingest answers 2xx only once every in-sync replica has the event",
    },
    Rule {
        names: &["enable.idempotence"],
        allowed: &["true"],
        why: "must stay `true`: without it a retried send can write an event twice or out of order",
    },
    Rule {
        names: &["enable.auto.commit", "enable.auto.offset.store"],
        allowed: &["false"],
        why: "must stay `false`: the sink commits an offset only after its rows are stored",
    },
    Rule {
        names: &["group.id"],
        allowed: &[],
        why: "set `sink.group_id` instead",
    },
    Rule {
        names: &["bootstrap.servers", "metadata.broker.list"],
        allowed: &[],
        why: "set `kafka.brokers` instead",
    },
    Rule {
        names: &["transactional.id"],
        allowed: &[],
        why: "ess does not use Kafka transactions; the idempotent producer and the sink's \
              fence give exactly-once",
    },
];

/// Refuses a value of `section.<property>` that breaks a promise, naming the key.
pub(crate) fn check(
    section: &str,
    properties: &BTreeMap<String, String>,
) -> Result<(), ConfigError> {
    for (name, value) in properties {
        let name = name.trim();
        let Some(rule) = RULES.iter().find(|r| r.names.contains(&name)) else {
            continue;
        };
        let value = value.trim().to_ascii_lowercase();
        if !rule.allowed.contains(&value.as_str()) {
            return Err(value_error(
                &format!("{section}.{name}"),
                format!("{value:?} is not allowed: {}", rule.why),
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::super::Config;

    #[test]
    fn properties_that_break_a_promise_are_refused_by_name() {
        for (set, named) in [
            ("ingest.producer.acks=1", "ingest.producer.acks"),
            ("ingest.producer.acks=1", "every in-sync replica"),
            (
                "kafka.client.\"request.required.acks\"=0",
                "kafka.client.request.required.acks",
            ),
            (
                "ingest.producer.\"enable.idempotence\"=false",
                "ingest.producer.enable.idempotence",
            ),
            (
                "kafka.client.\"enable.auto.commit\"=true",
                "kafka.client.enable.auto.commit",
            ),
            ("kafka.client.\"group.id\"=other", "sink.group_id"),
            (
                "kafka.client.\"bootstrap.servers\"=10.0.0.1:9092",
                "kafka.brokers",
            ),
            (
                "ingest.producer.\"transactional.id\"=t",
                "ingest.producer.transactional.id",
            ),
        ] {
            let err = Config::load_from(None, &[], &[set.into()])
                .expect_err(set)
                .to_string();
            assert!(err.contains(named), "{set}: {err}");
        }
    }

    #[test]
    fn numbers_and_booleans_are_taken_as_text_and_quoted_keys_keep_their_dots() {
        let c = Config::load_from(
            None,
            &[],
            &[
                "ingest.producer.\"linger.ms\"=5".into(),
                "ingest.producer.\"enable.idempotence\"=true".into(),
                "kafka.client.\"socket.timeout.ms\"=\"30000\"".into(),
            ],
        )
        .unwrap();
        assert_eq!(c.ingest.producer["linger.ms"], "5");
        assert_eq!(c.ingest.producer["enable.idempotence"], "true");
        assert_eq!(c.kafka.client["socket.timeout.ms"], "30000");
    }

    #[test]
    fn the_values_ess_sets_and_other_properties_pass() {
        for set in [
            "ingest.producer.acks=all",
            "ingest.producer.acks=-1",
            "ingest.producer.\"enable.idempotence\"=TRUE",
            "kafka.client.\"enable.auto.commit\"=false",
            "kafka.client.\"socket.timeout.ms\"=30000",
            "ingest.producer.\"batch.size\"=1000000",
        ] {
            Config::load_from(None, &[], &[set.into()]).expect(set);
        }
    }
}
