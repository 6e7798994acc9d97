//! Identity, context and the client's address reach Kafka exactly as sent; a key cannot write
//! another key's `source`.

use bytes::Bytes;
use ess_testkit::Ephemeral;

use crate::harness::{KEY, Server, read_topic, with_keys};

const EVENT: &str = r#"{"type":"signup","user_id":"użytkownik \"7\" 🦀","anonymous_id":"","context":{"page":{"title":"Grüße","path":"/ü"},"locale":"de-DE"}}"#;

async fn post_via(client: &crate::harness::Client, forwarded_for: &str) -> String {
    let reply = client
        .send(
            "POST",
            "/v1/events",
            &[
                ("authorization", &format!("Bearer {KEY}")),
                ("content-type", "application/json"),
                ("x-forwarded-for", forwarded_for),
                ("user-agent", "Mozilla/5.0 (ess test)"),
            ],
            Bytes::from_static(EVENT.as_bytes()),
        )
        .await;
    reply.ids().remove(0)
}

#[tokio::test]
async fn identity_context_and_the_client_address_reach_kafka_exactly() {
    let eph = Ephemeral::new(1).await;
    // The test client connects from 127.0.0.1: first as a trusted proxy, then not.
    let mut trusting = with_keys(eph.config.clone());
    trusting.ingest.trusted_proxies = vec!["127.0.0.0/8".into()];
    let (server, client) = Server::ready(trusting).await;
    let via_proxy = post_via(&client, "198.51.100.1, 203.0.113.9").await;
    server.stop().await;
    let (server, client) = Server::ready(with_keys(eph.config.clone())).await;
    let direct = post_via(&client, "203.0.113.9").await;
    server.stop().await;

    let records = read_topic(&eph.config.kafka.brokers, &eph.config.kafka.topic, 2).await;
    assert_eq!(records.len(), 2);
    let sent: serde_json::Value = serde_json::from_str(EVENT).unwrap();
    for r in &records {
        let v = &r.value;
        assert_eq!(v["user_id"], sent["user_id"], "{v}");
        assert!(
            v.get("anonymous_id").is_none(),
            "empty identity is absent: {v}"
        );
        let raw = String::from_utf8(r.raw.clone()).unwrap();
        assert!(
            raw.contains(r#""context":{"page":{"title":"Grüße","path":"/ü"},"locale":"de-DE"}"#),
            "the context is the client's text: {raw}"
        );
        assert_eq!(v["user_agent"], "Mozilla/5.0 (ess test)");
        assert_eq!(v["source"], "test");
        let ip = if r.key == via_proxy {
            "203.0.113.9"
        } else {
            assert_eq!(r.key, direct);
            "127.0.0.1"
        };
        assert_eq!(v["ip"], ip, "{}", r.key);
    }
    eph.cleanup().await;
}

#[tokio::test]
async fn a_key_cannot_write_another_key_s_source() {
    let eph = Ephemeral::new(1).await;
    let (server, client) = Server::ready(with_keys(eph.config.clone())).await;
    let reply = client
        .post("/v1/events", r#"{"type":"a","source":"slow"}"#)
        .await;
    assert_eq!(reply.status, 403, "{:?}", reply.body);
    let body = reply.json();
    assert_eq!(body["error"], "source_not_allowed");
    assert_eq!(body["field"], "source");
    let reply = client
        .post(
            "/v1/events/batch",
            r#"[{"type":"a"},{"type":"b","source":"slow"}]"#,
        )
        .await;
    assert_eq!(reply.status, 403);
    assert_eq!(reply.json()["index"], 1);
    let own = client
        .post("/v1/events", r#"{"type":"a","source":"test"}"#)
        .await
        .ids();
    server.stop().await;
    let records = read_topic(&eph.config.kafka.brokers, &eph.config.kafka.topic, 1).await;
    assert_eq!(
        records.len(),
        1,
        "nothing of the refused requests reached Kafka"
    );
    assert_eq!(records[0].key, own[0]);
    assert_eq!(records[0].value["source"], "test");
    eph.cleanup().await;
}
