//! `ess sink` as a process: killed with SIGKILL mid-stream and restarted, it stores every
//! event exactly once; SIGTERM makes it commit what it stored, leave the group (the other
//! member takes over before the leaver's session would have expired) and exit 0.
//!
//! Merges are stopped on the test's tables, so a duplicate written at a kill stays a row of
//! its own and `count()` counts it (a ReplacingMergeTree would otherwise delete it).

use std::collections::BTreeMap;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use ess_core::config::Config;
use ess_core::wire::{Millis, WireEvent};
use ess_testkit::process::signal;
use ess_testkit::{Ephemeral, eventually, free_port, stop_merges};
use rdkafka::consumer::{BaseConsumer, Consumer as _};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{Offset, TopicPartitionList};
use serde_json::value::RawValue;

fn spawn_sink(config: &Config) -> Child {
    spawn_sink_with(config, &[])
}

/// `ess sink` with `extra` settings after the test's own (a later `--set` wins).
fn spawn_sink_with(config: &Config, extra: &[String]) -> Child {
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
    for s in sets.iter().chain(extra) {
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

/// Per partition, one past the highest offset stored in ClickHouse.
async fn stored_offsets(eph: &Ephemeral) -> BTreeMap<i32, i64> {
    let client = eph.client(&eph.config.clickhouse.url).await;
    client
        .query(&format!(
            "SELECT kafka_partition, max(kafka_offset) + 1 FROM {} GROUP BY kafka_partition",
            eph.config.clickhouse.table
        ))
        .fetch_all::<(i32, i64)>()
        .await
        .expect("stored offsets")
        .into_iter()
        .collect()
}

/// Per partition, the offset the sinks' group committed on the broker.
async fn committed_offsets(eph: &Ephemeral, partitions: i32) -> BTreeMap<i32, i64> {
    let kafka = eph.config.kafka.clone();
    let group = eph.config.sink.group_id.clone();
    tokio::task::spawn_blocking(move || {
        let consumer: BaseConsumer = ess_core::kafka::client_config(&kafka)
            .set("group.id", &group)
            .set("enable.auto.commit", "false")
            .create()
            .expect("consumer");
        let mut tpl = TopicPartitionList::new();
        for p in 0..partitions {
            tpl.add_partition(&kafka.topic, p);
        }
        consumer
            .committed_offsets(tpl, Duration::from_secs(10))
            .expect("committed offsets")
            .elements()
            .iter()
            .filter_map(|e| match e.offset() {
                Offset::Offset(o) => Some((e.partition(), o)),
                _ => None,
            })
            .collect()
    })
    .await
    .expect("join")
}

/// Sends SIGTERM and waits for the exit: it must be 0.
async fn terminate(mut sink: Child) {
    assert!(signal(&sink, "TERM"), "SIGTERM delivered");
    let exit = tokio::task::spawn_blocking(move || sink.wait())
        .await
        .expect("join")
        .expect("wait");
    assert!(exit.success(), "graceful shutdown exits 0: {exit:?}");
}

/// Kills the sink (if still held) when the test ends, passed or not.
struct KillOnDrop(Option<Child>);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if let Some(mut child) = self.0.take() {
            child.kill().ok();
            child.wait().ok();
        }
    }
}

