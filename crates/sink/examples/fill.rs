//! Pre-fills a topic with canonical events for the sink benchmark (`bench/sink/run`).
//!
//! `fill BROKERS TOPIC COUNT [RATE]`: COUNT events of ~200 bytes, keyed by id, as fast as
//! possible or at RATE events/s (each stamped `ingest_time` = when it is produced, as ingest
//! would).
//! `fill BROKERS TOPIC delete`: deletes the topic afterwards.

use std::time::{Duration, Instant};

use ess_core::wire::{Millis, WireEvent};
use rdkafka::config::ClientConfig;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};
use serde_json::value::RawValue;

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let [_, brokers, topic, count, ..] = &args[..] else {
        anyhow::bail!("usage: fill BROKERS TOPIC COUNT");
    };
    if count == "delete" {
        let admin: rdkafka::admin::AdminClient<rdkafka::client::DefaultClientContext> =
            ClientConfig::new()
                .set("bootstrap.servers", brokers)
                .create()?;
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        runtime.block_on(admin.delete_topics(&[topic], &rdkafka::admin::AdminOptions::new()))?;
        return Ok(());
    }
    let count: u64 = count.parse()?;
    let rate: Option<f64> = args.get(4).map(|r| r.parse()).transpose()?;
    let producer: ThreadedProducer<DefaultProducerContext> = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("linger.ms", "20")
        .set("batch.size", "1000000")
        .set("compression.type", "lz4")
        .set("queue.buffering.max.messages", "1000000")
        .create()?;
    let started = Instant::now();
    let kinds = ["page_view", "click", "signup", "purchase"];
    for i in 0..count {
        if let Some(rate) = rate
            && i % 500 == 0
        {
            let due = Duration::from_secs_f64(i as f64 / rate);
            let elapsed = started.elapsed();
            if due > elapsed {
                std::thread::sleep(due - elapsed);
            }
        }
        let id = uuid::Uuid::now_v7();
        let props = RawValue::from_string(format!(
            r#"{{"path":"/products/{}","ref":"campaign-{}","n":{i},"ua":"Mozilla/5.0 (X11; Linux x86_64)"}}"#,
            i % 997,
            i % 13
        ))?;
        let now = Millis::now();
        let event = WireEvent {
            id,
            kind: kinds[(i % 4) as usize].into(),
            source: "bench".into(),
            timestamp: Millis(now.0 - 5),
            ingest_time: now,
            properties: &props,
            ..WireEvent::default()
        };
        let json = event.to_json();
        let key = id.to_string();
        let mut record = BaseRecord::to(topic).key(&key).payload(&json);
        loop {
            match producer.send(record) {
                Ok(()) => break,
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), r)) => {
                    record = r;
                    std::thread::sleep(Duration::from_millis(5));
                }
                Err((e, _)) => return Err(e.into()),
            }
        }
    }
    producer.flush(Duration::from_secs(120))?;
    let secs = started.elapsed().as_secs_f64();
    println!(
        "filled {topic} with {count} events in {secs:.1} s ({:.0}/s)",
        count as f64 / secs
    );
    Ok(())
}
