//! The broker: a message produced with rdkafka comes back through a consumer group, and the
//! group's committed offset survives the consumer; the durable build keeps messages and
//! committed offsets across a restart of the broker.

use std::time::Duration;

use rdkafka::Message;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, StreamConsumer};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{Offset, TopicPartitionList};

use ess_core::config::{BrokerBuild, Config, StackConfig};
use ess_stack::Stack;
use ess_testkit::Ephemeral;

use crate::sink::produce;

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

/// The durable broker (`--broker durable`) keeps topics, messages and committed offsets when
/// it is stopped and started again: a sink stores events, the broker restarts under it, more
/// events come, and every event is stored exactly once, the topic's offsets going on where
/// they stopped and the group resuming from what it had committed.
///
/// Needs the durable build (`ess stack install --broker durable`: about 10 minutes of
/// compiling once, cached after that). Without it the test says so and does not run, except
/// in CI (`CI` set), where `.ci/run` installs the build first and its absence is a failure.
#[tokio::test]
async fn durable_broker_keeps_messages_and_committed_offsets_across_a_restart() {
    const PARTITIONS: i32 = 2;
    const FIRST: u64 = 1_000;
    if !durable_broker_installed(
        "durable_broker_keeps_messages_and_committed_offsets_across_a_restart",
    ) {
        return;
    }
    let private = PrivateBroker::start(BrokerBuild::Durable).await;

    let mut config = ess_testkit::stack_config();
    let name = ess_testkit::unique("restart");
    config.kafka.brokers = private.brokers();
    config.kafka.topic = format!("{name}.events");
    config.kafka.dlq_topic = format!("{name}.dlq");
    config.kafka.partitions = PARTITIONS;
    config.clickhouse.database = name.clone();
    config.sink.group_id = format!("{name}.sink");
    config.sink.session_timeout_ms = 6_000;
    config.sink.heartbeat_interval_ms = 500;
    config.sink.listen = String::new();
    let migrated = ess_core::migrate::run(&config).await.expect("migrate");
    // With merges stopped a duplicate stays a row of its own instead of being collapsed by
    // ReplacingMergeTree before we count.
    ess_testkit::stop_merges(&config).await;

    let (stop_sink, stopped) = tokio::sync::oneshot::channel::<()>();
    let sink = ess_sink::start(config.clone(), async move {
        let _ = stopped.await;
    })
    .await
    .expect("sink starts");
    produce(&producer(&config), &config.kafka.topic, FIRST).await;
    assert_eq!(stored(&config, FIRST).await, (FIRST, FIRST, FIRST));
    committed_reaches(&config, PARTITIONS, FIRST as i64).await;

    assert!(private.stack.stop_service("broker").await.expect("stop"));
    private
        .stack
        .start_service("broker")
        .await
        .expect("broker starts again");
    // What the broker kept: every message and the group's committed offsets.
    let (kept, committed) = tokio::task::spawn_blocking({
        let config = config.clone();
        move || {
            (
                high_watermarks(&config, PARTITIONS),
                committed(&config, PARTITIONS),
            )
        }
    })
    .await
    .expect("join");
    assert_eq!(kept, FIRST as i64, "messages kept across the restart");
    assert_eq!(committed, FIRST as i64, "committed offsets kept");

    produce(&producer(&config), &config.kafka.topic, FIRST).await;
    // Nothing lost, nothing stored twice, and the new events got new offsets: a broker that
    // forgot the topic would have numbered them from 0 again.
    assert_eq!(
        stored(&config, 2 * FIRST).await,
        (2 * FIRST, 2 * FIRST, 2 * FIRST)
    );
    committed_reaches(&config, PARTITIONS, 2 * FIRST as i64).await;

    let _ = stop_sink.send(());
    sink.wait().await.expect("sink stops cleanly");
    assert_eq!(
        stored(&config, 2 * FIRST).await,
        (2 * FIRST, 2 * FIRST, 2 * FIRST)
    );
    let (client, _) = ess_core::clickhouse::connect(&config.clickhouse, &config.clickhouse.url)
        .await
        .expect("ClickHouse");
    let _ = client
        .query(&migrated.schema.drop_database())
        .execute()
        .await;
}

