//! `ess ingest` as a process: its memory stays within the documented bound when clients send
//! more large bodies at once than the byte budget holds, SIGTERM ends it in time with every
//! acknowledged event in Kafka, whatever its connections are doing and even with the broker
//! frozen, and `ess load` with an API key sends what `ess verify` then finds.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use ess_core::config::{Config, StackConfig};
use ess_testkit::{Ephemeral, eventually};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const KEY: &str = "test-key-0123456789abcdef";

/// A free port in the range these tests use, a different one for each test.
fn free_port() -> u16 {
    static NEXT: std::sync::atomic::AtomicU16 = std::sync::atomic::AtomicU16::new(26100);
    loop {
        let port = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        assert!(port < 27000, "no free port in 26100..27000");
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

/// A running `ess ingest`, killed if the test ends before it stopped.
struct Ingest {
    child: Child,
    _dir: tempfile::TempDir,
}

impl Drop for Ingest {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts `ess ingest` on `port` for `config`'s topic with `[ingest]` settings `extra`.
fn spawn_ingest(config: &Config, port: u16, extra: &str) -> Ingest {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("ess.toml");
    let toml = format!(
        "[kafka]\nbrokers = \"{}\"\ntopic = \"{}\"\n\n[ingest]\nlisten = \"127.0.0.1:{port}\"\n\
         api_keys = [{{ id = \"t\", key = \"{KEY}\" }}]\n{extra}\n",
        config.kafka.brokers, config.kafka.topic
    );
    std::fs::write(&path, toml).expect("write config");
    let child = Command::new(env!("CARGO_BIN_EXE_ess"))
        .arg("--config")
        .arg(&path)
        .arg("ingest")
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn ess ingest");
    Ingest { child, _dir: dir }
}

async fn wait_ready(addr: SocketAddr) {
    eventually(Duration::from_secs(30), "ess ingest ready", || async move {
        let mut conn = Conn::open(addr).await.ok()?;
        conn.send(b"GET /readyz HTTP/1.1\r\nhost: x\r\n\r\n").await;
        (conn.response(Duration::from_secs(5)).await.status() == Some(200)).then_some(())
    })
    .await;
}

/// The process's peak resident memory (`VmHWM`), in bytes.
fn peak_rss(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("/proc status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .expect("VmHWM")
        * 1024
}

fn sigterm(child: &Child) {
    let status = Command::new("kill")
        .arg("-TERM")
        .arg(child.id().to_string())
        .status()
        .expect("kill -TERM");
    assert!(status.success());
}

/// One raw HTTP/1.1 connection.
struct Conn {
    stream: TcpStream,
}

/// What the server sent.
struct Answer {
    bytes: Vec<u8>,
}

impl Answer {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.bytes).into_owned()
    }

    fn status(&self) -> Option<u16> {
        self.text()
            .strip_prefix("HTTP/1.1 ")?
            .get(..3)?
            .parse()
            .ok()
    }

    fn json(&self) -> serde_json::Value {
        let text = self.text();
        let body = text.split_once("\r\n\r\n").map_or("", |(_, b)| b);
        serde_json::from_str(body).unwrap_or_default()
    }

    fn ids(&self) -> Vec<String> {
        assert_eq!(self.status(), Some(202), "{}", self.text());
        self.json()["ids"]
            .as_array()
            .expect("ids")
            .iter()
            .map(|id| id.as_str().expect("id").to_owned())
            .collect()
    }
}

impl Conn {
    async fn open(addr: SocketAddr) -> std::io::Result<Self> {
        Ok(Self {
            stream: TcpStream::connect(addr).await?,
        })
    }

    async fn send(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).await.expect("send");
    }

    /// Reads one response (its body has a content-length) or until the server closes.
    async fn response(&mut self, timeout: Duration) -> Answer {
        let deadline = tokio::time::Instant::now() + timeout;
        let mut bytes = Vec::new();
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            if let Some(end) = complete(&bytes) {
                bytes.truncate(end);
                return Answer { bytes };
            }
            match tokio::time::timeout_at(deadline, self.stream.read(&mut buf)).await {
                Ok(Ok(n)) if n > 0 => bytes.extend_from_slice(&buf[..n]),
                Ok(_) => return Answer { bytes },
                Err(_) => panic!(
                    "no response within {timeout:?}: {:?}",
                    String::from_utf8_lossy(&bytes)
                ),
            }
        }
    }

    /// Whether the server closes the connection before `deadline` (sending nothing).
    async fn closed_by(&mut self, deadline: tokio::time::Instant) -> bool {
        let mut buf = [0u8; 1024];
        matches!(
            tokio::time::timeout_at(deadline, self.stream.read(&mut buf)).await,
            Ok(Ok(0) | Err(_))
        )
    }
}

