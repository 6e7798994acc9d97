//! Producing events, running in-process sinks, counting what ClickHouse stores.

use std::time::Duration;

use ess_core::config::Config;
use ess_core::wire::{Millis, WireEvent};
pub use ess_testkit::stop_merges;
use rdkafka::producer::{FutureProducer, FutureRecord};
use serde_json::value::RawValue;
use tokio::sync::oneshot;

/// Sink logs on stderr (`RUST_LOG`, default warn), shown with `--nocapture`.
pub fn init_logs() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_test_writer()
        .try_init();
}

/// Settings for fast group joins and small batches.
pub fn test_config(mut config: Config) -> Config {
    config.sink.session_timeout_ms = 2000;
    config.sink.heartbeat_interval_ms = 500;
    config.sink.listen = "127.0.0.1:0".into();
    config.sink.batch_rows = 2_000;
    config.sink.batch_max_wait = Duration::from_millis(100);
    config.sink.revoke_timeout = Duration::from_secs(10);
    config.sink.retry_max_backoff = Duration::from_secs(2);
    config
}

pub fn producer(config: &Config) -> FutureProducer {
    ess_core::kafka::client_config(&config.kafka)
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("linger.ms", "5")
        .set("compression.type", "lz4")
        .create()
        .expect("producer")
}

/// An event with a unicode property; `n` makes its properties unique.
pub fn event_json(n: u64) -> (uuid::Uuid, Vec<u8>) {
    event_json_at(n, "it", Millis::now().0 - 1234)
}

/// An event from `source` whose client time is `timestamp` (ms).
pub fn event_json_at(n: u64, source: &str, timestamp: i64) -> (uuid::Uuid, Vec<u8>) {
    let id = uuid::Uuid::now_v7();
    let props = RawValue::from_string(format!(
        r#"{{"n":{n},"text":"héllo wörld ✓ 日本 🚀","q":"\"x\""}}"#
    ))
    .expect("json");
    let now = Millis::now();
    let event = WireEvent {
        id,
        kind: "page_view".into(),
        source: source.into(),
        timestamp: Millis(timestamp),
        ingest_time: now,
        properties: &props,
        ..WireEvent::default()
    };
    (id, event.to_json())
}

/// Produces `n` events (keys are their ids) and waits for every acknowledgement.
pub async fn produce(config: &Config, producer: &FutureProducer, n: u64, start: u64) {
    use futures::StreamExt as _;
    let topic = &config.kafka.topic;
    futures::stream::iter(start..start + n)
        .map(|i| async move {
            let (id, json) = event_json(i);
            let key = id.to_string();
            producer
                .send(
                    FutureRecord::to(topic).key(&key).payload(&json),
                    Duration::from_secs(30),
                )
                .await
                .map(|_| ())
                .map_err(|(e, _)| e)
        })
        .buffer_unordered(2_000)
        .for_each(|r| async move { r.expect("produced") })
        .await;
}

/// Produces one raw message to `partition`.
pub async fn produce_raw(
    config: &Config,
    producer: &FutureProducer,
    partition: i32,
    key: &str,
    payload: &[u8],
) {
    producer
        .send(
            FutureRecord::to(&config.kafka.topic)
                .partition(partition)
                .key(key)
                .payload(payload),
            Duration::from_secs(30),
        )
        .await
        .expect("produced");
}

/// A sink running in this process.
pub struct InProcess {
    stop: Option<oneshot::Sender<()>>,
    running: ess_sink::Running,
}

impl InProcess {
    pub async fn start(config: &Config) -> Self {
        let (stop, stopped) = oneshot::channel::<()>();
        let running = ess_sink::start(config.clone(), async {
            let _ = stopped.await;
        })
        .await
        .expect("sink starts");
        Self {
            stop: Some(stop),
            running,
        }
    }

    pub fn health(&self) -> &ess_sink::monitoring::Health {
        &self.running.health
    }

    /// Where its `/metrics`, `/healthz` and `/readyz` listen.
    pub fn addr(&self) -> std::net::SocketAddr {
        self.running.addr.expect("the test config listens")
    }

    /// Graceful stop; returns what `run` returned.
    pub async fn stop(mut self) -> anyhow::Result<()> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        tokio::time::timeout(Duration::from_secs(60), self.running.wait())
            .await
            .expect("sink stops within 60 s")
    }
}

