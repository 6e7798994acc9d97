//! Reading a topic back from the beginning, to count what is in it.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, Message};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};

/// One message read back from the topic.
#[derive(Debug, Clone)]
pub struct Record {
    /// The message key.
    pub key: String,
    /// The value, parsed.
    pub value: serde_json::Value,
    /// The value as it is in the topic.
    pub raw: Vec<u8>,
    /// The message timestamp.
    pub timestamp_ms: Option<i64>,
    /// The `ess-schema` header.
    pub schema_header: Option<String>,
}

/// Reads the whole topic from the beginning: at least `expect` messages, then until every
/// partition is at its end (so duplicates would show).
pub async fn read_topic(brokers: &str, topic: &str, expect: usize) -> Vec<Record> {
    let brokers = brokers.to_owned();
    let topic = topic.to_owned();
    tokio::task::spawn_blocking(move || read_topic_blocking(&brokers, &topic, expect))
        .await
        .expect("reader thread")
}

fn read_topic_blocking(brokers: &str, topic: &str, expect: usize) -> Vec<Record> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", crate::unique("reader"))
        .set("enable.auto.commit", "false")
        .set("enable.partition.eof", "true")
        .set("fetch.wait.max.ms", "10")
        .create()
        .expect("consumer");
    let partitions = ess_core::kafka::partition_ids(&consumer, topic, Duration::from_secs(10))
        .expect("metadata");
    assert!(!partitions.is_empty(), "topic {topic} has no partitions");
    let mut list = TopicPartitionList::new();
    for p in &partitions {
        list.add_partition_offset(topic, *p, Offset::Beginning)
            .expect("offset");
    }
    consumer.assign(&list).expect("assign");
    let mut records = Vec::new();
    let mut at_end: HashSet<i32> = HashSet::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < deadline {
        match consumer.poll(Duration::from_millis(100)) {
            Some(Ok(message)) => {
                at_end.remove(&message.partition());
                let raw = message.payload().unwrap_or_default().to_vec();
                let schema_header = message.headers().and_then(|h| {
                    h.iter()
                        .find(|h| h.key == "ess-schema")
                        .and_then(|h| h.value)
                        .map(|v| String::from_utf8_lossy(v).into_owned())
                });
                records.push(Record {
                    key: String::from_utf8_lossy(message.key().unwrap_or_default()).into_owned(),
                    value: serde_json::from_slice(&raw).expect("message value is JSON"),
                    raw,
                    timestamp_ms: message.timestamp().to_millis(),
                    schema_header,
                });
            }
            Some(Err(rdkafka::error::KafkaError::PartitionEOF(p))) => {
                at_end.insert(p);
            }
            Some(Err(e)) => panic!("consume: {e}"),
            None => {}
        }
        if records.len() >= expect && at_end.len() == partitions.len() {
            return records;
        }
    }
    panic!(
        "read {} of {expect} messages from {topic} before the deadline",
        records.len()
    );
}

/// Asserts every id appears exactly once among `records`, each keyed by its id.
pub fn assert_exactly_once(records: &[Record], ids: &[String]) {
    let mut seen = std::collections::HashMap::new();
    for r in records {
        assert_eq!(
            r.value["id"].as_str(),
            Some(r.key.as_str()),
            "key is the event id"
        );
        *seen.entry(r.key.clone()).or_insert(0usize) += 1;
    }
    let mut missing = 0;
    for id in ids {
        match seen.get(id) {
            Some(1) => {}
            Some(n) => panic!("event {id} is in the topic {n} times"),
            None => missing += 1,
        }
    }
    assert_eq!(
        missing, 0,
        "{missing} acknowledged events are not in the topic"
    );
}