fn complete(bytes: &[u8]) -> Option<usize> {
    let text = std::str::from_utf8(bytes).ok()?;
    let (head, _) = text.split_once("\r\n\r\n")?;
    let length: usize = head
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("content-length")
                .then(|| v.trim().parse().ok())?
        })
        .unwrap_or(0);
    let end = head.len() + 4 + length;
    (bytes.len() >= end).then_some(end)
}

/// `batches` connections that each sent a whole batch of three events, and one that sent
/// the head of a 100-byte event and a few bytes of its body.
async fn in_flight_and_uploading(addr: SocketAddr, batches: usize) -> (Vec<Conn>, Conn) {
    let mut in_flight = Vec::new();
    for _ in 0..batches {
        let mut conn = Conn::open(addr).await.expect("connect");
        conn.send(&post(
            "/v1/events/batch",
            r#"[{"type":"f"},{"type":"f"},{"type":"f"}]"#,
        ))
        .await;
        in_flight.push(conn);
    }
    let mut uploading = Conn::open(addr).await.expect("connect");
    uploading
        .send(
            format!(
                "POST /v1/events HTTP/1.1\r\nhost: x\r\nx-api-key: {KEY}\r\n\
                 content-type: application/json\r\ncontent-length: 100\r\n\r\n{{\"type\":"
            )
            .as_bytes(),
        )
        .await;
    (in_flight, uploading)
}

