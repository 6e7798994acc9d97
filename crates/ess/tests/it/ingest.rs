//! `ess ingest` as a process: its memory stays within the documented bound when clients send
//! more large bodies at once than the byte budget holds, SIGTERM ends it in time with every
//! acknowledged event in Kafka, whatever its connections are doing and even with the broker
//! frozen, and `ess load` with an API key sends what `ess verify` then finds.

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use ess_core::config::Config;
use ess_testkit::broker::Broker;
use ess_testkit::http::{self, Ending, KEY, Raw};
use ess_testkit::topic::{assert_exactly_once, read_topic};
use ess_testkit::{Ephemeral, eventually};

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
        (http::get(addr, "/readyz").await?.status() == Some(200)).then_some(())
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
    assert!(ess_testkit::process::signal(child, "TERM"), "kill -TERM");
}

/// `batches` connections that each sent a whole batch of three events, and one that sent
/// the head of a 100-byte event and a few bytes of its body.
async fn in_flight_and_uploading(addr: SocketAddr, batches: usize) -> (Vec<Raw>, Raw) {
    let mut in_flight = Vec::new();
    for _ in 0..batches {
        let mut conn = Raw::connect(addr).await;
        conn.send(&post(
            "/v1/events/batch",
            r#"[{"type":"f"},{"type":"f"},{"type":"f"}]"#,
        ))
        .await;
        in_flight.push(conn);
    }
    let mut uploading = Raw::connect(addr).await;
    uploading.send(&http::uploading(KEY)).await;
    (in_flight, uploading)
}

fn post(path: &str, body: &str) -> Vec<u8> {
    http::raw_post(path, KEY, body)
}

/// Asserts every acknowledged id is in `config`'s topic once.
async fn assert_in_topic_once(config: &Config, ids: &[String]) {
    let records = read_topic(&config.kafka.brokers, &config.kafka.topic, ids.len()).await;
    assert_exactly_once(&records, ids);
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
        let mut conn = Raw::connect(addr).await;
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
    assert_in_topic_once(&eph.config, &ids).await;
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
                let mut conn = Raw::connect(addr).await;
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
        let mut conn = Raw::connect(addr).await;
        if i % 4 != 0 {
            conn.send(b"POST /v1/events HTTP/1.1\r\nHost: x\r\n").await;
        }
        quiet.push(conn);
    }
    // In flight: with the producer when SIGTERM comes; uploading: not with the producer yet.
    let (mut in_flight, mut uploading) = in_flight_and_uploading(addr, 16).await;
    producer_holds(addr, 48).await;

    sigterm(&ingest.child);
    let signalled = Instant::now();
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
    assert_shutting_down(&uploading.response(Duration::from_secs(1)).await);
    for conn in &mut in_flight {
        let answer = conn.response(Duration::from_secs(5)).await;
        ids.extend(answer.ids());
    }
    assert_eq!(ids.len(), 50 + 16 * 3);
    // The process ends in time, with status 0.
    let status = exit_within(&mut ingest.child, signalled, shutdown_timeout).await;
    assert!(status.success(), "{status}");
    assert_in_topic_once(&eph.config, &ids).await;
    eph.cleanup().await;
}

/// Waits until the producer's queue holds at least `events`.
async fn producer_holds(addr: SocketAddr, events: u32) {
    let what = format!("{events} events in the producer");
    eventually(Duration::from_secs(5), &what, || async move {
        (queue_depth(addr).await >= Some(f64::from(events))).then_some(())
    })
    .await;
}

/// Asserts `answer` is the 503 of a request refused because the server is shutting down.
fn assert_shutting_down(answer: &Ending) {
    assert_eq!(answer.status(), Some(503), "{}", answer.text());
    assert_eq!(answer.json()["error"], "shutting_down");
}

/// How `child` ended, which it must do within `shutdown_timeout` (and a second's grace) of
/// being `signalled`.
async fn exit_within(
    child: &mut Child,
    signalled: Instant,
    shutdown_timeout: Duration,
) -> std::process::ExitStatus {
    let deadline = signalled + shutdown_timeout + Duration::from_secs(1);
    loop {
        if let Some(status) = child.try_wait().expect("wait") {
            return status;
        }
        assert!(
            Instant::now() < deadline,
            "ess ingest still running {shutdown_timeout:?} + 1 s after SIGTERM"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// What the metrics say about the producer's queue.
async fn queue_depth(addr: SocketAddr) -> Option<f64> {
    let text = http::get(addr, "/metrics").await?.text();
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
    let mut conn = Raw::connect(addr).await;
    for _ in 0..20 {
        conn.send(&post("/v1/events", r#"{"type":"before"}"#)).await;
        ids.extend(conn.response(Duration::from_secs(10)).await.ids());
    }

    // Frozen: its sockets stay open, nothing is answered.
    broker.signal("STOP");
    let (in_flight, mut uploading) = in_flight_and_uploading(addr, 8).await;
    producer_holds(addr, 24).await;

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
    assert_shutting_down(&refused);
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
    let status = exit_within(&mut ingest.child, signalled, shutdown_timeout).await;
    eprintln!("exited {:?} after SIGTERM", signalled.elapsed());
    assert!(status.success(), "{status}");

    broker.signal("CONT");
    assert_in_topic_once(&config, &ids).await;
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