/// Partitions the sink on `port` says it holds (`ess_sink_assigned_partitions`).
async fn assigned(port: u16) -> Option<u32> {
    let url = format!("http://127.0.0.1:{port}/metrics");
    let (_, body) = ess_load::http::get(&url, Duration::from_secs(2)).await?;
    body.lines()
        .find(|l| l.starts_with("ess_sink_assigned_partitions"))
        .and_then(|l| l.split_whitespace().last())
        .and_then(|v| v.parse::<f64>().ok())
        .map(|v| v as u32)
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
            ..WireEvent::default()
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
    stop_merges(&eph.config).await;
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

    let port = free_port();
    let mut sink = spawn_sink(&eph.config);
    // Kill it three times while rows flow, at different points of the stream.
    for threshold in [3_000u64, 12_000, 24_000] {
        eventually(Duration::from_secs(60), "rows flowing", || async {
            (count(&eph).await.0 >= threshold).then_some(())
        })
        .await;
        sink.kill().expect("SIGKILL");
        sink.wait().expect("reaped");
        sink = spawn_sink_with(&eph.config, &[format!("sink.listen=\"127.0.0.1:{port}\"")]);
    }
    stream.await.expect("stream");
    let stored = eventually(Duration::from_secs(120), "every event stored", || async {
        let c = count(&eph).await;
        (c.0 >= total).then_some(c)
    })
    .await;
    // The last one holds the partitions (it is past its start-up, so the SIGTERM below is
    // its graceful shutdown even when the one before had stored everything).
    eventually(
        Duration::from_secs(60),
        "the last sink holds every partition",
        || async { (assigned(port).await == Some(4)).then_some(()) },
    )
    .await;
    assert_eq!(stored, (total, total), "count() = uniqExact(id) = accepted");

    // SIGTERM: it commits what it stored, leaves and exits 0.
    terminate(sink).await;
    assert_eq!(count(&eph).await, (total, total), "no late duplicates");
    let stored = stored_offsets(&eph).await;
    assert_eq!(stored.len(), 4, "every partition has rows: {stored:?}");
    assert_eq!(
        stored.values().sum::<i64>(),
        total as i64,
        "one row per offset"
    );
    assert_eq!(
        committed_offsets(&eph, 4).await,
        stored,
        "the group committed exactly what is stored"
    );
    eph.cleanup().await;
}

/// A sink stopped by SIGTERM leaves the group: the member left takes its partitions at the
/// next rebalance instead of waiting for the leaver's session to expire. With a 20 s session
/// the broker here hands them over ~11 s after a leave and ~30 s after a silent death
/// (a member that never says it left is waited for for the whole session, then a join round),
/// so "stored within the session timeout" tells the two apart.
#[tokio::test]
async fn sigterm_leaves_the_group_so_the_other_sink_takes_over_before_the_session_expires() {
    const SESSION: Duration = Duration::from_secs(20);
    let eph = Ephemeral::new(4).await;
    stop_merges(&eph.config).await;
    let ports = [free_port(), free_port()];
    let spawn = |port: u16| {
        spawn_sink_with(
            &eph.config,
            &[
                format!("sink.listen=\"127.0.0.1:{port}\""),
                format!("sink.session_timeout_ms={}", SESSION.as_millis()),
                "sink.heartbeat_interval_ms=1000".into(),
            ],
        )
    };
    let mut leaver = KillOnDrop(Some(spawn(ports[0])));
    let _stayer = KillOnDrop(Some(spawn(ports[1])));
    eventually(
        Duration::from_secs(120),
        "both sinks hold partitions",
        || async {
            let (a, b) = (assigned(ports[0]).await?, assigned(ports[1]).await?);
            (a > 0 && b > 0 && a + b == 4).then_some(())
        },
    )
    .await;

    terminate(leaver.0.take().expect("running")).await;
    let left = Instant::now();
    let producer: FutureProducer = ess_core::kafka::client_config(&eph.config.kafka)
        .set("acks", "all")
        .create()
        .expect("producer");
    const EVENTS: u64 = 4_000;
    produce(&producer, &eph.config.kafka.topic, EVENTS).await;
    assert_eq!(
        stored_offsets(&eph).await.len(),
        0,
        "nothing was stored before"
    );

    let deadline = left + SESSION;
    loop {
        let held = assigned(ports[1]).await.unwrap_or(0);
        let (rows, _) = count(&eph).await;
        if held == 4 && rows >= EVENTS {
            eprintln!(
                "taken over and stored {:.1?} after the SIGTERM",
                left.elapsed()
            );
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{:.1?} after the SIGTERM the other sink holds {held} of 4 partitions and \
             stored {rows} of {EVENTS} events: the leaver's session was waited out",
            left.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert_eq!(
        count(&eph).await,
        (EVENTS, EVENTS),
        "each event stored once"
    );
    assert_eq!(
        stored_offsets(&eph).await.len(),
        4,
        "every partition has rows"
    );
    eph.cleanup().await;
}
