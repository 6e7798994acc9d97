//! Every acknowledged event is in Kafka exactly once, with the right key and fields.

use std::io::Write as _;
use std::time::{Duration, Instant};

use bytes::Bytes;
use ess_testkit::Ephemeral;

use crate::harness::{KEY, Raw, Server, assert_topic_holds, metric, with_keys};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_events_are_in_the_topic_once_with_their_fields() {
    let eph = Ephemeral::new(3).await;
    let config = with_keys(eph.config.clone());
    let (server, client) = Server::ready(config.clone()).await;
    let mut ids = Vec::new();

    // One event with everything given.
    let given = "0192f0c4-1111-7000-8000-000000000001";
    let reply = client
        .post(
            "/v1/events",
            format!(
                r#"{{"id":"{given}","type":"page_view","source":"test","timestamp":"2026-11-24T10:00:00.123987+02:00","properties":{{"path":"/é","n":[1,2.5,null],"deep":{{"a":{{"b":true}}}}}}}}"#
            ),
        )
        .await;
    assert_eq!(reply.ids(), vec![given.to_owned()]);
    ids.push(given.to_owned());

    // Minimal event: the server makes the id, the timestamp and the source (the key's id).
    let minimal = client.post("/v1/events", r#"{"type":"ping"}"#).await.ids();
    ids.extend(minimal.clone());

    // Epoch-millisecond timestamp.
    let epoch = client
        .post(
            "/v1/events",
            r#"{"type":"t","timestamp":1764000000123,"properties":{}}"#,
        )
        .await
        .ids();
    ids.extend(epoch.clone());

    // A JSON array batch, an NDJSON batch, a gzip batch and a zstd batch.
    let array: Vec<String> = (0..50)
        .map(|i| format!(r#"{{"type":"batch","properties":{{"i":{i}}}}}"#))
        .collect();
    let array_body = format!("[{}]", array.join(","));
    ids.extend(
        client
            .post("/v1/events/batch", array_body.clone())
            .await
            .ids(),
    );
    let ndjson = format!("{}\n", array.join("\n"));
    let reply = client
        .send(
            "POST",
            "/v1/events/batch",
            &[("x-api-key", KEY), ("content-type", "application/x-ndjson")],
            Bytes::from(ndjson),
        )
        .await;
    ids.extend(reply.ids());
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(array_body.as_bytes()).expect("gzip");
    let reply = client
        .send(
            "POST",
            "/v1/events/batch",
            &[
                ("x-api-key", KEY),
                ("content-type", "application/json"),
                ("content-encoding", "gzip"),
            ],
            Bytes::from(gz.finish().expect("gzip")),
        )
        .await;
    ids.extend(reply.ids());
    let reply = client
        .send(
            "POST",
            "/v1/events/batch",
            &[
                ("x-api-key", KEY),
                ("content-type", "application/json"),
                ("content-encoding", "zstd"),
            ],
            Bytes::from(zstd::encode_all(array_body.as_bytes(), 3).expect("zstd")),
        )
        .await;
    ids.extend(reply.ids());
    assert_eq!(ids.len(), 3 + 4 * 50);

    let records = assert_topic_holds(&config, &ids).await;

    let by_id = |id: &str| {
        records
            .iter()
            .find(|r| r.key == id)
            .expect("record")
            .clone()
    };
    let full = by_id(given);
    let v = &full.value;
    assert_eq!(v["type"], "page_view");
    assert_eq!(v["source"], "test");
    assert_eq!(v["timestamp"], "2026-11-24T08:00:00.123Z");
    // The client's properties text, byte for byte.
    let raw = String::from_utf8(full.raw.clone()).expect("UTF-8");
    assert!(
        raw.contains(r#""properties":{"path":"/é","n":[1,2.5,null],"deep":{"a":{"b":true}}}"#),
        "{raw}"
    );
    let event = ess_core::wire::WireEvent::from_json(&full.raw).expect("the sink can read it");
    assert_eq!(full.timestamp_ms, Some(event.ingest_time.0));
    assert_eq!(full.schema_header.as_deref(), Some("1"));
    let ingest_time = v["ingest_time"].as_str().expect("ingest_time");
    assert_eq!(ingest_time.len(), 24, "{ingest_time}");

    let min = by_id(&minimal[0]);
    assert_eq!(min.value["source"], "test");
    assert_eq!(min.value["properties"], serde_json::json!({}));
    assert_eq!(min.value["timestamp"], min.value["ingest_time"]);
    assert_eq!(
        by_id(&epoch[0]).value["timestamp"],
        "2025-11-24T16:00:00.123Z"
    );

    server.stop().await;
    eph.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_clients_lose_and_duplicate_nothing() {
    let eph = Ephemeral::new(4).await;
    let config = with_keys(eph.config.clone());
    let (server, client) = Server::ready(config.clone()).await;
    let clients = 64;
    let per_client = 40;
    let mut tasks = Vec::new();
    for c in 0..clients {
        let client = client.clone();
        tasks.push(tokio::spawn(async move {
            let mut ids = Vec::new();
            for i in 0..per_client {
                let reply = if i % 10 == 9 {
                    client
                        .post(
                            "/v1/events/batch",
                            format!(r#"[{{"type":"c","properties":{{"c":{c}}}}},{{"type":"c"}}]"#),
                        )
                        .await
                } else {
                    client
                        .post(
                            "/v1/events",
                            format!(r#"{{"type":"c","properties":{{"c":{c},"i":{i}}}}}"#),
                        )
                        .await
                };
                ids.extend(reply.ids());
            }
            ids
        }));
    }
    let mut ids = Vec::new();
    for task in tasks {
        ids.extend(task.await.expect("client task"));
    }
    let expected = clients * per_client * 11 / 10;
    assert_eq!(ids.len(), expected);
    let unique: std::collections::HashSet<_> = ids.iter().collect();
    assert_eq!(unique.len(), ids.len(), "ids are unique");
    assert_topic_holds(&config, &ids).await;
    server.stop().await;
    eph.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_answers_every_request_already_with_the_producer() {
    let eph = Ephemeral::new(2).await;
    let mut config = with_keys(eph.config.clone());
    // Events wait a second in the producer, so the shutdown finds them there.
    config.ingest.linger_ms = 1000.0;
    let (mut server, client) = Server::ready(config.clone()).await;
    let in_flight = 16;
    let tasks: Vec<_> = (0..in_flight)
        .map(|_| {
            let client = client.clone();
            tokio::spawn(async move {
                client
                    .try_send(
                        "POST",
                        "/v1/events/batch",
                        &[("x-api-key", KEY), ("content-type", "application/json")],
                        Bytes::from_static(br#"[{"type":"s"},{"type":"s"},{"type":"s"}]"#),
                    )
                    .await
            })
        })
        .collect();
    // A request still sending its body is not with the producer.
    let mut uploading = Raw::connect(server.addr).await;
    uploading.send(&ess_testkit::http::uploading(KEY)).await;
    ess_testkit::eventually(
        Duration::from_secs(5),
        "every request's events in the producer",
        || async {
            let queued = metric(&client, "ess_ingest_producer_queue_depth ").await;
            (queued >= Some(f64::from(3 * in_flight))).then_some(())
        },
    )
    .await;

    server.signal();
    let signalled = Instant::now();
    let refused = uploading.response(Duration::from_secs(5)).await;
    assert_eq!(refused.status(), Some(503), "{}", refused.text());
    assert_eq!(refused.json()["error"], "shutting_down");
    // Answered by the shutdown, not by the body's read timeout (30 s).
    assert!(
        signalled.elapsed() < Duration::from_secs(5),
        "{:?}",
        signalled.elapsed()
    );
    let mut ids = Vec::new();
    for task in tasks {
        let reply = task
            .await
            .expect("client task")
            .expect("a request with the producer is answered");
        ids.extend(reply.ids());
    }
    assert_eq!(ids.len(), 3 * in_flight as usize);
    // The listener is closed.
    match client.try_send("GET", "/healthz", &[], Bytes::new()).await {
        Err(_) => {}
        Ok(reply) => panic!("served after shutdown: {}", reply.status),
    }
    tokio::time::timeout(Duration::from_secs(30), server.stop())
        .await
        .expect("server stops");
    assert_topic_holds(&config, &ids).await;
    eph.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_readiness_and_metrics() {
    let eph = Ephemeral::new(1).await;
    let mut config = with_keys(eph.config.clone());
    config
        .ingest
        .producer
        .insert("statistics.interval.ms".into(), "100".into());
    let (server, client) = Server::ready(config).await;
    assert_eq!(client.get("/healthz").await.status, 200);
    assert_eq!(client.get("/readyz").await.json()["status"], "ready");
    client.post("/v1/events", r#"{"type":"m"}"#).await.ids();
    let _ = client.post("/v1/events", "{").await;
    let metrics = client.get("/metrics").await;
    assert_eq!(metrics.status, 200);
    let text = String::from_utf8_lossy(&metrics.body);
    for needle in [
        "ess_ingest_requests_total{status=\"202\"} 1",
        "ess_ingest_requests_total{status=\"400\"} 1",
        "ess_ingest_events_accepted_total 1",
        "ess_ingest_producer_queue_depth",
        "ess_ingest_produce_latency_seconds_bucket",
    ] {
        assert!(text.contains(needle), "missing {needle} in\n{text}");
    }
    // librdkafka's statistics: the broker's round trip and events per produce request.
    let gauge = |text: &str, prefix: &str| -> Option<f64> {
        text.lines()
            .find(|l| l.starts_with(prefix))
            .and_then(|l| l.rsplit(' ').next()?.parse().ok())
    };
    let mut text = String::new();
    for _ in 0..50 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        text = String::from_utf8_lossy(&client.get("/metrics").await.body).into_owned();
        if gauge(&text, "ess_ingest_produce_batch_events ").is_some() {
            break;
        }
    }
    assert_eq!(
        gauge(&text, "ess_ingest_produce_batch_events "),
        Some(1.0),
        "{text}"
    );
    let rtt = gauge(&text, "ess_ingest_broker_rtt_seconds{").expect("broker rtt gauge");
    assert!(rtt > 0.0 && rtt < 5.0, "round trip {rtt} s in\n{text}");
    assert!(
        text.contains("ess_ingest_producer_queue_latency_seconds{"),
        "{text}"
    );
    server.stop().await;
    eph.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_producer_queue_is_a_503_with_per_event_results() {
    let eph = Ephemeral::new(1).await;
    let mut config = with_keys(eph.config.clone());
    config.ingest.queue_max_messages = 2;
    // Hold messages in the queue so the third one finds it full.
    config.ingest.linger_ms = 200.0;
    let (server, client) = Server::ready(config.clone()).await;
    let body: Vec<String> = (0..5)
        .map(|i| format!(r#"{{"type":"q","properties":{{"i":{i}}}}}"#))
        .collect();
    let reply = client
        .post("/v1/events/batch", format!("[{}]", body.join(",")))
        .await;
    assert_eq!(reply.status, 503, "{:?}", reply.body);
    assert!(reply.headers.contains_key("retry-after"));
    let json = reply.json();
    assert_eq!(json["error"], "queue_full", "{json}");
    let results = json["results"].as_array().expect("results");
    let statuses: Vec<&str> = results
        .iter()
        .map(|r| r["status"].as_str().unwrap_or(""))
        .collect();
    assert_eq!(
        statuses,
        ["stored", "stored", "not_sent", "not_sent", "not_sent"]
    );
    assert_eq!(json["accepted"], 2);
    let stored: Vec<String> = results[..2]
        .iter()
        .map(|r| r["id"].as_str().unwrap_or("").to_owned())
        .collect();
    // The stored ones are in Kafka; the others are not.
    assert_topic_holds(&config, &stored).await;
    server.stop().await;
    eph.cleanup().await;
}