fn post(path: &str, body: &str) -> Vec<u8> {
    format!(
        "POST {path} HTTP/1.1\r\nhost: x\r\nx-api-key: {KEY}\r\ncontent-type: application/json\r\n\
         content-length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

/// The keys of every message in `topic`, read until at least `expect` and the end.
async fn topic_keys(config: &Config, expect: usize) -> HashMap<String, usize> {
    let brokers = config.kafka.brokers.clone();
    let topic = config.kafka.topic.clone();
    tokio::task::spawn_blocking(move || {
        let consumer: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", &brokers)
            .set("group.id", ess_testkit::unique("reader"))
            .set("enable.auto.commit", "false")
            .set("enable.partition.eof", "true")
            .create()
            .expect("consumer");
        let partitions =
            ess_core::kafka::partition_ids(&consumer, &topic, Duration::from_secs(10)).unwrap();
        let mut list = TopicPartitionList::new();
        for p in &partitions {
            list.add_partition_offset(&topic, *p, Offset::Beginning)
                .unwrap();
        }
        consumer.assign(&list).unwrap();
        let mut keys = HashMap::new();
        let mut read = 0;
        let mut at_end = std::collections::HashSet::new();
        let deadline = Instant::now() + Duration::from_secs(60);
        while Instant::now() < deadline {
            match consumer.poll(Duration::from_millis(100)) {
                Some(Ok(m)) => {
                    at_end.remove(&m.partition());
                    let key = String::from_utf8_lossy(m.key().unwrap_or_default()).into_owned();
                    *keys.entry(key).or_insert(0) += 1;
                    read += 1;
                }
                Some(Err(rdkafka::error::KafkaError::PartitionEOF(p))) => {
                    at_end.insert(p);
                }
                Some(Err(e)) => panic!("consume: {e}"),
                None => {}
            }
            if read >= expect && at_end.len() == partitions.len() {
                return keys;
            }
        }
        panic!("read {read} of {expect} messages");
    })
    .await
    .unwrap()
}

fn assert_each_once(keys: &HashMap<String, usize>, ids: &[String]) {
    for id in ids {
        assert_eq!(
            keys.get(id),
            Some(&1),
            "acknowledged event {id} in the topic"
        );
    }
}

/// The memory bound documented in docs/api.md ("Memory"), for these settings.
fn documented_bound(max_connections: u64, max_buffered_bytes: u64, queue_kbytes: u64) -> u64 {
    const MIB: u64 = 1024 * 1024;
    32 * MIB + max_connections * 48 * 1024 + max_buffered_bytes + 2 * queue_kbytes * 1024
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_bodies_beyond_the_byte_budget_get_503_overloaded_and_memory_stays_bounded() {
    let eph = Ephemeral::new(2).await;
    let port = free_port();
    let budget: u64 = 16 << 20;
    // Room for what the budget lets through at once (5 bodies), not much more.
    let queue_kbytes: u64 = 20 << 10;
    let mut ingest = spawn_ingest(
        &eph.config,
        port,
        &format!(
            "max_body_bytes = {}\nmax_batch_events = 1000\nmax_buffered_bytes = {budget}\n\
             max_connections = 64\nqueue_max_kbytes = {queue_kbytes}\nmax_properties_bytes = 16384",
            4 << 20
        ),
    );
    let addr: SocketAddr = ([127, 0, 0, 1], port).into();
    wait_ready(addr).await;

    // 40 bodies of 3 MiB (300 events of ~10 KiB): 120 MiB against a 16 MiB budget.
    let events: Vec<String> = (0..300)
        .map(|i| {
            format!(
                r#"{{"type":"big","properties":{{"i":{i},"pad":"{}"}}}}"#,
                "x".repeat(10_600)
            )
        })
        .collect();
    let body = format!("[{}]", events.join(","));
    assert!(body.len() > 3 << 20 && body.len() < 4 << 20);
    let request = std::sync::Arc::new(post("/v1/events/batch", &body));
    let half = request.len() / 2;
    let mut conns = Vec::new();
    for _ in 0..40 {
        let mut conn = Conn::open(addr).await.expect("connect");
        conn.send(&request[..half]).await;
        conns.push(conn);
    }
    // Every head is in; the ones that do not fit were refused before their body was read.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let tasks: Vec<_> = conns
        .into_iter()
        .map(|mut conn| {
            let request = std::sync::Arc::clone(&request);
            tokio::spawn(async move {
                conn.send(&request[half..]).await;
                conn.response(Duration::from_secs(60)).await
            })
        })
        .collect();
    let mut answers = Vec::new();
    for task in tasks {
        answers.push(task.await.expect("client task"));
    }
    let mut ids = Vec::new();
    let mut overloaded = 0;
    for answer in &answers {
        match answer.status() {
            Some(202) => ids.extend(answer.ids()),
            Some(503) => {
                assert_eq!(answer.json()["error"], "overloaded", "{}", answer.text());
                assert!(answer.text().to_ascii_lowercase().contains("retry-after"));
                overloaded += 1;
            }
            _ => panic!("unexpected answer: {}", answer.text()),
        }
    }
    assert!(overloaded > 0, "nothing was refused");
    assert!(!ids.is_empty(), "nothing was accepted");
    let peak = peak_rss(ingest.child.id());
    let bound = documented_bound(64, budget, queue_kbytes);
    assert!(
        peak <= bound,
        "peak RSS {} MiB over the documented bound {} MiB",
        peak >> 20,
        bound >> 20
    );
    eprintln!(
        "accepted {} requests, refused {overloaded}; peak RSS {} MiB, bound {} MiB",
        ids.len() / 300,
        peak >> 20,
        bound >> 20
    );
    let keys = topic_keys(&eph.config, ids.len()).await;
    assert_each_once(&keys, &ids);
    sigterm(&ingest.child);
    assert!(ingest.child.wait().expect("wait").success());
    eph.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_with_half_open_idle_and_in_flight_connections_exits_in_time() {
    let eph = Ephemeral::new(2).await;
    let port = free_port();
    let shutdown_timeout = Duration::from_secs(4);
    // Events wait a second in the producer, so SIGTERM finds requests there.
    let mut ingest = spawn_ingest(
        &eph.config,
        port,
        "shutdown_timeout = \"4s\"\nproduce_timeout = \"2s\"\nlinger_ms = 1000\n\
         head_timeout = \"30s\"\nidle_timeout = \"60s\"",
    );
    let addr: SocketAddr = ([127, 0, 0, 1], port).into();
    wait_ready(addr).await;

    // Idle: one request answered, then nothing (each answer takes the linger: all at once).
    let idle: Vec<_> = (0..50)
        .map(|_| {
            tokio::spawn(async move {
                let mut conn = Conn::open(addr).await.expect("connect");
                conn.send(&post("/v1/events", r#"{"type":"idle"}"#)).await;
                let ids = conn.response(Duration::from_secs(10)).await.ids();
                (conn, ids)
            })
        })
        .collect();
    let mut quiet = Vec::new();
    let mut ids = Vec::new();
    for task in idle {
        let (conn, answer) = task.await.expect("idle client");
        ids.extend(answer);
        quiet.push(conn);
    }
    // Half-open: half a head, or nothing at all.
    for i in 0..400 {
        let mut conn = Conn::open(addr).await.expect("connect");
        if i % 4 != 0 {
            conn.send(b"POST /v1/events HTTP/1.1\r\nHost: x\r\n").await;
        }
        quiet.push(conn);
    }
    // In flight: with the producer when SIGTERM comes; uploading: not with the producer yet.
    let (mut in_flight, mut uploading) = in_flight_and_uploading(addr, 16).await;
    eventually(
        Duration::from_secs(5),
        "48 events in the producer",
        || async move {
            let mut conn = Conn::open(addr).await.ok()?;
            conn.send(b"GET /metrics HTTP/1.1\r\nhost: x\r\n\r\n").await;
            let text = conn.response(Duration::from_secs(5)).await.text();
            let queued: f64 = text
                .lines()
                .find_map(|l| l.strip_prefix("ess_ingest_producer_queue_depth "))?
                .trim()
                .parse()
                .ok()?;
            (queued >= 48.0).then_some(())
        },
    )
    .await;

    sigterm(&ingest.child);
    let signalled = tokio::time::Instant::now();
    // Half-open and idle connections are closed at once.
    let soon = signalled + Duration::from_secs(1);
    let watchers: Vec<_> = quiet
        .into_iter()
        .map(|mut conn| tokio::spawn(async move { conn.closed_by(soon).await }))
        .collect();
    let mut open = 0;
    for watcher in watchers {
        open += usize::from(!watcher.await.expect("watcher"));
    }
    assert_eq!(
        open, 0,
        "{open} of 450 quiet connections still open 1 s after SIGTERM"
    );
    // The upload is refused; the requests with the producer are answered 202.
    let refused = uploading.response(Duration::from_secs(1)).await;
    assert_eq!(refused.status(), Some(503), "{}", refused.text());
    assert_eq!(refused.json()["error"], "shutting_down");
    for conn in &mut in_flight {
        let answer = conn.response(Duration::from_secs(5)).await;
        ids.extend(answer.ids());
    }
    assert_eq!(ids.len(), 50 + 16 * 3);
    // The process ends in time, with status 0.
    let deadline = signalled + shutdown_timeout + Duration::from_secs(1);
    let status = loop {
        if let Some(status) = ingest.child.try_wait().expect("wait") {
            break status;
        }
        if tokio::time::Instant::now() > deadline {
            panic!("ess ingest still running {shutdown_timeout:?} + 1 s after SIGTERM");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(status.success(), "{status}");
    let keys = topic_keys(&eph.config, ids.len()).await;
    assert_each_once(&keys, &ids);
    eph.cleanup().await;
}

/// A private broker (the shared one is never frozen), stopped on drop.
struct Broker {
    child: Child,
}

impl Broker {
    /// Starts one on `port` and creates `config`'s topic with 2 partitions.
    async fn start(port: u16, config: &ess_core::config::KafkaConfig) -> Self {
        let binary = ess_stack::install::ensure_broker(&StackConfig::default()).expect("tansu");
        let url = format!("tcp://127.0.0.1:{port}");
        let child = Command::new(binary)
            .args([
                "broker",
                "--listener-url",
                &url,
                "--advertised-listener-url",
                &url,
            ])
            .args(["--storage-engine", "memory://tansu/"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start tansu");
        let broker = Self { child };
        let brokers = config.brokers.clone();
        eventually(Duration::from_secs(30), "private broker answers", || {
            let brokers = brokers.clone();
            async move {
                tokio::task::spawn_blocking(move || ess_stack::broker_answers(&brokers))
                    .await
                    .ok()
                    .filter(|up| *up)
            }
        })
        .await;
        ess_core::kafka::ensure_topic(config, &config.topic, 2)
            .await
            .expect("create topic");
        broker
    }

    fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(self.child.id().to_string())
            .status()
            .expect("kill");
        assert!(status.success());
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        self.signal("CONT");
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// What the metrics say about the producer's queue.
async fn queue_depth(addr: SocketAddr) -> Option<f64> {
    let mut conn = Conn::open(addr).await.ok()?;
    conn.send(b"GET /metrics HTTP/1.1\r\nhost: x\r\n\r\n").await;
    let text = conn.response(Duration::from_secs(5)).await.text();
    text.lines()
        .find_map(|l| l.strip_prefix("ess_ingest_producer_queue_depth "))?
        .trim()
        .parse()
        .ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_with_the_broker_frozen_ends_by_the_deadline_with_every_acknowledged_event_kept() {
    let broker_port = free_port();
    let mut config = Config::default();
    config.kafka.brokers = format!("127.0.0.1:{broker_port}");
    config.kafka.topic = ess_testkit::unique("frozen");
    let broker = Broker::start(broker_port, &config.kafka).await;
    let port = free_port();
    let shutdown_timeout = Duration::from_secs(3);
    // librdkafka keeps undelivered events for 30 s (an operator's override of the delivery
    // timeout), so the producer still holds some when the shutdown deadline comes.
    let mut ingest = spawn_ingest(
        &config,
        port,
        "shutdown_timeout = \"3s\"\nproduce_timeout = \"2s\"\nlinger_ms = 1\n\
         producer = { \"message.timeout.ms\" = \"30000\", \"request.timeout.ms\" = \"30000\" }",
    );
    let addr: SocketAddr = ([127, 0, 0, 1], port).into();
    wait_ready(addr).await;

    // Acknowledged before the broker stops answering.
    let mut ids = Vec::new();
    let mut conn = Conn::open(addr).await.expect("connect");
    for _ in 0..20 {
        conn.send(&post("/v1/events", r#"{"type":"before"}"#)).await;
        ids.extend(conn.response(Duration::from_secs(10)).await.ids());
    }

    // Frozen: its sockets stay open, nothing is answered.
    broker.signal("STOP");
    let (in_flight, mut uploading) = in_flight_and_uploading(addr, 8).await;
    eventually(
        Duration::from_secs(5),
        "24 events in the producer",
        || async move { (queue_depth(addr).await >= Some(24.0)).then_some(()) },
    )
    .await;

    sigterm(&ingest.child);
    let signalled = Instant::now();
    let tasks: Vec<_> = in_flight
        .into_iter()
        .map(|mut conn| tokio::spawn(async move { conn.response(Duration::from_secs(10)).await }))
        .collect();
    let refused = uploading.response(Duration::from_secs(10)).await;
    let mut answers = Vec::new();
    for task in tasks {
        answers.push(task.await.expect("client task"));
    }
    assert_eq!(refused.status(), Some(503), "{}", refused.text());
    assert_eq!(refused.json()["error"], "shutting_down");
    for answer in &answers {
        match answer.status() {
            Some(202) => ids.extend(answer.ids()),
            Some(503) => {
                // Not confirmed in time: each event is `unknown`, never `stored`.
                let json = answer.json();
                let results = json["results"].as_array().expect("results");
                assert!(results.iter().all(|r| r["status"] != "stored"), "{json}");
            }
            _ => panic!("unexpected answer: {}", answer.text()),
        }
    }
    // The process ends by the deadline, with status 0, although the producer still holds
    // events the broker never acknowledged.
    let deadline = signalled + shutdown_timeout + Duration::from_secs(1);
    let status = loop {
        if let Some(status) = ingest.child.try_wait().expect("wait") {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "ess ingest still running {shutdown_timeout:?} + 1 s after SIGTERM"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    eprintln!("exited {:?} after SIGTERM", signalled.elapsed());
    assert!(status.success(), "{status}");

    broker.signal("CONT");
    let keys = topic_keys(&config, ids.len()).await;
    assert_each_once(&keys, &ids);
}

/// `ess` with `config` and `args`, waiting for it; its stdout.
fn ess(config: &std::path::Path, args: &[&str]) -> (std::process::ExitStatus, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_ess"))
        .arg("--config")
        .arg(config)
        .args(args)
        .env("RUST_LOG", "warn")
        .stderr(Stdio::inherit())
        .output()
        .expect("run ess");
    (
        out.status,
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn load_with_an_api_key_sends_the_keys_source_and_verify_finds_every_event() {
    let eph = Ephemeral::new(2).await;
    let port = free_port();
    let dir = tempfile::tempdir().expect("temp dir");
    let config_path = dir.path().join("ess.toml");
    let c = &eph.config;
    // One file for every command: auth on (the default) with the key `t`.
    std::fs::write(
        &config_path,
        format!(
            "[kafka]\ntopic = \"{}\"\ndlq_topic = \"{}\"\n\n[clickhouse]\ndatabase = \"{}\"\n\n\
             [ingest]\nlisten = \"127.0.0.1:{port}\"\n\
             api_keys = [{{ id = \"t\", key = \"{KEY}\" }}]\n\n\
             [sink]\ngroup_id = \"{}\"\nlisten = \"127.0.0.1:0\"\nsession_timeout_ms = 2000\n\
             heartbeat_interval_ms = 500\nbatch_max_wait = \"100ms\"\n\n\
             [stack]\nstate_dir = \"{}\"\n",
            c.kafka.topic,
            c.kafka.dlq_topic,
            c.clickhouse.database,
            c.sink.group_id,
            dir.path().display()
        ),
    )
    .expect("write config");
    let spawn = |command: &str| {
        Command::new(env!("CARGO_BIN_EXE_ess"))
            .arg("--config")
            .arg(&config_path)
            .arg(command)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap_or_else(|e| panic!("spawn ess {command}: {e}"))
    };
    let ingest = Ingest {
        child: spawn("ingest"),
        _dir: tempfile::tempdir().expect("temp dir"),
    };
    let sink = Ingest {
        child: spawn("sink"),
        _dir: tempfile::tempdir().expect("temp dir"),
    };
    wait_ready(([127, 0, 0, 1], port).into()).await;

    // Two runs with the same key: verify tells them apart although they share the source.
    let mut runs = Vec::new();
    for (run, events) in [("a1b2c3d4e5f6", "300"), ("0a0b0c0d0e0f", "200")] {
        let record = dir.path().join(format!("{run}.json"));
        let record = record.to_str().expect("utf-8 path");
        let target = format!("http://127.0.0.1:{port}");
        let (status, _) = ess(
            &config_path,
            &[
                "load",
                "--target",
                &target,
                "--api-key",
                KEY,
                "--events",
                events,
                "--connections",
                "4",
                "--batch",
                "10",
                "--run",
                run,
                "--record",
                record,
                "--quiet",
            ],
        );
        assert!(status.success(), "ess load {run}: {status}");
        runs.push((record.to_owned(), events.parse::<u64>().expect("count")));
    }
    for (record, events) in &runs {
        let (status, out) = ess(
            &config_path,
            &["verify", "--record", record, "--wait", "60s", "--json"],
        );
        let v: serde_json::Value = serde_json::from_str(&out)
            .unwrap_or_else(|e| panic!("verify output is not JSON ({e}): {out}"));
        assert!(status.success(), "ess verify: {status}: {v}");
        assert_eq!(v["ok"], true, "{v}");
        assert_eq!(v["accepted"], *events, "{v}");
        assert_eq!(v["unique_ids"], *events, "{v}");
        assert_eq!(v["lost"], 0, "{v}");
    }
    // Stored under the key's id.
    let client = eph.client(&c.clickhouse.url).await;
    let by_source = client
        .query(&format!(
            "SELECT source, count() FROM {} GROUP BY source",
            c.clickhouse.table
        ))
        .fetch_all::<(String, u64)>()
        .await
        .expect("count by source");
    assert_eq!(by_source, vec![("t".to_owned(), 500)]);
    drop(ingest);
    drop(sink);
    eph.cleanup().await;
}