/// Whether the durable build is in the stack's cache, for `test` (named in the notice).
/// Missing, it is a failure in CI and a printed notice elsewhere (installing it would make
/// one test take 10 minutes).
pub(crate) fn durable_broker_installed(test: &str) -> bool {
    let cache_dir = StackConfig::default().cache_dir;
    if ess_stack::install::is_installed(&cache_dir, BrokerBuild::Durable) {
        return true;
    }
    assert!(
        std::env::var_os("CI").is_none(),
        "the durable broker is not installed in {} (CI installs it with \
         `ess stack install --broker durable` before the tests)",
        cache_dir.display()
    );
    eprintln!(
        "NOT RUN: {test} needs the durable broker; install it once with \
         `ess stack install --broker durable` (about 10 minutes of compiling)"
    );
    false
}

/// A broker of the stack's, alone, on a free port and in a directory of its own; stopped and
/// removed on drop (its log is kept when the test failed).
struct PrivateBroker {
    stack: Stack,
}

impl PrivateBroker {
    async fn start(build: BrokerBuild) -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("free port")
            .port();
        let config = StackConfig {
            state_dir: std::env::temp_dir().join(ess_testkit::unique("broker")),
            broker: build,
            broker_port: port,
            ..StackConfig::default()
        };
        let stack = Stack::new(&config);
        stack.install().await.expect("broker installed");
        stack.start_service("broker").await.expect("broker starts");
        Self { stack }
    }

    fn brokers(&self) -> String {
        format!("127.0.0.1:{}", self.stack.config().broker_port)
    }
}

impl Drop for PrivateBroker {
    fn drop(&mut self) {
        self.stack.down_blocking();
        if !std::thread::panicking() {
            let _ = std::fs::remove_dir_all(self.stack.state_dir());
        }
    }
}

fn producer(config: &Config) -> FutureProducer {
    ess_core::kafka::client_config(&config.kafka)
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("linger.ms", "5")
        .create()
        .expect("producer")
}

/// `count()`, `uniqExact(id)` and distinct (partition, offset) pairs of the stored rows once
/// at least `n` rows are there (or whatever is there after 120 s).
async fn stored(config: &Config, n: u64) -> (u64, u64, u64) {
    let url = config.clickhouse.url.clone();
    let query = format!(
        "SELECT count(), uniqExact(id), uniqExact(kafka_partition, kafka_offset) FROM {}.{}",
        config.clickhouse.database, config.clickhouse.table
    );
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    loop {
        let counts = match ess_core::clickhouse::connect(&config.clickhouse, &url).await {
            Ok((client, _)) => client
                .query(&query)
                .fetch_one::<(u64, u64, u64)>()
                .await
                .unwrap_or_default(),
            Err(_) => Default::default(),
        };
        if counts.0 >= n || std::time::Instant::now() > deadline {
            return counts;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn committed_reaches(config: &Config, partitions: i32, n: i64) {
    let config = config.clone();
    ess_testkit::eventually(
        Duration::from_secs(60),
        &format!("the group commits offset {n}"),
        move || {
            let config = config.clone();
            async move {
                tokio::task::spawn_blocking(move || committed(&config, partitions))
                    .await
                    .ok()
                    .filter(|c| *c == n)
            }
        },
    )
    .await;
}

/// The group's committed offsets, summed over the partitions.
fn committed(config: &Config, partitions: i32) -> i64 {
    let consumer: BaseConsumer = ess_core::kafka::client_config(&config.kafka)
        .set("group.id", &config.sink.group_id)
        .create()
        .expect("consumer");
    let mut tpl = TopicPartitionList::new();
    for p in 0..partitions {
        tpl.add_partition(&config.kafka.topic, p);
    }
    consumer
        .committed_offsets(tpl, Duration::from_secs(10))
        .map(|c| {
            c.elements()
                .iter()
                .map(|e| match e.offset() {
                    Offset::Offset(o) => o,
                    _ => 0,
                })
                .sum()
        })
        .unwrap_or(-1)
}

/// The topic's high watermarks (messages it holds), summed over the partitions.
fn high_watermarks(config: &Config, partitions: i32) -> i64 {
    let consumer: BaseConsumer = ess_core::kafka::client_config(&config.kafka)
        .create()
        .expect("consumer");
    (0..partitions)
        .map(|p| {
            consumer
                .fetch_watermarks(&config.kafka.topic, p, Duration::from_secs(10))
                .map(|(_, high)| high)
                .unwrap_or(-1)
        })
        .sum()
}
