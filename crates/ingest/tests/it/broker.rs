//! Broker outage: 503 (after the produce timeout), never 2xx; back to 202 once the broker
//! returns, without restarting ingest. Runs a private broker so the shared one is untouched.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use ess_core::config::StackConfig;

use crate::harness::{Server, read_topic, with_keys};

struct Broker {
    child: Child,
    brokers: String,
}

impl Broker {
    fn start(port: u16) -> Self {
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
        Self {
            child,
            brokers: format!("127.0.0.1:{port}"),
        }
    }

    async fn answering(port: u16, config: &ess_core::config::KafkaConfig) -> Self {
        let broker = Self::start(port);
        let brokers = broker.brokers.clone();
        ess_testkit::eventually(Duration::from_secs(30), "private broker answers", || {
            let brokers = brokers.clone();
            async move {
                tokio::task::spawn_blocking(move || ess_stack::broker_answers(&brokers))
                    .await
                    .ok()
                    .filter(|up| *up)
            }
        })
        .await;
        // Memory storage: the topic is created again after every start.
        ess_core::kafka::ensure_topic(config, &config.topic, 2)
            .await
            .expect("create topic");
        broker
    }

    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        self.kill();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_down_gives_503_and_broker_back_gives_202() {
    let port = free_port();
    let mut config = with_keys(ess_testkit::stack_config());
    config.kafka.brokers = format!("127.0.0.1:{port}");
    config.kafka.topic = ess_testkit::unique("outage");
    config.ingest.produce_timeout = Duration::from_secs(2);
    let mut broker = Broker::answering(port, &config.kafka).await;
    let (server, client) = Server::ready(config.clone()).await;
    client
        .post("/v1/events", r#"{"type":"before"}"#)
        .await
        .ids();

    broker.kill();
    for path in ["/v1/events", "/v1/events/batch"] {
        let started = Instant::now();
        let body = if path.ends_with("batch") {
            r#"[{"type":"down"},{"type":"down"}]"#
        } else {
            r#"{"type":"down"}"#
        };
        let reply = client.post(path, body).await;
        let took = started.elapsed();
        assert_eq!(reply.status, 503, "{:?}", reply.body);
        assert!(reply.headers.contains_key("retry-after"));
        let json = reply.json();
        assert!(
            ["produce_timeout", "broker_unavailable"]
                .contains(&json["error"].as_str().unwrap_or("")),
            "{json}"
        );
        let results = json["results"].as_array().expect("per-event results");
        // Timed out: they may or may not be in Kafka, and the client is told so.
        assert!(results.iter().all(|r| r["status"] == "unknown"), "{json}");
        assert_eq!(json["accepted"], 0);
        assert!(
            took >= Duration::from_millis(1500),
            "answered after {took:?}"
        );
        assert!(took < Duration::from_secs(10), "answered after {took:?}");
    }

    let _broker = Broker::answering(port, &config.kafka).await;
    let ids = ess_testkit::eventually(
        Duration::from_secs(90),
        "202 after the broker is back",
        || {
            let client = client.clone();
            async move {
                let reply = client.post("/v1/events", r#"{"type":"after"}"#).await;
                (reply.status == 202).then(|| reply.ids())
            }
        },
    )
    .await;
    let more = client
        .post("/v1/events/batch", r#"[{"type":"after"},{"type":"after"}]"#)
        .await
        .ids();
    let records = read_topic(&config.kafka.brokers, &config.kafka.topic, 3).await;
    let keys: Vec<&str> = records.iter().map(|r| r.key.as_str()).collect();
    for id in ids.iter().chain(&more) {
        assert!(keys.contains(&id.as_str()), "{id} not in {keys:?}");
    }
    server.stop().await;
}
