//! The broker: a message produced with rdkafka comes back through a consumer group, and the
//! group's committed offset survives the consumer.

use std::time::Duration;

use rdkafka::Message;
use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{Offset, TopicPartitionList};

use ess_testkit::Ephemeral;

fn consumer(eph: &Ephemeral) -> StreamConsumer {
    ess_core::kafka::client_config(&eph.config.kafka)
        .set("group.id", &eph.config.sink.group_id)
        .set("enable.auto.commit", "false")
        .set("auto.offset.reset", "earliest")
        .set("session.timeout.ms", "2000")
        .set("heartbeat.interval.ms", "500")
        .create()
        .expect("consumer")
}

#[tokio::test]
async fn produced_message_is_consumed_in_a_group_with_committed_offsets() {
    let eph = Ephemeral::new(1).await;
    let topic = eph.config.kafka.topic.clone();
    let producer: FutureProducer = ess_core::kafka::client_config(&eph.config.kafka)
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .create()
        .expect("producer");
    let key = uuid::Uuid::new_v4().to_string();
    for value in ["first", "second"] {
        producer
            .send(
                FutureRecord::to(&topic).key(&key).payload(value),
                Duration::from_secs(10),
            )
            .await
            .expect("broker acknowledged");
    }

    let first = consumer(&eph);
    first.subscribe(&[&topic]).expect("subscribe");
    let msg = tokio::time::timeout(Duration::from_secs(30), first.recv())
        .await
        .expect("a message within 30 s")
        .expect("message");
    assert_eq!(msg.key(), Some(key.as_bytes()));
    assert_eq!(msg.payload(), Some(&b"first"[..]));
    first
        .commit_message(&msg, CommitMode::Sync)
        .expect("commit");
    drop(msg);
    drop(first);

    // A new member of the same group resumes after the committed message.
    let second = consumer(&eph);
    let mut committed = TopicPartitionList::new();
    committed.add_partition(&topic, 0);
    let offsets = second
        .committed_offsets(committed, Duration::from_secs(10))
        .expect("committed offsets");
    assert_eq!(
        offsets.find_partition(&topic, 0).map(|p| p.offset()),
        Some(Offset::Offset(1))
    );
    second.subscribe(&[&topic]).expect("subscribe");
    let msg = tokio::time::timeout(Duration::from_secs(30), second.recv())
        .await
        .expect("a message within 30 s")
        .expect("message");
    assert_eq!(msg.payload(), Some(&b"second"[..]));
    drop(msg);
    drop(second);
    eph.cleanup().await;
}