/// Rows per node in its local table, `(url, count, uniqExact)`.
pub async fn local_counts(config: &Config) -> Vec<(String, u64, u64)> {
    let mut out = Vec::new();
    for url in config.clickhouse.all_nodes() {
        let client = ess_core::clickhouse::client(&config.clickhouse, &url)
            .with_validation(false)
            .with_database(&config.clickhouse.database);
        let (c, u) = client
            .query(&format!(
                "SELECT count(), uniqExact(id) FROM {}",
                config.clickhouse.local_table()
            ))
            .fetch_one::<(u64, u64)>()
            .await
            .expect("local count");
        out.push((url, c, u));
    }
    out
}

/// Waits until the two replicas of each shard (nodes 1+2, 3+4) hold the same raw rows and
/// the shards add up to `n`; every replica without duplicates.
pub async fn replicas_settle(config: &Config, n: u64, timeout: Duration) {
    let mut last = Vec::new();
    let settled = tokio::time::timeout(timeout, async {
        loop {
            if let Ok(Ok(counts)) = tokio::time::timeout(
                Duration::from_secs(10),
                tokio::spawn({
                    let config = config.clone();
                    async move { local_counts(&config).await }
                }),
            )
            .await
            {
                let ok = counts.len() == 4
                    && counts.iter().all(|(_, c, u)| c == u)
                    && counts[0].1 == counts[1].1
                    && counts[2].1 == counts[3].1
                    && counts[0].1 + counts[2].1 == n;
                last = counts;
                if ok {
                    return;
                }
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    })
    .await;
    assert!(
        settled.is_ok(),
        "replicas never settled on {n} rows: (node, rows, unique) = {last:?}"
    );
}

/// `GET path` on a sink's endpoint: `(status, body)`; status 0 when it does not answer.
pub async fn http_get(addr: std::net::SocketAddr, path: &str) -> (u16, String) {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let exchange = async {
        let mut stream = tokio::net::TcpStream::connect(addr).await?;
        stream
            .write_all(format!("GET {path} HTTP/1.0\r\nHost: x\r\n\r\n").as_bytes())
            .await?;
        let mut text = String::new();
        stream.read_to_string(&mut text).await?;
        std::io::Result::Ok(text)
    };
    let Ok(Ok(text)) = tokio::time::timeout(Duration::from_secs(10), exchange).await else {
        return (0, String::new());
    };
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = text
        .split_once("\r\n\r\n")
        .map_or("", |(_, b)| b)
        .to_owned();
    (status, body)
}

/// The value of a counter or gauge in Prometheus text (0 when absent).
pub fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(name) && l[name.len()..].starts_with([' ', '{']))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// `(count(), uniqExact(id))` on the table users query.
pub async fn counts(config: &Config) -> (u64, u64) {
    counts_on(config, &config.clickhouse.url).await
}

pub async fn counts_on(config: &Config, url: &str) -> (u64, u64) {
    try_counts_on(config, url).await.expect("count")
}

pub async fn try_counts_on(config: &Config, url: &str) -> Option<(u64, u64)> {
    let client = ess_core::clickhouse::client(&config.clickhouse, url)
        .with_validation(false)
        .with_database(&config.clickhouse.database);
    client
        .query(&format!(
            "SELECT count(), uniqExact(id) FROM {}",
            config.clickhouse.table
        ))
        .fetch_one::<(u64, u64)>()
        .await
        .ok()
}

/// Waits until the table holds at least `n` rows; returns `(count, uniqExact)`.
pub async fn wait_for_rows(config: &Config, n: u64, timeout: Duration) -> (u64, u64) {
    ess_testkit::eventually(timeout, &format!("{n} rows"), || async {
        let c = try_counts_on(config, &config.clickhouse.url).await?;
        (c.0 >= n).then_some(c)
    })
    .await
}

/// Committed offsets of the group, summed over partitions (the number of messages a new
/// member would skip).
pub fn committed_total(config: &Config, partitions: i32) -> i64 {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    let consumer: BaseConsumer = ess_core::kafka::client_config(&config.kafka)
        .set("group.id", &config.sink.group_id)
        .create()
        .expect("consumer");
    let mut tpl = rdkafka::TopicPartitionList::new();
    for p in 0..partitions {
        tpl.add_partition(&config.kafka.topic, p);
    }
    let committed = consumer
        .committed_offsets(tpl, Duration::from_secs(10))
        .expect("committed offsets");
    committed
        .elements()
        .iter()
        .map(|e| match e.offset() {
            rdkafka::Offset::Offset(o) => o,
            _ => 0,
        })
        .sum()
}

/// Waits until the group's committed offsets add up to `n` over `partitions` partitions.
pub async fn wait_for_committed(config: &Config, partitions: i32, n: u64, timeout: Duration) {
    ess_testkit::eventually(timeout, &format!("{n} offsets committed"), || async {
        let config = config.clone();
        let committed = tokio::task::spawn_blocking(move || committed_total(&config, partitions))
            .await
            .ok()?;
        (committed == n as i64).then_some(())
    })
    .await;
}

/// Set in a child process of the test binary to the config file of the sink it runs.
const CHILD_CONFIG: &str = "ESS_IT_CHILD_SINK_CONFIG";

/// A sink in a process of its own (the test binary running [`child_sink`]), so a test can
/// freeze it with SIGSTOP.
pub struct ChildSink {
    child: std::process::Child,
    /// Its `/metrics`, `/healthz`, `/readyz`.
    pub addr: std::net::SocketAddr,
    /// Its log file.
    pub log: std::path::PathBuf,
}

impl ChildSink {
    pub fn start(config: &Config, name: &str) -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let mut config = config.clone();
        config.sink.listen = format!("127.0.0.1:{port}");
        let dir = std::env::temp_dir().join(ess_testkit::unique(name));
        std::fs::create_dir_all(&dir).expect("dir");
        let path = dir.join("sink.toml");
        std::fs::write(&path, config.to_toml()).expect("config file");
        let log = dir.join("sink.log");
        let out = std::fs::File::create(&log).expect("log file");
        let child = std::process::Command::new(std::env::current_exe().expect("test binary"))
            .args(["--ignored", "--exact", "support::child_sink", "--nocapture"])
            .env(CHILD_CONFIG, &path)
            .stdout(out.try_clone().expect("log"))
            .stderr(out)
            .spawn()
            .expect("child sink");
        Self {
            child,
            addr: config.sink.listen.parse().expect("address"),
            log,
        }
    }

    /// Sends `signal` (`STOP`, `CONT`, `TERM`, `KILL`).
    pub fn signal(&self, signal: &str) {
        signal_pid(self.child.id(), signal);
    }

    /// SIGTERM, then waits for the exit; returns whether it exited successfully.
    pub async fn stop(self) -> bool {
        self.terminate().await.success
    }

    /// SIGTERM, then waits (at most 3 minutes) for the exit.
    pub async fn terminate(mut self) -> Exit {
        self.signal("TERM");
        let sent = std::time::Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().expect("wait") {
                return Exit {
                    success: status.success(),
                    took: sent.elapsed(),
                };
            }
            assert!(
                sent.elapsed() < Duration::from_secs(180),
                "child sink did not stop; log: {}",
                self.log.display()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// How a [`ChildSink`] ended.
#[derive(Debug)]
pub struct Exit {
    /// Exit status 0.
    pub success: bool,
    /// From SIGTERM to the exit.
    pub took: Duration,
}

impl Drop for ChildSink {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `kill -SIGNAL pid`.
pub fn signal_pid(pid: u32, signal: &str) {
    let status = std::process::Command::new("kill")
        .arg(format!("-{signal}"))
        .arg(pid.to_string())
        .status()
        .expect("kill");
    assert!(status.success(), "kill -{signal} {pid}");
}

/// The sink process of [`ChildSink`]; does nothing when run otherwise.
#[tokio::test(flavor = "multi_thread")]
#[ignore = "the sink process of tests that freeze one; they run it"]
async fn child_sink() {
    let Ok(path) = std::env::var(CHILD_CONFIG) else {
        return;
    };
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new("info,librdkafka=warn"))
        .with_writer(std::io::stderr)
        .try_init();
    let config = Config::load(Some(std::path::Path::new(&path)), &[]).expect("config");
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("SIGTERM handler");
    ess_sink::run(config, async move {
        term.recv().await;
    })
    .await
    .expect("sink runs and stops cleanly");
}
