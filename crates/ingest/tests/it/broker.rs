//! Broker outage: 503 (after the produce timeout), never 2xx; back to 202 once the broker
//! returns, without restarting ingest. Runs a private broker so the shared one is untouched.

use std::time::{Duration, Instant};

use ess_testkit::broker::Broker;
use ess_testkit::free_port;

use crate::harness::{Server, read_topic, with_keys};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_down_gives_503_and_broker_back_gives_202() {
    let port = free_port();
    let mut config = with_keys(ess_testkit::stack_config());
    config.kafka.brokers = format!("127.0.0.1:{port}");
    config.kafka.topic = ess_testkit::unique("outage");
    config.ingest.produce_timeout = Duration::from_secs(2);
    let mut broker = Broker::start(port, &config.kafka).await;
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

    let _broker = Broker::start(port, &config.kafka).await;
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
