//! `ess sink` as a process: killed with SIGKILL mid-stream and restarted, it stores every
//! event exactly once; SIGTERM makes it commit, leave the group and exit 0.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use ess_core::config::Config;
use ess_core::event::{Millis, WireEvent};
use ess_testkit::{Ephemeral, eventually};
use rdkafka::producer::{FutureProducer, FutureRecord};
use serde_json::value::RawValue;

fn spawn_sink(config: &Config) -> Child {
    let sets = [
        format!("kafka.topic={}", config.kafka.topic),
        format!("kafka.dlq_topic={}", config.kafka.dlq_topic),
        format!("clickhouse.database={}", config.clickhouse.database),
        format!("sink.group_id={}", config.sink.group_id),
        "sink.listen=127.0.0.1:0".into(),
        "sink.session_timeout_ms=2000".into(),
        "sink.heartbeat_interval_ms=500".into(),
        "sink.batch_rows=2000".into(),
        "sink.batch_max_wait=\"100ms\"".into(),
    ];
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_ess"));
    for s in &sets {
        cmd.arg("--set").arg(s);
    }
    cmd.arg("sink")
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn ess sink")
}

async fn count(eph: &Ephemeral) -> (u64, u64) {
    let client = eph.client(&eph.config.clickhouse.url).await;
    client
        .query(&format!(
            "SELECT count(), uniqExact(id) FROM {}",
            eph.config.clickhouse.table
        ))
        .fetch_one::<(u64, u64)>()
        .await
        .unwrap_or((0, 0))
}

pub(crate) async fn produce(producer: &FutureProducer, topic: &str, n: u64) {
    let mut pending = Vec::new();
    for i in 0..n {
        let id = uuid::Uuid::now_v7();
        let props = RawValue::from_string(format!(r#"{{"n":{i},"s":"ü✓"}}"#)).expect("json");
        let now = Millis::now();
        let json = WireEvent {
            id,
            kind: "click".into(),
            source: "it".into(),
            timestamp: now,
            ingest_time: now,
            properties: &props,
        }
        .to_json();
        let producer = producer.clone();
        let topic = topic.to_owned();
        pending.push(tokio::spawn(async move {
            let key = id.to_string();
            producer
                .send(
                    FutureRecord::to(&topic).key(&key).payload(&json),
                    Duration::from_secs(30),
                )
                .await
                .map(|_| ())
                .map_err(|(e, _)| e)
        }));
    }
    for p in pending {
        p.await.expect("task").expect("produced");
    }
}

#[tokio::test]
async fn sigkill_mid_stream_and_restart_store_every_event_exactly_once() {
    let eph = Ephemeral::new(4).await;
    let topic = eph.config.kafka.topic.clone();
    let producer: FutureProducer = ess_core::kafka::client_config(&eph.config.kafka)
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("linger.ms", "5")
        .create()
        .expect("producer");
    const ROUNDS: u64 = 10;
    const PER_ROUND: u64 = 4_000;
    let total = ROUNDS * PER_ROUND;
    let stream = {
        let producer = producer.clone();
        let topic = topic.clone();
        tokio::spawn(async move {
            for _ in 0..ROUNDS {
                produce(&producer, &topic, PER_ROUND).await;
                tokio::time::sleep(Duration::from_millis(400)).await;
            }
        })
    };

    let mut sink = spawn_sink(&eph.config);
    // Kill it three times while rows flow, at different points of the stream.
    for threshold in [3_000u64, 12_000, 24_000] {
        eventually(Duration::from_secs(60), "rows flowing", || async {
            (count(&eph).await.0 >= threshold).then_some(())
        })
        .await;
        sink.kill().expect("SIGKILL");
        sink.wait().expect("reaped");
        sink = spawn_sink(&eph.config);
    }
    stream.await.expect("stream");
    let stored = eventually(Duration::from_secs(120), "every event stored", || async {
        let c = count(&eph).await;
        (c.0 >= total).then_some(c)
    })
    .await;
    assert_eq!(stored, (total, total), "count() = uniqExact(id) = accepted");

    // SIGTERM: commit, leave, exit 0.
    let status = Command::new("kill")
        .arg("-TERM")
        .arg(sink.id().to_string())
        .status()
        .expect("kill -TERM");
    assert!(status.success());
    let exit = tokio::task::spawn_blocking(move || sink.wait())
        .await
        .expect("join")
        .expect("wait");
    assert!(exit.success(), "graceful shutdown exits 0: {exit:?}");
    assert_eq!(count(&eph).await, (total, total), "no late duplicates");
    eph.cleanup().await;
}
